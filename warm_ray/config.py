"""Dataclass configs, one per stage, loaded from YAML.

A config file has one section per stage (``prepare``, ``warm``, ``rl``, ``warp``, ``sweep``,
``study``), the user's own inputs (``data``: preference pairs; ``policy``: SFT policy, prompts and
reward models; both default to the prepared benchmark) and a top-level ``run_dir``. Every field has a one-line docstring (the comment above it).
An unknown key is an error that names it with its full dotted path; a value of the wrong
type is an error too, and so is a value out of its range (declared beside each field; a seed, named
``seed``, ``*_seed``, ``seeds`` or ``*_seeds``, is in [0, 2**32 - 1] and ``m`` at most 64 by name alone).
Every run writes its fully resolved config into its run directory
(``config.yaml``), so a run can be repeated from its directory alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import stat
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from warm_ray.names import ANCHORS, BACKENDS, BASELINES, LR_SCHEDULES, MERGE_METHODS, rl_rewards, study_arms


class UserError(Exception):
    """An error the user caused and can fix (a setting, an input file, a path): the CLI prints it
    as one line and exits with code 2. A programming error is never a UserError."""


class ConfigError(UserError, ValueError):
    """A config file or override that does not match the dataclass schema or a field's range."""


# ------------------------------------------------------------------------------------------
# Ranges: declared beside each field (``ranged(rule, default)``), checked when a config is read
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """The allowed values of one field: ``fault(value)`` says what is wrong, or None."""

    fault: Callable[[Any], str | None]
    # for a list: the rule of each item (errors name the index)
    item: Rule | None = None


def at_least(lo: float) -> Rule:
    return Rule(lambda v: None if v >= lo else f"must be >= {lo}")


def above(lo: float) -> Rule:
    return Rule(lambda v: None if v > lo else f"must be > {lo}")


def within(lo: float, hi: float, *, open_lo: bool = False, open_hi: bool = False) -> Rule:
    """``lo <= v <= hi``, written [lo, hi]; an open end leaves the bound out, e.g. (0, 1]."""
    text = f"must be in {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"
    return Rule(lambda v: None if (v > lo if open_lo else v >= lo) and (v < hi if open_hi else v <= hi) else text)


def one_of(*choices: Any) -> Rule:
    text = "must be one of " + ", ".join(repr(c) for c in choices)
    return Rule(lambda v: None if v in choices else text)


def _alarm_rule_fault(value: str) -> str | None:
    from warm_ray.alarm import parse_rule

    try:
        parse_rule(value)
    except ValueError as e:
        return str(e)
    return None


def named(names: Callable[[], tuple[str, ...]]) -> Rule:
    """One of the names a registry of ``warm_ray.names`` holds when the config is checked (a name
    registered at run time, e.g. a reward mode of the user's own, is accepted)."""
    return Rule(lambda v: None if v in names() else "must be one of " + ", ".join(repr(c) for c in names()))


def each(item: Rule | None = None, *, nonempty: bool = True) -> Rule:
    """A list (or mapping) whose entries all satisfy ``item``; empty only when ``nonempty=False``."""
    return Rule(lambda v: "must not be empty" if nonempty and len(v) == 0 else None, item)


# a hub repo id: "name" or "owner/name" (a path starts with "/", "." or "~", or has more parts)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


# the model classes (config.json "architectures", by the end of their names) a key needs
CAUSAL_LM = ("ForCausalLM", "LMHeadModel")
SEQUENCE_CLASSIFIER = ("ForSequenceClassification",)
# a base LM a sequence-classification head is put on (WARM's featurizer and its inits)
FEATURIZER = ("ForSequenceClassification", "ForCausalLM", "LMHeadModel", "ForMaskedLM", "Model", "ForPreTraining")


def _class_fault(config: Any, classes: tuple[str, ...], what: str) -> str | None:
    """What is wrong with the model classes a parsed config.json names, or None: no "architectures"
    (nothing to tell) passes, and so does any one of them ending in one of ``classes``."""
    names = config.get("architectures") if isinstance(config, dict) else None
    names = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
    if not classes or not names or any(n.endswith(classes) for n in names):
        return None
    ends = " or ".join(filter(None, (", ".join(classes[:-1]), classes[-1])))
    return f"its config.json names {names[0]}, not a {what} (a class ending {ends})"


def model_dir(*keywords: str, classes: tuple[str, ...] = (), what: str = "") -> Rule:
    """One of ``keywords`` (presets), a hub id (loads where a hub is reachable), or a local Hugging
    Face model dir, which must exist and hold a model config and a tokenizer; where its config.json
    names its architectures, one must end in one of ``classes`` (a ``what``)."""
    also = f", a hub id or {' or '.join(map(repr, keywords))}" if keywords else " or a hub id"

    def fault(v: str) -> str | None:
        if v in keywords:
            return None
        path = Path(v).expanduser()
        if not path.exists():
            if _HUB_ID.fullmatch(v) and not Path(v.split("/")[0]).exists():
                return None
            return f"no such directory; use a local Hugging Face model dir{also}"
        if not path.is_dir():
            return "is a file, not a Hugging Face model dir"
        if not (path / "config.json").is_file():
            return "has no config.json: not a Hugging Face model dir"
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            return f"its config.json is not readable JSON ({e})"
        if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            return "has no tokenizer (tokenizer.json or tokenizer_config.json)"
        return _class_fault(config, classes, what)

    return Rule(fault)


PREFERENCE_FORMATS = (".jsonl", ".json", ".parquet")
PROMPT_FORMATS = (".txt", ".jsonl", ".json")


def data_path(formats: tuple[str, ...], *, dirs: bool = True, hub: bool = True) -> Rule:
    """"" (the benchmark's own), a file of one of ``formats``, a saved ``datasets`` dir (``dirs``), or a
    hub dataset id (``hub``; loads where a hub is reachable)."""
    kinds = ", ".join(formats) + (" file, a saved datasets dir" if dirs else " file") + (" or a hub dataset id" if hub else "")

    def fault(v: str) -> str | None:
        if v == "":
            return None
        path = Path(v).expanduser()
        if not path.exists():
            if hub and _HUB_ID.fullmatch(v) and "/" in v and not Path(v.split("/")[0]).exists():
                return None
            return f"no such file or directory; use a {kinds}"
        if path.is_dir():
            return None if dirs else f"is a directory; use a {kinds}"
        if path.suffix not in formats:
            return f"unsupported format {path.suffix or '(no suffix)'!r}; use a {kinds}"
        return None

    return Rule(fault)


def ranged(rule: Rule, default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING):
    """A dataclass field whose value must satisfy ``rule`` (a None value, where allowed, passes)."""
    return field(default=default, default_factory=factory, metadata={"range": rule})


# ranges a field has by its name alone, on top of its declared one
SEED_MAX = 2**32 - 1  # torch's and numpy's seeds are 32-bit
MAX_M = 64  # reward models (warm.m) or RL runs (warp.m): what one run can train


def _because(rule: Rule, why: str) -> Rule:
    return Rule(lambda v: None if (text := rule.fault(v)) is None else f"{text} ({why})", rule.item)


SEED = _because(within(0, SEED_MAX), "a torch and numpy seed")


