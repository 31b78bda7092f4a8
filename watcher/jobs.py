"""The bounded, coalescing queue of paths waiting to be rendered, in two lanes.

The live lane holds what a person just did (the observer's events, `thumbwatch retry`); the
scan lane holds what catch-up and rescans found. A worker that comes free takes from the live
lane first, so a photo dropped during a 100,000-photo catch-up waits only for a worker, not for
the catch-up. Each lane has its own bound, so a scan can never fill the room live events need.

The master is woken only when the queue goes from empty to not empty: while it holds work it
takes more whenever a worker comes free (and an outcome wakes it for that), so a scan filling
the queue costs no wake-up, and no half-empty batch, per photo.

The live lane is fair across folders. Every file an rsync or a camera import renames into place
is a live event too, so first come, first served would make a person's one photo dropped into
another folder wait for the whole import. Instead, folders take turns at two levels: the
top-level folders (the first folder under a watched root; photos right in the root are a group
of their own) take turns, then the folders inside each (a photo's folder is its parent
directory), and within one folder photos keep their arrival order. A photo dropped into another
top-level folder than an import's waits for at most one photo of each other top-level folder
with work waiting, however many folders the import spreads over; one dropped beside the import,
in the same top-level folder, for at most one photo of each folder there with work waiting.

A path already waiting is not queued twice (duplicate events coalesce; a live event for a path
the scan already queued moves it to the live lane). A full live lane drops a path and raises
`overflowed`: the master answers with a rescan once there is room, which finds every dropped
photo again by its stale thumbnail. The path dropped is the newest of the biggest folder of the
biggest group, so an import that fills the lane cannot shut out another folder's photo. Scans,
which may wait, block for room instead.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable

LIVE, SCAN = "live", "scan"


def top_level(path: str, root: str | None) -> str:
    """The group a path takes turns in: the first folder under its watched root, the root for a
    photo right in it, "" outside every root."""
    if root is None or not path.startswith(root + os.sep):
        return ""
    first, sep, _ = path[len(root) + 1 :].partition(os.sep)
    return root + os.sep + first if sep else root


class FairLane:
    """The live lane's paths: top-level folders take turns, then the folders inside each, and
    each folder keeps its paths in arrival order."""

    def __init__(self, root_of: Callable[[str], str | None]):
        self._root_of = root_of
        # top-level folder -> folder -> paths, oldest first; each level in turn order (next turn first)
        self._tops: OrderedDict[str, OrderedDict[str, OrderedDict[str, None]]] = OrderedDict()
        self._sizes: dict[str, int] = {}  # paths waiting per top-level folder
        self._where: dict[str, tuple[str, str]] = {}  # path -> (top-level folder, folder), as queued

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, path: str) -> bool:
        return path in self._where

    def add(self, path: str) -> None:
        """At the back of its folder; a folder (or top-level folder) with nothing waiting joins
        the turns at the back."""
        if path in self._where:
            return
        top, folder = top_level(path, self._root_of(path)), os.path.dirname(path)
        self._tops.setdefault(top, OrderedDict()).setdefault(folder, OrderedDict())[path] = None
        self._sizes[top] = self._sizes.get(top, 0) + 1
        self._where[path] = (top, folder)

    def pop(self) -> str | None:
        """The oldest path of the folder whose turn it is, in the top-level folder whose turn it
        is; both go to the back of their turns."""
        if not self._tops:
            return None
        folders = next(iter(self._tops.values()))
        path = next(iter(next(iter(folders.values()))))
        self._take(path, served=True)
        return path

    def discard(self, path: str) -> bool:
        if path not in self._where:
            return False
        self._take(path, served=False)
        return True

    def make_room_for(self, path: str) -> str | None:
        """Full: drop the newest path of the biggest folder in the biggest top-level folder, if
        that holds more than `path`'s would, else the same within `path`'s own top-level folder.
        The path dropped, or None (then `path` is the one to drop)."""
        top = top_level(path, self._root_of(path))
        biggest = max(self._sizes, key=self._sizes.__getitem__, default=None)
        if biggest is None:
            return None
        if biggest != top and self._sizes[biggest] > self._sizes.get(top, 0) + 1:
            folders = self._tops[biggest]
        elif top in self._tops:
            folders, own = self._tops[top], len(self._tops[top].get(os.path.dirname(path), ()))
            if max(len(paths) for paths in folders.values()) <= own + 1:
                return None
        else:
            return None
        dropped = next(reversed(max(folders.values(), key=len)))
        self._take(dropped, served=False)
        return dropped

    def _take(self, path: str, *, served: bool) -> None:
        """Remove a path; a folder that had its turn (`served`) goes to the back of its turns."""
        top, folder = self._where.pop(path)
        folders = self._tops[top]
        paths = folders[folder]
        del paths[path]
        self._sizes[top] -= 1
        if not paths:
            del folders[folder]
        elif served:
            folders.move_to_end(folder)
        if not folders:
            del self._tops[top], self._sizes[top]
        elif served:
            self._tops.move_to_end(top)


class JobQueue:
    def __init__(self, maxsize: int, wake: Callable[[], None] = lambda: None,
                 root_of: Callable[[str], str | None] = lambda path: None):
        """`root_of(path)`: the watched root a path is under (PathRules.root_of), for the live
        lane's top-level folders; without it, the folders alone take turns."""
        self.maxsize = maxsize
        self._live = FairLane(root_of)
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
