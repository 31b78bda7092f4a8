"""One render attempt, told one way for both executors.

A worker process (local/worker.py) and a render host (celery/host.py) both call attempt(), which
renders one photo and turns every way that can end into one typed result. The local pool gets
the result over its pipe; a render host sends to_wire(result) on the outcome stream and the
master reads it back with from_wire(). Either side turns it into the executor's Outcome with
to_outcome(), and says it in the log with log_result() / the say_* lines the master's admission
uses too, so a photo reads the same in the master's log and on a render host.

Also here, because both sides need them: describe_exit (how a process ended, in words) and the
render process's set-up (prepare_render_process: memory cap, allocator, warm-up).
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Sequence

from .. import treeevents
from ..config import OutputConfig, SizeSpec
from ..executor import Crashed, Failed, Job, Outcome, OutputBlocked, Rendered, TimedOut, Vanished
from ..limits import keep_freed_memory, memory_cap
from ..paths import Target, shown
from ..render import OutputError, PhotoVanished, RenderError, RenderSettings, placeholder, render

logger = logging.getLogger(__name__)

WIRE_VERSION = 1


# ---- what one attempt can come to -------------------------------------------------------------


@dataclass(frozen=True)
class Done:
    outputs: tuple[str, ...]
    ms: float
    again: bool = False  # fresh already: another host rendered this version, nothing was written
    thumbnails: tuple[dict, ...] = ()  # treeevents.thumbnails(): each one's size, pixels, bytes, format (hooks)
    placeholder: dict | None = None  # render/placeholder.py, when output.placeholder asks for one


@dataclass(frozen=True)
class CannotRender:
    reason: str
    ms: float = 0.0


@dataclass(frozen=True)
class Gone:
    """The photo vanished before or while it was rendered."""

    reason: str


@dataclass(frozen=True)
class CannotWrite:
    """The thumbnails could not be written: a condition of the output, not of this photo."""

    reason: str
    errno: int | None


@dataclass(frozen=True)
class Bug:
    traceback: str


@dataclass(frozen=True)
class OverTime:
    """A render host's own watchdog stopped the photo at limits.photo_timeout (the local pool's
    master does that itself and reports TimedOut directly)."""

    limit: float


Result = Done | CannotRender | Gone | CannotWrite | Bug | OverTime


def attempt(src: str, targets: Sequence[Target], settings: RenderSettings) -> Result:
    """Render one photo; every way it can end becomes one result (a bug included)."""
    started = time.perf_counter()

    def ms() -> float:
        return (time.perf_counter() - started) * 1000

    try:
        result = render(src, targets, settings)
        return Done(tuple(out[0] for out in result.outputs), ms(), thumbnails=treeevents.thumbnails(result, targets),
                    placeholder=placeholder.of(result, settings.output))
    except PhotoVanished as err:
        return Gone(str(err))
    except OutputError as err:
        return CannotWrite(str(err), err.errno)
    except RenderError as err:
        return CannotRender(str(err), ms())
    except MemoryError:
        return CannotRender("out of memory (raise limits.worker_memory_mb?)", ms())
    except Exception:
        return Bug(traceback.format_exc())


def to_outcome(job: Job, result: Result, host: str = "") -> Outcome:
    """The executor's Outcome for a job's result; `host` names the render host, if not this one."""
    match result:
        case Done(outputs=outputs, ms=ms):
            return Rendered(job, ms, tuple(outputs), host, tuple(result.thumbnails), result.placeholder)
        case CannotRender(reason=reason, ms=ms):
            return Failed(job, reason, ms, host)
        case Gone(reason=reason):
            return Vanished(job, reason)
        case CannotWrite(reason=reason, errno=err_no):
            return OutputBlocked(job, reason, err_no)
        case OverTime(limit=limit):
            return TimedOut(job, limit)
        case Bug(traceback=tb):
            return Crashed(job, f"on render host {host}:\n{tb}" if host else tb)
    return Failed(job, f"unknown result {result!r}" + (f" from render host {host}" if host else ""), 0.0, host)


# ---- on the wire: a dict with a version, kinds named as the log names them ----------------------


def to_wire(result: Result) -> dict:
    match result:
        case Done(outputs=outputs, ms=ms, again=again):
            wire = {"k": "ok", "ms": ms, "o": list(outputs), "t": list(result.thumbnails), "ph": result.placeholder}
            if again:
                wire["again"] = 1
        case CannotRender(reason=reason, ms=ms):
            wire = {"k": "failed", "r": reason, "ms": ms}
        case Gone(reason=reason):
            wire = {"k": "vanished", "r": reason}
        case CannotWrite(reason=reason, errno=err_no):
            wire = {"k": "output", "r": reason, "errno": err_no}
        case Bug(traceback=tb):
            wire = {"k": "bug", "r": tb}
        case OverTime(limit=limit):
            wire = {"k": "timeout", "r": f"timed out after {limit:g} s", "limit": limit}
        case _:
            raise TypeError(f"not a render result: {result!r}")
    wire["v"] = WIRE_VERSION
    return wire


def from_wire(wire: dict) -> Result:
    """The result in an outcome message; ValueError for a version or kind we do not know."""
    if wire.get("v") != WIRE_VERSION:
        raise ValueError(f"outcome version {wire.get('v')!r}, expected {WIRE_VERSION} (a render host of another thumbwatch version?)")
    reason = str(wire.get("r", ""))
    match wire.get("k"):
        case "ok":
            return Done(tuple(wire.get("o", ())), float(wire.get("ms", 0.0)), bool(wire.get("again")),
                        tuple(wire.get("t") or ()), wire.get("ph"))
        case "failed":
            return CannotRender(reason, float(wire.get("ms", 0.0)))
        case "vanished":
            return Gone(reason)
        case "output":
            return CannotWrite(reason, wire.get("errno"))
        case "bug":
            return Bug(reason)
        case "timeout":
            return OverTime(float(wire["limit"]))
    raise ValueError(f"unknown outcome kind {wire.get('k')!r}")


# ---- one line per photo, worded the same on every side -----------------------------------------


def on(host: str) -> str:
    return f" on {host}" if host else ""


def say_rendered(log: logging.Logger, level: int, path: str, outputs: str, ms: float, host: str = "") -> None:
    log.log(level, "ok %s -> %s in %.0f ms%s", shown(path), shown(outputs), ms, on(host))


def say_vanished(log: logging.Logger, path: str, reason: str) -> None:
    log.debug("vanished or changed while rendering: %s (%s)", shown(path), reason)


def say_failed(log: logging.Logger, path: str, reason: str) -> None:
    log.warning("failed %s: %s", shown(path), reason)


def say_bug(log: logging.Logger, path: str, tb: str) -> None:
    log.error("bug while rendering %s (please report it):\n%s", shown(path), tb.rstrip())


def log_result(log: logging.Logger, path: str, result: Result) -> None:
    """A render host's own line for a photo it finished (the master says its own, with the host)."""
    match result:
        case Done(again=True):
            log.info("fresh already (another host rendered it): %s", shown(path))
        case Done(outputs=outputs, ms=ms):
            say_rendered(log, logging.INFO, path, ", ".join(os.path.relpath(out, os.path.dirname(path)) for out in outputs), ms)
        case Gone(reason=reason):
            say_vanished(log, path, reason)
        case Bug(traceback=tb):
            say_bug(log, path, tb)
        case CannotWrite(reason=reason):
            log.warning("cannot write the thumbnails of %s: %s", shown(path), reason)
        case CannotRender(reason=reason):
            say_failed(log, path, reason)
        case OverTime(limit=limit):
            say_failed(log, path, f"timed out after {limit:g} s")


# ---- how a process ended, and how a render process starts ---------------------------------------


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


def prepare_render_process(memory_mb: int) -> str | None:
    """The set-up every render process does before its first photo, local worker or render
    host alike: the memory cap, the allocator's thresholds, Pillow's warm-up. Never raises for a
    limit it cannot set; returns the line to log once when the cap is not what was asked."""
    note = memory_cap(memory_mb)
    keep_freed_memory()
    warm_up()
    return note


def warm_up() -> None:
    """Pay Pillow's first-use costs (plugins, decoder and encoder set-up, ~20 ms) before the
    first photo: that photo's latency is what a user notices."""
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="thumbwatch-warm-") as folder:
        sample = os.path.join(folder, "warm.jpg")
        Image.new("RGB", (64, 48), (90, 120, 150)).save(sample, "JPEG")
        size = SizeSpec("warm", 16, 16)
        try:
            render(sample, [Target(size, os.path.join(folder, "out", "warm.jpg"))], RenderSettings(OutputConfig(sizes=(size,)), 10_000))
        except RenderError as err:
            logger.warning("worker warm-up failed: %s", err)
        except MemoryError:
            logger.warning("worker warm-up failed: out of memory (limits.worker_memory_mb too low?)")
