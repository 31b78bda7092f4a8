"""The watchdog event handler: classify each event, filter by name, tell the master. Never opens
a photo, never touches the file system.

A photo counts as arrived when it is closed after writing (inotify close-write) or renamed
or moved into a watched folder. Creation and modification alone mean "still being written"
and are ignored under inotify (a new hard link aside: it is created complete); the polling
observer has no close events, so there they go to the master's settler, which queues the path
once its size and mtime stop changing.

Everything goes to the master as a notice, on one ordered channel: a delete and a create of the
same name, or a folder's rename and the moves of the photos inside it, are acted on in the
order they happened.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
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

from .paths import PathRules

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notice:
    """What the observer saw, for the master. Kinds:
    arrived, settle, created, deleted (a photo); new-dir, dir-moved, dir-deleted (a folder)."""

    kind: str
    path: str
    dest: str = ""
    # From a polling observer, whose every poll reports each file of a new or renamed folder
    # itself: the master need not walk it (a walk would find states the poll never saw, whose
    # thumbnails it would then never hear of again).
    polled: bool = False


# What the handler acts on under inotify. Passed as the watch's event filter, it also narrows
# the kernel's inotify mask: without it every write() of a copy in progress (IN_MODIFY) and
# every worker opening a photo (IN_OPEN, IN_CLOSE_NOWRITE) wakes the master's observer thread.
INOTIFY_EVENTS = (FileClosedEvent, FileMovedEvent, FileDeletedEvent, FileCreatedEvent, DirCreatedEvent, DirMovedEvent, DirDeletedEvent)


class PhotoEventHandler(FileSystemEventHandler):
    def __init__(self, rules: Callable[[], PathRules], notify: Callable[[Notice], None], *, polling: bool):
        self.rules = rules  # read at every event, so a reload needs no access to the observer's handlers
        self.notify = notify
        self.polling = polling

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self.classify(event)
        except Exception:
            # The observer thread must survive anything we get wrong here.
            logger.exception("event handler failed on %r", event)

    def classify(self, event: FileSystemEvent) -> None:
        rules = self.rules()
        src = _text(event.src_path)
        if isinstance(event, FileClosedEvent):
            self._arrived(rules, src)
        elif isinstance(event, FileMovedEvent):
            dest = _text(event.dest_path)
            if src and rules.wants(src):
                self.notify(Notice("deleted", src))
            if dest:
                self._arrived(rules, dest)
        elif isinstance(event, FileCreatedEvent):
            if rules.wants(src):
                self.notify(Notice("settle" if self.polling else "created", src))
            elif rules.config.watch.follow_symlinks and rules.wants_dir(src):
                self.notify(Notice("link", src, polled=self.polling))  # perhaps a symlink to a folder: the master looks
        elif isinstance(event, FileModifiedEvent):
            if self.polling and rules.wants(src):
                self.notify(Notice("settle", src))
        elif isinstance(event, FileDeletedEvent):
            if rules.wants(src):
                self.notify(Notice("deleted", src))
        elif isinstance(event, DirCreatedEvent):
            if rules.wants_dir(src):
                self.notify(Notice("new-dir", src, polled=self.polling))
        elif isinstance(event, DirMovedEvent):
            dest = _text(event.dest_path)
            inside = dest and rules.wants_dir(dest)
            if src and rules.root_of(src) is not None and src not in rules.roots:
                self.notify(Notice("dir-moved", src, dest if inside else "", polled=self.polling))
            elif inside:
                self.notify(Notice("new-dir", dest, polled=self.polling))
        elif isinstance(event, DirDeletedEvent):
            if rules.root_of(src) is not None:
                self.notify(Notice("dir-deleted", src))

    def _arrived(self, rules: PathRules, path: str) -> None:
        if rules.wants(path):
            self.notify(Notice("settle" if self.polling else "arrived", path))


def _text(path: Any) -> str:
    return os.fsdecode(path) if path else ""
