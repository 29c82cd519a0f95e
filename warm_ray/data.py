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
        if "gold_chosen" in r or "gold_rejected" in r:  # a user's pairs may have no gold scores
            r["gold_chosen"], r["gold_rejected"] = r.get("gold_rejected"), r.get("gold_chosen")
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
    """A user's UTF-8 file as text, without a leading byte-order mark (U+FEFF)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    return text.removeprefix("\ufeff")


def _lines(text: str) -> list[str]:
    """Lines as users write them: split on "\\n" only, one trailing "\\r" dropped (CRLF reads as LF).
    Not ``str.splitlines``: a form feed, U+2028 or U+0085 inside a line (valid raw in a JSON string)
    is text, not a line break."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for lineno, line in enumerate(_lines(_read_text(path)), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {lineno} (row {len(rows)}): invalid JSON: {e.msg}") from None
    return rows


def _read_datasets_dir(path: Path) -> dict[str, list[dict]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"{path}: not a saved datasets dir ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if isinstance(ds, datasets.DatasetDict):
        return {name: ds[name].to_list() for name in ds}
    return {"": ds.to_list()}


def _read_hub(name: str) -> dict[str, list[dict]]:
    import datasets

    try:
        ds = datasets.load_dataset(name)
    except Exception as e:  # offline, unknown id, no access: all the same to the user
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(f"{name}: not a local file or dir, and the hub dataset could not be loaded "
                        f"({type(e).__name__}: {first})") from None
    return {split: ds[split].to_list() for split in ds}


def _read_source(source: str | Path) -> dict[str, list[dict]]:
    path = Path(source).expanduser()
    if not path.exists():
        if "/" in str(source) and not str(source).startswith((".", "/", "~")):
            return _read_hub(str(source))
        raise DataError(f"preference data {path} does not exist")
    if path.is_dir():
        return _read_datasets_dir(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    if path.suffix == ".jsonl":
        return {"": _read_jsonl(path)}
    if path.suffix == ".json":
        try:
            data = json.loads(_read_text(path))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}") from None
        if isinstance(data, list):
            return {"": data}
        if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
            return dict(data)
        raise DataError(f"{path}: expected a list of rows (or an object of splits, each a list), "
                        f"got {type(data).__name__}")
    if path.suffix == ".parquet":
        import pyarrow
        import pyarrow.parquet as pq

        try:
            return {"": pq.read_table(str(path)).to_pylist()}
        except (pyarrow.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: not a readable parquet file ({e})") from None
    raise DataError(f"{path}: unsupported format {path.suffix!r}; use .jsonl, .json, .parquet or a datasets dir")


def read_preference_source(source: str | Path) -> dict[str, list[dict]]:
    """Raw rows of a preference source, by split name ("" for a source without splits): a .jsonl /
    .json (a list of rows, or an object of splits) / .parquet file, a saved ``datasets`` dir
    (Dataset or DatasetDict), or a hub dataset id where a hub is reachable."""
    by_split = _read_source(source)
    if not any(by_split.values()):
        raise DataError(f"{source}: no rows")
    return by_split


# ------------------------------------------------------------------------------------------
# TRL's preference layouts -> the standard one (prompt, chosen, rejected as strings)
# ------------------------------------------------------------------------------------------

# split names a preference dataset may use for the splits warm-ray needs
SPLIT_NAMES = {
    "selection": ("selection", "validation", "valid", "dev", "eval"),
    "test_id": ("test_id", "test"),
    "test_ood": ("test_ood", "ood"),
}
# a chat template for tokenizers without one: one "role: content" line per message
PLAIN_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                       "{% if add_generation_prompt %}assistant: {% endif %}")

# what a chat template may raise while it renders: Jinja's own errors (syntax, undefined names,
# raise_exception, the sandbox refusing an unsafe attribute) and the Python errors of its expressions
TEMPLATE_ERRORS = (TypeError, ValueError, ArithmeticError, LookupError, AttributeError, RecursionError)
# the conversation a user's template must render before any data is read
SAMPLE_CONVERSATION = ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."})


def template_error(e: BaseException) -> str:
    """A chat template's error on one line: its type, message and the template line when known."""
    text = " ".join(str(e).split()) or "(no message)"
    line = getattr(e, "lineno", None)
    return f"{type(e).__name__}: {text[:300]}" + (f" (template line {line})" if line else "")


def chat_renderer(tokenizer, template: str = "", where: str = "the tokenizer", key: str = "data.chat_template"):
    """``render(messages, add_generation_prompt) -> text`` with ``tokenizer``'s chat template; a
    tokenizer without one uses ``template`` ("plain": ``PLAIN_CHAT_TEMPLATE``, or a Jinja template,
    the value of config key ``key``); with neither, rendering raises a DataError naming ``where``.

    A template that fails while rendering (a syntax error, ``raise_exception``, an undefined name, the
    sandbox refusing an attribute, a TypeError) is a one-line DataError naming the template and Jinja's
    message (the caller adds the file and row). The user's own template is tried on
    ``SAMPLE_CONVERSATION`` here, so a broken one fails before any data is read; a tokenizer's own
    template is not (a template may rightly refuse that sample, e.g. one that needs a system message)."""
    import jinja2

    own = bool(getattr(tokenizer, "chat_template", None))
    fallback = PLAIN_CHAT_TEMPLATE if template == "plain" else (template or None)
    shown = template if len(template) <= 60 else template[:57] + "..."
    name = f"the chat template of {where}" if own else f"{key} = {shown!r}"

    def apply(messages: list[dict], add_generation_prompt: bool, what: str) -> str:
        try:
            text = tokenizer.apply_chat_template(messages, chat_template=None if own else fallback, tokenize=False,
                                                 add_generation_prompt=add_generation_prompt)
        except (jinja2.TemplateError, *TEMPLATE_ERRORS) as e:
            raise DataError(f"{name} cannot render {what}: {template_error(e)}") from None
        if not isinstance(text, str):
            raise DataError(f"{name} cannot render {what}: it gave {type(text).__name__}, not text")
        return text

    def render(messages: list[dict], add_generation_prompt: bool) -> str:
        if not own and fallback is None:
            raise DataError(f"{where} has no chat template, so chat messages cannot be rendered: use a tokenizer "
                            "with one, or set one (data.chat_template / policy.chat_template: 'plain' or a "
                            "Jinja template)")
        if not messages:
            return ""
        return apply(messages, add_generation_prompt, "these messages")

    if not own and fallback is not None and template != "plain":
        what = "a sample conversation (one user and one assistant message)"
        apply(list(SAMPLE_CONVERSATION[:1]), True, what)
        apply(list(SAMPLE_CONVERSATION), False, what)
    return render


def _messages(value, where: str, col: str) -> list[dict]:
    if not isinstance(value, list):
        raise DataError(f"{where}: column {col!r} must be a list of {{role, content}} messages like the other "
                        f"columns of this row, got {type(value).__name__}")
    for j, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: column {col!r}, message {j}: must be an object with string 'role' and "
                            f"'content', got {m!r}"[:300])
    return value


