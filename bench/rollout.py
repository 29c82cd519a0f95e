"""Rollout throughput of the HF and vLLM backends, and weight-sync time as a share of an RL step.

    python bench/rollout.py --run-dir runs/demo [--steps 12] [--warmup 2] [--out table.md]

Needs a finished `warm-ray prepare` in ``--run-dir`` (its SFT policy and train prompts). For
each backend it runs the real RL loop (``actors.rl.run_rl``: one RolloutWorker actor, the
PolicyLearner actor, weight sync every step) with a reward of zero, so the policy stays the SFT
policy and both backends sample the same distribution from the same prompts with the same seeds.
Reported: medians over the steps after ``--warmup``.

- tokens/s: completion tokens sampled per second of the sample phase (inside the Ray actor);
- sync: the learner's ``get_weights`` result, by reference → the worker loads the whole state dict
  (HF: ``load_state_dict``; vLLM: safetensors in /dev/shm + ``reload_weights``);
- sync share: sync seconds / seconds of the whole step (sample + score + learn + sync).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

# Runnable as a plain script from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from warm_ray import quiet_transformers  # noqa: E402
from warm_ray.config import load_config  # noqa: E402

BACKENDS = ("hf", "vllm")


def zero_reward(prompts: list[str], completions: list[str]) -> list[float]:
    return [0.0] * len(completions)


def bench_backend(run_dir: str, backend: str, args) -> dict[str, float]:
    from actors.rl import RLRun, read_metrics, run_rl

    cfg = load_config(None, [
        f"run_dir={run_dir}", f"rl.backend={backend}", f"rl.steps={args.steps}",
        f"rl.prompts_per_step={args.prompts}", f"rl.samples_per_prompt={args.samples}",
        f"rl.max_new_tokens={args.tokens}", f"rl.checkpoint_every={args.steps}",
    ])
    with tempfile.TemporaryDirectory(prefix=f"bench_rollout_{backend}_") as out:
        run_rl(RLRun.of(cfg, out, reward="zero", fn=zero_reward))
        records = read_metrics(Path(out) / "metrics.jsonl")[args.warmup:]
    med = {k: statistics.median(r[k] for r in records)
           for k in ("tokens_per_s", "t_sample", "t_score", "t_learn", "t_sync", "t_step", "completion_len")}
    med["sync_share"] = statistics.median(r["t_sync"] / r["t_step"] for r in records)
    return med


ROWS = [
    ("sample tokens/s", "tokens_per_s", "{:.0f}"),
    ("sample s/step", "t_sample", "{:.3f}"),
    ("learn s/step", "t_learn", "{:.3f}"),
    ("weight sync s/step", "t_sync", "{:.3f}"),
    ("RL step s", "t_step", "{:.3f}"),
    ("sync share of step", "sync_share", "{:.1%}"),
    ("completion tokens (mean)", "completion_len", "{:.1f}"),
]


def markdown(results: dict[str, dict[str, float]]) -> str:
    lines = ["| metric (median per step) | HF | vLLM | vLLM/HF |", "|---|---:|---:|---:|"]
    for name, key, fmt in ROWS:
        hf, vl = results["hf"][key], results["vllm"][key]
        ratio = f"{vl / hf:.2f}" if hf else "–"
        lines.append(f"| {name} | {fmt.format(hf)} | {fmt.format(vl)} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/demo", help="a run dir with a finished `warm-ray prepare`")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    p.add_argument("--prompts", type=int, default=16, help="prompts per step")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt")
    p.add_argument("--tokens", type=int, default=32, help="max new tokens per completion")
    p.add_argument("--out", help="also write the markdown table here")
    args = p.parse_args()
    from warm_ray.sources import prepared_summary

    prepared_summary(args.run_dir)  # a clear error when `warm-ray prepare` has not run there
    quiet_transformers()
    import ray
    import torch

    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = {b: bench_backend(args.run_dir, b, args) for b in BACKENDS}
    finally:
        ray.shutdown()
    table = markdown(results)
    print(f"\nRollout backends in the RL loop: {args.prompts} prompts x {args.samples} samples x "
          f"<= {args.tokens} tokens per step, 1 rollout worker + 1 learner (0.5 CPU each), "
          f"medians of steps {args.warmup + 1}..{args.steps}\n")
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
