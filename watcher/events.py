"""The watchdog event handler: classify each event, filter by name, tell the master. Never opens
a photo, never touches the file system.

A photo counts as arrived when it is closed after writing (inotify close-write) or renamed
or moved into a watched folder. Creation and modification alone mean "still being written"
and are ignored under inotify (a new hard link aside: it is created complete); the polling
observer has no close events, so there they go to the master's settler, which queues the path
once its size and mtime stop changing.

Under inotify the handler also keeps, per photo, whether it was written to (IN_MODIFY) since it
was last closed. A change of attributes (IN_ATTRIB: chown, chmod, ACLs, xattrs) or a close
with no write since the open (`touch -a` opens the file for writing and writes nothing) is then
an "attrib" notice: its content did not change, so the master may re-stamp its thumbnails
instead of rendering it. An IN_ATTRIB during a write is part of that write (`cp -p` sets the
old mtime, then closes) and says nothing; the close-write that ends it is an arrival.

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
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from .paths import PathRules
from .roots import MARKER

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notice:
    """What the observer saw, for the master. Kinds: arrived, settle, created, deleted, attrib (a
    photo); new-dir, dir-moved, dir-deleted (a folder); barrier (a root's marker touched)."""

    kind: str
    path: str
    dest: str = ""
    # From a polling observer, whose every poll reports each file of a new or renamed folder
    # itself: the master need not walk it (a walk would find states the poll never saw, whose
    # thumbnails it would then never hear of again).
    polled: bool = False


# What the handler acts on under inotify. Passed as the watch's event filter, it also narrows
# the kernel's inotify mask: without it every worker opening a photo (IN_OPEN, IN_CLOSE_NOWRITE)
# wakes the master's observer thread. watchdog 7.1 reports IN_ATTRIB as FileAttribEvent, but
# asks the kernel for IN_ATTRIB only when FileModifiedEvent is in the filter (with IN_MODIFY:
# there is no way to have one without the other), so both are here; IN_MODIFY is what tells a
# write in progress anyway. Each write() of a copy then wakes the observer thread (the kernel
# merges repeats not yet read), not the master: the handler tells it once per write.
INOTIFY_EVENTS = (FileClosedEvent, FileMovedEvent, FileDeletedEvent, FileCreatedEvent, FileModifiedEvent, FileAttribEvent,
                  DirCreatedEvent, DirMovedEvent, DirDeletedEvent)

# Photos written to and not yet closed, at most: beyond (events lost, a close never seen), every
# close counts as a write again and no attribute change is trusted, as before this was known.
MAX_WRITING = 65_536


class PhotoEventHandler(FileSystemEventHandler):
    def __init__(self, rules: Callable[[], PathRules], notify: Callable[[Notice], None], *, polling: bool):
        self.rules = rules  # read at every event, so a reload needs no access to the observer's handlers
        self.notify = notify
        self.polling = polling
        self.writing: set[str] = set()  # written to since last closed (inotify; the observer thread only)
        self.last_written = ""  # the file of the last IN_MODIFY, until another event comes

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self.classify(event)
        except Exception:
            # The observer thread must survive anything we get wrong here.
            logger.exception("event handler failed on %r", event)

    def classify(self, event: FileSystemEvent) -> None:
        src = _text(event.src_path)
        if isinstance(event, FileModifiedEvent) and not self.polling:
            # every write() of a copy comes here: a run of them for one file costs one comparison
            if src != self.last_written:
                self.last_written = src
                if src not in self.writing and len(self.writing) < MAX_WRITING and self.rules().wants(src):
                    self.writing.add(src)
            return
        self.last_written = ""  # a close, attribute change or rename ends the run
        rules = self.rules()
        if isinstance(event, FileAttribEvent):
            if not self.polling and os.path.basename(src) == MARKER and os.path.dirname(src) in rules.roots:
                self.notify(Notice("barrier", src))  # the master's own touch: every event before it is in
            elif not self.polling and src not in self.writing and len(self.writing) < MAX_WRITING and rules.wants(src):
                self.notify(Notice("attrib", src))
        elif isinstance(event, FileClosedEvent):
            if self.polling or src in self.writing or len(self.writing) >= MAX_WRITING:
                self.writing.discard(src)
                self._arrived(rules, src)
            elif rules.wants(src):
                self.notify(Notice("attrib", src))  # opened for writing, nothing written (touch -a)
        elif isinstance(event, FileMovedEvent):
            dest = _text(event.dest_path)
            self.writing.discard(src)
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
            self.writing.discard(src)
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
