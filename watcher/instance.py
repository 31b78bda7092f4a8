"""One daemon per state folder: an flock on `<state>/thumbwatch.lock`, held for the process's
whole life, whatever the mode (foreground, systemd, --daemon, scan).

The lock is what says a daemon runs: the file holds the holder's pid, and a file nobody holds a
lock on is left over from a daemon that died (the kernel drops an flock with its last open
descriptor), so neither a stale pid nor a reused one can fool `status`, `stop` or `retry`.
The descriptor is O_CLOEXEC: worker processes (spawned, so exec'd) never hold the lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK = "thumbwatch.lock"
# A reader (`status`) probes with a shared lock for a moment; a starting daemon waits this long
# for such a probe to end before it calls the lock taken.
PROBE_GRACE = 0.5


class AlreadyRunning(Exception):
    def __init__(self, pid: int | None, lock: Path):
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"already running as {who} on this state folder (lock {lock} is held); "
                         f"stop it first (`thumbwatch stop`), or give this config its own state.dir")
        self.pid = pid


class Instance:
    """The held lock. write_pid() again after forking into the background."""

    def __init__(self, fd: int, path: Path):
        self.fd = fd
        self.path = path

    def write_pid(self) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # the lock goes with it; the file stays (unlinking would race a starter)
            self.fd = -1


def acquire(state_dir: Path) -> Instance:
    """Take the state folder's lock for this process, or raise AlreadyRunning naming the holder.
    OSError when the state folder cannot be made or the lock file opened."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    deadline = time.monotonic() + PROBE_GRACE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                pid = _read_pid(fd)
                os.close(fd)
                raise AlreadyRunning(pid, path) from None
            time.sleep(0.02)
    instance = Instance(fd, path)
    instance.write_pid()
    return instance


def running_pid(state_dir: Path) -> int | None:
    """The pid of the daemon holding the state folder's lock, or None when none does."""
    try:
        fd = os.open(state_dir / LOCK, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None  # no lock file (never ran here) or not ours to read
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            deadline = time.monotonic() + 2.0
            pid = _read_pid(fd)
            while pid is None and time.monotonic() < deadline:  # the holder is writing its pid
                time.sleep(0.02)
                pid = _read_pid(fd)
            return pid
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 1 << 22 else None


def stop(pid: int, timeout: float, still_held: Callable[[], int | None]) -> bool:
    """SIGTERM `pid` and wait until it has exited and `still_held()` (its lock) says so too.
    False when it is still running after `timeout` seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    return wait_gone(pid, timeout, still_held)


def wait_gone(pid: int, timeout: float, still_held: Callable[[], int | None]) -> bool:
    """Wait until `pid` has exited and `still_held()` says its lock is gone too (after a stop
    asked for on the control socket, or SIGTERM). False when still running after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if still_held() != pid and not alive(pid):
            return True
        time.sleep(0.1)
    return False


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
