"""Admission: the one place that decides whether a photo is rendered now, later, or never, and
the one place that knows where each photo is.

Events, scans, reloads, retries and outcomes all come through here. A photo is in exactly one
place at a time, and `where(path)` says which:

  queued     waiting in the job queue (live lane or scan lane; jobs.py)
  held       back from a worker that died, or waiting out an output block
  settling   possibly still being written: queued once its size and mtime hold still, or,
             for a file just created, once it is closed after writing, whichever comes first;
             one whose render failed before its close-write came waits for that, or a minute
             without a change, its failure unsaid (settling.py)
  in-flight  with the executor (and, when an event came for it meanwhile, looked at again
             once its outcome is in: one render of a photo at a time)

`verdict()` applies the one freshness rule (thumbtree.fresh): a file replaced by another with
the same name, size and mtime (`mv`, `tar x`, `cp -p`) has a new ctime, so it is rendered again.
A change of attributes alone (chown, chmod, ACLs, xattrs, `touch -a`) changes the ctime too;
seen as it happens, with no write of the photo in progress, it costs a re-stamp of the
thumbnails (thumbtree.restamp), not a render.
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
from dataclasses import dataclass, replace

from . import treeevents
from .config import Config
from .backends.results import say_bug, say_failed, say_rendered, say_vanished
from .executor import Crashed, Failed, Job, Lost, OutputBlocked, Outcome, Rendered, Returned, TimedOut, Vanished
from .jobs import JobQueue
from .paths import PathRules, Target, shown
from .state import FailureStore
from .settling import Restamps, Settler
from .status import Stats
from .thumbtree import (carries_mtime, fresh, move_folder_thumbnails, remove_folder_thumbnails, remove_photo_thumbnails,
                        remove_thumbnails, restamp)

logger = logging.getLogger("watcher")

OUTPUT_BACKOFF_MAX = 60.0

# verdicts
RENDER, FRESH, FAILED_BEFORE, SETTLE, GONE = "render", "fresh", "failed before", "settle", "gone"


@dataclass
class OutputBlock:
    """Thumbnails cannot be written (disk full, folder unwritable): hold work, probe with back-off."""

    reason: str
    errno: int | None
    delay: float = 1.0
    next_try: float = 0.0
    probing: bool = False

    def may_probe(self, now: float) -> bool:
        return not self.probing and now >= self.next_try

    def blocked_again(self, reason: str, err_no: int | None, now: float) -> bool:
        """Another photo could not be written: a failed probe doubles the delay. True when the
        reason is a new one (worth an error line)."""
        if self.probing:
            self.probing = False
            self.delay = min(self.delay * 2, OUTPUT_BACKOFF_MAX)
            self.next_try = now + self.delay
        if err_no == self.errno:
            return False
        self.reason, self.errno = reason, err_no
        return True


class InFlight:
    """The photos with the executor, one render of a photo at a time. Those seen again meanwhile,
    or whose folder was renamed, are looked at again once their outcome is in."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.again: set[str] = set()  # seen again while rendered
        self.moved: dict[str, str] = {}  # its folder renamed meanwhile: its name now

    def __contains__(self, path: str) -> bool:
        return path in self.jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def add(self, job: Job) -> None:
        self.jobs[job.path] = job

    def look_again(self, path: str) -> None:
        self.again.add(path)

    def folder_moved(self, src: str, dest: str) -> None:
        prefix = src + os.sep
        for path in self.jobs:
            now = self.moved.get(path, path)
            if now.startswith(prefix):
                self.moved[path] = dest + now[len(src):]

    def done(self, job: Job) -> list[str]:
        """Its outcome is in: the names to look at again."""
        if self.jobs.get(job.path) is not job:
            return []
        del self.jobs[job.path]
        again = [job.path] if job.path in self.again else []
        self.again.discard(job.path)
        if job.path in self.moved:
            again.append(self.moved.pop(job.path))
        return again


