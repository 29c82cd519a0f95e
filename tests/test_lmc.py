"""Linear mode connectivity and task-vector geometry: WARM's precondition, measured in every WARM run."""

import dataclasses
import json
import logging

import pytest
import torch

from warm_ray import lmc
from warm_ray.config import apply_overrides

from .conftest import tiny_warm


def test_barrier_is_the_largest_excess_over_the_straight_line():
    ts = [0.0, 0.25, 0.5, 0.75, 1.0]
    # loss: a bump of 0.3 above the line at the middle
    assert lmc.barrier(ts, [1.0, 1.2, 1.3, 1.0, 0.6], higher_is_worse=True) == pytest.approx(1.3 - 0.8)
    # a convex dip below the line: negative barrier (the interpolation beats its ends)
    assert lmc.barrier(ts, [1.0, 0.7, 0.6, 0.7, 1.0]) == pytest.approx(-0.3)
    # accuracy: falling below the line is the barrier
    assert lmc.barrier(ts, [0.8, 0.7, 0.6, 0.75, 0.8], higher_is_worse=False) == pytest.approx(0.2)
    assert lmc.barrier([0.0, 1.0], [1.0, 2.0]) == 0.0
    with pytest.raises(ValueError):
        lmc.interpolation_points(1)


def test_bt_loss_and_verdict():
    assert lmc.bt_loss(torch.zeros(4)) == pytest.approx(0.6931471805599453)
    summary = {"selection": {"loss_barrier_max": 0.05, "loss_barrier_mean": 0.03, "acc_barrier_max": 0.0,
                             "acc_barrier_mean": 0.0}}
    ok, line = lmc.verdict(summary, "selection", 0.1)
    assert ok and "connected" in line and "NOT" not in line
    ok, line = lmc.verdict(summary, "selection", 0.01)
    assert not ok and "NOT linearly mode connected" in line and "warm.lrs" in line


def test_lmc_cuts_the_verdicts_split_and_the_reported_splits_apart():
    from actors.warm import lmc_sets
    from warm_ray import results as RS

    sets = {k: list(range(1000)) for k in RS.SETS}
    cut = lmc_sets(sets, max_pairs=500, report_pairs=200)
    assert set(cut) == {RS.SELECTION, RS.TRAIN_CLEAN, RS.TEST_ID, RS.TEST_OOD}  # corrupted pairs: never on a line
    assert len(sets[RS.SELECTION][cut[RS.SELECTION]]) == 500
    assert all(len(sets[k][cut[k]]) == 200 for k in (RS.TRAIN_CLEAN, RS.TEST_ID, RS.TEST_OOD))
    every = lmc_sets(sets, max_pairs=0, report_pairs=0)
    assert all(len(sets[k][c]) == 1000 for k, c in every.items())


def test_geometry_counts_a_tied_weight_once():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16,
                                       tie_word_embeddings=True))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)  # moves the tied lm_head with it
    moved = model.state_dict()
    assert torch.equal(moved["lm_head.weight"], moved["transformer.wte.weight"])
    keys = lmc.unique_parameter_names(model)
    assert "transformer.wte.weight" in keys and "lm_head.weight" not in keys
    geo = lmc.geometry(init, {"0": moved, "1": init}, keys)
    once = float(torch.ones_like(init["transformer.wte.weight"]).norm())
    assert geo["norms"]["0"] == pytest.approx(once)
    naive = lmc.geometry(init, {"0": moved}, [k for k in moved if moved[k].is_floating_point()])
    assert naive["norms"]["0"] == pytest.approx(once * 2 ** 0.5)  # counted twice by state_dict keys
    assert geo["parameters"] == sum(p.numel() for p in model.parameters())


def test_pair_curves_of_identical_members_are_flat():
    sd = {"w": torch.tensor([1.0, -2.0])}
    margins = {"s": torch.tensor([0.5, -0.1, 2.0])}
    curves = lmc.pair_curves({"0": sd, "1": sd}, [0, 0.5, 1], lambda _sd: margins,
                             {"0": margins, "1": margins}, lambda sds, w: sds[0])
    assert curves["0-1"]["s"]["loss_barrier"] == pytest.approx(0.0)
    assert curves["0-1"]["s"]["acc"] == [pytest.approx(2 / 3)] * 3


@pytest.mark.parametrize("name, overrides, connected", [
    # one shared init, a small learning rate, one epoch: the members stay in one basin
    ("shared init, small lr", ["warm.baklava=false", "warm.lrs=[1e-5]", "warm.epochs=1"], True),
    # Adam at lr 1e-2 from different (Baklava) inits: members that learned (one 0.66 on selection) in
    # different basins, their task vectors orthogonal; the loss rises ~0.5 nats above the line between them
    # (at lr 5e-2 both members collapse to chance and the line between them is flat: connected, and useless)
    ("different inits, very high lr", ["warm.lrs=[1e-2]", "warm.epochs=3"], False),
])
def test_warm_states_whether_its_members_are_linearly_connected(prepared, ray_local, tmp_path, caplog,
                                                                name, overrides, connected):
    from actors.warm import run_warm

    cfg = apply_overrides(tiny_warm(prepared[0]), overrides)
    # the prepared data (a record naming the shared run's files by their absolute paths), a warm dir of
    # this test's own
    run_dir = tmp_path / "run"
    (run_dir / "prepare").mkdir(parents=True)
    (run_dir / "prepare" / "prepare.json").write_text(json.dumps(prepared[1]))
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
    with caplog.at_level(logging.INFO, logger="warm_ray.warm"):
        results = run_warm(cfg)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "NOT linearly mode connected" in r.message]
    infos = [r for r in caplog.records if "are linearly mode connected" in r.message]
    assert results["lmc"]["connected"] is connected, (name, results["lmc"]["summary"]["selection"])
    if connected:
        assert not warnings and infos
    else:
        assert warnings and "warm.lrs" in warnings[0].message
