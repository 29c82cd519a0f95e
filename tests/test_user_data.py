"""Bring your own data and models: TRL's preference layouts, the user's RM init, policy, prompts and
reward model, and outputs that plain transformers (and vLLM) load as they are."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_warm
from warm_ray import cli
from warm_ray.config import ConfigError, UserError, load_config
from warm_ray.data import DataError, assign_splits, chat_renderer, read_preference_source, read_prompts, standardise

TIMEOUT = 600


# ------------------------------------------------------------------------------------------
# Layouts, splits, prompts (no Ray)
# ------------------------------------------------------------------------------------------


def test_the_layouts_of_trl_become_one(prepared):
    from warm_ray.models import load_tokenizer

    render = chat_renderer(load_tokenizer(prepared[1]["policy"]))
    standard = {"prompt": "The nation", "chosen": " is strong.", "rejected": " is weak."}
    implicit = {"chosen": "The nation is strong.", "rejected": "The nation is weak."}
    chat = {"prompt": [{"role": "user", "content": "How is the nation?"}],
            "chosen": [{"role": "assistant", "content": "Strong."}],
            "rejected": [{"role": "assistant", "content": "Weak."}]}
    chat_implicit = {"chosen": chat["prompt"] + chat["chosen"], "rejected": chat["prompt"] + chat["rejected"]}
    rows, skipped = standardise([standard, implicit, chat, chat_implicit], "f.jsonl", render)
    assert skipped == 0
    assert rows[0]["prompt"] + rows[0]["chosen"] == "The nation is strong."
    # the implicit prompt is the common prefix, cut at a word
    assert (rows[1]["prompt"], rows[1]["chosen"], rows[1]["rejected"]) == ("The nation is ", "strong.", "weak.")
    # messages go through the tokenizer's chat template; the prompt ends where the answer starts
    assert rows[2]["prompt"] == "user: How is the nation?\nassistant: "
    assert (rows[2]["chosen"], rows[2]["rejected"]) == ("Strong.\n", "Weak.\n")
    assert rows[3] == rows[2]
    assert all(r["gold_chosen"] is None and r["corrupted"] is False for r in rows)


def test_identical_pairs_are_skipped_and_counted_or_refused():
    rows = [{"prompt": "a", "chosen": " b", "rejected": " b"}, {"prompt": "a", "chosen": " b", "rejected": " c"}]
    kept, skipped = standardise(rows, "f.jsonl")
    assert (len(kept), skipped) == (1, 1)
    with pytest.raises(DataError, match=r"f.jsonl, row 0: 'chosen' and 'rejected' are the same"):
        standardise(rows, "f.jsonl", identical="error")


def test_splits_by_name_or_by_seeded_fraction():
    rows = [{"prompt": str(i), "chosen": "a", "rejected": "b"} for i in range(100)]
    a = assign_splits({"": rows}, "f", selection_fraction=0.1, test_fraction=0.2, seed=3)
    b = assign_splits({"": rows}, "f", selection_fraction=0.1, test_fraction=0.2, seed=3)
    assert a == b and [len(a[k]) for k in ("train", "selection", "test_id")] == [70, 10, 20]
    assert not {r["prompt"] for r in a["train"]} & {r["prompt"] for r in a["test_id"] + a["selection"]}
    named = assign_splits({"train": rows[:50], "validation": rows[50:60], "test": rows[60:]}, "f")
    assert [len(named[k]) for k in ("train", "selection", "test_id")] == [50, 10, 40]
    with pytest.raises(DataError, match="no split 'train'"):
        assign_splits({"training": rows}, "f")


def test_prompt_files_text_and_messages(tmp_path, prepared):
    from warm_ray.models import load_tokenizer

    render = chat_renderer(load_tokenizer(prepared[1]["policy"]))
    (tmp_path / "p.txt").write_text("First prompt\n\nSecond prompt\n")
    assert read_prompts(tmp_path / "p.txt", render) == ["First prompt", "Second prompt"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": [{"role": "user", "content": "Hi"}]}) + "\n"
                                      + json.dumps({"prompt": "plain"}) + "\n")
    assert read_prompts(tmp_path / "p.jsonl", render) == ["user: Hi\nassistant: ", "plain"]


@pytest.mark.parametrize("name,content,match", [
    ("missing.jsonl", b'{"prompt": "a", "chosen": "b"}\n', r"missing.jsonl, row 0: missing column 'rejected'"),
    ("empty.jsonl", b"", r"empty.jsonl: empty file"),
    ("blank.jsonl", b"\n\n", r"blank.jsonl: no rows"),
    ("latin1.jsonl", b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n', r"latin1.jsonl, line 1: not UTF-8"),
    ("number.json", b"42", r"number.json: expected a list of rows"),
    ("mixed.jsonl", b'{"prompt": "a", "chosen": [{"role": "assistant", "content": "x"}], "rejected": "y"}\n',
     r"mixed.jsonl, row 0: column 'rejected' must be a list"),
    ("nan.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c", "gold_chosen": NaN}\n',
     r"nan.jsonl, row 0: column 'gold_chosen' must be a finite number"),
])
def test_bad_preference_files_name_file_and_row(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=match):
        for split, rows in read_preference_source(path).items():
            standardise(rows, str(path), render=lambda m, g: "")


def test_messages_without_a_chat_template_are_an_error(prepared):
    from warm_ray.models import load_tokenizer

    tok = load_tokenizer(prepared[1]["policy"])
    tok.chat_template = None  # as most encoders (MiniLM) ship
    chat = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}]}
    with pytest.raises(DataError, match="the RM tokenizer has no chat template"):
        standardise([chat], "c.jsonl", chat_renderer(tok, "", "the RM tokenizer"))
    rows, _ = standardise([chat], "c.jsonl", chat_renderer(tok, "plain", "the RM tokenizer"))
    assert rows[0]["prompt"] == "user: Hi\nassistant: "


@pytest.fixture(scope="module")
def tiny_tok():
    """A tiny byte-level BPE tokenizer (< 1 s), with warm-ray's plain chat template."""
    from warm_ray.data import corpus
    from warm_ray.models import train_tokenizer

    return train_tokenizer(corpus()[:200], vocab_size=300)


