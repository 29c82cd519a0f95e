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
    assert lines[0] == "| claim | mean diff | 95% CI | signs (+/−/0) | n | p | verdict | Holm verdict |"
    assert len(lines) == 2 + len(rows)
    assert all(line.count(" | ") == 7 for line in lines[2:])  # the "|" in a name is escaped
    assert "4/0/0" in lines[2] and "holds" in lines[2] and "(> 0)" in lines[2]
    assert "−∞" in lines[5] and "∞]" in lines[5]
    # p: two-sided t, TOST for the ≈ claim, none for one seed; no Holm verdict until adjusted
    assert back[3]["p"] is None and 0 < back[0]["p"] < 0.05 and "(TOST)" in lines[4]
    assert lines[5].endswith("| – | inconclusive | – |")
    stats.adjust_holm(rows, 0.95, family=[False, True, True, True])
    rows[0]["primary"] = True
    lines = stats.claims_markdown(rows).strip().splitlines()
    assert lines[2].endswith("| holds | primary |") and lines[5].endswith("| inconclusive | inconclusive |")


# --------------------------------------------------------------------------- p-values and Holm


def _diffs_with_t(t: float, n: int = 5, centre: float = 0.0) -> list[float]:
    """n differences whose paired t statistic (mean - centre) / (sd/√n) is t: a fixed spread
    [-2, -1, 0, 1, 2] (sd √2.5 at n = 5) shifted to the mean that gives t."""
    spread = np.arange(n) - (n - 1) / 2
    se = spread.std(ddof=1) / math.sqrt(n)
    return list(spread + centre + t * se)


def test_paired_t_p_known_values():
    # t = 2.776 on 4 degrees of freedom is the two-sided 5% point of the t table
    assert stats.paired_t_p(_diffs_with_t(2.776)) == pytest.approx(0.05, abs=1e-4)
    assert stats.paired_t_p(_diffs_with_t(-T975[4])) == pytest.approx(0.05, abs=1e-7)  # 7-digit table
    # t = 1 on 1 degree of freedom (Cauchy): P(|T| > 1) = 1/2
    assert stats.paired_t_p([0.0, 2.0]) == pytest.approx(0.5, abs=1e-12)
    assert stats.paired_t_p([0.4]) is None  # one seed: no test
    assert stats.paired_t_p([0.1, 0.1, 0.1]) < 1e-12 and stats.paired_t_p([0.0, 0.0]) == 1.0  # no spread
    # p < 1 - level exactly when the interval excludes 0, so the raw verdict and the raw p agree
    for t in (2.7, 2.8, -2.7, -2.8):
        d = _diffs_with_t(t)
        assert (stats.paired_t_p(d) < 0.05) == (stats.claim_row("x", d, "greater")["verdict"] != "inconclusive")


def test_tost_p_known_values():
    tol = 0.01
    # mean 0.002 with (tol - mean)/se = t_{0.95, 4} = 2.131847: the upper one-sided test sits at
    # p = 0.05, the lower one (t = 0.012/se) far below it
    se = (tol - 0.002) / 2.131847
    d = list(np.arange(5) - 2.0)
    d = [0.002 + x * se * math.sqrt(5) / float(np.std(d, ddof=1)) for x in d]
    assert stats.tost_p(d, tol) == pytest.approx(0.05, abs=1e-6)
    # symmetric: the mirrored differences give the same p
    assert stats.tost_p([-x for x in d], tol) == pytest.approx(0.05, abs=1e-6)
    assert stats.tost_p([0.02, 0.03, 0.025], tol) > 0.5  # clearly outside the margin
    assert stats.tost_p([0.003, 0.003], tol) < 1e-12 and stats.tost_p([0.0], tol) is None
    row = stats.claim_row("≈", d, "approx", tol=tol)
    assert row["p"] == stats.tost_p(d, tol)


def test_holm_hand_computed():
    # sorted: 0.005 (x5 = 0.025), 0.01 (x4 = 0.04), 0.03 (x3 = 0.09), 0.04 (x2 = 0.08 -> 0.09 by the
    # running max), None (counts as 1, x1); back in input order
    assert stats.holm([0.01, 0.04, 0.03, 0.005, None]) == pytest.approx([0.04, 0.09, 0.09, 0.025, None])
    assert stats.holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])  # capped by the running max, not above 1
    assert stats.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == [] and stats.holm([0.03]) == [0.03]
    with pytest.raises(ValueError):
        stats.holm([1.5])


