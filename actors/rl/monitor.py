"""The disagreement monitor of an RL run: the members' spread on the policy's samples, against SFT.

Every ``rl.monitor_every`` steps the members (normalised on the SFT reference samples) score a
bounded subset of the step's samples; an alarm fires when their spread outgrows its SFT value
(``warm_ray.ensemble.DisagreementMonitor``). ``plot_disagreement`` draws it beside gold.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

from actors.rl.metrics import gold_peak_step
from actors.scorer import RemoteScorer
from warm_ray.config import RLConfig
from warm_ray.ensemble import DisagreementMonitor
from warm_ray.reward import RewardScorer

log = logging.getLogger("warm_ray.rl")

# a reward mode's scorer: in this process, or a handle on a ScorerActor (same methods)
Scorer = RewardScorer | RemoteScorer


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
        from warm_ray.alarm import parse_rule

        self.scorer, self.warm = scorer, warm
        self.monitor = DisagreementMonitor(cfg.alarm_ratio, cfg.monitor_every, cfg.monitor_samples)
        self.monitor.set_reference(*self._scores(*reference))
        # the alarm's rule (rl.alarm_rule; by default spread_ratio > rl.alarm_ratio), read on every signal
        # of warm_ray.alarm at each check, from the run's records up to it
        self.signal, self.threshold = parse_rule(cfg.alarm_rule, cfg.alarm_ratio)
        self.window = max(1, cfg.monitor_every)
        self.first_alarm: int | None = None  # the rule's first alarm (the spread monitor keeps its own)

    def _scores(self, prompts: Sequence[str], completions: Sequence[str]):
        idx = self.monitor.indices(len(prompts))
        p, c = [prompts[i] for i in idx], [completions[i] for i in idx]
        members = self.scorer.normalised_member_scores(p, c)  # [M, n]
        return members, None if self.warm is None else self.warm.rewards(p, c)

    def restore(self, records: Sequence[dict]) -> None:
        """First alarm and check counts from the records kept on a resume."""
        checked = [r for r in records if r.get("spread_ratio") is not None]
        alarms = [r["step"] for r in checked if r.get("alarm")]
        self.first_alarm = min(alarms) if alarms else None
        self.monitor.checks = len(checked)
        self.monitor.samples_scored = sum(int(r.get("monitor_samples", 0)) for r in checked)

    def should_check(self, step: int) -> bool:
        return self.monitor.should_check(step)

    def check(self, step: int, prompts: Sequence[str], completions: Sequence[str]) -> dict:
        """The record's disagreement fields at ``step`` (the alarm is ``alarm``'s, once the record is whole)."""
        out = self.monitor.update(step, *self._scores(prompts, completions))
        return {"disagreement_spread": out["spread"], "spread_ratio": out["spread_ratio"],
                "rank_agreement": _finite_or_none(out["rank_agreement"]),
                "warm_gap": _finite_or_none(out.get("warm_gap")), "monitor_samples": out["n_samples"]}

    def alarm(self, records: Sequence[dict], record: dict) -> dict:
        """Every signal at this check (``warm_ray.alarm.signals_at`` over the run's records and this one)
        and whether the rule fires; logs the alarm when it does."""
        from warm_ray.alarm import signals_at

        values = signals_at([*records, record], self.window)
        value = values.get(self.signal)
        fired = value is not None and value > self.threshold
        step = int(record["step"])
        if fired:
            first = self.first_alarm is None
            if first:
                self.first_alarm = step
            log.warning("REWARD-HACKING ALARM at step %d%s: %s = %.3f > %g (member spread %.2fx its SFT value, rank "
                        "agreement %s): the policy may be hacking the reward", step, " (first)" if first else "",
                        self.signal, value, self.threshold, record["spread_ratio"], record.get("rank_agreement"))
        return {"signals": {k: _finite_or_none(v) for k, v in values.items()}, "alarm": fired}

    def to_dict(self) -> dict:
        return {**self.monitor.to_dict(), "first_alarm": self.first_alarm,
                "rule": f"{self.signal} > {self.threshold:g}"}


def start_monitor(cfg: RLConfig, scorer: Scorer | None, warm: Scorer | None,
                  reference: tuple[list[str], list[str]] | None) -> RunMonitor | None:
    """A RunMonitor, or None when it is off (``monitor_every`` 0), or there are no members to compare."""
    if cfg.monitor_every <= 0 or scorer is None or reference is None:
        return None
    if scorer.n_members < 2:
        log.info("disagreement monitor off: %d member(s), spread needs at least 2", scorer.n_members)
        return None
    return RunMonitor(cfg, scorer, warm, reference)


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
