"""RLHF on a real local Ray: REINFORCE learns a toy reward with both rollout backends, the EMA
anchor follows WARP's update exactly, a killed rollout worker is replaced, a crashed run resumes
from its checkpoint, every reward mode runs with its normalisation and disagreement monitor, and
the WARM-vs-single comparison runs on a tiny WARM run."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch

from actors import rl as rl_api
from actors.rl import RLRun
from actors.learner import PolicyLearner, load_checkpoint
from actors.rollout import HFBackend
from actors.scorer import close_scorer
from tests.conftest import worker_versions
from warm_ray.config import Config, RLConfig
from warm_ray.ensemble import Normaliser
from warm_ray.reward import RewardScorer
from warm_ray.sources import load_prompts, prepared_summary

TIMEOUT = 300
THE = re.compile(r"\bthe\b", re.IGNORECASE)


def count_the(prompts: list[str], completions: list[str]) -> list[float]:
    """Toy reward: how often the completion says "the" (the corpus's most frequent word)."""
    return [float(len(THE.findall(c))) for c in completions]


def rl_config(prepared_cfg: Config, run_dir=None, **rl) -> Config:
    base = dict(steps=15, prompts_per_step=8, samples_per_prompt=4, max_new_tokens=12, lr=1e-3, beta=0.01,
                checkpoint_every=10, n_eval_prompts=16)
    return dataclasses.replace(prepared_cfg, run_dir=str(run_dir or prepared_cfg.run_dir),
                               rl=RLConfig(**{**base, **rl}))


def steps_of(out_dir: Path) -> list[int]:
    return [r["step"] for r in rl_api.read_metrics(out_dir / "metrics.jsonl")]


def mean(xs) -> float:
    return sum(xs) / len(xs)


# ------------------------------------------------------------------------------------------
# REINFORCE raises a toy reward, with either rollout backend
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_reinforce_raises_a_toy_reward(prepared, ray_local, tmp_path, backend):
    cfg = rl_config(prepared[0], backend=backend)
    result = rl_api.run_rl(RLRun.of(cfg, tmp_path, reward="count_the", fn=count_the))
    records = rl_api.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 16))
    first, last = mean([r["proxy_reward"] for r in records[:5]]), mean([r["proxy_reward"] for r in records[-5:]])
    assert last > first + 0.5, (first, last)
    # the sampler and the learner agree on what the policy is (on-policy REINFORCE)
    assert max(r["logprob_gap"] for r in records) < 1e-3
    for key in ("gold_reward", "kl_sft", "entropy", "completion_len", "tokens_per_s", "t_sample", "t_score",
                "t_learn", "t_sync"):
        assert all(math.isfinite(r[key]) for r in records), key
    assert records[-1]["kl_sft"] > 0  # it moved away from the SFT policy
    assert (Path(result["policy"]) / "tokenizer.json").exists()
    assert (tmp_path / "config.yaml").exists() and load_checkpoint(tmp_path / "ckpt")[0]["step"] == 15


# ------------------------------------------------------------------------------------------
# The EMA anchor (WARP): θ_ema ← (1-μ)·θ_ema + μ·θ after each step; μ = 0 keeps SFT
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_samples(prepared):
    backend = HFBackend(prepared[1]["policy"])
    prompts = json.loads(Path(prepared[1]["prompts"]).read_text())["train"][:4]
    samples = backend.generate(prompts, n=4, max_new_tokens=8, temperature=0.9, seed=0)
    backend.shutdown()
    return samples


