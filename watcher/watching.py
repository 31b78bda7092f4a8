"""The producers' side: watchdog observers on the watched folders, and keeping them alive.

inotify by default; a polling observer for folders inotify cannot watch (the kernel's watch
limit) or when the config asks for polling (network mounts). A watched folder that disappears
is unwatched and watched again when it comes back; a dead observer thread is restarted. Every
re-watch asks for a rescan, since whatever happened meanwhile sent no event.

Our own output trees are not watched with inotify (see _output_blind_observer): each thumbnail
written there would otherwise wake the observer four times, and every thumbnail folder would
take one more of the user's inotify watches.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

from watchdog.observers.inotify import InotifyObserver

from .config import Config
from .events import INOTIFY_EVENTS, Notice, PhotoEventHandler
from .paths import PathRules, shown
from .poller import Poller

logger = logging.getLogger("watcher")

Rescan = Callable[[str, tuple[str, ...]], None]


class Watching:
    def __init__(self, config: Config, rules: PathRules, notice: Callable[[Notice], None], rescan: Rescan,
                 available: Callable[[str], bool] = lambda root: True):
        self.config = config
        self.available = available  # roots.py: an unmounted or stale root is not watched (it says why)
        self.rules = rules
        self.notice = notice
        self.rescan = rescan
        self.inotify: InotifyObserver | None = None
        self.polling: Poller | None = None
        self.watches: dict[str, tuple[object, object]] = {}
        self.polled_below: dict[str, object] = {}  # subfolders inotify could not watch (the watch limit)
        self.unwatchable: list[str] = []  # reported by the observer thread, handled by check()
        self.missing: set[str] = set()
        self.stopping = False
        self.hooks: list[str] = []

    def start(self) -> None:
        if self.config.watch.observer != "polling":
            self.inotify, self.hooks = _output_blind_observer(
                lambda path: self.rules.is_output(os.fsdecode(path)), self._overflowed, self._unwatchable)
            if "overflow" not in self.hooks:
                _OverflowWatch.install(self._overflowed)
            self.inotify.name = "thumbwatch-inotify"
            self.inotify.start()
        for root in self.rules.roots:
            self.watch(root)

    def _unwatchable(self, path: bytes) -> None:
        # observer thread: no file system work here, check() takes it from there
        self.unwatchable.append(os.fsdecode(path))

    def _overflowed(self) -> None:
        logger.warning("the kernel's inotify queue overflowed and events were lost; rescanning the watched folders")
        self.rescan("overflow rescan", self.rules.roots)

    def _handler(self, polling: bool) -> PhotoEventHandler:
        return PhotoEventHandler(lambda: self.rules, self.notice, polling=polling)

    def _polling_observer(self) -> Poller:
        if self.polling is None:
            watch = self.config.watch
            self.polling = Poller(interval=watch.poll_interval, lister=self._polled_entries, descend=self._polled_folder,
                                  budget=watch.poll_budget)
            self.polling.name = "thumbwatch-polling"
            self.polling.start()
        return self.polling

    def _polled_entries(self, folder: str) -> list[os.DirEntry]:
        """What a poll sees of a folder: everything but our output trees. Their churn is ours
        (polling it would double a poll's work), and their files and folders, removed and their
        inode numbers reused, would pair up with new photos as false moves."""
        rules = self.rules
        with os.scandir(folder) as entries:
            return [entry for entry in entries if not rules.is_output(entry.path)]

    def _polled_folder(self, entry: os.DirEntry) -> bool:
        """Does the poller go into this subfolder? Where a walk would (scan.walk's rule)."""
        rules = self.rules
        if not rules.wants_dir(entry.path):
            return False
        return not entry.is_symlink() or (rules.config.watch.follow_symlinks and rules.followable(entry.path))

    def watch(self, root: str) -> None:
        if not self.available(root):
            self.missing.add(root)
            return
        if not os.path.isdir(root):
            if root not in self.missing:
                logger.warning("watched folder %s does not exist; watching for it to appear", root)
            self.missing.add(root)
            return
        self.missing.discard(root)
        recursive = self.config.watch.recursive
        network = network_fs(root) if self.config.watch.observer == "auto" else None
        if network and root not in self.watches:
            logger.info("%s is on a network file system (%s): polling it every %g s, since inotify cannot see what "
                        "other machines write there", shown(root), network, self.config.watch.poll_interval)
        if self.inotify is not None and not network:
            try:
                watch = self.inotify.schedule(self._handler(False), root, recursive=recursive, event_filter=list(INOTIFY_EVENTS))
                self.watches[root] = (self.inotify, watch)
                return
            except OSError as err:
                if err.errno not in (errno.ENOSPC, errno.EMFILE):
                    raise
                logger.error(
                    "cannot watch %s with inotify: %s (raise fs.inotify.max_user_watches / max_user_instances with sysctl); "
                    "falling back to polling for this folder",
                    root, err.strerror,
                )
        observer = self._polling_observer()
        watch = observer.schedule(self._handler(True), root, recursive=recursive)
        self.watches[root] = (observer, watch)

    def resync(self, root: str) -> None:
        """Watch a folder afresh. watchdog keeps the watches of a folder moved out of the tree
        (inotify follows the folder, not its name) under their old names, so events from it —
        or from it moved back in under another name — would carry wrong paths; a new watch
        group starts from what is on disk. The rescan finds whatever happened in between."""
        if root in self.watches and self.inotify is not None and self.watches[root][0] is self.inotify:
            self.unwatch(root)
            self.watch(root)
            self.rescan("re-watch", (root,))

    def unwatch(self, root: str) -> None:
        entry = self.watches.pop(root, None)
        if entry is not None:
            observer, watch = entry
            try:
                observer.unschedule(watch)  # type: ignore[attr-defined]
            except (KeyError, OSError):
                pass

    def update(self, config: Config, rules: PathRules) -> None:
        """A reload: new rules for every handler, watched folders added and removed."""
        old_roots, new_roots = set(self.rules.roots), set(rules.roots)
        outputs_moved = (self.rules.output_roots, self.config.output.style) != (rules.output_roots, config.output.style)
        old, new = self.config.watch, config.watch
        polled_anew = self.polling is not None and (outputs_moved or (old.ignore, old.follow_symlinks, old.poll_interval, old.poll_budget)
                                                    != (new.ignore, new.follow_symlinks, new.poll_interval, new.poll_budget))
        self.config, self.rules = config, rules  # the handlers read self.rules at every event
        if polled_anew:
            self._poll_anew()
        for root in sorted(old_roots - new_roots):
            self.unwatch(root)
            self.missing.discard(root)
            logger.info("stopped watching %s", root)
        for root in sorted(new_roots - old_roots):
            if config.watch.create and self.available(root):  # never on top of a root that went (roots.py)
                Path(root).mkdir(parents=True, exist_ok=True)
            self.watch(root)
            logger.info("now watching %s", root)
        if outputs_moved and self.inotify is not None:
            # the old output folders are plain folders now, and unwatched: watch afresh (the
            # reload's rescan finds whatever arrived meanwhile)
            for root in sorted((old_roots & new_roots) - self.missing):
                self.unwatch(root)
                self.watch(root)

    def _poll_anew(self) -> None:
        """A new poller for new polling rules (what it goes into, how often, its budget): each
        polled folder gets a new first listing. The reload's rescan finds what changed meanwhile."""
        polled = [root for root, (observer, _watch) in self.watches.items() if observer is self.polling]
        for root in polled:
            self.unwatch(root)
        below, self.polled_below = list(self.polled_below), {}
        assert self.polling is not None
        self.polling.stop()
        self.polling.join(5)
        self.polling = None
        for root in polled:
            self.watch(root)
        if below:
            observer = self._polling_observer()
            for top in below:
                self.polled_below[top] = observer.schedule(self._handler(True), top, recursive=True)

    def check(self) -> None:
        """The health check: observer threads alive, every folder watched, gone folders back."""
        if self.unwatchable:
            self._poll_unwatchable()
        for observer in (self.inotify, self.polling):
            if observer is not None and not observer.is_alive() and not self.stopping:
                logger.error("the file system observer thread died; restarting it and rescanning")
                self._restart()
                return
        if self.inotify is not None:
            for root, (observer, watch) in list(self.watches.items()):
                if observer is self.inotify and not self._emitter_alive(watch) and os.path.isdir(root):
                    logger.error("inotify stopped watching %s; watching it again and rescanning", root)
                    self.unwatch(root)
                    self.watch(root)
                    self.rescan("re-watch", (root,))
        for root in self.rules.roots:
            present = os.path.isdir(root) and self.available(root)
            if root in self.watches and not present:
                logger.warning("watched folder %s is gone; watching for it to come back", root)
                self.unwatch(root)
                self.missing.add(root)
            elif root in self.missing and present:
                logger.info("watched folder %s is back; watching it and catching up", root)
                self.watch(root)
                self.rescan("catch-up of returned folder", (root,))

    def _emitter_alive(self, watch: object) -> bool:
        assert self.inotify is not None
        emitters = [e for e in self.inotify.emitters if e.watch == watch]
        return not emitters or emitters[0].is_alive()

    def _poll_unwatchable(self) -> None:
        """Folders inotify could not watch below a watched folder (the watch limit, which
        watchdog reports only for the top folder): say so once per batch, with the number the
        limit would need, and poll the topmost of them."""
        paths, self.unwatchable[:] = sorted(set(self.unwatchable)), []
        fresh = [p for p in paths if os.path.isdir(p) and not any(p == q or p.startswith(q + os.sep) for q in self.polled_below)]
        if not fresh:
            return
        tops = [p for p in fresh if not any(p.startswith(q + os.sep) for q in fresh)]
        folders = len(fresh)
        limit = _read_int("/proc/sys/user/max_inotify_watches") or _read_int("/proc/sys/fs/inotify/max_user_watches")
        logger.error(
            "cannot watch %d folder(s) below %s with inotify: the watch limit is reached (fs.inotify.max_user_watches = %s; "
            "raise it to at least %s with sysctl); polling those folders every %g s meanwhile",
            folders, shown(os.path.commonpath(tops)), limit or "?", (limit or 0) + folders, self.config.watch.poll_interval,
        )
        observer = self._polling_observer()
        for top in tops:
            self.polled_below[top] = observer.schedule(self._handler(True), top, recursive=True)
        self.rescan("rescan of unwatched folders", tuple(tops))

    def _restart(self) -> None:
        self.stop()
        self.stopping = False
        self.watches.clear()
        self.polled_below.clear()
        self.inotify = self.polling = None
        self.start()
        self.rescan("rescan", self.rules.roots)

    def stop(self) -> None:
        self.stopping = True
        for observer in (self.inotify, self.polling):
            if observer is not None:
                try:
                    observer.stop()
                    observer.join(5)
                except Exception:
                    logger.exception("stopping the observer failed")


def _output_blind_observer(skip: Callable[[bytes], bool], overflowed: Callable[[], None],
                           unwatchable: Callable[[bytes], None]) -> tuple[InotifyObserver, list[str]]:
    """watchdog's inotify observer with three hooks, and the names of the hooks in place:

    - "output-blind": no watch on a folder for which `skip` is true (below a watched folder's
      top; new ones included), so our own thumbnails wake nobody;
    - "overflow": `overflowed()` when the kernel's inotify queue overflows;
    - "watch-limit": `unwatchable(path)` for a subfolder inotify could not watch;
    - "rewatch": a folder this group watches already, under an old name, is pointed at its new
      name instead of being registered a second time. watchdog keeps the watches of a folder
      moved out of the tree (inotify follows the inode, and an unpaired move-out is only known
      later); moved back in under any name before that, watchdog registered the same inode
      again and warned "Callback with id ... already exists" on stderr.

    watchdog has no public API for any of these; they subclass its watch group, whose private
    names are checked here against TESTED_WATCHDOG. With another watchdog the stock observer
    runs (one WARNING says so): everything still works, with the thumbnails' own events
    filtered later, overflow found through watchdog's log line, and the watch limit found
    only for top folders.
    """
    observer = InotifyObserver(generate_full_events=True)
    try:
        from watchdog.observers.inotify import InotifyFullEmitter, InotifyWatchGroup
        from watchdog.observers.inotify_c import InotifyFD, Watch
    except ImportError:
        InotifyFullEmitter = InotifyWatchGroup = InotifyFD = Watch = None  # noqa: N806
    if InotifyWatchGroup is None or not (
        all(callable(getattr(InotifyWatchGroup, name, None)) for name in ("_add_callback", "on_queue_overflow"))
        and {"_inotify_fd", "_id", "_active_callbacks_by_path", "_active_callbacks_by_watch"} <= set(InotifyWatchGroup.__annotations__)
        and callable(getattr(InotifyFD, "_get_or_create_watch", None)) and "callbacks" in getattr(Watch, "__annotations__", {})
        and getattr(observer, "_emitter_class", None) is InotifyFullEmitter
    ):
        logger.warning("watchdog %s is not one thumbwatch was tested with (%s): running without its inotify hooks",
                       _watchdog_version(), TESTED_WATCHDOG)
        return observer, []

    class Group(InotifyWatchGroup):
        def _add_callback(self, path: bytes) -> None:
            if path != self.path and skip(path):
                return
            if self._watched_already(path):
                return
            super()._add_callback(path)
            if path not in self._active_callbacks_by_path and os.path.isdir(path):
                unwatchable(path)  # watchdog swallowed the error (ENOSPC: the watch limit)

        def _watched_already(self, path: bytes) -> bool:
            """Is this folder's inode watched by this group already (under whatever name)? Then
            its watch takes the new name. The kernel says: inotify_add_watch on a watched inode
            returns its watch descriptor (a new inode with a reused number gets a new one)."""
            fd = self._inotify_fd
            lock = getattr(fd, "_lock", None)
            if lock is None:
                return False
            try:
                with lock:
                    watch = fd._get_or_create_watch(path, self.event_mask)
            except OSError:
                return False  # watchdog's own call reports it (the watch limit, a folder gone)
            if self._id not in watch.callbacks:
                return False
            old = self._active_callbacks_by_watch.get(watch.wd)
            if old is not None and self._active_callbacks_by_path.get(old) == watch.wd:
                del self._active_callbacks_by_path[old]
            self._active_callbacks_by_watch[watch.wd] = path
            self._active_callbacks_by_path[path] = watch.wd
            return True

        def on_queue_overflow(self) -> None:
            super().on_queue_overflow()
            overflowed()

    class Emitter(InotifyFullEmitter):
        def on_thread_start(self) -> None:  # InotifyEmitter's, with our group
            self._inotify = Group(
                self._inotify_fd, os.fsencode(self.watch.path), is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(), follow_symlink=self.watch.follow_symlink,
            )

    observer._emitter_class = Emitter
    return observer, ["output-blind", "overflow", "watch-limit", "rewatch"]


TESTED_WATCHDOG = "7.1"

NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "afs", "lustre", "gpfs", "beegfs",
              "fuse.sshfs", "fuse.glusterfs", "fuse.cephfs", "fuse.s3fs", "fuse.rclone")


def network_fs(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the network file system holding `path`, or None for a local one (the mount
    whose mount point is the longest prefix of the path's real location)."""
    real = os.path.realpath(path)
    best, fstype = "", None
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _sep, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                point = fields[4].replace("\\040", " ")
                if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                    best, fstype = point, right.split()[0]
    except OSError:
        return None
    return fstype if fstype in NETWORK_FS else None


def _watchdog_version() -> str:
    try:
        from watchdog.version import VERSION_STRING

        return VERSION_STRING
    except ImportError:
        return "(unknown)"


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


class _OverflowWatch(logging.Handler):
    """The fallback when the overflow hook is not in place: watchdog reports an inotify queue
    overflow (IN_Q_OVERFLOW) as a log warning; this turns that warning into a rescan."""

    _installed: "_OverflowWatch | None" = None

    def __init__(self, callback: Callable[[], None]):
        super().__init__(logging.WARNING)
        self.callback = callback

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.callback()

    @classmethod
    def install(cls, callback: Callable[[], None]) -> None:
        source = logging.getLogger("watchdog.observers.inotify_c")
        if cls._installed is not None:
            source.removeHandler(cls._installed)
        cls._installed = cls(callback)
        source.addHandler(cls._installed)
        source.setLevel(logging.WARNING)  # even if "watchdog" as a whole is turned down
