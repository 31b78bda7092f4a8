"""The thumbnail tree: the one freshness rule and every operation on the tree of thumbnails.

Shared by the master (admission, scans, folder renames and removals) and by render hosts, which
import this and never the master's modules. A thumbnail is up to date when it carries its photo's
mtime (at the precision of the file system holding it) and was written after the photo last
changed (its ctime is not older than the photo's): a file replaced by another with the same name,
size and mtime has a new ctime, which nobody can set by hand, so it is rendered again; a folder
renamed keeps its photos' ctimes, so its moved thumbnails stay.

The operations, by who needs them:
  fresh(st, targets)                 everyone: are these thumbnails the photo's?
  carries_mtime(st, targets)         do the thumbnails carry this photo version's mtime?
  restamp(st, targets)               the photo's attributes changed, not its content: fresh again
  remove_thumbnails(targets)         a photo deleted, or failed (its old thumbnail would lie)
  move_folder_thumbnails(rules, ...) a folder renamed inside the tree: its thumbnails go along
  remove_folder_thumbnails(rules, f) a folder gone from the tree: its thumbnails go
  sweep_orphans(rules, ...)          a walk: thumbnails no photo maps to any more
  remove_stale_temps(rules)          at start (watcher and render hosts): temps of dead processes
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

from . import treeevents
from .paths import FORMAT_EXT, JPEG_EXTS, TEMP_PREFIX, PathRules, Target, is_this_hosts_temp, shown

logger = logging.getLogger(__name__)

# What an output file of ours can be called: the extensions we write.
OUR_EXTS = tuple(set(FORMAT_EXT.values()) | set(JPEG_EXTS))


class Granularity:
    """How finely the file system holding a thumbnail keeps mtimes (FAT: 2 s; most: 1 ns),
    found once per device by stamping a probe file with a time no coarse clock can hold."""

    PROBE_NS = 1_000_000_001_999_999_999  # an odd second, 999,999,999 ns into it
    STEPS = (1, 1_000, 1_000_000, 10_000_000, 1_000_000_000, 2_000_000_000)

    def __init__(self) -> None:
        self._by_dev: dict[int, int] = {}
        self._lock = threading.Lock()

    def of(self, folder: str, dev: int) -> int:
        step = self._by_dev.get(dev)
        if step is None:
            step = self._probe(folder)
            with self._lock:
                self._by_dev[dev] = step
        return step

    def _probe(self, folder: str) -> int:
        probe = os.path.join(folder, f"{TEMP_PREFIX}{os.getpid()}-mtime-probe.tmp")
        try:
            with open(probe, "wb"):
                pass
            os.utime(probe, ns=(self.PROBE_NS, self.PROBE_NS))
            error = abs(os.stat(probe).st_mtime_ns - self.PROBE_NS)
        except OSError:
            return 1
        finally:
            try:
                os.unlink(probe)
            except OSError:
                pass
        return next((step for step in self.STEPS if error < step), error + 1)


GRANULARITY = Granularity()


def fresh(st: os.stat_result, targets: Sequence[Target]) -> bool:
    """Do these thumbnails show the photo whose stat is `st`? The one freshness rule (see the
    module's docstring), for the master and for render hosts alike."""
    if not targets:
        return False
    for target in targets:
        try:
            thumb = os.stat(target.path)
        except OSError:
            return False
        step = _step(st, thumb, target.path)
        if abs(thumb.st_mtime_ns - st.st_mtime_ns) >= step or thumb.st_ctime_ns + step <= st.st_ctime_ns:
            return False
    return True


def _step(st: os.stat_result, thumb: os.stat_result, path: str) -> int:
    """The precision at which the thumbnail at `path` can carry the photo's mtime."""
    return 1 if thumb.st_mtime_ns == st.st_mtime_ns else GRANULARITY.of(os.path.dirname(path), thumb.st_dev)


def carries_mtime(st: os.stat_result, targets: Sequence[Target]) -> bool:
    """Does every thumbnail exist and carry the mtime of the photo whose stat is `st`?"""
    for target in targets:
        try:
            thumb = os.stat(target.path)
        except OSError:
            return False
        if abs(thumb.st_mtime_ns - st.st_mtime_ns) >= _step(st, thumb, target.path):
            return False
    return bool(targets)


def restamp(st: os.stat_result, targets: Sequence[Target]) -> bool:
    """After a change of the photo's attributes alone (owner, mode, ACLs, xattrs, atime: its
    ctime moved, its content did not), make thumbnails that carry the photo's mtime fresh again
    by touching their ctime (a utime to the times they have), without decoding. True when the
    thumbnails are fresh now. Only for a photo known to have had no write since its thumbnails
    were made: whoever calls this knows that from the events (see admission)."""
    if fresh(st, targets):
        return True
    if not carries_mtime(st, targets):
        return False
    for target in targets:
        try:
            thumb = os.stat(target.path)
            os.utime(target.path, ns=(thumb.st_atime_ns, thumb.st_mtime_ns))
        except OSError:
            return False
    return fresh(st, targets)


def remove_thumbnails(targets: tuple[Target, ...], gone: list[str] | None = None) -> int:
    """Remove these thumbnails; the paths actually removed are added to `gone` (for events)."""
    removed = 0
    for target in targets:
        try:
            os.unlink(target.path)
            removed += 1
            if gone is not None:
                gone.append(target.path)
        except OSError:
            pass
    return removed


def remove_stale_temps(rules: PathRules) -> int:
    """Temp outputs left by a crashed or killed process of this host: ours by name, and named
    by a pid that no longer runs. Other render hosts' temps on shared storage, and those of
    live processes here (a `thumbwatch worker` beside the watcher), are not ours to remove."""
    removed = 0
    for top in rules.temp_dirs():
        for folder, _dirs, files in os.walk(top):
            for name in files:
                if not is_this_hosts_temp(name) or _writer_alive(name):
                    continue
                try:
                    os.unlink(os.path.join(folder, name))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def _writer_alive(temp_name: str) -> bool:
    """Is the process named in a temp name still running? A zombie (killed, not yet reaped) is
    not: its temp file is a leftover."""
    pid = temp_name[len(TEMP_PREFIX) :].split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def could_be_ours(rules: PathRules, name: str) -> bool:
    """Is `name` one we would give a thumbnail: a photo's own name, or a photo's name with the
    extension of an output format added (x.jpeg.png)?"""
    if name.startswith(".") or not name.lower().endswith(OUR_EXTS):
        return False
    stem, _ext = os.path.splitext(name)
    return rules.names_photo(name) or rules.names_photo(stem)


def sweep_orphans(rules: PathRules, tops: list[str], expected: set[str], since_ns: int,
                  allow: Callable[[int, int], bool] | None = None) -> int:
    """Remove files of ours below `tops` (output folders) that are not in `expected`, then the
    folders that leaves empty (not the tops). A file written after `since_ns` (ctime) is a
    thumbnail of a photo that arrived during the walk: kept. `allow(removing, total)` is asked
    once the orphans are counted, before any goes (roots.py's mass-removal guard): False
    removes nothing."""
    found: list[tuple[str, str, list[str]]] = []  # (top, folder, orphans), deepest folders first
    total = 0
    for top in tops:
        for folder, _dirs, files in os.walk(top, topdown=False):
            orphans = []
            for name in files:
                if not could_be_ours(rules, name):
                    continue
                total += 1
                path = os.path.join(folder, name)
                if path in expected:
                    continue
                try:
                    if os.lstat(path).st_ctime_ns < since_ns:
                        orphans.append(path)
                except OSError:
                    continue
            found.append((top, folder, orphans))
    if allow is not None and not allow(sum(len(orphans) for _top, _folder, orphans in found), total):
        return 0
    removed = 0
    for top, folder, orphans in found:
        gone: list[str] = []  # hooks: one "removed" event per folder
        for path in orphans:
            try:
                os.unlink(path)
                removed += 1
                gone.append(path)
            except OSError:
                continue
        treeevents.removed(gone, why="orphan", folder=folder)
        if folder != top:
            try:
                os.rmdir(folder)  # only succeeds when empty
            except OSError:
                pass
    return removed


def move_folder_thumbnails(rules: PathRules, src: str, dest: str) -> None:
    """A photo folder renamed inside the watched tree (`src` -> `dest`): each size's thumbnail
    folder follows it, so nothing is rendered again. Freedesktop thumbnails are named by the
    photo's URI and cannot follow: the photos' next look renders them anew."""
    if rules.config.output.style == "freedesktop":
        return
    old, new = rules.folder(src), rules.folder(dest)
    carried = []  # hooks: one "moved" event
    for (size, before), (_same, after) in zip(old.bases, new.bases):
        if before != after and os.path.isdir(before):
            carry_thumbnails(before, after)
            carried.append((size.name, before, after))
    treeevents.moved(src, dest, carried)


def remove_photo_thumbnails(rules: PathRules, path: str) -> int:
    """A photo seen going (deleted, or renamed away): its thumbnails go, with their event."""
    gone: list[str] = []
    removed = remove_thumbnails(rules.targets(path), gone)
    treeevents.removed(gone, why="deleted", photo=path)
    return removed


def remove_folder_thumbnails(rules: PathRules, folder: str) -> int:
    """A photo folder seen going from the tree (deleted, or moved out): remove its thumbnail
    folders (files of ours, then the folders left empty), unless it is there again or the config
    keeps thumbnails of deleted photos. Returns how many thumbnails went."""
    if os.path.lexists(folder) or not rules.sweepable() or not rules.config.output.delete_with_photo:
        return 0
    bases = [base for _size, base in rules.folder(folder).bases if os.path.isdir(base)]
    removed = sweep_orphans(rules, bases, set(), time.time_ns())
    for base in bases:
        try:
            os.rmdir(base)
        except OSError:
            pass  # not empty: a photo arrived under this name meanwhile
    if removed:
        logger.info("removed %d thumbnail(s) of folder %s, gone from the watched tree", removed, shown(folder))
    return removed


def carry_thumbnails(before: str, after: str) -> None:
    """Move a thumbnail folder along with its photos' folder, renamed. When `after` exists
    already (a photo was rendered under the new name before the master heard of the rename),
    the two are merged: what is in `after` is the newer and stays, the rest moves over. A
    worker's temp file stays where its worker will look for it."""
    try:
        os.makedirs(os.path.dirname(after), exist_ok=True)
        os.rename(before, after)
        return
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            logger.debug("could not move thumbnails %s -> %s: %s", before, after, err)
            return
    for folder, _dirs, files in os.walk(before, topdown=False):
        into = os.path.normpath(os.path.join(after, os.path.relpath(folder, before)))
        try:
            os.makedirs(into, exist_ok=True)
            for name in files:
                if name.startswith(TEMP_PREFIX):
                    continue
                old, new = os.path.join(folder, name), os.path.join(into, name)
                if os.path.lexists(new):
                    os.unlink(old)
                else:
                    os.rename(old, new)
            os.rmdir(folder)
        except OSError as err:
            logger.debug("could not move thumbnails %s -> %s: %s", folder, into, err)
