"""A watched root's identity: how the watcher and render hosts tell the real photo folder from
an empty mount point, a share not mounted on this host, or another file system in its place.

The watcher writes a small marker file into each root it can write to; its id is the root's
identity from then on. Anyone who later looks at the root (the watcher after a remount or a
restart, a render host on another machine) reads the marker: missing or different means "this
is not the folder I know", never "the folder is empty".

The watcher's side, RootMonitor: which roots are available now, and why not (gone, ESTALE,
ENOTCONN, EIO, no longer mounted, another file system in its place), from a few stats; each
root's identity from the last run kept in the state folder (roots.json), so an empty or missing
mount point is recognised at start too; and the mass-removal guard every orphan sweep asks.
Whoever removes thumbnails asks first: nothing is removed under a root that is not there.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .state import Damaged, read_checked, write_json_atomic

logger = logging.getLogger(__name__)

MARKER = ".thumbwatch-root"


def read_marker(root: str) -> str | None:
    """The id in `root`'s marker, or None when there is none (or it cannot be read)."""
    try:
        with open(os.path.join(root, MARKER), "rb") as f:
            data = json.loads(f.read(4096))
    except (OSError, ValueError):
        return None
    ident = data.get("id") if isinstance(data, dict) else None
    return ident if isinstance(ident, str) and ident else None


def write_marker(root: str) -> str | None:
    """Make sure `root` carries a marker and return its id; None when the root is read-only to us
    (the caller then falls back on what it can see without one)."""
    ident = read_marker(root)
    if ident is not None:
        return ident
    ident = uuid.uuid4().hex
    path = os.path.join(root, MARKER)
    temp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temp, "w") as f:
            json.dump({"id": ident, "what": "thumbwatch: this folder is a watched root; keep this file"}, f)
        try:
            os.link(temp, path)  # never over a marker another watcher wrote meanwhile (os.replace would)
            os.unlink(temp)
        except FileExistsError:
            os.unlink(temp)
            return read_marker(root)
        except OSError:  # no hard links here (some SMB and FAT mounts): the plain rename
            os.replace(temp, path)
    except OSError as err:
        logger.debug("cannot write the root marker in %s: %s", root, err)
        try:
            os.unlink(temp)
        except OSError:
            pass
        return None
    return ident


# ---- which watched roots are there: absence is not deletion --------------------------------

ROOTS_FILE = "roots.json"  # in the state folder: each root's identity from the last run

# The mass-removal guard: a pass that would remove more than this share of the thumbnails it
# looked at, and more than this many, without their photos having been seen going, is held.
MASS_REMOVAL_SHARE = 0.5
MASS_REMOVAL_MIN = 1000

# What an error on a root's stat means, in words a person can act on.
_GONE_REASONS = {
    errno.ENOENT: "it does not exist (a mount point that went, or a share not mounted?)",
    errno.ESTALE: "stale file handle (ESTALE: the file server no longer knows it; remount it)",
    errno.ENOTCONN: "transport endpoint is not connected (ENOTCONN: the FUSE process behind it is gone; remount it)",
    errno.EIO: "input/output error (EIO: a failing disk, or a network or FUSE mount in trouble)",
    errno.EHOSTDOWN: "host is down (EHOSTDOWN)",
    errno.ETIMEDOUT: "timed out (ETIMEDOUT: the file server does not answer)",
}


@dataclass(frozen=True)
class Identity:
    """What we know a root by: on another device than its parent (a mount point, a subvolume)
    or not, its device number, and its marker's id (None: we cannot write there)."""

    mounted: bool
    dev: int
    marker: str | None

    @classmethod
    def checked(cls, raw: Any) -> "Identity | None":
        if not isinstance(raw, dict):
            return None
        mounted, dev, marker = raw.get("mounted"), raw.get("dev"), raw.get("marker")
        if not isinstance(mounted, bool) or isinstance(dev, bool) or not isinstance(dev, int):
            return None
        if marker is not None and not (isinstance(marker, str) and 0 < len(marker) < 200):
            return None
        return cls(mounted, dev, marker)


def _roots_file(data: Any) -> dict[str, Identity]:
    if not isinstance(data, dict) or not isinstance(data.get("roots"), dict):
        raise Damaged("expected an object with the roots' identities")
    known = {}
    for root, raw in data["roots"].items():
        identity = Identity.checked(raw)
        if identity is not None and root.startswith("/"):
            known[root] = identity
    return known


