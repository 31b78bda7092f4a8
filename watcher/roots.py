"""A watched root's identity: how the watcher and render hosts tell the real photo folder from
an empty mount point, a share not mounted on this host, or another file system in its place.

The watcher writes a small marker file into each root it can write to; its id is the root's
identity from then on. Anyone who later looks at the root (the watcher after a remount or a
restart, a render host on another machine) reads the marker: missing or different means "this
is not the folder I know", never "the folder is empty".
"""

from __future__ import annotations

import json
import logging
import os
import uuid

logger = logging.getLogger(__name__)

MARKER = ".thumbwatch-root"


def read_marker(root: str) -> str | None:
    """The id in `root`'s marker, or None when there is none (or it cannot be read)."""
    try:
        with open(os.path.join(root, MARKER), "rb") as f:
            data = json.loads(f.read(4096))
    except (OSError, ValueError):
        return None
    ident = data.get("id") if isinstance(data, dict) else None
    return ident if isinstance(ident, str) and ident else None


def write_marker(root: str) -> str | None:
    """Make sure `root` carries a marker and return its id; None when the root is read-only to us
    (the caller then falls back on what it can see without one)."""
    ident = read_marker(root)
    if ident is not None:
        return ident
    ident = uuid.uuid4().hex
    path = os.path.join(root, MARKER)
    temp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temp, "w") as f:
            json.dump({"id": ident, "what": "thumbwatch: this folder is a watched root; keep this file"}, f)
        os.replace(temp, path)
    except OSError as err:
        logger.debug("cannot write the root marker in %s: %s", root, err)
        try:
            os.unlink(temp)
        except OSError:
            pass
        return None
    return ident
