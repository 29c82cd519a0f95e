"""ScorerActor: the reward models of a run, in a Ray actor of their own; RemoteScorer, its handle.

The RL loop asks for a reward between sampling and learning. With ``rl.scorer_placement: actor``
the reward models live in one ``ScorerActor`` (resources of ``rl.scorer``: on a GPU cluster a
GPU share beside the learner) instead of the driver process. One actor holds several named
``warm_ray.reward.RewardScorer``s (a run's reward mode and the WARM RM its disagreement monitor
compares with; every mode of `warm-ray rl`'s comparison; the one reward WARP's parallel runs share)
and serves them one call at a time, so concurrent runs never share a tokenizer mid-call.

A ``RemoteScorer`` is the driver's handle on one of those scorers: it has the methods and fields
the RL code uses on a RewardScorer (``score``, ``rewards``, ``member_scores``,
``normalised_member_scores``, ``fit_normaliser``, ``normaliser``, ``mode``, ``n_models``,
``n_members``), so ``run_rl``, its monitor, ``evaluate_policy`` and WARP take either.

``load_weights`` replaces a scorer's weights with newer ones tagged with a version (ObjectRefs, as
rollout workers receive theirs), and ``version`` reads it back: online WARM (``rl.online``,
``actors.rl.online``) pulls each average the parameter server publishes this way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import ray
import torch

from actors.placement import actor_options
from warm_ray.config import Resources
from warm_ray.ensemble import Normaliser
from warm_ray.reward import RewardScorer

# a scorer's spec: the keyword arguments of ``RewardScorer.from_dirs`` (dirs, member_dirs, mode, name,
# max_length, uwo_lambda); no weights and no device: the actor loads the models where it runs
ScorerSpec = dict

TIMEOUT_S = 600.0


def _normaliser_dict(n: Normaliser | None) -> dict | None:
    return None if n is None else n.to_dict()


def _normaliser(d: dict | None) -> Normaliser | None:
    return None if d is None else Normaliser.from_dict(d)


class ScorerActor:
    """Named RewardScorers on one device; each records the version of the weights it serves
    (0: those it was loaded with)."""

    def __init__(self, device: str = "cpu", dtype: str = "float32", num_threads: int = 1):
        from warm_ray import hide_unused_packages, quiet_transformers

        hide_unused_packages()  # before transformers is imported
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        quiet_transformers()  # its own process: no per-load progress bars in the driver's log
        torch.set_num_threads(max(1, num_threads))
        self.device, self.dtype = device, dtype
        self.scorers: dict[str, RewardScorer] = {}

    def add(self, key: str, spec: ScorerSpec) -> dict:
        """Load scorer ``key`` from ``spec`` unless it is here already; its ``info``."""
        if key not in self.scorers:
            self.scorers[key] = RewardScorer.from_dirs(device=self.device, dtype=self.dtype, **spec)
        return self.info(key)

    def info(self, key: str) -> dict:
        """What a handle caches: mode, model counts, the normalisers (as dicts), the version."""
        s = self.scorers[key]
        return {"mode": s.mode, "name": s.name, "n_models": s.n_models, "n_members": s.n_members,
                "uwo_lambda": s.uwo_lambda, "normaliser": _normaliser_dict(s.normaliser),
                "member_normaliser": _normaliser_dict(s.member_normaliser), "version": s.version()}

    def score(self, key: str, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return self.scorers[key].score(prompts, completions)

    def rewards(self, key: str, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        return self.scorers[key].rewards(prompts, completions)

    def member_scores(self, key: str, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        return self.scorers[key].member_scores(prompts, completions)

    def normalised_member_scores(self, key: str, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        return self.scorers[key].normalised_member_scores(prompts, completions)

    def fit_normaliser(self, key: str, prompts: Sequence[str], completions: Sequence[str]) -> dict:
        """Fit the scorer's normalisers on reference samples; its ``info`` with them."""
        self.scorers[key].fit_normaliser(prompts, completions)
        return self.info(key)

    def load_weights(self, key: str, weights: dict | list | ray.ObjectRef, version: int) -> bool:
        """``RewardScorer.load_weights`` of scorer ``key``: newer weights for its scoring models (a
        state dict per model, or ObjectRefs: Ray resolves a top-level one, refs in a list are fetched
        there). Separate monitor members keep theirs; the normaliser stays until refit."""
        return self.scorers[key].load_weights(weights, version)

    def version(self, key: str) -> int:
        return self.scorers[key].version()


