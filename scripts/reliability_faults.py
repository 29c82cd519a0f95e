"""What a user sees for a damaged file or a stopped run, through the real `warm-ray` command.

On a tiny config, each damaged-file case cuts a file of a run dir in half and runs the next
`warm-ray` command, recording whether it healed the file (exit 0, a log line, the file loads
again) or named it (exit 2, one line); each stopped-run case kills a stage's whole process
session once a given file appears, runs the same command again and records what the rerun
reused, continued and recomputed. About 10 min on 2 cores. Bad inputs are
``reliability_inputs.py``'s: this script keeps their tables in the doc as they were.

    python scripts/reliability_faults.py   # damaged files and stopped runs; keeps the doc's bad-input tables
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
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


def warm_ray(stage: str, run_dir: Path, work: Path, *extra: str, stop_when=None) -> Run:
    """Run `warm-ray STAGE --run-dir RUN_DIR` with SETTINGS (+ ``extra``) in a session of its own.
    ``stop_when()``: polled while it runs; once true, the whole session is killed."""
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


# what a run of cases gave: the damaged-file results, the stopped-run results
Cases = tuple[list[DamageResult], list[StopResult]]


def run_dir_cases(work: Path, log=print) -> Cases:
    """Every damaged-file and stopped-run case, in the order they build on each other."""
    work.mkdir(parents=True, exist_ok=True)

    def note(r):
        log(f"  {getattr(r, 'case', getattr(r, 'stage', ''))}: exit {r.exit_code}, {r.seconds:.0f}s")
        return r

    damaged, stopped = _prepare_and_warm_cases(work, work / "run", note)
    later_damaged, later_stopped = _later_cases(work, work / "run", note)
    return damaged + later_damaged, stopped + later_stopped


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
    """Cases 6-9, on ``run`` once WARM finished there: RL and WARP stopped and damaged, then the
    base LM that every stage above read."""
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
        f"{RUN_DIR_HEADING}: healed or named",
        "",
        "Generated by `python scripts/reliability_faults.py`, which runs each case through the",
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
    return out


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
        print("damaged files and stopped runs:", flush=True)
        damaged, stopped = run_dir_cases(work / "runs", log=lambda m: print(m, flush=True))
        section = run_dir_tables(damaged, stopped, time.perf_counter() - t0)
    write_doc(Path(args.out), markdown(section, Path(args.out)))
    bad_runs = ([f"damaged file {r.case}: {r.outcome} (exit {r.exit_code})" for r in damaged
                 if r.outcome not in ("healed", "named")]
                + [f"stopped {r.stage}: killed {r.killed}, exit {r.exit_code}, kept {r.kept}, units {r.units}"
                   for r in stopped if not r.ok])
    for line in bad_runs:
        print(f"NOT AS EXPECTED: {line}", file=sys.stderr)
    print(f"{len(damaged)} damaged files, {len(stopped)} stopped runs, {len(bad_runs)} not as expected; "
          f"tables in {args.out}")
    return 1 if bad_runs else 0


if __name__ == "__main__":
    sys.exit(main())
