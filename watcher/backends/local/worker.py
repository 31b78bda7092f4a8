"""The worker process: take a job from the master over its own pipe, render, send the result back.

Workers ignore SIGINT and SIGTERM: a terminal's Ctrl-C reaches the whole process group and
systemd signals the whole cgroup, and neither may kill a photo half-way. A worker leaves on its
poison pill (messages.Stop), or when the master's end of the pipe closes (the master died).
"""

from __future__ import annotations

import logging
import os
import signal
from multiprocessing.connection import Connection
from typing import Any

from . import messages as msg
from ...limits import keep_freed_memory  # noqa: F401 - bench/__main__.py imports it from here
from ..results import attempt, prepare_render_process

logger = logging.getLogger(__name__)


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def worker_main(conn: Connection, memory_limit_mb: int, draining: Any) -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    _forward_logs(conn)
    note = prepare_render_process(memory_limit_mb)
    conn.send(msg.Hello(os.getpid(), note))
    settings = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        match message:
            case msg.Stop():
                return
            case msg.UseSettings(settings=new):
                settings = new
            case msg.RenderPhoto() if draining.is_set():
                conn.send(msg.NotStarted(message.job_id))  # the next start's catch-up finds it
            case msg.RenderPhoto(job_id=job_id, path=path, targets=targets):
                conn.send(msg.Finished(job_id, attempt(path, targets, settings)))
            case _:
                logger.error("worker got a message it does not know: %r", message)


def _forward_logs(conn: Connection) -> None:
    """Send this process's log records to the master, which writes them with its own handlers."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    try:
        from ...logsetup import ForwardingHandler
    except ImportError:
        return
    root.addHandler(ForwardingHandler(lambda record: conn.send(msg.LogRecord(record))))
    root.setLevel(logging.INFO)
