"""Benchmark of warm_ray.merge against the machine's copy bandwidth and a plain torch loop.

    python bench/merge.py [--params 100e6] [--repeats 3] [--out table.md]

Builds M ∈ {2, 4, 8} transformer-shaped state dicts of at least ``--params`` parameters each,
in float32 and bfloat16, and times on one thread (medians over ``--repeats``):

- ``copy``: ``dst.copy_(src)`` between two existing tensors of one model's size: the
  practical memory-bandwidth limit of this machine, measured in the same run;
- ``plain``: ``sum(tensors) / M`` per key, what one writes without thinking;
- ``average``: warm_ray.merge.average (WARM);
- ``slerp_many``: warm_ray.merge.slerp_many (WARP), for M ∈ {2, 4} only: it is slower.

GB/s counts the bytes of all inputs read plus the output written (``init`` counts as an
input of slerp_many), divided by the seconds.
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

MS = (2, 4, 8)
SLERP_MS = (2, 4)
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


def plain_average(models: list[StateDict]) -> StateDict:
    """The reference a reader would write: ``sum(tensors) / M`` key by key."""
    m = len(models)
    return {k: sum(sd[k] for sd in models) / m for k in models[0]}


def time_median(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()``; its result is dropped before the next run so that
    every run pays for allocating its output, as a real merge does."""
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        del out
    return statistics.median(times)


def fmt_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=100e6, help="parameters per model (default 100e6)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per row; the median is reported")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = ap.parse_args(argv)

    # One thread: merges run beside training on a busy machine, and numbers stay comparable.
    torch.set_num_threads(1)
    shapes = transformer_shapes(args.params)
    n_params = sum(math.prod(s) for s in shapes.values())
    n_mat = sum(len(s) == 2 for s in shapes.values())
    print(
        f"model: {n_params / 1e6:.1f}M params, {n_mat} matrices, {len(shapes) - n_mat} vectors; "
        f"repeats={args.repeats}, threads={torch.get_num_threads()}",
        file=sys.stderr,
    )

    header = ["op", "dtype", "M", "seconds", "GB/s", "ratio to copy", "speed-up vs plain"]
    rows: list[list[str]] = []

    def report(op: str, dtype_name: str, m: str, secs: float, nbytes: int, copy_gbs: float, plain_s: float | None) -> float:
        gbs = nbytes / secs / 1e9
        speedup = f"{plain_s / secs:.2f}" if plain_s is not None else "-"
        row = [op, dtype_name, m, f"{secs:.3f}", f"{gbs:.1f}", f"{gbs / copy_gbs:.2f}", speedup]
        rows.append(row)
        print("  " + fmt_row(row), file=sys.stderr, flush=True)
        return gbs

    for dtype_name, dtype in DTYPES.items():
        t0 = time.perf_counter()
        models = build_models(shapes, max(MS), dtype)
        init = build_models(shapes, 1, dtype, seed=1)[0]
        model_bytes = merge.state_dict_bytes(models[0])
        print(f"{dtype_name}: built {max(MS) + 1} models of {model_bytes / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        # Copy bandwidth between two existing tensors of one model's size: no allocation,
        # no page faults, so this is the ceiling for any merge that writes one model.
        n = sum(math.prod(s) for s in shapes.values())
        src = torch.empty(n, dtype=dtype).normal_()
        dst = torch.empty_like(src)
        dst.copy_(src)  # first touch of dst outside the timing
        copy_s = time_median(lambda: dst.copy_(src), args.repeats)
        copy_gbs = 2 * model_bytes / copy_s / 1e9
        report("copy", dtype_name, "-", copy_s, 2 * model_bytes, copy_gbs, None)
        del src, dst

        for m in MS:
            sds = models[:m]
            nbytes = (m + 1) * model_bytes
            plain_s = time_median(lambda: plain_average(sds), args.repeats)
            report("plain sum/M", dtype_name, str(m), plain_s, nbytes, copy_gbs, plain_s)
            avg_s = time_median(lambda: merge.average(sds), args.repeats)
            report("merge.average", dtype_name, str(m), avg_s, nbytes, copy_gbs, plain_s)
            if m in SLERP_MS:
                sl_s = time_median(lambda: merge.slerp_many(init, sds), args.repeats)
                report("merge.slerp_many", dtype_name, str(m), sl_s, (m + 2) * model_bytes, copy_gbs, plain_s)
        del models, init, sds
        gc.collect()

    table = "\n".join(
        [
            f"Merge speed, {n_params / 1e6:.1f}M params per model, 1 thread, median of {args.repeats}. "
            "GB/s = (bytes read + bytes written) / s.",
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
