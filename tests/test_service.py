"""Running as a service: sd_notify, SIGHUP reload, journald and log files, daemon mode, status, metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from helpers import edit_config, make_jpeg, thumb, wait_for, write_config






class NotifySocket:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, address: str | bytes):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.messages: list[str] = []

    def poll(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (TimeoutError, socket.timeout):
                return self.messages

    def wait(self, predicate, timeout: float = 20.0, message: str = "") -> list[str]:
        wait_for(lambda: predicate(self.poll()), timeout, message=message or f"notify messages; got {self.messages}")
        return self.messages

    def close(self) -> None:
        self.sock.close()


def keys(messages: list[str]) -> list[str]:
    """The first field of each message (READY=1, STATUS=..., WATCHDOG=1) for order checks."""
    return [m.split("\n")[0].split("=")[0] for m in messages]


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_ready_status_watchdog_stopping_in_order(project, start_daemon, tmp_path, abstract):
    address = f"\0thumbwatch-test-{os.getpid()}-{tmp_path.name}" if abstract else str(tmp_path / "notify.sock")
    notify = NotifySocket(address)
    try:
        env = {"NOTIFY_SOCKET": "@" + address[1:] if abstract else address, "WATCHDOG_USEC": "600000"}
        daemon = start_daemon(env=env)
        notify.wait(lambda ms: any("READY=1" in m for m in ms), message="READY=1")
        ready_index = next(i for i, m in enumerate(notify.messages) if "READY=1" in m)
        assert "watching 1 folders, 2 workers" in "".join(notify.messages), notify.messages
        daemon.wait_ready()
        make_jpeg(project / "photos" / "n.jpg")
        notify.wait(lambda ms: any("STATUS=" in m and "1 done" in m for m in ms), message="STATUS with 1 done")
        notify.wait(lambda ms: sum("WATCHDOG=1" in m for m in ms) >= 2, message="two WATCHDOG=1 keep-alives")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0
        notify.wait(lambda ms: any("STOPPING=1" in m for m in ms), message="STOPPING=1")
        order = keys(notify.messages)
        assert ready_index < order.index("STOPPING")
        assert "WATCHDOG" not in order[order.index("STOPPING") :], "keep-alives after STOPPING"
        assert not any("READY=1" in m for m in notify.messages[:ready_index]), "READY before the pool was up"
    finally:
        notify.close()


def test_sighup_applies_a_valid_change_and_keeps_the_old_config_on_an_invalid_one(project, start_daemon, tmp_path):
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    try:
        daemon = start_daemon(env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        daemon.wait_ready()
        assert len(daemon.status()["workers"]) == 2
        (project / "more").mkdir()
        edit_config(project, "paths: [photos]", "paths: [photos, more]")
        edit_config(project, "{name: small, width: 64, height: 64}", "{name: small, width: 32, height: 32}")
        edit_config(project, "count: 2", "count: 3")
        daemon.signal(signal.SIGHUP)
        line = daemon.wait_log(r"reloaded ")[0]
        assert "watch.paths" in line and "workers.count: 2 -> 3" in line, line
        notify.wait(lambda ms: "RELOADING" in keys(ms) and keys(ms)[keys(ms).index("RELOADING") + 1 :].count("READY") >= 1, message="RELOADING then READY")
        wait_for(lambda: len(daemon.status()["workers"]) == 3, 15, message="pool resized to 3")
        workers = daemon.status()["workers"]
        assert all(alive(pid) for pid in workers)
        make_jpeg(project / "more" / "m.jpg")
        wait_for((project / "more" / "thumbs" / "m.jpg").exists, 20, message="new folder watched")
        make_jpeg(project / "photos" / "p.jpg", 400, 300)
        wait_for(thumb(project, "p.jpg").exists, 20, message="photo after reload")
        assert Image.open(thumb(project, "p.jpg")).size == (32, 24), "new size not applied to new work"
        # an invalid file is refused; the daemon keeps running on the previous config
        good = (project / "config.yaml").read_text()
        write_config(project / "config.yaml", good + "bogus_section: {}\n")
        daemon.signal(signal.SIGHUP)
        line = daemon.wait_log(r"reload refused")[0]
        assert "bogus_section" in line
        make_jpeg(project / "more" / "still.jpg")
        wait_for((project / "more" / "thumbs" / "still.jpg").exists, 20, message="old config still works")
        assert daemon.proc.poll() is None
        # shrink back: pills for the surplus workers
        write_config(project / "config.yaml", good.replace("count: 3", "count: 1"))
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: len(daemon.status()["workers"]) == 1, 15, message="pool shrunk to 1")
        wait_for(lambda: not any(alive(pid) for pid in workers if pid not in daemon.status()["workers"]), 15, message="retired workers gone")
    finally:
        notify.close()


def test_log_file_reopened_after_a_logrotate_move(project, start_daemon):
    log = project / "thumbwatch.log"
    edit_config(project, "log:\n", f"log:\n  file: {log}\n")
    daemon = start_daemon()
    wait_for(lambda: log.exists() and "ready" in log.read_text(), 20, message="ready in the log file")
    os.rename(log, project / "thumbwatch.log.1")  # logrotate's move; its postrotate sends SIGHUP
    daemon.signal(signal.SIGHUP)
    wait_for(log.exists, 20, message="log file recreated after SIGHUP")
    make_jpeg(project / "photos" / "after_hup.jpg")
    wait_for(lambda: "after_hup" in log.read_text(), 20, message="new lines in the new file")
    assert "after_hup" not in (project / "thumbwatch.log.1").read_text()


def test_journald_lines_carry_priority_prefixes(project, start_daemon):
    """$JOURNAL_STREAM names stderr's device:inode, as systemd sets it for a journal stream."""
    script = (
        "import os, sys; st = os.fstat(2); os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'; "
        "from watcher.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    daemon = start_daemon(launcher=("-c", script))
    daemon.wait_ready()
    (project / "photos" / "junk.jpg").write_bytes(b"junk")
    daemon.wait_log(r"failed \S*junk")
    lines = daemon.log()
    assert any(line.startswith("<6>ready") for line in lines), lines
    assert any(line.startswith("<4>failed ") for line in lines), lines
    assert not any(line[:4].isdigit() for line in lines), "journald adds its own timestamps"


def alive(pid: int) -> bool:
    """Running, not a zombie (a detached daemon's parent is init, which may reap it late)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cli(project: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "watcher", *args], cwd=project, capture_output=True, text=True, timeout=timeout)


def test_daemon_mode_pidfile_refuses_a_second_instance_and_stops(project):
    log = project / "daemon.log"
    edit_config(project, "log:\n", f"log:\n  file: {log}\n")
    edit_config(project, "paths: [photos]", f"paths: [{project / 'photos'}]")
    edit_config(project, "dir: state", f"dir: {project / 'state'}")
    pidfile = project / "thumbwatch.pid"
    config = str(project / "config.yaml")
    first = cli(project, "run", "--daemon", "--pidfile", str(pidfile), "-c", config)
    assert first.returncode == 0, first.stderr
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 20, message="pidfile")
        pid = int(pidfile.read_text())
        assert os.getsid(pid) != os.getsid(0), "not detached into its own session"
        wait_for(lambda: log.exists() and "ready" in log.read_text(), 20, message="ready in daemon log")
        make_jpeg(project / "photos" / "d.jpg")
        wait_for(thumb(project, "d.jpg").exists, 20, message="daemon renders")
        status = wait_for(lambda: (r := cli(project, "status", "-c", config)).returncode == 0 and "done 1" in r.stdout and r, 10, message="status shows the photo")
        assert f"pid {pid}" in status.stdout, status
        second = cli(project, "run", "--daemon", "--pidfile", str(pidfile), "-c", config)
        assert second.returncode != 0 and str(pid) in second.stderr, second
        stop = cli(project, "stop", "--pidfile", str(pidfile), "-c", config)
        assert stop.returncode == 0, stop
        assert not alive(pid)
        assert not pidfile.exists()
        assert cli(project, "status", "-c", config).returncode == 3
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass


def test_status_command_and_json_counters(project, start_daemon):
    daemon = start_daemon()
    daemon.wait_ready()
    make_jpeg(project / "photos" / "s.jpg")
    wait_for(thumb(project, "s.jpg").exists, 20)
    wait_for(lambda: daemon.status()["done"] == 1, 10, message="status file counts the photo")
    result = cli(project, "status", "--json", "-c", "config.yaml")
    data = json.loads(result.stdout)
    assert result.returncode == 0 and data["running"] and data["done"] == 1 and len(data["workers"]) == 2
    assert data["render_ms_p50"] is not None


def test_prometheus_metrics_on_localhost(project, start_daemon):
    pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    edit_config(project, "log:\n", f"metrics:\n  port: {port}\nlog:\n")
    daemon = start_daemon()
    daemon.wait_ready()
    make_jpeg(project / "photos" / "m.jpg")
    wait_for(thumb(project, "m.jpg").exists, 20)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()

    wait_for(lambda: "thumbwatch_photos_done_total 1.0" in scrape(), 10, message="metrics count the photo")
    assert "thumbwatch_workers 2.0" in scrape()
