"""The master's publishing: which photos it waits for (Ledger), and how it claims and sends them
(Batcher) through a TaskSender — Celery's producer, or a test's fake.

A photo version's identity (wire.photo_key) is its key; the master publishes it only if
`SET tw:<queue>:job:<key> NX` succeeds, so a second master, a rescan or a reload joins the photo
already queued instead of queueing it again. A key already holding our own token is a claim
whose message never left (the broker went away in between): ours to send.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from typing import Any, Callable, Iterator, Protocol

from ...config import Config
from ...executor import Job
from ...paths import shown
from . import wire

logger = logging.getLogger(__name__)

FLUSH_TASKS = 32  # a catch-up publishes this many full tasks per round trip of claims
PIPELINE_MAX = 100_000  # Redis commands a batched session buffers: all of a flush's tasks go at its end

Send = Callable[[str, tuple, float | None, int], None]  # task id, args, time limit, photos


class TaskSender(Protocol):
    def session(self) -> Any:
        """A context manager giving a Send: one broker connection for a flush's tasks."""


class CelerySender:
    """Tasks sent with Celery's producer (one connection per flush)."""

    def __init__(self, app: Any, queue: str):
        self.app = app
        self.queue = queue

    @contextmanager
    def session(self) -> Iterator[Send]:
        """kombu >= 5.7's Producer.batch sends a flush's tasks in one Redis pipeline (at the end
        of the session) instead of one round trip each; older kombu sends them one by one."""
        with self.app.producer_or_acquire() as producer:
            def send(task_id: str, args: tuple, time_limit: float | None, count: int) -> None:
                self.app.send_task(
                    wire.TASK, args=args, task_id=task_id, queue=self.queue, retry=False, time_limit=time_limit, producer=producer,
                    argsrepr=f"{count} photo(s)", kwargsrepr="",  # Celery's default repr of the args costs more than the send
                )

            batch = getattr(producer, "batch", None)
            with batch(max_size=PIPELINE_MAX) if batch is not None else nullcontext():
                yield send


class Ledger:
    """The photos the master waits for: published (or joined to one already queued) and not yet
    reported, by job key; and the tasks still carrying some of them."""

    def __init__(self) -> None:
        self.waiting: dict[str, list[Job]] = {}  # key -> jobs published or joined, no outcome yet
        self.task_keys: dict[str, set[str]] = {}  # task id -> keys it carries that are unreported
        self.key_task: dict[str, str] = {}

    def jobs(self) -> int:
        return sum(len(jobs) for jobs in self.waiting.values())

    def tasks_out(self) -> int:
        return len(self.task_keys)

    def sent(self, task_id: str, keys: list[str]) -> None:
        self.task_keys[task_id] = set(keys)
        for key in keys:
            self.key_task[key] = task_id

    def settle(self, key: str) -> list[Job]:
        """The outcome for `key` is in (or it is to be published again): its jobs, forgotten."""
        task = self.key_task.pop(key, None)
        if task is not None and task in self.task_keys:
            self.task_keys[task].discard(key)
            if not self.task_keys[task]:
                del self.task_keys[task]
        return self.waiting.pop(key, [])

    def clear(self) -> list[Job]:
        jobs = [job for jobs in self.waiting.values() for job in jobs]
        self.waiting, self.task_keys, self.key_task = {}, {}, {}
        return jobs