def implied_rule(name: str) -> Rule | None:
    """The range a field has by its name: a seed (``seed``, ``*_seed``, each of ``seeds``, ``*_seeds``)
    is in [0, 2**32 - 1]; a count ``m`` of models trained at once is in [1, 64]."""
    if name == "seed" or name.endswith("_seed"):
        return SEED
    if name == "seeds" or name.endswith("_seeds"):
        return each(SEED, nonempty=False)
    if name == "m":
        return _because(within(1, MAX_M), "what one run can train")
    return None


# A section may also define ``check(self)``, yielding (key, value, what is allowed) for rules that
# tie several fields together; keys are relative to the section.
Faults = Iterator[tuple[str, Any, str]]


# ------------------------------------------------------------------------------------------
# Shared pieces
# ------------------------------------------------------------------------------------------


@dataclass
class Resources:
    """Ray resources of one role; ``num_gpus > 0`` puts the role on CUDA."""

    # logical CPUs reserved per actor (fractions allowed)
    num_cpus: float = ranged(at_least(0), 0.5)
    # GPUs per actor; fractions let roles share a GPU (e.g. 0.5 per RM trainer)
    num_gpus: float = ranged(at_least(0), 0.0)
    # torch threads inside the actor (1 avoids oversubscription on small machines)
    num_threads: int = ranged(at_least(1), 1)
    # "auto" (bf16 on GPU, fp32 on CPU), "float32" or "bfloat16"
    dtype: str = ranged(one_of("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"), "auto")
    # custom Ray resources per actor, e.g. {"trainer_node": 1} to steer a role onto a node type
    resources: dict[str, float] = ranged(each(at_least(0), nonempty=False), factory=dict)

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"


@dataclass
class TinyModel:
    """Shape of the tiny policy built offline by ``warm-ray prepare``."""

    # "gpt2" or "llama"
    arch: str = ranged(one_of("gpt2", "llama"), "gpt2")
    # transformer blocks
    n_layer: int = ranged(at_least(1), 4)
    # width of the residual stream
    n_embd: int = ranged(at_least(1), 128)
    # attention heads (vLLM's CPU attention needs a head size n_embd / n_head of at least 32)
    n_head: int = ranged(at_least(1), 4)
    # context length (prompt + completion)
    n_positions: int = ranged(at_least(2), 128)
    # BPE vocabulary size of the tokenizer trained on the shipped corpus
    vocab_size: int = ranged(at_least(1), 2048)

    def check(self) -> Faults:
        if self.n_embd % self.n_head:
            yield "n_embd", self.n_embd, f"must be a multiple of n_head ({self.n_head})"


# ------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------


@dataclass
class PrepareConfig:
    """`warm-ray prepare`: base LM, Baklava checkpoints, gold-labelled preference splits."""

    # master seed (tokenizer data order, LM init, sampling, label flips)
    seed: int = 0
    # architecture of the tiny base LM / policy
    model: TinyModel = field(default_factory=TinyModel)
    # a local Hugging Face causal-LM dir, or the preset "smollm2", used instead of training the tiny LM
    base_model: str | None = ranged(model_dir("smollm2", classes=CAUSAL_LM, what="causal LM"), None)
    # optimisation steps of base LM training on the in-distribution corpus
    lm_steps: int = ranged(at_least(1), 800)
    # sequences per LM training batch
    lm_batch_size: int = ranged(at_least(1), 32)
    # tokens per LM training sequence
    lm_seq_len: int = ranged(at_least(2), 48)
    # AdamW learning rate of LM training
    lm_lr: float = ranged(above(0), 3e-3)
    # steps at which the LM is saved: the diverse ("Baklava") RM featurizer inits; the last is the SFT policy
    checkpoint_steps: list[int] = ranged(each(at_least(1)), factory=lambda: [600, 700, 800])
    # words of a corpus sentence used as the prompt
    prompt_words: int = ranged(at_least(1), 4)
    # tokens per sampled completion
    max_new_tokens: int = ranged(at_least(1), 20)
    # sampling temperature of the train and ID-validation pairs
    temperature: float = ranged(above(0), 1.0)
    # sampling temperature of the OOD test pairs (the distribution shift, with other text)
    ood_temperature: float = ranged(above(0), 1.2)
    # repetition penalty of the drifted OOD sampler (< 1 rewards repeating itself, as hacking policies do)
    ood_repetition_penalty: float = ranged(above(0), 0.5)
    # logit offset of the drifted OOD sampler for tokens spelling positive lexicon words
    ood_sentiment_bias: float = ranged(at_least(0), 3.0)
    # labelled training pairs
    n_train: int = ranged(at_least(1), 3000)
    # labelled in-distribution pairs for selection (greedy soup, best member, early stopping)
    n_selection: int = ranged(at_least(1), 500)
    # labelled in-distribution test pairs (reporting only)
    n_test: int = ranged(at_least(1), 500)
    # labelled out-of-distribution test pairs (reporting only)
    n_ood: int = ranged(at_least(1), 500)
    # pairs whose gold scores differ by less than this are dropped (ties carry no label)
    min_margin: float = ranged(at_least(0), 0.1)
    # fraction of training labels flipped (chosen <-> rejected), flagged per row
    label_noise: float = ranged(within(0, 1, open_hi=True), 0.25)
    # inverse temperature of the Bradley-Terry label model (labels are its argmax)
    bt_beta: float = ranged(above(0), 10.0)
    # sequences per sampling batch
    sample_batch_size: int = ranged(at_least(1), 256)
    # device and threads of this stage
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, num_threads=2))

    def check(self) -> Faults:
        if self.base_model is not None:
            return  # no LM is trained: the steps and the tiny model's shape are unused
        steps = self.checkpoint_steps
        if steps and max(steps) > self.lm_steps:
            yield "checkpoint_steps", steps, f"must lie in [1, lm_steps={self.lm_steps}]"
        if len(set(steps)) != len(steps):
            yield "checkpoint_steps", steps, "must not repeat a step"
        if self.lm_seq_len > self.model.n_positions:
            yield "lm_seq_len", self.lm_seq_len, f"must be <= model.n_positions ({self.model.n_positions})"


@dataclass
class WarmMember:
    """Per-member hyperparameters; unset fields are drawn from the diversity grids."""

    # learning rate of full fine-tuning
    lr: float | None = ranged(above(0), None)
    # dropout of the featurizer
    dropout: float | None = ranged(within(0, 1, open_hi=True), None)
    # seed of data order and head init
    seed: int | None = None
    # index into prepare.checkpoint_steps of the featurizer init (Baklava)
    init_checkpoint: int | None = ranged(at_least(0), None)


