"""Resource limits a worker sets on itself. Never raises a hard limit: an unprivileged process
cannot, and under `ulimit -v` (or a unit's LimitAS=) the lower limit is the one that holds."""

from __future__ import annotations

import logging
import resource

logger = logging.getLogger(__name__)


def memory_cap(limit_mb: int) -> str | None:
    """Cap this process's address space (RLIMIT_AS) at `limit_mb` MiB, or at the hard limit
    already in force when that is lower. 0 means no cap of ours. Returns a line to log when the
    cap had to be lower than asked, else None."""
    if not limit_mb:
        return None
    wanted = limit_mb * 1024 * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
        return (f"worker memory cap is {hard >> 20} MB, not limits.worker_memory_mb={limit_mb}: "
                f"the address-space hard limit (ulimit -v, LimitAS=) is lower and cannot be raised")
    resource.setrlimit(resource.RLIMIT_AS, (wanted, wanted))
    return None
