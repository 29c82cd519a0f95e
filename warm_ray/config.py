"""Dataclass configs, one per stage, loaded from YAML.

A config file has one section per stage (``prepare``, ``warm``, ``rl``, ``warp``, ``sweep``)
plus a top-level ``run_dir``. Every field has a one-line docstring (the comment above it).
An unknown key is an error that names it with its full dotted path; a value of the wrong
type is an error too. Every run writes its fully resolved config into its run directory
(``config.yaml``), so a run can be repeated from its directory alone.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that does not match the dataclass schema."""


# ------------------------------------------------------------------------------------------
# Shared pieces
# ------------------------------------------------------------------------------------------


@dataclass
class Resources:
    """Ray resources of one role; ``num_gpus > 0`` puts the role on CUDA."""

    # logical CPUs reserved per actor (fractions allowed)
    num_cpus: float = 0.5
    # GPUs per actor; fractions let roles share a GPU (e.g. 0.5 per RM trainer)
    num_gpus: float = 0.0
    # torch threads inside the actor (1 avoids oversubscription on small machines)
    num_threads: int = 1
    # "auto" (bf16 on GPU, fp32 on CPU), "float32" or "bfloat16"
    dtype: str = "auto"
    # custom Ray resources per actor, e.g. {"trainer_node": 1} to steer a role onto a node type
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"


@dataclass
class TinyModel:
    """Shape of the tiny policy built offline by ``warm-ray prepare``."""

    # "gpt2" or "llama"
    arch: str = "gpt2"
    # transformer blocks
    n_layer: int = 2
    # width of the residual stream
    n_embd: int = 64
    # attention heads (vLLM's CPU attention needs a head size n_embd / n_head of at least 32)
    n_head: int = 2
    # context length (prompt + completion)
    n_positions: int = 128
    # BPE vocabulary size of the tokenizer trained on the shipped corpus
    vocab_size: int = 2048


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
    base_model: str | None = None
    # optimisation steps of base LM training on the in-distribution corpus
    lm_steps: int = 300
    # sequences per LM training batch
    lm_batch_size: int = 32
    # tokens per LM training sequence
    lm_seq_len: int = 48
    # AdamW learning rate of LM training
    lm_lr: float = 3e-3
    # steps at which the LM is saved: the diverse ("Baklava") RM featurizer inits; the last is the SFT policy
    checkpoint_steps: list[int] = field(default_factory=lambda: [200, 250, 300])
    # words of a corpus sentence used as the prompt
    prompt_words: int = 4
    # tokens per sampled completion
    max_new_tokens: int = 20
    # sampling temperature of the train and ID-validation pairs
    temperature: float = 1.0
    # sampling temperature of the OOD test pairs (the distribution shift, with other text)
    ood_temperature: float = 1.4
    # labelled training pairs
    n_train: int = 3000
    # labelled in-distribution validation pairs
    n_val: int = 500
    # labelled out-of-distribution test pairs
    n_ood: int = 500
    # pairs whose gold scores differ by less than this are dropped (ties carry no label)
    min_margin: float = 0.1
    # fraction of training labels flipped (chosen <-> rejected), flagged per row
    label_noise: float = 0.25
    # inverse temperature of the Bradley-Terry label model (labels are its argmax)
    bt_beta: float = 10.0
    # sequences per sampling batch
    sample_batch_size: int = 256
    # device and threads of this stage
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, num_threads=2))


@dataclass
class WarmMember:
    """Per-member hyperparameters; unset fields are drawn from the diversity grids."""

    # learning rate of full fine-tuning
    lr: float | None = None
    # dropout of the featurizer
    dropout: float | None = None
    # seed of data order and head init
    seed: int | None = None
    # index into prepare.checkpoint_steps of the featurizer init (Baklava)
    init_checkpoint: int | None = None


@dataclass
class WarmConfig:
    """`warm-ray warm`: M reward models trained concurrently, weight-averaged by a parameter server."""

    # number of RM members
    m: int = 4
    # master seed; member i uses seed + i
    seed: int = 0
    # RM featurizer: "policy" (the prepared base LM checkpoints) or a local HF model dir
    featurizer: str = "policy"
    # learning rates drawn from, member i takes lrs[i % len]
    lrs: list[float] = field(default_factory=lambda: [3e-4, 1e-3, 2e-3])
    # dropouts drawn from
    dropouts: list[float] = field(default_factory=lambda: [0.05, 0.1])
    # vary the featurizer init over prepare's checkpoints (Baklava)
    baklava: bool = True
    # explicit per-member overrides (length m), optional
    members: list[WarmMember] = field(default_factory=list)
    # linear-probing epochs on frozen features (shared by all members)
    lp_epochs: int = 20
    # linear-probing learning rate
    lp_lr: float = 1e-2
    # fine-tuning epochs over the train split
    epochs: int = 2
    # pairs per training batch
    batch_size: int = 32
    # max tokens of prompt + completion seen by the RM
    max_length: int = 64
    # weight decay of AdamW
    weight_decay: float = 0.0
    # write a member checkpoint every this many steps
    checkpoint_every: int = 20
    # report metrics every this many steps
    log_every: int = 10
    # send members' weights to the parameter server every this many steps (0: only at the end)
    sync_every: int = 0
    # restarts Ray grants a dead trainer actor
    max_restarts: int = 3
    # resources of each trainer actor
    trainer: Resources = field(default_factory=lambda: Resources(num_cpus=0.5))
    # number of Ray Train workers per member (1: a plain actor; >1: data-parallel TorchTrainer)
    workers_per_member: int = 1
    # points on the linear mode connectivity line
    lmc_points: int = 11
    # resources of evaluation in the driver
    eval_batch_size: int = 128


