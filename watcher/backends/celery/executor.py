"""The master's side of the Celery backend: the Executor (see watcher/executor.py) that sends
photos to render hosts through the broker and reads every outcome back from a Redis stream.

Its parts, each owning its own state:
- publish.Batcher / publish.Ledger: photos taken and not yet published; claims (SET NX) and
  tasks; the photos published and waiting for an outcome.
- OutcomeListener: a thread that reads the outcome stream (XREAD) into an inbox and wakes the
  master; the only thread here, and it touches nothing else.
- Audit: after a broker loss (or every AUDIT_EVERY s), which waited-for photos' job keys are
  gone, and which of those are lost — only once the stream was read past the check, since a
  render host adds its outcome before it deletes the key.
- CeleryExecutor: the broker's health, the render hosts heard from and what they cannot see,
  and each outcome message turned into the executor's Outcome (results.to_outcome).

Celery and redis-py are imported only under backends/celery, and that only when
workers.backend is celery.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from typing import Any, Callable

from ...config import Config
from ...executor import ExecutorBroken, Job, Outcome, Rendered, Returned, WakePipe
from ...paths import shown
from ...roots import read_marker
from ...thumbtree import fresh
from .. import results
from . import wire
from .publish import Batcher, CelerySender, Ledger, TaskSender

logger = logging.getLogger(__name__)

AUDIT_EVERY = 10.0  # s between the master's checks that its queued photos are still in Redis
BOUNCES_WARN = 3  # a photo given back more often than this by hosts that cannot see it: say so
HOSTS_FORGOTTEN = 3600.0  # s after its last outcome a render host is no longer listed


class OutcomeListener:
    """Reads the outcome stream in its own thread; everything it learns goes into `inbox`, with
    a wake-up on `pipe.r`. `read` is the newest stream id whose entry is already in the inbox."""

    def __init__(self, connect: Callable[[], Any], stream: str, broker_up: Callable[[], bool]):
        self.connect = connect
        self.stream = stream
        self.broker_up = broker_up  # the master's view: a failed publish makes it say "up" again once it can
        self.inbox: deque = deque()
        self.read = (0, 0)
        self.pipe = WakePipe()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, last: str) -> None:
        if last != "$":
            self.read = wire.stream_id(last)
        self._thread = threading.Thread(target=self._listen, args=(last,), name="thumbwatch-outcomes", daemon=True)
        self._thread.start()

    def take(self) -> list:
        self.pipe.drain()
        taken = []
        while self.inbox:
            taken.append(self.inbox.popleft())
        return taken

    def post(self, message: tuple) -> None:
        self.inbox.append(message)
        self.pipe.wake()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
            self._thread = None
        self.pipe.close()

    def _listen(self, last: str) -> None:
        client = self.connect()
        delay = probe = 0.5
        down = not self.broker_up()
        while not self._stop.is_set():
            try:
                if not down and not self.broker_up():
                    # a publish or a check failed while this connection is fine: say "up" again
                    # once the broker answers, with back-off in case only publishing fails
                    self._stop.wait(probe)
                    probe = min(probe * 2, wire.BACKOFF_MAX)
                    down = True
                elif self.broker_up():
                    probe = 0.5
                if down:
                    self.post(("up", client.info("server")["run_id"]))
                    down, delay = False, 0.5
                replies = client.xread({self.stream: last}, count=1000, block=1000)
            except (wire.redis.RedisError, OSError) as err:
                if not down:
                    self.post(("down", str(err) or type(err).__name__))
                    down = True
                self._stop.wait(delay)
                delay = min(delay * 2, wire.BACKOFF_MAX)
                continue
            for _stream, entries in replies:
                for entry_id, fields in entries:
                    last = entry_id
                    try:
                        self.inbox.append(("outcome", json.loads(fields[b"m"])))
                    except (KeyError, ValueError):
                        logger.warning("ignored a malformed outcome %r", fields)
                self.read = wire.stream_id(last)
                self.pipe.wake()
        client.close()


class Audit:
    """Photos we wait for whose job key vanished (Redis restarted without its data, `thumbwatch
    retry`, a key expired). Missing keys are suspects until the listener has read the stream as
    far as it reached at the check; those still unreported then are lost, to be published again."""

    def __init__(self, keys: wire.Keys):
        self.keys = keys
        self.next_at = 0.0
        self.suspects: tuple[set[str], tuple[int, int]] | None = None  # missing keys, the stream's newest id then

    def check(self, client: Any, waiting: list[str]) -> None:
        """Raises the broker's errors."""
        if not waiting:
            return
        if client.exists(*(self.keys.job(key) for key in waiting)) == len(waiting):
            return  # all there: one command instead of one per photo (16,000 in a catch-up's window)
        pipe = client.pipeline(transaction=False)
        for key in waiting:
            pipe.exists(self.keys.job(key))
        pipe.xrevrange(self.keys.outcomes, count=1)
        *present, newest = pipe.execute()
        missing = {key for key, there in zip(waiting, present) if not there}
        if missing:
            self.suspects = (missing, wire.stream_id(newest[0][0]) if newest else (0, 0))

    def lost(self, read: tuple[int, int], waiting: dict) -> list[str]:
        if self.suspects is None or read < self.suspects[1]:
            return []
        lost = [key for key in self.suspects[0] if key in waiting]
        self.suspects = None
        return lost


