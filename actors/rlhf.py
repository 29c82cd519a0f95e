"""The RLHF driver: sample → score → learn → sync, on Ray; and the WARM-vs-single-RM comparison.

One step of ``run_rl`` (WARM Sec. 5.2: REINFORCE against a proxy RM, judged by a control reward):

    prompts of this step ──► RolloutWorkerGroup.sample      (N RolloutWorker actors, HF or vLLM)
                         ──► proxy reward r(x, y)            (a reward mode of warm_ray.ensemble, in the driver,
                                                              or a ScorerActor: rl.scorer_placement "actor")
                             gold reward                     (logged only, never trained on)
                         ──► PolicyLearner.learn             (a Ray actor: REINFORCE + KL)
                         ──► learner.get_weights → one ray.put → every worker   (sync)
                         ──► every K steps: the M members score a subset of the step's samples
                             (disagreement monitor; alarm when their spread outgrows its SFT value)

Reward modes (``rl.reward``): warm, single, ens, wco, uwo. Whatever the mode, the proxy reward is
normalised on samples of the SFT policy (``rl.reference_samples`` training prompts, one completion
each, one fixed seed: the same reference for every run of a run dir), so β means the same for every
mode (Coste et al. 2023 normalise each member on reference samples before combining them).

Outputs of one run (``out_dir``): ``metrics.jsonl`` (one record per step), ``ckpt/`` (the last
checkpoint, atomic), ``policy/`` (the final policy as a Hugging Face dir with its tokenizer),
``normaliser.json`` (the reward's normalisation and the monitor's SFT reference),
``disagreement.png`` (spread ratio and gold against step and KL), ``summary.json`` and
``config.yaml``. ``resume=True`` continues from ``ckpt/``: the steps logged after that checkpoint
are dropped and redone, so the history has each step once.

``run_rl_comparison`` runs RL with ``rl.reward`` and with each mode of ``rl.compare`` on the same
budget (same seed, prompts, steps) and compares the final policies by gold win rate on held-out
prompts (WARM Fig. 9 compares WARM with a single RM, the default).

Runs one after another need not start their actors again: ``RLActors`` holds a learner and its
rollout workers, and ``run_rl(..., actors=slot)`` resets them to the state new ones would have.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import ray
import torch
from transformers import AutoConfig

from actors.learner import PolicyLearner, load_checkpoint, save_checkpoint, score_samples
from actors.placement import actor_options, ensure_ray
from actors.rollout import HFBackend, RolloutWorkerGroup, Sample, encode_prompts
from actors.scorer import RemoteScorer, ScorerSpec, close_scorer, start_scorer_actor
from warm_ray import models as M
from warm_ray import rundir
from warm_ray.config import Config, RLConfig, UserError, save_config
from warm_ray.ensemble import REWARD_MODES, DisagreementMonitor, check_mode, forward_passes
from warm_ray.gold import gold_rewards
from warm_ray.reward import RewardScorer, member_final_dirs, warm_run_dirs
from warm_ray.sources import PolicySource, load_prompts, policy_source, prepared_summary, reward_source

log = logging.getLogger("warm_ray.rl")

RewardFn = Callable[[list[str], list[str]], list[float]]
# a reward mode's scorer: in this process, or a handle on a ScorerActor (same methods)
Scorer = RewardScorer | RemoteScorer
# on_step(step, record, group): called after each step is logged and checkpointed. Tests use it
# to kill a rollout worker or to simulate a crash (raise).
StepHook = Callable[[int, dict, RolloutWorkerGroup], None]

REWARD_KINDS = REWARD_MODES
TIMEOUT_S = 600.0
# Steps averaged for the "final" numbers of a run: one step's batch is noisy.
FINAL_WINDOW = 5
# Seed of the SFT reference samples: fixed, not the run's seed, so every run of a run dir (each
# reward mode, each WARP run) normalises its reward on the same samples.
REFERENCE_SEED = 20_240_117
# Names of the reward modes in tables and win rates.
LABELS = {"warm": "WARM", "single": "single RM", "ens": "ENS", "wco": "WCO", "uwo": "UWO", "gold": "gold (oracle)"}
_REFERENCE_LOCK = threading.Lock()
_REFERENCE_CACHE: dict[tuple, tuple[list[str], list[str]]] = {}


# ------------------------------------------------------------------------------------------
# Inputs: prompts, sampling seeds, the proxy reward
# ------------------------------------------------------------------------------------------


def gold_reward(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """The benchmark's gold reward as an RL reward (reward mode "gold": an oracle run, no RM)."""
    return gold_rewards(list(completions), list(prompts))


