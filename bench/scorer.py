"""Where the reward models score: seconds per RL step with the scorer in the driver and in a ScorerActor.

    python bench/scorer.py [--run-dir runs/bench_scorer] [--rewards warm,ens] [--steps 10] [--repeats 2]
                           [--out table.md]

Same run dir, reward mode, seed, prompts and sampling seeds for both sides; only
``rl.scorer_placement`` differs ("driver": the driver process scores between sampling and
learning; "actor": a ScorerActor with the resources of ``rl.scorer`` does, one Ray call per step and
per monitor check). The runs alternate (driver, actor, driver, actor, ...) so that load from other
jobs on the machine falls on both sides alike. Reported per reward mode and side: mean and median
seconds per step (``t_step``: sample + score + learn + sync + monitor) after ``--warmup`` steps, the
scoring phase alone (``t_score``) and the monitor's (``t_monitor``), and the proxy reward of step 1
(the same on both sides: same samples, same models). With ``--run-dir`` pointing at a finished
`warm-ray warm`, prepare and warm are reused; otherwise both run first (``--set`` overrides apply).
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

SIDES = ("driver", "actor")


def ensure_warm_run(run_dir: Path, overrides: list[str]) -> None:
    """`warm-ray prepare` and `warm-ray warm`, unless they finished already."""
    from warm_ray.cli import main

    for stage, done in (("prepare", run_dir / "prepare" / "prepare.json"), ("warm", run_dir / "warm" / "results.json")):
        if not done.exists():
            print(f"running `warm-ray {stage}` in {run_dir} ...", flush=True)
            if main([stage, "--run-dir", str(run_dir), *overrides]) != 0:
                raise SystemExit(f"`warm-ray {stage}` failed")


def one_run(cfg, mode: str, warmup: int) -> dict:
    from actors.rl import RLRun, read_metrics, run_rl

    with tempfile.TemporaryDirectory(prefix="bench_scorer_") as out:
        t0 = time.perf_counter()
        run_rl(RLRun.of(cfg, out, reward=mode))
        total = time.perf_counter() - t0
        records = read_metrics(Path(out) / "metrics.jsonl")
    timed = records[warmup:]
    return {"step_s": [r["t_step"] for r in timed], "score_s": [r["t_score"] for r in timed],
            "monitor_s": [r["t_monitor"] for r in timed], "proxy_1": records[0]["proxy_reward"], "total_s": total}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/bench_scorer", help="a run dir with prepare/ and warm/ (made if missing)")
    p.add_argument("--rewards", default="warm,ens", help="reward modes, comma-separated (each: both placements)")
    p.add_argument("--steps", type=int, default=10, help="RL steps per run")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the step times")
    p.add_argument("--repeats", type=int, default=2, help="driver/actor pairs per reward mode, alternated")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run, e.g. --set rl.prompts_per_step=32")
    p.add_argument("--out", help="also write the markdown table here")
    args = p.parse_args()
    quiet_transformers()

    import ray

    run_dir = Path(args.run_dir)
    ensure_warm_run(run_dir, [x for o in args.overrides if not o.startswith("rl.") for x in ("--set", o)])
    base = [f"run_dir={run_dir}", f"rl.steps={args.steps}", f"rl.checkpoint_every={args.steps}", *args.overrides]
    rewards = args.rewards.split(",")
    configs = {side: load_config(None, [*base, f"rl.scorer_placement={side}"]) for side in SIDES}

    if ray.is_initialized():  # `warm-ray warm` above leaves its Ray up
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    runs: dict[tuple[str, str], list[dict]] = {(mode, side): [] for mode in rewards for side in SIDES}
    try:
        for mode in rewards:
            for i in range(args.repeats):
                for side in SIDES:
                    print(f"{mode}: pair {i + 1}/{args.repeats}, scorer in the {side} ...", flush=True)
                    runs[mode, side].append(one_run(configs[side], mode, args.warmup))
    finally:
        ray.shutdown()

    rl = configs["actor"].rl
    lines = [
        f"Scorer placement: {rl.prompts_per_step} prompts x {rl.samples_per_prompt} samples x <= "
        f"{rl.max_new_tokens} tokens per step, M = {configs['actor'].warm.m} members, monitor every "
        f"{rl.monitor_every} steps on <= {rl.monitor_samples} samples; {args.repeats} x {args.steps} steps per side "
        f"and mode, first {args.warmup} of each run left out; runs alternated driver/actor; torch threads: driver "
        f"{rl.learner.num_threads}, scorer actor {rl.scorer.num_threads}; scorer actor num_cpus {rl.scorer.num_cpus:g}.",
        "",
        "| reward mode | scorer in | steps timed | mean s/step | median s/step | mean t_score s | mean t_monitor s "
        "| proxy at step 1 | wall s per run |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in rewards:
        for side in SIDES:
            rs = runs[mode, side]
            step = [s for r in rs for s in r["step_s"]]
            lines.append(
                f"| {mode} | {side} | {len(step)} | {statistics.mean(step):.3f} | {statistics.median(step):.3f} "
                f"| {statistics.mean(s for r in rs for s in r['score_s']):.3f} "
                f"| {statistics.mean(s for r in rs for s in r['monitor_s']):.3f} "
                f"| {rs[0]['proxy_1']:.4f} | {statistics.mean(r['total_s'] for r in rs):.1f} |")
    lines.append("")
    for mode in rewards:
        mean = {side: statistics.mean(s for r in runs[mode, side] for s in r["step_s"]) for side in SIDES}
        lines.append(f"{mode}: mean step time actor / driver = {mean['actor'] / mean['driver']:.3f} "
                     f"({100 * (mean['actor'] / mean['driver'] - 1):+.1f}%)")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
