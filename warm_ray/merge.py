"""State-dict arithmetic for WARM and WARP.

Every merge takes mappings of parameter name -> tensor and returns a dict of the same keys.
Floating tensors are combined in float32 (float64 stays float64) and written in their input
dtype and device, so bf16 in gives bf16 out. Integer and bool buffers (position ids, attention
masks, counters) are copied from the first input: averaging them has no meaning.

Output buffers: every merge takes ``out=``, a dict of tensors to write into. Keys it lacks are
allocated and added to it, so a caller that keeps one dict and passes it again pays for the
allocation once (allocating a fresh model costs more than the merge itself: first-touch page
faults). Without ``out=`` a new dict is returned. ``ema_update`` is in place on its anchor
unless given ``out=``.

Checks: key sets, shapes and dtypes are checked before any arithmetic; a NaN or Inf raises
ValueError naming the key and the input. Finiteness is checked inside the pass that writes the
output (a NaN or Inf in any input makes the output non-finite, 0·Inf included), on each block
while it is still in cache; only a failed check scans the inputs, to name the one at fault.
With ``out=`` a failed merge leaves the keys before the faulty one written.

Speed: each output tensor is written once, block by block (``CHUNK`` elements that stay in
cache): all M inputs are read for a block, accumulated in float32, and the block is written.
SLERP reads its inputs twice: one pass for the Gram matrix of the task vectors (every angle
of the recursive M-way SLERP follows from it), one pass to write the result.

References: WARM (Ramé et al. 2024, arXiv 2401.12187) Sec. 3; WARP (Ramé et al. 2024,
arXiv 2406.16768) Algorithm 1 and Sec. 3.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, MutableMapping, Sequence

import torch

StateDict = Mapping[str, torch.Tensor]
OutDict = MutableMapping[str, torch.Tensor]

# Elements per work block on CPU: 256 Ki float32 = 1 MiB, so the accumulator stays in a core's
# L2 cache and the upcast inputs of a bf16 block in L3. On accelerators blocks only bound the
# scratch memory.
CHUNK = 1 << 18
DEVICE_CHUNK = 1 << 24

# SLERP falls back to LERP where the angle is degenerate or a task vector is ~0
# (the thresholds public merge tools use).
COS_PARALLEL = 0.9995
NORM_EPS = 1e-7


def is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _all_finite(t: torch.Tensor) -> bool:
    """True when no element is NaN or Inf.

    A float32 sum is non-finite whenever any element is, so one reduction usually decides;
    only a non-finite sum (a NaN/Inf, or an overflow of huge finite values) pays the full scan.
    """
    if t.numel() == 0 or bool(torch.isfinite(t.sum(dtype=torch.float32))):
        return True
    return bool(torch.isfinite(t).all())


def check_compatible(state_dicts: Sequence[StateDict], what: str = "model", finite: bool = True) -> list[str]:
    """Raise ValueError unless all state dicts share keys, shapes and dtypes (and, with
    ``finite``, hold no NaN or Inf).

    Returns the keys in the order of the first state dict.
    """
    if len(state_dicts) == 0:
        raise ValueError(f"need at least one {what}, got none")
    first = state_dicts[0]
    keys = list(first.keys())
    key_set = set(keys)
    for i, sd in enumerate(state_dicts[1:], start=1):
        other = set(sd.keys())
        if other != key_set:
            missing = sorted(key_set - other)
            extra = sorted(other - key_set)
            name = (missing or extra)[0]
            raise ValueError(
                f"{what} {i} has different keys than {what} 0: key {name!r} is "
                f"{'missing' if missing else 'unexpected'} ({len(missing)} missing, {len(extra)} unexpected)"
            )
    for key in keys:
        ref = first[key]
        for i, sd in enumerate(state_dicts):
            t = sd[key]
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"key {key!r} of {what} {i} is a {type(t).__name__}, not a tensor")
            if t.shape != ref.shape:
                raise ValueError(
                    f"key {key!r}: shape {tuple(t.shape)} in {what} {i} differs from {tuple(ref.shape)} in {what} 0"
                )
            if t.dtype != ref.dtype:
                raise ValueError(f"key {key!r}: dtype {t.dtype} in {what} {i} differs from {ref.dtype} in {what} 0")
            if finite and is_float(t) and not _all_finite(t):
                raise ValueError(f"key {key!r} of {what} {i} contains NaN or Inf")
    return keys


# --------------------------------------------------------------------------------------------
# Output buffers
# --------------------------------------------------------------------------------------------


def _check_out(out: OutDict | None, keys: list[str], ref: StateDict) -> OutDict:
    """The dict to write into: ``out`` itself after checking it fits, or a new one."""
    if out is None:
        return {}
    extra = sorted(set(out) - set(keys))
    if extra:
        raise ValueError(f"out has key {extra[0]!r} that the inputs do not have ({len(extra)} extra keys)")
    for key in keys:
        t = out.get(key)
        if t is None:
            continue
        r = ref[key]
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"out key {key!r} is a {type(t).__name__}, not a tensor")
        if t.shape != r.shape or t.dtype != r.dtype or t.device != r.device:
            raise ValueError(
                f"out key {key!r} is {t.dtype} {tuple(t.shape)} on {t.device}; "
                f"the inputs are {r.dtype} {tuple(r.shape)} on {r.device}"
            )
    return out


def _out_tensor(out: OutDict, key: str, ref: torch.Tensor) -> torch.Tensor:
    t = out.get(key)
    if t is None:
        t = torch.empty_like(ref, memory_format=torch.contiguous_format)
        out[key] = t
    return t


# --------------------------------------------------------------------------------------------
# The one per-tensor write: dst ← Σ c_i·t_i, block by block, finiteness checked on the way
# --------------------------------------------------------------------------------------------


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype: float32, or the input's own when it is wider (or complex)."""
    return dtype if dtype in (torch.float32, torch.float64, torch.complex64, torch.complex128) else torch.float32


