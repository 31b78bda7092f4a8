"""Executors: the two sides of the seam in executor.py. local/ runs worker processes on this
machine; celery/ sends photos to render hosts through a broker. Each package holds both ends of
its own process boundary, and neither imports the master's modules above the seam.

`make_executor(config)` is the one place that reads workers.backend: the supervisor gets an
Executor and never asks which one it is (each describes itself: summary(), describe()).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config
    from ..executor import Executor


def make_executor(config: Config) -> Executor:
    """The configured executor, not started. Celery is imported only when configured."""
    if config.workers.backend == "celery":
        from .celery.executor import CeleryExecutor

        return CeleryExecutor(config)
    from .local.pool import LocalPool

    return LocalPool(config.workers.count, memory_mb=config.limits.worker_memory_mb, photo_timeout=config.limits.photo_timeout)
