"""Corpus, prompts, gold-labelled preference pairs, label noise, ID/OOD splits, user data.

The benchmark (PAPERS.md, last section; Gao et al. 2022): a base LM samples two completions
per prompt, the gold reward scores them, the pair is labelled by the Bradley-Terry model of
those scores, and a fraction of training labels is flipped. Splits:

- ``train``: prompts from the in-distribution corpus, temperature T, label noise, ``corrupted`` flag;
- ``selection``: held-out prompts of the same corpus, same sampler, clean labels. The only split
  that selection (greedy soup, best member, early stopping) may read;
- ``test_id``: other held-out prompts of the same corpus, same sampler, clean labels: reporting only;
- ``test_ood``: prompts from other text (Moby-Dick) completed by a *drifted* sampler (hotter,
  rewarded for repeating itself and for positive words: where an RL policy drifts to), clean
  labels: reporting only.

Every split uses the usual preference layout: ``prompt``, ``chosen``, ``rejected``, plus
``gold_chosen``, ``gold_rejected`` and ``corrupted``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from warm_ray.gold import gold_rewards

ID_CORPUS = "sotu.txt"
OOD_CORPUS = "moby_dick.txt"
COLUMNS = ("prompt", "chosen", "rejected")
# splits that selection (greedy soup, best member, early stopping) must never read
TEST_SPLITS = ("test_id", "test_ood")

# Sentence ranges of the shipped in-distribution corpus (one sentence per line).
SELECTION_PROMPTS = slice(0, 500)  # never seen in LM training
TEST_PROMPTS = slice(500, 1000)  # never seen in LM training
EVAL_PROMPTS = slice(1000, 2000)  # RL evaluation prompts, never seen in LM training
LM_TEXT = slice(2000, None)  # base LM training text, and train / RL prompts


class DataError(ValueError):
    """Preference data that cannot be used, with the file and row that show it."""


def corpus(name: str = ID_CORPUS) -> list[str]:
    """Sentences of a shipped corpus (see corpus/SOURCE.md for origin and licence)."""
    text = resources.files("warm_ray").joinpath("corpus", name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def make_prompt(sentence: str, words: int) -> str:
    """The first ``words`` words of a sentence: the context a completion continues."""
    return " ".join(sentence.split()[:words])


def prompts_from(sentences: Sequence[str], words: int, k: int, rng: random.Random) -> list[str]:
    pool = [s for s in sentences if len(s.split()) > words]
    return [make_prompt(s, words) for s in rng.choices(pool, k=k)]


# ------------------------------------------------------------------------------------------
# Labelling
# ------------------------------------------------------------------------------------------


def bradley_terry_prob(gold_a: float, gold_b: float, beta: float) -> float:
    """P(a ≻ b) = σ(β (g_a - g_b))."""
    z = beta * (gold_a - gold_b)
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


def label_pairs(prompts: Sequence[str], completions: Sequence[Sequence[str]], beta: float,
                min_margin: float) -> list[dict]:
    """Score both completions with the gold reward; chosen = the Bradley-Terry favourite.

    Pairs whose gold scores differ by less than ``min_margin`` carry no reliable label and are
    dropped, as are pairs with an empty or identical completion.
    """
    flat = [c for pair in completions for c in pair[:2]]
    scores = gold_rewards(flat, [p for p in prompts for _ in range(2)])
    rows = []
    for i, prompt in enumerate(prompts):
        a, b = completions[i][0], completions[i][1]
        ga, gb = scores[2 * i], scores[2 * i + 1]
        if not a.strip() or not b.strip() or a == b or abs(ga - gb) < min_margin:
            continue
        if bradley_terry_prob(ga, gb, beta) >= 0.5:
            rows.append(dict(prompt=prompt, chosen=a, rejected=b, gold_chosen=ga, gold_rejected=gb))
        else:
            rows.append(dict(prompt=prompt, chosen=b, rejected=a, gold_chosen=gb, gold_rejected=ga))
    return rows


def _labelled(row: dict, flipped: bool) -> dict:
    """A copy of ``row`` with chosen/rejected (and their gold scores) swapped when ``flipped``."""
    r = dict(row)
    if flipped:
        r["chosen"], r["rejected"] = r["rejected"], r["chosen"]
        r["gold_chosen"], r["gold_rejected"] = r["gold_rejected"], r["gold_chosen"]
    return r


def corrupt(rows: list[dict], fraction: float, rng: random.Random) -> list[dict]:
    """Swap chosen/rejected in exactly round(fraction·N) rows, flagged ``corrupted`` (WARM Sec. 4)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"label_noise must be in [0, 1), got {fraction}")
    flip = set(rng.sample(range(len(rows)), round(fraction * len(rows))))
    return [{**_labelled(r, i in flip), "corrupted": i in flip} for i, r in enumerate(rows)]