@dataclass
class WarmConfig:
    """`warm-ray warm`: M reward models trained concurrently, weight-averaged by a parameter server."""

    # number of RM members (at most 64: what one run can train)
    m: int = ranged(at_least(1), 4)
    # master seed; member i uses seed + i
    seed: int = 0
    # RM featurizer: "policy" (the prepared base LM checkpoints) or a local HF model dir (a base LM, causal, masked
    # or an encoder, a sequence-classification head is put on)
    featurizer: str = ranged(model_dir("policy", "minilm", classes=FEATURIZER, what="base LM"), "policy")
    # learning rates drawn from, member i takes lrs[i % len]
    lrs: list[float] = ranged(each(above(0)), factory=lambda: [3e-4, 1e-3, 2e-3])
    # dropouts drawn from
    dropouts: list[float] = ranged(each(within(0, 1, open_hi=True)), factory=lambda: [0.05, 0.1])
    # featurizer inits to vary over instead (Baklava): local Hugging Face dirs or hub ids sharing one tokenizer
    # (empty: `featurizer`)
    inits: list[str] = ranged(each(model_dir(classes=FEATURIZER, what="base LM"), nonempty=False), factory=list)
    # vary the featurizer init over prepare's checkpoints, or over `inits` (Baklava)
    baklava: bool = True
    # explicit per-member overrides (length m), optional
    members: list[WarmMember] = field(default_factory=list)
    # linear-probing epochs on frozen features (shared by all members)
    lp_epochs: int = ranged(at_least(1), 20)
    # linear-probing learning rate
    lp_lr: float = ranged(above(0), 1e-2)
    # fine-tuning epochs over the train split (3: long enough for single members to memorise flipped labels)
    epochs: int = ranged(at_least(1), 3)
    # learning rate over the fine-tuning steps: "linear" decays it to 0 (as TRL's RewardTrainer does),
    # "constant" keeps it
    lr_schedule: str = ranged(named(LR_SCHEDULES.names), "linear")
    # share of the fine-tuning steps over which the learning rate first ramps up linearly from ~0
    warmup: float = ranged(within(0, 1, open_hi=True), 0.0)
    # how members take lr, dropout and init from the grids: "round_robin" (member i takes entry i mod
    # length) or "independent" (each drawn uniformly per member from its seed, as WARM does)
    draw: str = ranged(one_of("round_robin", "independent"), "round_robin")
    # pairs per training batch
    batch_size: int = ranged(at_least(1), 32)
    # max tokens of prompt + completion seen by the RM
    max_length: int = ranged(at_least(2), 64)
    # weight decay of AdamW
    weight_decay: float = ranged(at_least(0), 0.0)
    # write a member checkpoint every this many steps
    checkpoint_every: int = ranged(at_least(1), 20)
    # report metrics every this many steps
    log_every: int = ranged(at_least(1), 10)
    # send members' weights to the parameter server every this many steps (0: only at the end)
    sync_every: int = ranged(at_least(0), 0)
    # restarts Ray grants a dead trainer actor (-1: unlimited)
    max_restarts: int = ranged(at_least(-1), 3)
    # resources of each trainer actor
    trainer: Resources = field(default_factory=lambda: Resources(num_cpus=0.5))
    # number of Ray Train workers per member (1: a plain actor; >1: data-parallel TorchTrainer)
    workers_per_member: int = ranged(at_least(1), 1)
    # points along the line between every member pair at which loss and accuracy are measured (linear mode
    # connectivity, WARM's precondition; both ends included; 0: not measured)
    lmc_points: int = ranged(at_least(0), 5)
    # members count as linearly connected when every pair's Bradley-Terry loss barrier on the selection split
    # (nats above the straight line between the pair's losses) is at most this
    lmc_tolerance: float = ranged(at_least(0), 0.02)
    # pairs of the selection split (the verdict, and the study's recipe rule) scored along the lines, at most
    # (0: all)
    lmc_max_pairs: int = ranged(at_least(0), 500)
    # pairs of clean train and of each test split (their curves are reported, never read by the verdict or the
    # recipe rule) scored along the lines, at most (0: all): 200 keeps the check under a fifth of an RM part
    lmc_report_pairs: int = ranged(at_least(0), 200)
    # texts per forward pass when the driver scores evaluation sets and Best-of-N pools (64 keeps
    # a tiny RM's activations in a CPU core's cache: ~20% faster than 256 on the default)
    eval_batch_size: int = ranged(at_least(1), 64)
    # torch threads of the evaluation in the driver, which runs once the trainers are done
    # (0: every core this process may use)
    eval_threads: int = ranged(at_least(0), 0)

    def check(self) -> Faults:
        if self.lmc_points == 1:
            yield "lmc_points", self.lmc_points, "must be 0 (no LMC curve) or >= 2"
        if self.inits and self.featurizer != "policy":
            yield "inits", self.inits, f"set either inits or featurizer ({self.featurizer!r}), not both"
        if self.members and len(self.members) != self.m:
            yield "members", ..., f"has {len(self.members)} entries: must be empty or have m={self.m}"


@dataclass
class OnlineConfig:
    """`rl.online`: online WARM. Every ``every`` RL steps, pairs of the policy's own samples (two
    completions of one training prompt of that step) are labelled by the benchmark's gold reward, or on
    your data by `study.judge`, never by the proxy; each member of the run's reward (every WARM member, or
    the single member) takes ``steps`` Adam steps on them mixed with its own training pairs, in a Ray actor
    kept through the run; the parameter server publishes the new average as a new reward version, and
    the scorer pulls it, re-standardised on the same SFT samples (so β keeps its meaning)."""

    # refresh every K RL steps (0: off, the reward models stay fixed through the run)
    every: int = ranged(at_least(0), 0)
    # label budget per refresh: pairs labelled (two samples of one prompt each; a gold tie is not labelled)
    pairs: int = ranged(at_least(1), 32)
    # Adam steps each member takes per refresh
    steps: int = ranged(at_least(1), 8)
    # pairs per member step
    batch_size: int = ranged(at_least(2), 16)
    # share of each step's pairs drawn from the member's own training pairs (the rest: this refresh's new pairs)
    mix: float = ranged(within(0, 1, open_hi=True), 0.5)
    # learning rate of a refresh (constant; a fresh optimizer per refresh)
    lr: float = ranged(above(0), 1e-4)
    # share of the new labels flipped (None: the label noise of the members' data, study.label_noise or
    # prepare.label_noise; 0: none)
    label_noise: float | None = ranged(within(0, 0.5, open_hi=True), None)
    # resources of each member trainer (one Ray actor per refreshed member, kept through the run)
    trainer: Resources = field(default_factory=lambda: Resources(num_cpus=0.2))


