"""The reward scorer as a Ray actor: every reward mode scores in a ScorerActor exactly as in the driver
(normaliser included), new weights arrive as ObjectRefs with a version, and an RL run rewards its
policy the same with the scorer in an actor as in the driver, under the same fingerprint."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from actors import rl as rl_api
from actors.rl import RLRun
from actors.scorer import RemoteScorer, start_scorer_actor
from tests.conftest import cpus_free
from warm_ray import rundir
from warm_ray.config import Config, ConfigError, Resources, RLConfig, load_config
from warm_ray.models import load_reward_model
from warm_ray.reward import RewardScorer, member_final_dirs
from warm_ray.sources import load_prompts, prepared_summary, reward_source

MODES = ("warm", "single", "ens", "wco", "uwo")


def run_config(warm_trained, tmp_path, **rl) -> Config:
    """A run dir of its own whose prepare/ and warm/ are the shared tiny WARM run's; tiny RL settings."""
    cfg0, _ = warm_trained
    tmp_path.mkdir(parents=True, exist_ok=True)
    for stage in ("prepare", "warm"):
        (tmp_path / stage).symlink_to(Path(cfg0.run_dir) / stage)
    base = dict(steps=2, prompts_per_step=4, samples_per_prompt=2, max_new_tokens=8, lr=1e-3, beta=0.01,
                checkpoint_every=2, reference_samples=8, monitor_every=1, monitor_samples=4, n_eval_prompts=8)
    return dataclasses.replace(cfg0, run_dir=str(tmp_path), rl=RLConfig(**{**base, **rl}))


def texts(cfg: Config) -> tuple[tuple[list[str], list[str]], tuple[list[str], list[str]]]:
    """(reference samples of the SFT policy, other texts to score)."""
    run = prepared_summary(cfg.run_dir)
    reference = rl_api.sft_reference(run["policy"], load_prompts(run)["train"], cfg.rl)
    prompts = load_prompts(run)["eval"][:6]
    return reference, (prompts, [c[::-1] for c in reference[1][:6]])


def test_the_actor_scores_every_mode_as_the_driver_does(warm_trained, ray_local, tmp_path):
    cfg = run_config(warm_trained, tmp_path)
    reference, (prompts, completions) = texts(cfg)
    actor = start_scorer_actor(cfg.rl.scorer)  # one actor holds every mode's scorer
    try:
        for mode in MODES:
            here = rl_api.proxy_scorer(cfg, mode, normalise=False, placement="driver")
            there = rl_api.proxy_scorer(cfg, mode, normalise=False, actor=actor)
            assert isinstance(here, RewardScorer) and isinstance(there, RemoteScorer)
            assert (there.mode, there.n_models, there.n_members) == (here.mode, here.n_models, here.n_members)
            assert there.normaliser is None
            if mode in ("wco", "uwo"):  # they combine normalised scores: no normaliser, no reward
                with pytest.raises(RuntimeError, match="fit_normaliser"):
                    there.rewards(prompts, completions)
            else:
                assert torch.allclose(there.rewards(prompts, completions), here.rewards(prompts, completions), atol=1e-5)
            assert torch.allclose(there.member_scores(prompts, completions), here.member_scores(prompts, completions),
                                  atol=1e-5)

            # the normaliser is fitted where the models are, and the handle knows it
            fitted_here, fitted_there = here.fit_normaliser(*reference), there.fit_normaliser(*reference)
            assert fitted_there.mean == pytest.approx(fitted_here.mean, abs=1e-5)
            assert fitted_there.std == pytest.approx(fitted_here.std, abs=1e-5)
            assert there.normaliser.m == here.normaliser.m and there.member_normaliser.m == here.n_members
            assert there.member_normaliser.mean == pytest.approx(here.member_normaliser.mean, abs=1e-5)
            assert there.score(prompts, completions) == pytest.approx(here.score(prompts, completions), abs=1e-5)
            assert torch.allclose(there.normalised_member_scores(prompts, completions),
                                  here.normalised_member_scores(prompts, completions), atol=1e-5)
    finally:
        ray_local.kill(actor)


