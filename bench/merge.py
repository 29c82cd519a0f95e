"""Benchmark of warm_ray.merge against the machine's copy bandwidth and mergekit's kernels.

    python bench/merge.py [--params 100e6] [--repeats 3] [--out table.md]

Builds transformer-shaped state dicts of at least ``--params`` parameters each, in float32 and
bfloat16, and times on one thread (torch.set_num_threads(1) for every row, mergekit's included;
medians over ``--repeats``):

- ``copy``: ``dst.copy_(src)`` between two existing tensors of one model's size: the
  practical memory-bandwidth limit of this machine, measured in the same run;
- ``plain sum/M``: ``sum(tensors) / M`` per key, what one writes without thinking;
- ``merge.average``: WARM's uniform average of M=4, into fresh tensors and into reused ones
  (``out=``, as the parameter server does);
- ``mergekit linear``: mergekit 0.1.5's linear method per key (a float32 zero buffer, one
  ``addcmul_`` per input, ``div_``, a cast), when mergekit is importable;
- ``merge.slerp_many``: WARP's task-vector SLERP for M=2 and M=4 (two passes over the
  inputs), against mergekit's ``slerp`` kernel on the same task vectors (per tensor, as
  ``init + slerp(½, a - init, b - init)``), its ``nuslerp`` (flattened, as its nuslerp method
  with a base model) and, for M=4, mergekit's slerp applied recursively; also our own
  step-by-step recursion (``merge.slerp`` M-1 times). The ``max |Δ|`` column compares every
  SLERP result with the step-by-step recursion: float32 rounding is ~1e-7 of the values; in
  bf16 the step-by-step recursion rounds each intermediate model to bf16, so there Δ is bf16
  rounding (~4e-3 of the largest value), while slerp_many rounds once, at the end.

GB/s counts the bytes of all inputs read plus the output written once (``init`` counts as an
input of SLERP), divided by the seconds; every row of an op moves the same bytes, so GB/s
ratios are speed ratios. mergekit: ``pip install -e ".[bench]"`` (keep torch as it is:
``pip install mergekit==0.1.5 -c <(pip freeze | grep -Ei '^(torch|transformers)==')``).
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

# Runnable as a plain script from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from warm_ray import merge  # noqa: E402

StateDict = dict[str, torch.Tensor]

M = 4
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def transformer_shapes(params: float) -> dict[str, tuple[int, ...]]:
    """Shapes of a GPT-style model with at least ``params`` parameters.

    12 blocks of (qkv, proj, fc, fc_proj) matrices plus their biases and layer norms,
    and an embedding whose vocabulary absorbs the remainder: ~50 matrices, ~100 vectors.
    """
    layers = 12
    # Blocks hold ~80% of the parameters (12·d² each), the embedding the rest.
    d = max(64, 64 * round(math.sqrt(0.8 * params / (12 * layers)) / 64))
    shapes: dict[str, tuple[int, ...]] = {"wpe.weight": (1024, d)}
    for i in range(layers):
        p = f"h.{i}."
        shapes |= {
            p + "ln_1.weight": (d,),
            p + "ln_1.bias": (d,),
            p + "attn.c_attn.weight": (3 * d, d),
            p + "attn.c_attn.bias": (3 * d,),
            p + "attn.c_proj.weight": (d, d),
            p + "attn.c_proj.bias": (d,),
            p + "ln_2.weight": (d,),
            p + "ln_2.bias": (d,),
            p + "mlp.c_fc.weight": (4 * d, d),
            p + "mlp.c_fc.bias": (4 * d,),
            p + "mlp.c_proj.weight": (d, 4 * d),
            p + "mlp.c_proj.bias": (d,),
        }
    shapes |= {"ln_f.weight": (d,), "ln_f.bias": (d,)}
    rest = params - sum(math.prod(s) for s in shapes.values())
    vocab = max(1, math.ceil(rest / d))
    return {"wte.weight": (vocab, d), **shapes}


def build_models(shapes: dict[str, tuple[int, ...]], m: int, dtype: torch.dtype, seed: int = 0) -> list[StateDict]:
    """``m`` random state dicts, generated in float32 and cast tensor by tensor (bounded memory)."""
    gen = torch.Generator().manual_seed(seed)
    models = []
    for _ in range(m):
        models.append({k: torch.empty(s).normal_(generator=gen).mul_(0.02).to(dtype) for k, s in shapes.items()})
    return models


def fine_tuned(init: StateDict, seed: int) -> StateDict:
    """init plus a small random task vector, as a fine-tuned policy is (WARP's setting)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: (v.float() + torch.empty(v.shape).normal_(generator=gen).mul_(0.002)).to(v.dtype) for k, v in init.items()}


def plain_average(models: list[StateDict]) -> StateDict:
    """The reference a reader would write: ``sum(tensors) / M`` key by key."""
    m = len(models)
    return {k: sum(sd[k] for sd in models) / m for k in models[0]}


# --- mergekit's kernels, called the way its merge methods call them ---------------------------


def mergekit_linear(models: list[StateDict]) -> StateDict:
    """mergekit 0.1.5 ``linear`` (merge_methods/linear.py), uniform weights, normalised."""
    out = {}
    m = len(models)
    for key, first in models[0].items():
        rows = first.shape[0] if first.ndim else 1
        weight = torch.full((rows, m), 1.0)
        coefficient_shape = (rows,) + (1,) * (first.ndim - 1)
        denominator = weight.sum(dim=1).reshape(coefficient_shape)
        result = torch.zeros_like(first, dtype=torch.float32)
        for sd, coefficient in zip(models, weight.unbind(1)):
            result.addcmul_(sd[key], coefficient.reshape(coefficient_shape))
        result.div_(denominator)
        out[key] = result.to(first.dtype)
    return out


def mergekit_slerp_tv(init: StateDict, a: StateDict, b: StateDict, t: float) -> StateDict:
    """mergekit's ``slerp`` kernel on the task vectors of each whole tensor (one batch row)."""
    from mergekit.merge_methods.slerp import slerp

    out = {}
    for key, x0 in init.items():
        da = (a[key] - x0).reshape(1, -1)
        db = (b[key] - x0).reshape(1, -1)
        out[key] = (x0 + slerp(torch.tensor([t]), da, db).reshape(x0.shape)).to(x0.dtype)
    return out


def mergekit_nuslerp_tv(init: StateDict, a: StateDict, b: StateDict, t: float) -> StateDict:
    """mergekit's nuslerp method with a base model: base + nuslerp(t, a - base, b - base, flatten)."""
    from mergekit.merge_methods.nuslerp import nuslerp

    return {key: x0 + nuslerp(t, a[key] - x0, b[key] - x0, flatten=True) for key, x0 in init.items()}


def mergekit_slerp_recursive(init: StateDict, models: list[StateDict]) -> StateDict:
    merged = models[0]
    for m, model in enumerate(models[1:], start=2):
        merged = mergekit_slerp_tv(init, merged, model, 1.0 / m)
    return merged


def slerp_step_by_step(init: StateDict, models: list[StateDict]) -> StateDict:
    merged = models[0]
    for m, model in enumerate(models[1:], start=2):
        merged = merge.slerp(init, merged, model, 1.0 / m)
    return merged


def max_abs_diff(a: StateDict, b: StateDict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel())


# --- timing ----------------------------------------------------------------------------------


def time_median(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of ``fn()`` and its last result. Other results are dropped before the
    next run, so that an allocating merge pays for its output every time, as a real one does."""
    times, out = [], None
    for _ in range(repeats):
        out = None
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def fmt_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=100e6, help="parameters per model (default 100e6)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per row; the median is reported")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma-separated subset of fp32,bf16")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = ap.parse_args(argv)

    # One thread for both sides: merges run beside training on a busy machine.
    torch.set_num_threads(1)
    try:
        import mergekit.merge_methods.nuslerp  # noqa: F401
        import mergekit.merge_methods.slerp  # noqa: F401

        from importlib.metadata import version

        peer = f"mergekit {version('mergekit')}"
    except ImportError:
        peer = None
    shapes = transformer_shapes(args.params)
    n_params = sum(math.prod(s) for s in shapes.values())
    n_mat = sum(len(s) == 2 for s in shapes.values())
    print(
        f"model: {n_params / 1e6:.1f}M params, {n_mat} matrices, {len(shapes) - n_mat} vectors; "
        f"repeats={args.repeats}, threads={torch.get_num_threads()}, torch {torch.__version__}, "
        f"{peer or 'mergekit not importable: its rows are skipped'}",
        file=sys.stderr,
    )

    header = ["op", "dtype", "M", "seconds", "GB/s", "ratio to copy", "speed-up vs peer", "max |Δ| vs recursion"]
    rows: list[list[str]] = []

    def report(op, dtype_name, m, secs, nbytes, copy_gbs, peer_s=None, err=None) -> None:
        gbs = nbytes / secs / 1e9
        row = [
            op, dtype_name, m, f"{secs:.3f}", f"{gbs:.1f}", f"{gbs / copy_gbs:.2f}",
            f"{peer_s / secs:.2f}x" if peer_s is not None else "-",
            f"{err:.1e}" if err is not None else "-",
        ]
        rows.append(row)
        print("  " + fmt_row(row), file=sys.stderr, flush=True)

    for dtype_name in args.dtypes.split(","):
        dtype = DTYPES[dtype_name]
        t0 = time.perf_counter()
        init = build_models(shapes, 1, dtype, seed=1)[0]
        models = [fine_tuned(init, seed=10 + i) for i in range(M)]
        mb = merge.state_dict_bytes(init)
        print(f"{dtype_name}: built {M + 1} models of {mb / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        # Copy bandwidth between two existing tensors of one model's size: no allocation,
        # no page faults, so this is the ceiling for any merge that writes one model.
        src = torch.cat([v.reshape(-1) for v in init.values()])
        dst = torch.empty_like(src)
        dst.copy_(src)  # first touch of dst outside the timing
        copy_s, _ = time_median(lambda: dst.copy_(src), args.repeats)
        copy_gbs = 2 * mb / copy_s / 1e9
        report("copy_ (existing tensors)", dtype_name, "-", copy_s, 2 * mb, copy_gbs)
        del src, dst

        # WARM average of M=4.
        nbytes = (M + 1) * mb
        plain_s, _ = time_median(lambda: plain_average(models), args.repeats)
        peer_s = None
        if peer:
            peer_s, _ = time_median(lambda: mergekit_linear(models), args.repeats)
            report("mergekit linear", dtype_name, str(M), peer_s, nbytes, copy_gbs)
        report("plain sum/M", dtype_name, str(M), plain_s, nbytes, copy_gbs, peer_s)
        fresh_s, _ = time_median(lambda: merge.average(models), args.repeats)
        report("merge.average (new tensors)", dtype_name, str(M), fresh_s, nbytes, copy_gbs, peer_s)
        buffers = merge.average(models)  # kept and reused, as the parameter server does
        reuse_s, _ = time_median(lambda: merge.average(models, out=buffers), args.repeats)
        report("merge.average (out= reused)", dtype_name, str(M), reuse_s, nbytes, copy_gbs, peer_s)
        del buffers
        gc.collect()

        # WARP SLERP, M=2 then M=4; every result is compared with the step-by-step recursion.
        for m in (2, 4):
            sds = models[:m]
            nbytes = (m + 2) * mb
            ref = slerp_step_by_step(init, sds)
            ref_scale = max(float(v.float().abs().max()) for v in ref.values())
            peer_s = None
            if peer and m == 2:
                peer_s, out = time_median(lambda: mergekit_slerp_tv(init, sds[0], sds[1], 0.5), args.repeats)
                report("mergekit slerp (task vectors)", dtype_name, "2", peer_s, nbytes, copy_gbs,
                       err=max_abs_diff(out, ref) / ref_scale)
                nu_s, out = time_median(lambda: mergekit_nuslerp_tv(init, sds[0], sds[1], 0.5), args.repeats)
                report("mergekit nuslerp (flatten)", dtype_name, "2", nu_s, nbytes, copy_gbs,
                       err=max_abs_diff(out, ref) / ref_scale)
                del out
            if peer and m == 4:
                peer_s, out = time_median(lambda: mergekit_slerp_recursive(init, sds), args.repeats)
                report("mergekit slerp, recursive", dtype_name, "4", peer_s, nbytes, copy_gbs,
                       err=max_abs_diff(out, ref) / ref_scale)
                del out
            if m == 4:
                step_s, _ = time_median(lambda: slerp_step_by_step(init, sds), args.repeats)
                report("merge.slerp, recursive", dtype_name, "4", step_s, nbytes, copy_gbs, peer_s)
            buffers = merge.slerp_many(init, sds)
            sl_s, out = time_median(lambda: merge.slerp_many(init, sds, out=buffers), args.repeats)
            report("merge.slerp_many (out= reused)", dtype_name, str(m), sl_s, nbytes, copy_gbs, peer_s,
                   err=max_abs_diff(out, ref) / ref_scale)
            del buffers, out, ref
            gc.collect()
        del models, init, sds
        gc.collect()

    table = "\n".join(
        [
            f"Merge speed, {n_params / 1e6:.1f}M params per model, 1 thread (torch.set_num_threads(1), "
            f"both sides), median of {args.repeats}; torch {torch.__version__}"
            + (f", {peer}" if peer else "") + ". GB/s = (bytes read + bytes written) / s; "
            "speed-up = peer seconds / our seconds (peer: mergekit linear for averages, mergekit slerp on "
            "task vectors for M=2, mergekit slerp applied recursively for M=4); max |Δ| relative to max |θ|.",
            "",
            fmt_row(header),
            fmt_row(["---"] * len(header)),
            *(fmt_row(r) for r in rows),
        ]
    )
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