def _chunk(device: torch.device) -> int:
    return CHUNK if device.type == "cpu" else DEVICE_CHUNK


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.numel() > 0 and b.numel() > 0 and a.device == b.device
        and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    )


def _same_elements(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Element i of ``a`` is element i of ``b`` (the same tensor memory, same layout)."""
    return a.data_ptr() == b.data_ptr() and a.stride() == b.stride() and a.shape == b.shape


def _linear_into(dst: torch.Tensor, tensors: Sequence[torch.Tensor], coeffs: Sequence[float]) -> bool:
    """Write Σ_i c_i·t_i into ``dst``; return False when the result has a NaN or Inf.

    Per block: the first input times its coefficient starts the float32 accumulator (``dst``
    itself when it is float32), each further input is added, the block's sum is kept (a NaN
    or Inf anywhere makes it non-finite) and, for other dtypes, the block is cast into ``dst``.
    ``dst`` may be one of the inputs (an in-place update).
    """
    n = dst.numel()
    if n == 0:
        return True
    shared = [_shares_memory(dst, t) for t in tensors]
    if not dst.is_contiguous() or any(s and not _same_elements(dst, t) for s, t in zip(shared, tensors)):
        # A strided output, or one overlapping an input elsewhere: compute apart, then copy.
        tmp = torch.empty_like(dst, memory_format=torch.contiguous_format)
        finite = _linear_into(tmp, tensors, coeffs)
        dst.copy_(tmp)
        return finite
    work = work_dtype(dst.dtype)
    # Low-precision inputs (bf16, fp16): per block, the first input is upcast into the float32
    # accumulator and scaled; every further one is added from its own dtype, one add each (torch
    # widens the block inside the add), as the float32 path does.
    upcast = dst.dtype != work
    # dst is the accumulator when it has the working dtype, unless it is an input read after
    # the first: then a block is accumulated apart and written once all inputs are read. The
    # order of the arithmetic is the same either way, so in place equals allocating bit for bit.
    direct = not upcast and not any(shared[1:])
    chunk = min(n, _chunk(dst.device))
    acc_buf = None if direct else torch.empty(chunk, dtype=work, device=dst.device)
    flats = [t.reshape(-1) for t in tensors]
    out = dst.view(-1)
    n_blocks = -(-n // chunk)
    sums = torch.empty(n_blocks, dtype=work, device=dst.device)
    # Casting down can overflow only when the coefficients extrapolate (Σ|c| > 1): inputs of
    # that dtype are finite, so a convex combination stays within its range. Track the
    # extremes of each block then.
    bound = work != dst.dtype and not dst.is_complex() and sum(abs(c) for c in coeffs) > 1.0 + 1e-6
    highs = torch.empty(n_blocks, dtype=work, device=dst.device) if bound else None
    lows = torch.empty(n_blocks, dtype=work, device=dst.device) if bound else None
    c0, rest = coeffs[0], list(zip(flats[1:], coeffs[1:]))
    for b, start in enumerate(range(0, n, chunk)):
        end = min(start + chunk, n)
        size = end - start
        acc = out[start:end] if direct else acc_buf[:size]
        if upcast:
            acc.copy_(flats[0][start:end])
            acc.mul_(c0)
        else:
            torch.mul(flats[0][start:end], c0, out=acc)
        for flat, c in rest:
            acc.add_(flat[start:end], alpha=c)
        torch.sum(acc, dim=0, out=sums[b])
        if bound:
            torch.amax(acc, dim=0, out=highs[b])
            torch.amin(acc, dim=0, out=lows[b])
        if not direct:
            out[start:end].copy_(acc)
    if not bool(torch.isfinite(sums).all()):
        # A non-finite sum of finite values (an overflow of the sum alone) is checked in full.
        return bool(torch.isfinite(dst).all())
    if bound and max(float(highs.max()), -float(lows.min())) > torch.finfo(dst.dtype).max:
        return bool(torch.isfinite(dst).all())
    return True


def _check_finite_inputs(key: str, tensors: Sequence[torch.Tensor], what: str = "model") -> None:
    """Name the first input whose tensor ``key`` holds NaN or Inf (a ValueError)."""
    for i, t in enumerate(tensors):
        if not _all_finite(t):
            raise ValueError(f"key {key!r} of {what} {i} contains NaN or Inf")


def _raise_non_finite(key: str, tensors: Sequence[torch.Tensor], what: str) -> None:
    _check_finite_inputs(key, tensors, what)
    raise ValueError(f"key {key!r}: the merged tensor overflowed its dtype {tensors[0].dtype}")


def _float_keys(state_dicts: Sequence[StateDict], what: str, out: OutDict | None
                ) -> tuple[OutDict, Iterator[tuple[str, list[torch.Tensor], torch.Tensor]]]:
    """The loop over a state dict, written once for every merge.

    Checks the inputs (and ``out``) up front, then yields ``(key, input tensors, output tensor)``
    for each floating key; integer and bool buffers are copied from the first input on the way.
    """
    keys = check_compatible(state_dicts, what, finite=False)
    result = _check_out(out, keys, state_dicts[0])

    def items():
        for key in keys:
            tensors = [sd[key] for sd in state_dicts]
            dst = _out_tensor(result, key, tensors[0])
            if is_float(tensors[0]):
                yield key, tensors, dst
            elif dst is not tensors[0]:
                dst.copy_(tensors[0])

    return result, items()


def _linear(state_dicts: Sequence[StateDict], coeffs: Sequence[float], what: str, out: OutDict | None) -> OutDict:
    """Every linear merge: one write per key."""
    result, items = _float_keys(state_dicts, what, out)
    for key, tensors, dst in items:
        if not _linear_into(dst, tensors, coeffs):
            _raise_non_finite(key, tensors, what)
    return result


# --------------------------------------------------------------------------------------------
# SLERP of task vectors through their Gram matrix
# --------------------------------------------------------------------------------------------


def _slerp_from_norms(norm_a: float, norm_b: float, dot: float, lam: float) -> tuple[float, float]:
    """SLERP coefficients from the norms of two task vectors and their dot product."""
    if not norm_a >= NORM_EPS or not norm_b >= NORM_EPS:
        return 1.0 - lam, lam
    cos = max(-1.0, min(1.0, dot / (norm_a * norm_b)))
    if abs(cos) > COS_PARALLEL:
        return 1.0 - lam, lam
    omega = math.acos(cos)
    sin_omega = math.sin(omega)
    return math.sin((1.0 - lam) * omega) / sin_omega, math.sin(lam * omega) / sin_omega


def slerp_coefficients(delta_a: torch.Tensor, delta_b: torch.Tensor, lam: float) -> tuple[float, float]:
    """Coefficients (c_a, c_b) so that c_a·δ_a + c_b·δ_b is the SLERP of two task vectors.

    WARP Sec. 3.2: c_a = sin((1-λ)Ω)/sin Ω, c_b = sin(λΩ)/sin Ω with Ω the angle between δ_a
    and δ_b. LERP coefficients (1-λ, λ) where Ω is degenerate or a task vector is ~0.
    """
    a = delta_a.reshape(-1).float()
    b = delta_b.reshape(-1).float()
    norm_a = float(torch.linalg.vector_norm(a))
    norm_b = float(torch.linalg.vector_norm(b))
    return _slerp_from_norms(norm_a, norm_b, float(torch.dot(a, b)), lam)


def recursive_slerp_weights(gram: Sequence[Sequence[float]], lams: Sequence[float]) -> list[float]:
    """Weights w with Σ_j w_j δ_j equal to the recursive SLERP of task vectors δ_1..δ_M.

    slerp_1 = δ_1 and slerp_m = SLERP(slerp_{m-1}, δ_m; λ_m) (WARP Algorithm 1 with λ_m = 1/m).
    Each slerp_m is a linear combination Σ_j w_j δ_j, so its norm (wᵀGw) and its dot product
    with δ_m ((Gw)_m) come from the Gram matrix G_jk = <δ_j, δ_k>: no pass over the weights.
    """
    m_total = len(gram)
    if len(lams) != m_total - 1:
        raise ValueError(f"need {m_total - 1} SLERP coefficients for {m_total} task vectors, got {len(lams)}")
    w = [1.0] + [0.0] * (m_total - 1)
    for m in range(1, m_total):
        g_w = [sum(gram[j][k] * w[k] for k in range(m)) for j in range(m + 1)]
        sq_merged = sum(w[j] * g_w[j] for j in range(m))
        norm_merged = math.sqrt(max(sq_merged, 0.0))
        norm_new = math.sqrt(max(gram[m][m], 0.0))
        c_a, c_b = _slerp_from_norms(norm_merged, norm_new, g_w[m], lams[m - 1])
        w = [c_a * x for x in w]
        w[m] += c_b
    return w


def task_vector_gram(tensors: Sequence[torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """G_jk = <θ_j - θ_0, θ_k - θ_0> for tensors θ_0 (init), θ_1..θ_M: one blocked pass.

    Per block the M task vectors are formed in a [M, block] scratch and multiplied with their
    transpose; block results add up in float64. A NaN or Inf in any input makes G non-finite.
    """
    init, models = tensors[0].reshape(-1), [t.reshape(-1) for t in tensors[1:]]
    m, n = len(models), init.numel()
    device = init.device
    gram = torch.zeros((m, m), dtype=torch.float64, device=device)
    if n == 0:
        return gram
    chunk = min(n, _chunk(device))
    deltas = torch.empty((m, chunk), dtype=dtype, device=device)
    base_buf = None if init.dtype == dtype else torch.empty(chunk, dtype=dtype, device=device)
    block_gram = torch.empty((m, m), dtype=dtype, device=device)
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        if base_buf is None:
            base = init[start:end]
        else:
            base = base_buf[: end - start]
            base.copy_(init[start:end])
        d = deltas[:, : end - start]
        if base_buf is None:
            for j, flat in enumerate(models):
                torch.sub(flat[start:end], base, out=d[j])
        else:
            for j, flat in enumerate(models):
                d[j].copy_(flat[start:end])
            d.sub_(base)
        torch.mm(d, d.t(), out=block_gram)
        gram += block_gram
    return gram


def _slerp_merge(init: StateDict, models: Sequence[StateDict], lams: Sequence[float], out: OutDict | None) -> OutDict:
    """SLERP: per key, the Gram pass, then one write."""
    result, items = _float_keys([init, *models], "model", out)
    for key, inputs, dst in items:
        tensors = inputs
        if len(models) == 1:
            coeffs = [0.0, 1.0]
        else:
            gram = task_vector_gram(tensors)
            if not bool(torch.isfinite(gram).all()):
                _check_finite_inputs(key, tensors)
                gram = task_vector_gram(tensors, torch.float64)  # finite inputs whose squares overflow
            w = recursive_slerp_weights(gram.tolist(), lams)
            coeffs = [1.0 - sum(w), *w]
            # Inputs are known finite now, so inputs with a zero coefficient need not be read.
            keep = [i for i, c in enumerate(coeffs) if c != 0.0] or [1]
            tensors, coeffs = [tensors[i] for i in keep], [coeffs[i] for i in keep]
        if not _linear_into(dst, tensors, coeffs):
            _raise_non_finite(key, inputs, "model")
    return result


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def normalise_weights(weights: Sequence[float] | None, m: int) -> list[float]:
    """Uniform 1/M when None; otherwise non-negative weights scaled to sum to one."""
    if m < 1:
        raise ValueError("need at least one model, got none")
    if weights is None:
        return [1.0 / m] * m
    weights = [float(w) for w in weights]
    if len(weights) != m:
        raise ValueError(f"got {len(weights)} weights for {m} models")
    for i, w in enumerate(weights):
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weight {i} is {w}: weights must be finite and non-negative")
    total = sum(weights)
    if total <= 0:
        raise ValueError("all weights are zero: at least one model must have a positive weight")
    return [w / total for w in weights]


def average(
    state_dicts: Sequence[StateDict], weights: Sequence[float] | None = None, *, out: OutDict | None = None
) -> OutDict:
    """WARM: φ_WARM = Σ_i w_i φ_i, uniform w_i = 1/M by default (WARM Eq. 4).

    Given weights are normalised to sum to one; negative or all-zero weights raise.
    ``out``: a dict of tensors to write into (see the module docstring); it is returned.
    """
    coeffs = normalise_weights(weights, len(state_dicts))
    return _linear(state_dicts, coeffs, "model", out)


def ema_update(
    anchor: OutDict, current: StateDict, mu: float, *, out: OutDict | None = None
) -> OutDict:
    """WARP EMA anchor: θ_ema ← (1-μ)·θ_ema + μ·θ (WARP Algorithm 1).

    In place on ``anchor``, which is returned; its integer and bool buffers are left as they
    are. Both inputs are checked before the anchor is touched, so an error leaves it intact.
    With ``out``, the update is written there instead and ``anchor`` is only read.
    """
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"EMA rate mu must be in [0, 1], got {mu}")
    if out is not None and out is not anchor:
        return _linear([anchor, current], [1.0 - mu, mu], "state dict", out)
    keys = check_compatible([anchor, current], "state dict")
    for key in keys:
        a = anchor[key]
        if is_float(a) and not _linear_into(a, [a, current[key]], [1.0 - mu, mu]):
            raise ValueError(f"key {key!r}: the merged tensor overflowed its dtype {a.dtype}")
    return anchor


def slerp(
    init: StateDict, a: StateDict, b: StateDict, lam: float = 0.5, *, out: OutDict | None = None
) -> OutDict:
    """WARP SLERP of task vectors, each tensor with its own angle Ω (WARP Eq. 3):

    θ = θ_init + sin((1-λ)Ω)/sin Ω · (θ_a - θ_init) + sin(λΩ)/sin Ω · (θ_b - θ_init).

    LERP where Ω is degenerate (|cos Ω| > 0.9995) or a task vector is ~0.
    λ = 0 returns ``a``, λ = 1 returns ``b``.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"SLERP coefficient lam must be in [0, 1], got {lam}")
    return _slerp_merge(init, [a, b], [lam], out)


