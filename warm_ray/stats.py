"""Statistics of the reward-hacking study: paired differences over seeds, best-of-N, matched KL.

The study replicates a pipeline over independent seeds (new label flips, new member seeds, new
RL seeds) and compares methods on the same pairs or prompts, so every comparison is a paired
difference per replicate. A claim is judged by the t-based 95% confidence interval of the mean
paired difference, reported with the sign count ("Statistics worth using" in the project notes).

Over-optimisation is measured as in Gao et al. 2022 ("Scaling Laws for Reward Model
Overoptimization") and WARM (Ramé et al. 2024, arXiv 2401.12187) Sec. 5:
- best-of-N: gold reward of the proxy-selected sample against KL = log N - (N-1)/N, computed
  exactly from K >= N samples per prompt with order statistics;
- RL and WARP fronts: gold reward against KL, compared at matched KL (interpolated at fixed KL
  targets, never extrapolated) and by the peak of the curve, selected on one evaluation draw and
  measured on another (the max of noisy points is biased upwards).

Each claim also gets a p-value (two-sided paired t, or TOST for an equivalence claim), and a
family of secondary claims a Holm step-down adjusted verdict beside the raw one.

Pure numpy + math: the Student-t quantile is computed here from the regularized incomplete
beta function (continued fraction, Numerical Recipes 6.4) by bisection.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------
# Student-t quantile
# ---------------------------------------------------------------------------------------------

_CF_EPS = 1e-16
_CF_TINY = 1e-300
_CF_MAX_ITER = 20_000
# Above this many degrees of freedom the Cornish-Fisher expansion (A&S 26.7.5) is accurate to
# ~1e-13 even at p = 1e-12, while the continued fraction loses digits to lgamma(df/2) and needs
# ~sqrt(df) terms.
_DF_EXPANSION = 3000.0


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function, modified Lentz (NR eq. 6.4.5)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
    h = d
    for m in range(1, _CF_MAX_ITER + 1):
        m2 = 2 * m
        # Even step.
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _CF_TINY else _CF_TINY
        h *= d * c
        # Odd step.
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _CF_TINY else _CF_TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _CF_EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b})")


def _betainc(a: float, b: float, x: float, y: float) -> float:
    """Regularized incomplete beta I_x(a, b); y = 1 - x is passed in to keep its digits."""
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log(y))
    # The fraction converges fast on this side of the mean; use the symmetry I_x(a,b) =
    # 1 - I_{1-x}(b,a) on the other.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, y) / b


def _t_upper_tail(t: float, df: float) -> float:
    """P(T > t) for t >= 0: 0.5 * I_{df/(df+t^2)}(df/2, 1/2)."""
    if t == 0.0:
        return 0.5
    if math.isinf(t):
        return 0.0
    t2 = t * t
    return 0.5 * _betainc(0.5 * df, 0.5, df / (df + t2), t2 / (df + t2))


def _normal_upper_tail(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _bisect_upper_tail(tail, target: float) -> float:
    """The t >= 0 with tail(t) == target (tail decreasing from 0.5 to 0, target in (0, 0.5))."""
    lo, hi = 0.0, 1.0
    while tail(hi) > target:
        lo, hi = hi, 2.0 * hi
        if math.isinf(hi):
            return math.inf
    for _ in range(2000):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if tail(mid) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _normal_quantile(p: float) -> float:
    if p == 0.5:
        return 0.0
    z = _bisect_upper_tail(_normal_upper_tail, min(p, 1.0 - p))
    return z if p > 0.5 else -z


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution with df > 0 degrees of freedom (df = inf: normal).

    Solves P(T <= t) = p by bisection on the t CDF, written with the regularized incomplete
    beta function; df may be fractional. p = 0 and p = 1 give -inf and +inf.
    """
    p, df = float(p), float(df)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if not df > 0.0:
        raise ValueError(f"df must be > 0, got {df}")
    if p == 0.0:
        return -math.inf
    if p == 1.0:
        return math.inf
    if p == 0.5:
        return 0.0
    if df > _DF_EXPANSION:
        # Cornish-Fisher expansion of t around the normal quantile (A&S 26.7.5).
        z = _normal_quantile(p)
        g1 = (z**3 + z) / 4.0
        g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96.0
        g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384.0
        g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160.0
        return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4
    # 1 - p is exact for p in [0.5, 1), so the upper tail keeps full precision.
    t = _bisect_upper_tail(lambda s: _t_upper_tail(s, df), min(p, 1.0 - p))
    return t if p > 0.5 else -t


