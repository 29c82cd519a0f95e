"""The tiny settings and the file damage shared by the tests and ``scripts/reliability_faults.py``.

Overrides are ``--set`` strings, so the same settings run in-process (``load_config(None, TINY)``)
and through the `warm-ray` command (``--set`` each).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# The smallest prepare that still gives a meaningful benchmark; shared by every stage's tests.
TINY = [
    "prepare.model.n_layer=2",
    "prepare.model.n_embd=64",
    "prepare.model.n_head=2",
    "prepare.lm_steps=120",
    "prepare.checkpoint_steps=[80, 100, 120]",
    "prepare.lm_batch_size=16",
    "prepare.n_train=240",
    "prepare.n_selection=80",
    "prepare.n_test=80",
    "prepare.n_ood=80",
    "prepare.max_new_tokens=12",
    "prepare.resources.num_threads=1",
]

# The tiny WARM settings (M=2 members of 30 steps each on TINY's data).
TINY_WARM = [
    "warm.m=2",
    "warm.epochs=2",
    "warm.batch_size=16",
    "warm.checkpoint_every=3",
    "warm.log_every=3",
    "warm.lp_epochs=5",
    "warm.lmc_points=3",
]


def truncate(path: str | Path) -> None:
    """Damage a file the way a full disk or a killed copy does: cut it in half."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def mtimes(paths: Iterable[str | Path]) -> dict[str, int]:
    """Modification times (ns) of ``paths``: equal before and after a rerun when it rewrote none."""
    return {str(p): Path(p).stat().st_mtime_ns for p in paths}
