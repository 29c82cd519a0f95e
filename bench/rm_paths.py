"""The reward model's scoring and training paths, before and after, side by side in one run.

    python bench/rm_paths.py --run-dir runs/demo [--texts 2048] [--models 4] [--steps 30] [--out table.md]

On a finished `warm-ray prepare` (its base LM and its train pairs: real texts whose chosen and
rejected sides differ in length, as the study's do):

(a) scoring: ``--models`` reward models (random heads on the base LM, as WARM's members or an
    ENS) score the same ``--texts`` texts, along the evaluation path as it was and with each change
    added in turn: GPT-2's unfused ``gelu_new`` -> torch's fused tanh-GELU (the same function);
    batches of 256 -> 64 texts; one Python thread using every torch thread -> one Python thread per
    core with one torch thread each (``models.thread_map``); batches of texts in order of characters,
    each tokenized per model -> in order of token length, tokenized once (``warm_ray.scoring``);
(b) a member's training step at one torch thread (``reward.MemberTraining``): unfused or fused
    activation, one forward pass per step or two over length-sorted groups (``length_groups``).

Ratios are to the first row of each table (the path as it was), measured in the same run.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

# Runnable as a plain script from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from warm_ray import models as M  # noqa: E402
from warm_ray import quiet_transformers  # noqa: E402
from warm_ray import reward as R  # noqa: E402
from warm_ray import scoring as S  # noqa: E402


def unfuse(model):
    """The same weights through GPT-2's own unfused ``gelu_new`` (what the models ran before)."""
    from transformers.activations import ACT2FN

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child).__name__ == "GELUTanh":
                setattr(module, name, ACT2FN["gelu_new"])
    return model


@torch.no_grad()
def score_by_chars(model, tok, texts, batch_size: int) -> torch.Tensor:
    """The evaluation path as it was: batches of texts in order of their length in characters, each
    tokenized when it is scored."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts))
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        out[idx] = model(**R.encode(tok, [texts[i] for i in idx], 64)).logits.squeeze(-1).float()
    return out


def score_all(models, tok, texts, batch_size: int, threaded: bool) -> None:
    def one(model):
        return score_by_chars(model, copy.deepcopy(tok) if threaded else tok, texts, batch_size)

    if threaded:
        M.thread_map(one, models)
    else:
        for model in models:
            one(model)


def score_tokens(models, tok, texts, batch_size: int) -> None:
    """warm-ray's path: the texts tokenized once, in batches of like token length, every (model,
    batch) pass a job on a thread per core (``scoring.score_encoded``)."""
    S.score_encoded(models, [S.encode_texts(tok, texts, 64, batch_size)])


def bench_scoring(policy: str, rows: list[dict], args) -> list[str]:
    texts = (R.texts_of(rows, "chosen") + R.texts_of(rows, "rejected"))[: args.texts]
    tok = M.load_tokenizer(policy)
    fused = [M.build_reward_model(policy, dropout=0.0, seed=i).eval() for i in range(args.models)]
    unfused = [unfuse(copy.deepcopy(m)) for m in fused]
    cores = M.use_threads(0)
    paths = [("gelu_new, batches of 256, 1 Python thread", unfused, 256, False),
             ("fused GELU, batches of 256, 1 Python thread", fused, 256, False),
             ("fused GELU, batches of 64, 1 Python thread", fused, 64, False),
             (f"fused GELU, batches of 64, {cores} Python threads x 1 torch thread", fused, 64, True),
             ("as above, batches by token length, tokenized once, (model, batch) jobs", fused, 64, None)]
    score_all(fused[:1], tok, texts[:256], 64, False)  # warm-up
    times = {name: [] for name, *_ in paths}
    for _ in range(args.repeats):  # interleaved, so the machine's noise falls on every path alike
        for name, models, batch_size, threaded in paths:
            t0 = time.perf_counter()
            if threaded is None:
                score_tokens(models, tok, texts, batch_size)
            else:
                score_all(models, tok, texts, batch_size, threaded)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times[paths[0][0]])
    lines = [f"| scoring path ({args.models} RMs x {len(texts)} texts, {cores} cores) | s | texts/s | speed-up |",
             "|---|---:|---:|---:|"]
    for name, *_ in paths:
        s = statistics.median(times[name])
        lines.append(f"| {name} | {s:.2f} | {args.models * len(texts) / s:.0f} | {base / s:.2f}x |")
    return lines


def bench_training(policy: str, rows: list[dict], args) -> list[str]:
    torch.set_num_threads(1)
    tok = M.load_tokenizer(policy)
    variants = [("gelu_new, 1 forward pass", False, 1), ("gelu_new, 2 length groups", False, 2),
                ("fused GELU, 1 forward pass", True, 1), ("fused GELU, 2 length groups", True, 2)]
    runs = {}
    for name, fused, groups in variants:
        run = R.MemberTraining(rows, tok, policy, None, lr=1e-4, dropout=0.1, seed=0, epochs=1, batch_size=32,
                               max_length=64, length_groups=groups)
        if not fused:
            unfuse(run.model)
        runs[name] = run
    times = {name: [] for name in runs}
    for step in range(args.steps):  # the variants take turns, step by step, on the same batches
        for name, run in runs.items():
            run.step = step
            t0 = time.perf_counter()
            run.train_step()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times[variants[0][0]][2:])
    lines = ["| member training step (32 pairs, 1 thread) | s / step | speed-up |", "|---|---:|---:|"]
    for name in runs:
        s = statistics.median(times[name][2:])
        lines.append(f"| {name} | {s:.3f} | {base / s:.2f}x |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/demo", help="a run dir with a finished `warm-ray prepare`")
    p.add_argument("--texts", type=int, default=2048)
    p.add_argument("--models", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", help="also write the tables to this markdown file")
    args = p.parse_args()
    quiet_transformers()
    from warm_ray.data import load_splits
    from warm_ray.sources import prepared_summary

    prepared = prepared_summary(args.run_dir)  # a clear error when `warm-ray prepare` has not run there
    rows = load_splits(prepared["data"])["train"]
    text = "\n".join([*bench_scoring(prepared["policy"], rows, args), "", *bench_training(prepared["policy"], rows, args)])
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
