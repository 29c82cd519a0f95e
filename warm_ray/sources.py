"""Where each stage's inputs come from: the prepared benchmark, or the user's own data and models.

Every stage asks here, never another stage's files directly:

- ``preferences(config, tokenizer)``: the preference splits `warm-ray warm` trains and reports on.
  ``data.preferences`` empty: the benchmark `warm-ray prepare` built (gold-labelled, label noise,
  OOD split). Otherwise the user's pairs (a file, a saved ``datasets`` dir or a hub id, in any of
  TRL's layouts, ``warm_ray.data.standardise``), split by their own split names or by fraction,
  written once to ``<run_dir>/data`` (the directory the trainer actors read) under the fingerprint
  of their content.
- ``policy_source(config)``: the SFT policy and the train / eval prompts of `warm-ray rl` and
  `warm-ray warp` (``policy.model``, ``policy.prompts``; empty: the benchmark's). The gold reward
  is watched only on the benchmark's prompts: it is the benchmark's ground truth, not the user's.
- ``reward_source(config)``: the reward models RL is rewarded by (``policy.reward_model``): this
  run dir's warm stage, another run's, or one sequence-classification RM dir.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from warm_ray import files
from warm_ray import rundir
from warm_ray.config import Config, UserError
from warm_ray.data import (
    DataError,
    assign_splits,
    chat_renderer,
    check_train_split,
    load_splits,
    read_prompts,
    read_preference_source,
    save_splits,
    standardise,
)

log = logging.getLogger("warm_ray.sources")

DATA_RECORD = "data.json"

# the entries of prepare.json that name files: relative to the run dir (``files.portable``), or absolute
# for an input from outside it (``prepare.base_model``)
PREPARED_PATHS = ("tokenizer", "checkpoints", "policy", "data", "prompts")


def prepared_summary(run_dir: str | Path, needed_for: str = "") -> dict:
    """``<run_dir>/prepare/prepare.json``: what `warm-ray prepare` built (data, policy, prompts), its
    paths resolved against ``run_dir`` wherever it is now (``files.in_run_dir``)."""
    path = Path(run_dir) / "prepare" / "prepare.json"
    if not path.exists():
        hint = f" ({needed_for})" if needed_for else ""
        raise UserError(f"{path} not found{hint}: run `warm-ray prepare` with the same run_dir first")
    return files.resolved_paths(json.loads(path.read_text()), run_dir, PREPARED_PATHS)


def load_prompts(summary: dict) -> dict[str, list[str]]:
    """The prepared benchmark's prompts (``prompts.json`` of prepare): "train" and "eval"."""
    return json.loads(Path(summary["prompts"]).read_text())


