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
    assert r.error.startswith("data error: ") and filename in r.error, r


def test_table_counts_tracebacks(tmp_path):
    cli = [reliability.run_cli_case(FAST[0], tmp_path / "a")]
    prefs = [reliability.run_preference_case(*reliability.PREFERENCE_CASES[0], tmp_path / "b")]
    text = reliability.markdown(cli, prefs)
    assert "**2 cases, 2 clean, 0 tracebacks.**" in text
    assert str(tmp_path) not in text  # scratch paths are written as $DIR
