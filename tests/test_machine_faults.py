"""Faults of the machine and of the run dir, as a user meets them: real `warm-ray` processes.

A full disk, a read-only file system, an unreachable Ray, SIGTERM, a symlink inside a run dir
and a run dir given literally: each ends in one line (or, for SIGTERM, a "terminated" line and
exit 143) with nothing half-written, and the rerun once the cause is gone goes on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from warm_ray import rundir
from warm_ray.config import UserError
from warm_ray.lock import LOCK, RunDirLock
from warm_ray.testing import TINY, TINY_WARM

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _sets(items):
    return [a for s in items for a in ("--set", s)]


def _cli(*args, cwd=None, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "warm_ray.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**ENV, **(env or {})}, cwd=cwd)


# TINY with a third of its base-LM steps, for the tests that run `prepare` themselves: its first
# checkpoint (the write that meets a full disk) comes at step 20 instead of 80
SHORT_PREPARE = [*TINY, "prepare.lm_steps=40", "prepare.checkpoint_steps=[20, 30, 40]"]


def _prepared_copy(prepared, run: Path) -> Path:
    """A run dir holding a copy of the shared prepared run's `prepare` stage only (tests that use
    the session's `warm_trained` add a finished warm stage, checkpoints and all, to that run dir)."""
    run.mkdir()
    shutil.copytree(Path(prepared[0].run_dir) / "prepare", run / "prepare", symlinks=True)
    return run


def _one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[-1]


# ------------------------------------------------------------------------------------------
# Symlinks inside a run dir
# ------------------------------------------------------------------------------------------


