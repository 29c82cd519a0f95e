"""The study over a cluster: seeds as parallel Ray tasks in their own placement groups, the same numbers.

A simulated three-node cluster on one machine (``ray.cluster_utils.Cluster``: a head and two workers, one
logical CPU each, so one tiny seed fills a node). A tiny three-seed study runs once one seed after another
(``study.max_parallel=1``), then with the seeds in parallel: its seeds run on three different nodes and give
the same claims and per-seed numbers. Then the parallel study runs again on a fresh run dir and a worker
node is removed while its seed runs, as if its machine died: Ray re-runs that seed elsewhere, which reuses
the parts the seed had finished, and the study ends with the same claims.
"""

import dataclasses
import json
import math
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from actors import study as S
from actors import study_parallel as P
from warm_ray.config import Resources, apply_overrides

TIMEOUT = 600
NODE = {"num_cpus": 1}
TINY_STUDY = [
    "warm.m=2", "warm.epochs=1", "warm.batch_size=16", "warm.lp_epochs=2", "warm.lmc_points=2",
    "warm.checkpoint_every=50", "warm.eval_threads=1",
    "study.seeds=[0, 1, 2]", "study.parts=[rm, bon]", "study.primary=['OOD accuracy: WARM > ENS']",
    "study.bon_prompts=6", "study.bon_samples=8", "study.bon_n=[1, 2, 8]", "study.recipe=lr_high",
]
# what differs between two runs of the same seed by design: where and when it ran
TIMING = {"seconds", "seconds_part", "units", "total", "sample", "judge", "wall_s", "started", "finished"}


