"""The local executor: a fixed pool of worker processes, one pipe each.

Each worker holds at most PREFETCH jobs (the photo in hand and, behind a small one, the next,
so it never sits idle waiting for the master on a busy 2-core box), and the pool always knows
which photo a worker holds: when a worker dies (SIGKILL, segfault, OOM killer) its photo comes back as Lost and
a replacement is started. A shared multiprocessing.Queue can't give that: a worker killed while
reading it leaves the queue's lock held and the whole pool hangs, which is exactly where
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
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from ... import logsetup
from . import messages as msg
from ...executor import ExecutorBroken, Job, Lost, Outcome, Returned, TimedOut
from ..results import describe_exit, to_outcome
from ...paths import temp_path_for
from .worker import STOP_SIGNALS, worker_main

logger = logging.getLogger(__name__)

PREFETCH = 2
# ...but only behind a small photo. Behind a big one the master's round trip is lost in the
# render time, and a photo dropped by a person would wait for two renders instead of one.
PREFETCH_BELOW_BYTES = 1 << 20

# A worker that dies this many times in a row before saying hello cannot boot: stop trying.
BOOT_FAILURE_LIMIT = 5
BOOT_TIMEOUT = 60.0


@dataclass
class Worker:
    process: Any
    conn: Connection
    booted: bool = False
    jobs: deque[Job] = field(default_factory=deque)  # jobs[0] is in hand; the rest wait in its pipe
    started: float = 0.0  # when the photo in hand was started
    retiring: bool = False
    settings: Any = None  # the render settings this worker was last sent

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def job(self) -> Job | None:
        return self.jobs[0] if self.jobs else None


# What runs in each worker process: (its end of the pipe, limits.worker_memory_mb, the pool's
# draining Event). It says messages.Hello once ready, answers every RenderPhoto with one result
# message, and returns on messages.Stop or when the pipe closes.
WorkerMain = Callable[[Connection, int, Any], None]


class LocalPool:
    """The Executor (see executor.py) made of local worker processes.

    `worker` is the function each process runs (a module-level function, as spawn pickles it by
    name): worker.worker_main renders; the pool's tests give it small ones that speak the same
    messages, to drive prefetch, deadlines, deaths and drains in milliseconds."""

    def __init__(self, count: int, *, memory_mb: int, photo_timeout: float, worker: WorkerMain = worker_main):
        self.count = count
        self.worker = worker
        self.memory_mb = memory_mb
        self.photo_timeout = photo_timeout
        self.ctx = multiprocessing.get_context("spawn")
        # Set when draining: a worker then skips the jobs waiting in its pipe (they are found
        # again at the next start) and finishes only the photo in hand.
        self.draining_flag = self.ctx.Event()
        self.workers: list[Worker] = []
        self.boot_failures = 0
        self.draining = False
        self.notes: set[str] = set()  # said once, not by every worker

    # ---- start ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers and wait until every one has said hello: ready means rendering."""
        for _ in range(self.count):
            self.spawn_worker()
        deadline = time.monotonic() + BOOT_TIMEOUT
        while any(not w.booted for w in self.workers) and time.monotonic() < deadline:
            ready = wait(self.waitables(), 0.5)
            for outcome in self.collect(ready, time.monotonic()):
                logger.error("unexpected %s while starting", type(outcome).__name__)

    def spawn_worker(self) -> Worker:
        parent, child = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(target=self.worker, args=(child, self.memory_mb, self.draining_flag), name="thumbwatch-worker", daemon=False)
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

    # ---- jobs ----------------------------------------------------------------------------

    def _usable(self) -> list[Worker]:
        return [w for w in self.workers if w.booted and not w.retiring and not self.draining]

    @staticmethod
    def _has_room(worker: Worker) -> bool:
        return not worker.jobs or (len(worker.jobs) < PREFETCH and worker.jobs[-1].size < PREFETCH_BELOW_BYTES)

    def capacity(self) -> int:
        """Workers that can take one more photo now (asked again after every submit)."""
        return sum(1 for w in self._usable() if self._has_room(w))

    def submit(self, job: Job, settings: Any) -> None:
        """To the emptiest worker with room. The render settings go along only when they
        changed (a reload), not pickled with every photo."""
        worker = min((w for w in self._usable() if self._has_room(w)), key=lambda w: len(w.jobs))
        if worker.settings is not settings:
            worker.conn.send(msg.UseSettings(settings))
            worker.settings = settings
        if not worker.jobs:
            worker.started = time.monotonic()
        worker.jobs.append(job)
        worker.conn.send(msg.RenderPhoto(job.id, job.path, job.targets))

    def in_flight(self) -> int:
        return sum(len(w.jobs) for w in self.workers)

    def in_hand(self) -> int:
        return sum(1 for w in self.workers if w.jobs)

    def next_deadline(self) -> float | None:
        starts = [w.started for w in self.workers if w.jobs]
        return min(starts) + self.photo_timeout if starts else None

    def waitables(self) -> list[Any]:
        return [w.conn for w in self.workers] + [w.process.sentinel for w in self.workers]

    # ---- what came back ------------------------------------------------------------------

    def collect(self, ready: list[Any], now: float) -> list[Outcome]:
        """Messages from workers whose pipe is readable, workers that died, photos over their
        time limit; then replacements for the workers that are gone."""
        outcomes: list[Outcome] = []
        ready_ids = {id(r) for r in ready}
        for worker in list(self.workers):
            if id(worker.conn) in ready_ids or id(worker.process.sentinel) in ready_ids:
                try:
                    while worker.conn.poll():
                        outcome = self._on_message(worker, worker.conn.recv())
                        if outcome is not None:
                            outcomes.append(outcome)
                except (EOFError, OSError):
                    pass
            if id(worker.process.sentinel) in ready_ids or not worker.process.is_alive():
                worker.process.join(0.5)
                if worker.process.exitcode is not None:
                    outcomes.extend(self._reaped(worker))
        outcomes.extend(self._check_deadlines(now))
        self.replace_missing()
        return outcomes

    def _on_message(self, worker: Worker, message: Any) -> Outcome | None:
        match message:
            case msg.Hello(note=note):
                worker.booted = True
                self.boot_failures = 0
                if note and note not in self.notes:
                    self.notes.add(note)
                    logger.warning("%s", note)
                return None
            case msg.LogRecord(record=record):
                logsetup.handle_forwarded(record)
                return None
        job = self._finish(worker)
        if job is None or getattr(message, "job_id", None) != job.id:
            logger.error("worker pid=%s sent %r for a job it does not hold", worker.pid, message)
            return None
        match message:
            case msg.Finished(result=result):
                return to_outcome(job, result)
            case msg.NotStarted():
                return Returned(job)
        logger.error("worker pid=%s sent a message the master does not know: %r", worker.pid, message)
        return Returned(job)

    def _finish(self, worker: Worker) -> Job | None:
        """The photo in hand is done; the worker has already started the next one, if any."""
        if not worker.jobs:
            return None
        job = worker.jobs.popleft()
        if worker.jobs:
            worker.started = time.monotonic()
        return job

    def _reaped(self, worker: Worker) -> list[Outcome]:
        self.workers.remove(worker)
        worker.conn.close()
        code = worker.process.exitcode
        how = describe_exit(code)
        held = list(worker.jobs)
        self._remove_temps(worker)
        if worker.retiring or self.draining:
            if code != 0:
                logger.warning("worker exited pid=%s %s while stopping", worker.pid, how)
            return [Returned(job) for job in held]
        if not worker.booted:
            self.boot_failures += 1
            logger.error("worker exited pid=%s %s while starting", worker.pid, how)
            if self.boot_failures >= BOOT_FAILURE_LIMIT:
                raise ExecutorBroken(f"{self.boot_failures} workers in a row died before starting (last: {how})")
            return [Returned(job) for job in held]
        if not held:
            logger.error("worker exited pid=%s %s, restarting it", worker.pid, how)
            return []
        return [Lost(held[0], f"pid={worker.pid}", how)] + [Returned(job) for job in held[1:]]

    def _check_deadlines(self, now: float) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for worker in list(self.workers):
            if worker.jobs and not self.draining and now - worker.started > self.photo_timeout:
                job = worker.jobs.popleft()
                self.kill_worker(worker)
                worker.process.join(5)
                worker.conn.close()
                self.workers.remove(worker)
                self._remove_temps(worker, job)
                logger.info("killed worker pid=%s for its photo's time limit; starting a new one", worker.pid)
                outcomes.append(TimedOut(job, self.photo_timeout))
                outcomes.extend(Returned(waiting) for waiting in worker.jobs)
        return outcomes

    def _remove_temps(self, worker: Worker, job: Job | None = None) -> None:
        """A killed worker may leave a temp output behind: it is ours by name, remove it."""
        job = job or worker.job
        if job is None:
            return
        for target in job.targets:
            try:
                os.unlink(temp_path_for(target.path, worker.pid))
            except OSError:
                pass

    # ---- size and stop -------------------------------------------------------------------

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

    def set_limits(self, *, memory_mb: int, photo_timeout: float) -> None:
        self.memory_mb = memory_mb  # for workers started from now on
        self.photo_timeout = photo_timeout

    def retire(self, worker: Worker) -> None:
        """A poison pill: the worker finishes the photo in hand (the pipe is ordered) and exits."""
        worker.retiring = True
        try:
            worker.conn.send(msg.STOP)
        except OSError:
            pass

    def drain(self) -> None:
        self.draining = True
        self.draining_flag.set()
        for worker in self.workers:
            if not worker.retiring:
                self.retire(worker)

    def finished(self) -> bool:
        return not self.workers

    def kill_worker(self, worker: Worker, sig: int = signal.SIGKILL) -> None:
        try:
            os.kill(worker.pid, sig)
        except ProcessLookupError:
            pass

    def stop_now(self) -> list[Outcome]:
        """SIGKILL every worker (they ignore SIGTERM), reap them, and hand back what they held."""
        victims = list(self.workers)
        for worker in victims:
            self.kill_worker(worker)
        outcomes: list[Outcome] = []
        for worker in victims:
            worker.process.join(5)
            worker.conn.close()
            self._remove_temps(worker)
            outcomes.extend(Returned(job) for job in worker.jobs)
        self.workers.clear()
        return outcomes

    def describe(self) -> dict[str, Any]:
        return {"workers": [w.pid for w in self.workers]}

    def summary(self) -> str:
        return f"{self.count} worker{'s' if self.count != 1 else ''}"
