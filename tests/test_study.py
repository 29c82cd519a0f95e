"""`warm-ray study` on tiny budgets: two seeds through every part, claims with CIs, honest reruns."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from actors import study as S
from warm_ray import stats
from warm_ray.config import apply_overrides

STUDY = [
    "warm.m=2", "warm.epochs=1", "warm.batch_size=16", "warm.lp_epochs=3", "warm.lmc_points=2",
    "warm.checkpoint_every=50",
    "study.seeds=[0, 1]", "study.parts=[rm, bon, rl, warp]", "study.primary=['OOD accuracy: WARM > ENS']",
    "study.bon_prompts=6", "study.bon_samples=8", "study.bon_n=[1, 2, 8]",
    "study.rl_arms=[single, warm]", "study.rl_betas=[0.1]", "study.eval_every=1", "study.eval_prompts=4",
    "study.kl_targets=[0.001]",
    "rl.steps=2", "rl.prompts_per_step=2", "rl.samples_per_prompt=2", "rl.max_new_tokens=6",
    "warp.steps=2", "warp.m=2", "warp.eta_grid=[0.0, 1.0]", "warp.baseline_betas=[0.1]",
    "warp.rl.prompts_per_step=2", "warp.rl.samples_per_prompt=2", "warp.rl.max_new_tokens=6",
    "warp.rl.n_eval_prompts=4",
]


@pytest.fixture(scope="module")
def study_run(prepared, ray_local):
    cfg = apply_overrides(prepared[0], STUDY)
    return cfg, S.run_study(cfg)


def test_study_runs_every_part_over_two_seeds(study_run):
    cfg, results = study_run
    study_dir = Path(cfg.run_dir) / "study"
    assert set(results["seeds"]) == {0, 1}
    names = {r["name"] for r in results["claims"]}
    assert "OOD accuracy: WARM > ENS" in names and "BoN gold @N=8: WARM > best single" in names
    assert any(n.startswith("RL peak gold") for n in names) and any(n.startswith("WARP gold") for n in names)
    first = results["claims"][0]
    assert first["primary"] and first["name"] == "OOD accuracy: WARM > ENS"
    for row in results["claims"]:
        assert row["verdict"] in ("holds", "does not hold", "inconclusive")
        assert row["n"] + row["seeds_missing"] == 2
    # the claim is the paired difference of the seeds' own numbers
    warm_ood = [results["seeds"][s]["rm"]["table"]["WARM"]["test_ood"] for s in (0, 1)]
    ens_ood = [results["seeds"][s]["rm"]["table"]["ENS"]["test_ood"] for s in (0, 1)]
    row = next(r for r in results["claims"] if r["name"] == "OOD accuracy: WARM > ENS")
    assert row["mean"] == pytest.approx(np.mean(np.subtract(warm_ood, ens_ood)))
    # seeds really replicate: new label flips and new member seeds
    flips = [json.loads((study_dir / f"seed_{s}" / "prepare" / "prepare.json").read_text())["label_seed"] for s in (0, 1)]
    assert flips == [0, 1]
    members = [results["seeds"][s]["rm"] for s in (0, 1)]
    assert members[0]["table"] != members[1]["table"]
    # Best-of-N: N=1 is the mean gold for every selector (a random pick)
    bon = results["seeds"][0]["bon"]
    assert len({round(v["1"], 9) for v in bon["gold"].values()}) == 1
    assert bon["gold"]["oracle (gold)"]["8"] >= max(v["8"] for v in bon["gold"].values()) - 1e-9
    for f in ("claims.md", "claims.json", "results.md", "bon.png", "rm.png", "rl.png", "warp.png", "config.yaml"):
        assert (study_dir / f).stat().st_size > 0, f
    # a greedy soup of one member is that member (the best: greedy starts there), of both the WARM
    # average: Best-of-N takes their scores instead of scoring the same weights again
    for s in (0, 1):
        soup, gold = results["seeds"][s]["rm"]["greedy_members"], results["seeds"][s]["bon"]["gold"]
        assert gold["soup"] == gold["single" if len(soup) == 1 else "warm"]
        # the study's WARM evaluations draw no LMC curve by default (study.lmc_points = 0)
        assert not (study_dir / f"seed_{s}" / "warm" / "lmc.png").exists()
    rl = results["seeds"][0]["rl"]["runs"]["warm_beta_0.1"]
    assert [p["step"] for p in rl["curve"]] == [0, 1, 2]
    assert rl["curve"][0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the SFT point


def test_study_rerun_reuses_only_what_its_config_still_describes(study_run):
    cfg, results = study_run
    study_dir = Path(cfg.run_dir) / "study"
    units = {p: (study_dir / "seed_0" / p / "study_unit.json").stat().st_mtime_ns for p in ("warm", "bon", "rl", "warp")}
    again = S.run_study(cfg)
    assert again["seeds"][0]["rm"] == results["seeds"][0]["rm"]
    assert {p: (study_dir / "seed_0" / p / "study_unit.json").stat().st_mtime_ns for p in units} == units
    # a Best-of-N setting changes Best-of-N only (and not the reward models before it)
    changed = apply_overrides(dataclasses.replace(cfg, study=dataclasses.replace(cfg.study, parts=["rm", "bon"])),
                              ["study.bon_n=[1, 4]"])
    out = S.run_study(changed)
    assert (study_dir / "seed_0" / "warm" / "study_unit.json").stat().st_mtime_ns == units["warm"]
    assert (study_dir / "seed_0" / "bon" / "study_unit.json").stat().st_mtime_ns != units["bon"]
    assert set(out["seeds"][0]["bon"]["gold"]["warm"]) == {"1", "4"}


def test_unknown_primary_claim_is_a_config_error(prepared):
    from warm_ray.config import ConfigError

    cfg = apply_overrides(prepared[0], ["study.primary=['WARM cures everything']"])
    with pytest.raises(ConfigError, match="WARM cures everything"):
        S.run_study(cfg)


def test_gold_tie_rate_counts_equal_pairs():
    gold = np.array([[0.1, 0.1, 0.2, 0.3], [1.0, 2.0, 3.0, 4.0]])
    assert S.gold_tie_rate(gold) == pytest.approx(1 / 12)


def test_claims_are_paired_differences_with_t_intervals():
    rows = stats.claim_row("x", [0.01, 0.03, 0.02, 0.04, 0.05], "greater")
    assert rows["verdict"] == "holds" and rows["n_pos"] == 5
