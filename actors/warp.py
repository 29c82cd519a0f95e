"""The WARP driver (WARP Algorithm 1): EMA-anchored RL runs in parallel, SLERP, LITI, iterated.

For each iteration i = 1..I:
    1. M REINFORCE runs start from θ_init, each with its own prompt order (seed) and an EMA
       anchor (r_β = r - β log π_θ/π_ema, θ_ema ← (1-μ)θ_ema + μθ), T steps each, in parallel;
    2. their task vectors δ_m = θ_m - θ_init are merged by SLERP (recursive for M > 2);
    3. LITI: θ_η = (1-η)·θ_init + η·θ_slerp over a grid of η traces the reward-KL front;
       the point at ``warp.eta`` becomes θ_init of iteration i+1.
The merge is ``warp.merge`` (a method of ``warm_ray.names.MERGE_METHODS``, SLERP by default); the
front is compared, in one plot, with (a) REINFORCE anchored to the SFT policy at several β and (b)
the LITI fronts of the methods of ``warp.compare`` (LERP, the plain average of the M policies, by
default) in place of it. Every front includes η = 1,
the merged policies themselves. Each iteration also records the geometry of the task vectors
(``geometry.task_vector_geometry``): norms, every pair's whole-vector angle and the spread of the
per-tensor angles SLERP acts on, every parameter counted once.

Outputs (``<run_dir>/warp``): ``iter_<i>/run_<m>/`` (RL runs), ``iter_<i>/init/`` (θ_init of the
next iteration), ``<method>_eta_<η>/`` (LITI points), ``baseline_beta_<b>/``, ``results.json``,
``results.md``, ``fronts.png``, ``config.yaml``. Each run, point and θ_init records the fingerprint of
what it depends on (``unit.json``; evaluations in ``eval.json``): a rerun reuses those whose inputs are
unchanged and recomputes the rest; ``--resume`` continues stopped RL runs from their checkpoints.
The runs share min(M, ``warp.max_parallel``) slots of Ray actors (a learner and its rollout workers,
``actors.rl.RLActors``), started once and reset for each run, iteration and baseline.
Every RL run is rewarded by ``warp.rl.reward``, any reward mode of ``warm-ray rl`` (normalised on SFT
samples, with its disagreement monitor).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from actors.placement import ensure_ray
from actors.rl import RLActors, Reward, RLRun, evaluate_policy, fmt, gold_reward, proxy_scorer, run_rl
from actors.scorer import RemoteScorer, close_scorer
from warm_ray import files
from warm_ray import merge
from warm_ray.geometry import task_vector_geometry
from warm_ray import models as M
from warm_ray import rundir
from warm_ray.config import Config, RLConfig, save_config
from warm_ray.lmc import unique_parameter_names
from warm_ray.names import GOLD, MERGE_METHODS, resolve
from warm_ray.sources import policy_source, reward_source

log = logging.getLogger("warm_ray.warp")

# on_run_done(iteration, run_index): called when an RL run finishes (tests simulate a crash here)
RunHook = Callable[[int, int], None]


def merge_policies(init: dict, policies: list[dict], lam: float, method: str = "slerp") -> dict:
    """The M policies merged by ``method`` (``warm_ray.names.MERGE_METHODS``) around their init."""
    return resolve(MERGE_METHODS[method].merge)(init, policies, lam)


def _state_dict(policy_dir: str | Path) -> dict[str, torch.Tensor]:
    return M.load_policy(policy_dir).state_dict()


def _save_policy(sd: dict, template_dir: str | Path, out: Path, tokenizer, card: str | None = None) -> Path:
    model = M.load_policy(template_dir)
    model.load_state_dict(sd)
    return M.save_model(model, out, tokenizer, card)


def merged_card(what: str, config: Config, sft_dir: str) -> str:
    """The model card of a merged WARP policy (a LITI point, an iteration's θ_init)."""
    w = config.warp
    return M.model_card(
        f"WARP policy: {what}", "policy",
        "A policy made by WARP (Ramé et al. 2024) in warm-ray: EMA-anchored REINFORCE runs merged by "
        f"{MERGE_METHODS[w.merge].label} of their task vectors, then interpolated back towards their init (LITI).",
        {"Recipe": [f"- {what}", f"- SFT policy: {files.shown(sft_dir, config.run_dir)}",
                    f"- M = {w.m} runs per iteration, {w.steps} steps each, "
                    f"EMA anchor μ {w.rl.ema_mu:g}, KL β {w.rl.beta:g}, reward mode `{w.rl.reward}`",
                    f"- {MERGE_METHODS[w.merge].label} λ {w.lam:g}, LITI η {w.eta:g} for the next iteration, "
                    f"{w.iterations} iteration(s)",
                    f"- prompts: `{config.policy.prompts or 'the warm-ray benchmark'}`"]},
        M.POLICY_LOAD_SNIPPET)


def _clear_stale(warp_dir: Path, iterations: int) -> None:
    """Iteration dirs beyond ``warp.iterations`` are removed: the outputs are those of this config."""
    for d in warp_dir.glob("iter_*"):
        if d.is_dir() and d.name[5:].isdigit() and int(d.name[5:]) > iterations:
            log.info("%s is not an iteration of this config: removed", d)
            shutil.rmtree(rundir.inside(d))
    (warp_dir / "state.json").unlink(missing_ok=True)  # the record of an older layout


def run_warp(config: Config, resume: bool = False, on_run_done: RunHook | None = None, gold=None) -> dict:
    """WARP (Algorithm 1). Every RL run, merged iteration, LITI point and evaluation is a unit of
    the run-dir contract keyed by the fingerprint of what it depends on: a rerun reuses exactly the
    units whose inputs are unchanged; ``resume`` continues stopped RL runs from their checkpoints.

    ``gold``: what judges the evaluated policies in place of the benchmark's gold reward (a reward fn
    with a ``fingerprint()``, e.g. the study's judge on the user's data, ``warm_ray.judge.JudgedGold``);
    it never rewards a run."""
    # each run is anchored to its EMA (warp.rl.anchor may only say so) for warp.steps steps
    rl = dataclasses.replace(config.warp.rl, anchor="ema", steps=config.warp.steps)
    ensure_ray()
    # The reward mode's scorer (warp.rl.reward), normalised on SFT samples: it scores every evaluated
    # policy and rewards the baselines. In a ScorerActor (warp.rl.scorer_placement "actor") it rewards
    # the parallel runs too, one call at a time; in the driver each parallel run loads its own (a
    # tokenizer is not thread-safe).
    proxy = None if rl.reward == GOLD else proxy_scorer(config, rl.reward, rl=rl)
    with contextlib.ExitStack() as stack:  # every exit runs, whichever raises: slots first, then the scorer
        stack.callback(close_scorer, proxy)
        # One slot of actors per run at once, reused by every iteration and the baselines; ended here,
        # also when a run fails. A slot starts its actors on its first run (none when all are reused).
        parallel = max(1, min(config.warp.m, config.warp.max_parallel or config.warp.m))
        slots = [stack.enter_context(RLActors()) for _ in range(parallel)]
        return _Warp(config, rl, proxy, slots, resume, on_run_done, gold).run()


class _Warp:
    """One invocation of WARP: its iterations, their fronts, the baselines, and the evaluations."""

    def __init__(self, config: Config, rl: RLConfig, proxy, slots: list[RLActors], resume: bool,
                 on_run_done: RunHook | None, gold=None):
        self.config, self.rl, self.proxy, self.slots = config, rl, proxy, slots
        self.resume, self.on_run_done = resume, on_run_done
        self.wcfg = config.warp
        self.warp_dir = Path(config.run_dir) / "warp"
        self.src = policy_source(config)
        self.gold = self.src.gold if gold is None else gold  # the benchmark's gold on its prompts, or the judge
        self.tokenizer = M.load_tokenizer(self.src.sft_dir)
        self.shared = proxy if isinstance(proxy, RemoteScorer) else None  # the parallel runs' reward, when in an actor
        self.scorers = {"proxy": gold_reward if proxy is None else proxy.score}
        self.prompts = self.src.prompts["eval"][: rl.n_eval_prompts]
        self.sft = M.load_policy(self.src.sft_dir).eval()
        self.eval_seed = rl.seed + 9_999
        source = None if rl.reward == GOLD else reward_source(config)
        # what every evaluation depends on besides the policy: the prompts, sampling, and the proxy RM
        self.eval_fp = rundir.fingerprint({
            "prompts": self.prompts, "seed": self.eval_seed, "temperature": rl.temperature,
            "max_new_tokens": rl.max_new_tokens, "reward": rl.reward, "rm": Reward(rl.reward, source).fingerprint(rl),
            "prepare": (rundir.read_json(Path(config.run_dir) / "prepare" / "prepare.json") or {}).get("fingerprint"),
            "policy_source": self.src.fingerprint, "uwo_lambda": rl.uwo_lambda, "single_member": rl.single_member,
            **({"gold": gold.fingerprint()} if gold is not None else {})})
        self.free: queue.SimpleQueue[RLActors] = queue.SimpleQueue()
        for slot in slots:
            self.free.put(slot)

    def run(self) -> dict:
        wcfg, warp_dir = self.wcfg, self.warp_dir
        warp_dir.mkdir(parents=True, exist_ok=True)
        _clear_stale(warp_dir, wcfg.iterations)
        save_config(self.config, warp_dir)
        t_start = time.perf_counter()
        init_dir, init_fp = self.src.sft_dir, "sft"
        iterations = []
        for it in range(1, wcfg.iterations + 1):
            iterations.append(self.iteration(it, init_dir, init_fp))
            init_dir, init_fp = iterations[-1]["next_init"], iterations[-1]["fingerprint"]
        results = {"iterations": iterations, "baselines": self.baselines(),
                   "sft": self.evaluate(self.src.sft_dir, warp_dir, "sft", "evaluation of the SFT policy"),
                   "seconds": round(time.perf_counter() - t_start, 1),
                   # what this invocation started: each slot's learner and workers once, however many runs
                   "actors": {"slots": len(self.slots), "learners_started": sum(s.learners_started for s in self.slots),
                              "rollout_groups_started": sum(s.groups_started for s in self.slots)}}
        plot_fronts(results, warp_dir / "fronts.png")
        # results.json names the policies by their paths in the run dir; the results returned, to open
        files.publish(warp_dir, files.portable_paths(results, self.config.run_dir), markdown_table(results),
                      f"WARP: {wcfg.iterations} iteration(s) of M={wcfg.m} EMA-anchored runs x {wcfg.steps} steps, "
                      f"{MERGE_METHODS[wcfg.merge].label} λ={wcfg.lam}, LITI η={wcfg.eta} "
                      f"(eval: {len(self.prompts)} held-out prompts):",
                      f"fronts: {warp_dir / 'fronts.png'}   ({results['seconds']}s)")
        return results

    def evaluate(self, policy_dir, unit_dir: Path, policy_fp: str, what: str) -> dict:
        """Gold, proxy and KL to SFT of a policy on the held-out prompts: reused when done under the same inputs."""
        fp = rundir.fingerprint({"policy": policy_fp, "eval": self.eval_fp})
        done = rundir.reuse(unit_dir, fp, what, clear=False, marker="eval.json")
        if done is not None:
            return done
        _, row = evaluate_policy(str(policy_dir), self.sft, self.prompts, self.rl, self.scorers, self.eval_seed,
                                 gold=self.gold)
        gold = row.pop("gold")
        return rundir.finish(unit_dir, fp, {"gold": None if gold is None else sum(gold) / len(gold), **row},
                             marker="eval.json")

    def policy_unit(self, out: Path, fp: str, what: str, build, title: str, template_dir: str) -> None:
        """A merged policy (a LITI point, θ_init of the next iteration): reused when built under ``fp``."""
        if rundir.reuse(out, fp, what) is not None and rundir.damaged_weights(out) is None:
            return
        rundir.forget(out)
        _save_policy(build(), template_dir, out, self.tokenizer,  # atomic: replaces the dir
                     merged_card(title, self.config, self.src.sft_dir))
        rundir.finish(out, fp, {"policy": files.portable(out, self.config.run_dir)})

    def rl_runs(self, it: int, init_dir: str, init_fp: str) -> list[dict]:
        """The M RL runs of iteration ``it`` from θ_init in parallel, each its own prompt order, on the
        free slots; finished runs are reused. A failed run stops the siblings not yet started."""
        it_dir, failed = self.warp_dir / f"iter_{it}", threading.Event()

        def one_run(m: int) -> dict | None:
            if failed.is_set():  # a sibling failed: leave this run for the resume
                return None
            slot = self.free.get()  # as many pool threads as slots: one is always free
            try:
                run = RLRun.of(self.config, it_dir / f"run_{m}", rl=dataclasses.replace(self.rl, seed=self.rl.seed
                                                                                        + 1000 * it + m),
                               scorer=self.shared, init_dir=init_dir, depends={"init_policy": init_fp})
                result = run_rl(run, resume=self.resume, actors=slot)
                if self.on_run_done is not None:
                    self.on_run_done(it, m)
                return result
            except BaseException:
                failed.set()
                raise
            finally:
                self.free.put(slot)

        with ThreadPoolExecutor(max_workers=len(self.slots)) as pool:
            return list(pool.map(one_run, range(self.wcfg.m)))

    def iteration(self, it: int, init_dir: str, init_fp: str) -> dict:
        """WARP Algorithm 1, one iteration: M runs, their merges, the LITI fronts, the next θ_init."""
        wcfg, it_dir = self.wcfg, self.warp_dir / f"iter_{it}"
        t0 = time.perf_counter()
        runs = self.rl_runs(it, init_dir, init_fp)
        t_rl = time.perf_counter() - t0
        run_fps = [rundir.read_json(it_dir / f"run_{m}" / rundir.MARKER)["fingerprint"] for m in range(wcfg.m)]
        merged_fp = rundir.fingerprint({"runs": run_fps, "init": init_fp, "lam": wcfg.lam})

        # merge the task vectors by WARP's method and by each compared one
        t0 = time.perf_counter()
        init_model = M.load_policy(init_dir)
        init_sd = init_model.state_dict()
        policies = [_state_dict(r["policy"]) for r in runs]
        methods = list(dict.fromkeys([wcfg.merge, *wcfg.compare]))
        merged = {method: merge_policies(init_sd, policies, wcfg.lam, method) for method in methods}
        t_merge = time.perf_counter() - t0
        merge_bytes = merge.state_dict_bytes(init_sd) * (wcfg.m + 2)  # inputs read + output written
        # the angles SLERP acted on: whole-vector and per tensor (each tensor has its own Ω), every
        # parameter once (the tied embedding is two state-dict names of one tensor)
        t0 = time.perf_counter()
        geometry = task_vector_geometry(init_sd, policies, keys=unique_parameter_names(init_model))
        t_geometry = time.perf_counter() - t0

        t0 = time.perf_counter()
        fronts = self.fronts(it, init_dir, init_sd, merged, merged_fp)
        run_points = [{"run": m, **self.evaluate(r["policy"], it_dir / f"run_{m}", run_fps[m],
                                                 f"evaluation of iteration {it} run {m}")} for m, r in enumerate(runs)]
        t_eval = time.perf_counter() - t0

        next_init = it_dir / "init"
        next_fp = rundir.fingerprint({"merged": merged_fp, "method": wcfg.merge, "eta": wcfg.eta})
        label = MERGE_METHODS[wcfg.merge].label
        self.policy_unit(next_init, next_fp, f"iteration {it} θ_init of the next iteration (η={wcfg.eta:g})",
                         lambda: merge.liti(init_sd, merged[wcfg.merge], wcfg.eta),
                         f"iteration {it} result (LITI η={wcfg.eta:g} of the {label} merge)", init_dir)
        return {
            "iteration": it, "init": str(init_dir), "next_init": str(next_init), "eta": wcfg.eta,
            "fingerprint": next_fp, "merge": wcfg.merge,
            "runs": [r["policy"] for r in runs], "run_points": run_points, "fronts": fronts, "geometry": geometry,
            "seconds": {"rl_runs": round(t_rl, 1), "merge": round(t_merge, 3), "geometry": round(t_geometry, 3),
                        "evaluation": round(t_eval, 1)},
            # every merge timed: GB/s per merge
            "merge_gb_per_s": round(merge_bytes / max(t_merge, 1e-9) / 1e9 / len(methods), 3),
        }

    def fronts(self, it: int, init_dir: str, init_sd: dict, merged: dict, merged_fp: str) -> dict[str, list[dict]]:
        """The LITI front of each merge: θ_η = (1-η)·θ_init + η·θ_merged over the η grid, evaluated.

        η = 1 (the merged end points, before LITI) is always evaluated: there the merges are compared
        as merged, not after LITI has rescaled them (at M = 2, λ = 1/2 the SLERP point at η is the
        LERP point at η/cos(Ω/2), up to the spread of per-tensor angles)."""
        wcfg, it_dir = self.wcfg, self.warp_dir / f"iter_{it}"
        grid = sorted(set(wcfg.eta_grid) | {wcfg.eta, 1.0})
        points = {f"{method}_eta_{eta:g}" for method in merged for eta in grid}
        for stale in it_dir.glob("*_eta_*"):
            if stale.name not in points:
                shutil.rmtree(rundir.inside(stale))
        fronts: dict[str, list[dict]] = {method: [] for method in merged}
        for method, theta in merged.items():
            for eta in grid:
                point_dir = it_dir / f"{method}_eta_{eta:g}"
                point_fp = rundir.fingerprint({"merged": merged_fp, "method": method, "eta": eta})
                self.policy_unit(point_dir, point_fp, f"iteration {it} {method} η={eta:g}",
                                 lambda theta=theta, eta=eta: merge.liti(init_sd, theta, eta),
                                 f"iteration {it}, LITI η={eta:g} of the {MERGE_METHODS[method].label} merge",
                                 init_dir)
                fronts[method].append({"eta": eta, **self.evaluate(point_dir, point_dir, point_fp,
                                                                   f"evaluation of iteration {it} {method} η={eta:g}")})
                log.info("iteration %d %s η=%.2f: gold %s proxy %.3f KL %.3f", it, method, eta,
                         fmt(fronts[method][-1]["gold"]), fronts[method][-1]["proxy"], fronts[method][-1]["kl_sft"])
        return fronts

    def baselines(self) -> list[dict]:
        """REINFORCE anchored to the SFT policy at several β, the same total RL budget as one WARP run chain."""
        out = []
        for beta in self.wcfg.baseline_betas:
            key = f"{beta:g}"
            rl_b = dataclasses.replace(self.rl, anchor="sft", beta=beta, steps=self.wcfg.steps * self.wcfg.iterations)
            out_dir = self.warp_dir / f"baseline_beta_{key}"
            # gold: run_rl rewards with the gold reward
            r = run_rl(RLRun.of(self.config, out_dir, rl=rl_b, scorer=self.proxy), resume=self.resume,
                       actors=self.slots[0])
            fp = rundir.read_json(out_dir / rundir.MARKER)["fingerprint"]
            out.append({"beta": beta, **self.evaluate(r["policy"], out_dir, fp, f"evaluation of baseline β={key}")})
        return out


def markdown_table(results: dict) -> str:
    lines = ["| policy | KL to SFT | gold | proxy |", "|---|---:|---:|---:|",
             f"| SFT | {results['sft']['kl_sft']:.3f} | {fmt(results['sft']['gold'])} | {results['sft']['proxy']:.3f} |"]
    for rec in results["iterations"]:
        it = rec["iteration"]
        for p in rec["run_points"]:
            lines.append(f"| iter {it} run {p['run']} (EMA anchor) | {p['kl_sft']:.3f} | {fmt(p['gold'])} | {p['proxy']:.3f} |")
        for method, front in rec["fronts"].items():
            for p in front:
                lines.append(f"| iter {it} {method.upper()} η={p['eta']:g} | {p['kl_sft']:.3f} | {fmt(p['gold'])} "
                             f"| {p['proxy']:.3f} |")
    for b in results["baselines"]:
        lines.append(f"| REINFORCE, SFT anchor, β={b['beta']:g} | {b['kl_sft']:.3f} | {fmt(b['gold'])} | {b['proxy']:.3f} |")
    angles = [line for rec in results["iterations"] if (line := geometry_line(rec))]
    if angles:
        angles = ["", "Angles between the runs' task vectors (whole vector; per tensor, as SLERP sees them: "
                  "mean ± SD over tensors, range, parameter-weighted mean):", "", *angles]
    timing = ["", "| iteration | RL runs s | merge s | merge GB/s | evaluation s |", "|---:|---:|---:|---:|---:|"]
    for rec in results["iterations"]:
        s = rec["seconds"]
        timing.append(f"| {rec['iteration']} | {s['rl_runs']} | {s['merge']} | {rec['merge_gb_per_s']} | {s['evaluation']} |")
    return "\n".join(lines + angles + timing) + "\n"


def geometry_line(rec: dict) -> str | None:
    """One line of an iteration's task-vector angles: per pair of runs, the whole-vector angle and
    the spread of the per-tensor angles (None for M = 1: no pair)."""
    pairs = (rec.get("geometry") or {}).get("pairs") or []
    if not pairs:
        return None
    parts = []
    for p in pairs:
        t = p["per_tensor_angle_deg"]
        whole = "–" if p["angle_deg"] is None else f"{p['angle_deg']:.1f}°"
        spread = ("no tensor with an angle" if t["mean"] is None else
                  f"per tensor {t['mean']:.1f} ± {t['sd']:.1f}° ({t['min']:.1f}–{t['max']:.1f}°, weighted "
                  f"{t['weighted_mean']:.1f}°, {t['tensors']} tensors, SLERP = LERP in {t['lerp_fallback']})")
        parts.append(f"runs {p['runs'][0]}-{p['runs'][1]} {whole}, {spread}")
    return f"- iter {rec['iteration']}: " + "; ".join(parts)


def plot_fronts(results: dict, path: Path) -> None:
    """Gold and proxy reward against KL to SFT: LITI fronts (of each merge), runs, SFT-anchored baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes, ("gold", "proxy")):
        if results["sft"][key] is None:  # gold off the benchmark's prompts
            ax.set_visible(False)
            continue
        ax.plot([results["sft"]["kl_sft"]], [results["sft"][key]], "k*", ms=10, label="SFT")
        for i, rec in enumerate(results["iterations"]):
            c = colors[i % len(colors)]
            for j, (method, pts) in enumerate(rec["fronts"].items()):  # WARP's merge first, solid
                ax.plot([p["kl_sft"] for p in pts], [p[key] for p in pts], ("o-", "s--", "d:", "v-.")[j % 4],
                        color=c, alpha=0.9 if j == 0 else 0.5, label=f"iter {rec['iteration']} LITI of {method.upper()}")
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
