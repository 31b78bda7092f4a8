"""The worker process: take a job from the master over its own pipe, render, send the result back.

Workers ignore SIGINT and SIGTERM: a terminal's Ctrl-C reaches the whole process group and
systemd signals the whole cgroup, and neither may kill a photo half-way. A worker leaves on its
poison pill (None), or when the master's end of the pipe closes (the master died).
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from .render import OutputError, PhotoVanished, RenderError, render

logger = logging.getLogger(__name__)


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def worker_main(conn: Connection, memory_limit_mb: int, draining: Any) -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    _forward_logs(conn)
    if memory_limit_mb:
        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn.send(("hello", os.getpid()))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        if draining.is_set():
            conn.send(("skipped", job[0], None, 0.0))  # not started: the next start finds it
            continue
        conn.send(run_job(*job))


def run_job(job_id: int, src: str, targets: Any, settings: Any) -> tuple:
    started = time.perf_counter()

    def ms() -> float:
        return (time.perf_counter() - started) * 1000

    try:
        result = render(src, targets, settings)
        return ("ok", job_id, result, ms())
    except PhotoVanished as err:
        return ("vanished", job_id, str(err), ms())
    except OutputError as err:
        return ("output-error", job_id, (str(err), err.errno), ms())
    except RenderError as err:
        return ("failed", job_id, str(err), ms())
    except MemoryError:
        return ("failed", job_id, "out of memory (raise limits.worker_memory_mb?)", ms())
    except Exception:
        return ("bug", job_id, traceback.format_exc(), ms())


def _forward_logs(conn: Connection) -> None:
    """Send this process's log records to the master, which writes them with its own handlers."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    try:
        from .logsetup import ForwardingHandler
    except ImportError:
        return
    root.addHandler(ForwardingHandler(lambda record: conn.send(("log", record))))
    root.setLevel(logging.INFO)
