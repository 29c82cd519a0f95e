"""Reward modes (WARM, single, ENS, WCO, UWO) and the disagreement alarm, on tiny real RMs."""

import json
import math

import numpy as np
import pytest
import torch

from warm_ray import ensemble as E
from warm_ray import models as M
from warm_ray.data import corpus
from warm_ray.reward import RewardScorer, head_module

from .conftest import warm_run_scorer

N_MEMBERS = 3

# ------------------------------------------------------------------------------------------
# Formulas on crafted score matrices
# ------------------------------------------------------------------------------------------


def test_normaliser_gives_each_member_mean_0_std_1_on_the_reference_and_round_trips():
    gen = torch.Generator().manual_seed(0)
    # members on very different scales and offsets, one constant
    raw = torch.randn(4, 200, generator=gen) * torch.tensor([[1.0], [10.0], [0.01], [0.0]]) \
        + torch.tensor([[0.0], [-5.0], [3.0], [7.0]])
    norm = E.Normaliser.fit(raw)
    z = norm.apply(raw)
    assert torch.allclose(z[:3].mean(1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z[:3].std(1, unbiased=False), torch.ones(3), atol=1e-4)
    assert torch.isfinite(z).all() and torch.equal(z[3], torch.zeros(200))  # constant: clamped std
    again = E.Normaliser.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert again == norm and torch.equal(again.apply(raw), z)
    with pytest.raises(ValueError, match="4 members"):
        norm.apply(raw[:2])


def test_each_mode_is_its_formula():
    s = torch.tensor([[1.0, -2.0, 0.5],
                      [3.0, 0.0, 0.5],
                      [2.0, 4.0, 0.5]])  # [M=3, N=3]
    assert E.combine(s, "ens").tolist() == pytest.approx([2.0, 2 / 3, 0.5])
    assert E.combine(s, "wco").tolist() == pytest.approx([1.0, -2.0, 0.5])
    # population variance across members: sample 0 is (1+1+0)/3, sample 1 is (64/9+4/9+100/9)/3
    var = [2 / 3, 168 / 27, 0.0]
    assert E.combine(s, "uwo", uwo_lambda=0.5).tolist() == pytest.approx([2 - var[0] / 2, 2 / 3 - var[1] / 2, 0.5])
    assert E.combine(s, "uwo", uwo_lambda=0.0).tolist() == pytest.approx(E.combine(s, "ens").tolist())
    assert E.combine(s[1:2], "single").tolist() == [3.0, 0.0, 0.5]
    assert E.combine(s[1:2], "warm").tolist() == [3.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="one model"):
        E.combine(s, "single")
    with pytest.raises(ValueError, match="uwo_lambda"):
        E.combine(s, "uwo")
    with pytest.raises(ValueError, match="unknown reward mode"):
        E.combine(s, "mean")
    assert [E.forward_passes(m, 5) for m in E.REWARD_MODES] == [1, 1, 5, 5, 5]


def test_disagreement_metrics():
    agree = torch.tensor([[0.0, 1.0, 2.0, 3.0],
                          [0.0, 1.0, 2.0, 3.0]])
    d = E.disagreement(agree, warm=agree[0] + 0.5)
    assert d == {"spread": 0.0, "rank_agreement": pytest.approx(1.0), "warm_gap": pytest.approx(0.5)}
    # opposite rankings; population std of (a, b) across 2 members is |a - b| / 2
    opposite = torch.tensor([[0.0, 1.0, 2.0, 3.0],
                             [3.0, 2.0, 1.0, 0.0]])
    d = E.disagreement(opposite)
    assert d["rank_agreement"] == pytest.approx(-1.0)
    assert d["spread"] == pytest.approx((3 + 1 + 1 + 3) / 2 / 4)
    assert "warm_gap" not in d
    # a constant member ranks nothing: its pairs are left out, no NaN enters the mean
    with_constant = torch.cat([agree, torch.full((1, 4), 7.0)])
    assert E.rank_agreement(with_constant) == pytest.approx(1.0)
    assert math.isnan(E.rank_agreement(torch.ones(3, 4)))
    # ties share their average rank: Spearman of (1, 2, 2, 3) with (1, 2, 3, 4) is Pearson on ranks
    ties = torch.tensor([[1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    r1, r2 = torch.tensor([0.0, 1.5, 1.5, 3.0]), torch.tensor([0.0, 1.0, 2.0, 3.0])
    pearson = torch.corrcoef(torch.stack([r1, r2]))[0, 1]
    assert E.rank_agreement(ties) == pytest.approx(float(pearson))


def test_monitor_alarms_when_members_start_to_disagree_not_on_sft():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(1, 256, generator=gen)
    sft = base + 0.1 * torch.randn(N_MEMBERS, 256, generator=gen)  # members agree on SFT samples
    mon = E.DisagreementMonitor(threshold=2.0, every=5, max_samples=64)
    ref = mon.set_reference(sft)
    assert ref["spread"] == pytest.approx(mon.reference_spread)
    # a synthetic run: disagreement grows after step 20 (noise scale 0.1 → 0.1 + 0.05·(step - 20))
    alarms = {}
    for step in range(60):
        if not mon.should_check(step):
            continue
        if step == 0:
            scores = sft  # the SFT batch itself never alarms
        else:
            noise = 0.1 + 0.05 * max(0, step - 20)
            scores = base + noise * torch.randn(N_MEMBERS, 256, generator=gen)
        out = mon.update(step, scores)
        alarms[step] = out["alarm"]
        assert out["n_samples"] == 64 and out["spread_ratio"] == pytest.approx(out["spread"] / ref["spread"])
    assert alarms[0] is False and not any(alarms[s] for s in (5, 10, 15, 20))
    assert alarms[55] is True
    assert 20 < mon.first_alarm <= 55 and mon.first_alarm % 5 == 0
    assert mon.checks == 12 and mon.samples_scored == 12 * 64
    # the first alarm step is kept once set
    first = mon.first_alarm
    mon.update(60, sft)
    assert mon.first_alarm == first


def test_monitor_subsamples_deterministically_and_state_round_trips():
    mon = E.DisagreementMonitor(threshold=1.5, every=3, max_samples=8)
    assert mon.indices(100) == [0, 12, 25, 37, 50, 62, 75, 87]
    assert mon.indices(5) == [0, 1, 2, 3, 4]
    assert [s for s in range(10) if mon.should_check(s)] == [0, 3, 6, 9]
    assert not E.DisagreementMonitor(every=0).should_check(0)
    with pytest.raises(RuntimeError, match="set_reference"):
        mon.update(0, torch.zeros(2, 4))
    scores = torch.arange(200.0).reshape(2, 100)
    scores[1] = scores[1].flip(0)
    # the check sees only the subset: the same as scoring the 8 picked samples alone
    mon.set_reference(scores[:, mon.indices(100)] * 0.1)
    full = mon.update(3, scores)
    picked = E.disagreement(scores[:, mon.indices(100)])
    assert full["spread"] == pytest.approx(picked["spread"]) and full["alarm"] and mon.first_alarm == 3
    state = json.loads(json.dumps(mon.to_dict(), allow_nan=False))
    again = E.DisagreementMonitor.from_dict(state)
    assert again.to_dict() == mon.to_dict()
    assert again.update(6, scores)["spread_ratio"] == pytest.approx(full["spread_ratio"])
    # a reference whose rank agreement is undefined still writes strict JSON
    const = E.DisagreementMonitor()
    const.set_reference(torch.ones(2, 4))
    assert math.isnan(E.DisagreementMonitor.from_dict(json.loads(json.dumps(const.to_dict(), allow_nan=False)))
                      .reference["rank_agreement"])


# ------------------------------------------------------------------------------------------
# The scoring API on tiny real reward models
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def warm_dir(tmp_path_factory):
    """A `warm-ray warm`-shaped dir: members with nearby heads on one featurizer, and their average."""
    root = tmp_path_factory.mktemp("ensemble")
    tok = M.train_tokenizer(corpus()[:500], 512)
    cfg = M.tiny_policy_config(tok, n_layer=1, n_embd=32, n_head=2, n_positions=64)
    M.save_model(M.build_policy(cfg, seed=0), root / "sft", tok)
    shared = head_module(M.build_reward_model(root / "sft", seed=0)).weight.detach().clone()
    members = []
    for i in range(N_MEMBERS):
        rm = M.build_reward_model(root / "sft", seed=i)
        with torch.no_grad():  # a shared LP head plus a member-specific perturbation, as after FT
            noise = torch.randn(shared.shape, generator=torch.Generator().manual_seed(i))
            head_module(rm).weight.copy_(shared + 0.3 * shared.std() * noise)
        M.save_model(rm, root / "warm" / "members" / f"member_{i}" / "final", tok)
        members.append(rm)
    avg = {k: sum(m.state_dict()[k] for m in members) / N_MEMBERS for k in members[0].state_dict()}
    members[0].load_state_dict(avg)
    M.save_model(members[0], root / "warm" / "warm_rm", tok)
    return root / "warm"


SENTENCES = corpus()[500:540]
PROMPTS = [s[:12] for s in SENTENCES]
COMPLETIONS = [s[12:60] for s in SENTENCES]


def test_member_modes_normalise_then_combine(warm_dir):
    ref_p, ref_c = PROMPTS[:24], COMPLETIONS[:24]
    pol_p, pol_c = PROMPTS[24:], COMPLETIONS[24:]
    # each member alone, raw
    singles = torch.stack([torch.tensor(warm_run_scorer(warm_dir, kind="single", member=i)
                                        .score(pol_p, pol_c)) for i in range(N_MEMBERS)])
    ref_singles = torch.stack([torch.tensor(warm_run_scorer(warm_dir, kind="single", member=i)
                                            .score(ref_p, ref_c)) for i in range(N_MEMBERS)])
    mean, std = ref_singles.mean(1, keepdim=True), ref_singles.std(1, unbiased=False, keepdim=True)
    z = (singles - mean) / std  # [M, N] normalised by hand
    expected = {"ens": z.mean(0), "wco": z.min(0).values, "uwo": z.mean(0) - 0.7 * z.var(0, unbiased=False)}
    for mode, want in expected.items():
        scorer = warm_run_scorer(warm_dir, kind=mode, uwo_lambda=0.7)
        assert len(scorer.models) == N_MEMBERS and scorer.mode == mode
        norm = scorer.fit_normaliser(ref_p, ref_c)
        on_ref = norm.apply(scorer.member_scores(ref_p, ref_c))
        assert torch.allclose(on_ref.mean(1), torch.zeros(N_MEMBERS), atol=1e-4)
        assert torch.allclose(on_ref.std(1, unbiased=False), torch.ones(N_MEMBERS), atol=1e-4)
        assert torch.allclose(torch.tensor(scorer.score(pol_p, pol_c)), want, atol=1e-4), mode
        # the reward and the monitor can share one [M, N] member pass
        raw = scorer.member_scores(pol_p, pol_c)
        assert raw.shape == (N_MEMBERS, len(pol_p))
        assert torch.allclose(scorer.combine_raw(raw), want, atol=1e-4)
    assert not torch.allclose(expected["wco"], expected["ens"])  # the members do differ
    with pytest.raises(RuntimeError, match="fit_normaliser"):
        warm_run_scorer(warm_dir, kind="wco").score(pol_p, pol_c)
    with pytest.raises(ValueError, match="uwo_lambda"):
        warm_run_scorer(warm_dir, kind="uwo")
    with pytest.raises(ValueError, match="unknown reward mode"):
        warm_run_scorer(warm_dir, kind="best")


def test_default_scorer_is_unchanged_plain_mean_of_raw_scores(warm_dir):
    models = [M.load_reward_model(warm_dir / "members" / f"member_{i}" / "final") for i in range(2)]
    tok = M.load_tokenizer(warm_dir / "warm_rm")
    ens = RewardScorer(models, tok, max_length=64, name="ens")
    assert ens.mode == "ens"
    alone = [RewardScorer([m], tok, max_length=64).score(PROMPTS, COMPLETIONS) for m in models]
    assert RewardScorer([models[0]], tok, max_length=64).mode == "single"
    assert ens.score(PROMPTS, COMPLETIONS) == pytest.approx([(a + b) / 2 for a, b in zip(*alone)], abs=1e-5)


def test_warm_scores_with_one_forward_pass_and_still_sees_its_members(warm_dir):
    warm = warm_run_scorer(warm_dir, kind="warm", with_members=True, batch_size=64)
    calls = []
    warm.models[0].register_forward_pre_hook(lambda *_: calls.append(1))
    n = 16
    rewards = warm.score(PROMPTS[:n], COMPLETIONS[:n])
    assert len(rewards) == n and warm.forward_passes == 1 and len(calls) == 1
    assert warm.member_scores(PROMPTS[:n], COMPLETIONS[:n]).shape == (N_MEMBERS, n)
    assert warm.forward_passes == 1 + N_MEMBERS and len(calls) == 1  # members ran, WARM did not
    # a fitted normaliser applies to WARM's score and, separately, to its members
    warm.fit_normaliser(PROMPTS, COMPLETIONS)
    assert warm.normaliser.m == 1 and warm.member_normaliser.m == N_MEMBERS
    z_members = warm.normalised_member_scores(PROMPTS, COMPLETIONS)
    assert torch.allclose(z_members.mean(1), torch.zeros(N_MEMBERS), atol=1e-4)
    assert torch.tensor(warm.score(PROMPTS, COMPLETIONS)).mean().abs() < 1e-4
    ens = warm_run_scorer(warm_dir, kind="ens", batch_size=64)
    ens.score(PROMPTS[:n], COMPLETIONS[:n])
    assert ens.forward_passes == N_MEMBERS == E.forward_passes("ens", N_MEMBERS)


def test_monitor_fires_when_one_member_turns_against_the_others(warm_dir):
    scorer = warm_run_scorer(warm_dir, kind="ens")
    sft_p, sft_c = PROMPTS[:32], COMPLETIONS[:32]
    scorer.fit_normaliser(sft_p, sft_c)
    mon = E.DisagreementMonitor(threshold=2.0, every=1, max_samples=32)
    mon.set_reference(scorer.normalised_member_scores(sft_p, sft_c))
    calm = mon.update(0, scorer.normalised_member_scores(sft_p, sft_c))
    assert calm["spread_ratio"] == pytest.approx(1.0) and not calm["alarm"] and mon.first_alarm is None
    assert calm["rank_agreement"] > 0.5  # members share a head up to a perturbation
    with torch.no_grad():
        head_module(scorer.members[2]).weight.neg_()  # one member now ranks the other way round
    hacked = mon.update(1, scorer.normalised_member_scores(sft_p, sft_c))
    assert hacked["alarm"] and hacked["spread_ratio"] > 2.0 and mon.first_alarm == 1
    assert hacked["rank_agreement"] < calm["rank_agreement"]


def test_best_of_n_ens_is_the_rl_ens_and_the_raw_mean_keeps_its_own_name():
    """One ENS across Best-of-N and RL: the mean of per-member normalised scores (the members'
    scales differ, so the raw-logit mean is a different selector, reported as ``ens_raw``)."""
    from warm_ray.bon import selector_scores

    rng = np.random.default_rng(0)
    members = np.stack([rng.normal(0, 1, (3, 5)), rng.normal(5, 10, (3, 5))])  # [M, P, K]
    out = selector_scores(members, single=0, warm=members[0], soup=members[0], uwo_lambda=0.5)
    raw = torch.from_numpy(members.reshape(2, -1)).float()
    expected = E.combine(E.Normaliser.fit(raw).apply(raw), "ens").numpy().reshape(3, 5)
    assert np.allclose(out["ens"], expected, atol=1e-6)
    assert np.allclose(out["ens_raw"], members.mean(0))
    assert not np.allclose(out["ens"], out["ens_raw"])
