"""The photos that may still be being written, and those waiting to have their thumbnails
re-stamped: each waits for quiet; admission decides what happens once it is.

A file whose creation was seen waits for its close-write. Should none come, holding still for
settle_seconds is the fallback: a hard link whose other name went before we looked (`ln staged
x.jpg; rm staged`) is complete and will never be closed after writing, and must not wait long.
But a writer that only paused (a phone uploading over Wi-Fi) looks the same, so until its
close-write comes such a file stays "unclosed": should its render fail, admission holds the
failure quietly and the file waits again, for its close-write or for UNCLOSED_PATIENCE seconds
without a change, and only a failure after that is said and recorded. Whatever the reason: a
cut file is not always called truncated (a HEIC cut before its meta box is "corrupt HEIF", a
DNG cut anywhere "not a camera RAW that LibRaw can read"); the price is that a corrupt photo
published by `ln; rm` is said to fail a minute late. A minute: a paused upload resumes within
seconds; one silent for a minute has most likely died, and the person should hear of the
partial file. Should it resume later all the same, the change retries it (a failure record
holds only while size and mtime stay as they were).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from .roots import MARKER

# A photo whose attributes alone changed waits before its thumbnails are re-stamped: an event
# for a write made right after the change (`chmod`, then `cp -p` of a same-size picture with the
# same mtime) may still be on its way from the observer, and cancels the re-stamp. How long: until
# a barrier comes back, an attribute change of the root's marker file (roots.py) made after the
# photo was looked at, which inotify delivers after every event that came before it. Where no
# marker can be touched, RESTAMP_AFTER seconds; a barrier not back within BARRIER_LOST is sent
# again, and a photo that waited GIVE_UP_AFTER is looked at as after a write (the verdict decides).
RESTAMP_AFTER = 2.0
BARRIER_LOST = 5.0
GIVE_UP_AFTER = 60.0
UNCLOSED_PATIENCE = 60.0


@dataclass
class Settling:
    size: int
    mtime_ns: int
    since: float
    until_closed: bool = False  # just created: its close-write ends the wait (holding still is the fallback)
    patient: bool = False  # rendered by the fallback and failed: UNCLOSED_PATIENCE, not settle_seconds


class Settler:
    """The photos that may still be being written, each with the size and mtime it had when its
    quiet time began. Says when one holds still; what happens then is admission's business."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.files: dict[str, Settling] = {}
        self.unclosed: set[str] = set()  # queued by the fallback, no close-write seen since

    def __contains__(self, path: str) -> bool:
        return path in self.files

    def __len__(self) -> int:
        return len(self.files)

    def wait(self, path: str, st: os.stat_result, *, until_closed: bool = False) -> None:
        if path in self.unclosed:  # back from the queue (empty, changed while rendered): still unclosed
            self.unclosed.discard(path)
            until_closed = True
        self.files[path] = Settling(st.st_size, st.st_mtime_ns, self.clock(), until_closed)

    def discard(self, path: str) -> None:
        self.files.pop(path, None)
        self.unclosed.discard(path)

    def queued(self, path: str) -> None:
        """It held still and is queued: one not closed yet stays unclosed until its outcome
        (unless it already waited out UNCLOSED_PATIENCE)."""
        waiting = self.files.pop(path, None)
        if waiting is not None and waiting.until_closed and not waiting.patient:
            self.unclosed.add(path)

    def may_be_unfinished(self, path: str) -> bool:
        """Created and not yet closed after writing: a failed render may only mean that it is
        not finished yet."""
        waiting = self.files.get(path)
        return path in self.unclosed or (waiting is not None and waiting.until_closed)

    def hold(self, path: str, st: os.stat_result) -> None:
        """Its render failed before its close-write came: wait for that, or for
        UNCLOSED_PATIENCE seconds without a change."""
        self.unclosed.discard(path)
        self.files[path] = Settling(st.st_size, st.st_mtime_ns, self.clock(), until_closed=True, patient=True)

    def done(self, path: str) -> None:
        """Rendered, or its failure recorded (or not rendered at all): nothing left to wait for."""
        self.unclosed.discard(path)

    def closed(self, path: str) -> bool:
        """Closed after writing: True unless it is one suspected of being written in bursts,
        which waits until it holds still."""
        self.unclosed.discard(path)
        waiting = self.files.get(path)
        if waiting is not None:
            if not waiting.until_closed:
                return False
            del self.files[path]
        return True

    def still(self, quiet: float) -> list[tuple[str, os.stat_result]]:
        """The files whose size and mtime have held still for `quiet` seconds (a held one:
        UNCLOSED_PATIENCE), with their stat.
        Those gone are dropped; those that changed start their quiet time again."""
        now = self.clock()
        still = []
        for path, seen in list(self.files.items()):
            st = _stat(path)
            if st is None:
                del self.files[path]
            elif (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns):
                self.files[path] = replace(seen, size=st.st_size, mtime_ns=st.st_mtime_ns, since=now)
            elif now - seen.since >= (UNCLOSED_PATIENCE if seen.patient else quiet):
                still.append((path, st))
        return still