@dataclass
class RLConfig:
    """`warm-ray rl`: REINFORCE with KL to an anchor, rewarded by WARM / one RM / ENS."""

    # master seed
    seed: int = 0
    # reward model: "warm", "single" or "ens"
    reward: str = "warm"
    # member index used when reward == "single"
    single_member: int = 0
    # REINFORCE steps (demo defaults: two runs of `warm-ray rl` take ~2-3 min on 2 CPU cores)
    steps: int = 100
    # prompts per step (batch = prompts_per_step x samples_per_prompt; the papers use 128)
    prompts_per_step: int = 16
    # samples per prompt (n); leave-one-out baseline needs n >= 2
    samples_per_prompt: int = 4
    # tokens per completion
    max_new_tokens: int = 20
    # sampling temperature (the paper's 0.9)
    temperature: float = 0.9
    # Adam learning rate (the papers' 1e-5/1e-6 are for billion-parameter policies; the tiny one needs more)
    lr: float = 1e-3
    # KL coefficient β
    beta: float = 0.05
    # baseline: "loo" (leave-one-out over n samples), "ema" (moving average), "none"
    baseline: str = "loo"
    # rate of the moving-average baseline
    baseline_ema: float = 0.9
    # anchor of the KL term: "sft" or "ema" (WARP)
    anchor: str = "sft"
    # EMA anchor rate μ (WARP)
    ema_mu: float = 0.01
    # rollout backend: "hf" or "vllm"
    backend: str = "hf"
    # rollout workers
    n_workers: int = 1
    # resources of each rollout worker
    rollout: Resources = field(default_factory=lambda: Resources(num_cpus=0.5))
    # resources of the learner
    learner: Resources = field(default_factory=lambda: Resources(num_cpus=0.5))
    # checkpoint every K steps
    checkpoint_every: int = 20
    # held-out prompts for the final evaluation
    n_eval_prompts: int = 64


@dataclass
class WarpConfig:
    """`warm-ray warp`: EMA-anchored RL runs in parallel, SLERP of task vectors, LITI, iterated."""

    # iterations I
    iterations: int = 1
    # parallel RL runs per iteration M
    m: int = 2
    # RL steps per run T (overrides rl.steps)
    steps: int = 30
    # RL runs at once (0: all M in parallel)
    max_parallel: int = 0
    # SLERP coefficient λ (used for M=2; M>2 merges recursively with 1/m)
    lam: float = 0.5
    # LITI coefficient η whose point starts the next iteration
    eta: float = 0.3
    # η grid evaluated for the reward-KL front
    eta_grid: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.3, 0.5, 0.7, 1.0])
    # β values of the SFT-anchored REINFORCE baselines in the comparison plot
    baseline_betas: list[float] = field(default_factory=lambda: [0.01, 0.1])
    # the RL settings of each run (anchor is forced to "ema")
    rl: RLConfig = field(default_factory=lambda: RLConfig(anchor="ema", beta=0.1, steps=30))


@dataclass
class SweepConfig:
    """`warm-ray sweep`: a Ray Tune sweep over one stage."""

    # the stage swept: "warm", "rl" or "warp"
    stage: str = "warm"
    # search: "grid", "random" or "optuna"
    search: str = "grid"
    # trials for random / optuna search
    num_samples: int = 3
    # parameter space: dotted stage key -> list of values
    space: dict[str, list] = field(default_factory=lambda: {"m": [1, 2, 4]})
    # metric optimised and its mode
    metric: str = "ood_acc_warm"
    # "max" or "min"
    mode: str = "max"
    # ASHA early stopping for stages that report intermediate metrics
    asha: bool = False
    # trials run at once
    max_concurrent: int = 1
    # logical CPUs reserved for each trial's driver (linear probe, evaluation); 0 lets the stage's
    # actors take the whole machine, like the parameter server's num_cpus=0
    driver_cpus: float = 0.0


@dataclass
class Config:
    """The whole config file: one section per stage, plus where runs go."""

    # directory of this run's outputs (each stage writes its own subdirectory)
    run_dir: str = "runs/demo"
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    warm: WarmConfig = field(default_factory=WarmConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    warp: WarpConfig = field(default_factory=WarpConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


# ------------------------------------------------------------------------------------------
# Loading, overriding, saving
# ------------------------------------------------------------------------------------------


def _check_type(value: Any, tp: Any, path: str) -> Any:
    """Coerce/validate ``value`` against the annotation ``tp``; raise ConfigError naming ``path``."""
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
                return _check_type(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_check_type(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
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


def from_dict(cls, data: dict, path: str = ""):
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise ConfigError."""
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
        kwargs[key] = _check_type(value, hints[key], where)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _parse_scalar(text: str) -> Any:
    return yaml.safe_load(text)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) and re-validate."""
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
        node[parts[-1]] = _parse_scalar(raw)
    return from_dict(Config, data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then ``key=value`` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
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
    from warm_ray.models import atomic_write_text

    path = Path(run_dir) / name
    atomic_write_text(path, dump_config(cfg))
    return path