class Admission:
    def __init__(self, config: Config, rules: PathRules, failures: FailureStore, stats: Stats, *,
                 wake: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time, present: Callable[[str], bool] = lambda path: True):
        self.config = config
        self.present = present  # roots.py: is the root of this path there? Nothing is removed under one that is not
        self.rules = rules
        self.failures = failures
        self.stats = stats
        self.clock = clock
        self.wallclock = wallclock
        self.queue = JobQueue(config.workers.queue_size, wake, root_of=lambda path: self.rules.root_of(path))  # fair by top-level folder
        self.held: deque[Job] = deque()
        self.settling = Settler(clock)
        self.restamps = Restamps(clock)
        self.in_flight = InFlight()
        self.block: OutputBlock | None = None
        self._ids = itertools.count(1)

    def reconfigure(self, config: Config, rules: PathRules) -> None:
        self.config, self.rules = config, rules
        self.queue.resize(config.workers.queue_size)

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
        return len(self.queue) + len(self.held)  # photos not yet handed to the executor

    def idle(self) -> bool:
        return not (self.queue or self.held or self.settling or self.in_flight or self.restamps)

    def verdict(self, path: str, st: os.stat_result, targets: tuple[Target, ...]) -> str:
        """What to do with a photo as it is on disk now. Safe to call from the scanner thread."""
        if self.failures.known(path, st):
            return FAILED_BEFORE
        if self.fresh(st, targets):
            return FRESH
        if self.wallclock() - st.st_mtime < self.config.watch.settle_seconds:
            return SETTLE  # possibly still being written
        return RENDER

    fresh = staticmethod(fresh)  # thumbtree's rule, for the scanner and the tests

    # ---- what producers say -----------------------------------------------------------------

    def arrived(self, path: str) -> None:
        """Closed after writing, or moved in (the observer; master thread)."""
        self.restamps.cancel(path)
        if not self.settling.closed(path):
            return  # suspected of being written in bursts: queued once it holds still
        if not self.queue.offer(path):
            logger.debug("queue full, %s will be found by the next rescan", shown(path))

    def scanned(self, path: str, stop: threading.Event) -> bool:
        """A scan found it stale (scanner thread): the scan lane, waiting for room."""
        return self.queue.put(path, stop)

    def retry_now(self, path: str) -> None:
        """`thumbwatch retry` through the control socket: the live lane, at once."""
        self.queue.offer(path)

    def failures_reloaded(self) -> None:
        """`thumbwatch retry` may have cleared records on disk (records not yet saved stay):
        those photos go to the live lane, ahead of the reload's rescan."""
        before = {path for path, _failure in self.failures.items()}
        self.failures.merge_from_disk()
        for path in sorted(before - {path for path, _failure in self.failures.items()}):
            if self.rules.wants(path):
                self.queue.offer(path)

    def settle(self, path: str) -> None:
        """Queue it once its size and mtime have held still for watch.settle_seconds."""
        self.restamps.cancel(path)
        if path not in self.settling and not self.queue.lane_of(path) and (st := _stat(path)) is not None:
            self.settling.wait(path, st)  # (once queued, a close-write said it is complete)

    def created(self, path: str) -> None:
        """A new name appeared. A hard link (ln) is complete at once. Anything else is most likely
        being written and its close-write will queue it; should none come, the settler does. That
        covers the hard link whose other name was removed before we looked (`ln staged x.jpg;
        rm staged`), which looks like a new file but will never be closed after writing."""
        self.restamps.cancel(path)
        if path in self.settling or self.queue.lane_of(path) or (st := _stat(path)) is None:
            return
        if st.st_nlink > 1 and st.st_size > 0:
            self.arrived(path)
        else:
            self.settling.wait(path, st, until_closed=True)

    def attributes_changed(self, path: str) -> None:
        """Only its attributes changed, as far as the events tell (events.py): thumbnails that carry
        its mtime show it still, and are re-stamped once every event from before is in (settling.py).
        Anything else (`touch` moved the mtime, a photo in hand) goes on as after a close-write."""
        if self.where(path) is None and (st := _stat(path)) is not None and self.rules.photo_followable(path):
            targets = self.rules.targets(path)
            if self.failures.known(path, st) or fresh(st, targets):
                return
            if carries_mtime(st, targets):
                self.restamps.wait(path, st, self.rules.root_of(path) or os.path.dirname(path))
                return
        self.arrived(path)

    def restamp_due(self, marker: str = "") -> None:
        """Re-stamp those whose wait is over (settling.py): `marker`, the barrier of its root."""
        for path, ctime_ns in self.restamps.passed(os.path.dirname(marker)) if marker else self.restamps.due():
            if self.where(path) is None and (st := _stat(path)) is not None:
                if st.st_ctime_ns == ctime_ns and restamp(st, self.rules.targets(path)):
                    self.stats.restamped += 1
                    logger.debug("re-stamped (attributes changed, content not): %s", shown(path))
                else:
                    self.arrived(path)  # changed again meanwhile, or waited too long: the verdict decides

    def deleted(self, path: str) -> None:
        """Deleted or renamed away. Whatever is on disk *now* decides: a new file already under
        this name (an editor's save, a tar x, cp --remove-destination) keeps its queued job."""
        self.restamps.cancel(path)
        if os.path.lexists(path):
            self.arrived(path)
            return
        self.queue.discard(path)
        self.settling.discard(path)
        self.failures.forget(path)
        if self.config.output.delete_with_photo and self.present(path):
            if removed := remove_photo_thumbnails(self.rules, path):
                logger.log(_photo_level(self.config), "removed %d thumbnail(s) of deleted %s", removed, shown(path))

    def folder_moved(self, src: str, dest: str) -> bool:
        """A folder renamed (`dest` empty: moved out of the tree). Inside the tree its thumbnails
        go along (its photos keep their identity: nothing is rendered again) and its photos in
        flight are looked at again under their new names once their outcomes are in; moved out,
        its thumbnails go. True when `dest` is a folder of the tree, worth a walk for photos the
        events did not name."""
        if not dest or not self.rules.followable(dest):
            self.folder_gone(src)
            return False
        if os.path.lexists(dest) and not os.path.isdir(dest):
            # a poll paired a folder that went with a new file that got its inode number
            self.folder_gone(src)
            if self.rules.wants(dest):
                self.settle(dest)
            return False
        self.in_flight.folder_moved(src, dest)
        move_folder_thumbnails(self.rules, src, dest)
        return True

    def folder_gone(self, folder: str) -> None:
        """A folder of the tree seen going (deleted, or moved out): its thumbnails go too."""
        if self.present(folder):  # not when its root is unavailable (roots.py): then it is only out of sight
            remove_folder_thumbnails(self.rules, folder)

    # ---- handing out work -------------------------------------------------------------------

    def next_job(self) -> Job | None:
        """The next photo to render, or None. During an output block, one probe at a time, with
        back-off."""
        block = self.block
        if block is not None and not block.may_probe(self.clock()):
            return None
        while True:
            if self.held:
                job = self.held.popleft()
            else:
                path = self.queue.pop()
                if path is None:
                    return None
                if path in self.in_flight:
                    self.in_flight.look_again(path)  # one render of a photo at a time: this one after it
                    continue
                job = self._admit(path)
                if job is None:
                    self.settling.done(path)
                    continue
            self.in_flight.add(job)
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
        for path in self.in_flight.done(job):
            self.queue.offer(path)
        if self.block is not None and not isinstance(outcome, (OutputBlocked, Returned, Lost)):
            logger.info("thumbnails can be written again; resuming %d held photo(s)", self.waiting())
            self.block = None
        match outcome:
            case Rendered(ms=ms, outputs=outputs, host=host):
                self.settling.done(job.path)
                treeevents.rendered(job.path, job.targets, outcome.thumbnails, ms, host, outcome.placeholder)
                self.stats.done += 1
                self.stats.render_ms.append(ms)
                self.failures.forget(job.path)
                shown_outputs = ", ".join(_short(self.rules.root_of(job.path), out) for out in outputs)
                say_rendered(logger, _photo_level(self.config), job.path, shown_outputs, ms, host)
            case Vanished(reason=reason):
                say_vanished(logger, job.path, reason)
                if os.path.lexists(job.path):
                    self.settle(job.path)  # replaced or rewritten: render what is there now
                else:
                    self.stats.vanished += 1
            case Failed(reason=reason, host=host):
                if self.settling.may_be_unfinished(job.path) and (st := _stat(job.path)):
                    logger.debug("failed before its close-write, waiting for that: %s (%s)", shown(job.path), reason)
                    self.settling.hold(job.path, st)  # settling.py: a paused writer, most likely
                elif _still_changing(job, self.wallclock() - self.config.watch.settle_seconds):
                    logger.debug("changed while rendering, will render again once it settles: %s", shown(job.path))
                    self.settle(job.path)
                else:
                    self._fail(job.path, _stat(job.path), reason + _on(host))
            case OutputBlocked(reason=reason, errno=err_no):
                self.held.appendleft(job)  # hold work, probe with back-off
                self.block = _block_output(self.block, reason, err_no, self.clock())
            case Returned():
                self.held.append(job)  # never started: no attempt counted
            case Lost(worker=worker, how=how):
                self._lost(job, worker, how)
            case TimedOut(limit=limit):
                self._fail(job.path, _stat(job.path), f"timed out after {limit:g} s")
            case Crashed(traceback=tb):
                say_bug(logger, job.path, tb)
                self._fail(job.path, _stat(job.path), "internal error (see the log)", log=False)

    def _lost(self, job: Job, worker: str, how: str) -> None:
        attempts, most = job.attempts + 1, self.config.workers.max_retries
        again = f" and retrying the photo (attempt {attempts + 1} of {most + 1})" if attempts <= most else ""
        logger.error("worker exited %s %s while rendering %s; restarting it%s", worker, how, shown(job.path), again)
        if not again:
            self._fail(job.path, _stat(job.path), f"worker died on it {attempts} times ({how})")
            return
        self.stats.retried += 1
        self.held.appendleft(replace(job, attempts=attempts))

    def _fail(self, path: str, st: os.stat_result | None, reason: str, *, log: bool = True) -> None:
        """Record it so it isn't retried until it changes; a thumbnail of what it held before
        would show the wrong picture, so it goes."""
        if not self.present(path):
            return  # its watched folder is unavailable (roots.py): no fault of the photo's
        self.settling.done(path)
        self.stats.failed += 1
        self.failures.record(path, st, reason)
        gone: list[str] = []
        if st is not None and self.config.output.style != "freedesktop" and self.rules.wants(path):
            remove_thumbnails(self.rules.targets(path), gone)
        treeevents.failed(path, reason, gone)
        if log:
            say_failed(logger, path, reason)

    # ---- time passing -----------------------------------------------------------------------

    def tick(self) -> None:
        """Queue the paths whose size and mtime have held still for settle_seconds; re-stamp
        those whose attributes alone changed and that stayed quiet since."""
        self.restamp_due()
        for path, st in self.settling.still(self.config.watch.settle_seconds):
            if self.failures.known(path, st) or self.fresh(st, self.rules.targets(path)):
                self.settling.discard(path)
            elif self.queue.offer(path):
                self.settling.queued(path)


