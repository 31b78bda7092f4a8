"""Benchmark: thumbnail events and hooks on vs off, a burst of photos (`python -m bench.hooks`).

A real daemon (2 workers, one 256 px size) is started on an empty folder; once its catch-up is done, a
burst of N small photos (640×480 JPEGs, ~30 KB, staged on the same file system) is renamed in.
Throughput is N / (last photo's "ok" line - first rename). With hooks on, the daemon's webhook
posts to a local receiver (http.server on 127.0.0.1, in this process: it counts events and
answers 204), and the run checks that every photo got a "rendered" event. Rounds alternate off
and on, each going first in turn, so a shared machine's drift hits both alike. Target: on >=
0.97 x off (medians). Also printed: the daemon main process's CPU time a photo, which the load of
a shared machine disturbs less than a rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

from bench import cpu_name

TARGET = 0.97
MARGIN = 0.01

CONFIG = """\
watch: {{paths: ["{photos}"], rescan_interval: 0, settle_seconds: 0.5}}
output:
  sizes: [{{name: small, width: 256, height: 256}}]
workers: {{count: 2, queue_size: 20000}}
state: {{dir: "{state}"}}
log: {{level: info, progress_interval: 0}}
"""
HOOKS = """\
hooks:
  webhook: {{url: "http://127.0.0.1:{port}/thumbnails"}}
"""


class Counter:
    """The receiver: counts each photo's rendered events."""

    def __init__(self) -> None:
        self.rendered: dict[str, int] = {}
        self.lock = threading.Lock()
        counter = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                events = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["events"]
                with counter.lock:
                    for e in events:
                        if e["event"] == "rendered":
                            counter.rendered[e["photo"]] = counter.rendered.get(e["photo"], 0) + 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def run_once(work: Path, photo_bytes: bytes, count: int, receiver: Counter | None) -> dict:
    if work.exists():
        shutil.rmtree(work)
    photos, staged, state = work / "photos", work / "staged", work / "state"
    for folder in (photos, staged):
        folder.mkdir(parents=True)
    names = [f"p{i:05d}.jpg" for i in range(count)]
    for name in names:
        (staged / name).write_bytes(photo_bytes)
    config = work / "config.yaml"
    config.write_text(CONFIG.format(photos=photos, state=state) + (HOOKS.format(port=receiver.port) if receiver else ""))
    if receiver:
        with receiver.lock:
            receiver.rendered.clear()
    proc = subprocess.Popen([sys.executable, "-m", "watcher", "run", "--config", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True,
                            env={k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")})
    done = threading.Event()
    ready = threading.Event()
    seen = {"ok": 0, "last": 0.0}

    def read() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            if b" ok " in raw:
                seen["ok"] += 1
                seen["last"] = time.perf_counter()
                if seen["ok"] >= count:
                    done.set()
            elif b" catch-up done: " in raw:
                ready.set()  # the start's walk of the (empty) folder is over: it cannot race the burst
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the daemon did not get ready")
        start = time.perf_counter()
        for name in names:
            os.rename(staged / name, photos / name)
        if not done.wait(900) or seen["ok"] < count:
            raise RuntimeError(f"only {seen['ok']} of {count} photos done")
        rate = count / (seen["last"] - start)
        main_cpu_ms = _cpu_ms(proc.pid)
        delivered = None
        if receiver:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(receiver.rendered) < count:
                time.sleep(0.1)  # the bench's wait for the last batch, after the measurement
            delivered = len(receiver.rendered)
            main_cpu_ms = _cpu_ms(proc.pid)  # with the last deliveries: the hooks' whole cost
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(5)
    return {"rate": rate, "delivered": delivered, "main_cpu_ms_per_photo": main_cpu_ms / count}


def _cpu_ms(pid: int) -> float:
    """The daemon's main process's CPU time so far (its threads included, not its workers)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def append_cost_us(folder: Path, events: int = 20_000) -> float:
    """What the master's loop pays per event: one append to the spool (nobody delivering)."""
    from watcher.hooks import Spool

    spool = Spool(folder, ["webhook"], events + 1)
    spool.open()
    event = {"v": 1, "event": "rendered", "ts": time.time(), "photo": "/srv/photos/2024/holiday/IMG_0001.jpg",
             "thumbnails": [{"size": "small", "path": "/srv/photos/thumbs/2024/holiday/IMG_0001.jpg", "width": 256,
                             "height": 192, "bytes": 11234, "format": "jpeg"}], "ms": 23, "host": "render2"}
    start = time.perf_counter()
    for _ in range(events):
        spool.append(event)
    took = time.perf_counter() - start
    spool.close()
    return took / events * 1e6


def machine() -> str:
    usable = len(os.sched_getaffinity(0))
    return f"{platform.node()}: {cpu_name()} ({platform.machine()}), {os.cpu_count()} CPUs ({usable} usable), Python {platform.python_version()}, Pillow {Image.__version__}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import io

    grad = Image.linear_gradient("L").resize((640, 480))
    buf = io.BytesIO()
    Image.merge("RGB", (grad, grad.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grad.rotate(90).resize((640, 480)))).save(buf, "JPEG", quality=85)
    photo = buf.getvalue()
    receiver = Counter()
    with tempfile.TemporaryDirectory(prefix="thumbwatch-bench-spool-") as tmp:
        append_us = statistics.median(append_cost_us(Path(tmp) / str(i)) for i in range(3))
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    undelivered = 0
    with tempfile.TemporaryDirectory(prefix="thumbwatch-bench-hooks-") as tmp:
        for r in range(args.rounds):
            for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):  # interleaved, each first in turn: drift hits both alike
                result = run_once(Path(tmp) / mode, photo, args.photos, receiver if mode == "on" else None)
                rates[mode].append(result["rate"])
                cpu[mode].append(result["main_cpu_ms_per_photo"])
                extra = ""
                if mode == "on":
                    undelivered += args.photos - result["delivered"]
                    extra = f", rendered events for {result['delivered']} of {args.photos} photos"
                print(f"round {r + 1} hooks {mode:3s}: {result['rate']:.0f} photos/s, daemon main process "
                      f"{result['main_cpu_ms_per_photo']:.2f} ms CPU a photo{extra}", flush=True)
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    ratio = on / off
    ok = ratio >= TARGET and undelivered == 0
    verdict = "FAIL" if not ok else "MARGINAL" if ratio - TARGET < MARGIN * TARGET else "PASS"
    print(f"\nthumbwatch bench.hooks — {machine()}")
    print(f"burst of {args.photos:,} photos (640×480 JPEG, {len(photo) // 1024} KB) into a watched folder, 2 workers, one 256 px size; "
          f"median of {args.rounds} rounds (slowest–fastest):")
    print(f"  hooks off: {off:7.1f} photos/s ({min(rates['off']):.1f}–{max(rates['off']):.1f})")
    print(f"  hooks on : {on:7.1f} photos/s ({min(rates['on']):.1f}–{max(rates['on']):.1f}), webhook to a local receiver")
    print(f"  daemon main process CPU a photo (its threads, not the workers'): off {statistics.median(cpu['off']):.2f} ms, "
          f"on {statistics.median(cpu['on']):.2f} ms (FIGURE)")
    print(f"  the master's cost of one event (an append to the spool): {append_us:.1f} µs, median of 3 × 20,000 (FIGURE)")
    print(f"  every photo's rendered event delivered: {'yes' if undelivered == 0 else f'no, {undelivered} missing'}")
    print(f"hooks on / off throughput: {ratio:.3f}× (≥ {TARGET}×) {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
