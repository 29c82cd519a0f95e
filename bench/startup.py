"""Actor start-up: seconds from ``.remote()`` to an actor that has built its model and can work.

    python bench/startup.py --run-dir runs/demo [--repeats 3]

For each role (rollout worker, policy learner, RM trainer, scorer) on the tiny policy of a finished
`warm-ray prepare` in ``--run-dir``, and for an empty actor (Ray's own floor: a worker process),
one after another on a local Ray: the median of ``--repeats`` starts, until the constructor has
returned (``__ray_ready__``). Beside it, the seconds a fresh Python takes to import the role's
module (what each worker pays before its constructor runs). The issue's target is 3 s per role.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 3.0


class Empty:
    """An actor that imports nothing and builds nothing."""


def import_seconds(module: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    summary_path = Path(args.run_dir) / "prepare" / "prepare.json"
    if not summary_path.exists():
        print(f"{summary_path} not found: run `warm-ray prepare --run-dir {args.run_dir}` first", file=sys.stderr)
        return 2
    from warm_ray.sources import prepared_summary

    summary = prepared_summary(args.run_dir)  # its paths resolved against the run dir

    import ray

    from actors.learner import PolicyLearner
    from actors.reward_trainer import MemberSpec, RewardModelTrainer, TrainSettings
    from actors.rollout import RolloutWorker
    from actors.scorer import ScorerActor
    from warm_ray.config import RLConfig

    tmp = tempfile.mkdtemp(prefix="bench_startup_")
    policy = summary["policy"]
    roles = {
        "empty actor (Ray's floor)": (Empty, (), None, None),
        "rollout worker (HF)": (RolloutWorker, (policy, "hf"), "actors.rollout", None),
        "policy learner": (PolicyLearner, (policy, RLConfig()), "actors.learner", None),
        "RM trainer": (RewardModelTrainer, (MemberSpec(index=0, lr=1e-4, dropout=0.1, seed=0, init_dir=policy),
                                            TrainSettings(
                                                data_dir=summary["data"], head_path=None, epochs=1, batch_size=16,
                                                max_length=64, weight_decay=0.0, checkpoint_every=20, log_every=10,
                                                sync_every=0, num_threads=1, device="cpu", dtype="float32"), f"{tmp}/member"),
                       "actors.reward_trainer", None),
        "scorer": (ScorerActor, (), "actors.scorer", lambda a: a.add.remote(
            "rm", {"dirs": [policy], "mode": "warm", "name": "rm", "max_length": 64})),
    }
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for name, (cls, ctor_args, module, first_call) in roles.items():
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                actor = ray.remote(cls).options(num_cpus=0.5).remote(*ctor_args)
                ray.get(actor.__ray_ready__.remote(), timeout=600)
                if first_call is not None:  # a scorer is built empty, then given its models
                    ray.get(first_call(actor), timeout=600)
                times.append(time.perf_counter() - t0)
                ray.kill(actor)
            imports = import_seconds(module) if module else None
            rows.append((name, statistics.median(times), imports))
            print(f"{name}: {rows[-1][1]:.2f} s", file=sys.stderr)
    finally:
        ray.shutdown()
    floor = rows[0][1]
    print(f"\nActor start-up, {args.repeats} starts each (median), tiny policy of {args.run_dir}:\n")
    print("| role | ready s | vs empty actor | vs 3 s target | fresh-process import s |")
    print("|---|---:|---:|---:|---:|")
    for name, s, imp in rows:
        print(f"| {name} | {s:.2f} | {s / floor:.2f}x | {s / TARGET_S:.2f}x | {'–' if imp is None else f'{imp:.2f}'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