CHAT_ROW = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}]}
BROKEN_TEMPLATES = [
    ("{% for m in messages %}{{ m['content'] }", r"TemplateSyntaxError: unexpected '}' \(template line 1\)"),
    ("{{ raise_exception('roles must alternate user/assistant') }}", r"TemplateError: roles must alternate"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", r"SecurityError: access to attribute '__class__' of 'str'"),
    ("{{ messages[0]['content'] + 1 }}", r"TypeError: can only concatenate str"),
]


@pytest.mark.parametrize("template,match", BROKEN_TEMPLATES)
def test_a_broken_user_chat_template_is_one_line_before_any_data(tiny_tok, template, match):
    """The user's template is tried on a sample conversation when the renderer is made: one line
    naming the config key, its value and Jinja's message (the sandbox refuses to leave it)."""
    import copy

    tok = copy.deepcopy(tiny_tok)
    tok.chat_template = None
    for key in ("data.chat_template", "policy.chat_template"):
        with pytest.raises(DataError, match=rf"^{key} = .* cannot render a sample conversation .*: {match}") as e:
            chat_renderer(tok, template, "the RM tokenizer", key)
        assert "\n" not in str(e.value) and "Traceback" not in str(e.value)


@pytest.mark.parametrize("template,match", BROKEN_TEMPLATES)
def test_a_tokenizers_own_broken_template_names_file_and_row(tiny_tok, tmp_path, template, match):
    """A tokenizer's own template fails where it renders: the file, the row and the template."""
    import copy

    tok = copy.deepcopy(tiny_tok)
    tok.chat_template = template
    render = chat_renderer(tok, "", "the tokenizer of the RM init /m")  # not tried up front
    plain = {"prompt": "a", "chosen": " b", "rejected": " c"}
    with pytest.raises(DataError, match=rf"^c.jsonl, row 1: the chat template of the tokenizer of the RM init /m "
                                        rf"cannot render these messages: {match}"):
        standardise([plain, CHAT_ROW], "c.jsonl", render)
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "plain"}) + "\n" + json.dumps(CHAT_ROW) + "\n")
    with pytest.raises(DataError, match=rf"p.jsonl, row 1: the chat template of .* cannot render these messages: "
                                        rf"{match}"):
        read_prompts(tmp_path / "p.jsonl", render)


