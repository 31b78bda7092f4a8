"""The supervisor: start order, the step() loop, signals, reload, drain.

What to render is admission's business (admission.py), rendering is the executor's (built by
backends.make_executor), the thumbnail tree is thumbtree's and what the daemon says about
itself is status's; this module runs the loop that connects them, and keeps the watched folders
(Folders: folder notices, roots that go and come back) in step with the observers. Start order: state →
executor (workers spawned before any thread of ours) → observers → ready → catch-up scan.
Signal handlers only record the signal; step() reads it and calls the one handler for that
signal. step() waits on the executor's waitables and a wake-up pipe, so an idle daemon sleeps
in select(). Whatever goes wrong in the loop, drain() still runs: the photos in hand finish
and the failure records are saved before the process exits.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import wait
from pathlib import Path

from . import config as config_mod, hooks, logsetup
from .admission import Admission
from .backends import make_executor
from .config import EX_CONFIG, Config, ConfigError
from .control import Control
from .events import Notice
from .executor import Executor, ExecutorBroken, WakePipe
from .paths import PathRules, shown
from .render import RenderSettings
from .render.formats import require_decoders
from .roots import RootMonitor
from .scan import Scanner, ScanReport
from .state import FailureStore
from .status import Stats, Status
from .systemd import Notifier
from .thumbtree import remove_stale_temps
from .watching import Watching

logger = logging.getLogger("watcher")

PERIODIC = 0.5  # seconds between housekeeping passes
# Notices about one photo (and a re-stamp barrier), and what admission hears of them; the rest
# are about folders.
PHOTO_NOTICES = {"arrived": "arrived", "settle": "settle", "created": "created", "attrib": "attributes_changed",
                 "deleted": "deleted", "barrier": "restamp_due"}


class Folders:
    """The loop's upkeep of the watched folders: notices about folders (a new one is walked; one
    renamed or gone goes to admission and has its root's inotify watches renewed), and watched
    roots that go and come back (roots.py), kept in step with the observers (watching.py)."""

    def __init__(self, rules: PathRules, *, admission: Admission, watching: Watching, roots: RootMonitor,
                 rescan: Callable[[str, tuple[str, ...]], None], status: Status, one_shot: bool):
        self.rules = rules  # replaced on a reload
        self.admission, self.watching, self.roots, self.status = admission, watching, roots, status
        self.rescan = rescan
        self.one_shot = one_shot
        self.resync: set[str] = set()  # watched folders whose inotify watches went stale

    def notice(self, notice: Notice) -> None:
        match notice.kind:
            case "new-dir":
                if not notice.polled:
                    self.rescan("new folder", (notice.path,))
            case "link":
                if not notice.polled and os.path.isdir(notice.path) and self.rules.followable(notice.path):
                    self.rescan("new folder", (notice.path,))
            case "dir-moved":
                if self.admission.folder_moved(notice.path, notice.dest):
                    if not notice.polled:  # a poll names every photo of it; a walk would find states it never saw
                        self.rescan("new folder", (notice.dest,))
                else:
                    self._resync_later(notice.path)
            case "dir-deleted":
                if notice.path in self.rules.roots:
                    self.check_roots((notice.path,))
                    self.watching.check()
                else:
                    self._resync_later(notice.path)
                    self.admission.folder_gone(notice.path)

    def _resync_later(self, folder: str) -> None:
        """A folder left the tree: its root's inotify watches are renewed next pass (Watching.resync)."""
        root = self.rules.root_of(folder)
        if root is not None and not self.one_shot:
            self.resync.add(root)

    def tick(self) -> None:
        self.check_roots()  # a few stats per root (roots.py): before the watcher's own check, which trusts it
        while self.resync:
            self.watching.resync(self.resync.pop())

    def check_roots(self, roots: tuple[str, ...] | None = None) -> None:
        for root in roots or self.rules.roots:
            self.roots.check(root)
        for root, why in self.roots.changes():
            if why is not None and not self.one_shot:
                # its watches are of a file system no longer there (or of the folder beneath it):
                # Watching.check() watches it afresh and catches up once it is back
                self.watching.unwatch(root)
                self.watching.missing.add(root)
            self.status.write("running")