@dataclass
class RLConfig:
    """`warm-ray rl`: REINFORCE with KL to an anchor, rewarded by WARM, one RM or the members combined."""

    # master seed
    seed: int = 0
    # reward mode (warm_ray.names.REWARD_MODES): "warm" (weight average, 1 forward pass),
    # "single" (one member), "ens" (mean of members), "wco" (min), "uwo" (mean - λ·variance); or "gold"
    # (the synthetic benchmark's gold reward itself: an oracle run, no RM)
    reward: str = ranged(named(rl_rewards), "warm")
    # λ of "uwo": weight of the across-member variance of normalised scores (Coste et al. 2023)
    uwo_lambda: float = ranged(at_least(0), 0.5)
    # member used when reward == "single" (< warm.m); -1: the best member on the selection split
    single_member: int = ranged(at_least(-1), -1)
    # other reward modes `warm-ray rl` runs on the same budget and compares with `reward` (gold win rates)
    compare: list[str] = ranged(each(named(rl_rewards), nonempty=False),
                                factory=lambda: ["single"])
    # SFT samples (one per training prompt) rewards are normalised on, drawn once per run
    reference_samples: int = ranged(at_least(2), 64)
    # disagreement monitor: members score the policy's samples every K steps (0: off)
    monitor_every: int = ranged(at_least(0), 5)
    # disagreement monitor: samples of a step scored per check, at most
    monitor_samples: int = ranged(at_least(2), 32)
    # disagreement alarm: spread across members above this multiple of its SFT reference
    alarm_ratio: float = ranged(above(0), 2.0)
    # the alarm's rule instead, "<signal> > <threshold>" over a signal of warm_ray.alarm.SIGNALS (e.g. the one
    # `warm-ray study` calibrated: "warm_gap > 0.8"); "": "spread_ratio > rl.alarm_ratio"
    alarm_rule: str = ranged(Rule(lambda v: _alarm_rule_fault(v)), "")
    # what a run does at its first alarm: "log" it, "stop" (the run's result is its last checkpoint
    # before the alarm), or "checkpoint" (keep the policy of the alarm's step beside the run, and go on)
    on_alarm: str = ranged(one_of("log", "stop", "checkpoint"), "log")
    # REINFORCE steps
    steps: int = ranged(at_least(1), 50)
    # prompts per step (batch = prompts_per_step x samples_per_prompt; the papers use 128)
    prompts_per_step: int = ranged(at_least(1), 16)
    # samples per prompt (n); leave-one-out baseline needs n >= 2
    samples_per_prompt: int = ranged(at_least(1), 4)
    # tokens per completion
    max_new_tokens: int = ranged(at_least(1), 20)
    # sampling temperature (the paper's 0.9)
    temperature: float = ranged(above(0), 0.9)
    # Adam learning rate (the papers' 1e-5/1e-6 are for billion-parameter policies; with rewards
    # standardised on SFT samples, 1e-4 lets KL to SFT grow over a run, 1e-3 reaches 20 nats in 10 steps)
    lr: float = ranged(above(0), 1e-4)
    # KL coefficient β
    beta: float = ranged(at_least(0), 0.05)
    # baseline: "loo" (leave-one-out over n samples), "ema" (moving average), "none"
    baseline: str = ranged(named(BASELINES.names), "loo")
    # rate of the moving-average baseline
    baseline_ema: float = ranged(within(0, 1), 0.9)
    # anchor of the KL term: "sft" or "ema" (WARP)
    anchor: str = ranged(named(ANCHORS.names), "sft")
    # EMA anchor rate μ (WARP)
    ema_mu: float = ranged(within(0, 1, open_lo=True), 0.01)
    # rollout backend: "hf" or "vllm"
    backend: str = ranged(named(BACKENDS.names), "hf")
    # rollout workers
    n_workers: int = ranged(at_least(1), 1)
    # resources of each rollout worker
    rollout: Resources = field(default_factory=lambda: Resources(num_cpus=0.5))
    # vLLM on GPU: share of the GPU's memory its engine may take (weights + KV cache); size it to what
    # the roles sharing that GPU leave free
    vllm_gpu_memory_utilization: float = ranged(within(0, 1, open_lo=True), 0.3)
    # vLLM on CPU: KV-cache size in MiB (without one vLLM reserves most of the machine's memory)
    vllm_kv_cache_mb: int = ranged(at_least(1), 64)
    # resources of the learner
    learner: Resources = field(default_factory=lambda: Resources(num_cpus=0.5))
    # where the reward models score: "driver" (the driver process, on CPU in float32; the faster one for the
    # tiny CPU models, bench/scorer.py) or "actor" (a Ray actor with the resources of `scorer`, e.g. on a GPU)
    scorer_placement: str = ranged(one_of("actor", "driver"), "driver")
    # resources of the reward scorer actor; a GPU share (e.g. 0.25) lets it sit beside the learner
    scorer: Resources = field(default_factory=lambda: Resources(num_cpus=0.5))
    # checkpoint every K steps
    checkpoint_every: int = ranged(at_least(1), 20)
    # sample step t+1 while the learner takes step t (the rollout workers and the learner run at
    # once): step t+1 learns on samples of the weights before step t's update, one step off-policy,
    # with truncated importance weights. Never across a checkpoint: the step after one samples
    # on-policy, so a resumed run equals an uninterrupted one
    overlap: bool = False
    # truncation cap of the per-token importance weights of off-policy samples (rl.overlap)
    is_cap: float = ranged(at_least(1), 2.0)
    # held-out prompts for the final evaluation
    n_eval_prompts: int = ranged(at_least(1), 64)
    # online WARM: the reward's members refreshed on labelled samples of the policy during the run
    online: OnlineConfig = field(default_factory=OnlineConfig)

    def check(self) -> Faults:
        if self.baseline == "loo" and self.samples_per_prompt < 2:
            yield "samples_per_prompt", self.samples_per_prompt, "must be >= 2 with baseline 'loo'"
        if self.online.every:
            if self.reward not in ONLINE_REWARDS:
                yield "online.every", self.online.every, (f"refreshes the members of reward {' or '.join(ONLINE_REWARDS)}"
                                                          f", not {self.reward!r}: set rl.online.every = 0")
            if self.samples_per_prompt < 2:
                yield "samples_per_prompt", self.samples_per_prompt, "must be >= 2 with rl.online (pairs of one prompt)"


