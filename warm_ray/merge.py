"""State-dict arithmetic for WARM and WARP.

Every function takes mappings of parameter name -> tensor and returns a new dict (except
``ema_update``, which is in place by definition). Floating tensors are combined in float32
and cast back to their input dtype and device, so bf16 in gives bf16 out. Integer and bool
buffers (position ids, attention masks, counters) are copied from the first input: averaging
them has no meaning.

Inputs are checked before any arithmetic: key sets, shapes and dtypes must agree, and a NaN or
Inf raises, naming the key. The loop over a state dict is written once (``_combine``); each
method is a per-tensor kernel behind the ``METHODS`` map.

Memory: outputs are allocated one tensor at a time and float32 work is done in chunks of
``CHUNK`` elements that stay in cache, so a merge needs one output model beyond its inputs.

References: WARM (Ramé et al. 2024, arXiv 2401.12187) Sec. 3; WARP (Ramé et al. 2024,
arXiv 2406.16768) Algorithm 1 and Sec. 3.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch

StateDict = Mapping[str, torch.Tensor]

# Elements per float32 work chunk: 1 Mi elements = 4 MiB, small enough to stay in L2/L3.
CHUNK = 1 << 20

# SLERP falls back to LERP where the angle is degenerate or a task vector is ~0
# (the thresholds public merge tools use).
COS_PARALLEL = 0.9995
NORM_EPS = 1e-7


def _is_float(t: torch.Tensor) -> bool:
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
            if finite and _is_float(t) and not _all_finite(t):
                raise ValueError(f"key {key!r} of {what} {i} contains NaN or Inf")
    return keys


# --------------------------------------------------------------------------------------------
# Per-tensor kernels: (list of input tensors, params) -> output tensor in the input dtype.
# --------------------------------------------------------------------------------------------


def _linear_kernel(tensors: Sequence[torch.Tensor], coeffs: Sequence[float]) -> torch.Tensor:
    """sum_i c_i * t_i in float32, chunk by chunk, written once into the output."""
    ref = tensors[0]
    out = torch.empty_like(ref, memory_format=torch.contiguous_format)
    flats = [t.reshape(-1) for t in tensors]
    out_flat = out.view(-1)
    n = out_flat.numel()
    acc = torch.empty(min(n, CHUNK), dtype=torch.float32, device=ref.device)
    # Mixed-dtype add_ is slow: low-precision chunks are upcast into a reused float32 scratch first.
    scratch = torch.empty_like(acc) if ref.dtype != torch.float32 else None
    for start in range(0, n, CHUNK):
        end = min(start + CHUNK, n)
        a = acc[: end - start]
        a.copy_(flats[0][start:end])
        a.mul_(coeffs[0])
        for flat, c in zip(flats[1:], coeffs[1:]):
            if scratch is None:
                a.add_(flat[start:end], alpha=c)
            else:
                tmp = scratch[: end - start]
                tmp.copy_(flat[start:end])
                a.add_(tmp, alpha=c)
        out_flat[start:end].copy_(a)
    return out


def slerp_coefficients(delta_a: torch.Tensor, delta_b: torch.Tensor, lam: float) -> tuple[float, float]:
    """Coefficients (c_a, c_b) so that c_a·δ_a + c_b·δ_b is the SLERP of two task vectors.

    WARP Sec. 3.2: c_a = sin((1-λ)Ω)/sin Ω, c_b = sin(λΩ)/sin Ω with Ω the angle between δ_a
    and δ_b. LERP coefficients (1-λ, λ) where Ω is degenerate or a task vector is ~0.
    """
    a = delta_a.reshape(-1).float()
    b = delta_b.reshape(-1).float()
    norm_a = float(torch.linalg.vector_norm(a))
    norm_b = float(torch.linalg.vector_norm(b))
    if norm_a < NORM_EPS or norm_b < NORM_EPS:
        return 1.0 - lam, lam
    cos = float(torch.dot(a, b)) / (norm_a * norm_b)
    cos = max(-1.0, min(1.0, cos))
    if abs(cos) > COS_PARALLEL:
        return 1.0 - lam, lam
    omega = math.acos(cos)
    sin_omega = math.sin(omega)
    return math.sin((1.0 - lam) * omega) / sin_omega, math.sin(lam * omega) / sin_omega


def _slerp_kernel(tensors: Sequence[torch.Tensor], lam: float) -> torch.Tensor:
    init, a, b = tensors
    delta_a = a.float() - init.float()
    delta_b = b.float() - init.float()
    c_a, c_b = slerp_coefficients(delta_a, delta_b, lam)
    # θ_init + c_a (θ_a - θ_init) + c_b (θ_b - θ_init) = (1 - c_a - c_b) θ_init + c_a θ_a + c_b θ_b
    del delta_a, delta_b
    return _linear_kernel([init, a, b], [1.0 - c_a - c_b, c_a, c_b])


METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "linear": _linear_kernel,
    "slerp": _slerp_kernel,
}


def _combine(state_dicts: Sequence[StateDict], method: str, what: str, **params) -> dict[str, torch.Tensor]:
    """The one loop over a state dict: check, then apply a per-tensor kernel key by key.

    Finiteness is checked on each output tensor instead of on every input: a NaN or Inf in any
    input makes the output non-finite (0·Inf is NaN too), and one scan of the output costs 1/M
    of scanning the inputs. Only then are the inputs scanned, to name the one at fault.
    """
    keys = check_compatible(state_dicts, what, finite=False)
    kernel = METHODS[method]
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        tensors = [sd[key] for sd in state_dicts]
        if not _is_float(tensors[0]):
            out[key] = tensors[0].clone()
            continue
        out[key] = kernel(tensors, **params)
        if not _all_finite(out[key]):
            for i, t in enumerate(tensors):
                if not _all_finite(t):
                    raise ValueError(f"key {key!r} of {what} {i} contains NaN or Inf")
            raise ValueError(f"key {key!r}: the merged tensor overflowed its dtype {tensors[0].dtype}")
    return out


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


def average(state_dicts: Sequence[StateDict], weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """WARM: φ_WARM = Σ_i w_i φ_i, uniform w_i = 1/M by default (WARM Eq. 4).

    Given weights are normalised to sum to one; negative or all-zero weights raise.
    """
    coeffs = normalise_weights(weights, len(state_dicts))
    return _combine(state_dicts, "linear", "model", coeffs=coeffs)


def ema_update(anchor: dict[str, torch.Tensor], current: StateDict, mu: float) -> dict[str, torch.Tensor]:
    """WARP EMA anchor: θ_ema ← (1-μ)·θ_ema + μ·θ, in place on ``anchor``, which is returned.

    Integer and bool buffers of the anchor are left as they are.
    """
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"EMA rate mu must be in [0, 1], got {mu}")
    keys = check_compatible([anchor, current], "state dict")
    for key in keys:
        a = anchor[key]
        if not _is_float(a):
            continue
        if a.dtype == torch.float32:
            a.mul_(1.0 - mu).add_(current[key], alpha=mu)
        else:
            a.copy_(_linear_kernel([a, current[key]], [1.0 - mu, mu]))
    return anchor


def slerp(init: StateDict, a: StateDict, b: StateDict, lam: float = 0.5) -> dict[str, torch.Tensor]:
    """WARP SLERP of task vectors, each tensor with its own angle Ω (WARP Eq. 3):

    θ = θ_init + sin((1-λ)Ω)/sin Ω · (θ_a - θ_init) + sin(λΩ)/sin Ω · (θ_b - θ_init).

    LERP where Ω is degenerate (|cos Ω| > 0.9995) or a task vector is ~0.
    λ = 0 returns ``a``, λ = 1 returns ``b``.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"SLERP coefficient lam must be in [0, 1], got {lam}")
    return _combine([init, a, b], "slerp", "model", lam=lam)


