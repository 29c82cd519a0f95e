"""The RL and WARP parts of `warm-ray study`: curves and fronts compared at matched KL.

RL (per seed): one REINFORCE run per reward arm (``study.rl_arms``: best single member chosen on
the selection split, ENS, WARM, WCO, UWO) and per β (``study.rl_betas``), on the same prompts,
sampling seeds and budget. Every arm's reward is standardised on samples of the SFT policy
(``study.std_samples`` per prompt on ``study.std_prompts`` training prompts: mean 0 and pooled
within-prompt SD 1 there, the spread the leave-one-out baseline passes to the advantage; the
ensemble arms first normalise each member on `warm-ray rl`'s reference, Coste et al. 2023), so β
weighs KL the same against every arm. Every ``study.eval_every`` steps the current policy completes
two held-out draws (disjoint prompts, each with its own sampling seed): gold reward, the arm's proxy
reward and KL to SFT (sampled-sequence estimate, at the sampling temperature). Per run: the curve
(both draws pooled), its peak gold (step picked on draw A, gold measured on draw B: no max-of-noise
bias), gold interpolated at ``study.kl_targets`` (never extrapolated: a run that never reaches a
KL has no value there) and the advantage's SD per step.

On the user's data (``study.judge``) gold is the judge's score (``warm_ray.judge.JudgedGold``),
standardised once on the same SFT samples the arms' rewards are (mean 0, SD 1 there), in the RL
curves and in WARP's fronts alike; the policy and prompts are the user's (``policy.*``).

WARP (per seed): `warm-ray warp` on the seed's WARM RM; the LITI fronts of SLERP and LERP of the
last iteration and the front of SFT-anchored REINFORCE (SFT plus its β grid) are interpolated at
the same KL targets. SLERP and LERP are also compared at matched η, the merged end points (η = 1)
included: at M = 2, λ = 1/2 per-tensor SLERP is LERP scaled by 1/cos(Ω/2), so at matched KL the two
fronts can differ only through the spread of the per-tensor angles, which is reported with the
task vectors' norms and every pair's whole-vector angle (each parameter counted once).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch

from actors.learner import score_samples
from actors.rl import REFERENCE_SEED, RLActors, RLRun, Scorer, gold_reward, proxy_scorer, read_metrics, run_rl
from actors.scorer import close_scorer
from warm_ray import files
from warm_ray.geometry import task_vector_geometry
from warm_ray import models as M
from warm_ray import stats
from warm_ray.config import Config, UserError
from warm_ray.lmc import unique_parameter_names
from warm_ray.names import ONLINE_ARMS, arm_mode
from warm_ray.sources import policy_source

log = logging.getLogger("warm_ray.study")


# ------------------------------------------------------------------------------------------
# Rewards standardised on SFT samples
# ------------------------------------------------------------------------------------------


class StandardisedReward:
    """r(x, y) of one arm, shifted to mean 0 on the SFT policy's samples and scaled by their pooled
    within-prompt SD.

    ``scorer`` comes from ``actors.rl.proxy_scorer``: members already normalised per member on
    the SFT reference of `warm-ray rl` (Coste et al. 2023; one sample per prompt, a global scale
    that puts the members on one footing before they are combined) and combined by the arm's mode;
    this adds the last affine step, so every arm's rewards have the same scale and β the same meaning.
    The scale is the one REINFORCE sees: a leave-one-out baseline removes each prompt's mean, so only
    the within-prompt spread reaches the advantage (project notes, "Preconditions and pitfalls"),
    and an arm whose rewards differ mostly between prompts would, scaled by its global SD, get a
    smaller step against β·KL than another. So ``std`` is ``stats.pooled_within_sd`` of
    ``samples_per_prompt`` samples per reference prompt (prompt-major); the mean stays the global one
    (a constant shift the baseline removes anyway), and the global SD is recorded beside it.
    """

    def __init__(self, scorer: Scorer, ref_prompts: list[str], ref_completions: list[str],
                 samples_per_prompt: int):
        self.scorer = scorer
        n = int(samples_per_prompt)
        if n < 2 or len(ref_completions) % n or len(ref_prompts) != len(ref_completions):
            raise ValueError(f"need prompt-major reference samples, {n} >= 2 per prompt; got "
                             f"{len(ref_prompts)} prompts for {len(ref_completions)} completions")
        self.samples_per_prompt = n
        self.prompts = len(ref_completions) // n
        self.reference = (list(ref_prompts), list(ref_completions))
        self.refit()

    def refit(self) -> None:
        """Standardise on the SFT samples (again when an online run's scorer pulled a new version)."""
        ref = self.scorer.rewards(*self.reference).double()
        self.mean = float(ref.mean())
        self.std_global = float(ref.std().clamp_min(1e-6))
        self.std_within = max(stats.pooled_within_sd(ref.view(-1, self.samples_per_prompt).numpy()), 1e-6)
        self.std = self.std_within

    def __call__(self, prompts, completions) -> list[float]:
        return ((self.scorer.rewards(prompts, completions) - self.mean) / self.std).tolist()

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "std_within_prompt": self.std_within,
                "std_global": self.std_global, "prompts": self.prompts,
                "samples_per_prompt": self.samples_per_prompt,
                "member_normaliser": self.scorer.normaliser.to_dict() if self.scorer.normaliser else None}