def step_prompts(prompts: Sequence[str], step: int, k: int, seed: int) -> list[str]:
    """The k prompts of ``step`` (1-based): consecutive slices of one permutation per epoch.

    A function of (seed, step) only, so a resumed run and a second run with the same seed see
    the same prompts at the same step.
    """
    out = []
    for i in range((step - 1) * k, step * k):
        epoch, pos = divmod(i, len(prompts))
        order = list(range(len(prompts)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(prompts[order[pos]])
    return out


def sampling_seed(seed: int, step: int, per_step: int) -> int:
    """Seed of a step's sampling; workers use seed .. seed + per_step - 1, so steps never share one."""
    return seed * 10_000_019 + step * per_step


def best_member(warm_dir: Path) -> int:
    """The member `warm-ray warm` found best on the selection split (``best_member`` of its results)."""
    path = warm_dir / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `warm-ray warm` first")
    results = json.loads(path.read_text())
    if "best_member" not in results:
        raise UserError(f"{path} has no best_member: rerun `warm-ray warm`, or set rl.single_member")
    return int(results["best_member"])


def sft_reference(sft_dir: str, train_prompts: Sequence[str], cfg: RLConfig) -> tuple[list[str], list[str]]:
    """(prompts, completions): one completion of the SFT policy for each of ``cfg.reference_samples``
    training prompts, at the training temperature and length, with ``REFERENCE_SEED``.

    Sampled in the driver with the HF backend, whatever the rollout backend, and cached per process:
    every run and every scorer of a run dir gets the same samples.
    """
    key = (str(sft_dir), cfg.reference_samples, cfg.max_new_tokens, cfg.temperature, len(train_prompts))
    with _REFERENCE_LOCK:
        if key not in _REFERENCE_CACHE:
            order = list(range(len(train_prompts)))
            random.Random(REFERENCE_SEED).shuffle(order)
            chosen = [train_prompts[i] for i in order[:cfg.reference_samples]]
            backend = HFBackend(sft_dir)
            try:
                samples = backend.generate(chosen, n=1, max_new_tokens=cfg.max_new_tokens,
                                           temperature=cfg.temperature, seed=REFERENCE_SEED)
            finally:
                backend.shutdown()
            _REFERENCE_CACHE[key] = ([s.prompt for s in samples], [s.completion for s in samples])
        prompts, completions = _REFERENCE_CACHE[key]
        return list(prompts), list(completions)


def scorer_spec(config: Config, kind: str) -> ScorerSpec:
    """What the scorer of reward mode ``kind`` is built from (``RewardScorer.from_dirs``'s arguments),
    from the reward models of ``policy.reward_model`` (``warm_ray.sources.reward_source``: this run
    dir's `warm-ray warm` output by default). Checked here, in the driver: a missing or damaged
    model is a one-line error wherever the scorer will run.

    One code path for every mode: WARM is the saved average ``warm/warm_rm`` (one forward pass),
    "single" is member ``rl.single_member`` (-1: the best on the selection split); every member is
    loaded too, for the disagreement monitor. A plain reward-model dir is one model (mode "warm").
    """
    check_mode(kind)
    cfg = config.rl
    source = reward_source(config)
    if source.rm_dir is not None:
        if kind != "warm":
            raise UserError(f"rl.reward = {kind!r} needs the members of a warm run, but policy.reward_model = "
                            f"{str(source.rm_dir)!r} is one reward model: use reward mode 'warm' (that model)")
        rundir.check_safetensors(source.rm_dir, "policy.reward_model must be a loadable reward-model dir")
        return {"dirs": [str(source.rm_dir)], "mode": "warm", "name": "rm", "max_length": source.max_length}
    warm_dir = source.warm_dir
    member = cfg.single_member
    if kind == "single" and member < 0:
        member = best_member(warm_dir)
    for weights in [warm_dir / "warm_rm", *member_final_dirs(warm_dir)]:
        if weights.exists():
            rundir.check_safetensors(weights, f"rerun `warm-ray warm` on the run dir of {warm_dir} to rebuild it")
    dirs, member_dirs = warm_run_dirs(warm_dir, kind, member, with_members=True)
    if kind == "single":
        log.info("single RM: member %d%s", member, " (best on the selection split)" if cfg.single_member < 0 else "")
    return {"dirs": [str(d) for d in dirs], "member_dirs": member_dirs and [str(d) for d in member_dirs],
            "mode": kind, "name": kind, "max_length": source.max_length, "uwo_lambda": cfg.uwo_lambda}


def start_scorer(config: Config):
    """A ScorerActor for the reward models of ``config.rl`` (resources of ``rl.scorer``)."""
    ensure_ray()
    return start_scorer_actor(config.rl.scorer)


def proxy_scorer(config: Config, kind: str, normalise: bool = True, *, placement: str | None = None,
                 actor=None) -> Scorer:
    """The scorer of reward mode ``kind`` (``scorer_spec``): a RewardScorer in this process, or a
    RemoteScorer whose models live in a ScorerActor.

    ``placement``: "driver" or "actor" (default ``rl.scorer_placement``). ``actor``: a ScorerActor
    to load the scorer into (shared with other scorers, and ended by whoever started it); without
    one, an actor placement starts its own, which the returned handle ends on ``close_scorer``.
    ``normalise``: fit the normalisation on the SFT reference samples (``sft_reference``) before returning.
    """
    spec = scorer_spec(config, kind)
    if actor is None and (placement or config.rl.scorer_placement) == "driver":
        scorer = RewardScorer.from_dirs(**spec)
    else:
        own = actor is None
        actor = start_scorer(config) if own else actor
        try:
            scorer = RemoteScorer.load(actor, kind, spec, TIMEOUT_S, owner=own)
        except BaseException:
            if own:
                ray.kill(actor)
            raise
    if normalise:
        try:
            src = policy_source(config)
            scorer.fit_normaliser(*sft_reference(src.sft_dir, src.prompts["train"], config.rl))
        except BaseException:
            close_scorer(scorer)
            raise
    return scorer


def proxy_reward(config: Config, kind: str) -> RewardFn:
    """The proxy reward r(x, y) of reward mode ``kind``, normalised on SFT samples (in the driver)."""
    return proxy_scorer(config, kind, placement="driver").score


def warm_gap_scorer(config: Config, scorer: Scorer) -> Scorer | None:
    """The WARM RM the monitor compares the members' mean with: the scorer itself in "warm" mode,
    else the warm stage's ``warm_rm`` when it exists (one forward pass per monitored sample), in the
    same place as ``scorer`` (the same ScorerActor for a RemoteScorer)."""
    if scorer.mode == "warm":
        return scorer
    source = reward_source(config)
    if source.warm_dir is None or not (source.warm_dir / "warm_rm" / "config.json").exists():
        return None
    spec = {"dirs": [str(source.warm_dir / "warm_rm")], "mode": "warm", "name": "warm", "max_length": source.max_length}
    if isinstance(scorer, RemoteScorer):
        return scorer.sibling("warm_gap", spec)
    return RewardScorer.from_dirs(**spec)


# ------------------------------------------------------------------------------------------
# metrics.jsonl
# ------------------------------------------------------------------------------------------


def read_metrics(path: Path) -> list[dict]:
    """Records of a metrics.jsonl; a torn last line (a crash mid-write) is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def keep_metrics_until(path: Path, step: int) -> list[dict]:
    """Drop the records after ``step`` (they will be redone); rewrite the file atomically."""
    kept = [r for r in read_metrics(path) if r["step"] <= step]
    M.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def append_metrics(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def final_means(records: Sequence[dict], keys: Sequence[str], window: int = FINAL_WINDOW) -> dict[str, float | None]:
    """Mean of each key over the last ``window`` records; None for a key that was not measured
    (gold off the benchmark's prompts)."""
    tail = list(records)[-window:]
    if not tail:
        return {}
    return {k: None if any(r.get(k) is None for r in tail) else sum(r[k] for r in tail) / len(tail) for k in keys}


def fmt(x: float | None, spec: str = ".3f") -> str:
    """A number for a table or log line; "–" for one not measured."""
    return "–" if x is None else format(x, spec)


# ------------------------------------------------------------------------------------------
# The disagreement monitor: the members' spread on the policy's samples, against SFT
# ------------------------------------------------------------------------------------------


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


class RunMonitor:
    """The disagreement monitor of one run (``warm_ray.ensemble.DisagreementMonitor``).

    The reference is set once, on the SFT reference samples; then every ``rl.monitor_every`` steps
    the members of ``scorer`` (normalised on that reference) score at most ``rl.monitor_samples`` of
    the step's samples, and ``warm`` (the WARM RM, when there is one) scores the same subset for
    the gap between weight averaging and prediction averaging. Cost per check: (M + 1) forward
    passes per monitored sample.
    """

    def __init__(self, cfg: RLConfig, scorer: Scorer, warm: Scorer | None,
                 reference: tuple[list[str], list[str]]):
        self.scorer, self.warm = scorer, warm
        self.monitor = DisagreementMonitor(cfg.alarm_ratio, cfg.monitor_every, cfg.monitor_samples)
        self.monitor.set_reference(*self._scores(*reference))

    def _scores(self, prompts: Sequence[str], completions: Sequence[str]):
        idx = self.monitor.indices(len(prompts))
        p, c = [prompts[i] for i in idx], [completions[i] for i in idx]
        members = self.scorer.normalised_member_scores(p, c)  # [M, n]
        return members, None if self.warm is None else self.warm.rewards(p, c)

    def restore(self, records: Sequence[dict]) -> None:
        """First alarm and check counts from the records kept on a resume."""
        checked = [r for r in records if r.get("spread_ratio") is not None]
        alarms = [r["step"] for r in checked if r.get("alarm")]
        self.monitor.first_alarm = min(alarms) if alarms else None
        self.monitor.checks = len(checked)
        self.monitor.samples_scored = sum(int(r.get("monitor_samples", 0)) for r in checked)

    def should_check(self, step: int) -> bool:
        return self.monitor.should_check(step)

    def check(self, step: int, prompts: Sequence[str], completions: Sequence[str]) -> dict:
        """The record's disagreement fields at ``step``; logs the alarm when it fires."""
        first_before = self.monitor.first_alarm
        out = self.monitor.update(step, *self._scores(prompts, completions))
        if out["alarm"]:
            log.warning("DISAGREEMENT ALARM at step %d%s: member spread %.3f is %.2fx its SFT reference "
                        "(threshold %.2fx; rank agreement %.2f): the policy may be hacking the reward",
                        step, " (first)" if first_before is None else "", out["spread"], out["spread_ratio"],
                        self.monitor.threshold, out["rank_agreement"])
        return {"disagreement_spread": out["spread"], "spread_ratio": out["spread_ratio"],
                "rank_agreement": _finite_or_none(out["rank_agreement"]),
                "warm_gap": _finite_or_none(out.get("warm_gap")), "alarm": out["alarm"],
                "monitor_samples": out["n_samples"]}

    def to_dict(self) -> dict:
        return self.monitor.to_dict()


def start_monitor(cfg: RLConfig, scorer: Scorer | None, warm: Scorer | None,
                  reference: tuple[list[str], list[str]] | None) -> RunMonitor | None:
    """A RunMonitor, or None when it is off (``monitor_every`` 0), or there are no members to compare."""
    if cfg.monitor_every <= 0 or scorer is None or reference is None:
        return None
    if scorer.n_members < 2:
        log.info("disagreement monitor off: %d member(s), spread needs at least 2", scorer.n_members)
        return None
    return RunMonitor(cfg, scorer, warm, reference)


def gold_peak_step(records: Sequence[dict], window: int = FINAL_WINDOW) -> int | None:
    """The step where gold reward, averaged over a centred window of steps, is highest (first of ties)."""
    if not records or any(r.get("gold_reward") is None for r in records):
        return None
    gold = [r["gold_reward"] for r in records]
    half = window // 2
    smooth = [sum(gold[max(0, i - half):i + half + 1]) / len(gold[max(0, i - half):i + half + 1])
              for i in range(len(gold))]
    return int(records[max(range(len(gold)), key=lambda i: (smooth[i], -i))]["step"])


def plot_disagreement(records: Sequence[dict], path: Path, alarm_ratio: float, title: str) -> None:
    """Spread ratio (members' disagreement / its SFT value) and gold reward against step and KL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checked = [r for r in records if r.get("spread_ratio") is not None]
    peak = gold_peak_step(records)
    first_alarm = next((r for r in checked if r["alarm"]), None)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    has_gold = peak is not None
    for ax, xkey, xlabel in ((axes[0], "step", "RL step"),
                             (axes[1], "kl_sft", "KL to SFT (sampled-sequence estimate)")):
        if has_gold:
            ax.plot([r[xkey] for r in records], [r["gold_reward"] for r in records], color="tab:green", alpha=0.6,
                    label="gold reward (never trained on)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("gold reward", color="tab:green")
        twin = ax.twinx()
        twin.plot([r[xkey] for r in checked], [r["spread_ratio"] for r in checked], "o-", color="tab:red",
                  label="member spread / SFT spread")
        twin.axhline(alarm_ratio, color="tab:red", ls=":", alpha=0.7, label=f"alarm threshold {alarm_ratio:g}x")
        twin.set_ylabel("disagreement (spread ratio)", color="tab:red")
        by_step = {r["step"]: r for r in records}
        if peak is not None:
            ax.axvline(by_step[peak][xkey], color="tab:green", ls="--", alpha=0.7, label=f"gold peak (step {peak})")
        if first_alarm is not None:
            ax.axvline(first_alarm[xkey], color="tab:red", ls="--", alpha=0.7,
                       label=f"first alarm (step {first_alarm['step']})")
        lines = ax.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------
# One RL run
# ------------------------------------------------------------------------------------------


def rollout_options(cfg: RLConfig, policy_dir: str, prompts: Sequence[str]) -> dict:
    """Backend kwargs of the rollout workers, from ``rl.rollout`` (device, dtype) and the prompts."""
    res = cfg.rollout
    dtype = M.resolve_dtype(res.dtype, res.device)
    kwargs: dict = {"device": res.device, "dtype": str(dtype).removeprefix("torch.")}
    if cfg.backend == "vllm":
        # The KV cache must hold one whole sequence: the longest prompt plus the completion.
        tok = M.load_tokenizer(policy_dir)
        longest = max(len(ids) for ids in encode_prompts(tok, list(prompts)))
        limit = AutoConfig.from_pretrained(policy_dir).max_position_embeddings
        kwargs["max_model_len"] = min(limit, 16 * math.ceil((longest + cfg.max_new_tokens) / 16))
        kwargs["seed"] = cfg.seed
        # the engine's memory share comes from the config: a KV-cache size on CPU, a GPU share on CUDA
        kwargs["gpu_memory_utilization"] = cfg.vllm_gpu_memory_utilization
        kwargs["kv_cache_memory_bytes"] = None if res.device == "cuda" else cfg.vllm_kv_cache_mb << 20
    return kwargs


# what a rollout worker is built with that ``RolloutWorkerGroup.reset`` cannot change, less vLLM's engine
# seed: every request a run sends carries its own seed (a per-request generator), and the in-process
# engine's global seeding happens while it is built, inside VLLMBackend's saved-and-restored RNGs
UNSEEDED_ROLLOUT = ("seed",)


class RLActors:
    """One PolicyLearner actor and one RolloutWorkerGroup that RL runs take turns on (one at a time).

    A new learner and new workers cost seconds per run (a worker process each, torch and
    transformers imports, model loads: ``bench/startup.py``), which dominates short runs; WARP's
    runs and baselines, and the runs of a comparison, reuse a few slots instead. ``start`` puts the
    actors in exactly the state new ones built for the run would be in (``PolicyLearner.reset``,
    ``RolloutWorkerGroup.reset``), so a run's results do not depend on whether its actors were
    reused. What a reset cannot change starts new actors when a run asks for something else: the
    actors' resources, and the workers' backend, count, SFT policy (tokenizer and architecture) and
    engine settings; so does an actor that died. Ended by ``shutdown`` (or as a context manager).
    """

    def __init__(self):
        self.learner: ray.actor.ActorHandle | None = None
        self.group: RolloutWorkerGroup | None = None
        self.learner_key: dict | None = None
        self.group_key: tuple | None = None
        # actors started over the slot's life (a slot that is reused starts each once)
        self.learners_started = 0
        self.groups_started = 0

    def start(self, cfg: RLConfig, sft_dir: str, init_dir: str | None, rollout_kwargs: dict,
              timeout_s: float = TIMEOUT_S) -> None:
        """Reset the slot for a run of ``cfg`` from ``init_dir`` (default: the SFT policy): the
        learner and the workers are reused where they fit, else started; ``rollout_kwargs``: the
        workers' ``rollout_options``. New actors are not waited for: the driver does its own
        set-up (reward models, their normalisation) while their processes import and load, then
        calls ``ready``."""
        learner_key = actor_options(cfg.learner)
        if self.learner is not None and learner_key == self.learner_key:
            try:
                ray.get(self.learner.reset.remote(sft_dir, cfg, init_dir), timeout=timeout_s)
            except ray.exceptions.RayActorError:
                log.warning("the reused policy learner had died: starting a new one")
                self._end_learner()
        else:
            self._end_learner()
        if self.learner is None:
            self.learner = ray.remote(PolicyLearner).options(**learner_key).remote(sft_dir, cfg, init_dir)
            self.learner_key = learner_key
            self.learners_started += 1

        group_key = (cfg.backend, cfg.n_workers, actor_options(cfg.rollout), str(sft_dir),
                     rundir.without(rollout_kwargs, UNSEEDED_ROLLOUT))
        if self.group is not None and group_key == self.group_key:
            try:
                self.group.reset(ray.get(self.learner.get_weights.remote(), timeout=timeout_s))
                return
            except ray.exceptions.RayActorError:
                log.warning("a reused rollout worker had died: starting new rollout workers")
        self._end_group()
        self.group = RolloutWorkerGroup(cfg.n_workers, cfg.backend, init_dir or sft_dir,
                                        resources=actor_options(cfg.rollout), backend_kwargs=rollout_kwargs,
                                        timeout_s=timeout_s, wait=False)
        self.group_key = group_key
        self.groups_started += 1

    def ready(self) -> tuple[ray.actor.ActorHandle, RolloutWorkerGroup]:
        """The slot's learner and workers, once the workers have started (``start``)."""
        self.group.wait_ready()
        return self.learner, self.group

    def _end_learner(self) -> None:
        if self.learner is not None:
            ray.kill(self.learner)
        self.learner = self.learner_key = None

    def _end_group(self) -> None:
        if self.group is not None:
            self.group.shutdown()
        self.group = self.group_key = None

    def shutdown(self) -> None:
        """End the actors; a later ``reset`` starts new ones."""
        try:
            self._end_group()
        finally:
            self._end_learner()

    def __enter__(self) -> RLActors:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


# RL settings that do not change a run's outputs (where it runs, how often it checkpoints, the
# evaluation after it, the comparison it is part of)
RUN_NOT_FINGERPRINTED = ("checkpoint_every", "n_eval_prompts", "compare", "vllm_gpu_memory_utilization",
                         "vllm_kv_cache_mb", "scorer_placement", "scorer")


def scorer_numerics(cfg: RLConfig) -> dict | None:
    """The device and dtype the reward models score in, or None for the driver's CPU float32 (what a
    CPU actor with dtype "auto" or float32 uses too): where the scorer runs does not change a score."""
    res = cfg.scorer
    if cfg.scorer_placement == "driver":
        return None
    if res.device == "cpu":
        dtype = M.resolve_dtype(res.dtype, "cpu")
        return None if dtype == torch.float32 else {"device": "cpu", "dtype": str(dtype).removeprefix("torch.")}
    return {"device": res.device, "dtype": res.dtype}


def reward_fingerprint(config: Config, kind: str) -> str:
    """What a reward mode's scores depend on: the reward models (their warm stage's fingerprint, or a
    plain RM dir's files), the truncation they score with, and a device or dtype other than CPU
    float32; the gold reward is code."""
    if kind == "gold":
        return "gold"
    source = reward_source(config)
    numerics = scorer_numerics(config.rl)
    return rundir.fingerprint({"rm": source.fingerprint, "max_length": source.max_length,
                               **({"scorer": numerics} if numerics else {})})


def run_fingerprint(config: Config, cfg: RLConfig, reward_kind: str, reward_fn, scorer, init_dir,
                    depends: dict | None = None) -> str:
    """What an RL run's outputs depend on: its RL settings, where it starts, the data and the reward."""
    fields = rundir.without(dataclasses.asdict(cfg), RUN_NOT_FINGERPRINTED)
    if not cfg.overlap:  # the off-policy settings change nothing on-policy (runs from before them match)
        fields = rundir.without(fields, ("overlap", "is_cap"))
    for role in ("rollout", "learner"):
        fields[role] = rundir.without(fields[role], ("num_cpus", "num_threads", "resources"))
    prepared = rundir.read_json(Path(config.run_dir) / "prepare" / "prepare.json") or {}
    source = policy_source(config)
    return rundir.fingerprint({
        "rl": fields, "reward": reward_kind, "init": init_dir or "sft", "prepare": prepared.get("fingerprint"),
        "label_seed": prepared.get("label_seed"),
        # the user's own policy / prompts (None: the benchmark's, covered by prepare's fingerprint)
        **({"policy_source": source.fingerprint} if source.fingerprint else {}),
        # an injected reward is known by its name; a reward mode by its reward models
        "rm": getattr(reward_fn, "__qualname__", "reward_fn") if reward_fn is not None and scorer is None
        and reward_kind != "gold" else reward_fingerprint(config, reward_kind),
        **(depends or {}),
    })


def policy_card(title: str, config: Config, cfg: RLConfig, reward_kind: str, src: PolicySource, init_dir: str | None,
                final: dict) -> str:
    """The model card of a policy RL wrote: where it started, against what reward, how, and where it ended."""
    reward = "the gold reward of the synthetic benchmark (oracle)" if reward_kind == "gold" else (
        f"reward mode `{reward_kind}` ({LABELS.get(reward_kind, reward_kind)}) of "
        f"`{config.policy.reward_model or Path(config.run_dir) / 'warm'}`")
    return M.model_card(
        title, "policy",
        "A policy fine-tuned by REINFORCE with a KL penalty (warm-ray).",
        {"Training": [f"- SFT policy: `{src.sft_dir}`", f"- started from: `{init_dir or src.sft_dir}`",
                      f"- reward: {reward}",
                      f"- prompts: `{config.policy.prompts or 'the warm-ray benchmark'}` ({len(src.prompts['train'])} train)",
                      f"- steps {cfg.steps}, {cfg.prompts_per_step} prompts x {cfg.samples_per_prompt} samples, "
                      f"lr {cfg.lr:g}, KL β {cfg.beta:g} to the {cfg.anchor.upper()} anchor"
                      + (f" (μ {cfg.ema_mu:g})" if cfg.anchor == "ema" else "") + f", seed {cfg.seed}"],
         "Last steps (mean of the last 5)": [f"- {k}: {fmt(v)}" for k, v in final.items()]},
        M.POLICY_LOAD_SNIPPET)


def start_reward(config: Config, cfg: RLConfig, scorer: Scorer, reward_kind: str, sft_dir: str,
                 prompts: Sequence[str], out: Path) -> RunMonitor | None:
    """Normalise ``scorer`` (and the monitor's WARM RM) on the SFT reference samples, start the
    disagreement monitor, and write ``normaliser.json``; the monitor, or None when it is off."""
    # one normalisation for every mode: β means the same whatever the reward mode
    reference = sft_reference(sft_dir, prompts, cfg)
    if scorer.normaliser is None:
        scorer.fit_normaliser(*reference)
    warm = warm_gap_scorer(config, scorer) if cfg.monitor_every > 0 else None
    if warm is not None and warm.normaliser is None:
        warm.fit_normaliser(*reference)
    monitor = start_monitor(cfg, scorer, warm, reference)
    M.atomic_write_json(out / "normaliser.json", {
        "reward": reward_kind, "mode": scorer.mode, "models": scorer.n_models, "members": scorer.n_members,
        "reference": {"samples": len(reference[0]), "seed": REFERENCE_SEED, "policy": sft_dir,
                      "temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens},
        "normaliser": scorer.normaliser.to_dict(),
        "member_normaliser": None if scorer.member_normaliser is None else scorer.member_normaliser.to_dict(),
        "warm_normaliser": None if warm is None or warm.normaliser is None else warm.normaliser.to_dict(),
        "monitor": None if monitor is None else monitor.to_dict(),
    })
    return monitor


def run_rl(config: Config, reward_kind: str, out_dir: str | Path, resume: bool = False,
           reward_fn: RewardFn | None = None, *, init_dir: str | None = None,
           on_step: StepHook | None = None, scorer: Scorer | None = None,
           depends: dict | None = None, actors: RLActors | None = None) -> dict:
    """REINFORCE with KL to an anchor against a proxy reward; returns the run's summary.

    ``reward_kind``: a reward mode ("warm", "single", "ens", "wco", "uwo"; its scorer is built from
    ``<run_dir>/warm`` by ``proxy_scorer``), or a name for an injected
    ``reward_fn(prompts, completions) -> rewards``. ``scorer``: a RewardScorer (or a RemoteScorer
    handle) that gives the reward and whose members the disagreement monitor uses; ``reward_fn``,
    when given too, still gives the reward. A scorer without a normaliser is normalised here on the
    SFT reference samples. With an injected ``reward_fn`` and no scorer, the reward is used as it is
    and there is no monitor. A scorer built here (``rl.scorer_placement``) is closed at the end; a
    given one is left to the caller.
    ``init_dir``: the policy θ starts from (default: the SFT policy of prepare). Gold rewards are
    logged, never trained on. ``depends``: more fields the run's fingerprint covers (e.g. the
    fingerprint of ``init_dir``'s policy). ``actors``: a slot whose learner and rollout workers the
    run resets and uses, and leaves running for the next run (ended if the run fails: they may be
    mid-task); without one, the run starts its own and ends them.

    The run dir is a unit of the run-dir contract: a run that finished under the same fingerprint
    is reused; a stopped one continues from its checkpoint with ``resume`` (else starts over).
    """
    cfg = dataclasses.replace(config.rl, reward=reward_kind)
    out = Path(out_dir)
    fp = run_fingerprint(config, cfg, reward_kind, reward_fn, scorer, init_dir, depends)
    done, continued = rundir.open_unit(out, fp, f"rl run {out}", resume=resume)
    if done is not None:
        why = rundir.damaged_weights(out / "policy")
        if why is None:
            save_config(dataclasses.replace(config, rl=cfg), out)
            return done
        # the final policy is rebuilt from the run's last checkpoint (the final step's)
        log.warning("rl run %s: final policy %s is damaged (%s): rebuilding it from the run's checkpoint",
                    out, out / "policy", why)
        rundir.forget(out)
        continued = rundir.start(out, fp, f"rl run {out}", resume=True)
    resume = continued
    save_config(dataclasses.replace(config, rl=cfg), out)
    metrics_path, ckpt_dir, summary_path = out / "metrics.jsonl", out / "ckpt", out / "summary.json"

    src = policy_source(config)
    sft_dir = src.sft_dir
    prompts = src.prompts["train"]
    per_step = cfg.prompts_per_step * cfg.samples_per_prompt
    torch.set_num_threads(max(1, cfg.learner.num_threads))
    if reward_kind == "gold" and reward_fn is None:
        reward_fn = gold_reward
    ensure_ray()

    t_start = time.perf_counter()
    slot = RLActors() if actors is None else actors
    finished = False
    owned = None  # a scorer built here, closed at the end (with the monitor's WARM RM, in its actor)
    try:
        # new actors start (a process each, imports, model loads) while the driver sets up the reward
        slot.start(cfg, sft_dir, init_dir, rollout_options(cfg, sft_dir, prompts))
        if scorer is None and reward_fn is None:
            scorer = owned = proxy_scorer(config, reward_kind)
        monitor = None if scorer is None else start_reward(config, cfg, scorer, reward_kind, sft_dir, prompts, out)
        score = reward_fn if reward_fn is not None else scorer.score
        learner, group = slot.ready()
        start = 0
        checkpoint = None
        if resume:
            damaged = [f"{f}: {why}" for f in sorted(ckpt_dir.glob("*.safetensors"))
                       if (why := rundir.damaged_weights(f)) is not None]
            if damaged:
                log.warning("checkpoint %s is damaged (%s): the run retrains from the start", ckpt_dir,
                            "; ".join(damaged))
            else:
                checkpoint = load_checkpoint(ckpt_dir)
        if checkpoint is not None:
            state, _ = checkpoint
            start = ray.get(learner.load_state.remote(state), timeout=TIMEOUT_S)
            group.sync_weights(state["policy"])
            records = keep_metrics_until(metrics_path, start)
            log.info("resuming %s from the checkpoint of step %d (%d steps logged)", out, start, len(records))
        else:
            if resume:
                log.info("no checkpoint in %s: starting from step 0", ckpt_dir)
            records = keep_metrics_until(metrics_path, 0)
        if monitor is not None:
            monitor.restore(records)
        log.info("rl (%s reward, %s backend): steps %d..%d, %d prompts x %d samples, beta %g, anchor %s, "
                 "disagreement monitor %s%s", reward_kind, cfg.backend, start + 1, cfg.steps, cfg.prompts_per_step,
                 cfg.samples_per_prompt, cfg.beta, cfg.anchor,
                 "off" if monitor is None else f"every {cfg.monitor_every} steps on <= {cfg.monitor_samples} samples, "
                 f"alarm at {cfg.alarm_ratio:g}x the SFT spread {monitor.monitor.reference_spread:.3f}",
                 f"; sampling overlaps learning (one step off-policy, importance weights capped at {cfg.is_cap:g})"
                 if cfg.overlap else "")

        def submit(step: int):
            return group.submit(step_prompts(prompts, step, cfg.prompts_per_step, cfg.seed), cfg.samples_per_prompt,
                                cfg.max_new_tokens, cfg.temperature, seed=sampling_seed(cfg.seed, step, per_step))

        def checkpoints(step: int) -> bool:
            return step == cfg.steps or (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0)

        pending = None  # rl.overlap: the next step's samples, drawn while this step scores and learns
        for step in range(start + 1, cfg.steps + 1):
            # sample
            t0 = time.perf_counter()
            if pending is None:
                pending, submitted = submit(step), t0
            samples = group.collect(pending)
            sampled = time.perf_counter() - submitted  # since the sampling was sent
            # the learner holds the weights of the workers' latest version: older samples are off-policy
            off_policy = any(s.policy_version != group.version for s in samples)
            # rl.overlap: step + 1 samples now, from the weights before this step's update (its
            # sync reaches the workers after that sampling); never after a checkpoint, so the step
            # a resumed run starts with samples on-policy as it does here
            pending, submitted = (submit(step + 1), time.perf_counter()) if cfg.overlap and not checkpoints(step) \
                else (None, None)
            # score: the proxy reward trains; the gold reward is only watched
            t1 = time.perf_counter()
            texts = [s.completion for s in samples]
            sample_prompts = [s.prompt for s in samples]
            proxy = [float(r) for r in score(sample_prompts, texts)]
            # the gold reward is the benchmark's ground truth: watched on its prompts only
            gold = gold_rewards(texts, sample_prompts) if src.gold else None
            # learn
            t2 = time.perf_counter()
            learned = ray.get(learner.learn.remote(samples, proxy, off_policy), timeout=TIMEOUT_S)
            # sync: the learner's weights go to every worker by reference, never through the driver
            t3 = time.perf_counter()
            version = group.sync_weights(learner.get_weights.remote())
            # monitor: every K steps the members score a bounded subset of this step's samples
            t4 = time.perf_counter()
            check = monitor.check(step, sample_prompts, texts) if monitor and monitor.should_check(step) else {}
            t5 = time.perf_counter()

            tokens = sum(len(s.completion_ids) for s in samples)
            record = {
                "step": step,
                "proxy_reward": sum(proxy) / len(proxy),
                "gold_reward": None if gold is None else sum(gold) / len(gold),
                "kl_sft": learned["kl_sft"],
                "kl_anchor": learned["kl_anchor"],
                "entropy": learned["entropy"],
                "completion_len": tokens / len(samples),
                "stop_fraction": sum(s.finish_reason == "stop" for s in samples) / len(samples),
                "tokens_per_s": tokens / max(sampled, 1e-9),
                "logprob_gap": learned["logprob_gap"],
                "off_policy": off_policy,
                "is_weight": learned["is_weight"],
                "loss": learned["loss"],
                "grad_norm": learned["grad_norm"],
                "baseline": learned["baseline"],
                # SD of r_β - baseline over the batch: the step size REINFORCE sees (with a
                # leave-one-out baseline, the rewards' within-prompt spread)
                "advantage_std": learned["advantage_std"],
                "policy_version": version,
                "t_sample": t1 - t0, "t_score": t2 - t1, "t_learn": t3 - t2, "t_sync": t4 - t3,
                "t_monitor": t5 - t4, "t_step": t5 - t0, "t_end": time.time(),
                **check,
            }
            append_metrics(metrics_path, record)
            records.append(record)
            log.info("step %d/%d  proxy %.3f  gold %s  kl %.3f  ent %.2f  len %.1f  gap %.1e  "
                     "%.0f tok/s  sample %.2fs score %.2fs learn %.2fs sync %.2fs%s",
                     step, cfg.steps, record["proxy_reward"], fmt(record["gold_reward"]), record["kl_sft"],
                     record["entropy"], record["completion_len"], record["logprob_gap"],
                     record["tokens_per_s"], *(record[k] for k in ("t_sample", "t_score", "t_learn", "t_sync")),
                     f"  spread {check['spread_ratio']:.2f}x SFT ({record['t_monitor']:.2f}s)" if check else "")
            if checkpoints(step):
                state = ray.get(learner.state.remote(), timeout=TIMEOUT_S)
                save_checkpoint(ckpt_dir, state, {"reward": reward_kind, "policy_version": version})
            if on_step is not None:
                on_step(step, record, group)

        # the final policy as a Hugging Face dir, loadable by anyone (written by the learner)
        ray.get(learner.save_policy.remote(str(out / "policy"), sft_dir, policy_card(
            f"RL policy ({LABELS.get(reward_kind, reward_kind)} reward)", config, cfg, reward_kind, src, init_dir,
            final_means(records, ("proxy_reward", "gold_reward", "kl_sft", "completion_len")))), timeout=TIMEOUT_S)
        finished = True
    finally:
        if actors is None or not finished:
            slot.shutdown()
        close_scorer(owned)

    keys = ("proxy_reward", "gold_reward", "kl_sft", "entropy", "completion_len", "logprob_gap")
    phases = ("t_sample", "t_score", "t_learn", "t_sync", "t_monitor", "t_step")
    t_monitor = sum(r.get("t_monitor", 0.0) for r in records)
    t_steps = sum(r["t_step"] for r in records)
    peak = gold_peak_step(records)
    first_alarm = None if monitor is None else monitor.monitor.first_alarm
    result = {
        "reward": reward_kind,
        "reward_mode": None if scorer is None else scorer.mode,
        "forward_passes_per_sample": None if scorer is None else forward_passes(scorer.mode, scorer.n_models),
        "backend": cfg.backend,
        "steps": cfg.steps,
        "resumed_from": start,
        "first": final_means(records[:FINAL_WINDOW], keys),
        "final": final_means(records, keys),
        "seconds_per_phase": {k: sum(r.get(k, 0.0) for r in records) / len(records) for k in phases},
        "seconds_this_run": round(time.perf_counter() - t_start, 1),
        "gold_peak_step": peak,
        "first_alarm": first_alarm,
        # > 0: the alarm fired that many steps before gold peaked; None: no alarm (or no monitor)
        "alarm_lead_steps": None if first_alarm is None or peak is None else peak - first_alarm,
        "monitor": None if monitor is None else {
            **monitor.to_dict(), "seconds": round(t_monitor, 3),
            "share_of_step_time": t_monitor / max(t_steps, 1e-9)},
        "policy": str(out / "policy"),
        "metrics": str(metrics_path),
    }
    M.atomic_write_json(summary_path, result)
    rundir.finish(out, fp, result)
    if monitor is not None:
        plot_disagreement(records, out / "disagreement.png", cfg.alarm_ratio,
                          f"{LABELS.get(reward_kind, reward_kind)} reward: member disagreement and gold reward")
    log.info("rl (%s) done: proxy %.3f → %.3f, gold %s → %s, KL to SFT %.3f (%s)", reward_kind,
             result["first"]["proxy_reward"], result["final"]["proxy_reward"], fmt(result["first"]["gold_reward"]),
             fmt(result["final"]["gold_reward"]), result["final"]["kl_sft"], out)
    if monitor is not None:
        log.info("rl (%s) disagreement monitor: first alarm %s, gold peak at step %s, cost %.2fs (%.1f%% of step time)",
                 reward_kind, "none" if first_alarm is None else f"at step {first_alarm}", peak, t_monitor,
                 100 * result["monitor"]["share_of_step_time"])
    return result


# ------------------------------------------------------------------------------------------
# Reward modes compared (WARM Sec. 5.2, Fig. 9: WARM vs a single RM)
# ------------------------------------------------------------------------------------------


def win_rate(gold_a: Sequence[float], gold_b: Sequence[float]) -> dict[str, float]:
    """Share of prompts where policy a's completion has the higher gold reward; a tie counts 1/2."""
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(gold_a, gold_b)]
    p = sum(wins) / len(wins)
    return {"win_rate": p, "stderr": math.sqrt(p * (1 - p) / len(wins)), "n": len(wins),
            "ties": sum(w == 0.5 for w in wins)}


@torch.no_grad()
def evaluate_policy(policy_dir: str, sft, prompts: list[str], cfg: RLConfig, scorers: dict[str, RewardFn],
                    seed: int, gold: bool = True) -> tuple[list[Sample], dict]:
    """One sample per held-out prompt at the training temperature; gold (when ``gold``: the
    benchmark's prompts), each proxy, KL to SFT."""
    backend = HFBackend(policy_dir)
    samples = backend.generate(prompts, n=1, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                               seed=seed)
    texts = [s.completion for s in samples]
    args = (cfg.temperature, sft.config.pad_token_id or 0, torch.device("cpu"), None)
    kl = score_samples(backend.model, samples, *args).seq_logp - score_samples(sft, samples, *args).seq_logp
    row = {"gold": gold_rewards(texts, [s.prompt for s in samples]) if gold else None, "kl_sft": kl.mean().item()}
    for name, fn in scorers.items():
        row[name] = sum(fn([s.prompt for s in samples], texts)) / len(samples)
    backend.shutdown()
    return samples, row


def plot_curves(runs: dict[str, list[dict]], path: Path) -> None:
    """Proxy and gold reward against step and against KL to SFT, one line per reward mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def smooth(xs: list[float], w: int = FINAL_WINDOW) -> list[float]:
        return [sum(xs[max(0, i - w + 1):i + 1]) / len(xs[max(0, i - w + 1):i + 1]) for i in range(len(xs))]

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for i, (name, records) in enumerate(runs.items()):
        color, label = colors[i % len(colors)], LABELS.get(name, name)
        step = [r["step"] for r in records]
        kl = smooth([r["kl_sft"] for r in records])
        for row, key in enumerate(("proxy_reward", "gold_reward")):
            y = [r[key] for r in records]
            if any(v is None for v in y):  # gold off the benchmark's prompts
                continue
            axes[row, 0].plot(step, y, color=color, alpha=0.25)
            axes[row, 0].plot(step, smooth(y), color=color, label=label)
            axes[row, 1].plot(kl, smooth(y), color=color, label=label)
    for row, what in enumerate(("proxy reward (each run's own, normalised on SFT)", "gold reward (never trained on)")):
        axes[row, 0].set_ylabel(what)
        axes[row, 0].set_xlabel("RL step")
        axes[row, 1].set_xlabel("KL to SFT (sampled-sequence estimate)")
        for ax in axes[row]:
            if not ax.get_legend_handles_labels()[0]:  # gold off the benchmark's prompts
                ax.set_visible(False)
                continue
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    fig.suptitle(f"REINFORCE against each reward mode (thin: per step; thick: mean of {FINAL_WINDOW})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _step(x) -> str:
    return "–" if x is None else str(x)


def markdown_tables(results: dict) -> str:
    modes = list(results["runs"])
    lines = ["| policy | gold (eval) | " + " | ".join(f"{LABELS.get(k, k)} RM (eval)" for k in modes)
             + " | KL to SFT (eval) | train proxy first→last | train gold first→last | train KL (last) |",
             "|---|---:|" + "---:|" * len(modes) + "---:|---:|---:|---:|"]
    for name, row in results["policies"].items():
        train = results["runs"].get(name)
        tail = ("| – | – | – |" if train is None else
                f"| {train['first']['proxy_reward']:.3f} → {train['final']['proxy_reward']:.3f} "
                f"| {fmt(train['first']['gold_reward'])} → {fmt(train['final']['gold_reward'])} "
                f"| {train['final']['kl_sft']:.3f} |")
        lines.append(f"| {LABELS.get(name, name)} | {fmt(row['gold_mean'])} | "
                     + " | ".join(fmt(row.get(f"{k}_rm")) for k in modes) + f" | {row['kl_sft']:.3f} " + tail)
    lines += ["", "| gold win rate | rate | ± s.e. | ties | prompts |", "|---|---:|---:|---:|---:|"] \
        if results["win_rates"] else ["", "(no gold win rates: the gold reward is watched on the benchmark's prompts only)"]
    for name, w in results["win_rates"].items():
        lines.append(f"| {name} | {w['win_rate']:.3f} | {w['stderr']:.3f} | {w['ties']} | {w['n']} |")
    lines += ["", "| reward mode | forward passes / sample | first alarm (step) | gold peak (step) "
              "| alarm lead (steps) | monitor s | monitor share of step time |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, run in results["runs"].items():
        mon = run.get("monitor")
        cost = "| – | – |" if mon is None else f"| {mon['seconds']:.2f} | {100 * mon['share_of_step_time']:.1f}% |"
        lines.append(f"| {LABELS.get(name, name)} | {run.get('forward_passes_per_sample')} "
                     f"| {_step(run.get('first_alarm'))} | {_step(run.get('gold_peak_step'))} "
                     f"| {_step(run.get('alarm_lead_steps'))} " + cost)
    return "\n".join(lines) + "\n"


def run_rl_comparison(config: Config, resume: bool = False) -> dict:
    """RL with ``rl.reward`` and with each mode of ``rl.compare`` on the same budget; gold win rates.

    ``rl.compare`` (default ["single"]: WARM against the best member, as WARM Fig. 9) lists the reward
    modes run beside ``rl.reward``; an empty list runs ``rl.reward`` alone. Every run has the same
    seed, prompts, steps and sampling seeds, and its reward normalised on the same SFT samples: only
    the reward mode differs. Win rates: the first mode against each other one, and each against SFT.
    The runs take turns on one learner and one set of rollout workers (``RLActors``).
    """
    cfg = config.rl
    modes = list(dict.fromkeys([cfg.reward, *cfg.compare]))
    for kind in modes:
        if kind != "gold":
            check_mode(kind)
    if any(kind not in ("warm", "gold") for kind in modes) and reward_source(config).rm_dir is not None:
        if cfg.reward not in ("warm", "gold"):
            proxy_scorer(config, cfg.reward, normalise=False)  # the error that names the problem
        dropped = [k for k in modes if k not in ("warm", "gold")]
        modes = [k for k in modes if k in ("warm", "gold")]
        log.warning("rl.compare: %s left out: policy.reward_model %s is one reward model, those modes need the "
                    "members of a warm run", ", ".join(dropped), config.policy.reward_model)
    src = policy_source(config)
    rl_dir = Path(config.run_dir) / "rl"
    rl_dir.mkdir(parents=True, exist_ok=True)
    # the comparison is a unit over its runs' fingerprints and the evaluation's settings
    run_fps = {kind: run_fingerprint(config, dataclasses.replace(cfg, reward=kind), kind, None, kind, None)
               for kind in modes}
    stage_fp = rundir.fingerprint({"runs": run_fps, "n_eval_prompts": cfg.n_eval_prompts, "seed": cfg.seed,
                                   "temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens})
    done = rundir.reuse(rl_dir, stage_fp, f"rl in {rl_dir}", clear=False)
    if done is not None and all(rundir.damaged_weights(r["policy"]) is None for r in done["runs"].values()):
        save_config(config, rl_dir)
        M.publish(rl_dir, done, markdown_tables(done), f"RL with reward modes {', '.join(LABELS.get(k, k) for k in modes)} "
                  "(reused: finished under this config):", f"curves: {rl_dir / 'curves.png'}")
        return done
    save_config(config, rl_dir)
    t0 = time.perf_counter()
    ensure_ray()
    # Each scorer is loaded and normalised once: it rewards its own run and scores every policy at the end
    # (with rl.scorer_placement "actor", every mode's scorer in one ScorerActor, ended here).
    actor = start_scorer(config) if cfg.scorer_placement == "actor" and set(modes) != {"gold"} else None
    try:
        scorers = {kind: proxy_scorer(config, kind, actor=actor) for kind in modes if kind != "gold"}
        with RLActors() as actors:  # one learner and one set of rollout workers, reset for each mode's run
            runs = {kind: run_rl(config, kind, rl_dir / kind, resume=resume, scorer=scorers.get(kind), actors=actors)
                    for kind in modes}

        prompts = src.prompts["eval"][:cfg.n_eval_prompts]
        sft = M.load_policy(src.sft_dir).eval()
        dirs = {"sft": src.sft_dir, **{kind: runs[kind]["policy"] for kind in modes}}
        # One seed for every policy: the same random numbers drive each policy's sampling.
        eval_seed = cfg.seed + 7_777_777
        gold, policies = {}, {}
        for name, d in dirs.items():
            _, row = evaluate_policy(d, sft, prompts, cfg, {f"{k}_rm": s.score for k, s in scorers.items()}, eval_seed,
                                     gold=src.gold)
            gold[name] = row.pop("gold")
            policies[name] = {"gold_mean": None if gold[name] is None else sum(gold[name]) / len(gold[name]), **row}
    finally:
        if actor is not None:
            ray.kill(actor)
    first = modes[0]
    pairs = [(first, other) for other in modes[1:]] + [(kind, "sft") for kind in modes]
    label = {**LABELS, "sft": "SFT"}
    # win rates by gold: on the benchmark's prompts only
    win_rates = {f"{label[a]} vs {label[b]}": win_rate(gold[a], gold[b]) for a, b in pairs} if src.gold else {}
    curves = {kind: read_metrics(Path(r["metrics"])) for kind, r in runs.items()}
    plot_curves(curves, rl_dir / "curves.png")
    M.atomic_write_json(rl_dir / "curves.json", curves)
    results = {"policies": policies, "win_rates": win_rates, "runs": runs, "modes": modes,
               "eval_prompts": len(prompts), "temperature": cfg.temperature,
               "seconds": round(time.perf_counter() - t0, 1)}
    M.publish(rl_dir, results, markdown_tables(results),
              f"RL with reward modes {', '.join(LABELS.get(k, k) for k in modes)} ({cfg.steps} steps each; "
              f"eval: {len(prompts)} held-out prompts, one sample each at T={cfg.temperature}):",
              f"curves: {rl_dir / 'curves.png'}; disagreement: {rl_dir}/<mode>/disagreement.png   "
              f"({results['seconds']}s)")
    return rundir.finish(rl_dir, stage_fp, results)
