"""What a user sees for a damaged file or a stopped run, through the real `warm-ray` command.

On a tiny config, each damaged-file case cuts a file of a run dir in half and runs the next
`warm-ray` command, recording whether it healed the file (exit 0, a log line, the file loads
again) or named it (exit 2, one line); each stopped-run case kills a stage's whole process
session once a given file appears, runs the same command again and records what the rerun
reused, continued and recomputed. Then faults of the run dir and of the machine: two runs on one
run dir, a lock left by a dead process, SIGTERM and --resume, a unit dir that is a symlink, a full
and a read-only disk (a small tmpfs: needs root, else the rows say "skipped"), a run dir copied
and one moved. About 12 min on 2 cores. Bad inputs are ``reliability_inputs.py``'s: this script
keeps their tables in the doc as they were.

    python scripts/reliability_faults.py   # run-dir and machine faults; keeps the doc's bad-input tables
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from warm_ray.testing import TINY, TINY_WARM, mtimes, truncate

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers beside it, also when loaded by path
from _reliability_common import (  # noqa: E402
    HERE, RUN_DIR_HEADING, TITLE, cell, child_env, doc_parts, parser, scratch_dir, warm_ray_command, write_doc)

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


# while a command runs: once ``when()`` is true, ``then(proc)`` is called (once; in the order given)
Event = tuple[Callable[[], bool], Callable[[subprocess.Popen], None]]


def warm_ray(stage: str, run_dir: Path, work: Path, *extra: str, stop_when=None, events: list[Event] = ()) -> Run:
    """Run `warm-ray STAGE --run-dir RUN_DIR` with SETTINGS (+ ``extra``) in a session of its own.
    ``stop_when()``: polled while it runs; once true, the whole session is killed. ``events``: polled
    too, one after the other (a second command run meanwhile, a signal sent to the driver)."""
    args = [stage, "--run-dir", str(run_dir), *extra]
    settings = [x for s in SETTINGS for x in ("--set", s)]  # before extra: an extra --set wins
    env = child_env()
    env.update(RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1")
    n = len(list(work.glob("cmd_*.out")))
    out_path, err_path = work / f"cmd_{n:02d}.out", work / f"cmd_{n:02d}.err"
    t0 = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([*warm_ray_command(), *args[:3], *settings, *args[3:]], cwd=work, env=env, stdout=out,
                                stderr=err, start_new_session=True)
        stopped, pending = False, list(events)
        try:
            if stop_when is not None or pending:
                while proc.poll() is None and time.perf_counter() - t0 < STAGE_TIMEOUT_S:
                    if stop_when is not None and stop_when():
                        kill_session(proc.pid)
                        stopped = True
                        break
                    if pending and pending[0][0]():
                        pending.pop(0)[1](proc)
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


# what a run of cases gave: the damaged-file results, the stopped-run results
Cases = tuple[list[DamageResult], list[StopResult]]


def run_dir_cases(work: Path, log=print) -> tuple[list[DamageResult], list[StopResult], list["MachineResult"]]:
    """Every damaged-file, stopped-run and machine case, in the order they build on each other."""
    work.mkdir(parents=True, exist_ok=True)

    def note(r):
        log(f"  {getattr(r, 'case', getattr(r, 'stage', ''))}: exit {r.exit_code}, {r.seconds:.0f}s")
        return r

    damaged, stopped = _prepare_and_warm_cases(work, work / "run", note)
    later_damaged, later_stopped = _later_cases(work, work / "run", note)
    machine = _machine_cases(work, work / "run", note)
    # last: every stage above (and the copies of the run dir) used this prepare
    base_lm = _base_lm_case(work, work / "run", note)
    return damaged + later_damaged + [base_lm], stopped + later_stopped, machine


def _prepare_and_warm_cases(work: Path, run: Path, note) -> Cases:
    """Cases 1-5: prepare stopped, then WARM stopped and its files damaged (``run`` and two run dirs
    of their own that link its prepare)."""
    from warm_ray.rundir import MARKER

    damaged: list[DamageResult] = []
    stopped: list[StopResult] = []
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
    return damaged, stopped


def _later_cases(work: Path, run: Path, note) -> Cases:
    """Cases 6-8, on ``run`` once WARM finished there: RL and WARP stopped and damaged."""
    from warm_ray.rundir import MARKER

    damaged: list[DamageResult] = []
    stopped: list[StopResult] = []
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
    return damaged, stopped


def _base_lm_case(work: Path, run: Path, note) -> DamageResult:
    """Case 9: a damaged base-LM checkpoint; prepare rebuilds (last: every stage above used this prepare)."""
    return note(run_damage_case(DamageCase(
        "base-LM checkpoint", "prepare/lm/step_80/model.safetensors", "prepare",
        says=(r"damaged base-LM checkpoint",)), run, work))


# ------------------------------------------------------------------------------------------
# Faults of the run dir and of the machine
# ------------------------------------------------------------------------------------------


@dataclass
class MachineResult:
    """One command (or a few, on one run dir) after a fault of the run dir or of the machine."""

    case: str
    command: str  # what was typed: shell steps and `warm-ray` commands, $DIR for the scratch directory
    exit_code: int | str  # several commands: each one's, in order
    last_line: str  # the last line of stderr (of the last command)
    verdict: str  # what was checked and what was found
    ok: bool | None  # None: skipped (the case could not run here)
    traceback: bool
    seconds: float


def _skipped(case: str, command: str, why: str) -> MachineResult:
    return MachineResult(case, command, "–", "", f"skipped: {why}", None, False, 0.0)


def _verdict(ok: bool, text: str) -> str:
    return f"**{'as designed' if ok else 'NOT as designed'}**: {text}"


def _machine_result(case: str, run: Run, ok: bool, text: str, command: str = "") -> MachineResult:
    return MachineResult(case, command or f"`{run.command}`", run.exit_code, _short(run.error, 400),
                         _verdict(ok, text), ok, run.traceback, run.seconds)


def _units(*runs: Run) -> dict[str, int]:
    return {k: sum(r.count(p) for r in runs) for k, p in UNIT_LOG.items()}


def _units_text(u: dict[str, int]) -> str:
    return f"units {u['reused']} reused / {u['continued']} continued / {u['computed']} computed / " \
           f"{u['recomputed']} recomputed"


def _first(run: Run, pattern: str) -> str:
    lines = run.lines(pattern)
    return f"'{_short(lines[0], 300)}'" if lines else "(no such line)"


def _weights_state(root: Path) -> tuple[int, list[str]]:
    """How many weights files there are under ``root``, and those that do not load (half-written)."""
    from warm_ray.rundir import damaged_weights

    files = sorted(root.rglob("*.safetensors"))
    return len(files), [p.relative_to(root).as_posix() for p in files if damaged_weights(p) is not None]


def _tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` (not through links) and its modification time: equal when nothing wrote there."""
    return {p.relative_to(root).as_posix(): p.lstat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() or p.is_symlink()}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    return proc.pid


