"""WARP on a real local Ray: merge invariants, iterations chained by LITI, crash and resume."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from actors import warp as WP
from tests.conftest import cpus_free
from warm_ray import merge
from warm_ray import models as M
from warm_ray.config import WarpConfig


def test_identical_runs_merge_to_that_run(prepared):
    _, summary = prepared
    init = M.load_policy(summary["checkpoints"][0]).state_dict()
    run = M.load_policy(summary["policy"]).state_dict()
    for method in ("slerp", "lerp"):
        for m in (2, 3):
            out = WP.merge_policies(init, [run] * m, 0.5, method)
            for k in run:
                assert torch.allclose(out[k], run[k], atol=1e-6), (method, m, k)


class Crash(RuntimeError):
    pass


def test_warp_iterates_resumes_and_liti_lowers_kl(warm_trained, ray_local, tmp_path):
    cfg0, _ = warm_trained
    run = tmp_path / "run"
    run.mkdir()
    for stage in ("prepare", "warm"):
        os.symlink(Path(cfg0.run_dir) / stage, run / stage)
    # the runs share one ScorerActor (ended by run_warp, also when a run crashes)
    rl = dataclasses.replace(WarpConfig().rl, beta=0.1, ema_mu=0.1, reward="warm", lr=2e-3, prompts_per_step=4,
                             samples_per_prompt=2, max_new_tokens=8, n_eval_prompts=16, checkpoint_every=3,
                             scorer_placement="actor")
    cfg = dataclasses.replace(cfg0, run_dir=str(run), warp=WarpConfig(
        iterations=2, m=2, steps=4, max_parallel=1, eta=0.3, eta_grid=[0.0, 0.3, 1.0], baseline_betas=[0.1], rl=rl))

    def crash_after_first_run(it, m):
        if (it, m) == (1, 0):
            raise Crash("simulated crash after iteration 1, run 0")

    with pytest.raises(Crash):
        WP.run_warp(cfg, on_run_done=crash_after_first_run)
    warp_dir = run / "warp"
    first = warp_dir / "iter_1" / "run_0" / "summary.json"
    assert first.exists() and not (warp_dir / "iter_1" / "run_1" / "summary.json").exists()
    mtime = first.stat().st_mtime_ns

    results = WP.run_warp(cfg, resume=True)
    assert first.stat().st_mtime_ns == mtime  # the finished run was not repeated
    it1, it2 = results["iterations"]
    # iteration 2 starts from iteration 1's η point, which is LITI of the SLERP of its runs
    assert it2["init"] == it1["next_init"]
    init = M.load_policy(it1["init"]).state_dict()
    runs = [M.load_policy(p).state_dict() for p in it1["runs"]]
    expected = merge.liti(init, merge.slerp(init, runs[0], runs[1], 0.5), 0.3)
    got = M.load_policy(it1["next_init"]).state_dict()
    # every merged policy is a Hugging Face dir with its tokenizer and a model card
    card = (Path(it1["next_init"]) / "README.md").read_text()
    assert "LITI η=0.3 of the SLERP merge" in card and "AutoModelForCausalLM" in card
    assert (Path(it1["next_init"]) / "tokenizer.json").exists()
    for k in expected:
        assert torch.allclose(got[k], expected[k], atol=1e-6), k
    # the point of LITI: the η=0.3 policy is closer to SFT than the runs it merged
    for rec in (it1, it2):
        eta_point = next(p for p in rec["fronts"]["slerp"] if p["eta"] == 0.3)
        mean_run_kl = sum(p["kl_sft"] for p in rec["run_points"]) / len(rec["run_points"])
        assert eta_point["kl_sft"] < mean_run_kl, (rec["iteration"], eta_point, rec["run_points"])
    assert (warp_dir / "fronts.png").stat().st_size > 1000
    assert "SLERP η=0.3" in (warp_dir / "results.md").read_text()
    assert results["baselines"][0]["beta"] == 0.1
    # what the stage wrote reads back through the named reader the sweep uses
    from tune.sweep import STAGES

    metrics = STAGES["warp"].metrics(json.loads((warp_dir / "results.json").read_text()))
    eta_point = next(p for p in it2["fronts"]["slerp"] if p["eta"] == 0.3)
    assert (metrics["gold_eta"], metrics["kl_eta"]) == (eta_point["gold"], eta_point["kl_sft"])


# ------------------------------------------------------------------------------------------
# The runs share a few slots of actors (actors.rl.RLActors)
# ------------------------------------------------------------------------------------------


def gold_warp(prepared_cfg, run: Path, **warp):
    """A tiny WARP against the gold reward (no reward model) in a run dir of its own on the shared prepare."""
    run.mkdir()
    os.symlink(Path(prepared_cfg.run_dir) / "prepare", run / "prepare")
    rl = dataclasses.replace(WarpConfig().rl, beta=0.1, ema_mu=0.2, reward="gold", lr=2e-3, prompts_per_step=4,
                             samples_per_prompt=2, max_new_tokens=8, n_eval_prompts=8, checkpoint_every=2)
    return dataclasses.replace(prepared_cfg, run_dir=str(run), warp=WarpConfig(
        **{"iterations": 2, "m": 2, "steps": 2, "max_parallel": 0, "eta": 0.3, "eta_grid": [0.0, 1.0],
           "baseline_betas": [0.1], "rl": rl, **warp}))


def test_warp_starts_each_slots_actors_once(prepared, ray_local, tmp_path):
    cfg = gold_warp(prepared[0], tmp_path / "run")
    results = WP.run_warp(cfg)
    # 2 iterations x 2 parallel runs + 1 baseline, on 2 slots: each slot's learner and workers started once
    assert results["actors"] == {"slots": 2, "learners_started": 2, "rollout_groups_started": 2}
    warp_dir = tmp_path / "run" / "warp"
    runs = [warp_dir / f"iter_{it}" / f"run_{m}" for it in (1, 2) for m in (0, 1)] + [warp_dir / "baseline_beta_0.1"]
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == (4 if run.name.startswith("baseline") else 2) and summary["resumed_from"] == 0
    assert results["iterations"][1]["init"] == results["iterations"][0]["next_init"]
    assert cpus_free()  # every slot ended


def test_warp_ends_its_actors_when_a_run_fails(prepared, ray_local, tmp_path):
    cfg = gold_warp(prepared[0], tmp_path / "run")

    def crash_in_iteration_2(it, m):
        if (it, m) == (2, 0):
            raise Crash("simulated crash after iteration 2, run 0")

    with pytest.raises(Crash):  # after the slots ran iteration 1 and were reset for iteration 2
        WP.run_warp(cfg, on_run_done=crash_in_iteration_2)
    assert cpus_free()
    # the rerun reuses every finished run from disk: only the baseline's slot starts actors
    results = WP.run_warp(cfg, resume=True)
    assert results["actors"] == {"slots": 2, "learners_started": 1, "rollout_groups_started": 1}
    assert cpus_free()


# ------------------------------------------------------------------------------------------
# M = 3, the study's WARP record: SLERP vs LERP at matched η, task-vector geometry
# ------------------------------------------------------------------------------------------


def test_task_vector_geometry_counts_the_tied_embedding_once(prepared):
    """The study's geometry of saved policies: the tiny GPT-2 ties lm_head to wte, two names of one tensor."""
    from actors.study_rl import _task_vector_geometry

    _, summary = prepared
    init_dir, run_dirs = summary["checkpoints"][0], [summary["policy"], summary["checkpoints"][-1]]
    geo = _task_vector_geometry(init_dir, run_dirs)
    base = M.load_policy(init_dir)
    init = base.state_dict()
    assert init["lm_head.weight"].data_ptr() == init["transformer.wte.weight"].data_ptr()
    unique = [torch.cat([(q.detach() - p.detach()).reshape(-1).double() for p, q in
                         zip(base.parameters(), M.load_policy(d).parameters())]) for d in run_dirs]
    naive = [torch.cat([(sd[k].double() - init[k].double()).reshape(-1) for k in init if init[k].is_floating_point()])
             for sd in (M.load_policy(d).state_dict() for d in run_dirs)]
    assert geo["norms"] == pytest.approx([float(d.norm()) for d in unique], rel=1e-5)
    for g, n in zip(geo["norms"], naive):
        assert g < float(n.norm()) * (1 - 1e-3)  # the naive sum counts the embedding twice
    assert geo["parameters"] == sum(p.numel() for p in base.parameters())
    cos = float(unique[0] @ unique[1] / (unique[0].norm() * unique[1].norm()))
    assert geo["cosine"] == pytest.approx(cos, abs=1e-5) and geo["pairs"][0]["runs"] == [0, 1]
    spread = geo["per_tensor_angle_deg"]
    assert spread["tensors"] + spread["no_angle"] == len(list(base.parameters()))
    assert spread["min"] <= spread["mean"] <= spread["max"] and spread["sd"] >= 0


