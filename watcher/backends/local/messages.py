"""What the master and a local worker process say to each other over the worker's pipe.

Frozen dataclasses, matched with `match` on both ends. The stop order is its own message, Stop,
never a bare None on a channel that also carries settings and jobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# ---- master -> worker ------------------------------------------------------------------------


@dataclass(frozen=True)
class UseSettings:
    """Render settings for the jobs that follow; sent only when they change (a reload)."""

    settings: Any  # render.RenderSettings


@dataclass(frozen=True)
class RenderPhoto:
    job_id: int
    path: str
    targets: tuple  # paths.Target


@dataclass(frozen=True)
class Stop:
    """The poison pill: finish the photo in hand (the pipe is ordered), then exit."""


STOP = Stop()

# ---- worker -> master ------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """Warmed up and ready for photos; `note` says what the worker could not set up as asked
    (the master logs it once, not once per worker)."""

    pid: int
    note: str | None = None


@dataclass(frozen=True)
class LogRecord:
    record: dict  # logsetup.ForwardingHandler's picklable form


@dataclass(frozen=True)
class Done:
    job_id: int
    outputs: tuple[str, ...]
    ms: float


@dataclass(frozen=True)
class CannotRender:
    job_id: int
    reason: str
    ms: float


@dataclass(frozen=True)
class Gone:
    """The photo vanished before or while it was rendered."""

    job_id: int
    reason: str


@dataclass(frozen=True)
class CannotWrite:
    """The thumbnails could not be written: a condition of the output, not of this photo."""

    job_id: int
    reason: str
    errno: int | None


@dataclass(frozen=True)
class NotStarted:
    """Skipped because the pool is draining: the next start's catch-up finds it."""

    job_id: int


@dataclass(frozen=True)
class Bug:
    job_id: int
    traceback: str
