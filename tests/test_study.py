"""`warm-ray study` on tiny budgets: two seeds through every part, claims with CIs, honest reruns."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from actors import study as S
from actors import study_report as SR
from warm_ray import stats
from warm_ray.config import apply_overrides

STUDY = [
    "warm.m=2", "warm.epochs=1", "warm.batch_size=16", "warm.lp_epochs=3", "warm.lmc_points=2",
    "warm.checkpoint_every=50",
    "study.seeds=[0, 1]", "study.parts=[rm, bon, rl, warp]", "study.primary=['OOD accuracy: WARM > ENS']",
    "study.bon_prompts=6", "study.bon_samples=8", "study.bon_n=[1, 2, 8]",
    "study.rl_arms=[single, warm, warm_online]", "study.rl_betas=[0.1, 0.5]", "study.eval_every=1", "study.eval_prompts=4",
    "study.std_prompts=4", "study.std_samples=2",
    "study.kl_targets=[0.001]", "study.alarm_seeds=[0]",
    "rl.steps=2", "rl.prompts_per_step=2", "rl.samples_per_prompt=2", "rl.max_new_tokens=6",
    "rl.online.every=1", "rl.online.pairs=2", "rl.online.steps=1", "rl.online.batch_size=2",
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
    # online WARM: its claims against offline WARM, its refreshes (a version per step) in the record and report
    assert "RL peak gold (β=0.1): online WARM > WARM" in names and f"RL gold @KL=0.001 ({SR.POOLED}): online WARM > WARM" in names
    online = results["seeds"][0]["rl"]["runs"]["warm_online_beta_0.1"]["online"]
    assert online["versions"] == online["labels"] / 2 == 2 and online["version_steps"] == [1, 2]
    assert "online" not in results["seeds"][0]["rl"]["runs"]["warm_beta_0.1"]
    curve = results["seeds"][0]["rl"]["runs"]["warm_online_beta_0.1"]["curve"]
    assert [p.get("reward_version") for p in curve] == [0, 0, 1]  # step 0 (SFT), 1, 2: the version that scored it
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
    seeds_dir = Path(results["seeds_dir"])
    flips = [json.loads((seeds_dir / f"seed_{s}" / "prepare" / "prepare.json").read_text())["label_seed"] for s in (0, 1)]
    assert flips == [0, 1]
    members = [results["seeds"][s]["rm"] for s in (0, 1)]
    assert members[0]["table"] != members[1]["table"]
    # Best-of-N: N=1 is the mean gold for every selector (a random pick)
    bon = results["seeds"][0]["bon"]
    assert len({round(v["1"], 9) for v in bon["gold"].values()}) == 1
    assert bon["gold"]["oracle (gold)"]["8"] >= max(v["8"] for v in bon["gold"].values()) - 1e-9
    for f in ("claims.md", "claims.json", "results.md", "bon.png", "rm.png", "rl.png", "warp.png", "config.yaml",
              "alarm_signals.png", "alarm_roc.png"):
        assert (study_dir / f).stat().st_size > 0, f
    # the alarm section: calibrated on seed 0's RL runs, reported on seed 1's, every signal
    alarm = results["alarm"]
    assert alarm["calibration_seeds"] == [0] and alarm["report_seeds"] == [1]
    assert alarm["calibration"]["runs"] == 6 and set(alarm["report"]) == {"spread_ratio", "rank_disagreement",
                                                                          "warm_gap", "proxy_bend"}
    assert all(r["runs"] == 6 for r in alarm["report"].values())
    assert "Reward-hacking alarm" in (study_dir / "results.md").read_text()
    # what computed the numbers: on CPU the same code and seeds can train other members on another CPU
    assert results["machine"]["torch"] == torch.__version__ and results["machine"]["cores"] >= 1
    assert f"torch {torch.__version__}" in (study_dir / "results.md").read_text()
    # a greedy soup of one member is that member (the best: greedy starts there), of both the WARM
    # average: Best-of-N takes their scores instead of scoring the same weights again
    for s in (0, 1):
        soup, gold = results["seeds"][s]["rm"]["greedy_members"], results["seeds"][s]["bon"]["gold"]
        assert gold["soup"] == gold["single" if len(soup) == 1 else "warm"]
        # every seed's WARM evaluation checks WARM's precondition (linear mode connectivity)
        assert (seeds_dir / f"seed_{s}" / "warm" / "lmc.png").exists()
        assert isinstance(results["seeds"][s]["rm"]["lmc"]["connected"], bool)
    rl = results["seeds"][0]["rl"]["runs"]["warm_beta_0.1"]
    assert [p["step"] for p in rl["curve"]] == [0, 1, 2]
    assert rl["curve"][0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the SFT point
    _check_rl_statistics(cfg, results)


def _check_rl_statistics(cfg, results):
    """The RL part's statistics: two held-out draws per point, the peak picked on A and measured on
    B, rewards scaled by their within-prompt SD, the advantage's SD per step, p-values and Holm."""
    study_dir = Path(cfg.run_dir) / "study"
    seeds_dir = Path(results["seeds_dir"])
    for seed in (0, 1):
        for name, run in results["seeds"][seed]["rl"]["runs"].items():
            curve = run["curve"]
            a = [p["draws"]["a"]["gold"] for p in curve]
            b = [p["draws"]["b"]["gold"] for p in curve]
            for p in curve:  # equal draws: the pooled point is the mean of the two
                assert p["gold"] == pytest.approx((p["draws"]["a"]["gold"] + p["draws"]["b"]["gold"]) / 2)
            i = int(np.argmax(a))
            assert run["peak_step"] == curve[i]["step"] and run["peak_gold"] == b[i]
            assert run["peak_gold_max_of_points"] == max(a)
            std = run["reward_standardisation"]
            assert (std["prompts"], std["samples_per_prompt"]) == (4, 2)
            assert std["std"] == std["std_within_prompt"] > 0 and std["std_global"] > 0
            # the advantage's SD of every step: in metrics.jsonl, in the run record, on the curve
            logged = [json.loads(line)["advantage_std"]
                      for line in (seeds_dir / f"seed_{seed}" / "rl" / name / "metrics.jsonl").read_text().splitlines()]
            assert run["advantage_std"] == logged and len(logged) == 2
            assert run["advantage_std_mean"] == pytest.approx(np.mean(logged))
            assert curve[0]["advantage_std"] is None and [p["advantage_std"] for p in curve[1:]] == logged
        assert results["seeds"][seed]["rl"]["runs"]["warm_beta_0.5"]["beta"] == 0.5
    rows = {r["name"]: r for r in results["claims"]}
    # the fronts pooled over β, beside the per-β claims: the mean over β of each run's number
    pooled = rows["RL peak gold (mean over β): WARM > best single"]
    runs = [results["seeds"][s]["rl"]["runs"] for s in (0, 1)]
    expected = [np.mean([r[f"warm_beta_{b}"]["peak_gold"] - r[f"single_beta_{b}"]["peak_gold"] for b in ("0.1", "0.5")])
                for r in runs]
    assert pooled["diffs"] == pytest.approx(expected)
    assert "RL peak gold (β=0.5): WARM > best single" in rows
    # p and Holm: every secondary claim adjusted, the primary one keeps its verdict
    secondary = [r for r in results["claims"] if not r["primary"]]
    assert [r["p_holm"] for r in secondary] == pytest.approx(stats.holm([r["p"] for r in secondary]))
    for r in results["claims"]:
        assert r["p"] is None or 0 <= r["p"] <= 1
        if r["primary"]:
            assert r["verdict_holm"] is None and r["p_holm"] is None
        else:
            assert r["verdict_holm"] in ("holds", "does not hold", "inconclusive")
            assert r["verdict_holm"] == "inconclusive" or r["verdict_holm"] == r["verdict"]
    written = json.loads((study_dir / "claims.json").read_text())
    assert all("p" in r and "verdict_holm" in r for r in written)
    assert "| p | verdict | Holm verdict |" in (study_dir / "claims.md").read_text()


