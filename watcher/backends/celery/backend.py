"""Render hosts behind a broker: the master publishes photos to Celery over Redis, `thumbwatch
worker` processes on any host that mounts the same storage render them, and every outcome comes
back to the master on a Redis stream.

The picture, one Redis for everything:

    master (thumbwatch run)                      render hosts (thumbwatch worker)
      submit() -> batch -> SET NX job keys  ->     Celery queue <queue>  ->  render_batch()
      listener thread <- XREAD outcomes     <-     XADD tw:<queue>:outcomes, DEL the job key

At-least-once, bounded, and nothing rendered twice on purpose:
- a photo version's identity (path, size, mtime_ns, inode) is its key; the master publishes it
  only if `SET tw:<queue>:job:<key> NX` succeeds, so a second master, a rescan or a reload joins
  the photo already queued instead of queueing it again. The render host deletes the key once it
  has reported the outcome; a redelivered task skips photos whose key is gone.
- acks_late + reject_on_worker_lost + prefetch 1: a worker process killed mid-photo gives its
  task back at once; a whole host that dies gives it back after celery.visibility_timeout.
- a render host counts the starts of each photo in Redis (tw:<queue>:try:<key>): a photo that
  killed its worker more than workers.max_retries times is failed with the local pool's wording.
- limits.photo_timeout is enforced on the render host by a watchdog thread that reports the
  time-out, then kills its own process (an alarm cannot interrupt a C decoder, a thread can
  still run while the decoder has let go of the GIL; Celery's hard time limit is the backstop).
- a thumbnail already fresh (its mtime is the photo's) is not rendered again, so a late
  duplicate from a frozen-then-thawed host never costs a render nor overwrites anything; and the
  master re-checks freshness before it reports a failure or a time-out.

Celery and redis-py are imported only here, and this module only when workers.backend is celery.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict
from typing import Any

from ...config import Config, ConfigError, OutputConfig, SizeSpec
from ...thumbtree import fresh, remove_stale_temps
from ..local.pool import describe_exit
from ...executor import Crashed, ExecutorBroken, Failed, Job, Outcome, OutputBlocked, Rendered, Returned, TimedOut, Vanished
from ...paths import PathRules, Target, shown
from ...render import RenderSettings

try:
    import celery
    import redis
    from celery.exceptions import WorkerLostError
    from celery.worker.request import Request
    from kombu.exceptions import OperationalError
except ImportError as err:  # pragma: no cover - the extra is part of the test install
    raise ConfigError(f"workers.backend: celery needs the celery extra (pip install 'thumbwatch[celery]'): {err}") from None

logger = logging.getLogger(__name__)

TASK = "thumbwatch.render"
STREAM_MAXLEN = 100_000  # outcomes kept in the stream; the master reads them within seconds
AUDIT_EVERY = 10.0  # s between the master's checks that its queued photos are still in Redis
BACKOFF_MAX = 10.0
SWEEP_LOCK_EXPIRE = 10  # s; a sweep that took longer would only restore a task twice (deduped)
FLUSH_TASKS = 32  # a catch-up publishes this many full tasks per round trip of claims


# ---- shared by both sides ---------------------------------------------------------------------


def photo_key(path: str, size: int, mtime_ns: int, ino: int) -> str:
    """One photo version's identity; the path's hash first, so `retry PATH` can find its keys."""
    return f"{path_hash(path)}:{size}:{mtime_ns}:{ino}"


def path_hash(path: str) -> str:
    return hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:20]


class Keys:
    """Every Redis name thumbwatch uses, prefixed by the queue so libraries can share a Redis."""

    def __init__(self, queue: str):
        self.prefix = f"tw:{queue}:"
        self.outcomes = self.prefix + "outcomes"

    def job(self, key: str) -> str:
        return f"{self.prefix}job:{key}"

    def tries(self, key: str) -> str:
        return f"{self.prefix}try:{key}"

    def in_hand(self, task_id: str) -> str:
        return f"{self.prefix}inhand:{task_id}"


def dedupe_ttl(config: Config) -> int:
    """How long a job key lives: far longer than a task can wait with at most queue_size queued."""
    return int(max(3600.0, 4 * config.celery.visibility_timeout))


def redacted(url: str) -> str:
    """The broker URL without its password, for logs and the status file."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def make_app(config: Config) -> "celery.Celery":
    c = config.celery
    app = celery.Celery("thumbwatch", broker=c.broker, set_as_current=False)
    app.conf.update(
        task_default_queue=c.queue,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=False,  # a hard time limit gives the task back too
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        # the broker lost: photos in hand finish, and their outcomes wait for it (RenderHost._retrying)
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_transport_options={
            "visibility_timeout": c.visibility_timeout,
            # sweep for a dead host's photos every ~2 s instead of kombu's ~100 s
            "unacked_restore_interval": 2,
            "unacked_restore_throttle": 1,
            # each sweep holds a lock in Redis; a host killed while holding it (a sweep every
            # 2 s makes that a real chance) would stop every sweep for kombu's default 300 s
            "unacked_mutex_expire": SWEEP_LOCK_EXPIRE,
        },
    )
    return app