@dataclass
class WarpConfig:
    """`warm-ray warp`: EMA-anchored RL runs in parallel, SLERP of task vectors, LITI, iterated."""

    # iterations I
    iterations: int = ranged(at_least(1), 2)
    # parallel RL runs per iteration M (at most 64: what one run can train)
    m: int = ranged(at_least(1), 2)
    # RL steps per run T (overrides rl.steps)
    steps: int = ranged(at_least(1), 20)
    # RL runs at once (0: all M in parallel)
    max_parallel: int = ranged(at_least(0), 0)
    # SLERP coefficient λ (used for M=2; M>2 merges recursively with 1/m)
    lam: float = ranged(within(0, 1), 0.5)
    # LITI coefficient η whose point starts the next iteration
    eta: float = ranged(within(0, 1), 0.3)
    # η grid evaluated for the reward-KL front (warp.eta and η = 1, the merged end point, are always added)
    eta_grid: list[float] = ranged(each(within(0, 1), nonempty=False), factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    # β values of the SFT-anchored REINFORCE baselines in the comparison plot
    baseline_betas: list[float] = ranged(each(at_least(0), nonempty=False), factory=lambda: [0.02, 0.1, 0.5])
    # how the M runs are merged (warm_ray.names.MERGE_METHODS): its LITI point at eta starts the next iteration
    merge: str = ranged(named(MERGE_METHODS.names), "slerp")
    # other merge methods whose LITI fronts are evaluated beside warp.merge's (the ablation; [] for none)
    compare: list[str] = ranged(each(named(MERGE_METHODS.names), nonempty=False), factory=lambda: ["lerp"])
    # the RL settings of each run (anchored to its EMA; μ·T = 0.2 x 20 = 4: the EMA anchor really
    # follows the policy, as WARP's μ=0.01 over thousands of steps does). Its steps, anchor and
    # compare are not read: warp.steps sets the steps, the anchor is the EMA, warp.compare compares
    rl: RLConfig = field(default_factory=lambda: RLConfig(anchor="ema", beta=0.1, steps=20, ema_mu=0.2))

    def check(self) -> Faults:
        if self.rl.online.every:
            yield "rl.online.every", self.rl.online.every, ("must be 0: WARP's runs share one reward, which online "
                                                             "refreshes would change under the others")
        default = WarpConfig.__dataclass_fields__["rl"].default_factory()
        wins = {"steps": "warp.steps sets the steps of every WARP run",
                "anchor": "WARP's runs are anchored to their EMA (the SFT-anchored runs are warp.baseline_betas)",
                "compare": "warp.compare lists the merges compared; the reward is warp.rl.reward"}
        for key, why in wins.items():
            if getattr(self.rl, key) != getattr(default, key):
                yield f"rl.{key}", getattr(self.rl, key), f"is not read by `warm-ray warp`: {why}"


@dataclass
class SweepConfig:
    """`warm-ray sweep`: a Ray Tune sweep over one stage."""

    # the stage swept: "warm", "rl" or "warp"
    stage: str = "warm"
    # search: "grid", "random" or "optuna"
    search: str = ranged(one_of("grid", "random", "optuna"), "grid")
    # trials for random / optuna search
    num_samples: int = ranged(at_least(1), 3)
    # parameter space: dotted stage key -> list of values
    space: dict[str, list] = ranged(each(each()), factory=lambda: {"m": [1, 2, 4]})
    # metric optimised and its mode
    metric: str = "ood_acc_warm"
    # "max" or "min"
    mode: str = ranged(one_of("max", "min"), "max")
    # ASHA early stopping for stages that report intermediate metrics
    asha: bool = False
    # trials run at once
    max_concurrent: int = ranged(at_least(1), 1)
    # logical CPUs reserved for each trial's driver (linear probe, evaluation); 0 lets the stage's
    # actors take the whole machine, like the parameter server's num_cpus=0
    driver_cpus: float = ranged(at_least(0), 0.0)

    def check(self) -> Faults:
        # each value of the space in its key's range (the sweep's own checks name unknown keys and wrong types)
        section = typing.get_type_hints(Config).get(self.stage)
        for key, values in self.space.items():
            found = _field_at(section, str(key).split("."))
            if found is None:
                continue
            f, tp = found
            for i, value in enumerate(values):
                try:
                    value = _check_type(value, tp, str(key))
                except ConfigError:
                    continue
                if value is not None:
                    yield from _field_faults(f, value, f"space.{key}[{i}]")


@dataclass
class StudyConfig:
    """`warm-ray study`: the whole pipeline replicated over seeds, paired claims with 95% CIs.

    Each seed draws new label flips, new member seeds and new RL seeds; the base LM and the
    pairs' texts come from one `prepare`. Primary claims are declared here, before running.
    """

    # replicate seeds (each: new label flips, member seeds, RL seeds)
    seeds: list[int] = ranged(each(at_least(0)), factory=lambda: [0, 1, 2, 3, 4])
    # the member recipes (name -> warm.* overrides) the study chooses among before any claim is computed, by
    # the rule of actors.study.RECIPE_RULE: the best mean member on the selection split among the recipes whose
    # members are linearly connected there. "lr_high": the default lrs, at or above the base LM's own at its
    # Baklava checkpoints (3e-4 to 7.5e-4); "lr_low": lrs at or under it with warm-up, and lr, dropout and init drawn
    # independently per member (as WARM does)
    recipes: dict[str, list[str]] = ranged(each(each(nonempty=False)), factory=lambda: {
        "lr_high": [],
        "lr_low": ["warm.lrs=[1e-4, 2e-4, 4e-4]", "warm.warmup=0.1", "warm.draw=independent"]})
    # run this recipe of `recipes` without choosing ("": choose by the rule)
    recipe: str = ""
    # seeds whose selection split the rule reads (empty: the first of `seeds`, whose runs of the chosen recipe
    # are then the study's own)
    recipe_seeds: list[int] = ranged(each(at_least(0), nonempty=False), factory=list)
    # share of training labels flipped anew per seed (flagged, so memorisation is measured on them): None takes
    # prepare.label_noise (the benchmark's); on your own data (data.preferences) the flips come on top of your
    # labels; below 0.5 (at 0.5 a flipped label is as likely as the real one)
    label_noise: float | None = ranged(within(0, 0.5, open_hi=True), None)
    # on your own data (data.preferences): the reward model that plays gold, never trained on and never a proxy:
    # "" (none: the rm part only), a sequence-classification RM dir (num_labels 1), a warm-ray run dir (its WARM
    # RM) or "benchmark" (the shipped gold reward); it judges Best-of-N and may relabel the pairs (`labels`)
    judge: str = ""
    # labels of your pairs: "data" (as given) or "judge" (every pair ordered by the judge's scores, the set-up of
    # Gao et al. 2022: proxies learn the judge's preferences from finite, noisy labels)
    labels: str = ranged(one_of("data", "judge"), "data")
    # parts run per seed, in order: "rm" (WARM + evaluation), "bon" (Best-of-N), "rl" (RL curves per
    # reward arm), "warp" (WARP fronts at matched KL)
    parts: list[str] = ranged(each(one_of("rm", "bon", "rl", "warp")), factory=lambda: ["rm", "bon"])
    # the claims tested first, declared before running (names from `warm-ray study --list-claims`)
    primary: list[str] = field(default_factory=lambda: [
        "memorisation: WARM < ENS", "OOD accuracy: WARM > ENS", "BoN gold @N=16: WARM > best single"])
    # confidence level of the intervals
    level: float = ranged(within(0, 1, open_lo=True, open_hi=True), 0.95)
    # half-width under which an "≈" claim (ID accuracy WARM ≈ ENS) holds
    approx_tol: float = ranged(above(0), 0.01)
    # held-out prompts of Best-of-N
    bon_prompts: int = ranged(at_least(1), 128)
    # samples per prompt K (every N <= K is evaluated exactly from them)
    bon_samples: int = ranged(at_least(1), 64)
    # N of Best-of-N
    bon_n: list[int] = ranged(each(at_least(1)), factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    # sampling temperature of Best-of-N (1.0: the policy's own distribution, where KL = log N - (N-1)/N)
    bon_temperature: float = ranged(above(0), 1.0)
    # λ of the uncertainty-weighted ensemble (mean - λ · variance of normalised member scores)
    uwo_lambda: float = ranged(at_least(0), 0.5)
    # RL reward arms compared: any of "single" (best member on selection), "ens", "warm", "wco", "uwo", and the
    # online arms "warm_online" and "single_online" (those members refreshed during each run, as rl.online says)
    rl_arms: list[str] = ranged(each(named(study_arms)),
                                factory=lambda: ["single", "ens", "warm"])
    # KL coefficients β of the RL arms (rewards standardised on SFT samples, so β means the same for all):
    # 0.02 and 0.1 bracket `warm-ray rl`'s 0.05, so each arm is compared on a front, not one point of it
    rl_betas: list[float] = ranged(each(at_least(0)), factory=lambda: [0.02, 0.1])
    # training prompts of the SFT samples the RL arms' rewards are standardised on (global mean, pooled
    # within-prompt SD: the spread a leave-one-out baseline passes to the advantage)
    std_prompts: int = ranged(at_least(1), 128)
    # SFT samples per prompt of that standardisation (>= 2: a within-prompt variance)
    std_samples: int = ranged(at_least(2), 4)
    # evaluate every K RL steps on held-out prompts (gold, proxy, KL to SFT)
    eval_every: int = ranged(at_least(1), 5)
    # held-out prompts of each of an RL evaluation's two draws (disjoint prompts, own sampling seeds: one
    # selects the peak step, the other measures it; both together give the curve); at most 128, half of
    # the benchmark's 256 held-out prompts
    eval_prompts: int = ranged(within(1, 128), 64)
    # KL values (nats) at which RL curves and WARP fronts are compared (interpolated, never extrapolated)
    kl_targets: list[float] = ranged(each(above(0)), factory=lambda: [1.0, 2.0, 4.0])
    # the alarm section (warm_ray.alarm): seeds whose RL runs calibrate each signal's alarm rule; the other
    # seeds report it ([]: no alarm section; none either without the rl part). Declared before running.
    alarm_seeds: list[int] = ranged(each(at_least(0), nonempty=False), factory=list)
    # a run's gold "fell" when its held-out gold ends more than this below its peak (gold units; on the
    # benchmark a held-out point, two draws of 64 prompts x 2 samples, has a standard error of about 0.035:
    # 0.1 is about two standard errors of the difference of two points)
    alarm_fall_margin: float = ranged(above(0), 0.1)
    # seeds running at once, each in its own Ray placement group sized from the config (what one seed's parts
    # ask for: the member trainers, one RL slot per rl_parallel, WARP's slots, the seed's own process below):
    # 0 = as many as the cluster holds, 1 = one after another in the driver. Results do not depend on it.
    max_parallel: int = ranged(at_least(0), 0)
    # RL arm x beta runs of a seed running at once, each on its own learner and rollout workers (1: one slot, reset
    # for each run). Results do not depend on it.
    rl_parallel: int = ranged(at_least(1), 1)
    # resources of a seed's own process (Best-of-N sampling and scoring, the members' evaluation, held-out RL
    # evaluation) when seeds run as parallel Ray tasks; 0 CPUs: like the driver, it reserves none
    seed_resources: Resources = field(default_factory=lambda: Resources(num_cpus=0))
    # times Ray re-runs a seed whose process died with its node (finished parts of the seed are reused)
    task_retries: int = ranged(at_least(0), 3)

    def check(self) -> Faults:
        if self.alarm_seeds and (set(self.alarm_seeds) - set(self.seeds) or set(self.seeds) <= set(self.alarm_seeds)):
            yield "alarm_seeds", self.alarm_seeds, (f"must be some of study.seeds {self.seeds}, not all: the other "
                                                    "seeds report the calibrated alarms")
        if max(self.bon_n) > self.bon_samples:
            yield "bon_n", self.bon_n, f"every N must be <= bon_samples ({self.bon_samples})"
        if not self.recipes:
            yield "recipes", self.recipes, "must name at least one recipe"
        for name, overrides in self.recipes.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)):
                yield "recipes", name, "a recipe name may hold letters, digits, '_', '.' and '-' only"
            if not isinstance(overrides, list):
                yield f"recipes.{name}", overrides, "must be a list of 'warm.key=value' overrides"
                continue
            for o in overrides:
                if not (isinstance(o, str) and o.startswith("warm.") and "=" in o) or str(o).startswith("warm.lmc_"):
                    yield f"recipes.{name}", o, "each override must be 'warm.key=value' (warm.lmc_* are shared)"
        if self.recipe and self.recipe not in self.recipes:
            yield "recipe", self.recipe, f"must be one of study.recipes ({', '.join(self.recipes)}) or ''"
        if len(set(self.seeds)) != len(self.seeds):
            yield "seeds", self.seeds, "must not repeat a seed"
        if self.labels == "judge" and not self.judge:
            yield "labels", self.labels, "'judge' needs study.judge (a reward-model dir, a warm-ray run dir or 'benchmark')"


