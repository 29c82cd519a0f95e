"""The reward side of an RL run: which reward models score it, where, and normalised on what.

Whatever the reward mode (``warm_ray.names.REWARD_MODES``), the proxy reward is normalised on
samples of the SFT policy (``rl.reference_samples`` training prompts, one completion each, one fixed
seed: the same reference for every run of a run dir), so β means the same for every mode (Coste et
al. 2023 normalise each member on reference samples before combining them). ``start_reward`` fits
that normalisation, starts the disagreement monitor and records both in ``normaliser.json``.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Sequence
from pathlib import Path

import ray
import torch

from actors.placement import ensure_ray
from actors.rl.monitor import RunMonitor, Scorer, start_monitor
from actors.rl.slot import TIMEOUT_S
from actors.rollout import HFBackend
from actors.scorer import RemoteScorer, ScorerSpec, close_scorer, start_scorer_actor
from warm_ray import files
from warm_ray import models as M
from warm_ray import rundir
from warm_ray.config import Config, RLConfig, UserError
from warm_ray.names import GOLD, REWARD_MODES
from warm_ray.reward import RewardScorer, member_final_dirs, warm_run_dirs
from warm_ray.sources import PolicySource, RewardSource, policy_source, reward_source

log = logging.getLogger("warm_ray.rl")

# Seed of the SFT reference samples: fixed, not the run's seed, so every run of a run dir (each
# reward mode, each WARP run) normalises its reward on the same samples.
REFERENCE_SEED = 20_240_117
_REFERENCE_LOCK = threading.Lock()
_REFERENCE_CACHE: dict[tuple, tuple[list[str], list[str]]] = {}


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


def scorer_spec(source: RewardSource, cfg: RLConfig, mode: str) -> ScorerSpec:
    """What the scorer of reward mode ``mode`` is built from (``RewardScorer.from_dirs``'s arguments),
    from the reward models of ``source`` (``warm_ray.sources.reward_source``: a run dir's `warm-ray
    warm` output by default). Checked here, in the driver: a missing or damaged model is a one-line
    error wherever the scorer will run.

    One code path for every mode: WARM is the saved average ``warm/warm_rm`` (one forward pass),
    "single" is member ``rl.single_member`` (-1: the best on the selection split); every member is
    loaded too, for the disagreement monitor. A plain reward-model dir is one model (mode "warm").
    """
    REWARD_MODES.check(mode)
    if source.rm_dir is not None:
        if mode != "warm":
            raise UserError(f"rl.reward = {mode!r} needs the members of a warm run, but policy.reward_model = "
                            f"{str(source.rm_dir)!r} is one reward model: use reward mode 'warm' (that model)")
        rundir.check_safetensors(source.rm_dir, "policy.reward_model must be a loadable reward-model dir")
        return {"dirs": [str(source.rm_dir)], "mode": "warm", "name": "rm", "max_length": source.max_length}
    warm_dir = source.warm_dir
    member = cfg.single_member
    one_member = REWARD_MODES[mode].models == "member"
    if one_member and member < 0:
        member = best_member(warm_dir)
    for weights in [warm_dir / "warm_rm", *member_final_dirs(warm_dir)]:
        if weights.exists():
            rundir.check_safetensors(weights, f"rerun `warm-ray warm` on the run dir of {warm_dir} to rebuild it")
    dirs, member_dirs = warm_run_dirs(warm_dir, mode, member, with_members=True)
    if one_member:
        log.info("single RM: member %d%s", member, " (best on the selection split)" if cfg.single_member < 0 else "")
    return {"dirs": [str(d) for d in dirs], "member_dirs": member_dirs and [str(d) for d in member_dirs],
            "mode": mode, "name": mode, "max_length": source.max_length, "uwo_lambda": cfg.uwo_lambda}


def start_scorer(cfg: RLConfig):
    """A ScorerActor for reward models (resources of ``rl.scorer``)."""
    ensure_ray()
    return start_scorer_actor(cfg.scorer)


def build_scorer(source: RewardSource, cfg: RLConfig, mode: str, policy: PolicySource | None = None, *,
                 placement: str | None = None, actor=None) -> Scorer:
    """The scorer of reward mode ``mode`` (``scorer_spec``): a RewardScorer in this process, or a
    RemoteScorer whose models live in a ScorerActor.

    ``placement``: "driver" or "actor" (default ``rl.scorer_placement``). ``actor``: a ScorerActor
    to load the scorer into (shared with other scorers, and ended by whoever started it); without
    one, an actor placement starts its own, which the returned handle ends on ``close_scorer``.
    ``policy``: fit the normalisation on its SFT reference samples (``sft_reference``) before returning.
    """
    spec = scorer_spec(source, cfg, mode)
    if actor is None and (placement or cfg.scorer_placement) == "driver":
        scorer = RewardScorer.from_dirs(**spec)
    else:
        own = actor is None
        actor = start_scorer(cfg) if own else actor
        try:
            scorer = RemoteScorer.load(actor, mode, spec, TIMEOUT_S, owner=own)
        except BaseException:
            if own:
                ray.kill(actor)
            raise
    if policy is not None:
        try:
            scorer.fit_normaliser(*sft_reference(policy.sft_dir, policy.prompts["train"], cfg))
        except BaseException:
            close_scorer(scorer)
            raise
    return scorer


def proxy_scorer(config: Config, mode: str, *, rl: RLConfig | None = None, normalise: bool = True,
                 placement: str | None = None, actor=None) -> Scorer:
    """``build_scorer`` for the reward models and policy a stage config points to (``warm_ray.sources``),
    with the RL settings ``rl`` (default ``config.rl``); ``normalise``: on the SFT reference samples."""
    rl = config.rl if rl is None else rl
    return build_scorer(reward_source(config), rl, mode, policy_source(config) if normalise else None,
                        placement=placement, actor=actor)


def warm_gap_scorer(source: RewardSource, scorer: Scorer) -> Scorer | None:
    """The WARM RM the monitor compares the members' mean with: the scorer itself in "warm" mode,
    else the warm stage's ``warm_rm`` when it exists (one forward pass per monitored sample), in the
    same place as ``scorer`` (the same ScorerActor for a RemoteScorer)."""
    if scorer.mode == "warm":
        return scorer
    if source.warm_dir is None or not (source.warm_dir / "warm_rm" / "config.json").exists():
        return None
    spec = {"dirs": [str(source.warm_dir / "warm_rm")], "mode": "warm", "name": "warm", "max_length": source.max_length}
    if isinstance(scorer, RemoteScorer):
        return scorer.sibling("warm_gap", spec)
    return RewardScorer.from_dirs(**spec)


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


def reward_fingerprint(source: RewardSource | None, cfg: RLConfig, name: str) -> str:
    """What a reward mode's scores depend on: the reward models (their warm stage's fingerprint, or a
    plain RM dir's files), the truncation they score with, and a device or dtype other than CPU
    float32; the gold reward is code."""
    if name == GOLD:
        return GOLD
    numerics = scorer_numerics(cfg)
    return rundir.fingerprint({"rm": source.fingerprint, "max_length": source.max_length,
                               **({"scorer": numerics} if numerics else {})})


def start_reward(source: RewardSource | None, cfg: RLConfig, scorer: Scorer, name: str, sft_dir: str,
                 prompts: Sequence[str], out: Path, run_dir: str | Path | None = None) -> RunMonitor | None:
    """Normalise ``scorer`` (and the monitor's WARM RM) on the SFT reference samples, start the
    disagreement monitor, and write ``normaliser.json`` (the SFT policy by its path in ``run_dir``
    when it lies there); the monitor, or None when it is off."""
    # one normalisation for every mode: β means the same whatever the reward mode
    reference = sft_reference(sft_dir, prompts, cfg)
    if scorer.normaliser is None:
        scorer.fit_normaliser(*reference)
    warm = warm_gap_scorer(source, scorer) if cfg.monitor_every > 0 and source is not None else None
    if warm is not None and warm.normaliser is None:
        warm.fit_normaliser(*reference)
    monitor = start_monitor(cfg, scorer, warm, reference)
    files.atomic_write_json(out / "normaliser.json", {
        "reward": name, "mode": scorer.mode, "models": scorer.n_models, "members": scorer.n_members,
        "reference": {"samples": len(reference[0]), "seed": REFERENCE_SEED,
                      "policy": sft_dir if run_dir is None else files.portable(sft_dir, run_dir),
                      "temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens},
        "normaliser": scorer.normaliser.to_dict(),
        "member_normaliser": None if scorer.member_normaliser is None else scorer.member_normaliser.to_dict(),
        "warm_normaliser": None if warm is None or warm.normaliser is None else warm.normaliser.to_dict(),
        "monitor": None if monitor is None else monitor.to_dict(),
    })
    return monitor
