"""Tests for warm_ray.stats: t quantiles, paired CIs and verdicts, exact best-of-N, matched KL.

Reference values: Student-t table (t_{0.975} to 7 digits) and the closed forms for df = 1
(Cauchy) and df = 2. Best-of-N is checked against enumeration of every n-subset on small K and
against Monte-Carlo sampling on a larger K.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warm_ray import stats

FAST = settings(max_examples=60, deadline=None)

# t_{0.975, df}, df -> quantile (standard tables, 7 significant digits).
T975 = {1: 12.70620, 2: 4.302653, 4: 2.776445, 9: 2.262157, 29: 2.045230, math.inf: 1.959964}


# --------------------------------------------------------------------------- t quantile


@pytest.mark.parametrize("df, expected", T975.items())
def test_t_quantile_table(df, expected):
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=5e-6)
    assert stats.t_quantile(0.025, df) == pytest.approx(-expected, abs=5e-6)


def test_t_quantile_large_df_meets_normal():
    assert stats.t_quantile(0.975, 10**6) == pytest.approx(1.959964, abs=1e-5)
    assert stats.t_quantile(0.975, 2999) == pytest.approx(stats.t_quantile(0.975, 3001), abs=1e-6)
    assert stats.t_quantile(0.995, 60) == pytest.approx(2.660283, abs=1e-6)


def test_t_quantile_edges():
    assert stats.t_quantile(0.5, 3) == 0.0
    assert stats.t_quantile(0.0, 3) == -math.inf
    assert stats.t_quantile(1.0, 3) == math.inf
    for p, df in [(-0.1, 3), (1.1, 3), (0.5, 0), (0.5, -1)]:
        with pytest.raises(ValueError):
            stats.t_quantile(p, df)


@FAST
@given(st.floats(1e-9, 1 - 1e-9))
def test_t_quantile_closed_forms(p):
    # df = 1: Cauchy, tan(π(p - 1/2)) = -cot(πp) (written so that small p keeps its digits);
    # df = 2: (2p - 1) / sqrt(2p(1 - p)).
    cauchy = -1 / math.tan(math.pi * p) if p <= 0.5 else 1 / math.tan(math.pi * (1 - p))
    assert stats.t_quantile(p, 1) == pytest.approx(cauchy, rel=1e-9, abs=1e-12)
    assert stats.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)),
                                                   rel=1e-9, abs=1e-12)


@FAST
@given(st.floats(0.5, 1 - 1e-9), st.integers(1, 500))
def test_t_quantile_symmetric_and_heavier_tailed_for_fewer_df(p, df):
    q = stats.t_quantile(p, df)
    assert stats.t_quantile(1 - p, df) == pytest.approx(-q, rel=1e-9, abs=1e-12)
    assert q >= stats.t_quantile(p, df + 1) - 1e-12 >= stats.t_quantile(p, math.inf) - 2e-12


# --------------------------------------------------------------------------- paired CI, verdicts


def test_paired_ci_known_values():
    ci = stats.paired_ci([1, 2, 3, 4, 5])
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert ci["mean"] == 3.0 and ci["n"] == 5
    assert ci["sd"] == pytest.approx(math.sqrt(2.5))
    assert ci["ci_low"] == pytest.approx(3 - half, abs=1e-5)
    assert ci["ci_high"] == pytest.approx(3 + half, abs=1e-5)
    assert (ci["n_pos"], ci["n_neg"], ci["n_zero"]) == (5, 0, 0)


def test_paired_ci_signs_and_level():
    ci = stats.paired_ci([-1.0, 0.0, 2.0, 0.5])
    assert (ci["n_pos"], ci["n_neg"], ci["n_zero"]) == (2, 1, 1)
    wide = stats.paired_ci([-1.0, 0.0, 2.0, 0.5], level=0.99)
    assert wide["ci_low"] < ci["ci_low"] < ci["mean"] < ci["ci_high"] < wide["ci_high"]


def test_paired_ci_single_replicate_is_infinite_not_nan():
    ci = stats.paired_ci([0.3])
    assert ci["mean"] == 0.3 and ci["n"] == 1
    assert ci["ci_low"] == -math.inf and ci["ci_high"] == math.inf
    assert not any(isinstance(v, float) and math.isnan(v) for v in ci.values())
    assert stats.verdict(ci, "greater") == "inconclusive"


def test_paired_ci_constant_diffs_have_zero_width():
    ci = stats.paired_ci([0.5, 0.5, 0.5])
    assert ci["sd"] == 0.0 and ci["ci_low"] == ci["ci_high"] == 0.5


@pytest.mark.parametrize("bad", [[], [1.0, math.nan], [math.inf, 1.0]])
def test_paired_ci_rejects_empty_and_non_finite(bad):
    with pytest.raises(ValueError):
        stats.paired_ci(bad)


@FAST
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=30), st.floats(-1e3, 1e3))
def test_paired_ci_shift_equivariant_and_contains_mean(diffs, shift):
    a = stats.paired_ci(diffs)
    b = stats.paired_ci([d + shift for d in diffs])
    assert a["ci_low"] <= a["mean"] <= a["ci_high"]
    assert b["mean"] == pytest.approx(a["mean"] + shift, abs=1e-8)
    assert b["ci_high"] - b["ci_low"] == pytest.approx(a["ci_high"] - a["ci_low"], abs=1e-6)
    assert a["n_pos"] + a["n_neg"] + a["n_zero"] == a["n"] == len(diffs)


def _ci(lo, hi):
    return {"ci_low": lo, "ci_high": hi}


@pytest.mark.parametrize("lo, hi, greater, less", [
    (0.1, 0.5, "holds", "does not hold"),
    (-0.5, -0.1, "does not hold", "holds"),
    (-0.1, 0.5, "inconclusive", "inconclusive"),
    (0.0, 0.5, "inconclusive", "inconclusive"),  # strict: touching 0 is not "on a side"
    (-math.inf, math.inf, "inconclusive", "inconclusive"),
])
def test_verdict_one_sided(lo, hi, greater, less):
    assert stats.verdict(_ci(lo, hi), "greater") == greater
    assert stats.verdict(_ci(lo, hi), "less") == less


@pytest.mark.parametrize("lo, hi, expected", [
    (-0.05, 0.05, "holds"),
    (-0.1, 0.1, "holds"),
    (0.2, 0.5, "does not hold"),
    (-0.5, -0.2, "does not hold"),
    (-0.05, 0.3, "inconclusive"),
    (-0.3, 0.3, "inconclusive"),
])
@pytest.mark.parametrize("direction", ["equal", "approx"])
def test_verdict_equivalence(lo, hi, expected, direction):
    assert stats.verdict(_ci(lo, hi), direction, tol=0.1) == expected


def test_verdict_errors():
    with pytest.raises(ValueError):
        stats.verdict(_ci(0, 1), "approx")
    with pytest.raises(ValueError):
        stats.verdict(_ci(0, 1), "sideways")


def test_claim_row_is_json_and_markdown_ready():
    rows = [stats.claim_row("WARM M=6 − best single", [0.1, 0.2, 0.15, 0.3], "greater"),
            stats.claim_row("ENS − WARM | corrupted", [0.05, -0.02, 0.01], "less"),
            stats.claim_row("WA − ENS (ID)", [0.001, -0.002, 0.0, 0.001], "approx", tol=0.01),
            stats.claim_row("one seed", [0.4], "greater")]
    assert rows[0]["verdict"] == "holds"
    assert rows[1]["verdict"] == "inconclusive"
    assert rows[2]["verdict"] == "holds"
    assert rows[3]["verdict"] == "inconclusive"
    assert rows[0]["diffs"] == [0.1, 0.2, 0.15, 0.3]
    back = json.loads(json.dumps(rows))
    assert back[3]["ci_high"] == math.inf and back[2]["tol"] == 0.01
    table = stats.claims_markdown(rows)
    lines = table.strip().splitlines()
    assert lines[0] == "| claim | mean diff | 95% CI | signs (+/−/0) | n | verdict |"
    assert len(lines) == 2 + len(rows)
    assert all(line.count(" | ") == 5 for line in lines[2:])  # the "|" in a name is escaped
    assert "4/0/0" in lines[2] and "holds" in lines[2] and "(> 0)" in lines[2]
    assert "−∞" in lines[5] and "∞]" in lines[5]


def test_summarise_over_seeds():
    s = stats.summarise_over_seeds([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["sd"] == 1.0 and s["n"] == 3
    half = 4.302653 / math.sqrt(3)
    assert s["ci_low"] == pytest.approx(2 - half, abs=1e-5)
    assert s["ci_high"] == pytest.approx(2 + half, abs=1e-5)


# --------------------------------------------------------------------------- best-of-N


def test_kl_bon():
    assert stats.kl_bon(1) == 0.0
    assert stats.kl_bon(2) == pytest.approx(math.log(2) - 0.5)
    assert stats.kl_bon(16) == pytest.approx(math.log(16) - 15 / 16)
    kls = [stats.kl_bon(n) for n in range(1, 300)]
    assert all(a < b for a, b in zip(kls, kls[1:]))
    with pytest.raises(ValueError):
        stats.kl_bon(0)


def _bon_brute_force(proxy, gold, n):
    """Average over every n-subset of the subset's np.argmax (first index wins ties)."""
    out = []
    for p_row, g_row in zip(proxy, gold):
        vals = [g_row[list(s)[int(np.argmax(p_row[list(s)]))]]
                for s in itertools.combinations(range(len(p_row)), n)]
        out.append(np.mean(vals))
    return np.array(out)


