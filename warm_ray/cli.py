"""The `warm-ray` command: parse a config, call one stage driver.

    warm-ray prepare [--config FILE] [--run-dir DIR] [--set key=value ...]
    warm-ray warm    ...
    warm-ray demo    ...   (every stage in order, tiny defaults, offline)
"""

from __future__ import annotations

import argparse
import logging
import sys

from warm_ray import quiet_transformers
from warm_ray.config import Config, ConfigError, load_config

STAGES = ("prepare", "warm", "rl", "warp", "sweep", "demo")


def _run_prepare(cfg: Config, args) -> None:
    from warm_ray.prepare import prepare

    summary = prepare(cfg)
    print(f"prepared {summary['rows']} pairs, corruption rate {summary['corruption_rate']:.3f}, "
          f"policy {summary['policy']}")


def _run_warm(cfg: Config, args) -> None:
    from actors.warm import run_warm

    run_warm(cfg)


def _run_rl(cfg: Config, args) -> None:
    from actors.rlhf import run_rl_comparison

    run_rl_comparison(cfg, resume=args.resume)


def _run_warp(cfg: Config, args) -> None:
    from actors.warp import run_warp

    run_warp(cfg, resume=args.resume)


def _run_sweep(cfg: Config, args) -> None:
    from tune.sweep import run_sweep

    run_sweep(cfg, resume=args.resume)


DEMO_STAGES = [("prepare", _run_prepare), ("warm", _run_warm), ("rl", _run_rl), ("warp", _run_warp)]


def _run_demo(cfg: Config, args) -> None:
    import importlib.util

    for name, fn in DEMO_STAGES:
        # Stages land one by one; the demo runs those whose driver exists.
        module = {"prepare": "warm_ray.prepare", "warm": "actors.warm", "rl": "actors.rlhf", "warp": "actors.warp"}[name]
        if importlib.util.find_spec(module) is None:
            continue
        print(f"\n=== warm-ray demo: {name} ===", flush=True)
        fn(cfg, args)


RUNNERS = {"prepare": _run_prepare, "warm": _run_warm, "rl": _run_rl, "warp": _run_warp,
           "sweep": _run_sweep, "demo": _run_demo}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="warm-ray", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=STAGES)
    p.add_argument("--config", "-c", help="YAML config (sections: prepare, warm, rl, warp, sweep)")
    p.add_argument("--run-dir", help="where outputs go (overrides run_dir of the config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set warm.m=2 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue a stopped run from its checkpoints")
    p.add_argument("--address", default=None, help="Ray address (default: join a running cluster or start one)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    quiet_transformers()
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"warm-ray: config error: {e}", file=sys.stderr)
        return 2
    if args.address:
        import os

        os.environ["RAY_ADDRESS"] = args.address
    RUNNERS[args.stage](cfg, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
