"""What survives a restart, in the state folder: photos that failed (so they are not retried
until they change) and the status file that `thumbwatch status` reads.

Both are JSON written to a temp name and renamed, so a crash leaves the old or the new file.
Paths with undecodable bytes round-trip through surrogateescape and JSON's \\u escapes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FAILURES = "failures.json"
STATUS = "status.json"


def write_json_atomic(path: Path, data: Any) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(temp, path)


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


@dataclass
class Failure:
    reason: str
    size: int
    mtime_ns: int
    when: float


class FailureStore:
    """Photos that failed, keyed by path, remembered with the size and mtime they had then."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / FAILURES
        self._items: dict[str, Failure] = {}
        self._dirty = False

    def load(self) -> None:
        try:
            data = read_json(self.path) or {}
        except (OSError, ValueError) as err:
            logger.warning("cannot read %s (%s); starting with no failure records", self.path, err)
            data = {}
        self._items = {p: Failure(**f) for p, f in data.items()}

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, Failure]]:
        return sorted(self._items.items())

    def known(self, path: str, st: os.stat_result) -> bool:
        """Failed before and unchanged since (same size and mtime): don't try again."""
        failure = self._items.get(path)
        return failure is not None and failure.size == st.st_size and failure.mtime_ns == st.st_mtime_ns

    def record(self, path: str, st: os.stat_result | None, reason: str) -> None:
        size, mtime = (st.st_size, st.st_mtime_ns) if st is not None else (-1, -1)
        self._items[path] = Failure(reason, size, mtime, time.time())
        self._dirty = True

    def forget(self, path: str) -> None:
        if self._items.pop(path, None) is not None:
            self._dirty = True

    def clear(self, prefix: str | None = None) -> int:
        doomed = [p for p in self._items if prefix is None or p == prefix or p.startswith(prefix.rstrip("/") + "/")]
        for p in doomed:
            del self._items[p]
        self._dirty = self._dirty or bool(doomed)
        return len(doomed)

    def save(self, force: bool = False) -> None:
        if not (self._dirty or force):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, {p: vars(f) for p, f in self._items.items()})
        self._dirty = False
