"""One process per run directory: a lock file held by the job's rank-0 process.

The lock is created with ``O_CREAT | O_EXCL``, which is atomic on local disks and on NFSv3+/Lustre/GPFS
(``flock``/``fcntl`` locks are not reliable there). It records the holder (host, pid, start time, a random
token, the SLURM job id); a thread touches it every ``heartbeat_s`` seconds. A second launch stops at once
naming the holder.
A lock is stale, and taken over, when its process is gone (same host, dead pid) or its heartbeat is older
than ``stale_after_s`` (a job killed on another node), or it was left by the same SLURM job before a
requeue. Takeover re-reads the lock just before removing it,
so only a lock that is still the stale one is removed.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path

LOCK_FILE = "LOCK"


class RunLocked(RuntimeError):
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True   # someone else's process
    return True


def slurm_job() -> str | None:
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    return os.environ.get("SLURM_JOB_ID")


def describe(info: dict, age: float | None = None) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("start", 0)))
    beat = f", heartbeat {age:.0f} s ago" if age is not None else ""
    job = f", SLURM job {info['job']}" if info.get("job") else ""
    return f"host {info.get('host')}, pid {info.get('pid')}{job}, started {started}{beat}"


class RunLock:
    def __init__(self, run_dir: Path, heartbeat_s: float = 30.0, stale_after_s: float = 600.0):
        if not heartbeat_s > 0 or not stale_after_s > heartbeat_s:
            raise ValueError(f"lock.heartbeat_s={heartbeat_s} must be > 0 and lock.stale_after_s={stale_after_s} "
                             "larger than it")
        self.path = Path(run_dir) / LOCK_FILE
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "start": time.time(),
                     "job": slurm_job(), "token": secrets.token_hex(8)}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _read(self) -> tuple[dict | None, float | None]:
        age = None
        try:
            age = time.time() - self.path.stat().st_mtime
            return json.loads(self.path.read_text() or "{}"), age
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError):
            return {}, age   # being written right now (or garbage): judged by its heartbeat alone

    def _stale(self, info: dict, age: float | None) -> str | None:
        if info.get("job") and info.get("job") == self.info["job"]:
            return f"it was left by this SLURM job ({info['job']}) before it was requeued"
        if info.get("host") == self.info["host"] and isinstance(info.get("pid"), int):
            if info["pid"] == self.info["pid"]:   # a requeued job in a fresh pid namespace can get the same pid
                return "it was left by an earlier process with this pid"
            if not _alive(info["pid"]):
                return "its process is gone"
        if age is not None and age > self.stale_after_s:
            return f"its heartbeat is {age:.0f} s old (lock.stale_after_s={self.stale_after_s:g})"
        return None

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.info))
            f.flush()
            os.fsync(f.fileno())
        return True

    def acquire(self) -> None:
        for _ in range(3):
            if self._create():
                break
            info, age = self._read()
            if info is None:
                continue   # released meanwhile: try again
            why = self._stale(info, age)
            if why is None:
                raise RunLocked(f"{self.path.parent} is in use by another run ({describe(info, age)}); it holds "
                                f"{self.path}. Wait for it to finish, or remove {self.path} if you are sure it "
                                "is dead.")
            again, _ = self._read()
            if again == info:   # still the same stale holder: take over
                print(f"[vqformer] taking over the stale lock {self.path} ({describe(info, age)}): {why}")
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
        else:
            raise RunLocked(f"could not create {self.path}: other launches keep taking it")
        self._thread = threading.Thread(target=self._beat, name="vqformer-run-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            info, _ = self._read()
            if info is not None and info.get("token") != self.info["token"]:
                self.lost = True   # taken over (this process looked dead): stop touching it
                print(f"[vqformer] WARNING: lost the run lock {self.path} to {describe(info)}")
                return
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        info, _ = self._read()
        if info is not None and info.get("token") == self.info["token"]:
            self.path.unlink()

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