def test_warp_with_three_runs_and_the_study_record(prepared, ray_local, tmp_path):
    """M = 3 end to end: recursive SLERP of three task vectors, LERP of three, fronts with the merged
    end point (η = 1 although the grid lacks it), every pair's angles; then the study's WARP record."""
    from actors.study import claim_specs
    from actors.study_rl import _task_vector_geometry, run_warp_fronts

    cfg = gold_warp(prepared[0], tmp_path / "run", m=3, iterations=1, steps=2, max_parallel=1,
                    eta_grid=[0.5], baseline_betas=[])
    results = WP.run_warp(cfg)
    (rec,) = results["iterations"]
    assert len(rec["runs"]) == 3
    for method in ("slerp", "lerp"):
        assert [p["eta"] for p in rec["fronts"][method]] == [0.3, 0.5, 1.0]
    init = M.load_policy(rec["init"]).state_dict()
    runs = [M.load_policy(p).state_dict() for p in rec["runs"]]
    expected = {"slerp_eta_1": merge.slerp_many(init, runs), "lerp_eta_1": merge.average(runs),
                "init": merge.liti(init, merge.slerp_many(init, runs), 0.3)}
    for name, sd in expected.items():
        got = M.load_policy(Path(cfg.run_dir) / "warp" / "iter_1" / name).state_dict()
        for k in sd:
            assert torch.allclose(got[k], sd[k], atol=1e-6), (name, k)
    geo = rec["geometry"]
    assert [p["runs"] for p in geo["pairs"]] == [[0, 1], [0, 2], [1, 2]] and len(geo["norms"]) == 3
    assert geo["angle_deg"] == geo["pairs"][0]["angle_deg"]
    for p in geo["pairs"]:
        t = p["per_tensor_angle_deg"]
        assert t["tensors"] > 0 and t["min"] <= t["weighted_mean"] <= t["max"]
    # the study computes the same geometry from the saved policies
    again = _task_vector_geometry(rec["init"], rec["runs"])
    assert again["norms"] == pytest.approx(geo["norms"], rel=1e-6)
    assert [p["angle_deg"] for p in again["pairs"]] == pytest.approx([p["angle_deg"] for p in geo["pairs"]], abs=1e-4)
    text = (Path(cfg.run_dir) / "warp" / "results.md").read_text()
    assert "- iter 1: runs 0-1 " in text and "runs 1-2 " in text and "per tensor" in text
    assert json.loads((Path(cfg.run_dir) / "warp" / "results.json").read_text())["iterations"][0]["geometry"] == geo

    study = run_warp_fronts(cfg, tmp_path)  # every unit reused
    assert set(study["at_eta"]["slerp"]) == set(study["at_eta"]["lerp"]) == {"0.3", "0.5", "1"}
    end = {m: next(p for p in rec["fronts"][m] if p["eta"] == 1.0) for m in ("slerp", "lerp")}
    assert study["at_eta"]["lerp"]["1"] == {"gold": end["lerp"]["gold"], "kl": end["lerp"]["kl_sft"],
                                            "proxy": end["lerp"]["proxy"]}
    assert len(study["geometry"]) == 1 and len(study["geometry"][0]["pairs"]) == 3
    specs = claim_specs(dataclasses.replace(cfg.study, kl_targets=[1.0]))
    seed = {"warp": study}
    for name, key, eta in (("WARP gold at the merged end point (η=1): SLERP > LERP", "gold", "1"),
                           ("WARP KL at the merged end point (η=1): SLERP > LERP", "kl", "1"),
                           ("WARP gold @η=0.5: SLERP > LERP", "gold", "0.5")):
        direction, fn = specs[name]
        assert direction == "greater"
        assert fn(seed) == pytest.approx(study["at_eta"]["slerp"][eta][key] - study["at_eta"]["lerp"][eta][key])
    assert cpus_free()