@pytest.mark.parametrize("mu", [0.25, 0.0])
def test_ema_anchor_update(prepared, toy_samples, mu):
    cfg = RLConfig(anchor="ema", ema_mu=mu, samples_per_prompt=4, lr=1e-3, beta=0.1)
    learner = PolicyLearner(prepared[1]["policy"], cfg)
    sft = {k: v.clone() for k, v in learner.sft.state_dict().items()}
    before = learner.get_anchor_weights()
    before = {k: v.clone() for k, v in before.items()}
    learner.learn(toy_samples, count_the([], [s.completion for s in toy_samples]))
    policy, anchor = learner.get_weights(), learner.get_anchor_weights()
    changed = [k for k in policy if not torch.equal(policy[k], sft[k])]
    assert changed, "the step did not change the policy"
    for k in anchor:
        if mu == 0:
            assert torch.equal(anchor[k], sft[k]), k  # exactly the SFT anchor
        else:
            # the update as merge.ema_update writes it, bit for bit, and as the paper writes it
            assert torch.equal(anchor[k], before[k].mul(1 - mu).add(policy[k], alpha=mu)), k
            assert torch.allclose(anchor[k], (1 - mu) * before[k] + mu * policy[k], rtol=0, atol=1e-7), k
    assert learner.learn(toy_samples, [0.0] * len(toy_samples))["step"] == 2


def test_baselines(prepared, toy_samples):
    rewards = count_the([], [s.completion for s in toy_samples])
    mean_r = mean(rewards)
    learners = {b: PolicyLearner(prepared[1]["policy"], RLConfig(baseline=b, samples_per_prompt=4, beta=0.1))
                for b in ("loo", "ema", "none")}
    # first step: π_θ = π_sft, so r_β = r exactly
    first = {b: learner.learn(toy_samples, rewards) for b, learner in learners.items()}
    assert first["loo"]["reward_kl_penalised"] == pytest.approx(mean_r)
    assert first["loo"]["baseline"] == pytest.approx(mean_r)  # the mean of leave-one-out means
    assert first["ema"]["baseline"] == pytest.approx(mean_r)  # no past yet: the batch mean
    assert first["none"]["baseline"] == 0.0
    # the moving average uses only earlier batches
    second = learners["ema"].learn(toy_samples, [0.0] * len(toy_samples))
    assert second["baseline"] == pytest.approx(mean_r)
    assert learners["ema"].baseline_value == pytest.approx(0.9 * mean_r + 0.1 * second["reward_kl_penalised"])


# ------------------------------------------------------------------------------------------
# Fault tolerance: a killed rollout worker, a crashed run
# ------------------------------------------------------------------------------------------


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def crashed_run(prepared, ray_local, tmp_path_factory):
    """6 steps planned, 2 rollout workers, checkpoints every 3 steps; worker 0 is killed after
    step 2 and the run crashes after step 4. Returns (config, out_dir, records seen, versions seen)."""
    import ray

    cfg = rl_config(prepared[0], steps=6, checkpoint_every=3, n_workers=2)
    out = tmp_path_factory.mktemp("crashed_run")
    records: dict[int, dict] = {}
    versions: dict[int, list[int]] = {}

    def on_step(step, record, group):
        records[step] = record
        if step == 2:
            ray.kill(group.workers[0], no_restart=False)  # Ray restarts it, with the SFT weights
        else:
            versions[step] = worker_versions(group)
        if step == 4:
            raise Crash("simulated crash after step 4")

    with pytest.raises(Crash):
        rl_api.run_rl(RLRun.of(cfg, out, reward="count_the", fn=count_the), on_step=on_step)
    return cfg, out, records, versions


def test_killed_rollout_worker_is_replaced(crashed_run):
    _, out, records, versions = crashed_run
    assert sorted(records) == [1, 2, 3, 4]  # the loop went on after the kill
    # the restarted worker was re-synced: both workers hold the latest version after each step...
    assert sorted(versions) == [1, 3, 4]
    assert all(v == [records[s]["policy_version"]] * 2 for s, v in versions.items())
    # ...and sampled with it (the learner's recomputed logprobs match the sampler's)
    assert max(r["logprob_gap"] for r in records.values()) < 1e-3


