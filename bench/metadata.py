"""The chown storm (issue 19): how many photos a change of attributes alone renders again.

    .venv/bin/python -m bench.metadata [--photos 5000] [--tool "chown -R 1:1"] [--rounds 3]

Makes N flat-colour photos, starts a real `thumbwatch run` (2 workers, one 75 px size), waits
until every photo is rendered, then per round: runs the tool over the watched folder while the
daemon runs and counts the "ok" lines that follow (target 0); then stops the daemon, runs the
tool again, starts it and counts what the start's catch-up renders (the README says what to
expect: with no events to tell a change of attributes from a rewrite in place, it renders them).
Needs root for chown. Prints medians and the spread over the rounds, and PASS/FAIL for the
running target.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

CONFIG = """\
watch: {{paths: ["{photos}"], settle_seconds: 0.5, rescan_interval: 0}}
output: {{sizes: [{{name: small, width: 75, height: 75}}]}}
workers: {{count: 2, queue_size: 100000}}
state: {{dir: "{state}"}}
log: {{level: info, progress_interval: 0}}
"""


class Daemon:
    def __init__(self, config: Path):
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
        self.proc = subprocess.Popen([sys.executable, "-m", "watcher", "run", "-c", str(config)], stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, start_new_session=True, env=env, text=True)
        self.ok = 0
        self.lines: list[str] = []
        self.last_line = time.monotonic()
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self.changed:
                self.lines.append(line)
                self.last_line = time.monotonic()
                if re.search(r"\bok /", line):
                    self.ok += 1
                self.changed.notify_all()

    def wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise SystemExit(f"gave up waiting for {what}; last lines:\n{''.join(self.lines[-10:])}")
                self.changed.wait(min(left, 0.5))

    def quiet(self, seconds: float, timeout: float) -> None:
        """Until nothing was logged for `seconds`."""
        self.wait(lambda: time.monotonic() - self.last_line >= seconds, timeout, f"{seconds} s without a log line")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        if self.proc.wait(60) != 0:
            raise SystemExit(f"daemon exited {self.proc.returncode}")


def stale(photos: Path) -> int:
    """Thumbnails that are not fresh by the README's rule (the photo's mtime, a ctime not older)."""
    count = 0
    for photo in photos.glob("d*/*.jpg"):
        thumb = photos / "thumbs" / photo.relative_to(photos)
        p, t = photo.stat(), thumb.stat()
        count += not (t.st_mtime_ns == p.st_mtime_ns and t.st_ctime_ns >= p.st_ctime_ns)
    return count


def make_photos(folder: Path, count: int) -> None:
    for i in range(count):
        sub = folder / f"d{i // 100:03}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (96, 72), (i % 256, i // 256 % 256, 128)).save(sub / f"p{i:06}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tool", default="chown -R {owner}", help="run on the watched folder; {owner} alternates 1:1 and 0:0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="thumbwatch-metadata-") as tmp:
        work = Path(tmp)
        photos = work / "photos"
        make_photos(photos, args.photos)
        config = work / "config.yaml"
        config.write_text(CONFIG.format(photos=photos, state=work / "state"))
        daemon = Daemon(config)
        daemon.wait(lambda: daemon.ok >= args.photos, 600, f"{args.photos} photos rendered")
        daemon.quiet(2.0, 120)
        running, stopped, left_stale, owners = [], [], [], iter(["1:1", "0:0"] * args.rounds)

        def tool() -> None:
            command = args.tool.format(owner=next(owners)) + " " + shlex.quote(str(photos))
            subprocess.run(command, shell=True, check=True)

        for round_ in range(args.rounds):
            before = daemon.ok
            tool()
            daemon.quiet(3.0, 600)
            deadline = time.monotonic() + 60  # re-stamps wait 2 s for other events, then go
            while stale(photos) and time.monotonic() < deadline:
                time.sleep(0.5)
            running.append(daemon.ok - before)
            left_stale.append(stale(photos))
            daemon.stop()
            tool()
            daemon = Daemon(config)
            daemon.wait(lambda: any("catch-up done" in line for line in daemon.lines), 600, "the catch-up")
            daemon.quiet(3.0, 600)
            stopped.append(daemon.ok)
            print(f"round {round_ + 1}: running {running[-1]} of {args.photos} rendered again ({left_stale[-1]} left stale), "
                  f"stopped then started {stopped[-1]} of {args.photos}", flush=True)
        daemon.stop()

    def figure(values: list[int]) -> str:
        return f"median {statistics.median(values):g} (min {min(values)}, max {max(values)}) of {args.photos}"

    print(f"{args.tool!r} over {args.photos} photos, {args.rounds} rounds, {os.cpu_count()} CPUs ({os.uname().nodename})")
    print(f"  while running: {figure(running)} photos rendered again (target 0), {figure(left_stale)} thumbnails left stale")
    print(f"  while stopped: {figure(stopped)} photos rendered again at the next start")
    print("PASS" if max(running) == 0 and max(left_stale) == 0 else "FAIL",
          "metadata-only changes while running cost no render and leave every thumbnail fresh")


if __name__ == "__main__":
    main()
