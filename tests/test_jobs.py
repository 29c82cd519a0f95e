"""`warm-ray demo` as a Ray Job: a head started here, the repository uploaded as working_dir.

The head is this test's own (`ray start --head --block` in a new session, every port chosen
free, its own --temp-dir) and is stopped by killing that session's processes only: never
`ray stop`, which would kill every Ray on the machine.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from warm_ray.config import dump_config, load_config

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600
# Tiny settings for every stage the demo runs (rl and warp run once their drivers exist).
TINY_STAGES = [
    "warm.m=2", "warm.epochs=1", "warm.batch_size=16", "warm.checkpoint_every=50", "warm.log_every=50",
    "warm.lp_epochs=5", "warm.lmc_points=3",
    "rl.steps=2", "rl.prompts_per_step=4", "rl.samples_per_prompt=2", "rl.max_new_tokens=8",
    "rl.n_eval_prompts=8", "rl.checkpoint_every=2",
    "warp.iterations=1", "warp.m=2", "warp.steps=2", "warp.eta_grid=[0.0, 0.5, 1.0]", "warp.baseline_betas=[0.1]",
    "warp.rl.prompts_per_step=4", "warp.rl.samples_per_prompt=2", "warp.rl.max_new_tokens=8",
    "warp.rl.n_eval_prompts=8", "warp.rl.checkpoint_every=2",
    "study.primary=['OOD accuracy: WARM > ENS']", "study.bon_prompts=4", "study.bon_samples=4",
    "study.bon_n=[1, 4]", "study.rl_arms=[warm, warm_online]", "study.eval_prompts=4", "study.eval_every=2",
    "rl.online.every=1", "rl.online.pairs=4", "rl.online.steps=1", "rl.online.batch_size=2",
]
# What working_dir must not upload (the virtualenv alone is ~2 GB).
EXCLUDES = [".venv", "runs", ".git", ".hypothesis", ".pytest_cache", "**/__pycache__", "*.egg-info", "build"]


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env() -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's ray, warm-ray
    env.pop("RAY_ADDRESS", None)
    return env


def _pids_under(temp_dir: str) -> list[int]:
    """Processes of the head started here: their command line names its private temp dir."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if temp_dir.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


def _stop_head(head: subprocess.Popen, temp_dir: str) -> None:
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 15)):
        try:
            os.killpg(head.pid, sig)  # `ray start --block` and the processes it started
        except ProcessLookupError:
            pass
        for pid in _pids_under(temp_dir):  # anything that left the process group
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while (head.poll() is None or _pids_under(temp_dir)) and time.time() < deadline:
            time.sleep(0.3)
        if head.poll() is not None and not _pids_under(temp_dir):
            return


@pytest.fixture
def head():
    """A Ray head of this test only; yields the dashboard (Jobs API) address."""
    yield from _head(_env())


