"""What online WARM costs: one refresh (label, train, publish, pull) against an RL step, and the share of
the RL run's wall time spent waiting on refreshes; the same run offline beside it.

    python bench/online.py --run-dir runs/demo [--steps 12] [--every 3] [--pairs 32] [--out table.md]

``--run-dir`` needs a finished `warm-ray prepare` and `warm-ray warm` (e.g. `warm-ray demo`'s run dir). Two RL
runs of the same settings (reward "warm", the run dir's RL settings with ``--steps`` steps, no disagreement
monitor) run back to back in one Ray: offline (``rl.online.every = 0``) and online (a refresh every ``--every``
steps on ``--pairs`` gold-labelled pairs). The table: the median seconds of an RL step without a refresh, each
phase of a refresh (labelling in the driver; the members' training in their actors, which overlaps the step's
scoring, learning and syncing; publishing the new average with its snapshot; the scorer's pull and the reward's
new standardisation), the loop's wait on a refresh, and both runs' wall times; ratios to the offline step.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from warm_ray import quiet_transformers  # noqa: E402
from warm_ray.config import apply_overrides, load_config  # noqa: E402


def one_run(config, out: Path, every: int, pairs: int) -> tuple[dict, list[dict], float]:
    from actors.rl import RLRun, read_metrics, run_rl

    rl = dataclasses.replace(config.rl, online=dataclasses.replace(config.rl.online, every=every, pairs=pairs))
    t0 = time.perf_counter()
    summary = run_rl(RLRun.of(config, out, rl=rl, reward="warm"))
    return summary, read_metrics(out / "metrics.jsonl"), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, help="a run dir with finished prepare and warm stages")
    ap.add_argument("--config", default=None, help="the run dir's config (default: its warm/config.yaml)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--every", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--out", default=None, help="also write the table to this file")
    args = ap.parse_args(argv)
    quiet_transformers()
    import ray

    run_dir = Path(args.run_dir).resolve()
    config = load_config(args.config or str(run_dir / "warm" / "config.yaml"))
    config = apply_overrides(dataclasses.replace(config, run_dir=str(run_dir)),
                             [f"rl.steps={args.steps}", "rl.monitor_every=0", f"rl.checkpoint_every={args.steps}"])
    ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _, off, wall_off = one_run(config, Path(tmp) / "offline", 0, args.pairs)
            summary, on, wall_on = one_run(config, Path(tmp) / "online", args.every, args.pairs)
    finally:
        ray.shutdown()
    step = statistics.median(r["t_step"] for r in off)
    refreshes = [r["refresh"] for r in on if r.get("refresh", {}).get("phases")]
    waits = [r["t_refresh_wait"] for r in on if "refresh" in r]
    plain = statistics.median(r["t_step"] for r in on if "refresh" not in r)
    rows = [("RL step, offline run (median)", step), ("RL step without a refresh, online run (median)", plain)]
    for phase in ("label", "train", "publish", "pull"):
        rows.append((f"refresh: {phase} (median)", statistics.median(r["phases"][phase] for r in refreshes)))
    rows += [("refresh: labelling to pull (median)", statistics.median(r["seconds"] for r in refreshes)),
             ("the loop's wait on a refresh (median)", statistics.median(waits)),
             ("RL step with a refresh (median)", statistics.median(r["t_step"] for r in on if "refresh" in r)),
             ("run wall time, offline", wall_off), ("run wall time, online", wall_on)]
    lines = [f"Online WARM on {run_dir.name}: {args.steps} steps, a refresh every {args.every} steps on "
             f"{args.pairs} pairs ({len(refreshes)} published, {summary['online']['labels']} labels), "
             f"{config.rl.online.steps} member steps each, M = "
             f"{len(list((run_dir / 'warm' / 'members').glob('member_*/final')))} members; "
             f"{os.cpu_count()} CPU cores.", "",
             "| what | seconds | × offline RL step |", "|---|---:|---:|"]
    lines += [f"| {name} | {secs:.3f} | {secs / step:.2f} |" for name, secs in rows]
    share = sum(r["t_refresh_wait"] for r in on if "t_refresh_wait" in r) / wall_on
    lines += ["", f"Share of the online run's wall time spent waiting on refreshes: {share:.1%}; online / offline "
              f"wall time: {wall_on / wall_off:.2f}."]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
