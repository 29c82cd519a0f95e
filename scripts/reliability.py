"""Bad inputs, one by one, through the real `warm-ray` command: what does a user see?

Each case runs `warm-ray ...` in a fresh directory (with the files the case needs), captures
stderr and the exit code, and checks the answer is one line, exit code 2, no traceback, naming
the key, file or path at fault. Preference files go through `warm_ray.data.load_preferences`,
the loader of user data; a DataError there is what the CLI prints as one line.

    python scripts/reliability.py              # every case; writes docs/reliability.md
    python scripts/reliability.py --fast       # only the cases that fail while the config is read
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"
# Written in place of the case's scratch directory in commands and messages.
HERE = "$DIR"

# a tiny Hugging Face dir whose config.json is not JSON, and one without config.json
NOT_JSON = {"model/config.json": b"{not json", "model/tokenizer.json": b"{}"}
NO_CONFIG = {"model/tokenizer_config.json": b"{}"}


@dataclass
class Case:
    """One bad input given to `warm-ray` (``args``, with $DIR for the case's scratch directory)."""

    name: str
    args: list[str]
    # what the error must name: the dotted key, the file or the path at fault
    names: str
    # files the case needs, relative to $DIR (bytes, so that undecodable text can be written)
    files: dict[str, bytes] = field(default_factory=dict)
    # False for cases that get past the config and fail in a stage (seconds, not milliseconds)
    fast: bool = True


CLI_CASES = [
    Case("batch size 0", ["warm", "--set", "warm.batch_size=0"], "warm.batch_size"),
    Case("one LMC point", ["warm", "--set", "warm.lmc_points=1"], "warm.lmc_points"),
    Case("negative learning rate", ["rl", "--set", "rl.lr=-1e-3"], "rl.lr"),
    Case("EMA rate above 1", ["warp", "--set", "warp.rl.ema_mu=1.5"], "warp.rl.ema_mu"),
    Case("EMA rate 0", ["warp", "--set", "warp.rl.ema_mu=0"], "warp.rl.ema_mu"),
    Case("missing base model", ["prepare", "--set", "prepare.base_model=/missing"], "prepare.base_model"),
    Case("base model dir without config.json", ["prepare", "--set", "prepare.base_model=$DIR/model"],
         "prepare.base_model", NO_CONFIG),
    Case("base model config.json not JSON", ["prepare", "--set", "prepare.base_model=$DIR/model"],
         "prepare.base_model", NOT_JSON),
    Case("missing featurizer", ["warm", "--set", "warm.featurizer=/missing/encoder"], "warm.featurizer"),
    Case("member index >= M", ["rl", "--set", "warm.m=2", "--set", "rl.single_member=5"], "rl.single_member"),
    Case("non-UTF-8 YAML", ["warm", "--config", "$DIR/bad.yaml"], "bad.yaml",
         {"bad.yaml": b"warm:\n  m: \xff\xfe\n"}),
    Case("--config names a folder", ["warm", "--config", "$DIR"], HERE),
    Case("--config file missing", ["warm", "--config", "$DIR/nope.yaml"], "nope.yaml"),
    Case("YAML syntax error", ["warm", "--config", "$DIR/c.yaml"], "c.yaml", {"c.yaml": b"warm: [1, 2\n"}),
    Case("YAML top level a list", ["warm", "--config", "$DIR/c.yaml"], "c.yaml", {"c.yaml": b"- 1\n- 2\n"}),
    Case("misspelt key in YAML", ["warm", "--config", "$DIR/c.yaml"], "warm.lerning_rate",
         {"c.yaml": b"warm:\n  lerning_rate: 0.1\n"}),
    Case("wrong type in YAML", ["warm", "--config", "$DIR/c.yaml"], "warm.m", {"c.yaml": b"warm:\n  m: four\n"}),
    Case("section given a number", ["warp", "--set", "warp.rl=3"], "warp.rl"),
    Case("override without '='", ["warm", "--set", "warm.m"], "warm.m"),
    Case("unknown override key", ["rl", "--set", "rl.nope=1"], "rl.nope"),
    Case("override value not YAML", ["warm", "--set", "warm.lrs=[1,"], "warm.lrs"),
    Case("NaN learning rate", ["rl", "--set", "rl.lr=.nan"], "rl.lr"),
    Case("M = 0", ["warm", "--set", "warm.m=0"], "warm.m"),
    Case("label noise 1.0", ["prepare", "--set", "prepare.label_noise=1.0"], "prepare.label_noise"),
    Case("unknown rollout backend", ["rl", "--set", "rl.backend=tpu"], "rl.backend"),
    Case("unknown reward kind", ["rl", "--set", "rl.reward=best"], "rl.reward"),
    Case("unknown baseline", ["rl", "--set", "rl.baseline=mean"], "rl.baseline"),
    Case("leave-one-out with one sample", ["rl", "--set", "rl.samples_per_prompt=1"], "rl.samples_per_prompt"),
    Case("temperature 0", ["rl", "--set", "rl.temperature=0"], "rl.temperature"),
    Case("empty learning-rate grid", ["warm", "--set", "warm.lrs=[]"], "warm.lrs"),
    Case("dropout above 1", ["warm", "--set", "warm.dropouts=[0.1, 1.5]"], "warm.dropouts[1]"),
    Case("member list of the wrong length", ["warm", "--set", "warm.m=2", "--set", "warm.members=[{lr: 0.001}]"],
         "warm.members"),
    Case("init checkpoint out of range", ["warm", "--set", "warm.m=1", "--set", "warm.members=[{init_checkpoint: 7}]"],
         "warm.members[0].init_checkpoint"),
    Case("LITI η above 1", ["warp", "--set", "warp.eta=1.5"], "warp.eta"),
    Case("η grid outside [0, 1]", ["warp", "--set", "warp.eta_grid=[0.0, 2.0]"], "warp.eta_grid[1]"),
    Case("checkpoint step beyond lm_steps", ["prepare", "--set", "prepare.checkpoint_steps=[100, 1000000]"],
         "prepare.checkpoint_steps"),
    Case("heads do not divide the width", ["prepare", "--set", "prepare.model.n_head=7"], "prepare.model.n_embd"),
    Case("unknown architecture", ["prepare", "--set", "prepare.model.arch=bert"], "prepare.model.arch"),
    Case("negative GPU share", ["warm", "--set", "warm.trainer.num_gpus=-1"], "warm.trainer.num_gpus"),
    Case("unknown dtype", ["warm", "--set", "warm.trainer.dtype=int8"], "warm.trainer.dtype"),
    Case("unknown sweep search", ["sweep", "--set", "sweep.search=bayes"], "sweep.search"),
    Case("run_dir is a file", ["warm", "--run-dir", "$DIR/taken"], "run_dir", {"taken": b"x"}),
    Case("unknown stage", ["train"], "train"),
    Case("warm before prepare", ["warm", "--run-dir", "$DIR/empty_run"], "prepare.json", fast=False),
]

# (case, file name, bytes): given to load_preferences
PREFERENCE_CASES = [
    ("undecodable bytes (JSONL)", "p.jsonl", b'{"prompt": "a", "chosen": "\xff", "rejected": "c"}\n'),
    ("undecodable bytes (JSON)", "p.json", b"\xff\xfe[1]"),
    ("JSON file holding a number", "p.json", b"42\n"),
    ("JSON syntax error", "p.json", b'[{"prompt": "a",\n'),
    ("invalid JSON line", "p.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": \n'),
    ("chosen equal to rejected", "p.json", b'[{"prompt": "a", "chosen": "b", "rejected": "b"}]'),
    ("NaN gold value", "p.jsonl",
     b'{"prompt": "a", "chosen": "b", "rejected": "c", "gold_chosen": NaN, "gold_rejected": 1}\n'),
    ("missing column", "p.jsonl", b'{"prompt": "a", "chosen": "b"}\n'),
    ("empty file", "p.jsonl", b""),
    ("row not an object", "p.json", b'[["a", "b", "c"]]'),
    ("chosen not a string", "p.jsonl", b'{"prompt": "a", "chosen": 3, "rejected": "c"}\n'),
    ("corrupted flag not a bool", "p.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c", "corrupted": "yes"}\n'),
    ("not parquet", "p.parquet", b"not parquet"),
    ("unsupported format", "p.csv", b"prompt,chosen,rejected\n"),
    ("missing file", "missing.jsonl", None),
]


@dataclass
class Result:
    case: str
    command: str
    exit_code: int | str
    error: str
    lines: int
    traceback: bool
    names_it: bool
    seconds: float

    @property
    def clean(self) -> bool:
        return self.exit_code == 2 and self.lines == 1 and not self.traceback and self.names_it


def _command() -> list[str]:
    exe = Path(sys.executable).parent / "warm-ray"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "warm_ray.cli"]


def _write(files: dict[str, bytes | None], where: Path) -> None:
    for name, data in files.items():
        if data is None:
            continue
        path = where / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def run_cli_case(case: Case, scratch: Path) -> Result:
    scratch.mkdir(parents=True, exist_ok=True)
    _write(case.files, scratch)
    from warm_ray.cli import STAGES

    args = [a.replace(HERE, str(scratch)) for a in case.args]
    if case.args[0] in STAGES and "--run-dir" not in args:
        args += ["--run-dir", str(scratch / "run")]  # never write into the default run dir
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([*_command(), *args], cwd=scratch, env=env, capture_output=True, text=True,
                              timeout=60 if case.fast else 300)
        code, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:  # an input that is not caught runs a whole stage
        out = e.stderr or ""
        code, stderr = "timeout", out.decode(errors="replace") if isinstance(out, bytes) else out
    seconds = time.perf_counter() - t0
    lines = [line for line in stderr.splitlines() if line.strip()]
    error = lines[-1] if lines else ""
    return Result(case.name, f"warm-ray {shlex.join(case.args)}", code, _portable(error, scratch), len(lines),
                  "Traceback" in stderr, case.names.replace(HERE, str(scratch)) in error, seconds)


def run_preference_case(name: str, filename: str, data: bytes | None, scratch: Path) -> Result:
    """What the CLI would print for this file: one line for a DataError, a traceback otherwise."""
    from warm_ray.cli import USER_ERRORS, error_line
    from warm_ray.data import load_preferences

    scratch.mkdir(parents=True, exist_ok=True)
    _write({filename: data}, scratch)
    path = scratch / filename
    t0 = time.perf_counter()
    try:
        load_preferences(path)
        error, code, traceback = "(accepted)", 0, False
    except USER_ERRORS as e:
        error, code, traceback = error_line(e), 2, False
    except Exception as e:  # noqa: BLE001 - the point is to record what escapes
        error, code, traceback = f"{type(e).__name__}: {e}", 1, True
    error = _portable(" ".join(error.split("\n")), scratch)
    return Result(name, f"load_preferences({filename!r})", code, error, 1, traceback,
                  filename in error, time.perf_counter() - t0)


# Damaged files and stopped runs: each case runs in the test named beside it (they start stages,
# so they live in the test suite, not here). (case, the damaged file or the stop, what the next run does, test)
DAMAGED_FILES = [
    ("finished member's weights truncated", "warm/members/member_<i>/final/model.safetensors",
     "healed: `warm-ray warm` names the file in its log and rebuilds final/ from the member's last checkpoint "
     "(no training step); the average and tables are recomputed", "tests/test_rundir.py::test_warm_heals_damaged_weights_from_intact_copies"),
    ("member's newest checkpoint truncated", "warm/members/member_<i>/ckpt/model.safetensors (or optimizer.safetensors)",
     "healed: the member is named in the log and retrains from its previous checkpoint ckpt.prev/, "
     "or from the start when that one is damaged too", "tests/test_rundir.py::test_member_with_a_damaged_checkpoint_retrains_from_its_last_readable_one"),
    ("parameter server's copy of a member truncated", "warm/ps/member_<i>.safetensors",
     "healed: the server drops it (logged) and the driver pushes the member again from its final/ weights",
     "tests/test_rundir.py::test_warm_heals_damaged_weights_from_intact_copies"),
    ("parameter server's average truncated", "warm/ps/average.safetensors",
     "healed: recomputed from the members (logged)", "tests/test_rundir.py::test_warm_heals_damaged_weights_from_intact_copies"),
    ("WARM RM truncated", "warm/warm_rm/model.safetensors",
     "named: `warm-ray rl` / `warp` stop with one line, `error: <path>/warm_rm/model.safetensors: damaged weights "
     "file (...); rerun `warm-ray warm` on this run_dir to rebuild it`; `warm-ray warm` rebuilds it from the members",
     "tests/test_rundir.py::test_warm_heals_damaged_weights_from_intact_copies"),
    ("base-LM checkpoint truncated", "prepare/lm/step_<k>/model.safetensors",
     "healed: `warm-ray prepare` names it in its log and rebuilds prepare (same seeds, same data)",
     "tests/test_rundir.py::test_prepare_rebuilds_under_a_changed_field_only"),
    ("RL checkpoint truncated", "rl/<mode>/ckpt/*.safetensors",
     "healed: with --resume the run names the file in its log and retrains from the start", "(code path in actors/rlhf.py)"),
]
STOPPED_RUNS = [
    ("prepare", "stopped after its base LM", "the LM is kept, the splits are built", "tests/test_rundir.py::test_prepare_rebuilds_under_a_changed_field_only"),
    ("warm", "a trainer killed mid-training (Ray restarts it)", "the member continues from its checkpoint", "tests/test_warm.py::test_killed_trainer_resumes_from_its_checkpoint"),
    ("warm (sweep)", "the sweep driver killed, then `--resume`", "finished trials kept, members continue from checkpoints", "tests/test_sweep.py::test_interrupted_sweep_resumes_and_reports_the_best_config"),
    ("rl", "crash after step 4 (checkpoint at 3), then `--resume`", "steps 4.. redone from the checkpoint; a finished run is reused", "tests/test_rl.py::test_crashed_run_resumes_from_its_last_checkpoint"),
    ("warp", "crash after iteration 1's first run, then `--resume`", "the finished run is reused, the rest computed", "tests/test_warp.py::test_warp_iterates_resumes_and_liti_lowers_kl"),
]


def _portable(text: str, scratch: Path) -> str:
    """The message with the scratch directory written as $DIR (the table reads the same anywhere)."""
    return text.replace(str(scratch), HERE)


def run_all(work: Path, fast_only: bool = False) -> tuple[list[Result], list[Result]]:
    cli = [run_cli_case(c, work / f"cli_{i:02d}") for i, c in enumerate(CLI_CASES) if c.fast or not fast_only]
    prefs = [run_preference_case(n, f, d, work / f"pref_{i:02d}") for i, (n, f, d) in enumerate(PREFERENCE_CASES)]
    return cli, prefs


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'")


def markdown(cli: list[Result], prefs: list[Result]) -> str:
    n = len(cli) + len(prefs)
    tracebacks = sum(r.traceback for r in cli + prefs)
    clean = sum(r.clean for r in cli + prefs)
    out = [
        "# Reliability: what a user sees for a bad input",
        "",
        "Generated by `python scripts/reliability.py` (the fast cases also run in",
        "`tests/test_reliability.py`). Each case is one bad input; a clean answer is exit code 2,",
        "one line on stderr, no traceback, naming the key, file or path at fault (`--debug` shows",
        "the traceback). `$DIR` stands for the case's scratch directory.",
        "",
        f"**{n} cases, {clean} clean, {tracebacks} tracebacks.**",
        "",
        "## Through the `warm-ray` command",
        "",
        "| case | command | exit code | error (last line of stderr) | lines | traceback |",
        "|---|---|---:|---|---:|---|",
    ]
    for r in cli:
        out.append(f"| {_cell(r.case)} | `{_cell(r.command)}` | {r.exit_code} | {_cell(r.error)} | {r.lines} | "
                   f"{'yes' if r.traceback else 'no'} |")
    out += [
        "",
        "## Preference files (`warm_ray.data.load_preferences`)",
        "",
        "| case | call | exit code (CLI) | error | traceback |",
        "|---|---|---:|---|---|",
    ]
    for r in prefs:
        out.append(f"| {_cell(r.case)} | `{_cell(r.command)}` | {r.exit_code} | {_cell(r.error)} | "
                   f"{'yes' if r.traceback else 'no'} |")
    return "\n".join(out + run_dir_tables()) + "\n"


def run_dir_tables() -> list[str]:
    """Damaged files and stopped runs (the run-dir contract, ``warm_ray.rundir``); checked by the tests named."""
    out = [
        "",
        "## Damaged files: healed or named",
        "",
        f"{len(DAMAGED_FILES)} cases, each a file cut in half (a full disk, a killed copy). A file that fails to "
        "load is either rebuilt from an intact copy, with a log line saying so, or named in a one-line error.",
        "",
        "| case | file | what the next run does | checked by |",
        "|---|---|---|---|",
    ]
    out += [f"| {_cell(c)} | `{_cell(f)}` | {_cell(w)} | `{_cell(t)}` |" for c, f, w, t in DAMAGED_FILES]
    out += [
        "",
        "## Stopped runs: nothing that finished is recomputed",
        "",
        "| stage | stop | what the rerun does | checked by |",
        "|---|---|---|---|",
    ]
    out += [f"| {_cell(a)} | {_cell(b)} | {_cell(c)} | `{_cell(t)}` |" for a, b, c, t in STOPPED_RUNS]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fast", action="store_true", help="skip the cases that start a stage")
    p.add_argument("--out", default=str(DOC), help="markdown table written here")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="warm-ray-reliability-"))
    try:
        cli, prefs = run_all(work, fast_only=args.fast)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = markdown(cli, prefs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    bad = [r for r in cli + prefs if not r.clean]
    for r in bad:
        print(f"NOT CLEAN: {r.case}: exit {r.exit_code}, {r.lines} lines, traceback {r.traceback}, "
              f"names it {r.names_it}: {r.error}", file=sys.stderr)
    print(f"{len(cli) + len(prefs)} cases, {len(bad)} not clean; table in {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
