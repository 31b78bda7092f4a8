"""The watchdog event handler: classify each event, filter by name, enqueue. Never opens a photo.

A photo counts as arrived when it is closed after writing (inotify close-write) or renamed
or moved into a watched folder. Creation and modification alone mean "still being written"
and are ignored under inotify; the polling observer has no close events, so there they hand
the path to the master's settler, which queues it once its size and mtime stop changing.
Anything that needs the file system (scanning a new folder, deleting thumbnails) goes to the
master as a notice, so this thread stays quick and cannot die of an I/O error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from .jobs import JobQueue
from .paths import PathRules

logger = logging.getLogger(__name__)

# Notices for the master: (kind, path). Kinds: "settle", "new-dir", "deleted", "dir-gone".
Notice = tuple[str, str]

# What the handler acts on under inotify. Passed as the watch's event filter, it also narrows
# the kernel's inotify mask: without it every write() of a copy in progress (IN_MODIFY) and
# every worker opening a photo (IN_OPEN, IN_CLOSE_NOWRITE) wakes the master's observer thread.
INOTIFY_EVENTS = (FileClosedEvent, FileMovedEvent, FileDeletedEvent, DirCreatedEvent, DirMovedEvent, DirDeletedEvent)


class PhotoEventHandler(FileSystemEventHandler):
    def __init__(self, rules: PathRules, jobs: JobQueue, notify: Callable[[Notice], None], *, polling: bool):
        self.rules = rules
        self.jobs = jobs
        self.notify = notify
        self.polling = polling

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self.classify(event)
        except Exception:
            # The observer thread must survive anything we get wrong here.
            logger.exception("event handler failed on %r", event)

    def classify(self, event: FileSystemEvent) -> None:
        src = _text(event.src_path)
        if isinstance(event, FileClosedEvent):
            self._arrived(src)
        elif isinstance(event, FileMovedEvent):
            dest = _text(event.dest_path)
            if src and self.rules.wants(src):
                self.notify(("deleted", src))
            if dest:
                self._arrived(dest)
        elif isinstance(event, (FileCreatedEvent, FileModifiedEvent)):
            if self.polling and self.rules.wants(src):
                self.notify(("settle", src))
        elif isinstance(event, FileDeletedEvent):
            if self.rules.wants(src):
                self.notify(("deleted", src))
        elif isinstance(event, DirCreatedEvent):
            if self.rules.wants_dir(src):
                self.notify(("new-dir", src))
        elif isinstance(event, DirMovedEvent):
            dest = _text(event.dest_path)
            if dest and self.rules.wants_dir(dest):
                self.notify(("new-dir", dest))
        elif isinstance(event, DirDeletedEvent):
            if src in self.rules.roots:
                self.notify(("dir-gone", src))

    def _arrived(self, path: str) -> None:
        if not self.rules.wants(path):
            return
        if self.polling:
            self.notify(("settle", path))
        elif not self.jobs.offer(path):
            logger.debug("queue full, %s will be found by the next rescan", path)


def _text(path: Any) -> str:
    return os.fsdecode(path) if path else ""
