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
class Finished:
    """The photo in hand ended: results.Done, CannotRender, Gone, CannotWrite or Bug."""

    job_id: int
    result: Any  # results.Result


@dataclass(frozen=True)
class NotStarted:
    """Skipped because the pool is draining: the next start's catch-up finds it."""

    job_id: int