class Service:
    SIGNALS = {signal.SIGTERM: "handle_term", signal.SIGINT: "handle_int", signal.SIGHUP: "handle_hup"}

    def __init__(self, config: Config, *, notifier: Notifier | None = None, one_shot: bool = False,
                 base_dir: Path | None = None, executor: Executor | None = None, clock=time.monotonic):
        self.config = config
        self.base_dir = base_dir or Path.cwd()
        self.notifier = notifier or Notifier()
        self.one_shot = one_shot
        self.clock = clock
        self.rules = PathRules(config)
        self.settings = RenderSettings(config.output, config.limits.max_pixels)
        self.pipe = WakePipe()
        self.wake = self.pipe.wake
        self.failures = FailureStore(config.state.dir)
        self.stats = Stats()
        self.roots = RootMonitor(self.rules.roots, config.state.dir, create=config.watch.create)
        self.admission = Admission(config, self.rules, self.failures, self.stats, wake=self.wake, clock=clock,
                                   present=self.roots.present)
        self.executor = executor or make_executor(config)
        self.notices: deque[Notice] = deque()
        self.signals: deque[int] = deque()
        self.stopping = False
        self.forced = False
        self.exit_code = 0
        self.catchup_done = threading.Event()
        self.scanner: Scanner | None = None
        self.watching = Watching(config, self.rules, self.notice, self.rescan, available=self.roots.available)
        self.status = Status(config, self.rules, stats=self.stats, admission=self.admission, executor=self.executor,
                             watching=self.watching, failures=self.failures, notifier=self.notifier, clock=clock,
                             roots=self.roots)
        self.folders = Folders(self.rules, admission=self.admission, watching=self.watching, roots=self.roots,
                               rescan=self.rescan, status=self.status, one_shot=one_shot)
        self.control = Control(self)  # the admins' socket: commands answered in step(), pause (control.py)
        self._last_periodic = 0.0
        self._last_watchdog = 0.0
        self.hooks: hooks.Hooks | None = None
        self._last_rescan = clock()

    # ---- plumbing -------------------------------------------------------------------------

    def notice(self, notice: Notice) -> None:
        """From the observer and scanner threads: one ordered channel to the loop."""
        self.notices.append(notice)
        self.wake()

    def on_signal(self, signum: int, _frame: object) -> None:
        # NO LOGGING here: just record it; step() acts on it.
        self.signals.append(signum)

    def install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self.pipe.w, warn_on_full_buffer=False)
        for sig in self.SIGNALS:
            signal.signal(sig, self.on_signal)

    def rescan(self, what: str, tops: tuple[str, ...]) -> None:
        if self.scanner is not None:
            self.scanner.request(what, tops, self.rules)

    # ---- start ----------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        self.status.log_starting()
        cfg.state.dir.mkdir(parents=True, exist_ok=True)
        self.failures.load()
        self.roots.start()  # creates only roots never seen before (watch.create); says which are unavailable
        removed = remove_stale_temps(self.rules)
        if removed:
            logger.info("removed %d temp file(s) left by an earlier run", removed)
        self.executor.start()  # local workers are spawned here: before any thread of ours
        self.hooks = self.status.hooks = hooks.start(cfg.hooks, cfg.state.dir)  # hooks: thumbnail events, spooled and sent
        if cfg.metrics.port is not None:
            from . import metrics

            metrics.start(cfg.metrics, lambda: self.status.snapshot("running"),
                          lambda: self.status.health(stopping=self.stopping, last_loop=self._last_periodic, every=PERIODIC))
        self.scanner = Scanner(self.admission, lambda path: self.notice(Notice("settle", path)), self._scan_done, self.roots)
        self.scanner.start()
        if not self.one_shot:
            self.watching.start()
        self.control.open()  # a thread: after the executor forked its workers; before "ready"
        self.status.write("running", force=True)  # first: whoever reads "ready" can ask for the status
        logger.info("ready: watching %d folder(s) with %s%s", len(self.watching.watches), self.executor.summary(),
                    " (one-shot scan)" if self.one_shot else "")
        self.notifier.ready(self.status.line())
        self.rescan("catch-up", self.rules.roots)

    # ---- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.start()
            while not self.stopping:
                self.step()
        except ExecutorBroken as err:
            logger.critical("cannot run workers: %s; giving up", err)
            self.exit_code = 3
        except ConfigError as err:
            # found only on starting (a metrics port taken, say): as final as a bad config file
            logger.error("config error: %s", err)
            self.exit_code = EX_CONFIG
        except Exception:
            logger.exception("bug in the main loop (please report it); draining and stopping")
            self.exit_code = 1
        finally:
            code = self.drain()
        return code

    def step(self, timeout: float | None = None) -> None:
        """One turn: wait for something, then act on signals, outcomes, notices and time."""
        if timeout is None:
            timeout = 0.25 if (self.admission.settling or self.admission.block) else 1.0
            deadline = self.executor.next_deadline()
            if deadline is not None:  # wake exactly when the oldest photo in hand runs out of time
                timeout = max(0.0, min(timeout, deadline - self.clock()))
        ready = self._wait(timeout)
        if self.stopping:
            return  # what is ready now is collected by drain()
        self._collect(ready)
        self._handle_notices()
        now = self.clock()
        if now - self._last_periodic >= PERIODIC:
            self._last_periodic = now
            self._periodic(now)
        self.control.serve()
        if not self.control.paused:  # `thumbwatch pause` holds dispatch; the queue still fills
            self._dispatch()

    def _dispatch(self) -> None:
        while self.executor.capacity() > 0:
            job = self.admission.next_job()
            if job is None:
                return
            self.executor.submit(job, self.settings)

    def _wait(self, timeout: float) -> list:
        """Wait for the executor, a notice or a signal; act on signals. Also drain()'s turn."""
        ready = wait(self.executor.waitables() + [self.pipe.r], timeout)
        if self.pipe.r in ready:
            self.pipe.drain()
        self._handle_signals()
        return ready

    def _collect(self, ready: list) -> None:
        for outcome in self.executor.collect(ready, self.clock()):
            self.admission.on_outcome(outcome)

    # ---- signals: one handler each --------------------------------------------------------

    def _handle_signals(self) -> None:
        while self.signals:
            getattr(self, self.SIGNALS[self.signals.popleft()])()

    def handle_term(self) -> None:
        self._stop_on("SIGTERM")

    def handle_int(self) -> None:
        self._stop_on("SIGINT")

    def _stop_on(self, name: str) -> None:
        if self.stopping:
            self.forced = True  # a second signal: stop at once
            return
        logger.info("%s received", name)
        self.stopping = True

    def handle_hup(self) -> None:
        if not self.stopping:
            self.reload()

    # ---- notices ----------------------------------------------------------------------------

    def _handle_notices(self) -> None:
        admission = self.admission
        debug = logger.isEnabledFor(logging.DEBUG)
        while self.notices:
            notice = self.notices.popleft()
            if debug:
                logger.debug("notice: %s %s%s", notice.kind, shown(notice.path), f" -> {shown(notice.dest)}" if notice.dest else "")
            if notice.kind in PHOTO_NOTICES:
                getattr(admission, PHOTO_NOTICES[notice.kind])(notice.path)
            else:
                self.folders.notice(notice)  # about a folder

    def _scan_done(self, report: ScanReport) -> None:
        report.log()
        if report.what == "catch-up":
            self.catchup_done.set()
        self.wake()

    # ---- housekeeping ---------------------------------------------------------------------

    def _periodic(self, now: float) -> None:
        self.admission.tick()
        self.folders.tick()
        if self.admission.queue.take_overflow():
            logger.warning("queue was full and events were dropped; rescanning to find those photos")
            self.rescan("overflow rescan", self.rules.roots)
        if not self.one_shot:
            self.watching.check()
            interval = self.config.watch.rescan_interval
            if interval and now - self._last_rescan >= interval:
                self._last_rescan = now
                self.rescan("rescan", self.rules.roots)
        self.status.progress(now)
        if self.status.due(now):
            self.status.write(self.control.state())
            self.failures.save_or_log()
        interval_wd = self.notifier.watchdog_interval()
        if interval_wd and now - self._last_watchdog >= interval_wd:
            # Sent from the loop that just reaped workers and checked the observers: proof of health.
            self._last_watchdog = now
            self.notifier.watchdog()
        if self.one_shot and self._all_done():
            self.stopping = True

    def _all_done(self) -> bool:
        scanned = self.catchup_done.is_set() and self.scanner is not None and self.scanner.idle()
        return scanned and not self.notices and self.admission.idle() and self.executor.in_flight() == 0

    # ---- reload ---------------------------------------------------------------------------

    def reload(self) -> None:
        self.notifier.reloading()
        try:
            new = config_mod.load(self.config.source, base_dir=self.base_dir)
            require_decoders(new)
        except ConfigError as err:
            logger.error("reload refused, still running the previous config: %s", err)
            logsetup.reopen()
            self.notifier.ready(self.status.line())
            return
        changes, restart_needed = config_mod.changes(self.config, new)
        logsetup.configure(new.log)
        logsetup.reopen()
        self.config = new
        self.rules = PathRules(new)
        self.settings = RenderSettings(new.output, new.limits.max_pixels)
        self.admission.reconfigure(new, self.rules)
        self.roots.create = new.watch.create
        self.roots.update(self.rules.roots)
        self.status.reconfigure(new, self.rules)
        self.folders.rules = self.rules
        if not self.one_shot:
            self.watching.update(new, self.rules)
        self.executor.set_limits(memory_mb=new.limits.worker_memory_mb, photo_timeout=new.limits.photo_timeout)
        self.executor.resize(new.workers.count)
        self.admission.failures_reloaded()
        if restart_needed:
            logger.warning("these changes take effect at the next restart: %s", "; ".join(restart_needed))
        logger.info("reloaded %s: %s", new.source, "; ".join(changes) if changes else "nothing changed")
        self.rescan("reload rescan", self.rules.roots)
        self.status.write(self.control.state(), force=True)
        self.notifier.ready(self.status.line())

    # ---- stop -----------------------------------------------------------------------------

    def drain(self) -> int:
        """Take nothing new, let the photos in hand finish (up to workers.drain_timeout), then
        save state. Queued work is found again by the next start's catch-up."""
        in_hand = self.executor.in_hand()
        waiting = self.admission.waiting() + self.executor.in_flight() - in_hand
        try:
            logger.info("draining: %d photo(s) in hand with %s, %d queued (found again by the next start's catch-up)",
                        in_hand, self.executor.summary(), waiting)
            self.control.close()  # no more commands; a request waiting is told "stopping"
        finally:  # even when a log line fails: without its pill a worker keeps the process from exiting
            self.executor.drain()  # first: from now on nothing starts that wasn't already started
        self.notifier.stopping(f"draining: {in_hand} in flight")
        self.watching.stop()
        if self.scanner is not None:
            self.scanner.stop()
        deadline = self.clock() + self.config.workers.drain_timeout
        try:
            while not self.executor.finished() and self.clock() < deadline and not self.forced:
                self._collect(self._wait(0.5))
        except Exception:
            logger.exception("bug while draining (please report it); stopping at once")
        if not self.executor.finished():
            why = "second signal" if self.forced else f"drain_timeout of {self.config.workers.drain_timeout:g} s"
            logger.warning("stopping at once (%s): %d photo(s) still in hand are found again at the next start", why, self.executor.in_flight())
            self.executor.stop_now()
        if self.scanner is not None:
            self.scanner.join(5)
        self.failures.save_or_log()
        hooks.stop(self.hooks)  # hooks: what was not delivered stays in the spool for the next start
        self.status.write("stopped", force=True)
        self.status.log_stopped()
        return self.exit_code

