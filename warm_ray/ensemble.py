"""Combining M reward models, and member disagreement as a reward-hacking alarm.

Reward modes (one name each, ``warm_ray.names.REWARD_MODES``, which holds their combine functions):
- ``warm``: one weight-averaged RM (WARM, Ramé et al. 2024): one forward pass per sample.
- ``single``: one member: one forward pass.
- ``ens``, ``wco``, ``uwo``: the M members score every sample (M forward passes), their scores are
  normalised per member on reference samples, then combined (Coste et al. 2023):
  ens  R = (1/M) Σ_i r_i,   wco  R = min_i r_i,   uwo  R = (1/M) Σ_i r_i - λ · Var_i r_i.

Normalisation (Coste et al. 2023): each member's raw scores on samples of the reference
(SFT) policy are shifted and scaled to mean 0 and standard deviation 1, so members trained
to different scales become comparable before min or variance are taken.

Disagreement (label-free hacking signal): where the policy leaves the members' training
distribution they disagree more. ``disagreement`` measures it on one batch; the
``DisagreementMonitor`` compares it every K steps with its value on SFT samples and raises
an alarm when the spread exceeds a multiple of that reference.

All score matrices are [M, N]: one row per member, one column per sample.
Variances and standard deviations across members are population ones (divide by M).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from warm_ray.names import REWARD_MODES, resolve

STD_EPS = 1e-6  # a member whose reference scores are constant is not blown up by 1/0


def check_mode(mode: str) -> str:
    """``mode`` itself if it names a reward mode (``warm_ray.names.REWARD_MODES``), else a ValueError listing them."""
    return REWARD_MODES.check(mode)


def forward_passes(mode: str, m: int) -> int:
    """Model forward passes per scored sample: WARM and single 1, the modes of every member M."""
    return REWARD_MODES[mode].forward_passes(m)


def _matrix(scores: torch.Tensor) -> torch.Tensor:
    scores = torch.as_tensor(scores, dtype=torch.float32)
    if scores.dim() != 2:
        raise ValueError(f"expected member scores of shape [M, N], got {tuple(scores.shape)}")
    return scores


# ------------------------------------------------------------------------------------------
# Normalisation on reference samples (Coste et al. 2023)
# ------------------------------------------------------------------------------------------


@dataclass
class Normaliser:
    """Per-member mean and standard deviation of raw scores on reference (SFT) samples.

    ``apply`` maps raw scores to (raw - mean_m) / std_m (Coste et al. 2023), so on the
    reference every member has mean 0 and (population) standard deviation 1.
    """

    mean: list[float]
    std: list[float]
    n_reference: int = 0  # how many reference samples the statistics come from

    @classmethod
    def fit(cls, raw: torch.Tensor) -> Normaliser:
        """Statistics of raw member scores [M, N] on the reference samples."""
        raw = _matrix(raw)
        if raw.shape[1] == 0:
            raise ValueError("cannot fit a normaliser on zero reference samples")
        std = raw.std(dim=1, unbiased=False).clamp_min(STD_EPS)
        return cls(mean=raw.mean(dim=1).tolist(), std=std.tolist(), n_reference=int(raw.shape[1]))

    @property
    def m(self) -> int:
        return len(self.mean)

    def apply(self, raw: torch.Tensor) -> torch.Tensor:
        """Normalised scores [M, N] from raw ones [M, N]."""
        raw = _matrix(raw)
        if raw.shape[0] != self.m:
            raise ValueError(f"normaliser fitted on {self.m} members, got scores of {raw.shape[0]}")
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None]
        std = torch.tensor(self.std, dtype=torch.float32).clamp_min(STD_EPS)[:, None]
        return (raw - mean) / std

    def to_dict(self) -> dict:
        """A JSON-able dict, saved beside a run's outputs."""
        return {"mean": list(self.mean), "std": list(self.std), "n_reference": self.n_reference}

    @classmethod
    def from_dict(cls, d: dict) -> Normaliser:
        """The inverse of ``to_dict``."""
        if len(d["mean"]) != len(d["std"]):
            raise ValueError("normaliser dict: mean and std differ in length")
        return cls(mean=[float(x) for x in d["mean"]], std=[float(x) for x in d["std"]],
                   n_reference=int(d.get("n_reference", 0)))


# ------------------------------------------------------------------------------------------
# Combining members' scores (Coste et al. 2023)
# ------------------------------------------------------------------------------------------