def _redis(config: Config, **kwargs: Any) -> "redis.Redis":
    return redis.Redis.from_url(config.celery.broker, socket_connect_timeout=2, health_check_interval=10, **kwargs)


def settings_wire(settings: RenderSettings) -> dict:
    output = asdict(settings.output)
    output["dir"] = str(settings.output.dir)
    output.pop("sizes")
    return {"output": output, "max_pixels": settings.max_pixels}


def settings_from_wire(wire: dict) -> RenderSettings:
    known = set(OutputConfig.__dataclass_fields__)
    output = {k: v for k, v in wire["output"].items() if k in known}
    from pathlib import Path

    output["dir"] = Path(output["dir"])
    return RenderSettings(OutputConfig(**output), wire["max_pixels"])


def _lost_how(exc: BaseException) -> str:
    """Celery's "Worker exited prematurely: signal 9 (SIGKILL) Job: 0." in the pool's words."""
    text = str(exc)
    if "signal " in text:
        try:
            return describe_exit(-int(text.split("signal ", 1)[1].split()[0]))
        except (ValueError, IndexError):
            pass
    if "exitcode " in text:
        try:
            return describe_exit(int(text.split("exitcode ", 1)[1].split()[0].rstrip(".")))
        except (ValueError, IndexError):
            pass
    return text


# ---- the master's side ------------------------------------------------------------------------


