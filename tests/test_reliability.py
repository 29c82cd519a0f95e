"""Every bad input of scripts/reliability_inputs.py that fails while the config is read: through the
real `warm-ray` command, exit code 2, one line on stderr, no traceback, naming the key or file at
fault. Preference files: a DataError naming the file, for each malformed one (or the chat template
that cannot render them). Of scripts/reliability_faults.py, whose cases take minutes each: that a
stop kills every process of the command. And that each script rewrites only its own tables of
docs/reliability.md."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent.parent / "scripts"


def _load(name: str):
    """A script, loaded by its path (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


inputs = _load("reliability_inputs")
faults = _load("reliability_faults")

FAST = [c for c in inputs.CLI_CASES if c.fast]


def test_at_least_thirty_cases():
    assert len(inputs.CLI_CASES) + len(inputs.PREFERENCE_CASES) >= 30
    assert len(FAST) >= 30


@pytest.mark.parametrize("case", FAST, ids=[c.name for c in FAST])
def test_bad_input_is_one_clean_line(case, tmp_path):
    r = inputs.run_cli_case(case, tmp_path)
    assert r.exit_code == 2, r
    assert not r.traceback, r
    assert r.lines == 1, r
    assert r.error.startswith("warm-ray"), r
    assert r.names_it, f"the error does not name {case.names!r}: {r.error}"
    assert r.seconds < 30  # failed while the config was read, before any stage started


@pytest.mark.parametrize("name, filename, data", inputs.PREFERENCE_CASES,
                         ids=[c[0] for c in inputs.PREFERENCE_CASES])
def test_bad_preference_file_is_a_data_error(name, filename, data, tmp_path):
    r = inputs.run_preference_case(name, filename, data, tmp_path)
    assert r.exit_code == 2 and not r.traceback, r
    assert r.error.startswith(("data error: ", "config error: ")) and r.names_it, r


@pytest.mark.parametrize("name, template", inputs.TEMPLATE_CASES, ids=[c[0] for c in inputs.TEMPLATE_CASES])
def test_a_chat_template_that_cannot_render_is_a_data_error(name, template, tmp_path):
    r = inputs.run_template_case(name, template, tmp_path)
    assert r.exit_code == 2 and not r.traceback, r
    assert r.error.startswith("data error: data.chat_template = "), r


def test_table_counts_tracebacks(tmp_path):
    cli = [inputs.run_cli_case(FAST[0], tmp_path / "a")]
    prefs = [inputs.run_preference_case(*inputs.PREFERENCE_CASES[0], tmp_path / "b")]
    text = inputs.markdown(cli, prefs)
    assert "**2 cases, 2 clean, 0 tracebacks.**" in text
    assert str(tmp_path) not in text  # scratch paths are written as $DIR


def test_a_stop_kills_every_process_of_the_command(tmp_path):
    """The stopped-run cases kill a stage's whole session (its driver, local Ray, actors) at once."""
    import subprocess
    import time

    proc = subprocess.Popen(["bash", "-c", "sleep 600 & sleep 600 & wait"], start_new_session=True)
    try:
        while len(faults._session_pids(proc.pid)) < 3:
            assert proc.poll() is None
            time.sleep(0.05)
        faults.kill_session(proc.pid)
        assert proc.wait(timeout=60) == -9 and faults._session_pids(proc.pid) == []
    finally:
        if proc.poll() is None:
            faults.kill_session(proc.pid)


def test_without_run_dir_cases_the_doc_keeps_their_last_tables(tmp_path):
    doc = tmp_path / "reliability.md"
    assert "reliability_faults.py" in "\n".join(inputs.kept_run_dir_section(doc))  # none yet: says how
    doc.write_text("# old\n\n## Damaged files: healed or named\n\n| a | b |\n\n## Stopped runs\n\n| c |\n")
    section = inputs.kept_run_dir_section(doc)
    assert section == ["", "## Damaged files: healed or named", "", "| a | b |", "", "## Stopped runs", "", "| c |"]
    assert inputs.markdown([], [], section).endswith("## Stopped runs\n\n| c |\n")


def test_without_bad_inputs_the_doc_keeps_their_last_tables(tmp_path):
    doc = tmp_path / "reliability.md"
    assert "reliability_inputs.py" in "\n".join(faults.kept_inputs_section(doc))  # none yet: says how
    doc.write_text("# old\n\n| a | b |\n\n## Damaged files: healed or named\n\n| c |\n")
    assert faults.kept_inputs_section(doc) == ["# old", "", "| a | b |"]


def test_either_script_rewrites_only_its_own_tables(tmp_path):
    """The bad inputs, then the run-dir tables, then the bad inputs again: each keeps the other's."""
    doc = tmp_path / "reliability.md"
    cli = [inputs.run_cli_case(FAST[0], tmp_path / "a")]
    doc.write_text(inputs.markdown(cli, [], inputs.kept_run_dir_section(doc)))
    bad_inputs = doc.read_text().split(faults.RUN_DIR_HEADING)[0]
    doc.write_text(faults.markdown(faults.run_dir_tables([], [], 60.0), doc))
    both = doc.read_text()
    assert both.startswith(bad_inputs) and "**0 cases: 0 healed, 0 named, 0 neither.**" in both
    doc.write_text(inputs.markdown(cli, [], inputs.kept_run_dir_section(doc)))
    assert doc.read_text() == both
