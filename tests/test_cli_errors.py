"""The `warm-ray` command: an error a user causes is one line on stderr with exit code 2
(a traceback only with --debug); a programming error keeps its traceback."""

import subprocess
import sys

import pytest

from warm_ray import cli
from warm_ray.config import ConfigError
from warm_ray.data import DataError


def warm_ray(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "warm_ray.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_config_error_is_one_line(tmp_path):
    p = warm_ray("warm", "--run-dir", str(tmp_path), "--set", "warm.batch_size=0")
    assert p.returncode == 2
    assert p.stderr == "warm-ray warm: config error: warm.batch_size = 0: must be >= 1\n"
    assert not (tmp_path / "warm").exists()  # nothing was started or written


def test_debug_shows_the_traceback(tmp_path):
    p = warm_ray("warm", "--run-dir", str(tmp_path), "--set", "warm.batch_size=0", "--debug")
    assert p.returncode != 0
    assert "Traceback" in p.stderr and "ConfigError: warm.batch_size = 0" in p.stderr


@pytest.mark.parametrize("content, match", [
    (b"warm:\n  m: \xff\n", "is not UTF-8 text"),
    (b"warm: [1, 2\n", "is not valid YAML: .*line 2"),
    (b"- 1\n", "top level must be a mapping"),
])
def test_bad_yaml_names_the_file(tmp_path, content, match):
    import re

    path = tmp_path / "my.yaml"
    path.write_bytes(content)
    p = warm_ray("warm", "--config", str(path), "--run-dir", str(tmp_path))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert str(path) in p.stderr and re.search(match, p.stderr)


def test_config_folder_and_missing_model_dir(tmp_path):
    p = warm_ray("warm", "--config", str(tmp_path))
    assert p.returncode == 2 and "is a directory" in p.stderr and p.stderr.count("\n") == 1
    (tmp_path / "model").mkdir()
    p = warm_ray("prepare", "--run-dir", str(tmp_path / "run"), "--set", f"prepare.base_model={tmp_path / 'model'}")
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "prepare.base_model" in p.stderr and "has no config.json" in p.stderr


def test_usage_error_is_one_line():
    p = warm_ray("train")
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "invalid choice: 'train'" in p.stderr


def test_error_line_unwraps_and_flattens():
    assert cli.error_line(ConfigError("a\n  b")) == "config error: a b"
    assert cli.error_line(DataError("f.jsonl, row 3: bad")) == "data error: f.jsonl, row 3: bad"
    err = FileNotFoundError(2, "No such file or directory", "/x/prepare.json")
    assert cli.error_line(err) == "error: /x/prepare.json: No such file or directory"

    class Wrapped(RuntimeError):  # how Ray hands back an exception raised in an actor
        cause = DataError("rows.jsonl: no rows")

    assert cli.error_line(Wrapped("remote traceback\n...")) == "data error: rows.jsonl: no rows"


def test_a_bug_is_not_a_user_error(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)  # the stage takes its run dir's lock, which creates the dir

    def broken(cfg, args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(cli.RUNNERS, "warm", broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(["warm", "--run-dir", "unused"])


def test_a_user_error_raised_by_a_stage_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)

    def missing_stage(cfg, args):
        raise FileNotFoundError(f"{cfg.run_dir}/prepare/prepare.json not found: run `warm-ray prepare` first")

    monkeypatch.setitem(cli.RUNNERS, "warm", missing_stage)
    assert cli.main(["warm", "--run-dir", "somewhere"]) == 2
    err = capsys.readouterr().err
    assert err == "warm-ray warm: error: somewhere/prepare/prepare.json not found: run `warm-ray prepare` first\n"


def test_a_model_dir_of_the_wrong_class_is_one_line(tmp_path):
    model = tmp_path / "rm"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["GPT2ForSequenceClassification"]}')
    (model / "tokenizer.json").write_text("{}")
    p = warm_ray("rl", "--run-dir", str(tmp_path / "run"), "--set", f"policy.model={model}")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert p.stderr == (f"warm-ray rl: config error: policy.model = {str(model)!r}: its config.json names "
                        "GPT2ForSequenceClassification, not a causal LM (a class ending ForCausalLM or LMHeadModel)\n")
    assert not (tmp_path / "run").exists()  # nothing was started or written