# ---------------------------------------------------------------------------------------------
# Paired differences over replicates
# ---------------------------------------------------------------------------------------------


def _as_finite_1d(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{what}: need at least one value")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: values must be finite, got {arr.tolist()}")
    return arr


def _mean_t_ci(arr: np.ndarray, level: float) -> dict:
    """Mean, sample sd (ddof=1), n and the t-interval mean ± t_{(1+level)/2, n-1} · sd/√n."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = int(arr.size)
    mean = float(arr.mean())
    if n == 1:
        # One replicate says nothing about spread: the interval is the whole line (no NaN, so
        # verdicts come out "inconclusive" and JSON stays readable).
        return {"mean": mean, "sd": math.inf, "n": 1, "level": level,
                "ci_low": -math.inf, "ci_high": math.inf}
    sd = float(arr.std(ddof=1))
    half = t_quantile(0.5 * (1.0 + level), n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "level": level,
            "ci_low": mean - half, "ci_high": mean + half}


def paired_ci(diffs: Sequence[float], level: float = 0.95) -> dict:
    """Paired t confidence interval of the mean difference over replicates, plus the sign count.

    Returns mean, sd (ddof=1), n, level, ci_low, ci_high (mean ± t_{(1+level)/2, n-1} · sd/√n;
    ±inf when n = 1) and n_pos, n_neg, n_zero (exact zeros). Differences must be finite.
    """
    arr = _as_finite_1d(diffs, "paired_ci")
    out = _mean_t_ci(arr, level)
    out["n_pos"] = int(np.sum(arr > 0))
    out["n_neg"] = int(np.sum(arr < 0))
    out["n_zero"] = int(np.sum(arr == 0))
    return out


DIRECTIONS = ("greater", "less", "equal", "approx")


def verdict(ci: dict, direction: str, tol: float | None = None) -> str:
    """Verdict on a claim about the mean paired difference from its confidence interval.

    "greater" / "less": the claim is difference > 0 / < 0. "holds" when the whole CI lies
    strictly on the claimed side of 0, "does not hold" when it lies strictly on the other side,
    else "inconclusive". "equal" / "approx": the claim is |difference| <= tol. "holds" when the
    CI lies inside [-tol, tol], "does not hold" when it lies entirely outside, else "inconclusive".
    """
    lo, hi = float(ci["ci_low"]), float(ci["ci_high"])
    if math.isnan(lo) or math.isnan(hi):
        return "inconclusive"
    if direction == "greater":
        return "holds" if lo > 0 else "does not hold" if hi < 0 else "inconclusive"
    if direction == "less":
        return "holds" if hi < 0 else "does not hold" if lo > 0 else "inconclusive"
    if direction in ("equal", "approx"):
        if tol is None or not tol >= 0:
            raise ValueError(f"direction {direction!r} needs a tolerance tol >= 0, got {tol}")
        if -tol <= lo and hi <= tol:
            return "holds"
        if lo > tol or hi < -tol:
            return "does not hold"
        return "inconclusive"
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def _t_sf(t: float, df: float) -> float:
    """P(T > t) for any real t, ±inf included (Student t, df degrees of freedom)."""
    if t >= 0.0:
        return _t_upper_tail(t, df)
    return 1.0 - _t_upper_tail(-t, df)


def _t_stat(num: float, se: float) -> float:
    """num / se, with a zero standard error giving ±inf (or 0 when num is 0 too)."""
    if se > 0.0:
        return num / se
    return math.copysign(math.inf, num) if num != 0.0 else 0.0


def paired_t_p(diffs: Sequence[float]) -> float | None:
    """Two-sided p-value of the paired t-test of mean difference 0: 2·P(T_{n-1} > |t|), t =
    mean / (sd/√n). The same t as ``paired_ci``: p < 1 - level exactly when that interval
    excludes 0. None for n = 1 (no spread, no test)."""
    arr = _as_finite_1d(diffs, "paired_t_p")
    n = arr.size
    if n < 2:
        return None
    t = _t_stat(float(arr.mean()), float(arr.std(ddof=1)) / math.sqrt(n))
    return min(1.0, 2.0 * _t_sf(abs(t), n - 1))


def tost_p(diffs: Sequence[float], tol: float) -> float | None:
    """p-value of the two one-sided t-tests (TOST, Schuirmann 1987) of equivalence |mean| < tol:
    the larger of the p-values of H0: mean <= -tol and H0: mean >= tol. None for n = 1.

    Equivalence at level α by TOST is the (1 - 2α) interval inside [-tol, tol]; ``verdict`` asks
    the ``level`` interval to be inside, which is TOST at (1 - level)/2 per side."""
    if not tol >= 0:
        raise ValueError(f"tost_p needs a tolerance tol >= 0, got {tol}")
    arr = _as_finite_1d(diffs, "tost_p")
    n = arr.size
    if n < 2:
        return None
    mean, se = float(arr.mean()), float(arr.std(ddof=1)) / math.sqrt(n)
    p_low = _t_sf(_t_stat(mean + tol, se), n - 1)  # H0: mean <= -tol
    p_high = _t_sf(_t_stat(tol - mean, se), n - 1)  # H0: mean >= tol
    return max(p_low, p_high)


def claim_row(name: str, diffs: Sequence[float], direction: str, tol: float | None = None,
              level: float = 0.95) -> dict:
    """One claim of the study: paired CI, sign count, verdict, p-value and the raw differences, as
    plain JSON-ready Python values (an n = 1 interval is written as ±Infinity, its p as null).

    ``p``: the two-sided paired t-test p for "greater" / "less" (``paired_t_p``), the TOST p of
    equivalence for "equal" / "approx" (``tost_p``); ``holm`` adjusts it over a family of claims."""
    ci = paired_ci(diffs, level)
    row = {"name": str(name), "direction": direction,
           "tol": None if tol is None else float(tol), **ci}
    row["verdict"] = verdict(ci, direction, tol)
    row["p"] = tost_p(diffs, tol) if direction in ("equal", "approx") else paired_t_p(diffs)
    row["diffs"] = [float(d) for d in diffs]
    return row


# ---------------------------------------------------------------------------------------------
# Multiplicity: Holm's step-down over a family of claims
# ---------------------------------------------------------------------------------------------


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm (1979) step-down adjusted p-values: with the m p-values sorted ascending,
    p~(i) = max_{j <= i} min(1, (m - j + 1)·p(j)), returned in the input order. Rejecting where
    p~ <= α controls the family-wise error rate at α under any dependence between the tests.

    A None (an untestable claim: one seed) counts in m as p = 1 and stays None."""
    ps = [1.0 if p is None else float(p) for p in pvalues]
    if any(not 0.0 <= p <= 1.0 for p in ps):
        raise ValueError(f"p-values must be in [0, 1], got {list(pvalues)}")
    m = len(ps)
    out: list[float | None] = [None] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: ps[i])):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = None if pvalues[i] is None else running
    return out


