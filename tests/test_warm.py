"""WARM on a real local Ray: concurrent trainers, parameter server, restarts, bad input."""

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch

from actors import warm as W
from warm_ray import models as M
from warm_ray.config import Config
from warm_ray.data import load_splits
from warm_ray.sources import prepared_summary

from .conftest import cpus_free, tiny_member, tiny_warm, warm_run_scorer

TIMEOUT = 300


def _warm_config(prepared_cfg: Config, m=2) -> Config:
    return tiny_warm(prepared_cfg, m=m)


@pytest.fixture(scope="module")
def warm_run(warm_trained, ray_local):
    return warm_trained


def test_warm_end_to_end(warm_run):
    cfg, results = warm_run
    warm_dir = Path(cfg.run_dir) / "warm"
    table = results["table"]
    for row in ("member 0", "member 1", "ENS", "WARM", "greedy soup", "best member (selection)"):
        assert set(table[row]) == set(W.SETS), row
        assert all(0.0 <= v <= 1.0 for v in table[row].values())
    assert (warm_dir / "lmc.png").stat().st_size > 1000
    # WARM's precondition, measured in every run: every pair along the line, barriers, verdict, geometry
    lmc = results["lmc"]
    assert lmc["split"] == "selection" and set(lmc["pairs"]) == {"0-1"}
    assert set(lmc["summary"]) == {"selection", "train_clean", "test_id", "test_ood"}
    assert len(lmc["pairs"]["0-1"]["selection"]["loss"]) == cfg.warm.lmc_points
    assert isinstance(lmc["connected"], bool) and "linearly mode connected" in lmc["verdict"]
    assert "Linear mode connectivity" in (warm_dir / "results.md").read_text()
    geo = results["geometry"]
    assert set(geo["norms"]) == {"0", "1"} and all(v > 0 for v in geo["norms"].values())
    assert -1.0 <= geo["cosines"]["0-1"] <= 1.0
    assert "| WARM |" in (warm_dir / "results.md").read_text()
    assert json.loads((warm_dir / "results.json").read_text())["models_at_inference"]["WARM"] == 1
    # what the driver wrote reads back through the named reader the sweep and the study use
    from warm_ray.results import WarmResults

    read = WarmResults.from_json(json.loads((warm_dir / "results.json").read_text()))
    assert read.members == cfg.warm.m and read.seconds_total == results["seconds"]["total"]
    assert (warm_dir / "config.yaml").exists()
    # the WARM RM is a plain Hugging Face dir
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(str(warm_dir / "warm_rm"))
    assert rm.config.num_labels == 1
    # ...and it is the uniform average of the members
    members = [M.load_reward_model(warm_dir / "members" / f"member_{i}" / "final").state_dict() for i in (0, 1)]
    for k, v in rm.state_dict().items():
        assert torch.allclose(v, (members[0][k] + members[1][k]) / 2, atol=1e-6), k
    # members live and train at the same time, in different processes
    s = results["members"]
    assert s[0]["created"] < s[1]["finished"] and s[1]["created"] < s[0]["finished"]
    assert s[0]["pid"] != s[1]["pid"]
    # members differ by their hyperparameters
    assert s[0]["lr"] != s[1]["lr"] and s[0]["init_dir"] != s[1]["init_dir"]


def test_selection_never_reads_the_test_splits(warm_run):
    """Greedy soup and the best member come from the selection split alone: turning every test
    label upside down changes every test accuracy and no selection."""
    from actors.warm import evaluate, start_parameter_server
    from warm_ray.data import uncorrupt
    from warm_ray.sources import Preferences

    cfg, results = warm_run
    warm_dir = Path(cfg.run_dir) / "warm"
    splits = load_splits(prepared_summary(cfg.run_dir)["data"])
    flipped = {**splits, **{k: [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in splits[k]]
                            for k in ("test_id", "test_ood")}}
    assert uncorrupt(splits["test_id"]) == splits["test_id"]
    ps = start_parameter_server(warm_dir)
    try:
        ids = [str(i) for i in range(cfg.warm.m)]
        inits = W.featurizer_dirs(cfg)
        specs = W.member_specs(cfg.warm, inits)
        a = evaluate(cfg.warm, warm_dir, ps, Preferences("unused", "a", splits, "benchmark"), ids, specs, inits[-1])
        b = evaluate(cfg.warm, warm_dir, ps, Preferences("unused", "b", flipped, "benchmark"), ids, specs, inits[-1])
    finally:
        import ray

        ray.kill(ps)
    assert (a["best_member"], a["greedy_members"]) == (b["best_member"], b["greedy_members"])
    assert a["best_member"] == results["best_member"]
    # nor the LMC verdict, which reads the selection split
    assert a["lmc"]["summary"]["selection"] == b["lmc"]["summary"]["selection"]
    assert a["lmc"]["connected"] == b["lmc"]["connected"]
    for model in a["table"]:
        assert a["table"][model]["selection"] == b["table"][model]["selection"]
        for split in ("test_id", "test_ood"):
            assert a["table"][model][split] + b["table"][model][split] == pytest.approx(1.0, abs=1e-6)