@pytest.fixture
def token_head():
    """A Ray head of this test only with token auth on (RAY_AUTH_MODE=token, a token of its own);
    yields (address, temp dir, the environment a client needs)."""
    import secrets

    env = {**_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    head = _head(env, token=True)
    address, temp_dir = next(head)
    try:
        yield address, temp_dir, env
    finally:
        head.close()  # stops the head (the generator's own finally)


def _head(env: dict, token: bool = False):
    from ray.job_submission import JobSubmissionClient

    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Unix socket paths are limited
    gcs, dash, client, agent_http, agent_grpc, metrics, runtime_env, nm, om = _free_ports(9)
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus=2",
           f"--port={gcs}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={runtime_env}", f"--node-manager-port={nm}", f"--object-manager-port={om}",
           f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    log = open(Path(temp_dir) / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, (Path(temp_dir) / "head.log").read_text()[-3000:]
            try:
                if token:  # the Jobs API answers a client holding the token
                    subprocess.run([str(Path(sys.executable).parent / "ray"), "job", "list", "--address", address],
                                   env=env, check=True, capture_output=True, timeout=60)
                else:
                    JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                assert time.time() < deadline, "the head's Jobs API never came up"
                time.sleep(1)
        yield address, temp_dir
    finally:
        _stop_head(proc, temp_dir)
        survivors = _pids_under(temp_dir)
        if not survivors:
            shutil.rmtree(temp_dir, ignore_errors=True)
        assert not survivors, f"processes of the test's head survived: {survivors}"


def test_demo_runs_as_a_ray_job(head, tmp_path, monkeypatch):
    from ray.job_submission import JobStatus, JobSubmissionClient

    address, _ = head
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the client must match the head
    run_dir = tmp_path / "run"
    config = tmp_path / "demo.yaml"
    config.write_text(dump_config(load_config(None, [*TINY, *TINY_STAGES, f"run_dir={run_dir}"])))

    client = JobSubmissionClient(address)
    job = client.submit_job(
        entrypoint=f"warm-ray demo --config {config}",
        runtime_env={"working_dir": str(ROOT), "excludes": EXCLUDES,
                     "env_vars": {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                                  "OMP_NUM_THREADS": "1"}},
    )
    deadline = time.time() + TIMEOUT
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if time.time() > deadline:
            client.stop_job(job)
            pytest.fail(f"job still {status} after {TIMEOUT}s:\n{client.get_job_logs(job)[-4000:]}")
        time.sleep(2)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]

    # the WARM table and the study's claims, in the job's logs and on disk
    assert "WARM with M=2 members" in logs and "| WARM |" in logs
    # the seeds live under the member recipe the study chose (study/recipe_<name>/seed_<s>)
    study_results = json.loads((run_dir / "study" / "results.json").read_text())
    seed_dir = run_dir / study_results["seeds_dir"] / "seed_0"  # named relative to the run dir
    assert seed_dir.parent.name == f"recipe_{study_results['recipe']['chosen']}"
    assert "| WARM |" in (seed_dir / "warm" / "results.md").read_text()
    assert (seed_dir / "warm" / "warm_rm" / "config.json").exists()
    assert (run_dir / "prepare" / "prepare.json").exists()
    assert "OOD accuracy: WARM > ENS" in (run_dir / "study" / "claims.md").read_text()
    # every stage ran inside the job: prepare, then warm, Best-of-N, rl and warp through the study
    assert "=== warm-ray demo: prepare ===" in logs and "=== warm-ray demo: study" in logs
    # its last screen: what was built and what one seed cannot say
    assert "What the demo built" in logs and "One seed proves nothing" in logs
    for part in ("warm", "bon", "rl", "warp"):
        assert (seed_dir / part / "study_unit.json").exists(), part
    # online WARM inside the job: its member trainers and parameter server are the job's actors
    online = json.loads((seed_dir / "rl" / "warm_online_beta_0.02" / "online" / "versions.json").read_text())
    assert online["version"] == 2 and len(online["members"]) == 2
    # `warm-ray merge` of the seed's members is its WARM RM again (float32 rounding at most)
    from warm_ray.merge_dirs import largest_difference

    assert "`warm-ray merge` of the 2 members" in logs
    assert largest_difference(run_dir / "merge" / "model", seed_dir / "warm" / "warm_rm") < 1e-6
    # the code ran from the uploaded working_dir, not from this checkout
    info = client.get_job_info(job)
    assert info.runtime_env["working_dir"].startswith("gcs://")


def test_study_runs_as_a_ray_job_with_token_auth(token_head, tmp_path):
    """The documented command (docs/cluster.md): `ray job submit --working-dir . -- warm-ray study ...`
    against a head with token auth on; a client without the token is refused."""
    address, _, env = token_head
    run_dir = tmp_path / "run"
    config = tmp_path / "study.yaml"
    config.write_text(dump_config(load_config(None, [
        *TINY, *TINY_STAGES, f"run_dir={run_dir}", "study.seeds=[0, 1]", "study.parts=[rm]",
        "study.recipe=lr_high", "warm.lmc_points=2"])))
    ray_cli = str(Path(sys.executable).parent / "ray")
    submit = [ray_cli, "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
              "warm-ray", "study", "--config", str(config)]
    refused = subprocess.run(submit, env={**env, "RAY_AUTH_TOKEN": "not-the-token"}, capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
    assert refused.returncode != 0 and not run_dir.exists()
    done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    results = json.loads((run_dir / "study" / "results.json").read_text())
    # the job's driver joined the head (not a Ray of its own) and ran both seeds there at once
    assert "joining the Ray cluster" in done.stdout
    assert results["parallel"]["slots"] == 2
    assert {u["node"] for s in results["seeds"].values() for u in s["units"].values()} != {"driver"}
    assert "memorisation: WARM < ENS" in (run_dir / "study" / "claims.md").read_text()
