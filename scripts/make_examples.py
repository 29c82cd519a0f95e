"""Write the example files of the README's "Use your own data and models" (``examples/``).

Preference pairs a user could have, built from the shipped public-domain corpus so they run
offline: the prompt is the start of a sentence; ``chosen`` is its real continuation; ``rejected``
is a worse one: the same words shuffled, the continuation with a phrase repeated, or the
continuation of another sentence. Two files in TRL's two layouts (standard and conversational),
out-of-distribution pairs made the same way from another book (``preferences_ood.jsonl``, for
``data.ood``), plus a prompt file for RL. Deterministic: rerunning writes the same files.

    python scripts/make_examples.py            # writes examples/*.jsonl, examples/prompts.txt
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from warm_ray.data import EVAL_PROMPTS, LM_TEXT, OOD_CORPUS, corpus, make_prompt

ROOT = Path(__file__).resolve().parent.parent


def worse(words: list[str], other: list[str], rng: random.Random) -> list[str]:
    """A worse continuation of ``words``: shuffled, looping on a phrase, or another sentence's."""
    kind = rng.randrange(3)
    if kind == 0:
        out = words[:]
        while out == words:
            rng.shuffle(out)
        return out
    if kind == 1:
        k = max(1, len(words) // 3)
        return (words[:k] * 4)[:max(len(words), 2 * k)]
    return other


def pairs(n: int, seed: int = 0, prompt_words: int = 4, source: list[str] | None = None) -> list[dict]:
    sentences = [s for s in (corpus()[LM_TEXT] if source is None else source) if 8 <= len(s.split()) <= 24]
    rng = random.Random(seed)
    rows = []
    for s in rng.sample(sentences, n):
        words = s.split()
        other = rng.choice(sentences).split()[prompt_words:]
        rest = words[prompt_words:]
        bad = worse(rest, other, rng)
        if bad == rest:
            continue
        rows.append({"prompt": make_prompt(s, prompt_words), "chosen": " " + " ".join(rest),
                     "rejected": " " + " ".join(bad)})
    return rows


def conversational(row: dict) -> dict:
    ask = [{"role": "user", "content": f"Continue the sentence: {row['prompt']}"}]
    return {"prompt": ask,
            "chosen": [{"role": "assistant", "content": row["prompt"] + row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["prompt"] + row["rejected"]}]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "examples"))
    ap.add_argument("--pairs", type=int, default=600)
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--ood-pairs", type=int, default=200)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = pairs(args.pairs)
    (out / "preferences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    chat = pairs(args.pairs, seed=1)
    (out / "preferences_chat.jsonl").write_text("".join(json.dumps(conversational(r)) + "\n" for r in chat))
    ood = pairs(args.ood_pairs, seed=2, source=corpus(OOD_CORPUS))
    (out / "preferences_ood.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ood))
    held_out = [s for s in corpus()[EVAL_PROMPTS] if len(s.split()) > 6][:args.prompts]
    (out / "prompts.txt").write_text("".join(make_prompt(s, 4) + "\n" for s in held_out))
    print(f"{len(rows)} + {len(chat)} pairs, {len(ood)} OOD pairs and {len(held_out)} prompts written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