@dataclass
class DataConfig:
    """Preference data of `warm-ray warm`: the benchmark `warm-ray prepare` builds, or the user's own."""

    # preference pairs: "" (the prepared benchmark), a .jsonl/.json/.parquet file, a saved datasets dir or a
    # hub dataset id; TRL's standard (prompt/chosen/rejected, or chosen/rejected with the prompt inside) or
    # conversational (lists of {role, content} messages) layout
    preferences: str = ranged(data_path(PREFERENCE_FORMATS), "")
    # optional out-of-distribution pairs, reported only: "" (none, or the data's own test_ood split), or a file/dir/id
    ood: str = ranged(data_path(PREFERENCE_FORMATS), "")
    # split of `preferences` used to train when it has named splits
    train_split: str = ranged(each(), "train")
    # share of the pairs held out for selection (greedy soup, best member) when the data has no such split
    selection_fraction: float = ranged(within(0, 1, open_lo=True, open_hi=True), 0.1)
    # share of the pairs held out for the ID test when the data has no such split
    test_fraction: float = ranged(within(0, 1, open_lo=True, open_hi=True), 0.1)
    # seed of that split
    split_seed: int = 0
    # at most this many training pairs (None: all)
    max_train: int | None = ranged(at_least(1), None)
    # chat template of conversational rows when the RM tokenizer has none: "" (error), "plain" ("role: content"
    # lines) or a Jinja template
    chat_template: str = ""
    # pairs whose chosen equals rejected carry no preference: "skip" them (counted and logged) or "error"
    identical: str = ranged(one_of("skip", "error"), "skip")

    def check(self) -> Faults:
        if self.selection_fraction + self.test_fraction >= 1:
            yield ("test_fraction", self.test_fraction,
                   f"selection_fraction + test_fraction must be < 1 (selection_fraction is {self.selection_fraction})")
        if self.ood and not self.preferences:
            yield "ood", self.ood, "needs data.preferences: the prepared benchmark has its own OOD split"


@dataclass
class PolicyConfig:
    """What `warm-ray rl` and `warm-ray warp` train and against what: the benchmark's, or the user's own."""

    # SFT policy: "" (the base LM `warm-ray prepare` trained), a local Hugging Face causal-LM dir, a hub id,
    # or "smollm2"
    model: str = ranged(model_dir("", "smollm2", classes=CAUSAL_LM, what="causal LM"), "")
    # prompts: "" (the prepared benchmark's), a .txt file (one prompt per line) or a .jsonl/.json file of
    # rows with "prompt" (a string, or a list of {role, content} messages rendered with the chat template)
    prompts: str = ranged(data_path(PROMPT_FORMATS, dirs=False, hub=False), "")
    # share of the prompt file held out for evaluation (never trained on)
    eval_fraction: float = ranged(within(0, 1, open_lo=True, open_hi=True), 0.1)
    # seed of that split
    split_seed: int = 0
    # the reward models: "" (this run dir's `warm-ray warm` output), another run dir or its warm/ dir (every
    # reward mode), or any sequence-classification RM dir (one model, reward mode "warm")
    reward_model: str = ""
    # chat template of message prompts when the policy's tokenizer has none: "" (error), "plain" or a Jinja template
    chat_template: str = ""

    def check(self) -> Faults:
        if self.reward_model:
            path = Path(self.reward_model).expanduser()
            if not path.is_dir():
                yield "reward_model", self.reward_model, ("no such directory; use '' (this run's warm stage), a run "
                                                          "dir, a warm dir or a reward-model dir")
            elif any((path / d).is_dir() for d in ("warm", "warm_rm")):
                return  # a run dir or its warm dir
            elif not (path / "config.json").is_file():
                yield ("reward_model", self.reward_model, "has no config.json and no warm stage (warm/ or warm_rm/): "
                       "not a reward-model dir or a run dir")
            else:
                try:
                    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
                except (ValueError, OSError) as e:
                    yield "reward_model", self.reward_model, f"its config.json is not readable JSON ({e})"
                    return
                fault = _class_fault(config, SEQUENCE_CLASSIFIER, "sequence-classification reward model")
                if fault:
                    yield "reward_model", self.reward_model, fault


# what `warm-ray merge` does with its models (merge.method)
MERGE_CLI_METHODS = ("average", "greedy_soup", "slerp", "liti")


