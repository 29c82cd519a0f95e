"""A member too large for one device: data-parallel over Ray Train workers, by config alone."""

import json
import os
from pathlib import Path

from actors import warm as W
from warm_ray.config import Config, Resources, WarmConfig


def test_member_trains_data_parallel_with_ray_train(prepared, ray_local, tmp_path):
    cfg0, _ = prepared
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(Path(cfg0.run_dir) / "prepare", run / "prepare")
    cfg = Config(run_dir=str(run), prepare=cfg0.prepare)
    cfg.warm = WarmConfig(m=1, epochs=1, batch_size=16, checkpoint_every=2, log_every=2, lp_epochs=2,
                          workers_per_member=2, trainer=Resources(num_cpus=0.5))
    results = W.run_warm(cfg)
    summary = json.loads((run / "warm" / "members" / "member_0" / "summary.json").read_text())
    assert summary["world_size"] == 2
    n_train = len([1 for _ in range(cfg0.prepare.n_train)])
    # each of 2 ranks saw half the data: steps = ceil((n/2) / batch)
    assert summary["steps"] == -(-(n_train // 2) // 16)
    assert (run / "warm" / "members" / "member_0" / "ray_train").exists()
    assert set(results["table"]["WARM"]) == set(W.SETS)
