"""Every bad input of scripts/reliability.py that fails while the config is read: through the real
`warm-ray` command, exit code 2, one line on stderr, no traceback, naming the key or file at fault.
Preference files: a DataError naming the file, for each malformed one."""

import importlib.util
import sys
from pathlib import Path

import pytest

_path = Path(__file__).parent.parent / "scripts" / "reliability.py"
_spec = importlib.util.spec_from_file_location("reliability", _path)
reliability = importlib.util.module_from_spec(_spec)
sys.modules["reliability"] = reliability  # its dataclasses look their module up by name
_spec.loader.exec_module(reliability)

FAST = [c for c in reliability.CLI_CASES if c.fast]


def test_at_least_thirty_cases():
    assert len(reliability.CLI_CASES) + len(reliability.PREFERENCE_CASES) >= 30
    assert len(FAST) >= 30


@pytest.mark.parametrize("case", FAST, ids=[c.name for c in FAST])
def test_bad_input_is_one_clean_line(case, tmp_path):
    r = reliability.run_cli_case(case, tmp_path)
    assert r.exit_code == 2, r
    assert not r.traceback, r
    assert r.lines == 1, r
    assert r.error.startswith("warm-ray"), r
    assert r.names_it, f"the error does not name {case.names!r}: {r.error}"
    assert r.seconds < 30  # failed while the config was read, before any stage started


@pytest.mark.parametrize("name, filename, data", reliability.PREFERENCE_CASES,
                         ids=[c[0] for c in reliability.PREFERENCE_CASES])
def test_bad_preference_file_is_a_data_error(name, filename, data, tmp_path):
    r = reliability.run_preference_case(name, filename, data, tmp_path)
    assert r.exit_code == 2 and not r.traceback, r
    assert r.error.startswith(("data error: ", "config error: ")) and r.names_it, r


def test_table_counts_tracebacks(tmp_path):
    cli = [reliability.run_cli_case(FAST[0], tmp_path / "a")]
    prefs = [reliability.run_preference_case(*reliability.PREFERENCE_CASES[0], tmp_path / "b")]
    text = reliability.markdown(cli, prefs)
    assert "**2 cases, 2 clean, 0 tracebacks.**" in text
    assert str(tmp_path) not in text  # scratch paths are written as $DIR


def test_a_stop_kills_every_process_of_the_command(tmp_path):
    """The stopped-run cases kill a stage's whole session (its driver, local Ray, actors) at once."""
    import subprocess
    import time

    proc = subprocess.Popen(["bash", "-c", "sleep 600 & sleep 600 & wait"], start_new_session=True)
    try:
        while len(reliability._session_pids(proc.pid)) < 3:
            assert proc.poll() is None
            time.sleep(0.05)
        reliability.kill_session(proc.pid)
        assert proc.wait(timeout=60) == -9 and reliability._session_pids(proc.pid) == []
    finally:
        if proc.poll() is None:
            reliability.kill_session(proc.pid)


def test_without_run_dir_cases_the_doc_keeps_their_last_tables(tmp_path):
    doc = tmp_path / "reliability.md"
    assert "--run-dir-cases" in "\n".join(reliability.kept_run_dir_section(doc))  # none yet: says how
    doc.write_text("# old\n\n## Damaged files: healed or named\n\n| a | b |\n\n## Stopped runs\n\n| c |\n")
    section = reliability.kept_run_dir_section(doc)
    assert section == ["", "## Damaged files: healed or named", "", "| a | b |", "", "## Stopped runs", "", "| c |"]
    assert reliability.markdown([], [], section).endswith("## Stopped runs\n\n| c |\n")