class CeleryExecutor:
    """The Executor (see executor.py) that sends photos to render hosts through the broker."""

    def __init__(self, config: Config):
        self.config = config
        self.keys = Keys(config.celery.queue)
        self.app = make_app(config)
        self.redis = _redis(config)
        self.ttl = dedupe_ttl(config)
        self.batch_max = config.celery.batch
        self.task_limit = config.workers.queue_size
        self.pending: list[tuple[Job, Any]] = []  # taken, not yet published (a batch filling, or held)
        self.waiting: dict[str, list[Job]] = {}  # key -> jobs published or joined, no outcome yet
        self.task_keys: dict[str, set[str]] = {}  # task id -> keys it carries that are unreported
        self.key_task: dict[str, str] = {}
        self.ready: list[Outcome] = []  # outcomes made here (drain), handed out by collect()
        self.inbox: deque = deque()  # from the listener thread
        self.hosts: dict[str, float] = {}  # render host -> wall time of its last outcome
        self.broker_up = True
        self.run_id: str | None = None
        self.draining = False
        self.next_audit = 0.0
        self.suspects: tuple[set[str], tuple[int, int]] | None = None  # job keys found missing, stream id then
        self.read = (0, 0)  # the newest outcome the listener has queued (stream id)
        self._settings: tuple[Any, dict] | None = None
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # the value of our job keys
        self.token_bytes = self.token.encode()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None

    # -- Executor protocol

    def start(self) -> None:
        try:
            self.run_id = self.redis.info("server")["run_id"]
            last = self.redis.xinfo_stream(self.keys.outcomes)["last-generated-id"] if self.redis.exists(self.keys.outcomes) else "0-0"
        except redis.AuthenticationError as err:
            raise ExecutorBroken(f"the broker {redacted(self.config.celery.broker)} refused us: {err}") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as err:
            logger.error("cannot reach the broker %s: %s; holding photos and reconnecting with back-off", redacted(self.config.celery.broker), err)
            self.broker_up = False
            last = "$"
        if isinstance(last, bytes):
            last = last.decode()
        if last != "$":
            self.read = _stream_id(last)
        logger.info("render hosts take photos from %s queue=%s", redacted(self.config.celery.broker), self.config.celery.queue)
        self._listener = threading.Thread(target=self._listen, args=(last,), name="thumbwatch-outcomes", daemon=True)
        self._listener.start()

    def capacity(self) -> int:
        if self.draining or not self.broker_up:
            return 0
        return max(0, (self.task_limit - len(self.task_keys)) * self.batch_max - len(self.pending))

    def submit(self, job: Job, settings: Any) -> None:
        if self._settings is None or self._settings[0] is not settings:
            self._settings = (settings, settings_wire(settings))
        self.pending.append((job, self._settings[1]))
        if len(self.pending) >= self.batch_max * FLUSH_TASKS:
            self.flush()

    def waitables(self) -> list[Any]:
        self.flush()  # the master is about to sleep: nothing may wait for a fuller batch
        return [self._wake_r]

    def collect(self, ready: list[Any], now: float) -> list[Outcome]:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        outcomes, self.ready = self.ready, []
        read = self.read  # the listener queues outcomes before it moves this on
        while self.inbox:
            outcomes.extend(self._on_message(self.inbox.popleft()))
        if self.broker_up and now >= self.next_audit:
            self.next_audit = now + AUDIT_EVERY
            self._audit()
        self._republish_lost(read)
        self.flush()
        return outcomes

    def next_deadline(self) -> float | None:
        return self.next_audit if self.waiting else None

    def in_flight(self) -> int:
        return len(self.pending) + sum(len(jobs) for jobs in self.waiting.values())

    def in_hand(self) -> int:
        """Published: in the broker or on a render host (which of the two, only the hosts know).
        Either way drain() waits for their outcomes, and what is still queued when it stops stays
        in the broker: none of it needs the next start's catch-up, as the local pool's queue does."""
        return sum(len(jobs) for jobs in self.waiting.values())

    def resize(self, count: int) -> None:
        logger.info("workers.count applies to render hosts at their next start (thumbwatch worker reads it there)")

    def set_limits(self, *, memory_mb: int, photo_timeout: float) -> None:
        logger.info("limits apply to render hosts at their next start (thumbwatch worker reads them there)")

    def drain(self) -> None:
        """Publish nothing more: photos not yet published come back; published ones finish."""
        self.draining = True
        self.ready.extend(Returned(job) for job, _ in self.pending)
        self.pending.clear()
        self._wake()

    def finished(self) -> bool:
        return not self.pending and not self.waiting and not self.ready

    def stop_now(self) -> list[Outcome]:
        """Whatever is still queued stays in the broker (and its job key keeps others from
        queueing it again); the render hosts finish it whether or not we wait."""
        outcomes = self.ready + [Returned(job) for job, _ in self.pending]
        outcomes += [Returned(job) for jobs in self.waiting.values() for job in jobs]
        self.ready, self.pending, self.waiting = [], [], {}
        self.task_keys.clear()
        self.key_task.clear()
        self.close()
        return outcomes

    def describe(self) -> dict[str, Any]:
        now = time.time()
        return {
            "workers": [],
            "backend": "celery",
            "broker": redacted(self.config.celery.broker),
            "broker_up": self.broker_up,
            "tasks_queued": len(self.task_keys),
            "render_hosts": {host: round(now - seen, 1) for host, seen in sorted(self.hosts.items()) if now - seen < 3600},
        }

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None and self._listener is not threading.current_thread():
            self._listener.join(5)
            self._listener = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    # -- publishing

    def flush(self) -> None:
        """Publish the pending photos, while the broker takes them: one round trip claims every
        photo's job key (SET NX), then one message per task of up to celery.batch photos."""
        room = self.task_limit - len(self.task_keys)  # never more than workers.queue_size tasks outstanding
        if not self.pending or not self.broker_up or self.draining or room <= 0:
            return
        pending, self.pending = self.pending[: room * self.batch_max], self.pending[room * self.batch_max :]
        try:
            mine = self._claim(pending)
        except (redis.RedisError, OSError) as err:
            self.pending[:0] = pending
            self._broker_down(err)
            return
        tasks: list[list[tuple[Job, Any, str]]] = []
        for job, wire, key in mine:  # a task carries one set of render settings
            if not tasks or len(tasks[-1]) >= self.batch_max or tasks[-1][0][1] is not wire:
                tasks.append([])
            tasks[-1].append((job, wire, key))
        tasks, over = tasks[:room], tasks[room:]  # a change of settings split a task
        for task in over:
            self._unsend(task)
        sent = 0
        try:
            with self.app.producer_or_acquire() as producer:
                for sent, task in enumerate(tasks):
                    self._send(task, producer)
        except (redis.RedisError, OSError, OperationalError) as err:
            # the keys of what was not sent stay claimed with our token: the next flush re-sends
            for task in tasks[sent:]:
                self._unsend(task)
            self._broker_down(err)

    def _unsend(self, task: list[tuple[Job, Any, str]]) -> None:
        """Claimed, not sent: back to pending, with whatever joined them."""
        for _job, wire, key in task:
            self.pending.extend((job, wire) for job in self.waiting.pop(key, ()))

    def _claim(self, pending: list[tuple[Job, Any]]) -> list[tuple[Job, Any, str]]:
        """Join every photo already queued (by us or another watcher); return the ones to send.
        A key already holding our own token is a claim whose message never left (the broker
        went away in between): ours to send."""
        keys = [photo_key(job.path, job.size, job.mtime_ns, job.ino) for job, _ in pending]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.set(self.keys.job(key), self.token, nx=True, ex=self.ttl)
        claimed = pipe.execute()
        taken = [key for key, ours in zip(keys, claimed) if not ours and key not in self.waiting]
        holders: dict[str, bytes | None] = {}
        if taken:
            pipe = self.redis.pipeline(transaction=False)
            for key in taken:
                pipe.get(self.keys.job(key))
            holders = dict(zip(taken, pipe.execute()))
        mine = []
        for (job, wire), key, ours in zip(pending, keys, claimed):
            joined = key in self.waiting or not (ours or holders.get(key) == self.token_bytes)
            self.waiting.setdefault(key, []).append(job)
            if joined:
                logger.debug("already queued (by us or another watcher): %s", shown(job.path))
            else:
                mine.append((job, wire, key))
        return mine

    def _send(self, task: list[tuple[Job, Any, str]], producer: Any) -> None:
        task_id = uuid.uuid4().hex
        photos, sizes, index = [], [], {}
        for job, _wire, key in task:
            targets = []
            for target in job.targets:
                if target.size not in index:
                    index[target.size] = len(sizes)
                    sizes.append(asdict(target.size))
                targets.append((target.path, index[target.size]))
            photos.append((key, job.path, job.size, job.mtime_ns, job.ino, targets))
        limit = self.config.limits.photo_timeout
        self.app.send_task(
            TASK, args=(photos, task[0][1], sizes), task_id=task_id, queue=self.config.celery.queue, retry=False,
            time_limit=limit * (len(photos) + 1) + 10 if limit else None, producer=producer,
            argsrepr=f"{len(photos)} photo(s)", kwargsrepr="",  # Celery's default repr of the args costs more than the send
        )
        self.task_keys[task_id] = {p[0] for p in photos}
        for p in photos:
            self.key_task[p[0]] = task_id

    def _audit(self) -> None:
        """Photos we wait for whose job key vanished (Redis restarted without its data, `thumbwatch
        retry`, a key expired). A render host adds its outcome to the stream before it deletes
        the key, so a key is missing for want of an outcome only once the listener has read the
        stream as far as it reached at the check: until then they are suspects."""
        keys = list(self.waiting)
        if not keys:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for key in keys:
                pipe.exists(self.keys.job(key))
            pipe.xrevrange(self.keys.outcomes, count=1)
            *present, newest = pipe.execute()
        except (redis.RedisError, OSError) as err:
            self._broker_down(err)
            return
        missing = {key for key, there in zip(keys, present) if not there}
        if missing:
            self.suspects = (missing, _stream_id(newest[0][0]) if newest else (0, 0))

    def _republish_lost(self, read: tuple[int, int]) -> None:
        """The suspects whose outcome is still missing once the stream has been read past the
        check: lost with the broker's data; publish them again."""
        if self.suspects is None or read < self.suspects[1]:
            return
        lost = [key for key in self.suspects[0] if key in self.waiting]
        self.suspects = None
        if not lost:
            return
        logger.warning("%d queued photo(s) are no longer in the broker (restarted without its data?); publishing them again", len(lost))
        for key in lost:
            self._forget_task_key(key)
            for job in self.waiting.pop(key):
                if self.draining:
                    self.ready.append(Returned(job))  # publish nothing more: the next start finds it
                else:
                    self.pending.append((job, self._settings[1] if self._settings else {}))

    # -- outcomes

    def _on_message(self, message: Any) -> list[Outcome]:
        match message:
            case ("down", reason):
                self._broker_down(reason)
                return []
            case ("up", run_id):
                return self._broker_back(run_id)
            case ("outcome", fields):
                return self._on_outcome(fields)
        raise AssertionError(f"unexpected listener message {message!r}")

    def _on_outcome(self, m: dict) -> list[Outcome]:
        host = m.get("h", "")
        self.hosts[host] = time.time()
        key = m["key"]
        kind = m["k"]
        if kind == "lost":
            if key in self.waiting:
                logger.error("render host %s: worker exited pid=%s %s while rendering %s; the broker hands it out again (attempt %d of %d)",
                             host, m.get("pid"), m.get("r"), shown(self.waiting[key][0].path), m.get("n", 1) + 1, self.config.workers.max_retries + 1)
            return []
        jobs = self.waiting.pop(key, None)
        if not jobs:
            return []  # a late duplicate, or another watcher's photo
        self._forget_task_key(key)
        return [self._outcome(job, kind, m, host) for job in jobs]

    def _forget_task_key(self, key: str) -> None:
        task = self.key_task.pop(key, None)
        if task is not None and task in self.task_keys:
            self.task_keys[task].discard(key)
            if not self.task_keys[task]:
                del self.task_keys[task]

    def _outcome(self, job: Job, kind: str, m: dict, host: str) -> Outcome:
        ms = float(m.get("ms", 0.0))
        reason = m.get("r", "")
        if kind == "ok":
            return Rendered(job, ms, tuple(m.get("o", ())), host)
        if kind in ("failed", "timeout", "bug") and self._fresh(job):
            # a late "failed" from a thawed host for a photo another host rendered meanwhile
            return Rendered(job, ms, tuple(t.path for t in job.targets), host)
        if kind == "failed":
            return Failed(job, reason, ms, host)
        if kind == "timeout":
            return TimedOut(job, float(m.get("limit", self.config.limits.photo_timeout)))
        if kind == "vanished":
            return Vanished(job, reason)
        if kind == "output":
            return OutputBlocked(job, reason, m.get("errno"))
        if kind == "bug":
            return Crashed(job, f"on render host {host}:\n{reason}")
        return Failed(job, f"unknown outcome {kind!r} from render host {host}", ms, host)

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
                         redacted(self.config.celery.broker), err, self.in_flight())

    def _broker_back(self, run_id: str) -> list[Outcome]:
        restarted = self.run_id is not None and run_id != self.run_id
        self.run_id = run_id
        if not self.broker_up:
            self.broker_up = True
            logger.info("the broker is back%s; resuming %d photo(s)", " (it restarted)" if restarted else "", self.in_flight())
        self.next_audit = 0.0  # check at once what survived
        return []

    # -- the listener thread: outcomes in, nothing else

    def _listen(self, last: str) -> None:
        client = _redis(self.config, socket_timeout=5)
        delay = probe = 0.5
        down = not self.broker_up
        while not self._stop.is_set():
            try:
                if not down and not self.broker_up:
                    # a publish or a check failed while this connection is fine: say "up" again
                    # once the broker answers, with back-off in case only publishing fails
                    self._stop.wait(probe)
                    probe = min(probe * 2, BACKOFF_MAX)
                    down = True
                elif self.broker_up:
                    probe = 0.5
                if down:
                    run_id = client.info("server")["run_id"]
                    self._post(("up", run_id))
                    down, delay = False, 0.5
                replies = client.xread({self.keys.outcomes: last}, count=1000, block=1000)
            except (redis.RedisError, OSError) as err:
                if not down:
                    self._post(("down", str(err) or type(err).__name__))
                    down = True
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            for _stream, entries in replies:
                for entry_id, fields in entries:
                    last = entry_id
                    try:
                        self.inbox.append(("outcome", json.loads(fields[b"m"])))
                    except (KeyError, ValueError):
                        logger.warning("ignored a malformed outcome %r", fields)
                self.read = _stream_id(last)
                self._wake()
        client.close()

    def _post(self, message: tuple) -> None:
        self.inbox.append(message)
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except (BlockingIOError, OSError):
            pass