def test_a_template_failing_on_some_rows_names_the_row(tiny_tok):
    """A user template that renders the sample but refuses a row's roles: the row and the key."""
    import copy

    tok = copy.deepcopy(tiny_tok)
    tok.chat_template = None
    template = ("{% for m in messages %}{% if m['role'] not in ('user', 'assistant') %}"
                "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}{{ m['content'] }}\n{% endfor %}")
    render = chat_renderer(tok, template, "the RM tokenizer")
    bad = {**CHAT_ROW, "prompt": [{"role": "tool", "content": "Hi"}]}
    with pytest.raises(DataError, match=r"^c.jsonl, row 1: data.chat_template = .* cannot render these messages: "
                                        r"TemplateError: unknown role tool$"):
        standardise([CHAT_ROW, bad], "c.jsonl", render)


def test_a_broken_chat_template_is_one_cli_line(tmp_path, tiny_tok):
    """`warm-ray warm` on chat data with an RM init whose own template raises: exit 2, one line, no
    traceback, nothing trained."""
    import copy

    from transformers import GPT2Config

    from warm_ray.models import build_policy, save_model

    tok = copy.deepcopy(tiny_tok)
    tok.chat_template = "{{ raise_exception('a system message must come first') }}"
    save_model(build_policy(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tok))), tmp_path / "rm", tok)
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(CHAT_ROW) + "\n" for _ in range(5)))
    proc = subprocess.run([sys.executable, "-m", "warm_ray.cli", "warm", "--run-dir", str(tmp_path / "run"),
                           "--set", f"data.preferences={tmp_path / 'chat.jsonl'}",
                           "--set", f"warm.featurizer={tmp_path / 'rm'}"],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"warm-ray warm: data error: {tmp_path / 'chat.jsonl'}, row 0: the chat template "
                                  f"of the tokenizer of the RM init {tmp_path / 'rm'} cannot render these messages: "
                                  "TemplateError: a system message must come first"), proc.stderr
    assert not (tmp_path / "run" / "warm" / "members").exists()