def combine(normalised: torch.Tensor, mode: str, uwo_lambda: float | None = None) -> torch.Tensor:
    """One reward per sample [N] from member scores [M, N] (Coste et al. 2023), by the mode's entry
    in ``warm_ray.names.REWARD_MODES``: a one-model mode (warm, single) takes the one row of a
    [1, N] matrix; a mode of every member calls its combine function with the settings it names."""
    scores = _matrix(normalised)
    entry = REWARD_MODES[mode]
    if entry.models != "members":
        if scores.shape[0] != 1:
            raise ValueError(f"mode {mode!r} scores with one model, got {scores.shape[0]} rows")
        return scores[0]
    if scores.shape[0] == 0:
        raise ValueError("no member scores to combine")
    settings = {"uwo_lambda": uwo_lambda}
    missing = [p for p in entry.params if settings.get(p) is None]
    if missing:
        raise ValueError(f"mode {mode!r} needs {', '.join(missing)}")
    return resolve(entry.combine)(scores, **{p: settings[p] for p in entry.params})


def mean_of_members(scores: torch.Tensor) -> torch.Tensor:
    """ENS: the mean over members."""
    return scores.mean(dim=0)


def worst_case(scores: torch.Tensor) -> torch.Tensor:
    """WCO: the min over members."""
    return scores.min(dim=0).values


def uncertainty_weighted(scores: torch.Tensor, uwo_lambda: float) -> torch.Tensor:
    """UWO: mean - λ · Var, with the population variance across members (divide by M)."""
    return scores.mean(dim=0) - uwo_lambda * scores.var(dim=0, unbiased=False)


# ------------------------------------------------------------------------------------------
# Disagreement between members on one batch
# ------------------------------------------------------------------------------------------


def _average_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Ranks along each row [M, N], ties sharing their average rank (as Spearman's rho needs)."""
    ordered = scores.sort(dim=1).values.contiguous()
    below = torch.searchsorted(ordered, scores.contiguous(), right=False)
    up_to = torch.searchsorted(ordered, scores.contiguous(), right=True)
    return (below + up_to - 1).float() / 2


def rank_agreement(scores: torch.Tensor) -> float:
    """Mean pairwise Spearman correlation between members' scores over the batch.

    A member whose scores are constant over the batch ranks nothing, so its pairs are left
    out (no NaN enters the mean); NaN only when no pair is defined (M < 2, N < 2, or every
    member constant).
    """
    scores = _matrix(scores)
    m, n = scores.shape
    if m < 2 or n < 2:
        return float("nan")
    ranks = _average_ranks(scores)
    centred = ranks - ranks.mean(dim=1, keepdim=True)
    norms = centred.norm(dim=1)
    defined = norms > 1e-12
    if int(defined.sum()) < 2:
        return float("nan")
    unit = centred[defined] / norms[defined, None]
    corr = unit @ unit.T  # [M', M'] Pearson correlation of ranks = Spearman's rho
    pairs = torch.triu_indices(corr.shape[0], corr.shape[0], offset=1)
    return float(corr[pairs[0], pairs[1]].mean())


def disagreement(normalised: torch.Tensor, warm: torch.Tensor | None = None) -> dict[str, float]:
    """How much M members disagree on one batch of normalised scores [M, N].

    spread: mean over samples of the (population) standard deviation across members;
    rank_agreement: mean pairwise Spearman correlation of members over the batch;
    warm_gap (when WARM's normalised scores [N] are given): mean of WARM's score minus the
    members' mean, i.e. how far weight averaging departs from prediction averaging (WARM vs ENS).
    """
    scores = _matrix(normalised)
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"no scores to measure disagreement on: shape {tuple(scores.shape)}")
    out = {
        "spread": float(scores.std(dim=0, unbiased=False).mean()),
        "rank_agreement": rank_agreement(scores),
    }
    if warm is not None:
        warm = torch.as_tensor(warm, dtype=torch.float32).reshape(-1)
        if warm.shape[0] != scores.shape[1]:
            raise ValueError(f"WARM scores {warm.shape[0]} samples, members {scores.shape[1]}")
        out["warm_gap"] = float((warm - scores.mean(dim=0)).mean())
    return out


# ------------------------------------------------------------------------------------------
# The alarm: spread against its value on SFT samples, every K steps, on a bounded subset
# ------------------------------------------------------------------------------------------


