"""Was a decoder's failure the worker's memory cap? FFmpeg and LibRaw report a refused
allocation in their own ways (FFmpeg often as "invalid data", LibRaw as a mempool overflow),
and a good video failed as "corrupt" tells people to delete it. The kernel knows better: if the
process's peak address space came within a margin of its RLIMIT_AS, the cap is the likely cause."""

from __future__ import annotations

import resource

MARGIN = 64 * 1024 * 1024  # a frame's or a mosaic's allocation: the size of what was refused


def near_cap() -> bool:
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return False
    try:
        with open("/proc/self/status", "rb") as f:
            peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith(b"VmPeak:"))
    except (OSError, StopIteration, ValueError):
        return False
    return peak + MARGIN >= soft
