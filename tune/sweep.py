"""`warm-ray sweep`: a Ray Tune sweep over one stage; one trial = one run of that stage's driver.

    sweep:
      stage: warm                 # which stage driver each trial runs
      space: {m: [1, 2, 4]}       # dotted keys of that stage's section -> values
      search: grid                # grid | random (num_samples draws) | optuna (if installed)
      metric: ood_acc_warm        # what "best" means, with mode: max | min

A trial starts actors of its own (the RM trainers of a WARM run), so their resources are
reserved with the trial: one placement group per trial, ``[driver] + [one bundle per actor]``,
built from the same config sections the actors read (``actors.placement.bundle``). Ray Tune
schedules trials with ``placement_group_capture_child_tasks=True``, so every actor the driver
starts lands in that trial's group. A trial starts only once all of its bundles are reserved,
so two trials can never each hold half of what both need and wait forever.

Layout (all under ``<run_dir>/sweep``)::

    config.yaml           the resolved config of the sweep
    fingerprint.json      what a resumed sweep must share with this one (space, stage config)
    tune/                 Ray Tune's experiment state (what `Tuner.restore` reads)
    trials/<trial>/       one run directory per trial; `prepare` points at <run_dir>/prepare
    results.md / .json    the table of all trials
    best_config.yaml      the whole config of the best trial, runnable with `--config`

Rerunning the same command on the same run_dir resumes an interrupted sweep: finished trials
are kept, unfinished ones are run again in their own run directories, where the stage driver
skips what it already finished (WARM members resume from their checkpoints).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from warm_ray.config import Config, ConfigError, SweepConfig, dump_config, from_dict, save_config, to_dict
from warm_ray.names import GOLD
from warm_ray.results import (ENS, GREEDY_SOUP, MEAN_MEMBER, TEST_ID, TEST_OOD, TRAIN_CORRUPTED, WARM,
                              RLResults, WarmResults, WarpResults)

log = logging.getLogger("warm_ray.sweep")

Report = Callable[[dict], None]


# ------------------------------------------------------------------------------------------
# Stage registry: what a trial runs, what it measures, what it reserves
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepStage:
    """How to sweep one stage."""

    # runs the stage on a config; may call report(metrics) for intermediate results (ASHA)
    run: Callable[[Config, Report], dict]
    # the stage's results -> flat {metric name: number}
    metrics: Callable[[dict], dict[str, float]]
    # bundles of the actors one run starts (the driver's own bundle is added by the sweep)
    bundles: Callable[[Config], list[dict[str, float]]]
    # every metric name metrics() returns (sweep.metric must be one of them)
    metric_names: tuple[str, ...]
    # (metric, column header) of the results table, in order
    columns: tuple[tuple[str, str], ...]
    # stage outputs of <run_dir> a trial reuses instead of recomputing
    needs: tuple[str, ...] = ("prepare",)
    # whether run() reports metrics during the run (ASHA can stop trials early only then)
    reports_intermediate: bool = False


def _run_warm(cfg: Config, report: Report) -> dict:
    from actors.warm import run_warm

    return run_warm(cfg)


def _warm_metrics(results: dict) -> dict[str, float]:
    r = WarmResults.from_json(results)
    return {
        "ood_acc_warm": r.acc(WARM, TEST_OOD),
        # agreement with flipped labels: how much label noise the RM memorised
        "memorisation_warm": r.acc(WARM, TRAIN_CORRUPTED),
        "id_acc_warm": r.acc(WARM, TEST_ID),
        "ood_acc_ens": r.acc(ENS, TEST_OOD),
        # uniform soup (WARM) against greedy soup, from the same members
        "ood_acc_greedy": r.acc(GREEDY_SOUP, TEST_OOD),
        "memorisation_greedy": r.acc(GREEDY_SOUP, TRAIN_CORRUPTED),
        "ood_acc_mean_member": r.acc(MEAN_MEMBER, TEST_OOD),
        "memorisation_mean_member": r.acc(MEAN_MEMBER, TRAIN_CORRUPTED),
        "members": float(r.members),
        "seconds_train": float(r.seconds_train),
        "seconds_stage": float(r.seconds_total),
    }


def _warm_bundles(cfg: Config) -> list[dict[str, float]]:
    from actors.placement import bundle

    if cfg.warm.workers_per_member > 1:
        # A data-parallel member's actor holds nothing; Ray Train gives its workers a placement
        # group of their own, which cannot nest inside the trial's: reserving them here too
        # would hold those resources idle and starve Ray Train.
        return []
    return [bundle(cfg.warm.trainer)] * cfg.warm.m


STAGES: dict[str, SweepStage] = {
    "warm": SweepStage(
        run=_run_warm,
        metrics=_warm_metrics,
        bundles=_warm_bundles,
        metric_names=("ood_acc_warm", "memorisation_warm", "id_acc_warm", "ood_acc_ens", "ood_acc_greedy",
                      "memorisation_greedy", "ood_acc_mean_member",
                      "memorisation_mean_member", "members", "seconds_train", "seconds_stage"),
        columns=(("ood_acc_warm", "OOD acc WARM"), ("memorisation_warm", "memorisation WARM"),
                 ("id_acc_warm", "ID acc WARM"), ("ood_acc_ens", "OOD acc ENS"),
                 ("ood_acc_greedy", "OOD acc greedy soup"),
                 ("ood_acc_mean_member", "OOD acc mean member"),
                 ("memorisation_mean_member", "memorisation mean member"), ("seconds_stage", "stage s")),
    ),
    "rl": SweepStage(
        run=lambda cfg, report: _run_rl(cfg, report),
        metrics=lambda results: _rl_metrics(results),
        bundles=lambda cfg: _rl_bundles(cfg.rl),
        metric_names=("gold_reward", "proxy_reward", "kl_sft", "gold_gain", "gold_per_kl", "seconds_stage"),
        columns=(("gold_reward", "gold (final)"), ("gold_gain", "gold gain"), ("proxy_reward", "proxy (final)"),
                 ("kl_sft", "KL to SFT"), ("gold_per_kl", "gold gain / KL"), ("seconds_stage", "stage s")),
        needs=("prepare", "warm"),
        reports_intermediate=True,
    ),
    "warp": SweepStage(
        run=lambda cfg, report: _run_warp(cfg),
        metrics=lambda results: _warp_metrics(results),
        bundles=lambda cfg: _warp_bundles(cfg),
        metric_names=("gold_eta", "proxy_eta", "kl_eta", "gold_front_auc", "seconds_stage"),
        columns=(("gold_eta", "gold at η"), ("proxy_eta", "proxy at η"), ("kl_eta", "KL at η"),
                 ("gold_front_auc", "gold front AUC"), ("seconds_stage", "stage s")),
        needs=("prepare", "warm"),
    ),
}


# RL and WARP: the gold reward (never trained on) is what a sweep should select on; proxy and
# KL are reported beside it so that a proxy-hacking trial is visible in the table.


def _rl_bundles(rl, scorer: bool = True) -> list[dict[str, float]]:
    from actors.placement import bundle

    return [bundle(rl.learner)] + [bundle(rl.rollout)] * rl.n_workers + (_scorer_bundles(rl) if scorer else [])


def _warp_bundles(cfg: Config) -> list[dict[str, float]]:
    """The parallel runs' learners and rollout workers, and the one scorer actor they share."""
    parallel = max(1, min(cfg.warp.m, cfg.warp.max_parallel or cfg.warp.m))
    return _rl_bundles(cfg.warp.rl, scorer=False) * parallel + _scorer_bundles(cfg.warp.rl)


