"""Admission: the one place that decides whether a photo is rendered now, later, or never, and
the one place that knows where each photo is.

Events, scans, reloads, retries and outcomes all come through here. A photo is in exactly one
place at a time, and `where(path)` says which:

  queued     waiting in the job queue (live lane or scan lane; jobs.py)
  held       back from a worker that died, or waiting out an output block
  settling   possibly still being written: queued once its size and mtime hold still, or,
             for a file just created, once it is closed after writing, whichever comes first
  in-flight  with the executor (and, when an event came for it meanwhile, looked at again
             once its outcome is in: one render of a photo at a time)

`verdict()` is the one freshness rule: a thumbnail is up to date when it carries the photo's
mtime (at the precision of the file system holding it) and was written after the photo last
changed (its ctime is not older than the photo's). A file replaced by another with the same
name, size and mtime (`mv`, `tar x`, `cp -p`) has a new ctime, which nobody can set by hand, so
it is rendered again; a folder renamed keeps its photos' ctimes, so its moved thumbnails stay.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .config import Config
from .executor import Crashed, Failed, Job, Lost, OutputBlocked, Outcome, Rendered, Returned, TimedOut, Vanished
from .jobs import JobQueue
from .paths import PathRules, Target, shown
from .state import FailureStore
from .thumbtree import fresh, remove_thumbnails

logger = logging.getLogger("watcher")

OUTPUT_BACKOFF_MAX = 60.0

# verdicts
RENDER, FRESH, FAILED_BEFORE, SETTLE, GONE = "render", "fresh", "failed before", "settle", "gone"


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    done: int = 0
    failed: int = 0
    skipped: int = 0
    retried: int = 0
    vanished: int = 0
    render_ms: deque = field(default_factory=lambda: deque(maxlen=2048))

    def percentile(self, q: float) -> float | None:
        if not self.render_ms:
            return None
        ordered = sorted(self.render_ms)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


@dataclass
class OutputBlock:
    """Thumbnails cannot be written (disk full, folder unwritable): hold work, probe with back-off."""

    reason: str
    errno: int | None
    delay: float = 1.0
    next_try: float = 0.0
    probing: bool = False


@dataclass
class Settling:
    size: int
    mtime_ns: int
    since: float
    until_closed: bool = False  # just created: its close-write ends the wait (the settler is the fallback)


class Admission:
    def __init__(self, config: Config, rules: PathRules, failures: FailureStore, stats: Stats, *,
                 wake: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time):
        self.config = config
        self.rules = rules
        self.failures = failures
        self.stats = stats
        self.clock = clock
        self.wallclock = wallclock
        self.queue = JobQueue(config.workers.queue_size, wake)
        self.held: deque[Job] = deque()
        self.settling: dict[str, Settling] = {}
        self.in_flight: dict[str, Job] = {}
        self.again: set[str] = set()  # in flight, and seen again meanwhile
        self.moved: dict[str, str] = {}  # in flight when its folder was renamed: its name now
        self.block: OutputBlock | None = None
        self._ids = itertools.count(1)

    def reconfigure(self, config: Config, rules: PathRules) -> None:
        self.config, self.rules = config, rules
        self.queue.resize(config.workers.queue_size)

    # ---- where is it -----------------------------------------------------------------------

    def where(self, path: str) -> str | None:
        if path in self.in_flight:
            return "in-flight"
        if path in self.settling:
            return "settling"
        if any(job.path == path for job in self.held):
            return "held"
        if self.queue.lane_of(path):
            return "queued"
        return None

    def waiting(self) -> int:
        """Photos not yet handed to the executor."""
        return len(self.queue) + len(self.held)

    def idle(self) -> bool:
        return not (self.queue or self.held or self.settling or self.in_flight)

    # ---- the one freshness rule -------------------------------------------------------------

    def verdict(self, path: str, st: os.stat_result, targets: tuple[Target, ...]) -> str:
        """What to do with a photo as it is on disk now. Safe to call from the scanner thread."""
        if self.failures.known(path, st):
            return FAILED_BEFORE
        if self.fresh(st, targets):
            return FRESH
        if self.wallclock() - st.st_mtime < self.config.watch.settle_seconds:
            return SETTLE  # possibly still being written
        return RENDER

    def fresh(self, st: os.stat_result, targets: tuple[Target, ...]) -> bool:
        return fresh(st, targets)

    # ---- what producers say -----------------------------------------------------------------

    def arrived(self, path: str) -> None:
        """Closed after writing, or moved in (the observer; master thread)."""
        waiting = self.settling.get(path)
        if waiting is not None:
            if not waiting.until_closed:
                return  # suspected of being written in bursts: the settler queues it once it holds still
            del self.settling[path]
        if not self.queue.offer(path):
            logger.debug("queue full, %s will be found by the next rescan", shown(path))

    def scanned(self, path: str, stop: threading.Event) -> bool:
        """A scan found it stale (scanner thread): the scan lane, waiting for room."""
        return self.queue.put(path, stop)

    def retry_now(self, path: str) -> None:
        """`thumbwatch retry`: the live lane."""
        self.queue.offer(path)

    def settle(self, path: str) -> None:
        """Queue it once its size and mtime have held still for watch.settle_seconds."""
        if path in self.settling or self.queue.lane_of(path):
            return  # already queued: a close-write (inotify) said it is complete
        st = _stat(path)
        if st is not None:
            self.settling[path] = Settling(st.st_size, st.st_mtime_ns, self.clock())

    def created(self, path: str) -> None:
        """A new name appeared. A hard link (ln) is complete at once. Anything else is most likely
        being written and its close-write will queue it; should none come, the settler does. That
        covers the hard link whose other name was removed before we looked (`ln staged x.jpg;
        rm staged`), which looks like a new file but will never be closed after writing."""
        if path in self.settling or self.queue.lane_of(path):
            return
        st = _stat(path)
        if st is None:
            return
        if st.st_nlink > 1 and st.st_size > 0:
            self.arrived(path)
        else:
            self.settling[path] = Settling(st.st_size, st.st_mtime_ns, self.clock(), until_closed=True)

    def deleted(self, path: str) -> None:
        """Deleted or renamed away. Whatever is on disk *now* decides: a new file already under
        this name (an editor's save, a tar x, cp --remove-destination) keeps its queued job."""
        if os.path.lexists(path):
            self.arrived(path)
            return
        self.queue.discard(path)
        self.settling.pop(path, None)
        self.failures.forget(path)
        if self.config.output.delete_with_photo:
            removed = remove_thumbnails(self.rules.targets(path))
            if removed:
                logger.log(self._photo_level(), "removed %d thumbnail(s) of deleted %s", removed, shown(path))

    def folder_moved(self, src: str, dest: str) -> None:
        """A folder renamed inside the tree: its photos in flight are looked at again under their
        new names once their outcomes are in. Their thumbnails were written into the folder the
        master was moving, or removed because the photo was no longer where it was read from."""
        prefix = src + os.sep
        for path in self.in_flight:
            now = self.moved.get(path, path)
            if now.startswith(prefix):
                self.moved[path] = dest + now[len(src):]

    # ---- handing out work -------------------------------------------------------------------

    def next_job(self) -> Job | None:
        """The next photo to render, or None. During an output block, one probe at a time, with
        back-off."""
        block = self.block
        if block is not None:
            if block.probing or self.clock() < block.next_try:
                return None
        while True:
            if self.held:
                job = self.held.popleft()
            else:
                path = self.queue.pop()
                if path is None:
                    return None
                if path in self.in_flight:
                    self.again.add(path)  # one render of a photo at a time: this one after it
                    continue
                job = self._admit(path)
                if job is None:
                    continue
            self.in_flight[job.path] = job
            if block is not None:
                block.probing = True
            return job

    def _admit(self, path: str) -> Job | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            logger.debug("vanished before rendering: %s", shown(path))
            self.stats.vanished += 1
            return None
        except OSError as err:
            self._fail(path, None, _os_reason(err))
            return None
        if not self.rules.photo_followable(path):
            logger.debug("not followed (a symlink, and watch.follow_symlinks is off): %s", shown(path))
            return None
        targets = self.rules.targets(path)
        verdict = self.verdict(path, st, targets)
        if verdict == FAILED_BEFORE:
            logger.debug("skipped (failed before, unchanged): %s", shown(path))
            return None
        if verdict == FRESH:
            logger.debug("skipped (thumbnails up to date): %s", shown(path))
            self.stats.skipped += 1
            return None
        if st.st_size == 0 and verdict == SETTLE:
            # Samba and some uploaders create an empty file, close it, then write: wait and see.
            self.settle(path)
            return None
        return Job(next(self._ids), path, st.st_size, st.st_mtime_ns, targets, st.st_ino)

    # ---- what came back ---------------------------------------------------------------------

    def on_outcome(self, outcome: Outcome) -> None:
        job = outcome.job
        if self.in_flight.get(job.path) is job:
            del self.in_flight[job.path]
            if job.path in self.again:
                self.again.discard(job.path)
                self.queue.offer(job.path)  # seen again while it was rendered: look once more
            if job.path in self.moved:
                self.queue.offer(self.moved.pop(job.path))
        if self.block is not None and not isinstance(outcome, (OutputBlocked, Returned, Lost)):
            self._output_ok()
        match outcome:
            case Rendered(ms=ms, outputs=outputs, host=host):
                self.stats.done += 1
                self.stats.render_ms.append(ms)
                self.failures.forget(job.path)
                shown_outputs = ", ".join(self._short(job.path, out) for out in outputs)
                logger.log(self._photo_level(), "ok %s -> %s in %.0f ms%s", shown(job.path), shown(shown_outputs), ms, _on(host))
            case Vanished(reason=reason):
                logger.debug("vanished or changed while rendering: %s (%s)", shown(job.path), reason)
                if os.path.lexists(job.path):
                    self.settle(job.path)  # replaced or rewritten: render what is there now
                else:
                    self.stats.vanished += 1
            case Failed(reason=reason, host=host):
                if self._still_changing(job):
                    logger.debug("changed while rendering, will render again once it settles: %s", shown(job.path))
                    self.settle(job.path)
                else:
                    self._fail(job.path, _stat(job.path), reason + _on(host))
            case OutputBlocked(reason=reason, errno=err_no):
                self._output_blocked(job, reason, err_no)
            case Returned():
                self.held.append(job)  # never started: no attempt counted
            case Lost(worker=worker, how=how):
                self._lost(job, worker, how)
            case TimedOut(limit=limit):
                self._fail(job.path, _stat(job.path), f"timed out after {limit:g} s")
            case Crashed(traceback=tb):
                logger.error("bug while rendering %s (please report it):\n%s", shown(job.path), tb.rstrip())
                self._fail(job.path, _stat(job.path), "internal error (see the log)", log=False)

    def _lost(self, job: Job, worker: str, how: str) -> None:
        attempts = job.attempts + 1
        if attempts > self.config.workers.max_retries:
            logger.error("worker exited %s %s while rendering %s; restarting it", worker, how, shown(job.path))
            self._fail(job.path, _stat(job.path), f"worker died on it {attempts} times ({how})")
            return
        self.stats.retried += 1
        logger.error(
            "worker exited %s %s while rendering %s; restarting it and retrying the photo (attempt %d of %d)",
            worker, how, shown(job.path), attempts + 1, self.config.workers.max_retries + 1,
        )
        self.held.appendleft(replace(job, attempts=attempts))

    def _still_changing(self, job: Job) -> bool:
        """Modified during its render, or written so recently that a slow uploader may still be
        at it: a failure now may only mean 'not finished yet'."""
        st = _stat(job.path)
        if st is None:
            return False
        changed = (st.st_size, st.st_mtime_ns, st.st_ino) != (job.size, job.mtime_ns, job.ino)
        young = self.wallclock() - st.st_mtime < self.config.watch.settle_seconds
        return changed or young

    def _fail(self, path: str, st: os.stat_result | None, reason: str, *, log: bool = True) -> None:
        """Record it so it isn't retried until it changes; a thumbnail of what it held before
        would show the wrong picture, so it goes."""
        self.stats.failed += 1
        self.failures.record(path, st, reason)
        if st is not None and self.config.output.style != "freedesktop" and self.rules.wants(path):
            remove_thumbnails(self.rules.targets(path))
        if log:
            logger.warning("failed %s: %s", shown(path), reason)

    def _output_blocked(self, job: Job, reason: str, err_no: int | None) -> None:
        """One error line per condition (by errno), not one per photo: hold work, probe with back-off."""
        self.held.appendleft(job)
        block = self.block
        if block is None:
            self.block = OutputBlock(reason, err_no, next_try=self.clock() + 1.0)
            logger.error("cannot write thumbnails: %s; holding photos and retrying with back-off", reason)
            return
        if block.probing:
            block.probing = False
            block.delay = min(block.delay * 2, OUTPUT_BACKOFF_MAX)
            block.next_try = self.clock() + block.delay
        if err_no != block.errno:
            logger.error("cannot write thumbnails, now for another reason: %s", reason)
            block.reason, block.errno = reason, err_no

    def _output_ok(self) -> None:
        logger.info("thumbnails can be written again; resuming %d held photo(s)", self.waiting())
        self.block = None

    # ---- time passing -----------------------------------------------------------------------

    def tick(self) -> None:
        """Queue the paths whose size and mtime have held still for settle_seconds."""
        now = self.clock()
        quiet = self.config.watch.settle_seconds
        for path, seen in list(self.settling.items()):
            st = _stat(path)
            if st is None:
                del self.settling[path]
            elif (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns):
                self.settling[path] = replace(seen, size=st.st_size, mtime_ns=st.st_mtime_ns, since=now)
            elif now - seen.since >= quiet:
                if self.failures.known(path, st) or self.fresh(st, self.rules.targets(path)):
                    del self.settling[path]
                elif self.queue.offer(path):
                    del self.settling[path]

    def _photo_level(self) -> int:
        return logging.DEBUG if self.config.log.photos == "debug" else logging.INFO

    def _short(self, photo: str, output: str) -> str:
        root = self.rules.root_of(photo)
        if root and output.startswith(root + os.sep):
            return output[len(root) + 1 :]
        return output


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _on(host: str) -> str:
    return f" on {host}" if host else ""


def _os_reason(err: OSError) -> str:
    if err.errno == errno.ENAMETOOLONG:
        return "path too long for the file system"
    return err.strerror or str(err)
