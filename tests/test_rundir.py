"""The run-dir contract: a changed config is never answered with old results, an unchanged one
recomputes nothing, and damaged weights heal from an intact copy or name themselves."""

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from warm_ray import models as M
from warm_ray import rundir
from warm_ray.config import UserError, apply_overrides
from warm_ray.testing import mtimes, truncate

from .conftest import tiny_config, tiny_member, tiny_warm

TIMEOUT = 300


# ------------------------------------------------------------------------------------------
# The contract itself (no Ray, no models)
# ------------------------------------------------------------------------------------------


def test_units_are_reused_only_under_their_fingerprint(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="warm_ray.rundir")
    unit = tmp_path / "unit"
    assert rundir.open_unit(unit, "a", "u", resume=False) == (None, False)
    (unit / "out.txt").write_text("under a")
    rundir.finish(unit, "a", {"x": 1})
    assert rundir.open_unit(unit, "a", "u", resume=False) == ({"x": 1}, False)
    assert "u: reused" in caplog.text
    # another fingerprint: recomputed, and nothing of the old outputs is left beside the new ones
    assert rundir.open_unit(unit, "b", "u", resume=True) == (None, False)
    assert "u: recomputed (finished under another config" in caplog.text
    assert sorted(p.name for p in unit.iterdir()) == [rundir.STARTED]
    # a stopped unit continues only with resume, and only under the same fingerprint
    (unit / "ckpt").mkdir()
    assert rundir.start(unit, "b", "u", resume=True) is True and (unit / "ckpt").exists()
    assert rundir.start(unit, "c", "u", resume=True) is False and not (unit / "ckpt").exists()
    (unit / "ckpt").mkdir()
    assert rundir.start(unit, "c", "u", resume=False) is False and not (unit / "ckpt").exists()
    assert "without --resume it starts over" in caplog.text
    assert rundir.fingerprint({"a": 1, "b": [1, 2]}) == rundir.fingerprint({"b": [1, 2], "a": 1})


def test_a_start_record_cut_off_by_a_kill_is_a_unit_that_never_started(tmp_path, caplog):
    """A kill while ``started.json`` was being written leaves only its temporary file: the unit is
    new (nothing of it ran), not one "started under no known config"."""
    unit = tmp_path / "unit"
    unit.mkdir()
    (unit / f".{rundir.STARTED}.x1y2z3").write_text('{"finger')
    with caplog.at_level(logging.INFO, logger="warm_ray.rundir"):
        assert rundir.start(unit, "fp", "unit", resume=True) is False
    assert "unit: computed (new)" in caplog.text and "recomputed" not in caplog.text
    assert sorted(p.name for p in unit.iterdir()) == [rundir.STARTED]


def test_damaged_weights_are_named(tmp_path):
    path = M.save_state_dict({"w": torch.randn(64, 64)}, tmp_path / "w.safetensors")
    assert rundir.damaged_weights(path) is None
    truncate(path)
    assert "incomplete" in rundir.damaged_weights(path)
    with pytest.raises(UserError, match=r"w\.safetensors: damaged weights file .*; rebuild it$"):
        rundir.check_safetensors(path, "rebuild it")
    assert rundir.damaged_weights(tmp_path / "missing.safetensors") == "missing"


def test_member_with_a_damaged_checkpoint_retrains_from_its_last_readable_one(prepared, tmp_path, caplog):
    from actors.reward_trainer import restore_checkpoint, save_checkpoint

    _, summary = prepared

    def member():
        return tiny_member(summary, 32, max_length=24)

    run = member()
    run.train_step()
    save_checkpoint(run, tmp_path)  # step 1 -> ckpt.prev after the next save
    at_1 = run.weights()
    run.train_step()
    save_checkpoint(run, tmp_path)  # step 2 -> ckpt
    truncate(tmp_path / "ckpt" / "model.safetensors")
    again = member()
    assert restore_checkpoint(again, tmp_path, logging.getLogger("test")) == 1
    assert all(torch.equal(again.weights()[k], at_1[k]) for k in at_1)
    assert "ckpt is damaged" in caplog.text and "model.safetensors" in caplog.text
    truncate(tmp_path / "ckpt.prev" / "optimizer.safetensors")
    assert restore_checkpoint(member(), tmp_path, logging.getLogger("test")) == 0  # from the start