@dataclass
class MergeConfig:
    """`warm-ray merge`: one model from Hugging Face model dirs of one architecture (reward models trained
    elsewhere, e.g. by TRL's RewardTrainer or OpenRLHF, or causal-LM policies), written as a Hugging Face dir."""

    # the models merged: local Hugging Face dirs (or hub ids) of one architecture, each a sequence-classification
    # reward model or a causal LM; also given as the command's arguments (`warm-ray merge DIR DIR ...`)
    models: list[str] = ranged(each(model_dir(classes=SEQUENCE_CLASSIFIER + CAUSAL_LM,
                                              what="sequence-classification or causal-LM model"), nonempty=False),
                               factory=list)
    # "average" (WARM: the weighted average), "greedy_soup" (models sorted by pairwise accuracy on
    # `selection`, each kept if the soup's accuracy does not fall; reward models only), "slerp" (SLERP of the
    # task vectors from `base`, each tensor with its own angle: WARP), "liti" (the SLERP, interpolated
    # towards `base` by `eta`: WARP's LITI)
    method: str = ranged(one_of(*MERGE_CLI_METHODS), "average")
    # average: one weight per model (normalised to sum to 1); empty: uniform
    weights: list[float] = ranged(each(at_least(0), nonempty=False), factory=list)
    # slerp and liti: the shared init the task vectors start from (a Hugging Face dir of the same architecture)
    base: str = ranged(model_dir("", classes=SEQUENCE_CLASSIFIER + CAUSAL_LM,
                                 what="sequence-classification or causal-LM model"), "")
    # slerp of two models: λ (0: the first, 1: the second); more models: recursive 1/m (WARP Sec. 3.2)
    lam: float = ranged(within(0, 1), 0.5)
    # liti: θ = (1-η)·base + η·slerp (0: the base, 1: the SLERP)
    eta: float = ranged(within(0, 1), 0.3)
    # greedy_soup: preference pairs the soup is chosen on (.jsonl/.json/.parquet or a saved datasets dir; with
    # named splits, its selection split); never a test set
    selection: str = ranged(data_path(PREFERENCE_FORMATS, hub=False), "")
    # greedy_soup: tokens of prompt + completion the reward models score
    max_length: int = ranged(at_least(1), 512)
    # greedy_soup: chat template of conversational pairs when the tokenizer has none ("", "plain" or Jinja)
    chat_template: str = ""

    def check(self) -> Faults:
        needs_base = self.method in ("slerp", "liti")
        if needs_base and not self.base:
            yield "base", self.base, f"merge.method = {self.method!r} needs the shared init the task vectors start from"
        if self.base and not needs_base:
            yield "base", self.base, f"is not read by merge.method = {self.method!r} (only by 'slerp' and 'liti')"
        if self.method == "greedy_soup" and not self.selection:
            yield "selection", self.selection, "merge.method = 'greedy_soup' needs preference pairs to choose the soup on"
        if self.selection and self.method != "greedy_soup":
            yield "selection", self.selection, f"is not read by merge.method = {self.method!r} (only by 'greedy_soup')"
        if self.weights and self.method != "average":
            yield "weights", self.weights, f"is not read by merge.method = {self.method!r} (only by 'average')"
        if self.weights and self.models and len(self.weights) != len(self.models):
            yield "weights", self.weights, f"must give one weight per model ({len(self.models)} models)"
        elif self.weights and sum(self.weights) <= 0:
            yield "weights", self.weights, "must not all be 0"


@dataclass
class Config:
    """The whole config file: one section per stage, plus where runs go."""

    # directory of this run's outputs (each stage writes its own subdirectory)
    run_dir: str = ranged(each(), "runs/demo")
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    # the user's own preference data (default: the prepared benchmark)
    data: DataConfig = field(default_factory=DataConfig)
    # the user's own SFT policy, prompts and reward model (default: the prepared benchmark's)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    warm: WarmConfig = field(default_factory=WarmConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    warp: WarpConfig = field(default_factory=WarpConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    # `warm-ray merge`: Hugging Face dirs merged into one
    merge: MergeConfig = field(default_factory=MergeConfig)

    def check(self) -> Faults:
        if Path(self.run_dir).is_file():
            yield "run_dir", self.run_dir, "is a file: must be a directory (or not exist yet)"
        for key, rl in (("rl", self.rl), ("warp.rl", self.warp.rl)):
            if rl.single_member >= self.warm.m:
                yield f"{key}.single_member", rl.single_member, f"must be < warm.m ({self.warm.m}): a member index"
        # featurizer inits a member can start from: prepare's checkpoints, or one given model
        n_inits = len(self.warm.inits) or ((len(self.prepare.checkpoint_steps) if self.prepare.base_model is None
                                             else 1) if self.warm.featurizer == "policy" else 1)
        for i, member in enumerate(self.warm.members):
            if member.init_checkpoint is not None and member.init_checkpoint >= n_inits:
                yield (f"warm.members[{i}].init_checkpoint", member.init_checkpoint,
                       f"must be < {n_inits}: an index into the featurizer's {n_inits} checkpoints")


# ------------------------------------------------------------------------------------------
# Loading, overriding, saving
# ------------------------------------------------------------------------------------------


