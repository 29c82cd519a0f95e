"""`warm-ray merge` on real Hugging Face dirs: tiny GPT-2 reward models and policies, a BERT one for the
architecture check. The output must load with plain transformers and equal warm_ray.merge on the inputs'
state dicts; every mismatch is one line with exit code 2 before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from warm_ray import merge as MG
from warm_ray.cli import main
from warm_ray.data import corpus
from warm_ray.models import train_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizers():
    texts = corpus()[:400]
    return train_tokenizer(texts, vocab_size=300), train_tokenizer(texts[200:], vocab_size=300)


def save(path: Path, tok, seed: int, kind: str = "rm", arch: str = "gpt2", n_embd: int = 16) -> str:
    """A tiny model dir: GPT-2 (or BERT) with a one-label score head ("rm") or an LM head ("policy")."""
    from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2ForSequenceClassification,
                              GPT2LMHeadModel)

    torch.manual_seed(seed)
    if arch == "bert":
        cfg = BertConfig(vocab_size=len(tok), hidden_size=n_embd, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, num_labels=1, pad_token_id=tok.pad_token_id)
        model = BertForSequenceClassification(cfg)
    else:
        cfg = GPT2Config(vocab_size=len(tok), n_embd=n_embd, n_layer=1, n_head=2, n_positions=64, num_labels=1,
                         pad_token_id=tok.pad_token_id)
        model = GPT2LMHeadModel(cfg) if kind == "policy" else GPT2ForSequenceClassification(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def run(capsys, *argv) -> tuple[int, str]:
    rc = main(["merge", *map(str, argv)])
    return rc, capsys.readouterr().err


def float_sd(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}


def test_average_of_reward_models_equals_the_kernel_and_loads_in_transformers(tmp_path, tokenizers, capsys, caplog):
    import logging

    from transformers import AutoModelForSequenceClassification

    a, b = save(tmp_path / "a", tokenizers[0], 1), save(tmp_path / "b", tokenizers[0], 2)
    rc, err = run(capsys, a, b, "--run-dir", tmp_path / "run", "--set", "merge.weights=[3, 1]")
    assert rc == 0, err
    out = tmp_path / "run" / "merge" / "model"
    merged = AutoModelForSequenceClassification.from_pretrained(out)
    sds = [float_sd(AutoModelForSequenceClassification.from_pretrained(p)) for p in (a, b)]
    want = MG.average(sds, [0.75, 0.25])
    got = float_sd(merged)
    assert set(got) == set(want) and "score.weight" in got  # the score head is merged too
    assert all(torch.equal(got[k], want[k]) for k in want)
    card = (out / "README.md").read_text()
    assert "average" in card and "0.75" in card and str(Path(a).resolve()) in card
    record = json.loads((tmp_path / "run" / "merge" / "results.json").read_text())
    assert record["weights"] == [0.75, 0.25] and record["kind"] == "reward-model"
    assert (tmp_path / "run" / "merge" / "config.yaml").is_file()

    # the same command again: reused; another setting: computed anew, never the old result
    with caplog.at_level(logging.INFO, logger="warm_ray.rundir"):
        assert run(capsys, a, b, "--run-dir", tmp_path / "run", "--set", "merge.weights=[3, 1]")[0] == 0
        assert "reused" in caplog.text
        caplog.clear()
        rc, err = run(capsys, a, b, "--run-dir", tmp_path / "run")
        assert rc == 0, err
        assert "recomputed" in caplog.text
    again = float_sd(AutoModelForSequenceClassification.from_pretrained(out))
    uniform = MG.average(sds)
    assert all(torch.equal(again[k], uniform[k]) for k in uniform)


def test_slerp_and_liti_of_policies_merge_a_tied_weight_once(tmp_path, tokenizers, capsys):
    from transformers import AutoModelForCausalLM

    base = save(tmp_path / "base", tokenizers[0], 0, "policy")
    # fine-tuned copies: the base plus a random task vector each
    runs = []
    for seed in (1, 2, 3):
        model = AutoModelForCausalLM.from_pretrained(base)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=gen))
        model.save_pretrained(tmp_path / f"run{seed}")
        tokenizers[0].save_pretrained(tmp_path / f"run{seed}")
        runs.append(str(tmp_path / f"run{seed}"))
    rc, err = run(capsys, *runs[:2], "--run-dir", tmp_path / "out", "--set", "merge.method=liti",
                  "--set", f"merge.base={base}", "--set", "merge.eta=0.5")
    assert rc == 0, err
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merge" / "model")
    assert merged.lm_head.weight.data_ptr() == merged.transformer.wte.weight.data_ptr()  # still tied
    unique = [n for n, _ in AutoModelForCausalLM.from_pretrained(base).named_parameters()]
    sds = [{k: v for k, v in AutoModelForCausalLM.from_pretrained(p).state_dict().items() if k in unique}
           for p in (base, *runs)]
    want = MG.liti(sds[0], MG.slerp(sds[0], sds[1], sds[2], 0.5), 0.5)
    got = merged.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    record = json.loads((tmp_path / "out" / "merge" / "results.json").read_text())
    # the tied embedding is one tensor in the geometry, not two
    assert record["geometry"]["parameters"] == sum(p.numel() for p in merged.parameters())

    rc, err = run(capsys, *runs, "--run-dir", tmp_path / "out3", "--set", "merge.method=slerp",
                  "--set", f"merge.base={base}")
    assert rc == 0, err
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "out3" / "merge" / "model").state_dict()
    want = MG.slerp_many(sds[0], sds[1:])
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_greedy_soup_is_chosen_on_the_selection_pairs(tmp_path, tokenizers, capsys):
    from transformers import AutoModelForSequenceClassification

    from warm_ray import reward as R

    dirs = [save(tmp_path / f"m{i}", tokenizers[0], i) for i in range(3)]
    sentences = corpus()[:60]
    rows = [{"prompt": "Say:", "chosen": " " + s, "rejected": " " + s[: len(s) // 2]} for s in sentences]
    sel = tmp_path / "selection.jsonl"
    sel.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, err = run(capsys, *dirs, "--run-dir", tmp_path / "run", "--set", "merge.method=greedy_soup",
                  "--set", f"merge.selection={sel}", "--set", "merge.max_length=48")
    assert rc == 0, err
    record = json.loads((tmp_path / "run" / "merge" / "results.json").read_text())
    soup = record["soup"]
    assert soup["selection_pairs"] == len(rows) and soup["chosen"][0] == soup["order"][0]
    assert soup["soup_selection_accuracy"] >= max(soup["selection_accuracy"].values())
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "merge" / "model")
    tok = tokenizers[0]
    acc = R.accuracy(R.pair_margins([merged], tok, rows, 48))
    assert acc == pytest.approx(soup["soup_selection_accuracy"], abs=1e-9)
    assert sum(record["weights"]) == pytest.approx(1.0)
    assert [w > 0 for w in record["weights"]] == [str(i) in soup["chosen"] for i in range(3)]


def test_mismatched_inputs_are_one_line_errors(tmp_path, tokenizers, capsys):
    tok, other = tokenizers
    a, b = save(tmp_path / "a", tok, 1), save(tmp_path / "b", tok, 2)
    cases = [
        ((a, save(tmp_path / "bert", tok, 3, arch="bert")), [], "architecture BertForSequenceClassification"),
        ((a, save(tmp_path / "wide", tok, 4, n_embd=32)), [], "tensor 'transformer.wte.weight' has shape [300, 32]"),
        ((a, save(tmp_path / "other_tok", other, 5)), [], "vocabulary"),
        ((a, save(tmp_path / "lm", tok, 6, "policy")), [], "architecture GPT2LMHeadModel"),
        ((a,), [], "needs at least 2 models"),
        ((a, b), ["merge.method=slerp"], "merge.base = '': merge.method = 'slerp' needs"),
        ((a, b), ["merge.method=greedy_soup"], "merge.selection = '': merge.method = 'greedy_soup' needs"),
        ((a, b), ["merge.weights=[1, 2, 3]"], "one weight per model (2 models)"),
        ((a, b), ["merge.eta=1.5"], "merge.eta = 1.5: must be in [0, 1]"),
        ((a, tmp_path / "nowhere"), [], "merge.models[1]"),
    ]
    for models, sets, expected in cases:
        out = tmp_path / "never"
        rc, err = run(capsys, *models, "--run-dir", out, *[x for s in sets for x in ("--set", s)])
        assert rc == 2 and expected in err and len(err.strip().splitlines()) == 1, (models, sets, err)
        assert not (out / "merge").exists()
    lm = str(tmp_path / "lm")
    rc, err = run(capsys, lm, save(tmp_path / "lm2", tok, 7, "policy"), "--run-dir", tmp_path / "never",
                  "--set", "merge.method=greedy_soup", "--set", f"merge.selection={tmp_path / 'x.jsonl'}")
    assert rc == 2 and "merge.selection" in err  # the missing file is named first
    (tmp_path / "x.jsonl").write_text('{"chosen": "a", "rejected": "b"}\n')
    rc, err = run(capsys, lm, tmp_path / "lm2", "--run-dir", tmp_path / "never",
                  "--set", "merge.method=greedy_soup", "--set", f"merge.selection={tmp_path / 'x.jsonl'}")
    assert rc == 2 and "needs reward models" in err
    # model dirs belong to `warm-ray merge` only
    assert main(["warm", a]) == 2 and "only `warm-ray merge` takes model dirs" in capsys.readouterr().err


def test_reward_models_trained_by_trl_merge_and_the_average_loads_in_trl(tmp_path, tokenizers, capsys):
    """Two tiny RMs fine-tuned by TRL's RewardTrainer (a few steps each, other seeds and learning rates) are
    merged by `warm-ray merge`; TRL's RewardTrainer loads the average and evaluates it. Runs where TRL is
    installed (``pip install trl``; not a warm-ray dependency)."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    tok = tokenizers[0]
    words = [t.split() for t in corpus()[:48]]
    rows = [{"prompt": " ".join(w[:3]), "chosen": " " + " ".join(w[3:]), "rejected": " " + " ".join(w[3:][::-1])}
            for w in words]
    train, held_out = Dataset.from_list(rows[:32]), Dataset.from_list(rows[32:])

    def args(out: Path, lr: float, seed: int) -> RewardConfig:
        return RewardConfig(output_dir=str(out), learning_rate=lr, seed=seed, max_steps=3, max_length=48,
                            per_device_train_batch_size=8, per_device_eval_batch_size=8, report_to=[],
                            save_strategy="no", use_cpu=True, dataloader_num_workers=0)

    dirs = []
    for i, lr in enumerate((1e-3, 3e-3)):
        init = save(tmp_path / f"init_{i}", tok, 5)  # one shared init, as WARM needs
        trainer = RewardTrainer(model=AutoModelForSequenceClassification.from_pretrained(init), args=args(
            tmp_path / f"trl_{i}", lr, i), processing_class=tok, train_dataset=train)
        trainer.train()
        trainer.save_model(str(tmp_path / f"rm_{i}"))
        tok.save_pretrained(tmp_path / f"rm_{i}")
        dirs.append(tmp_path / f"rm_{i}")
    rc, err = run(capsys, *dirs, "--run-dir", tmp_path / "merged")
    assert rc == 0, err
    out = tmp_path / "merged" / "merge" / "model"
    models = [AutoModelForSequenceClassification.from_pretrained(d) for d in dirs]
    merged = AutoModelForSequenceClassification.from_pretrained(out)
    want = MG.average([float_sd(m) for m in models])
    for k, v in float_sd(merged).items():
        torch.testing.assert_close(v, want[k].to(v.dtype))
    metrics = RewardTrainer(model=merged, args=args(tmp_path / "eval", 1e-5, 0), processing_class=tok,
                            train_dataset=train, eval_dataset=held_out).evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