class RootMarkers:
    """Each watched root's marker id as the master sees it, sent with every photo so a render
    host can tell whether its copy of the root is the same folder (sight.py)."""

    def __init__(self, config: Config):
        self.roots = tuple(str(p) for p in config.watch.paths)
        self.markers: dict[str, str | None] = {}

    def refresh(self, root: str | None = None) -> None:
        for r in self.roots if root is None else (root,):
            self.markers[r] = read_marker(r)

    def where(self, path: str) -> tuple[str | None, str | None]:
        for root in self.roots:
            if path.startswith(root + os.sep):
                return root, self.markers.get(root)
        return None, None


class CeleryExecutor:
    """The Executor (see watcher/executor.py) that sends photos to render hosts through the broker.
    `client` and `sender` (and the listener's `listener_client`) are Redis and Celery's producer
    unless given."""

    def __init__(self, config: Config, *, client: Any = None, listener_client: Any = None, sender: TaskSender | None = None):
        self.config = config
        self.keys = wire.Keys(config.celery.queue)
        self.app = wire.make_app(config)
        self.redis = client if client is not None else wire.connect(config)
        token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # the value of our job keys
        self.ledger = Ledger()
        self.roots = RootMarkers(config)
        self.batcher = Batcher(config, self.redis, sender or CelerySender(self.app, config.celery.queue), self.ledger, token, self.roots.where)
        connect = (lambda: listener_client) if listener_client is not None else (lambda: wire.connect(config, socket_timeout=5))
        self.listener = OutcomeListener(connect, self.keys.outcomes, lambda: self.broker_up)
        self.audit = Audit(self.keys)
        self.ready: list[Outcome] = []  # outcomes made here (drain), handed out by collect()
        self.hosts: dict[str, float] = {}  # render host -> wall time of its last outcome
        self.blind: dict[tuple[str, str], str] = {}  # (host, root) -> why that host cannot see it
        self.bounces: dict[str, dict[str, int]] = {}  # job key -> host -> times it gave the photo back
        self.broker_up = True
        self.run_id: str | None = None
        self.draining = False
        self._settings: tuple[Any, dict] | None = None

    # -- Executor protocol

    def start(self) -> None:
        self.roots.refresh()
        try:
            self.run_id = self.redis.info("server")["run_id"]
            last = self.redis.xinfo_stream(self.keys.outcomes)["last-generated-id"] if self.redis.exists(self.keys.outcomes) else "0-0"
            self._read_blind()
        except wire.redis.AuthenticationError as err:
            raise ExecutorBroken(f"the broker {wire.redacted(self.config.celery.broker)} refused us: {err}") from None
        except (wire.redis.RedisError, OSError) as err:
            logger.error("cannot reach the broker %s: %s; holding photos and reconnecting with back-off", wire.redacted(self.config.celery.broker), err)
            self.broker_up = False
            last = "$"
        logger.info("render hosts take photos from %s queue=%s", wire.redacted(self.config.celery.broker), self.config.celery.queue)
        self.listener.start(last.decode() if isinstance(last, bytes) else last)

    def capacity(self) -> int:
        return 0 if self.draining or not self.broker_up else self.batcher.room()

    def submit(self, job: Job, settings: Any) -> None:
        if self._settings is None or self._settings[0] is not settings:
            self._settings = (settings, wire.settings_wire(settings))
        self.batcher.pending.append((job, self._settings[1]))
        if self.batcher.full():
            self.flush()

    def waitables(self) -> list[Any]:
        self.flush()  # the master is about to sleep: nothing may wait for a fuller batch
        return [self.listener.pipe.r]

    def collect(self, ready: list[Any], now: float) -> list[Outcome]:
        outcomes, self.ready = self.ready, []
        read = self.listener.read  # the listener queues outcomes before it moves this on
        for message in self.listener.take():
            outcomes.extend(self._on_message(message))
        if self.broker_up and now >= self.audit.next_at:
            self.audit.next_at = now + AUDIT_EVERY
            self.roots.refresh()
            try:
                self.audit.check(self.redis, list(self.ledger.waiting))
            except (wire.redis.RedisError, OSError) as err:
                self._broker_down(err)
        self._republish(self.audit.lost(read, self.ledger.waiting))
        self.flush()
        return outcomes

    def next_deadline(self) -> float | None:
        return self.audit.next_at if self.ledger.waiting else None

    def in_flight(self) -> int:
        return len(self.batcher.pending) + self.ledger.jobs()

    def in_hand(self) -> int:
        """Published: in the broker or on a render host (which of the two, only the hosts know).
        Either way drain() waits for their outcomes, and what is still queued when it stops stays
        in the broker: none of it needs the next start's catch-up, as the local pool's queue does."""
        return self.ledger.jobs()

    def resize(self, count: int) -> None:
        logger.info("workers.count applies to render hosts at their next start (thumbwatch worker reads it there)")

    def set_limits(self, *, memory_mb: int, photo_timeout: float) -> None:
        logger.info("limits apply to render hosts at their next start (thumbwatch worker reads them there)")

    def drain(self) -> None:
        """Publish nothing more: photos not yet published come back; published ones finish."""
        self.draining = True
        self.ready.extend(Returned(job) for job, _ in self.batcher.pending)
        self.batcher.pending.clear()
        self.listener.pipe.wake()

    def finished(self) -> bool:
        return not self.batcher.pending and not self.ledger.waiting and not self.ready

    def stop_now(self) -> list[Outcome]:
        """Whatever is still queued stays in the broker (and its job key keeps others from
        queueing it again); the render hosts finish it whether or not we wait."""
        outcomes = self.ready + [Returned(job) for job, _ in self.batcher.pending] + [Returned(job) for job in self.ledger.clear()]
        self.ready, self.batcher.pending = [], []
        self.close()
        return outcomes

    def describe(self) -> dict[str, Any]:
        now = time.time()
        blind: dict[str, dict[str, str]] = {}
        for (host, root), why in sorted(self.blind.items()):
            blind.setdefault(host, {})[root] = why
        return {
            "workers": [],
            "backend": "celery",
            "broker": wire.redacted(self.config.celery.broker),
            "broker_up": self.broker_up,
            "tasks_queued": self.ledger.tasks_out(),
            "render_hosts": {host: round(now - seen, 1) for host, seen in sorted(self.hosts.items()) if now - seen < HOSTS_FORGOTTEN},
            "blind_hosts": blind,
        }

    def summary(self) -> str:
        now = time.time()
        hosts = ", ".join(h for h, seen in sorted(self.hosts.items()) if now - seen < HOSTS_FORGOTTEN) or "(none heard from yet)"
        text = f"render hosts {hosts} via {wire.redacted(self.config.celery.broker)} queue {self.config.celery.queue}"
        if self.blind:
            text += "; cannot see their root: " + ", ".join(f"{host} ({root})" for host, root in sorted(self.blind))
        return text

    def close(self) -> None:
        self.listener.stop()

    def root_back(self, root: str) -> None:
        """A watched root came back (remounted): read its marker again before the next photo."""
        self.roots.refresh(root)

    # -- publishing

    def flush(self) -> None:
        if self.broker_up and not self.draining:
            err = self.batcher.flush()
            if err is not None:
                self._broker_down(err)

    def _republish(self, lost: list[str]) -> None:
        """Lost with the broker's data: publish them again (or, draining, hand them back)."""
        if not lost:
            return
        logger.warning("%d queued photo(s) are no longer in the broker (restarted without its data?); publishing them again", len(lost))
        for key in lost:
            for job in self.ledger.settle(key):
                if self.draining:
                    self.ready.append(Returned(job))  # publish nothing more: the next start finds it
                else:
                    self.batcher.pending.append((job, self._settings[1] if self._settings else {}))

    # -- outcomes

    def _on_message(self, message: Any) -> list[Outcome]:
        match message:
            case ("down", reason):
                self._broker_down(reason)
                return []
            case ("up", run_id):
                self._broker_back(run_id)
                return []
            case ("outcome", fields):
                return self._on_outcome(fields)
        raise AssertionError(f"unexpected listener message {message!r}")

    def _on_outcome(self, m: dict) -> list[Outcome]:
        host = str(m.get("h", ""))
        self.hosts[host] = time.time()
        match m.get("k"):
            case "lost":
                key = m.get("key", "")
                if key in self.ledger.waiting:
                    logger.error("render host %s: worker exited pid=%s %s while rendering %s; the broker hands it out again (attempt %d of %d)",
                                 host, m.get("pid"), m.get("r"), shown(self.ledger.waiting[key][0].path), m.get("n", 1) + 1,
                                 self.config.workers.max_retries + 1)
                return []
            case "bounced":
                self._bounced(m.get("keys", []), host)
                return []
            case "blind":
                self.blind[(host, str(m.get("root")))] = str(m.get("r", ""))
                return []
            case "sees":
                self.blind.pop((host, str(m.get("root"))), None)
                return []
        key = m.get("key", "")
        if key not in self.ledger.waiting:
            return []  # a late duplicate, or another watcher's photo
        try:
            result = results.from_wire(m)
        except ValueError as err:
            result = results.CannotRender(f"render host {host} sent an outcome this master cannot read: {err}")
        self.bounces.pop(key, None)
        return [self._outcome(job, result, host) for job in self.ledger.settle(key)]

    def _outcome(self, job: Job, result: results.Result, host: str) -> Outcome:
        if isinstance(result, (results.CannotRender, results.OverTime, results.Bug)) and self._fresh(job):
            # a late "failed" from a thawed host for a photo another host rendered meanwhile
            return Rendered(job, getattr(result, "ms", 0.0), tuple(t.path for t in job.targets), host)
        return results.to_outcome(job, result, host)

    def _bounced(self, keys: list[str], host: str) -> None:
        for key in keys:
            if key not in self.ledger.waiting:
                continue
            counts = self.bounces.setdefault(key, {})
            counts[host] = counts.get(host, 0) + 1
            if sum(counts.values()) == BOUNCES_WARN + 1:
                logger.warning("%s was given back %d times by render hosts that cannot see its root: %s", shown(self.ledger.waiting[key][0].path),
                               BOUNCES_WARN + 1, ", ".join(f"{h} ({n}x)" for h, n in sorted(counts.items())))

    def _read_blind(self) -> None:
        for field, why in self.redis.hgetall(self.keys.blind).items():
            host, _, root = (field.decode() if isinstance(field, bytes) else field).partition("\t")
            self.blind[(host, root)] = why.decode() if isinstance(why, bytes) else why

    def _fresh(self, job: Job) -> bool:
        try:
            return fresh(os.stat(job.path), job.targets)
        except OSError:
            return False

    # -- the broker's health

    def _broker_down(self, err: Any) -> None:
        if self.broker_up:
            self.broker_up = False
            logger.error("lost the broker %s: %s; holding %d photo(s) and reconnecting with back-off",
                         wire.redacted(self.config.celery.broker), err, self.in_flight())

    def _broker_back(self, run_id: str) -> None:
        restarted = self.run_id is not None and run_id != self.run_id
        self.run_id = run_id
        if not self.broker_up:
            self.broker_up = True
            logger.info("the broker is back%s; resuming %d photo(s)", " (it restarted)" if restarted else "", self.in_flight())
        self.audit.next_at = 0.0  # check at once what survived


def forget(config: Config, paths: list[str] | None) -> int:
    """`thumbwatch retry`: clear the job keys and death counts of these photos (or all)."""
    keys = wire.Keys(config.celery.queue)
    client = wire.connect(config)
    patterns = [keys.prefix + f"{kind}:{wire.path_hash(p)}:*" for p in paths for kind in ("job", "try")] if paths else [keys.prefix + "try:*", keys.prefix + "job:*"]
    cleared = 0
    for pattern in patterns:
        batch = list(client.scan_iter(match=pattern, count=1000))
        if batch:
            cleared += client.delete(*batch)
    return cleared