def test_holm_verdicts_over_the_secondary_claims():
    rows = [
        stats.claim_row("primary, strong", _diffs_with_t(10.0), "greater"),
        stats.claim_row("strong", _diffs_with_t(10.0), "greater"),           # p ~ 5.6e-4
        stats.claim_row("wrong way", _diffs_with_t(-10.0), "greater"),       # significant the other way
        stats.claim_row("borderline", _diffs_with_t(3.0), "greater"),        # p ~ 0.04: raw holds only
        stats.claim_row("less, strong", _diffs_with_t(-10.0), "less"),
        stats.claim_row("one seed", [0.3], "greater"),
        stats.claim_row("equivalent", [0.0, 0.001, -0.001, 0.0005, -0.0005], "approx", tol=0.01),
    ]
    assert rows[3]["verdict"] == "holds" and rows[3]["p"] < 0.05
    stats.adjust_holm(rows, 0.95, family=[False] + [True] * 6)
    assert rows[0]["p_holm"] is None and rows[0]["verdict_holm"] is None
    holm = stats.holm([r["p"] for r in rows[1:]])
    assert [r["p_holm"] for r in rows[1:]] == pytest.approx(holm)
    assert [r["verdict_holm"] for r in rows[1:]] == [
        "holds", "does not hold", "inconclusive", "holds", "inconclusive", "holds"]
    # an ≈ claim is judged at α/2, as its raw verdict reads the 95% interval (never more lenient)
    row = {"direction": "approx", "mean": 0.0}
    assert stats.holm_verdict(row, 0.03, 0.95) == "inconclusive"
    assert stats.holm_verdict(row, 0.02, 0.95) == "holds"
    with pytest.raises(ValueError):
        stats.holm_verdict({"direction": "sideways", "mean": 1.0}, 0.01, 0.95)


# --------------------------------------------------------------------------- peak of a noisy curve


def test_held_out_peak_picks_on_one_draw_and_reports_the_other():
    assert stats.held_out_peak([0.1, 0.5, 0.3], [9.0, 7.0, 8.0]) == (1, 7.0)
    assert stats.held_out_peak([math.nan, 0.2, 0.1], [1.0, 2.0, 3.0]) == (1, 2.0)
    i, v = stats.held_out_peak([math.nan], [1.0])
    assert i is None and math.isnan(v)
    with pytest.raises(ValueError):
        stats.held_out_peak([1.0, 2.0], [1.0])


# E[max of k iid standard normals], k -> value (tables of normal order statistics)
E_MAX_NORMAL = {1: 0.0, 2: 1 / math.sqrt(math.pi), 6: 1.267206}


def test_held_out_peak_is_unbiased_where_the_max_of_points_is_not():
    """Monte-Carlo: 11-point curves with the same true peak (1.0) and k points at it, the rest
    far below (0.5, 10 noise SDs: selection never misses the peak). The max over one draw is
    biased upwards by σ·E[max of k normals], growing with k; selecting on draw A and measuring
    on draw B is not biased for any k. Selecting and measuring on one draw would be the max
    again (checked too: the unbiasedness check can fail)."""
    rng = np.random.default_rng(20240117)
    sigma, reps, peak_value = 0.05, 20_000, 1.0
    se = sigma / math.sqrt(reps)  # Monte-Carlo SE of a mean of reps unit-σ-noise values
    bias = {}
    for k, expected in E_MAX_NORMAL.items():
        true = np.full(11, 0.5)
        true[3:3 + k] = peak_value
        a = true + sigma * rng.standard_normal((reps, 11))
        b = true + sigma * rng.standard_normal((reps, 11))
        max_of_points = a.max(axis=1).mean()
        held_out = np.mean([stats.held_out_peak(a[r], b[r])[1] for r in range(reps)])
        bias[k] = max_of_points - peak_value
        # the max of points: biased by σ·E[max of k normals] (its own SD is below σ: 4 SEs is loose)
        assert bias[k] == pytest.approx(sigma * expected, abs=4 * se)
        # the held-out estimate: within Monte-Carlo error of the true peak, whatever k
        assert abs(held_out - peak_value) < 4 * se, (k, held_out)
        if k == 6:
            same_draw = np.mean([stats.held_out_peak(a[r], a[r])[1] for r in range(reps)])
            assert same_draw == pytest.approx(max_of_points) and same_draw - peak_value > 20 * se
    assert bias[2] > 20 * se and bias[6] > bias[2] + 20 * se  # grows with the near-peak points


def test_pooled_within_sd():
    # row variances 2 and 8 -> mean 5; the global SD also counts the gap between the rows
    values = [[1.0, 3.0], [10.0, 14.0]]
    assert stats.pooled_within_sd(values) == pytest.approx(math.sqrt(5.0))
    assert np.std(values, ddof=1) > 2 * stats.pooled_within_sd(values)
    rng = np.random.default_rng(0)
    noisy = rng.normal(size=(400, 1)) * 3.0 + rng.normal(size=(400, 4)) * 0.5  # prompt effect + noise
    assert stats.pooled_within_sd(noisy) == pytest.approx(0.5, rel=0.05)
    for bad in ([[1.0, 2.0, 3.0]][0], [[1.0], [2.0]], [[1.0, math.nan]]):
        with pytest.raises(ValueError):
            stats.pooled_within_sd(bad)


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


def test_bon_endpoints():
    rng = np.random.default_rng(0)
    proxy = rng.normal(size=(5, 256))
    gold = rng.normal(size=(5, 256))
    assert stats.bon_expected_gold_per_prompt(proxy, gold, 1).mean() == pytest.approx(gold.mean(), abs=1e-12)
    best = gold[np.arange(5), proxy.argmax(axis=1)]
    exact = stats.bon_expected_gold_per_prompt(proxy, gold, 256)
    np.testing.assert_allclose(exact, best, atol=1e-12)


def test_bon_large_k_is_finite_and_increasing_when_proxy_is_gold():
    rng = np.random.default_rng(1)
    gold = rng.normal(size=(4, 256))
    curve = [stats.bon_expected_gold_per_prompt(gold, gold, n).mean() for n in (1, 2, 4, 16, 64, 128, 255, 256)]
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
