"""`warm-ray study` on the user's own preference data: what it can run there, the data, its labels and judge.

On the user's pairs the study runs its rm part (memorisation of label noise injected anew per seed, ID and
OOD accuracy, the members' linear mode connectivity) and, with a judge that plays gold (``study.judge``,
``warm_ray.judge``), its bon, rl and warp parts on the user's policy and prompts, the policies' samples
judged by the judge. ``check_own_data`` refuses, before any
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
    """Before any work: on the user's preference data the study runs its rm part, and its bon, rl and warp
    parts with a judge (``study.judge``: the reward model that plays gold) and the user's prompts. A setting
    it would not read is refused."""
    from warm_ray.config import ConfigError

    study, policy = config.study, config.policy
    own_policy = [(k, v) for k, v in (("policy.model", policy.model), ("policy.prompts", policy.prompts),
                                      ("policy.reward_model", policy.reward_model)) if v]
    if not config.data.preferences:
        if study.judge:
            raise ConfigError(f"study.judge = {study.judge!r}: a judge plays gold on your own data (data.preferences); "
                              "the benchmark has its own gold reward")
        if own_policy:
            raise ConfigError(f"{own_policy[0][0]} = {own_policy[0][1]!r}: on the benchmark the study's bon, rl and "
                              "warp parts judge its own policy by its gold reward; your policy and prompts are read "
                              "with your own preference data (data.preferences) and a judge (study.judge)")
        return
    judged = judged_parts(study)
    if judged and not study.judge:
        raise ConfigError(f"study.parts = {study.parts}: {', '.join(judged)} on your own data need a judge that "
                          "plays gold: set study.judge (a reward-model dir, a warm-ray run dir or 'benchmark'), or "
                          "study.parts=[rm]")
    if judged and not policy.prompts:
        raise ConfigError(f"policy.prompts = '': {', '.join(judged)} on your own data sample your prompts: set "
                          "policy.prompts (a .txt/.jsonl prompt file)")
    if policy.reward_model or (not judged and own_policy):
        key, value = next((k, v) for k, v in own_policy if k == "policy.reward_model" or not judged)
        raise ConfigError(f"{key} = {value!r}: is not read by the study on your own data (its reward models are the "
                          "members it trains; policy.model and policy.prompts are read by its bon, rl and warp parts)")
    if judged:
        check_prompt_counts(study, policy)
    if config.warm.featurizer == "policy" and not config.warm.inits:
        raise ConfigError("warm.featurizer = 'policy': on your own data (data.preferences) the members start from "
                          "your RM init: set warm.featurizer (a Hugging Face dir, a hub id or 'minilm') or warm.inits")
    if study.judge:  # a judge that is not a reward model, or is a proxy's init: refused before any work
        from warm_ray import judge as J
        from warm_ray.sources import featurizer_dirs

        J.check_not_proxy(J.Judge.load(study.judge, config.warm.max_length), featurizer_dirs(config), config.run_dir,
                          "warm.inits" if config.warm.inits else "warm.featurizer")
    allowed = ["rm", *judged]
    untestable = [c for c in study.primary if CLAIM_PARTS.get(c.split(" ")[0], "rm") not in allowed]
    if untestable:
        part = CLAIM_PARTS[untestable[0].split(' ')[0]]
        raise ConfigError(f"study.primary: {untestable[0]!r} needs the {part} part, which this study does not run "
                          f"(study.parts = {study.parts}); declare claims of the {', '.join(allowed)} part(s), or add "
                          f"{part} to study.parts (`warm-ray study --list-claims`)")


def judged_parts(study) -> list[str]:
    """The study's parts that judge a policy's samples (every one but rm)."""
    return [p for p in study.parts if p != "rm"]


def check_prompt_counts(study, policy) -> None:
    """The user's prompt split holds what the rl part draws from it: two disjoint held-out draws of
    ``study.eval_prompts`` and ``study.std_prompts`` training prompts for the standardisation samples."""
    from warm_ray.config import ConfigError
    from warm_ray.sources import prompt_split_sizes

    if not {"rl", "warp"} & set(study.parts):
        return
    source = policy.prompts
    prompts = prompt_split_sizes(source, policy.eval_fraction)
    if "rl" in study.parts and 2 * study.eval_prompts > prompts["eval"]:
        raise ConfigError(f"study.eval_prompts = {study.eval_prompts}: the rl part's two disjoint held-out draws need "
                          f"{2 * study.eval_prompts} held-out prompts, {source} has {prompts['eval']} (lower "
                          "study.eval_prompts, or give more prompts or a larger policy.eval_fraction)")
    if study.std_prompts > prompts["train"]:
        raise ConfigError(f"study.std_prompts = {study.std_prompts}: the rewards and the judge are standardised on SFT "
                          f"samples of that many training prompts, {source} has {prompts['train']} (lower it, or "
                          "give more prompts)")


def own_data(config: Config, study_dir: Path) -> dict:
    """The user's splits (``sources.preferences``: named splits, or cut by seeded fractions), read and
    checked once, in ``study_dir/data``; with ``study.labels: judge`` every pair ordered by the judge, in
    ``study_dir/judge_labels``; every seed flips its own share of the training labels. With a judge, the
    policy and prompts of the bon, rl and warp parts are resolved here too, before any work."""
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
        if judged_parts(study):  # the policy and its prompts, checked before the judge relabels anything
            if not config.policy.model:  # the benchmark's tiny SFT policy, prepared once in the run dir
                from warm_ray.prepare import prepare

                prepare(config)
            policy = policy_source(config)
            shared.update(policy=policy.sft_dir, eval_prompts=policy.prompts["eval"],
                          policy_fingerprint=policy.fingerprint)
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
