"""`warm-ray study`: does WARM (and WARP) fight reward hacking? The pipeline over seeds, with CIs.

One shared `prepare` (tokenizer, base LM and its Baklava checkpoints, the pairs' texts, prompts),
then for each seed s in ``study.seeds`` (``<run_dir>/study/seed_<s>/``):

    label flips drawn anew (same pairs, another 25% flipped)          prepare/ of the seed
    rm    M members with new seeds → WARM, ENS, greedy soup, best      warm/   (actors.warm.run_warm)
          member (both chosen on the selection split only)
    bon   K SFT samples per held-out prompt, scored by every selector  bon/    (warm_ray.bon)
          → exact expected gold of Best-of-N for each N
    rl    REINFORCE per reward arm and β, evaluated every K steps on    rl/     (actors.rl.run_rl)
          held-out prompts: gold, proxy, KL → peak gold, gold at KL targets
    warp  WARP iterations → SLERP / LERP / SFT-anchored fronts at the   warp/   (actors.warp.run_warp)
          KL targets

and then the claims of the papers as paired differences over seeds (``claim_specs``): mean, t-based CI,
sign count, p-value, verdict (holds / does not hold / inconclusive). The claims named in
``study.primary`` are declared before running and reported first; the others (secondary) also get
a Holm-adjusted verdict, as there are many of them at a few seeds.

Outputs (``<run_dir>/study``): ``claims.json`` / ``claims.md``, ``results.json`` / ``results.md``
(per-seed tables, timings), ``bon.png``, ``rm.png`` (and ``rl.png`` / ``warp.png`` when those
parts ran), ``config.yaml``. Every unit of a seed records the fingerprint of the config it was
computed under; a rerun reuses it only when that fingerprint matches, and recomputes otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np

from actors.study_claims import claim_specs, claims  # noqa: F401
from actors.study_data import CLAIM_PARTS, check_own_data, data_record, label_noise, own_data  # noqa: F401
from actors.study_report import PART_ORDER, write_claims, write_plots, write_results
from warm_ray import bon as B
from warm_ray import data as D
from warm_ray import files
from warm_ray import models as M
from warm_ray import results as RS
from warm_ray import reward as R
from warm_ray import rundir
from warm_ray import stats
from warm_ray.config import Config, ConfigError, check_stage, rl_fingerprint_fields, save_config, to_dict
from warm_ray.names import ONLINE_ARMS, REWARD_MODES, member_modes
from warm_ray.sources import load_prompts, prepared_summary

log = logging.getLogger("warm_ray.study")

# which config sections each part of a seed depends on (a change recomputes the part and those after it)
PART_DEPENDS = {
    "rm": ("prepare", "warm"),
    "bon": ("study.bon_prompts", "study.bon_samples", "study.bon_n", "study.bon_temperature", "study.uwo_lambda"),
    "rl": ("rl", "study.rl_arms", "study.rl_betas", "study.eval_every", "study.eval_prompts", "study.uwo_lambda",
           "study.std_prompts", "study.std_samples"),
    "warp": ("warp", "study.eval_every", "study.eval_prompts"),
}


# ------------------------------------------------------------------------------------------
# Fingerprints: a unit is reused only when the config it depends on is unchanged
# ------------------------------------------------------------------------------------------


# what each part computes, beyond its config: raised when a part's code changes what it records, so a
# rerun recomputes units finished by older code instead of handing back results without the new fields
# (2: LMC and geometry in rm, ENS normalised per member in bon, unbiased peaks and pooled-SD rewards in
# rl, η-matched points and per-tensor angles in warp)
PART_VERSION = {"rm": 2, "bon": 2, "rl": 2, "warp": 2}


def fingerprint(config: Config, part: str, seed: int, data_fp: str | None = None, judge_fp: str | None = None,
                policy_fp: str | None = None) -> str:
    """Fingerprint of the config fields ``part`` depends on, and of every part before it; ``data_fp``:
    the user's preference data (``own_data``), whose rows no config field holds."""
    cfg = to_dict(config)
    parts = PART_ORDER[: PART_ORDER.index(part) + 1]
    keys = [k for p in parts for k in PART_DEPENDS[p]]
    extra = {"study.label_noise": config.study.label_noise} if config.study.label_noise is not None else {}
    if data_fp is not None:
        extra.update(data=data_fp, chat_template=config.data.chat_template)
    if part != "rm" and judge_fp is not None:  # the policy parts on the user's data: who judges, which policy and prompts
        extra.update(judge=judge_fp, policy=policy_fp)  # prepare (max_new_tokens, its policy) is in the rm keys
    picked = {k: rundir.pick(cfg, k) for k in keys}
    if "rl" in picked:
        picked["rl"] = rl_fingerprint_fields(picked["rl"])
    if "warp" in picked:
        picked["warp"] = {**picked["warp"], "rl": rl_fingerprint_fields(picked["warp"]["rl"])}
    return rundir.fingerprint({"seed": seed, "versions": [PART_VERSION[p] for p in parts], **picked, **extra})


