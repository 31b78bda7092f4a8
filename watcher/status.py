"""What the daemon says about itself: the counters, the status file (read by `thumbwatch status`
and the metrics endpoint), the one-line STATUS= for systemd, and progress lines during a backlog.

Reads the counters of the others (admission, the executor, the observers); decides nothing.
The executor describes itself (`describe()` for the file, `summary()` for a line), so nothing
here asks which backend runs.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import __version__
from .state import STATUS, FailureStore, write_json_atomic

if TYPE_CHECKING:  # for the names only: admission imports Stats from here
    from .admission import Admission
    from .config import Config
    from .executor import Executor
    from .paths import PathRules
    from .roots import RootMonitor
    from .systemd import Notifier
    from .watching import Watching

logger = logging.getLogger("watcher")

STATUS_EVERY = 2.0  # seconds between writes of the status file


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    done: int = 0
    failed: int = 0
    skipped: int = 0
    retried: int = 0
    vanished: int = 0
    restamped: int = 0  # attributes changed, content not: thumbnails re-stamped instead of rendered
    render_ms: deque = field(default_factory=lambda: deque(maxlen=2048))

    def percentile(self, q: float) -> float | None:
        if not self.render_ms:
            return None
        ordered = sorted(self.render_ms)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


class Status:
    """Writes the status file and STATUS= (at most every STATUS_EVERY s, and at once on a change
    of state), and logs progress every log.progress_interval while there is a backlog."""

    def __init__(self, config: Config, rules: PathRules, *, stats: Stats, admission: Admission, executor: Executor,
                 watching: Watching, failures: FailureStore, notifier: Notifier, clock: Callable[[], float],
                 roots: RootMonitor | None = None):
        self.config, self.rules = config, rules
        self.roots = roots  # which watched folders are unavailable, and why (roots.py)
        self.stats = stats
        self.admission = admission
        self.executor = executor
        self.watching = watching
        self.failures = failures
        self.notifier = notifier
        self.clock = clock
        self.last_written = 0.0
        self._text = ""
        self._last_progress = clock()
        self._progress_done = 0
        self.hooks: Any = None  # hooks.Hooks, when hooks run: its spool's counters go in the file

    def health(self, *, stopping: bool, last_loop: float, every: float) -> str | None:
        """For GET /healthz (metrics.py): why this daemon is not healthy, or None when it is.
        `last_loop`: when the loop last did its housekeeping, which it does `every` seconds."""
        if stopping:
            return "stopping"
        if not last_loop:
            return "starting"
        quiet = self.clock() - last_loop
        if quiet > 10 * every + 5:
            return f"main loop has not run for {quiet:.0f} s"
        away = {root: "it does not exist" for root in self.watching.missing}
        if self.roots is not None:
            away.update(self.roots.unavailable())  # roots.py says why
        if away:
            return "watched folder(s) not available: " + "; ".join(f"{root}: {why}" for root, why in sorted(away.items()))
        return None

    def reconfigure(self, config: Config, rules: PathRules) -> None:
        self.config, self.rules = config, rules

    def line(self) -> str:
        unavailable = self.roots.unavailable() if self.roots is not None else {}
        return (
            f"watching {len(self.watching.watches)} folders, {self.executor.summary()}, "
            f"{self.stats.done} done, {self.stats.failed} failed, queue {self.admission.waiting()}"
            + "".join(f"; UNAVAILABLE {root}: {why}" for root, why in sorted(unavailable.items()))
        )

    def snapshot(self, state: str) -> dict[str, Any]:
        stats, admission = self.stats, self.admission
        live, scan = admission.queue.lengths()
        return {
            "pid": os.getpid(),
            "state": state,
            "version": __version__,
            "config": str(self.config.source),
            "started": stats.started,
            "uptime": round(time.time() - stats.started, 1),
            "folders": list(self.rules.roots),
            "missing_folders": sorted(self.watching.missing),
            "unavailable_folders": self.roots.unavailable() if self.roots is not None else {},
            "removals_held": self.roots.held_removals() if self.roots is not None else {},
            **self.executor.describe(),
            "done": stats.done,
            "failed": stats.failed,
            "skipped": stats.skipped,
            "retried": stats.retried,
            "vanished": stats.vanished,
            "restamped": stats.restamped,
            "queue": admission.waiting(),
            "queue_live": live,
            "queue_scan": scan,
            "in_flight": self.executor.in_flight(),
            "settling": len(admission.settling),
            "render_ms_p50": stats.percentile(0.5),
            "render_ms_p95": stats.percentile(0.95),
            "output_blocked": admission.block.reason if admission.block else None,
            "failure_records": len(self.failures),
            "hooks": self.hooks.describe() if self.hooks is not None else None,
        }

    def log_starting(self) -> None:
        cfg = self.config
        sizes = ", ".join(f"{s.name}:{s.width or '-'}x{s.height or '-'}/{s.mode}/{s.format}" for s in cfg.output.sizes)
        if cfg.output.style == "freedesktop":
            sizes = "freedesktop normal/large/x-large/xx-large"
        logger.info(
            "thumbwatch %s starting: folders=%s workers=%d sizes=[%s] observer=%s state=%s pid=%d",
            __version__, ",".join(str(p) for p in cfg.watch.paths), cfg.workers.count, sizes, cfg.watch.observer, cfg.state.dir, os.getpid(),
        )
        if os.geteuid() == 0:
            logger.warning("running as root: run unprivileged instead (the shipped units run as User=thumbwatch; see the README's Installing)")

    def log_stopped(self) -> None:
        stats = self.stats
        logger.info("stopped: done=%d failed=%d skipped=%d retried=%d uptime=%.0f s",
                    stats.done, stats.failed, stats.skipped, stats.retried, time.time() - stats.started)

    def due(self, now: float) -> bool:
        return now - self.last_written >= STATUS_EVERY

    def write(self, state: str, *, force: bool = False) -> None:
        self.last_written = self.clock()
        try:
            write_json_atomic(self.config.state.dir / STATUS, self.snapshot(state))
        except OSError as err:
            logger.warning("cannot write status file: %s", err)
        line = ("paused, " if state == "paused" else "") + self.line()  # `thumbwatch pause` (control.py)
        if force or line != self._text:
            self._text = line
            self.notifier.status(line)

    def progress(self, now: float) -> None:
        interval = self.config.log.progress_interval
        if not interval or now - self._last_progress < interval:
            return
        stats, admission, in_flight = self.stats, self.admission, self.executor.in_flight()
        backlog = admission.waiting() + in_flight
        done = stats.done + stats.failed
        rate = (done - self._progress_done) / (now - self._last_progress)
        self._last_progress, self._progress_done = now, done
        if backlog:
            eta = f"{backlog / rate:.0f} s" if rate > 0 else "unknown"
            logger.info("progress: done=%d failed=%d queued=%d in_flight=%d rate=%.1f/s eta=%s",
                        stats.done, stats.failed, admission.waiting(), in_flight, rate, eta)