def remembered(state_dir: Path, *, repair: bool = False) -> dict[str, Identity]:
    """The roots' identities from the last run (empty when there is no record, or it is damaged:
    with `repair`, the daemon's start, a damaged one is moved aside and named in a WARNING)."""
    try:
        return read_checked(state_dir / ROOTS_FILE, _roots_file, repair=repair) or {}
    except (OSError, Damaged):
        return {}


def _why_not(root: str, known: Identity | None, seen: dict[str, tuple[tuple[int, ...], str | None]]
             ) -> tuple[str | None, Identity | None]:
    """(why `root` is unavailable, None when it is available; what it looks like now). Costs a
    stat of the root, of its parent and of its marker; the marker is read again only when its
    stat changed (`seen` keeps the last one: no open() every half second on a network mount)."""
    try:
        st = os.stat(root)
    except OSError as err:
        return _GONE_REASONS.get(err.errno or 0, f"cannot look at it: {err.strerror or err}"), None
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a folder", None
    try:
        mounted = os.stat(os.path.dirname(root) or "/").st_dev != st.st_dev or os.path.dirname(root) == root
    except OSError:
        mounted = True
    try:
        mst = os.stat(os.path.join(root, MARKER))
        key = (mst.st_dev, mst.st_ino, mst.st_mtime_ns, mst.st_ctime_ns, mst.st_size)
        last = seen.get(root)
        marker = last[1] if last is not None and last[0] == key else read_marker(root)
        seen[root] = (key, marker)
    except FileNotFoundError:
        marker = None
    except OSError as err:
        return _GONE_REASONS.get(err.errno or 0, f"cannot read its marker {MARKER}: {err.strerror or err}"), None
    now = Identity(mounted, st.st_dev, marker)
    if known is None:
        return None, now
    if known.mounted and not mounted:
        return "not mounted: it was a mount point, and is an empty folder on its parent's file system now", now
    if known.marker is not None and marker != known.marker:
        if marker is not None:
            return f"it holds another folder's marker ({MARKER} id {marker}, expected {known.marker})", now
        if known.mounted or st.st_dev != known.dev:
            return f"its marker {MARKER} is missing: another file system than the one watched before", now
    return None, now


