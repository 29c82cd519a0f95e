"""The judge: a reward model that plays gold in `warm-ray study` on the user's own data.

The benchmark has a gold reward no proxy ever trains on (``warm_ray.gold``); on the user's data the
study needs the same: a fixed scorer that is never trained, never a proxy's init, never merged into
one, and is only read to label pairs (``study.labels: judge``, the set-up of Gao et al. 2022) and to
judge what a policy samples (Best-of-N, the RL arms' held-out curves, WARP's fronts; ``JudgedGold``:
its score standardised once on the SFT policy's samples). ``study.judge`` names it:

- ``benchmark``: the shipped gold reward (``warm_ray.gold``), for data drawn like the benchmark's;
- a warm-ray run dir (or its ``warm/`` dir): the WARM RM a `warm-ray warm` run trained, e.g. on
  all clean pairs of the data (``configs/judge.yaml``);
- a Hugging Face sequence-classification dir with one label (any RM trained elsewhere).

Its scores are cached per text (prompt + completion), so a text judged once, in relabelling or in
a Best-of-N pool, is not judged again; ``stats`` says how many texts it scored, how many it found
in its cache and the seconds it took (the judge's share of the study's time).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from warm_ray.config import UserError

log = logging.getLogger("warm_ray.judge")

BENCHMARK = "benchmark"
KEY = "study.judge"
# a judge whose tokenizer cannot read the data (more of its tokens unknown than this) is refused
MAX_UNKNOWN = 0.05


def resolve(spec: str) -> tuple[str, int | None]:
    """(the RM dir the judge ``spec`` names, or ``benchmark``; the max_length it was trained with,
    None when unknown). A one-line ``UserError`` for anything that is not a one-label reward model."""
    if spec == BENCHMARK:
        return BENCHMARK, None
    path = Path(spec).expanduser()
    for warm_dir in (path / "warm", path):
        if (warm_dir / "warm_rm" / "config.json").is_file():
            from warm_ray.sources import _trained_max_length

            return str((warm_dir / "warm_rm").resolve()), _trained_max_length(warm_dir, 0) or None
    if not (path / "config.json").is_file():
        raise UserError(f"{KEY} = {spec!r}: no config.json there and no warm-ray WARM RM (warm/warm_rm): give a "
                        "sequence-classification RM dir, a warm-ray run dir or 'benchmark'")
    cfg = json.loads((path / "config.json").read_text())
    arch = (cfg.get("architectures") or ["?"])[0]
    if not arch.endswith("ForSequenceClassification"):
        kind = " (a causal LM)" if arch.endswith(("ForCausalLM", "LMHeadModel")) else ""
        raise UserError(f"{KEY} = {spec!r}: its model is a {arch}{kind}, not a reward model: the judge must be a "
                        "sequence-classification RM (one label), a warm-ray run dir or 'benchmark'")
    labels = cfg.get("num_labels", len(cfg.get("id2label") or {}) or 1)
    if labels != 1:
        raise UserError(f"{KEY} = {spec!r}: its classifier has {labels} labels; a reward model has 1")
    return str(path.resolve()), None


@dataclass
class Judge:
    """Scores of (prompt, completion) texts by the judge, cached per text."""

    spec: str
    rm_dir: str  # or BENCHMARK
    max_length: int
    batch_size: int = 128
    _cache: dict[str, float] = field(default_factory=dict, repr=False)
    _model: object = field(default=None, repr=False)
    stats: dict = field(default_factory=lambda: {"scored": 0, "cached": 0, "seconds": 0.0})

    @classmethod
    def load(cls, spec: str, max_length: int, batch_size: int = 128) -> Judge:
        rm_dir, trained = resolve(spec)
        if rm_dir != BENCHMARK:
            from warm_ray.sources import check_tokenizer

            check_tokenizer(rm_dir, KEY)
        return cls(spec, rm_dir, trained or max_length, batch_size)

    @property
    def is_benchmark(self) -> bool:
        return self.rm_dir == BENCHMARK

    def describe(self) -> str:
        if self.is_benchmark:
            return "the benchmark's gold reward (warm_ray.gold)"
        return f"{self.spec} (reward model {self.rm_dir}, max_length {self.max_length})"

    def fingerprint(self) -> str:
        from warm_ray import rundir
        from warm_ray.sources import dir_fingerprint

        return rundir.fingerprint({"judge": BENCHMARK if self.is_benchmark else dir_fingerprint(self.rm_dir),
                                   "max_length": self.max_length})

    def tokenizer(self):
        from warm_ray.models import load_tokenizer

        return None if self.is_benchmark else load_tokenizer(self.rm_dir)

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """The judge's score of each prompt + completion, in order; each distinct text scored once ever."""
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        todo = {}
        for i, t in enumerate(texts):
            if t not in self._cache:
                todo.setdefault(t, i)
        t0 = time.perf_counter()
        if todo:
            idx = list(todo.values())
            if self.is_benchmark:
                from warm_ray.gold import gold_rewards

                new = gold_rewards([completions[i] for i in idx], [prompts[i] for i in idx])
            else:
                new = self._rm_scores(list(todo))
            self._cache.update(zip(todo, (float(v) for v in new)))
        self.stats["scored"] += len(todo)
        self.stats["cached"] += len(texts) - len(todo)
        self.stats["seconds"] += time.perf_counter() - t0
        return [self._cache[t] for t in texts]

    def _rm_scores(self, texts: list[str]) -> list[float]:
        from warm_ray import models as M
        from warm_ray import reward as R

        if self._model is None:
            self._model = (M.load_reward_model(self.rm_dir), M.load_tokenizer(self.rm_dir))
        model, tok = self._model
        return R.score(model, tok, texts, self.max_length, self.batch_size).tolist()