def slerp_many(init: StateDict, models: Sequence[StateDict], *, out: OutDict | None = None) -> OutDict:
    """WARP M-way SLERP, recursively: slerp_1 = θ_1, slerp_m = slerp(θ_init, slerp_{m-1}, θ_m, λ=1/m).

    Computed in two passes over the inputs, whatever M: the Gram matrix of the task vectors
    gives every recursive coefficient (``recursive_slerp_weights``), then the result is written
    once. It equals the recursion carried out in exact arithmetic on the float32 task vectors;
    the recursion run step by step differs by float32 rounding of its intermediate models.
    Integer and bool buffers come from ``init``.
    """
    if len(models) == 0:
        raise ValueError("slerp_many needs at least one model")
    return _slerp_merge(init, models, [1.0 / m for m in range(2, len(models) + 1)], out)


def liti(init: StateDict, merged: StateDict, eta: float, *, out: OutDict | None = None) -> OutDict:
    """WARP LITI, linear interpolation towards init: θ_η = (1-η)·θ_init + η·θ_merged (WARP Eq. 4)."""
    if not math.isfinite(eta):
        raise ValueError(f"eta must be finite, got {eta}")
    return _linear([init, merged], [1.0 - eta, eta], "model", out)


def lerp_many(init: StateDict, models: Sequence[StateDict], *, out: OutDict | None = None) -> OutDict:
    """The LERP baseline of WARP's ablations: the uniform average of the M policies."""
    del init  # LERP of task vectors with uniform weights is the uniform average of weights
    return average(models, out=out)


def warp_slerp(init: StateDict, policies: Sequence[StateDict], lam: float) -> OutDict:
    """WARP's merge (``warp.merge: slerp``): SLERP of the task vectors, λ for M = 2, recursive 1/m for M > 2."""
    if len(policies) == 2:
        return slerp(init, policies[0], policies[1], lam)
    return slerp_many(init, policies)


def warp_lerp(init: StateDict, policies: Sequence[StateDict], lam: float) -> OutDict:
    """WARP's LERP ablation (``warp.merge: lerp``): the uniform average of the M policies (λ unused)."""
    del lam
    return lerp_many(init, policies)


def state_dict_bytes(sd: StateDict) -> int:
    return sum(t.numel() * t.element_size() for t in sd.values())