def standardisation_samples(sft_dir: str, train_prompts: list[str], rl_cfg, n_prompts: int,
                            samples_per_prompt: int) -> tuple[list[str], list[str]]:
    """(prompts, completions), prompt-major: ``samples_per_prompt`` completions of the SFT policy for
    each of ``n_prompts`` training prompts, at the training temperature and length.

    The prompts are the first of the permutation `warm-ray rl`'s reference (``sft_reference``)
    draws from (its prompts and more), the sampling seed is its seed + 1; one set per seed of the
    study, shared by every arm and β.
    """
    from actors.rollout import HFBackend

    if n_prompts > len(train_prompts):
        raise UserError(f"study.std_prompts = {n_prompts}: only {len(train_prompts)} training prompts")
    order = list(range(len(train_prompts)))
    random.Random(REFERENCE_SEED).shuffle(order)
    chosen = [train_prompts[i] for i in order[:n_prompts]]
    backend = HFBackend(sft_dir)
    try:
        samples = backend.generate(chosen, n=samples_per_prompt, max_new_tokens=rl_cfg.max_new_tokens,
                                   temperature=rl_cfg.temperature, seed=REFERENCE_SEED + 1)
    finally:
        backend.shutdown()
    return [s.prompt for s in samples], [s.completion for s in samples]


# ------------------------------------------------------------------------------------------
# Held-out evaluation every K steps, on two independent draws
# ------------------------------------------------------------------------------------------


# completions per held-out prompt and draw at each evaluation
EVAL_SAMPLES_PER_PROMPT = 2


def eval_draws(eval_prompts: list[str], n: int, seed: int) -> tuple[dict[str, list[str]], dict[str, int]]:
    """The prompts and sampling seeds of an evaluation's two held-out draws, "a" and "b": A picks the
    peak step, B measures its gold (``stats.held_out_peak``). A: the last ``n`` held-out prompts
    (the BoN prompts are the first ones), B: the ``n`` before them; seeds far apart.

    Disjoint prompts, not only other seeds: the policy's luck on particular prompts at a step
    (prompt × step noise) would be shared by two draws of the same prompts, and B would carry part
    of the noise A's argmax selected; on other prompts B's gold at the chosen step is unbiased for
    that policy's gold on held-out prompts. Each draw keeps its seed at every step (common random
    numbers: steps compared on like samples).
    """
    if 2 * n > len(eval_prompts):
        raise UserError(f"study.eval_prompts = {n}: two disjoint draws need {2 * n} held-out prompts, "
                        f"there are {len(eval_prompts)}")
    end = len(eval_prompts)
    prompts = {"a": eval_prompts[end - n:], "b": eval_prompts[end - 2 * n:end - n]}
    return prompts, {"a": seed, "b": seed + 1_000_003}


