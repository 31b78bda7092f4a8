"""The render host's unit (systemd/thumbwatch-worker.service) under a real systemd 252.

`make test-systemd` only (THUMBWATCH_SYSTEMD=1). Its own machine, installed the README's way,
plus the celery extra from wheels fetched on this host. The broker is a redis-server on this
host's 127.0.0.1 and a free port (tests/redis_server.py): systemd-nspawn shares the host's
network, so the worker inside reaches it, and the test can take it away and bring it back.

What a person would check: `systemctl start` returns only once the host is ready (Type=notify,
READY=1 after the broker and the pool); with the broker down the unit stays "activating" and its
status line says why; WATCHDOG=1 keeps coming; `systemctl stop` is clean.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, wait_for
from machine import WHEELS_INSIDE, Machine, MachineError, missing_tools, rootfs_tarball, wheelhouse
from redis_server import RedisServer
from test_systemd import ADMIN, SOURCE, as_admin, copy_working_tree, install_steps, journal, show

pytestmark = pytest.mark.timeout(300)

UNIT = "thumbwatch-worker"
CELERY_EXTRA = ("celery[redis]>=5.5",)
# redis-py wants it below Python 3.11.3 (Debian 12 has 3.11.2); pip download does not see that
ALSO_FOR_DEBIAN_12 = ("async-timeout>=4.0.3",)
CONFIG = """\
watch:
  paths: [/srv/photos]
workers:
  count: 1
  backend: celery
limits:
  photo_timeout: 20
celery:
  broker: {url}
  queue: unit-test
  visibility_timeout: 60
log:
  level: info
"""


def celery_wheels(cache: Path) -> Path:
    """The celery extra's wheels for the machine's CPython 3.11, fetched once by this host's pip."""
    key = hashlib.sha256("\n".join([*CELERY_EXTRA, *ALSO_FOR_DEBIAN_12, "cp311"]).encode()).hexdigest()[:16]
    folder = cache / f"wheels-celery-{key}"
    if folder.exists():
        return folder
    partial = cache / f"wheels-celery-{key}.partial-{os.getpid()}"
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64")]
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--python-version=3.11",
                             "--implementation=cp", "--abi=cp311", *platforms, f"--dest={partial}", *CELERY_EXTRA, *ALSO_FOR_DEBIAN_12],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise MachineError(f"pip download of the celery extra failed: {result.stderr.strip()[-2000:]}")
    os.replace(partial, folder)
    return folder


