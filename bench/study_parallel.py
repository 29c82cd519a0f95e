"""The study's seeds one after another against in parallel, side by side, on the same machine and run.

(a) wall time of `warm-ray study` (tiny preset, rm + bon parts, ``--seeds`` seeds) with
    ``study.max_parallel=1`` (one seed after another in the driver) and with the default (as many seeds as
    the cluster holds, each in its own placement group), back to back; the two runs' claims must be equal;
    the parallel run's per-unit node timeline (a Gantt chart) is copied to ``--out``;
(b) with ``--from RESULTS_JSON``: the seconds per seed and part of a finished study, and the wall time its
    seeds would take on K parallel slots (whole waves of seeds, parts of a seed in order);
(c) what one seed's placement group asks for under a config (``--gpu-config``, default configs/gpu.yaml).

    python bench/study_parallel.py [--seeds 4] [--nodes 1] [--out bench_out]
    python bench/study_parallel.py --preset default --seeds 5    # the default study, ~1 h on 2 cores
    python bench/study_parallel.py --from runs/study/study/results.json --slots 1,2,5

``--nodes N`` > 1 simulates a cluster of N nodes on this machine (``ray.cluster_utils.Cluster``, the
machine's CPUs split among them): every node is the same machine's cores, so it shows the scheduling, not
more compute.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STUDY = ["warm.m=2", "warm.epochs=1", "warm.batch_size=16", "warm.lp_epochs=2", "warm.lmc_points=2",
         "warm.checkpoint_every=50", "warm.eval_threads=1", "study.parts=[rm, bon]", "study.recipe=lr_high",
         "study.primary=['OOD accuracy: WARM > ENS']", "study.bon_prompts=16", "study.bon_samples=8",
         "study.bon_n=[1, 2, 8]"]


def table(rows: list[list], head: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(str(v).rjust(w) for v, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, rows)])


def run_both(args) -> None:
    import ray

    from actors import study as S
    from warm_ray.config import apply_overrides, load_config
    from warm_ray.prepare import prepare
    from warm_ray.testing import TINY

    tmp = Path(tempfile.mkdtemp(prefix="bench_study_"))
    cluster = None
    cpus = len(os.sched_getaffinity(0))
    try:
        if args.nodes > 1:
            from ray.cluster_utils import Cluster

            per = cpus / args.nodes
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": per})
            for _ in range(args.nodes - 1):
                cluster.add_node(num_cpus=per)
            cluster.wait_for_nodes(timeout=120)
            ray.init(address=cluster.address, log_to_driver=False)
        else:
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        tiny = args.preset == "tiny"
        base = load_config(None, [*(TINY if tiny else []), f"run_dir={tmp / 'prepared'}"])
        t0 = time.perf_counter()
        prepare(base)
        print(f"prepare: {time.perf_counter() - t0:.0f} s")
        seeds = f"study.seeds=[{', '.join(map(str, range(args.seeds)))}]"
        out = {}
        for name, extra in (("one after another", "study.max_parallel=1"), ("parallel", "study.max_parallel=0")):
            run_dir = tmp / name.replace(" ", "_")
            run_dir.mkdir()
            shutil.copytree(tmp / "prepared" / "prepare", run_dir / "prepare", symlinks=True)
            cfg = apply_overrides(base, [*(STUDY if tiny else []), seeds, extra])
            cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
            t0 = time.perf_counter()
            res = S.run_study(cfg, report=False)
            out[name] = (time.perf_counter() - t0, res, run_dir)
        (t1, r1, _), (tp, rp, dp) = out["one after another"], out["parallel"]
        same = [c["mean"] for c in r1["claims"]] == [c["mean"] for c in rp["claims"]]
        rows = [["one after another", 1, f"{t1:.1f}", "1.00"],
                [f"parallel (max_parallel=0)", rp["parallel"]["slots"], f"{tp:.1f}", f"{t1 / tp:.2f}"]]
        print(f"\n(a) {args.preset} preset, {'+'.join(cfg.study.parts)}, {args.seeds} seeds, {args.nodes} node(s) on "
              f"{cpus} CPUs (one seed asks for {rp['parallel']['seed_bundles']}; torch threads: the seed's own work "
              f"warm.eval_threads={cfg.warm.eval_threads} (0: every core), each trainer "
              f"{cfg.warm.trainer.num_threads})\n")
        print(table(rows, ["study", "slots", "wall s", "speed-up"]))
        for name, (_, res, _) in out.items():
            print(f"{name}: recipe choice {res['recipe'].get('seconds', 0):.0f} s, seeds {res['parallel']['seconds']:.0f} s")
        print(f"\nclaims equal: {same}")
        Path(args.out).mkdir(parents=True, exist_ok=True)
        shutil.copy(dp / "study" / "timeline.png", Path(args.out) / "study_timeline.png")
        print(f"timeline of the parallel run: {Path(args.out) / 'study_timeline.png'}")
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def from_results(path: str, slots: list[int]) -> None:
    from actors.study_parallel import wall_with_slots

    r = json.loads(Path(path).read_text())
    seeds = r["seeds"]
    parts = [p for p in ("rm", "bon", "rl", "warp") if any(p in s["seconds"] for s in seeds.values())]
    rows = [[s, *[f"{v['seconds'].get(p, 0):.0f}" for p in parts], f"{sum(v['seconds'].values()):.0f}"]
            for s, v in seeds.items()]
    per_seed = [sum(v["seconds"].values()) for v in seeds.values()]
    mean = sum(per_seed) / len(per_seed)
    rows.append(["mean", *[f"{sum(v['seconds'].get(p, 0) for v in seeds.values()) / len(seeds):.0f}" for p in parts],
                 f"{mean:.0f}"])
    print(f"\n(b) seconds per seed and part of {path}\n")
    print(table(rows, ["seed", *parts, "seed total"]))
    n = len(seeds)
    print(f"\nwall time of its {n} seeds on K parallel slots (mean seed, whole waves; recipe choice not included)\n")
    print(table([[k, f"{wall_with_slots(mean, n, k) / 60:.1f}", f"{wall_with_slots(mean, n, 1) / wall_with_slots(mean, n, k):.2f}"]
                 for k in slots], ["K", "minutes", "speed-up"]))


def seed_demand(config_path: str) -> None:
    from actors.study_parallel import demand, part_bundles, seed_bundles
    from warm_ray.config import load_config

    cfg = load_config(config_path, [])
    print(f"\n(c) one seed's placement group under {config_path} (parts {cfg.study.parts})\n")
    rows = [[p, len(b), ", ".join(f"{k} {v:g}" for k, v in sorted(demand(b).items()))]
            for p, b in part_bundles(cfg).items() if p == "rm" or p in cfg.study.parts]
    bundles = seed_bundles(cfg)
    rows.append(["seed (largest of each)", len(bundles), ", ".join(f"{k} {v:g}" for k, v in sorted(demand(bundles).items()))])
    print(table(rows, ["part", "bundles", "total"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--preset", choices=["tiny", "default"], default="tiny",
                    help="tiny: the test preset, rm + bon; default: `warm-ray study`'s defaults (rm + bon, recipe choice)")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--from", dest="results", default="")
    ap.add_argument("--slots", default="1,2,5")
    ap.add_argument("--gpu-config", default=str(ROOT / "configs" / "gpu.yaml"))
    args = ap.parse_args()
    if args.results:
        from_results(args.results, [int(k) for k in args.slots.split(",")])
    else:
        run_both(args)
    seed_demand(args.gpu_config)


if __name__ == "__main__":
    main()
