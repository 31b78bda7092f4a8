"""Thumbnail events: one JSON object per change of the thumbnail tree, schema version 1.

    {"v": 1, "event": "rendered", "photo": P, "thumbnails": [THUMB, ...], "ms": 41, "host": "render2",
     "placeholder": {"kind": "thumbhash", "hash": "..."}}          # placeholder only when configured
    {"v": 1, "event": "failed", "photo": P, "reason": "truncated JPEG", "removed": [PATH, ...]}
    {"v": 1, "event": "removed", "photo": P or null, "folder": F or null, "why": W, "thumbnails": [PATH, ...]}
    {"v": 1, "event": "moved", "from": F, "to": F2, "thumbnails": [{"size": S, "from": D, "to": D2}, ...]}

THUMB is {"size", "path", "width", "height", "bytes", "format"}; width, height and bytes are null
when the render host did not say (an older host, or a photo another host had rendered already).
`removed` has why = "deleted" (the photo went; `photo` names it), "folder gone" (a folder left
the tree; `folder` names it, `photo` is null) or "orphan" (a walk found thumbnails whose photo is
gone; `folder` is the thumbnail folder). `moved` carries a folder's thumbnails to a new name: for
each size, the thumbnail folder `from` is now `to`. Every event also has "ts" (Unix time, seconds).
New fields may appear within version 1; a change of meaning gets "v": 2.

This module is shared: render hosts and workers import thumbnails() (the schema's THUMB), the
master's modules call the emitters. The emitters do nothing until the master sets a sink (the
hooks' spool, hooks.py), so render hosts and tests without hooks pay nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

VERSION = 1
EVENTS = ("rendered", "failed", "removed", "moved")

Sink = Callable[[dict], None]
_sink: Sink | None = None
_host = socket.gethostname()


def set_sink(sink: Sink | None) -> None:
    """Where events go (the master's spool), or None: events are not made at all."""
    global _sink
    _sink = sink


def enabled() -> bool:
    return _sink is not None


def _emit(event: str, fields: dict) -> None:
    sink = _sink
    if sink is not None:
        sink({"v": VERSION, "event": event, "ts": round(time.time(), 3), **fields})


# ---- the shared part: what a worker says about the thumbnails it wrote -----------------------


def thumbnails(result: Any, targets: Sequence[Any]) -> tuple[dict, ...]:
    """The schema's THUMB for each thumbnail of a render.RenderResult, in the targets' order."""
    sizes = {t.path: t.size for t in targets}
    counts = getattr(result, "bytes", ()) or (None,) * len(result.outputs)
    out = []
    for (path, width, height), nbytes in zip(result.outputs, counts):
        size = sizes.get(path)
        out.append({"size": size.name if size else None, "path": path, "width": width, "height": height,
                     "bytes": nbytes, "format": size.format if size else None})
    return tuple(out)


def _unknown(targets: Iterable[Any]) -> list[dict]:
    return [{"size": t.size.name, "path": t.path, "width": None, "height": None, "bytes": None, "format": t.size.format}
            for t in targets]


# ---- the master's emitters ---------------------------------------------------------------------


def rendered(photo: str, targets: Sequence[Any], thumbs: Sequence[dict], ms: float, host: str = "",
             placeholder: dict | None = None) -> None:
    if _sink is None:
        return
    fields: dict = {"photo": photo, "thumbnails": list(thumbs) or _unknown(targets), "ms": round(ms), "host": host or _host}
    if placeholder:
        fields["placeholder"] = placeholder
    _emit("rendered", fields)


def failed(photo: str, reason: str, removed: Sequence[str] = ()) -> None:
    _emit("failed", {"photo": photo, "reason": reason, "removed": list(removed)})


def removed(paths: Sequence[str], *, why: str, photo: str | None = None, folder: str | None = None) -> None:
    if paths:
        _emit("removed", {"photo": photo, "folder": folder, "why": why, "thumbnails": list(paths)})


def moved(src: str, dest: str, carried: Sequence[tuple[str, str, str]]) -> None:
    """`carried`: (size name, thumbnail folder before, after) for each size whose folder moved."""
    if carried:
        _emit("moved", {"from": src, "to": dest, "thumbnails": [{"size": s, "from": a, "to": b} for s, a, b in carried]})


def existing(paths: Iterable[str]) -> list[str]:
    """Of these thumbnail paths, the ones there now (what a removal is about to take)."""
    if _sink is None:
        return []
    return [p for p in paths if os.path.lexists(p)]
