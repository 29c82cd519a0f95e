"""What a user sees for a bad input, through the real `warm-ray` command.

Bad inputs are what a user might give it: configs, --set values, preference and prompt files,
chat templates, model dirs, run dirs, Ray addresses, stage names. Each case runs `warm-ray ...` in
a fresh directory (with the files the case needs), captures stderr and the exit code, and checks
the answer is one line, exit code 2, no traceback, naming the key, file or path at fault (the
timestamped log lines of a stage that had started, saying what it was doing, are counted apart).
Preference files go through what `warm-ray warm` does with ``data.preferences`` (the config
check, then ``warm_ray.sources.preferences``: reading, TRL layouts, chat templates, splits); a
ConfigError or DataError there is what the CLI prints as one line. Damaged files, stopped runs
and faults of the run dir or the machine are ``reliability_faults.py``'s: this script keeps their
tables in the doc as they were.

    python scripts/reliability_inputs.py          # bad inputs; keeps the doc's run-dir tables
    python scripts/reliability_inputs.py --fast   # only the bad inputs that fail while the config is read
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers beside it, also when loaded by path
from _reliability_common import (  # noqa: E402
    HERE, RUN_DIR_HEADING, TITLE, cell, child_env, doc_parts, parser, scratch_dir, warm_ray_command, write_doc)

# a tiny Hugging Face dir whose config.json is not JSON, and one without config.json
NOT_JSON = {"model/config.json": b"{not json", "model/tokenizer.json": b"{}"}
NO_CONFIG = {"model/tokenizer_config.json": b"{}"}


def _model_of(architecture: str) -> dict[str, bytes]:
    """$DIR/model: a Hugging Face dir whose config.json names ``architecture`` (no weights: the
    config check reads the class, not the model)."""
    config = {"architectures": [architecture], "model_type": "gpt2"}
    return {"model/config.json": json.dumps(config).encode(), "model/tokenizer_config.json": b"{}"}


# a YAML "billion laughs": 9 aliases of 9 aliases of ... (9**9 leaves once expanded)
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


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


def _fifo(where: Path) -> None:
    """$DIR/c.yaml: a named pipe (reading it would wait for a writer for ever)."""
    os.mkfifo(where / "c.yaml")


def _dangling_run_dir(where: Path) -> None:
    """$DIR/run: a symlink to $DIR/gone, which does not exist (a run disk not mounted)."""
    (where / "run").symlink_to(where / "gone", target_is_directory=True)


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
    Case("key given twice in YAML", ["warm", "--config", "$DIR/c.yaml"], "c.yaml: line 3: duplicate key 'm'",
         {"c.yaml": b"warm:\n  m: 1\n  m: 2\n"}),
    Case("key given twice in an override", ["warm", "--set", "warm.members=[{lr: 0.1, lr: 0.2}]"], "warm.members"),
    Case("--config names a named pipe", ["warm", "--config", "$DIR/c.yaml"], "c.yaml", make=_fifo),
    Case("YAML alias bomb", ["warm", "--config", "$DIR/c.yaml"], "c.yaml", {"c.yaml": ALIAS_BOMB.encode()}),
    Case("seed above 2**32 - 1", ["warm", "--set", "warm.seed=1180591620717411303424"], "warm.seed"),
    Case("negative seed", ["prepare", "--set", "prepare.seed=-1"], "prepare.seed"),
    Case("study seed above 2**32 - 1", ["study", "--set", "study.seeds=[0, 4294967296]"], "study.seeds[1]"),
    Case("M of a billion", ["warm", "--set", "warm.m=1000000000"], "warm.m"),
    Case("policy dir of a classifier", ["rl", "--set", "policy.model=$DIR/model"], "policy.model",
         _model_of("GPT2ForSequenceClassification")),
    Case("reward model dir of a causal LM", ["rl", "--set", "policy.reward_model=$DIR/model"],
         "policy.reward_model", _model_of("GPT2LMHeadModel")),
    Case("empty --run-dir", ["warm", "--run-dir", ""], "--run-dir"),
    Case("run dir a dangling symlink", ["warm", "--run-dir", "$DIR/run"], "$DIR/run", make=_dangling_run_dir),
    # taken literally: a path, never YAML ('123' is no number, '#3' no comment); warm then needs prepare
    Case("run_dir=123 taken literally", ["warm", "--set", "run_dir=123"], "123/prepare/prepare.json", fast=False),
    Case("--run-dir 'exp #3' taken literally", ["warm", "--run-dir", "exp #3"], "exp #3/prepare/prepare.json",
         fast=False),
    # warp joins Ray first of all the stages; an address nobody listens at is tried for 10 s
    Case("unreachable Ray address", ["warp", "--address", "127.0.0.1:1"], "127.0.0.1:1", fast=False),
    Case("unreachable Ray client address", ["warp", "--address", "ray://127.0.0.1:1"], "ray://127.0.0.1:1",
         fast=False),
    # `warm-ray merge`: inputs of another architecture, method settings that do not go together
    Case("merge of two architectures", ["merge", "$DIR/model", "$DIR/other"], "merge.models[1]",
         {**_model_of("GPT2ForSequenceClassification"),
          **{k.replace("model/", "other/"): v for k, v in _model_of("BertForSequenceClassification").items()}},
         fast=False),
    Case("merge: greedy soup without selection pairs", ["merge", "--set", "merge.method=greedy_soup"],
         "merge.selection"),
    Case("merge: SLERP without a base", ["merge", "--set", "merge.method=slerp"], "merge.base"),
    Case("merge: a model without a head", ["merge", "--set", "merge.models=[$DIR/model]"],
         "merge.models[0]", _model_of("GPT2Model")),
    # the study on the user's own data: its rm part only, label noise below 1/2
    Case("study label noise 0.5", ["study", "--set", "study.label_noise=0.5"], "study.label_noise"),
    Case("study on own data with its Best-of-N part", ["study", "--set", "data.preferences=$DIR/p.jsonl",
                                                       "--set", "warm.featurizer=minilm"], "study.parts",
         {"p.jsonl": b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n'}, fast=False),
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
# (case, data.chat_template): chat messages rendered with the user's own template, which fails
TEMPLATE_CASES = [
    ("chat template with a syntax error", "{% for m in messages %}{{ m['content'] }"),
    ("chat template reaching Python internals", "{{ ''.__class__.__mro__ }}"),
    ("chat template that raises", "{{ raise_exception('a system message is required') }}"),
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
    log_lines: int = 0  # timestamped log lines of a stage that had started (not counted in ``lines``)

    @property
    def clean(self) -> bool:
        return self.exit_code == 2 and self.lines == 1 and not self.traceback and self.names_it


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
    if case.args[0] in STAGES and "--run-dir" not in args and not any(a.startswith("run_dir=") for a in args):
        args += ["--run-dir", str(scratch / "run")]  # never write into the default run dir
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([*warm_ray_command(), *args], cwd=scratch, env=child_env(), capture_output=True,
                              text=True, timeout=60 if case.fast else 300)
        code, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:  # an input that is not caught runs a whole stage
        out = e.stderr or ""
        code, stderr = "timeout", out.decode(errors="replace") if isinstance(out, bytes) else out
    seconds = time.perf_counter() - t0
    lines = [line for line in stderr.splitlines() if line.strip()]
    logged = [line for line in lines if _LOG_LINE.match(line)]
    error = lines[-1] if lines else ""
    return Result(case.name, f"warm-ray {shlex.join(case.args)}", code, _portable(error, scratch),
                  len(lines) - len(logged), "Traceback" in stderr, case.names.replace(HERE, str(scratch)) in error,
                  seconds, len(logged))


# a log line of the `warm-ray` command (warm_ray.cli's logging format: "HH:MM:SS logger.name: message")
_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d [\w.]+: ")


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


def run_preference_case(name: str, filename: str, data: bytes | None, scratch: Path,
                        sets: tuple[str, ...] = ()) -> Result:
    """What `warm-ray warm --set data.preferences=FILE` (and ``sets``, more ``--set`` overrides) prints
    for this file: one line for a ConfigError or DataError, a traceback otherwise."""
    from warm_ray.cli import USER_ERRORS, error_line
    from warm_ray.config import load_config
    from warm_ray.sources import preferences

    scratch.mkdir(parents=True, exist_ok=True)
    _write({filename: data}, scratch)
    path = scratch / filename
    t0 = time.perf_counter()
    try:
        cfg = load_config(None, [f"run_dir={scratch / 'run'}", f"data.preferences={path}", *sets])
        preferences(cfg, _tokenizer_without_chat_template(), "the RM tokenizer")
        error, code, traceback = "(accepted)", 0, False
    except USER_ERRORS as e:
        error, code, traceback = error_line(e), 2, False
    except Exception as e:  # noqa: BLE001 - the point is to record what escapes
        error, code, traceback = f"{type(e).__name__}: {e}", 1, True
    error = _portable(" ".join(error.split("\n")), scratch)
    command = f"warm-ray warm --set data.preferences=$DIR/{filename}"
    command += "".join(f" --set {_quoted(s)}" for s in sets)
    named = [filename, "the RM tokenizer", *(s.split("=", 1)[0] for s in sets)]
    return Result(name, command, code, error, 1, traceback, any(n in error for n in named),
                  time.perf_counter() - t0)


def _quoted(arg: str) -> str:
    """``arg`` quoted for a shell as a user would: in double quotes when it holds single quotes."""
    if "'" in arg and not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)


def run_template_case(name: str, template: str, scratch: Path) -> Result:
    """A chat-messages preference file rendered with ``template`` as data.chat_template."""
    return run_preference_case(name, "chat.jsonl", CHAT, scratch, (f"data.chat_template={template}",))


def _portable(text: str, scratch: Path) -> str:
    """The message with the scratch directory written as $DIR (the table reads the same anywhere)."""
    return text.replace(str(scratch), HERE)


def run_all(work: Path, fast_only: bool = False) -> tuple[list[Result], list[Result]]:
    cli = [run_cli_case(c, work / f"cli_{i:02d}") for i, c in enumerate(CLI_CASES) if c.fast or not fast_only]
    prefs = [run_preference_case(n, f, d, work / f"pref_{i:02d}") for i, (n, f, d) in enumerate(PREFERENCE_CASES)]
    prefs += [run_template_case(n, t, work / f"template_{i:02d}") for i, (n, t) in enumerate(TEMPLATE_CASES)]
    return cli, prefs


def markdown(cli: list[Result], prefs: list[Result], run_dir_section: list[str] = ()) -> str:
    n = len(cli) + len(prefs)
    tracebacks = sum(r.traceback for r in cli + prefs)
    clean = sum(r.clean for r in cli + prefs)
    out = [
        TITLE,
        "",
        "Generated by `python scripts/reliability_inputs.py` (the fast cases also run in",
        "`tests/test_reliability.py`; the run-dir cases below by `scripts/reliability_faults.py`).",
        "Each case of the first two tables is one bad input; a clean answer is exit code 2,",
        "one line on stderr, no traceback, naming the key, file or path at fault (`--debug` shows",
        "the traceback). A case that gets as far as a stage may log what the stage was doing before",
        "it stops (`HH:MM:SS module: ...` lines, e.g. the Ray address it tries): those are counted",
        "apart, as *+N log*. `$DIR` stands for the case's scratch directory.",
        "",
        f"**{n} cases, {clean} clean, {tracebacks} tracebacks.**",
        "",
        "## Through the `warm-ray` command",
        "",
        "| case | command | exit code | error (last line of stderr) | lines | traceback |",
        "|---|---|---:|---|---:|---|",
    ]
    for r in cli:
        lines = f"{r.lines} (+{r.log_lines} log)" if r.log_lines else f"{r.lines}"
        out.append(f"| {cell(r.case)} | `{cell(r.command)}` | {r.exit_code} | {cell(r.error)} | {lines} | "
                   f"{'yes' if r.traceback else 'no'} |")
    out += [
        "",
        "## Preference files (`warm-ray warm --set data.preferences=FILE`: the config check, then reading, TRL layouts, chat templates and splits)",
        "",
        "The last cases give chat messages and a `data.chat_template` of the user's own that cannot render",
        "(it is tried on a sample conversation before any data is read).",
        "",
        "| case | call | exit code (CLI) | error | traceback |",
        "|---|---|---:|---|---|",
    ]
    for r in prefs:
        out.append(f"| {cell(r.case)} | `{cell(r.command)}` | {r.exit_code} | {cell(r.error)} | "
                   f"{'yes' if r.traceback else 'no'} |")
    return "\n".join(out + list(run_dir_section)) + "\n"


def kept_run_dir_section(doc: Path) -> list[str]:
    """The run-dir tables of the last ``reliability_faults.py`` run, from ``doc`` (kept as they were)."""
    tables = doc_parts(doc)[1]
    if not tables:
        return ["", RUN_DIR_HEADING + " and stopped runs", "",
                "Not run yet: `python scripts/reliability_faults.py` runs them and writes the tables here."]
    return ["", *tables]


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--fast", action="store_true", help="skip the bad inputs that start a stage")
    args = p.parse_args()
    with scratch_dir() as work:
        cli, prefs = run_all(work, fast_only=args.fast)
    write_doc(Path(args.out), markdown(cli, prefs, kept_run_dir_section(Path(args.out))))
    bad = [r for r in cli + prefs if not r.clean]
    for r in bad:
        print(f"NOT CLEAN: {r.case}: exit {r.exit_code}, {r.lines} lines, traceback {r.traceback}, "
              f"names it {r.names_it}: {r.error}", file=sys.stderr)
    print(f"{len(cli) + len(prefs)} cases, {len(bad)} not clean; table in {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
