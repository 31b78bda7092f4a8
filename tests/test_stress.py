"""`make stress`: 20,000 photos copied in at once. Not part of `make test` (it takes minutes)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from helpers import jpeg_bytes, wait_for, write_config

pytestmark = [
    pytest.mark.stress,
    pytest.mark.skipif(not os.environ.get("THUMBWATCH_STRESS"), reason="stress run: use `make stress`"),
    pytest.mark.timeout(1200),
]

COUNT = 20_000


def vm_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def test_20000_photos_at_once(project, start_daemon, tmp_path):
    cfg = project / "config.yaml"
    write_config(cfg, cfg.read_text().replace("  progress_interval: 0\n", "  progress_interval: 5\n  photos: debug\n"))
    staging = tmp_path / "staging"
    staging.mkdir()
    data = jpeg_bytes(64, 48)
    for i in range(COUNT):
        (staging / f"s{i:05d}.jpg").write_bytes(data)
    daemon = start_daemon()
    daemon.wait_ready()
    rss_samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            try:
                rss_samples.append(vm_kb(daemon.proc.pid, "VmRSS"))
            except (OSError, LookupError):
                return

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for i in range(COUNT):
            os.rename(staging / f"s{i:05d}.jpg", project / "photos" / f"s{i:05d}.jpg")
        thumbs = project / "photos" / "thumbs"
        wait_for(lambda: thumbs.exists() and sum(1 for _ in os.scandir(thumbs)) >= COUNT, 900, interval=1, message=f"{COUNT} thumbnails")
        peak_kb = vm_kb(daemon.proc.pid, "VmHWM")
    finally:
        stop.set()
        sampler.join()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(60) == 0
    assert sorted(os.listdir(project / "photos" / "thumbs")) == [f"s{i:05d}.jpg" for i in range(COUNT)]
    done = int(daemon.wait_log(r"stopped: done=(\d+)")[0].split("done=")[1].split()[0])
    assert done == COUNT, f"{done} renders for {COUNT} photos: duplicates"
    assert daemon.matching(r"progress: .*rate=.*eta="), "no progress line while the backlog drained"
    assert len(daemon.log()) < 2000, "log flooded"
    print(f"\nmain process peak RSS {peak_kb / 1024:.1f} MB; samples (MB): {[round(s / 1024) for s in rss_samples[::10]]}")
    assert peak_kb < 80 * 1024, f"main process peaked at {peak_kb / 1024:.0f} MB"