class HeldOutEval:
    """Gold, proxy and KL to SFT of the current policy on two held-out draws (each its own prompts
    and seed, the same at every evaluation): per draw, and pooled over both. ``gold(prompts,
    completions)``: the benchmark's gold reward, or on the user's data the judge."""

    def __init__(self, sft, pad_id: int, draws: dict[str, list[str]], rl_cfg, proxy, seeds: dict[str, int],
                 samples_per_prompt: int = EVAL_SAMPLES_PER_PROMPT, gold=gold_reward):
        self.gold = gold
        self.sft = sft
        self.pad = pad_id
        self.draws = draws
        self.cfg = rl_cfg
        self.proxy = proxy
        self.seeds = seeds
        self.n = samples_per_prompt

    @torch.no_grad()
    def on_group(self, step: int, group) -> dict:
        return self.measure(step, {d: group.sample(prompts, self.n, self.cfg.max_new_tokens, self.cfg.temperature,
                                                   seed=self.seeds[d]) for d, prompts in self.draws.items()})

    @torch.no_grad()
    def measure(self, step: int, draws: dict[str, list]) -> dict:
        """One point of the curve from each draw's samples: every number pooled, and per draw."""
        samples = [s for d in draws for s in draws[d]]  # scored in one pass
        texts = [s.completion for s in samples]
        prompts = [s.prompt for s in samples]
        kl = (torch.tensor([sum(s.logprobs) for s in samples]) - score_samples(
            self.sft, samples, self.cfg.temperature, self.pad, torch.device("cpu"), None).seq_logp).numpy()
        values = {"kl": kl, "gold": np.asarray(self.gold(prompts, texts), dtype=np.float64),
                  "proxy": np.asarray(self.proxy(prompts, texts), dtype=np.float64),
                  "len": np.array([len(s.completion_ids) for s in samples], dtype=np.float64)}
        bounds, lo = {}, 0
        for d in draws:
            bounds[d] = slice(lo, lo + len(draws[d]))
            lo += len(draws[d])
        return {"step": step, **{k: float(v.mean()) for k, v in values.items()},
                "draws": {d: {k: float(v[b].mean()) for k, v in values.items()} for d, b in bounds.items()}}


def judged_gold(cfg: Config, judge):
    """The judge as gold for one seed's RL and WARP (``warm_ray.judge.JudgedGold``), standardised on the SFT
    samples the arms' rewards are standardised on; with no judge (the benchmark), None."""
    if judge is None:
        return None
    from warm_ray.judge import JudgedGold

    src, study = policy_source(cfg), cfg.study
    return JudgedGold(judge, *standardisation_samples(src.sft_dir, src.prompts["train"], cfg.rl, study.std_prompts,
                                                      study.std_samples))


def run_rl_arms(cfg: Config, seed_dir: Path, rm: dict, judge=None) -> dict:
    """Every arm × β of one seed; returns curves, peak gold and gold at the KL targets per run.
    ``judge``: on the user's data, the study's judge (``warm_ray.judge.Judge``), which plays gold.
    ``study.rl_parallel`` > 1 runs that many arm × β runs at once, each a Ray task on its own learner and
    rollout workers (captured into the seed's placement group when the seed runs in one); the numbers are
    those of one run after another on one reused slot."""
    study = cfg.study
    src = policy_source(cfg)  # the seed's prepared benchmark policy and prompts, or the user's
    prompts = src.prompts
    draws, eval_seeds = eval_draws(prompts["eval"], study.eval_prompts, cfg.rl.seed + 4242)
    # one standardisation sample set of the SFT policy, several samples per prompt, for every arm
    ref_prompts, ref_completions = standardisation_samples(src.sft_dir, prompts["train"], cfg.rl,
                                                           study.std_prompts, study.std_samples)
    gold = gold_reward
    if judge is not None:  # standardised on the same SFT samples as the arms' rewards
        from warm_ray.judge import JudgedGold

        gold = JudgedGold(judge, ref_prompts, ref_completions)
    # the SFT policy's held-out samples: the step-0 point of every arm's curve
    arms = ArmsContext(cfg, str(seed_dir), rm, src.sft_dir, draws, eval_seeds, ref_prompts, ref_completions, gold,
                       sft_samples(src.sft_dir, draws, cfg.rl, eval_seeds))
    units = [(arm, beta) for arm in study.rl_arms for beta in study.rl_betas]
    if study.rl_parallel > 1 and len(units) > 1:
        runs = _arms_in_parallel(arms, units, study.rl_parallel)
    else:
        runs = {}
        with RLActors() as actors:  # one learner and one set of rollout workers, reset for every arm × β
            for arm in study.rl_arms:
                # an offline arm's reward serves every β; an online arm's scorer changes in a run: one per run
                for betas in ([[b] for b in study.rl_betas] if arm in ONLINE_ARMS else [study.rl_betas]):
                    with arms.reward(arm) as reward:
                        for beta in betas:
                            runs[f"{arm}_beta_{beta:g}"] = arms.run(arm, beta, actors, reward)
    return {"runs": runs, **({"judged_by": gold.record()} if judge is not None else {})}