def _stream_id(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")
    return int(ms), int(seq or 0)


def forget(config: Config, paths: list[str] | None) -> int:
    """`thumbwatch retry`: clear the job keys and death counts of these photos (or all)."""
    keys = Keys(config.celery.queue)
    client = _redis(config)
    patterns = [keys.prefix + f"{kind}:{path_hash(p)}:*" for p in paths for kind in ("job", "try")] if paths else [keys.prefix + "try:*", keys.prefix + "job:*"]
    cleared = 0
    for pattern in patterns:
        batch = list(client.scan_iter(match=pattern, count=1000))
        if batch:
            cleared += client.delete(*batch)
    return cleared


# ---- the render host's side -------------------------------------------------------------------


class RenderHost:
    """What one render process (a Celery pool child) needs: Redis, its config, a watchdog."""

    def __init__(self, config: Config, name: str):
        self.config = config
        self.name = name
        self.keys = Keys(config.celery.queue)
        self.redis = _redis(config, socket_timeout=10)
        self.max_retries = config.workers.max_retries
        self.limit = config.limits.photo_timeout
        self._settings: dict[str, RenderSettings] = {}
        self._lock = threading.Lock()
        self._armed: tuple[float, str, str, str] | None = None  # deadline, key, task id, path
        self._tick = threading.Event()
        if self.limit:
            threading.Thread(target=self._watch, name="thumbwatch-deadline", daemon=True).start()

    def settings(self, wire: dict) -> RenderSettings:
        text = json.dumps(wire, sort_keys=True)
        if text not in self._settings:
            self._settings.clear()
            self._settings[text] = settings_from_wire(wire)
        return self._settings[text]

    def run_batch(self, task_id: str, photos: list, settings_wire_: dict, sizes_wire: list) -> None:
        from ..local.worker import run_job

        settings = self.settings(settings_wire_)
        sizes = [SizeSpec(**s) for s in sizes_wire]
        for key, path, size, mtime_ns, ino, targets_wire in photos:
            def claim(key: str = key) -> list:
                # built afresh on every try: a pipeline that failed half-way comes back empty
                pipe = self.redis.pipeline(transaction=False)
                pipe.exists(self.keys.job(key))
                pipe.hincrby(self.keys.tries(key), "n", 1)
                pipe.hget(self.keys.tries(key), "how")
                pipe.expire(self.keys.tries(key), dedupe_ttl(self.config))
                pipe.set(self.keys.in_hand(task_id), f"{key} {os.getpid()}", ex=dedupe_ttl(self.config))
                return pipe.execute()

            queued, starts, how, _, _ = self._retrying(claim)
            if not queued:
                continue  # reported before this task came round again
            targets = [Target(sizes[i], p) for p, i in targets_wire]
            died = starts - 1
            if died > self.max_retries:
                how = how.decode() if how else "lost"
                self.report(task_id, key, path, {"k": "failed", "r": f"worker died on it {died} times ({how})"})
                continue
            if _fresh(path, size, mtime_ns, targets):
                self.report(task_id, key, path, {"k": "ok", "ms": 0.0, "o": [t.path for t in targets], "again": 1})
                continue
            with self._lock:
                self._armed = (time.monotonic() + self.limit, key, task_id, path)
            self._tick.set()
            try:
                result = run_job(0, path, targets, settings)
            finally:
                with self._lock:
                    self._armed = None
            self.report(task_id, key, path, _message(result))

    def report(self, task_id: str, key: str, path: str, m: dict) -> None:
        m.update(key=key, h=self.name, pid=os.getpid())

        def send() -> list:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(self.keys.outcomes, {"m": json.dumps(m)}, maxlen=STREAM_MAXLEN, approximate=True)
            pipe.delete(self.keys.job(key), self.keys.tries(key), self.keys.in_hand(task_id))
            return pipe.execute()

        self._retrying(send)
        _log_outcome(path, m)

    def _retrying(self, call: Any) -> Any:
        """The broker restarting must not lose an outcome: retry with back-off for a while."""
        delay, deadline = 0.2, time.monotonic() + self.config.celery.visibility_timeout / 2
        while True:
            try:
                return call()
            except (redis.ConnectionError, redis.TimeoutError) as err:
                if time.monotonic() > deadline:
                    raise
                logger.warning("broker unreachable (%s); retrying in %.1f s", err, delay)
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    def _watch(self) -> None:
        """limits.photo_timeout: report the time-out, then end this process (SIGKILL): the pool
        parent replaces it and gives the rest of the task back to the broker."""
        while True:
            with self._lock:
                armed = self._armed
            if armed is None:
                self._tick.wait(1.0)
                self._tick.clear()
                continue
            deadline, key, task_id, path = armed
            if time.monotonic() < deadline:
                time.sleep(min(0.2, max(0.01, deadline - time.monotonic())))
                continue
            with self._lock:
                if self._armed != armed:
                    continue
            try:
                self.report(task_id, key, path, {"k": "timeout", "r": f"timed out after {self.limit:g} s", "limit": self.limit})
            finally:
                os.kill(os.getpid(), signal.SIGKILL)


def _log_outcome(path: str, m: dict) -> None:
    """The render host's own log: one line per photo, worded as the master words it."""
    match m["k"]:
        case "ok" if m.get("again"):
            logger.info("fresh already (another host rendered it): %s", shown(path))
        case "ok":
            outputs = ", ".join(os.path.relpath(out, os.path.dirname(path)) for out in m.get("o", ()))
            logger.info("ok %s -> %s in %.0f ms", shown(path), shown(outputs), m.get("ms", 0))
        case "vanished":
            logger.debug("vanished or changed while rendering: %s (%s)", shown(path), m.get("r"))
        case "bug":
            logger.error("bug while rendering %s (please report it):\n%s", shown(path), str(m.get("r", "")).rstrip())
        case "output":
            logger.warning("cannot write the thumbnails of %s: %s", shown(path), m.get("r"))
        case _:
            logger.warning("failed %s: %s", shown(path), m.get("r"))


def _fresh(path: str, size: int, mtime_ns: int, targets: list[Target]) -> bool:
    """This photo version's thumbnails are up to date (admission's rule): rendered already, by someone."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) == (size, mtime_ns) and fresh(st, targets)


def _message(result: Any) -> dict:
    """worker.run_job's result (a messages.py message) as an outcome message."""
    name = type(result).__name__
    if name == "Done":
        return {"k": "ok", "ms": result.ms, "o": list(result.outputs)}
    if name == "CannotRender":
        return {"k": "failed", "r": result.reason, "ms": result.ms}
    if name == "Gone":
        return {"k": "vanished", "r": result.reason}
    if name == "CannotWrite":
        return {"k": "output", "r": result.reason, "errno": result.errno}
    if name == "Bug":
        return {"k": "bug", "r": result.traceback}
    if isinstance(result, tuple):  # the older tuple form: (kind, job id, payload, ms)
        kind, _id, payload, ms = result
        if kind == "ok":
            return {"k": "ok", "ms": ms, "o": [out[0] for out in payload.outputs]}
        if kind == "output-error":
            return {"k": "output", "r": payload[0], "errno": payload[1], "ms": ms}
        return {"k": {"failed": "failed", "vanished": "vanished"}.get(kind, "bug"), "r": str(payload), "ms": ms}
    return {"k": "bug", "r": f"unexpected render result {result!r}"}


_host: RenderHost | None = None
_host_args: tuple[Config, str] | None = None


def _the_host() -> RenderHost:
    global _host
    if _host is None:
        assert _host_args is not None
        _host = RenderHost(*_host_args)
    return _host


class RenderRequest(Request):
    """Runs in the Celery worker's main process: notes which photo a dead pool process held,
    so the next start of that photo counts it, and tells the master."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        if isinstance(exc, (WorkerLostError, SystemExit)):
            try:
                _note_lost(self.id, _lost_how(exc), self.worker_pid)
            except Exception:  # never let the bookkeeping stop Celery's own handling
                logger.exception("could not note the lost worker of task %s", self.id)
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


def _note_lost(task_id: str, how: str, pid: int | None) -> None:
    assert _host_args is not None
    config, name = _host_args
    keys = Keys(config.celery.queue)
    client = _redis(config)
    try:
        key = client.getdel(keys.in_hand(task_id))
        if not key:
            logger.info("pool process pid=%s %s (its photo's time limit, or between photos); replaced", pid, how)
            return
        key = key.decode().split()[0]
        client.hset(keys.tries(key), "how", how)
        starts = int(client.hget(keys.tries(key), "n") or 1)
        m = {"k": "lost", "key": key, "h": name, "pid": pid, "r": how, "n": starts}
        client.xadd(keys.outcomes, {"m": json.dumps(m)}, maxlen=STREAM_MAXLEN, approximate=True)
        logger.error("pool process pid=%s %s with a photo in hand; the broker hands its task out again", pid, how)
    finally:
        client.close()


def worker_app(config: Config, name: str) -> "celery.Celery":
    global _host_args
    _host_args = (config, name)
    app = make_app(config)

    @app.task(name=TASK, bind=True, Request=RenderRequest, acks_late=True, reject_on_worker_lost=True)
    def render_batch(self: Any, photos: list, settings: dict, sizes: list) -> None:
        _the_host().run_batch(self.request.id, photos, settings, sizes)

    @celery.signals.worker_process_init.connect(weak=False)
    def init_render_process(**_kwargs: Any) -> None:
        from ..local.worker import keep_freed_memory, warm_up

        if config.limits.worker_memory_mb:
            from ..local import worker

            if hasattr(worker, "cap_memory"):
                note = worker.cap_memory(config.limits.worker_memory_mb)
                if note:
                    logger.warning("%s", note)
            else:
                limit = config.limits.worker_memory_mb * 1024 * 1024
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        keep_freed_memory()
        warm_up()
        _the_host()

    return app


# Celery's loggers that speak per task ("Task ... received", "... succeeded in 0.04 s: None")
# or repeat what our own lines say; their warnings and errors still show.
CELERY_CHATTER = ("celery.worker.strategy", "celery.app.trace", "celery.apps.worker", "celery.worker.consumer.mingle",
                  "celery.bootsteps", "kombu")
CONSUMER_LOGGER = "celery.worker.consumer.consumer"


class BrokerOutage(logging.Filter):
    """Celery's consumer says "Cannot connect to ...\nTrying again in 4.00 seconds... (2/100)"
    at every retry: keep the first, on one line, and say nothing more until it connects again
    ("Connected to ..."). Any other record passes untouched."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == CONSUMER_LOGGER and str(record.msg).startswith("consumer: Cannot connect"):
            if self.down:
                return False
            self.down = True
            record.msg, record.args = " ".join(record.getMessage().split()) + " (said once until it connects again)", ()
        elif record.name == "celery.worker.consumer.connection" and str(record.msg).startswith("Connected to"):
            self.down = False
        return True


def quiet_celery(app: "celery.Celery", name: str, config: Config) -> None:
    """Make `thumbwatch worker`'s log read like ours: logsetup's format, one line per photo and
    per state change; no banner, no line per task. Errors and warnings keep their place, and so
    does Celery's "worker: Warm shutdown (MainProcess)" (said from its signal handler, where
    we must not log)."""

    @celery.signals.setup_logging.connect(weak=False)
    def keep_our_logging(**_kwargs: Any) -> None:
        """A receiver here tells Celery to leave logging alone (in the pool processes too)."""

    for logger_name in CELERY_CHATTER:
        logging.getLogger(logger_name).setLevel(logging.WARNING)
    outage = BrokerOutage()
    consumer = logging.getLogger(CONSUMER_LOGGER)
    consumer.setLevel(logging.WARNING)  # its INFO is QoS detail ("Skipping prefetch count reduction ...")
    consumer.addFilter(outage)
    logging.getLogger("celery.worker.consumer.connection").addFilter(outage)

    @celery.signals.worker_ready.connect(weak=False)
    def ready(**_kwargs: Any) -> None:
        logger.info("ready: render host %s, %d process(es), broker %s queue=%s",
                    name, config.workers.count, redacted(config.celery.broker), config.celery.queue)

    import warnings

    # Celery's multi-line root warning; ours is one line, as the master's
    warnings.filterwarnings("ignore", category=celery.exceptions.SecurityWarning)
    # the notice that Celery 6 will change worker_cancel_long_running_tasks_on_connection_loss's
    # default, ten lines at every connection loss: make_app sets it, so the notice says nothing.
    # (A warnings filter would not hold: Celery's logging setup puts "always" in front of it.)
    logging.getLogger("py.warnings").addFilter(lambda record: "worker_cancel_long_running_tasks_on_connection_loss" not in record.getMessage())
    if os.geteuid() == 0:
        logger.warning("running as root: run unprivileged instead (the shipped units run as User=thumbwatch; see the README's Installing)")


def worker_main(config: Config, name: str | None = None) -> int:
    """`thumbwatch worker`: a Celery worker with workers.count render processes."""
    name = name or socket.gethostname()
    app = worker_app(config, name)
    quiet_celery(app, name, config)
    logger.info("render host %s starting: %d process(es) taking photos from %s queue=%s",
                name, config.workers.count, redacted(config.celery.broker), config.celery.queue)
    removed = remove_stale_temps(PathRules(config))
    if removed:
        logger.info("removed %d temp file(s) left by render processes of this host that died", removed)
    argv = [
        "--quiet", "worker", "--pool=prefork", f"--concurrency={config.workers.count}", f"--queues={config.celery.queue}",
        f"--hostname=thumbwatch-{os.getpid()}@{name}", "--without-gossip", "--without-mingle", "--prefetch-multiplier=1",
        f"--loglevel={config.log.level.upper()}",
    ]
    asked = []  # the signal that asked for the stop, if one did

    def shutting_down(sig: object = None, **_kw: object) -> None:
        if sig:
            asked.append(sig)

    from celery.signals import worker_shutting_down

    worker_shutting_down.connect(shutting_down, weak=False)
    try:
        app.worker_main(argv)
    except SystemExit as exit_:
        if exit_.code and not asked:
            _start_again(name, f"exit code {exit_.code}")
        return int(exit_.code or 0)
    if not asked:
        # Celery's consumer can die of a broker restart (kombu: "Unrecoverable error") and the
        # worker then simply ends; a render host must not stay down for that.
        _start_again(name, "Celery's worker ended without being asked to")
    logger.info("render host %s stopped", name)
    return 0


def _start_again(name: str, why: str) -> None:
    """Run this render host afresh (same pid, same process group, so it is still the one a
    service manager or a test knows), with back-off: 1 s, 2 s, 4 s, ... up to 60 s."""
    tries = int(os.environ.get("THUMBWATCH_WORKER_RESTARTS", "0"))
    delay = min(2 ** tries, 60)
    logger.error("render host %s stopped unexpectedly (%s); starting it again in %d s", name, why, delay)
    time.sleep(delay)
    os.environ["THUMBWATCH_WORKER_RESTARTS"] = str(tries + 1)
    logging.shutdown()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
