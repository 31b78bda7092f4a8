"""The worker process: take a job from the master over its own pipe, render, send the result back.

Workers ignore SIGINT and SIGTERM: a terminal's Ctrl-C reaches the whole process group and
systemd signals the whole cgroup, and neither may kill a photo half-way. A worker leaves on its
poison pill (messages.Stop), or when the master's end of the pipe closes (the master died).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import tempfile
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from PIL import Image

from . import messages as msg
from ...config import OutputConfig, SizeSpec
from ...limits import memory_cap
from ...paths import Target
from ...render import OutputError, PhotoVanished, RenderError, RenderSettings, render

logger = logging.getLogger(__name__)


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def worker_main(conn: Connection, memory_limit_mb: int, draining: Any) -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    _forward_logs(conn)
    note = memory_cap(memory_limit_mb)
    keep_freed_memory()
    warm_up()
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
                conn.send(run_job(job_id, path, targets, settings))
            case _:
                logger.error("worker got a message it does not know: %r", message)


def run_job(job_id: int, src: str, targets: Any, settings: Any) -> Any:
    """Render one photo; every way it can end becomes one message (a bug included)."""
    started = time.perf_counter()

    def ms() -> float:
        return (time.perf_counter() - started) * 1000

    try:
        result = render(src, targets, settings)
        return msg.Done(job_id, tuple(out[0] for out in result.outputs), ms())
    except PhotoVanished as err:
        return msg.Gone(job_id, str(err))
    except OutputError as err:
        return msg.CannotWrite(job_id, str(err), err.errno)
    except RenderError as err:
        return msg.CannotRender(job_id, str(err), ms())
    except MemoryError:
        return msg.CannotRender(job_id, "out of memory (raise limits.worker_memory_mb?)", ms())
    except Exception:
        return msg.Bug(job_id, traceback.format_exc())


# glibc's mallopt() parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> None:
    """Have glibc reuse the memory one photo freed for the next instead of handing it back.

    By default glibc serves big blocks with mmap and trims the heap top, with thresholds that
    move with the allocation history: in a worker that can mean every decoded image is
    page-faulted in afresh, ~3,900 faults and 7 ms more per 2 MP photo at three sizes (27 ms
    instead of 20). Fixed thresholds make it the same every time: Pillow's blocks (at most
    16 MB) come from the heap, and up to 64 MB of it may stay free between photos; peak RSS is
    unchanged. Elsewhere than glibc mallopt() is missing or a no-op.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum on 64-bit
    mallopt(M_TRIM_THRESHOLD, 64 << 20)


def warm_up() -> None:
    """Pay Pillow's first-use costs (plugins, decoder and encoder set-up, ~20 ms) before saying
    hello, not on the first photo: that photo's latency is what a user notices."""
    with tempfile.TemporaryDirectory(prefix="thumbwatch-warm-") as folder:
        sample = os.path.join(folder, "warm.jpg")
        Image.new("RGB", (64, 48), (90, 120, 150)).save(sample, "JPEG")
        size = SizeSpec("warm", 16, 16)
        try:
            render(sample, [Target(size, os.path.join(folder, "out", "warm.jpg"))], RenderSettings(OutputConfig(sizes=(size,)), 10_000))
        except RenderError as err:
            logger.warning("worker warm-up failed: %s", err)


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
