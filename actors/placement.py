"""Where roles run: Ray resources per role, from the config, written once.

Every role (RM trainer, parameter server, rollout worker, learner) takes a ``Resources``
section of the config; this module turns it into Ray actor options and placement-group
bundles. A CPU laptop and a GPU cluster differ only in those config sections.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

import ray

from warm_ray.config import Resources, UserError

# Environment every worker process gets: offline hubs, no tokenizer thread pools.
WORKER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


log = logging.getLogger(__name__)

# set by Ray in the driver process of a Ray Job (with RAY_ADDRESS)
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def ensure_ray(num_cpus: int | None = None) -> str:
    """Connect this process to Ray: the one way every entry point does it, before any actor.

    Joins an existing cluster only when asked: RAY_ADDRESS (which ``warm-ray --address`` sets,
    and Ray sets for a Ray Job) or running as a Ray Job. Otherwise starts a private local Ray,
    never attaching to another Ray that happens to run on the machine. Logs which it did and
    returns it: "joined", "started", or "connected" when this process already was.
    """
    if ray.is_initialized():
        return "connected"
    address = os.environ.get("RAY_ADDRESS") or ("auto" if os.environ.get(RAY_JOB_ENV) else None)
    env = {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}
    if address:
        why = "running as a Ray Job" if os.environ.get(RAY_JOB_ENV) else "RAY_ADDRESS / --address"
        log.info("joining the Ray cluster at %s (%s)", address, why)
        # Inside a Ray Job whose runtime_env sets some of these variables too, Ray refuses two
        # definitions of one key unless told to merge; ours carry the job's values (read above).
        os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
        probe(address)
        with _keep_sigterm():
            try:
                ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
            except ConnectionError as e:
                raise UserError(f"cannot join the Ray cluster at {address} ({why}): "
                                f"{' '.join(str(e).split())[:300]}") from e
        return "joined"
    log.info("starting a local Ray (num_cpus=%s); set RAY_ADDRESS or --address to join a cluster",
             num_cpus if num_cpus is not None else "all")
    with _keep_sigterm():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 runtime_env={"env_vars": env}, log_to_driver=True)
    return "started"


PROBE_S = 10.0  # how long an address that does not answer is tried before a one-line error
# seconds of that wait instead of PROBE_S (tests use a short one; unset: PROBE_S)
PROBE_ENV = "WARM_RAY_PROBE_S"


def probe_seconds() -> float:
    """How long ``probe`` tries an address by default: ``$WARM_RAY_PROBE_S``, else PROBE_S."""
    value = os.environ.get(PROBE_ENV, "").strip()
    if not value:
        return PROBE_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise UserError(f"{PROBE_ENV}={value!r}: expected a number of seconds > 0")
    return seconds


def probe(address: str, timeout: float | None = None) -> None:
    """Fail fast, with one line naming ``address``, when nothing listens there.

    Ray itself retries an unreachable GCS for ever (a warning every ~40 s) and a ``ray://`` client
    for ~35 s before a traceback. "auto" and addresses without a port are left to Ray. ``timeout``
    defaults to ``probe_seconds()`` (PROBE_S, 10 s, unless $WARM_RAY_PROBE_S says otherwise).
    """
    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise UserError(f"Ray address {address!r}: not host:port or ray://host:port") from None
    if not host or port is None:
        return
    if timeout is None:
        timeout = probe_seconds()
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(3.0, timeout)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise UserError(f"cannot reach the Ray cluster at {address}: {e.strerror or e} "
                                f"(tried for {timeout:.0f}s); start it (ray start --head / ray up cluster.yaml) "
                                "or fix --address / RAY_ADDRESS") from None
            time.sleep(0.5)


class _keep_sigterm:
    """``ray.init`` installs its own SIGTERM handler (exit 1 from inside the signal, a native stack
    dump in the driver); the ``warm-ray`` command's handler (a "terminated" line, exit 143, Ray
    shut down at exit as usual) stays in place. A handler-less caller keeps Ray's."""

    def __enter__(self):
        main = threading.current_thread() is threading.main_thread()
        self.previous = signal.getsignal(signal.SIGTERM) if main else None
        return self

    def __exit__(self, *exc):
        if callable(self.previous):
            signal.signal(signal.SIGTERM, self.previous)


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
