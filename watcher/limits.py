"""Resource limits a render process sets on itself, local worker and render host alike.

memory_cap never raises a hard limit and never raises an exception: an unprivileged process
cannot raise one, a root one must not (it would undo an admin's `ulimit -v` or a unit's
LimitAS=), and a render process that could not set its cap must still warm up and render.
The lowest of what is configured and what is already in force is the one that holds.
"""

from __future__ import annotations

import ctypes
import logging
import resource

logger = logging.getLogger(__name__)


def planned_cap(limit_mb: int) -> tuple[int | None, str | None]:
    """The address-space cap (bytes) memory_cap would set now, and the line to log once when it
    cannot be `limit_mb` (None when it is). (None, None) for 0: no cap of ours."""
    if not limit_mb:
        return None, None
    wanted = limit_mb * 1024 * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    in_force = [x for x in (soft, hard) if x != resource.RLIM_INFINITY]
    if in_force and min(in_force) < wanted:
        cap = min(in_force)
        return cap, (f"worker memory cap is {cap >> 20} MB, not limits.worker_memory_mb={limit_mb}: "
                     f"the address-space limit already in force (ulimit -v, LimitAS=) is lower and cannot be raised")
    return wanted, None


def memory_cap(limit_mb: int) -> str | None:
    """Cap this process's address space (RLIMIT_AS, soft and hard) at `limit_mb` MiB, or at the
    limit already in force when that is lower: a hard limit is only ever lowered, so the render
    code cannot lift the cap either. 0 means no cap of ours. Returns a line to log (once, by the
    caller) when the cap is not what was asked, else None."""
    cap, note = planned_cap(limit_mb)
    if cap is None:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    except (ValueError, OSError) as err:  # not expected; a process that cannot cap itself still renders
        return f"worker memory cap not set (limits.worker_memory_mb={limit_mb}): setrlimit(RLIMIT_AS) refused: {err}"
    return note


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