def holm_verdict(row: dict, p_adjusted: float | None, level: float) -> str:
    """Verdict of one claim row from its Holm-adjusted p at α = 1 - level.

    "greater" / "less" (two-sided p): "holds" when adjusted-significant with the mean on the
    claimed side, "does not hold" when adjusted-significant on the other side. "equal" / "approx"
    (TOST p): "holds" when the adjusted p is <= α/2, the level at which ``verdict`` reads the
    interval (so an adjusted verdict is never more lenient than the raw one); the family tests
    equivalence only, so it never says "does not hold". Else (and for n = 1) "inconclusive"."""
    alpha = 1.0 - level
    if p_adjusted is None:
        return "inconclusive"
    direction, mean = row["direction"], float(row["mean"])
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if direction in ("equal", "approx"):
        return "holds" if p_adjusted <= alpha / 2 else "inconclusive"
    if p_adjusted > alpha or mean == 0.0:
        return "inconclusive"
    return "holds" if (mean > 0) == (direction == "greater") else "does not hold"


def adjust_holm(rows: Sequence[dict], level: float, family: Sequence[bool] | None = None) -> list[dict]:
    """Holm-adjusted p (``p_holm``) and verdict (``verdict_holm``) of the claim rows in the family
    (default: every row; the study passes its secondary claims, as primary ones keep the verdict
    declared for them), set in place; rows outside the family get None for both. Returns rows."""
    family = [True] * len(rows) if family is None else list(family)
    if len(family) != len(rows):
        raise ValueError(f"family must have one flag per row, got {len(family)} for {len(rows)} rows")
    members = [r for r, f in zip(rows, family) if f]
    for r, p in zip(members, holm([r.get("p") for r in members])):
        r["p_holm"] = p
        r["verdict_holm"] = holm_verdict(r, p, level)
    for r, f in zip(rows, family):
        if not f:
            r["p_holm"] = r["verdict_holm"] = None
    return list(rows)


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.3g}"


