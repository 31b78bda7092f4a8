"""Catch-up and reconciliation walks: find every photo whose thumbnails are missing or stale.

Stat only, never a decode: a thumbnail is up to date when it exists and carries the photo's
mtime (render stamps it so). Files vanishing mid-walk are normal. The Scanner thread serves
scan requests one after another and feeds the job queue, waiting for room when it is full.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .jobs import JobQueue
from .paths import PathRules, Target, is_our_temp
from .state import FailureStore

logger = logging.getLogger(__name__)


def walk(rules: PathRules, top: str) -> Iterator[tuple[str, os.stat_result, tuple[Target, ...]]]:
    """Every wanted photo below `top` (a watched root or a folder inside one), with its stat and
    its thumbnails. Folder by folder, so the rules are worked out once per folder."""
    follow = rules.config.watch.follow_symlinks
    stack = [top]
    while stack:
        folder = stack.pop()
        here = rules.folder(folder)
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=follow):
                            if rules.wants_dir(entry.path) and (follow or not entry.is_symlink()):
                                stack.append(entry.path)
                        elif here.wants(entry.name) and entry.is_file(follow_symlinks=True):
                            if entry.is_symlink() and not follow and not _inside_roots(rules, entry.path):
                                continue
                            yield entry.path, entry.stat(follow_symlinks=True), here.targets(entry.name)
                    except FileNotFoundError:
                        continue
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError as err:
            logger.warning("cannot read folder %s: %s", folder, err.strerror)


def _inside_roots(rules: PathRules, link: str) -> bool:
    real = os.path.realpath(link)
    return any(real.startswith(root + os.sep) for root in rules.roots)


def needs_render(rules: PathRules, photo: str, st: os.stat_result, targets: tuple[Target, ...] | None = None) -> bool:
    for target in targets if targets is not None else rules.targets(photo):
        try:
            if os.stat(target.path).st_mtime_ns != st.st_mtime_ns:
                return True
        except OSError:
            return True
    return False


def remove_stale_temps(rules: PathRules) -> int:
    """Temp outputs left by a crashed or killed run: ours by name, safe to delete at start."""
    removed = 0
    for top in rules.temp_dirs():
        for folder, _dirs, files in os.walk(top):
            for name in files:
                if is_our_temp(name):
                    try:
                        os.unlink(os.path.join(folder, name))
                        removed += 1
                    except FileNotFoundError:
                        pass
    return removed


@dataclass
class ScanReport:
    what: str
    found: int = 0
    queued: int = 0
    skipped: int = 0
    known_failed: int = 0
    settling: int = 0
    seconds: float = 0.0
    complete: bool = True


class Scanner(threading.Thread):
    """Runs scan requests in order on its own thread; calls `done(report)` after each."""

    def __init__(self, jobs: JobQueue, failures: FailureStore, settle: Callable[[str], None], done: Callable[[ScanReport], None], settle_seconds: float):
        super().__init__(name="thumbwatch-scanner", daemon=True)
        self.jobs = jobs
        self.failures = failures
        self.settle = settle
        self.done = done
        self.settle_seconds = settle_seconds
        self.rules: PathRules | None = None
        self._requests: list[tuple[str, tuple[str, ...]]] = []
        self._cond = threading.Condition()
        self.stop_event = threading.Event()
        self.busy = False

    def request(self, what: str, tops: tuple[str, ...], rules: PathRules) -> None:
        with self._cond:
            self.rules = rules
            if (what, tops) not in self._requests:
                self._requests.append((what, tops))
            self._cond.notify()

    def idle(self) -> bool:
        with self._cond:
            return not self._requests and not self.busy

    def stop(self) -> None:
        self.stop_event.set()
        with self._cond:
            self._cond.notify()

    def run(self) -> None:
        while not self.stop_event.is_set():
            with self._cond:
                while not self._requests and not self.stop_event.is_set():
                    self._cond.wait()
                if self.stop_event.is_set():
                    return
                what, tops = self._requests.pop(0)
                rules = self.rules
                self.busy = True
            try:
                assert rules is not None
                self.done(self._scan(what, tops, rules))
            except Exception:
                logger.exception("scan %s failed", what)
            finally:
                with self._cond:
                    self.busy = False

    def _scan(self, what: str, tops: tuple[str, ...], rules: PathRules) -> ScanReport:
        report = ScanReport(what)
        started = time.monotonic()
        for top in tops:
            for photo, st, targets in walk(rules, top):
                if self.stop_event.is_set():
                    report.complete = False
                    break
                report.found += 1
                if self.failures.known(photo, st):
                    report.known_failed += 1
                elif not needs_render(rules, photo, st, targets):
                    report.skipped += 1
                elif time.time() - st.st_mtime < self.settle_seconds:
                    # Possibly still being written: let the settler queue it once it stops changing.
                    report.settling += 1
                    self.settle(photo)
                elif self.jobs.put(photo, self.stop_event):
                    report.queued += 1
        report.seconds = time.monotonic() - started
        return report