class RootMonitor:
    """Which watched roots are available, and why not. A root is *unavailable* — never *empty* —
    when it is gone, unreadable (ESTALE, ENOTCONN, EIO), no longer mounted where it was a mount
    point, or another file system than the one remembered (its marker). Nothing under an
    unavailable root is removed, and it is not watched until it is back.

    `check(root)` looks now (a few stats: cheap enough for every removal to ask first);
    `changes()` hands the loop the roots that went or came back since it last asked. Thread
    safe: the scanner asks too."""

    def __init__(self, roots: tuple[str, ...], state_dir: Path, *, create: bool = False):
        self.roots = roots
        self.state_dir = state_dir
        self.create = create
        self.known: dict[str, Identity] = {}
        self.why: dict[str, str] = {}  # the unavailable roots, with the reason
        self.epoch: dict[str, int] = {}  # bumped each time a root goes: a walk spanning it is void
        self.held: dict[str, tuple[int, int]] = {}  # mass removals held back: (removing, of total)
        self._changes: list[tuple[str, str | None]] = []
        self._markers_seen: dict[str, tuple[tuple[int, ...], str | None]] = {}
        self._dirty = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """At start: recall each root's identity, create a root never seen before when
        watch.create says so (never one we knew: a missing mount point stays missing), check
        them all, mark the ones we can, and remember what we found."""
        self.known = remembered(self.state_dir, repair=True)
        for root in self.roots:
            self._create(root)
            self.check(root)
        self._changes.clear()  # at start the ERROR lines are the whole story
        self.save()

    def update(self, roots: tuple[str, ...]) -> None:
        """A reload: roots added are checked (and created when new and watch.create says so)."""
        added = [root for root in roots if root not in self.roots]
        self.roots = roots
        with self._lock:
            for gone in set(self.why) - set(roots):
                del self.why[gone]  # no longer watched: no longer reported
        for root in added:
            self._create(root)
            self.check(root)
        self.save()

    def _create(self, root: str) -> None:
        """watch.create: make a root never seen before. One we knew stays missing (a mount point
        that went); one that cannot be made is reported by check()."""
        if self.create and root not in self.known and not os.path.lexists(root):
            try:
                os.makedirs(root, exist_ok=True)
            except OSError as err:
                logger.debug("cannot create %s: %s", root, err)

    def check(self, root: str) -> str | None:
        """Look at `root` now: why it is unavailable, or None. Says so once (ERROR) when it
        goes; its coming back is the watcher's to say (it watches it again and catches up)."""
        with self._lock:
            known = self.known.get(root)
        why, now = _why_not(root, known, self._markers_seen)
        if why is None and now is not None and now.marker is None and (known is None or known.marker is not None):
            # new to us, or made anew on the same file system: mark it (read-only roots go without)
            now = replace(now, marker=write_marker(root))
        with self._lock:
            was = self.why.get(root)
            if why is None:
                self.why.pop(root, None)
                if now is not None and now != known:
                    self.known[root] = now
                    self._dirty = True
                if was is not None:
                    self._changes.append((root, None))
                return None
            self.why[root] = why
            if was is None:
                self.epoch[root] = self.epoch.get(root, 0) + 1
            if why != was:
                self._changes.append((root, why))
        if was is None:
            word = "gone" if why == _GONE_REASONS[errno.ENOENT] else "unavailable"
            logger.error("watched folder %s is %s: %s; no thumbnail under it is removed while it is away, and it is "
                         "watched again when it is back", root, word, why)
        elif why != was:
            logger.warning("watched folder %s is still unavailable, now: %s", root, why)
        return why

    def available(self, root: str) -> bool:
        """What the last check found (the watcher's question; removals ask check() instead)."""
        with self._lock:
            return root not in self.why

    def present(self, path: str) -> bool:
        """May something under `path` be removed now: is its root available (looked at now)?
        True for a path under no watched root."""
        root = next((r for r in self.roots if path == r or path.startswith(r + os.sep)), None)
        return root is None or self.check(root) is None

    def unavailable(self) -> dict[str, str]:
        with self._lock:
            return dict(self.why)

    def changes(self) -> list[tuple[str, str | None]]:
        """The roots that went (root, why) or came back (root, None) since the last call; saves
        what is new about the roots while at it (the loop's thread calls this)."""
        with self._lock:
            changes, self._changes = self._changes, []
        if self._dirty:
            self.save()
        return changes

    def save(self) -> None:
        with self._lock:
            data = {"roots": {root: vars(identity) for root, identity in sorted(self.known.items())}}
            self._dirty = False
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.state_dir / ROOTS_FILE, data)
        except OSError as err:
            logger.warning("cannot remember the watched folders' identities in %s: %s", self.state_dir / ROOTS_FILE, err.strerror or err)

    # ---- the mass-removal guard ------------------------------------------------------------

    def removal_guard(self, where: str, *, confirmed: bool):
        """allow(removing, total) for a sweep of `where` (a root, or a folder in one): False —
        and one ERROR — when the sweep would remove more than MASS_REMOVAL_SHARE of the
        thumbnails it looked at and more than MASS_REMOVAL_MIN, unless `confirmed`."""
        root = next((r for r in self.roots if where == r or where.startswith(r + os.sep)), where)

        def allow(removing: int, total: int) -> bool:
            if confirmed or removing <= MASS_REMOVAL_MIN or removing <= total * MASS_REMOVAL_SHARE:
                with self._lock:
                    self.held.pop(root, None)
                return True
            with self._lock:
                self.held[root] = (removing, total)
            logger.error(
                "holding back the removal of %d of %d thumbnail(s) under %s: their photos are not there, but nobody saw "
                "them go (more than %d and more than %d %% in one pass: an emptied or wrong folder?). If those photos "
                "are really gone, run `thumbwatch scan --confirm-removals` (or set output.confirm_mass_removal: false)",
                removing, total, root, MASS_REMOVAL_MIN, round(MASS_REMOVAL_SHARE * 100),
            )
            return False

        return allow

    def held_removals(self) -> dict[str, int]:
        with self._lock:
            return {root: removing for root, (removing, _total) in self.held.items()}
