"""The RL and WARP parts of `warm-ray study`: curves and fronts compared at matched KL.

RL (per seed): one REINFORCE run per reward arm (``study.rl_arms``: best single member chosen on
the selection split, ENS, WARM, WCO, UWO) and per β (``study.rl_betas``), on the same prompts,
sampling seeds and budget. Every arm's reward is standardised on samples of the SFT policy (mean 0,
SD 1 there; the ensemble arms first normalise each member, Coste et al. 2023), so β weighs KL the
same against every arm. Every ``study.eval_every`` steps the current policy completes held-out
prompts: gold reward, the arm's proxy reward and KL to SFT (sampled-sequence estimate, at the
sampling temperature). Per run: the curve, its peak gold, and gold interpolated at
``study.kl_targets`` (never extrapolated: a run that never reaches a KL has no value there).

WARP (per seed): `warm-ray warp` on the seed's WARM RM; the LITI fronts of SLERP and LERP of the
last iteration and the front of SFT-anchored REINFORCE (SFT plus its β grid) are interpolated at
the same KL targets; the angle between the runs' task vectors and their norms are reported.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch

from actors.learner import score_samples
from actors.rlhf import RLActors, Scorer, proxy_scorer, run_rl, sft_reference
from actors.scorer import close_scorer
from actors.warm import prepared_summary
from warm_ray import models as M
from warm_ray import stats
from warm_ray.config import Config
from warm_ray.gold import gold_rewards
from warm_ray.sources import load_prompts

log = logging.getLogger("warm_ray.study")


# ------------------------------------------------------------------------------------------
# Rewards standardised on SFT samples
# ------------------------------------------------------------------------------------------


class StandardisedReward:
    """r(x, y) of one arm, shifted and scaled to mean 0 / SD 1 on the SFT policy's samples.

    ``scorer`` comes from ``actors.rlhf.proxy_scorer``: members already normalised per member on
    the SFT reference (Coste et al. 2023) and combined by the arm's mode; this adds the last
    affine step, so the combined rewards of every arm have the same scale and β the same meaning.
    """

    def __init__(self, scorer: Scorer, ref_prompts: list[str], ref_completions: list[str]):
        self.scorer = scorer
        ref = scorer.rewards(ref_prompts, ref_completions)
        self.mean = float(ref.mean())
        self.std = float(ref.std().clamp_min(1e-6))

    def __call__(self, prompts, completions) -> list[float]:
        return ((self.scorer.rewards(prompts, completions) - self.mean) / self.std).tolist()

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std,
                "member_normaliser": self.scorer.normaliser.to_dict() if self.scorer.normaliser else None}


# ------------------------------------------------------------------------------------------
# Held-out evaluation every K steps
# ------------------------------------------------------------------------------------------


# completions per held-out prompt at each evaluation
EVAL_SAMPLES_PER_PROMPT = 2


class HeldOutEval:
    """Gold, proxy and KL to SFT of the current policy on held-out prompts (same seed every time)."""

    def __init__(self, sft, pad_id: int, prompts: list[str], rl_cfg, proxy, seed: int,
                 samples_per_prompt: int = EVAL_SAMPLES_PER_PROMPT):
        self.sft = sft
        self.pad = pad_id
        self.prompts = prompts
        self.cfg = rl_cfg
        self.proxy = proxy
        self.seed = seed
        self.n = samples_per_prompt

    @torch.no_grad()
    def on_group(self, step: int, group) -> dict:
        samples = group.sample(self.prompts, self.n, self.cfg.max_new_tokens, self.cfg.temperature, seed=self.seed)
        return self.measure(step, samples)

    @torch.no_grad()
    def measure(self, step: int, samples) -> dict:
        texts = [s.completion for s in samples]
        prompts = [s.prompt for s in samples]
        policy_logp = torch.tensor([sum(s.logprobs) for s in samples])
        sft_logp = score_samples(self.sft, samples, self.cfg.temperature, self.pad, torch.device("cpu"), None).seq_logp
        gold = gold_rewards(texts, prompts)
        proxy = self.proxy(prompts, texts)
        return {"step": step, "kl": float((policy_logp - sft_logp).mean()), "gold": float(np.mean(gold)),
                "proxy": float(np.mean(proxy)), "len": float(np.mean([len(s.completion_ids) for s in samples]))}


def run_rl_arms(cfg: Config, seed_dir: Path, rm: dict) -> dict:
    """Every arm × β of one seed; returns curves, peak gold and gold at the KL targets per run."""
    study = cfg.study
    summary = prepared_summary(seed_dir)
    prompts = load_prompts(summary)
    eval_prompts = prompts["eval"][-study.eval_prompts:]  # the BoN prompts are the first ones
    eval_seed = cfg.rl.seed + 4242
    # one reference sample set of the SFT policy (the one `warm-ray rl` uses), for every arm
    ref_prompts, ref_completions = sft_reference(summary["policy"], prompts["train"], cfg.rl)
    # the SFT policy, and its held-out samples: the step-0 point of every arm's curve
    sft = M.load_policy(summary["policy"]).eval()
    pad_id = M.load_tokenizer(summary["policy"]).pad_token_id or 0
    start_samples = sft_samples(summary["policy"], eval_prompts, cfg.rl, eval_seed)
    runs = {}
    # one learner and one set of rollout workers, reset for every arm × β
    with RLActors() as actors:
        for arm in study.rl_arms:
            arm_cfg = dataclasses.replace(cfg, rl=dataclasses.replace(
                cfg.rl, single_member=int(rm["best_member"]), uwo_lambda=study.uwo_lambda))
            scorer = proxy_scorer(arm_cfg, arm)  # members normalised on the SFT reference
            try:
                reward = StandardisedReward(scorer, ref_prompts, ref_completions)
                for beta in study.rl_betas:
                    name = f"{arm}_beta_{beta:g}"
                    out = seed_dir / "rl" / name
                    rl_cfg = dataclasses.replace(arm_cfg.rl, beta=beta, anchor="sft")
                    evaluator = HeldOutEval(sft, pad_id, eval_prompts, rl_cfg, reward, seed=eval_seed)
                    curve: list[dict] = []

                    def on_step(step, record, group, evaluator=evaluator, curve=curve, every=study.eval_every,
                                last=rl_cfg.steps):
                        if step % every == 0 or step == last:
                            curve.append(evaluator.on_group(step, group))
                            log.info("%s step %d: held-out gold %.3f proxy %.3f KL %.3f", name, step,
                                     curve[-1]["gold"], curve[-1]["proxy"], curve[-1]["kl"])

                    t0 = time.perf_counter()
                    summary_rl = run_rl(dataclasses.replace(arm_cfg, rl=rl_cfg), arm, out, reward_fn=reward,
                                        on_step=on_step, scorer=scorer, actors=actors)
                    curve.insert(0, evaluator.measure(0, start_samples))
                    kl = [p["kl"] for p in curve]
                    gold = [p["gold"] for p in curve]
                    peak_step = curve[int(np.nanargmax(gold))]["step"]
                    runs[name] = {
                        "arm": arm, "beta": beta, "curve": curve,
                        "peak_gold": stats.peak(gold),
                        "peak_step": peak_step,
                        "final_gold": gold[-1], "final_kl": kl[-1],
                        "gold_at_kl": {f"{t:g}": v for t, v in
                                       zip(study.kl_targets, stats.value_at(kl, gold, study.kl_targets))},
                        "reward_standardisation": reward.to_dict(),
                        "forward_passes": reward.scorer.n_models,
                        "first_alarm": summary_rl.get("first_alarm"),
                        "alarm_lead_steps": (None if summary_rl.get("first_alarm") is None
                                             else peak_step - summary_rl["first_alarm"]),
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                    M.atomic_write_json(out / "curve.json", runs[name])
            finally:
                close_scorer(scorer)  # an arm's ScorerActor, if it has one, ends with the arm
    return {"runs": runs}


def sft_samples(sft_dir: str, prompts: list[str], rl_cfg, seed: int) -> list:
    """The SFT policy's held-out samples with the evaluation's sampler settings and seed."""
    from actors.rollout import HFBackend

    backend = HFBackend(sft_dir)
    try:
        return backend.generate(prompts, n=EVAL_SAMPLES_PER_PROMPT, max_new_tokens=rl_cfg.max_new_tokens,
                                temperature=rl_cfg.temperature, seed=seed)
    finally:
        backend.shutdown()


# ------------------------------------------------------------------------------------------
# WARP fronts at matched KL
# ------------------------------------------------------------------------------------------


def _task_vector_geometry(init_dir: str, run_dirs: list[str]) -> dict:
    """Norms of the runs' task vectors δ_m = θ_m - θ_init, and the angle between the first two."""
    init = M.load_policy(init_dir).state_dict()
    deltas = []
    for d in run_dirs:
        sd = M.load_policy(d).state_dict()
        deltas.append(torch.cat([(sd[k].float() - init[k].float()).reshape(-1)
                                 for k in init if init[k].is_floating_point()]))
    out = {"norms": [float(d.norm()) for d in deltas]}
    if len(deltas) >= 2:
        cos = float(torch.nn.functional.cosine_similarity(deltas[0], deltas[1], dim=0))
        out["cosine"] = cos
        out["angle_deg"] = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return out


