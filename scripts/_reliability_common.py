"""What the two reliability scripts share: the `warm-ray` command they run, and docs/reliability.md.

``reliability_inputs.py`` writes the doc's bad-input tables and ``reliability_faults.py`` its
damaged-file, stopped-run and run-dir/machine-fault tables; each keeps the other's part of the doc
as it was, so either can be rerun alone (the run-dir cases take minutes, the bad inputs seconds).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"
# Written in place of a case's scratch directory in commands and messages.
HERE = "$DIR"
TITLE = "# Reliability: what a user sees for a bad input, a damaged file or a stopped run"
# Where the doc's run-dir tables start: the bad-input tables are everything above it.
RUN_DIR_HEADING = "## Damaged files"


def warm_ray_command() -> list[str]:
    """The `warm-ray` command of this Python (its console script, else the module)."""
    exe = Path(sys.executable).parent / "warm-ray"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "warm_ray.cli"]


def child_env() -> dict[str, str]:
    """The environment of a case's command: never the caller's Ray cluster, always a local one."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def cell(text: str) -> str:
    """``text`` as one markdown table cell (this machine's name written $HOST, process ids $PID,
    clock times $TIME: they differ on every run and machine)."""
    text = text.replace(f" on {socket.gethostname()} ", " on $HOST ")
    text = re.sub(r"\b(pid|PID|process) \d+", r"\1 $PID", text)
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "$TIME", text)
    return text.replace("|", "\\|").replace("`", "'")


def doc_parts(doc: Path) -> tuple[list[str], list[str]]:
    """The lines of ``doc`` above RUN_DIR_HEADING and from it on (the one script's tables, the
    other's); either is empty where the doc, or that part of it, does not exist yet."""
    text = doc.read_text() if doc.exists() else ""
    at = text.find(RUN_DIR_HEADING)
    head, tail = (text, "") if at < 0 else (text[:at], text[at:])
    return _lines(head), _lines(tail)


def _lines(text: str) -> list[str]:
    text = text.rstrip("\n")
    return text.split("\n") if text else []


def write_doc(out: Path, text: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def parser(doc: str) -> argparse.ArgumentParser:
    """The command line both scripts take; ``doc``: the script's module docstring, shown by --help."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DOC), help="markdown table written here")
    return p


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A scratch directory for the cases, removed afterwards whatever happened."""
    work = Path(tempfile.mkdtemp(prefix="warm-ray-reliability-"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