def _machine_cases(work: Path, run: Path, note) -> list[MachineResult]:
    """Cases 10-15, once every stage finished in ``run`` (which they leave as it was)."""
    out: list[MachineResult] = []
    # 10-11. two runs on one run dir, then SIGTERM to the first and --resume
    out += [note(r) for r in _two_runs_then_sigterm(work, _link(work / "run_lock", run, ("prepare",)))]
    # 12. a lock left by a process that is gone
    out.append(note(_stale_lock(work, run)))
    # 13. a member's unit dir that is a symlink to another folder
    out.append(note(_symlinked_unit(work, run)))
    # 14. a full disk, then read-only, then space again (a tmpfs of 1 MiB: needs root)
    out += [note(r) for r in _full_then_read_only(work)]
    # 15. the run dir copied (cp -a), then the copy moved (mv): every stage reruns on it
    out += [note(r) for r in _copied_and_moved(work, run)]
    return out


def _two_runs_then_sigterm(work: Path, run_dir: Path) -> list[MachineResult]:
    """`warm-ray warm` starts; once it holds the run dir, the same command runs again on it; once its
    first member checkpointed, the first gets SIGTERM; then `--resume`."""
    from warm_ray.lock import LOCK

    lock, seen = run_dir / LOCK, {}

    def second(proc: subprocess.Popen) -> None:
        seen["pid"], seen["second"] = proc.pid, warm_ray("warm", run_dir, work)
        seen["went on"] = proc.poll() is None

    def terminate(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGTERM)
        seen["signalled"] = True

    first = warm_ray("warm", run_dir, work, events=[
        (_exists(lock), second), (_exists(run_dir / "warm/members/member_0/ckpt/trainer_state.json"), terminate)])
    out = []
    if "second" in seen:
        r = seen["second"]
        holder = f"in use by another warm-ray run: pid {seen['pid']} on {socket.gethostname()}"
        ok = r.exit_code == 2 and not r.traceback and holder in r.error and len(r.log) == 1 and seen["went on"]
        out.append(_machine_result(
            "a second run on a run dir in use", r, ok,
            f"{len(r.log)} line{'' if len(r.log) == 1 else 's'} of output, naming the first run's pid and host; "
            f"the first {'went on' if seen['went on'] else 'HAD STOPPED'}",
            command=f"`{first.command}` running; then the same command again"))
    else:
        out.append(_skipped("a second run on a run dir in use", f"`{first.command}` (twice)",
                            "the first run never held the lock"))
    released = not lock.exists()
    said = "terminated (SIGTERM)" in first.error
    ok = seen.get("signalled", False) and first.exit_code == 143 and said and not first.traceback and released
    out.append(_machine_result(
        "SIGTERM to a training run", first, ok,
        ("exit 143 with a 'terminated' line; " if first.exit_code == 143 and said else
         "SIGTERM sent; expected exit 143 and a 'terminated (SIGTERM)' line; " if seen.get("signalled") else
         "finished before member 0 checkpointed: no SIGTERM sent; ")
        + f"lock {'released' if released else 'LEFT BEHIND'}; {_checkpoint_steps(run_dir)}",
        command=f"`{first.command}`, then `kill -TERM` of it once member 0 checkpointed"))
    again = warm_ray("warm", run_dir, work, "--resume")
    u = _units(again)
    ok = again.exit_code == 0 and u["recomputed"] == 0 and u["continued"] >= 1
    out.append(_machine_result(
        "… then --resume", again, ok,
        f"{_units_text(u)}; {_first(again, r'resumed from its checkpoint at step')}"))
    return out