def test_study_rerun_reuses_only_what_its_config_still_describes(study_run):
    cfg, results = study_run
    study_dir = Path(cfg.run_dir) / "study"
    seed0 = Path(results["seeds_dir"]) / "seed_0"
    units = {p: (seed0 / p / "study_unit.json").stat().st_mtime_ns for p in ("warm", "bon", "rl", "warp")}
    again = S.run_study(cfg)
    assert again["seeds"][0]["rm"] == results["seeds"][0]["rm"]
    assert {p: (seed0 / p / "study_unit.json").stat().st_mtime_ns for p in units} == units
    # a Best-of-N setting changes Best-of-N only (and not the reward models before it)
    changed = apply_overrides(dataclasses.replace(cfg, study=dataclasses.replace(cfg.study, parts=["rm", "bon"])),
                              ["study.bon_n=[1, 4]"])
    out = S.run_study(changed)
    assert (seed0 / "warm" / "study_unit.json").stat().st_mtime_ns == units["warm"]
    assert (seed0 / "bon" / "study_unit.json").stat().st_mtime_ns != units["bon"]
    assert set(out["seeds"][0]["bon"]["gold"]["warm"]) == {"1", "4"}
    # a setting of the RM evaluation only evaluates again, with the members and the probe head it trained
    weights = sorted((seed0 / "warm").glob("members/member_*/final/*.safetensors")) + [seed0 / "warm" / "lp_head.safetensors"]
    trained = {w: w.stat().st_mtime_ns for w in weights}
    assert len(trained) == cfg.warm.m + 1
    lmc3 = S.run_study(apply_overrides(changed, ["warm.lmc_points=3"]))
    assert {w: w.stat().st_mtime_ns for w in weights} == trained
    assert (seed0 / "warm" / "study_unit.json").stat().st_mtime_ns != units["warm"]
    assert json.loads((seed0 / "warm" / "results.json").read_text())["lmc"]["t"] == [0.0, 0.5, 1.0]
    assert lmc3["seeds"][0]["rm"]["table"] == out["seeds"][0]["rm"]["table"]  # the same members, the same numbers
    # (which members a training setting retrains: tests/test_rundir.py) back to the fixture's evaluation
    again = S.run_study(changed)
    def numbers(record):  # everything but how long it took
        if isinstance(record, dict):
            return {k: numbers(v) for k, v in record.items() if k not in ("seconds", "seconds_part")}
        return record

    assert numbers(again["seeds"][0]["rm"]) == numbers(out["seeds"][0]["rm"])
    assert again["recipe"]["candidates"] == out["recipe"]["candidates"]
    assert {w: w.stat().st_mtime_ns for w in weights} == trained


