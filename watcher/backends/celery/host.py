"""The render host's side: what one render process (a Celery pool child) does with a task, and
what the Celery worker's main process notes when one of those processes dies.

At-least-once, bounded, and nothing rendered twice on purpose:
- the render host deletes a photo's job key once it has reported the outcome; a redelivered task
  skips photos whose key is gone.
- acks_late + reject_on_worker_lost + prefetch 1: a worker process killed mid-photo gives its
  task back at once; a whole host that dies gives it back after celery.visibility_timeout.
- a render host counts the starts of each photo in Redis (tw:<queue>:try:<key>): a photo that
  killed its worker more than workers.max_retries times is failed with the local pool's wording.
- limits.photo_timeout is enforced here by a watchdog thread that reports the time-out, then
  kills its own process (an alarm cannot interrupt a C decoder, a thread can still run while the
  decoder has let go of the GIL; Celery's hard time limit is the backstop).
- a thumbnail already fresh (its mtime is the photo's) is not rendered again, so a late duplicate
  from a frozen-then-thawed host never costs a render nor overwrites anything.
- a root this host cannot see as the watcher sees it (sight.py) is not rendered from: its photos
  go back to the queue for another host.

Imports the shared rules (render/, thumbtree, config, paths, results) and wire.py, never the
master's modules.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Any, Callable

from ...config import Config
from ...paths import Target
from ...render import RenderSettings
from ...thumbtree import fresh
from .. import results
from . import wire
from .sight import Sight

import redis  # noqa: E402 - after wire, which says what is missing when the extra is not installed
from celery.exceptions import WorkerLostError  # noqa: E402
from celery.worker.request import Request  # noqa: E402

logger = logging.getLogger(__name__)

BOUNCE_PAUSE = 0.5  # s a render process waits before it gives back photos it cannot see (no busy loop)


class RenderHost:
    """What one render process needs: Redis, its config, a watchdog, its view of the roots."""

    def __init__(self, config: Config, name: str, *, client: Any = None, send_task: Callable[..., None] | None = None):
        self.config = config
        self.name = name
        self.keys = wire.Keys(config.celery.queue)
        self.redis = client if client is not None else wire.connect(config, socket_timeout=10)
        self.send_task = send_task  # gives photos back to the queue (main.py's Celery app)
        self.max_retries = config.workers.max_retries
        self.limit = config.limits.photo_timeout
        self.ttl = wire.dedupe_ttl(config)
        self.sight = Sight(name, self.redis, self.keys)
        self._settings: dict[str, RenderSettings] = {}
        self._lock = threading.Lock()
        self._armed: tuple[float, str, str, str] | None = None  # deadline, key, task id, path
        self._tick = threading.Event()
        if self.limit:
            threading.Thread(target=self._watch, name="thumbwatch-deadline", daemon=True).start()

    def settings(self, settings_wire: dict) -> RenderSettings:
        text = json.dumps(settings_wire, sort_keys=True)
        if text not in self._settings:
            self._settings.clear()
            self._settings[text] = wire.settings_from_wire(settings_wire)
        return self._settings[text]

    def run_batch(self, task_id: str, photos: list, settings_wire: dict, sizes_wire: list) -> None:
        settings = self.settings(settings_wire)
        sizes = wire.sizes_from_wire(sizes_wire)
        unseen: list = []
        for photo in photos:
            key, path, size, mtime_ns, _ino, targets_wire, *where = photo
            root, marker = where if where else (None, None)
            if root is not None and not self.sight.sees(root, marker):
                unseen.append(photo)
                continue
            self.render_one(task_id, key, path, size, mtime_ns, wire.targets_from_wire(targets_wire, sizes), settings)
        if unseen:
            self.give_back(unseen, settings_wire, sizes_wire)

    def render_one(self, task_id: str, key: str, path: str, size: int, mtime_ns: int, targets: list[Target],
                   settings: RenderSettings) -> None:
        def claim() -> list:
            # built afresh on every try: a pipeline that failed half-way comes back empty
            pipe = self.redis.pipeline(transaction=False)
            pipe.exists(self.keys.job(key))
            pipe.hincrby(self.keys.tries(key), "n", 1)
            pipe.hget(self.keys.tries(key), "how")
            pipe.expire(self.keys.tries(key), self.ttl)
            pipe.set(self.keys.in_hand(task_id), f"{key} {os.getpid()}", ex=self.ttl)
            return pipe.execute()

        queued, starts, how, _, _ = self.retrying(claim)
        if not queued:
            return  # reported before this task came round again
        died = starts - 1
        if died > self.max_retries:
            how = how.decode() if how else "lost"
            self.report(task_id, key, path, results.CannotRender(f"worker died on it {died} times ({how})"))
            return
        if _fresh(path, size, mtime_ns, targets):
            self.report(task_id, key, path, results.Done(tuple(t.path for t in targets), 0.0, again=True))
            return
        with self._lock:
            self._armed = (time.monotonic() + self.limit, key, task_id, path)
        self._tick.set()
        try:
            result = results.attempt(path, targets, settings)
        finally:
            with self._lock:
                self._armed = None
        self.report(task_id, key, path, result)

    def give_back(self, photos: list, settings_wire: dict, sizes_wire: list) -> None:
        """Photos under a root this host cannot see: back to the queue as a new task, for another
        host; a note on the outcome stream lets the watcher count the bounces. The pause bounds how
        fast a host that sees nothing passes them round."""
        time.sleep(BOUNCE_PAUSE)
        assert self.send_task is not None, "a render host gives photos back through its Celery app"
        self.send_task(photos, settings_wire, sizes_wire)
        for photo in photos:
            logger.debug("gave back %s: its root is not visible here", photo[1])
        note = wire.bounced_message([p[0] for p in photos], self.name, os.getpid())
        self.retrying(lambda: self.redis.xadd(self.keys.outcomes, {"m": note}, maxlen=wire.STREAM_MAXLEN, approximate=True))

    def report(self, task_id: str, key: str, path: str, result: results.Result) -> None:
        message = wire.outcome_message(result, key, self.name, os.getpid())
        tally = {results.Done: "done", results.CannotRender: "failed", results.OverTime: "failed", results.Bug: "failed"}.get(type(result))

        def send() -> list:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(self.keys.outcomes, {"m": message}, maxlen=wire.STREAM_MAXLEN, approximate=True)
            pipe.delete(self.keys.job(key), self.keys.tries(key), self.keys.in_hand(task_id))
            if tally:
                pipe.hincrby(self.keys.host_stats(self.name), tally, 1)  # `thumbwatch worker`'s STATUS= line
            return pipe.execute()

        self.retrying(send)
        results.log_result(logger, path, result)

    def retrying(self, call: Callable[[], Any]) -> Any:
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
                delay = min(delay * 2, wire.BACKOFF_MAX)

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
                self.report(task_id, key, path, results.OverTime(self.limit))
            finally:
                os.kill(os.getpid(), signal.SIGKILL)


def _fresh(path: str, size: int, mtime_ns: int, targets: list[Target]) -> bool:
    """This photo version's thumbnails are up to date (the one freshness rule): rendered already."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) == (size, mtime_ns) and fresh(st, targets)