def _stale_lock(work: Path, run: Path) -> MachineResult:
    """A finished run dir whose lock names a process of this host that is gone (a `kill -9`ed run)."""
    from warm_ray.lock import LOCK

    pid = _dead_pid()
    (run / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "since": time.time() - 3600,
                                        "command": "warm-ray warm (killed)"}))
    r = warm_ray("warm", run, work)
    u = _units(r)
    took = r.lines(r"taking over the lock")
    released = not (run / LOCK).exists()
    ok = r.exit_code == 0 and bool(took) and released and u["computed"] == u["recomputed"] == 0
    return _machine_result(
        f"a lock left by a dead process (pid {pid})", r, ok,
        f"{_first(r, r'taking over the lock')}; {_units_text(u)}; lock {'released' if released else 'LEFT BEHIND'}",
        command=f"a `.warm-ray.lock` of dead pid {pid} written in $DIR/run; then `{r.command}`")


def _symlinked_unit(work: Path, run: Path) -> MachineResult:
    """A run dir whose warm/members/member_0 is a symlink to a copy of a finished member elsewhere."""
    run_dir = _link(work / "run_symlink", run, ("prepare",))
    target = work / "elsewhere" / "member_0"
    shutil.copytree(run / "warm" / "members" / "member_0", target, symlinks=True)
    (run_dir / "warm" / "members").mkdir(parents=True)
    (run_dir / "warm" / "members" / "member_0").symlink_to(target, target_is_directory=True)
    before = _tree(target)
    r = warm_ray("warm", run_dir, work)
    untouched = _tree(target) == before
    ok = (r.exit_code == 2 and not r.traceback and "is a symlink" in r.error and "never through a link" in r.error
          and untouched)
    return _machine_result(
        "a member's unit dir that is a symlink", r, ok,
        f"refused with one line; the link's target ({len(before)} files) "
        + ("untouched" if untouched else "WRITTEN OR DELETED"),
        command=f"`ln -s $DIR/elsewhere/member_0 $DIR/run_symlink/warm/members/member_0`; then `{r.command}`")


