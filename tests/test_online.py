"""Online WARM (rl.online) on a real local Ray and the tiny WARM run: the scorer's weights change exactly at
refresh steps and equal the parameter server's average of the refreshed members; labels come from gold;
a member trainer killed mid-refresh leaves the run on the previous version; a resumed run equals an
unbroken one."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import ray
import torch

from actors import rl as rl_api
from actors.learner import load_checkpoint
from actors.parameter_server import ParameterServer
from actors.rl import RLRun
from actors.rl.online import label_pairs
from tests.test_rl import rl_config, shared_warm_run
from warm_ray import merge
from warm_ray.config import ConfigError, OnlineConfig, load_config
from warm_ray.gold import gold_rewards
from warm_ray.models import load_reward_model, load_state_dict

TIMEOUT = 300


class Crash(Exception):
    pass


def online_config(warm_trained, tmp_path, steps=4, **online):
    cfg = shared_warm_run(warm_trained, tmp_path)
    on = OnlineConfig(**{"every": 2, "pairs": 6, "steps": 2, "batch_size": 4, "lr": 1e-3, "label_noise": 0.0,
                         **online})
    cfg = rl_config(cfg, tmp_path, steps=steps, prompts_per_step=4, samples_per_prompt=2, max_new_tokens=8,
                    checkpoint_every=2, reference_samples=8, monitor_every=0)
    return dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, online=on))


def test_label_pairs_take_two_samples_of_a_prompt_and_flip_the_declared_share():
    prompts = ["a", "a", "b", "b", "c", "c", "d", "d"]
    texts = ["x", "y", "x", "x", "u", "v", "p", "q"]
    scores = [1.0, 2.0, 0.0, 0.0, 3.0, 3.0, 5.0, -1.0]
    rows, counts = label_pairs(prompts, texts, scores, budget=10, noise=0.0, rng=random.Random(0))
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [("a", "y", "x"), ("d", "p", "q")]
    assert counts == {"labels": 2, "flipped": 0, "ties_skipped": 2}  # same text, same score: no label
    assert len(label_pairs(prompts, texts, scores, budget=1, noise=0.0, rng=random.Random(0))[0]) == 1
    many = label_pairs(["p"] * 2000, [str(i) for i in range(2000)], list(range(2000)), 1000, 0.25,
                       random.Random(1))[0]
    share = sum(r["flipped"] for r in many) / len(many)
    assert 0.2 < share < 0.3
    assert all((int(r["chosen"]) > int(r["rejected"])) != r["flipped"] for r in many)


def test_online_needs_a_refreshable_reward():
    with pytest.raises(ConfigError, match="rl.online.every"):
        load_config(None, ["rl.reward=ens", "rl.online.every=5"])
    with pytest.raises(ConfigError, match="rl.online.mix"):
        load_config(None, ["rl.online.mix=1.0"])


@pytest.fixture(scope="module")
def online_runs(warm_trained, ray_local, tmp_path_factory):
    """An unbroken online run (4 steps, a refresh at steps 2 and 4), and the same run crashed after
    step 3 (checkpoint at step 2, with version 1) then resumed."""
    root = tmp_path_factory.mktemp("online")
    unbroken = root / "unbroken"
    unbroken.mkdir()
    cfg = online_config(warm_trained, unbroken)
    scorer = rl_api.proxy_scorer(cfg, "warm", placement="driver")
    seen: dict[int, dict] = {}

    def on_step(step, record, group):  # the scorer's weights and version after each step
        seen[step] = {"version": scorer.version(),
                      "weights": {k: v.clone() for k, v in scorer.models[0].state_dict().items()}}

    summary = rl_api.run_rl(RLRun.of(cfg, unbroken / "out", reward="warm", scorer=scorer), on_step=on_step)

    broken = root / "broken"
    broken.mkdir()
    cfg_b = online_config(warm_trained, broken)

    def crash(step, record, group):
        if step == 3:
            raise Crash("after step 3")

    with pytest.raises(Crash):
        rl_api.run_rl(RLRun.of(cfg_b, broken / "out", reward="warm"), on_step=crash)
    resumed = rl_api.run_rl(RLRun.of(cfg_b, broken / "out", reward="warm"), resume=True)
    return {"cfg": cfg, "out": unbroken / "out", "summary": summary, "seen": seen, "scorer": scorer,
            "broken": broken / "out", "resumed": resumed}


def test_scorer_weights_change_exactly_at_refresh_steps(online_runs):
    seen, out = online_runs["seen"], online_runs["out"]
    records = rl_api.read_metrics(out / "metrics.jsonl")
    # the version that scored each step: 0 until the refresh of step 2 is published, then 1; step 4's refresh: 2
    assert [r["reward_version"] for r in records] == [0, 0, 1, 1]
    assert [r.get("refresh", {}).get("version") for r in records] == [None, 1, None, 2]
    assert [seen[s]["version"] for s in (1, 2, 3, 4)] == [0, 1, 1, 2]
    w = [seen[s]["weights"] for s in (1, 2, 3, 4)]

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    assert same(w[1], w[2]) and not same(w[0], w[1]) and not same(w[2], w[3])
    # version 2 is the parameter server's uniform average of the refreshed members, as snapshotted
    snap = out / "online" / "v2"
    members = [load_state_dict(p) for p in sorted(snap.glob("member_*.safetensors"))]
    assert len(members) == 2
    average = merge.average(members)
    assert all(torch.allclose(w[3][k], average[k], atol=1e-6) for k in w[3])
    # ...and the members moved from what `warm-ray warm` trained
    warm_dir = Path(online_runs["cfg"].run_dir) / "warm"
    first = load_reward_model(warm_dir / "members" / "member_0" / "final").state_dict()
    assert not all(torch.equal(first[k], members[0][k]) for k in first)
    # the summary and the card list the versions with their label counts
    s = online_runs["summary"]["online"]
    assert [v["version"] for v in s["versions"]] == [1, 2] and s["labels"] == sum(v["labels"] for v in s["versions"])
    assert all(0 < v["labels"] <= 6 for v in s["versions"])
    card = (out / "policy" / "README.md").read_text()
    assert "version 1: refreshed at step 2" in card and "version 2: refreshed at step 4" in card


def test_labels_come_from_gold(online_runs):
    out = online_runs["out"]
    for v in (1, 2):
        rows = [json.loads(line) for line in (out / "online" / f"v{v}" / "pairs.jsonl").read_text().splitlines()]
        gold_c = gold_rewards([r["chosen"] for r in rows], [r["prompt"] for r in rows])
        gold_r = gold_rewards([r["rejected"] for r in rows], [r["prompt"] for r in rows])
        assert all(c > r for c, r in zip(gold_c, gold_r))  # no noise here: every label is gold's
    versions = json.loads((out / "online" / "versions.json").read_text())
    assert versions["labeller"] == "the benchmark's gold reward" and versions["version"] == 2


def test_a_resumed_online_run_equals_an_unbroken_one(online_runs):
    a = rl_api.read_metrics(online_runs["out"] / "metrics.jsonl")
    b = rl_api.read_metrics(online_runs["broken"] / "metrics.jsonl")
    assert online_runs["resumed"]["resumed_from"] == 2
    assert load_checkpoint(online_runs["broken"] / "ckpt")[1]["reward_version"] == 2
    for ra, rb in zip(a, b, strict=True):
        assert ra["reward_version"] == rb["reward_version"]
        assert ra["proxy_reward"] == pytest.approx(rb["proxy_reward"], abs=1e-5)
        assert ra["kl_sft"] == pytest.approx(rb["kl_sft"], abs=1e-5)
    for v in (1, 2):
        for f in sorted((online_runs["out"] / "online" / f"v{v}").glob("member_*.safetensors")):
            x, y = load_state_dict(f), load_state_dict(online_runs["broken"] / "online" / f"v{v}" / f.name)
            assert all(torch.allclose(x[k], y[k], atol=1e-6) for k in x)


def test_a_trainer_killed_mid_refresh_leaves_the_previous_version(warm_trained, ray_local, tmp_path):
    cfg = online_config(warm_trained, tmp_path, steps=4)
    killed = []

    def kill_one(refresher, step):  # right after the refresh's training is sent: a real actor kill
        if step == 2:  # its refresh task is sent and not finished (a few steps of training take far longer)
            ray.kill(refresher.trainers["0"], no_restart=True)
            killed.append(step)

    summary = rl_api.run_rl(RLRun.of(cfg, tmp_path / "out", reward="warm", on_refresh=kill_one))
    records = rl_api.read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert killed and [r["step"] for r in records] == [1, 2, 3, 4]  # the run went on
    assert "died" in records[1]["refresh"]["outcome"] and records[1]["refresh"].get("version") is None
    assert [r["reward_version"] for r in records] == [0, 0, 0, 0]  # steps 3-4 scored by the previous version
    assert records[3]["refresh"]["outcome"] == "published" and records[3]["refresh"]["version"] == 1
    assert summary["online"]["version"] == 1 and summary["online"]["trainers_started"] == 3  # one new trainer


def test_parameter_server_publishes_a_refresh_whole_or_not_at_all(tmp_path):
    ps = ParameterServer(str(tmp_path / "ps"))
    a = {"w": torch.zeros(3)}
    ps.push("0", a)
    ps.push("1", {"w": torch.ones(3)})
    v = ps.version
    ps.stage(1, "0", {"w": torch.full((3,), 2.0)})
    assert ps.publish(1, ["0", "1"])["published"] is False and ps.version == v  # member 1 staged nothing
    assert torch.equal(ps.get_weights()["w"], torch.full((3,), 0.5))
    assert ps.stage(2, "0", {"w": torch.tensor([float("nan"), 0, 0])}) is False
    ps.stage(3, "0", {"w": torch.full((3,), 2.0)})
    ps.stage(3, "1", {"w": torch.full((3,), 4.0)})
    assert ps.publish(3, ["0", "1"]) == {"published": True, "missing": [], "version": v + 1}
    assert torch.equal(ps.get_weights()["w"], torch.full((3,), 3.0))
    ps.snapshot(str(tmp_path / "snap"))
    ps.stage(4, "0", {"w": torch.zeros(3)})
    ps.stage(4, "1", {"w": torch.zeros(3)})
    ps.publish(4, ["0", "1"])
    ps.load_snapshot(str(tmp_path / "snap"))
    assert torch.equal(ps.get_weights()["w"], torch.full((3,), 3.0))


def test_labels_on_your_data_come_from_the_judge_never_a_proxy():
    from actors.rl.spec import online_labeller
    from warm_ray.config import UserError
    from warm_ray.sources import PolicySource

    yours = PolicySource("sft", {"train": [], "eval": []}, "fp", gold=False)
    cfg = load_config(None, ["rl.online.every=5"])
    with pytest.raises(UserError, match="study.judge"):
        online_labeller(cfg, cfg.rl, yours, {})
    judged = load_config(None, ["rl.online.every=5", "study.judge=benchmark", "study.label_noise=0.1"])
    lab = online_labeller(judged, judged.rl, yours, {"corruption_rate": 0.25})
    assert lab.name.startswith("the judge") and lab.noise == 0.1  # the members' own noise: the study's
    assert lab.fn(["The sea"], [" was calm and bright."]) == gold_rewards([" was calm and bright."], ["The sea"])
    bench = online_labeller(cfg, cfg.rl, dataclasses.replace(yours, gold=True), {"corruption_rate": 0.25})
    assert bench.name == "the benchmark's gold reward" and bench.noise == 0.25


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_member_refresh_trains_in_float32_weights_under_the_configured_autocast(warm_trained, dtype):
    """The trainer's training step without Ray: bf16 autocast (GPU's dtype) runs on CPU too, the weights stay
    float32, the same arguments give the same weights, and the loss on the new pairs falls."""
    from actors.rl.online import OnlineMemberTrainer
    from warm_ray.data import load_splits

    cfg0, _ = warm_trained
    warm_dir = Path(cfg0.run_dir) / "warm"
    data_dir = json.loads((Path(cfg0.run_dir) / "prepare" / "prepare.json").read_text())["data"]
    data_dir = str(Path(cfg0.run_dir) / data_dir) if not Path(data_dir).is_absolute() else data_dir
    trainer = OnlineMemberTrainer("0", str(warm_dir / "members" / "member_0" / "final"), data_dir, 32, "cpu", dtype)
    start = trainer.weights()
    pairs = load_splits(data_dir)["selection"][:8]
    settings = {"steps": 10, "batch_size": 4, "mix": 0.5, "lr": 1e-4}
    out = trainer.train(start, pairs, settings, seed=3)
    first = trainer.weights()
    assert all(v.dtype == torch.float32 for v in first.values())
    assert not all(torch.equal(first[k], start[k]) for k in start)
    trainer.train(start, pairs, settings, seed=3)
    assert all(torch.equal(first[k], trainer.weights()[k]) for k in first)  # a function of its arguments
    assert trainer.autocast == (torch.bfloat16 if dtype == "bfloat16" else None)
    assert 0 <= out["new_pair_accuracy"] <= 1

    def loss_on_pairs(weights):
        from warm_ray.reward import bradley_terry_loss, pair_rewards

        trainer.model.load_state_dict(weights)
        trainer.model.eval()
        with torch.no_grad():
            return float(bradley_terry_loss(*pair_rewards(trainer.model, trainer.tokenizer, pairs, 32)))

    assert loss_on_pairs(first) < loss_on_pairs(start)  # the member learnt the new pairs