class Batcher:
    """Photos taken and not yet published, and their publishing: one round trip claims every
    photo's job key, then one message per task of up to celery.batch photos; never more than
    workers.queue_size tasks outstanding."""

    def __init__(self, config: Config, client: Any, sender: TaskSender, ledger: Ledger, token: str,
                 where: Callable[[str], tuple[str | None, str | None]]):
        self.config = config
        self.redis = client
        self.sender = sender
        self.ledger = ledger
        self.token, self.token_bytes = token, token.encode()
        self.where = where  # photo path -> (its root, that root's marker id)
        self.keys = wire.Keys(config.celery.queue)
        self.ttl = wire.dedupe_ttl(config)
        self.batch_max = config.celery.batch
        self.task_limit = config.workers.queue_size
        self.pending: list[tuple[Job, Any]] = []  # taken, not yet published (a batch filling, or held)

    def room(self) -> int:
        """How many more photos it takes now."""
        return max(0, (self.task_limit - self.ledger.tasks_out()) * self.batch_max - len(self.pending))

    def full(self) -> bool:
        return len(self.pending) >= self.batch_max * FLUSH_TASKS

    def flush(self) -> BaseException | None:
        """Publish what is pending while the broker takes it; the broker's error if it did not."""
        room = self.task_limit - self.ledger.tasks_out()
        if not self.pending or room <= 0:
            return None
        pending, self.pending = self.pending[: room * self.batch_max], self.pending[room * self.batch_max :]
        try:
            mine = self.claim(pending)
        except wire.BROKER_ERRORS as err:
            self.pending[:0] = pending
            return err
        tasks: list[list[tuple[Job, Any, str]]] = []
        for job, settings, key in mine:  # a task carries one set of render settings
            if not tasks or len(tasks[-1]) >= self.batch_max or tasks[-1][0][1] is not settings:
                tasks.append([])
            tasks[-1].append((job, settings, key))
        tasks, over = tasks[:room], tasks[room:]  # a change of settings split a task
        for task in over:
            self.unsend(task)
        built = [self.build(task) for task in tasks]
        try:
            with self.sender.session() as send:
                for task_id, args, time_limit, keys in built:
                    send(task_id, args, time_limit, len(keys))
        except wire.BROKER_ERRORS as err:
            # sent in one pipeline at the session's end, so which of them reached the broker is not
            # known: their keys stay claimed with our token and the next flush sends them all
            # again; a render host skips a photo whose key a first copy already cleared
            for task in tasks:
                self.unsend(task)
            return err
        for task_id, _args, _limit, keys in built:
            self.ledger.sent(task_id, keys)
        return None

    def unsend(self, task: list[tuple[Job, Any, str]]) -> None:
        """Claimed, not sent: back to pending, with whatever joined them."""
        for _job, settings, key in task:
            self.pending.extend((job, settings) for job in self.ledger.waiting.pop(key, ()))

    def claim(self, pending: list[tuple[Job, Any]]) -> list[tuple[Job, Any, str]]:
        """Join every photo already queued (by us or another watcher); return the ones to send."""
        keys = [wire.photo_key(job.path, job.size, job.mtime_ns, job.ino) for job, _ in pending]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.set(self.keys.job(key), self.token, nx=True, ex=self.ttl)
        claimed = pipe.execute()
        waiting = self.ledger.waiting
        taken = [key for key, ours in zip(keys, claimed) if not ours and key not in waiting]
        holders: dict[str, bytes | None] = {}
        if taken:
            pipe = self.redis.pipeline(transaction=False)
            for key in taken:
                pipe.get(self.keys.job(key))
            holders = dict(zip(taken, pipe.execute()))
        mine = []
        for (job, settings), key, ours in zip(pending, keys, claimed):
            joined = key in waiting or not (ours or holders.get(key) == self.token_bytes)
            waiting.setdefault(key, []).append(job)
            if joined:
                logger.debug("already queued (by us or another watcher): %s", shown(job.path))
            else:
                mine.append((job, settings, key))
        return mine

    def build(self, task: list[tuple[Job, Any, str]]) -> tuple[str, tuple, float | None, list[str]]:
        """One task's id, Celery args, hard time limit and job keys."""
        task_id = uuid.uuid4().hex
        photos, sizes, index = [], [], {}
        for job, _settings, key in task:
            targets = []
            for target in job.targets:
                if target.size not in index:
                    index[target.size] = len(sizes)
                    sizes.append(asdict(target.size))
                targets.append((target.path, index[target.size]))
            root, marker = self.where(job.path)
            photos.append((key, job.path, job.size, job.mtime_ns, job.ino, targets, root, marker))
        limit = self.config.limits.photo_timeout
        return task_id, (photos, task[0][1], sizes), limit * (len(photos) + 1) + 10 if limit else None, [p[0] for p in photos]
