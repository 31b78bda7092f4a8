"""The seam between the master and whatever renders: jobs go in, outcomes come out.

Above this line (admission, the supervisor) nothing knows about pipes, processes or brokers;
below it an executor — the local pool of worker processes, or render hosts behind a broker —
takes a Job whenever it has capacity and reports exactly one Outcome for every job it took.

The loop that drives an executor:

    executor.start()                       # blocks until it can render, or raises ExecutorBroken
    while running:
        ready = multiprocessing.connection.wait(executor.waitables() + [...], timeout)
        for outcome in executor.collect(ready, time.monotonic()):
            ...                            # ok, failed, lost, timed out: the master decides what next
        while executor.capacity() and (job := admission.next_job()):
            executor.submit(job, settings)
    executor.drain()                       # take nothing new; the photos in hand finish
    while not executor.finished(): ... collect ...
    executor.stop_now()                    # past the drain limit: outcomes for what it still held
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

from .paths import Target


class ExecutorBroken(Exception):
    """The executor cannot render at all (workers die before starting, no broker): retrying
    would loop, so the master stops with exit code 3."""


@dataclass(frozen=True)
class Job:
    """One photo to render, as the master saw it when it admitted it."""

    id: int
    path: str
    size: int
    mtime_ns: int
    targets: tuple[Target, ...]
    ino: int = 0
    attempts: int = 0  # how many times a worker died with this photo in hand


# ---- outcomes: exactly one per job an executor took -------------------------------------------


@dataclass(frozen=True)
class Outcome:
    job: Job


@dataclass(frozen=True)
class Rendered(Outcome):
    ms: float
    outputs: tuple[str, ...]  # the thumbnails written
    host: str = ""  # the render host, when it is not this one
    thumbnails: tuple[dict, ...] = ()  # treeevents.thumbnails(): size, path, pixels, bytes, format
    placeholder: dict | None = None  # {"kind": "thumbhash", "hash": ...} when output.placeholder asks


@dataclass(frozen=True)
class Failed(Outcome):
    """The photo cannot be thumbnailed, for a reason a person should read."""

    reason: str
    ms: float = 0.0
    host: str = ""


@dataclass(frozen=True)
class Vanished(Outcome):
    """Deleted or renamed before or while it was rendered: normal."""

    reason: str


@dataclass(frozen=True)
class OutputBlocked(Outcome):
    """The thumbnails could not be written (disk full, folder unwritable): hold and retry."""

    reason: str
    errno: int | None


@dataclass(frozen=True)
class Lost(Outcome):
    """The worker died with this photo in hand (SIGKILL, segfault, OOM): counts as an attempt."""

    worker: str  # "pid=901", or "host=render2 pid=77"
    how: str  # "killed by SIGKILL (out of memory? ...)"


@dataclass(frozen=True)
class Returned(Outcome):
    """Handed back without being started (it waited behind a photo whose worker died, or the
    pool was draining): no attempt counted."""


@dataclass(frozen=True)
class TimedOut(Outcome):
    """The executor stopped the photo's worker at limits.photo_timeout."""

    limit: float


@dataclass(frozen=True)
class Crashed(Outcome):
    """A bug in the render code: the traceback, for the log."""

    traceback: str


class Executor(Protocol):
    def start(self) -> None:
        """Start rendering capacity; return when it can take jobs. Raises ExecutorBroken."""

    def capacity(self) -> int:
        """How many more jobs it wants right now (0 while draining)."""

    def submit(self, job: Job, settings: Any) -> None:
        """Take a job; `settings` (render.RenderSettings) is the same object until a reload."""

    def waitables(self) -> list[Any]:
        """Things to wait on (connections, sentinels, fds) that become ready when collect()
        has something to report."""

    def collect(self, ready: list[Any], now: float) -> list[Outcome]:
        """Outcomes that arrived, and the executor's own housekeeping (reap, replace, enforce
        deadlines). Called after every wait, with whatever of waitables() was ready."""

    def next_deadline(self) -> float | None:
        """The monotonic time by which collect() must run again (a photo's time limit)."""

    def in_flight(self) -> int:
        """Jobs taken and not yet reported."""

    def in_hand(self) -> int:
        """Of those, the ones being rendered right now (not waiting in a prefetch slot)."""

    def resize(self, count: int) -> None:
        """A reload changed workers.count."""

    def set_limits(self, *, memory_mb: int, photo_timeout: float) -> None:
        """A reload changed the limits; they apply to photos started from now on."""

    def drain(self) -> None:
        """Take nothing new; every photo in hand finishes; work not started comes back as
        Returned."""

    def finished(self) -> bool:
        """Drained: nothing in hand and nothing left running."""

    def stop_now(self) -> list[Outcome]:
        """Past the drain limit or on a second signal: stop everything at once."""

    def describe(self) -> dict[str, Any]:
        """For the status file: {"workers": [...pids]}, render hosts, and the like."""

    def summary(self) -> str:
        """A short phrase for log and status lines: "2 workers", "render hosts r1, r2 via ..."."""


class WakePipe:
    """A non-blocking self-pipe: wake() from any thread (or a signal's wakeup fd), wait on `r`,
    drain() before looking at what woke us. Writes that find it full are dropped: it is awake."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wake(self) -> None:
        try:
            os.write(self.w, b"\0")
        except OSError:  # full (already awake), or closed at shutdown
            pass

    def drain(self) -> None:
        drain_pipe(self.r)

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.r = self.w = -1


def drain_pipe(fd: int) -> None:
    """Read a non-blocking wake-up pipe empty."""
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, OSError):
        pass
