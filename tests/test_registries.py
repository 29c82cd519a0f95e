"""One place per set of names (``warm_ray.names``): a reward mode or a merge method added by one
function and one registry entry runs through RL, Best-of-N and WARP without touching other files;
the config checks against the registries without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from actors import warp as WP
from actors.rl import RLRun, read_metrics, run_rl
from tests.test_rl import rl_config, shared_warm_run
from tests.test_warp import gold_warp
from warm_ray import bon as B
from warm_ray.config import ConfigError, load_config
from warm_ray.names import MERGE_METHODS, REWARD_MODES, MergeMethod, Registry, RewardMode, resolve
from warm_ray.reward import member_final_dirs


def median_of_members(scores: torch.Tensor) -> torch.Tensor:
    """A toy reward mode: the median of the members' normalised scores."""
    return scores.median(dim=0).values


def first_run(init: dict, policies: list[dict], lam: float) -> dict:
    """A toy merge method: the first run's weights as they are."""
    return {k: v.clone() for k, v in policies[0].items()}


@pytest.fixture
def median_mode():
    REWARD_MODES.register("median", RewardMode("median of members", "members", median_of_members))
    yield "median"
    REWARD_MODES.unregister("median")


@pytest.fixture
def first_merge():
    MERGE_METHODS.register("first", MergeMethod("first run", first_run))
    yield "first"
    MERGE_METHODS.unregister("first")


def test_a_registry_checks_names_and_resolves_entries_lazily():
    reg = Registry("colour", {"red": "warm_ray.names:resolve"})
    assert reg.names() == ("red",) and "red" in reg and "blue" not in reg
    with pytest.raises(ValueError, match="unknown colour 'blue'; use one of red"):
        reg.check("blue")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("red", "x")
    assert resolve(reg["red"]) is resolve
    with pytest.raises(ValueError, match="combine function"):
        RewardMode("bad", "members")  # a mode of every member needs one
    assert REWARD_MODES["ens"].forward_passes(4) == 4 and REWARD_MODES["warm"].forward_passes(4) == 1


def test_the_config_validates_against_the_registries_without_torch():
    code = ("import sys; from warm_ray.config import load_config; "
            "load_config(None, ['rl.reward=wco', 'warp.merge=lerp', 'rl.backend=vllm', 'warm.lr_schedule=constant']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    with pytest.raises(ConfigError, match=r"rl\.reward = 'median': must be one of 'warm', 'single', 'ens', 'wco', 'uwo'"):
        load_config(None, ["rl.reward=median"])


def test_a_registered_reward_mode_runs_through_rl_and_best_of_n(warm_trained, ray_local, tmp_path, median_mode):
    cfg = load_config(None, [f"rl.reward={median_mode}", f"study.rl_arms=[{median_mode}, warm]"])  # accepted now
    assert cfg.rl.reward == median_mode
    cfg = rl_config(shared_warm_run(warm_trained, tmp_path), tmp_path, steps=2, prompts_per_step=4,
                    samples_per_prompt=2, max_new_tokens=8, checkpoint_every=2, reference_samples=8, monitor_every=1,
                    monitor_samples=4)
    out = tmp_path / "rl_median"
    result = run_rl(RLRun.of(cfg, out, reward=median_mode))
    m = len(member_final_dirs(tmp_path / "warm"))
    assert result["reward_mode"] == median_mode and result["forward_passes_per_sample"] == m
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2] and all("spread_ratio" in r for r in records)
    normaliser = json.loads((out / "normaliser.json").read_text())
    assert normaliser["mode"] == median_mode and normaliser["models"] == m

    # Best-of-N: the new mode is a selector beside ENS, WCO and UWO, on the same normalised scores
    rng = np.random.default_rng(0)
    members = rng.normal(size=(3, 5, 8))
    gold = rng.normal(size=(5, 8))
    scores = B.selector_scores(members, 0, members.mean(0), members[1], uwo_lambda=0.5)
    assert median_mode in scores and scores[median_mode].shape == (5, 8)
    raw = torch.from_numpy(members.reshape(3, -1)).float()
    normalised = (raw - raw.mean(1, keepdim=True)) / raw.std(1, unbiased=False, keepdim=True)
    assert np.allclose(scores[median_mode].reshape(-1), normalised.median(dim=0).values.numpy(), atol=1e-5)
    bon = B.best_of_n(scores, gold, [1, 4])
    assert set(bon[median_mode]) == {1, 4}


def test_a_registered_merge_method_runs_through_warp(prepared, ray_local, tmp_path, first_merge):
    cfg = gold_warp(prepared[0], tmp_path / "run", iterations=1, merge=first_merge, compare=["lerp"],
                    baseline_betas=[])
    results = WP.run_warp(cfg)
    it = results["iterations"][0]
    assert it["merge"] == first_merge and list(it["fronts"]) == [first_merge, "lerp"]
    # "first" at η = 1 is run 0 itself: the same policy weights, so the same evaluation
    at_one = next(p for p in it["fronts"][first_merge] if p["eta"] == 1.0)
    run0 = next(p for p in it["run_points"] if p["run"] == 0)
    assert at_one["kl_sft"] == pytest.approx(run0["kl_sft"], abs=1e-5)
    assert at_one["gold"] == pytest.approx(run0["gold"], abs=1e-9)
    md = (tmp_path / "run" / "warp" / "results.md").read_text()
    assert "FIRST η=1" in md and "LERP η=1" in md
