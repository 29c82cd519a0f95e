"""The RLHF driver: sample → score → learn → sync, on Ray; and the WARM-vs-single-RM comparison.

One step of ``run_rl`` (WARM Sec. 5.2: REINFORCE against a proxy RM, judged by a control reward):

    prompts of this step ──► RolloutWorkerGroup.sample      (N RolloutWorker actors, HF or vLLM)
                         ──► proxy reward r(x, y)            (WARM / one RM / ENS, in the driver)
                             gold reward                     (logged only, never trained on)
                         ──► PolicyLearner.learn             (a Ray actor: REINFORCE + KL)
                         ──► learner.get_weights → one ray.put → every worker   (sync)

Outputs of one run (``out_dir``): ``metrics.jsonl`` (one record per step), ``ckpt/`` (the last
checkpoint, atomic), ``policy/`` (the final policy as a Hugging Face dir with its tokenizer),
``summary.json`` and ``config.yaml``. ``resume=True`` continues from ``ckpt/``: the steps logged
after that checkpoint are dropped and redone, so the history has each step once.

``run_rl_comparison`` runs RL with the single RM and with WARM on the same budget (same seed,
prompts, steps) and compares the final policies by gold win rate on held-out prompts (WARM Fig. 9).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import ray
import torch
from transformers import AutoConfig

from actors.learner import PolicyLearner, load_checkpoint, save_checkpoint, score_samples
from actors.placement import actor_options, ensure_ray
from actors.rollout import HFBackend, RolloutWorkerGroup, Sample, encode_prompts
from actors.warm import NAMESPACE, prepared_summary, ps_name, start_parameter_server
from warm_ray import models as M
from warm_ray.config import Config, RLConfig, save_config
from warm_ray.gold import gold_rewards
from warm_ray.reward import RewardScorer

log = logging.getLogger("warm_ray.rl")

RewardFn = Callable[[list[str], list[str]], list[float]]
# on_step(step, record, group): called after each step is logged and checkpointed. Tests use it
# to kill a rollout worker or to simulate a crash (raise).
StepHook = Callable[[int, dict, RolloutWorkerGroup], None]

REWARD_KINDS = ("warm", "single", "ens")
TIMEOUT_S = 600.0
# Steps averaged for the "final" numbers of a run: one step's batch is noisy.
FINAL_WINDOW = 5
_PS_LOCK = threading.Lock()


# ------------------------------------------------------------------------------------------
# Inputs: prompts, sampling seeds, the proxy reward
# ------------------------------------------------------------------------------------------


def load_prompts(summary: dict) -> dict[str, list[str]]:
    return json.loads(Path(summary["prompts"]).read_text())


def step_prompts(prompts: Sequence[str], step: int, k: int, seed: int) -> list[str]:
    """The k prompts of ``step`` (1-based): consecutive slices of one permutation per epoch.

    A function of (seed, step) only, so a resumed run and a second run with the same seed see
    the same prompts at the same step.
    """
    out = []
    for i in range((step - 1) * k, step * k):
        epoch, pos = divmod(i, len(prompts))
        order = list(range(len(prompts)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(prompts[order[pos]])
    return out


def sampling_seed(seed: int, step: int, per_step: int) -> int:
    """Seed of a step's sampling; workers use seed .. seed + per_step - 1, so steps never share one."""
    return seed * 10_000_019 + step * per_step


def warm_scorer(warm_dir: Path, max_length: int) -> RewardScorer:
    """The WARM RM: the ParameterServer's current average, loaded into a member's RM skeleton."""
    if not (warm_dir / "ps" / "manifest.json").exists():
        raise FileNotFoundError(f"{warm_dir / 'ps'} has no WARM average: run `warm-ray warm` first")
    # Runs started from threads (WARP's parallel runs) share one named server: one at a time
    # looks it up, starts it if needed, and stops only a server it started itself.
    with _PS_LOCK:
        try:
            ray.get_actor(ps_name(warm_dir), namespace=NAMESPACE)
            started_here = False
        except ValueError:
            started_here = True
        ps = start_parameter_server(warm_dir)  # restores the members and average persisted by `warm`
        try:
            info = ray.get(ps.info.remote(), timeout=TIMEOUT_S)
            weights = ray.get(ps.get_weights.remote(), timeout=TIMEOUT_S)
        finally:
            if started_here:
                ray.kill(ps)
    skeleton_dir = warm_dir / "members" / f"member_{info['selection'][0]}" / "final"
    model = M.load_reward_model(skeleton_dir)
    model.load_state_dict(weights)
    log.info("WARM RM: average version %d of members %s", info["version"], info["selection"])
    return RewardScorer([model], M.load_tokenizer(skeleton_dir), max_length=max_length, name="warm")