def _mount(*args: str) -> str | None:
    """Run `mount ARGS`; None when it worked, else why not (its first line of stderr)."""
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[0]


def _full_then_read_only(work: Path) -> list[MachineResult]:
    """prepare on a tmpfs of 1 MiB (the disk fills), then remounted read-only, then with 256 MiB."""
    from warm_ray.lock import LOCK
    from warm_ray.rundir import MARKER

    disk = work / "disk"
    run_dir = disk / "run"
    cmd = f"warm-ray prepare --run-dir {HERE}/disk/run"
    steps = [("disk full", f"`mount -t tmpfs -o size=1m tmpfs $DIR/disk`; then `{cmd}`"),
             ("… then the disk read-only", f"`mount -o remount,ro $DIR/disk`; then `{cmd}`"),
             ("… then space again", f"`mount -o remount,rw,size=256m $DIR/disk`; then `{cmd}`")]
    why = ("not root: mounting a tmpfs needs root" if os.geteuid() != 0 else
           "no `mount` command" if shutil.which("mount") is None else None)
    if why is None:
        disk.mkdir(parents=True, exist_ok=True)
        refused = _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk))
        why = None if refused is None else f"mount refused: {refused}"
    if why is not None:
        return [_skipped(case, command, why) for case, command in steps]
    out = []
    try:
        full = warm_ray("prepare", run_dir, work)
        n, damaged = _weights_state(run_dir)
        finished = (run_dir / "prepare" / MARKER).exists()
        ok = (full.exit_code == 2 and not full.traceback and "no space left on the device" in full.error
              and not damaged and not finished and not (run_dir / LOCK).exists())
        out.append(_machine_result(steps[0][0], full, ok, f"{n} weights files written, {len(damaged)} half-written; "
                                   f"prepare {'marked finished' if finished else 'not marked finished'}",
                                   command=steps[0][1]))
        refused = _mount("-o", "remount,ro", str(disk))
        if refused is not None:
            return out + [_skipped(case, command, f"remount refused: {refused}") for case, command in steps[1:]]
        ro = warm_ray("prepare", run_dir, work)
        ok = ro.exit_code == 2 and not ro.traceback and "read-only file system" in ro.error
        out.append(_machine_result(steps[1][0], ro, ok, "one line naming the read-only file system"
                                   if ok else "expected exit 2 and one line saying 'read-only file system'",
                                   command=steps[1][1]))
        refused = _mount("-o", "remount,rw,size=256m", str(disk))
        if refused is not None:
            return out + [_skipped(steps[2][0], steps[2][1], f"remount refused: {refused}")]
        again = warm_ray("prepare", run_dir, work)
        n, damaged = _weights_state(run_dir)
        done = (run_dir / "prepare" / "prepare.json").exists()
        ok = again.exit_code == 0 and done and not damaged
        out.append(_machine_result(steps[2][0], again, ok, f"prepare {'finished' if done else 'NOT finished'}; "
                                   f"{n} weights files, {len(damaged)} that do not load; {_units_text(_units(again))}",
                                   command=steps[2][1]))
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    return out


STAGES_RERUN = ("prepare", "warm", "rl", "warp")