class Restamps:
    """Photos whose attributes alone changed, each with the ctime it had then and its root, in
    order of arrival, until their root's barrier is back (see above)."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.waiting: dict[str, tuple[int, float, str]] = {}  # path -> (ctime_ns, since, root)
        self.per_root: dict[str, int] = {}
        self.sent: dict[str, float] = {}  # root -> when the oldest barrier still out was sent
        self.resent: dict[str, float] = {}  # root -> when a barrier was last sent
        self.blind: set[str] = set()  # roots without a marker to touch: RESTAMP_AFTER instead

    def __len__(self) -> int:
        return len(self.waiting)

    def wait(self, path: str, st: os.stat_result, root: str) -> None:
        self.cancel(path)  # to the end: the dict stays in order of arrival
        self.waiting[path] = (st.st_ctime_ns, self.clock(), root)
        self.per_root[root] = self.per_root.get(root, 0) + 1

    def cancel(self, path: str) -> None:
        entry = self.waiting.pop(path, None)
        if entry is not None:
            root = entry[2]
            self.per_root[root] -= 1
            if not self.per_root[root]:
                del self.per_root[root]

    def due(self) -> list[tuple[str, int | None]]:
        """Send the barriers that are needed; return those whose wait is over without one (ctime
        None: waited too long, look at it as after a write)."""
        now = self.clock()
        for root in self.per_root:
            if root not in self.blind and now - self.resent.get(root, -BARRIER_LOST) >= BARRIER_LOST:
                if _touch_marker(root):
                    self.sent.setdefault(root, now)  # an earlier one still out is the one to wait for
                    self.resent[root] = now
                else:
                    self.blind.add(root)
        due: list[tuple[str, int | None]] = []
        for path, (ctime_ns, since, root) in self.waiting.items():
            if now - since >= GIVE_UP_AFTER:
                due.append((path, None))
            elif not self.blind or now - since < RESTAMP_AFTER:
                break  # in order of arrival: the rest are younger
            elif root in self.blind:
                due.append((path, ctime_ns))
        for path, _ctime in due:
            self.cancel(path)
        return due

    def passed(self, root: str) -> list[tuple[str, int | None]]:
        """`root`'s barrier is back: every event from before it was sent has been read, so those
        that waited since before it (and were not cancelled) are due."""
        sent = self.sent.pop(root, None)
        self.resent.pop(root, None)
        if sent is None:
            return []
        due = [(path, ctime_ns) for path, (ctime_ns, since, in_root) in self.waiting.items() if in_root == root and since <= sent]
        for path, _ctime in due:
            self.cancel(path)
        return due


def _touch_marker(root: str) -> bool:
    """An attribute change of `root`'s marker (its own times again): the barrier. False when
    there is no marker to touch, or it cannot be touched."""
    try:
        st = os.stat(os.path.join(root, MARKER))
        os.utime(os.path.join(root, MARKER), ns=(st.st_atime_ns, st.st_mtime_ns))
    except OSError:
        return False
    return True


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None