def _block_output(block: OutputBlock | None, reason: str, err_no: int | None, now: float) -> OutputBlock:
    """One error line per condition (by errno), not one per photo."""
    if block is None:
        logger.error("cannot write thumbnails: %s; holding photos and retrying with back-off", reason)
        return OutputBlock(reason, err_no, next_try=now + 1.0)
    if block.blocked_again(reason, err_no, now):
        logger.error("cannot write thumbnails, now for another reason: %s", reason)
    return block


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _still_changing(job: Job, young_after: float) -> bool:
    """Modified during its render, or written so recently (an mtime after `young_after`) that a
    slow uploader may still be at it: a failure now may only mean 'not finished yet'."""
    st = _stat(job.path)
    if st is None:
        return False
    return (st.st_size, st.st_mtime_ns, st.st_ino) != (job.size, job.mtime_ns, job.ino) or st.st_mtime > young_after


def _photo_level(config: Config) -> int:
    return logging.DEBUG if config.log.photos == "debug" else logging.INFO


def _short(root: str | None, output: str) -> str:
    if root and output.startswith(root + os.sep):
        return output[len(root) + 1 :]
    return output


def _on(host: str) -> str:
    return f" on {host}" if host else ""


def _os_reason(err: OSError) -> str:
    if err.errno == errno.ENAMETOOLONG:
        return "path too long for the file system"
    return err.strerror or str(err)
