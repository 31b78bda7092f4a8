"""A polling observer for big trees and network mounts, behind watchdog's observer API.

watchdog's polling observer re-stats every file at every poll and keeps a snapshot of the
whole tree: at a million photos that is most of a core and gigabytes. This one leans on a
rule every POSIX file system keeps: adding, removing or renaming a name in a folder changes
that folder's mtime and ctime. So a poll stats each *folder* and lists only those whose
stamp (inode, mtime, ctime) changed: one stat per folder, not per file.

What that rule cannot see — a file rewritten in place (`rsync --inplace`, an editor writing
into the same inode) changes no folder — a background sweep finds: it re-stats the files,
`budget` of them per second, so a round takes files / budget seconds, and a rewrite is
reported within that plus two poll intervals (sweep_bound).

Coarse timestamps (1 s on ext4 with 128-byte inodes, 2 s on FAT, whatever an NFS server
keeps): a second change to a folder within one tick leaves its stamp as it was. So a folder
whose stamp changed is listed again at every poll until COARSEST_STAMP seconds have passed
since the change was seen; any change after that lands in a later tick. Only durations are
compared, never our clock with the file server's.

Memory: per folder its stamp, its file names in one string, and (inode, mtime, size) per
file in one array. Our own output trees are never listed (the lister leaves them out). A
listing that fails (EIO, a stale handle) changes nothing, and neither does a folder whose name
leads to another inode while its parent has not changed (a disk unmounted there): absence is
only believed when the parent folder's listing says a name is gone. (An unmounted or remounted
watched folder itself is polled afresh, without taking the difference for changes.)

The events are watchdog's, in an order the master can act on: a folder's move before
anything inside it, deletions before creations of the same name.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from functools import partial

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
)
from watchdog.observers.api import DEFAULT_EMITTER_TIMEOUT, BaseObserver, EventEmitter, EventQueue, ObservedWatch

logger = logging.getLogger(__name__)

# The coarsest folder timestamp allowed for, in seconds (FAT keeps 2 s, ext4 with 128-byte inodes 1 s).
COARSEST_STAMP = 2.0
# Files found by the first listing with a ctime this recent (seconds, either side of our clock, for
# a file server's clock that disagrees) are reported as created: they may have arrived after the
# start's catch-up walk went by.
BASELINE_MARGIN = 30.0

Lister = Callable[[str], Iterable[os.DirEntry]]
Descend = Callable[[os.DirEntry], bool]


class Folder:
    """What the poller knows of one folder: its stamp, its files, its subfolders."""

    __slots__ = ("path", "ino", "stamp", "names", "stats", "dirs", "alive")

    def __init__(self, path: str, ino: int):
        self.path = path
        self.ino = ino  # as its parent's listing found it (followed, for a folder symlink)
        self.stamp: tuple[int, int, int] | None = None  # (inode, mtime_ns, ctime_ns) when last listed
        self.names = ""  # file names joined by NUL (no file name holds one)
        self.stats = array("q")  # inode, mtime_ns, size per file, in the order of names
        self.dirs: dict[str, Folder] = {}
        self.alive = True

    def files(self) -> list[str]:
        return self.names.split("\0") if self.names else []

    def walk(self) -> Iterator[Folder]:
        stack = [self]
        while stack:
            folder = stack.pop()
            yield folder
            stack.extend(folder.dirs.values())

    def rename(self, path: str) -> None:
        old = len(self.path)
        for folder in self.walk():
            folder.path = path + folder.path[old:]


class Changes:
    """What one poll found, kept in the order the events go out."""

    def __init__(self) -> None:
        self.dir_moves: list[tuple[str, str]] = []
        self.file_moves: list[tuple[str, str]] = []  # the files of moved folders, for their photos in progress
        self.deleted_files: list[str] = []
        self.deleted_dirs: list[str] = []
        self.created_files: list[str] = []
        self.created_dirs: list[str] = []
        self.gone: dict[int, list[Folder]] = {}  # folders gone from a listed parent, by inode: perhaps moved
        self.new: list[tuple[Folder, str, int]] = []  # (parent, name, inode) of folders new in a listed parent

    def events(self) -> list[FileSystemEvent]:
        return ([DirMovedEvent(s, d) for s, d in self.dir_moves] + [FileMovedEvent(s, d) for s, d in self.file_moves]
                + [FileDeletedEvent(p) for p in self.deleted_files]
                + [DirDeletedEvent(p) for p in self.deleted_dirs]
                + [FileCreatedEvent(p) for p in self.created_files] + [DirCreatedEvent(p) for p in self.created_dirs])


class PolledTree:
    """One watched folder's tree, polled by folder stamps and swept by a budget. Drives no
    thread of its own: the emitter calls baseline(), then poll() and sweep() at each tick."""

    def __init__(self, root: str, *, lister: Lister, descend: Descend, recursive: bool = True,
                 stopping: Callable[[], bool] = lambda: False, clock: Callable[[], float] = time.monotonic):
        self.root = Folder(root, 0)
        self.lister = lister
        self.descend = descend
        self.recursive = recursive
        self.stopping = stopping
        self.clock = clock
        self._reset()

    def _reset(self) -> None:
        self.root = Folder(self.root.path, 0)
        self.identity: tuple[int, int] | None = None  # the root's (device, inode)
        self.recent: dict[Folder, float] = {}  # folders listed again until then (coarse stamps)
        self.files = 0
        self.folders = 0
        self.failing: set[str] = set()  # folders whose listing fails, said once
        self.swapped: set[str] = set()  # folders found to be another inode than their parent listed
        self._round: list[Folder] = []
        self._cursor = (0, 0, "")  # folder index in the round, file index, that folder's names then
        self._since: int | None = None  # while the baseline runs: files changed since then are reported

    # ---- the tree -------------------------------------------------------------------------

    def baseline(self) -> list[FileSystemEvent] | None:
        """The first listing of the whole tree: no events but for files changed moments ago
        (see BASELINE_MARGIN); None if stopped half-way."""
        try:
            st = os.stat(self.root.path)
        except OSError:
            return None
        self.identity = (st.st_dev, st.st_ino)
        self._since = time.time_ns() - int(BASELINE_MARGIN * 1e9)
        try:
            changes = self._poll(Changes())
        finally:
            self._since = None
        if changes is None:
            return None
        self._count()
        return [FileCreatedEvent(path) for path in changes.created_files]

    def poll(self) -> list[FileSystemEvent] | None:
        """One poll: stat every folder, list those whose stamp changed. None if stopped
        half-way; a DirDeletedEvent of the root if it is gone."""
        try:
            st = os.stat(self.root.path)
        except (FileNotFoundError, NotADirectoryError):
            return [DirDeletedEvent(self.root.path)]
        except OSError as err:
            self._failed(self.root.path, err)
            return []
        if (st.st_dev, st.st_ino) != self.identity:
            # an unmount, a remount, a folder put in its place: not a change of its photos
            logger.warning("watched folder %s is another folder now (device or inode changed: unmounted or remounted?); "
                           "polling it afresh without taking the difference for changes", self.root.path)
            self._reset()
            return self.baseline()
        changes = self._poll(Changes())
        return None if changes is None else changes.events()

    def _poll(self, changes: Changes) -> Changes | None:
        if not self._check([self.root], changes):
            return None
        while changes.new:  # folders new in a listed parent: moved from where one went, or new
            new, changes.new = changes.new, []
            found = []
            for parent, name, ino in new:
                path = os.path.join(parent.path, name)
                candidates = changes.gone.get(ino)
                if candidates:
                    folder = candidates.pop()
                    changes.dir_moves.append((folder.path, path))
                    cut = len(folder.path)
                    for inside in folder.walk():
                        changes.file_moves.extend((os.path.join(inside.path, file), os.path.join(path + inside.path[cut:], file))
                                                  for file in inside.files())
                    folder.rename(path)
                else:
                    folder = Folder(path, ino)
                    changes.created_dirs.append(path)
                parent.dirs[name] = folder
                found.append(folder)
            if not self._check(found, changes):
                return None
        for folders in changes.gone.values():
            for gone in folders:
                for folder in gone.walk():
                    folder.alive = False
                    changes.deleted_files.extend(os.path.join(folder.path, name) for name in folder.files())
                    changes.deleted_dirs.append(folder.path)
                    self.recent.pop(folder, None)
        return changes

    def _check(self, tops: list[Folder], changes: Changes) -> bool:
        """Stat each folder, list those whose stamp changed. The loop a poll spends its time in:
        at a million photos it runs 10,000 times every poll_interval, so it stays lean."""
        stack = list(tops)
        stopping, recent, stat = self.stopping, self.recent, os.stat
        n = 0
        while stack:
            n += 1
            if n & 63 == 1 and stopping():
                return False
            folder = stack.pop()
            try:
                st = stat(folder.path)
            except (FileNotFoundError, NotADirectoryError):
                continue  # gone: its parent's listing says so
            except OSError as err:
                self._failed(folder.path, err)
                continue
            if folder.ino and st.st_ino != folder.ino:
                # the name leads to another folder, and its parent's listing did not say so: a
                # file system mounted or unmounted there (or a rename since the parent was
                # looked at: the next poll tells). Its photos are not taken for deleted.
                if folder.path in self.swapped:
                    self._failed(folder.path, OSError(errno.ESTALE, "another folder is there now (unmounted?)"))
                self.swapped.add(folder.path)
                continue
            if self.failing:
                self.failing.discard(folder.path)
            if self.swapped:
                self.swapped.discard(folder.path)
            stamp = folder.stamp
            if stamp is None or st.st_ctime_ns != stamp[2] or st.st_mtime_ns != stamp[1] or st.st_ino != stamp[0]:
                if self._since is None or st.st_ctime_ns >= self._since:
                    recent[folder] = self.clock() + COARSEST_STAMP
                self._list(folder, (st.st_ino, st.st_mtime_ns, st.st_ctime_ns), changes)
            elif recent and folder in recent:
                if self.clock() >= recent[folder]:
                    del recent[folder]  # this listing starts a tick after the last change
                self._list(folder, stamp, changes)
            if folder.dirs:
                stack.extend(folder.dirs.values())
        return True

    def _list(self, folder: Folder, stamp: tuple[int, int, int], changes: Changes) -> None:
        """List one folder and compare with what it held: one stat per new or replaced name."""
        try:
            entries = list(self.lister(folder.path))
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as err:
            self._failed(folder.path, err)
            return
        old_names = folder.files()
        old = dict(zip(old_names, range(len(old_names))))
        old_stats = folder.stats
        names: list[str] = []
        stats = array("q")
        dirs: dict[str, Folder] = {}
        for entry in entries:
            name = entry.name
            try:
                if entry.is_dir():
                    if not self._descends(entry, folder):
                        continue  # a folder not watched (hidden, ignored, a symlink not followed)
                    ino = entry.stat().st_ino
                    known = folder.dirs.get(name)
                    if known is not None and known.ino == ino:
                        dirs[name] = known
                    else:
                        changes.new.append((folder, name, ino))
                    continue
                i = old.get(name)
                if i is not None and old_stats[3 * i] == entry.inode():
                    stats.extend(old_stats[3 * i: 3 * i + 3])  # the same file: in-place changes are the sweep's
                else:
                    st = entry.stat(follow_symlinks=False)
                    if i is not None and old_stats[3 * i] == st.st_ino:  # d_ino and st_ino disagree (overlayfs)
                        stats.extend(old_stats[3 * i: 3 * i + 3])
                    else:
                        if i is not None:
                            changes.deleted_files.append(entry.path)
                        if self._since is None or st.st_ctime_ns >= self._since:
                            changes.created_files.append(entry.path)
                        stats.extend((st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                continue  # gone between the listing and the stat
            except OSError as err:
                if err.errno not in (errno.ENOENT, errno.ENOTDIR):
                    logger.debug("cannot stat %s: %s", entry.path, err)
                continue
            names.append(name)
        kept = set(names)
        changes.deleted_files.extend(os.path.join(folder.path, name) for name in old_names if name not in kept)
        for name, sub in folder.dirs.items():
            if dirs.get(name) is not sub:
                changes.gone.setdefault(sub.ino, []).append(sub)
        folder.stamp, folder.names, folder.stats, folder.dirs = stamp, "\0".join(names), stats, dirs

    def _descends(self, entry: os.DirEntry, parent: Folder) -> bool:
        if not self.recursive:
            return False
        if entry.is_symlink():  # followed only where the rules say, and never into a loop
            real = os.path.realpath(entry.path)
            here = os.path.realpath(parent.path)
            if here == real or here.startswith(real + os.sep):
                return False
        return self.descend(entry)

    def _failed(self, path: str, err: OSError) -> None:
        if path not in self.failing:
            self.failing.add(path)
            logger.warning("cannot poll %s: %s; keeping what was known of it and trying again at the next poll",
                           path, err.strerror or err)

    def _count(self) -> None:
        self.folders = self.files = 0
        for folder in self.root.walk():
            self.folders += 1
            self.files += len(folder.stats) // 3

    # ---- the sweep ------------------------------------------------------------------------

    def sweep(self, allowance: int) -> tuple[list[FileSystemEvent], int]:
        """Re-stat up to `allowance` files where the last sweep stopped; a file whose inode is
        the same but whose size or mtime is not was rewritten in place. Returns the events and
        the number of stats spent."""
        events: list[FileSystemEvent] = []
        spent = 0
        while spent < allowance and not self.stopping():
            index, at, names_then = self._cursor
            if index >= len(self._round):
                if self._round and spent:
                    break  # one round per call at most: a small tree is not swept in a loop
                self._count()
                self._round = [f for f in self.root.walk() if f.stats]
                self._cursor = (0, 0, self._round[0].names if self._round else "")
                if not self._round:
                    break
                continue
            folder = self._round[index]
            if not folder.alive or folder.names is not names_then:
                at, names_then = 0, folder.names  # listed again meanwhile: start it over
            names = names_then.split("\0") if names_then and folder.alive else []
            stats = folder.stats
            while at < len(names) and spent < allowance:
                spent += 1
                path = os.path.join(folder.path, names[at])
                try:
                    st = os.lstat(path)
                except OSError:
                    at += 1
                    continue  # gone or unreadable: the folder's stamp tells
                i = 3 * at
                if st.st_ino == stats[i] and (st.st_mtime_ns != stats[i + 1] or st.st_size != stats[i + 2]):
                    stats[i + 1], stats[i + 2] = st.st_mtime_ns, st.st_size
                    events.append(FileModifiedEvent(path))
                at += 1
            if at >= len(names):
                index, at = index + 1, 0
                names_then = self._round[index].names if index < len(self._round) else ""
            self._cursor = (index, at, names_then)
        return events, spent

    def sweep_bound(self, budget: float, interval: float) -> float:
        """Seconds within which an in-place rewrite is reported: a round of the sweep and the
        ticks on either side of it."""
        return self.files / budget + 2 * interval


class PollingEmitter(EventEmitter):
    """One watched folder's thread: a baseline, then at each tick a poll and a slice of the sweep."""

    def __init__(self, event_queue: EventQueue, watch: ObservedWatch, *, timeout: float = DEFAULT_EMITTER_TIMEOUT,
                 event_filter: list[type[FileSystemEvent]] | None = None, lister: Lister = os.scandir,
                 descend: Descend = lambda entry: True, budget: float = 1000.0):
        super().__init__(event_queue, watch, timeout=timeout, event_filter=event_filter)
        self.budget = budget
        self.tree = PolledTree(watch.path, lister=lister, descend=descend, recursive=watch.is_recursive,
                               stopping=self.stopped_event.is_set)
        self.ready = False
        self._credit = 0.0
        self._last = 0.0

    def run(self) -> None:
        started = time.monotonic()
        try:
            events = self.tree.baseline()
        except Exception:
            logger.exception("the first poll of %s failed", self.watch.path)
            events = None
        if events is None:
            if not self.stopped_event.is_set():
                self.queue_event(DirDeletedEvent(self.watch.path))
            return
        self._queue(events)
        tree = self.tree
        logger.info("polling %s: %d folder(s), %d file(s), listed in %.1f s; a new name is seen within %g s, "
                    "a file rewritten in place within %.0f s (sweep at %g files/s)", self.watch.path, tree.folders,
                    tree.files, time.monotonic() - started, self.timeout + 1, tree.sweep_bound(self.budget, self.timeout),
                    self.budget)
        self.ready = True
        self._last = time.monotonic()
        super().run()

    def queue_events(self, timeout: float) -> None:
        if self.stopped_event.wait(timeout):
            return
        try:
            events = self.tree.poll()
            if events is None:
                return
            self._queue(events)
            if any(isinstance(e, DirDeletedEvent) and e.src_path == self.watch.path for e in events):
                self.stop()  # the watched folder is gone; Watching watches for it to come back
                return
            now = time.monotonic()
            # the sweep's credit, capped so a stall is not made up in one burst
            self._credit = min(self._credit + self.budget * (now - self._last), self.budget * 2 * max(timeout, 1.0))
            self._last = now
            events, spent = self.tree.sweep(int(self._credit))
            self._credit -= spent
            self._queue(events)
        except Exception:
            logger.exception("polling %s failed; trying again at the next poll", self.watch.path)

    def _queue(self, events: list[FileSystemEvent]) -> None:
        for event in events:
            self.queue_event(event)


class Poller(BaseObserver):
    """The observer: one PollingEmitter per watched folder, watchdog's dispatch to the handlers."""

    def __init__(self, *, interval: float, lister: Lister = os.scandir, descend: Descend = lambda entry: True,
                 budget: float = 1000.0):
        emitter = partial(PollingEmitter, lister=lister, descend=descend, budget=budget)
        super().__init__(emitter, timeout=interval)  # type: ignore[arg-type]
