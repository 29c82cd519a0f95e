"""What a user sees for a bad input, a damaged file or a stopped run, through the real `warm-ray` command.

Bad inputs: each case runs `warm-ray ...` in a fresh directory (with the files the case needs),
captures stderr and the exit code, and checks the answer is one line, exit code 2, no traceback,
naming the key, file or path at fault. Preference files go through what `warm-ray warm` does with
``data.preferences`` (the config check, then ``warm_ray.sources.preferences``: reading, TRL layouts,
chat templates, splits); a ConfigError or DataError there is what the CLI prints as one line.

Run directories (``--run-dir-cases``, ~10 min on 2 cores): on a tiny config, each damaged-file
case cuts a file of a run dir in half and runs the next `warm-ray` command, recording whether it
healed the file (exit 0, a log line, the file loads again) or named it (exit 2, one line); each
stopped-run case kills a stage's whole process session once a given file appears, runs the same
command again and records what the rerun reused, continued and recomputed.

    python scripts/reliability.py                   # bad inputs; keeps the doc's run-dir tables
    python scripts/reliability.py --run-dir-cases   # everything; writes docs/reliability.md
    python scripts/reliability.py --fast            # only the bad inputs that fail while the config is read
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from warm_ray.testing import TINY, TINY_WARM, mtimes, truncate

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
    # builds what the case needs in $DIR beyond plain files (a model dir)
    make: Callable[[Path], None] | None = None


def _mismatched_model(where: Path) -> None:
    """$DIR/model: a tiny causal LM whose vocabulary is smaller than the tokenizer saved with it."""
    from transformers import GPT2Config

    from warm_ray.data import corpus
    from warm_ray.models import build_policy, save_model, train_tokenizer

    tok = train_tokenizer(corpus()[:200], vocab_size=300)
    save_model(build_policy(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tok) // 2)), where / "model", tok)


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
    Case("preference file missing", ["warm", "--set", "data.preferences=$DIR/prefs.jsonl"], "data.preferences"),
    Case("preference file of another format", ["warm", "--set", "data.preferences=$DIR/prefs.csv"], "prefs.csv",
         {"prefs.csv": b"prompt,chosen,rejected\n"}),
    Case("held-out fractions sum to 1", ["warm", "--set", "data.selection_fraction=0.5",
                                         "--set", "data.test_fraction=0.5"], "data.test_fraction"),
    Case("OOD data without preference data", ["warm", "--set", "data.ood=$DIR/ood.jsonl"], "data.ood",
         {"ood.jsonl": b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n'}),
    Case("RM init dir without config.json", ["warm", "--set", "warm.inits=[$DIR/model]"], "warm.inits[0]", NO_CONFIG),
    Case("policy dir without config.json", ["rl", "--set", "policy.model=$DIR/model"], "policy.model", NO_CONFIG),
    Case("prompt file of another format", ["rl", "--set", "policy.prompts=$DIR/prompts.csv"], "policy.prompts",
         {"prompts.csv": b"a\n"}),
    Case("reward model dir that is neither", ["rl", "--set", "policy.reward_model=$DIR"], "policy.reward_model"),
    Case("tokenizer that does not match the model", ["warm", "--set", "warm.featurizer=$DIR/model"],
         "warm.featurizer", fast=False, make=_mismatched_model),
]

CHAT = (b'{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "a"}], '
        b'"rejected": [{"role": "assistant", "content": "b"}]}\n')
# (case, file name, bytes): given as data.preferences, rendered with a tokenizer that has no chat template
PREFERENCE_CASES = [
    ("chat messages, tokenizer without a chat template", "chat.jsonl", CHAT),
    ("every pair has chosen equal to rejected", "p.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "b"}\n'),
    ("a message without content", "chat.jsonl", CHAT.replace(b'"content": "a"', b'"text": "a"')),
    ("chosen is messages, rejected a string", "chat.jsonl", CHAT.replace(
        b'[{"role": "assistant", "content": "b"}]', b'"b"')),
    ("no split to train on", "p.json", b'{"training": [{"prompt": "a", "chosen": "b", "rejected": "c"}]}'),
    ("too few pairs to split", "p.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n'),
    ("undecodable bytes (JSONL)", "p.jsonl", b'{"prompt": "a", "chosen": "\xff", "rejected": "c"}\n'),
    ("undecodable bytes (JSON)", "p.json", b"\xff\xfe[1]"),
    ("JSON file holding a number", "p.json", b"42\n"),
    ("JSON syntax error", "p.json", b'[{"prompt": "a",\n'),
    ("invalid JSON line", "p.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": \n'),
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
    if case.make is not None:
        case.make(scratch)
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


_TOKENIZER = None


def _tokenizer_without_chat_template():
    """A tiny tokenizer with no chat template (as most encoders ship), built once."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from warm_ray.data import corpus
        from warm_ray.models import train_tokenizer

        _TOKENIZER = train_tokenizer(corpus()[:200], vocab_size=300)
        _TOKENIZER.chat_template = None
    return _TOKENIZER