def test_overlong_pairs_are_counted_per_split(tmp_path, tiny_tok, caplog, monkeypatch):
    """Pairs whose chosen or rejected text is longer than warm.max_length tokens: counted per split
    in data.json and logged; the counts are kept across runs (no tokenizing again) and retaken, without
    rewriting the rows, when warm.max_length changes."""
    import logging

    from warm_ray import reward as R
    from warm_ray.sources import preferences

    def pair(i, k=0, side="chosen"):
        row = {"prompt": f"Q{i}", "chosen": f" yes {i}", "rejected": f" no {i}"}
        if k:
            row[side] = " " + "word " * k
        return row

    data = {"train": [pair(0, 300), pair(1, 40, "rejected"), pair(2), pair(3), pair(4, 9), pair(5, 14, "rejected"),
                      pair(6, 12), pair(7)],
            "validation": [pair(8, 200), pair(9)], "test": [pair(10), pair(11, 3)]}
    (tmp_path / "p.json").write_text(json.dumps(data))
    (tmp_path / "ood.jsonl").write_text(json.dumps(pair(12, 50)) + "\n" + json.dumps(pair(13)) + "\n")
    run = tmp_path / "run"
    args = [f"run_dir={run}", f"data.preferences={tmp_path / 'p.json'}", f"data.ood={tmp_path / 'ood.jsonl'}",
            "warm.max_length=16"]

    def long(r):
        return any(len(tiny_tok(r["prompt"] + r[c])["input_ids"]) > 16 for c in ("chosen", "rejected"))

    with caplog.at_level(logging.WARNING, logger="warm_ray.sources"):
        prefs = preferences(load_config(None, args), tiny_tok)
    expected = {k: sum(map(long, rows)) for k, rows in prefs.splits.items()}
    assert expected["train"] >= 2 and expected["selection"] == 1 and expected["test_id"] == 0
    assert expected["test_ood"] == 1
    assert prefs.truncated == expected
    record = json.loads((run / "data" / "data.json").read_text())
    assert record["truncated"] == expected and record["truncated_at"]["max_length"] == 16
    lines = [r.getMessage() for r in caplog.records if "warm.max_length" in r.getMessage()]
    assert f"data: {expected['train']} of 8 train pairs longer than warm.max_length=16 tokens, truncated" in lines[0]
    assert len(lines) == 3 and "1 of 2 selection pairs" in lines[1] and "1 of 2 test_ood pairs" in lines[2]

    # the same data and settings: the counts are read back, the record is not rewritten
    written = (run / "data" / "data.json").stat().st_mtime_ns
    monkeypatch.setattr(R, "truncated_pairs", lambda *a: pytest.fail("tokenized again"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="warm_ray.sources"):
        again = preferences(load_config(None, args), tiny_tok)
    assert again.truncated == expected and again.fingerprint == prefs.fingerprint
    assert (run / "data" / "data.json").stat().st_mtime_ns == written
    assert len([r for r in caplog.records if "warm.max_length" in r.getMessage()]) == 3
    monkeypatch.undo()

    # another max_length: counted again, only the record changes (same rows, same fingerprint)
    rows_written = {f: f.stat().st_mtime_ns for f in (run / "data").rglob("*.arrow")}
    assert rows_written
    wide = preferences(load_config(None, [*args[:-1], "warm.max_length=4096"]), tiny_tok)
    assert wide.fingerprint == prefs.fingerprint and wide.truncated == {k: 0 for k in expected}
    record = json.loads((run / "data" / "data.json").read_text())
    assert record["truncated"] == wide.truncated and record["fingerprint"] == prefs.fingerprint
    assert {f: f.stat().st_mtime_ns for f in (run / "data").rglob("*.arrow")} == rows_written


def test_model_dirs_are_checked_before_work(tmp_path, prepared):
    from transformers import GPT2Config

    from warm_ray.models import build_policy, load_tokenizer, save_model
    from warm_ray.sources import check_tokenizer

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"policy.model = .*empty': has no config.json"):
        load_config(None, [f"run_dir={tmp_path / 'run'}", f"policy.model={tmp_path / 'empty'}"])
    with pytest.raises(ConfigError, match=r"warm.inits\[1\] = .*empty': has no config.json"):
        load_config(None, [f"run_dir={tmp_path / 'run'}", f"warm.inits=[{prepared[1]['policy']}, {tmp_path / 'empty'}]"])
    # a model whose vocabulary is smaller than the tokenizer it is shipped with
    tok = load_tokenizer(prepared[1]["policy"])
    small = build_policy(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tok) // 2))
    save_model(small, tmp_path / "mismatch", tok)
    with pytest.raises(UserError, match=r"tokenizer has \d+ tokens but the model's vocabulary has \d+"):
        check_tokenizer(tmp_path / "mismatch", "policy.model")


# ------------------------------------------------------------------------------------------
# End to end: warm on the user's files, RL on the user's policy, prompts and RM
# ------------------------------------------------------------------------------------------


def _pairs(rows):
    return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]


@pytest.fixture(scope="module")
def user_files(prepared, tmp_path_factory):
    """The benchmark's clean pairs written as a user would have them, in three layouts."""
    import datasets

    from warm_ray.data import load_splits, uncorrupt

    splits = load_splits(prepared[1]["data"])
    train = uncorrupt(splits["train"])
    out = tmp_path_factory.mktemp("user_files")
    (out / "standard.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _pairs(train + splits["test_id"])))
    chat = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in _pairs(train + splits["test_id"])]
    (out / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat))
    implicit = lambda rows: [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]}  # noqa: E731
                             for r in _pairs(rows)]
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(implicit(train)),
        "validation": datasets.Dataset.from_list(implicit(splits["selection"])),
        "test": datasets.Dataset.from_list(implicit(splits["test_id"])),
    }).save_to_disk(str(out / "hf_dataset"))
    (out / "prompts.txt").write_text("\n".join(json.loads(Path(prepared[1]["prompts"]).read_text())["train"][:40]))
    return out


def _warm_args(prepared, run_dir: Path, data: Path) -> list[str]:
    w = tiny_warm(prepared[0]).warm
    return ["warm", "--run-dir", str(run_dir), "--set", f"data.preferences={data}",
            "--set", f"warm.featurizer={prepared[1]['checkpoints'][-1]}", "--set", f"warm.m={w.m}",
            "--set", f"warm.epochs={w.epochs}", "--set", f"warm.batch_size={w.batch_size}",
            "--set", f"warm.lp_epochs={w.lp_epochs}", "--set", f"warm.lmc_points={w.lmc_points}",
            "--set", "warm.trainer.num_threads=1"]