def test_scoring_api_warm_single_ens(warm_run):
    cfg, _ = warm_run
    warm_dir = Path(cfg.run_dir) / "warm"
    prompts, comps = ["The nation", "The nation"], [" is strong and free.", " is at war."]
    scores = {k: warm_run_scorer(warm_dir, kind=k).score(prompts, comps) for k in ("warm", "single", "ens")}
    assert all(len(v) == 2 for v in scores.values())
    ens = warm_run_scorer(warm_dir, kind="ens")
    assert len(ens.models) == 2
    singles = [warm_run_scorer(warm_dir, kind="single", member=i).score(prompts, comps) for i in (0, 1)]
    assert scores["ens"] == pytest.approx([(a + b) / 2 for a, b in zip(*singles)], abs=1e-5)
    with pytest.raises(ValueError, match="unknown reward mode 'best'"):
        warm_run_scorer(warm_dir, kind="best")


def test_killed_trainer_resumes_from_its_checkpoint(prepared, ray_local, tmp_path):
    import ray

    cfg = _warm_config(prepared[0], m=2)
    # enough steps that member 0 is still training when it is killed: at the tiny settings two
    # epochs take ~0.3 s, and the member could finish between its first checkpoint and the kill
    cfg = dataclasses.replace(cfg, warm=dataclasses.replace(cfg.warm, epochs=20))
    warm_dir = tmp_path / "warm"
    inits = W.featurizer_dirs(cfg)
    specs = W.member_specs(cfg.warm, inits)
    settings = W.train_settings(cfg.warm, prepared[1]["data"], None, warm_dir)
    trainers = W.start_trainers(cfg.warm, specs, settings, warm_dir)
    refs = {i: t.train.remote() for i, t in trainers.items()}
    ckpt = warm_dir / "members" / "member_0" / "ckpt" / "trainer_state.json"
    deadline = time.time() + TIMEOUT
    while not ckpt.exists():
        assert time.time() < deadline, "member 0 never checkpointed"
        time.sleep(0.2)
    ray.kill(trainers[0], no_restart=False)  # Ray restarts it and retries train()
    results = {i: ray.get(r, timeout=TIMEOUT) for i, r in refs.items()}
    assert results[0]["resumed_from"] > 0
    assert results[0]["steps"] == results[1]["steps"]  # it finished all of its steps
    assert results[0]["steps_this_life"] < results[0]["steps"]  # without starting over
    assert all((warm_dir / "members" / f"member_{i}" / "final" / "config.json").exists() for i in (0, 1))
    for t in trainers.values():
        ray.kill(t)


def test_more_members_than_trainer_slots_all_train(prepared, ray_local, tmp_path):
    """M=3 trainers of 1 CPU each on a 2-CPU Ray: the third starts when a finished trainer frees its
    CPU (a finished trainer used to hold its CPU until every member was done: a hang)."""
    import threading

    from warm_ray.config import apply_overrides

    assert cpus_free(2.0)
    (tmp_path / "prepare").symlink_to(Path(prepared[0].run_dir) / "prepare")  # not the shared warm dir
    cfg = apply_overrides(_warm_config(prepared[0], m=3),
                          [f"run_dir={tmp_path}", "warm.trainer.num_cpus=1", "warm.lmc_points=0"])
    done: dict = {}
    t = threading.Thread(target=lambda: done.update(W.run_warm(cfg)), daemon=True)
    t.start()
    t.join(TIMEOUT)
    assert not t.is_alive(), "run_warm did not finish: a member never got a trainer slot"
    assert len(done["members"]) == 3
    assert all((tmp_path / "warm" / "members" / f"member_{i}" / "final" / "model.safetensors").exists()
               for i in range(3))
    assert cpus_free(2.0)  # every trainer was let go


def _tiny_sd(seed, width=4):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(width, 3, generator=g), "b": torch.randn(3, generator=g), "n": torch.tensor(7)}


def test_parameter_server_survives_a_restart(ray_local, tmp_path):
    import ray

    ps = W.start_parameter_server(tmp_path)
    ray.get(ps.push.remote("0", ray.put(_tiny_sd(0))), timeout=60)
    ray.get(ps.push.remote("1", ray.put(_tiny_sd(1))), timeout=60)
    before = ray.get(ps.get_weights.remote(), timeout=60)
    version = ray.get(ps.info.remote(), timeout=60)["version"]
    assert torch.allclose(before["w"], (_tiny_sd(0)["w"] + _tiny_sd(1)["w"]) / 2)
    ray.kill(ps, no_restart=False)
    after = ray.get(ps.get_weights.remote(), timeout=120)  # served by the restarted actor
    info = ray.get(ps.info.remote(), timeout=60)
    assert info["version"] == version and info["n_members"] == 2
    for k in before:
        assert torch.equal(before[k], after[k])
    # weighted subsets
    ray.get(ps._select.remote(["0", "1"], [3.0, 1.0]), timeout=60)
    w = ray.get(ps.get_weights.remote(), timeout=60)["w"]
    assert torch.allclose(w, 0.75 * _tiny_sd(0)["w"] + 0.25 * _tiny_sd(1)["w"])
    ray.kill(ps)