def _relation(direction: str, tol: float | None) -> str:
    if direction == "greater":
        return "> 0"
    if direction == "less":
        return "< 0"
    return f"|diff| ≤ {_fmt(tol)}" if tol is not None else "diff ≈ 0"


def _fmt_p(row: dict) -> str:
    p = row.get("p")
    if p is None:
        return "–"
    return f"{p:.2g}" + (" (TOST)" if row["direction"] in ("equal", "approx") else "")


def claims_markdown(rows: Sequence[dict]) -> str:
    """Markdown table of claim rows: claim | mean diff | CI | signs (+/−/0) | n | p | verdict |
    Holm verdict. p: two-sided paired t (TOST for ≈ claims); Holm verdict: ``adjust_holm``'s, over
    the secondary claims ("primary" for a declared claim, "–" for a row never adjusted)."""
    levels = {float(r["level"]) for r in rows}
    same_level = len(levels) <= 1
    ci_head = f"{100 * levels.pop():g}% CI" if len(levels) == 1 else "CI"
    lines = [f"| claim | mean diff | {ci_head} | signs (+/−/0) | n | p | verdict | Holm verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        claim = f"{r['name']} ({_relation(r['direction'], r.get('tol'))})".replace("|", "\\|")
        ci = f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
        if not same_level:
            ci = f"{100 * r['level']:g}%: {ci}"
        signs = f"{r['n_pos']}/{r['n_neg']}/{r['n_zero']}"
        holm_cell = "primary" if r.get("primary") else r.get("verdict_holm") or "–"
        cells = [claim, _fmt(r["mean"]), ci, signs, str(r["n"]), _fmt_p(r), r["verdict"], holm_cell]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summarise_over_seeds(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean, sd (ddof=1), n and the t confidence interval of the mean of one method over seeds."""
    return _mean_t_ci(_as_finite_1d(values, "summarise_over_seeds"), level)


# ---------------------------------------------------------------------------------------------
# Best-of-N (Gao et al. 2022; WARM Sec. 5.1)
# ---------------------------------------------------------------------------------------------


def kl_bon(n: int) -> float:
    """KL(π_BoN ‖ π) = log n - (n-1)/n of best-of-n (Gao et al. 2022; WARM Sec. 5.1)."""
    if int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n}")
    return math.log(n) - (n - 1) / n


@functools.lru_cache(maxsize=256)
def _bon_weights(k: int, n: int) -> np.ndarray:
    """P(ascending rank j is the max of a uniform n-subset of k) = C(j-1, n-1) / C(k, n), j=1..k.

    Exact integer binomials with one correctly rounded division each: no overflow or
    cancellation for any k (C(256, 128) ~ 6e75 is a plain Python int).
    """
    total = math.comb(k, n)
    w = np.array([math.comb(j - 1, n - 1) / total for j in range(1, k + 1)], dtype=np.float64)
    w.setflags(write=False)
    return w


def bon_expected_gold_per_prompt(proxy: np.ndarray, gold: np.ndarray, n: int) -> np.ndarray:
    """Exact expected gold reward of best-of-n per prompt, from K >= n samples per prompt.

    proxy, gold: [P, K]. The expectation is over a uniformly random n-subset (without
    replacement) of each prompt's K samples, of the gold reward of the subset's proxy argmax
    (Gao et al. 2022 unbiased estimator). Ties in proxy go to the sample with the smaller index,
    as np.argmax over the subset would pick. Returns [P].
    """
    proxy = np.asarray(proxy, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.float64)
    if proxy.ndim != 2 or proxy.shape != gold.shape:
        raise ValueError(
            f"proxy and gold must be [P, K] of one shape, got {proxy.shape}, {gold.shape}")
    n_prompts, k = proxy.shape
    if n_prompts == 0 or k == 0:
        raise ValueError(f"need at least one prompt and one sample, got shape {proxy.shape}")
    if int(n) != n or not 1 <= n <= k:
        raise ValueError(f"n must be an integer in [1, K={k}], got {n}")
    if not (np.all(np.isfinite(proxy)) and np.all(np.isfinite(gold))):
        raise ValueError("proxy and gold rewards must be finite")
    # Ascending by proxy; among equal proxies the larger index first, so the smaller index
    # ranks higher and wins the subset's argmax.
    index = np.broadcast_to(np.arange(k), proxy.shape)
    order = np.lexsort((-index, proxy), axis=-1)  # [P, K]
    gold_sorted = np.take_along_axis(gold, order, axis=-1)  # [P, K]
    return gold_sorted @ _bon_weights(k, int(n))


# ---------------------------------------------------------------------------------------------
# Curves against KL: matched-KL comparison, peak, smoothing
# ---------------------------------------------------------------------------------------------


def _curve_points(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Finite (x, y) points sorted by x, y averaged over duplicate x."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have one length, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    ux, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=y, minlength=ux.size)
    counts = np.bincount(inverse, minlength=ux.size)
    return ux, sums / np.maximum(counts, 1)


def value_at(x: Sequence[float], y: Sequence[float], targets: Sequence[float]) -> list[float]:
    """Curve y(x) at each target by linear interpolation, for comparison at matched KL
    (Gao et al. 2022; WARP Sec. 4). Points are sorted by x, y is averaged over duplicate x and
    points with a non-finite x or y are dropped; targets outside [min x, max x] give NaN
    (never extrapolated)."""
    ux, uy = _curve_points(x, y)
    t = np.asarray(targets, dtype=np.float64).reshape(-1)
    if ux.size == 0:
        return [math.nan] * t.size
    out = np.interp(t, ux, uy)
    out[~((t >= ux[0]) & (t <= ux[-1]))] = np.nan  # also NaN targets
    return [float(v) for v in out]


def peak(y: Sequence[float]) -> float:
    """Peak of a gold-reward curve: the max over its finite values (NaN when there are none)."""
    arr = np.asarray(y, dtype=np.float64).reshape(-1)
    arr = arr[~np.isnan(arr)]
    return float(arr.max()) if arr.size else math.nan


def held_out_peak(select: Sequence[float], measure: Sequence[float]) -> tuple[int | None, float]:
    """Peak of a gold-reward curve without the upward bias of the max of noisy points.

    The max over a curve's evaluation points is the true peak plus the largest of the noises of
    the points near it: biased upwards, more so the more points sit near the peak (project notes,
    "Preconditions and pitfalls"). Here two independent evaluation draws of the same policies do
    different jobs: ``select`` (draw A) picks the peak point, i* = argmax over its finite values,
    and ``measure`` (draw B) reports it, measure[i*]. B's noise is independent of the choice, so
    the estimate is unbiased for the true gold of the selected point, and for the true peak
    wherever selection finds it (it can only fall short of the peak by choosing a lower point).

    Returns (i*, measure[i*]); (None, NaN) when ``select`` has no finite value, and NaN when B's
    point is missing.
    """
    a = np.asarray(select, dtype=np.float64).reshape(-1)
    b = np.asarray(measure, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"select and measure must have one length, got {a.size} and {b.size}")
    finite = np.isfinite(a)
    if not finite.any():
        return None, math.nan
    i = int(np.argmax(np.where(finite, a, -np.inf)))
    return i, float(b[i])


def pooled_within_sd(values) -> float:
    """Pooled within-group SD: sqrt of the mean over groups (rows) of each row's variance (ddof=1).

    The spread a leave-one-out baseline passes to the advantage is the within-prompt one (the
    between-prompt part is the baseline's to remove), so a reward standardised by this SD, on
    several samples per prompt, gives β the same meaning whatever the reward's between-prompt
    spread (project notes, "Preconditions and pitfalls"). values: [prompts, samples], samples >= 2.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 2:
        raise ValueError(f"need [groups >= 1, samples >= 2] values, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("pooled_within_sd: values must be finite")
    return float(np.sqrt(arr.var(axis=1, ddof=1).mean()))


def smooth(y: Sequence[float], window: int) -> list[float]:
    """Trailing moving average: point i is the mean of y[i-window+1 .. i] (fewer at the start),
    NaNs ignored (NaN when the whole window is NaN)."""
    if int(window) != window or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window}")
    arr = np.asarray(y, dtype=np.float64).reshape(-1)
    valid = ~np.isnan(arr)
    csum = np.concatenate([[0.0], np.cumsum(np.where(valid, arr, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(valid)])
    idx = np.arange(arr.size)
    start = np.maximum(idx - int(window) + 1, 0)
    total = csum[idx + 1] - csum[start]
    count = ccount[idx + 1] - ccount[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return [float(v) for v in out]
