"""`warm-ray study` on the user's own preference data: what it can run there, the data, its labels and judge.

On the user's pairs the study runs its rm part (memorisation of label noise injected anew per seed, ID and
OOD accuracy, the members' linear mode connectivity) and, with a judge that plays gold (``study.judge``,
``warm_ray.judge``), its bon part on the user's policy and prompts. ``check_own_data`` refuses, before any
work, what it cannot do there; ``own_data`` reads the pairs once (relabelled by the judge with
``study.labels: judge``) and resolves the judge, policy and prompts; ``data_record`` is the report's line.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from warm_ray import data as D
from warm_ray import files
from warm_ray import models as M
from warm_ray import rundir
from warm_ray.config import Config

log = logging.getLogger("warm_ray.study")


def label_noise(config: Config) -> float:
    """The share of training labels each seed flips anew: ``study.label_noise``, else the benchmark's."""
    return config.prepare.label_noise if config.study.label_noise is None else config.study.label_noise


# the part a claim's numbers come from, by the start of its name (the rest are the rm part's)
CLAIM_PARTS = {"BoN": "bon", "RL": "rl", "WARP": "warp"}


def check_own_data(config: Config) -> None:
    """Before any work: on the user's preference data the study runs its rm part, and its bon part with a
    judge (``study.judge``: the reward model that plays gold) and the user's prompts; RL and WARP judge
    policies by the benchmark's gold reward. A setting it would not read is refused."""
    from warm_ray.config import ConfigError

    study, policy = config.study, config.policy
    own_policy = [(k, v) for k, v in (("policy.model", policy.model), ("policy.prompts", policy.prompts),
                                      ("policy.reward_model", policy.reward_model)) if v]
    if not config.data.preferences:
        if study.judge:
            raise ConfigError(f"study.judge = {study.judge!r}: a judge plays gold on your own data (data.preferences); "
                              "the benchmark has its own gold reward")
        if own_policy:
            raise ConfigError(f"{own_policy[0][0]} = {own_policy[0][1]!r}: the study's bon, rl and warp parts judge "
                              "policies by the benchmark's gold reward; on your own preference data "
                              "(data.preferences) it runs its rm part, and its bon part with study.judge")
        return
    beyond = [p for p in study.parts if p not in ("rm", "bon")]
    if beyond:
        raise ConfigError(f"study.parts = {study.parts}: on your own data (data.preferences) the study runs its rm "
                          f"part, and its bon part with study.judge; {', '.join(beyond)} judge RL policies by the "
                          "benchmark's gold reward: set study.parts to [rm] or [rm, bon]")
    bon = "bon" in study.parts
    if bon and not study.judge:
        raise ConfigError(f"study.parts = {study.parts}: Best-of-N on your own data needs a judge that plays gold: "
                          "set study.judge (a reward-model dir, a warm-ray run dir or 'benchmark'), or "
                          "study.parts=[rm]")
    if bon and not policy.prompts:
        raise ConfigError("policy.prompts = '': Best-of-N on your own data samples your prompts: set policy.prompts "
                          "(a .txt/.jsonl prompt file)")
    if policy.reward_model or (not bon and own_policy):
        key, value = next((k, v) for k, v in own_policy if k == "policy.reward_model" or not bon)
        raise ConfigError(f"{key} = {value!r}: is not read by the study on your own data (its reward models are the "
                          "members it trains; policy.model and policy.prompts are read by its bon part)")
    if config.warm.featurizer == "policy" and not config.warm.inits:
        raise ConfigError("warm.featurizer = 'policy': on your own data (data.preferences) the members start from "
                          "your RM init: set warm.featurizer (a Hugging Face dir, a hub id or 'minilm') or warm.inits")
    if study.judge:  # a judge that is not a reward model, or is a proxy's init: refused before any work
        from warm_ray import judge as J
        from warm_ray.sources import featurizer_dirs

        J.check_not_proxy(J.Judge.load(study.judge, config.warm.max_length), featurizer_dirs(config), config.run_dir,
                          "warm.inits" if config.warm.inits else "warm.featurizer")
    allowed = ("rm", "bon") if bon else ("rm",)
    untestable = [c for c in study.primary if CLAIM_PARTS.get(c.split(" ")[0], "rm") not in allowed]
    if untestable:
        part = CLAIM_PARTS[untestable[0].split(' ')[0]]
        raise ConfigError(f"study.primary: {untestable[0]!r} needs the {part} part, which this study does not run on "
                          f"your own data; declare claims of the {' and '.join(allowed)} part "
                          "(`warm-ray study --list-claims`)")


