"""Placement comes from the config only: actor options, devices, bundles, a sweep trial's placement group."""

import pytest

from actors import placement as P
from tune import sweep as S
from warm_ray.config import Resources, load_config


def test_gpu_config_gives_gpu_actor_options_and_cuda():
    res = Resources(num_cpus=1, num_gpus=0.5)
    assert P.actor_options(res) == {"num_cpus": 1, "num_gpus": 0.5}
    assert P.actor_options(res, max_restarts=3) == {"num_cpus": 1, "num_gpus": 0.5, "max_restarts": 3}
    assert res.device == "cuda"
    assert P.bundle(res) == {"CPU": 1, "GPU": 0.5}


def test_cpu_config_gives_cpu():
    res = Resources(num_cpus=0.5)
    assert P.actor_options(res) == {"num_cpus": 0.5, "num_gpus": 0.0}
    assert res.device == "cpu"
    assert P.bundle(res) == {"CPU": 0.5}
    # a role that reserves nothing still gets a valid (non-empty) bundle
    assert P.bundle(Resources(num_cpus=0)) == {"CPU": 0.01}


def test_custom_resources_steer_a_role():
    res = Resources(num_cpus=0.5, resources={"trainer_node": 1})
    assert P.actor_options(res) == {"num_cpus": 0.5, "num_gpus": 0.0, "resources": {"trainer_node": 1}}
    assert P.bundle(res) == {"CPU": 0.5, "trainer_node": 1}


def test_every_role_reads_its_resources_from_the_config():
    cfg = load_config(None, ["warm.trainer.num_gpus=0.5", "rl.rollout.num_gpus=0.25", "rl.learner.num_gpus=1",
                             "warp.rl.learner.num_gpus=0.5", "rl.rollout.resources={rollout_node: 1}"])
    assert [r.device for r in (cfg.warm.trainer, cfg.rl.rollout, cfg.rl.learner, cfg.warp.rl.learner)] == ["cuda"] * 4
    assert P.actor_options(cfg.rl.rollout) == {"num_cpus": 0.5, "num_gpus": 0.25, "resources": {"rollout_node": 1}}
    assert P.actor_options(cfg.rl.learner)["num_gpus"] == 1
    assert load_config().warm.trainer.device == "cpu"  # the defaults run on a laptop
    # the RM trainer's device follows its section
    from actors.warm import train_settings

    assert train_settings(cfg.warm, "data", None, __import__("pathlib").Path("w")).device == "cuda"


def test_sweep_trial_placement_group_is_built_from_the_config():
    cfg = load_config(None, ["warm.m=3", "warm.trainer.num_cpus=1", "warm.trainer.num_gpus=0.5",
                             "sweep.driver_cpus=1"])
    pgf = S.trial_resources(cfg)
    assert pgf.bundles == [{"CPU": 1.0}] + [{"CPU": 1.0, "GPU": 0.5}] * 3
    assert pgf.required_resources == {"CPU": 4.0, "GPU": 1.5}
    assert pgf.strategy == "PACK"


def test_sweep_trial_driver_reserves_nothing_by_default():
    # the tiny default: M=4 trainers at 0.5 CPU fill a 2-core machine exactly
    cfg = load_config(None, ["warm.m=4"])
    pgf = S.trial_resources(cfg)
    assert pgf.head_bundle_is_empty
    assert pgf.bundles == [{"CPU": 0.5}] * 4 and pgf.required_resources == {"CPU": 2.0}


@pytest.mark.parametrize("m", [1, 2, 4])
def test_each_trial_of_a_sweep_reserves_its_own_m(m):
    base = load_config()
    pgf = S._resources_of_params({"m": m}, base=S.to_dict(base), stage="warm")
    assert pgf.bundles == [{"CPU": 0.5}] * m


def test_data_parallel_members_leave_their_workers_to_ray_train():
    cfg = load_config(None, ["warm.m=2", "warm.workers_per_member=2"])
    pgf = S.trial_resources(cfg)
    assert pgf.bundles == [{"CPU": 0.01}]


def test_an_rl_trial_reserves_its_scorer_actor_and_warp_runs_share_one():
    cfg = load_config(None, ["sweep.stage=rl", "rl.scorer_placement=actor", "rl.scorer.num_cpus=0.25"])
    assert S.trial_resources(cfg).bundles == [{"CPU": 0.5}, {"CPU": 0.5}, {"CPU": 0.25}]
    for no_actor in (["rl.scorer_placement=driver"], ["rl.scorer_placement=actor", "rl.reward=gold"]):
        assert S.trial_resources(load_config(None, ["sweep.stage=rl", *no_actor])).bundles == [{"CPU": 0.5}] * 2
    warp = load_config(None, ["sweep.stage=warp", "warp.m=3", "warp.rl.scorer_placement=actor",
                              "warp.rl.scorer.num_gpus=0.25"])
    assert S.trial_resources(warp).bundles == [{"CPU": 0.5}] * 6 + [{"CPU": 0.5, "GPU": 0.25}]