def test_crashed_run_resumes_from_its_last_checkpoint(crashed_run):
    cfg, out, crashed, _ = crashed_run
    assert steps_of(out) == [1, 2, 3, 4]
    assert load_checkpoint(out / "ckpt")[0]["step"] == 3  # step 4 was never checkpointed

    resumed: list[int] = []
    result = rl_api.run_rl(RLRun.of(cfg, out, reward="count_the", fn=count_the), resume=True,
                           on_step=lambda step, record, group: resumed.append(step))
    assert result["resumed_from"] == 3
    assert resumed == [4, 5, 6]  # continues at step 4, from the checkpoint of step 3
    assert steps_of(out) == [1, 2, 3, 4, 5, 6]  # each step once
    records = rl_api.read_metrics(out / "metrics.jsonl")
    assert records[:3] == [crashed[s] for s in (1, 2, 3)]  # history before the checkpoint kept
    # same weights, Adam state and sampling seeds: step 4 is redone exactly as before the crash
    assert records[3]["proxy_reward"] == pytest.approx(crashed[4]["proxy_reward"], abs=1e-6)
    assert records[3]["kl_sft"] == pytest.approx(crashed[4]["kl_sft"], abs=1e-5)
    assert load_checkpoint(out / "ckpt")[0]["step"] == 6
    # a finished run is not redone
    assert rl_api.run_rl(RLRun.of(cfg, out, reward="count_the", fn=count_the), resume=True)["resumed_from"] == 3


# ------------------------------------------------------------------------------------------
# A tiny WARM run as the reward: `warm-ray rl` end to end
# ------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------
# Reward modes: one scorer code path, rewards normalised on SFT samples, the disagreement monitor
# ------------------------------------------------------------------------------------------


def shared_warm_run(warm_trained, tmp_path) -> Config:
    """A run dir of its own whose prepare/ and warm/ are the shared tiny WARM run's."""
    cfg0, _ = warm_trained
    for stage in ("prepare", "warm"):
        (tmp_path / stage).symlink_to(Path(cfg0.run_dir) / stage)
    return dataclasses.replace(cfg0, run_dir=str(tmp_path))


@pytest.mark.parametrize("mode,steps,every", [("warm", 4, 2), ("single", 2, 1), ("ens", 2, 1), ("wco", 2, 1),
                                              ("uwo", 2, 1)])
def test_each_reward_mode_runs_normalised_and_monitored(warm_trained, ray_local, tmp_path, mode, steps, every):
    cfg = shared_warm_run(warm_trained, tmp_path)
    # wco: an alarm threshold every check exceeds, so the alarm path runs; the others never alarm
    cfg = rl_config(cfg, tmp_path, steps=steps, prompts_per_step=4, samples_per_prompt=2, max_new_tokens=8,
                    checkpoint_every=steps, reference_samples=8, monitor_every=every, monitor_samples=4,
                    alarm_ratio=1e-6 if mode == "wco" else 1e6)
    out = tmp_path / "out"
    kw = {}
    if mode == "ens":  # a scorer given, its reward overridden: the monitor still uses the scorer's members
        kw = {"scorer": rl_api.proxy_scorer(cfg, "ens", normalise=False), "fn": count_the}
    try:
        result = rl_api.run_rl(RLRun.of(cfg, out, reward=mode, **kw))
    finally:
        close_scorer(kw.get("scorer"))  # a given scorer is the caller's to end (its actor)

    records = rl_api.read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    checked = [r["step"] for r in records if "spread_ratio" in r]
    assert checked == list(range(every, steps + 1, every))  # every K steps, and only then
    for r in records:
        assert math.isfinite(r["proxy_reward"]) and r["t_monitor"] >= 0
        if r["step"] in checked:
            assert r["disagreement_spread"] > 0 and r["spread_ratio"] > 0 and r["monitor_samples"] == 4
            assert r["rank_agreement"] is None or -1 <= r["rank_agreement"] <= 1
            assert math.isfinite(r["warm_gap"])  # the WARM RM is loaded beside any mode's members
            assert r["alarm"] is (mode == "wco")
    if mode == "ens":  # the injected reward trained: counts, so a batch mean is a multiple of 1/8
        assert all(r["proxy_reward"] * 8 == pytest.approx(round(r["proxy_reward"] * 8)) for r in records)
    assert result["first_alarm"] == (every if mode == "wco" else None)
    one_model = mode in ("warm", "single")
    assert result["reward_mode"] == mode and result["forward_passes_per_sample"] == (1 if one_model else 2)
    assert result["gold_peak_step"] in range(1, steps + 1)
    assert result["alarm_lead_steps"] == (None if mode != "wco" else result["gold_peak_step"] - every)
    assert result["monitor"]["checks"] == len(checked) and 0 <= result["monitor"]["share_of_step_time"] < 1
    assert (out / "disagreement.png").stat().st_size > 1000

    # the normalisation: fitted on the SFT reference samples (the same for every run), saved as JSON
    saved = json.loads((out / "normaliser.json").read_text())
    assert saved["mode"] == mode and saved["reference"]["samples"] == 8
    norm = Normaliser.from_dict(saved["normaliser"])
    assert norm.m == (1 if one_model else 2) and Normaliser.from_dict(saved["member_normaliser"]).m == 2
    assert saved["monitor"]["reference"]["spread"] > 0
    prepared_run = prepared_summary(cfg.run_dir)
    prompts, completions = rl_api.sft_reference(prepared_run["policy"], load_prompts(prepared_run)["train"], cfg.rl)
    assert len(prompts) == 8 and len(set(prompts)) == 8
    refit = rl_api.proxy_scorer(cfg, mode, normalise=False, placement="driver").fit_normaliser(prompts, completions)
    assert refit.mean == pytest.approx(norm.mean, abs=1e-5) and refit.std == pytest.approx(norm.std, abs=1e-5)