@pytest.fixture(scope="module")
def broker():
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed on this host (make redis-server)")
    server = RedisServer(binary)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def machine(tmp_path_factory, broker):
    if os.geteuid() != 0:
        pytest.skip("make test-systemd needs root (it boots a container with systemd-nspawn)")
    if missing := missing_tools():
        pytest.skip(f"missing {', '.join(missing)}: apt-get install mmdebstrap systemd-container")
    if not all(Path(p).is_dir() for p in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")):
        pytest.skip("needs the cgroup hierarchies /sys/fs/cgroup/systemd and /sys/fs/cgroup/unified")
    cache = REPO / ".cache" / "systemd-rootfs"
    tarball = rootfs_tarball(cache)
    wheels = wheelhouse(cache)
    extra = celery_wheels(cache)
    work = tmp_path_factory.mktemp("worker-machine")
    box = Machine(tarball, work, name=f"thumbwatch-worker-{os.getpid()}")
    with box:
        box.unpack(wheels)
        for wheel in extra.iterdir():
            shutil.copy2(wheel, box.path(WHEELS_INSIDE) / wheel.name)
        box.boot()
        box.run(f"useradd --create-home alice && useradd --create-home {ADMIN} && echo '{ADMIN} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/{ADMIN}")
        copy_working_tree(box.path(SOURCE))
        box.run(f"chown -R {ADMIN}: {SOURCE}")
        as_admin(box, install_steps("### Installing", 0) + install_steps("### Installing", 1))  # the README's way, as test_systemd
        box.run("systemctl disable --now thumbwatch")  # this machine is a render host only
        box.run("/opt/thumbwatch/bin/pip install --quiet " + " ".join(f"'{spec}'" for spec in CELERY_EXTRA), timeout=300)
        box.run(f"cp systemd/{UNIT}.service /etc/systemd/system/ && systemctl daemon-reload", cwd=SOURCE)
        box.path("/etc/thumbwatch/config.yaml").write_text(CONFIG.format(url=broker.url))
        yield box


def state(box: Machine) -> dict[str, str]:
    return show(box, UNIT, "ActiveState", "SubState", "StatusText", "WatchdogTimestampMonotonic", "NRestarts", "Result")


@pytest.fixture
def unit(machine):
    yield UNIT
    machine.run(f"systemctl stop {UNIT}; systemctl reset-failed {UNIT}", check=False, timeout=150)


def ready_line_at(box: Machine) -> int | None:
    """The monotonic time (usec) at which the host logged its ready line, from the journal."""
    out = box.run(f"journalctl -u {UNIT} -o json --no-pager").stdout
    for line in out.splitlines():
        entry = json.loads(line)
        if "ready: render host" in str(entry.get("MESSAGE", "")):
            return int(entry["__MONOTONIC_TIMESTAMP"])
    return None


def test_the_unit_is_active_only_once_the_host_said_ready(machine, broker, unit):
    assert broker.ping()
    machine.run(f"systemctl start {UNIT}", timeout=120)  # Type=notify: returns at READY=1
    now = state(machine)
    assert now["ActiveState"] == "active" and now["SubState"] == "running", now
    ready_at = wait_for(lambda: ready_line_at(machine), timeout=10, message="the ready line in the journal")
    started = show(machine, UNIT, "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")
    # with Type=simple it would be active as soon as the process ran, before Python had imported Celery
    assert int(started["ExecMainStartTimestampMonotonic"]) < ready_at <= int(started["ActiveEnterTimestampMonotonic"]), (ready_at, started)
    wait_for(lambda: state(machine)["StatusText"].endswith("broker connected"), timeout=30, message="STATUS= with the broker's state")
    assert state(machine)["StatusText"] == "0 photo(s) done, 0 failed; broker connected"
    first = int(state(machine)["WatchdogTimestampMonotonic"])
    wait_for(lambda: int(state(machine)["WatchdogTimestampMonotonic"]) > first, timeout=30, message="WATCHDOG=1 keeps coming")
    machine.run(f"systemctl stop {UNIT}", timeout=150)
    after = state(machine)
    assert after["ActiveState"] == "inactive" and after["Result"] == "success", after
    assert wait_for(lambda: any(line.startswith("render host") and line.endswith(" stopped") for line in journal(machine, UNIT)[-10:]),
                    timeout=10, message="the stopped line")


def test_with_the_broker_down_the_unit_stays_activating_and_says_why(machine, broker, unit):
    broker.stop()
    try:
        machine.run(f"systemctl start --no-block {UNIT}")
        wait_for(lambda: "waiting for the broker" in state(machine)["StatusText"], timeout=60, message="STATUS= saying why")
        now = state(machine)
        assert (now["ActiveState"], now["SubState"]) == ("activating", "start"), now
        assert f"Cannot connect to redis://" in now["StatusText"] and f"127.0.0.1:{broker.port}. Connection refused" in now["StatusText"], now
        assert ready_line_at(machine) is None or ready_line_at(machine) < int(show(machine, UNIT, "ExecMainStartTimestampMonotonic")["ExecMainStartTimestampMonotonic"])
    finally:
        broker.start()  # same port
    wait_for(lambda: state(machine)["ActiveState"] == "active", timeout=90, message="active once the broker is back")
    assert state(machine)["NRestarts"] == "0"
    machine.run(f"systemctl stop {UNIT}", timeout=150)