def run_warp_fronts(cfg: Config, seed_dir: Path) -> dict:
    from actors.warp import run_warp

    results = run_warp(cfg)
    study = cfg.study
    last = results["iterations"][-1]
    sft = results["sft"]
    # LITI fronts of the last iteration (η = 0 is its θ_init), and the SFT anchor's β grid
    fronts = {"slerp": last["fronts"]["slerp"], "lerp": last["fronts"]["lerp"],
              "reinforce": [sft] + results["baselines"]}
    gold_at_kl = {name: {f"{t:g}": v for t, v in zip(study.kl_targets, stats.value_at(
        [p["kl_sft"] for p in pts], [p["gold"] for p in pts], study.kl_targets))} for name, pts in fronts.items()}
    geometry = [{"iteration": rec["iteration"], **_task_vector_geometry(rec["init"], rec["runs"])}
                for rec in results["iterations"]]
    return {"fronts": {k: [{"kl": p["kl_sft"], "gold": p["gold"], "proxy": p["proxy"]} for p in v]
                       for k, v in fronts.items()},
            "gold_at_kl": gold_at_kl, "geometry": geometry}


# ------------------------------------------------------------------------------------------
# Plots over seeds
# ------------------------------------------------------------------------------------------


def plot_rl(seeds: dict[int, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_rl = [s["rl"] for s in seeds.values() if "rl" in s]
    names = list(with_rl[0]["runs"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(names):
        c = colors[i % len(colors)]
        for j, rl in enumerate(with_rl):
            curve = rl["runs"][name]["curve"]
            kl = np.sqrt(np.maximum([p["kl"] for p in curve], 0))
            label = name if j == 0 else None
            axes[0].plot(kl, [p["gold"] for p in curve], "-", color=c, alpha=0.7, label=label)
            axes[1].plot(kl, [p["proxy"] for p in curve], "-", color=c, alpha=0.7, label=label)
    for ax, what in zip(axes, ("gold reward (never trained on)", "proxy reward (standardised on SFT)")):
        ax.set_xlabel("sqrt(KL to SFT)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"RL per reward arm and β, held-out evaluation ({len(with_rl)} seed(s), one line each)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_warp(seeds: dict[int, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    styles = {"slerp": ("o-", "tab:blue"), "lerp": ("s--", "tab:orange"), "reinforce": ("x:", "tab:gray")}
    for j, s in enumerate(s for s in seeds.values() if "warp" in s):
        for name, pts in s["warp"]["fronts"].items():
            style, color = styles[name]
            pts = sorted(pts, key=lambda p: p["kl"])
            ax.plot([p["kl"] for p in pts], [p["gold"] for p in pts], style, color=color, alpha=0.7,
                    label=name if j == 0 else None)
    ax.set_xlabel("KL to SFT")
    ax.set_ylabel("gold reward")
    ax.set_title("WARP fronts (last iteration) vs SFT-anchored REINFORCE")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