def test_single_member_minus_one_is_the_best_on_selection(warm_trained, tmp_path):
    cfg = shared_warm_run(warm_trained, tmp_path)
    best = json.loads((tmp_path / "warm" / "results.json").read_text())["best_member"]
    assert rl_api.best_member(tmp_path / "warm") == int(best)
    assert cfg.rl.single_member == -1  # the default
    scorer = rl_api.proxy_scorer(cfg, "single", normalise=False, placement="driver")
    one = RewardScorer.from_dirs([tmp_path / "warm" / "members" / f"member_{best}" / "final"], mode="single")
    texts = (["The ship"], [" sailed on."])
    assert scorer.rewards(*texts).item() == pytest.approx(one.rewards(*texts).item(), abs=1e-6)
    assert scorer.n_members == 2  # every member loaded too, for the monitor


def test_warm_ray_rl_compares_warm_with_a_single_rm(warm_trained, ray_local, tmp_path):
    """`warm-ray rl` on a tiny WARM run: both RL runs log proxy and gold rewards, then the table."""
    from warm_ray.cli import main

    shared_warm_run(warm_trained, tmp_path)
    # both modes' scorers (and single's WARM RM for the monitor) in one ScorerActor
    rl = ["rl.steps=2", "rl.prompts_per_step=4", "rl.checkpoint_every=2", "rl.n_eval_prompts=8",
          "rl.max_new_tokens=12", "rl.reference_samples=8", "rl.monitor_every=2", "rl.monitor_samples=4",
          "rl.scorer_placement=actor"]
    assert main(["rl", "--run-dir", str(tmp_path), *(x for o in rl for x in ("--set", o))]) == 0
    rl_dir = tmp_path / "rl"
    for kind in ("warm", "single"):
        records = rl_api.read_metrics(rl_dir / kind / "metrics.jsonl")
        assert [r["step"] for r in records] == [1, 2]
        assert all(math.isfinite(r["proxy_reward"]) and math.isfinite(r["gold_reward"]) for r in records)
        assert (rl_dir / kind / "policy" / "config.json").exists()
        assert (rl_dir / kind / "config.yaml").exists()
    # same prompts and sampling seeds in both runs: their first batches (from SFT) are identical
    first = {k: rl_api.read_metrics(rl_dir / k / "metrics.jsonl")[0] for k in ("warm", "single")}
    assert first["warm"]["gold_reward"] == first["single"]["gold_reward"]
    assert first["warm"]["proxy_reward"] != first["single"]["proxy_reward"]  # ...scored by different RMs
    results = json.loads((rl_dir / "results.json").read_text())
    assert set(results["win_rates"]) == {"WARM vs single RM", "WARM vs SFT", "single RM vs SFT"}
    assert all(0 <= w["win_rate"] <= 1 and w["n"] == 8 for w in results["win_rates"].values())
    assert set(results["policies"]) == {"sft", "single", "warm"}
    assert (rl_dir / "curves.png").stat().st_size > 1000
    assert "| WARM vs single RM |" in (rl_dir / "results.md").read_text()
    assert set(json.loads((rl_dir / "curves.json").read_text())) == {"warm", "single"}
    # the monitor's table: alarm step against gold peak step, per reward mode
    md = (rl_dir / "results.md").read_text()
    assert "| first alarm (step) | gold peak (step) |" in md and "| WARM | 1 |" in md and "| single RM | 1 |" in md
    for kind in ("warm", "single"):
        assert (rl_dir / kind / "normaliser.json").exists() and (rl_dir / kind / "disagreement.png").exists()
        assert "spread_ratio" in rl_api.read_metrics(rl_dir / kind / "metrics.jsonl")[1]


