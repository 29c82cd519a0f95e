"""RL runs that reuse a slot of actors (``actors.rl_api.RLActors``) on a real local Ray: a run on a
slot that has run something else gives the numbers of the same run on new actors, also when it
resumes from a checkpoint; its fingerprint does not change; a dead actor is replaced, a run that
fails ends the slot's actors, and a rollout worker that Ray restarts after a reset samples the
reset's policy, not the one it was built with."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import ray
import torch

from actors import rl as rl_api
from actors.rl import RLRun
from actors.learner import PolicyLearner
from actors.rollout import HFBackend, RolloutWorkerGroup
from tests.conftest import cpus_free, worker_versions
from tests.test_rl import count_the, rl_config
from warm_ray import models as M
from warm_ray import rundir
from warm_ray.config import Config
from warm_ray.sources import load_prompts

TIMEOUT = 300


class Crash(RuntimeError):
    pass


def run_config(prepared_cfg: Config, backend: str) -> Config:
    """The run compared: a moving-average baseline (state a reused learner must forget), checkpoints."""
    return rl_config(prepared_cfg, steps=4, prompts_per_step=4, samples_per_prompt=2, max_new_tokens=8, lr=2e-3,
                     baseline="ema", checkpoint_every=2, seed=3, backend=backend)


def other_config(cfg: Config) -> Config:
    """A different run for the slot to hold first: other seed, lr, β, anchor (EMA) and engine seed."""
    return dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, steps=3, seed=11, lr=5e-3, beta=0.1,
                                                           anchor="ema", ema_mu=0.3))


def numbers(out: Path, ignored: tuple[str, ...] = ()) -> list[dict]:
    """metrics.jsonl less what is timed (and ``ignored``)."""
    return [{k: v for k, v in r.items() if not k.startswith("t_") and k not in ("tokens_per_s", *ignored)}
            for r in rl_api.read_metrics(out / "metrics.jsonl")]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return M.load_policy(out / "policy").state_dict()


def assert_same_run(out: Path, reference: Path, ignored: tuple[str, ...] = ()) -> None:
    """Every logged number equal to the last bit, the same final weights, the same fingerprint."""
    assert numbers(out, ignored) == numbers(reference, ignored)
    got, want = weights(out), weights(reference)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert rundir.read_json(out / rundir.MARKER)["fingerprint"] == rundir.read_json(reference / rundir.MARKER)["fingerprint"]


@pytest.mark.parametrize("backend", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_a_reused_slot_gives_the_run_new_actors_give(prepared, ray_local, tmp_path, backend):
    cfg = run_config(prepared[0], backend)
    rl_api.run_rl(RLRun.of(cfg, tmp_path / "fresh", reward="count_the", fn=count_the))  # new actors, ended by the run

    def crash(step, record, group):
        if step == 3:
            raise Crash("simulated crash after step 3")

    with pytest.raises(Crash):  # new actors too; its checkpoint is step 2's
        rl_api.run_rl(RLRun.of(cfg, tmp_path / "resumed", reward="count_the", fn=count_the), on_step=crash)

    with rl_api.RLActors() as slot:
        init = prepared[1]["checkpoints"][0]  # another init policy than the SFT one
        rl_api.run_rl(RLRun.of(other_config(cfg), tmp_path / "other", reward="count_the", fn=count_the, init_dir=init),
                      actors=slot)
        rl_api.run_rl(RLRun.of(cfg, tmp_path / "reused", reward="count_the", fn=count_the), actors=slot)
        assert_same_run(tmp_path / "reused", tmp_path / "fresh")
        # a resume on the reused slot: the checkpoint's weights, Adam state and baseline, then the same steps
        result = rl_api.run_rl(RLRun.of(cfg, tmp_path / "resumed", reward="count_the", fn=count_the), resume=True,
                               actors=slot)
        assert result["resumed_from"] == 2
        # (a resumed run counts weight versions from its resume: one sync fewer than an unbroken run)
        assert_same_run(tmp_path / "resumed", tmp_path / "fresh", ignored=("policy_version",))
        # the run after a reset starts from its own init policy (not the one the slot was built from)
        assert numbers(tmp_path / "other")[0] != numbers(tmp_path / "fresh")[0]
        assert (slot.learners_started, slot.groups_started) == (1, 1)
        assert ray.get(slot.learner.__ray_ready__.remote(), timeout=TIMEOUT)  # left running for the next run
    assert slot.learner is None and slot.group is None
    assert cpus_free(2.0)


def test_a_dead_actor_is_replaced_and_a_failed_run_ends_the_slot(prepared, ray_local, tmp_path):
    cfg = run_config(prepared[0], "hf")
    rl_api.run_rl(RLRun.of(cfg, tmp_path / "fresh", reward="count_the", fn=count_the))
    slot = rl_api.RLActors()
    try:
        rl_api.run_rl(RLRun.of(other_config(cfg), tmp_path / "other", reward="count_the", fn=count_the), actors=slot)
        ray.kill(slot.learner, no_restart=True)
        ray.kill(slot.group.workers[0], no_restart=True)
        rl_api.run_rl(RLRun.of(cfg, tmp_path / "replaced", reward="count_the", fn=count_the), actors=slot)
        assert (slot.learners_started, slot.groups_started) == (2, 2)
        assert_same_run(tmp_path / "replaced", tmp_path / "fresh")

        def crash(step, record, group):
            raise Crash("simulated crash after step 1")

        with pytest.raises(Crash):
            rl_api.run_rl(RLRun.of(cfg, tmp_path / "crashed", reward="count_the", fn=count_the), actors=slot,
                          on_step=crash)
        # the failed run's actors may be mid-task: ended; the slot's next run starts new ones
        assert slot.learner is None and slot.group is None
        assert cpus_free(2.0)
        rl_api.run_rl(RLRun.of(cfg, tmp_path / "after", reward="count_the", fn=count_the), actors=slot)
        assert slot.learners_started == 3
        assert_same_run(tmp_path / "after", tmp_path / "fresh")
    finally:
        slot.shutdown()


def test_learner_reset_is_a_new_learner(prepared):
    """In one process: after a step of another run, ``reset`` gives the state of a new learner."""
    sft = prepared[1]["policy"]
    cfg = run_config(prepared[0], "hf").rl
    backend = HFBackend(sft)
    samples = backend.generate(load_prompts(prepared[1])["train"][:4], n=2, max_new_tokens=8, temperature=1.0, seed=0)
    backend.shutdown()
    rewards = count_the([], [s.completion for s in samples])
    used = PolicyLearner(sft, dataclasses.replace(cfg, anchor="ema", lr=1e-2), init_dir=prepared[1]["checkpoints"][0])
    used.learn(samples, rewards)
    used.reset(sft, cfg)
    new = PolicyLearner(sft, cfg)
    assert (used.step, used.baseline_value, used.anchor is used.sft) == (0, None, True)
    assert not used.optimizer.state and used.optimizer.param_groups[0]["lr"] == cfg.lr
    for _ in range(2):  # two steps: Adam's moments and the moving-average baseline carry over
        assert used.learn(samples, rewards) == new.learn(samples, rewards)
    assert all(torch.equal(v, new.get_weights()[k]) for k, v in used.get_weights().items())


def test_a_worker_restarted_after_a_reset_samples_the_reset_policy(prepared, ray_local):
    built_from, reset_to = prepared[1]["policy"], prepared[1]["checkpoints"][0]
    prompts = load_prompts(prepared[1])["train"][:4]
    args = (prompts, 2, 8, 1.0)
    group = RolloutWorkerGroup(1, "hf", built_from, resources={"num_cpus": 0.5}, timeout_s=TIMEOUT)
    fresh = RolloutWorkerGroup(1, "hf", reset_to, resources={"num_cpus": 0.5}, timeout_s=TIMEOUT)
    try:
        group.sync_weights(M.load_policy(built_from).state_dict())  # a run's step: version 1
        group.reset(M.load_policy(reset_to).state_dict())
        assert worker_versions(group) == [0]  # the run's versions count from 0 again
        # Ray restarts the worker with the policy it was built with, at version 0: told apart, re-synced
        worker = group.workers[0]
        ray.kill(worker, no_restart=False)
        deadline = time.monotonic() + TIMEOUT
        while True:  # until the restarted worker answers (a kill is asynchronous; sampling must reach it)
            try:
                if ray.get(worker.get_version.remote(), timeout=TIMEOUT) == 0:
                    break
            except ray.exceptions.RayActorError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        got, want = group.sample(*args, seed=5), fresh.sample(*args, seed=5)
        assert [(s.completion_ids, s.logprobs) for s in got] == [(s.completion_ids, s.logprobs) for s in want]
        assert group.sync_weights(M.load_policy(reset_to).state_dict()) == 1
    finally:
        group.shutdown()
        fresh.shutdown()


def test_workers_asked_for_without_waiting_fail_or_serve_when_waited_for(prepared, ray_local):
    """``wait=False`` returns before the workers have started: a constructor that fails (a policy
    dir that is not there) raises at ``wait_ready``, not when the group is made."""
    bad = RolloutWorkerGroup(1, "hf", "/nonexistent/policy", resources={"num_cpus": 0.5}, max_restarts=0,
                             timeout_s=TIMEOUT, wait=False)
    try:
        with pytest.raises(ray.exceptions.RayActorError):
            bad.wait_ready()
    finally:
        bad.shutdown()
    group = RolloutWorkerGroup(1, "hf", prepared[1]["policy"], resources={"num_cpus": 0.5}, timeout_s=TIMEOUT,
                               wait=False)
    try:
        group.wait_ready()
        assert worker_versions(group) == [0] and len(group.sample(["the"], 2, 4, 0.9, seed=0)) == 2
    finally:
        group.shutdown()
    assert cpus_free(2.0)


def test_a_reward_that_fails_to_set_up_ends_the_actors_started_beside_it(prepared, ray_local, tmp_path):
    """The actors start while the driver loads the reward models: a run whose reward cannot be
    built (no WARM run in this run dir) leaves no actor behind."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "prepare").symlink_to(Path(prepared[0].run_dir) / "prepare")  # prepare's outputs only
    cfg = dataclasses.replace(run_config(prepared[0], "hf"), run_dir=str(run))
    with pytest.raises(Exception, match="warm"):
        rl_api.run_rl(RLRun.of(cfg, run / "rl", reward="warm"))
    assert cpus_free(2.0)
