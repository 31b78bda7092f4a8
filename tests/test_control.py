"""The control socket (watcher/control.py) against real daemons, through the real CLI.

`retry` right after a `failed` line, every time; two admins at once; a socket left by kill -9;
a user outside the service's group kept out by the file mode; pause and resume; stop.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from helpers import edit_config, make_flat_jpeg, mean_colour, thumb, wait_for
from watcher import cli, control, instance

CORRUPT = b"\xff\xd8\xff\xe0 not a whole jpeg at all"


def admin(project: Path, capsys, *args: str) -> tuple[int, str, str]:
    """`thumbwatch ARGS -c config.yaml`, the CLI's own main(), run in the project folder."""
    code = cli.main([*args, "-c", str(project / "config.yaml")])
    out = capsys.readouterr()
    return code, out.out, out.err


def live(project: Path) -> dict:
    return control.request(project / "state", "status")["status"]


@pytest.fixture
def in_project(project, monkeypatch):
    monkeypatch.chdir(project)
    return project


@pytest.fixture
def shared_runtime_dir():
    """A runtime folder others may enter (mode 0755), as RuntimeDirectory= makes: pytest's
    tmp_path lives under a 0700 folder, which would keep every other user out by itself."""
    folder = Path(tempfile.mkdtemp(prefix="thumbwatch-run-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def unused_gid() -> int:
    for gid in range(4200, 4400):
        try:
            grp.getgrgid(gid)
        except KeyError:
            return gid
    raise AssertionError("no unused gid in 4200..4399")


# ---- retry ------------------------------------------------------------------------------------


def test_retry_right_after_a_failed_line_retries_it_every_time(in_project, start_daemon, capsys):
    (in_project / "photos" / "bad.jpg").write_bytes(CORRUPT)
    daemon = start_daemon()
    for round in range(1, 21):
        daemon.wait_log(r"failed \S*bad\.jpg: ", count=round)
        # At once: the record is only in the daemon's memory (it saves every 2 s).
        code, out, err = admin(in_project, capsys, "retry")
        assert code == 0 and "cleared 1 failure record(s) in the running daemon" in out and "1 photo(s) queued" in out, (round, out, err)
    daemon.wait_log(r"failed \S*bad\.jpg: ", count=21)
    assert len(daemon.matching(r"retry \(control socket, uid 0, pid \d+\): cleared 1 failure record\(s\), 1 photo\(s\) queued")) == 20
    # cleared on disk too, at once (not at the next periodic save)
    code, out, _err = admin(in_project, capsys, "retry")
    assert code == 0 and "cleared 1 " in out
    assert "bad.jpg" not in json.loads((in_project / "state" / "failures.json").read_text())


def test_retry_renders_a_photo_fixed_behind_the_daemons_back(in_project, start_daemon, capsys, tmp_path):
    """Fixed with the same size and mtime (a restore from backup with `cp -p` does that): the
    daemon rightly takes it for the photo that failed; `retry PATH` makes it look again."""
    edit_config(in_project, "level: info", "level: debug")
    good = make_flat_jpeg(tmp_path / "staged.jpg", (20, 200, 30))
    fixed = good.read_bytes()
    bad = in_project / "photos" / "fixed.jpg"
    bad.write_bytes(b"XX" + fixed[2:])  # no JPEG signature: fails, and has the good photo's size
    daemon = start_daemon()
    daemon.wait_log(r"failed \S*fixed\.jpg: ")
    st = bad.stat()
    os.utime(good, ns=(st.st_atime_ns, st.st_mtime_ns))
    seen = len(daemon.matching(r"notice: \S+ \S*fixed\.jpg"))
    os.rename(good, bad)
    daemon.wait_log(r"notice: \S+ \S*fixed\.jpg", count=seen + 1)
    wait_for(lambda: (s := live(in_project)) and s["settling"] == s["queue"] == s["in_flight"] == 0, 10, message="the event handled")
    assert not thumb(in_project, "fixed.jpg").exists(), "the photo on record as failed was rendered without a retry"
    code, out, _err = admin(in_project, capsys, "retry", str(bad))
    assert code == 0 and "cleared 1 " in out and "1 photo(s) queued" in out, out
    wait_for(thumb(in_project, "fixed.jpg").exists, 20, message="the retried photo's thumbnail")
    r, g, b = mean_colour(thumb(in_project, "fixed.jpg"))
    assert g > 150 and r < 80 and b < 80, (r, g, b)
    assert len(daemon.matching(r"failed \S*fixed\.jpg")) == 1


def test_retry_without_a_daemon_edits_the_file(in_project, start_daemon, capsys):
    (in_project / "photos" / "bad.jpg").write_bytes(CORRUPT)
    daemon = start_daemon()
    daemon.wait_log(r"failed \S*bad\.jpg: ")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert not (in_project / "state" / control.SOCKET).exists(), "a clean stop leaves no socket behind"
    code, out, _err = admin(in_project, capsys, "retry")
    assert code == 0 and "cleared 1 failure record(s); they are retried at the next start" in out, out
    code, out, _err = admin(in_project, capsys, "pause")
    assert code == 3 and "not running" in out


# ---- several admins ---------------------------------------------------------------------------


def test_two_admins_at_once_and_one_that_hangs(in_project, start_daemon):
    (in_project / "photos" / "bad.jpg").write_bytes(CORRUPT)
    daemon = start_daemon()
    daemon.wait_log(r"failed \S*bad\.jpg: ")
    state = in_project / "state"
    # A client that connects and says nothing must not hold the others up.
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.connect(str(state / control.SOCKET))
    try:
        barrier = threading.Barrier(2)
        replies: list[list[dict]] = [[], []]
        errors: list[BaseException] = []

        def admin_thread(n: int) -> None:
            try:
                barrier.wait(10)
                replies[n].append(control.request(state, "retry"))
                for _ in range(15):
                    replies[n].append(control.request(state, "status"))
            except BaseException as err:  # noqa: BLE001 (reported by the test below)
                errors.append(err)

        threads = [threading.Thread(target=admin_thread, args=(n,)) for n in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        retries = [replies[n][0] for n in (0, 1)]
        # One cleared it; the other found it cleared, or (when the photo had failed again in
        # between) cleared the new record: every record cleared is one more try.
        cleared = sum(r["cleared"] for r in retries)
        assert 1 <= cleared <= 2 and all(r["queued"] == r["cleared"] for r in retries), retries
        statuses = [r["status"] for n in (0, 1) for r in replies[n][1:]]
        assert len(statuses) == 30 and {s["pid"] for s in statuses} == {daemon.proc.pid}
        # the real CLI, as a third admin, while the hung one still holds its connection
        result = subprocess.run([sys.executable, "-m", "watcher", "status", "--json", "-c", "config.yaml"], cwd=in_project,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and json.loads(result.stdout)["pid"] == daemon.proc.pid, result
    finally:
        hung.close()
    daemon.wait_log(r"failed \S*bad\.jpg: ", count=1 + cleared)


# ---- the socket file ----------------------------------------------------------------------------


def test_a_socket_left_by_kill_9_is_replaced_at_start(in_project, start_daemon, capsys):
    first = start_daemon()
    first.wait_ready()
    sock = in_project / "state" / control.SOCKET
    assert stat.S_ISSOCK(sock.lstat().st_mode) and live(in_project)["pid"] == first.proc.pid
    first.kill_group()
    assert stat.S_ISSOCK(sock.lstat().st_mode), "kill -9 leaves the socket file"
    with pytest.raises(control.ControlError, match="nobody answers"):
        control.request(in_project / "state", "status")
    second = start_daemon()
    second.wait_ready()
    assert live(in_project)["pid"] == second.proc.pid
    assert not second.matching("no control socket"), second.text()
    code, out, _err = admin(in_project, capsys, "status")
    assert code == 0 and f"pid {second.proc.pid}" in out


def test_what_is_not_a_stale_socket_is_left_alone(in_project, start_daemon, shared_runtime_dir, capsys):
    """Something else listening at the name, or a file that is not a socket: never replaced;
    the daemon runs without its socket and says why, and the CLI falls back."""
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(shared_runtime_dir / control.SOCKET))
    other.listen(1)
    try:
        ino = (shared_runtime_dir / control.SOCKET).stat().st_ino
        daemon = start_daemon(env={"RUNTIME_DIRECTORY": str(shared_runtime_dir)})
        daemon.wait_ready()
        line = daemon.wait_log(r"no control socket: something already answers on \S+control\.sock")[0]
        assert "ERROR" in line
        assert (shared_runtime_dir / control.SOCKET).stat().st_ino == ino
        assert not (in_project / "state" / control.SOCKET).exists()
        code, out, err = admin(in_project, capsys, "status")
        assert code == 0 and f"pid {daemon.proc.pid}" in out and "showing the status file" in err, (out, err)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0
        assert (shared_runtime_dir / control.SOCKET).stat().st_ino == ino, "another's socket removed at stop"
    finally:
        other.close()
    (in_project / "state" / control.SOCKET).write_text("mine, not a socket")
    daemon = start_daemon()
    daemon.wait_log(r"no control socket: \S+control\.sock exists and is not a socket")
    assert (in_project / "state" / control.SOCKET).read_text() == "mine, not a socket"


PROBE = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("refused"); sys.exit(0)
s.sendall(b'{"command": "status"}\\n')
print(s.makefile().readline())
"""


def test_only_the_services_group_may_use_the_socket(in_project, start_daemon, shared_runtime_dir, capsys):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        why = "needs root and setpriv (util-linux): it runs the daemon with a group of its own and clients as nobody"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    gid = unused_gid()
    # The daemon with an own group (as systemd's Group=), its socket in $RUNTIME_DIRECTORY.
    daemon = start_daemon(env={"RUNTIME_DIRECTORY": str(shared_runtime_dir)}, prefix=("setpriv", f"--regid={gid}", "--clear-groups"))
    daemon.wait_ready()
    sock = shared_runtime_dir / control.SOCKET
    st = sock.lstat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == gid, (oct(st.st_mode), st.st_gid)
    link = in_project / "state" / control.SOCKET
    assert link.is_symlink() and os.readlink(link) == str(sock), "the state folder points at the runtime socket"
    code, out, _err = admin(in_project, capsys, "status")  # root, through the state folder's link
    assert code == 0 and f"pid {daemon.proc.pid}" in out, out

    def probe(*groups: int) -> str:
        result = subprocess.run(["/usr/bin/python3", "-c", PROBE, str(sock)], user=65534, group=65534, extra_groups=list(groups),
                                capture_output=True, text=True, timeout=30, cwd="/")
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert probe() == "refused", "a user outside the group got in"
    reply = json.loads(probe(gid))
    assert reply["ok"] and reply["status"]["pid"] == daemon.proc.pid, reply
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert not link.exists() and not os.path.lexists(sock), "socket and link removed at a clean stop"


# ---- pause, resume, stop ------------------------------------------------------------------------


def test_pause_holds_dispatch_and_resume_lets_it_go(in_project, start_daemon, capsys):
    daemon = start_daemon()
    daemon.wait_ready()
    code, out, _err = admin(in_project, capsys, "pause")
    assert code == 0 and "is now paused" in out, out
    colours = {"red.jpg": (220, 20, 20), "green.jpg": (20, 220, 20), "blue.jpg": (20, 20, 220)}
    for name, colour in colours.items():
        make_flat_jpeg(in_project / "photos" / name, colour)
    wait_for(lambda: live(in_project)["queue"] == 3, 20, message="three photos queued while paused")
    status = live(in_project)
    assert status["state"] == "paused" and status["in_flight"] == 0 and status["done"] == 0, status
    assert not daemon.matching(r"\bok \S*photos/"), daemon.text()
    assert not any(thumb(in_project, name).exists() for name in colours)
    code, out, _err = admin(in_project, capsys, "status")
    assert code == 0 and "PAUSED" in out and "thumbwatch resume" in out, out
    wait_for(lambda: json.loads((in_project / "state" / "status.json").read_text())["state"] == "paused", 10,
             message="the status file says paused too")
    code, out, _err = admin(in_project, capsys, "pause")
    assert code == 0 and "was already paused" in out, out
    code, out, _err = admin(in_project, capsys, "retry")
    assert code == 0 and "tried at `thumbwatch resume` (the daemon is paused)" in out, out
    code, out, _err = admin(in_project, capsys, "resume")
    assert code == 0 and "is now running" in out, out
    for name, colour in colours.items():
        wait_for(thumb(in_project, name).exists, 20, message=f"thumbnail of {name} after resume")
        got = mean_colour(thumb(in_project, name))
        assert all(abs(a - b) < 30 for a, b in zip(got, colour)), (name, got)
    assert live(in_project)["state"] == "running"
    daemon.wait_log(r"paused \(control socket.*3 queued|resumed \(control socket")


def test_stop_on_the_socket_exits_0(in_project, start_daemon, capsys):
    daemon = start_daemon()
    daemon.wait_ready()
    code, out, _err = admin(in_project, capsys, "stop")
    assert code == 0 and f"stopped thumbwatch (pid {daemon.proc.pid})" in out, out
    assert daemon.wait_exit() == 0
    assert daemon.matching(r"stop asked for \(control socket, uid 0") and not daemon.matching("SIGTERM received"), daemon.text()
    assert not (in_project / "state" / control.SOCKET).exists()
    code, out, _err = admin(in_project, capsys, "status")
    assert code == 3 and "not running" in out


def test_daemon_mode_opens_its_socket_after_detaching(in_project, capsys):
    """--daemon: the socket is made by the detached process (DaemonContext closes every
    descriptor it was not told to keep, so it is opened after), and answers its admins."""
    edit_config(in_project, "log:\n", "log:\n  file: d.log\n")
    (in_project / "photos" / "bad.jpg").write_bytes(CORRUPT)
    started = subprocess.run([sys.executable, "-m", "watcher", "run", "--daemon", "--pidfile", "d.pid", "-c", "config.yaml"],
                             cwd=in_project, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started
    pidfile = in_project / "d.pid"
    try:
        pid = int(wait_for(lambda: pidfile.read_text().strip(), 20, message="the detached daemon's pid"))  # written after the double fork
        log = in_project / "d.log"
        wait_for(lambda: log.exists() and "bad.jpg: " in log.read_text(), 30, message="the first failure")
        assert live(in_project)["pid"] == pid
        code, out, _err = admin(in_project, capsys, "retry")
        assert code == 0 and f"(pid {pid})" in out and "cleared 1 " in out, out
        wait_for(lambda: log.read_text().count("bad.jpg: ") >= 2, 30, message="retried")
        code, out, _err = admin(in_project, capsys, "stop")
        assert code == 0 and f"pid {pid}" in out, out
        assert "stop asked for" in log.read_text()
    finally:
        stop_detached(pidfile, in_project / "state")


def stop_detached(pidfile: Path, state: Path) -> None:
    """Whatever went wrong above, no daemon outlives the test: SIGTERM, then SIGKILL."""
    if instance.running_pid(state) is None:
        return  # stopped, as it should have
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 20, message="the detached daemon's pid"))
    os.kill(pid, signal.SIGTERM)
    if not instance.wait_gone(pid, 30, lambda: instance.running_pid(state)):
        os.kill(pid, signal.SIGKILL)


# ---- the server alone, in-process ---------------------------------------------------------------


def test_a_state_folder_past_sun_paths_107_bytes_and_requests_that_are_not_ours(tmp_path):
    state = tmp_path / ("x" * 60) / ("y" * 60)
    state.mkdir(parents=True)
    assert len(str(state / control.SOCKET)) > 107
    server = control.Server(state, wake=lambda: None)
    server.open()
    try:
        replies: list[dict] = []
        asking = threading.Thread(target=lambda: replies.append(control.request(state, "pause")))
        asking.start()
        pending = wait_for(server.take, 10, message="the request handed to the loop")
        assert [p.request for p in pending] == [{"command": "pause"}] and pending[0].peer.startswith(f"uid {os.getuid()}, pid ")
        pending[0].answer({"ok": True, "paused": True, "changed": True})
        asking.join(10)
        assert replies == [{"ok": True, "paused": True, "changed": True}]
        folder = os.open(state, os.O_PATH)
        try:
            for raw, error in [(b"hello\n", "one JSON object"), (b'{"command": "reboot"}\n', "one of status, retry"),
                               (b'{"command": "retry", "paths": ["relative.jpg"]}\n', "absolute paths")]:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw_client:
                    raw_client.connect(f"/proc/self/fd/{folder}/{control.SOCKET}")
                    raw_client.sendall(raw)
                    reply = json.loads(raw_client.makefile().readline())
                assert reply["ok"] is False and error in reply["error"], (raw, reply)
        finally:
            os.close(folder)
        assert server.take() == [], "a request that is not ours reached the loop"
    finally:
        server.close()
    assert not (state / control.SOCKET).exists()