# A study unit's finish record (the run-dir contract's marker, under the study's own name: a seed's
# warm/ dir is both the rm unit and the WARM stage's directory, which keeps its own record).
UNIT = "study_unit.json"
PLACEMENT = "placement.json"  # in a seed's dir: the node, host and process it runs on, and its part


def _done(unit_dir: Path, fp: str, clear: bool = True) -> dict | None:
    """The unit's result if it finished under fingerprint ``fp``; else None (and stale outputs go, with
    ``clear``)."""
    return rundir.reuse(unit_dir, fp, str(unit_dir), marker=UNIT, clear=clear)


def _finish(unit_dir: Path, fp: str, result: dict) -> dict:
    return rundir.finish(unit_dir, fp, result, marker=UNIT)


# ------------------------------------------------------------------------------------------
# One seed
# ------------------------------------------------------------------------------------------


def seed_config(config: Config, seed: int, seed_dir: Path, shared: dict | None = None) -> Config:
    """The stage configs of one replicate: new member seeds and RL seeds, same everything else. On the
    user's data, the seed's rm part reads the seed's splits (its labels flipped anew: ``seed_prepare``),
    and its policy parts the policy ``own_data`` resolved (the user's, or the tiny one prepared once in
    the study's run dir)."""
    if config.data.preferences:
        config = dataclasses.replace(config, data=dataclasses.replace(
            config.data, preferences=str(seed_dir / "prepare" / "data"), ood="", max_train=None))
        if (shared or {}).get("policy") and not config.policy.model:
            config = dataclasses.replace(config, policy=dataclasses.replace(config.policy, model=shared["policy"]))
    return dataclasses.replace(
        config, run_dir=str(seed_dir),
        warm=dataclasses.replace(config.warm, seed=config.warm.seed + 1000 * seed),
        rl=dataclasses.replace(config.rl, seed=config.rl.seed + 1000 * seed),
        warp=dataclasses.replace(config.warp, rl=dataclasses.replace(config.warp.rl,
                                                                     seed=config.warp.rl.seed + 1000 * seed)),
    )


def seed_prepare(shared: dict, seed: int, label_noise: float, seed_dir: Path) -> dict:
    """The seed's prepared run: the shared LM and prompts, the train labels flipped anew. Its record
    names files relative to the seed dir (the seed's run dir), the shared ones of the study's run dir,
    which holds the seed dir, with ``..`` (``files.portable``): a moved or copied study reads its own."""
    out = seed_dir / "prepare"
    out.mkdir(parents=True, exist_ok=True)
    splits = D.load_splits(shared["data"])
    rng = random.Random(10_007 * seed + 1)
    splits["train"] = D.corrupt(D.uncorrupt(splits["train"]), label_noise, rng)
    D.save_splits(splits, out / "data")
    if shared.get("own_data"):  # the seed's rm part reads these splits as the user's data
        rate = sum(r["corrupted"] for r in splits["train"]) / len(splits["train"])
        judge = shared.get("judge")
        files.atomic_write_json(out / "labels.json", {"own_data": shared["own_data"], "label_seed": seed,
                                                      "label_noise": label_noise, "corruption_rate": rate,
                                                      "labels": shared.get("labels", "data"),
                                                      "judge": judge.describe() if shared.get("labels") == "judge" else None})
        return {"data": os.path.abspath(out / "data"), "corruption_rate": rate}
    train = splits["train"]
    summary = {
        **shared,  # its paths resolved (prepare's return value)
        "data": os.path.abspath(out / "data"),
        "corruption_rate": sum(r["corrupted"] for r in train) / len(train),
        "label_seed": seed,
    }
    files.atomic_write_json(out / "prepare.json", files.portable_paths(summary, seed_dir))
    return summary