@pytest.fixture(scope="module")
def user_warm(prepared, user_files, tmp_path_factory):
    """`warm-ray warm` as a user runs it (a subprocess, its own Ray) on a standard JSONL file, in a
    run dir where `warm-ray prepare` never ran; the featurizer is a plain Hugging Face dir."""
    run_dir = tmp_path_factory.mktemp("user_warm")
    proc = subprocess.run([sys.executable, "-m", "warm_ray.cli", *_warm_args(prepared, run_dir,
                                                                            user_files / "standard.jsonl")],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, json.loads((run_dir / "warm" / "results.json").read_text())


def test_warm_on_a_standard_jsonl_and_the_rm_loads_with_plain_transformers(user_warm):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from warm_ray import reward as R
    from warm_ray.data import load_splits
    from warm_ray.models import load_reward_model, load_tokenizer

    run_dir, results = user_warm
    # no flipped labels and no OOD split in the user's data: those columns are not reported
    assert results["sets"] == ["train_clean", "selection", "test_id"]
    assert set(results["member_disagreement"]) == set(results["sets"])
    # WARM's precondition is checked on the user's data too: every pair along the line, on its own splits
    assert results["lmc"]["split"] == "selection" and set(results["lmc"]["summary"]) == set(results["sets"])
    assert "linearly mode connected on the selection split" in (run_dir / "warm" / "results.md").read_text()
    record = json.loads((run_dir / "data" / "data.json").read_text())
    assert record["skipped_identical"] == 0 and record["rows"]["test_id"] > 0
    test = load_splits(run_dir / "data")["test_id"]
    rm_dir = run_dir / "warm" / "warm_rm"
    rm = AutoModelForSequenceClassification.from_pretrained(str(rm_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(rm_dir))
    with torch.no_grad():
        def plain(texts):
            return torch.cat([rm(**tok([t], return_tensors="pt", truncation=True, max_length=64)).logits[:, 0]
                              for t in texts])
        chosen = plain([r["prompt"] + r["chosen"] for r in test])
        rejected = plain([r["prompt"] + r["rejected"] for r in test])
    # the scores warm-ray computes (batched, padded) are the plain one-text-at-a-time scores
    ours = R.score(load_reward_model(rm_dir), load_tokenizer(rm_dir), [r["prompt"] + r["chosen"] for r in test])
    assert torch.allclose(ours, chosen, atol=1e-4)
    assert (chosen > rejected).float().mean().item() == pytest.approx(results["table"]["WARM"]["test_id"], abs=1e-9)
    card = (rm_dir / "README.md").read_text()
    assert "standard.jsonl" in card and "| 0 | 0.5 |" in card and "test_id" in card


@pytest.mark.parametrize("source", ["chat.jsonl", "hf_dataset"])
def test_warm_on_conversational_jsonl_and_a_saved_datasets_dir(prepared, user_files, ray_local, tmp_path, source):
    assert cli.main(_warm_args(prepared, tmp_path, user_files / source)) == 0
    results = json.loads((tmp_path / "warm" / "results.json").read_text())
    rows = json.loads((tmp_path / "data" / "data.json").read_text())["rows"]
    if source == "hf_dataset":  # its own split names: validation -> selection, test -> test_id
        assert (rows["selection"], rows["test_id"]) == (80, 80)
    else:
        from warm_ray.data import load_splits

        assert load_splits(tmp_path / "data")["train"][0]["prompt"].startswith("user: ")
    assert 0.0 <= results["table"]["WARM"]["test_id"] <= 1.0
    assert (tmp_path / "warm" / "warm_rm" / "README.md").exists()


@pytest.fixture(scope="module")
def user_rl(prepared, user_files, user_warm, tmp_path_factory):
    """RL in a fresh run dir: the prepared policy as the user's SFT model, a prompt file, and the WARM
    RM of another run dir as the reward."""
    run_dir = tmp_path_factory.mktemp("user_rl")
    args = ["rl", "--run-dir", str(run_dir), "--set", f"policy.model={prepared[1]['policy']}",
            "--set", f"policy.prompts={user_files / 'prompts.txt'}", "--set", f"policy.reward_model={user_warm[0]}",
            "--set", "rl.steps=2", "--set", "rl.prompts_per_step=2", "--set", "rl.samples_per_prompt=2",
            "--set", "rl.max_new_tokens=6", "--set", "rl.n_eval_prompts=4", "--set", "rl.reference_samples=8",
            "--set", "rl.compare=[ens]", "--set", "rl.monitor_every=1", "--set", "rl.learner.num_threads=1"]
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert cli.main(args) == 0
    finally:
        if started:
            ray.shutdown()
    # results.json names the run dir's files relative to it: resolved here, as a stage reads them
    from actors.rl import RUN_PATHS
    from warm_ray.files import resolved_paths

    return run_dir, resolved_paths(json.loads((run_dir / "rl" / "results.json").read_text()), run_dir, RUN_PATHS)


def test_rl_on_the_users_policy_prompts_and_another_runs_rm(user_rl):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, results = user_rl
    assert results["modes"] == ["warm", "ens"]
    # the user's prompts: no gold reward (it is the benchmark's ground truth), no gold win rates
    assert results["win_rates"] == {} and results["policies"]["warm"]["gold_mean"] is None
    assert results["runs"]["warm"]["final"]["gold_reward"] is None
    assert results["runs"]["ens"]["monitor"]["checks"] >= 1
    policy_dir = Path(results["runs"]["warm"]["policy"])
    policy = AutoModelForCausalLM.from_pretrained(str(policy_dir))
    tok = AutoTokenizer.from_pretrained(str(policy_dir))
    out = policy.generate(**tok(["The nation"], return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > 1
    card = (policy_dir / "README.md").read_text()
    assert "prompts.txt" in card and "reward mode `warm`" in card


@pytest.mark.vllm
def test_vllm_loads_a_policy_dir_rl_wrote(user_rl):
    from actors.rollout import VLLMBackend

    backend = VLLMBackend(user_rl[1]["runs"]["warm"]["policy"])
    try:
        samples = backend.generate(["The nation"], n=2, max_new_tokens=4, temperature=1.0, seed=0)
        assert len(samples) == 2 and all(len(s.completion_ids) >= 1 for s in samples)
    finally:
        backend.shutdown()


def test_a_plain_rm_dir_rewards_mode_warm_only(prepared, user_warm, tmp_path):
    from actors.rl import proxy_scorer

    rm = str(user_warm[0] / "warm" / "warm_rm")
    cfg = load_config(None, [f"run_dir={tmp_path}", f"policy.reward_model={rm}"])
    with pytest.raises(UserError, match="rl.reward = 'ens' needs the members of a warm run"):
        proxy_scorer(cfg, "ens", normalise=False)
    scorer = proxy_scorer(cfg, "warm", normalise=False, placement="driver")
    assert scorer.n_models == 1


def test_user_data_is_fingerprinted_by_its_content(prepared, user_files, tmp_path):
    """Same file and settings: the same fingerprint and no rewrite; another split seed: another one."""
    from warm_ray.models import load_tokenizer
    from warm_ray.sources import preferences

    tok = load_tokenizer(prepared[1]["policy"])
    args = [f"run_dir={tmp_path}", f"data.preferences={user_files / 'standard.jsonl'}"]
    a = preferences(load_config(None, args), tok)
    written = (tmp_path / "data" / "data.json").stat().st_mtime_ns
    assert preferences(load_config(None, args), tok).fingerprint == a.fingerprint
    assert (tmp_path / "data" / "data.json").stat().st_mtime_ns == written
    b = preferences(load_config(None, [*args, "data.split_seed=1"]), tok)
    assert b.fingerprint != a.fingerprint and b.splits["test_id"] != a.splits["test_id"]


def test_study_on_your_own_data_runs_the_rm_part_with_label_noise_injected(prepared, user_files, ray_local,
                                                                            tmp_path):
    """`warm-ray study` on a user's JSONL and OOD file, with no gold: each seed flips its own share of the
    training labels (flagged, so memorisation is measured on them) and leaves every other split as given;
    the claims are the rm part's, paired over seeds."""
    from actors import study as S
    from warm_ray.config import apply_overrides
    from warm_ray.data import load_splits

    ood = tmp_path / "ood.jsonl"
    ood.write_text("".join(json.dumps(r) + "\n" for r in _pairs(load_splits(prepared[1]["data"])["test_ood"])))
    w = tiny_warm(prepared[0]).warm
    sets = [f"run_dir={tmp_path / 'run'}", f"data.preferences={user_files / 'standard.jsonl'}", f"data.ood={ood}",
            f"warm.featurizer={prepared[1]['checkpoints'][-1]}", f"warm.m={w.m}", "warm.epochs=1",
            f"warm.batch_size={w.batch_size}", f"warm.lp_epochs={w.lp_epochs}", "warm.lmc_points=2",
            "study.parts=[rm]", "study.seeds=[0, 1]", "study.recipe=lr_high", "study.label_noise=0.3",
            "study.primary=['memorisation: WARM < ENS', 'OOD accuracy: WARM > ENS']"]
    cfg = apply_overrides(prepared[0], sets)
    results = S.run_study(cfg)
    rows = {r["name"]: r for r in results["claims"]}
    assert rows["memorisation: WARM < ENS"]["primary"] and rows["memorisation: WARM < ENS"]["n"] == 2
    assert rows["OOD accuracy: WARM > ENS"]["n"] == 2 and not any(n.startswith("BoN") for n in rows)
    given = [json.loads(line) for line in (user_files / "standard.jsonl").read_text().splitlines()]
    given = {(r["prompt"], frozenset((r["chosen"], r["rejected"]))): r for r in given}
    seeds_dir = Path(results["seeds_dir"])
    split = [load_splits(seeds_dir / f"seed_{s}" / "prepare" / "data") for s in (0, 1)]
    flipped = []
    for s in split:
        train = s["train"]
        assert sum(r["corrupted"] for r in train) == round(0.3 * len(train))
        for r in train:  # a flagged row is the user's pair swapped, an unflagged one the user's own
            mine = given[(r["prompt"], frozenset((r["chosen"], r["rejected"])))]
            assert (r["chosen"] == mine["rejected"]) == r["corrupted"]
        flipped.append({(r["prompt"], r["chosen"]) for r in train if r["corrupted"]})
        assert len(s["test_ood"]) == len(load_splits(prepared[1]["data"])["test_ood"])
    assert flipped[0] != flipped[1]  # new flips per seed
    for name in ("selection", "test_id", "test_ood"):  # never flipped, the same in every seed
        assert split[0][name] == split[1][name] and not any(r["corrupted"] for r in split[0][name])
    # memorisation is read on the flipped pairs: the table's train_corrupted column exists per seed
    assert all("train_corrupted" in results["seeds"][s]["rm"]["table"]["WARM"] for s in (0, 1))

    # another label noise is another study: the rm part is recomputed, not handed back
    again = S.run_study(apply_overrides(cfg, ["study.label_noise=0.1", "study.seeds=[0]"]))
    train = load_splits(seeds_dir / "seed_0" / "prepare" / "data")["train"]
    assert sum(r["corrupted"] for r in train) == round(0.1 * len(train))
    assert again["seeds"][0]["rm"]["table"] != results["seeds"][0]["rm"]["table"]


@pytest.mark.parametrize("sets, match", [
    (["study.label_noise=0.5"], r"study\.label_noise = 0\.5: must be in \[0, 0\.5\)"),
    (["study.parts=[rm, bon]"], r"study\.parts = \['rm', 'bon'\]: bon on your own data need a judge that plays gold"),
    (["study.parts=[rm, rl, warp]"], r"study\.parts = .*: rl, warp on your own data need a judge that plays gold"),
    (["warm.featurizer=policy"], r"warm\.featurizer = 'policy': on your own data"),
    (["policy.prompts=PROMPTS"], r"policy\.prompts = .*: is not read by the study on your own data"),
    (["study.primary=['BoN gold @N=16: WARM > best single']"], r"study\.primary: .* needs the bon part"),
])
def test_study_on_your_own_data_refuses_what_it_cannot_do(prepared, user_files, tmp_path, capsys, sets, match):
    import re

    base = [f"data.preferences={user_files / 'standard.jsonl'}", f"warm.featurizer={prepared[1]['checkpoints'][-1]}",
            "study.parts=[rm]", "study.primary=['memorisation: WARM < ENS']"]
    argv = ["study", "--run-dir", str(tmp_path / "run")]
    for s in [*base, *sets]:
        argv += ["--set", s.replace("PROMPTS", str(user_files / "prompts.txt"))]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run" / "study").exists()  # refused before any work