def test_load_weights_from_an_object_ref_changes_scores_and_version(warm_trained, ray_local, tmp_path):
    cfg = run_config(warm_trained, tmp_path, single_member=0)
    _, (prompts, completions) = texts(cfg)
    member_1 = tmp_path / "warm" / "members" / "member_1" / "final"
    scorer = rl_api.proxy_scorer(cfg, "single", normalise=False, placement="actor")  # its own actor
    try:
        assert scorer.owner and scorer.version() == 0
        before = scorer.rewards(prompts, completions)
        ref = ray_local.put(load_reward_model(member_1).state_dict())
        assert scorer.load_weights(ref, 1) is True
        assert scorer.version() == 1
        after = scorer.rewards(prompts, completions)
        one = RewardScorer.from_dirs([member_1], mode="single")
        assert not torch.allclose(after, before, atol=1e-4)
        assert torch.allclose(after, one.rewards(prompts, completions), atol=1e-5)  # member 1's scores now
        assert scorer.load_weights(ref, 1) is False and scorer.version() == 1  # a stale version is ignored

        # ENS: one state dict per member, refs inside a list (fetched in the actor): swapped members swap rows
        ens = scorer.sibling("ens", rl_api.scorer_spec(reward_source(cfg), cfg.rl, "ens"))
        raw = ens.member_scores(prompts, completions)
        sds = [ray_local.put(load_reward_model(d).state_dict()) for d in member_final_dirs(tmp_path / "warm")]
        assert ens.load_weights(sds[::-1], 7) is True and ens.version() == 7 and scorer.version() == 1
        assert torch.allclose(ens.member_scores(prompts, completions), raw.flip(0), atol=1e-5)
        with pytest.raises(ValueError, match="2 scoring model"):
            ens.load_weights(sds[:1], 8)
    finally:
        scorer.close()


def test_an_rl_run_is_rewarded_the_same_in_the_actor_and_in_the_driver(warm_trained, ray_local, tmp_path):
    records, saved, fingerprints = {}, {}, {}
    for placement in ("driver", "actor"):
        cfg = run_config(warm_trained, tmp_path / placement, reward="single", scorer_placement=placement)
        out = tmp_path / placement / "out"
        result = rl_api.run_rl(RLRun.of(cfg, out, reward="single"))
        records[placement] = rl_api.read_metrics(out / "metrics.jsonl")
        saved[placement] = json.loads((out / "normaliser.json").read_text())
        fingerprints[placement] = json.loads((out / rundir.MARKER).read_text())["fingerprint"]
        assert result["forward_passes_per_sample"] == 1 and result["monitor"]["checks"] == 2
        # the run ended the scorer actor it started (with the monitor's WARM RM in it)
        assert cpus_free(2.0)

    driver, actor = records["driver"], records["actor"]
    assert [r["step"] for r in actor] == [1, 2]
    # same prompts, sampling seeds and SFT policy: the first batch is the same, and so are its rewards
    assert actor[0]["gold_reward"] == driver[0]["gold_reward"]
    assert actor[0]["proxy_reward"] == pytest.approx(driver[0]["proxy_reward"], abs=1e-5)
    for key in ("disagreement_spread", "warm_gap"):
        assert actor[0][key] == pytest.approx(driver[0][key], abs=1e-5)
    for key in ("normaliser", "member_normaliser", "warm_normaliser"):
        assert saved["actor"][key]["mean"] == pytest.approx(saved["driver"][key]["mean"], abs=1e-5)
    # where the reward models run is not part of what a run's outputs depend on
    assert fingerprints["actor"] == fingerprints["driver"]


def test_scorer_placement_is_checked_and_left_out_of_fingerprints(warm_trained, tmp_path):
    with pytest.raises(ConfigError, match=r"rl\.scorer_placement = 'gpu': must be one of 'actor', 'driver'"):
        load_config(None, ["rl.scorer_placement=gpu"])
    with pytest.raises(ConfigError, match=r"warp\.rl\.scorer\.num_gpus"):
        load_config(None, ["warp.rl.scorer.num_gpus=-0.5"])
    cfg = run_config(warm_trained, tmp_path)

    def fingerprint(**rl) -> str:
        return RLRun.of(cfg, "unused", rl=dataclasses.replace(cfg.rl, **rl), reward="warm").fingerprint()

    base = fingerprint(scorer_placement="driver")
    assert fingerprint(scorer_placement="actor") == base
    assert fingerprint(scorer_placement="actor", scorer=Resources(num_cpus=0.25, num_threads=2, dtype="float32")) == base
    assert fingerprint(scorer_placement="driver", scorer=Resources(num_gpus=0.25)) == base  # the driver: CPU float32
    # a device or dtype the driver does not score in changes the scores, so the fingerprint
    assert fingerprint(scorer_placement="actor", scorer=Resources(dtype="bfloat16")) != base
    assert fingerprint(scorer_placement="actor", scorer=Resources(num_gpus=0.25)) != base
