"""Fixtures: a project folder with a config, and daemons that are always cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from helpers import Daemon, write_config

pytest_plugins = ["redis_server"]  # the real Redis the Celery tests use

BASE_CONFIG = """\
watch:
  paths: [photos]
  create: true
  settle_seconds: 0.3
  rescan_interval: 0
output:
  sizes:
    - {{name: small, width: 64, height: 64}}
workers:
  count: 2
  drain_timeout: 20
state:
  dir: state
log:
  level: {level}
  progress_interval: 0
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "photos").mkdir()
    # THUMBWATCH_TEST_LOG=debug: every daemon a test starts logs at debug level (to chase a race)
    write_config(tmp_path / "config.yaml", BASE_CONFIG.format(level=os.environ.get("THUMBWATCH_TEST_LOG", "info")))
    return tmp_path


@pytest.fixture
def start_daemon(project: Path):
    """Start `python -m watcher run`; every daemon started is killed (whole session) at teardown,
    and the test fails if any of its processes outlived it."""
    started: list[Daemon] = []

    def start(config: Path | None = None, **kwargs) -> Daemon:
        daemon = Daemon(config or project / "config.yaml", **kwargs)
        started.append(daemon)
        return daemon

    yield start
    leftovers = []
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.signal(signal.SIGTERM)
            try:
                code = daemon.proc.wait(30)
                if code != 0:
                    leftovers.append(f"daemon pid {daemon.proc.pid} exited {code} on SIGTERM")
            except subprocess.TimeoutExpired:
                leftovers.append(f"daemon pid {daemon.proc.pid} ignored SIGTERM for 30 s")
        deadline = time.monotonic() + 5  # helpers like the resource tracker leave just after
        while daemon.children() and time.monotonic() < deadline:
            time.sleep(0.05)
        children = daemon.children()
        if children:
            leftovers.append(f"processes {children} of daemon {daemon.proc.pid} outlived it")
        daemon.kill_group()
    if leftovers:
        pytest.fail("; ".join(leftovers))


@pytest.fixture(autouse=True)
def no_leaked_threads():
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    assert not leaked, f"test leaked threads: {leaked}"


def pytest_configure(config):
    config.addinivalue_line("markers", "stress: long load runs, only in `make stress`")
    os.environ.pop("NOTIFY_SOCKET", None)