def _scorer_bundles(rl) -> list[dict[str, float]]:
    """The reward models' actor, when they score in one (not in the driver, not for the gold reward)."""
    from actors.placement import bundle

    return [bundle(rl.scorer)] if rl.scorer_placement == "actor" and rl.reward != GOLD else []


def _run_rl(cfg: Config, report: Report) -> dict:
    from actors.rl import RLRun, run_rl

    def on_step(step, record, group):
        report({"gold_reward": record["gold_reward"], "proxy_reward": record["proxy_reward"],
                "kl_sft": record["kl_sft"], "step": step})

    return run_rl(RLRun.of(cfg, Path(cfg.run_dir) / "rl" / cfg.rl.reward), on_step=on_step)


def _rl_metrics(results: dict) -> dict[str, float]:
    r = RLResults.from_json(results)
    final = r.final
    return {"gold_reward": final.gold_reward, "proxy_reward": final.proxy_reward, "kl_sft": final.kl_sft,
            "gold_gain": r.gold_gain, "gold_per_kl": r.gold_gain / max(final.kl_sft, 1e-3),
            "seconds_stage": r.seconds_this_run}


def _run_warp(cfg: Config) -> dict:
    from actors.warp import run_warp

    return run_warp(cfg)


def _warp_metrics(results: dict) -> dict[str, float]:
    """Of the last iteration's front of its merge (warp.merge): the η point, and the area under gold against KL."""
    r = WarpResults.from_json(results)
    last = r.last
    front = sorted(last.front(last.merge), key=lambda p: p.kl_sft)
    point = last.point(last.merge, last.eta)
    auc = sum((b.kl_sft - a.kl_sft) * (a.gold + b.gold) / 2 for a, b in zip(front, front[1:]))
    return {"gold_eta": point.gold, "proxy_eta": point.proxy, "kl_eta": point.kl_sft,
            "gold_front_auc": auc, "seconds_stage": r.seconds}