def test_parameter_server_rejects_bad_members(ray_local, tmp_path):
    import ray

    ps = W.start_parameter_server(tmp_path)
    ray.get(ps.push.remote("0", _tiny_sd(0)), timeout=60)
    with pytest.raises(ValueError, match=r"member 1 does not match member 0.*'w'"):
        ray.get(ps.push.remote("1", _tiny_sd(1, width=5)), timeout=60)
    nan = _tiny_sd(2)
    nan["b"][1] = float("nan")
    status = ray.get(ps.push.remote("2", nan), timeout=60)
    assert not status["accepted"] and "'b'" in status["reason"]
    info = ray.get(ps.info.remote(), timeout=60)
    assert info["n_members"] == 1 and "2" in info["excluded"]
    assert torch.equal(ray.get(ps.get_weights.remote(), timeout=60)["w"], _tiny_sd(0)["w"])
    ray.kill(ps)


@pytest.mark.parametrize("case", ["empty", "all_corrupted"])
def test_unusable_train_split_is_a_clear_error(prepared, tmp_path, case):
    from warm_ray.data import save_splits

    cfg, summary = prepared
    splits = load_splits(summary["data"])
    splits["train"] = [] if case == "empty" else [{**r, "corrupted": True} for r in splits["train"]]
    run = tmp_path / "run"
    (run / "prepare").mkdir(parents=True)
    if case == "empty":
        splits["train"] = splits["selection"][:0]
    save_splits(splits, run / "prepare" / "data")
    (run / "prepare" / "prepare.json").write_text(json.dumps({**summary, "data": str(run / "prepare" / "data")}))
    bad = _warm_config(cfg)
    bad.run_dir = str(run)
    match = "empty" if case == "empty" else "every training label is flagged corrupted"
    with pytest.raises(ValueError, match=match):
        W.run_warm(bad)


def test_bf16_autocast_training_step_keeps_fp32_master_weights(prepared):
    _, summary = prepared
    run = tiny_member(summary, 8, dropout=0.1, dtype=torch.bfloat16)
    before = run.weights()
    m = run.train_step()
    assert m["loss"] == m["loss"]  # finite, not NaN
    after = run.weights()
    assert all(v.dtype == torch.float32 for v in after.values() if v.is_floating_point())
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    unchanged = [k for k in before if before[k].is_floating_point() and k not in changed]
    # the final LayerNorm bias adds the same w·b to chosen and rejected: Bradley-Terry cancels it
    assert unchanged == ["transformer.ln_f.bias"], unchanged


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_member_lr_schedule_is_a_function_of_the_step_and_survives_a_restore(prepared, tmp_path, schedule):
    _, summary = prepared

    def member():
        return tiny_member(summary, 16, epochs=2, batch_size=4, lr_schedule=schedule)

    run = member()
    assert run.total_steps == 8
    lrs = [run.train_step()["lr"] for _ in range(3)]
    run.save(tmp_path / "ckpt")
    lrs += [run.train_step()["lr"] for _ in range(5)]
    expected = [1e-3 * (1 - k / 8) if schedule == "linear" else 1e-3 for k in range(8)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    resumed = member()
    assert resumed.restore(tmp_path / "ckpt") and resumed.step == 3
    assert [resumed.train_step()["lr"] for _ in range(5)] == pytest.approx(expected[3:], rel=1e-12)


def test_member_rejects_an_unknown_lr_schedule(prepared):
    _, summary = prepared
    with pytest.raises(ValueError, match="unknown lr schedule 'cosine'; use one of linear, constant"):
        tiny_member(summary, 4, lr_schedule="cosine")


def test_member_warmup_ramps_up_then_decays(prepared):
    _, summary = prepared
    run = tiny_member(summary, 40, epochs=1, batch_size=4, warmup=0.2)  # 10 steps, 2 of warm-up
    assert [run.lr_at(k) for k in range(10)] == pytest.approx(
        [5e-4, 1e-3] + [1e-3 * (1 - k / 8) for k in range(8)], rel=1e-12)
    with pytest.raises(ValueError, match="warmup 1.0"):
        tiny_member(summary, 4, warmup=1.0)


def test_independent_draws_decouple_lr_from_init(prepared):
    """Round-robin ties member i's lr to its init when the grids have equal lengths (the 2e-3 member
    always started from the earliest checkpoint); independent draws mix them, seeded per member."""
    from warm_ray.config import apply_overrides

    inits = ["a", "b", "c"]
    cfg = apply_overrides(prepared[0], ["warm.m=12", "warm.lrs=[1e-4, 2e-4, 4e-4]"]).warm
    rr = W.member_specs(cfg, inits)
    assert len({(s.lr, s.init_dir) for s in rr}) == 3  # lr determines init
    ind = W.member_specs(dataclasses.replace(cfg, draw="independent"), inits)
    assert len({(s.lr, s.init_dir) for s in ind}) > 3
    assert ind == W.member_specs(dataclasses.replace(cfg, draw="independent"), inits)  # reproducible
    assert [s.seed for s in ind] == [s.seed for s in rr]