# ------------------------------------------------------------------------------------------
# prepare
# ------------------------------------------------------------------------------------------

SMALL_PREPARE = ["prepare.lm_steps=40", "prepare.checkpoint_steps=[40]", "prepare.n_train=40",
                 "prepare.n_selection=16", "prepare.n_test=16", "prepare.n_ood=16", "prepare.max_new_tokens=8"]


def test_prepare_rebuilds_under_a_changed_field_only(tmp_path, caplog):
    from warm_ray.data import load_splits
    from warm_ray.prepare import prepare

    caplog.set_level(logging.INFO)
    cfg = tiny_config(tmp_path / "a", SMALL_PREPARE)
    first = prepare(cfg)
    out = Path(cfg.run_dir) / "prepare"
    lm = out / "lm" / "step_40" / "model.safetensors"
    before = mtimes([lm, out / rundir.MARKER])
    # a field prepare does not depend on: nothing recomputed
    again = prepare(apply_overrides(cfg, ["prepare.sample_batch_size=7", "warm.m=3"]))
    assert again == first and mtimes(before_paths := [lm, out / rundir.MARKER]) == before
    # a field it depends on: rebuilt, and equal to a fresh run under the new config
    changed = apply_overrides(cfg, ["prepare.label_noise=0.5"])
    rebuilt = prepare(changed)
    fresh = prepare(apply_overrides(changed, [f"run_dir={tmp_path / 'b'}"]))
    assert rebuilt["corruption_rate"] == fresh["corruption_rate"] != first["corruption_rate"]
    assert load_splits(rebuilt["data"]) == load_splits(fresh["data"])
    assert "label_noise: 0.5" in (out / "config.yaml").read_text()
    # a damaged base-LM checkpoint: rebuilt (same seeds, same data), and the log says so
    truncate(lm)
    healed = prepare(changed)
    assert rundir.damaged_weights(lm) is None and "damaged base-LM checkpoint" in caplog.text
    assert load_splits(healed["data"]) == load_splits(fresh["data"])
    # a prepare stopped after its LM: the rerun keeps the LM it finished
    lm_time = mtimes(before_paths[:1])
    shutil.rmtree(out / "data")
    (out / rundir.MARKER).unlink()
    resumed = prepare(changed)
    assert mtimes(before_paths[:1]) == lm_time and load_splits(resumed["data"]) == load_splits(fresh["data"])


# ------------------------------------------------------------------------------------------
# warm
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def warm_copy(warm_trained, ray_local, tmp_path_factory):
    """A run dir of its own holding a copy of the shared tiny WARM run (prepare linked, warm copied)."""
    cfg0, results = warm_trained
    run = tmp_path_factory.mktemp("warm_copy")
    (run / "prepare").symlink_to(Path(cfg0.run_dir) / "prepare")
    shutil.copytree(Path(cfg0.run_dir) / "warm", run / "warm")
    return dataclasses.replace(cfg0, run_dir=str(run)), results


def _member_sd(run_dir, i):
    # cloned: loaded weights are memory-mapped, and these tests damage the files in place
    sd = M.load_reward_model(Path(run_dir) / "warm" / "members" / f"member_{i}" / "final").state_dict()
    return {k: v.clone() for k, v in sd.items()}


