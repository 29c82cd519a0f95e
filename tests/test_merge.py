"""Property tests for warm_ray.merge: WARM averaging, WARP SLERP/LITI/EMA, numerics and errors.

State dicts are small and random (a few float tensors of mixed shapes, plus an int64 and a
bool buffer). Hypothesis draws the layout, the number of models and a seed; torch draws the
values, which keeps generation fast. Float32 results are compared with a float64 reference.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from warm_ray import geometry, merge

# Two threads collapse when the other core is busy on a 2-core machine; these tensors are tiny.
torch.set_num_threads(1)

FAST = settings(max_examples=40, deadline=None)
SLOW = settings(max_examples=25, deadline=None)

# Mixed shapes, including a scalar, a single element and an empty tensor (chunk-loop edge cases).
SHAPES = [(), (1,), (7,), (3, 4), (2, 3, 2), (0, 3), (16, 8)]
FLOAT_DTYPES = [torch.float32, torch.bfloat16]

StateDict = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Builders and comparison helpers
# --------------------------------------------------------------------------------------------


def make_sd(shapes: list[tuple[int, ...]], seed: int, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> StateDict:
    """A random state dict: float tensors ``w{i}`` plus an int64 and a bool buffer."""
    gen = torch.Generator().manual_seed(seed)
    sd: StateDict = {}
    for i, shape in enumerate(shapes):
        sd[f"w{i}"] = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    sd["pos_ids"] = torch.randint(0, 1000, (5,), generator=gen, dtype=torch.int64)
    sd["mask"] = torch.rand((2, 3), generator=gen) > 0.5
    return sd


def float_keys(sd: StateDict) -> list[str]:
    return [k for k, v in sd.items() if v.is_floating_point()]


def max_abs(sds: list[StateDict]) -> float:
    vals = [float(t.abs().max()) for sd in sds for k, t in sd.items() if t.is_floating_point() and t.numel()]
    return max(vals, default=0.0)


def reference_linear(sds: list[StateDict], coeffs: list[float]) -> StateDict:
    """sum_i c_i * sd_i in float64 for float keys; int/bool keys from the first state dict."""
    out: StateDict = {}
    for key, first in sds[0].items():
        if first.is_floating_point():
            out[key] = sum(c * sd[key].double() for c, sd in zip(coeffs, sds))
        else:
            out[key] = first.clone()
    return out


def assert_sd_close(out: StateDict, ref: StateDict, atol: float, rtol: float = 1e-5) -> None:
    """Same keys, shapes and dtypes as the inputs; float values close; buffers equal."""
    assert list(out.keys()) == list(ref.keys())
    for key, r in ref.items():
        o = out[key]
        assert o.shape == r.shape, key
        if r.is_floating_point():
            torch.testing.assert_close(o.double(), r.double(), atol=atol, rtol=rtol, msg=lambda m: f"{key}: {m}")
        else:
            assert o.dtype == r.dtype and torch.equal(o, r), key


def assert_sd_equal(out: StateDict, ref: StateDict) -> None:
    assert list(out.keys()) == list(ref.keys())
    for key, r in ref.items():
        assert out[key].dtype == r.dtype, key
        assert torch.equal(out[key], r), key


def assert_within_bf16_ulp(out: StateDict, ref_fp32: StateDict, atol: float = 0.0) -> None:
    """bf16 output within one bf16 ulp (relative, 2**-7) of the float32 result cast to bf16.

    ``atol`` is for references computed in another order, where values that cancel to ~0
    carry float32 noise of order eps32 · max|input|.
    """
    for key, r in ref_fp32.items():
        o = out[key]
        if not r.is_floating_point():
            assert torch.equal(o, r), key
            continue
        assert o.dtype == torch.bfloat16, key
        expected = r.to(torch.bfloat16).float()
        err = (o.float() - expected).abs()
        # bf16 keeps 8 significant bits: one ulp is at most 2**-7 of the value; the tiny
        # absolute term only matters for exact zeros and subnormals.
        bound = expected.abs() * 2.0**-7 + torch.finfo(torch.bfloat16).tiny + atol
        assert bool((err <= bound).all()), f"{key}: max err {float(err.max())}"


def to_dtype(sd: StateDict, dtype: torch.dtype) -> StateDict:
    return {k: (v.to(dtype) if v.is_floating_point() else v.clone()) for k, v in sd.items()}


layouts = st.lists(st.sampled_from(SHAPES), min_size=1, max_size=4)
seeds = st.integers(0, 2**31 - 1)
scales = st.sampled_from([1e-3, 1.0, 10.0, 1e3])
lams = st.floats(0.0, 1.0, allow_nan=False)


def models_from(shapes: list[tuple[int, ...]], seed: int, m: int, scale: float = 1.0, dtype=torch.float32) -> list[StateDict]:
    return [make_sd(shapes, seed + 7919 * i, scale, dtype) for i in range(m)]


def fp32_atol(sds: list[StateDict]) -> float:
    # fp32 accumulation of M terms: error ~ M · eps32 · max|x|, with a margin.
    return 8 * len(sds) * 1.2e-7 * max(max_abs(sds), 1e-30)


# --------------------------------------------------------------------------------------------
# average (WARM)
# --------------------------------------------------------------------------------------------


@FAST
@given(layouts, seeds, st.integers(1, 5), scales)
def test_average_of_identical_models_is_that_model(shapes, seed, m, scale):
    sd = make_sd(shapes, seed, scale)
    out = merge.average([sd] * m)
    assert_sd_close(out, sd, atol=fp32_atol([sd] * m))


@FAST
@given(layouts, seeds, st.integers(2, 5), scales, st.randoms(use_true_random=False))
def test_average_does_not_depend_on_order(shapes, seed, m, scale, rnd):
    sds = models_from(shapes, seed, m, scale)
    perm = list(range(m))
    rnd.shuffle(perm)
    a = merge.average(sds)
    b = merge.average([sds[i] for i in perm])
    # Integer buffers come from the first model, so compare floats only.
    for key in float_keys(sds[0]):
        torch.testing.assert_close(a[key], b[key], atol=fp32_atol(sds), rtol=1e-5)
    assert_sd_close(a, reference_linear(sds, [1.0 / m] * m), atol=fp32_atol(sds))


@FAST
@given(layouts, seeds, st.integers(1, 6), scales)
def test_average_equals_running_mean(shapes, seed, m, scale):
    """avg_k = avg_{k-1} + (θ_k - avg_{k-1}) / k, i.e. a weighted average with weights [k-1, 1]."""
    sds = models_from(shapes, seed, m, scale)
    running = sds[0]
    for k in range(2, m + 1):
        running = merge.average([running, sds[k - 1]], weights=[k - 1, 1])
    direct = merge.average(sds)
    # The running mean rounds once per step: allow m roundings.
    assert_sd_close(running, {k: v for k, v in direct.items()}, atol=fp32_atol(sds) * m)


@FAST
@given(layouts, seeds, st.integers(1, 5), scales)
def test_average_one_hot_weights_return_first_model(shapes, seed, m, scale):
    sds = models_from(shapes, seed, m, scale)
    out = merge.average(sds, weights=[1.0] + [0.0] * (m - 1))
    assert_sd_equal(out, sds[0])


@FAST
@given(layouts, seeds, st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=1, max_size=5), scales)
def test_weighted_average_equals_normalised_sum(shapes, seed, weights, scale):
    assume(sum(weights) > 1e-6)
    sds = models_from(shapes, seed, len(weights), scale)
    total = sum(weights)
    out = merge.average(sds, weights=weights)
    assert_sd_close(out, reference_linear(sds, [w / total for w in weights]), atol=fp32_atol(sds))


def test_normalise_weights():
    assert merge.normalise_weights(None, 4) == [0.25] * 4
    assert merge.normalise_weights([1, 3], 2) == [0.25, 0.75]


def test_average_handles_non_contiguous_inputs():
    """Transposed views must give the same result as their contiguous copies."""
    sds = [{"w": torch.randn(6, 9, generator=torch.Generator().manual_seed(i)).t()} for i in range(3)]
    contiguous = [{"w": sd["w"].contiguous()} for sd in sds]
    out = merge.average(sds)
    assert out["w"].shape == (9, 6)
    torch.testing.assert_close(out["w"], merge.average(contiguous)["w"], atol=0, rtol=0)


# --------------------------------------------------------------------------------------------
# SLERP, LERP and their norms (WARP Sec. 3.2)
# --------------------------------------------------------------------------------------------


def task_vector_pair(n: int, omega: float, norm: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float64 vectors of the same norm at angle ``omega``: δ_b = l(cos Ω·u + sin Ω·v)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(n, generator=gen, dtype=torch.float64)
    u /= u.norm()
    v = torch.randn(n, generator=gen, dtype=torch.float64)
    v -= (v @ u) * u  # Gram-Schmidt: v ⟂ u
    v /= v.norm()
    return norm * u, norm * (math.cos(omega) * u + math.sin(omega) * v)


def triple(shapes: list[tuple[int, ...]], seed: int, omega: float, norm: float) -> tuple[StateDict, StateDict, StateDict]:
    """init, a, b whose task vectors have the same norm and angle Ω in every tensor."""
    init = make_sd(shapes, seed)
    a, b = dict(init), dict(init)
    for i, key in enumerate(float_keys(init)):
        shape = init[key].shape
        da, db = task_vector_pair(init[key].numel(), omega, norm, seed + i)
        a[key] = (init[key].double() + da.reshape(shape)).float()
        b[key] = (init[key].double() + db.reshape(shape)).float()
    return init, a, b


def tv_norm(sd: StateDict, init: StateDict, key: str) -> float:
    return float((sd[key].double() - init[key].double()).norm())


@FAST
@given(layouts, seeds, scales)
def test_slerp_endpoints(shapes, seed, scale):
    init, a, b = models_from(shapes, seed, 3, scale)
    for lam, expected in ((0.0, a), (1.0, b)):
        out = merge.slerp(init, a, b, lam)
        for key in float_keys(expected):
            assert torch.equal(out[key], expected[key]), (lam, key)
    # Buffers come from the first input (init), as for every merge.
    assert torch.equal(out["pos_ids"], init["pos_ids"])


matrix_layouts = st.lists(st.sampled_from([(7,), (3, 4), (2, 3, 2), (16, 8)]), min_size=1, max_size=3)
# Angles away from 0 and π: there SLERP falls back to LERP on purpose.
omegas = st.floats(0.1, 3.0, allow_nan=False)


@FAST
@given(matrix_layouts, seeds, omegas, lams, st.sampled_from([0.01, 0.5, 3.0]))
def test_slerp_keeps_task_vector_norm(shapes, seed, omega, lam, norm):
    init, a, b = triple(shapes, seed, omega, norm)
    out = merge.slerp(init, a, b, lam)
    for key in float_keys(init):
        assert tv_norm(out, init, key) == pytest.approx(norm, rel=2e-4), key


@FAST
@given(matrix_layouts, seeds, omegas, lams, st.sampled_from([0.01, 0.5, 3.0]))
def test_lerp_norm_formula(shapes, seed, omega, lam, norm):
    """LERP of task vectors has norm l·sqrt(1 - 2(1-cos Ω)(λ-λ²)) (PAPERS.md)."""
    init, a, b = triple(shapes, seed, omega, norm)
    out = merge.average([a, b], weights=[1.0 - lam, lam])
    expected = norm * math.sqrt(1.0 - 2.0 * (1.0 - math.cos(omega)) * (lam - lam * lam))
    for key in float_keys(init):
        assert tv_norm(out, init, key) == pytest.approx(expected, rel=2e-4, abs=1e-5 * norm), key


@pytest.mark.parametrize(
    ("omega", "lam", "expected_ratio"),
    [(math.pi / 2, 0.5, math.sqrt(0.5)), (math.pi / 3, 0.5, math.sqrt(0.75)), (math.pi / 2, 0.25, math.sqrt(0.625))],
)
def test_lerp_norm_numbers(omega, lam, expected_ratio):
    """The formula with numbers: Ω=90°, λ=½ → 0.7071; Ω=60°, λ=½ → 0.8660; Ω=90°, λ=¼ → 0.7906."""
    init, a, b = triple([(64,)], 3, omega, 2.0)
    out = merge.average([a, b], weights=[1.0 - lam, lam])
    assert tv_norm(out, init, "w0") == pytest.approx(2.0 * expected_ratio, rel=1e-5)


@SLOW
@given(matrix_layouts, seeds, st.sampled_from([0.01, 1.0, 5.0]))
def test_orthogonal_slerp_keeps_norm_lerp_shrinks_it(shapes, seed, norm):
    init, a, b = triple(shapes, seed, math.pi / 2, norm)
    s = merge.slerp(init, a, b, 0.5)
    lerp = merge.average([a, b])
    for key in float_keys(init):
        assert tv_norm(s, init, key) == pytest.approx(norm, rel=2e-4)
        assert tv_norm(lerp, init, key) == pytest.approx(norm / math.sqrt(2.0), rel=2e-4)
        assert tv_norm(lerp, init, key) / tv_norm(s, init, key) == pytest.approx(0.7071, abs=1e-3)


@FAST
@given(layouts, seeds, lams, st.sampled_from(["zero_a", "zero_b", "parallel", "antiparallel"]))
def test_slerp_falls_back_to_lerp(shapes, seed, lam, case):
    init, a, b = models_from(shapes, seed, 3)
    if case == "zero_a":
        a = {k: v.clone() for k, v in init.items()}
    elif case == "zero_b":
        b = {k: v.clone() for k, v in init.items()}
    else:
        # δ_b = ±2.5 δ_a in every tensor: cos Ω = ±1, SLERP is undefined.
        sign = 1.0 if case == "parallel" else -1.0
        b = {k: (init[k] + sign * 2.5 * (a[k] - init[k]) if v.is_floating_point() else v) for k, v in b.items()}
    out = merge.slerp(init, a, b, lam)
    lerp = reference_linear([init, a, b], [0.0, 1.0 - lam, lam])
    lerp = {k: v for k, v in lerp.items()}
    for key in float_keys(init):
        torch.testing.assert_close(out[key].double(), lerp[key], atol=fp32_atol([init, a, b]) * 4, rtol=1e-5)
        # and the coefficients themselves are the LERP ones
        da, db = a[key].float() - init[key].float(), b[key].float() - init[key].float()
        if da.numel() and (case.startswith("zero") or da.norm() > 1e-3):
            assert merge.slerp_coefficients(da, db, lam) == (1.0 - lam, lam)


def test_slerp_coefficients_match_the_formula():
    da, db = task_vector_pair(32, 1.0, 1.0, 0)
    c_a, c_b = merge.slerp_coefficients(da.float(), db.float(), 0.3)
    assert c_a == pytest.approx(math.sin(0.7) / math.sin(1.0), rel=1e-5)
    assert c_b == pytest.approx(math.sin(0.3) / math.sin(1.0), rel=1e-5)


# --------------------------------------------------------------------------------------------
# slerp_many, LITI, EMA
# --------------------------------------------------------------------------------------------


@FAST
@given(layouts, seeds, st.integers(1, 5), st.booleans())
def test_slerp_many_of_identical_models_is_that_model(shapes, seed, m, same_as_init):
    init, theta = models_from(shapes, seed, 2)
    if same_as_init:  # every task vector is zero
        theta = init
    out = merge.slerp_many(init, [theta] * m)
    # Floats are θ; buffers come from the first input, init, for every m (m=1 included).
    expected = {k: (v if v.is_floating_point() else init[k]) for k, v in theta.items()}
    assert_sd_close(out, expected, atol=fp32_atol([init, theta]))


@FAST
@given(layouts, seeds, scales)
def test_slerp_many_of_two_is_slerp_half(shapes, seed, scale):
    init, a, b = models_from(shapes, seed, 3, scale)
    assert_sd_equal(merge.slerp_many(init, [a, b]), merge.slerp(init, a, b, 0.5))


@SLOW
@given(matrix_layouts, seeds, st.integers(3, 4))
def test_slerp_many_is_recursive_slerp(shapes, seed, m):
    """The one-pass form against the recursion run step by step with ``slerp``: the latter
    rounds each intermediate model to float32, so they agree within float32 rounding."""
    init, *models = models_from(shapes, seed, m + 1)
    expected = models[0]
    for k, model in enumerate(models[1:], start=2):
        expected = merge.slerp(init, expected, model, 1.0 / k)
    out = merge.slerp_many(init, models)
    assert_sd_close(out, expected, atol=4 * fp32_atol([init, *models]))


def reference_slerp_many(init: StateDict, models: list[StateDict]) -> StateDict:
    """The recursive definition in float64, tensor by tensor, with the same LERP fallbacks:
    merged_1 = δ_1, merged_m = SLERP(merged_{m-1}, δ_m; λ = 1/m), result θ_init + merged_M."""
    out: StateDict = {}
    for key, x0 in init.items():
        if not x0.is_floating_point():
            out[key] = x0.clone()
            continue
        base = x0.double().reshape(-1)
        deltas = [sd[key].double().reshape(-1) - base for sd in models]
        merged = deltas[0]
        for m, d in enumerate(deltas[1:], start=2):
            lam = 1.0 / m
            na, nb = float(merged.norm()), float(d.norm())
            cos = float(merged @ d) / (na * nb) if min(na, nb) >= merge.NORM_EPS else 1.0
            if abs(cos) > merge.COS_PARALLEL:
                merged = (1.0 - lam) * merged + lam * d
            else:
                omega = math.acos(max(-1.0, min(1.0, cos)))
                merged = (math.sin((1.0 - lam) * omega) * merged + math.sin(lam * omega) * d) / math.sin(omega)
        out[key] = (base + merged).reshape(x0.shape)
    return out


def task_vector_models(shapes, seed: int, m: int, kinds: list[str], dtype=torch.float32) -> tuple[StateDict, list[StateDict]]:
    """init and m models whose task vectors are random, zero, or nearly parallel to the
    previous model's (cos ≈ 0.99999, far inside the LERP fallback) or to a random one just
    outside it (cos ≈ 0.998)."""
    init = make_sd(shapes, seed, dtype=dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    models: list[StateDict] = []
    for i in range(m):
        sd = dict(init)
        for key in float_keys(init):
            x0 = init[key].double()
            kind = kinds[i % len(kinds)]
            noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
            if kind == "zero":
                sd[key] = init[key].clone()
                continue
            if kind in ("parallel", "almost") and i > 0:
                prev = models[-1][key].double() - x0
                if float(prev.norm()) > 0:
                    # ‖noise‖ relative to ‖prev‖ sets the angle: 0.0045 → cos ≈ 0.99999, 0.063 → 0.998
                    scale = 0.0045 if kind == "parallel" else 0.063
                    noise = 1.3 * prev + scale * float(prev.norm()) * noise / float(noise.norm())
            sd[key] = (x0 + 0.1 * noise if kind == "random" or i == 0 else x0 + noise).to(dtype)
        models.append(sd)
    return init, models


slerp_kinds = st.lists(st.sampled_from(["random", "zero", "parallel", "almost"]), min_size=1, max_size=4)


@SLOW
@given(matrix_layouts, seeds, st.integers(1, 5), slerp_kinds)
def test_slerp_many_equals_the_recursive_definition(shapes, seed, m, kinds):
    init, models = task_vector_models(shapes, seed, m, kinds)
    out = merge.slerp_many(init, models)
    assert_sd_close(out, reference_slerp_many(init, models), atol=4 * fp32_atol([init, *models]))


@SLOW
@given(matrix_layouts, seeds, st.integers(2, 4), slerp_kinds)
def test_slerp_many_bf16_within_one_ulp_of_the_recursive_definition(shapes, seed, m, kinds):
    init, models = task_vector_models(shapes, seed, m, kinds, dtype=torch.bfloat16)
    ref = {k: (v.float() if v.is_floating_point() else v) for k, v in reference_slerp_many(init, models).items()}
    assert_within_bf16_ulp(merge.slerp_many(init, models), ref, atol=4 * fp32_atol([init, *models]))


def test_slerp_many_over_several_blocks_equals_the_recursive_definition():
    """Tensors of several blocks plus a tail: the Gram matrix adds up across blocks."""
    n = 3 * merge.CHUNK + 77
    init, models = task_vector_models([(n,), (5, 3)], 4, 4, ["random", "parallel", "zero", "random"])
    out = merge.slerp_many(init, models)
    assert_sd_close(out, reference_slerp_many(init, models), atol=4 * fp32_atol([init, *models]))


def test_recursive_slerp_weights_on_explicit_vectors():
    """Σ w_j δ_j from the Gram matrix equals the recursion carried out on the vectors."""
    gen = torch.Generator().manual_seed(0)
    deltas = torch.randn(5, 40, generator=gen, dtype=torch.float64)
    deltas[2] = 0.0  # a zero task vector
    deltas[3] = 2.0 * deltas[1] + 1e-4 * deltas[4]  # nearly parallel to an earlier one
    w = merge.recursive_slerp_weights((deltas @ deltas.t()).tolist(), [1.0 / m for m in range(2, 6)])
    init = {"x": torch.zeros(40, dtype=torch.float64)}
    models = [{"x": d.clone()} for d in deltas]
    expected = reference_slerp_many(init, models)["x"]
    torch.testing.assert_close(torch.tensor(w, dtype=torch.float64) @ deltas, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="need 4 SLERP coefficients"):
        merge.recursive_slerp_weights((deltas @ deltas.t()).tolist(), [0.5])


@FAST
@given(layouts, seeds, scales)
def test_liti_endpoints(shapes, seed, scale):
    init, merged = models_from(shapes, seed, 2, scale)
    assert_sd_equal(merge.liti(init, merged, 0.0), init)
    out = merge.liti(init, merged, 1.0)
    for key in float_keys(init):
        assert torch.equal(out[key], merged[key]), key


@FAST
@given(layouts, seeds, st.floats(0.0, 1.0, allow_nan=False))
def test_liti_interpolates(shapes, seed, eta):
    init, merged = models_from(shapes, seed, 2)
    out = merge.liti(init, merged, eta)
    assert_sd_close(out, reference_linear([init, merged], [1.0 - eta, eta]), atol=fp32_atol([init, merged]))


@FAST
@given(layouts, seeds, st.floats(0.0, 1.0, allow_nan=False), st.sampled_from(FLOAT_DTYPES))
def test_ema_update_in_place(shapes, seed, mu, dtype):
    anchor, current = models_from(shapes, seed, 2, dtype=dtype)
    before = {k: v.clone() for k, v in anchor.items()}
    ptrs = {k: v.data_ptr() for k, v in anchor.items()}
    tensors = {k: v for k, v in anchor.items()}
    out = merge.ema_update(anchor, current, mu)
    assert out is anchor
    for key, t in anchor.items():
        assert t is tensors[key] and t.data_ptr() == ptrs[key], f"{key} was replaced, not updated in place"
        assert t.dtype == before[key].dtype
    ref = reference_linear([before, current], [1.0 - mu, mu])
    if dtype == torch.float32:
        assert_sd_close(anchor, ref, atol=fp32_atol([before, current]))
    else:
        ref32 = merge.ema_update(to_dtype(before, torch.float32), to_dtype(current, torch.float32), mu)
        assert_within_bf16_ulp(anchor, ref32)


@FAST
@given(layouts, seeds, st.sampled_from(FLOAT_DTYPES))
def test_ema_update_mu_zero_leaves_anchor_unchanged(shapes, seed, dtype):
    anchor, current = models_from(shapes, seed, 2, dtype=dtype)
    before = {k: v.clone() for k, v in anchor.items()}
    merge.ema_update(anchor, current, 0.0)
    assert_sd_equal(anchor, before)


def test_ema_update_mu_one_copies_current_floats_only():
    anchor, current = models_from([(3, 4), (5,)], 1, 2)
    buffers = {k: anchor[k].clone() for k in ("pos_ids", "mask")}
    merge.ema_update(anchor, current, 1.0)
    for key in float_keys(current):
        assert torch.equal(anchor[key], current[key])
    for key, v in buffers.items():
        assert torch.equal(anchor[key], v), "integer/bool buffers of the anchor must stay as they are"


# --------------------------------------------------------------------------------------------
# dtype, device and buffers
# --------------------------------------------------------------------------------------------

# Each op reads its inputs from the list ``sds``; all take buffers from sds[0] except
# lerp_many, which ignores init by definition and so takes them from its first model.
OPS = {
    "average": lambda sds, p: merge.average(sds),
    "weighted": lambda sds, p: merge.average(sds, weights=[1.0 + i for i in range(len(sds))]),
    "slerp": lambda sds, p: merge.slerp(sds[0], sds[1], sds[2], p),
    "slerp_many": lambda sds, p: merge.slerp_many(sds[0], sds[1:]),
    "liti": lambda sds, p: merge.liti(sds[0], sds[1], p),
    "lerp_many": lambda sds, p: merge.lerp_many(sds[0], sds[1:]),
}


@SLOW
@given(layouts, seeds, st.sampled_from(sorted(OPS)), lams, scales)
def test_bf16_in_bf16_out_within_one_ulp_of_fp32(shapes, seed, op, p, scale):
    sds = models_from(shapes, seed, 4, scale, dtype=torch.bfloat16)
    out = OPS[op](sds, p)
    ref32 = OPS[op]([to_dtype(sd, torch.float32) for sd in sds], p)
    assert_within_bf16_ulp(out, ref32)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_outputs_stay_on_input_device_and_dtype(device, op, dtype):
    sds = [{k: v.to(device) for k, v in sd.items()} for sd in models_from([(3, 4), (5,)], 11, 4, dtype=dtype)]
    out = OPS[op](sds, 0.4)
    for key, t in out.items():
        assert t.device == sds[0][key].device, key
        assert t.dtype == sds[0][key].dtype, key
        assert t.shape == sds[0][key].shape, key


@FAST
@given(layouts, seeds, st.sampled_from(sorted(OPS)), lams)
def test_integer_and_bool_buffers_come_from_the_first_input(shapes, seed, op, p):
    sds = models_from(shapes, seed, 4)
    # Make the buffers differ between models so an average would show.
    for i, sd in enumerate(sds):
        sd["pos_ids"] = sd["pos_ids"] + 10 * i
        sd["mask"] = sd["mask"] ^ bool(i % 2)
    out = OPS[op](sds, p)
    first = sds[1] if op == "lerp_many" else sds[0]
    for key in ("pos_ids", "mask"):
        assert out[key].dtype == first[key].dtype
        assert torch.equal(out[key], first[key]), key
        assert out[key].data_ptr() != first[key].data_ptr(), "buffers must be copied, not aliased"


# --------------------------------------------------------------------------------------------
# Errors: every check raises ValueError naming what is wrong
# --------------------------------------------------------------------------------------------


def two() -> tuple[StateDict, StateDict]:
    return make_sd([(3, 4), (5,)], 1), make_sd([(3, 4), (5,)], 2)


ALL_MERGES = {
    "average": lambda a, b: merge.average([a, b]),
    "slerp": lambda a, b: merge.slerp(a, a, b, 0.5),
    "slerp_many": lambda a, b: merge.slerp_many(a, [a, b]),
    "liti": lambda a, b: merge.liti(a, b, 0.3),
    "ema_update": lambda a, b: merge.ema_update(a, b, 0.1),
}


@pytest.mark.parametrize("op", sorted(ALL_MERGES))
def test_missing_key_is_named(op):
    a, b = two()
    del b["w1"]
    with pytest.raises(ValueError, match="'w1'.*missing"):
        ALL_MERGES[op](a, b)


@pytest.mark.parametrize("op", sorted(ALL_MERGES))
def test_unexpected_key_is_named(op):
    a, b = two()
    b["extra.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"'extra\.weight'.*unexpected"):
        ALL_MERGES[op](a, b)


@pytest.mark.parametrize("op", sorted(ALL_MERGES))
def test_shape_mismatch_is_named(op):
    a, b = two()
    b["w0"] = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"'w0'.*shape"):
        ALL_MERGES[op](a, b)


@pytest.mark.parametrize("op", sorted(ALL_MERGES))
def test_dtype_mismatch_is_named(op):
    a, b = two()
    b["w1"] = b["w1"].to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"'w1'.*dtype"):
        ALL_MERGES[op](a, b)


@pytest.mark.parametrize("op", sorted(ALL_MERGES))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_non_finite_values_are_named(op, bad, dtype):
    a, b = (to_dtype(sd, dtype) for sd in two())
    b["w0"][1, 2] = bad
    with pytest.raises(ValueError, match=r"'w0'.*NaN or Inf"):
        ALL_MERGES[op](a, b)


@pytest.mark.parametrize("op", sorted(ALL_MERGES))
def test_non_finite_in_first_input_is_named(op):
    a, b = two()
    a["w1"][0] = math.nan
    with pytest.raises(ValueError, match=r"'w1'.*NaN or Inf"):
        ALL_MERGES[op](a, b)


@pytest.mark.parametrize(
    ("weights", "pattern"),
    [
        ([1.0, -0.5], "non-negative"),
        ([-1.0, -1.0], "non-negative"),
        ([1.0, math.nan], "finite"),
        ([math.inf, 1.0], "finite"),
        ([0.0, 0.0], "all weights are zero"),
        ([1.0], "1 weights for 2 models"),
        ([1.0, 1.0, 1.0], "3 weights for 2 models"),
        ([], "0 weights for 2 models"),
    ],
)
def test_bad_weights(weights, pattern):
    a, b = two()
    with pytest.raises(ValueError, match=pattern):
        merge.average([a, b], weights=weights)


@pytest.mark.parametrize("lam", [-0.1, 1.0001, math.nan, math.inf])
def test_slerp_lam_out_of_range(lam):
    a, b = two()
    with pytest.raises(ValueError, match="lam must be in"):
        merge.slerp(a, a, b, lam)


@pytest.mark.parametrize("mu", [-0.01, 1.5, math.nan])
def test_ema_mu_out_of_range(mu):
    a, b = two()
    with pytest.raises(ValueError, match="mu must be in"):
        merge.ema_update(a, b, mu)


@pytest.mark.parametrize("eta", [math.nan, math.inf])
def test_liti_eta_not_finite(eta):
    a, b = two()
    with pytest.raises(ValueError, match="eta must be finite"):
        merge.liti(a, b, eta)


@pytest.mark.parametrize("weights", [None, []])
def test_average_of_no_models(weights):
    with pytest.raises(ValueError, match="at least one model"):
        merge.average([], weights=weights)


def test_slerp_many_of_no_models():
    a, _ = two()
    with pytest.raises(ValueError, match="at least one model"):
        merge.slerp_many(a, [])


def test_non_tensor_value_is_named():
    a, b = two()
    b["w0"] = [1.0, 2.0]
    with pytest.raises(ValueError, match=r"'w0'.*not a tensor"):
        merge.average([a, b])


def test_errors_leave_ema_anchor_untouched():
    """Inputs are checked before any arithmetic: a bad later key must not half-update the anchor."""
    a, b = two()
    before = {k: v.clone() for k, v in a.items()}
    b["w1"][0] = math.inf  # w0 comes first and would be updated by a check-as-you-go loop
    with pytest.raises(ValueError):
        merge.ema_update(a, b, 0.5)
    assert_sd_equal(a, before)


# --------------------------------------------------------------------------------------------
# Tensors larger than one chunk: the chunked path and its tail
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_tensors_larger_than_chunk(dtype):
    n = merge.CHUNK + 123
    gen = torch.Generator().manual_seed(0)
    sds = [
        {"big": torch.randn(n, generator=gen).to(dtype), "mat": torch.randn(3, n // 3 + 1, generator=gen).to(dtype)}
        for _ in range(4)
    ]
    # Mark the tail so a skipped or misplaced last chunk shows as a large error.
    for i, sd in enumerate(sds):
        sd["big"][-123:] = 100.0 + i

    weights = [1.0, 2.0, 3.0, 4.0]
    out = merge.average(sds, weights=weights)
    ref = {k: sum(w / 10.0 * sd[k].float() for w, sd in zip(weights, sds)) for k in sds[0]}
    noise = 1e-5 * 103.0  # float32 noise on values that cancel, relative to max|input|
    assert_within_bf16_ulp(out, ref, noise) if dtype == torch.bfloat16 else assert_sd_close(out, ref, atol=noise)
    assert torch.allclose(out["big"][-123:].float(), torch.full((123,), 102.0), rtol=2**-7)

    init, a, b = sds[:3]
    s = merge.slerp(init, a, b, 0.3)
    ref32 = merge.slerp(*(to_dtype(sd, torch.float32) for sd in (init, a, b)), 0.3)
    if dtype == torch.bfloat16:
        assert_within_bf16_ulp(s, ref32)
    # Per tensor, SLERP output = init + c_a δ_a + c_b δ_b over all n elements, tail included.
    for key in ("big", "mat"):
        da, db = a[key].float() - init[key].float(), b[key].float() - init[key].float()
        c_a, c_b = merge.slerp_coefficients(da, db, 0.3)
        expected = init[key].double() + c_a * da.double() + c_b * db.double()
        tol = 2.0**-7 if dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(s[key].double(), expected, rtol=tol, atol=tol)

    anchor = {k: v.clone() for k, v in sds[0].items()}
    merge.ema_update(anchor, sds[1], 0.25)
    ema_ref = {k: 0.75 * sds[0][k].float() + 0.25 * sds[1][k].float() for k in anchor}
    if dtype == torch.bfloat16:
        assert_within_bf16_ulp(anchor, ema_ref, noise)
    else:
        assert_sd_close(anchor, ema_ref, atol=noise)


# --------------------------------------------------------------------------------------------
# Output buffers (out=): same results as allocating, reused tensors, aliasing, errors
# --------------------------------------------------------------------------------------------

OUT_OPS = {
    "average": lambda sds, p, out: merge.average(sds, out=out),
    "weighted": lambda sds, p, out: merge.average(sds, weights=[1.0 + i for i in range(len(sds))], out=out),
    "slerp": lambda sds, p, out: merge.slerp(sds[0], sds[1], sds[2], p, out=out),
    "slerp_many": lambda sds, p, out: merge.slerp_many(sds[0], sds[1:], out=out),
    "liti": lambda sds, p, out: merge.liti(sds[0], sds[1], p, out=out),
    "liti_extrapolate": lambda sds, p, out: merge.liti(sds[0], sds[1], 1.0 + 2.0 * p, out=out),
    "lerp_many": lambda sds, p, out: merge.lerp_many(sds[0], sds[1:], out=out),
    "ema": lambda sds, p, out: merge.ema_update(sds[0], sds[1], p, out=out),
}


@FAST
@given(layouts, seeds, st.sampled_from(sorted(OUT_OPS)), lams, st.sampled_from(FLOAT_DTYPES))
def test_out_equals_the_allocating_result_and_reuses_its_tensors(shapes, seed, op, p, dtype):
    sds = models_from(shapes, seed, 4, dtype=dtype)
    before = [{k: v.clone() for k, v in sd.items()} for sd in sds]
    fresh = OUT_OPS[op](sds, p, {})  # an empty dict is filled with new tensors
    # A buffer that already holds other values (a previous version) and is written in place.
    out = {k: torch.full_like(v, 7) for k, v in fresh.items()}
    tensors = dict(out)
    returned = OUT_OPS[op](sds, p, out)
    assert returned is out
    assert_sd_equal(out, fresh)
    assert all(out[k] is tensors[k] for k in out), "out tensors were replaced, not written into"
    for sd, b in zip(sds, before):  # inputs are only read (ema_update with out= included)
        assert_sd_equal(sd, b)
    if op == "ema":
        # In place on the anchor gives the same values as writing into out.
        assert_sd_equal(merge.ema_update(sds[0], sds[1], p), fresh)


def test_out_missing_keys_are_added():
    a, b = two()
    out = {"w0": torch.empty(3, 4)}
    w0 = out["w0"]
    merge.average([a, b], out=out)
    assert list(out) == ["w0", "w1", "pos_ids", "mask"] and out["w0"] is w0
    assert_sd_equal(out, merge.average([a, b]))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_out_may_be_one_of_the_inputs(dtype):
    """An in-place LITI or average: each block of the aliased input is read before it is written."""
    n = 2 * merge.CHUNK + 5
    gen = torch.Generator().manual_seed(0)
    make = lambda: {"big": torch.randn(n, generator=gen).to(dtype), "w": torch.randn(4, 3, generator=gen).to(dtype)}
    init, merged, third = make(), make(), make()
    for op, args in {
        "liti": lambda out: merge.liti(init, merged, 0.3, out=out),
        "average": lambda out: merge.average([init, merged, third], weights=[1.0, 2.0, 3.0], out=out),
        "slerp": lambda out: merge.slerp(init, merged, third, 0.4, out=out),
    }.items():
        expected = args(None)
        for target in ("init", "merged"):
            sds = {"init": init, "merged": merged}
            saved = {k: v.clone() for k, v in sds[target].items()}
            args(sds[target])
            assert_sd_equal(sds[target], expected)
            for k, v in saved.items():  # restore for the next case
                sds[target][k].copy_(v)


def test_out_with_strided_tensors():
    a, b = two()
    out = {k: (torch.empty(4, 3).t() if k == "w0" else torch.empty_like(v)) for k, v in a.items()}
    assert not out["w0"].is_contiguous()
    merge.liti(a, b, 0.25, out=out)
    assert_sd_equal(out, merge.liti(a, b, 0.25))


@pytest.mark.parametrize(
    ("out", "pattern"),
    [
        ({"w0": torch.empty(4, 3)}, r"out key 'w0'.*\(4, 3\)"),
        ({"w0": torch.empty(3, 4, dtype=torch.float64)}, r"out key 'w0'.*float64"),
        ({"extra": torch.empty(1)}, r"out has key 'extra'"),
        ({"w0": [0.0]}, r"out key 'w0'.*not a tensor"),
    ],
)
def test_bad_out_is_named(out, pattern):
    a, b = two()
    with pytest.raises(ValueError, match=pattern):
        merge.average([a, b], out=out)


@pytest.mark.parametrize("op", ["average", "slerp_many", "liti", "ema"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_non_finite_in_a_later_block_is_named_with_out(op, dtype):
    """The check fused into the write sees every block, the tail included."""
    n = 2 * merge.CHUNK + 9
    gen = torch.Generator().manual_seed(1)
    sds = [{"a": torch.randn(5, generator=gen).to(dtype), "big": torch.randn(n, generator=gen).to(dtype)} for _ in range(3)]
    sds[2]["big"][-3] = math.nan
    run = {
        "average": lambda out: merge.average(sds, out=out),
        "slerp_many": lambda out: merge.slerp_many(sds[0], sds[1:], out=out),
        "liti": lambda out: merge.liti(sds[1], sds[2], 0.5, out=out),
        "ema": lambda out: merge.ema_update(sds[1], sds[2], 0.5, out=out),
    }[op]
    with pytest.raises(ValueError, match=r"'big' of (model|state dict) \d contains NaN or Inf"):
        run({})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_extrapolation_that_overflows_the_dtype_is_named(dtype):
    """LITI with η > 1 can leave the range of a low-precision dtype although every input is finite."""
    big = torch.finfo(dtype).max
    init = {"w": torch.tensor([0.0, -big / 2], dtype=dtype)}
    merged = {"w": torch.tensor([1.0, big / 2], dtype=dtype)}
    with pytest.raises(ValueError, match="overflowed its dtype"):
        merge.liti(init, merged, 3.0)
    ok = merge.liti(init, merged, 0.75)  # a convex combination stays in range
    assert bool(torch.isfinite(ok["w"]).all())


# --------------------------------------------------------------------------------------------
# Task-vector geometry: per-tensor angles, their spread, tied weights counted once
# --------------------------------------------------------------------------------------------


def angled_models(omegas_deg: dict[str, float], norms: dict[str, tuple[float, float]], seed: int = 0
                  ) -> tuple[StateDict, StateDict, StateDict]:
    """init, a, b whose task vectors in tensor ``key`` are at angle ``omegas_deg[key]`` with norms
    ``norms[key]``; a zero norm makes that task vector zero. Plus an int64 buffer."""
    gen = torch.Generator().manual_seed(seed)
    init, a, b = {}, {}, {}
    for i, (key, deg) in enumerate(omegas_deg.items()):
        shape = (4, 4 + i)
        init[key] = torch.randn(shape, generator=gen, dtype=torch.float64)
        da, db = task_vector_pair(init[key].numel(), math.radians(deg), 1.0, seed + i)
        a[key] = init[key] + norms[key][0] * da.reshape(shape)
        b[key] = init[key] + norms[key][1] * db.reshape(shape)
    for sd in (init, a, b):
        sd["pos_ids"] = torch.arange(5)
    return init, a, b


def test_task_vector_angles_of_constructed_tensors():
    """Each tensor's angle is its own Ω, whatever the norms; ~0 task vectors have none (NaN)."""
    omegas = {"q": 30.0, "k": 90.0, "v": 150.0, "near": 1.0, "zero": 60.0}
    norms = {"q": (1.0, 3.0), "k": (0.01, 2.0), "v": (5.0, 5.0), "near": (1.0, 1.0), "zero": (1.0, 0.0)}
    init, a, b = angled_models(omegas, norms)
    angles = geometry.task_vector_angles(init, a, b)
    assert list(angles) == list(omegas)  # the int64 buffer has no task vector
    for key in ("q", "k", "v", "near"):
        assert angles[key] == pytest.approx(omegas[key], abs=1e-6), key
    assert math.isnan(angles["zero"])
    # float32 storage: the same angles, to float32 rounding of the task vectors
    angles32 = geometry.task_vector_angles(to_dtype(init, torch.float32), to_dtype(a, torch.float32),
                                        to_dtype(b, torch.float32), keys=["q", "k", "v"])
    assert list(angles32) == ["q", "k", "v"]
    for key in angles32:
        assert angles32[key] == pytest.approx(omegas[key], abs=0.05), key
    with pytest.raises(ValueError, match="'pos_ids' is a torch.int64 tensor"):
        geometry.task_vector_angles(init, a, b, keys=["pos_ids"])
    with pytest.raises(ValueError, match="'nope' is not in the models"):
        geometry.task_vector_angles(init, a, b, keys=["nope"])


