"""``rl.overlap`` on a real local Ray: the rollout workers sample step t+1 while the learner takes
step t. The steps after the first and after a checkpoint sample on-policy, the others one version
behind and are weighted by truncated importance ratios; the policy still learns the toy reward; a
crashed run resumes to the numbers of an unbroken one; a sample taken by a step hook in between
uses the latest weights. In-process: off-policy weighting of on-policy samples is the plain
REINFORCE step."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from actors import rl as rl_api
from actors.rl import RLRun
from actors.learner import PolicyLearner
from tests.test_rl import count_the, mean, rl_config, toy_samples  # noqa: F401 (a fixture)
from tests.test_rl_actors import Crash, assert_same_run
from warm_ray.config import RLConfig

# 15 steps with a checkpoint after step 10: steps 1 and 11 sample on-policy, the others one step behind
OFF_POLICY = [step not in (1, 11) for step in range(1, 16)]


def overlap_config(prepared_cfg):
    return rl_config(prepared_cfg, overlap=True, checkpoint_every=10)


@pytest.fixture(scope="module")
def unbroken(prepared, ray_local, tmp_path_factory):
    """An overlapped run of 15 steps whose step hook samples at step 5; returns (out, hook samples)."""
    out = tmp_path_factory.mktemp("overlap_unbroken")
    seen = {}

    def on_step(step, record, group):
        if step == 5:  # queued behind step 6's sampling on the worker, after step 5's sync
            seen["samples"] = group.sample(["the"], 2, 4, 0.9, seed=1)
            seen["version"] = group.version

    rl_api.run_rl(RLRun.of(overlap_config(prepared[0]), out, reward="count_the", fn=count_the), on_step=on_step)
    return out, seen


def test_overlapped_samples_are_one_version_behind_and_still_learn(unbroken):
    out, seen = unbroken
    records = rl_api.read_metrics(out / "metrics.jsonl")
    assert [r["off_policy"] for r in records] == OFF_POLICY
    first, last = mean([r["proxy_reward"] for r in records[:5]]), mean([r["proxy_reward"] for r in records[-5:]])
    assert last > first + 0.5, (first, last)
    on = [r for r in records if not r["off_policy"]]
    off = [r for r in records if r["off_policy"]]
    # on-policy steps: the sampler's logprobs are the learner's; one step behind they are not
    assert max(r["logprob_gap"] for r in on) < 1e-3 and all(r["is_weight"] == 1.0 for r in on)
    assert min(r["logprob_gap"] for r in off) > 1e-3
    assert all(0 < r["is_weight"] <= 2.0 and r["is_weight"] != 1.0 for r in off)
    # the hook's sampling ran after the step's sync: the latest weights, not the prefetch's
    assert {s.policy_version for s in seen["samples"]} == {seen["version"]}


def test_an_overlapped_run_resumes_to_the_numbers_of_an_unbroken_one(prepared, ray_local, tmp_path, unbroken):
    cfg = overlap_config(prepared[0])

    def crash(step, record, group):
        if step == 12:
            raise Crash("simulated crash after step 12")

    with pytest.raises(Crash):
        rl_api.run_rl(RLRun.of(cfg, tmp_path, reward="count_the", fn=count_the), on_step=crash)
    result = rl_api.run_rl(RLRun.of(cfg, tmp_path, reward="count_the", fn=count_the), resume=True)
    assert result["resumed_from"] == 10
    assert_same_run(tmp_path, unbroken[0], ignored=("policy_version",))


def test_off_policy_weighting_of_on_policy_samples_is_the_plain_step(prepared, toy_samples):
    rewards = count_the([], [s.completion for s in toy_samples])
    cfg = RLConfig(samples_per_prompt=4, lr=1e-3, beta=0.1)
    plain, weighted = PolicyLearner(prepared[1]["policy"], cfg), PolicyLearner(prepared[1]["policy"], cfg)
    init = torch.cat([v.flatten() for v in plain.get_weights().values()])
    a, b = plain.learn(toy_samples, rewards), weighted.learn(toy_samples, rewards, off_policy=True)
    # the sampler's logprobs equal the learner's to float32 rounding: ratios of 1, the same loss
    assert a["is_weight"] == 1.0 and b["is_weight"] == pytest.approx(1.0, abs=1e-4)
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    # and the same step (Adam divides by the gradient's size, so rounding shows on parameters
    # whose gradient is ~0: compared as vectors)
    pa, pb = (torch.cat([v.flatten() for v in p.get_weights().values()]) for p in (plain, weighted))
    assert (pa - pb).norm() < 0.01 * (pa - init).norm()
    # the same samples a step later are stale: their weights move off 1, capped
    capped = PolicyLearner(prepared[1]["policy"], RLConfig(samples_per_prompt=4, lr=1e-2, beta=0.1, is_cap=1.0))
    capped.learn(toy_samples, rewards)
    stale = capped.learn(toy_samples, rewards, off_policy=True)
    assert stale["is_weight"] < 1.0 and stale["is_capped"] > 0


def test_the_off_policy_settings_are_in_the_fingerprint_only_when_they_act(prepared):
    cfg = prepared[0]

    def fp(**rl):
        run = RLRun.of(cfg, "unused", rl=dataclasses.replace(cfg.rl, **rl), reward="count_the", fn=count_the)
        return run.fingerprint()

    assert fp(is_cap=5.0) == fp()  # on-policy: the cap is never used (and older runs keep their fingerprint)
    assert fp(overlap=True) != fp()
    assert fp(overlap=True, is_cap=5.0) != fp(overlap=True)


@pytest.mark.vllm
def test_overlap_with_the_vllm_backend(prepared, ray_local, tmp_path):
    """vLLM workers too: a weight load sent while a step's sampling is in flight waits for it."""
    cfg = rl_config(prepared[0], backend="vllm", overlap=True, steps=5, checkpoint_every=3)
    rl_api.run_rl(RLRun.of(cfg, tmp_path, reward="count_the", fn=count_the))
    records = rl_api.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["off_policy"] for r in records] == [False, True, True, False, True]
    assert max(r["logprob_gap"] for r in records if not r["off_policy"]) < 1e-3
    assert all(0 < r["is_weight"] <= 2.0 for r in records)
