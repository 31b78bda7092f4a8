"""The bounded, coalescing queue of paths waiting to be rendered, in two lanes.

The live lane holds what a person just did (the observer's events, `thumbwatch retry`); the
scan lane holds what catch-up and rescans found. A worker that comes free takes from the live
lane first, so a photo dropped during a 100,000-photo catch-up waits only for a worker, not for
the catch-up. Each lane has its own bound, so a scan can never fill the room live events need.

The master is woken only when the queue goes from empty to not empty: while it holds work it
takes more whenever a worker comes free (and an outcome wakes it for that), so a scan filling
the queue costs no wake-up, and no half-empty batch, per photo.

The live lane is fair across folders: it takes turns between the folders that have photos
waiting (a photo's folder is its parent directory), and within one folder it keeps arrival order.
Every file an rsync or a camera import renames into place is a live event too, so first come,
first served would make a person's one photo dropped into another folder wait for the whole
import; taking turns, it waits for at most one photo of each other folder with work waiting.

A path already waiting is not queued twice (duplicate events coalesce; a live event for a path
the scan already queued moves it to the live lane). A full live lane drops a path and raises
`overflowed`: the master answers with a rescan once there is room, which finds every dropped
photo again by its stale thumbnail. The path dropped is the newest of the folder holding the
most, so an import that fills the lane cannot shut out another folder's photo. Scans, which may
wait, block for room instead.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable

LIVE, SCAN = "live", "scan"


class FairLane:
    """Paths by folder: folders take turns in `pop`, each keeps its paths in arrival order."""

    def __init__(self) -> None:
        # folder -> its waiting paths, oldest first; the folders in turn order (next turn first)
        self._folders: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, path: str) -> bool:
        return path in self._folders.get(os.path.dirname(path), ())

    def add(self, path: str) -> None:
        """At the back of its folder; a folder with nothing waiting joins the turns at the back."""
        paths = self._folders.setdefault(os.path.dirname(path), OrderedDict())
        if path not in paths:
            paths[path] = None
            self._count += 1

    def pop(self) -> str | None:
        """The oldest path of the folder whose turn it is; that folder goes to the back."""
        if not self._folders:
            return None
        folder, paths = next(iter(self._folders.items()))
        path = paths.popitem(last=False)[0]
        self._count -= 1
        if paths:
            self._folders.move_to_end(folder)
        else:
            del self._folders[folder]
        return path

    def discard(self, path: str) -> bool:
        folder = os.path.dirname(path)
        paths = self._folders.get(folder)
        if paths is None or paths.pop(path, 0) is not None:
            return False
        self._count -= 1
        if not paths:
            del self._folders[folder]
        return True

    def make_room_for(self, path: str) -> str | None:
        """Full: drop the newest path of the folder holding the most, if that folder holds more
        than `path`'s would; the path dropped, or None (then `path` is the one to drop)."""
        own = len(self._folders.get(os.path.dirname(path), ()))
        biggest = max(self._folders.values(), key=len, default=None)
        if biggest is None or len(biggest) <= own + 1:
            return None
        dropped = biggest.popitem(last=True)[0]
        self._count -= 1
        return dropped


class JobQueue:
    def __init__(self, maxsize: int, wake: Callable[[], None] = lambda: None):
        self.maxsize = maxsize
        self._live = FairLane()
        self._scan: OrderedDict[str, None] = OrderedDict()
        self._cond = threading.Condition()
        self._wake = wake
        self.overflowed = False

    def __len__(self) -> int:
        return len(self._live) + len(self._scan)

    def lane_of(self, path: str) -> str | None:
        with self._cond:
            return LIVE if path in self._live else SCAN if path in self._scan else None

    def lengths(self) -> tuple[int, int]:
        with self._cond:
            return len(self._live), len(self._scan)

    def offer(self, path: str) -> bool:
        """Queue in the live lane without blocking; False if it was full (`overflowed` is set)."""
        with self._cond:
            if path in self._live:
                return True
            if len(self._live) >= self.maxsize:
                self.overflowed = True
                if self._live.make_room_for(path) is None:
                    return False
            was_empty = not (self._live or self._scan)
            if self._scan.pop(path, 0) is None:
                self._cond.notify()  # room in the scan lane
            self._live.add(path)
        if was_empty:
            self._wake()
        return True

    def put(self, path: str, stop: threading.Event) -> bool:
        """Queue in the scan lane, waiting for room; False only if `stop` was set while waiting."""
        with self._cond:
            while path not in self._live and path not in self._scan and len(self._scan) >= self.maxsize:
                if stop.is_set():
                    return False
                self._cond.wait(0.2)
            was_empty = not (self._live or self._scan)
            if path not in self._live:
                self._scan[path] = None
        if was_empty:
            self._wake()
        return True

    def pop(self) -> str | None:
        with self._cond:
            if self._live:
                return self._live.pop()
            if self._scan:
                path = self._scan.popitem(last=False)[0]
                self._cond.notify()
                return path
            return None

    def discard(self, path: str) -> bool:
        with self._cond:
            found = self._live.discard(path) or self._scan.pop(path, 0) is None
            self._cond.notify()
            return found

    def take_overflow(self) -> bool:
        """True once per overflow, when the live lane has room again."""
        with self._cond:
            if self.overflowed and len(self._live) < self.maxsize:
                self.overflowed = False
                return True
            return False

    def resize(self, maxsize: int) -> None:
        with self._cond:
            self.maxsize = maxsize
            self._cond.notify_all()
