"""Task-vector geometry: the angles SLERP sees (WARP Eq. 3).

The norms of task vectors δ_m = θ_m - θ_init, every pair's whole-vector cosine and angle, and the
spread of the per-tensor angles SLERP acts on (each tensor has its own Ω). Used by WARP's record of
each iteration, the study's WARP part and the LMC record of the reward-model members.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from warm_ray.merge import COS_PARALLEL, NORM_EPS, StateDict, check_compatible, is_float, task_vector_gram, work_dtype

def unique_float_keys(sd: StateDict) -> list[str]:
    """The floating keys of ``sd``, each tensor once (the first of its names).

    A loaded model's ``state_dict()`` lists a tied weight under two names that share memory
    (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``): counted twice, the embedding would
    weigh double in every norm and angle. A dict whose tensors are copies (a merge's output) has
    lost the tie: pass the model's parameter names instead (``lmc.unique_parameter_names``).
    """
    keys, seen = [], set()
    for key, t in sd.items():
        if not isinstance(t, torch.Tensor) or not is_float(t):
            continue
        ident = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if t.numel() > 0 and ident in seen:
            continue
        seen.add(ident)
        keys.append(key)
    return keys


def task_vector_grams(init: StateDict, models: Sequence[StateDict], keys: Sequence[str] | None = None
                      ) -> dict[str, torch.Tensor]:
    """Per tensor, the Gram matrix G_jk = <δ_j, δ_k> (float64, [M, M]) of the task vectors
    δ_m = θ_m - θ_init (WARP Sec. 3.2): every per-tensor angle and norm SLERP uses comes from it,
    and their sums over tensors give the whole-vector ones.

    ``keys``: the tensors counted, default ``unique_float_keys(init)`` (a tied weight once).
    """
    if len(models) == 0:
        raise ValueError("task-vector geometry needs at least one model")
    check_compatible([init, *models], "model")
    keys = unique_float_keys(init) if keys is None else list(keys)
    for key in keys:
        if key not in init:
            raise ValueError(f"key {key!r} is not in the models")
        if not is_float(init[key]):
            raise ValueError(f"key {key!r} is a {init[key].dtype} tensor: task vectors are of floating tensors")
    grams = {}
    for key in keys:
        tensors = [init[key], *(sd[key] for sd in models)]
        gram = task_vector_gram(tensors, work_dtype(init[key].dtype))  # float64 stays float64
        if not bool(torch.isfinite(gram).all()):
            gram = task_vector_gram(tensors, torch.float64)  # finite inputs whose squares overflow float32
        grams[key] = gram.cpu()
    return grams


def _angle_deg(sq_a: float, sq_b: float, dot: float) -> float:
    """The angle (degrees) between two vectors from their squared norms and dot product; NaN
    where one is ~0, the case in which SLERP has no angle and falls back to LERP."""
    norm_a, norm_b = math.sqrt(max(sq_a, 0.0)), math.sqrt(max(sq_b, 0.0))
    if not norm_a >= NORM_EPS or not norm_b >= NORM_EPS:
        return math.nan
    return math.degrees(math.acos(max(-1.0, min(1.0, dot / (norm_a * norm_b)))))


def task_vector_angles(init: StateDict, a: StateDict, b: StateDict, keys: Sequence[str] | None = None
                       ) -> dict[str, float]:
    """Per tensor, the angle Ω (degrees) between δ_a = θ_a - θ_init and δ_b = θ_b - θ_init: the
    angle each tensor's SLERP uses (WARP Eq. 3). NaN where a task vector is ~0 (SLERP is LERP there).

    ``keys``: as for ``task_vector_grams`` (default: the floating tensors, a tied weight once).
    """
    grams = task_vector_grams(init, [a, b], keys)
    return {key: _angle_deg(float(g[0, 0]), float(g[1, 1]), float(g[0, 1])) for key, g in grams.items()}


# the largest angle (degrees) at which SLERP falls back to LERP: |cos Ω| > COS_PARALLEL
_PARALLEL_DEG = math.degrees(math.acos(COS_PARALLEL))


def angle_summary(angles: Mapping[str, float], sizes: Mapping[str, int]) -> dict:
    """The distribution of per-tensor angles (degrees) over the tensors that have one: mean, SD
    (over tensors), min, max, and the mean weighted by each tensor's parameter count.

    ``tensors`` counts the tensors with an angle, ``no_angle`` those where a task vector is ~0, and
    ``lerp_fallback`` those where SLERP is exactly LERP (no angle, or |cos Ω| > ``COS_PARALLEL``).
    At M = 2, λ = 1/2 per-tensor SLERP is LERP scaled by 1/cos(Ω/2): the spread of Ω is all that can
    separate the two LITI fronts at matched KL.
    """
    have = {k: a for k, a in angles.items() if math.isfinite(a)}
    fallback = sum(1 for a in angles.values() if not math.isfinite(a) or a < _PARALLEL_DEG or a > 180 - _PARALLEL_DEG)
    out: dict = {"tensors": len(have), "no_angle": len(angles) - len(have), "lerp_fallback": fallback}
    if not have:
        return {**out, "mean": None, "sd": None, "min": None, "max": None, "weighted_mean": None}
    vals = list(have.values())
    mean = sum(vals) / len(vals)
    weight = sum(sizes[k] for k in have)
    return {**out, "mean": mean, "sd": math.sqrt(sum((a - mean) ** 2 for a in vals) / len(vals)),
            "min": min(vals), "max": max(vals),
            "weighted_mean": sum(a * sizes[k] for k, a in have.items()) / weight if weight else None}


def task_vector_geometry(init: StateDict, models: Sequence[StateDict], keys: Sequence[str] | None = None) -> dict:
    """Geometry of the task vectors δ_m = θ_m - θ_init of M policies, every parameter counted once.

    ``norms``: ||δ_m|| over all counted tensors; ``pairs``: for every pair (i, j), the whole-vector
    cosine and angle, and the distribution of the per-tensor angles SLERP acts on (``angle_summary``).
    The first pair's numbers are repeated at the top level (``cosine``, ``angle_deg``,
    ``per_tensor_angle_deg``): at M = 2 it is the pair SLERP merges. ``parameters``: the count.
    One blocked pass per tensor (``task_vector_grams``).
    """
    grams = task_vector_grams(init, models, keys)
    m = len(models)
    total = torch.zeros((m, m), dtype=torch.float64)
    for g in grams.values():
        total += g
    sizes = {key: init[key].numel() for key in grams}
    out: dict = {"parameters": int(sum(sizes.values())), "norms": [math.sqrt(max(float(total[i, i]), 0.0))
                                                                  for i in range(m)], "pairs": []}
    for i in range(m):
        for j in range(i + 1, m):
            norm = out["norms"][i] * out["norms"][j]
            cos = max(-1.0, min(1.0, float(total[i, j]) / norm)) if norm > 0 else None  # None: a ~0 task vector
            per_tensor = {k: _angle_deg(float(g[i, i]), float(g[j, j]), float(g[i, j])) for k, g in grams.items()}
            out["pairs"].append({"runs": [i, j], "cosine": cos,
                                 "angle_deg": None if cos is None else math.degrees(math.acos(cos)),
                                 "per_tensor_angle_deg": angle_summary(per_tensor, sizes)})
    if out["pairs"]:
        first = out["pairs"][0]
        out.update(cosine=first["cosine"], angle_deg=first["angle_deg"], per_tensor_angle_deg=first["per_tensor_angle_deg"])
    return out