def dir_fingerprint(path: str | Path, run_dir: str | Path | None = None) -> str:
    """A model dir by where it is and its files' names, sizes and modification times (cheap; a
    rewrite changes it). Where: its path relative to ``run_dir`` when it lies inside (a run dir moved
    or copied with ``mv`` or ``cp -a``, which keep modification times, keeps the fingerprints of its
    own dirs), else its absolute path. A hub id (no such local dir) is fingerprinted by its name."""
    path = Path(path)
    if not path.is_dir():
        return rundir.fingerprint({"id": str(path)})
    listing = sorted((str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns)
                     for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
    where = str(path.resolve()) if run_dir is None else files.portable(path, run_dir)
    return rundir.fingerprint({"dir": where, "files": listing})


def check_tokenizer(model_dir: str | Path, key: str):
    """The tokenizer of ``model_dir``, checked against the model: a tokenizer with more tokens than the
    model's vocabulary does not belong to it (ids past the embedding table fail mid-run)."""
    from transformers import AutoConfig

    from warm_ray.models import load_tokenizer

    try:
        tok = load_tokenizer(model_dir)
        cfg = AutoConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{key} = {str(model_dir)!r}: cannot load its tokenizer and config "
                        f"({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    vocab = getattr(cfg, "vocab_size", None) or getattr(getattr(cfg, "text_config", None), "vocab_size", None)
    if vocab is not None and len(tok) > vocab:
        raise UserError(f"{key} = {str(model_dir)!r}: its tokenizer has {len(tok)} tokens but the model's vocabulary "
                        f"has {vocab}: the tokenizer does not match the model")
    return tok


_VERIFIED: set[str] = set()  # dir fingerprints whose tokenizer check_tokenizer has passed


def verify_tokenizer(model_dir: str | Path, key: str) -> None:
    """``check_tokenizer`` once per model dir and content: RL asks for its sources many times a run
    (each run's fingerprint, the scorer, the comparison), and loading a tokenizer is not free."""
    fp = dir_fingerprint(model_dir)
    if fp not in _VERIFIED:
        check_tokenizer(model_dir, key)
        _VERIFIED.add(fp)


# ------------------------------------------------------------------------------------------
# Preference data (warm)
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preferences:
    """The splits `warm-ray warm` uses: train / selection / test_id, and test_ood when there is one."""

    data_dir: str  # a saved DatasetDict the trainer actors read
    fingerprint: str  # of the rows themselves: members retrain when it changes
    splits: dict[str, list[dict]]
    origin: str  # "benchmark", or the user's source
    skipped: int = 0  # pairs skipped (chosen == rejected)
    # per split, the pairs with a chosen or rejected text longer than warm.max_length tokens (the RM
    # sees them cut); None without a tokenizer to count with
    truncated: dict[str, int] | None = None


def benchmark_fingerprint(summary: dict) -> str:
    """The prepared data a member trains on: prepare's own fingerprint and the label flips of a study seed."""
    return rundir.fingerprint({k: summary.get(k) for k in ("fingerprint", "label_seed", "rows", "corruption_rate")})


def _standard_splits(source: str, by_split: dict[str, list], render, identical: str) -> tuple[dict, int]:
    out, skipped = {}, 0
    for name, rows in by_split.items():
        rows, n = standardise(rows, f"{source} [split {name}]" if name else source, render, identical)
        out[name], skipped = rows, skipped + n
    return out, skipped


def tokenizer_key(tokenizer, run_dir: str | Path | None = None) -> str:
    """What a tokenizer's token counts depend on, cheaply: its dir's fingerprint when it was loaded
    from a local dir (one inside ``run_dir`` by its path there), else its class, name and vocabulary."""
    name = str(getattr(tokenizer, "name_or_path", "") or "")
    if name and Path(name).is_dir():
        return dir_fingerprint(name, run_dir)
    vocab = hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()
    return rundir.fingerprint({"class": type(tokenizer).__name__, "name": name, "vocab": vocab})


def count_truncated(splits: dict[str, list[dict]], tokenizer, max_length: int, source: str,
                    known: dict | None = None, run_dir: str | Path | None = None) -> tuple[dict[str, int], dict]:
    """(per split, the pairs longer than ``max_length`` tokens; what the counts were taken at).

    ``known``: a data record that already holds the counts for this tokenizer and max_length (its
    ``truncated`` and ``truncated_at``): reused, nothing is tokenized. Each split with such pairs is
    one log line naming ``source``: the RM sees them cut (``warm_ray.reward.encode``)."""
    at = {"max_length": max_length, "tokenizer": tokenizer_key(tokenizer, run_dir)}
    known = known or {}
    counts = known.get("truncated")
    if known.get("truncated_at") != at or not isinstance(counts, dict) or set(counts) != set(splits):
        from warm_ray.reward import truncated_pairs

        counts = {name: truncated_pairs(tokenizer, rows, max_length) for name, rows in splits.items()}
    for name, n in counts.items():
        if n:
            log.warning("data: %d of %d %s pairs longer than warm.max_length=%d tokens, truncated (%s)",
                        n, len(splits[name]), name, max_length, source)
    return counts, at


def preferences(config: Config, tokenizer=None, tokenizer_name: str = "the RM tokenizer") -> Preferences:
    """The preference splits of this config (module docstring). ``tokenizer`` renders chat messages
    and counts the pairs longer than ``warm.max_length`` tokens (``count_truncated``; for the user's
    data the counts are kept in ``data.json``, and taken again only when the tokenizer or
    ``warm.max_length`` changes: the rows' fingerprint does not include them)."""
    d = config.data
    max_length = config.warm.max_length
    if not d.preferences:
        summary = prepared_summary(config.run_dir, "data.preferences is '': the prepared benchmark")
        splits = load_splits(summary["data"])
        check_train_split(splits.get("train", []), summary["data"])
        missing = [s for s in ("selection", "test_id", "test_ood") if not splits.get(s)]
        if missing:
            raise DataError(f"{summary['data']}: split(s) {missing} are empty or missing")
        truncated = None if tokenizer is None else count_truncated(splits, tokenizer, max_length, "the benchmark")[0]
        return Preferences(summary["data"], benchmark_fingerprint(summary), splits, "benchmark", truncated=truncated)

    render = None if tokenizer is None else chat_renderer(tokenizer, d.chat_template, tokenizer_name)
    standard, skipped = _standard_splits(d.preferences, read_preference_source(d.preferences), render, d.identical)
    if not any(standard.values()):
        raise DataError(f"{d.preferences}: no usable pairs ({skipped} skipped: chosen equals rejected)")
    splits = assign_splits(standard, d.preferences, d.train_split, d.selection_fraction, d.test_fraction,
                           d.split_seed)
    if d.max_train is not None:
        splits["train"] = splits["train"][:d.max_train]
    if d.ood:
        ood, n = _standard_splits(d.ood, read_preference_source(d.ood), render, d.identical)
        skipped += n
        splits["test_ood"] = [r for name in sorted(ood) for r in ood[name]]
    for name, rows in splits.items():
        if not rows:
            raise DataError(f"{d.ood if name == 'test_ood' and d.ood else d.preferences}: the {name} split has no "
                            "usable pairs")
    check_train_split(splits["train"], d.preferences)
    if skipped:
        log.warning("%s: %d pair(s) skipped: chosen and rejected are the same text (data.identical=skip)",
                    d.preferences, skipped)
    fp = rundir.fingerprint({"splits": hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()})
    data_dir = Path(config.run_dir) / "data"
    record = rundir.read_json(data_dir / DATA_RECORD) or {}
    same = record.get("fingerprint") == fp and (data_dir / "dataset_dict.json").exists()
    truncated = at = None
    if tokenizer is not None:
        truncated, at = count_truncated(splits, tokenizer, max_length, d.preferences, record if same else None,
                                        config.run_dir)
    if not same:
        save_splits(splits, data_dir)
        files.atomic_write_json(data_dir / DATA_RECORD, {
            "fingerprint": fp, "preferences": d.preferences, "ood": d.ood or None, "skipped_identical": skipped,
            "rows": {k: len(v) for k, v in splits.items()},
            **({"truncated": truncated, "truncated_at": at} if truncated is not None else {})})
        log.info("preference data %s: %s pairs written to %s", d.preferences,
                 ", ".join(f"{k} {len(v)}" for k, v in splits.items()), data_dir)
    elif truncated is not None and (record.get("truncated"), record.get("truncated_at")) != (truncated, at):
        # counted under another tokenizer or max_length: only the record changes, not the rows or
        # their fingerprint (members trained on them are kept)
        files.atomic_write_json(data_dir / DATA_RECORD, {**record, "truncated": truncated, "truncated_at": at})
    return Preferences(str(data_dir), fp, splits, d.preferences, skipped, truncated)


# ------------------------------------------------------------------------------------------
# Policy and prompts (rl, warp)
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicySource:
    sft_dir: str
    prompts: dict[str, list[str]]  # "train", "eval"
    fingerprint: str | None  # None: the prepared benchmark's (covered by prepare's fingerprint)
    gold: bool  # the benchmark's prompts: the gold reward is watched
    prompts_from: str = "the warm-ray benchmark"  # where the prompts come from (model cards)


_PROMPTS: dict[tuple, dict[str, list[str]]] = {}


def eval_count(n: int, eval_fraction: float) -> int:
    """How many of a prompt file's ``n`` prompts are held out for evaluation (at least 1, at most n - 1)."""
    return min(n - 1, max(1, round(eval_fraction * n)))


def prompt_split_sizes(path: str, eval_fraction: float) -> dict[str, int]:
    """{"train": ..., "eval": ...}: the sizes of a prompt file's split, read without a tokenizer (chat
    messages are counted, not rendered): for checks before any work."""
    from warm_ray.data import read_prompts

    n = len(read_prompts(path, lambda messages, generation: " ".join(str(m.get("content")) for m in messages)))
    k = eval_count(n, eval_fraction)
    return {"train": n - k, "eval": k}


def _user_prompts(path: str, sft_dir: str, template: str, eval_fraction: float, seed: int) -> dict[str, list[str]]:
    """A prompt file rendered with the policy's tokenizer and split into train / eval (seeded); read
    once per file content, tokenizer and split settings (a copy each call)."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size, dir_fingerprint(sft_dir), template,
           eval_fraction, seed)
    if key not in _PROMPTS:
        from warm_ray.models import load_tokenizer

        render = chat_renderer(load_tokenizer(sft_dir), template, f"the tokenizer of policy.model {sft_dir}",
                               "policy.chat_template")
        rows = read_prompts(path, render)
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        k = eval_count(len(rows), eval_fraction)
        _PROMPTS[key] = {"eval": [rows[i] for i in order[:k]], "train": [rows[i] for i in sorted(order[k:])]}
    return {split: list(rows) for split, rows in _PROMPTS[key].items()}


def policy_source(config: Config) -> PolicySource:
    p = config.policy
    summary = None
    if not p.model or not p.prompts:
        summary = prepared_summary(config.run_dir, "policy.model or policy.prompts is '': the prepared benchmark's")
    if not p.model:
        sft_dir = summary["policy"]
    else:
        from warm_ray.models import resolve_model_dir

        sft_dir = resolve_model_dir(p.model)
        verify_tokenizer(sft_dir, "policy.model")
    if not p.prompts:
        prompts = load_prompts(summary)
        prompt_fp = None
    else:
        prompts = _user_prompts(p.prompts, sft_dir, p.chat_template, p.eval_fraction, p.split_seed)
        prompt_fp = hashlib.sha256(json.dumps(prompts).encode()).hexdigest()
    fp = None if not p.model and not p.prompts else rundir.fingerprint({
        "policy": None if not p.model else dir_fingerprint(sft_dir, config.run_dir), "prompts": prompt_fp})
    return PolicySource(sft_dir, prompts, fp, gold=not p.prompts, prompts_from=p.prompts or "the warm-ray benchmark")


# ------------------------------------------------------------------------------------------
# Reward models (rl, warp)
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardSource:
    warm_dir: Path | None  # a warm stage's outputs (warm_rm/, members/): every reward mode
    rm_dir: Path | None  # one sequence-classification RM: reward mode "warm" only
    max_length: int  # RM truncation it was trained with
    run_dir: Path | None = None  # the run dir it is used from: an RM dir inside it is known by its relative path

    @property
    def fingerprint(self) -> str | None:
        if self.rm_dir is not None:
            return dir_fingerprint(self.rm_dir, self.run_dir)
        record = rundir.read_json(self.warm_dir / rundir.MARKER)
        return None if record is None else record.get("fingerprint")


def _trained_max_length(warm_dir: Path, default: int) -> int:
    """``warm.max_length`` a warm stage ran with (its config.yaml), else ``default``."""
    try:
        saved = yaml.safe_load((warm_dir / "config.yaml").read_text())
        return int(saved["warm"]["max_length"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return default


def reward_source(config: Config) -> RewardSource:
    r = config.policy.reward_model
    if not r:
        return RewardSource(Path(config.run_dir) / "warm", None, config.warm.max_length)
    path = Path(r).expanduser()
    for warm_dir in (path / "warm", path):
        if (warm_dir / "warm_rm").is_dir():
            same = warm_dir.resolve() == (Path(config.run_dir) / "warm").resolve()
            return RewardSource(warm_dir, None, config.warm.max_length if same
                                else _trained_max_length(warm_dir, config.warm.max_length))
    if (path / "config.json").is_file():
        verify_tokenizer(path, "policy.reward_model")
        return RewardSource(None, path, config.warm.max_length, Path(config.run_dir))
    raise UserError(f"policy.reward_model = {r!r}: no warm stage output (warm/warm_rm or warm_rm) and no "
                    "config.json: run `warm-ray warm` there first, or give a reward-model dir")


def featurizer_dirs(config: Config) -> list[str]:
    """Candidate featurizer inits (Baklava draws from them): ``warm.inits``, or prepare's checkpoints
    (``warm.featurizer: policy``), or one model dir / preset / hub id. Their tokenizers are checked
    against their models and against each other (members are averaged: one vocabulary)."""
    from warm_ray.models import resolve_model_dir

    cfg = config.warm
    if cfg.inits:
        inits = [resolve_model_dir(d) for d in cfg.inits]
    elif cfg.featurizer == "policy":
        inits = list(prepared_summary(config.run_dir, "warm.featurizer is 'policy': prepare's checkpoints")["checkpoints"])
    else:
        inits = [resolve_model_dir(cfg.featurizer)]
    key = "warm.inits" if cfg.inits else "warm.featurizer"
    vocabs = {d: check_tokenizer(d, key).get_vocab() for d in inits}
    if len({json.dumps(v, sort_keys=True) for v in vocabs.values()}) > 1:
        raise UserError(f"{key}: the inits {inits} have different tokenizers; members are averaged weight by weight, "
                        "so every init must share one tokenizer")
    return inits
