"""One writer per run dir: the lock every `warm-ray` stage takes before it writes anything.

The lock is a small JSON file, ``<run_dir>/.warm-ray.lock``, naming its holder (host, PID,
command, since when). It is created with ``os.link`` of a finished temporary file, so a second
process either sees no lock or a whole one, never a half-written one. A second run on the same
dir stops with one line naming the holder. A lock whose holder is gone is taken over, with a log
line: on the same host when its PID no longer runs (or runs another program than the one that
took it), and on a shared filesystem when its holder stopped renewing it for ``LEASE_S`` seconds
(a holder touches the file every ``RENEW_S`` seconds).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from warm_ray.config import UserError

__all__ = ["LOCK", "LEASE_S", "RunDirLock", "held_run_dirs", "holder_line"]

log = logging.getLogger("warm_ray.lock")

LOCK = ".warm-ray.lock"
RENEW_S = 30.0  # the holder touches its lock this often
LEASE_S = 300.0  # a lock of another host not touched for this long is taken over


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux: field 22 of /proc/PID/stat), to tell a reused PID
    from the process that took the lock; None where the platform does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs, under another user
        return True
    return True


def held_run_dirs() -> list[Path]:
    """The run dirs this process holds (absolute, as given: a run dir may itself be a symlink)."""
    return [lock.parent for lock in RunDirLock._held]


def holder_line(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {since} "
            f"(command: {holder.get('command') or '?'})")


class RunDirLock:
    """``with RunDirLock(run_dir, command):`` holds ``run_dir`` for this process; re-entrant in
    one process (a stage that calls another stage's entry point keeps the one lock)."""

    _held: dict[Path, int] = {}  # lock path -> depth, in this process

    def __init__(self, run_dir: str | Path, command: str = ""):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.command = command
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _mine(self) -> dict:
        pid = os.getpid()
        return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid),
                "command": self.command, "since": time.time()}

    def _stale(self, holder: dict) -> str | None:
        """Why the lock of ``holder`` no longer holds, or None while it does."""
        if holder.get("host") == socket.gethostname():
            pid = holder.get("pid")
            if not isinstance(pid, int) or not _alive(pid):
                return f"its process {pid} is gone"
            if holder.get("start") is not None and _start_time(pid) not in (None, holder["start"]):
                return f"its PID {pid} now belongs to another process"
            return None
        try:
            idle = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return "it was released"
        return f"not renewed for {idle:.0f}s (lease {LEASE_S:.0f}s)" if idle > LEASE_S else None

    def _create(self) -> bool:
        tmp = self.run_dir / f"{LOCK}.{os.getpid()}.tmp"
        try:
            tmp.write_text(json.dumps(self._mine()))
        except OSError as e:  # a full or read-only disk: name the run dir, not our temporary file
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise OSError(e.errno, e.strerror, str(self.run_dir)) from e
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self) -> None:
        key = self.path.absolute()
        if key in self._held:
            self._held[key] += 1
            return
        if self.run_dir.is_symlink() and not self.run_dir.exists():
            raise UserError(f"run dir {self.run_dir} is a symlink to {os.readlink(self.run_dir)}, which does "
                            "not exist; remove the link or create its target")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                self._held[key] = 1
                self._renewer = threading.Thread(target=self._renew, name="warm-ray-lock", daemon=True)
                self._renewer.start()
                return
            try:
                holder = json.loads(self.path.read_text())
            except FileNotFoundError:
                continue  # released between our try and our read
            except (OSError, ValueError):
                holder = {}
            why = self._stale(holder) if holder else "it is unreadable"
            if why is None:
                raise UserError(f"run dir {self.run_dir} is in use by another warm-ray run: {holder_line(holder)}; "
                                "wait for it to finish, stop it, or give another --run-dir")
            log.warning("run dir %s: taking over the lock of %s: %s", self.run_dir,
                        holder_line(holder) if holder else "an unknown holder", why)
            self.path.unlink(missing_ok=True)
        raise UserError(f"run dir {self.run_dir}: could not take its lock {self.path} (other runs keep taking it)")

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        key = self.path.absolute()
        depth = self._held.get(key, 0)
        if depth > 1:
            self._held[key] = depth - 1
            return
        self._held.pop(key, None)
        self._stop.set()
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
