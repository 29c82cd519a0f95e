"""Reward models trained by TRL's RewardTrainer, merged by `warm-ray merge`, evaluated by TRL again.

    pip install trl                       # not a warm-ray dependency
    python examples/trl_merge.py --out runs/trl_merge

Two reward models are fine-tuned from one base (MiniLM by default, offline) with different learning
rates and seeds on examples/preferences.jsonl; `warm-ray merge` averages them, score head included,
into a Hugging Face dir; TRL's RewardTrainer loads each model and the average and reports its pairwise
accuracy on held-out pairs. Prints a table and writes it to <out>/results.md.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path


def pairs(path: Path, seed: int = 0) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    cut = int(0.8 * len(rows))
    return rows[:cut], rows[cut:]


def trl_args(out: Path, lr: float, seed: int, epochs: float, max_length: int):
    from trl import RewardConfig

    return RewardConfig(output_dir=str(out), learning_rate=lr, seed=seed, num_train_epochs=epochs,
                        per_device_train_batch_size=16, per_device_eval_batch_size=32, max_length=max_length,
                        report_to=[], save_strategy="no", logging_steps=10, use_cpu=True, dataloader_num_workers=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/trl_merge")
    ap.add_argument("--base", default="minilm", help="a sequence-classification base: a HF dir, a hub id or 'minilm'")
    ap.add_argument("--data", default=str(Path(__file__).with_name("preferences.jsonl")))
    ap.add_argument("--lrs", default="3e-5,1e-4")
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--max-length", type=int, default=64)
    a = ap.parse_args()

    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardTrainer

    from warm_ray.models import resolve_model_dir

    out = Path(a.out)
    base = resolve_model_dir(a.base)
    train, held_out = pairs(Path(a.data))
    cols = ("prompt", "chosen", "rejected")
    train_ds = Dataset.from_list([{k: r[k] for k in cols} for r in train])
    eval_ds = Dataset.from_list([{k: r[k] for k in cols} for r in held_out])
    tok = AutoTokenizer.from_pretrained(base)
    if tok.eos_token is None:  # TRL appends an end-of-sequence token; a BERT tokenizer ends with [SEP]
        tok.eos_token = tok.sep_token

    def evaluate(model_dir: Path) -> float:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
        trainer = RewardTrainer(model=model, args=trl_args(out / "eval", 1e-5, 0, 1, a.max_length),
                                processing_class=tok, train_dataset=train_ds, eval_dataset=eval_ds)
        return float(trainer.evaluate()["eval_accuracy"])

    members = []
    for i, lr in enumerate(float(x) for x in a.lrs.split(",")):
        member = out / f"rm_{i}"
        if not (member / "config.json").exists():
            model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
            model.config.pad_token_id = tok.pad_token_id
            trainer = RewardTrainer(model=model, args=trl_args(out / f"trl_{i}", lr, i, a.epochs, a.max_length),
                                    processing_class=tok, train_dataset=train_ds)
            trainer.train()
            trainer.save_model(str(member))
            tok.save_pretrained(member)
        members.append(member)

    merged_run = out / "merged"
    subprocess.run([sys.executable, "-m", "warm_ray.cli", "merge", *map(str, members), "--run-dir", str(merged_run)],
                   check=True)
    rows = [(f"TRL RM lr {lr}", evaluate(m)) for lr, m in zip(a.lrs.split(","), members)]
    rows.append(("warm-ray merge (average)", evaluate(merged_run / "merge" / "model")))
    table = ["| model | held-out pairwise accuracy (TRL's RewardTrainer.evaluate) |", "|---|---:|",
             *[f"| {name} | {acc:.3f} |" for name, acc in rows]]
    text = f"{len(held_out)} held-out pairs of {Path(a.data).name}, base {a.base}:\n\n" + "\n".join(table) + "\n"
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
