"""The run-directory contract every stage opens its directory through.

A stage's work is split into units (a prepare, a WARM member, the WARM evaluation, an RL run, a
WARP iteration, a LITI point, a study part). Each unit lives in its own directory and, once it
finished, holds ``unit.json``: the fingerprint of the config fields it depends on and its result.
A rerun reuses a unit only when its fingerprint matches; otherwise the unit's directory is
emptied and the unit recomputed, and the log says which of the two happened and why.

A unit dir is never written or emptied through a symlink: a unit path that is a symlink, or has
one among its parents inside the run dir, is refused with one line (``inside``) instead of
following it, so a recompute cannot delete another folder's files. The run dir itself may be a
symlink (runs on another disk); what is inside it may not.

``--resume`` means the same in every stage: a finished unit of the same fingerprint is reused
with or without it; an unfinished unit of the same fingerprint (``started.json`` matches)
continues from its checkpoint only with ``--resume``, and starts over without it.

Files are written atomically (``warm_ray.files.atomic_write_json`` / ``atomic_dir``), so a unit
is either finished with all its outputs or not finished. A weights file that does not load is
named in a ``UserError`` (``check_safetensors``) so that a stage can rebuild it from an intact
copy, or stop with one line that says which file is damaged.

A run dir can be moved (``mv``) or copied (``cp -a``): every record in it (``unit.json`` results,
``prepare.json``, ``summary.json``, ``results.json``, ``normaliser.json``, ``spec.json``) names the
run dir's own files by their path relative to the run dir (``prepare/lm/step_120``,
``rl/warm/policy``), whichever directory the record itself is in: ``warm_ray.files.portable`` writes
them, ``warm_ray.files.in_run_dir`` resolves them against the run dir where it is now. A run dir
nested in another (a study's seed dir, a sweep's trial dir) names the enclosing one's files with
``..``. Inputs from outside it (the user's data, a model dir elsewhere, a hub id) are named
absolute, beside a fingerprint of their content. Fingerprints know the run dir's own files by that
relative path (and a dir's files' sizes and modification times, ``warm_ray.sources.dir_fingerprint``),
never by where the run dir is: a moved or copied run dir reuses every unit, and a copy reads no file
of the original.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path

from warm_ray.config import UserError
from warm_ray.files import atomic_write_json
from warm_ray.lock import held_run_dirs

__all__ = ["MARKER", "STARTED", "check_safetensors", "damaged_weights",
           "finish", "fingerprint", "inside", "open_unit", "pick", "read_json", "reuse", "start"]

log = logging.getLogger("warm_ray.rundir")

MARKER = "unit.json"  # written last, when a unit finished: {"fingerprint", "result"}
STARTED = "started.json"  # written first, when a unit starts: {"fingerprint"}


def _plain(obj):
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def fingerprint(fields: Mapping) -> str:
    """A short hash of ``fields`` (JSON, keys sorted; dataclasses as dicts)."""
    blob = json.dumps(fields, sort_keys=True, default=lambda o: _plain(o) if is_dataclass(o) else str(o))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pick(tree: Mapping, dotted: str):
    """``tree["a"]["b"]`` for ``"a.b"``."""
    node = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def without(fields: Mapping, ignored: Iterable[str]) -> dict:
    """``fields`` less the keys in ``ignored`` (settings that do not change a unit's outputs)."""
    ignored = set(ignored)
    return {k: v for k, v in fields.items() if k not in ignored}


def read_json(path: str | Path) -> dict | None:
    """A JSON file's content, or None when it is missing or unreadable (a damaged marker is no marker)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def inside(unit_dir: str | Path) -> Path:
    """``unit_dir``, after checking that no symlink stands between the run dir and it.

    The run dir is the one this process holds (``warm_ray.lock``); without one, only ``unit_dir``
    itself is checked.
    """
    unit_dir = Path(unit_dir)
    absolute = unit_dir.absolute()
    roots = [r.absolute() for r in held_run_dirs()]
    root = next((r for r in roots if absolute.is_relative_to(r)), None)
    chain = [absolute] if root is None else [absolute, *[p for p in absolute.parents if p.is_relative_to(root) and p != root]]
    for path in chain:
        if path.is_symlink():
            raise UserError(f"{path} is a symlink (to {os.readlink(path)}): warm-ray writes a run dir's units itself "
                            "and never through a link; remove the link (its target is left as it is) and rerun")
    return unit_dir


def _clear(unit_dir: Path, keep: Iterable[str] = ()) -> None:
    keep = set(keep)
    for child in unit_dir.iterdir():
        if child.name in keep:
            continue
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def reuse(unit_dir: str | Path, fp: str, what: str, *, clear: bool = True, keep: Iterable[str] = (),
          marker: str = MARKER) -> dict | None:
    """The result of a unit that finished under fingerprint ``fp``, or None.

    Logs "reused" or "recomputed" with the reason. When the unit finished under another
    fingerprint, its directory is emptied (``clear``; names in ``keep`` stay) so that nothing of
    the old config is left beside the new outputs.
    """
    unit_dir = inside(unit_dir)
    record = read_json(unit_dir / marker)
    if record is not None and record.get("fingerprint") == fp:
        log.info("%s: reused (finished under this config, fingerprint %s)", what, fp)
        return record["result"]
    if record is not None:
        log.info("%s: recomputed (finished under another config: fingerprint %s, now %s)",
                 what, record.get("fingerprint"), fp)
        if clear and unit_dir.is_dir():
            _clear(unit_dir, keep)
    return None


def start(unit_dir: str | Path, fp: str, what: str, *, resume: bool, keep: Iterable[str] = ()) -> bool:
    """Open an unfinished unit; True when it continues a stopped one (same fingerprint, ``resume``).

    Otherwise the directory is emptied (names in ``keep`` stay) and the unit starts over; the log
    says why. ``started.json`` records the fingerprint the unit is now computed under.
    """
    unit_dir = inside(unit_dir)
    unit_dir.mkdir(parents=True, exist_ok=True)
    for half in unit_dir.glob(f".{STARTED}.*"):  # a start record cut off by a kill: the unit never started
        half.unlink(missing_ok=True)
    started = read_json(unit_dir / STARTED)
    leftovers = [c for c in unit_dir.iterdir() if c.name not in set(keep) | {STARTED}]
    if started is not None and started.get("fingerprint") == fp and resume:
        if leftovers:
            log.info("%s: continued (stopped under this config, --resume)", what)
        return True
    if leftovers:
        why = ("stopped under another config" if started is not None and started.get("fingerprint") != fp
               else "stopped; without --resume it starts over" if started is not None
               else "no record of the config it was started under")
        log.info("%s: recomputed from the start (%s)", what, why)
        _clear(unit_dir, keep)
    else:
        log.info("%s: computed (new)", what)
    atomic_write_json(unit_dir / STARTED, {"fingerprint": fp})
    return False


def open_unit(unit_dir: str | Path, fp: str, what: str, *, resume: bool, keep: Iterable[str] = ()):
    """(result, continued): a finished unit's result (``continued`` False), or None and whether an
    unfinished unit continues from its checkpoint. One call for the common case."""
    result = reuse(unit_dir, fp, what, keep=keep)
    if result is not None:
        return result, False
    return None, start(unit_dir, fp, what, resume=resume, keep=keep)


def finish(unit_dir: str | Path, fp: str, result: dict, marker: str = MARKER) -> dict:
    """Record that the unit finished under ``fp`` with ``result`` (atomic; written last)."""
    atomic_write_json(Path(unit_dir) / marker, {"fingerprint": fp, "result": result})
    return result


def forget(unit_dir: str | Path) -> None:
    """Drop a unit's finish record (its outputs turned out damaged): the next open recomputes it."""
    Path(unit_dir, MARKER).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------
# Damaged files
# ------------------------------------------------------------------------------------------


def damaged_weights(path: str | Path) -> str | None:
    """Why a safetensors file (or a model dir's ``model.safetensors``) does not load; None if it does.

    Reads the header and checks that the file covers every tensor it declares (a truncated file
    fails here), without reading the tensors.
    """
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.exists():
        return "missing"
    try:
        with safe_open(str(path), "pt") as f:
            f.keys()
    except Exception as e:  # safetensors raises its own error type for every kind of damage
        return " ".join(str(e).split()) or type(e).__name__
    return None


def check_safetensors(path: str | Path, fix: str) -> None:
    """Raise a one-line UserError naming ``path`` when its weights do not load; ``fix`` says what to do."""
    why = damaged_weights(path)
    if why is not None:
        target = Path(path) / "model.safetensors" if Path(path).is_dir() else Path(path)
        raise UserError(f"{target}: damaged weights file ({why}); {fix}")