def stage_of(sweep: SweepConfig) -> SweepStage:
    if sweep.stage not in STAGES:
        raise ConfigError(f"sweep.stage {sweep.stage!r} has no sweep driver; available: {', '.join(STAGES)}")
    return STAGES[sweep.stage]


# ------------------------------------------------------------------------------------------
# Configs of trials
# ------------------------------------------------------------------------------------------


def with_params(cfg: Config, stage: str, params: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with ``params`` (dotted keys of the stage's section) set, re-validated."""
    data = to_dict(cfg)
    for key, value in params.items():
        node = data[stage]
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"sweep.space: unknown key {stage + '.' + '.'.join(parts[: i + 1])!r}")
            if i < len(parts) - 1:
                node = node[part]
        node[parts[-1]] = value
    try:
        return from_dict(Config, data)
    except ConfigError as e:
        raise ConfigError(f"sweep.space: {e}") from None


def trial_configs(cfg: Config) -> list[dict[str, Any]]:
    """Every combination of the space's values (the grid; random/optuna draw from it)."""
    space = cfg.sweep.space
    keys = list(space)
    return [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]


def driver_bundle(sweep: SweepConfig) -> dict[str, float]:
    # An empty head bundle is Tune's way of saying "the trainable itself reserves nothing".
    return {"CPU": sweep.driver_cpus} if sweep.driver_cpus > 0 else {}


def trial_resources(cfg: Config):
    """The placement group of one trial: the driver's bundle, then one bundle per actor."""
    from ray import tune

    bundles = [driver_bundle(cfg.sweep)] + stage_of(cfg.sweep).bundles(cfg)
    if not any(bundles):  # Tune needs one non-empty bundle; placement's "zero" bundle
        from actors.placement import bundle
        from warm_ray.config import Resources

        bundles = [bundle(Resources(num_cpus=0, num_gpus=0))]
    return tune.PlacementGroupFactory(bundles, strategy="PACK")


def _resources_of_params(params: dict, *, base: dict, stage: str):
    return trial_resources(with_params(from_dict(Config, base), stage, params))


def validate(cfg: Config) -> SweepStage:
    """Check the sweep section before any trial starts; raise ConfigError naming the problem."""
    sw = cfg.sweep
    spec = stage_of(sw)
    if not sw.space:
        raise ConfigError("sweep.space is empty: give at least one dotted key with a list of values")
    for key, values in sw.space.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.space.{key}: expected a non-empty list of values, got {values!r}")
        for v in values:
            with_params(cfg, sw.stage, {key: v})
    if sw.search not in ("grid", "random", "optuna"):
        raise ConfigError(f"sweep.search must be 'grid', 'random' or 'optuna', got {sw.search!r}")
    if sw.search == "optuna" and importlib.util.find_spec("optuna") is None:
        raise ConfigError("sweep.search='optuna' needs the optuna package: pip install 'warm-ray[tune-optuna]'")
    if sw.mode not in ("max", "min"):
        raise ConfigError(f"sweep.mode must be 'max' or 'min', got {sw.mode!r}")
    if sw.metric not in spec.metric_names:
        raise ConfigError(f"sweep.metric {sw.metric!r} is not reported by stage {sw.stage!r}; "
                          f"choose one of {', '.join(spec.metric_names)}")
    if sw.asha and not spec.reports_intermediate:
        raise ConfigError(f"sweep.asha needs intermediate metrics, and stage {sw.stage!r} reports once, at "
                          "the end: early stopping could never stop a trial. Set sweep.asha=false.")
    if sw.num_samples < 1 or sw.max_concurrent < 1:
        raise ConfigError("sweep.num_samples and sweep.max_concurrent must be >= 1")
    if sw.driver_cpus < 0:
        raise ConfigError(f"sweep.driver_cpus must be >= 0, got {sw.driver_cpus}")
    return spec


def check_fits(cfg: Config, cluster: dict[str, float]) -> None:
    """A trial whose placement group exceeds the whole cluster would wait forever: say so now."""
    for params in trial_configs(cfg):
        pgf = trial_resources(with_params(cfg, cfg.sweep.stage, params))
        need = pgf.required_resources
        short = {k: (v, cluster.get(k, 0.0)) for k, v in need.items() if v > cluster.get(k, 0.0) + 1e-9}
        if short:
            what = ", ".join(f"{k}: needs {v:g}, cluster has {have:g}" for k, (v, have) in short.items())
            msg = (f"the trial {params} reserves {pgf.bundles} ({what}). Lower the stage's resources "
                   f"(e.g. {cfg.sweep.stage}.trainer.num_cpus) or add nodes.")
            if os.environ.get("RAY_ADDRESS"):
                log.warning("%s Waiting for the autoscaler, if any.", msg)
            else:
                raise ConfigError(msg)


# ------------------------------------------------------------------------------------------
# One trial
# ------------------------------------------------------------------------------------------


def link_stage_outputs(src_run_dir: Path, dst_run_dir: Path, stages: tuple[str, ...],
                       prepare_summary: dict | None = None) -> None:
    """Make a trial's run dir reuse the sweep's stage outputs instead of recomputing them.

    The trial's ``prepare.json`` is ``prepare_summary`` (default: the sweep's, read by
    ``sources.prepared_summary``): the sweep's prepared files by their absolute paths, which a trial
    reads from any working directory (Tune changes it). Everything else is a symlink.
    """
    for stage in stages:
        src, dst = src_run_dir / stage, dst_run_dir / stage
        if stage != "prepare":
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.symlink_to(src, target_is_directory=True)
            continue
        dst.mkdir(parents=True, exist_ok=True)
        for entry in src.iterdir():
            link = dst / entry.name
            if entry.name != "prepare.json" and not link.exists() and not link.is_symlink():
                link.symlink_to(entry)
        from warm_ray.files import atomic_write_json

        from warm_ray.sources import prepared_summary

        atomic_write_json(dst / "prepare.json", prepare_summary or prepared_summary(src_run_dir.absolute()))


def _trial(params: dict, *, stage: str, base: dict, source_run_dir: str, sweep_dir: str,
           prepare_summary: dict) -> None:
    """The Tune trainable: run one stage on the base config with this trial's params."""
    import ray
    from ray import tune

    spec = STAGES[stage]
    name = tune.get_context().get_trial_name()
    run_dir = Path(sweep_dir) / "trials" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    link_stage_outputs(Path(source_run_dir), run_dir, spec.needs, prepare_summary)
    cfg = with_params(from_dict(Config, base), stage, params)
    cfg.run_dir = str(run_dir)
    save_config(cfg, run_dir)
    pg = ray.util.get_current_placement_group()
    t0 = time.perf_counter()
    results = spec.run(cfg, lambda m: tune.report(dict(m)))
    metrics = spec.metrics(results)
    record = {"trial": name, "params": params, "metrics": metrics, "run_dir": str(run_dir),
              "seconds": round(time.perf_counter() - t0, 1),
              "placement_group": pg.bundle_specs if pg is not None else None}
    from warm_ray.files import atomic_write_json

    atomic_write_json(run_dir / "trial.json", record)
    tune.report(metrics)


def _trial_name(trial) -> str:
    # "0_m=1": Tune's tag (index + params), made safe as a directory name
    return re.sub(r"[^\w.=,+-]+", "_", trial.experiment_tag)[:100]


# ------------------------------------------------------------------------------------------
# The sweep
# ------------------------------------------------------------------------------------------


def _tune_space(sw: SweepConfig) -> dict:
    from ray import tune

    if sw.search == "grid":
        return {k: tune.grid_search(v) for k, v in sw.space.items()}
    return {k: tune.choice(v) for k, v in sw.space.items()}


def _search_alg(cfg: Config):
    """Random and Optuna draws are seeded by the stage's seed, so a sweep can be repeated."""
    sw = cfg.sweep
    seed = getattr(getattr(cfg, sw.stage), "seed", 0)
    if sw.search == "grid":
        return None
    if sw.search == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed)
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=sw.max_concurrent)


