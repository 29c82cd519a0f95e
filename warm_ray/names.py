"""One list per set of names: reward modes, merge methods, rollout backends, lr schedules, baselines
and anchors.

Each set is a ``Registry``: its names, in order, each with an entry that says what the name is.
The config validates against these registries and the code dispatches through them, so adding a
reward mode or a merge method is one function and one ``register`` call, wherever it lives:

    from warm_ray.names import REWARD_MODES, RewardMode
    REWARD_MODES.register("median", RewardMode("median of members", "members",
                                               combine=lambda scores: scores.median(dim=0).values))

Torch-free on purpose (the config imports it): an entry names its function as ``"module:attr"``,
imported on first use (``resolve``), or holds the function itself when it is registered at run time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

E = TypeVar("E")


def resolve(target: str | Callable) -> Callable:
    """A callable, or the one a ``"module:attr"`` string names (imported here, on first use)."""
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


class Registry(Generic[E]):
    """Names of one kind, in registration order, each with its entry."""

    def __init__(self, kind: str, entries: dict[str, E]):
        self.kind = kind
        self._entries = dict(entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __getitem__(self, name: str) -> E:
        return self._entries[self.check(name)]

    def items(self) -> list[tuple[str, E]]:
        return list(self._entries.items())

    def check(self, name: Any) -> str:
        """``name`` itself if it is registered, else a ValueError listing the names."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; use one of {', '.join(self._entries)}")
        return name

    def register(self, name: str, entry: E, *, replace: bool = False) -> E:
        """Add ``name``; an existing name is replaced only with ``replace=True``."""
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.kind} needs a non-empty string name, got {name!r}")
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> E:
        return self._entries.pop(self.check(name))


# ------------------------------------------------------------------------------------------
# Reward modes: how M reward models become one reward (warm_ray.ensemble, Coste et al. 2023)
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardMode:
    """A reward mode.

    ``models``: what scores each sample: "warm" (the weight-averaged RM: one forward pass),
    "member" (one member: one forward pass) or "members" (every member: M forward passes, their
    scores normalised per member on SFT samples, then ``combine``d).
    ``combine``: for "members", [M, N] normalised scores (a float tensor) -> [N] rewards; it is
    called with the keyword arguments named in ``params`` (settings of ``rl``/``study``, e.g.
    ``uwo_lambda``). ``normalised`` (modes of every member): the members are normalised first (a min or a
    variance across unnormalised members mostly measures their scales); ENS does not.
    """

    label: str
    models: str
    combine: str | Callable | None = None
    params: tuple[str, ...] = ()
    normalised: bool = True

    def __post_init__(self):
        if self.models not in ("warm", "member", "members"):
            raise ValueError(f"RewardMode.models {self.models!r}: must be 'warm', 'member' or 'members'")
        if (self.models == "members") != (self.combine is not None):
            raise ValueError("a 'members' reward mode needs a combine function; a one-model mode has none")

    def forward_passes(self, m: int) -> int:
        """Model forward passes per scored sample with M members."""
        return m if self.models == "members" else 1


REWARD_MODES: Registry[RewardMode] = Registry("reward mode", {
    "warm": RewardMode("WARM", "warm"),
    "single": RewardMode("single RM", "member"),
    "ens": RewardMode("ENS", "members", "warm_ray.ensemble:mean_of_members", normalised=False),
    "wco": RewardMode("WCO", "members", "warm_ray.ensemble:worst_case"),
    "uwo": RewardMode("UWO", "members", "warm_ray.ensemble:uncertainty_weighted", params=("uwo_lambda",)),
})

# The reward an RL run may take besides the modes: the synthetic benchmark's gold reward itself (an
# oracle run, no reward model).
GOLD = "gold"


# The study's online RL arms (rl.online): the reward mode each refreshes during its runs
ONLINE_ARMS = {"warm_online": "warm", "single_online": "single"}


def study_arms() -> tuple[str, ...]:
    """What ``study.rl_arms`` may name: every reward mode, and its online arms."""
    return (*REWARD_MODES.names(), *ONLINE_ARMS)


def arm_mode(arm: str) -> str:
    """The reward mode of a study arm (an online arm's: the mode it refreshes)."""
    return ONLINE_ARMS.get(arm, arm)


def rl_rewards() -> tuple[str, ...]:
    """What ``rl.reward`` may name: every reward mode, and the gold oracle."""
    return (*REWARD_MODES.names(), GOLD)


def reward_label(name: str) -> str:
    """A reward's name in tables and plots."""
    if name == GOLD:
        return "gold (oracle)"
    return REWARD_MODES[name].label if name in REWARD_MODES else name


def member_modes() -> tuple[str, ...]:
    """The modes every member scores in (M forward passes)."""
    return tuple(n for n, mode in REWARD_MODES.items() if mode.models == "members")


# ------------------------------------------------------------------------------------------
# Merge methods of WARP (warp.merge): M policies' weights -> one, given their shared init
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeMethod:
    """``merge(init, policies, lam) -> merged``: state dicts of θ_init and the M runs, λ of WARP's
    SLERP (a method may ignore it)."""

    label: str
    merge: str | Callable


MERGE_METHODS: Registry[MergeMethod] = Registry("merge method", {
    "slerp": MergeMethod("SLERP", "warm_ray.merge:warp_slerp"),
    "lerp": MergeMethod("LERP", "warm_ray.merge:warp_lerp"),
})


# ------------------------------------------------------------------------------------------
# Plain sets of names: what each one means
# ------------------------------------------------------------------------------------------

# rollout backends (rl.backend): the class a RolloutWorker builds
BACKENDS: Registry[str] = Registry("rollout backend", {
    "hf": "actors.rollout:HFBackend",
    "vllm": "actors.rollout:VLLMBackend",
})

# learning-rate schedules of a member's fine-tuning (warm.lr_schedule)
LR_SCHEDULES: Registry[str] = Registry("lr schedule", {
    "linear": "linear decay to 0 after the warm-up",
    "constant": "constant after the warm-up",
})

# REINFORCE baselines (rl.baseline)
BASELINES: Registry[str] = Registry("baseline", {
    "loo": "leave-one-out mean of the prompt's other samples",
    "ema": "moving average of rewards",
    "none": "no baseline",
})

# anchors of the KL term (rl.anchor)
ANCHORS: Registry[str] = Registry("anchor", {
    "sft": "the SFT policy",
    "ema": "an exponential moving average of the policy (WARP)",
})