def proxy_reward(config: Config, kind: str) -> RewardFn:
    """The proxy reward r(x, y) the policy optimises: WARM, one member, or ENS."""
    warm_dir = Path(config.run_dir) / "warm"
    max_length = config.warm.max_length
    if kind == "warm":
        scorer = warm_scorer(warm_dir, max_length)
    elif kind in ("single", "ens"):
        scorer = RewardScorer.from_warm_run(warm_dir, kind=kind, member=config.rl.single_member,
                                            max_length=max_length)
    else:
        raise ValueError(f"unknown reward kind {kind!r}; use one of {REWARD_KINDS}")
    return scorer.score


# ------------------------------------------------------------------------------------------
# metrics.jsonl
# ------------------------------------------------------------------------------------------


def read_metrics(path: Path) -> list[dict]:
    """Records of a metrics.jsonl; a torn last line (a crash mid-write) is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def keep_metrics_until(path: Path, step: int) -> list[dict]:
    """Drop the records after ``step`` (they will be redone); rewrite the file atomically."""
    kept = [r for r in read_metrics(path) if r["step"] <= step]
    M.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def append_metrics(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def final_means(records: Sequence[dict], keys: Sequence[str], window: int = FINAL_WINDOW) -> dict[str, float]:
    tail = list(records)[-window:]
    return {k: sum(r[k] for r in tail) / len(tail) for k in keys} if tail else {}


# ------------------------------------------------------------------------------------------
# One RL run
# ------------------------------------------------------------------------------------------


def rollout_options(cfg: RLConfig, policy_dir: str, prompts: Sequence[str]) -> dict:
    """Backend kwargs of the rollout workers, from ``rl.rollout`` (device, dtype) and the prompts."""
    res = cfg.rollout
    dtype = M.resolve_dtype(res.dtype, res.device)
    kwargs: dict = {"device": res.device, "dtype": str(dtype).removeprefix("torch.")}
    if cfg.backend == "vllm":
        # The KV cache must hold one whole sequence: the longest prompt plus the completion.
        tok = M.load_tokenizer(policy_dir)
        longest = max(len(ids) for ids in encode_prompts(tok, list(prompts)))
        limit = AutoConfig.from_pretrained(policy_dir).max_position_embeddings
        kwargs["max_model_len"] = min(limit, 16 * math.ceil((longest + cfg.max_new_tokens) / 16))
        kwargs["seed"] = cfg.seed
        if res.device == "cuda":
            kwargs["kv_cache_memory_bytes"] = None  # size the cache by gpu_memory_utilization
    return kwargs


def run_rl(config: Config, reward_kind: str, out_dir: str | Path, resume: bool = False,
           reward_fn: RewardFn | None = None, *, init_dir: str | None = None,
           on_step: StepHook | None = None) -> dict:
    """REINFORCE with KL to an anchor against a proxy reward; returns the run's summary.

    ``reward_kind``: "warm", "single" or "ens" (read from ``<run_dir>/warm``), or a name for an
    injected ``reward_fn(prompts, completions) -> rewards``. ``init_dir``: the policy θ starts
    from (default: the SFT policy of prepare). Gold rewards are logged, never trained on.
    """
    cfg = dataclasses.replace(config.rl, reward=reward_kind)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(dataclasses.replace(config, rl=cfg), out)
    metrics_path, ckpt_dir, summary_path = out / "metrics.jsonl", out / "ckpt", out / "summary.json"
    if resume and summary_path.exists():
        done = json.loads(summary_path.read_text())
        if done["steps"] == cfg.steps and (out / "policy" / "config.json").exists():
            log.info("rl run in %s already finished (%d steps)", out, cfg.steps)
            return done
    if not resume:
        # A fresh run must not leave an older run's checkpoint behind for a later resume to pick up.
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        summary_path.unlink(missing_ok=True)

    summary = prepared_summary(config.run_dir)
    sft_dir = summary["policy"]
    prompts = load_prompts(summary)["train"]
    per_step = cfg.prompts_per_step * cfg.samples_per_prompt
    score = reward_fn if reward_fn is not None else proxy_reward(config, reward_kind)
    torch.set_num_threads(max(1, cfg.learner.num_threads))
    ensure_ray()

    t_start = time.perf_counter()
    learner = ray.remote(PolicyLearner).options(**actor_options(cfg.learner)).remote(sft_dir, cfg, init_dir)
    group = None
    try:
        group = RolloutWorkerGroup(cfg.n_workers, cfg.backend, init_dir or sft_dir,
                                   resources=actor_options(cfg.rollout),
                                   backend_kwargs=rollout_options(cfg, sft_dir, prompts), timeout_s=TIMEOUT_S)
        start = 0
        checkpoint = load_checkpoint(ckpt_dir) if resume else None
        if checkpoint is not None:
            state, _ = checkpoint
            start = ray.get(learner.load_state.remote(state), timeout=TIMEOUT_S)
            group.sync_weights(state["policy"])
            records = keep_metrics_until(metrics_path, start)
            log.info("resuming %s from the checkpoint of step %d (%d steps logged)", out, start, len(records))
        else:
            if resume:
                log.info("no checkpoint in %s: starting from step 0", ckpt_dir)
            records = keep_metrics_until(metrics_path, 0)
        log.info("rl (%s reward, %s backend): steps %d..%d, %d prompts x %d samples, beta %g, anchor %s",
                 reward_kind, cfg.backend, start + 1, cfg.steps, cfg.prompts_per_step,
                 cfg.samples_per_prompt, cfg.beta, cfg.anchor)

        for step in range(start + 1, cfg.steps + 1):
            # sample
            t0 = time.perf_counter()
            batch_prompts = step_prompts(prompts, step, cfg.prompts_per_step, cfg.seed)
            samples = group.sample(batch_prompts, cfg.samples_per_prompt, cfg.max_new_tokens,
                                   cfg.temperature, seed=sampling_seed(cfg.seed, step, per_step))
            # score: the proxy reward trains; the gold reward is only watched
            t1 = time.perf_counter()
            texts = [s.completion for s in samples]
            proxy = [float(r) for r in score([s.prompt for s in samples], texts)]
            gold = gold_rewards(texts)
            # learn
            t2 = time.perf_counter()
            learned = ray.get(learner.learn.remote(samples, proxy), timeout=TIMEOUT_S)
            # sync: one ray.put of the new weights, one ref to every worker
            t3 = time.perf_counter()
            version = group.sync_weights(ray.get(learner.get_weights.remote(), timeout=TIMEOUT_S))
            t4 = time.perf_counter()

            tokens = sum(len(s.completion_ids) for s in samples)
            record = {
                "step": step,
                "proxy_reward": sum(proxy) / len(proxy),
                "gold_reward": sum(gold) / len(gold),
                "kl_sft": learned["kl_sft"],
                "kl_anchor": learned["kl_anchor"],
                "entropy": learned["entropy"],
                "completion_len": tokens / len(samples),
                "stop_fraction": sum(s.finish_reason == "stop" for s in samples) / len(samples),
                "tokens_per_s": tokens / max(t1 - t0, 1e-9),
                "logprob_gap": learned["logprob_gap"],
                "loss": learned["loss"],
                "grad_norm": learned["grad_norm"],
                "baseline": learned["baseline"],
                "policy_version": version,
                "t_sample": t1 - t0, "t_score": t2 - t1, "t_learn": t3 - t2, "t_sync": t4 - t3,
                "t_step": t4 - t0,
            }
            append_metrics(metrics_path, record)
            records.append(record)
            log.info("step %d/%d  proxy %.3f  gold %.3f  kl %.3f  ent %.2f  len %.1f  gap %.1e  "
                     "%.0f tok/s  sample %.2fs score %.2fs learn %.2fs sync %.2fs",
                     step, cfg.steps, record["proxy_reward"], record["gold_reward"], record["kl_sft"],
                     record["entropy"], record["completion_len"], record["logprob_gap"],
                     record["tokens_per_s"], *(record[k] for k in ("t_sample", "t_score", "t_learn", "t_sync")))
            if step == cfg.steps or (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0):
                state = ray.get(learner.state.remote(), timeout=TIMEOUT_S)
                save_checkpoint(ckpt_dir, state, {"reward": reward_kind, "policy_version": version})
            if on_step is not None:
                on_step(step, record, group)

        # the final policy as a Hugging Face dir, loadable by anyone
        final = M.load_policy(init_dir or sft_dir)
        final.load_state_dict(ray.get(learner.get_weights.remote(), timeout=TIMEOUT_S))
        M.save_model(final, out / "policy", M.load_tokenizer(sft_dir))
    finally:
        if group is not None:
            group.shutdown()
        ray.kill(learner)

    keys = ("proxy_reward", "gold_reward", "kl_sft", "entropy", "completion_len", "logprob_gap")
    phases = ("t_sample", "t_score", "t_learn", "t_sync", "t_step")
    result = {
        "reward": reward_kind,
        "backend": cfg.backend,
        "steps": cfg.steps,
        "resumed_from": start,
        "first": final_means(records[:FINAL_WINDOW], keys),
        "final": final_means(records, keys),
        "seconds_per_phase": final_means(records, phases, window=len(records)),
        "seconds_this_run": round(time.perf_counter() - t_start, 1),
        "policy": str(out / "policy"),
        "metrics": str(metrics_path),
    }
    M.atomic_write_json(summary_path, result)
    log.info("rl (%s) done: proxy %.3f → %.3f, gold %.3f → %.3f, KL to SFT %.3f (%s)", reward_kind,
             result["first"]["proxy_reward"], result["final"]["proxy_reward"], result["first"]["gold_reward"],
             result["final"]["gold_reward"], result["final"]["kl_sft"], out)
    return result


# ------------------------------------------------------------------------------------------
# WARM vs a single RM (WARM Sec. 5.2, Fig. 9)
# ------------------------------------------------------------------------------------------


def win_rate(gold_a: Sequence[float], gold_b: Sequence[float]) -> dict[str, float]:
    """Share of prompts where policy a's completion has the higher gold reward; a tie counts 1/2."""
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(gold_a, gold_b)]
    p = sum(wins) / len(wins)
    return {"win_rate": p, "stderr": math.sqrt(p * (1 - p) / len(wins)), "n": len(wins),
            "ties": sum(w == 0.5 for w in wins)}


