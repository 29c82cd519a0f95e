"""The `warm-ray` command: parse a config, call one stage driver.

    warm-ray prepare [--config FILE] [--run-dir DIR] [--set key=value ...]
    warm-ray warm    ...
    warm-ray demo    ...   (every stage in order, tiny defaults, offline)
    warm-ray merge DIR DIR ... [--set merge.method=average|greedy_soup|slerp|liti] [--run-dir DIR]
                           (Hugging Face dirs of one architecture -> run_dir/merge/model)
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import signal
import sys
import threading

from warm_ray import quiet_transformers
from warm_ray.config import Config, ConfigError, UserError, check_stage, load_config, validate
from warm_ray.data import DataError
from warm_ray.lock import RunDirLock

STAGES = ("prepare", "warm", "rl", "warp", "sweep", "study", "demo", "merge")


def _run_prepare(cfg: Config, args) -> None:
    from warm_ray.prepare import prepare

    summary = prepare(cfg)
    print(f"prepared {summary['rows']} pairs, corruption rate {summary['corruption_rate']:.3f}, "
          f"policy {summary['policy']}")


def _run_warm(cfg: Config, args) -> None:
    from actors.warm import run_warm

    run_warm(cfg, resume=args.resume)


def _run_rl(cfg: Config, args) -> None:
    from actors.rlhf import run_rl_comparison

    run_rl_comparison(cfg, resume=args.resume)


def _run_warp(cfg: Config, args) -> None:
    from actors.warp import run_warp

    run_warp(cfg, resume=args.resume)


def _run_sweep(cfg: Config, args) -> None:
    from tune.sweep import run_sweep

    run_sweep(cfg, resume=args.resume)


def _run_study(cfg: Config, args) -> None:
    if args.list_claims:
        from actors.study import claim_specs

        for name, (direction, _) in claim_specs(cfg.study).items():
            print(f"{'*' if name in cfg.study.primary else ' '} {name}   [{direction}]")
        return
    from actors.study import run_study

    run_study(cfg)


# The demo's budget (without --config): the study's single-seed form, smaller everywhere, so that
# every stage runs end to end in under 10 minutes on 2 CPU cores. `warm-ray study` uses the full
# defaults of warm_ray/config.py.
DEMO_SIZE = [
    "prepare.lm_steps=500", "prepare.checkpoint_steps=[300, 400, 500]", "prepare.n_train=1500",
    "prepare.n_selection=300", "prepare.n_test=300", "prepare.n_ood=300",
    "study.bon_prompts=64", "study.bon_samples=32", "study.bon_n=[1, 2, 4, 8, 16, 32]",
    "study.rl_arms=[single, warm, warm_online]", "study.rl_betas=[0.05]", "rl.steps=40", "study.eval_every=5",
    "rl.online.every=10",
    "warp.steps=15", "warp.baseline_betas=[0.1, 0.5]", "warp.rl.ema_mu=0.27",
]


def _run_demo(cfg: Config, args) -> None:
    """prepare, then the study's single-seed form: WARM, Best-of-N, RL per reward arm, WARP."""
    from warm_ray.config import apply_overrides

    print("\n=== warm-ray demo: prepare ===", flush=True)
    _run_prepare(cfg, args)
    seed = cfg.study.seeds[0]
    print(f"\n=== warm-ray demo: study (seed {seed}: recipe, warm, bon, rl with online WARM, warp) ===", flush=True)
    from pathlib import Path

    from actors.study import run_study
    from actors.study_report import demo_summary

    study_cfg = apply_overrides(cfg, [f"study.seeds=[{seed}]", "study.parts=[rm, bon, rl, warp]"])
    results = run_study(study_cfg, report=False)
    merged = _demo_merge(cfg, results, seed)
    print("\n=== warm-ray demo: done ===\n", flush=True)
    print(demo_summary(results, Path(study_cfg.run_dir).resolve() / "study"), flush=True)
    print(merged, flush=True)


def _demo_merge(cfg: Config, results: dict, seed: int) -> str:
    """`warm-ray merge` of the demo seed's members (average): the same model as its WARM RM, made by
    the command a user runs on reward models trained elsewhere. Returns the summary's line."""
    from pathlib import Path

    from warm_ray.files import in_run_dir
    from warm_ray.merge_dirs import largest_difference, run_merge
    from warm_ray.reward import member_final_dirs

    print("\n=== warm-ray demo: merge (the seed's members, averaged by `warm-ray merge`) ===", flush=True)
    warm_dir = Path(in_run_dir(results["seeds_dir"], cfg.run_dir)) / f"seed_{seed}" / "warm"
    members = [str(d) for d in member_final_dirs(warm_dir)]
    merge_cfg = dataclasses.replace(cfg, merge=dataclasses.replace(
        cfg.merge, models=members, method="average", weights=[], base="", selection=""))
    out = Path(cfg.run_dir).resolve() / "merge" / "model"
    run_merge(merge_cfg)
    diff = largest_difference(out, warm_dir / "warm_rm")
    return (f"\n`warm-ray merge` of the {len(members)} members: {out}; largest difference from the WARM RM "
            f"{diff:.1e} (the same average, float32 rounding)")


def _run_merge(cfg: Config, args) -> None:
    from warm_ray.merge_dirs import run_merge

    run_merge(cfg)