def test_a_symlinked_unit_dir_is_refused_and_its_target_untouched(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    (outside / "member_0").mkdir(parents=True)
    (outside / "member_0" / "precious.txt").write_text("keep me")
    rundir.finish(outside / "member_0", "another-config", {})
    (run / "warm" / "members").mkdir(parents=True)
    (run / "warm" / "members" / "member_0").symlink_to(outside / "member_0")
    # a parent of the unit inside the run dir that is a link is refused as well
    (run / "linked").symlink_to(outside)
    with RunDirLock(run):
        with pytest.raises(UserError, match=r"member_0 is a symlink .* never through a link"):
            rundir.open_unit(run / "warm" / "members" / "member_0", "this-config", "member 0", resume=False)
        with pytest.raises(UserError, match=r"linked is a symlink"):
            rundir.start(run / "linked" / "member_0", "this-config", "member 0", resume=False)
    assert (outside / "member_0" / "precious.txt").read_text() == "keep me"
    assert json.loads((outside / "member_0" / rundir.MARKER).read_text())["fingerprint"] == "another-config"
    # a run dir that is itself a link (runs kept on another disk) is fine
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with RunDirLock(tmp_path / "alias"):
        assert rundir.start(tmp_path / "alias" / "unit", "fp", "unit", resume=False) is False
    assert (tmp_path / "real" / "unit" / rundir.STARTED).exists()


# ------------------------------------------------------------------------------------------
# --run-dir taken literally
# ------------------------------------------------------------------------------------------


def test_run_dir_is_taken_literally(tmp_path):
    empty = _cli("prepare", "--run-dir", "", cwd=tmp_path)
    assert "--run-dir: an empty path" in _one_line(empty)
    done = _cli("prepare", "--run-dir", "exp #3", *_sets(SHORT_PREPARE), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "exp #3" / "prepare" / "prepare.json").exists()
    assert not (tmp_path / "exp").exists() and not (tmp_path / "runs").exists()
    assert not (tmp_path / "exp #3" / LOCK).exists()  # released at the end


# ------------------------------------------------------------------------------------------
# Disk full and read-only, on a small tmpfs (needs root, as CI has)
# ------------------------------------------------------------------------------------------


def _mount(where: Path, *options: str) -> bool:
    return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def _remount(where: Path, *options: str) -> None:
    subprocess.run(["mount", "-o", ",".join(["remount", *options]), str(where)], check=True)


def _all_weights_load(root: Path) -> None:
    for f in root.rglob("*.safetensors"):
        load_file(str(f))  # a half-written file would not load


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_disk_full_then_read_only_then_space(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount(disk, "size=1m"):
        pytest.skip("this machine does not allow mounting a tmpfs")
    config = _sets(SHORT_PREPARE)
    try:
        run = disk / "run"
        full = _cli("prepare", "--run-dir", str(run), *config)
        assert "no space left on the device" in _one_line(full)
        assert not (run / "prepare" / rundir.MARKER).exists()  # not recorded as finished
        _all_weights_load(run)
        assert not (run / LOCK).exists()

        _remount(disk, "ro")
        ro = _cli("prepare", "--run-dir", str(run), *config)
        assert "read-only file system" in _one_line(ro)

        _remount(disk, "rw", "size=64m")
        again = _cli("prepare", "--run-dir", str(run), *config)
        assert again.returncode == 0, again.stderr[-3000:]
        assert (run / "prepare" / "prepare.json").exists()
        _all_weights_load(run)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# ------------------------------------------------------------------------------------------
# An unreachable Ray
# ------------------------------------------------------------------------------------------


def test_an_unreachable_ray_is_one_line_after_a_bounded_wait(prepared, tmp_path, monkeypatch):
    from actors.placement import PROBE_ENV, PROBE_S, probe, probe_seconds

    monkeypatch.delenv(PROBE_ENV, raising=False)
    assert probe_seconds() == PROBE_S == 10.0  # the wait a user gets
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"cannot reach the Ray cluster at ray://127.0.0.1:1"):
        probe("ray://127.0.0.1:1", timeout=1.0)
    assert time.monotonic() - t0 < 30
    with pytest.raises(UserError, match=r"not host:port"):
        probe("127.0.0.1:port")
    run = _prepared_copy(prepared, tmp_path / "run")
    # the command's wait, shortened from PROBE_S through the environment
    p = _cli("warm", "--run-dir", str(run), "--address", "127.0.0.1:1", *_sets([*TINY, *TINY_WARM]), timeout=300,
             env={PROBE_ENV: "1"})
    line = _one_line(p)
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in line and "(tried for 1s)" in line, line


# ------------------------------------------------------------------------------------------
# SIGTERM, then --resume
# ------------------------------------------------------------------------------------------


def _member_weights(run: Path) -> dict:
    return load_file(str(run / "warm" / "members" / "member_0" / "final" / "model.safetensors"))


def test_sigterm_then_resume_gives_the_unbroken_run(prepared, tmp_path):
    """SIGTERM mid-training: a "terminated" line and exit 143, the lock released; `--resume`
    continues from the member's checkpoint and ends with the weights of an unbroken run."""
    # 75 steps, so that the signal lands mid-training on a slow or busy machine too
    config = [*TINY, *TINY_WARM, "warm.m=1", "warm.lmc_points=0", "warm.epochs=5"]
    broken, unbroken = _prepared_copy(prepared, tmp_path / "broken"), _prepared_copy(prepared, tmp_path / "unbroken")

    logs = []

    def warm(run: Path, name: str) -> subprocess.Popen:
        logs.append(open(tmp_path / f"{name}.log", "w"))
        cmd = [sys.executable, "-m", "warm_ray.cli", "warm", "--run-dir", str(run), *_sets(config)]
        return subprocess.Popen(cmd, stdout=logs[-1], stderr=subprocess.STDOUT, text=True, env=ENV)

    # the unbroken run, in its own run dir and its own local Ray, alongside the broken one and its
    # resume (a busier machine only makes the signal land mid-training more surely)
    whole = warm(unbroken, "unbroken")
    first = warm(broken, "broken")
    try:
        ckpt = broken / "warm" / "members" / "member_0" / "ckpt"
        deadline = time.time() + 300
        while not ckpt.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert ckpt.exists() and first.poll() is None, (tmp_path / "broken.log").read_text()[-3000:]
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 143, (tmp_path / "broken.log").read_text()[-3000:]
        out = (tmp_path / "broken.log").read_text()
        assert "terminated (SIGTERM)" in out and "Traceback" not in out, out[-3000:]
        assert not (broken / LOCK).exists()
        assert not (broken / "warm" / "members" / "member_0" / rundir.MARKER).exists()

        resumed = _cli("warm", "--run-dir", str(broken), "--resume", *_sets(config))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "continued (stopped under this config, --resume)" in resumed.stderr
        assert "resumed from its checkpoint at step" in resumed.stderr
        assert whole.wait(timeout=600) == 0, (tmp_path / "unbroken.log").read_text()[-3000:]
    finally:
        for proc in (first, whole):
            if proc.poll() is None:  # a failed check above: SIGTERM shuts its local Ray down as well
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for f in logs:
            f.close()
    a, b = _member_weights(broken), _member_weights(unbroken)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k
