"""The supervisor of worker processes: spawn, hand out jobs, reap, replace, drain.

Each worker has its own pipe and holds at most PREFETCH jobs (the photo in hand and the next
one, so it never sits idle waiting for the master on a busy 2-core box), and the master always
knows which photo a worker holds: when a worker dies (SIGKILL, segfault, OOM killer) its photo is retried
and a replacement is started. A shared multiprocessing.Queue can't give that: a worker killed
while reading it leaves the queue's lock held and the whole pool hangs, which is exactly where
multiprocessing.Pool and ProcessPoolExecutor fall down.

Workers are spawned (fork+exec), never forked from the threaded master. Not a forkserver:
systemd sends SIGTERM to the whole cgroup, which kills a forkserver, and from then on every
worker's sentinel fires and its exit code reads 255 while it is still finishing its photo.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .worker import STOP_SIGNALS, worker_main

logger = logging.getLogger(__name__)

PREFETCH = 2

# A worker that dies this many times in a row before saying hello cannot boot: stop trying.
BOOT_FAILURE_LIMIT = 5


class PoolBroken(Exception):
    """Workers cannot start at all (bad install, memory cap too low): respawning would loop."""


@dataclass
class Job:
    id: int
    path: str
    size: int
    mtime_ns: int
    targets: tuple = ()  # the photo's thumbnails (paths.Target), worked out once
    attempts: int = 0
    queued_at: float = field(default_factory=time.monotonic)


@dataclass
class Worker:
    process: Any
    conn: Connection
    booted: bool = False
    jobs: deque = field(default_factory=deque)  # jobs[0] is in hand; the rest wait in its pipe
    started: float = 0.0  # when the photo in hand was started
    retiring: bool = False
    settings: Any = None  # the render settings this worker was last sent

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def job(self) -> Job | None:
        return self.jobs[0] if self.jobs else None


@dataclass
class Death:
    """A worker that exited without being asked to, and the jobs it held: the one in hand first."""

    pid: int
    exitcode: int | None
    jobs: list[Job]

    @property
    def job(self) -> Job | None:
        return self.jobs[0] if self.jobs else None


class WorkerPool:
    def __init__(self, count: int, memory_limit_mb: int):
        self.count = count
        self.memory_limit_mb = memory_limit_mb
        self.ctx = multiprocessing.get_context("spawn")
        # Set when draining: a worker then skips the jobs waiting in its pipe (they are found
        # again at the next start) and finishes only the photo in hand.
        self.draining_flag = self.ctx.Event()
        self.workers: list[Worker] = []
        self.boot_failures = 0
        self.draining = False

    def start(self) -> None:
        for _ in range(self.count):
            self.spawn_worker()

    def spawn_worker(self) -> Worker:
        parent, child = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(target=worker_main, args=(child, self.memory_limit_mb, self.draining_flag), name="thumbwatch-worker", daemon=False)
        # The child inherits a blocked mask, so a Ctrl-C or TERM arriving while it imports cannot
        # kill it; worker_main ignores both before unblocking. The master gets its signal on unblock.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        child.close()
        worker = Worker(process, parent)
        self.workers.append(worker)
        logger.debug("worker started pid=%s", worker.pid)
        return worker

    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def free_slots(self, depth: int = PREFETCH) -> list[Worker]:
        """Workers that can take a job now, emptiest first; each appears once per free slot."""
        usable = [w for w in self.workers if w.booted and not w.retiring and not self.draining]
        slots = []
        for level in range(depth):
            slots.extend(w for w in usable if len(w.jobs) <= level)
        return slots

    def busy(self) -> list[Worker]:
        return [w for w in self.workers if w.job is not None]

    def waitables(self) -> list[Any]:
        return [w.conn for w in self.workers] + [w.process.sentinel for w in self.workers]

    def assign(self, worker: Worker, job: Job, payload: tuple, settings: Any) -> None:
        """Send a job; the render settings go along only when they changed (a reload), not
        pickled with every photo."""
        if worker.settings is not settings:
            worker.conn.send(("settings", settings))
            worker.settings = settings
        if not worker.jobs:
            worker.started = time.monotonic()
        worker.jobs.append(job)
        worker.conn.send(payload)

    def collect(self, ready: list[Any]) -> tuple[list[tuple[Worker, tuple]], list[Death]]:
        """Messages from workers whose pipe is readable, and workers that died."""
        messages: list[tuple[Worker, tuple]] = []
        deaths: list[Death] = []
        ready_set = set(id(r) for r in ready)
        for worker in list(self.workers):
            if id(worker.conn) in ready_set or id(worker.process.sentinel) in ready_set:
                try:
                    while worker.conn.poll():
                        messages.append((worker, worker.conn.recv()))
                except (EOFError, OSError):
                    pass
            if id(worker.process.sentinel) in ready_set or not worker.process.is_alive():
                worker.process.join(0.5)
                if worker.process.exitcode is None:
                    continue
                deaths.extend(self._reaped(worker))
        return messages, deaths

    def _reaped(self, worker: Worker) -> list[Death]:
        self.workers.remove(worker)
        worker.conn.close()
        code = worker.process.exitcode
        if worker.retiring or self.draining:
            if code != 0:
                logger.warning("worker exited pid=%s code=%s while stopping", worker.pid, code)
            return [Death(worker.pid, code, list(worker.jobs))] if worker.jobs else []
        if not worker.booted:
            self.boot_failures += 1
            if self.boot_failures >= BOOT_FAILURE_LIMIT:
                raise PoolBroken(f"{self.boot_failures} workers in a row died before starting (last exit code {code})")
        return [Death(worker.pid, code, list(worker.jobs))]

    def booted(self, worker: Worker) -> None:
        worker.booted = True
        self.boot_failures = 0

    def finish(self, worker: Worker) -> Job | None:
        """The photo in hand is done; the worker has already started the next one, if any."""
        if not worker.jobs:
            return None
        job = worker.jobs.popleft()
        if worker.jobs:
            worker.started = time.monotonic()
        return job

    def replace_missing(self) -> int:
        """Start workers until the pool has `count` that are not retiring."""
        started = 0
        while not self.draining and sum(1 for w in self.workers if not w.retiring) < self.count:
            self.spawn_worker()
            started += 1
        return started

    def resize(self, count: int) -> None:
        """Grow now; shrink by poison-pilling idle workers first, then the busiest-longest."""
        self.count = count
        active = [w for w in self.workers if not w.retiring]
        surplus = len(active) - count
        for worker in sorted(active, key=lambda w: (w.job is not None, -w.started))[: max(0, surplus)]:
            self.retire(worker)
        self.replace_missing()

    def retire(self, worker: Worker) -> None:
        """A poison pill: the worker finishes the photo in hand (the pipe is ordered) and exits."""
        worker.retiring = True
        try:
            worker.conn.send(None)
        except OSError:
            pass

    def drain(self) -> None:
        self.draining = True
        self.draining_flag.set()
        for worker in self.workers:
            if not worker.retiring:
                self.retire(worker)

    def kill_worker(self, worker: Worker, sig: int = signal.SIGKILL) -> None:
        try:
            os.kill(worker.pid, sig)
        except ProcessLookupError:
            pass

    def remove(self, worker: Worker) -> list[Job]:
        """Forget a worker the master killed on purpose; returns the jobs that waited in its pipe."""
        worker.process.join(5)
        worker.conn.close()
        self.workers.remove(worker)
        return list(worker.jobs)

    def kill_all(self) -> list[Worker]:
        """Stop at once: SIGKILL every worker (they ignore SIGTERM) and reap them."""
        victims = list(self.workers)
        for worker in victims:
            self.kill_worker(worker)
        for worker in victims:
            worker.process.join(5)
            worker.conn.close()
        self.workers.clear()
        return victims