def test_angle_summary():
    angles = {"a": 80.0, "b": 100.0, "c": 90.0, "d": 1.0, "e": math.nan}
    sizes = {"a": 10, "b": 30, "c": 60, "d": 100, "e": 7}
    s = geometry.angle_summary(angles, sizes)
    assert (s["tensors"], s["no_angle"], s["lerp_fallback"]) == (4, 1, 2)  # "d" is within SLERP's parallel cut-off
    assert s["mean"] == pytest.approx(67.75)
    assert s["sd"] == pytest.approx(math.sqrt(((80 - 67.75) ** 2 + (100 - 67.75) ** 2 + (90 - 67.75) ** 2
                                               + (1 - 67.75) ** 2) / 4))
    assert (s["min"], s["max"]) == (1.0, 100.0)
    assert s["weighted_mean"] == pytest.approx((800 + 3000 + 5400 + 100) / 200)
    empty = geometry.angle_summary({"e": math.nan}, {"e": 7})
    assert empty["tensors"] == 0 and empty["mean"] is None and empty["lerp_fallback"] == 1


def test_task_vector_geometry_of_three_models():
    """All pairwise whole-vector cosines and per-tensor spreads, from one Gram pass per tensor."""
    init = make_sd([(3, 4), (7,), (2, 3, 2), (0, 3)], 11, dtype=torch.float64)
    models = models_from([(3, 4), (7,), (2, 3, 2), (0, 3)], 12, 3)
    models = [to_dtype(sd, torch.float64) for sd in models]
    geo = geometry.task_vector_geometry(init, models)
    keys = float_keys(init)
    flat = [torch.cat([(sd[k] - init[k]).reshape(-1) for k in keys]) for sd in models]
    assert geo["parameters"] == sum(init[k].numel() for k in keys)
    assert geo["norms"] == pytest.approx([float(d.norm()) for d in flat], rel=1e-12)
    assert [p["runs"] for p in geo["pairs"]] == [[0, 1], [0, 2], [1, 2]]
    for p in geo["pairs"]:
        i, j = p["runs"]
        cos = float(flat[i] @ flat[j] / (flat[i].norm() * flat[j].norm()))
        assert p["cosine"] == pytest.approx(cos, rel=1e-12)
        assert p["angle_deg"] == pytest.approx(math.degrees(math.acos(cos)), rel=1e-12)
        sizes = {k: init[k].numel() for k in keys}
        expected = geometry.angle_summary(geometry.task_vector_angles(init, models[i], models[j]), sizes)
        assert p["per_tensor_angle_deg"] == pytest.approx(expected, rel=1e-12)
        assert p["per_tensor_angle_deg"]["no_angle"] == 1  # the empty tensor
    assert (geo["cosine"], geo["angle_deg"], geo["per_tensor_angle_deg"]) == (
        geo["pairs"][0]["cosine"], geo["pairs"][0]["angle_deg"], geo["pairs"][0]["per_tensor_angle_deg"])
    one = geometry.task_vector_geometry(init, models[:1])
    assert one["pairs"] == [] and "angle_deg" not in one