@FAST
@given(st.integers(1, 3), st.integers(1, 7), st.data())
def test_bon_exact_matches_enumeration(n_prompts, k, data):
    n = data.draw(st.integers(1, k))
    seed = data.draw(st.integers(0, 2**31))
    ties = data.draw(st.booleans())
    rng = np.random.default_rng(seed)
    # Small integer proxies make ties common, which exercises the tie rule.
    shape = (n_prompts, k)
    proxy = rng.integers(0, 3, shape).astype(float) if ties else rng.normal(size=shape)
    gold = rng.normal(size=(n_prompts, k))
    exact = stats.bon_expected_gold_per_prompt(proxy, gold, n)
    assert exact.shape == (n_prompts,)
    np.testing.assert_allclose(exact, _bon_brute_force(proxy, gold, n), rtol=1e-12, atol=1e-12)
    assert stats.bon_expected_gold(proxy, gold, n) == pytest.approx(exact.mean())


def test_bon_endpoints():
    rng = np.random.default_rng(0)
    proxy = rng.normal(size=(5, 256))
    gold = rng.normal(size=(5, 256))
    assert stats.bon_expected_gold(proxy, gold, 1) == pytest.approx(gold.mean(), abs=1e-12)
    best = gold[np.arange(5), proxy.argmax(axis=1)]
    exact = stats.bon_expected_gold_per_prompt(proxy, gold, 256)
    np.testing.assert_allclose(exact, best, atol=1e-12)


