"""Catch-up and reconciliation walks: the guarantee behind the events' fast path.

Stat only, never a decode. A full walk repairs both directions: every photo whose thumbnails
are missing or stale is queued (admission's verdict decides), and every thumbnail no photo maps
to any more — a photo deleted while we were down, a folder moved out, a size removed by a
reload — is removed (only files we would have written, inside our own output trees). Files
vanishing mid-walk are normal. The Scanner thread serves scan requests one after another and
feeds the job queue's scan lane, waiting for room when it is full.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .admission import FAILED_BEFORE, FRESH, SETTLE
from .paths import PathRules, Target, shown
from .roots import RootMonitor
from .thumbtree import sweep_orphans

logger = logging.getLogger(__name__)

def walk(rules: PathRules, top: str, unread: list[str] | None = None) -> Iterator[tuple[str, os.stat_result, tuple[Target, ...]]]:
    """Every wanted photo below `top` (a watched root or a folder inside one), with its stat and
    its thumbnails. Folder by folder, so the rules are worked out once per folder.

    With watch.follow_symlinks off no symlink is followed, to a file or a folder; with it on, a
    folder is entered once however many links lead to it, and never when it is an output tree.
    `unread` collects the folders that could not be read (their photos are not in the walk)."""
    follow = rules.config.watch.follow_symlinks
    if not os.path.isdir(top) or not rules.followable(top):
        return
    seen: set[tuple[int, int]] = set()
    stack = [top]
    while stack:
        folder = stack.pop()
        here = rules.folder(folder)
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_symlink() and not follow:
                            continue
                        if entry.is_dir():
                            if rules.wants_dir(entry.path) and _first_visit(rules, entry, seen, follow):
                                stack.append(entry.path)
                        elif here.wants(entry.name) and entry.is_file():
                            yield entry.path, entry.stat(), here.targets(entry.name)
                    except FileNotFoundError:
                        continue
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as err:
            logger.warning("cannot read folder %s: %s", shown(folder), _folder_reason(folder, err))
            if unread is not None:
                unread.append(folder)


def _folder_reason(folder: str, err: OSError) -> str:
    if err.errno == errno.ENAMETOOLONG:
        return f"path too long: {len(os.fsencode(folder))} bytes, the limit is {os.pathconf('/', 'PC_PATH_MAX') - 1}"
    return err.strerror or str(err)


def _first_visit(rules: PathRules, entry: os.DirEntry, seen: set[tuple[int, int]], follow: bool) -> bool:
    """Following symlinks, a linked folder is entered only when it leads out of the watched
    folders (whatever lies inside them is walked under its own name: a link to `..` or into an
    output tree is never followed), and each folder once however many links lead to it."""
    if not follow:
        return True
    st = entry.stat()
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return False
    seen.add(key)
    return not entry.is_symlink() or rules.followable(entry.path)


@dataclass
class ScanReport:
    what: str
    found: int = 0
    queued: int = 0
    skipped: int = 0
    known_failed: int = 0
    settling: int = 0
    orphans: int = 0
    seconds: float = 0.0

    def log(self) -> None:
        """One line per walk: INFO for the catch-up and for walks that found work, else DEBUG."""
        level = logging.INFO if self.what == "catch-up" or self.queued else logging.DEBUG
        logger.log(level, "%s done: found=%d queued=%d skipped=%d failed_before=%d settling=%d in %.2f s",
                   self.what, self.found, self.queued, self.skipped, self.known_failed, self.settling, self.seconds)
        if self.orphans:
            logger.info("removed %d thumbnail(s) whose photo is gone", self.orphans)


class Scanner(threading.Thread):
    """Runs scan requests in order on its own thread; calls `done(report)` after each.

    `admission` gives the verdict and takes the stale photos (scan lane); `settle(path)` hands a
    path that may still be being written to the master."""

    def __init__(self, admission, settle: Callable[[str], None], done: Callable[[ScanReport], None],
                 roots: RootMonitor | None = None):
        super().__init__(name="thumbwatch-scanner", daemon=True)
        self.roots = roots  # which roots are there (roots.py): nothing is swept under one that is not
        self.admission = admission
        self.settle = settle
        self.done = done
        self._requests: list[tuple[str, tuple[str, ...], PathRules]] = []
        self._cond = threading.Condition()
        self.stop_event = threading.Event()
        self.busy = False

    def request(self, what: str, tops: tuple[str, ...], rules: PathRules) -> None:
        with self._cond:
            if not any(r[:2] == (what, tops) for r in self._requests):
                self._requests.append((what, tops, rules))
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
                what, tops, rules = self._requests.pop(0)
                self.busy = True
            try:
                report = self.scan(what, tops, rules)
                if report is not None:
                    self.done(report)
            except Exception:
                logger.exception("scan %s failed", what)
            finally:
                with self._cond:
                    self.busy = False

    def scan(self, what: str, tops: tuple[str, ...], rules: PathRules) -> ScanReport | None:
        """One walk; None if stopped half-way. It also sweeps orphans from the thumbnails of what
        it walked: the whole output trees after a walk of every watched folder, a folder's own
        thumbnail folders after a walk of that folder (one renamed into place may bring
        thumbnails of photos that are not in it: a polling observer pairs moves by inode
        number, and can pair the wrong ones)."""
        report = ScanReport(what)
        started = time.monotonic()
        since_ns = time.time_ns()
        sweep = rules.sweepable()
        if set(tops) == set(rules.roots):
            sweep_tops = list(rules.output_roots)
        else:
            sweep_tops = [base for top in tops if top not in rules.roots for _size, base in rules.folder(top).bases]
        expected: set[str] = set()
        before = self._available_roots(rules, tops)
        unread: list[str] = []
        for top in tops:
            if rules.root_of(top) not in before:
                continue  # its root is unavailable (roots.py): what is there now is not our folder
            for photo, st, targets in walk(rules, top, unread):
                if self.stop_event.is_set():
                    return None
                report.found += 1
                if sweep:
                    expected.update(t.path for t in targets)
                verdict = self.admission.verdict(photo, st, targets)
                if verdict == FAILED_BEFORE:
                    report.known_failed += 1
                elif verdict == FRESH:
                    report.skipped += 1
                elif verdict == SETTLE:
                    report.settling += 1
                    self.settle(photo)
                elif self.admission.scanned(photo, self.stop_event):
                    report.queued += 1
        if sweep:
            report.orphans = self._sweep(rules, tops, sweep_tops, expected, since_ns, before, unread)
        report.seconds = time.monotonic() - started
        return report

    # ---- absence is not deletion (roots.py) ----------------------------------------------------

    def _available_roots(self, rules: PathRules, tops: tuple[str, ...]) -> dict[str, int]:
        """The roots of `tops` that are available now, each with its epoch (bumped when it goes)."""
        if self.roots is None:
            return {root: 0 for root in rules.roots}
        wanted = {rules.root_of(top) for top in tops}
        return {root: self.roots.epoch.get(root, 0) for root in rules.roots if root in wanted and self.roots.check(root) is None}

    def _sweep(self, rules: PathRules, tops: tuple[str, ...], sweep_tops: list[str], expected: set[str], since_ns: int,
               before: dict[str, int], unread: list[str]) -> int:
        """Sweep only under roots that were there all through the walk (looked at again now, and
        not gone meanwhile) and whose every folder could be read; a mass removal is held."""
        if self.roots is None:
            return sweep_orphans(rules, [o for o in sweep_tops if os.path.isdir(o)], expected, since_ns)
        for folder in unread:
            root = rules.root_of(folder)
            if root is not None:
                self.roots.check(root)  # an error walking it may be the storage going
        ok = {root for root, epoch in before.items()
              if self.roots.check(root) is None and self.roots.epoch.get(root, 0) == epoch
              and not any(rules.root_of(folder) == root for folder in unread)}
        confirmed = not rules.config.output.confirm_mass_removal
        removed = 0
        for root in sorted(ok):
            if set(tops) == set(rules.roots):
                mine = [rules.output_roots[rules.roots.index(root)]]
            else:
                mine = [base for top in tops if top not in rules.roots and rules.root_of(top) == root
                        for _size, base in rules.folder(top).bases]
            mine = [o for o in mine if os.path.isdir(o)]
            if mine:
                removed += sweep_orphans(rules, mine, expected, since_ns, self.roots.removal_guard(root, confirmed=confirmed))
        return removed
