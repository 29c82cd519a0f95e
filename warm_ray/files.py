"""Files written atomically: a reader (a rerun, a resumed run, another process) sees the old
file or the new one, never half of one.

Torch-free and model-free on purpose: every stage writes its records through here, and the
data, config and run-dir modules import it without paying for a model stack.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

def atomic_dir(final: str | Path):
    """Context manager: yields a temp dir beside ``final``; on success it replaces ``final``."""
    return _AtomicDir(Path(final))


class _AtomicDir:
    def __init__(self, final: Path):
        self.final = final

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-", dir=self.final.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def publish(out_dir: str | Path, results: dict, markdown: str, title: str, footer: str) -> None:
    """A stage's report: ``results.json`` and ``results.md`` in ``out_dir``, the table printed."""
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_text(out_dir / "results.md", markdown)
    print(f"\n{title}\n")
    print(markdown)
    print(footer)