def _common_prefix_at_word(a: str, b: str) -> int:
    """Length of the longest common prefix of ``a`` and ``b``, cut back to a word boundary."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    while n > 0 and not a[n - 1].isspace():
        n -= 1
    return n


def standardise(rows: Sequence, source: str, render=None, identical: str = "skip") -> tuple[list[dict], int]:
    """Rows in any of TRL's preference layouts → (standard rows, number of rows skipped).

    Layouts: standard (``prompt``/``chosen``/``rejected`` strings), implicit prompt (``chosen`` and
    ``rejected`` strings that both start with the prompt: the common prefix, cut at a word, becomes
    the prompt), conversational (lists of ``{role, content}`` messages, with or without ``prompt``;
    without one the common leading messages are the prompt), rendered with ``render``
    (``chat_renderer``). Optional columns: ``gold_chosen``/``gold_rejected`` (finite numbers) and
    ``corrupted``. A pair whose chosen equals its rejected carries no preference: skipped and counted
    (``identical="skip"``) or an error. Errors name ``source`` and the row.
    """
    out, skipped = [], 0
    for i, row in enumerate(rows):
        where = f"{source}, row {i}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with chosen/rejected (and prompt), got {type(row).__name__}")
        for col in ("chosen", "rejected"):
            if col not in row:
                raise DataError(f"{where}: missing column {col!r} (columns present: {sorted(row)})")
        chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
        if isinstance(chosen, list) or isinstance(rejected, list) or isinstance(prompt, list):
            chosen, rejected = _messages(chosen, where, "chosen"), _messages(rejected, where, "rejected")
            if prompt is None:
                k = 0
                while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
                    k += 1
                prompt, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
            prompt = _messages(prompt, where, "prompt")
            if render is None:
                raise DataError(f"{where}: chat messages need a tokenizer to render them")
            try:
                head = render(prompt, True)
                full = [render(prompt + msgs, False) for msgs in (chosen, rejected)]
            except DataError as e:
                raise DataError(f"{where}: {e}") from None
            if all(f.startswith(head) for f in full):
                prompt, chosen, rejected = head, full[0][len(head):], full[1][len(head):]
            else:  # a template that renders the prompt differently inside a conversation
                prompt, chosen, rejected = "", full[0], full[1]
        else:
            for col, value in (("chosen", chosen), ("rejected", rejected), ("prompt", prompt)):
                if value is not None and not isinstance(value, str):
                    raise DataError(f"{where}: column {col!r} must be a string or a list of messages, "
                                    f"got {type(value).__name__}")
            if prompt is None:
                n = _common_prefix_at_word(chosen, rejected)
                prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
        if prompt + chosen == prompt + rejected:
            if identical == "error":
                raise DataError(f"{where}: 'chosen' and 'rejected' are the same text; a pair must differ")
            skipped += 1
            continue
        clean = {"prompt": prompt, "chosen": chosen, "rejected": rejected,
                 **{k: row[k] for k in ("gold_chosen", "gold_rejected", "corrupted") if row.get(k) is not None}}
        out.extend(validate_rows([clean], source, first_row=i))
    return out, skipped


def read_prompts(path: str | Path, render) -> list[str]:
    """Prompts of a .txt file (one per "\\n"-terminated line, blank lines skipped) or a .jsonl/.json
    file of rows with ``prompt`` (a string, or a list of ``{role, content}`` messages rendered with
    ``render``), or of bare strings."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    if path.suffix == ".txt":
        prompts = [line for line in _lines(_read_text(path)) if line.strip()]
    else:
        if path.suffix == ".jsonl":
            rows = _read_jsonl(path)
        else:
            try:
                rows = json.loads(_read_text(path))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}") from None
            if not isinstance(rows, list):
                raise DataError(f"{path}: expected a list of prompts, got {type(rows).__name__}")
        prompts = []
        for i, row in enumerate(rows):
            value = row.get("prompt") if isinstance(row, dict) else row
            if isinstance(row, dict) and "prompt" not in row:
                raise DataError(f"{path}, row {i}: missing column 'prompt' (columns present: {sorted(row)})")
            if isinstance(value, list):
                messages = _messages(value, f"{path}, row {i}", "prompt")
                if render is None:
                    raise DataError(f"{path}, row {i}: chat messages need a tokenizer to render them")
                try:
                    value = render(messages, True)
                except DataError as e:
                    raise DataError(f"{path}, row {i}: {e}") from None
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{path}, row {i}: a prompt must be a non-empty string or a list of messages, "
                                f"got {value!r}"[:200])
            prompts.append(value)
    if len(prompts) < 2:
        raise DataError(f"{path}: {len(prompts)} prompt(s); at least 2 are needed (some are held out for evaluation)")
    return prompts


