"""Files written atomically: a reader (a rerun, a resumed run, another process) sees the old
file or the new one, never half of one; and the paths records hold (``portable`` writes them,
``in_run_dir`` reads them back), so that a run dir can be moved or copied.

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


# ------------------------------------------------------------------------------------------
# Paths in records
# ------------------------------------------------------------------------------------------


# a run dir holds this record once prepared: what marks the run dir a nested one (a study's seed dir, a
# sweep's trial dir) lies in
PREPARED = Path("prepare") / "prepare.json"


def _relative(path: str | Path, run_dir: str | Path, nested: bool = True) -> str | None:
    """``path`` relative to ``run_dir`` when it lies inside it, else None. By name first (a symlink
    inside the run dir is a file of the run dir), then through symlinks (a run dir named through a
    link, a path named without it). ``nested``: a path inside the run dir that ``run_dir`` is nested
    in (its closest parent holding ``prepare/prepare.json``) is relative too, with ``..``."""
    for norm in (os.path.abspath, os.path.realpath):
        target, base = Path(norm(path)), Path(norm(run_dir))
        if target.is_relative_to(base):
            return os.path.relpath(target, base)
    if nested:
        target, base = Path(os.path.abspath(path)), Path(os.path.abspath(run_dir))
        for parent in base.parents:
            if (parent / PREPARED).is_file():
                return os.path.relpath(target, base) if target.is_relative_to(parent) else None
    return None


def within(path: str | Path, directory: str | Path) -> bool:
    """Whether ``path`` lies inside ``directory`` (or is it), by name or through symlinks."""
    return _relative(path, directory, nested=False) is not None


def portable(path: str | Path, run_dir: str | Path) -> str:
    """How a record of ``run_dir`` names ``path``: relative to ``run_dir`` when ``path`` lies inside it
    (or inside the run dir it is nested in: a study's seed dir names the study's files with ``..``),
    else absolute (an input from outside: a model dir, the user's data), or as given when no such
    local path exists (a hub id)."""
    relative = _relative(path, run_dir)
    if relative is not None:
        return relative
    return str(Path(path).resolve()) if Path(path).exists() else str(path)


def shown(path: str | Path, run_dir: str | Path) -> str:
    """``path`` as a model card shows it: in backquotes, by its path in ``run_dir`` (said so) when it
    lies there, else as ``portable`` names it."""
    return f"`{portable(path, run_dir)}`" + (" (in the run dir)" if within(path, run_dir) else "")


def in_run_dir(recorded: str | Path, run_dir: str | Path) -> str:
    """The path a record of ``run_dir`` names, to open from anywhere: a relative one under ``run_dir``
    (wherever the run dir is now), an absolute one as is (an input from outside, or a record written
    before records named the run dir's files relative to it)."""
    path = Path(recorded)
    return str(path) if path.is_absolute() else os.path.abspath(Path(run_dir) / path)


def portable_paths(record, run_dir: str | Path):
    """A copy of the JSON-like ``record`` in which every absolute path that ``portable`` names relative
    to ``run_dir`` is so named; other values are kept as they are."""
    if isinstance(record, dict):
        return {k: portable_paths(v, run_dir) for k, v in record.items()}
    if isinstance(record, (list, tuple)):
        return type(record)(portable_paths(v, run_dir) for v in record)
    if isinstance(record, str) and os.path.isabs(record):
        relative = _relative(record, run_dir)
        return record if relative is None else relative
    return record


def resolved_paths(record, run_dir: str | Path, keys: tuple[str, ...]):
    """A copy of the JSON-like ``record`` in which the values of ``keys``, at any depth (a path, or a
    list of paths), are paths to open (``in_run_dir``)."""
    if isinstance(record, dict):
        out = {}
        for k, v in record.items():
            if k in keys and isinstance(v, str):
                out[k] = in_run_dir(v, run_dir)
            elif k in keys and isinstance(v, list) and all(isinstance(p, str) for p in v):
                out[k] = [in_run_dir(p, run_dir) for p in v]
            else:
                out[k] = resolved_paths(v, run_dir, keys)
        return out
    if isinstance(record, list):
        return [resolved_paths(v, run_dir, keys) for v in record]
    return record