def test_bon_large_k_is_finite_and_increasing_when_proxy_is_gold():
    rng = np.random.default_rng(1)
    gold = rng.normal(size=(4, 256))
    curve = [stats.bon_expected_gold(gold, gold, n) for n in (1, 2, 4, 16, 64, 128, 255, 256)]
    assert all(math.isfinite(v) for v in curve)
    assert all(a < b for a, b in zip(curve, curve[1:]))


def test_bon_matches_monte_carlo():
    rng = np.random.default_rng(2)
    n_prompts, k, n, trials = 6, 20, 5, 20_000
    proxy = rng.normal(size=(n_prompts, k))
    gold = proxy + rng.normal(size=(n_prompts, k))
    exact = stats.bon_expected_gold_per_prompt(proxy, gold, n)
    for i in range(n_prompts):
        subsets = np.argsort(rng.random((trials, k)), axis=1)[:, :n]  # [trials, n]
        picks = subsets[np.arange(trials), proxy[i][subsets].argmax(axis=1)]
        draws = gold[i][picks]
        assert abs(draws.mean() - exact[i]) < 4 * draws.std() / math.sqrt(trials)


def test_bon_paired_difference_between_proxies():
    rng = np.random.default_rng(3)
    gold = rng.normal(size=(50, 32))
    good = gold + 0.1 * rng.normal(size=gold.shape)
    bad = rng.normal(size=gold.shape)
    diffs = (stats.bon_expected_gold_per_prompt(good, gold, 8)
             - stats.bon_expected_gold_per_prompt(bad, gold, 8))
    assert stats.verdict(stats.paired_ci(diffs), "greater") == "holds"