@torch.no_grad()
def evaluate_policy(policy_dir: str, sft, prompts: list[str], cfg: RLConfig, scorers: dict[str, RewardFn],
                    seed: int) -> tuple[list[Sample], dict]:
    """One sample per held-out prompt at the training temperature; gold, each proxy, KL to SFT."""
    backend = HFBackend(policy_dir)
    samples = backend.generate(prompts, n=1, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                               seed=seed)
    texts = [s.completion for s in samples]
    args = (cfg.temperature, sft.config.pad_token_id or 0, torch.device("cpu"), None)
    kl = score_samples(backend.model, samples, *args).seq_logp - score_samples(sft, samples, *args).seq_logp
    gold = gold_rewards(texts)
    row = {"gold": gold, "kl_sft": kl.mean().item()}
    for name, fn in scorers.items():
        row[name] = sum(fn([s.prompt for s in samples], texts)) / len(samples)
    backend.shutdown()
    return samples, row


def plot_curves(runs: dict[str, list[dict]], path: Path) -> None:
    """Proxy and gold reward against step and against KL to SFT, one line per reward model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def smooth(xs: list[float], w: int = FINAL_WINDOW) -> list[float]:
        return [sum(xs[max(0, i - w + 1):i + 1]) / len(xs[max(0, i - w + 1):i + 1]) for i in range(len(xs))]

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for (name, records), color in zip(runs.items(), ("tab:blue", "tab:orange", "tab:green")):
        step = [r["step"] for r in records]
        kl = smooth([r["kl_sft"] for r in records])
        for row, key in enumerate(("proxy_reward", "gold_reward")):
            y = [r[key] for r in records]
            axes[row, 0].plot(step, y, color=color, alpha=0.25)
            axes[row, 0].plot(step, smooth(y), color=color, label=f"{name} RM")
            axes[row, 1].plot(kl, smooth(y), color=color, label=f"{name} RM")
    for row, what in enumerate(("proxy reward (each run's own RM)", "gold reward (never trained on)")):
        axes[row, 0].set_ylabel(what)
        axes[row, 0].set_xlabel("RL step")
        axes[row, 1].set_xlabel("KL to SFT (sampled-sequence estimate)")
        for ax in axes[row]:
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    fig.suptitle(f"REINFORCE against a single RM vs WARM (thin: per step; thick: mean of {FINAL_WINDOW})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_tables(results: dict) -> str:
    lines = ["| policy | gold (eval) | WARM RM (eval) | single RM (eval) | KL to SFT (eval) "
             "| train proxy first→last | train gold first→last | train KL (last) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in results["policies"].items():
        train = results["runs"].get(name)
        tail = ("| – | – | – |" if train is None else
                f"| {train['first']['proxy_reward']:.3f} → {train['final']['proxy_reward']:.3f} "
                f"| {train['first']['gold_reward']:.3f} → {train['final']['gold_reward']:.3f} "
                f"| {train['final']['kl_sft']:.3f} |")
        lines.append(f"| {name} | {row['gold_mean']:.3f} | {row['warm_rm']:.3f} | {row['single_rm']:.3f} "
                     f"| {row['kl_sft']:.3f} " + tail)
    lines += ["", "| gold win rate | rate | ± s.e. | ties | prompts |", "|---|---:|---:|---:|---:|"]
    for name, w in results["win_rates"].items():
        lines.append(f"| {name} | {w['win_rate']:.3f} | {w['stderr']:.3f} | {w['ties']} | {w['n']} |")
    return "\n".join(lines) + "\n"


def run_rl_comparison(config: Config, resume: bool = False) -> dict:
    """RL with one member's RM and with WARM on the same budget; gold win rates on held-out prompts."""
    cfg = config.rl
    rl_dir = Path(config.run_dir) / "rl"
    rl_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, rl_dir)
    t0 = time.perf_counter()
    ensure_ray()
    # Each RM is loaded once: it rewards its own run and scores every policy at the end.
    rms = {"single": proxy_reward(config, "single"), "warm": proxy_reward(config, "warm")}
    # Same seed, prompts, steps and sampling seeds for both: only the reward model differs.
    runs = {kind: run_rl(config, kind, rl_dir / kind, resume=resume, reward_fn=rms[kind])
            for kind in ("single", "warm")}

    summary = prepared_summary(config.run_dir)
    prompts = load_prompts(summary)["eval"][:cfg.n_eval_prompts]
    scorers = {f"{kind}_rm": fn for kind, fn in rms.items()}
    sft = M.load_policy(summary["policy"]).eval()
    dirs = {"sft": summary["policy"], "single": runs["single"]["policy"], "warm": runs["warm"]["policy"]}
    # One seed for every policy: the same random numbers drive each policy's sampling.
    eval_seed = cfg.seed + 7_777_777
    gold, policies = {}, {}
    for name, d in dirs.items():
        _, row = evaluate_policy(d, sft, prompts, cfg, scorers, eval_seed)
        gold[name] = row.pop("gold")
        policies[name] = {"gold_mean": sum(gold[name]) / len(gold[name]), **row}
    win_rates = {
        "WARM vs single RM": win_rate(gold["warm"], gold["single"]),
        "WARM vs SFT": win_rate(gold["warm"], gold["sft"]),
        "single RM vs SFT": win_rate(gold["single"], gold["sft"]),
    }
    curves = {kind: read_metrics(Path(r["metrics"])) for kind, r in runs.items()}
    plot_curves(curves, rl_dir / "curves.png")
    M.atomic_write_json(rl_dir / "curves.json", curves)
    results = {"policies": policies, "win_rates": win_rates, "runs": runs,
               "eval_prompts": len(prompts), "temperature": cfg.temperature,
               "seconds": round(time.perf_counter() - t0, 1)}
    M.publish(rl_dir, results, markdown_tables(results),
              f"RL with a single RM vs WARM ({cfg.steps} steps each; eval: {len(prompts)} held-out prompts, "
              f"one sample each at T={cfg.temperature}):",
              f"curves: {rl_dir / 'curves.png'}   ({results['seconds']}s)")
    return results