@dataclasses.dataclass
class ArmsContext:
    """What every arm × β run of a seed shares: held-out draws and their seeds, the SFT samples that
    standardise the rewards (and the judge), gold, and the SFT policy's step-0 samples."""

    cfg: Config
    seed_dir: str
    rm: dict
    sft_dir: str
    draws: dict
    eval_seeds: dict
    ref_prompts: list
    ref_completions: list
    gold: object
    start_samples: dict
    _sft: object = dataclasses.field(default=None, repr=False)

    def arm_rl(self, arm: str):
        """The RL settings of an arm: its reward mode, the best member as "single", rl.online for an online arm
        only (an offline arm's members never change)."""
        rl = self.cfg.rl
        return dataclasses.replace(rl, reward=arm_mode(arm), single_member=int(self.rm["best_member"]),
                                   uwo_lambda=self.cfg.study.uwo_lambda,
                                   online=rl.online if arm in ONLINE_ARMS else dataclasses.replace(rl.online, every=0))

    @contextlib.contextmanager
    def reward(self, arm: str):
        """The arm's reward standardised on the SFT samples; its scorer actor, if any, ends with it. An online
        arm's scorer takes new weights during a run: one reward per run, never shared by two."""
        # members normalised on `warm-ray rl`'s SFT reference
        scorer = proxy_scorer(self.cfg, arm_mode(arm), rl=self.arm_rl(arm))
        try:
            reward = StandardisedReward(scorer, self.ref_prompts, self.ref_completions, self.cfg.study.std_samples)
            log.info("%s reward: mean %.3f, SD within prompts %.3f (global %.3f) on %d SFT samples", arm,
                     reward.mean, reward.std_within, reward.std_global, len(self.ref_completions))
            yield reward
        finally:
            close_scorer(scorer)

    def run(self, arm: str, beta: float, actors: RLActors, reward: StandardisedReward) -> dict:
        """One arm × β run and its held-out curve (written to ``curve.json`` beside the run)."""
        cfg, study = self.cfg, self.cfg.study
        if self._sft is None:
            self._sft = M.load_policy(self.sft_dir).eval()
        pad_id = M.load_tokenizer(self.sft_dir).pad_token_id or 0
        name = f"{arm}_beta_{beta:g}"
        out = Path(self.seed_dir) / "rl" / name
        rl_cfg = dataclasses.replace(self.arm_rl(arm), beta=beta, anchor="sft")
        evaluator = HeldOutEval(self._sft, pad_id, self.draws, rl_cfg, reward, seeds=self.eval_seeds, gold=self.gold)
        curve: list[dict] = []

        def on_step(step, record, group, every=study.eval_every, last=rl_cfg.steps):
            if step % every == 0 or step == last:
                curve.append(evaluator.on_group(step, group))
                log.info("%s step %d: held-out gold %.3f (A %.3f, B %.3f) proxy %.3f KL %.3f", name,
                         step, curve[-1]["gold"], curve[-1]["draws"]["a"]["gold"],
                         curve[-1]["draws"]["b"]["gold"], curve[-1]["proxy"], curve[-1]["kl"])

        t0, started = time.perf_counter(), time.time()
        run = RLRun.of(cfg, out, rl=rl_cfg, reward=arm_mode(arm), fn=reward, scorer=reward.scorer)
        summary_rl = run_rl(run, on_step=on_step, actors=actors)
        curve.insert(0, evaluator.measure(0, self.start_samples))
        result = {"arm": arm, "beta": beta, **curve_summary(curve, study.kl_targets),
                  **advantage_spread(curve, out / "metrics.jsonl"),
                  "reward_standardisation": reward.to_dict(),
                  "forward_passes": reward.scorer.n_models,
                  "first_alarm": summary_rl.get("first_alarm"),
                  **({"online": online_record(summary_rl)} if summary_rl.get("online") else {}),
                  "seconds": round(time.perf_counter() - t0, 1), "started": started, "finished": time.time()}
        peak_step, alarm = result["peak_step"], summary_rl.get("first_alarm")
        result["alarm_lead_steps"] = None if alarm is None or peak_step is None else peak_step - alarm
        files.atomic_write_json(out / "curve.json", result)
        return result