def test_bon_rejects_bad_input():
    x = np.zeros((2, 4))
    for args in [(x, x, 0), (x, x, 5), (x, np.zeros((2, 3)), 2), (np.zeros(4), np.zeros(4), 2),
                 (np.full((2, 4), np.nan), x, 2)]:
        with pytest.raises(ValueError):
            stats.bon_expected_gold_per_prompt(*args)


# --------------------------------------------------------------------------- matched KL


def test_value_at_interpolates_and_never_extrapolates():
    x, y = [2.0, 0.0, 1.0], [4.0, 0.0, 1.0]
    out = stats.value_at(x, y, [0.0, 0.5, 1.5, 2.0, -0.1, 2.1, math.nan])
    assert out[:4] == pytest.approx([0.0, 0.5, 2.5, 4.0])
    assert all(math.isnan(v) for v in out[4:])


def test_value_at_averages_duplicates_and_drops_nan_points():
    out = stats.value_at([0, 1, 1, 2, 3], [0, 1, 3, 2, math.nan], [1.0, 1.5, 2.5])
    assert out[:2] == pytest.approx([2.0, 2.0])
    assert math.isnan(out[2])  # x = 3 has no finite y, so the curve ends at 2
    assert all(math.isnan(v) for v in stats.value_at([], [], [0.0]))
    with pytest.raises(ValueError):
        stats.value_at([0, 1], [0], [0.5])


@FAST
@given(st.lists(st.tuples(st.floats(-100, 100), st.floats(-100, 100)), min_size=1, max_size=20),
       st.lists(st.floats(-150, 150), max_size=10))
def test_value_at_stays_within_data(points, targets):
    x, y = zip(*points)
    out = stats.value_at(x, y, targets)
    for t, v in zip(targets, out):
        inside = min(x) <= t <= max(x)
        assert math.isnan(v) != inside
        if inside:
            assert min(y) - 1e-9 <= v <= max(y) + 1e-9


def test_common_kl_grid():
    a = ([0.0, 1.0, 4.0], [0.0, 1.0, 0.5])
    b = ([0.5, 2.0, 6.0], [0.0, 0.7, 0.2])
    grid = stats.common_kl_grid([a, b], n=3)
    assert grid == pytest.approx([1.375, 2.25, 3.125])  # inside [0.5, 4.0]
    for xs, ys in (a, b):
        assert not any(math.isnan(v) for v in stats.value_at(xs, ys, grid))
    assert stats.common_kl_grid([a, ([5.0, 6.0], [0.0, 1.0])]) == []
    assert stats.common_kl_grid([a, ([4.0, 6.0], [0.0, 1.0])]) == [4.0]
    assert stats.common_kl_grid([]) == []
    assert len(stats.common_kl_grid([a])) == 5


def test_peak_and_smooth():
    assert stats.peak([0.1, math.nan, 0.7, 0.3]) == 0.7
    assert math.isnan(stats.peak([math.nan])) and math.isnan(stats.peak([]))
    assert stats.smooth([1.0, 2.0, 3.0, 4.0], 2) == pytest.approx([1.0, 1.5, 2.5, 3.5])
    assert stats.smooth([1.0, 2.0, 3.0], 1) == pytest.approx([1.0, 2.0, 3.0])
    out = stats.smooth([1.0, math.nan, math.nan, 5.0], 2)
    assert out[:2] == pytest.approx([1.0, 1.0]) and math.isnan(out[2]) and out[3] == 5.0
    with pytest.raises(ValueError):
        stats.smooth([1.0], 0)


@FAST
@given(st.lists(st.floats(-1e3, 1e3), max_size=40), st.integers(1, 10))
def test_smooth_matches_window_mean(y, window):
    out = stats.smooth(y, window)
    ref = [float(np.mean(y[max(0, i - window + 1): i + 1])) for i in range(len(y))]
    assert out == pytest.approx(ref, abs=1e-8)
