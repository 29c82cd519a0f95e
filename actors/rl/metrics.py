"""An RL run's ``metrics.jsonl`` (one record per step) and the numbers read from it.

A run appends one JSON line per step; a crash mid-write leaves at most a torn last line, which
``read_metrics`` skips. A resumed run drops the records after its checkpoint (``keep_metrics_until``)
and redoes those steps, so the history holds each step once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from warm_ray import files

# Steps averaged for the "final" numbers of a run: one step's batch is noisy.
FINAL_WINDOW = 5


def read_metrics(path: Path) -> list[dict]:
    """Records of a metrics.jsonl; a torn last line (a crash mid-write) is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def keep_metrics_until(path: Path, step: int) -> list[dict]:
    """Drop the records after ``step`` (they will be redone); rewrite the file atomically."""
    kept = [r for r in read_metrics(path) if r["step"] <= step]
    files.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def append_metrics(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def final_means(records: Sequence[dict], keys: Sequence[str], window: int = FINAL_WINDOW) -> dict[str, float | None]:
    """Mean of each key over the last ``window`` records; None for a key that was not measured
    (gold off the benchmark's prompts)."""
    tail = list(records)[-window:]
    if not tail:
        return {}
    return {k: None if any(r.get(k) is None for r in tail) else sum(r[k] for r in tail) / len(tail) for k in keys}


def fmt(x: float | None, spec: str = ".3f") -> str:
    """A number for a table or log line; "–" for one not measured."""
    return "–" if x is None else format(x, spec)


def gold_peak_step(records: Sequence[dict], window: int = FINAL_WINDOW) -> int | None:
    """The step where gold reward, averaged over a centred window of steps, is highest (first of ties)."""
    if not records or any(r.get("gold_reward") is None for r in records):
        return None
    gold = [r["gold_reward"] for r in records]
    half = window // 2
    smooth = [sum(gold[max(0, i - half):i + half + 1]) / len(gold[max(0, i - half):i + half + 1])
              for i in range(len(gold))]
    return int(records[max(range(len(gold)), key=lambda i: (smooth[i], -i))]["step"])


