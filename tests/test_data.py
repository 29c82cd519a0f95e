import json
import random
from pathlib import Path

import pytest

from warm_ray import data as D
from warm_ray.gold import EMPTY_GOLD, gold_reward, repetition


def test_gold_reward_is_deterministic_and_penalises_degenerate_text():
    assert gold_reward("the nation is great and strong", "We") > 0.5
    assert gold_reward("war and crisis and death", "We") < 0.0
    # positive words repeated, or strung together without grammar, score below fluent text
    assert gold_reward("great great great great", "We") < gold_reward("a great and good nation", "We")
    assert gold_reward("happy love joy great wonderful", "We") < gold_reward("are happy with the great work", "We")
    assert repetition("a a a a") == pytest.approx(2 / 3)  # no content words; 2 of 3 word bigrams repeat
    assert repetition("nation nation nation nation") > 1.0
    assert gold_reward("peace", "We") == gold_reward("peace", "We")
    assert gold_reward("", "We") == EMPTY_GOLD


def test_gold_reward_is_dense_and_not_monotone_in_length():
    sentences = D.corpus()[2000:2600]
    rng = random.Random(0)
    # two different corpus continuations of one prompt, cut to random lengths
    scores = []
    for s in sentences:
        ws = s.split()
        if len(ws) < 8:
            continue
        prompt, rest = " ".join(ws[:4]), ws[4:]
        a = " " + " ".join(rest[: rng.randint(1, len(rest))])
        b = " " + " ".join(rng.sample(rest, k=min(len(rest), rng.randint(1, 8))))
        if a != b:
            scores.append((gold_reward(a, prompt), gold_reward(b, prompt), len(a.split()), len(b.split())))
    ties = sum(ga == gb for ga, gb, _, _ in scores) / len(scores)
    assert ties < 0.02, ties
    import numpy as np

    golds = [g for ga, gb, _, _ in scores for g in (ga, gb)]
    lengths = [n for _, _, la, lb in scores for n in (la, lb)]
    assert abs(np.corrcoef(golds, lengths)[0, 1]) < 0.5


def test_prepare_gives_labelled_splits(prepared):
    cfg, summary = prepared
    splits = D.load_splits(summary["data"])
    assert set(splits) == {"train", "selection", "test_id", "test_ood"}
    for name, rows in splits.items():
        assert rows, name
        for col in ("prompt", "chosen", "rejected", "gold_chosen", "gold_rejected", "corrupted"):
            assert col in rows[0], (name, col)
    train = splits["train"]
    assert len(train) == cfg.prepare.n_train
    rate = sum(r["corrupted"] for r in train) / len(train)
    assert abs(rate - cfg.prepare.label_noise) < 0.02
    # labels follow the gold reward on clean rows, and are flipped on corrupted rows
    assert all(r["gold_chosen"] > r["gold_rejected"] for r in train if not r["corrupted"])
    assert all(r["gold_chosen"] < r["gold_rejected"] for r in train if r["corrupted"])
    assert not any(r["corrupted"] for r in splits["selection"] + splits["test_id"] + splits["test_ood"])
    # OOD prompts come from other text than ID prompts; selection and test prompts are disjoint
    assert {r["prompt"] for r in splits["test_ood"]}.isdisjoint({r["prompt"] for r in train})
    assert {r["prompt"] for r in splits["selection"]}.isdisjoint({r["prompt"] for r in splits["test_id"]})
    # gold is dense: no pair of the evaluation splits ties
    assert all(r["gold_chosen"] != r["gold_rejected"] for r in splits["test_id"] + splits["test_ood"])
    # paths in the summary are absolute: later stages work from any working directory
    assert all(Path(p).is_absolute() for p in (summary["data"], summary["policy"], summary["prompts"]))
    assert len(summary["checkpoints"]) == 3
    prompts = json.loads(open(summary["prompts"]).read())
    assert prompts["eval"] and prompts["train"]


def test_saved_splits_load_as_datasets_loads_them(tmp_path):
    """load_splits reads save_splits' Arrow files itself: the rows ``datasets`` reads, in order."""
    import datasets

    rows = {
        "train": [dict(prompt="p", chosen=f"a{i}", rejected=f"b{i}", gold_chosen=i / 3, gold_rejected=None,
                       corrupted=i % 2 == 0) for i in range(5)],
        "test_ood": [dict(prompt="q", chosen="c", rejected="d", gold_chosen=1.0, gold_rejected=-2.5, corrupted=False)],
    }
    D.save_splits(rows, tmp_path / "data")
    dd = datasets.load_from_disk(str(tmp_path / "data"))
    expected = {s: D.validate_rows(dd[s].to_list(), s) for s in dd}
    assert D.load_splits(tmp_path / "data") == expected
    assert list(expected) == ["train", "test_ood"] and expected["train"][1]["gold_rejected"] is None
    with pytest.raises(FileNotFoundError):  # not a saved DatasetDict: datasets says why
        D.load_splits(tmp_path)


def test_corrupt_flips_exact_fraction():
    rows = [dict(prompt="p", chosen=f"a{i}", rejected=f"b{i}", gold_chosen=1.0, gold_rejected=0.0) for i in range(100)]
    out = D.corrupt(rows, 0.25, random.Random(0))
    assert sum(r["corrupted"] for r in out) == 25
    for r, o in zip(rows, out):
        assert (o["chosen"] == r["rejected"]) == o["corrupted"]


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def _read(path, split: str = "") -> list[dict]:
    """One split of a preference file ("": a file without splits), read as `warm-ray warm` reads
    user data: ``read_preference_source``, then ``standardise``."""
    return D.standardise(D.read_preference_source(path)[split], str(path))[0]