def test_warm_recomputes_exactly_the_members_whose_spec_changed(warm_copy, tmp_path):
    from actors.warm import run_warm

    cfg, first = warm_copy
    warm_dir = Path(cfg.run_dir) / "warm"
    markers = [warm_dir / "members" / f"member_{i}" / rundir.MARKER for i in (0, 1)] + [warm_dir / rundir.MARKER]
    before = mtimes(markers)
    # fields the stage does not depend on: nothing recomputed, same results
    same = run_warm(apply_overrides(cfg, ["warm.log_every=5", "warm.trainer.num_threads=1", "rl.lr=0.5"]))
    assert mtimes(markers) == before and same["table"] == first["table"]
    # member 1's dropout changes (dropouts are drawn round-robin): member 1 retrains, member 0 does not
    changed = apply_overrides(cfg, ["warm.dropouts=[0.05, 0.2]"])
    out = run_warm(changed)
    after = mtimes(markers)
    assert after[str(markers[0])] == before[str(markers[0])] and after[str(markers[1])] != before[str(markers[1])]
    assert out["members"][1]["dropout"] == 0.2 and out["table"] != first["table"]
    fresh_cfg = dataclasses.replace(changed, run_dir=str(tmp_path))
    (tmp_path / "prepare").symlink_to(Path(cfg.run_dir) / "prepare")
    fresh = run_warm(fresh_cfg)
    for i in (0, 1):
        a, b = _member_sd(cfg.run_dir, i), _member_sd(tmp_path, i)
        assert all(torch.equal(a[k], b[k]) for k in a), i
    assert out["table"] == fresh["table"]
    # fewer members: the average, the soups and every table use exactly the current ones
    one = run_warm(apply_overrides(changed, ["warm.m=1"]))
    assert set(one["table"]) == {"member 0", "ENS", "WARM", "greedy soup", "best member (selection)", "mean member"}
    warm_rm = M.load_reward_model(warm_dir / "warm_rm").state_dict()
    m0 = _member_sd(cfg.run_dir, 0)
    assert all(torch.equal(warm_rm[k], m0[k]) for k in m0)
    assert not (warm_dir / "members" / "member_1").exists()
    manifest = json.loads((warm_dir / "ps" / "manifest.json").read_text())
    assert sorted(manifest["members"]) == ["0"] and manifest["selection"] == ["0"]


def test_warm_heals_damaged_weights_from_intact_copies(warm_copy, caplog):
    from actors.rl import proxy_scorer
    from actors.warm import run_warm

    caplog.set_level(logging.INFO)
    cfg, first = warm_copy
    cfg = tiny_warm(cfg)  # m=2 (an earlier test of this module may have left m=1 behind)
    before = run_warm(cfg)
    warm_dir = Path(cfg.run_dir) / "warm"
    final0 = warm_dir / "members" / "member_0" / "final" / "model.safetensors"
    members_before = [_member_sd(cfg.run_dir, i) for i in (0, 1)]
    truncate(warm_dir / "warm_rm" / "model.safetensors")
    # the RL stage names the damaged file in one line instead of failing inside safetensors
    with pytest.raises(UserError, match=r"warm_rm/model\.safetensors: damaged weights file .*rerun `warm-ray warm`"):
        proxy_scorer(cfg, "warm", normalise=False)
    for damaged in (final0, warm_dir / "ps" / "member_1.safetensors", warm_dir / "ps" / "average.safetensors"):
        truncate(damaged)
    healed = run_warm(cfg)
    assert "member 0:" in caplog.text and "is damaged" in caplog.text
    assert "member 1: parameter server copy missing or stale: restored from" in caplog.text
    # member 0's final weights rebuilt from its checkpoint without a training step, equal to before
    assert healed["members"][0]["steps_this_life"] == 0
    for i in (0, 1):
        after = _member_sd(cfg.run_dir, i)
        assert all(torch.equal(after[k], members_before[i][k]) for k in after), i
    warm_rm = M.load_reward_model(warm_dir / "warm_rm").state_dict()
    for k, v in warm_rm.items():
        assert torch.allclose(v, (members_before[0][k] + members_before[1][k]) / 2, atol=1e-6), k
    assert healed["table"]["WARM"] == pytest.approx(before["table"]["WARM"], abs=1e-6)


# ------------------------------------------------------------------------------------------
# rl
# ------------------------------------------------------------------------------------------


def count_the(prompts, completions):
    """Toy reward: completion length in characters (varies within every group, so every lr moves the policy)."""
    return [float(len(c)) for c in completions]