def _check_type(value: Any, tp: Any, path: str, default: Any = None) -> Any:
    """Coerce/validate ``value`` against the annotation ``tp``; raise ConfigError naming ``path``.

    A mapping given for a nested section is merged onto ``default``, the section as its parent
    builds it (``warp.rl`` starts from WarpConfig's RLConfig, not from RLConfig's class defaults).
    """
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, path, default)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, path, base=default if isinstance(default, tp) else None)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_check_type(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is list and not isinstance(value, (list, tuple)):
        raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        _, item = typing.get_args(tp) or (Any, Any)
        return {k: _check_type(v, item, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{path} = {value!r}: expected a finite number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
        return value
    return value


def from_dict(cls, data: dict, path: str = "", base: Any = None):
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise ConfigError.

    Keys not given keep their value in ``base`` (default: ``cls()``), and so do the keys of a
    nested section that is given only in part. Ranges are checked by ``validate``, once the whole
    config is assembled.
    """
    base = cls() if base is None else base
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else key
            raise ConfigError(
                f"unknown config key {where!r}; valid keys{' of ' + path if path else ''}: {', '.join(sorted(names))}"
            )
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        kwargs[key] = _check_type(value, hints[key], where, getattr(base, key))
    return dataclasses.replace(base, **kwargs)


def _faults(section: Any, path: str) -> Iterator[str]:
    """Every field of ``section`` (and of its sub-sections) outside its declared range or the one its name
    implies (``implied_rule``)."""
    own = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        where = f"{path}.{f.name}" if path else f.name
        if value is not None:
            own += [f"{key} = {v!r}: {text}" for key, v, text in _field_faults(f, value, where)]
        if dataclasses.is_dataclass(value):
            yield from _faults(value, where)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    yield from _faults(item, f"{where}[{i}]")
    yield from own
    check = getattr(section, "check", None)
    if check is not None and not own:  # the rules across fields assume each field is in range
        for key, value, text in check():
            where = f"{path}.{key}" if path else key
            yield f"{where}: {text}" if value is ... else f"{where} = {value!r}: {text}"


def _field_faults(f: dataclasses.Field, value: Any, where: str) -> Faults:
    """(key, value, what is allowed) where ``value`` of field ``f`` is outside the field's declared
    range or, where that one holds, the range its name implies (``implied_rule``)."""
    rule, implied = f.metadata.get("range"), implied_rule(f.name)
    faults = _rule_faults(rule, value, where) if rule is not None else []
    return iter(faults or (_rule_faults(implied, value, where) if implied is not None else []))


def _rule_faults(rule: Rule, value: Any, where: str) -> list[tuple[str, Any, str]]:
    text = rule.fault(value)
    if text is not None:
        return [(where, value, text)]
    if rule.item is None:
        return []
    if isinstance(value, dict):
        named = [(f"{where}.{key}", item) for key, item in value.items()]
    else:
        named = [(f"{where}[{i}]", item) for i, item in enumerate(value)]
    return [fault for name, item in named for fault in _rule_faults(rule.item, item, name)]


def _field_at(cls: Any, parts: list[str]) -> tuple[dataclasses.Field, Any] | None:
    """The field at the dotted key ``parts`` below section ``cls`` and its declared type, or None."""
    found = None
    for part in parts:
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if part not in fields:
            return None
        found, cls = fields[part], typing.get_type_hints(cls)[part]
    return (found, cls) if found is not None else None


def _declared_type(parts: list[str]) -> Any:
    """The type Config declares at the dotted key ``parts`` (through sections and mapping values), or None."""
    tp: Any = Config
    for part in parts:
        if dataclasses.is_dataclass(tp):
            tp = typing.get_type_hints(tp).get(part)
        elif typing.get_origin(tp) is dict and typing.get_args(tp):
            tp = typing.get_args(tp)[1]
        else:
            return None
        if tp is None:
            return None
    return tp


def validate(cfg: Any, path: str = "") -> Any:
    """Check every field against its declared range and every section's ``check()``; raise one
    ConfigError naming each fault as ``dotted.key = value: what is allowed``. Returns ``cfg``."""
    faults = list(_faults(cfg, path))
    if faults:
        raise ConfigError("; ".join(faults))
    return cfg


# RL settings added after runs were recorded, by their defaults: left out of fingerprints while at them,
# so a run recorded before they existed (which behaved as the defaults say) is still reused
RL_LATER_DEFAULTS = {"alarm_rule": "", "on_alarm": "log"}

# reward modes whose members rl.online refreshes (one model scores: the average, or one member)
ONLINE_REWARDS = ("warm", "single")


def rl_fingerprint_fields(fields: dict) -> dict:
    """An RL section's fields (``dataclasses.asdict``) less the later settings at their defaults (``online``
    while it is off)."""
    return {k: v for k, v in fields.items() if (k not in RL_LATER_DEFAULTS or v != RL_LATER_DEFAULTS[k])
            and not (k == "online" and not v.get("every"))}


# rl settings `warm-ray study` sets itself for its RL part, and the setting that wins
STUDY_SETS_RL = {
    "reward": "study.rl_arms lists the reward arms",
    "compare": "study.rl_arms lists the reward arms",
    "beta": "study.rl_betas sets β",
    "anchor": "the study's RL runs are anchored to the SFT policy (WARP's to their EMA)",
    "single_member": "the single arm is the best member on the selection split",
    "uwo_lambda": "study.uwo_lambda sets λ",
    "on_alarm": "the study's RL runs run their whole budget (its alarm section calibrates alarms on them)",
}


def check_stage(cfg: Config, stage: str) -> Config:
    """Refuse, before any work, a setting the stage would silently override: one ConfigError naming
    each, and the setting that wins. (Sections a stage does not read at all are not checked.)"""
    faults = []
    study = stage in ("study", "demo")
    if study and "rl" in cfg.study.parts:
        default = RLConfig()
        faults += [f"rl.{key} = {getattr(cfg.rl, key)!r}: is not read by `warm-ray {stage}`: {why}"
                   for key, why in STUDY_SETS_RL.items() if getattr(cfg.rl, key) != getattr(default, key)]
    if study and "warp" in cfg.study.parts and (cfg.warp.merge != "slerp" or "lerp" not in cfg.warp.compare):
        faults.append(f"warp.merge = {cfg.warp.merge!r}, warp.compare = {cfg.warp.compare!r}: the study's WARP "
                      "claims compare SLERP with LERP: keep warp.merge 'slerp' and 'lerp' in warp.compare")
    if faults:
        raise ConfigError("; ".join(faults))
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (PyYAML's own text spans lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


MAX_ALIASES = 100  # aliases (*name) in one YAML document, counted as expanded: more is refused (an alias bomb)


class _Refused(Exception):
    """YAML that parses but that a config refuses (a key given twice, an alias bomb): ``line N: what``."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping, an alias inside its own anchor and more than
    MAX_ALIASES aliases in one document. An alias counts once plus the aliases inside what it names (as if
    expanded), counted as the document is composed: an alias bomb stops before anything is expanded."""

    def compose_document(self):
        self.aliases, self.inner = 0, {}  # aliases so far; id(node) -> aliases inside that node
        return super().compose_document()

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            line, node = event.start_mark.line + 1, self.anchors.get(event.anchor)
            if node is not None and id(node) not in self.inner:
                raise _Refused(f"line {line}: alias *{event.anchor} inside its own anchor (a recursive value)")
            self.aliases += 1 + (self.inner[id(node)] if node is not None else 0)
            if self.aliases > MAX_ALIASES:
                raise _Refused(f"line {line}: more than {MAX_ALIASES} YAML aliases (*name) in one document, "
                               "counted as expanded")
            return super().compose_node(parent, index)
        before = self.aliases
        node = super().compose_node(parent, index)
        self.inner[id(node)] = self.aliases - before
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise _Refused(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
                seen.add(key)
        return super().construct_mapping(node, deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _parse_scalar(text: str, item: str = "") -> Any:
    try:
        return _load_yaml(text)
    except _Refused as e:
        raise ConfigError(f"override {item or text!r}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item or text!r}: value is not valid YAML: {_yaml_problem(e)}") from None


NULLS = ("", "null", "Null", "NULL", "~")


def _override_value(raw: str, tp: Any, item: str) -> Any:
    """The value of an override: a ``str`` field takes the text as written ('exp #3', '123', 'a: b'), YAML
    only removing quotes given around it; ``str | None`` reads "", null or ~ as None; any other field parses YAML."""
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    nullable = union and set(typing.get_args(tp)) == {str, type(None)}
    if tp is not str and not nullable:
        return _parse_scalar(raw, item)
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return _parse_scalar(raw, item)
    return None if nullable and raw in NULLS else raw


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML, but a string field's taken as written),
    then check every range.

    A section given as a mapping (``--set 'warp.rl={lr: 0.5}'``) is merged onto that section of ``cfg``.
    """
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r} in override {item!r}")
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(f"unknown config key {key!r} in override {item!r}")
        node[parts[-1]] = _override_value(raw, _declared_type(parts), item)
    return validate(from_dict(Config, data, base=cfg))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then ``key=value`` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            mode = os.stat(path).st_mode  # never opens it: a FIFO would block
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None
        if stat.S_ISDIR(mode):
            raise ConfigError(f"config file {path} is a directory; give a YAML file")
        if not stat.S_ISREG(mode):
            raise ConfigError(f"config file {path} is not a regular file (a pipe, a socket or a device); "
                              "give a YAML file")
        try:
            data = _load_yaml(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None
        except _Refused as e:
            raise ConfigError(f"{path}: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(e)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping, got {type(data).__name__}")
    try:
        cfg = from_dict(Config, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
    return apply_overrides(cfg, overrides or [])


def dump_config(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg, run_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the fully resolved config beside a run's outputs."""
    from warm_ray.files import atomic_write_text

    path = Path(run_dir) / name
    atomic_write_text(path, dump_config(cfg))
    return path
