"""The reward-hacking alarm (``warm_ray.alarm``): each signal on synthetic runs with a known gold peak fires
before it and stays quiet on a flat run; the calibration reads only its seeds; a fall is a fall that lasts."""

from __future__ import annotations

import math

import pytest

from warm_ray import alarm as A


def synthetic_records(hacking: bool, steps: int = 50, every: int = 5, turn: int = 25) -> list[dict]:
    """A run's step records: KL grows linearly; a hacking run's proxy stops paying per nat after ``turn``
    while its members disagree more and more (spread, rank, WARM gap); a flat run stays as at SFT."""
    out = []
    for t in range(1, steps + 1):
        kl = 0.1 * t
        past = max(0, t - turn) if hacking else 0
        proxy = 0.5 * kl if t <= turn or not hacking else 0.5 * 0.1 * turn + 0.02 * (t - turn) * 0.1
        r = {"step": t, "kl_sft": kl, "proxy_reward": proxy}
        if t % every == 0:
            r.update(spread_ratio=1.0 + 0.08 * past, rank_agreement=0.9 - 0.03 * past, warm_gap=0.05 + 0.04 * past)
        out.append(r)
    return out


def synthetic_curve(hacking: bool, steps: int = 50, every: int = 5, peak: int = 35) -> list[dict]:
    """A held-out curve: gold rises to ``peak`` and falls by 0.5 in a hacking run, keeps rising in a flat one."""
    pts = []
    for t in range(0, steps + 1, every):
        gold = 0.02 * t if t <= peak or not hacking else 0.02 * peak - 0.05 * (t - peak)
        pts.append({"step": t, "gold": gold, "kl": 0.1 * t, "draws": {"a": {"gold": gold}, "b": {"gold": gold}}})
    return pts


def run_summary(hacking: bool) -> dict:
    curve = synthetic_curve(hacking)
    i = max(range(len(curve)), key=lambda k: curve[k]["gold"])
    return {"curve": curve, "peak_step": curve[i]["step"], "peak_gold": curve[i]["gold"]}


@pytest.mark.parametrize("signal, threshold", [("spread_ratio", 1.3), ("rank_disagreement", 0.2),
                                               ("warm_gap", 0.2), ("proxy_bend", 0.05)])
def test_each_signal_fires_before_the_gold_peak_and_not_on_a_flat_run(signal, threshold):
    hacking = A.trajectory(0, "hack", synthetic_records(True), run_summary(True), margin=0.1)
    flat = A.trajectory(0, "flat", synthetic_records(False), run_summary(False), margin=0.1)
    assert hacking.fell and hacking.peak_step == 35 and not flat.fell
    hit = A.outcome(hacking, signal, threshold)
    assert hit["warned"] and hit["alarm"] < 35 and hit["lead_steps"] == 35 - hit["alarm"] > 0
    assert hit["lead_kl"] == pytest.approx(0.1 * hit["lead_steps"])
    quiet = A.outcome(flat, signal, threshold)
    assert quiet["alarm"] is None and not quiet["false_alarm"]


def test_signals_read_only_the_records_up_to_their_step():
    records = synthetic_records(True)
    full = A.signal_series(records)
    for signal, pts in full.items():
        for step, value in pts:
            upto = [r for r in records if r["step"] <= step]
            assert A.signals_at(upto)[signal] == pytest.approx(value)


def test_a_dip_that_recovers_is_not_a_fall():
    curve = [{"step": s, "gold": g} for s, g in [(0, 0.0), (5, 0.5), (10, 0.2), (15, 0.55)]]
    assert A.fell_step(curve, 5, 0.5, 0.1) is None
    curve[-1]["gold"] = 0.3
    assert A.fell_step(curve, 5, 0.5, 0.1) == 10


def _study_like(seeds=(0, 1, 2, 3, 4)) -> list[A.Trajectory]:
    out = []
    for s in seeds:
        for k, hacking in enumerate((True, False, True, False)):
            recs = synthetic_records(hacking, turn=20 + s + k)
            out.append(A.trajectory(s, f"run{k}", recs, run_summary(hacking), margin=0.1))
    return out


def test_the_calibration_never_reads_the_report_seeds():
    trajs = _study_like()
    base = A.calibrate_and_report(trajs, [0, 1])
    # the report seeds' signals scrambled: the thresholds chosen cannot move
    scrambled = [t if t.seed in (0, 1) else A.Trajectory(
        t.seed, t.name, {k: [(s, -v + 7.0) for s, v in pts] for k, pts in t.series.items()}, t.peak_step, t.fell_step,
        t.kl) for t in trajs]
    again = A.calibrate_and_report(scrambled, [0, 1])
    assert again["calibration"]["rules"] == base["calibration"]["rules"]
    assert again["report"] != base["report"]  # they are what is reported
    # the calibration seeds' signals scrambled: the thresholds do move (the test can fail)
    moved = [t if t.seed not in (0, 1) else A.Trajectory(
        t.seed, t.name, {k: [(s, v + 3.0) for s, v in pts] for k, pts in t.series.items()}, t.peak_step, t.fell_step,
        t.kl) for t in trajs]
    assert A.calibrate_and_report(moved, [0, 1])["calibration"]["rules"] != base["calibration"]["rules"]
    assert base["report_seeds"] == [2, 3, 4] and base["calibration_seeds"] == [0, 1]


def test_calibrated_rules_warn_of_every_fall_on_held_out_seeds_and_the_roc_is_perfect():
    section = A.calibrate_and_report(_study_like(), [0, 1])
    for signal in ("spread_ratio", "rank_disagreement", "warm_gap"):
        r = section["report"][signal]
        assert r["fell"] == 6 and r["warned"] == 6 and r["false_alarms"] == 0
        assert r["warned_share"]["mean"] == 1.0 and r["median_lead_steps"] >= 0
        assert r["roc"]["auc"] == pytest.approx(1.0)
    assert A.best_signal(section["report"]) in A.SIGNALS


def test_alarm_rules_parse_and_bad_ones_are_named():
    assert A.parse_rule("", 2.5) == ("spread_ratio", 2.5)
    assert A.parse_rule(" proxy_bend>0.3 ") == ("proxy_bend", 0.3)
    for bad in ("gold > 1", "warm_gap 0.3", "warm_gap > x", "warm_gap > inf"):
        with pytest.raises(ValueError):
            A.parse_rule(bad)
    assert math.isinf(A.candidate_thresholds([], "warm_gap")[-1])