def test_new_rl_settings_recompute_the_rl_part_only():
    from warm_ray.config import load_config

    cfg = load_config(None, [])
    for change in ("study.std_prompts=256", "study.std_samples=8", "study.rl_betas=[0.05]", "study.eval_prompts=32"):
        other = apply_overrides(cfg, [change])
        assert S.fingerprint(other, "rl", 0) != S.fingerprint(cfg, "rl", 0), change
        assert S.fingerprint(other, "bon", 0) == S.fingerprint(cfg, "bon", 0), change


def test_standardised_reward_scales_by_the_pooled_within_prompt_sd():
    import torch

    from actors.study_rl import StandardisedReward, curve_summary

    class Fixed:  # a scorer whose reward is a number in the completion
        normaliser = None
        n_models = 1

        def rewards(self, prompts, completions):
            return torch.tensor([float(c) for c in completions])

    # two prompts far apart, 3 samples each: within-prompt variances 1 and 4, global SD much larger
    reward = StandardisedReward(Fixed(), ["p"] * 6, ["0", "1", "2", "10", "12", "14"], samples_per_prompt=3)
    assert reward.mean == pytest.approx(6.5) and reward.std == pytest.approx(np.sqrt(2.5))
    assert reward.std_global == pytest.approx(np.std([0, 1, 2, 10, 12, 14], ddof=1))
    assert reward(["p"], ["6.5"]) == pytest.approx([0.0])
    assert reward.to_dict()["std_within_prompt"] == reward.std
    with pytest.raises(ValueError):
        StandardisedReward(Fixed(), ["p"] * 5, ["0"] * 5, samples_per_prompt=3)
    # the peak: the step draw A picks, at draw B's gold; the max of A's points beside it
    curve = [{"step": s, "kl": s / 10, "gold": (ga + gb) / 2, "draws": {"a": {"gold": ga}, "b": {"gold": gb}}}
             for s, ga, gb in ((0, 0.1, 0.1), (5, 0.6, 0.3), (10, 0.5, 0.5))]
    out = curve_summary(curve, [0.5, 2.0])
    assert (out["peak_step"], out["peak_gold"], out["peak_gold_max_of_points"]) == (5, 0.3, 0.6)
    assert out["gold_at_kl"]["0.5"] == pytest.approx(0.45) and np.isnan(out["gold_at_kl"]["2"])


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


