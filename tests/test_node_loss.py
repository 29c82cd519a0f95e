"""Losing a node mid-training: WARM still ends with all M members, resumed from their checkpoints.

A simulated multi-node cluster on one machine (``ray.cluster_utils.Cluster``): a head with one
CPU and a worker node that alone offers the custom resource ``trainer_node``. The trainers ask
for it (``warm.trainer.resources``), so they all run there. Once every member has written a
checkpoint, that node is removed, as if its machine died, and a replacement with the same
resources joins. Ray restarts the trainer actors there (``max_restarts``), re-runs ``train``
(``max_task_retries``), and each member continues from its last checkpoint on the shared disk.
"""

import threading
import time
from pathlib import Path

import pytest

from actors import warm as W
from warm_ray.config import Config, Resources

TIMEOUT = 300
NODE = {"num_cpus": 1, "resources": {"trainer_node": 2}}


@pytest.fixture
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # a module before this one may have left its Ray up
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1,
        # see a dead node within about a second
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 2},
    })
    try:
        c.add_node(**NODE)
        c.wait_for_nodes(timeout=60)
        ray.init(address=c.address, log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _config(prepared_cfg: Config, run_dir: Path) -> Config:
    cfg = Config(**{**prepared_cfg.__dict__})
    cfg.run_dir = str(run_dir)
    cfg.warm = type(cfg.warm)(
        m=2, epochs=8, batch_size=16, checkpoint_every=3, log_every=30, lp_epochs=5, lmc_points=3, max_restarts=3,
        trainer=Resources(num_cpus=0.5, resources={"trainer_node": 1}))
    return cfg


def test_warm_survives_losing_the_trainers_node(prepared, cluster, tmp_path):
    import ray

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "prepare").symlink_to(Path(prepared[0].run_dir).resolve() / "prepare")
    cfg = _config(prepared[0], run_dir)
    (worker,) = cluster.worker_nodes
    assert any(n["Resources"].get("trainer_node") for n in ray.nodes() if n["Alive"])

    out: dict = {}

    def drive():
        try:
            out["results"] = W.run_warm(cfg)
        except BaseException as e:  # surfaced by the assertion below
            out["error"] = e

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    members = run_dir / "warm" / "members"
    ckpts = [members / f"member_{i}" / "ckpt" / "trainer_state.json" for i in range(cfg.warm.m)]
    deadline = time.time() + TIMEOUT
    while not all(p.exists() for p in ckpts):
        assert "error" not in out, out.get("error")
        assert time.time() < deadline, "the members never checkpointed"
        time.sleep(0.1)

    # the machine of the trainers dies; a replacement with the same resources joins
    cluster.remove_node(worker, allow_graceful=False)
    assert "results" not in out, "training finished before the node was removed: lengthen it"
    cluster.add_node(**NODE)

    driver.join(timeout=TIMEOUT)
    assert not driver.is_alive(), "WARM did not finish after the node loss"
    assert "error" not in out, out.get("error")
    results = out["results"]
    table = results["table"]
    assert {f"member {i}" for i in range(cfg.warm.m)} <= set(table) and "WARM" in table
    for i, m in results["members"].items():
        assert m["resumed_from"] > 0, (i, m)  # continued from its checkpoint...
        assert m["steps_this_life"] < m["steps"], (i, m)  # ...without starting over
    assert results["members"][0]["steps"] == results["members"][1]["steps"]
    assert all((members / f"member_{i}" / "final" / "config.json").exists() for i in range(cfg.warm.m))
    # the only node they could have finished on is the replacement
    alive = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("trainer_node")]
    assert len(alive) == 1 and alive[0]["NodeID"] != worker.node_id