def test_rl_run_is_reused_only_under_its_fingerprint(prepared, ray_local, tmp_path):
    from actors import rl as rl_api
    from actors.rl import RLRun
    from warm_ray.config import RLConfig
    from warm_ray.results import RLResults

    rl = RLConfig(steps=2, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6, checkpoint_every=1)
    cfg = dataclasses.replace(prepared[0], rl=rl)
    out = tmp_path / "run"
    first = rl_api.run_rl(RLRun.of(cfg, out, reward="count_the", fn=count_the))
    # what the run wrote reads back through the named reader the sweep uses
    read = RLResults.from_json(json.loads((out / "summary.json").read_text()))
    assert read.final.gold_reward == first["final"]["gold_reward"] and read.seconds_this_run > 0
    stamp = mtimes([out / "summary.json", out / rundir.MARKER])
    # not a field the run depends on: reused (with or without --resume)
    again = rl_api.run_rl(RLRun.of(apply_overrides(cfg, ["rl.checkpoint_every=5", "rl.n_eval_prompts=3"]), out,
                                   reward="count_the", fn=count_the))
    assert again == first and mtimes([out / "summary.json", out / rundir.MARKER]) == stamp
    # the learning rate: recomputed, equal to a fresh run under the new lr
    changed = apply_overrides(cfg, ["rl.lr=0.05"])
    rerun = rl_api.run_rl(RLRun.of(changed, out, reward="count_the", fn=count_the), resume=True)
    fresh = rl_api.run_rl(RLRun.of(changed, tmp_path / "fresh", reward="count_the", fn=count_the))
    assert rerun["resumed_from"] == 0 and rerun["final"] != first["final"]
    assert rerun["final"] == pytest.approx(fresh["final"], abs=1e-6)
    assert "lr: 0.05" in (out / "config.yaml").read_text()


# ------------------------------------------------------------------------------------------
# warp
# ------------------------------------------------------------------------------------------


def test_warp_reuses_runs_iterations_and_points_by_fingerprint(warm_trained, ray_local, tmp_path):
    from actors import warp as WP
    from warm_ray import merge
    from warm_ray.config import WarpConfig

    cfg0, _ = warm_trained
    run = tmp_path / "run"
    run.mkdir()
    for stage in ("prepare", "warm"):
        (run / stage).symlink_to(Path(cfg0.run_dir) / stage)
    rl = dataclasses.replace(WarpConfig().rl, beta=0.1, ema_mu=0.1, reward="warm", lr=2e-3, prompts_per_step=2,
                             samples_per_prompt=2, max_new_tokens=6, n_eval_prompts=4, monitor_every=0, reference_samples=4)
    cfg = dataclasses.replace(cfg0, run_dir=str(run), warp=WarpConfig(
        iterations=1, m=2, steps=2, eta=0.3, eta_grid=[0.0], baseline_betas=[], rl=rl))
    first = WP.run_warp(cfg)
    it = run / "warp" / "iter_1"
    runs = [it / f"run_{m}" / rundir.MARKER for m in (0, 1)]
    stamp = mtimes([*runs, it / "init" / rundir.MARKER, it / "slerp_eta_0" / rundir.MARKER])
    # not a field WARP depends on: nothing recomputed
    WP.run_warp(apply_overrides(cfg, ["warp.max_parallel=1"]))
    assert mtimes(stamp_paths := [*runs, it / "init" / rundir.MARKER, it / "slerp_eta_0" / rundir.MARKER]) == stamp
    # --resume with another η: the runs are reused, θ_init of the next iteration is rebuilt with η=0.9
    out = WP.run_warp(apply_overrides(cfg, ["warp.eta=0.9"]), resume=True)
    after = mtimes(stamp_paths)
    assert [after[str(p)] for p in runs] == [stamp[str(p)] for p in runs]
    assert after[str(it / "init" / rundir.MARKER)] != stamp[str(it / "init" / rundir.MARKER)]
    assert not (it / "slerp_eta_0.3").exists() and (it / "slerp_eta_0.9").exists()
    init = M.load_policy(out["iterations"][0]["init"]).state_dict()
    ps = [M.load_policy(p).state_dict() for p in out["iterations"][0]["runs"]]
    expected = merge.liti(init, merge.slerp(init, ps[0], ps[1], 0.5), 0.9)
    got = M.load_policy(it / "init").state_dict()
    assert all(torch.allclose(got[k], expected[k], atol=1e-6) for k in expected)
    # another RL learning rate: every run is recomputed
    WP.run_warp(apply_overrides(cfg, ["warp.rl.lr=0.01"]))
    assert all(mtimes([p])[str(p)] != stamp[str(p)] for p in runs)
    assert first["iterations"][0]["runs"] == out["iterations"][0]["runs"]  # same dirs, new contents
