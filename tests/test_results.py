"""The names of a stage's results, written once: the WARM driver's table, built by its writer-side
helper from the sets the driver evaluates, reads back through the named reader the sweep and the
study use; a missing row or set is named, not a bare KeyError."""

import json

import pytest

from actors import warm as W
from warm_ray import results as RS


def _splits() -> dict[str, list[dict]]:
    row = {"prompt": "p", "chosen": "a", "rejected": "b"}
    return {"train": [{**row, "corrupted": False}, {**row, "corrupted": True}],
            "selection": [row], "test_id": [row], "test_ood": [row]}


def _written(m: int = 3) -> dict:
    """A results.json as the WARM driver writes it: its own sets, the table through warm_table."""
    sets = list(W.eval_sets(_splits()))
    acc = {f"model {j}": {k: round(0.5 + 0.01 * j + 0.001 * n, 4) for n, k in enumerate(sets)} for j in range(m + 3)}
    members = {str(i): acc[f"model {i}"] for i in range(m)}
    table = RS.warm_table(members, ens=acc[f"model {m}"], warm=acc[f"model {m + 1}"], greedy=acc[f"model {m + 2}"],
                          best_member="1")
    # through JSON, as a later process reads it back
    return json.loads(json.dumps({"table": table, "seconds": {"train": 1.5, "total": 2.5}}))


def test_the_warm_table_reads_back_through_the_named_reader():
    assert list(W.eval_sets(_splits())) == list(RS.SETS) == list(W.SETS)
    results = _written(m=3)
    r = RS.WarmResults.from_json(results)
    assert r.members == 3 and r.member_rows == [RS.member_row(i) for i in range(3)]
    assert r.acc(RS.ENS, RS.TEST_OOD) == results["table"]["ENS"]["test_ood"]
    assert r.acc(RS.BEST_MEMBER, RS.SELECTION) == r.acc(RS.member_row(1), RS.SELECTION)
    for k in RS.SETS:
        mean = sum(r.acc(RS.member_row(i), k) for i in range(3)) / 3
        assert r.acc(RS.MEAN_MEMBER, k) == pytest.approx(mean)
    assert (r.seconds_train, r.seconds_total) == (1.5, 2.5)
    # the driver's own markdown table shows every row and set
    md = W.markdown_table(results["table"])
    assert all(f"| {row} |" in md for row in [*r.member_rows, *RS.MODELS]) and all(k in md for k in RS.SETS)


def test_the_sweep_and_the_study_read_every_number_they_name():
    from actors.study import claim_specs
    from actors.study_report import report_tables
    from tune import sweep as S
    from warm_ray.config import StudyConfig, load_config

    results = _written(m=2)
    r = RS.WarmResults.from_json(results)
    metrics = S.STAGES["warm"].metrics(results)
    assert set(metrics) == set(S.STAGES["warm"].metric_names)
    assert metrics["ood_acc_warm"] == r.acc(RS.WARM, RS.TEST_OOD)
    assert metrics["memorisation_greedy"] == r.acc(RS.GREEDY_SOUP, RS.TRAIN_CORRUPTED)
    assert metrics["members"] == 2 and metrics["seconds_stage"] == 2.5
    # the study's claims on the RM table, on one seed holding this table
    seed = {"rm": results}
    rm_claims = {k: v for k, v in claim_specs(StudyConfig()).items() if not k.startswith(("BoN", "RL", "WARP"))}
    assert len(rm_claims) == 9
    for name, (_, extract) in rm_claims.items():
        assert isinstance(extract(seed), float), name
    assert rm_claims["OOD accuracy: WARM > ENS"][1](seed) == pytest.approx(
        r.acc(RS.WARM, RS.TEST_OOD) - r.acc(RS.ENS, RS.TEST_OOD))
    text = report_tables(load_config(None, []), {0: {"seed": 0, "seconds": {}, **seed}})
    assert f"| WARM | {r.acc(RS.WARM, RS.TRAIN_CLEAN):.3f} |" in text and "| greedy soup |" in text


def test_a_missing_row_or_set_is_named():
    results = _written()
    del results["table"]["WARM"]
    with pytest.raises(ValueError, match=r"WARM results table: no 'WARM' \(has: member 0, "):
        RS.WarmResults.from_json(results)
    results = _written()
    del results["table"]["ENS"]["test_ood"]
    with pytest.raises(ValueError, match=r"row 'ENS': no 'test_ood'"):
        RS.WarmResults.from_json(results)
    with pytest.raises(ValueError, match=r"no 'final'"):
        RS.RLResults.from_json({"first": {"proxy_reward": 0, "gold_reward": 0, "kl_sft": 0}})
    with pytest.raises(ValueError, match=r"WARP results: no 'iterations'"):
        RS.WarpResults.from_json({"seconds": 1.0})