def run_rm(cfg: Config, seed_dir: Path) -> dict:
    from actors.warm import run_warm

    results = run_warm(cfg)
    keep = ("table", "best_member", "greedy_members", "greedy_selection_acc", "models_at_inference", "seconds",
            "lmc", "geometry")
    return {k: results[k] for k in keep if k in results}


def run_bon(cfg: Config, seed: int, seed_dir: Path, rm: dict, shared: dict | None = None) -> dict:
    """Best-of-N of one seed: K samples of the SFT policy per held-out prompt, scored by every selector,
    judged by the benchmark's gold reward, or on the user's data by the judge (``shared["judge"]``: its
    scores standardised once on these SFT samples, so gold is in SDs of the SFT policy's judge score)."""
    study = cfg.study
    judge = (shared or {}).get("judge")
    warm_dir = seed_dir / "warm"
    if judge is None:
        summary = prepared_summary(seed_dir)
        policy_dir, prompts = summary["policy"], load_prompts(summary)["eval"][: study.bon_prompts]
    else:
        policy_dir, prompts = shared["policy"], shared["eval_prompts"][: study.bon_prompts]
    M.use_threads(cfg.warm.eval_threads)  # sampling and scoring here run alone, after the RM part's actors
    t0 = time.perf_counter()
    completions = B.sample_completions(policy_dir, prompts, study.bon_samples, cfg.prepare.max_new_tokens,
                                       study.bon_temperature, seed=1_000_003 * (seed + 1))
    t_sample = time.perf_counter() - t0
    judged = None
    if judge is None:
        gold = B.gold_matrix(prompts, completions)
    else:  # the judge's score standardised on these very samples: gold in SDs of the SFT policy's score
        from warm_ray.judge import JudgedGold

        k = len(completions[0])
        flat = ([p for p in prompts for _ in range(k)], [c for row in completions for c in row])
        judged_gold = JudgedGold(judge, *flat)
        gold = np.asarray(judged_gold(*flat), dtype=np.float64).reshape(len(prompts), k)
        judged = judged_gold.record()
    member_dirs = R.member_final_dirs(warm_dir)
    # a greedy soup of one member is that member, and one of all members is the WARM average (the
    # same average of the same weights): its scores are those, not another pass over the samples
    soup_ids = sorted(int(i) for i in rm["greedy_members"])
    soup_is = soup_ids[0] if len(soup_ids) == 1 else "warm" if len(soup_ids) == len(member_dirs) else None
    scores = B.score_dirs([*member_dirs, warm_dir / "warm_rm",
                           *([warm_dir / "greedy_soup_rm"] if soup_is is None else [])],
                          prompts, completions, cfg.warm.max_length, cfg.warm.eval_batch_size)
    members, warm = scores[:len(member_dirs)], scores[len(member_dirs)]
    soup = scores[-1] if soup_is is None else warm if soup_is == "warm" else members[soup_is]
    best = int(rm["best_member"])
    selectors = B.selector_scores(members, best, warm, soup, study.uwo_lambda)
    selectors["oracle (gold)"] = gold
    per_prompt = B.best_of_n(selectors, gold, study.bon_n)
    result = {
        "n": list(study.bon_n),
        "kl": [stats.kl_bon(n) for n in study.bon_n],
        "gold": {name: {str(n): float(v.mean()) for n, v in by_n.items()} for name, by_n in per_prompt.items()},
        "proxy_gold_corr": {name: float(np.corrcoef(s.reshape(-1), gold.reshape(-1))[0, 1])
                            for name, s in selectors.items() if name != "oracle (gold)"},
        "forward_passes": {"single": 1, "warm": 1, "soup": 1, "ens_raw": len(members),
                           **{mode: REWARD_MODES[mode].forward_passes(len(members)) for mode in member_modes()}},
        "best_member": best,
        "prompts": len(prompts), "samples_per_prompt": study.bon_samples,
        "gold_ties": gold_tie_rate(gold),
        "seconds": {"sample": round(t_sample, 1), "total": round(time.perf_counter() - t0, 1),
                    **({"judge": round(judged["seconds"], 1)} if judged else {})},
        **({"judged_by": judged} if judged else {}),
    }
    files.atomic_write_json(seed_dir / "bon" / "samples.json", {"prompts": prompts, "completions": completions})
    return result