def slerp_many(init: StateDict, models: Sequence[StateDict]) -> dict[str, torch.Tensor]:
    """WARP M-way SLERP, recursively: slerp_1 = θ_1, slerp_m = slerp(θ_init, slerp_{m-1}, θ_m, λ=1/m)."""
    if len(models) == 0:
        raise ValueError("slerp_many needs at least one model")
    keys = check_compatible([init, *models], "model")
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        ref = init[key]
        if not _is_float(ref):
            # Buffers from the first input (init) for every M, as slerp does.
            out[key] = ref.clone()
            continue
        # Keep the running merge in float32 and cast once at the end: rounding it to bf16
        # after every step adds one rounding per model and moves the later angles.
        init32 = ref.float()
        merged = models[0][key].float()
        for m, model in enumerate(models[1:], start=2):
            merged = _slerp_kernel([init32, merged, model[key]], lam=1.0 / m)
        out[key] = merged.to(ref.dtype) if merged is not models[0][key] else merged.clone()
    return out


def liti(init: StateDict, merged: StateDict, eta: float) -> dict[str, torch.Tensor]:
    """WARP LITI, linear interpolation towards init: θ_η = (1-η)·θ_init + η·θ_merged (WARP Eq. 4)."""
    if not math.isfinite(eta):
        raise ValueError(f"eta must be finite, got {eta}")
    return _combine([init, merged], "linear", "model", coeffs=[1.0 - eta, eta])


def lerp_many(init: StateDict, models: Sequence[StateDict]) -> dict[str, torch.Tensor]:
    """The LERP baseline of WARP's ablations: the uniform average of the M policies."""
    del init  # LERP of task vectors with uniform weights is the uniform average of weights
    return average(models)


def state_dict_bytes(sd: StateDict) -> int:
    return sum(t.numel() * t.element_size() for t in sd.values())
