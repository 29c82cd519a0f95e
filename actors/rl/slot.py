"""A slot of RL actors: one PolicyLearner and one RolloutWorkerGroup that RL runs take turns on.

``rollout_options`` turns ``rl.rollout`` (device, dtype) and the prompts into the rollout workers'
backend settings; ``RLActors`` keeps the actors between runs and resets them to the state new ones
would have, so WARP's runs, the study's arms and a comparison's modes start their actors once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import ray
from transformers import AutoConfig

from actors.learner import PolicyLearner
from actors.placement import actor_options
from actors.rollout import RolloutWorkerGroup, encode_prompts
from warm_ray import models as M
from warm_ray import rundir
from warm_ray.config import RLConfig

log = logging.getLogger("warm_ray.rl")

TIMEOUT_S = 600.0


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