def comparable(x):
    """``x`` without its timing and placement entries (at any depth)."""
    if isinstance(x, dict):
        return {k: comparable(v) for k, v in x.items() if k not in TIMING and not k.startswith("seconds")}
    if isinstance(x, list):
        return [comparable(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return x


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # a module before this one may have left its Ray up
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={
        **NODE, "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 2}})
    try:
        for _ in range(2):
            c.add_node(**NODE)
        c.wait_for_nodes(timeout=60)
        ray.init(address=c.address, log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _study(prepared, run_dir: Path, *extra: str):
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "prepare").exists():
        shutil.copytree(Path(prepared[0].run_dir) / "prepare", run_dir / "prepare", symlinks=True)  # relocatable
    cfg = apply_overrides(prepared[0], [*TINY_STUDY, *extra])
    return dataclasses.replace(cfg, run_dir=str(run_dir))


def test_seed_placement_group_is_sized_from_the_config(prepared):
    cfg = apply_overrides(prepared[0], [*TINY_STUDY, "study.parts=[rm, bon, rl, warp]", "study.rl_parallel=2",
                                        "rl.n_workers=1", "warp.m=3", "warp.max_parallel=2", "warp.rl.n_workers=1"])
    cfg = dataclasses.replace(cfg, warm=dataclasses.replace(cfg.warm, trainer=Resources(num_cpus=1, num_gpus=0.5)))
    parts = P.part_bundles(cfg)
    assert parts["rm"] == [{"CPU": 1, "GPU": 0.5}] * 2
    assert len(parts["rl"]) == 2 * 2 and len(parts["warp"]) == 2 * 2  # 2 slots of a learner and a worker
    bundles = P.seed_bundles(cfg)
    # the parts run one after another: 4 bundles, the first two big enough for a trainer
    assert len(bundles) == 4 and bundles[0] == {"CPU": 1, "GPU": 0.5} and bundles[3] == {"CPU": 0.5}
    # three nodes of 3 CPUs and 1 GPU hold three such seeds, of 2 CPUs two; without GPUs none fits
    assert P.capacity(bundles, [{"CPU": 3, "GPU": 1}] * 3) == 3
    assert P.capacity(bundles, [{"CPU": 2, "GPU": 1}] * 3) == 2
    assert P.capacity(bundles, [{"CPU": 8}]) == 0
    assert P.capacity([{"CPU": 1}], [{"CPU": 1.5}, {"CPU": 1}]) == 2


@pytest.fixture(scope="module")
def sequential(prepared, cluster, tmp_path_factory):
    """The tiny study's seeds one after another in the driver: the numbers the parallel runs must give."""
    return S.run_study(_study(prepared, tmp_path_factory.mktemp("seq"), "study.max_parallel=1"), report=False)


def test_seeds_run_on_different_nodes_with_the_sequential_numbers(prepared, cluster, sequential, tmp_path):
    import ray

    assert sequential["parallel"]["slots"] == 1
    assert {u["pid"] for r in sequential["seeds"].values() for u in r["units"].values()} == {os.getpid()}
    parallel = S.run_study(_study(prepared, tmp_path / "par"), report=False)
    assert parallel["parallel"]["slots"] == 3
    nodes = {s: {u["node_id"] for u in r["units"].values()} for s, r in parallel["seeds"].items()}
    assert all(len(n) == 1 for n in nodes.values()), nodes  # a seed stays on its node
    assert len(set.union(*nodes.values())) == 3, nodes  # three seeds, three nodes
    assert set.union(*nodes.values()) == {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    # the same numbers, bitwise: every part is seeded and runs on the same thread counts either way
    assert comparable(parallel["claims"]) == comparable(sequential["claims"])
    for seed in (0, 1, 2):
        assert comparable(parallel["seeds"][seed]) == comparable(sequential["seeds"][seed]), seed
    # the report names the node each part ran on, the timeline plots them
    study_dir = tmp_path / "par" / "study"
    md = (study_dir / "results.md").read_text()
    assert all(n[:8] in md for n in set.union(*nodes.values()))
    assert (study_dir / "timeline.png").stat().st_size > 0


def test_a_lost_node_costs_only_its_running_seed(prepared, cluster, sequential, tmp_path):
    import ray

    cfg = _study(prepared, tmp_path / "lost")
    out: dict = {}

    def drive():
        try:
            out["results"] = S.run_study(cfg, report=False)
        except BaseException as e:  # surfaced by the assertions below
            out["error"] = e

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    seeds_dir = tmp_path / "lost" / "study" / "recipe_lr_high"
    deadline = time.time() + TIMEOUT

    def placements() -> dict:
        return {s: json.loads(p.read_text()) for s in (0, 1, 2)
                if (p := seeds_dir / f"seed_{s}" / S.PLACEMENT).exists()}

    # every seed has started (one per node); then a worker node whose seed is still running dies. Which
    # seed that is depends on when each worker process started: each seed says where it runs
    while len(at := placements()) < 3:
        assert "error" not in out, out.get("error")
        assert time.time() < deadline, "the seeds never started"
        time.sleep(0.2)
    workers = {n.node_id: n for n in cluster.worker_nodes}
    busy = [p for p in at.values() if p["part"] is not None and p["node_id"] in workers]
    assert busy, at  # a tiny seed takes longer than the two others take to start
    victim = workers[busy[0]["node_id"]]
    cluster.remove_node(victim)
    # a replacement joins, as an autoscaler would bring one (without it, Ray's scheduler retries the lost
    # seed's placement group until another seed's group is freed, and on 2 cores that slows every seed)
    cluster.add_node(**NODE)
    driver.join(TIMEOUT)
    assert not driver.is_alive(), "the study did not finish after the node was lost"
    assert "error" not in out, out.get("error")
    results = out["results"]
    ran_on = {s: {u["node_id"] for u in r["units"].values()} for s, r in results["seeds"].items()}
    assert victim.node_id not in set.union(*ran_on.values()), ran_on  # its seed ran again elsewhere
    # every part ran on a node alive at the end (the lost seed on whichever had room: the new one, or
    # one whose seed had finished)
    assert set.union(*ran_on.values()) <= {n["NodeID"] for n in ray.nodes() if n["Alive"]}, ran_on
    assert comparable(results["claims"]) == comparable(sequential["claims"])
    for seed in (0, 1, 2):
        assert comparable(results["seeds"][seed]) == comparable(sequential["seeds"][seed]), seed


RL = ["study.seeds=[0]", "study.parts=[rm, rl]", "study.rl_arms=[single, warm]", "study.rl_betas=[0.1]",
      "study.eval_every=2", "study.eval_prompts=4", "study.std_prompts=4", "study.std_samples=2",
      "study.kl_targets=[0.001]", "rl.steps=4", "rl.prompts_per_step=2", "rl.samples_per_prompt=2",
      "rl.max_new_tokens=6"]


def _window(result: dict, run: str) -> tuple[float, float]:
    r = result["seeds"][0]["rl"]["runs"][run]
    return r["started"], r["finished"]


def test_rl_arms_run_at_once_with_the_numbers_of_one_after_another(prepared, cluster, tmp_path):
    one = S.run_study(_study(prepared, tmp_path / "one", *RL), report=False)
    both = S.run_study(_study(prepared, tmp_path / "both", *RL, "study.rl_parallel=2"), report=False)
    (s0, s1), (w0, w1) = _window(both, "single_beta_0.1"), _window(both, "warm_beta_0.1")
    assert s0 < w1 and w0 < s1, ((s0, s1), (w0, w1))  # the two runs overlap in time
    (s0, s1), (w0, w1) = _window(one, "single_beta_0.1"), _window(one, "warm_beta_0.1")
    assert s1 <= w0  # one after another
    assert comparable(both["seeds"][0]["rl"]) == comparable(one["seeds"][0]["rl"])