def _scheduler(sw: SweepConfig):
    if not sw.asha:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", grace_period=1, reduction_factor=2)


def _fingerprint(cfg: Config) -> dict:
    """What a resumed sweep must share with the one it continues."""
    sweep = {k: v for k, v in dataclasses.asdict(cfg.sweep).items() if k != "max_concurrent"}
    return {"sweep": sweep, "stage": to_dict(cfg)[cfg.sweep.stage], "prepare": to_dict(cfg)["prepare"]}


def make_trainable(cfg: Config, source_run_dir: Path, sweep_dir: Path):
    from ray import tune

    base = to_dict(cfg)
    from warm_ray.sources import prepared_summary

    # resolved here, against the sweep's run dir as the user names it, not in the trial's directory
    summary = prepared_summary(source_run_dir.absolute())
    missing = [p for p in [summary["data"], *summary["checkpoints"]] if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"{source_run_dir / 'prepare' / 'prepare.json'} names {missing[0]}, which is not "
                                f"there: rerun `warm-ray prepare --run-dir {source_run_dir}`")
    fn = tune.with_parameters(_trial, stage=cfg.sweep.stage, base=base, source_run_dir=str(source_run_dir),
                              sweep_dir=str(sweep_dir), prepare_summary=summary)
    from functools import partial

    return tune.with_resources(fn, partial(_resources_of_params, base=base, stage=cfg.sweep.stage))