def assign_splits(by_split: dict[str, list[dict]], source: str, train_split: str = "train",
                  selection_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0) -> dict[str, list[dict]]:
    """The data's own splits under warm-ray's names (``SPLIT_NAMES``), or a seeded split of the
    training rows by fraction for those it lacks: train / selection / test_id (+ test_ood if any)."""
    if "" in by_split:
        train, named = by_split[""], {}
    else:
        if train_split not in by_split:
            raise DataError(f"{source}: no split {train_split!r} to train on (splits: {sorted(by_split)}; "
                            "set data.train_split)")
        train = by_split[train_split]
        named = {ours: next((by_split[n] for n in names if n in by_split and n != train_split), None)
                 for ours, names in SPLIT_NAMES.items()}
    train = list(train)
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    out = {}
    for name, fraction in (("selection", selection_fraction), ("test_id", test_fraction)):
        if named.get(name) is not None:
            out[name] = list(named[name])
            continue
        k = max(1, round(fraction * len(train)))  # a share of all the pairs
        if len(order) - k < 1:
            raise DataError(f"{source}: {len(train)} pairs are too few to hold out a {name} split "
                            f"({fraction:g} of them) and keep any to train on")
        out[name], order = [train[j] for j in order[:k]], order[k:]
    out["train"] = [train[j] for j in sorted(order)]
    if named.get("test_ood") is not None:
        out["test_ood"] = list(named["test_ood"])
    return {k: out[k] for k in ("train", "selection", "test_id", "test_ood") if k in out}


def load_splits(data_dir: str | Path) -> dict[str, list[dict]]:
    """The prepared splits as lists of validated rows."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise DataError(f"prepared data {data_dir} does not exist: run `warm-ray prepare` first")
    splits = _read_saved_splits(data_dir)
    if splits is None:
        import datasets

        dd = datasets.load_from_disk(str(data_dir))
        splits = {s: dd[s].to_list() for s in dd}
    return {s: validate_rows(rows, f"{data_dir}[{s}]") for s, rows in splits.items()}


def _read_saved_splits(data_dir: Path) -> dict[str, list[dict]] | None:
    """The rows of a ``DatasetDict`` that ``save_to_disk`` wrote (``save_splits``), read with pyarrow.

    Each split is a dir of Arrow stream files, listed in its ``state.json``; ``load_from_disk``
    concatenates them. Reading them here spares a process (an RM trainer) the import of
    ``datasets`` and pandas, ~0.6 s of its start. None for any other layout: ``datasets`` reads it.
    """
    try:
        names = json.loads((data_dir / "dataset_dict.json").read_text())["splits"]
        files = {s: [f["filename"] for f in json.loads((data_dir / s / "state.json").read_text())["_data_files"]]
                 for s in names}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    import pyarrow as pa

    out = {}
    for s, filenames in files.items():
        out[s] = []
        for name in filenames:
            with pa.OSFile(str(data_dir / s / name)) as f:
                out[s] += pa.ipc.open_stream(f).read_all().to_pylist()
    return out


def save_splits(splits: dict[str, list[dict]], data_dir: str | Path) -> None:
    """Write a ``datasets.DatasetDict`` atomically."""
    import datasets

    from warm_ray.files import atomic_dir

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