def start_scorer_actor(res: Resources):
    """A ScorerActor with the resources, device, dtype and threads of ``res`` (``rl.scorer``)."""
    return ray.remote(ScorerActor).options(**actor_options(res)).remote(res.device, res.dtype, res.num_threads)


class RemoteScorer:
    """The driver's handle on scorer ``key`` of a ScorerActor, with a RewardScorer's interface.

    Calls wait at most ``timeout_s``. ``owner``: ``close`` ends the actor (the handle that started
    it); other handles on the same actor leave it running.
    """

    def __init__(self, actor, key: str, info: dict, timeout_s: float = TIMEOUT_S, owner: bool = False):
        self.actor, self.key, self.timeout_s, self.owner = actor, key, timeout_s, owner
        self._update(info)

    @classmethod
    def load(cls, actor, key: str, spec: ScorerSpec, timeout_s: float = TIMEOUT_S, owner: bool = False) -> RemoteScorer:
        """Scorer ``key`` of ``actor``, loaded there from ``spec`` unless it is there already."""
        return cls(actor, key, ray.get(actor.add.remote(key, spec), timeout=timeout_s), timeout_s, owner)

    def sibling(self, key: str, spec: ScorerSpec) -> RemoteScorer:
        """Another scorer in the same actor (the process and its resources are shared)."""
        return RemoteScorer.load(self.actor, key, spec, self.timeout_s)

    def _update(self, info: dict) -> None:
        self.mode, self.name = info["mode"], info["name"]
        self.n_models, self.n_members, self.uwo_lambda = info["n_models"], info["n_members"], info["uwo_lambda"]
        self.normaliser = _normaliser(info["normaliser"])
        self.member_normaliser = _normaliser(info["member_normaliser"])

    def _call(self, method: str, *args):
        return ray.get(getattr(self.actor, method).remote(self.key, *args), timeout=self.timeout_s)

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return self._call("score", list(prompts), list(completions))

    def rewards(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        return self._call("rewards", list(prompts), list(completions))

    def member_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        return self._call("member_scores", list(prompts), list(completions))

    def normalised_member_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        return self._call("normalised_member_scores", list(prompts), list(completions))

    def fit_normaliser(self, prompts: Sequence[str], completions: Sequence[str]) -> Normaliser:
        self._update(self._call("fit_normaliser", list(prompts), list(completions)))
        return self.normaliser

    def load_weights(self, weights, version: int) -> bool:
        """New weights for the scoring models (see ``ScorerActor.load_weights``): a state dict, a list
        of them, or ObjectRefs of either; a dict given here is put in the object store once."""
        if isinstance(weights, dict):
            weights = ray.put({k: v.detach().cpu() for k, v in weights.items()})
        elif isinstance(weights, (list, tuple)):
            weights = [ray.put({k: v.detach().cpu() for k, v in sd.items()}) if isinstance(sd, dict) else sd
                       for sd in weights]
        return self._call("load_weights", weights, version)

    def version(self) -> int:
        """The version of the weights the scorer serves (0: those it was loaded with)."""
        return self._call("version")

    def close(self) -> None:
        """End the actor, if this handle started it."""
        if self.owner:
            ray.kill(self.actor)
            self.owner = False


def close_scorer(scorer) -> None:
    """End a RemoteScorer's actor when that handle owns it; an in-process scorer needs nothing."""
    if isinstance(scorer, RemoteScorer):
        scorer.close()
