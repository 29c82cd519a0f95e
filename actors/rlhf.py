"""`warm-ray rl`: RL with ``rl.reward`` and with each mode of ``rl.compare`` on the same budget,
compared by gold win rate on held-out prompts (WARM Sec. 5.2, Fig. 9 compares WARM with a single
RM, the default).

Every run has the same seed, prompts, steps and sampling seeds, and its reward normalised on the
same SFT samples: only the reward mode differs. The runs take turns on one learner and one set of
rollout workers (``actors.rl.RLActors``). One run is ``actors.rl.run_rl`` (see there for its steps
and outputs); this module adds the comparison: ``<run_dir>/rl/<mode>/`` per run, ``curves.png``,
``curves.json``, ``results.md``/``.json`` and ``config.yaml``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import ray

from actors.placement import ensure_ray
from actors.rl import (
    FINAL_WINDOW,
    RUN_PATHS,
    RLActors,
    RLRun,
    evaluate_policy,
    fmt,
    proxy_scorer,
    read_metrics,
    run_rl,
    start_scorer,
    win_rate,
)
from warm_ray import files
from warm_ray import models as M
from warm_ray import rundir
from warm_ray.config import Config, save_config
from warm_ray.names import GOLD, REWARD_MODES, reward_label
from warm_ray.sources import policy_source, reward_source

log = logging.getLogger("warm_ray.rl")


def plot_curves(runs: dict[str, list[dict]], path: Path) -> None:
    """Proxy and gold reward against step and against KL to SFT, one line per reward mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def smooth(xs: list[float], w: int = FINAL_WINDOW) -> list[float]:
        return [sum(xs[max(0, i - w + 1):i + 1]) / len(xs[max(0, i - w + 1):i + 1]) for i in range(len(xs))]

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for i, (name, records) in enumerate(runs.items()):
        color, label = colors[i % len(colors)], reward_label(name)
        step = [r["step"] for r in records]
        kl = smooth([r["kl_sft"] for r in records])
        for row, key in enumerate(("proxy_reward", "gold_reward")):
            y = [r[key] for r in records]
            if any(v is None for v in y):  # gold off the benchmark's prompts
                continue
            axes[row, 0].plot(step, y, color=color, alpha=0.25)
            axes[row, 0].plot(step, smooth(y), color=color, label=label)
            axes[row, 1].plot(kl, smooth(y), color=color, label=label)
    for row, what in enumerate(("proxy reward (each run's own, normalised on SFT)", "gold reward (never trained on)")):
        axes[row, 0].set_ylabel(what)
        axes[row, 0].set_xlabel("RL step")
        axes[row, 1].set_xlabel("KL to SFT (sampled-sequence estimate)")
        for ax in axes[row]:
            if not ax.get_legend_handles_labels()[0]:  # gold off the benchmark's prompts
                ax.set_visible(False)
                continue
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    fig.suptitle(f"REINFORCE against each reward mode (thin: per step; thick: mean of {FINAL_WINDOW})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _step(x) -> str:
    return "–" if x is None else str(x)


def markdown_tables(results: dict) -> str:
    modes = list(results["runs"])
    lines = ["| policy | gold (eval) | " + " | ".join(f"{reward_label(k)} RM (eval)" for k in modes)
             + " | KL to SFT (eval) | train proxy first→last | train gold first→last | train KL (last) |",
             "|---|---:|" + "---:|" * len(modes) + "---:|---:|---:|---:|"]
    for name, row in results["policies"].items():
        train = results["runs"].get(name)
        tail = ("| – | – | – |" if train is None else
                f"| {train['first']['proxy_reward']:.3f} → {train['final']['proxy_reward']:.3f} "
                f"| {fmt(train['first']['gold_reward'])} → {fmt(train['final']['gold_reward'])} "
                f"| {train['final']['kl_sft']:.3f} |")
        lines.append(f"| {reward_label(name)} | {fmt(row['gold_mean'])} | "
                     + " | ".join(fmt(row.get(f"{k}_rm")) for k in modes) + f" | {row['kl_sft']:.3f} " + tail)
    lines += ["", "| gold win rate | rate | ± s.e. | ties | prompts |", "|---|---:|---:|---:|---:|"] \
        if results["win_rates"] else ["", "(no gold win rates: the gold reward is watched on the benchmark's prompts only)"]
    for name, w in results["win_rates"].items():
        lines.append(f"| {name} | {w['win_rate']:.3f} | {w['stderr']:.3f} | {w['ties']} | {w['n']} |")
    lines += ["", "| reward mode | forward passes / sample | first alarm (step) | gold peak (step) "
              "| alarm lead (steps) | monitor s | monitor share of step time |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, run in results["runs"].items():
        mon = run.get("monitor")
        cost = "| – | – |" if mon is None else f"| {mon['seconds']:.2f} | {100 * mon['share_of_step_time']:.1f}% |"
        lines.append(f"| {reward_label(name)} | {run.get('forward_passes_per_sample')} "
                     f"| {_step(run.get('first_alarm'))} | {_step(run.get('gold_peak_step'))} "
                     f"| {_step(run.get('alarm_lead_steps'))} " + cost)
    online = {name: run["online"] for name, run in results["runs"].items() if run.get("online")}
    if online:  # rl.online: what each run's refreshes published
        lines += ["", "| reward mode (online) | reward versions | pairs labelled | labeller "
                  "| loop's wait on refreshes (s) |", "|---|---:|---:|---|---:|"]
        lines += [f"| {reward_label(name)} | {on['version']} | {on['labels']} | {on['labeller']} | "
                  f"{on['refresh_wait_seconds']:.1f} |" for name, on in online.items()]
    return "\n".join(lines) + "\n"


def _compared_modes(config: Config) -> list[str]:
    """``rl.reward`` and ``rl.compare``, less the modes a single reward-model dir cannot give."""
    cfg = config.rl
    modes = list(dict.fromkeys([cfg.reward, *cfg.compare]))

    def needs_members(kind: str) -> bool:
        return kind != GOLD and REWARD_MODES[kind].models != "warm"

    if any(needs_members(k) for k in modes) and reward_source(config).rm_dir is not None:
        if needs_members(cfg.reward):
            proxy_scorer(config, cfg.reward, normalise=False)  # the error that names the problem
        dropped = [k for k in modes if needs_members(k)]
        modes = [k for k in modes if not needs_members(k)]
        log.warning("rl.compare: %s left out: policy.reward_model %s is one reward model, those modes need the "
                    "members of a warm run", ", ".join(dropped), config.policy.reward_model)
    return modes


def run_rl_comparison(config: Config, resume: bool = False) -> dict:
    """RL with ``rl.reward`` and with each mode of ``rl.compare`` on the same budget; gold win rates.

    ``rl.compare`` (default ["single"]: WARM against the best member, as WARM Fig. 9) lists the reward
    modes run beside ``rl.reward``; an empty list runs ``rl.reward`` alone. Win rates: the first mode
    against each other one, and each against SFT.
    """
    cfg = config.rl
    modes = _compared_modes(config)
    src = policy_source(config)
    rl_dir = Path(config.run_dir) / "rl"
    rl_dir.mkdir(parents=True, exist_ok=True)
    # the comparison is a unit over its runs' fingerprints and the evaluation's settings
    run_fps = {kind: RLRun.of(config, rl_dir / kind, reward=kind).fingerprint() for kind in modes}
    stage_fp = rundir.fingerprint({"runs": run_fps, "n_eval_prompts": cfg.n_eval_prompts, "seed": cfg.seed,
                                   "temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens})
    title = f"RL with reward modes {', '.join(reward_label(k) for k in modes)}"
    done = rundir.reuse(rl_dir, stage_fp, f"rl in {rl_dir}", clear=False)
    done = None if done is None else files.resolved_paths(done, config.run_dir, RUN_PATHS)
    if done is not None and all(rundir.damaged_weights(r["policy"]) is None for r in done["runs"].values()):
        save_config(config, rl_dir)
        files.publish(rl_dir, done, markdown_tables(done), f"{title} (reused: finished under this config):",
                      f"curves: {rl_dir / 'curves.png'}")
        return done
    save_config(config, rl_dir)
    t0 = time.perf_counter()
    ensure_ray()
    # Each scorer is loaded and normalised once: it rewards its own run and scores every policy at the end
    # (with rl.scorer_placement "actor", every mode's scorer in one ScorerActor, ended here).
    actor = start_scorer(cfg) if cfg.scorer_placement == "actor" and set(modes) != {GOLD} else None
    try:
        scorers = {kind: proxy_scorer(config, kind, actor=actor) for kind in modes if kind != GOLD}
        with RLActors() as actors:  # one learner and one set of rollout workers, reset for each mode's run
            runs = {kind: run_rl(RLRun.of(config, rl_dir / kind, reward=kind, scorer=scorers.get(kind)),
                                 resume=resume, actors=actors) for kind in modes}
        prompts = src.prompts["eval"][:cfg.n_eval_prompts]
        gold, policies = _evaluate_policies(config, src, {kind: runs[kind]["policy"] for kind in modes}, prompts,
                                            scorers)
    finally:
        if actor is not None:
            ray.kill(actor)
    first = modes[0]
    pairs = [(first, other) for other in modes[1:]] + [(kind, "sft") for kind in modes]
    label = {kind: reward_label(kind) for kind in modes} | {"sft": "SFT"}
    # win rates by gold: on the benchmark's prompts only
    win_rates = {f"{label[a]} vs {label[b]}": win_rate(gold[a], gold[b]) for a, b in pairs} if src.gold else {}
    curves = {kind: read_metrics(Path(r["metrics"])) for kind, r in runs.items()}
    plot_curves(curves, rl_dir / "curves.png")
    files.atomic_write_json(rl_dir / "curves.json", curves)
    results = {"policies": policies, "win_rates": win_rates, "runs": runs, "modes": modes,
               "eval_prompts": len(prompts), "temperature": cfg.temperature,
               "seconds": round(time.perf_counter() - t0, 1)}
    record = files.portable_paths(results, config.run_dir)  # the runs' files by their paths in the run dir
    files.publish(rl_dir, record, markdown_tables(results),
                  f"{title} ({cfg.steps} steps each; eval: {len(prompts)} held-out prompts, one sample each at "
                  f"T={cfg.temperature}):",
                  f"curves: {rl_dir / 'curves.png'}; disagreement: {rl_dir}/<mode>/disagreement.png   "
                  f"({results['seconds']}s)")
    rundir.finish(rl_dir, stage_fp, record)
    return results


def _evaluate_policies(config: Config, src, policy_dirs: dict[str, str], prompts: list[str],
                       scorers: dict) -> tuple[dict, dict]:
    """(gold per policy, the policies' rows): SFT and each run's policy on the held-out prompts,
    one sample each, scored by gold and by every mode's scorer."""
    cfg = config.rl
    sft = M.load_policy(src.sft_dir).eval()
    dirs = {"sft": src.sft_dir, **policy_dirs}
    # One seed for every policy: the same random numbers drive each policy's sampling.
    eval_seed = cfg.seed + 7_777_777
    gold, policies = {}, {}
    for name, d in dirs.items():
        _, row = evaluate_policy(d, sft, prompts, cfg, {f"{k}_rm": s.score for k, s in scorers.items()}, eval_seed,
                                 gold=src.gold)
        gold[name] = row.pop("gold")
        policies[name] = {"gold_mean": None if gold[name] is None else sum(gold[name]) / len(gold[name]), **row}
    return gold, policies
