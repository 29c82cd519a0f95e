"""Seconds per RL run on new actors against a reused slot of actors (``actors.rl.RLActors``).

    python bench/rl_actors.py --run-dir runs/demo [--runs 4] [--steps 2] [--repeats 2]

On the policy of a finished `warm-ray prepare` in ``--run-dir``: ``--runs`` short RL runs one after
another (``--steps`` steps each, each its own seed, the default RL settings otherwise, rewarded by how
often a completion says "the", so no reward model is needed), once with new actors for every run
(``run_rl`` without ``actors=``: what every WARP run did before) and once on one slot that each run
resets (what WARP's runs, `warm-ray rl`'s reward modes and the study's arms do now). The two take
turns ``--repeats`` times, after one untimed run that loads the driver's imports. Seconds of a run:
from the driver's ``run_rl`` call until it returns; the slot's final shutdown counts in its total.
The two arms' metrics must be identical to the last bit (reuse must not change results): the table
says whether they were.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Runnable as a plain script from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from warm_ray import quiet_transformers  # noqa: E402
from warm_ray.config import Config, load_config  # noqa: E402

THE = re.compile(r"\bthe\b", re.IGNORECASE)
ARMS = ("new actors for every run", "one slot, reset for every run")


def count_the(prompts, completions) -> list[float]:
    return [float(len(THE.findall(c))) for c in completions]


def run_all(cfg: Config, runs: int, out: Path, reuse: bool) -> tuple[list[float], float, list[list[dict]]]:
    """(seconds of each run, total seconds, each run's metrics less what is timed)."""
    from actors.rl import RLActors, RLRun, read_metrics, run_rl

    seconds, metrics = [], []
    t_all = time.perf_counter()
    with RLActors() as slot:  # with new actors it is never used, and starts nothing
        for i in range(runs):
            t0 = time.perf_counter()
            run_rl(RLRun.of(cfg, out / f"run_{i}", rl=dataclasses.replace(cfg.rl, seed=i), reward="count_the",
                              fn=count_the), actors=slot if reuse else None)
            seconds.append(time.perf_counter() - t0)
            metrics.append([{k: v for k, v in r.items() if not k.startswith("t_") and k != "tokens_per_s"}
                            for r in read_metrics(out / f"run_{i}" / "metrics.jsonl")])
    return seconds, time.perf_counter() - t_all, metrics


def markdown(seconds: dict[str, list[float]], totals: dict[str, float], identical: bool) -> str:
    base = statistics.median(seconds[ARMS[0]])
    lines = ["| actors | runs | s per run (median) | s per run (min-max) | total s | vs new actors |",
             "|---|---:|---:|---:|---:|---:|"]
    for arm in ARMS:
        s = seconds[arm]
        lines.append(f"| {arm} | {len(s)} | {statistics.median(s):.2f} | {min(s):.2f}-{max(s):.2f} "
                     f"| {totals[arm]:.1f} | {statistics.median(s) / base:.2f}x |")
    saved = base - statistics.median(seconds[ARMS[1]])
    lines += ["", f"saved per run: {saved:.2f} s (median); metrics of the two arms identical: "
              f"{'yes' if identical else 'NO'}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/demo", help="a run dir with a finished `warm-ray prepare`")
    p.add_argument("--runs", type=int, default=4, help="RL runs per arm and repeat")
    p.add_argument("--steps", type=int, default=2, help="RL steps per run")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", help="also write the markdown table here")
    args = p.parse_args()
    from warm_ray.sources import prepared_summary

    prepared_summary(args.run_dir)  # a clear error when `warm-ray prepare` has not run there
    quiet_transformers()
    import ray
    import torch

    torch.set_num_threads(1)
    cfg = load_config(None, [f"run_dir={args.run_dir}", f"rl.steps={args.steps}", f"rl.checkpoint_every={args.steps}"])
    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    totals = dict.fromkeys(ARMS, 0.0)
    metrics: dict[str, list] = {arm: [] for arm in ARMS}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_rl_actors_") as tmp:
            run_all(cfg, 1, Path(tmp) / "warmup", reuse=False)
            for repeat in range(args.repeats):
                for arm in ARMS if repeat % 2 == 0 else ARMS[::-1]:
                    out = Path(tmp) / f"{repeat}_{ARMS.index(arm)}"
                    s, total, m = run_all(cfg, args.runs, out, reuse=arm == ARMS[1])
                    seconds[arm] += s
                    totals[arm] += total
                    metrics[arm] += m
    finally:
        ray.shutdown()
    table = markdown(seconds, totals, metrics[ARMS[0]] == metrics[ARMS[1]])
    print(f"\n{args.runs} RL runs x {args.repeats} repeats per arm, {args.steps} steps each "
          f"({cfg.rl.prompts_per_step} prompts x {cfg.rl.samples_per_prompt} samples x <= {cfg.rl.max_new_tokens} "
          f"tokens, {cfg.rl.backend} rollout, {cfg.rl.n_workers} worker(s)):\n")
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