def _copied_and_moved(work: Path, run: Path) -> list[MachineResult]:
    """`cp -a` of the finished run dir, every stage rerun on the copy; then `mv` of the copy, again."""
    copy, moved = work / "run_copy", work / "run_moved"
    original = _tree(run)
    out = []
    for case, shell, run_dir in (("a copied run dir (cp -a)", ["cp", "-a", str(run), str(copy)], copy),
                                 ("a moved run dir (mv)", ["mv", str(copy), str(moved)], moved)):
        subprocess.run(shell, check=True)
        runs = [warm_ray(stage, run_dir, work) for stage in STAGES_RERUN]
        u = _units(*runs)
        codes = [r.exit_code for r in runs]
        untouched = _tree(run) == original
        ok = (all(c == 0 for c in codes) and u["reused"] > 0 and u["continued"] == u["computed"] == u["recomputed"] == 0
              and untouched and not any(r.traceback for r in runs))
        gone = f"; {HERE}/run_copy no longer exists" if run_dir == moved else ""
        last = runs[-1]
        shown = " ".join(shlex.quote(a) for a in shell).replace(str(work), HERE)
        out.append(MachineResult(
            case, f"`{shown}`; then `warm-ray {{{','.join(STAGES_RERUN)}}} --run-dir {HERE}/{run_dir.name}`",
            ", ".join(map(str, codes)), _short(last.error, 400),
            _verdict(ok, f"every stage reran: {_units_text(u)}{gone}; the original "
                         + ("untouched" if untouched else "WRITTEN TO")),
            ok, any(r.traceback for r in runs), sum(r.seconds for r in runs)))
    return out


def run_dir_tables(damaged: list[DamageResult], stopped: list[StopResult], seconds: float,
                   machine: list[MachineResult] = ()) -> list[str]:
    healed = sum(r.outcome == "healed" for r in damaged)
    named = sum(r.outcome == "named" for r in damaged)
    out = [
        "",
        f"{RUN_DIR_HEADING}: healed or named",
        "",
        "Generated by `python scripts/reliability_faults.py`, which runs each case through the",
        "`warm-ray` command on a tiny config (the tests' `warm_ray.testing.TINY` settings) in one run dir",
        "`$DIR/run` (and run dirs of their own that link its stage outputs, or copy it);",
        f"{seconds / 60:.0f} min on 2 cores for this table and the two below. Each file is cut in half (a full",
        "disk, a killed copy), then one command runs: **healed** means exit code 0, a log line saying",
        "what was rebuilt and the file loads again; **named** means exit code 2 and one line on stderr",
        "naming the file.",
        "",
        f"**{len(damaged)} cases: {healed} healed, {named} named, {len(damaged) - healed - named} neither.**",
        "",
        "| damaged file | path (in the run dir) | then | exit code | outcome | what the log or the error says "
        "| loads again |",
        "|---|---|---|---:|---|---|---|",
    ]
    out += [f"| {cell(r.case)} | `{cell(r.file)}` | `{cell(r.command)}` | {r.exit_code} | **{r.outcome}** | "
            f"{cell(r.said)} | {'yes' if r.loads_after else 'no'} |" for r in damaged]
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
        stop = f"`{cell(r.stop)}`" + ("" if r.killed else " (**finished before the kill**)")
        kept = f"{r.kept[0]}/{r.kept[1]}" if r.kept[1] else "–"
        out.append(f"| {r.stage} | {stop} | {cell(r.at_kill)} | `{cell(r.command)}` | {r.exit_code} | {kept} | "
                   f"{u['reused']} / {u['continued']} / {u['computed']} / {u['recomputed']} | {cell(r.resumed)} |")
    ran = [r for r in machine if r.ok is not None]
    good = sum(bool(r.ok) for r in ran)
    out += [
        "",
        "## Run dirs and the machine",
        "",
        "Faults of the run dir or of the machine the stage runs on. One writer per run dir: a second",
        "`warm-ray` on a run dir in use stops with one line naming the first (its lock,",
        "`<run_dir>/.warm-ray.lock`, with host, PID and command), and a lock whose process is gone (same",
        "host) or that was not renewed for 5 minutes (another host on a shared filesystem) is taken over",
        "with a log line.",
        "SIGTERM (a scheduler, `kill`) ends a stage with exit code 143 and a *terminated* line, and",
        "`--resume` continues it. A unit dir that is a symlink is refused with one line, its target left as",
        "it is. A full or read-only disk (a tmpfs of 1 MiB, then remounted read-only, then with room: this",
        "needs root, else the rows say *skipped*) is exit code 2 and one line, with no weights file",
        "half-written, and the rerun once there is room finishes. A run dir copied (`cp -a`) or moved",
        "(`mv`) reuses every unit of every stage: records name the run dir's own files relative to it,",
        "inputs from outside by absolute path and content fingerprint. The run dir itself may be a symlink;",
        "nothing inside it is written or emptied through one. `--run-dir` and every string `--set` value",
        "are taken literally (`--run-dir \"exp #3\"` is `exp #3`); an unreachable Ray (`--address`,",
        "`RAY_ADDRESS`) is one line after a 10 s probe. *Verdict*: what was checked, and whether it is as",
        "designed.",
        "",
        f"**{len(machine)} cases: {good} as designed, {len(ran) - good} not, {len(machine) - len(ran)} skipped.**",
        "",
        "| case | command | exit code | last line of stderr | verdict | traceback |",
        "|---|---|---:|---|---|---|",
    ]
    out += [f"| {cell(r.case)} | {cell_code(r.command)} | {r.exit_code} | {cell(r.last_line)} | {cell(r.verdict)} | "
            f"{'yes' if r.traceback else 'no'} |" for r in machine]
    return out


