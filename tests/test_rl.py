"""RLHF on a real local Ray: REINFORCE learns a toy reward with both rollout backends, the EMA
anchor follows WARP's update exactly, a killed rollout worker is replaced, a crashed run resumes
from its checkpoint, and the WARM-vs-single comparison runs on a tiny WARM run."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch

from actors import rlhf
from actors.learner import PolicyLearner, load_checkpoint
from actors.rollout import HFBackend
from warm_ray.config import Config, RLConfig, WarmConfig

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
    return [r["step"] for r in rlhf.read_metrics(out_dir / "metrics.jsonl")]


def mean(xs) -> float:
    return sum(xs) / len(xs)


# ------------------------------------------------------------------------------------------
# REINFORCE raises a toy reward, with either rollout backend
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_reinforce_raises_a_toy_reward(prepared, ray_local, tmp_path, backend):
    cfg = rl_config(prepared[0], backend=backend)
    result = rlhf.run_rl(cfg, "count_the", tmp_path, reward_fn=count_the)
    records = rlhf.read_metrics(tmp_path / "metrics.jsonl")
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
            versions[step] = group.get_versions()
        if step == 4:
            raise Crash("simulated crash after step 4")

    with pytest.raises(Crash):
        rlhf.run_rl(cfg, "count_the", out, reward_fn=count_the, on_step=on_step)
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
    result = rlhf.run_rl(cfg, "count_the", out, resume=True, reward_fn=count_the,
                         on_step=lambda step, record, group: resumed.append(step))
    assert result["resumed_from"] == 3
    assert resumed == [4, 5, 6]  # continues at step 4, from the checkpoint of step 3
    assert steps_of(out) == [1, 2, 3, 4, 5, 6]  # each step once
    records = rlhf.read_metrics(out / "metrics.jsonl")
    assert records[:3] == [crashed[s] for s in (1, 2, 3)]  # history before the checkpoint kept
    # same weights, Adam state and sampling seeds: step 4 is redone exactly as before the crash
    assert records[3]["proxy_reward"] == pytest.approx(crashed[4]["proxy_reward"], abs=1e-6)
    assert records[3]["kl_sft"] == pytest.approx(crashed[4]["kl_sft"], abs=1e-5)
    assert load_checkpoint(out / "ckpt")[0]["step"] == 6
    # a finished run is not redone
    assert rlhf.run_rl(cfg, "count_the", out, resume=True, reward_fn=count_the)["resumed_from"] == 3


# ------------------------------------------------------------------------------------------
# A tiny WARM run as the reward: `warm-ray rl` end to end
# ------------------------------------------------------------------------------------------


def test_warm_ray_rl_compares_warm_with_a_single_rm(prepared, ray_local, tmp_path):
    """`warm-ray rl` on a tiny WARM run: both RL runs log proxy and gold rewards, then the table."""
    from actors.warm import run_warm
    from warm_ray.cli import main

    prepared_cfg, summary = prepared
    (tmp_path / "prepare").symlink_to(Path(summary["policy"]).parents[1])  # share prepare, own warm/
    cfg = dataclasses.replace(prepared_cfg, run_dir=str(tmp_path))
    cfg.warm = WarmConfig(m=2, epochs=1, batch_size=16, checkpoint_every=50, log_every=50, lp_epochs=5,
                          lmc_points=2)
    run_warm(cfg)
    rl = ["rl.steps=2", "rl.prompts_per_step=4", "rl.checkpoint_every=2", "rl.n_eval_prompts=8",
          "rl.max_new_tokens=12"]
    assert main(["rl", "--run-dir", str(tmp_path), *(x for o in rl for x in ("--set", o))]) == 0
    rl_dir = tmp_path / "rl"
    for kind in ("warm", "single"):
        records = rlhf.read_metrics(rl_dir / kind / "metrics.jsonl")
        assert [r["step"] for r in records] == [1, 2]
        assert all(math.isfinite(r["proxy_reward"]) and math.isfinite(r["gold_reward"]) for r in records)
        assert (rl_dir / kind / "policy" / "config.json").exists()
        assert (rl_dir / kind / "config.yaml").exists()
    # same prompts and sampling seeds in both runs: their first batches (from SFT) are identical
    first = {k: rlhf.read_metrics(rl_dir / k / "metrics.jsonl")[0] for k in ("warm", "single")}
    assert first["warm"]["gold_reward"] == first["single"]["gold_reward"]
    assert first["warm"]["proxy_reward"] != first["single"]["proxy_reward"]  # ...scored by different RMs
    results = json.loads((rl_dir / "results.json").read_text())
    assert set(results["win_rates"]) == {"WARM vs single RM", "WARM vs SFT", "single RM vs SFT"}
    assert all(0 <= w["win_rate"] <= 1 and w["n"] == 8 for w in results["win_rates"].values())
    assert set(results["policies"]) == {"sft", "single", "warm"}
    assert (rl_dir / "curves.png").stat().st_size > 1000
    assert "| WARM vs single RM |" in (rl_dir / "results.md").read_text()
    assert set(json.loads((rl_dir / "curves.json").read_text())) == {"warm", "single"}