def test_recipe_is_chosen_on_the_selection_split_only(study_run):
    """The member recipe comes from the selection split alone (RECIPE_RULE): every test label flipped
    (each test accuracy a -> 1 - a, each test barrier and gap negated) leaves the choice where it was."""
    cfg, results = study_run
    recipe = results["recipe"]
    assert set(recipe["candidates"]) == set(cfg.study.recipes) and recipe["chosen"] in cfg.study.recipes
    assert Path(results["seeds_dir"]).name == f"recipe_{recipe['chosen']}"
    study_dir = Path(cfg.run_dir) / "study"
    # each candidate trained on the recipe seed (the first study seed) in its own dir; the chosen
    # recipe's run there is the study's own seed 0 (reused, not trained twice)
    cands = {n: [json.loads((S.recipe_dir(study_dir, n) / "seed_0" / "warm" / "study_unit.json").read_text())["result"]]
             for n in cfg.study.recipes}
    assert cands[recipe["chosen"]][0]["table"] == results["seeds"][0]["rm"]["table"]
    chosen, rows = S.choose_recipe(cands, cfg.warm.lmc_tolerance)
    assert chosen == recipe["chosen"] and rows == recipe["candidates"]

    def flip_tests(rm: dict) -> dict:
        rm = json.loads(json.dumps(rm))
        for row in rm["table"].values():
            for split in ("test_id", "test_ood"):
                row[split] = 1.0 - row[split]
        for split in ("test_id", "test_ood"):
            for k in rm["lmc"]["summary"][split]:
                rm["lmc"]["summary"][split][k] *= -1
        return rm

    assert S.choose_recipe({n: [flip_tests(r) for r in v] for n, v in cands.items()}, cfg.warm.lmc_tolerance) == (
        chosen, rows)
    # ...while the selection split does move it: make the other recipe's members the better ones
    other = next(n for n in cands if n != chosen)
    better = json.loads(json.dumps(cands))
    for n in better:
        better[n][0]["lmc"]["summary"]["selection"]["loss_barrier_max"] = 0.0
        for row in better[n][0]["table"].values():
            row["selection"] = 0.9 if n == other else 0.1
    assert S.choose_recipe(better, cfg.warm.lmc_tolerance)[0] == other


def test_choose_recipe_prefers_connected_members():
    def rm(acc, barrier):
        return {"table": {"mean member": {"selection": acc}}, "lmc": {"summary": {"selection": {
            "loss_barrier_max": barrier}}}}

    # the more accurate recipe is not connected: the connected one wins
    assert S.choose_recipe({"a": [rm(0.8, 0.5)], "b": [rm(0.7, 0.0)]}, 0.02)[0] == "b"
    # both connected: the more accurate; none connected: the smaller barrier
    assert S.choose_recipe({"a": [rm(0.8, 0.01)], "b": [rm(0.7, 0.0)]}, 0.02)[0] == "a"
    assert S.choose_recipe({"a": [rm(0.8, 0.5)], "b": [rm(0.7, 0.3)]}, 0.02)[0] == "b"
    # every recipe seed must be connected
    assert S.choose_recipe({"a": [rm(0.8, 0.0), rm(0.8, 0.1)], "b": [rm(0.7, 0.0)]}, 0.02)[0] == "b"


def test_demo_summary_says_what_was_built_and_what_one_seed_cannot(study_run):
    cfg, results = study_run
    study_dir = Path(cfg.run_dir) / "study"
    text = SR.demo_summary(results, study_dir)
    seed_dir = Path(results["seeds_dir"]) / "seed_0"
    assert str(seed_dir / "warm" / "warm_rm") in text and str(seed_dir / "rl") in text
    assert "One seed proves nothing" in text and "warm-ray study" in text
    table = results["seeds"][0]["rm"]["table"]
    assert f"WARM {table['WARM']['train_corrupted']:.2f}" in text
    assert len(text.splitlines()) < 20  # a screen, not the 30-row claims table


def test_declared_primary_claims_without_numbers_are_named_in_the_report():
    text = SR._untested(["a", "b @KL=4"], [{"name": "a"}])
    assert "`b @KL=4`" in text and "`a`" not in text and "not testable" in text
    assert SR._untested(["a"], [{"name": "a"}]) == ""