def own_data(config: Config, study_dir: Path) -> dict:
    """The user's splits (``sources.preferences``: named splits, or cut by seeded fractions), read and
    checked once, in ``study_dir/data``; with ``study.labels: judge`` every pair ordered by the judge, in
    ``study_dir/judge_labels``; every seed flips its own share of the training labels. With a judge, the
    policy and prompts of the bon part are resolved here too, before any work."""
    from warm_ray import judge as J
    from warm_ray.sources import featurizer_dirs, policy_source, preferences

    study = config.study
    inits = featurizer_dirs(config)
    prefs = preferences(dataclasses.replace(config, run_dir=str(study_dir)), M.load_tokenizer(inits[-1]),
                        f"the RM init {inits[-1]}")
    shared = {"data": prefs.data_dir, "own_data": prefs.origin, "data_fingerprint": prefs.fingerprint,
              "labels": "data", "judge": None}
    if study.judge:
        judge = J.Judge.load(study.judge, config.warm.max_length, config.warm.eval_batch_size)  # checked before
        sample = [r["prompt"] + r[c] for r in prefs.splits["train"][:1000] for c in ("chosen", "rejected")]
        J.check_reads(judge, sample, prefs.origin)
        record = {"judge": study.judge, "describe": judge.describe(), "fingerprint": judge.fingerprint(),
                  "labels": study.labels}
        if study.labels == "judge":
            splits, counts = J.relabel(prefs.splits, judge)
            data_dir = study_dir / "judge_labels"
            D.save_splits(splits, data_dir)
            record["reversed"] = counts
            shared.update(data=str(data_dir), labels="judge", data_fingerprint=rundir.fingerprint(
                {"data": prefs.fingerprint, "judge": record["fingerprint"]}))
            log.info("study: pairs relabelled by the judge %s: %s", judge.describe(), ", ".join(
                f"{k} {c['reversed']}/{c['pairs']} reversed" for k, c in counts.items()))
        files.atomic_write_json(study_dir / "judge.json", record)
        shared.update(judge=judge, judge_fingerprint=record["fingerprint"])
        if "bon" in study.parts:
            if not config.policy.model:  # the benchmark's tiny SFT policy, prepared once in the run dir
                from warm_ray.prepare import prepare

                prepare(config)
            policy = policy_source(config)
            shared.update(policy=policy.sft_dir, eval_prompts=policy.prompts["eval"],
                          policy_fingerprint=policy.fingerprint)
    log.info("study on your own data %s: %s pairs (labels: %s); %.0f%% of training labels flipped anew per seed",
             prefs.origin, ", ".join(f"{k} {len(v)}" for k, v in prefs.splits.items()), shared["labels"],
             100 * label_noise(config))
    return shared


def data_record(config: Config, shared: dict) -> dict:
    """Where the pairs and their labels come from, who judges, and the noise injected per seed (the report)."""
    rec = {"preferences": shared.get("own_data") or "the warm-ray benchmark", "label_noise": label_noise(config),
           "labels": shared.get("labels", "gold reward (benchmark)"),
           "judge": "the benchmark's gold reward" if not config.data.preferences else None}
    judge = shared.get("judge")
    if judge is not None:
        rec["judge"] = judge.describe()
        saved = rundir.read_json(Path(config.run_dir) / "study" / "judge.json") or {}
        if "reversed" in saved:
            rec["reversed"] = saved["reversed"]
    return rec
