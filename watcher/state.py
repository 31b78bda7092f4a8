"""What survives a restart, in the state folder: photos that failed (so they are not retried
until they change) and the status file that `thumbwatch status` reads.

Both are JSON written to a temp name and renamed, so a crash leaves the old or the new file.
Paths with undecodable bytes round-trip through surrogateescape and JSON's \\u escapes.

What is read back is checked like input from a stranger: a file that is not JSON, or not of
the shape we write, is moved aside (kept as <name>.damaged-<time>, named in one WARNING) and
we go on with empty records; a record of the wrong types is dropped, never used.
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
MAX_STATE_BYTES = 256 << 20  # ~1 million failure records; beyond that the file is not ours


class Damaged(Exception):
    """A state file that is not what we write; str(error) says how."""


def write_json_atomic(path: Path, data: Any) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(temp, path)


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None if there is none. Damaged when it is not JSON (truncated,
    not UTF-8, absurdly large); OSError when it cannot be read."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise Damaged("a folder, not a file") from None
    if len(raw) > MAX_STATE_BYTES:
        raise Damaged(f"larger than {MAX_STATE_BYTES >> 20} MB")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise Damaged(f"not UTF-8 (byte {err.start})") from None
    except RecursionError:
        raise Damaged("nested too deeply") from None
    except ValueError as err:
        raise Damaged(f"not valid JSON ({err})") from None


def move_aside(path: Path, why: str) -> Path | None:
    """Keep a damaged state file under another name, say so once, and return the new name."""
    kept = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while os.path.lexists(kept):
        n += 1
        kept = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
    try:
        os.rename(path, kept)
    except OSError as err:
        logger.warning("%s is damaged (%s) and cannot be moved aside (%s); ignoring it", path, why, os.strerror(err.errno or 0))
        return None
    logger.warning("%s is damaged (%s): moved aside to %s; starting with empty records", path, why, kept.name)
    return kept


def read_checked(path: Path, check: Any, *, repair: bool) -> Any:
    """read_json + check(data) (which raises Damaged); with repair, a damaged file is moved aside
    and None returned; without (a read-only command), Damaged is raised for the caller to report."""
    try:
        data = read_json(path)
        return None if data is None else check(data)
    except Damaged as err:
        if not repair:
            raise
        move_aside(path, str(err))
        return None


@dataclass
class Failure:
    reason: str
    size: int
    mtime_ns: int
    when: float

    @classmethod
    def checked(cls, raw: Any) -> "Failure | None":
        """A record read from disk, or None when any field is missing or of the wrong type."""
        if not isinstance(raw, dict) or set(raw) != {"reason", "size", "mtime_ns", "when"}:
            return None
        reason, size, mtime, when = raw["reason"], raw["size"], raw["mtime_ns"], raw["when"]
        if not isinstance(reason, str) or len(reason) > 10_000:
            return None
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= -1 for v in (size, mtime)):
            return None
        if isinstance(when, bool) or not isinstance(when, (int, float)) or not 0 <= when < 1e11:
            return None
        return cls(reason, size, mtime, float(when))


def _failures(data: Any) -> tuple[dict[str, Failure], int]:
    """The valid records of a failures file, and how many were not."""
    if not isinstance(data, dict):
        raise Damaged(f"expected an object of failure records, found a JSON {type(data).__name__}")
    items, bad = {}, 0
    for path, raw in data.items():
        failure = Failure.checked(raw)
        if failure is None or not path.startswith("/") or "\0" in path:
            bad += 1
        else:
            items[path] = failure
    if data and not items:
        raise Damaged(f"none of its {len(data)} record(s) has the shape we write")
    return items, bad


class FailureStore:
    """Photos that failed, keyed by path, remembered with the size and mtime they had then."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / FAILURES
        self._items: dict[str, Failure] = {}
        self._saved: dict[str, Failure] = {}  # what the file held when last read or written
        self._dirty = False

    def load(self, *, repair: bool = True) -> None:
        """Read the records. A damaged file is moved aside (repair) or raises Damaged (a read-only
        command's `repair=False`); records of the wrong shape are dropped with one warning."""
        self._dirty = False
        self._items = self._read(repair)
        self._saved = dict(self._items)

    def _read(self, repair: bool) -> dict[str, Failure]:
        try:
            checked = read_checked(self.path, _failures, repair=repair)
        except OSError as err:
            logger.warning("cannot read %s (%s); starting with no failure records", self.path, os.strerror(err.errno or 0))
            return {}
        if checked is None:
            return {}
        items, bad = checked
        if bad:
            logger.warning("%s: dropped %d failure record(s) of the wrong shape; those photos are tried again", self.path, bad)
            self._dirty = True
        return items

    def merge_from_disk(self) -> int:
        """Pick up what another process (`thumbwatch retry`) changed in the file, without losing
        what this one holds and has not saved yet. A record we saved that is gone from the file
        was cleared: forget it. A record made or changed since our last save stays. Returns how
        many records the file had cleared."""
        disk = self._read(repair=True)
        cleared = 0
        merged = dict(disk)
        for path, failure in self._items.items():
            if path not in disk and self._saved.get(path) == failure:
                cleared += 1  # ours, saved, and removed from the file since
                continue
            merged[path] = failure
        for path in set(self._saved) - set(self._items):
            if path in disk and disk[path] == self._saved[path]:
                del merged[path]  # forgotten here (the photo changed) and not saved yet
        self._items = merged
        self._saved = disk
        self._dirty = self._dirty or merged != disk
        return cleared

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
        self._saved = dict(self._items)
        self._dirty = False

    def save_or_log(self) -> None:
        """save(), for the daemon: a state folder gone read-only is an ERROR line, not a crash."""
        try:
            self.save()
        except OSError as err:
            logger.error("cannot save failure records: %s", err)


# The status file: what `thumbwatch status` shows, with the types it shows them as.
_STATUS_FIELDS = {
    "pid": int, "state": str, "version": str, "uptime": (int, float), "folders": list, "workers": list,
    "done": int, "failed": int, "skipped": int, "retried": int, "queue": int, "in_flight": int, "settling": int,
}


def _status(data: Any) -> dict:
    if not isinstance(data, dict):
        raise Damaged(f"expected an object, found a JSON {type(data).__name__}")
    for key, kind in _STATUS_FIELDS.items():
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise Damaged(f"{key}: expected {kind.__name__ if isinstance(kind, type) else 'a number'}, found {type(value).__name__}")
    if not all(isinstance(p, str) for p in data["folders"]) or not all(isinstance(p, int) for p in data["workers"]):
        raise Damaged("folders or workers of the wrong type")
    for key in ("render_ms_p50", "render_ms_p95"):
        if not isinstance(data.get(key), (int, float, type(None))) or isinstance(data.get(key), bool):
            raise Damaged(f"{key}: expected a number")
    if not isinstance(data.get("output_blocked"), (str, type(None))):
        raise Damaged("output_blocked: expected text")
    return data


def read_status(state_dir: Path, *, repair: bool = False) -> dict | None:
    """The status file, checked; None when there is none, it cannot be read, or it is damaged
    (moved aside with repair, which the daemon's own start does)."""
    try:
        return read_checked(state_dir / STATUS, _status, repair=repair)
    except (OSError, Damaged):
        return None


def check_state_dir(state_dir: Path) -> None:
    """At a daemon's start: a damaged status file is moved aside now (the daemon will write its
    own), and a failures file that cannot be read is said once; load() handles the rest."""
    read_status(state_dir, repair=True)

