"""Can this render host see a watched root as the watcher sees it?

A share not mounted on this host, an empty mount point or another file system in the root's
place must not turn into "vanished" for every photo: the host takes no photos from that root,
says so once (ERROR, then INFO when it can see it again), and records it in Redis
(tw:<queue>:blind, field "host<TAB>root") and on the outcome stream for the watcher's status.
"Once" is per host, not per render process: the process that sets the field logs at ERROR, the
others at DEBUG.

The watcher's view travels with each photo: the root and its marker id (roots.read_marker),
None when that root has no marker (then only "missing" and "empty" can be told).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

from ...roots import MARKER, read_marker
from . import wire

logger = logging.getLogger(__name__)

TRUST_SEEN = 5.0  # s a root seen as the watcher sees it is trusted before looking again
BLIND_RECHECK = 3.0  # s a root this host cannot see is given back before it looks again


def problem(root: str, marker: str | None) -> str | None:
    """Why this host's `root` is not the watcher's, or None when it is."""
    try:
        if not os.path.isdir(root):
            return "missing"
        if marker is not None:
            mine = read_marker(root)
            if mine is None:
                return f"no {MARKER} marker (an empty mount point, or a share not mounted here?)"
            if mine != marker:
                return f"its {MARKER} marker is another folder's (another file system mounted there?)"
            return None
        with os.scandir(root) as entries:
            if next(entries, None) is None:
                return "empty, where the watcher's is not (a share not mounted here?)"
    except OSError as err:  # a stale NFS handle, ENOTCONN from a FUSE mount
        return f"cannot be read: {err.strerror or err}"
    return None


class Sight:
    def __init__(self, host: str, client: Any, keys: wire.Keys, *, clock: Callable[[], float] = time.monotonic):
        self.host = host
        self.redis = client
        self.keys = keys
        self.clock = clock
        self.verdicts: dict[tuple[str, str | None], tuple[float, str | None]] = {}  # -> (look again at, problem)

    def sees(self, root: str, marker: str | None) -> bool:
        now = self.clock()
        known = self.verdicts.get((root, marker))
        if known is not None and now < known[0]:
            return known[1] is None
        why = problem(root, marker)
        self.verdicts[(root, marker)] = (now + (TRUST_SEEN if why is None else BLIND_RECHECK), why)
        if known is None or (known[1] is None) != (why is None):
            self._say(root, why)  # a first look, or a change
        return why is None

    def _say(self, root: str, why: str | None) -> None:
        field = f"{self.host}\t{root}"
        try:
            if why is not None:
                first = self.redis.hsetnx(self.keys.blind, field, why)
            else:
                first = self.redis.hdel(self.keys.blind, field)
            if first:
                self.redis.xadd(self.keys.outcomes, {"m": wire.sight_message(self.host, root, why)},
                                maxlen=wire.STREAM_MAXLEN, approximate=True)
        except (OSError, wire.redis.RedisError) as err:
            logger.warning("cannot record in the broker that %s %s root %s: %s", self.host, "sees" if why is None else "cannot see", root, err)
            first = True  # said here, then: better once per process than never
        if why is not None:
            logger.log(logging.ERROR if first else logging.DEBUG,
                       "render host %s cannot see root %s: %s; giving its photos back for other hosts until it can", self.host, root, why)
        elif first:
            logger.info("render host %s sees root %s again; taking its photos", self.host, root)
