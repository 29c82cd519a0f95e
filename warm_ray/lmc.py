"""Linear mode connectivity and task-vector geometry of reward-model members: WARM's precondition.

Weight averaging approximates prediction ensembling only while the members sit in one low-loss
basin (WARM Sec. 3, after Frankle et al. 2020 and Neyshabur et al. 2020): along the line
θ(t) = (1-t)·θ_a + t·θ_b between two members the loss must not rise above the straight line
between the end points' losses. This module measures it, with no Ray and no I/O:

- ``barrier``: the largest amount by which a curve along the line is worse than the straight line
  between its ends (loss: rises above it; accuracy: falls below it). Negative: the interpolation
  beats the line everywhere inside (WARM Fig. 3's "above the line" for accuracy).
- ``pair_curves``: Bradley-Terry loss and pairwise accuracy of every member pair along the line,
  on each evaluation set, from a scoring function the caller supplies.
- ``verdict``: connected on the selection split when every pair's loss barrier is within a
  declared tolerance; a plain-words warning naming what to change when not.
- ``markdown``: the verdict, barriers per set and the geometry as results.md shows them.
- ``geometry``: task-vector norms from the shared init and pairwise cosines, every parameter
  counted once (a tied embedding is one tensor under two state-dict names).

The loss barrier is the primary reading: at a few hundred pairs the accuracy curve moves by
±0.02 from sampling alone, while the loss averages a continuous quantity over the same pairs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from warm_ray.geometry import task_vector_geometry

# what a user can change when members are not linearly connected (the log's warning)
REMEDY = ("lower the learning rates (warm.lrs), train fewer epochs (warm.epochs), or start every member from one "
          "shared init (warm.baklava: false)")


def interpolation_points(points: int) -> list[float]:
    """``points`` evenly spaced t in [0, 1], both ends included."""
    if points < 2:
        raise ValueError(f"an interpolation curve needs >= 2 points, got {points}")
    return [i / (points - 1) for i in range(points)]


def bt_loss(margins: torch.Tensor) -> float:
    """Bradley-Terry loss -E log σ(r(y⁺) - r(y⁻)) of margins r(y⁺) - r(y⁻) (WARM Eq. 1)."""
    return float(F.softplus(-margins.double()).mean()) if margins.numel() else float("nan")


def barrier(ts: Sequence[float], values: Sequence[float], higher_is_worse: bool = True) -> float:
    """max_t of how much worse ``values`` is than the straight line between its two ends.

    For a loss (``higher_is_worse``): max_t [L(t) - ((1-t)·L(0) + t·L(1))]; for an accuracy:
    max_t [line(t) - acc(t)]. Only interior points count (the ends lie on the line); with no
    interior point the barrier is 0.
    """
    if len(ts) != len(values):
        raise ValueError(f"{len(ts)} points and {len(values)} values")
    a, b = values[0], values[-1]
    sign = 1.0 if higher_is_worse else -1.0
    inside = [sign * (v - ((1 - t) * a + t * b)) for t, v in zip(ts[1:-1], values[1:-1])]
    return max(inside) if inside else 0.0


def pair_curves(state_dicts: Mapping[str, Mapping[str, torch.Tensor]], ts: Sequence[float],
                margins_of: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
                end_margins: Mapping[str, Mapping[str, torch.Tensor]],
                interpolate: Callable[[Sequence[Mapping], Sequence[float]], dict[str, torch.Tensor]]) -> dict:
    """Loss and accuracy along the line between every pair of members, on every set.

    ``margins_of(sd)`` scores one interpolated state dict on every set ({set: margins [pairs]});
    ``end_margins[member][set]`` are the members' own margins (the ends, already computed);
    ``interpolate([sd_a, sd_b], [1-t, t])`` is the weight average. Returns
    {"a-b": {set: {"loss": [...], "acc": [...], "loss_barrier": x, "acc_barrier": y}}}.
    """
    out: dict[str, dict] = {}
    for a, b in itertools.combinations(sorted(state_dicts, key=int), 2):
        inner = {t: margins_of(interpolate([state_dicts[a], state_dicts[b]], [1 - t, t])) for t in ts[1:-1]}
        curve: dict[str, dict] = {}
        for name in end_margins[a]:
            margins = [end_margins[a][name], *(inner[t][name] for t in ts[1:-1]), end_margins[b][name]]
            loss = [bt_loss(m) for m in margins]
            acc = [float((m > 0).double().mean()) for m in margins]
            curve[name] = {"loss": loss, "acc": acc, "loss_barrier": barrier(ts, loss, True),
                           "acc_barrier": barrier(ts, acc, False)}
        out[f"{a}-{b}"] = curve
    return out


def summarise(pairs: Mapping[str, Mapping[str, Mapping]]) -> dict[str, dict[str, float]]:
    """Per set: the worst pair's loss and accuracy barriers, and their mean over pairs."""
    sets = next(iter(pairs.values())).keys() if pairs else []
    out = {}
    for name in sets:
        lb = [p[name]["loss_barrier"] for p in pairs.values()]
        ab = [p[name]["acc_barrier"] for p in pairs.values()]
        out[name] = {"loss_barrier_max": max(lb), "loss_barrier_mean": sum(lb) / len(lb),
                     "acc_barrier_max": max(ab), "acc_barrier_mean": sum(ab) / len(ab)}
    return out


