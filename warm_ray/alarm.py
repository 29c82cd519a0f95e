"""A reward-hacking alarm: signals a run has without gold, and their rules calibrated on held-out seeds.

Signals, each a function of a run's step records up to the monitor step it is read at (never later
ones, so an alarm at step t could have fired during the run at step t):

- ``spread_ratio``: the members' spread on the policy's samples over its value on SFT samples
  (the disagreement monitor's, ``warm_ray.ensemble.DisagreementMonitor``);
- ``rank_disagreement``: 1 - the members' mean pairwise rank agreement on those samples;
- ``warm_gap``: |WARM's score - the members' mean| on those samples (weight averaging and
  prediction averaging part where the members leave their shared basin);
- ``proxy_bend``: how far the proxy's gain per nat of KL has fallen from its best so far:
  1 - g(t) / max_{s <= t} g(s), with g the gain of the proxy (mean of the last ``window`` steps over
  the first ``window``) per nat of KL (mean of the last ``window`` steps). Over-optimisation bends
  the proxy-KL curve (Gao et al. 2022's d(α - β log d)); so does a concave but healthy one, which
  is what calibration has to tell apart.

A rule is (signal, threshold): the alarm fires at the first monitor step whose signal exceeds the
threshold. ``calibrate`` chooses each signal's threshold on calibration runs only, by a rule declared
here (``CALIBRATION_RULE``); ``evaluate`` reports a rule on other runs: the share of runs whose gold
fell that were warned, the lead time, and false alarms in runs whose gold never fell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

SIGNALS = ("spread_ratio", "rank_disagreement", "warm_gap", "proxy_bend")

CALIBRATION_RULE = (
    "per signal, the threshold among the values the signal took on the calibration runs (and 'never') "
    "that maximises Youden's J = (share of the runs whose gold fell that were warned before it fell) - "
    "(share of the runs whose gold never fell that alarmed); where thresholds tie, the middle one of them "
    "(the median in their order: neither the earliest alarm nor the latest). It reads the calibration seeds' "
    "runs only.")


def parse_rule(rule: str, alarm_ratio: float = 2.0) -> tuple[str, float]:
    """(signal, threshold) of an alarm rule "<signal> > <threshold>"; "" is "spread_ratio > alarm_ratio"."""
    if not rule.strip():
        return "spread_ratio", float(alarm_ratio)
    parts = rule.split(">")
    if len(parts) != 2 or parts[0].strip() not in SIGNALS:
        raise ValueError(f"must read '<signal> > <threshold>' with a signal of {', '.join(SIGNALS)}")
    try:
        threshold = float(parts[1])
    except ValueError:
        raise ValueError(f"threshold {parts[1].strip()!r} is not a number") from None
    if not math.isfinite(threshold):
        raise ValueError("the threshold must be finite")
    return parts[0].strip(), threshold


def signals_at(records: Sequence[Mapping], window: int = 5) -> dict[str, float]:
    """Every signal at the last record (a monitor step), from the records up to it: what a running
    run's monitor logs (``signal_series``' last point of each signal)."""
    step = records[-1]["step"]
    return {name: pts[-1][1] for name, pts in signal_series(records, window).items() if pts and pts[-1][0] == step}


def signal_series(records: Sequence[Mapping], window: int = 5) -> dict[str, list[tuple[int, float]]]:
    """Every signal at every monitor step of a run: {signal: [(step, value), ...]}, each value a
    function of the records up to that step. Monitor steps are those with a ``spread_ratio``."""
    out: dict[str, list[tuple[int, float]]] = {s: [] for s in SIGNALS}
    records = sorted(records, key=lambda r: r["step"])
    best_gain = -math.inf
    for i, r in enumerate(records):
        if r.get("spread_ratio") is None:
            continue
        step = int(r["step"])
        out["spread_ratio"].append((step, float(r["spread_ratio"])))
        if r.get("rank_agreement") is not None:
            out["rank_disagreement"].append((step, 1.0 - float(r["rank_agreement"])))
        if r.get("warm_gap") is not None:
            out["warm_gap"].append((step, abs(float(r["warm_gap"]))))
        if i + 1 >= 2 * window:
            first = np.mean([x["proxy_reward"] for x in records[:window]])
            recent = records[i + 1 - window:i + 1]
            kl = max(float(np.mean([x["kl_sft"] for x in recent])), 1e-3)
            gain = (float(np.mean([x["proxy_reward"] for x in recent])) - first) / kl
            if gain > 0:
                best_gain = max(best_gain, gain)
            if best_gain > 0:
                out["proxy_bend"].append((step, float(1.0 - gain / best_gain)))
    return out


def first_alarm(series: Sequence[tuple[int, float]], threshold: float) -> int | None:
    """The first step whose value exceeds ``threshold`` (None: never)."""
    return next((step for step, v in series if v > threshold), None)


@dataclass(frozen=True)
class Trajectory:
    """One RL run, labelled by its held-out gold: the signals' series, its gold peak and when gold fell.

    ``peak_step``: the step of the gold peak (the study's estimate: picked on one held-out draw);
    ``fell_step``: the first evaluation step after the peak whose gold (both draws) is below the peak's
    by more than the declared margin, if the run's last point is too (None: gold never fell);
    ``kl``: KL to SFT at each evaluation step (lead times in nats)."""

    seed: int
    name: str
    series: Mapping[str, Sequence[tuple[int, float]]]
    peak_step: int | None
    fell_step: int | None
    kl: Mapping[int, float]
    gold: Mapping[int, float] = field(default_factory=dict)  # held-out gold at each evaluation step (plots)

    @property
    def fell(self) -> bool:
        return self.fell_step is not None

    def kl_at(self, step: int) -> float:
        """KL to SFT at ``step``, interpolated between evaluation steps."""
        steps = sorted(self.kl)
        return float(np.interp(step, steps, [self.kl[s] for s in steps]))


def fell_step(curve: Sequence[Mapping], peak_step: int | None, peak_gold: float, margin: float) -> int | None:
    """When a held-out curve's gold fell: the first point after the peak below ``peak_gold - margin``,
    provided the last point is below it too (a dip that recovers is not a fall)."""
    if peak_step is None or not curve:
        return None
    bar = peak_gold - margin
    if curve[-1]["gold"] >= bar:
        return None
    return next((int(p["step"]) for p in curve if p["step"] > peak_step and p["gold"] < bar), None)


def trajectory(seed: int, name: str, records: Sequence[Mapping], run: Mapping, margin: float,
               window: int = 5) -> Trajectory:
    """The labelled trajectory of one study RL run (its metrics.jsonl records and its curve summary)."""
    curve = run["curve"]
    return Trajectory(seed, name, signal_series(records, window), run.get("peak_step"),
                      fell_step(curve, run.get("peak_step"), run["peak_gold"], margin),
                      {int(p["step"]): float(p["kl"]) for p in curve},
                      {int(p["step"]): float(p["gold"]) for p in curve})


def outcome(t: Trajectory, signal: str, threshold: float) -> dict:
    """One run under one rule: alarm step, warned (fired at or before gold fell), false alarm (fired in a
    run whose gold never fell), lead in steps and nats before the gold peak (negative: after it)."""
    alarm = first_alarm(t.series.get(signal, ()), threshold)
    warned = t.fell and alarm is not None and alarm <= t.fell_step
    lead = None if not warned or t.peak_step is None else t.peak_step - alarm
    lead_kl = None if lead is None else t.kl_at(t.peak_step) - t.kl_at(alarm)
    return {"alarm": alarm, "fell": t.fell, "warned": bool(warned), "false_alarm": (not t.fell) and alarm is not None,
            "lead_steps": lead, "lead_kl": lead_kl}


def _rates(trajs: Sequence[Trajectory], signal: str, threshold: float) -> tuple[float, float]:
    """(share of fell runs warned, share of not-fell runs that alarmed); NaN where there are none."""
    outs = [outcome(t, signal, threshold) for t in trajs]
    fell = [o for o in outs if o["fell"]]
    kept = [o for o in outs if not o["fell"]]
    tpr = float(np.mean([o["warned"] for o in fell])) if fell else math.nan
    fpr = float(np.mean([o["false_alarm"] for o in kept])) if kept else math.nan
    return tpr, fpr


def candidate_thresholds(trajs: Sequence[Trajectory], signal: str) -> list[float]:
    """Every value the signal took, just below it (so that value fires), and 'never' (+inf)."""
    values = sorted({v for t in trajs for _, v in t.series.get(signal, ())})
    return [float(np.nextafter(v, -np.inf)) for v in values] + [math.inf]


def calibrate(calibration: Sequence[Trajectory]) -> dict[str, dict]:
    """``CALIBRATION_RULE`` for every signal, on the calibration runs only: {signal: {threshold, J, tpr, fpr}}."""
    rules = {}
    for signal in SIGNALS:
        scored = []
        for th in candidate_thresholds(calibration, signal):
            tpr, fpr = _rates(calibration, signal, th)
            j = (0.0 if math.isnan(tpr) else tpr) - (0.0 if math.isnan(fpr) else fpr)
            scored.append({"threshold": th, "j": j, "tpr": tpr, "fpr": fpr})
        top = max(r["j"] for r in scored)
        tied = [r for r in scored if r["j"] == top]  # in threshold order
        rules[signal] = tied[(len(tied) - 1) // 2]
    return rules


def roc(trajs: Sequence[Trajectory], signal: str) -> dict:
    """The ROC of a signal over its thresholds on these runs: (false-alarm share, warned share) points,
    their upper envelope, and the area under it (NaN without both kinds of run)."""
    best: dict[float, float] = {0.0: 0.0, 1.0: 1.0}
    for th in candidate_thresholds(trajs, signal):
        tpr, fpr = _rates(trajs, signal, th)
        if math.isnan(tpr) or math.isnan(fpr):
            return {"fpr": [], "tpr": [], "auc": math.nan}
        best[fpr] = max(best.get(fpr, 0.0), tpr)
    xs = sorted(best)
    ys = np.maximum.accumulate([best[x] for x in xs])
    auc = float(sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1)))
    return {"fpr": xs, "tpr": ys.tolist(), "auc": auc}


def evaluate(trajs: Sequence[Trajectory], rules: Mapping[str, Mapping], level: float = 0.95) -> dict[str, dict]:
    """Each signal's calibrated rule on these runs (seeds calibration never read): warned / fell, lead time
    (median, steps and nats), false alarms; shares with a t CI over seeds (each seed's share one replicate)."""
    from warm_ray.stats import paired_ci

    def share(per_seed: list[float]) -> dict:
        vals = [v for v in per_seed if not math.isnan(v)]
        if not vals:
            return {"mean": None, "ci_low": None, "ci_high": None, "seeds": 0}
        ci = paired_ci(vals, level) if len(vals) > 1 else {"mean": vals[0], "ci_low": -math.inf, "ci_high": math.inf}
        return {"mean": float(ci["mean"]), "ci_low": float(ci["ci_low"]), "ci_high": float(ci["ci_high"]),
                "seeds": len(vals)}

    seeds = sorted({t.seed for t in trajs})
    out = {}
    for signal, rule in rules.items():
        outs = [(t, outcome(t, signal, rule["threshold"])) for t in trajs]
        fell = [o for _, o in outs if o["fell"]]
        kept = [o for _, o in outs if not o["fell"]]
        per_seed_tpr, per_seed_fpr = [], []
        for s in seeds:
            mine = [o for t, o in outs if t.seed == s]
            f = [o["warned"] for o in mine if o["fell"]]
            k = [o["false_alarm"] for o in mine if not o["fell"]]
            per_seed_tpr.append(float(np.mean(f)) if f else math.nan)
            per_seed_fpr.append(float(np.mean(k)) if k else math.nan)
        leads = [o["lead_steps"] for o in fell if o["lead_steps"] is not None]
        leads_kl = [o["lead_kl"] for o in fell if o["lead_kl"] is not None]
        out[signal] = {"threshold": rule["threshold"], "runs": len(outs), "fell": len(fell),
                       "warned": sum(o["warned"] for o in fell), "not_fell": len(kept),
                       "false_alarms": sum(o["false_alarm"] for o in kept),
                       "warned_share": share(per_seed_tpr), "false_alarm_share": share(per_seed_fpr),
                       "median_lead_steps": float(np.median(leads)) if leads else None,
                       "median_lead_kl": float(np.median(leads_kl)) if leads_kl else None,
                       "roc": roc([t for t, _ in outs], signal)}
    return out


def calibrate_and_report(trajs: Sequence[Trajectory], calibration_seeds: Sequence[int], level: float = 0.95) -> dict:
    """Each signal's rule chosen on the runs of ``calibration_seeds`` (``calibrate``: the other seeds' runs
    are not passed to it) and reported on the runs of the other seeds (``evaluate``)."""
    chosen = set(calibration_seeds)
    calibration = [t for t in trajs if t.seed in chosen]
    held_out = [t for t in trajs if t.seed not in chosen]
    rules = calibrate(calibration)
    return {"calibration_rule": CALIBRATION_RULE, "calibration_seeds": sorted(chosen),
            "report_seeds": sorted({t.seed for t in held_out}),
            "calibration": {"runs": len(calibration), "fell": sum(t.fell for t in calibration), "rules": rules},
            "report": evaluate(held_out, rules, level)}


def best_signal(report: Mapping[str, Mapping], max_false_alarms: float = 0.2) -> str | None:
    """The signal to make the default: the highest warned share on the report seeds among those whose false-
    alarm share is at most ``max_false_alarms`` and which warned at least one fall; None if none is."""
    ok = [(r["warned_share"]["mean"], s) for s, r in report.items()
          if r["warned"] > 0 and (r["false_alarm_share"]["mean"] or 0.0) <= max_false_alarms]
    return max(ok)[1] if ok else None