# ------------------------------------------------------------------------------------------
# rl.on_alarm: an alarm a run acts on
# ------------------------------------------------------------------------------------------


class _Crash(RuntimeError):
    pass


@pytest.mark.parametrize("action", ["stop", "checkpoint"])
def test_on_alarm_stops_at_the_checkpoint_before_it_or_keeps_the_alarm_policy(warm_trained, ray_local, tmp_path,
                                                                             action):
    """A rule every check exceeds fires at the first check (step 2). stop: the run ends there, its result is
    the checkpoint of step 1 (never one of the alarm's step), a run crashed before the alarm and resumed stops
    at the same place, and a rerun hands the stopped run back; checkpoint: the alarm's policy is kept and the
    run goes on to its last step."""
    from safetensors.torch import load_file

    from warm_ray import models as M

    cfg = shared_warm_run(warm_trained, tmp_path)
    cfg = rl_config(cfg, tmp_path, steps=4, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6,
                    checkpoint_every=1, reference_samples=8, monitor_every=2, monitor_samples=4,
                    alarm_rule="spread_ratio > 0.000001", on_alarm=action)
    out = tmp_path / "out"
    run = RLRun.of(cfg, out, reward="ens")

    def crash(step, record, group):
        if step == 1:
            raise _Crash("killed after step 1")

    if action == "stop":
        with pytest.raises(_Crash):
            rl_api.run_rl(run, on_step=crash)
    result = rl_api.run_rl(run, resume=True)
    records = rl_api.read_metrics(out / "metrics.jsonl")
    assert result["first_alarm"] == 2 and records[1]["alarm"] and set(records[1]["signals"]) >= {
        "spread_ratio", "rank_disagreement", "warm_gap"}
    final = M.load_policy(out / "policy").state_dict()
    if action == "checkpoint":
        assert [r["step"] for r in records] == [1, 2, 3, 4] and result["stopped_at_alarm"] is None
        kept = M.load_policy(out / "alarm_policy").state_dict()
        assert any(not torch.equal(kept[k], final[k]) for k in kept)  # the run went on after it
        return
    assert [r["step"] for r in records] == [1, 2]  # never past the alarm, also after the crash and resume
    assert result["stopped_at_alarm"] == {"alarm_step": 2, "result_step": 1} and result["resumed_from"] == 1
    ckpt = load_file(out / "ckpt" / "policy.safetensors")
    assert json.loads((out / "ckpt" / "learner.json").read_text())["step"] == 1
    assert all(torch.equal(final[k], ckpt[k]) for k in ckpt if k in final)
    again = rl_api.run_rl(run, resume=True)  # finished: handed back, not run past the alarm
    assert again["stopped_at_alarm"] == result["stopped_at_alarm"]
    assert [r["step"] for r in rl_api.read_metrics(out / "metrics.jsonl")] == [1, 2]