# ---- the Celery worker's main process: a pool process died -------------------------------------


class RenderRequest(Request):
    """Runs in the Celery worker's main process: notes which photo a dead pool process held,
    so the next start of that photo counts it, and tells the master. main.py sets `host_args`."""

    host_args: tuple[Config, str] | None = None

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        if isinstance(exc, (WorkerLostError, SystemExit)) and self.host_args is not None:
            try:
                note_lost(*self.host_args, self.id, lost_how(exc), self.worker_pid)
            except Exception:  # never let the bookkeeping stop Celery's own handling
                logger.exception("could not note the lost worker of task %s", self.id)
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


def note_lost(config: Config, name: str, task_id: str, how: str, pid: int | None) -> None:
    keys = wire.Keys(config.celery.queue)
    client = wire.connect(config)
    try:
        key = client.getdel(keys.in_hand(task_id))
        if not key:
            logger.info("pool process pid=%s %s (its photo's time limit, or between photos); replaced", pid, how)
            return
        key = key.decode().split()[0]
        client.hset(keys.tries(key), "how", how)
        starts = int(client.hget(keys.tries(key), "n") or 1)
        client.xadd(keys.outcomes, {"m": wire.lost_message(key, name, pid, how, starts)}, maxlen=wire.STREAM_MAXLEN, approximate=True)
        logger.error("pool process pid=%s %s with a photo in hand; the broker hands its task out again", pid, how)
    finally:
        client.close()


def lost_how(exc: BaseException) -> str:
    """Celery's "Worker exited prematurely: signal 9 (SIGKILL) Job: 0." in the pool's words."""
    text = str(exc)
    if "signal " in text:
        try:
            return results.describe_exit(-int(text.split("signal ", 1)[1].split()[0]))
        except (ValueError, IndexError):
            pass
    if "exitcode " in text:
        try:
            return results.describe_exit(int(text.split("exitcode ", 1)[1].split()[0].rstrip(".")))
        except (ValueError, IndexError):
            pass
    return text
