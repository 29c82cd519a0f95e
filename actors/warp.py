"""The WARP driver (WARP Algorithm 1): EMA-anchored RL runs in parallel, SLERP, LITI, iterated.

For each iteration i = 1..I:
    1. M REINFORCE runs start from θ_init, each with its own prompt order (seed) and an EMA
       anchor (r_β = r - β log π_θ/π_ema, θ_ema ← (1-μ)θ_ema + μθ), T steps each, in parallel;
    2. their task vectors δ_m = θ_m - θ_init are merged by SLERP (recursive for M > 2);
    3. LITI: θ_η = (1-η)·θ_init + η·θ_slerp over a grid of η traces the reward-KL front;
       the point at ``warp.eta`` becomes θ_init of iteration i+1.
The front is compared, in one plot, with (a) REINFORCE anchored to the SFT policy at several β
and (b) LERP (the plain average of the M policies) in place of SLERP.

Outputs (``<run_dir>/warp``): ``iter_<i>/run_<m>/`` (RL runs), ``iter_<i>/init/`` (θ_init of the
next iteration), ``baseline_beta_<b>/``, ``state.json`` (what finished), ``results.json``,
``results.md``, ``fronts.png``, ``config.yaml``. ``--resume`` skips finished runs and iterations.
Every RL run is rewarded by ``warp.rl.reward``, any reward mode of ``warm-ray rl`` (normalised on SFT
samples, with its disagreement monitor).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from actors.placement import ensure_ray
from actors.rlhf import evaluate_policy, load_prompts, proxy_scorer, run_rl
from actors.warm import prepared_summary
from warm_ray import merge
from warm_ray import models as M
from warm_ray.config import Config, save_config

log = logging.getLogger("warm_ray.warp")

# on_run_done(iteration, run_index): called when an RL run finishes (tests simulate a crash here)
RunHook = Callable[[int, int], None]


def merge_policies(init: dict, policies: list[dict], lam: float, method: str = "slerp") -> dict:
    """SLERP of task vectors (λ for M=2, recursive 1/m for M>2), or LERP (uniform average)."""
    if method == "lerp":
        return merge.lerp_many(init, policies)
    if len(policies) == 2:
        return merge.slerp(init, policies[0], policies[1], lam)
    return merge.slerp_many(init, policies)


def _state_dict(policy_dir: str | Path) -> dict[str, torch.Tensor]:
    return M.load_policy(policy_dir).state_dict()


def _save_policy(sd: dict, template_dir: str | Path, out: Path, tokenizer) -> Path:
    model = M.load_policy(template_dir)
    model.load_state_dict(sd)
    return M.save_model(model, out, tokenizer)


def _read_state(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.exists() else {"iterations": {}, "baselines": {}}


def run_warp(config: Config, resume: bool = False, on_run_done: RunHook | None = None) -> dict:
    wcfg = config.warp
    if wcfg.m < 1 or wcfg.iterations < 1:
        raise ValueError(f"warp.m and warp.iterations must be >= 1 (got {wcfg.m}, {wcfg.iterations})")
    if not 0.0 <= wcfg.eta <= 1.0:
        raise ValueError(f"warp.eta must be in [0, 1], got {wcfg.eta}")
    warp_dir = Path(config.run_dir) / "warp"
    warp_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, warp_dir)
    state_path = warp_dir / "state.json"
    state = _read_state(state_path) if resume else {"iterations": {}, "baselines": {}}
    summary = prepared_summary(config.run_dir)
    sft_dir = summary["policy"]
    tokenizer = M.load_tokenizer(sft_dir)
    rl = dataclasses.replace(wcfg.rl, anchor="ema", steps=wcfg.steps)
    ensure_ray()
    # The reward mode's scorer (warp.rl.reward), normalised on SFT samples: it scores every evaluated
    # policy and rewards the baselines; each parallel run loads its own (a tokenizer is not thread-safe).
    proxy = proxy_scorer(dataclasses.replace(config, rl=rl), rl.reward)
    scorers = {"proxy": proxy.score}
    prompts = load_prompts(summary)["eval"][: rl.n_eval_prompts]
    sft = M.load_policy(sft_dir).eval()
    eval_seed = rl.seed + 9_999

    def evaluate(policy_dir) -> dict:
        _, row = evaluate_policy(str(policy_dir), sft, prompts, rl, scorers, eval_seed)
        gold = row.pop("gold")
        return {"gold": sum(gold) / len(gold), **row}

    t_start = time.perf_counter()
    init_dir = sft_dir
    iterations = []
    for it in range(1, wcfg.iterations + 1):
        it_dir = warp_dir / f"iter_{it}"
        done = state["iterations"].get(str(it))
        if done is not None:
            log.info("iteration %d already finished, θ_init of the next one: %s", it, done["next_init"])
            iterations.append(done)
            init_dir = done["next_init"]
            continue

        # 1. M RL runs from θ_init in parallel, each its own prompt order; finished runs are kept
        t0 = time.perf_counter()

        failed = threading.Event()

        def one_run(m: int) -> dict | None:
            if failed.is_set():  # a sibling failed: leave this run for the resume
                return None
            try:
                cfg_m = dataclasses.replace(config, rl=dataclasses.replace(rl, seed=rl.seed + 1000 * it + m))
                result = run_rl(cfg_m, rl.reward, it_dir / f"run_{m}", resume=True, init_dir=init_dir)
                if on_run_done is not None:
                    on_run_done(it, m)
                return result
            except BaseException:
                failed.set()
                raise

        with ThreadPoolExecutor(max_workers=max(1, min(wcfg.m, wcfg.max_parallel or wcfg.m))) as pool:
            runs = list(pool.map(one_run, range(wcfg.m)))
        t_rl = time.perf_counter() - t0

        # 2-3. merge the task vectors, then LITI towards θ_init over the η grid
        t0 = time.perf_counter()
        init_sd = _state_dict(init_dir)
        policies = [_state_dict(r["policy"]) for r in runs]
        merged = {"slerp": merge_policies(init_sd, policies, wcfg.lam, "slerp"),
                  "lerp": merge_policies(init_sd, policies, wcfg.lam, "lerp")}
        t_merge = time.perf_counter() - t0
        merge_bytes = merge.state_dict_bytes(init_sd) * (wcfg.m + 2)  # inputs read + output written

        t0 = time.perf_counter()
        fronts: dict[str, list[dict]] = {"slerp": [], "lerp": []}
        grid = sorted(set(wcfg.eta_grid) | {wcfg.eta})
        for method, theta in merged.items():
            for eta in grid:
                point_dir = it_dir / f"{method}_eta_{eta:g}"
                _save_policy(merge.liti(init_sd, theta, eta), init_dir, point_dir, tokenizer)
                fronts[method].append({"eta": eta, **evaluate(point_dir)})
                log.info("iteration %d %s η=%.2f: gold %.3f proxy %.3f KL %.3f", it, method, eta,
                         fronts[method][-1]["gold"], fronts[method][-1]["proxy"], fronts[method][-1]["kl_sft"])
        run_points = [{"run": m, **evaluate(r["policy"])} for m, r in enumerate(runs)]
        t_eval = time.perf_counter() - t0

        next_init = it_dir / "init"
        _save_policy(merge.liti(init_sd, merged["slerp"], wcfg.eta), init_dir, next_init, tokenizer)
        record = {
            "iteration": it, "init": str(init_dir), "next_init": str(next_init), "eta": wcfg.eta,
            "runs": [r["policy"] for r in runs], "run_points": run_points, "fronts": fronts,
            "seconds": {"rl_runs": round(t_rl, 1), "merge": round(t_merge, 3), "evaluation": round(t_eval, 1)},
            "merge_gb_per_s": round(merge_bytes / max(t_merge, 1e-9) / 1e9 / 2, 3),  # two merges timed
        }
        state["iterations"][str(it)] = record
        M.atomic_write_json(state_path, state)
        iterations.append(record)
        init_dir = str(next_init)

    # (a) REINFORCE anchored to the SFT policy at several β, same total RL budget as one WARP run chain
    baselines = []
    for beta in wcfg.baseline_betas:
        key = f"{beta:g}"
        if key not in state["baselines"]:
            cfg_b = dataclasses.replace(config, rl=dataclasses.replace(rl, anchor="sft", beta=beta,
                                                                       steps=wcfg.steps * wcfg.iterations))
            r = run_rl(cfg_b, rl.reward, warp_dir / f"baseline_beta_{key}", resume=True, scorer=proxy)
            state["baselines"][key] = {"beta": beta, **evaluate(r["policy"])}
            M.atomic_write_json(state_path, state)
        baselines.append(state["baselines"][key])

    results = {"iterations": iterations, "baselines": baselines, "sft": evaluate(sft_dir),
               "seconds": round(time.perf_counter() - t_start, 1)}
    plot_fronts(results, warp_dir / "fronts.png")
    M.publish(warp_dir, results, markdown_table(results),
              f"WARP: {wcfg.iterations} iteration(s) of M={wcfg.m} EMA-anchored runs x {wcfg.steps} steps, "
              f"SLERP λ={wcfg.lam}, LITI η={wcfg.eta} (eval: {len(prompts)} held-out prompts):",
              f"fronts: {warp_dir / 'fronts.png'}   ({results['seconds']}s)")
    return results


def markdown_table(results: dict) -> str:
    lines = ["| policy | KL to SFT | gold | proxy |", "|---|---:|---:|---:|",
             f"| SFT | {results['sft']['kl_sft']:.3f} | {results['sft']['gold']:.3f} | {results['sft']['proxy']:.3f} |"]
    for rec in results["iterations"]:
        it = rec["iteration"]
        for p in rec["run_points"]:
            lines.append(f"| iter {it} run {p['run']} (EMA anchor) | {p['kl_sft']:.3f} | {p['gold']:.3f} | {p['proxy']:.3f} |")
        for method in ("slerp", "lerp"):
            for p in rec["fronts"][method]:
                lines.append(f"| iter {it} {method.upper()} η={p['eta']:g} | {p['kl_sft']:.3f} | {p['gold']:.3f} "
                             f"| {p['proxy']:.3f} |")
    for b in results["baselines"]:
        lines.append(f"| REINFORCE, SFT anchor, β={b['beta']:g} | {b['kl_sft']:.3f} | {b['gold']:.3f} | {b['proxy']:.3f} |")
    timing = ["", "| iteration | RL runs s | merge s | merge GB/s | evaluation s |", "|---:|---:|---:|---:|---:|"]
    for rec in results["iterations"]:
        s = rec["seconds"]
        timing.append(f"| {rec['iteration']} | {s['rl_runs']} | {s['merge']} | {rec['merge_gb_per_s']} | {s['evaluation']} |")
    return "\n".join(lines + timing) + "\n"


def plot_fronts(results: dict, path: Path) -> None:
    """Gold and proxy reward against KL to SFT: LITI fronts (SLERP, LERP), runs, SFT-anchored baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes, ("gold", "proxy")):
        ax.plot([results["sft"]["kl_sft"]], [results["sft"][key]], "k*", ms=10, label="SFT")
        for i, rec in enumerate(results["iterations"]):
            c = colors[i % len(colors)]
            for method, style in (("slerp", "o-"), ("lerp", "s--")):
                pts = rec["fronts"][method]
                ax.plot([p["kl_sft"] for p in pts], [p[key] for p in pts], style, color=c, alpha=0.9 if
                        method == "slerp" else 0.5, label=f"iter {rec['iteration']} LITI of {method.upper()}")
            ax.plot([p["kl_sft"] for p in rec["run_points"]], [p[key] for p in rec["run_points"]], "^", color=c,
                    label=f"iter {rec['iteration']} EMA-anchored runs")
        b = results["baselines"]
        if b:
            ax.plot([p["kl_sft"] for p in b], [p[key] for p in b], "x:", color="gray", ms=9,
                    label="REINFORCE, SFT anchor (β grid)")
        ax.set_xlabel("KL to SFT")
        ax.set_ylabel(f"{key} reward" + (" (never trained on)" if key == "gold" else " (the RM trained on)"))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("WARP reward-KL fronts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
