"""The photos that may still be being written, and those waiting to have their thumbnails
re-stamped: each waits for quiet; admission decides what happens once it is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

# Seconds a photo whose attributes alone changed waits before its thumbnails are re-stamped: an
# event for a write made right after the change (`chmod`, then `cp -p` of a same-size picture
# with the same mtime) may still be on its way from the observer, and cancels the re-stamp.
RESTAMP_AFTER = 2.0


@dataclass
class Settling:
    size: int
    mtime_ns: int
    since: float
    until_closed: bool = False  # just created: its close-write ends the wait (holding still is the fallback)


class Settler:
    """The photos that may still be being written, each with the size and mtime it had when its
    quiet time began. Says when one holds still; what happens then is admission's business."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.files: dict[str, Settling] = {}

    def __contains__(self, path: str) -> bool:
        return path in self.files

    def __len__(self) -> int:
        return len(self.files)

    def wait(self, path: str, st: os.stat_result, *, until_closed: bool = False) -> None:
        self.files[path] = Settling(st.st_size, st.st_mtime_ns, self.clock(), until_closed)

    def discard(self, path: str) -> None:
        self.files.pop(path, None)

    def closed(self, path: str) -> bool:
        """Closed after writing: True unless it is one suspected of being written in bursts,
        which waits until it holds still."""
        waiting = self.files.get(path)
        if waiting is not None:
            if not waiting.until_closed:
                return False
            del self.files[path]
        return True

    def still(self, quiet: float) -> list[tuple[str, os.stat_result]]:
        """The files whose size and mtime have held still for `quiet` seconds, with their stat.
        Those gone are dropped; those that changed start their quiet time again."""
        now = self.clock()
        still = []
        for path, seen in list(self.files.items()):
            st = _stat(path)
            if st is None:
                del self.files[path]
            elif (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns):
                self.files[path] = replace(seen, size=st.st_size, mtime_ns=st.st_mtime_ns, since=now)
            elif now - seen.since >= quiet:
                still.append((path, st))
        return still


class Restamps:
    """Photos whose attributes alone changed (with the ctime they had then), in order of arrival,
    until RESTAMP_AFTER has passed with no other event for them."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.waiting: dict[str, tuple[int, float]] = {}

    def __len__(self) -> int:
        return len(self.waiting)

    def wait(self, path: str, st: os.stat_result) -> None:
        self.waiting.pop(path, None)  # to the end: the dict stays in order of arrival
        self.waiting[path] = (st.st_ctime_ns, self.clock())

    def cancel(self, path: str) -> None:
        self.waiting.pop(path, None)

    def due(self) -> list[tuple[str, int]]:
        """Those that waited long enough, with the ctime they had when they began."""
        now, due = self.clock(), []
        for path, (ctime_ns, since) in self.waiting.items():
            if now - since < RESTAMP_AFTER:
                break
            due.append((path, ctime_ns))
        for path, _ctime in due:
            del self.waiting[path]
        return due


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None
