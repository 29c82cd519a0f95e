"""The study's alarm section: the reward-hacking signals of every RL run, calibrated on some seeds and
reported on the others (``warm_ray.alarm``).

Each RL run of the study (every arm and β) is a labelled trajectory: its signals, read from its
``metrics.jsonl`` at every monitor step, and its held-out gold curve (the peak, and whether gold fell
by more than ``study.alarm_fall_margin`` after it). The runs of ``study.alarm_seeds`` choose each
signal's threshold (``warm_ray.alarm.CALIBRATION_RULE``); the runs of the other seeds report it:
warned / fell, the lead time before the gold peak, false alarms, with CIs over seeds. Plots:
``alarm_signals.png`` (each signal against step, per run, its calibrated threshold and the gold
peaks) and ``alarm_roc.png`` (each signal's ROC on the report seeds).
"""

from __future__ import annotations

import math
from pathlib import Path

from actors.rl import read_metrics
from warm_ray import alarm as A
from warm_ray.config import Config


def trajectories(config: Config, seeds: dict[int, dict], seeds_dir: Path) -> list[A.Trajectory]:
    """Every RL run of every seed that ran the rl part, labelled by its held-out gold."""
    out = []
    for seed, s in sorted(seeds.items()):
        for name, run in (s.get("rl") or {}).get("runs", {}).items():
            records = read_metrics(seeds_dir / f"seed_{seed}" / "rl" / name / "metrics.jsonl")
            out.append(A.trajectory(seed, name, records, run, config.study.alarm_fall_margin,
                                    window=max(1, config.rl.monitor_every)))
    return out


def alarm_section(config: Config, seeds: dict[int, dict], seeds_dir: Path, study_dir: Path) -> dict | None:
    """The section's numbers (``warm_ray.alarm.calibrate_and_report``) and its plots; None without
    ``study.alarm_seeds`` or RL runs."""
    study = config.study
    if not study.alarm_seeds or not any("rl" in s for s in seeds.values()):
        return None
    trajs = trajectories(config, seeds, seeds_dir)
    out = A.calibrate_and_report(trajs, study.alarm_seeds, study.level)
    out["fall_margin"] = study.alarm_fall_margin
    out["default"] = A.best_signal(out["report"])
    plot_signals(trajs, out, study_dir / "alarm_signals.png")
    plot_roc(out, study_dir / "alarm_roc.png")
    return _finite(out)


def _finite(x):
    """The section with every non-finite number (a threshold of 'never', an undefined AUC) as None (JSON)."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _pct(share: dict) -> str:
    if share["mean"] is None:
        return "–"
    if share["ci_low"] is None:  # one seed: no interval
        return f"{100 * share['mean']:.0f}%"
    lo, hi = max(0.0, share["ci_low"]), min(1.0, share["ci_high"])
    return f"{100 * share['mean']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"


def alarm_markdown(section: dict | None) -> list[str]:
    """The report's alarm section."""
    if not section:
        return []
    cal = section["calibration"]
    lines = ["", f"Reward-hacking alarm: each signal's threshold chosen on the RL runs of seeds "
             f"{section['calibration_seeds']} ({cal['runs']} runs, {cal['fell']} whose gold fell), reported on seeds "
             f"{section['report_seeds']}, which the calibration never read. Rule: {section['calibration_rule']} "
             f"A run's gold fell when its held-out gold ended more than {section['fall_margin']:g} below its peak; "
             "warned: the alarm fired before gold fell; lead: gold peak step minus alarm step (negative: after the "
             "peak), and the same in nats of KL; shares with 95% CIs over the report seeds:", "",
             "| signal | threshold | warned / fell | warned share | median lead (steps) | median lead (KL) "
             "| false alarms / not fell | false-alarm share | ROC AUC |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for signal, r in section["report"].items():
        th = r["threshold"]
        lines.append(f"| {signal} | {'never' if th is None else f'{th:.3g}'} | {r['warned']}/{r['fell']} | "
                     f"{_pct(r['warned_share'])} | "
                     + ("–" if r["median_lead_steps"] is None else f"{r['median_lead_steps']:.1f}") + " | "
                     + ("–" if r["median_lead_kl"] is None else f"{r['median_lead_kl']:.2f}") + " | "
                     f"{r['false_alarms']}/{r['not_fell']} | {_pct(r['false_alarm_share'])} | "
                     + ("–" if r["roc"]["auc"] is None else f"{r['roc']['auc']:.2f}") + " |")
    default = section.get("default")
    lines += ["", f"Default alarm: `rl.alarm_rule: \"{default} > {section['report'][default]['threshold']:.3g}\"` "
              "(the highest warned share on the report seeds with at most 20% false alarms)." if default else
              "No signal warned of a fall on the report seeds with at most 20% false alarms: none is good enough "
              "to act on at this scale (`rl.on_alarm` stays `log`)."]
    return lines


def plot_signals(trajs: list[A.Trajectory], section: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, len(A.SIGNALS), figsize=(4.2 * len(A.SIGNALS), 7), sharex=True)
    for ax, signal, gold_ax in zip(grid[0], A.SIGNALS, grid[1]):
        for t in trajs:  # each run's held-out gold below its signal, on the same steps
            steps = sorted(t.gold)
            gold_ax.plot(steps, [t.gold[k] for k in steps], "-" if t.seed in section["calibration_seeds"] else "--",
                         color="tab:red" if t.fell else "tab:gray", alpha=0.45, lw=1)
        gold_ax.set_xlabel("RL step")
        gold_ax.set_ylabel("held-out gold")
        gold_ax.grid(alpha=0.3)
        for t in trajs:
            pts = t.series.get(signal, ())
            if not pts:
                continue
            color = "tab:red" if t.fell else "tab:gray"
            ls = "-" if t.seed in section["calibration_seeds"] else "--"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ls, color=color, alpha=0.45, lw=1)
            if t.fell and t.peak_step is not None:
                ax.axvline(t.peak_step, color="tab:green", alpha=0.15, lw=1)
        th = section["calibration"]["rules"][signal]["threshold"]
        if th is not None and math.isfinite(th):
            ax.axhline(th, color="black", ls=":", label=f"calibrated threshold {th:.3g}")
            ax.legend(fontsize=7)
        ax.set_title(signal, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("Alarm signals per RL run (top) and its held-out gold (bottom); red: gold fell, grey: it did not; "
                 "solid: calibration seeds, dashed: report seeds; green: gold peaks of runs that fell", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_roc(section: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for signal, r in section["report"].items():
        if r["roc"]["fpr"]:
            ax.step(r["roc"]["fpr"], r["roc"]["tpr"], where="post", label=f"{signal} (AUC {r['roc']['auc']:.2f})")
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set_xlabel("false-alarm share (runs whose gold never fell)")
    ax.set_ylabel("warned share (runs whose gold fell)")
    ax.set_title(f"Alarm ROC on the report seeds {section['report_seeds']}", fontsize=9)
    if ax.get_legend_handles_labels()[0]:  # no ROC where the report seeds hold no run that fell, or none that did not
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