def cell_code(text: str) -> str:
    """``text``, whose `code spans` are kept, as one markdown table cell."""
    return text.replace("|", "\\|")


def kept_inputs_section(doc: Path) -> list[str]:
    """The bad-input tables of the last ``reliability_inputs.py`` run, from ``doc`` (kept as they were)."""
    return doc_parts(doc)[0] or [
        TITLE, "", "Not run yet: `python scripts/reliability_inputs.py` runs them and writes their tables here."]


def markdown(run_dir_section: list[str], doc: Path) -> str:
    """The doc: ``doc``'s bad-input tables as they were, then these run-dir tables."""
    return "\n".join(kept_inputs_section(doc) + run_dir_section) + "\n"


def main() -> int:
    p = parser(__doc__)
    # the flag that picked these cases when one script ran both kinds: old command lines still work
    p.add_argument("--run-dir-cases", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    with scratch_dir() as work:
        t0 = time.perf_counter()
        print("damaged files, stopped runs, run-dir and machine faults:", flush=True)
        damaged, stopped, machine = run_dir_cases(work / "runs", log=lambda m: print(m, flush=True))
        section = run_dir_tables(damaged, stopped, time.perf_counter() - t0, machine)
    write_doc(Path(args.out), markdown(section, Path(args.out)))
    bad_runs = ([f"damaged file {r.case}: {r.outcome} (exit {r.exit_code})" for r in damaged
                 if r.outcome not in ("healed", "named")]
                + [f"stopped {r.stage}: killed {r.killed}, exit {r.exit_code}, kept {r.kept}, units {r.units}"
                   for r in stopped if not r.ok]
                + [f"{r.case}: exit {r.exit_code}: {r.verdict}" for r in machine if r.ok is False])
    for line in bad_runs:
        print(f"NOT AS EXPECTED: {line}", file=sys.stderr)
    skipped = sum(r.ok is None for r in machine)
    print(f"{len(damaged)} damaged files, {len(stopped)} stopped runs, {len(machine)} run-dir and machine faults "
          f"({skipped} skipped), {len(bad_runs)} not as expected; tables in {args.out}")
    return 1 if bad_runs else 0


if __name__ == "__main__":
    sys.exit(main())