def run_preference_case(name: str, filename: str, data: bytes | None, scratch: Path) -> Result:
    """What `warm-ray warm --set data.preferences=FILE` prints for this file: one line for a
    ConfigError or DataError, a traceback otherwise."""
    from warm_ray.cli import USER_ERRORS, error_line
    from warm_ray.config import load_config
    from warm_ray.sources import preferences

    scratch.mkdir(parents=True, exist_ok=True)
    _write({filename: data}, scratch)
    path = scratch / filename
    t0 = time.perf_counter()
    try:
        cfg = load_config(None, [f"run_dir={scratch / 'run'}", f"data.preferences={path}"])
        preferences(cfg, _tokenizer_without_chat_template(), "the RM tokenizer")
        error, code, traceback = "(accepted)", 0, False
    except USER_ERRORS as e:
        error, code, traceback = error_line(e), 2, False
    except Exception as e:  # noqa: BLE001 - the point is to record what escapes
        error, code, traceback = f"{type(e).__name__}: {e}", 1, True
    error = _portable(" ".join(error.split("\n")), scratch)
    return Result(name, f"warm-ray warm --set data.preferences=$DIR/{filename}", code, error, 1, traceback,
                  filename in error or "the RM tokenizer" in error, time.perf_counter() - t0)


def _portable(text: str, scratch: Path) -> str:
    """The message with the scratch directory written as $DIR (the table reads the same anywhere)."""
    return text.replace(str(scratch), HERE)


def run_all(work: Path, fast_only: bool = False) -> tuple[list[Result], list[Result]]:
    cli = [run_cli_case(c, work / f"cli_{i:02d}") for i, c in enumerate(CLI_CASES) if c.fast or not fast_only]
    prefs = [run_preference_case(n, f, d, work / f"pref_{i:02d}") for i, (n, f, d) in enumerate(PREFERENCE_CASES)]
    return cli, prefs


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'")


def markdown(cli: list[Result], prefs: list[Result], run_dir_section: list[str] = ()) -> str:
    n = len(cli) + len(prefs)
    tracebacks = sum(r.traceback for r in cli + prefs)
    clean = sum(r.clean for r in cli + prefs)
    out = [
        "# Reliability: what a user sees for a bad input, a damaged file or a stopped run",
        "",
        "Generated by `python scripts/reliability.py` (the fast cases also run in",
        "`tests/test_reliability.py`; the run-dir cases below by `--run-dir-cases`).",
        "Each case of the first two tables is one bad input; a clean answer is exit code 2,",
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
        "## Preference files (`warm-ray warm --set data.preferences=FILE`: the config check, then reading, TRL layouts, chat templates and splits)",
        "",
        "| case | call | exit code (CLI) | error | traceback |",
        "|---|---|---:|---|---|",
    ]
    for r in prefs:
        out.append(f"| {_cell(r.case)} | `{_cell(r.command)}` | {r.exit_code} | {_cell(r.error)} | "
                   f"{'yes' if r.traceback else 'no'} |")
    return "\n".join(out + list(run_dir_section)) + "\n"


# ------------------------------------------------------------------------------------------
# Run directories: damaged files and stopped runs, each run through `warm-ray` on a tiny config
# ------------------------------------------------------------------------------------------

# Every command on one run dir gets the same settings (a stage rerun under other settings would
# recompute by design, which is not what these cases measure). Members of 240 steps and RL runs
# of 200 steps, so that a stop lands mid-training; WARP: 2 iterations of 2 runs of 3 steps.
LONG_WARM = [*TINY_WARM, "warm.epochs=16", "warm.log_every=30"]
TINY_RL = ["rl.compare=[]", "rl.steps=200", "rl.checkpoint_every=5", "rl.prompts_per_step=2",
           "rl.samples_per_prompt=2", "rl.max_new_tokens=6", "rl.n_eval_prompts=4", "rl.monitor_every=0",
           "rl.reference_samples=4"]
