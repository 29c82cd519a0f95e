"""The study's seeds as parallel Ray work: one placement group per seed, at most ``study.max_parallel`` at once.

A seed is independent of the others by design (paired by seed, sharing only the study's ``prepare``), so
each runs as one Ray task, ``_seed_task``, inside its own placement group. The group is sized from the
config, as the largest of what the seed's parts ask for one after another:

    rm    one bundle per member trainer (``warm.trainer``; with ``warm.workers_per_member > 1`` Ray Train
          reserves its own workers, outside the group)
    rl    ``study.rl_parallel`` slots of one learner, ``rl.n_workers`` rollout workers and, with
          ``rl.scorer_placement: actor``, the reward scorer
    warp  min(``warp.m``, ``warp.max_parallel``) such slots and one shared scorer actor
    and the seed's own process (``study.seed_resources``: Best-of-N, evaluations), 0 CPUs by default

The task captures its children into the group (``placement_group_capture_child_tasks``), so the actors a
seed starts run on the group's reservation and seeds never starve one another of half a set of trainers.
The groups are ``PACK``: a seed stays on one node where it fits and spans nodes where it must.

What it changes: only where and when a seed runs. Every part is still a run-dir unit under the seed's dir
with the fingerprint of its config (``actors.study.run_seed``), so a driver killed mid-study, or a node lost
with the seeds it ran, costs only the parts that were running: Ray re-runs a seed whose process died
(``study.task_retries``), and the re-run, or the next ``warm-ray study``, reuses every finished part.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from actors.placement import bundle
from warm_ray.config import Config
from warm_ray.names import ONLINE_ARMS

log = logging.getLogger("warm_ray.study")


def _slot(rl) -> list[dict]:
    """One RL slot: a learner and its rollout workers."""
    return [bundle(rl.learner), *[bundle(rl.rollout) for _ in range(rl.n_workers)]]


def part_bundles(config: Config) -> dict[str, list[dict]]:
    """Placement-group bundles of what each of the seed's parts starts at once."""
    study, warm = config.study, config.warm
    out: dict[str, list[dict]] = {}
    if warm.workers_per_member == 1:
        out["rm"] = [bundle(warm.trainer) for _ in range(warm.m)]
    if "rl" in study.parts:
        scorer = [bundle(config.rl.scorer)] if config.rl.scorer_placement == "actor" else []
        # an online arm's member trainers (rl.online): every member for warm_online, one for single_online
        online = [a for a in study.rl_arms if a in ONLINE_ARMS]
        n_trainers = warm.m if "warm_online" in online else 1 if online else 0
        trainers = [bundle(config.rl.online.trainer)] * n_trainers
        out["rl"] = [b for _ in range(study.rl_parallel) for b in (*_slot(config.rl), *scorer, *trainers)]
    if "warp" in study.parts:
        slots = max(1, min(config.warp.m, config.warp.max_parallel or config.warp.m))
        scorer = [bundle(config.warp.rl.scorer)] if config.warp.rl.scorer_placement == "actor" else []
        out["warp"] = [b for _ in range(slots) for b in _slot(config.warp.rl)] + scorer
    return out


def _size(b: dict) -> tuple:
    return (b.get("GPU", 0.0), b.get("CPU", 0.0), sorted(b.items()))


def seed_bundles(config: Config) -> list[dict]:
    """One seed's placement group: the parts run one after another, so bundle i is the largest i-th
    bundle of any part (each part's bundles sorted largest first), then the seed's own process's."""
    lists = [sorted(bs, key=_size, reverse=True) for bs in part_bundles(config).values() if bs]
    merged: list[dict] = []
    for i in range(max((len(bs) for bs in lists), default=0)):
        b: dict[str, float] = {}
        for bs in lists:
            if i < len(bs):
                for k, v in bs[i].items():
                    b[k] = max(b.get(k, 0.0), v)
        merged.append(b)
    own = config.study.seed_resources
    if own.num_cpus > 0 or own.num_gpus > 0 or own.resources:
        merged.insert(0, bundle(own))
    return merged or [{"CPU": 0.01}]


def demand(bundles: list[dict]) -> dict[str, float]:
    """Total resources of a placement group's bundles."""
    total: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            total[k] = total.get(k, 0.0) + v
    return total


def capacity(bundles: list[dict], nodes: list[dict[str, float]]) -> int:
    """How many such groups fit at once on these nodes' resources, packing each group's bundles first-fit
    onto the nodes (largest first): what Ray's ``PACK`` strategy can reach, at most."""
    def place(nodes_free: list[dict], allowed: list[int]) -> list[dict] | None:
        trial = [dict(n) for n in nodes_free]
        for b in order:
            for i in allowed:
                node = trial[i]
                if all(node.get(k, 0.0) >= v - 1e-9 for k, v in b.items()):
                    for k, v in b.items():
                        node[k] = node.get(k, 0.0) - v
                    break
            else:
                return None
        return trial

    free = [dict(n) for n in nodes]
    order = sorted(bundles, key=_size, reverse=True)
    count = 0
    while True:
        # PACK: the whole group on one node where one holds it, else spread first-fit
        trial = next((t for i in range(len(free)) if (t := place(free, [i])) is not None), None)
        trial = trial or place(free, list(range(len(free))))
        if trial is None:
            return count
        free, count = trial, count + 1


def alive_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def _fmt(res: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(res.items()))