def _arm_task(arms: ArmsContext, arm: str, beta: float) -> dict:
    """One arm × β run in a Ray task, on its own slot, its torch threads set as the seed's."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    M.use_threads(arms.cfg.warm.eval_threads)
    with RLActors() as actors, arms.reward(arm) as reward:
        return arms.run(arm, beta, actors, reward)


def _arms_in_parallel(arms: ArmsContext, units: list[tuple[str, float]], k: int) -> dict[str, dict]:
    """The arm × β runs, ``k`` at once as Ray tasks (0 CPUs: their learners, workers and scorers hold the
    resources); results in the order of one after another."""
    import ray

    from actors.placement import ensure_ray

    ensure_ray()
    task = ray.remote(_arm_task).options(num_cpus=0, max_retries=0)
    todo, running, runs = list(units), {}, {}
    log.info("rl: %d arm x beta runs, %d at once", len(todo), k)
    try:
        while todo or running:
            while todo and len(running) < k:
                arm, beta = todo.pop(0)
                running[task.remote(arms, arm, beta)] = f"{arm}_beta_{beta:g}"
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                runs[running.pop(ref)] = ray.get(ref)
    finally:
        for ref in running:
            ray.cancel(ref, force=True)
    return {f"{a}_beta_{b:g}": runs[f"{a}_beta_{b:g}"] for a, b in units}


def online_record(summary: dict) -> dict:
    """What an online run's refreshes cost and used (``summary.json``'s ``online``): versions, labels, seconds."""
    on = summary["online"]
    secs = [v["seconds"] for v in on["versions"]]
    return {"versions": on["version"], "labels": on["labels"], "labeller": on["labeller"],
            "refresh_seconds_mean": float(np.mean(secs)) if secs else None,
            "refresh_wait_seconds": on["refresh_wait_seconds"], "run_seconds": summary.get("seconds_this_run"),
            "trainers_started": on["trainers_started"],
            "version_steps": [v["step"] for v in on["versions"]]}


def curve_summary(curve: list[dict], kl_targets) -> dict:
    """The numbers of one run's held-out curve: the peak (``stats.held_out_peak``: the step chosen
    on draw A, its gold on draw B) with the max of draw A's points beside it for reference (the
    estimator used before, upward-biased), the final point, and gold at the KL targets on the
    pooled curve (interpolation is linear in the points' noise: no selection, no bias)."""
    kl = [p["kl"] for p in curve]
    gold = [p["gold"] for p in curve]
    select = [p["draws"]["a"]["gold"] for p in curve]
    i, peak_gold = stats.held_out_peak(select, [p["draws"]["b"]["gold"] for p in curve])
    return {"curve": curve, "peak_gold": peak_gold, "peak_step": None if i is None else curve[i]["step"],
            "peak_gold_max_of_points": stats.peak(select), "final_gold": gold[-1], "final_kl": kl[-1],
            "gold_at_kl": {f"{t:g}": v for t, v in zip(kl_targets, stats.value_at(kl, gold, kl_targets))}}


def advantage_spread(curve: list[dict], metrics_path: Path) -> dict:
    """The SD of the advantage per training step (metrics.jsonl's ``advantage_std``), its mean over
    the run, and on each curve point the value of that step's batch (none at step 0)."""
    records = read_metrics(metrics_path)
    by_step = {r["step"]: r.get("advantage_std") for r in records}
    versions = {r["step"]: r["reward_version"] for r in records if "reward_version" in r}
    for p in curve:
        p["advantage_std"] = by_step.get(p["step"])
        if versions:  # rl.online: the reward version that scored that step's batch
            p["reward_version"] = versions.get(p["step"], 0)
    values = [v for _, v in sorted(by_step.items()) if v is not None]
    return {"advantage_std": values, "advantage_std_mean": float(np.mean(values)) if values else None}


def sft_samples(sft_dir: str, draws: dict[str, list[str]], rl_cfg, seeds: dict[str, int]) -> dict[str, list]:
    """The SFT policy's samples of each held-out draw, with the evaluation's sampler settings and seeds."""
    from actors.rollout import HFBackend

    backend = HFBackend(sft_dir)
    try:
        return {d: backend.generate(prompts, n=EVAL_SAMPLES_PER_PROMPT, max_new_tokens=rl_cfg.max_new_tokens,
                                    temperature=rl_cfg.temperature, seed=seeds[d]) for d, prompts in draws.items()}
    finally:
        backend.shutdown()


# ------------------------------------------------------------------------------------------
# WARP fronts at matched KL
# ------------------------------------------------------------------------------------------


def _task_vector_geometry(init_dir: str, run_dirs: list[str]) -> dict:
    """Geometry of the runs' task vectors δ_m = θ_m - θ_init (``geometry.task_vector_geometry``): norms,
    every pair's whole-vector cosine and angle, and the spread of the per-tensor angles SLERP acts on
    (WARP Eq. 3); the first pair's also at the top level (``angle_deg``, ``per_tensor_angle_deg``).

    Over the model's parameters, each once: a GPT-2 state dict lists the tied embedding as both
    ``transformer.wte.weight`` and ``lm_head.weight``, which would count it twice.
    """
    init_model = M.load_policy(init_dir)
    return task_vector_geometry(init_model.state_dict(), [M.load_policy(d).state_dict() for d in run_dirs],
                                      keys=unique_parameter_names(init_model))


def _at_eta(front: list[dict]) -> dict[str, dict]:
    """A LITI front by η (``f"{η:g}"``): gold, KL to SFT and proxy of each point."""
    return {f"{p['eta']:g}": {"gold": p["gold"], "kl": p["kl_sft"], "proxy": p["proxy"]} for p in front}


def run_warp_fronts(cfg: Config, seed_dir: Path, judge=None) -> dict:
    """WARP on the seed's WARM RM, its fronts judged by the benchmark's gold or by ``judge`` (the user's data)."""
    from actors.warp import run_warp

    gold = judged_gold(cfg, judge)
    results = run_warp(cfg, gold=gold)
    study = cfg.study
    last = results["iterations"][-1]
    sft = results["sft"]
    # LITI fronts of the last iteration (η = 0 is its θ_init), and the SFT anchor's β grid
    fronts = {"slerp": last["fronts"]["slerp"], "lerp": last["fronts"]["lerp"],
              "reinforce": [sft] + results["baselines"]}
    gold_at_kl = {name: {f"{t:g}": v for t, v in zip(study.kl_targets, stats.value_at(
        [p["kl_sft"] for p in pts], [p["gold"] for p in pts], study.kl_targets))} for name, pts in fronts.items()}
    # matched η, η = 1 being the merged end points before LITI (always evaluated by run_warp): at
    # matched KL SLERP is compared with LERP at a larger η, which removes SLERP's norm advantage
    at_eta = {method: _at_eta(last["fronts"][method]) for method in ("slerp", "lerp")}
    geometry = [{"iteration": rec["iteration"], **_task_vector_geometry(rec["init"], rec["runs"])}
                for rec in results["iterations"]]
    return {"fronts": {k: [{"kl": p["kl_sft"], "gold": p["gold"], "proxy": p["proxy"]} for p in v]
                       for k, v in fronts.items()},
            "gold_at_kl": gold_at_kl, "at_eta": at_eta, "geometry": geometry,
            **({"judged_by": gold.record()} if gold is not None else {})}


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
            # rl.online: a refresh's new reward version first scores at these points ("v" markers)
            new = [i for i in range(1, len(curve)) if curve[i].get("reward_version", 0) > curve[i - 1].get(
                "reward_version", 0)]
            if new:
                axes[0].plot(kl[new], [curve[i]["gold"] for i in new], "v", color=c, ms=4)
            # the peak: the step draw A picked, at draw B's gold (absent from older records)
            steps = [p["step"] for p in curve]
            run = rl["runs"][name]
            if run.get("peak_step") in steps and "draws" in curve[0]:
                axes[0].plot(kl[steps.index(run["peak_step"])], run["peak_gold"], "o", color=c, ms=4)
    for ax, what in zip(axes, ("gold reward (never trained on)", "proxy reward (standardised on SFT)")):
        ax.set_xlabel("sqrt(KL to SFT)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"RL per reward arm and β, held-out evaluation, both draws pooled ({len(with_rl)} seed(s), one "
                 "line each; dot: peak, step picked on draw A, gold of draw B; v: an online arm's new reward "
                 "version)", fontsize=9)
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