def unknown_share(tokenizer, texts: Sequence[str]) -> float:
    """Share of the tokens of ``texts`` that ``tokenizer`` maps to its unknown token (0 without one)."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return 0.0
    total = hits = 0
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        total += len(ids)
        hits += sum(i == unk for i in ids)
    return hits / max(total, 1)


def check_reads(judge: Judge, texts: Sequence[str], source: str) -> None:
    """Refuse a judge whose tokenizer cannot read the data (a tokenizer of another language or domain:
    every text it cannot read it scores alike)."""
    tok = judge.tokenizer()
    if tok is None:
        return
    share = unknown_share(tok, texts)
    if share > MAX_UNKNOWN:
        raise UserError(f"{KEY} = {judge.spec!r}: its tokenizer reads {100 * share:.0f}% of the tokens of {source} as "
                        f"unknown ({tok.unk_token!r}; at most {100 * MAX_UNKNOWN:.0f}%): the judge's tokenizer does "
                        "not fit the data")


def _weights_digest(model_dir: str | Path) -> str:
    """sha256 over a model dir's weight files (a copy of a model under another name has the same)."""
    h = hashlib.sha256()
    for f in sorted(Path(model_dir).glob("*")):
        if f.suffix in (".safetensors", ".bin", ".pt") and f.is_file():
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
    return h.hexdigest()


def check_not_proxy(judge: Judge, init_dirs: Sequence[str], run_dir: str | Path, key: str = "warm.featurizer") -> None:
    """The judge is never a proxy: not an init of the members (the same dir, or the same weights under another
    name) and not a model of the study's own run dir (its members and WARM RMs are the proxies)."""
    if judge.is_benchmark:
        return
    mine = Path(judge.rm_dir).resolve()
    if mine.is_relative_to(Path(run_dir).resolve()):
        raise UserError(f"{KEY} = {judge.spec!r}: it lies inside the study's run dir {run_dir}, whose reward models "
                        "are the proxies; the judge plays gold and must come from elsewhere")
    digest = _weights_digest(mine)
    for d in init_dirs:
        if Path(d).resolve() == mine or _weights_digest(d) == digest:
            raise UserError(f"{KEY} = {judge.spec!r}: it is the proxies' init ({key} {d}); the judge plays gold "
                            "and must never be trained on or start a proxy: give the members another init")


def relabel(splits: dict[str, list[dict]], judge: Judge) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """Every pair ordered by the judge: chosen is the completion it scores higher (a tie keeps the data's
    order, and a row's own ``corrupted`` flag is dropped: the judge's order is the label); ``gold_chosen`` /
    ``gold_rejected`` become its scores. Returns the new splits and, per split,
    the pairs and how many the judge reversed."""
    from warm_ray.data import _labelled

    out, counts = {}, {}
    for name, rows in splits.items():
        prompts = [r["prompt"] for r in rows]
        chosen = judge.score(prompts, [r["chosen"] for r in rows])
        rejected = judge.score(prompts, [r["rejected"] for r in rows])
        new = []
        for r, c, j in zip(rows, chosen, rejected):
            r = {**r, "gold_chosen": c, "gold_rejected": j}
            new.append({**_labelled(r, j > c), "corrupted": False})
        out[name] = new
        counts[name] = {"pairs": len(rows), "reversed": sum(j > c for c, j in zip(chosen, rejected))}
    return out, counts


class JudgedGold:
    """The judge as the gold reward of a policy's samples: its score shifted to mean 0 and scaled to SD 1
    on the SFT policy's samples (``ref_prompts``, ``ref_completions``), so gold is in SDs of the SFT
    policy's judge score. Called like a reward, ``(prompts, completions) -> list[float]``; the standardisation
    is fixed at construction (never refit on a policy's samples)."""

    def __init__(self, judge: Judge, ref_prompts: Sequence[str], ref_completions: Sequence[str]):
        import numpy as np

        self.judge = judge
        before = dict(judge.stats)
        raw = np.asarray(judge.score(ref_prompts, ref_completions), dtype=np.float64)
        self.mean, self.sd = float(raw.mean()), max(float(raw.std()), 1e-12)
        self.samples = len(raw)
        self._before = before

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [(v - self.mean) / self.sd for v in self.judge.score(prompts, completions)]

    def fingerprint(self) -> str:
        """What its numbers depend on: the judge and the standardisation it was given."""
        from warm_ray import rundir

        return rundir.fingerprint({"judge": self.judge.fingerprint(), "mean": self.mean, "sd": self.sd})

    def record(self) -> dict:
        """The report's line: who judged, the SFT statistics, and the judge's work since construction."""
        return {"judge": self.judge.spec, "sft_mean": self.mean, "sft_sd": self.sd, "sft_samples": self.samples,
                **{k: round(self.judge.stats[k] - self._before[k], 3) for k in self.judge.stats}}
