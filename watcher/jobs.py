"""The bounded, coalescing queue between the producers (observer, scans) and the master's dispatcher.

A path already waiting is not queued twice (duplicate events coalesce). The observer thread
never blocks: when the queue is full it drops the path and raises `overflowed`, and the master
answers with a rescan once there is room, which finds every dropped photo again by its stale
thumbnail. Scans, which may wait, block for room instead.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable


class JobQueue:
    def __init__(self, maxsize: int, wake: Callable[[], None] = lambda: None):
        self.maxsize = maxsize
        self._paths: OrderedDict[str, None] = OrderedDict()
        self._cond = threading.Condition()
        self._wake = wake
        self.overflowed = False

    def __len__(self) -> int:
        return len(self._paths)

    def offer(self, path: str) -> bool:
        """Queue without blocking; False if the queue was full (and `overflowed` is now set)."""
        with self._cond:
            if path in self._paths:
                return True
            if len(self._paths) >= self.maxsize:
                self.overflowed = True
                return False
            self._paths[path] = None
        self._wake()
        return True

    def put(self, path: str, stop: threading.Event) -> bool:
        """Queue, waiting for room; False only if `stop` was set while waiting."""
        with self._cond:
            while path not in self._paths and len(self._paths) >= self.maxsize:
                if stop.is_set():
                    return False
                self._cond.wait(0.2)
            self._paths[path] = None
        self._wake()
        return True

    def pop(self) -> str | None:
        with self._cond:
            if not self._paths:
                return None
            path, _ = self._paths.popitem(last=False)
            self._cond.notify()
            return path

    def discard(self, path: str) -> None:
        with self._cond:
            self._paths.pop(path, None)
            self._cond.notify()

    def take_overflow(self) -> bool:
        """True once per overflow, when the queue has room again to take a rescan's findings."""
        with self._cond:
            if self.overflowed and len(self._paths) < self.maxsize:
                self.overflowed = False
                return True
            return False

    def resize(self, maxsize: int) -> None:
        with self._cond:
            self.maxsize = maxsize
            self._cond.notify_all()