def slots_for(config: Config, n_jobs: int | None = None) -> tuple[int, list[dict]]:
    """How many seeds run at once (``study.max_parallel``, 0: as many as the cluster holds now) and one
    seed's bundles. 1: the seeds run one after another in the driver, as before."""
    bundles = seed_bundles(config)
    study = config.study
    n_jobs = len(study.seeds) if n_jobs is None else n_jobs
    if study.max_parallel == 1 or n_jobs <= 1:
        return 1, bundles
    fits = capacity(bundles, alive_nodes())
    if fits == 0:
        log.warning("one seed's placement group (%s) does not fit on any set of this cluster's nodes now; the "
                    "seeds run one after another in the driver, their actors queued by Ray as before",
                    _fmt(demand(bundles)))
        return 1, bundles
    want = n_jobs if study.max_parallel == 0 else study.max_parallel
    return max(1, min(want, fits, n_jobs)), bundles


@dataclass
class SeedJob:
    """One seed of one config to run (``actors.study.run_seed``); ``key`` names it in results and logs."""

    key: object
    config: Config
    seed: int
    seeds_dir: Path

    @property
    def label(self) -> str:
        return f"seed {self.key}" if isinstance(self.key, int) else " ".join(map(str, self.key))


def _seed_task(run: Callable, config: Config, seed: int, seeds_dir: str, shared: dict) -> dict:
    """One seed in a Ray task (``run``: ``actors.study.run_seed``), its logs forwarded to the driver."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return run(config, seed, Path(seeds_dir), shared)


def placement_of_this_process() -> dict:
    """Where this process runs: its Ray node id (short and full) and host name; "driver" outside Ray work."""
    import socket

    try:
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - no Ray worker context: the driver
        node = None
    return {"node": node[:8] if node else "driver", "node_id": node, "host": socket.gethostname(), "pid": os.getpid()}


def run_jobs(jobs: list[SeedJob], shared: dict, run: Callable,
             on_done: Callable[[SeedJob, dict], None] | None = None) -> tuple[dict, int]:
    """Every job, in parallel (``run_parallel``) where the cluster holds more than one seed's group at once
    and ``study.max_parallel`` allows, else one after another in this process as before: ({key: result}
    in the jobs' order, the number of slots)."""
    configs = {id(job.config): job.config for job in jobs}  # the seeds of one config share it: one check each
    slots = min(slots_for(config, len(jobs))[0] for config in configs.values())
    if slots > 1:
        return run_parallel(jobs, shared, slots, run, on_done), slots
    out = {}
    for i, job in enumerate(jobs):
        log.info("study: %s (%d of %d)", job.label, i + 1, len(jobs))
        out[job.key] = run(job.config, job.seed, job.seeds_dir, shared)
        if on_done is not None:
            on_done(job, out[job.key])
    return out, 1


def run_parallel(jobs: list[SeedJob], shared: dict, slots: int, run: Callable,
                 on_done: Callable[[SeedJob, dict], None] | None = None) -> dict:
    """Every job as a Ray task (``run(config, seed, seeds_dir, shared)``: ``actors.study.run_seed``) in its
    own placement group (``seed_bundles`` of its config), ``slots`` at once; ``on_done(job, result)`` as each finishes (in the order they finish). Returns {key: result} in the
    jobs' order. Groups are removed at the end, also on an error or an interrupt, which ends their tasks
    and actors. Only as many groups as run are created: a group Ray cannot place yet is retried by its
    scheduler over and over, which on a small machine slows the seeds that do run."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    task = ray.remote(_seed_task)
    todo = list(jobs)
    running: dict[ray.ObjectRef, tuple[SeedJob, object, float]] = {}
    done: dict = {}
    first = seed_bundles(jobs[0].config)
    log.info("study: %d seeds, %d at once, each in a placement group of %d bundles (%s)", len(todo), slots,
             len(first), _fmt(demand(first)))
    try:
        while todo or running:
            while todo and len(running) < slots:
                job = todo.pop(0)
                own = job.config.study.seed_resources
                pg = placement_group(seed_bundles(job.config), strategy="PACK")
                own_bundle = 0 if own.num_cpus > 0 or own.num_gpus > 0 or own.resources else -1
                ref = task.options(
                    num_cpus=own.num_cpus, num_gpus=own.num_gpus, resources=dict(own.resources) or None,
                    max_retries=job.config.study.task_retries, retry_exceptions=False,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        pg, placement_group_bundle_index=own_bundle, placement_group_capture_child_tasks=True),
                ).remote(run, job.config, job.seed, str(job.seeds_dir), shared)
                running[ref] = (job, pg, time.time())
                log.info("study: %s submitted (%d running, %d waiting)", job.label, len(running), len(todo))
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                job, pg, t0 = running.pop(ref)
                try:
                    result = ray.get(ref)  # a seed's error ends the study (its finished parts stay reusable)
                finally:
                    remove_placement_group(pg)
                nodes = sorted({u["node"] for u in result.get("units", {}).values()})
                log.info("study: %s finished on node %s after %.0f s (%d running, %d waiting)", job.label,
                         ", ".join(nodes), time.time() - t0, len(running), len(todo))
                done[job.key] = result
                if on_done is not None:
                    on_done(job, result)
    finally:
        for ref, (_, pg, _) in running.items():
            ray.cancel(ref, force=True)
            remove_placement_group(pg)
    return {j.key: done[j.key] for j in jobs}  # in the jobs' order, as one after another


def wall_with_slots(per_seed_s: float, n_seeds: int, k: int) -> float:
    """Wall time of ``n_seeds`` seeds of ``per_seed_s`` each on ``k`` parallel slots (whole waves)."""
    return per_seed_s * math.ceil(n_seeds / max(1, k))
