"""Drive a real thumbwatch daemon for the benchmark: start it on a folder, read its log, stop it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

CONFIG = """\
watch: {{paths: ["{photos}"], recursive: true, create: true, rescan_interval: 0}}
output:
  dir: "{output}"
  sizes: {sizes}
workers: {{count: {workers}, queue_size: {queue}}}
state: {{dir: "{state}"}}
log: {{level: info, photos: info, progress_interval: 0}}
"""


def size_list(boxes: tuple[int, ...]) -> str:
    return "[" + ", ".join(f"{{name: s{b}, width: {b}, height: {b}}}" for b in boxes) + "]"


# "ok /path/to/name.jpg -> ..." or "ok src=/path/to/name.jpg ...": the photo's file name
_OK_NAME = re.compile(r" ok (?:src=)?\S*?([^/\s]+\.jpe?g)\b")
# "... in 41 ms" or "ms=41": the worker's own time for the photo
_OK_MS = re.compile(r"(?: in |\bms=)(\d+(?:\.\d+)?)(?: ms)?\b")


class BenchDaemon:
    def __init__(self, workdir: Path, photos: Path, boxes: tuple[int, ...], queue: int = 1000, output: str = "thumbs",
                 workers: int = 2):
        self.workdir = workdir
        self.state = workdir / "state"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "config.yaml"
        self.config.write_text(CONFIG.format(photos=photos, sizes=size_list(boxes), queue=queue, state=self.state, output=output, workers=workers))
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "--config", str(self.config)],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
            env={k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")},
        )
        self.lines: list[tuple[float, str]] = []
        # "ok" lines, counted as they arrive so a run's end is waited for, not polled for: a
        # poller would take CPU from the workers being measured.
        self.done = 0
        self.ok_at: dict[str, float] = {}  # photo file name -> when its "ok" line was read
        self.ok_ms: dict[str, float] = {}  # photo file name -> the render time its "ok" line gives
        self._done_changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            when = time.perf_counter()
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append((when, line))
            if " ok " in line:
                with self._done_changed:
                    self.done += 1
                    name = _OK_NAME.search(line)
                    if name:
                        self.ok_at[name.group(1)] = when
                        ms = _OK_MS.search(line, name.end())
                        if ms:
                            self.ok_ms[name.group(1)] = float(ms.group(1))
                    self.done_at = when
                    self._done_changed.notify_all()

    def wait_done(self, count: int, timeout: float = 600) -> float:
        """When the daemon logged its `count`-th thumbnailed photo (lines come after the rename)."""
        with self._done_changed:
            if not self._done_changed.wait_for(lambda: self.done >= count or self.proc.poll() is not None, timeout):
                raise RuntimeError(f"only {self.done} of {count} photos done after {timeout} s")
            if self.done < count:
                raise RuntimeError(f"daemon exited after {self.done} of {count} photos")
            return self.done_at

    def wait_ok(self, name: str, timeout: float = 120) -> float:
        """When the daemon's "ok" line for the photo named `name` was read: a wait on the log
        reader's condition, no polling on the cores being measured."""
        with self._done_changed:
            if not self._done_changed.wait_for(lambda: name in self.ok_at or self.proc.poll() is not None, timeout):
                raise RuntimeError(f"no ok line for {name} after {timeout} s")
            if name not in self.ok_at:
                raise RuntimeError(f"daemon exited before {name} was done")
            return self.ok_at[name]

    def wait_line(self, pattern: str, timeout: float = 120) -> tuple[float, re.Match]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for when, line in list(self.lines):
                match = rx.search(line)
                if match:
                    return when, match
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        raise RuntimeError(f"daemon never logged /{pattern}/; last lines: {[l for _, l in self.lines[-5:]]}")

    def status(self) -> dict:
        return json.loads((self.state / "status.json").read_text())

    def pids(self) -> list[int]:
        return [self.proc.pid, *self.status()["workers"]]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(5)


def vm_kb(pid: int, field: str = "VmHWM") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total


def count_files(folder: Path) -> int:
    try:
        return sum(1 for e in os.scandir(folder) if e.is_file())
    except FileNotFoundError:
        return 0
