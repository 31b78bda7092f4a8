"""Classic daemon mode (`run --daemon --pidfile`) with python-daemon's DaemonContext. Never under systemd.

The pidfile is exclusive through an flock held for the daemon's whole life: taken *before*
detaching, so a second instance is refused on the terminal with the running pid named, and
inherited across the double fork. A pidfile nobody holds a lock on is stale (the daemon was
killed) and is simply taken over; a reused pid cannot fool the check.

Order matters: detach() must be entered before log files, inotify handles, threads or worker
processes exist, since DaemonContext closes every descriptor it is not told to keep. The control
socket (control.py) is opened by the service after detaching, so it needs no files_preserve.
"""

from __future__ import annotations

import fcntl
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import daemon

from . import instance

EARLY_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class AlreadyRunning(Exception):
    pass


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def running_pid(pidfile: Path) -> int | None:
    """The pid of the daemon holding this pidfile, or None if absent or stale."""
    try:
        fd = os.open(pidfile, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_pid(pidfile)
    finally:
        os.close(fd)
    return None


def _lock(pidfile: Path) -> int:
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(pidfile, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = read_pid(pidfile)
        raise AlreadyRunning(f"already running as pid {pid} (pidfile {pidfile} is locked)") from None
    return fd


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    os.fsync(fd)


@contextmanager
def detach(*, pidfile: Path, preserve: tuple[int, ...] = ()) -> Iterator[list[int]]:
    """Double-fork into the background holding `pidfile`. Yields the list that SIGTERM, SIGINT and
    SIGHUP arriving before the service installs its own handlers are recorded in."""
    fd = _lock(pidfile)
    early: list[int] = []
    context = daemon.DaemonContext(
        umask=0o027,
        working_directory="/",
        detach_process=True,
        files_preserve=[fd, *preserve],
        signal_map={sig: lambda signum, _frame: early.append(signum) for sig in EARLY_SIGNALS},
    )
    with context:
        _write_pid(fd)
        try:
            yield early
        finally:
            if read_pid(pidfile) == os.getpid():
                try:
                    pidfile.unlink()
                except OSError:
                    pass
            os.close(fd)


def stop(pidfile: Path, timeout: float) -> int:
    """SIGTERM the daemon holding `pidfile` and wait for it to exit.
    Returns 0 when it stopped or was not running, 1 when it is still running after `timeout`."""
    pid = running_pid(pidfile)
    if pid is None:
        print(f"thumbwatch is not running (no live daemon holds {pidfile})")
        return 0
    if instance.stop(pid, timeout, lambda: running_pid(pidfile)):
        print(f"stopped thumbwatch (pid {pid})")
        return 0
    print(f"thumbwatch (pid {pid}) did not stop within {timeout:g} s")
    return 1