def subsample_indices(n: int, max_samples: int) -> list[int]:
    """At most ``max_samples`` of ``n`` sample indices, evenly spaced: floor(i · n / k), i < k.

    Deterministic (no random state): the same batch size always gives the same indices, and
    evenly spaced picks cover every part of the batch (e.g. every prompt group) alike.
    All indices when n <= max_samples, so subsampling twice changes nothing.
    """
    if max_samples <= 0 or n <= max_samples:
        return list(range(n))
    return [i * n // max_samples for i in range(max_samples)]


class DisagreementMonitor:
    """Every ``every`` steps, member disagreement on the policy's samples against the SFT reference.

    Alarm when spread / reference spread > ``threshold``. At most ``max_samples`` samples are
    used per check (``subsample_indices``), so scoring them costs at most M · max_samples
    forward passes every ``every`` steps; callers should score only ``indices(n)``.
    """

    def __init__(self, threshold: float = 2.0, every: int = 10, max_samples: int = 64):
        if threshold <= 0:
            raise ValueError("the alarm threshold is a multiple of the SFT spread: it must be > 0")
        self.threshold = float(threshold)
        self.every = int(every)
        self.max_samples = int(max_samples)
        self.reference: dict[str, float] | None = None  # disagreement on SFT samples
        self.first_alarm: int | None = None  # the step of the first alarm
        self.checks = 0
        self.samples_scored = 0  # samples the members scored for checks (cost accounting)

    @property
    def reference_spread(self) -> float | None:
        return None if self.reference is None else self.reference["spread"]

    def indices(self, n: int) -> list[int]:
        """Which of a batch's ``n`` samples a check uses."""
        return subsample_indices(n, self.max_samples)

    def _subset(self, normalised: torch.Tensor, warm: torch.Tensor | None):
        scores = _matrix(normalised)
        idx = torch.tensor(self.indices(scores.shape[1]), dtype=torch.long)
        if warm is not None:
            warm = torch.as_tensor(warm, dtype=torch.float32).reshape(-1)[idx]
        return scores[:, idx], warm

    def set_reference(self, normalised_sft: torch.Tensor, warm: torch.Tensor | None = None) -> dict[str, float]:
        """Disagreement on samples of the SFT policy [M, N]: the spread alarms are measured against."""
        scores, warm = self._subset(normalised_sft, warm)
        self.reference = disagreement(scores, warm)
        return dict(self.reference)

    def should_check(self, step: int) -> bool:
        """True every ``every`` steps (steps 0, K, 2K, ...); never when ``every`` <= 0."""
        return self.every > 0 and step % self.every == 0

    def update(self, step: int, normalised: torch.Tensor, warm: torch.Tensor | None = None) -> dict:
        """Disagreement on the policy's samples [M, N] at ``step``, its ratio to SFT, and the alarm."""
        if self.reference is None:
            raise RuntimeError("set_reference on SFT samples before the first check")
        scores, warm = self._subset(normalised, warm)
        metrics = disagreement(scores, warm)
        ratio = metrics["spread"] / max(self.reference["spread"], STD_EPS)
        alarm = ratio > self.threshold
        if alarm and self.first_alarm is None:
            self.first_alarm = int(step)
        self.checks += 1
        self.samples_scored += int(scores.shape[1])
        return {**metrics, "step": int(step), "n_samples": int(scores.shape[1]),
                "spread_ratio": ratio, "alarm": bool(alarm), "first_alarm": self.first_alarm}

    def to_dict(self) -> dict:
        """JSON-able state (settings, reference, first alarm, cost counters); NaN written as None."""
        ref = None if self.reference is None else {k: _json_float(v) for k, v in self.reference.items()}
        return {"threshold": self.threshold, "every": self.every, "max_samples": self.max_samples,
                "reference": ref, "first_alarm": self.first_alarm, "checks": self.checks,
                "samples_scored": self.samples_scored}

    @classmethod
    def from_dict(cls, d: dict) -> DisagreementMonitor:
        """The inverse of ``to_dict``."""
        mon = cls(threshold=d["threshold"], every=d["every"], max_samples=d["max_samples"])
        if d.get("reference") is not None:
            mon.reference = {k: float("nan") if v is None else float(v) for k, v in d["reference"].items()}
        mon.first_alarm = None if d.get("first_alarm") is None else int(d["first_alarm"])
        mon.checks = int(d.get("checks", 0))
        mon.samples_scored = int(d.get("samples_scored", 0))
        return mon


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else float(x)