def uncorrupt(rows: list[dict]) -> list[dict]:
    """Undo ``corrupt``: every row back to its gold label, flagged clean."""
    return [{**_labelled(r, bool(r.get("corrupted"))), "corrupted": False} for r in rows]


# ------------------------------------------------------------------------------------------
# Loading preference data (the prepared splits or a user's own)
# ------------------------------------------------------------------------------------------


def validate_rows(rows: Sequence[dict], source: str, first_row: int = 0) -> list[dict]:
    """Check every row has non-empty string prompt/chosen/rejected; fill optional columns.

    Errors name the source and the row (0-based index; for JSONL also the line number).
    """
    out = []
    for i, row in enumerate(rows):
        where = f"{source}, row {first_row + i}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with prompt/chosen/rejected, got {type(row).__name__}")
        for col in COLUMNS:
            if col not in row:
                raise DataError(f"{where}: missing column {col!r} (columns present: {sorted(row)})")
            value = row[col]
            if not isinstance(value, str):
                raise DataError(f"{where}: column {col!r} must be a string, got {type(value).__name__}")
            if col != "prompt" and not value.strip():
                raise DataError(f"{where}: column {col!r} is empty")
        if row["chosen"] == row["rejected"]:
            raise DataError(f"{where}: 'chosen' and 'rejected' are the same text; a pair must differ")
        corrupted = row.get("corrupted", False)
        if not isinstance(corrupted, bool):
            raise DataError(f"{where}: column 'corrupted' must be true/false, got {corrupted!r}")
        clean = dict(prompt=row["prompt"], chosen=row["chosen"], rejected=row["rejected"], corrupted=corrupted)
        for col in ("gold_chosen", "gold_rejected"):
            value = row.get(col)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise DataError(f"{where}: column {col!r} must be a number, got {type(value).__name__}")
            if value is not None and not math.isfinite(value):
                raise DataError(f"{where}: column {col!r} must be a finite number, got {value}")
            clean[col] = None if value is None else float(value)
        out.append(clean)
    return out


def check_train_split(rows: Sequence[dict], source: str) -> None:
    """A train split must have rows, and at least one whose label is not flagged corrupted."""
    if not rows:
        raise DataError(f"{source}: the train split is empty or missing")
    if all(r["corrupted"] for r in rows):
        raise DataError(f"{source}: every training label is flagged corrupted; nothing clean to learn")


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {lineno} (row {len(rows)}): invalid JSON: {e.msg}") from None
    return rows


def load_preferences(path: str | Path, split: str = "train") -> list[dict]:
    """Preference rows from JSONL/JSON, parquet, or a saved ``datasets`` dir (Dataset or DatasetDict)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"preference data {path} does not exist")
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{path}: no split {split!r} (splits: {list(ds)})")
            ds = ds[split]
        rows = ds.to_list()
    elif path.suffix in (".jsonl", ".json"):
        if path.suffix == ".json":
            try:
                data = json.loads(_read_text(path))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}") from None
            if not isinstance(data, (list, dict)):
                raise DataError(f"{path}: expected a list of rows (or an object of splits), got {type(data).__name__}")
            rows = data if isinstance(data, list) else data.get(split, [])
        else:
            rows = _read_jsonl(path)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        import pyarrow

        try:
            rows = pq.read_table(str(path)).to_pylist()
        except pyarrow.ArrowInvalid as e:
            raise DataError(f"{path}: not a readable parquet file ({e})") from None
    else:
        raise DataError(f"{path}: unsupported format {path.suffix!r}; use .jsonl, .json, .parquet or a datasets dir")
    if not rows:
        raise DataError(f"{path}: no rows")
    return validate_rows(rows, str(path))


def load_splits(data_dir: str | Path) -> dict[str, list[dict]]:
    """The prepared splits as lists of validated rows."""
    import datasets

    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise DataError(f"prepared data {data_dir} does not exist: run `warm-ray prepare` first")
    dd = datasets.load_from_disk(str(data_dir))
    return {s: validate_rows(dd[s].to_list(), f"{data_dir}[{s}]") for s in dd}


def save_splits(splits: dict[str, list[dict]], data_dir: str | Path) -> None:
    """Write a ``datasets.DatasetDict`` atomically."""
    import datasets

    from warm_ray.models import atomic_dir

    features = datasets.Features({
        "prompt": datasets.Value("string"), "chosen": datasets.Value("string"),
        "rejected": datasets.Value("string"), "gold_chosen": datasets.Value("float64"),
        "gold_rejected": datasets.Value("float64"), "corrupted": datasets.Value("bool"),
    })
    # an explicit schema keeps even an empty split loadable
    dd = datasets.DatasetDict({
        k: datasets.Dataset.from_dict({c: [r.get(c) for r in v] for c in features}, features=features)
        for k, v in splits.items() if v  # datasets cannot load an empty saved split back
    })
    with atomic_dir(data_dir) as tmp:
        dd.save_to_disk(str(tmp))
