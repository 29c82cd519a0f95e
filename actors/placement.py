"""Where roles run: Ray resources per role, from the config, written once.

Every role (RM trainer, parameter server, rollout worker, learner) takes a ``Resources``
section of the config; this module turns it into Ray actor options and placement-group
bundles. A CPU laptop and a GPU cluster differ only in those config sections.
"""

from __future__ import annotations

import os

import ray

from warm_ray.config import Resources

# Environment every worker process gets: offline hubs, no tokenizer thread pools.
WORKER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join the cluster in RAY_ADDRESS (Ray Jobs, `ray up`), or start a local Ray."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    env = {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}
    if address:
        # Inside a Ray Job whose runtime_env sets some of these variables too, Ray refuses two
        # definitions of one key unless told to merge; ours carry the job's values (read above).
        os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 runtime_env={"env_vars": env}, log_to_driver=True)


def actor_options(res: Resources, **extra) -> dict:
    """Ray ``.options(...)`` of one role's actor from its config section."""
    opts = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus}
    if res.resources:
        opts["resources"] = dict(res.resources)
    opts.update(extra)
    return opts


def bundle(res: Resources) -> dict[str, float]:
    """One placement-group bundle for one actor of this role (zero entries left out)."""
    out = {}
    if res.num_cpus > 0:
        out["CPU"] = res.num_cpus
    if res.num_gpus > 0:
        out["GPU"] = res.num_gpus
    out.update({k: v for k, v in res.resources.items() if v > 0})
    return out or {"CPU": 0.01}
