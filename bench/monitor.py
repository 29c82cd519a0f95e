"""Cost of the disagreement monitor: seconds per RL step with the monitor on and off, back to back.

    python bench/monitor.py [--run-dir runs/bench_monitor] [--steps 20] [--repeats 2] [--out table.md]

Same run dir, reward mode, seed, prompts and sampling seeds for both sides; only ``rl.monitor_every``
differs (its default, against 0 = off). Both sides normalise the reward on the same SFT samples, so
the difference is the monitor alone: every K steps the M members (and the WARM RM, for the gap)
score at most ``rl.monitor_samples`` of the step's samples, and every alarm signal of
``warm_ray.alarm`` (spread ratio, rank disagreement, WARM gap, proxy bend) is computed from the run's
records and read by the alarm rule. The runs alternate (off, on, off, on,
...) so that load from other jobs on the machine falls on both sides alike.

Reported per side: mean and median seconds per step (``t_step``: sample + score + learn + sync +
monitor) after ``--warmup`` steps, and the monitor's own time as the run logged it (``t_monitor``
summed over steps, as a share of step time). The acceptance bound is the ratio of mean step times
on / off - 1 < 10%. With ``--run-dir`` pointing at a finished `warm-ray warm`, prepare and warm are
reused; otherwise both run first on the tiny defaults (a few minutes on 2 CPU cores). A shorter
prepare (``--set prepare.lm_steps=120 --set prepare.n_train=240 ...``) leaves the models' sizes, and
so the cost of a step, unchanged.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Runnable as a plain script from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from warm_ray import quiet_transformers  # noqa: E402
from warm_ray.config import load_config  # noqa: E402


def ensure_warm_run(run_dir: Path, overrides: list[str]) -> None:
    """`warm-ray prepare` and `warm-ray warm` on the tiny defaults, unless they finished already."""
    from warm_ray.cli import main

    for stage, done in (("prepare", run_dir / "prepare" / "prepare.json"), ("warm", run_dir / "warm" / "results.json")):
        if not done.exists():
            print(f"running `warm-ray {stage}` in {run_dir} ...", flush=True)
            if main([stage, "--run-dir", str(run_dir), *overrides]) != 0:
                raise SystemExit(f"`warm-ray {stage}` failed")


def one_run(cfg, mode: str, warmup: int) -> dict:
    from actors.rl import RLRun, read_metrics, run_rl

    with tempfile.TemporaryDirectory(prefix="bench_monitor_") as out:
        t0 = time.perf_counter()
        summary = run_rl(RLRun.of(cfg, out, reward=mode))
        total = time.perf_counter() - t0
        records = read_metrics(Path(out) / "metrics.jsonl")
    timed = records[warmup:]
    checks = [r for r in timed if r.get("spread_ratio") is not None]
    return {
        "step_s": [r["t_step"] for r in timed],
        "monitor_s": sum(r["t_monitor"] for r in timed),
        "check_s": [r["t_monitor"] for r in checks],
        "checks": len(checks),
        "total_s": total,
        "first_alarm": summary["first_alarm"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/bench_monitor", help="a run dir with prepare/ and warm/ (made if missing)")
    p.add_argument("--reward", default="warm", help="reward mode of both sides (default: warm, the tiny default)")
    p.add_argument("--steps", type=int, default=20, help="RL steps per run")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the step times")
    p.add_argument("--repeats", type=int, default=2, help="off/on pairs, alternated")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run, e.g. --set rl.monitor_samples=64")
    p.add_argument("--out", help="also write the markdown table here")
    args = p.parse_args()
    quiet_transformers()

    import ray

    run_dir = Path(args.run_dir)
    ensure_warm_run(run_dir, [x for o in args.overrides if not o.startswith("rl.") for x in ("--set", o)])
    base = [f"run_dir={run_dir}", f"rl.reward={args.reward}", f"rl.steps={args.steps}",
            f"rl.checkpoint_every={args.steps}", *args.overrides]
    cfg_on = load_config(None, base)
    cfg_off = load_config(None, [*base, "rl.monitor_every=0"])
    if cfg_on.rl.monitor_every <= 0:
        raise SystemExit("the monitor is off in the 'on' config: leave rl.monitor_every at its default or > 0")

    if ray.is_initialized():  # `warm-ray warm` above leaves its Ray up
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    try:
        for i in range(args.repeats):
            for side, cfg in (("off", cfg_off), ("on", cfg_on)):
                print(f"pair {i + 1}/{args.repeats}: monitor {side} ...", flush=True)
                runs[side].append(one_run(cfg, args.reward, args.warmup))
    finally:
        ray.shutdown()

    rl = cfg_on.rl
    steps = {side: [s for r in rs for s in r["step_s"]] for side, rs in runs.items()}
    mean = {side: statistics.mean(v) for side, v in steps.items()}
    logged_share = sum(r["monitor_s"] for r in runs["on"]) / sum(steps["on"])
    checks = [c for r in runs["on"] for c in r["check_s"]]
    lines = [
        f"Disagreement monitor cost, reward mode {args.reward!r}, M = {cfg_on.warm.m} members "
        f"(+ the WARM RM for the gap); monitor every {rl.monitor_every} steps on <= {rl.monitor_samples} "
        f"of {rl.prompts_per_step * rl.samples_per_prompt} samples; {args.repeats} x {args.steps} steps per side, "
        f"first {args.warmup} of each run left out; runs alternated off/on; torch threads per actor: "
        f"{rl.learner.num_threads}.",
        "",
        "| monitor | steps timed | mean s/step | median s/step | checks | s per check | monitor share of step time (logged) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for side in ("off", "on"):
        n_checks = sum(r["checks"] for r in runs[side])
        per_check = f"{statistics.mean(checks):.3f}" if side == "on" and checks else "–"
        share = f"{100 * logged_share:.1f}%" if side == "on" else "–"
        lines.append(f"| {side} | {len(steps[side])} | {mean[side]:.3f} | {statistics.median(steps[side]):.3f} "
                     f"| {n_checks} | {per_check} | {share} |")
    ratio = mean["on"] / mean["off"]
    lines += ["", f"mean step time on / off: {ratio:.3f} ({100 * (ratio - 1):+.1f}%); monitor's own logged share: "
              f"{100 * logged_share:.1f}% (acceptance: < 10%)"]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