RUNNERS = {"prepare": _run_prepare, "warm": _run_warm, "rl": _run_rl, "warp": _run_warp,
           "sweep": _run_sweep, "study": _run_study, "demo": _run_demo, "merge": _run_merge}


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line on stderr with exit code 2, like every other user error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="warm-ray", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=STAGES)
    p.add_argument("models", nargs="*", metavar="DIR",
                   help="merge: the Hugging Face model dirs to merge (merge.models)")
    p.add_argument("--config", "-c", help="YAML config (sections: prepare, warm, rl, warp, sweep, study; "
                                          "data and policy: your own inputs)")
    p.add_argument("--run-dir", help="where outputs go (overrides run_dir of the config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set warm.m=2 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue stopped work of the same config from its checkpoints (finished work of the "
                        "same config is reused with or without it; work of another config is recomputed)")
    p.add_argument("--list-claims", action="store_true",
                   help="study: list the claims it can test (* = primary in this config) and exit")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join, e.g. auto or ray://head:10001 (default: RAY_ADDRESS if set, "
                        "else start a local Ray)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error caused by an input")
    return p


# Errors a user causes and can fix (a setting, an input file, a path, a missing earlier stage):
# one line on stderr and exit code 2. Any other exception is a bug and keeps its traceback.
USER_ERRORS = (UserError, DataError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)

# Faults of the machine, not of warm-ray: one line and exit code 2 as well. Every output is written
# to a temporary name and renamed when whole, so what they interrupt is simply not there; the
# rerun, once the machine is fixed, continues.
MACHINE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EROFS: "read-only file system",
                  errno.EDQUOT: "disk quota exceeded"}


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``kill``, Ray stopping a job): handled like Ctrl-C.

    Raised as a KeyboardInterrupt so that everything that cleans up after Ctrl-C does so after
    SIGTERM too; Ray turns it into a plain KeyboardInterrupt inside ``ray.get``, so the handler
    also leaves a flag that says which signal it was."""


_sigterm_received = False


def _on_sigterm(signum, frame):
    global _sigterm_received
    _sigterm_received = True
    raise Terminated()


def machine_fault(e: BaseException) -> str | None:
    """The one-line reason of a machine fault (disk full, read-only), or None for other errors.

    safetensors reports a failed write as its own error type with the OS error only in its text.
    """
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        e = cause
    for err in (e, e.__cause__, e.__context__):
        if isinstance(err, OSError) and err.errno in MACHINE_ERRNOS:
            where = f"{err.filename}: " if err.filename else ""
            return f"{where}{MACHINE_ERRNOS[err.errno]}"
    text = str(e)
    for code, why in MACHINE_ERRNOS.items():
        if f"os error {code})" in text or why.lower() in text.lower():
            return f"{why} ({' '.join(text.split())[:200]})"
    return None


def error_line(e: BaseException) -> str:
    """``kind: message`` of a user error, on one line."""
    cause = getattr(e, "cause", None)  # an error raised inside a Ray actor or task
    if isinstance(cause, BaseException):
        e = cause
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e)
    kind = "config error" if isinstance(e, ConfigError) else "data error" if isinstance(e, DataError) else "error"
    return f"{kind}: " + " ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    global _sigterm_received
    _sigterm_received = False
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    overrides = list(args.overrides)
    if args.stage == "demo" and args.config is None:
        overrides = [*DEMO_SIZE, *overrides]  # the user's --set still wins
    if args.run_dir is not None and not args.run_dir.strip():
        print("warm-ray: error: argument --run-dir: an empty path; give a directory (see warm-ray --help)",
              file=sys.stderr)
        return 2
    command = " ".join(["warm-ray", *(sys.argv[1:] if argv is None else argv)])
    # only the main thread may set a handler (main() may be called from another one, as in tests)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM)
    try:
        if in_main_thread:
            signal.signal(signal.SIGTERM, _on_sigterm)
        # the whole config is read and checked before anything slow (transformers, Ray) starts
        cfg = load_config(args.config, overrides)
        if args.models:
            if args.stage != "merge":
                print(f"warm-ray: error: unrecognized arguments: {' '.join(args.models)} (only `warm-ray merge` "
                      "takes model dirs; see warm-ray --help)", file=sys.stderr)
                return 2
            cfg = validate(dataclasses.replace(cfg, merge=dataclasses.replace(cfg.merge, models=list(args.models))))
        if args.run_dir is not None:
            # taken literally: a path is never YAML ('exp #3' is not 'exp', '123' is not a number)
            cfg = validate(dataclasses.replace(cfg, run_dir=args.run_dir))
        cfg = check_stage(cfg, args.stage)
        quiet_transformers()
        if args.address:
            import os

            os.environ["RAY_ADDRESS"] = args.address  # read by ensure_ray, in this process and in trials
        if args.stage == "study" and args.list_claims:
            RUNNERS[args.stage](cfg, args)  # reads nothing, writes nothing
        else:
            with RunDirLock(cfg.run_dir, command):
                RUNNERS[args.stage](cfg, args)
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"warm-ray {args.stage}: {error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        if not (isinstance(e, Terminated) or _sigterm_received):
            print(f"warm-ray {args.stage}: interrupted", file=sys.stderr)
            return 130
        print(f"warm-ray {args.stage}: terminated (SIGTERM); what finished is kept, "
              "rerun with --resume to continue", file=sys.stderr)
        return 143
    except Exception as e:
        why = machine_fault(e)
        if why is None or args.debug:
            raise
        print(f"warm-ray {args.stage}: error: {why}; free space or fix the file system and rerun "
              "(what finished is kept)", file=sys.stderr)
        return 2
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