def run_sweep(config: Config, resume: bool = False) -> dict:
    """Run (or continue) the sweep of ``config.sweep``; print and save the table and the best config."""
    import ray
    from ray import tune

    from actors.placement import ensure_ray

    sw = config.sweep
    spec = validate(config)
    run_dir = Path(config.run_dir).resolve()
    config = dataclasses.replace(config, run_dir=str(run_dir))
    for stage in spec.needs:
        marker = run_dir / stage / ("prepare.json" if stage == "prepare" else "results.json")
        if not marker.exists():
            raise FileNotFoundError(f"{marker} not found: run `warm-ray {stage} --run-dir {run_dir}` before "
                                    f"sweeping {sw.stage}")
    sweep_dir = run_dir / "sweep"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    exp_dir = sweep_dir / "tune"
    fp_path = sweep_dir / "fingerprint.json"
    restorable = tune.Tuner.can_restore(str(exp_dir))
    if restorable and fp_path.exists() and json.loads(fp_path.read_text()) != _fingerprint(config):
        raise ConfigError(f"{sweep_dir} holds a sweep with another space/stage config; use another --run-dir "
                          f"or delete {sweep_dir} to start over")
    if resume and not restorable:
        log.info("nothing to resume in %s: starting the sweep", exp_dir)
    from warm_ray.files import atomic_write_json

    atomic_write_json(fp_path, _fingerprint(config))
    save_config(config, sweep_dir)

    ensure_ray()
    check_fits(config, ray.cluster_resources())
    trainable = make_trainable(config, run_dir, sweep_dir)
    t0 = time.perf_counter()
    if restorable:
        log.info("resuming the sweep in %s", exp_dir)
        tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, restart_errored=True)
    else:
        grid = sw.search == "grid"
        tuner = tune.Tuner(
            trainable,
            param_space=_tune_space(sw),
            tune_config=tune.TuneConfig(
                metric=sw.metric, mode=sw.mode, num_samples=1 if grid else sw.num_samples,
                search_alg=_search_alg(config), scheduler=_scheduler(sw),
                max_concurrent_trials=None if sw.search == "optuna" else sw.max_concurrent,
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir), verbose=1),
        )
    grid_results = tuner.fit()
    rows = collect(grid_results, sweep_dir, spec)
    summary = summarise(config, spec, rows, seconds=time.perf_counter() - t0)
    return summary