TINY_WARP = ["warp.iterations=2", "warp.m=2", "warp.steps=3", "warp.eta_grid=[0.0]", "warp.baseline_betas=[]",
             "warp.rl.prompts_per_step=2", "warp.rl.samples_per_prompt=2", "warp.rl.max_new_tokens=6",
             "warp.rl.n_eval_prompts=4", "warp.rl.monitor_every=0", "warp.rl.reference_samples=4"]
SETTINGS = [*TINY, *LONG_WARM, *TINY_RL, *TINY_WARP]
STAGE_TIMEOUT_S = 900

# what the run-dir contract logs per unit (warm_ray.rundir)
UNIT_LOG = {"reused": r": reused \(", "continued": r": continued \(", "computed": r": computed \(new\)",
            "recomputed": r": recomputed"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PREFIX = re.compile(r"^\(\w+ pid=\d+(?:, ip=[\d.]+)?\)\s*")
_CLOCK = re.compile(r"^\d\d:\d\d:\d\d\s+")


@dataclass
class Run:
    """One `warm-ray` command on a run dir, as it went."""

    command: str  # as typed, less the shared --set settings; $DIR for the scratch directory
    exit_code: int | str
    log: list[str]  # stdout and stderr, one cleaned line each (no colours, Ray prefixes, clock)
    error: str  # the last line of stderr
    traceback: bool
    stopped: bool  # killed by the case before it finished
    seconds: float

    def lines(self, pattern: str) -> list[str]:
        return [line for line in self.log if re.search(pattern, line)]

    def count(self, pattern: str) -> int:
        return len(self.lines(pattern))


def _clean(line: str) -> str:
    return _CLOCK.sub("", _PREFIX.sub("", _ANSI.sub("", line).strip()))


def _session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid`` (the command and every process it started, Ray's included)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, session, ...
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(proc.name))
    return pids


def kill_session(sid: int, grace_s: float = 30) -> None:
    """SIGKILL every process of session ``sid``: the stage's driver, its local Ray and every actor
    at once (a lost machine, `kill -9` of everything), not a signal the driver could handle."""
    deadline = time.time() + grace_s
    while (pids := _session_pids(sid)) and time.time() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def warm_ray(stage: str, run_dir: Path, work: Path, *extra: str, stop_when=None) -> Run:
    """Run `warm-ray STAGE --run-dir RUN_DIR` with SETTINGS (+ ``extra``) in a session of its own.
    ``stop_when()``: polled while it runs; once true, the whole session is killed."""
    args = [stage, "--run-dir", str(run_dir), *extra]
    settings = [x for s in SETTINGS for x in ("--set", s)]  # before extra: an extra --set wins
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1")
    n = len(list(work.glob("cmd_*.out")))
    out_path, err_path = work / f"cmd_{n:02d}.out", work / f"cmd_{n:02d}.err"
    t0 = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([*_command(), *args[:3], *settings, *args[3:]], cwd=work, env=env, stdout=out,
                                stderr=err, start_new_session=True)
        stopped = False
        try:
            if stop_when is not None:
                while proc.poll() is None and time.perf_counter() - t0 < STAGE_TIMEOUT_S:
                    if stop_when():
                        kill_session(proc.pid)
                        stopped = True
                        break
                    time.sleep(0.05)
            proc.wait(timeout=max(1.0, STAGE_TIMEOUT_S - (time.perf_counter() - t0)))
            code = "killed" if stopped else proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        finally:
            kill_session(proc.pid)  # whatever the command left behind
    seconds = time.perf_counter() - t0
    stderr = err_path.read_text(errors="replace")
    text = out_path.read_text(errors="replace") + stderr
    err_lines = [line for line in stderr.splitlines() if line.strip()]
    return Run(f"warm-ray {shlex.join(args)}".replace(str(work), HERE), code,
               [_clean(line).replace(str(work), HERE) for line in text.splitlines() if line.strip()],
               _clean(err_lines[-1]).replace(str(work), HERE) if err_lines else "", "Traceback" in stderr,
               stopped, seconds)


def _exists(*paths: Path):
    return lambda: all(p.exists() for p in paths)


def _files(run_dir: Path, globs: list[str]) -> list[Path]:
    return sorted(p for g in globs for p in run_dir.glob(g) if p.is_file())


def _link(run_dir: Path, source: Path, stages: tuple[str, ...]) -> Path:
    """A run dir of its own that reuses ``source``'s stage outputs (as the tests link a shared prepare)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        (run_dir / stage).symlink_to(source / stage, target_is_directory=True)
    return run_dir


@dataclass
class DamageCase:
    """A file cut in half (``warm_ray.testing.truncate``), then one `warm-ray` command."""

    name: str
    file: str  # relative to the run dir
    stage: str
    extra: tuple[str, ...] = ()
    # lines of the log that say what the command did about the damage
    says: tuple[str, ...] = (r"damaged",)
    cut: bool = True  # False: the file is still damaged from the case before


@dataclass
class DamageResult:
    case: str
    file: str
    command: str
    exit_code: int | str
    outcome: str  # healed | named | neither
    said: str
    loads_after: bool
    seconds: float


def run_damage_case(case: DamageCase, run_dir: Path, work: Path, after=None) -> DamageResult:
    from warm_ray.rundir import damaged_weights

    path = run_dir / case.file
    if case.cut:
        truncate(path)
    run = warm_ray(case.stage, run_dir, work, *case.extra)
    loads = damaged_weights(path) is None
    if run.exit_code == 2 and not run.traceback and f"{path.parent.name}/{path.name}" in run.error:
        outcome, said = "named", run.error
    else:
        said = " / ".join(_short(lines[0], 320) for p in case.says if (lines := run.lines(p)))
        outcome = "healed" if run.exit_code == 0 and loads and said else "neither"
        if after is not None:
            said = "; ".join(s for s in (said, after(run_dir, run)) if s)
    return DamageResult(case.name, case.file, run.command, run.exit_code, outcome, _short(said), loads, run.seconds)


@dataclass
class StopResult:
    stage: str  # the stage, and which stop of it
    stop: str  # what had appeared when the session was killed
    killed: bool
    at_kill: str  # how far it had got (measured on disk right after the kill)
    command: str  # the rerun
    exit_code: int | str
    kept: tuple[int, int]  # finished outputs unchanged by the rerun / finished outputs at the stop
    units: dict[str, int]  # UNIT_LOG counts of the rerun
    resumed: str  # what the rerun's log says about where it continued
    seconds: float

    @property
    def ok(self) -> bool:
        return self.killed and self.exit_code == 0 and self.units["recomputed"] == 0 and self.kept[0] == self.kept[1]


def run_stop_case(stage: str, run_dir: Path, work: Path, *, stop: str, keep: list[str], says: tuple[str, ...],
                  resume: bool = True, at_kill=None, label: str = "") -> StopResult:
    """Start ``stage``, kill its whole session once ``run_dir/stop`` exists, rerun it; what was kept."""
    first = warm_ray(stage, run_dir, work, stop_when=_exists(*(run_dir / s for s in stop.split(" + "))))
    where = at_kill(run_dir) if at_kill is not None and first.stopped else ""
    kept = _files(run_dir, keep)
    before = mtimes(kept)
    again = warm_ray(stage, run_dir, work, *(["--resume"] if resume else []))
    unchanged = sum(1 for p in kept if p.exists() and p.stat().st_mtime_ns == before[str(p)])
    resumed = " / ".join(_short(lines[0], 320) + ("" if len(lines) == 1 else f" (and {len(lines) - 1} more like it)")
                         for p in says if (lines := again.lines(p)))
    return StopResult(f"{stage} ({label})" if label else stage, stop, first.stopped, where, again.command,
                      again.exit_code, (unchanged, len(kept)), {k: again.count(p) for k, p in UNIT_LOG.items()},
                      _short(resumed), first.seconds + again.seconds)


def _short(text: str, limit: int = 600) -> str:
    text = re.sub(r",? fingerprint [0-9a-f]{16}", "", " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _member_steps(index: int):
    def after(run_dir: Path, run: Run) -> str:
        results = json.loads((run_dir / "warm" / "results.json").read_text())
        return f"member {index} trained {results['members'][str(index)]['steps_this_life']} steps in this run"
    return after


def _prepare_parts(run_dir: Path) -> str:
    lm = sorted(int(p.parent.name.split("_")[1]) for p in run_dir.glob("prepare/lm/step_*/config.json"))
    data = (run_dir / "prepare" / "data" / "dataset_dict.json").exists()
    return f"base LM saved at steps {', '.join(map(str, lm))}; splits {'built' if data else 'not built'}"


def _checkpoint_steps(run_dir: Path) -> str:
    """Each member's newest checkpoint: ckpt/, or ckpt.prev/ when the stop landed while ckpt/ was replaced."""
    out = []
    for d in sorted(run_dir.glob("warm/members/member_*")):
        for name in ("ckpt", "ckpt.prev"):
            if (d / name / "trainer_state.json").exists():
                out.append(f"{d.name} at step {json.loads((d / name / 'trainer_state.json').read_text())['step']}"
                           + ("" if name == "ckpt" else f" ({name}/)"))
                break
        else:
            out.append(f"{d.name}: no checkpoint")
    return "newest checkpoints: " + ", ".join(out)


def _warm_units(run_dir: Path) -> str:
    from warm_ray.rundir import MARKER

    done = len(list(run_dir.glob(f"warm/members/member_*/{MARKER}")))
    evaluated = (run_dir / "warm" / MARKER).exists()
    return f"{done} members finished; evaluation {'finished' if evaluated else 'not finished'}"


def _rl_steps(run_dir: Path) -> str:
    path = run_dir / "rl" / "warm" / "metrics.jsonl"
    steps = len(path.read_text().splitlines()) if path.exists() else 0
    return f"{steps} steps logged"


def _warp_units(run_dir: Path) -> str:
    from warm_ray.rundir import MARKER

    done = [p.parent.relative_to(run_dir / "warp").as_posix() for p in sorted(run_dir.glob(f"warp/iter_*/*/{MARKER}"))]
    return f"{len(done)} units finished ({', '.join(done)})"


def run_dir_cases(work: Path, log=print) -> tuple[list[DamageResult], list[StopResult]]:
    """Every damaged-file and stopped-run case, in the order they build on each other."""
    from warm_ray.rundir import MARKER

    work.mkdir(parents=True, exist_ok=True)
    run = work / "run"
    damaged: list[DamageResult] = []
    stopped: list[StopResult] = []

    def note(r):
        log(f"  {getattr(r, 'case', getattr(r, 'stage', ''))}: exit {r.exit_code}, {r.seconds:.0f}s")
        return r

    # 1. prepare, killed once its base LM is saved; rerun
    stopped.append(note(run_stop_case(
        "prepare", run, work, stop="prepare/lm/step_120/config.json",
        keep=["prepare/tokenizer/tokenizer.json", "prepare/lm/step_*/model.safetensors"],
        says=(r"continued \(", r"skipping LM training"), resume=False, at_kill=_prepare_parts)))
    # 2. warm, killed mid-training; rerun with --resume
    stopped.append(note(run_stop_case(
        "warm", run, work, stop="warm/members/member_0/ckpt/trainer_state.json", label="mid-training",
        keep=["warm/lp_head.safetensors"], says=(r"lp_head.*reused", r"resumed from its checkpoint at step"),
        at_kill=_checkpoint_steps)))
    # 3. damaged weights of a finished WARM run
    damaged.append(note(run_damage_case(DamageCase(
        "finished member's weights", "warm/members/member_0/final/model.safetensors", "warm",
        says=(r"member 0: .* is damaged",)), run, work, after=_member_steps(0))))
    # the server's store is read when the evaluation reruns: here because warm.lmc_points changed
    damaged.append(note(run_damage_case(DamageCase(
        "parameter server's copy of a member", "warm/ps/member_1.safetensors", "warm",
        extra=("--set", "warm.lmc_points=2"),
        says=(r"member_1\.safetensors is damaged", r"member 1: parameter server copy")), run, work)))
    damaged.append(note(run_damage_case(DamageCase(
        "parameter server's average", "warm/ps/average.safetensors", "warm",
        says=(r"average\.safetensors is damaged",)), run, work)))
    damaged.append(note(run_damage_case(DamageCase(
        "WARM RM, read by the next stage", "warm/warm_rm/model.safetensors", "rl"), run, work)))
    damaged.append(note(run_damage_case(DamageCase(
        "WARM RM, then its own stage reruns", "warm/warm_rm/model.safetensors", "warm",
        says=(r"damaged weights .*warm_rm",), cut=False), run, work)))
    # 4. a member killed between two checkpoints, its newest one damaged
    run3 = _link(work / "run_ckpt", run, ("prepare",))
    first = warm_ray("warm", run3, work, stop_when=_exists(
        run3 / "warm/members/member_0/ckpt.prev/trainer_state.json",
        run3 / "warm/members/member_0/ckpt/trainer_state.json"))
    if first.stopped:
        damaged.append(note(run_damage_case(DamageCase(
            "a stopped member's newest checkpoint", "warm/members/member_0/ckpt/model.safetensors", "warm",
            extra=("--resume",), says=(r"ckpt is damaged", r"retrains from its last readable checkpoint")),
            run3, work)))
    # 5. warm killed after its members finished (own run dir: the main one's members are finished)
    run2 = _link(work / "run_members", run, ("prepare",))
    stopped.append(note(run_stop_case(
        "warm", run2, work,
        stop="warm/members/member_0/" + MARKER + " + warm/members/member_1/" + MARKER,
        keep=["warm/lp_head.safetensors", f"warm/members/member_*/{MARKER}",
              "warm/members/member_*/final/model.safetensors"],
        says=(r"member \d: reused",), resume=False, at_kill=_warm_units, label="after its members")))
    # 6. rl, killed mid-run; rerun with --resume; then its final policy damaged
    stopped.append(note(run_stop_case(
        "rl", run, work, stop="rl/warm/ckpt/learner.json", keep=[],
        says=(r"resuming .* from the checkpoint of step \d+",), at_kill=_rl_steps)))
    damaged.append(note(run_damage_case(DamageCase(
        "finished RL run's policy", "rl/warm/policy/model.safetensors", "rl",
        says=(r"final policy .* is damaged",)), run, work)))
    # 7. an RL run killed mid-run, its checkpoint damaged
    run4 = _link(work / "run_rl_ckpt", run, ("prepare", "warm"))
    first = warm_ray("rl", run4, work, stop_when=_exists(run4 / "rl/warm/ckpt/learner.json"))
    if first.stopped:
        damaged.append(note(run_damage_case(DamageCase(
            "a stopped RL run's checkpoint", "rl/warm/ckpt/policy.safetensors", "rl", extra=("--resume",),
            says=(r"ckpt is damaged .* retrains from the start",)), run4, work)))
    # 8. warp, killed once its first iteration finished; rerun with --resume
    stopped.append(note(run_stop_case(
        "warp", run, work, stop="warp/iter_1/init/" + MARKER,
        keep=[f"warp/iter_1/**/{MARKER}", "warp/iter_1/**/eval.json"],
        says=(r"iter_1/run_\d: reused", r"iteration 1 \w+ η=[\d.]+: reused", r"iter_2/run_\d: (computed|continued)"),
        at_kill=_warp_units)))
    # 9. a damaged base-LM checkpoint: prepare rebuilds (last: every stage above used this prepare)
    damaged.append(note(run_damage_case(DamageCase(
        "base-LM checkpoint", "prepare/lm/step_80/model.safetensors", "prepare",
        says=(r"damaged base-LM checkpoint",)), run, work)))
    return damaged, stopped


def run_dir_tables(damaged: list[DamageResult], stopped: list[StopResult], seconds: float) -> list[str]:
    healed = sum(r.outcome == "healed" for r in damaged)
    named = sum(r.outcome == "named" for r in damaged)
    out = [
        "",
        "## Damaged files: healed or named",
        "",
        "Generated by `python scripts/reliability.py --run-dir-cases`, which runs each case through the",
        "`warm-ray` command on a tiny config (the tests' `warm_ray.testing.TINY` settings) in one run dir",
        f"`$DIR/run` (and three run dirs of their own that link its stage outputs); {seconds / 60:.0f} min on 2 cores.",
        "Each file is cut in half (a full disk, a killed copy), then one command runs: **healed** means",
        "exit code 0, a log line saying what was rebuilt and the file loads again; **named** means exit",
        "code 2 and one line on stderr naming the file.",
        "",
        f"**{len(damaged)} cases: {healed} healed, {named} named, {len(damaged) - healed - named} neither.**",
        "",
        "| damaged file | path (in the run dir) | then | exit code | outcome | what the log or the error says "
        "| loads again |",
        "|---|---|---|---:|---|---|---|",
    ]
    out += [f"| {_cell(r.case)} | `{_cell(r.file)}` | `{_cell(r.command)}` | {r.exit_code} | **{r.outcome}** | "
            f"{_cell(r.said)} | {'yes' if r.loads_after else 'no'} |" for r in damaged]
    ok = sum(r.ok for r in stopped)
    out += [
        "",
        "## Stopped runs: nothing that finished is recomputed",
        "",
        "Each stage is started, and its whole process session (the driver, its local Ray and every actor)",
        "is killed with SIGKILL once the file named appeared; then the same command runs again (with",
        "`--resume` where the stage continues unfinished units from their checkpoints). *Kept*: the",
        "outputs that had finished at the kill, and how many of them the rerun left untouched. *Units*:",
        "what the rerun's log says per unit of the run-dir contract (reused / continued from a checkpoint /",
        "computed new / recomputed).",
        "",
        f"**{len(stopped)} stages stopped: {ok} resumed with nothing finished recomputed.**",
        "",
        "| stage | killed once this existed | at the kill | rerun | exit code | kept | units: reused / continued / "
        "computed / recomputed | where the rerun continued |",
        "|---|---|---|---|---:|---:|---|---|",
    ]
    for r in stopped:
        u = r.units
        stop = f"`{_cell(r.stop)}`" + ("" if r.killed else " (**finished before the kill**)")
        kept = f"{r.kept[0]}/{r.kept[1]}" if r.kept[1] else "–"
        out.append(f"| {r.stage} | {stop} | {_cell(r.at_kill)} | `{_cell(r.command)}` | {r.exit_code} | {kept} | "
                   f"{u['reused']} / {u['continued']} / {u['computed']} / {u['recomputed']} | {_cell(r.resumed)} |")
    return out


RUN_DIR_HEADING = "## Damaged files"


def kept_run_dir_section(doc: Path) -> list[str]:
    """The run-dir tables of an earlier ``--run-dir-cases`` run, from ``doc`` (kept as they were)."""
    text = doc.read_text() if doc.exists() else ""
    if RUN_DIR_HEADING not in text:
        return ["", RUN_DIR_HEADING + " and stopped runs", "",
                "Not run yet: `python scripts/reliability.py --run-dir-cases` runs them and writes the tables here."]
    return ["", *text[text.index(RUN_DIR_HEADING):].rstrip("\n").split("\n")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fast", action="store_true", help="skip the bad inputs that start a stage")
    p.add_argument("--run-dir-cases", action="store_true",
                   help="also run the damaged-file and stopped-run cases (minutes); else keep the doc's tables")
    p.add_argument("--out", default=str(DOC), help="markdown table written here")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="warm-ray-reliability-"))
    bad_runs: list[str] = []
    try:
        cli, prefs = run_all(work, fast_only=args.fast)
        if args.run_dir_cases:
            t0 = time.perf_counter()
            print("damaged files and stopped runs:", flush=True)
            damaged, stopped = run_dir_cases(work / "runs", log=lambda m: print(m, flush=True))
            section = run_dir_tables(damaged, stopped, time.perf_counter() - t0)
            bad_runs = ([f"damaged file {r.case}: {r.outcome} (exit {r.exit_code})" for r in damaged
                         if r.outcome not in ("healed", "named")]
                        + [f"stopped {r.stage}: killed {r.killed}, exit {r.exit_code}, kept {r.kept}, units {r.units}"
                           for r in stopped if not r.ok])
        else:
            section = kept_run_dir_section(Path(args.out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = markdown(cli, prefs, section)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    bad = [r for r in cli + prefs if not r.clean]
    for r in bad:
        print(f"NOT CLEAN: {r.case}: exit {r.exit_code}, {r.lines} lines, traceback {r.traceback}, "
              f"names it {r.names_it}: {r.error}", file=sys.stderr)
    for line in bad_runs:
        print(f"NOT AS EXPECTED: {line}", file=sys.stderr)
    print(f"{len(cli) + len(prefs)} cases, {len(bad)} not clean; table in {args.out}")
    return 1 if bad or bad_runs else 0


if __name__ == "__main__":
    sys.exit(main())
