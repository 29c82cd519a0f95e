"""One writer per run dir: a second `warm-ray` run on a dir in use exits 2 naming the holder, a
lock left by a dead process is taken over, and a stage inside a stage keeps the one lock."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from warm_ray.config import UserError
from warm_ray.lock import LOCK, RunDirLock
from warm_ray.testing import TINY, TINY_WARM

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _sets(items):
    return [a for item in items for a in ("--set", item)]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(timeout=60)
    return p.pid


def test_a_second_holder_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path, caplog):
    with RunDirLock(tmp_path, "warm-ray warm"):
        holder = json.loads((tmp_path / LOCK).read_text())
        assert holder["pid"] == os.getpid() and holder["command"] == "warm-ray warm"
        with RunDirLock(tmp_path, "nested"):  # re-entrant within one process
            pass
        assert (tmp_path / LOCK).exists()
        other = subprocess.run(
            [sys.executable, "-c", "import sys; from warm_ray.lock import RunDirLock; RunDirLock(sys.argv[1]).acquire()",
             str(tmp_path)], capture_output=True, text=True, timeout=120, env=ENV)
        assert other.returncode != 0 and f"pid {os.getpid()} on {socket.gethostname()}" in other.stderr
    assert not (tmp_path / LOCK).exists()

    (tmp_path / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "since": time.time(),
                                             "command": "warm-ray warm"}))
    with caplog.at_level("WARNING", logger="warm_ray.lock"), RunDirLock(tmp_path, "again"):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    assert "taking over the lock" in caplog.text and "is gone" in caplog.text


def test_a_live_lock_of_another_host_holds_until_its_lease_ends(tmp_path, monkeypatch):
    import warm_ray.lock as lock

    (tmp_path / LOCK).write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": time.time(), "command": "x"}))
    with pytest.raises(UserError, match="in use by another warm-ray run: pid 1 on elsewhere"):
        RunDirLock(tmp_path).acquire()
    old = time.time() - lock.LEASE_S - 5
    os.utime(tmp_path / LOCK, (old, old))
    with RunDirLock(tmp_path):
        assert json.loads((tmp_path / LOCK).read_text())["host"] == socket.gethostname()


def test_a_dangling_symlink_run_dir_is_one_line(tmp_path):
    (tmp_path / "run").symlink_to(tmp_path / "gone")
    with pytest.raises(UserError, match="is a symlink to .*gone, which does not exist"):
        RunDirLock(tmp_path / "run").acquire()


def test_two_warm_runs_on_one_dir(prepared, tmp_path):
    """Two real `warm-ray warm` processes on one run dir: the second (another config) exits 2 naming
    the first, which finishes; a rerun of the first's config reuses every unit it wrote."""
    run = tmp_path / "run"
    shutil.copytree(prepared[0].run_dir, run)
    base = [sys.executable, "-m", "warm_ray.cli", "warm", "--run-dir", str(run),
            *_sets([*TINY, *TINY_WARM, "warm.m=1", "warm.lmc_points=0"])]
    first = subprocess.Popen(base, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        deadline = time.time() + 120
        while not (run / LOCK).exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert (run / LOCK).exists(), "the first run never took the lock"
        second = subprocess.run([*base, "--set", "warm.dropouts=[0.3]"], capture_output=True, text=True,
                                timeout=120, env=ENV)
        out, _ = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert f"is in use by another warm-ray run: pid {first.pid}" in second.stderr
    assert first.returncode == 0, out[-3000:]
    assert not (run / LOCK).exists()
    again = subprocess.run(base, capture_output=True, text=True, timeout=600, env=ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reused (finished under this config" in again.stderr
    assert "recomputed" not in again.stderr