def test_task_vector_geometry_counts_a_tied_embedding_once():
    """A GPT-2 state dict lists the tied embedding as wte and lm_head: the norm counts it once,
    as over the model's unique parameters, not as the naive sum over state-dict keys."""
    import copy

    from transformers import AutoModelForCausalLM, GPT2Config

    from warm_ray.lmc import unique_parameter_names

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=40, n_positions=16,
                                                       tie_word_embeddings=True, bos_token_id=0, eos_token_id=0))
    policies = []
    for seed in (1, 2):
        policy = copy.deepcopy(base)  # deepcopy keeps the tie
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=gen))
        policies.append(policy)
    init, sds = base.state_dict(), [p.state_dict() for p in policies]
    assert init["lm_head.weight"].data_ptr() == init["transformer.wte.weight"].data_ptr()
    keys = geometry.unique_float_keys(init)
    assert "lm_head.weight" not in keys and keys == unique_parameter_names(base)

    unique = [torch.cat([(q.detach() - p.detach()).reshape(-1) for p, q in zip(base.parameters(), pol.parameters())])
              for pol in policies]
    naive = [torch.cat([(sd[k] - init[k]).reshape(-1) for k in init]) for sd in sds]
    geo = geometry.task_vector_geometry(init, sds)
    assert geo["norms"] == pytest.approx([float(d.norm()) for d in unique], rel=1e-5)
    assert geo["norms"][0] < float(naive[0].norm()) * (1 - 1e-3)  # the naive sum counts wte twice
    assert geo["parameters"] == sum(p.numel() for p in base.parameters())
    cos = float(unique[0] @ unique[1] / (unique[0].norm() * unique[1].norm()))
    assert geo["cosine"] == pytest.approx(cos, abs=1e-5)
    assert geo == geometry.task_vector_geometry(init, sds, keys=unique_parameter_names(base))