def collect(grid_results, sweep_dir: Path, spec: SweepStage) -> list[dict]:
    """One row per trial: params, metrics (the trial's own record, else Tune's), status."""
    rows = []
    for r in grid_results:
        name = Path(r.path).name
        record_path = sweep_dir / "trials" / name / "trial.json"
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        tune_metrics = r.metrics or {}
        if r.error:
            status = "error: " + (str(r.error).strip().splitlines() or ["?"])[-1][:120]
        elif tune_metrics.get("done"):
            status = "done"
        else:
            status = "unfinished"
        metrics = dict(record.get("metrics") or {})
        if not metrics:
            metrics = {k: v for k, v in tune_metrics.items() if k in spec.metric_names}
        seconds = record.get("seconds", tune_metrics.get("time_total_s"))
        rows.append({"trial": name, "params": record.get("params") or dict(r.config or {}),
                     "metrics": metrics, "status": status, "seconds": seconds,
                     "run_dir": str(sweep_dir / "trials" / name)})
    rows.sort(key=lambda row: _trial_index(row["trial"]))
    return rows


def _trial_index(name: str) -> int:
    head = name.split("_", 1)[0]
    return int(head) if head.isdigit() else 0


def best_row(rows: list[dict], metric: str, mode: str) -> dict | None:
    scored = [r for r in rows if r["status"] == "done" and metric in r["metrics"]]
    if not scored:
        return None
    key = (lambda r: r["metrics"][metric])
    return max(scored, key=key) if mode == "max" else min(scored, key=key)


def _fmt(v, digits: int = 3) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _fmt_param(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt_param(x) for x in v) + "]"
    return str(v)


def markdown(rows: list[dict], spec: SweepStage, sw: SweepConfig, best: dict | None) -> str:
    keys = list(sw.space)
    cols = list(spec.columns)
    head = "| trial | " + " | ".join(keys) + " | " + " | ".join(h for _, h in cols) + " | trial s | status |\n"
    head += "|---|" + "---:|" * len(keys) + "---:|" * len(cols) + "---:|---|\n"
    body = ""
    for r in rows:
        mark = " **best**" if best is not None and r is best else ""
        body += (f"| {r['trial']}{mark} | " + " | ".join(_fmt_param(r["params"].get(k, "")) for k in keys) + " | "
                 + " | ".join(_fmt(r["metrics"][m], 1 if m.startswith("seconds") else 3) if m in r["metrics"]
                              else "-" for m, _ in cols)
                 + f" | {_fmt(float(r['seconds']), 1) if r['seconds'] is not None else '-'} | {r['status']} |\n")
    return head + body


def summarise(config: Config, spec: SweepStage, rows: list[dict], seconds: float) -> dict:
    from warm_ray.files import atomic_write_json, atomic_write_text

    sw = config.sweep
    sweep_dir = Path(config.run_dir) / "sweep"
    best = best_row(rows, sw.metric, sw.mode)
    md = markdown(rows, spec, sw, best)
    title = (f"Sweep of `{sw.stage}` over {', '.join(sw.space)} ({sw.search} search, {len(rows)} trials, "
             f"optimising {sw.metric} ({sw.mode}); {seconds:.0f}s)")
    out = {"rows": rows, "best": best, "seconds": round(seconds, 1), "metric": sw.metric, "mode": sw.mode}
    text = f"{title}\n\n{md}"
    if best is not None:
        best_cfg = with_params(config, sw.stage, best["params"])
        best_cfg.run_dir = str(Path(config.run_dir))
        atomic_write_text(sweep_dir / "best_config.yaml", dump_config(best_cfg))
        text += (f"\nbest: {best['trial']} {best['params']} -> {sw.metric} = {best['metrics'][sw.metric]:.3f}"
                 f"\nbest config: {sweep_dir / 'best_config.yaml'}\n")
    atomic_write_text(sweep_dir / "results.md", text)
    atomic_write_json(sweep_dir / "results.json", out)
    print("\n" + text)
    return out
