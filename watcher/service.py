"""The master: start order, the step() loop, signals, reload, drain, status.

Start order: state → worker pool (before any thread) → observers → ready → catch-up scan.
Signal handlers only record the signal; step() reads it and acts. step() waits on the
workers' pipes and sentinels and a wake-up pipe, so an idle daemon sleeps in select().
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

from . import __version__, config as config_mod, logsetup
from .config import Config, ConfigError
from .events import Notice
from .jobs import JobQueue
from .paths import PathRules, shown, temp_path_for
from .pool import PREFETCH, Death, Job, PoolBroken, Worker, WorkerPool
from .render import RenderSettings
from .scan import Scanner, ScanReport, needs_render, remove_stale_temps
from .state import STATUS, FailureStore, write_json_atomic
from .systemd import Notifier
from .watching import Watching

logger = logging.getLogger("watcher")

PERIODIC = 0.5  # seconds between housekeeping passes
STATUS_EVERY = 2.0
OUTPUT_BACKOFF_MAX = 60.0


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    done: int = 0
    failed: int = 0
    skipped: int = 0
    retried: int = 0
    vanished: int = 0
    render_ms: deque = field(default_factory=lambda: deque(maxlen=2048))

    def percentile(self, q: float) -> float | None:
        if not self.render_ms:
            return None
        ordered = sorted(self.render_ms)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


@dataclass
class OutputBlock:
    """Thumbnails cannot be written (disk full, folder unwritable): hold work, probe with back-off."""

    reason: str
    errno: int | None
    delay: float = 1.0
    next_try: float = 0.0
    probing: bool = False


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


class Service:
    def __init__(self, config: Config, *, notifier: Notifier | None = None, one_shot: bool = False, base_dir: Path | None = None):
        self.config = config
        self.base_dir = base_dir or Path.cwd()
        self.notifier = notifier or Notifier()
        self.one_shot = one_shot
        self.rules = PathRules(config)
        self.settings = RenderSettings(config.output, config.limits.max_pixels)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.jobs = JobQueue(config.workers.queue_size, self.wake)
        self.failures = FailureStore(config.state.dir)
        self.pool = WorkerPool(config.workers.count, config.limits.worker_memory_mb)
        self.stats = Stats()
        self.notices: deque[Notice] = deque()
        self.signals: deque[int] = deque()
        self.retry: deque[Job] = deque()
        self.settling: dict[str, tuple[int, int, float]] = {}
        self.job_ids = iter(range(1, 1 << 62))
        self.stopping = False
        self.exit_code = 0
        self.output_block: OutputBlock | None = None
        self.catchup_done = threading.Event()
        self.scanner: Scanner | None = None
        self.watching = Watching(config, self.rules, self.jobs, self.notice, self._rescan)
        self._last_periodic = 0.0
        self._last_status = 0.0
        self._last_watchdog = 0.0
        self._last_progress = time.monotonic()
        self._progress_done = 0
        self._last_rescan = time.monotonic()
        self._status_text = ""

    # ---- plumbing -------------------------------------------------------------------------

    def wake(self) -> None:
        try:
            os.write(self.wake_w, b"\0")
        except BlockingIOError:
            pass  # already awake

    def notice(self, notice: Notice) -> None:
        self.notices.append(notice)
        self.wake()

    def on_signal(self, signum: int, _frame: object) -> None:
        # NO LOGGING here: just record it; step() acts on it.
        self.signals.append(signum)

    def install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.on_signal)

    # ---- start ----------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        sizes = ", ".join(f"{s.name}:{s.width or '-'}x{s.height or '-'}/{s.mode}/{s.format}" for s in cfg.output.sizes)
        if cfg.output.style == "freedesktop":
            sizes = "freedesktop normal/large/x-large/xx-large"
        logger.info(
            "thumbwatch %s starting: folders=%s workers=%d sizes=[%s] observer=%s state=%s pid=%d",
            __version__, ",".join(str(p) for p in cfg.watch.paths), cfg.workers.count, sizes, cfg.watch.observer, cfg.state.dir, os.getpid(),
        )
        if os.geteuid() == 0:
            logger.warning("running as root: run unprivileged instead (the systemd unit's DynamicUser=yes, or User= and Group=)")
        cfg.state.dir.mkdir(parents=True, exist_ok=True)
        self.failures.load()
        if cfg.metrics.port is not None:
            from . import metrics

            metrics.start(cfg.metrics, lambda: self.status("running"))
        for root in cfg.watch.paths:
            if cfg.watch.create:
                root.mkdir(parents=True, exist_ok=True)
        removed = remove_stale_temps(self.rules)
        if removed:
            logger.info("removed %d temp file(s) left by an earlier run", removed)
        self.pool.start()  # before any of our threads exist
        self._wait_for_workers()
        self.scanner = Scanner(self.jobs, self.failures, lambda p: self.notice(("settle", p)), self._scan_done, cfg.watch.settle_seconds)
        self.scanner.start()
        if not self.one_shot:
            self.watching.start()
        logger.info(
            "ready: watching %d folder(s) with %d workers%s",
            len(self.watching.watches), len(self.pool.workers), " (one-shot scan)" if self.one_shot else "",
        )
        self._write_status("running", force=True)
        self.notifier.ready(self._status_line())
        self.scanner.request("catch-up", self.rules.roots, self.rules)

    def _wait_for_workers(self, timeout: float = 60.0) -> None:
        """Ready means the pool is up: wait until every worker has said hello."""
        deadline = time.monotonic() + timeout
        while any(not w.booted for w in self.pool.workers) and time.monotonic() < deadline:
            ready = wait(self.pool.waitables(), 0.5)
            messages, deaths = self.pool.collect(ready)
            for worker, message in messages:
                self._on_message(worker, message)
            for death in deaths:
                logger.error("worker exited pid=%s %s while starting", death.pid, describe_exit(death.exitcode))
            self.pool.replace_missing()

    # ---- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.start()
            while not self.stopping:
                self.step()
        except PoolBroken as err:
            logger.critical("cannot run workers: %s; giving up", err)
            self.exit_code = 3
        return self.drain()

    def step(self, timeout: float | None = None) -> None:
        if timeout is None:
            timeout = 0.25 if (self.settling or self.output_block) else 1.0
            busy = self.pool.busy()
            if busy:
                # wake exactly when the oldest photo in hand runs out of time
                first_deadline = min(w.started for w in busy) + self.config.limits.photo_timeout
                timeout = max(0.0, min(timeout, first_deadline - time.monotonic()))
        ready = wait(self.pool.waitables() + [self.wake_r], timeout)
        if self.wake_r in ready:
            self._drain_wake_pipe()
        self._handle_signals()
        if self.stopping:
            return
        messages, deaths = self.pool.collect(ready)
        for worker, message in messages:
            self._on_message(worker, message)
        for death in deaths:
            self._on_death(death)
        self.pool.replace_missing()
        self._handle_notices()
        now = time.monotonic()
        self._check_deadlines(now)
        if now - self._last_periodic >= PERIODIC:
            self._last_periodic = now
            self._periodic(now)
        self._dispatch()

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.popleft()
            if signum == signal.SIGHUP:
                if not self.stopping:
                    self.reload()
            elif self.stopping:
                self._force = True
            else:
                logger.info("%s received", signal.Signals(signum).name)
                self.stopping = True

    # ---- jobs -----------------------------------------------------------------------------

    def _next_job(self) -> Job | None:
        while True:
            if self.retry:
                return self.retry.popleft()
            path = self.jobs.pop()
            if path is None:
                return None
            job = self._make_job(path)
            if job is not None:
                return job

    def _make_job(self, path: str) -> Job | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            logger.debug("vanished before rendering: %s", shown(path))
            self.stats.vanished += 1
            return None
        except OSError as err:
            self._fail(path, None, err.strerror or str(err))
            return None
        if self.failures.known(path, st):
            logger.debug("skipped (failed before, unchanged): %s", shown(path))
            return None
        if st.st_size == 0 and time.time() - st.st_mtime < self.config.watch.settle_seconds + 1:
            # Samba and some uploaders create an empty file, close it, then write: wait and see.
            self.notice(("settle", path))
            return None
        targets = self.rules.targets(path)
        if not needs_render(self.rules, path, st, targets):
            logger.debug("skipped (thumbnails up to date): %s", shown(path))
            self.stats.skipped += 1
            return None
        if os.path.islink(path) and not self.config.watch.follow_symlinks:
            real = os.path.realpath(path)
            if not any(real.startswith(root + os.sep) for root in self.rules.roots):
                self._fail(path, st, "symlink to a file outside the watched folders (watch.follow_symlinks is off)")
                return None
        return Job(next(self.job_ids), path, st.st_size, st.st_mtime_ns, targets)

    def _dispatch(self) -> None:
        if self.stopping:
            return
        block = self.output_block
        for worker in self.pool.free_slots(1 if block is not None else PREFETCH):
            if block is not None:
                if block.probing or time.monotonic() < block.next_try:
                    return
                block.probing = True
            job = self._next_job()
            if job is None:
                if block is not None:
                    block.probing = False
                return
            self.pool.assign(worker, job, (job.id, job.path, job.targets), self.settings)
            if block is not None:
                return

    def _on_message(self, worker: Worker, message: tuple) -> None:
        kind = message[0]
        if kind == "hello":
            self.pool.booted(worker)
            return
        if kind == "log":
            logsetup.handle_forwarded(message[1])
            return
        job = self.pool.finish(worker)
        if job is None:
            logger.error("worker pid=%s sent %s with no job in hand", worker.pid, kind)
            return
        _, _job_id, payload, ms = message
        if kind == "skipped":
            logger.debug("not started before stopping: %s", shown(job.path))
            return
        photo_level = logging.DEBUG if self.config.log.photos == "debug" else logging.INFO
        if kind == "ok":
            self.stats.done += 1
            self.stats.render_ms.append(ms)
            self.failures.forget(job.path)
            self._output_ok()
            outputs = ", ".join(self._short(job.path, out[0]) for out in payload.outputs)
            logger.log(photo_level, "ok %s -> %s in %.0f ms", shown(job.path), shown(outputs), ms)
        elif kind == "vanished":
            self.stats.vanished += 1
            logger.debug("vanished while rendering: %s (%s)", shown(job.path), payload)
        elif kind == "failed":
            self._output_ok()
            if self._changed_since(job):
                logger.debug("changed while rendering, will render again once it settles: %s", shown(job.path))
                self.notice(("settle", job.path))
            else:
                self._fail(job.path, self._stat(job.path), payload)
        elif kind == "output-error":
            self._output_blocked(job, *payload)
        elif kind == "bug":
            logger.error("bug while rendering %s (please report it):\n%s", shown(job.path), payload.rstrip())
            self._fail(job.path, self._stat(job.path), "internal error (see the log)", log=False)

    def _short(self, photo: str, output: str) -> str:
        root = self.rules.root_of(photo)
        if root and output.startswith(root + os.sep):
            return output[len(root) + 1 :]
        return output

    def _stat(self, path: str) -> os.stat_result | None:
        try:
            return os.stat(path)
        except OSError:
            return None

    def _changed_since(self, job: Job) -> bool:
        st = self._stat(job.path)
        return st is not None and (st.st_size, st.st_mtime_ns) != (job.size, job.mtime_ns)

    def _fail(self, path: str, st: os.stat_result | None, reason: str, *, log: bool = True) -> None:
        self.stats.failed += 1
        self.failures.record(path, st, reason)
        if log:
            logger.warning("failed %s: %s", shown(path), reason)

    def _on_death(self, death: Death) -> None:
        self._remove_temps(death.pid, death.job)
        how = describe_exit(death.exitcode)
        job = death.job
        if not self.stopping:
            self.retry.extendleft(reversed(death.jobs[1:]))  # never started: no attempt counted
        if job is None:
            logger.error("worker exited pid=%s %s, restarting it", death.pid, how)
            return
        if self.stopping:
            logger.warning("worker exited pid=%s %s while stopping; %s is found again at the next start", death.pid, how, shown(job.path))
            return
        job.attempts += 1
        if job.attempts > self.config.workers.max_retries:
            logger.error("worker exited pid=%s %s while rendering %s; restarting it", death.pid, how, shown(job.path))
            self._fail(job.path, self._stat(job.path), f"worker died on it {job.attempts} times ({how})")
            return
        self.stats.retried += 1
        logger.error(
            "worker exited pid=%s %s while rendering %s; restarting it and retrying the photo (attempt %d of %d)",
            death.pid, how, shown(job.path), job.attempts + 1, self.config.workers.max_retries + 1,
        )
        self.retry.appendleft(job)

    def _remove_temps(self, pid: int, job: Job | None) -> None:
        """A killed worker may leave a temp output behind: it is ours by name, remove it."""
        if job is None:
            return
        for target in job.targets:
            try:
                os.unlink(temp_path_for(target.path, pid))
            except OSError:
                pass

    def _check_deadlines(self, now: float) -> None:
        limit = self.config.limits.photo_timeout
        for worker in self.pool.busy():
            if now - worker.started > limit:
                job = self.pool.finish(worker)
                assert job is not None
                self.pool.kill_worker(worker)
                self.retry.extendleft(reversed(self.pool.remove(worker)))
                self._remove_temps(worker.pid, job)
                self._fail(job.path, self._stat(job.path), f"timed out after {limit:g} s")
                logger.info("killed worker pid=%s for its photo's time limit; starting a new one", worker.pid)

    def _output_blocked(self, job: Job, reason: str, err_no: int | None) -> None:
        """One error line per condition (by errno), not one per photo: hold work, probe with back-off."""
        self.retry.appendleft(job)
        block = self.output_block
        if block is None:
            self.output_block = OutputBlock(reason, err_no, next_try=time.monotonic() + 1.0)
            logger.error("cannot write thumbnails: %s; holding photos and retrying with back-off", reason)
            return
        if block.probing:
            block.probing = False
            block.delay = min(block.delay * 2, OUTPUT_BACKOFF_MAX)
            block.next_try = time.monotonic() + block.delay
        if err_no != block.errno:
            logger.error("cannot write thumbnails, now for another reason: %s", reason)
            block.reason, block.errno = reason, err_no

    def _output_ok(self) -> None:
        if self.output_block is not None:
            logger.info("thumbnails can be written again; resuming %d held photo(s)", len(self.retry) + len(self.jobs))
            self.output_block = None

    # ---- notices, settling, scans ---------------------------------------------------------

    def _handle_notices(self) -> None:
        while self.notices:
            kind, path = self.notices.popleft()
            if kind == "settle":
                st = self._stat(path)
                if st is not None and path not in self.settling:
                    self.settling[path] = (st.st_size, st.st_mtime_ns, time.monotonic())
            elif kind == "new-dir":
                if self.scanner is not None:
                    self.scanner.request("new folder", (path,), self.rules)
            elif kind == "deleted":
                self._photo_deleted(path)
            elif kind == "dir-gone":
                self.watching.check()

    def _photo_deleted(self, path: str) -> None:
        self.jobs.discard(path)
        self.settling.pop(path, None)
        self.failures.forget(path)
        if not self.config.output.delete_with_photo or os.path.exists(path):
            return
        removed = 0
        for target in self.rules.targets(path):
            try:
                os.unlink(target.path)
                removed += 1
            except OSError:
                pass
        if removed:
            logger.log(logging.DEBUG if self.config.log.photos == "debug" else logging.INFO, "removed %d thumbnail(s) of deleted %s", removed, shown(path))

    def _settle(self) -> None:
        """Queue the paths whose size and mtime have held still for settle_seconds."""
        now = time.monotonic()
        quiet = self.config.watch.settle_seconds
        for path, (size, mtime, since) in list(self.settling.items()):
            st = self._stat(path)
            if st is None:
                del self.settling[path]
            elif (st.st_size, st.st_mtime_ns) != (size, mtime):
                self.settling[path] = (st.st_size, st.st_mtime_ns, now)
            elif now - since >= quiet:
                if self.failures.known(path, st) or not needs_render(self.rules, path, st):
                    del self.settling[path]
                elif self.jobs.offer(path):
                    del self.settling[path]

    def _rescan(self, what: str, tops: tuple[str, ...]) -> None:
        if self.scanner is not None:
            self.scanner.request(what, tops, self.rules)

    def _scan_done(self, report: ScanReport) -> None:
        text = "%s done: found=%d queued=%d skipped=%d failed_before=%d settling=%d in %.2f s"
        args = (report.what, report.found, report.queued, report.skipped, report.known_failed, report.settling, report.seconds)
        if report.what == "catch-up":
            logger.info(text, *args)
            self.catchup_done.set()
        else:
            logger.log(logging.INFO if report.queued else logging.DEBUG, text, *args)
        self.wake()

    # ---- housekeeping ---------------------------------------------------------------------

    def _periodic(self, now: float) -> None:
        self._settle()
        if self.jobs.take_overflow() and self.scanner is not None:
            logger.warning("queue was full and events were dropped; rescanning to find those photos")
            self.scanner.request("overflow rescan", self.rules.roots, self.rules)
        if not self.one_shot:
            self.watching.check()
            interval = self.config.watch.rescan_interval
            if interval and now - self._last_rescan >= interval and self.scanner is not None:
                self._last_rescan = now
                self.scanner.request("rescan", self.rules.roots, self.rules)
        self._progress(now)
        if now - self._last_status >= STATUS_EVERY:
            self._write_status("running")
            self.failures.save()
        interval_wd = self.notifier.watchdog_interval()
        if interval_wd and now - self._last_watchdog >= interval_wd:
            # Sent from the loop that just reaped workers and checked the observers: proof of health.
            self._last_watchdog = now
            self.notifier.watchdog()
        if self.one_shot and self._all_done():
            self.stopping = True

    def _all_done(self) -> bool:
        return (
            self.catchup_done.is_set()
            and self.scanner is not None
            and self.scanner.idle()
            and not self.jobs
            and not self.retry
            and not self.settling
            and not self.notices
            and not self.pool.busy()
        )

    def _progress(self, now: float) -> None:
        interval = self.config.log.progress_interval
        backlog = len(self.jobs) + len(self.retry) + len(self.pool.busy())
        if not interval or now - self._last_progress < interval:
            return
        done = self.stats.done + self.stats.failed
        rate = (done - self._progress_done) / (now - self._last_progress)
        self._last_progress, self._progress_done = now, done
        if backlog:
            eta = f"{backlog / rate:.0f} s" if rate > 0 else "unknown"
            logger.info("progress: done=%d failed=%d queued=%d in_flight=%d rate=%.1f/s eta=%s",
                        self.stats.done, self.stats.failed, len(self.jobs) + len(self.retry), len(self.pool.busy()), rate, eta)

    def _status_line(self) -> str:
        return (
            f"watching {len(self.watching.watches)} folders, {len(self.pool.workers)} workers, "
            f"{self.stats.done} done, {self.stats.failed} failed, queue {len(self.jobs) + len(self.retry)}"
        )

    def status(self, state: str) -> dict:
        return {
            "pid": os.getpid(),
            "state": state,
            "version": __version__,
            "config": str(self.config.source),
            "started": self.stats.started,
            "uptime": round(time.time() - self.stats.started, 1),
            "folders": list(self.rules.roots),
            "missing_folders": sorted(self.watching.missing),
            "workers": self.pool.pids(),
            "done": self.stats.done,
            "failed": self.stats.failed,
            "skipped": self.stats.skipped,
            "retried": self.stats.retried,
            "vanished": self.stats.vanished,
            "queue": len(self.jobs) + len(self.retry),
            "in_flight": len(self.pool.busy()),
            "settling": len(self.settling),
            "render_ms_p50": self.stats.percentile(0.5),
            "render_ms_p95": self.stats.percentile(0.95),
            "output_blocked": self.output_block.reason if self.output_block else None,
            "failure_records": len(self.failures),
        }

    def _write_status(self, state: str, force: bool = False) -> None:
        self._last_status = time.monotonic()
        try:
            write_json_atomic(self.config.state.dir / STATUS, self.status(state))
        except OSError as err:
            logger.warning("cannot write status file: %s", err)
        line = self._status_line()
        if force or line != self._status_text:
            self._status_text = line
            self.notifier.status(line)

    # ---- reload ---------------------------------------------------------------------------

    def reload(self) -> None:
        self.notifier.reloading()
        try:
            new = config_mod.load(self.config.source, base_dir=self.base_dir)
        except ConfigError as err:
            logger.error("reload refused, still running the previous config: %s", err)
            logsetup.reopen()
            self.notifier.ready(self._status_line())
            return
        old = self.config
        changes = _diff(old.effective(), new.effective())
        logsetup.configure(new.log)
        logsetup.reopen()
        self.config = new
        self.rules = PathRules(new)
        self.settings = RenderSettings(new.output, new.limits.max_pixels)
        if not self.one_shot:
            self.watching.update(new, self.rules)
        self.jobs.resize(new.workers.queue_size)
        self.pool.memory_limit_mb = new.limits.worker_memory_mb
        if new.workers.count != len([w for w in self.pool.workers if not w.retiring]):
            self.pool.resize(new.workers.count)
        self.failures.load()  # `thumbwatch retry` may have cleared records
        restart_needed = [c for c in changes if c.startswith(("state.", "watch.observer", "metrics."))]
        if restart_needed:
            logger.warning("these changes take effect at the next restart: %s", "; ".join(restart_needed))
        logger.info("reloaded %s: %s", new.source, "; ".join(changes) if changes else "nothing changed")
        if self.scanner is not None:
            self.scanner.request("reload rescan", self.rules.roots, self.rules)
        self._write_status("running", force=True)
        self.notifier.ready(self._status_line())

    # ---- stop -----------------------------------------------------------------------------

    _force = False

    def drain(self) -> int:
        in_flight = len(self.pool.busy())
        waiting = len(self.jobs) + len(self.retry) + sum(len(w.jobs) - 1 for w in self.pool.busy())
        logger.info("draining: %d photo(s) in hand, %d queued (found again by the next start's catch-up)", in_flight, waiting)
        self.pool.drain()  # first: from now on no worker starts a photo it wasn't already rendering
        self.notifier.stopping(f"draining: {in_flight} in flight")
        self.watching.stop()
        if self.scanner is not None:
            self.scanner.stop()
        deadline = time.monotonic() + self.config.workers.drain_timeout
        try:
            while self.pool.workers and time.monotonic() < deadline and not self._force:
                ready = wait(self.pool.waitables() + [self.wake_r], 0.5)
                if self.wake_r in ready:
                    self._drain_wake_pipe()
                self._handle_signals()
                messages, deaths = self.pool.collect(ready)
                for worker, message in messages:
                    self._on_message(worker, message)
                for death in deaths:
                    self._on_death(death)
        except PoolBroken:
            pass
        if self.pool.workers:
            why = "second signal" if self._force else f"drain_timeout of {self.config.workers.drain_timeout:g} s"
            logger.warning("stopping at once (%s): killing %d worker(s); their photos are found again at the next start", why, len(self.pool.workers))
            for worker in self.pool.kill_all():
                self._remove_temps(worker.pid, worker.job)
        if self.scanner is not None:
            self.scanner.join(5)
        try:
            self.failures.save()
        except OSError as err:
            logger.error("cannot save failure records: %s", err)
        self._write_status("stopped", force=True)
        logger.info(
            "stopped: done=%d failed=%d skipped=%d retried=%d uptime=%.0f s",
            self.stats.done, self.stats.failed, self.stats.skipped, self.stats.retried, time.time() - self.stats.started,
        )
        return self.exit_code

def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes.extend(_diff(a, b, f"{prefix}{key}."))
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changes