def average_gap(member_margins: Mapping[str, Mapping[str, torch.Tensor]],
                warm_margins: Mapping[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """The M-member form of the barrier at WARM itself: per set, L(WARM) - mean_i L(member i)
    (> 0: the average is worse than its members on average) and mean_i acc_i - acc(WARM)."""
    out = {}
    for name, m_warm in warm_margins.items():
        losses = [bt_loss(m[name]) for m in member_margins.values()]
        accs = [float((m[name] > 0).double().mean()) for m in member_margins.values()]
        out[name] = {"loss": bt_loss(m_warm) - sum(losses) / len(losses),
                     "acc": sum(accs) / len(accs) - float((m_warm > 0).double().mean())}
    return out


def verdict(summary: Mapping[str, Mapping[str, float]], split: str, tolerance: float) -> tuple[bool, str]:
    """(connected, one line): every pair's loss barrier on ``split`` is at most ``tolerance`` nats."""
    worst = summary[split]["loss_barrier_max"]
    if worst <= tolerance:
        return True, (f"members are linearly mode connected on the {split} split: largest loss barrier "
                      f"{worst:+.4f} nats <= tolerance {tolerance:g} (warm.lmc_tolerance)")
    return False, (f"members are NOT linearly mode connected on the {split} split: largest loss barrier "
                   f"{worst:+.4f} nats > tolerance {tolerance:g} (warm.lmc_tolerance); weight averaging may not "
                   f"approximate their ensemble (WARM Sec. 3): {REMEDY}")


def unique_parameter_names(model: torch.nn.Module) -> list[str]:
    """Names of the model's floating-point parameters, each tensor once (``named_parameters``
    drops the second name of a tied weight, e.g. ``lm_head.weight`` beside ``transformer.wte.weight``)."""
    return [n for n, p in model.named_parameters() if p.is_floating_point()]


def geometry(ref: Mapping[str, torch.Tensor], members: Mapping[str, Mapping[str, torch.Tensor]],
             keys: Sequence[str], own_inits: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> dict:
    """Task vectors δ_i = θ_i - θ_ref over ``keys`` (each parameter once), keyed by member:
    norms, pairwise cosines and angles (``geometry.task_vector_geometry``; None for a ~0 task vector);
    with ``own_inits``, each member's distance from the init it started from (Baklava members start
    from different checkpoints of one pretraining run)."""
    ids = sorted(members, key=int)
    geo = task_vector_geometry(ref, [members[i] for i in ids], keys)
    out: dict = {"norms": dict(zip(ids, geo["norms"])), "cosines": {}, "angles_deg": {},
                 "parameters": geo["parameters"]}
    for pair in geo["pairs"]:
        name = "-".join(ids[k] for k in pair["runs"])
        out["cosines"][name], out["angles_deg"][name] = pair["cosine"], pair["angle_deg"]
    if own_inits is not None:
        out["norms_from_own_init"] = {i: task_vector_geometry(own_inits[i], [members[i]], keys)["norms"][0]
                                      for i in ids}
    return out


def markdown(lmc_result: dict, geometry: dict | None) -> str:
    """The LMC verdict, barriers per set and the task-vector geometry, for results.md."""
    out = ["", f"Linear mode connectivity ({len(lmc_result['pairs'])} member pair(s), {len(lmc_result['t'])} points "
           f"along each line): {lmc_result['verdict']}", "",
           "| set | loss barrier (max / mean over pairs) | accuracy barrier (max / mean) | WARM loss − mean member | "
           "mean member acc − WARM acc |", "|---|---:|---:|---:|---:|"]
    for name, s in lmc_result["summary"].items():
        gap = lmc_result["average_gap"].get(name, {})
        out.append(f"| {name} | {s['loss_barrier_max']:+.4f} / {s['loss_barrier_mean']:+.4f} | "
                   f"{s['acc_barrier_max']:+.3f} / {s['acc_barrier_mean']:+.3f} | {gap.get('loss', float('nan')):+.4f} | "
                   f"{gap.get('acc', float('nan')):+.3f} |")
    if geometry:
        out += ["", f"Task vectors from the shared init ({geometry['parameters']:,} parameters, each once): norms "
                + ", ".join(f"{i}: {v:.3g}" for i, v in geometry["norms"].items())
                + "; cosines " + ", ".join(f"{k}: {'–' if v is None else f'{v:.3f}'}"
                                          for k, v in geometry["cosines"].items())
                + "; distance from own init " + ", ".join(f"{i}: {v:.3g}" for i, v in
                                                           geometry.get("norms_from_own_init", {}).items())]
    return "\n".join(out) + "\n"