def test_user_data_loads_from_jsonl_parquet_and_datasets(tmp_path):
    import datasets

    rows = [{"prompt": "Q", "chosen": "good", "rejected": "bad"}, {"prompt": "R", "chosen": "x", "rejected": "y"}]
    _write_jsonl(tmp_path / "p.jsonl", rows)
    assert [r["chosen"] for r in _read(tmp_path / "p.jsonl")] == ["good", "x"]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "p.parquet"))
    assert len(_read(tmp_path / "p.parquet")) == 2
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dd"))
    assert _read(tmp_path / "dd", "train")[1]["rejected"] == "y"


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"prompt": "Q", "chosen": "good"}, r"row 1: missing column 'rejected'"),
        ({"prompt": "Q", "chosen": "", "rejected": "bad"}, r"row 1: column 'chosen' is empty"),
        ({"prompt": "Q", "chosen": 3, "rejected": "bad"}, r"row 1: column 'chosen' must be a string"),
    ],
)
def test_malformed_rows_name_file_and_row(tmp_path, bad, match):
    path = tmp_path / "bad.jsonl"
    _write_jsonl(path, [{"prompt": "Q", "chosen": "good", "rejected": "bad"}, bad])
    with pytest.raises(D.DataError, match=match) as e:
        _read(path)
    assert "bad.jsonl" in str(e.value)


def test_invalid_json_line_is_named(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "Q", "chosen": "a", "rejected": "b"}\n{"prompt": \n')
    with pytest.raises(D.DataError, match=r"broken.jsonl, line 2"):
        _read(path)


def test_uncorrupt_inverts_corrupt():
    rows = [dict(prompt="p", chosen=f"a{i}", rejected=f"b{i}", gold_chosen=1.0, gold_rejected=0.0) for i in range(40)]
    flipped = D.corrupt(rows, 0.25, random.Random(1))
    back = D.uncorrupt(flipped)
    assert [(r["chosen"], r["rejected"]) for r in back] == [(r["chosen"], r["rejected"]) for r in rows]
    assert not any(r["corrupted"] for r in back)


# valid raw in a JSON string, but line breaks to str.splitlines (a raw form feed or \x1c-\x1e is
# a control character, which JSON requires escaped)
_BREAKS = "\u2028\u2029\x85"


def test_jsonl_splits_rows_on_newline_only(tmp_path):
    """A raw U+2028 / U+2029 / U+0085 inside a JSON string stays in the text and in its row."""
    rows = [{"prompt": "Q", "chosen": f"good{_BREAKS}text", "rejected": "bad"},
            {"prompt": "R\u2028S", "chosen": "x", "rejected": "y"}]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    assert _BREAKS in path.read_text(encoding="utf-8")  # written raw, not escaped
    got = _read(path)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in got] == [
        ("Q", f"good{_BREAKS}text", "bad"), ("R\u2028S", "x", "y")]
    # line numbers count "\n" only: the broken row is on line 4 (line 3 blank), row 2
    path.write_text(path.read_text(encoding="utf-8") + '\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(D.DataError, match=r"p.jsonl, line 4 \(row 2\): invalid JSON"):
        _read(path)
    # a raw form feed in a string is invalid JSON, named at its own line (not one splitlines made)
    path.write_text('{"prompt": "Q", "chosen": "a\u2028b", "rejected": "c"}\n{"prompt": "a\x0cb"}\n', encoding="utf-8")
    with pytest.raises(D.DataError, match=r"p.jsonl, line 2 \(row 1\): invalid JSON: Invalid control character"):
        _read(path)


def test_prompt_txt_keeps_form_feed_and_drops_bom(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffFirst\x0cpart\n\nSecond\u2028prompt\x85end\n".encode())
    assert D.read_prompts(path, None) == ["First\x0cpart", "Second\u2028prompt\x85end"]


def test_crlf_and_bom_files_read_as_lf(tmp_path):
    """CRLF line ends, with or without a UTF-8 BOM, read as the LF file does, in every text format."""
    rows = [{"prompt": "Q", "chosen": "good\u2028text", "rejected": "bad"}, {"prompt": "R", "chosen": "x", "rejected": "y"}]
    lf = {"jsonl": "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
          "json": json.dumps(rows, ensure_ascii=False, indent=1) + "\n", "txt": "First\x0cprompt\n\nSecond\n"}
    for name, head, end in (("lf", "", "\n"), ("crlf", "", "\r\n"), ("bom", "\ufeff", "\r\n")):
        for ext, text in lf.items():
            (tmp_path / f"{name}.{ext}").write_bytes((head + text.replace("\n", end)).encode())
        assert _read(tmp_path / f"{name}.jsonl")[0]["chosen"] == "good\u2028text", name
        assert _read(tmp_path / f"{name}.jsonl") == _read(tmp_path / f"{name}.json") == _read(tmp_path / "lf.jsonl"), name
        assert D.read_prompts(tmp_path / f"{name}.jsonl", None) == ["Q", "R"], name
        assert D.read_prompts(tmp_path / f"{name}.txt", None) == ["First\x0cprompt", "Second"], name