def gold_tie_rate(gold: np.ndarray) -> float:
    """Share of within-prompt pairs of samples (i < j) whose gold rewards are exactly equal."""
    ties = total = 0
    for row in gold:
        _, counts = np.unique(row, return_counts=True)
        ties += int((counts * (counts - 1) // 2).sum())
        total += len(row) * (len(row) - 1) // 2
    return ties / max(total, 1)


def run_seed(config: Config, seed: int, seeds_dir: Path, shared: dict) -> dict:
    """Every part of ``study.parts`` for one seed in ``<seeds_dir>/seed_<seed>``, each reused when it
    finished under the same config."""
    seed_dir = seeds_dir / f"seed_{seed}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    cfg = seed_config(config, seed, seed_dir, shared)
    # the seed's own torch work on as many threads wherever it runs (the driver or a Ray task, whose
    # default is one thread): its numbers do not depend on study.max_parallel
    M.use_threads(config.warm.eval_threads)
    out: dict = {"seed": seed, "seconds": {}, "units": {}}
    from actors.study_parallel import placement_of_this_process

    where = placement_of_this_process()
    parts = [p for p in PART_ORDER if p in config.study.parts]

    def running(part: str | None) -> None:
        # where the seed runs now (on a cluster: which node holds it), its part, or None when it ended
        files.atomic_write_json(seed_dir / PLACEMENT, {"seed": seed, **where, "part": part, "at": time.time()})

    running("rm")
    # the rm part owns prepare/ and warm/ of the seed. A stale one takes the seed's data and the parts after
    # it along; warm/ stays, where the warm stage reuses each member and the probe head that its config still
    # describes, by their own fingerprints (data, init, training settings): a setting of the evaluation only
    # (warm.lmc_*, warm.eval_batch_size) evaluates again without training again
    fp = fingerprint(config, "rm", seed, shared.get("data_fingerprint"))
    rm_unit = seed_dir / "warm"
    rm = _done(rm_unit, fp, clear=False) if rm_unit.exists() else None
    started = time.time()
    if rm is None:
        for stale in ("prepare", "bon", "rl", "warp"):
            shutil.rmtree(rundir.inside(seed_dir / stale), ignore_errors=True)
        t0 = time.perf_counter()
        seed_prepare(shared, seed, label_noise(config), seed_dir)
        log.info("seed %d: rm started on %s: training %d reward models", seed, where["node"], config.warm.m)
        rm = _finish(rm_unit, fp, {**run_rm(cfg, seed_dir), "seconds_part": round(time.perf_counter() - t0, 1)})
        log.info("seed %d: rm finished on %s (%.0f s)", seed, where["node"], rm["seconds_part"])
        out["units"]["rm"] = {**where, "start": started, "end": time.time(), "reused": False}
    else:
        log.info("seed %d: rm part already computed under this config, reusing it", seed)
        out["units"]["rm"] = {**where, "start": started, "end": time.time(), "reused": True}
    out["rm"] = rm
    out["seconds"]["rm"] = rm["seconds_part"]
    for part in parts:
        if part == "rm":
            continue
        fp = fingerprint(config, part, seed, shared.get("data_fingerprint"), shared.get("judge_fingerprint"),
                         shared.get("policy_fingerprint"))
        unit = seed_dir / part
        result = _done(unit, fp) if unit.exists() else None
        started = time.time()
        if result is None:
            # an unfinished unit may hold runs of another config: start it clean
            shutil.rmtree(rundir.inside(unit), ignore_errors=True)
            unit.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            log.info("seed %d: %s started on %s", seed, part, where["node"])
            running(part)
            if part == "bon":
                result = run_bon(cfg, seed, seed_dir, rm, shared)
            elif part == "rl":
                from actors.study_rl import run_rl_arms

                result = run_rl_arms(cfg, seed_dir, rm, shared.get("judge"))
            else:
                from actors.study_rl import run_warp_fronts

                result = run_warp_fronts(cfg, seed_dir, shared.get("judge"))
            result["seconds_part"] = round(time.perf_counter() - t0, 1)
            _finish(unit, fp, result)
            log.info("seed %d: %s finished on %s (%.0f s)", seed, part, where["node"], result["seconds_part"])
            out["units"][part] = {**where, "start": started, "end": time.time(), "reused": False}
        else:
            log.info("seed %d: %s already computed under this config, reusing it", seed, part)
            out["units"][part] = {**where, "start": started, "end": time.time(), "reused": True}
        out[part] = result
        out["seconds"][part] = result["seconds_part"]
    running(None)
    return out


# ------------------------------------------------------------------------------------------
# The member recipe, chosen by a rule declared before any claim is computed
# ------------------------------------------------------------------------------------------

RECIPE_RULE = (
    "among the recipes whose members are linearly mode connected on the selection split (every member pair's "
    "Bradley-Terry loss barrier <= warm.lmc_tolerance, in every recipe seed), the one whose mean member is "
    "most accurate on the selection split (mean over recipe seeds; ties: the first listed); if none is "
    "connected, the one with the smallest barrier. It reads the selection split only, and no number that "
    "compares WARM with ENS, so it favours neither.")


def recipe_dir(study_dir: Path, name: str) -> Path:
    """Where a recipe's seeds live: ``<study_dir>/recipe_<name>/seed_<s>``."""
    return study_dir / f"recipe_{name}"


def with_recipe(config: Config, name: str) -> Config:
    """``config`` with the ``warm.*`` overrides of recipe ``name`` of ``study.recipes``."""
    from warm_ray.config import apply_overrides

    return apply_overrides(config, list(config.study.recipes[name]))


def recipe_seeds(study) -> list[int]:
    return list(study.recipe_seeds) or [study.seeds[0]]


def choose_recipe(candidates: dict[str, list[dict]], tolerance: float) -> tuple[str, dict[str, dict]]:
    """``RECIPE_RULE`` over each recipe's rm results (one per recipe seed): (chosen, per-recipe row).

    Reads each member table's selection column and the LMC summary of the selection split, nothing
    else (``tests/test_study.py`` flips every test number and checks the choice does not move).
    """
    rows = {}
    for name, rms in candidates.items():
        barriers = [rm["lmc"]["summary"][RS.SELECTION]["loss_barrier_max"] for rm in rms]
        accs = [rm["table"][RS.MEAN_MEMBER][RS.SELECTION] for rm in rms]
        rows[name] = {"connected": all(b <= tolerance for b in barriers), "loss_barrier_selection": max(barriers),
                      "mean_member_selection": float(np.mean(accs)), "seeds": len(rms)}
    names = list(rows)
    connected = [n for n in names if rows[n]["connected"]]
    if connected:
        chosen = max(connected, key=lambda n: (rows[n]["mean_member_selection"], -names.index(n)))
    else:
        chosen = min(names, key=lambda n: (rows[n]["loss_barrier_selection"], names.index(n)))
    return chosen, rows


def select_recipe(config: Config, study_dir: Path, shared: dict) -> tuple[str, dict]:
    """The recipe the study runs: ``study.recipe`` if set, else ``RECIPE_RULE`` over ``study.recipes``,
    each trained (rm part only) on the recipe seeds. The chosen recipe's seeds are the study's own
    seeds of that recipe, so its recipe-seed runs are reused, not retrained."""
    study = config.study
    if study.recipe:
        return study.recipe, {"chosen": study.recipe, "rule": "fixed by study.recipe", "candidates": {}}
    if len(study.recipes) == 1:
        name = next(iter(study.recipes))
        return name, {"chosen": name, "rule": "the only recipe of study.recipes", "candidates": {}}
    from actors.study_parallel import SeedJob, run_jobs

    jobs = []
    for name in study.recipes:
        cfg = with_recipe(config, name)
        cfg = dataclasses.replace(cfg, study=dataclasses.replace(cfg.study, parts=["rm"]))
        jobs += [SeedJob(("recipe", name, "seed", seed), cfg, seed, recipe_dir(study_dir, name))
                 for seed in recipe_seeds(study)]
    log.info("study: choosing the member recipe on the selection split (%d recipe x seed runs)", len(jobs))
    runs, _ = run_jobs(jobs, shared, run_seed)  # in parallel where the cluster holds several, as the seeds
    candidates: dict[str, list[dict]] = {}
    for job in jobs:
        candidates.setdefault(job.key[1], []).append(runs[job.key]["rm"])
    chosen, rows = choose_recipe(candidates, config.warm.lmc_tolerance)
    log.info("study: member recipe %r chosen (%s)", chosen, "; ".join(
        f"{n}: {'connected' if r['connected'] else 'NOT connected'}, barrier {r['loss_barrier_selection']:+.4f}, "
        f"mean member {r['mean_member_selection']:.3f} on selection" for n, r in rows.items()))
    return chosen, {"chosen": chosen, "rule": RECIPE_RULE, "candidates": rows, "recipe_seeds": recipe_seeds(study),
                    "grid": {k: list(v) for k, v in study.recipes.items()}}


# ------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------


def run_study(config: Config, report: bool = True) -> dict:
    """Every seed's parts, then the claims (``report``: print the tables; else only write them)."""
    from actors.placement import ensure_ray
    from warm_ray.prepare import prepare

    study = check_stage(config, "study").study  # an rl setting the study would override is refused
    # fail before any work on a primary claim the study cannot test
    unknown = [p for p in study.primary if p not in claim_specs(study)]
    if unknown:
        raise ConfigError(f"study.primary: unknown claim(s) {unknown}; `warm-ray study --list-claims` lists them")
    for name in study.recipes:
        with_recipe(config, name)  # a recipe's bad override fails here, naming it, before any work
    if not study.recipe and len(study.recipes) > 1 and config.warm.lmc_points < 2:
        raise ConfigError(f"warm.lmc_points = {config.warm.lmc_points}: choosing among study.recipes reads the "
                          "members' linear mode connectivity; set it >= 2, or fix the recipe with study.recipe")
    online = [a for a in study.rl_arms if a in ONLINE_ARMS] if "rl" in study.parts else []
    if online and not config.rl.online.every:
        raise ConfigError(f"study.rl_arms has {online}: set rl.online.every > 0 (and the refresh's label budget, "
                          "rl.online.pairs)")
    if online and config.data.preferences and not study.judge:
        raise ConfigError(f"study.rl_arms has {online}: on your own data the online pairs are labelled by the judge; "
                          "set study.judge")
    check_own_data(config)
    run_dir = Path(config.run_dir).resolve()
    config = dataclasses.replace(config, run_dir=str(run_dir))
    study_dir = run_dir / "study"
    study_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    shared = own_data(config, study_dir) if config.data.preferences else prepare(config)
    save_config(config, study_dir)
    ensure_ray()
    t_recipe = time.perf_counter()
    name, recipe = select_recipe(config, study_dir, shared)
    recipe["seconds"] = round(time.perf_counter() - t_recipe, 1)
    config = with_recipe(config, name)
    seeds_dir = recipe_dir(study_dir, name)
    seeds: dict[int, dict] = {}
    from actors.study_parallel import SeedJob, run_jobs, seed_bundles

    def on_seed(job: SeedJob, result: dict) -> None:
        seeds[job.seed] = result
        write_claims(study_dir, claims(config, seeds))  # the table so far, after every seed

    t_seeds = time.perf_counter()
    seeds, slots = run_jobs([SeedJob(s, config, s, seeds_dir) for s in study.seeds], shared, run_seed, on_seed)
    parallel = {"slots": slots, "max_parallel": study.max_parallel, "rl_parallel": study.rl_parallel,
                "seed_bundles": seed_bundles(config), "seconds": round(time.perf_counter() - t_seeds, 1)}
    rows = claims(config, seeds)
    write_plots(seeds, study_dir)
    from actors.study_alarm import alarm_section

    alarm = alarm_section(config, seeds, seeds_dir, study_dir)  # calibrated on study.alarm_seeds, reported on the rest
    results = {"claims": rows, "seeds": seeds, "primary": list(study.primary), "recipe": recipe, "alarm": alarm,
               "parallel": parallel,
               "data": data_record(config, shared), "machine": M.machine(),
               "seeds_dir": str(seeds_dir), "seconds": round(time.perf_counter() - t0, 1)}
    write_claims(study_dir, rows)
    write_results(config, study_dir, results, report)
    return results
