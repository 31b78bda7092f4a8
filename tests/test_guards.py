"""Nothing wedges it, nothing makes it run away (issue 12): names and paths at the kernel's limits,
JPEG variants, damaged state files, second instances, --daemon's working folder, scan's exit
code, journald priorities and memory caps under a lower hard limit. Real files, real processes."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from helpers import corner_colour, edit_config, is_red, jpeg_bytes, make_jpeg, thumb, wait_for
from watcher.config import OutputConfig, SizeSpec
from watcher.paths import Target
from watcher.render import RenderError, RenderSettings, render
from watcher.state import FailureStore


def cli(project: Path, *args: str, env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "watcher", *args, "-c", "config.yaml"], cwd=project,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def deep_folder(top: Path, length: int) -> Path:
    """Folders of 200-byte names under `top` until the path is `length` bytes or a little less.
    Made through directory descriptors, so a path over PATH_MAX can be made at all."""
    path, fd = str(top), os.open(top, os.O_RDONLY)
    try:
        while len(os.fsencode(path)) + 201 <= length:
            name = "d" * 200
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd, path = child, f"{path}/{name}"
        rest = length - len(os.fsencode(path)) - 1
        if rest > 0:
            os.mkdir("e" * rest, dir_fd=fd)
            path = f"{path}/{'e' * rest}"
    finally:
        os.close(fd)
    return Path(path)


def write_at(path: Path, data: bytes) -> None:
    """Write a file whose path may be longer than PATH_MAX (one component at a time)."""
    parts = str(path).split("/")
    fd = os.open("/", os.O_RDONLY)
    for part in parts[1:-1]:
        child = os.open(part, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    out = os.open(parts[-1], os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(out, data)
    os.close(out)
    os.close(fd)


# ---- names and paths ----------------------------------------------------------------------------


def test_a_photo_with_a_name_near_name_max_gets_its_thumbnail(project, start_daemon):
    """242-255-byte names made the temp name too long, which blocked all output."""
    name = "写" * 82 + ".jpg"  # 250 bytes: fits, the temp name beside it would not
    assert len(os.fsencode(name)) == 250
    make_jpeg(project / "photos" / name)
    daemon = start_daemon()
    wait_for(thumb(project, name).exists, 20, message="thumbnail of the long name")
    with Image.open(thumb(project, name)) as im:
        assert max(im.size) == 64 and is_red(corner_colour(im, "tl"))
    assert not daemon.matching("cannot write|Traceback")


def test_a_thumbnail_name_too_long_fails_that_photo_only(project, start_daemon):
    edit_config(project, "{name: small, width: 64, height: 64}", "{name: small, width: 64, height: 64, template: '{stem}-thumbnail{ext}'}")
    long_name = "x" * 246 + ".jpg"  # fits; its thumbnail name (260 bytes) does not
    make_jpeg(project / "photos" / long_name)
    daemon = start_daemon()
    line = daemon.wait_log(r"failed \S*xxxx\.jpg: ")[0]
    assert "name too long for the output file system: 260 bytes, the limit is 255" in line, line
    make_jpeg(project / "photos" / "after.jpg")  # output is not blocked
    wait_for(thumb(project, "after-thumbnail.jpg").exists, 20, message="the next photo still renders")
    assert not daemon.matching("cannot write thumbnails|Traceback")


def test_a_thumbnail_path_over_path_max_is_one_failure_line(project, start_daemon):
    folder = deep_folder(project / "photos", 4080)  # the photo fits; photos/thumbs/... does not
    make_jpeg(folder / "deep.jpg")
    assert len(os.fsencode(str(folder / "deep.jpg"))) < 4096
    make_jpeg(project / "photos" / "shallow.jpg")
    daemon = start_daemon()
    line = daemon.wait_log(r"failed \S*deep\.jpg: ")[0]
    assert "path too long for the output file system" in line and "the limit is 4095" in line, line
    wait_for(thumb(project, "shallow.jpg").exists, 20, message="the other photo")
    make_jpeg(project / "photos" / "later.jpg")
    wait_for(thumb(project, "later.jpg").exists, 20, message="output is not blocked")
    assert len(daemon.matching(r"deep\.jpg")) == 1, daemon.text()
    assert not daemon.matching("Traceback|cannot write thumbnails")


def test_a_photo_path_over_path_max_is_one_failure_line_and_no_traceback(project, start_daemon):
    folder = deep_folder(project / "photos", 4300)
    write_at(folder / "deeper.jpg", jpeg_bytes())
    make_jpeg(project / "photos" / "shallow.jpg")
    daemon = start_daemon()
    wait_for(thumb(project, "shallow.jpg").exists, 20, message="the other photo")
    daemon.wait_log(r"catch-up done")
    assert not daemon.matching("Traceback"), daemon.text()
    assert len(daemon.matching(r"too long")) == 1, daemon.text()


# ---- JPEG variants Pillow cannot decode ---------------------------------------------------------


def jpeg_header(marker: int, precision: int = 8) -> bytes:
    """A valid start of a JPEG: SOI, a JFIF APP0, and a frame header with `marker`; then a scan."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = bytes([0xFF, marker]) + struct.pack(">HBHHB", 11, precision, 48, 64, 1) + b"\x01\x11\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00\x00\x3f\x00" + b"\x12\x34" * 64
    return b"\xff\xd8" + app0 + sof + sos + b"\xff\xd9"


@pytest.mark.parametrize("marker, precision, expected", [
    (0xF7, 8, "unsupported JPEG (JPEG-LS)"),
    (0xC3, 8, "unsupported JPEG (lossless)"),
    (0xC7, 8, "unsupported JPEG (lossless, hierarchical)"),
    (0xCB, 8, "unsupported JPEG (lossless, arithmetic)"),
    (0xCF, 16, "unsupported JPEG (lossless, hierarchical)"),
    (0xC5, 8, "unsupported JPEG (hierarchical)"),
    (0xC6, 8, "unsupported JPEG (hierarchical)"),
    (0xCD, 8, "unsupported JPEG (hierarchical)"),
    (0xCE, 8, "unsupported JPEG (hierarchical)"),
    (0xC1, 12, "unsupported JPEG (12-bit precision)"),
])
def test_jpeg_variants_are_unsupported_never_corrupt(tmp_path, marker, precision, expected):
    src = tmp_path / "variant.jpg"
    src.write_bytes(jpeg_header(marker, precision))
    size = SizeSpec("s", 32, 32)
    with pytest.raises(RenderError) as err:
        render(str(src), [Target(size, str(tmp_path / "out" / "variant.jpg"))], RenderSettings(OutputConfig(sizes=(size,)), 10**8))
    assert str(err.value) == expected
    assert not (tmp_path / "out" / "variant.jpg").exists()


def test_a_baseline_jpeg_with_bad_data_is_still_called_corrupt(tmp_path):
    src = tmp_path / "bad.jpg"
    good = jpeg_bytes()
    src.write_bytes(good[: len(good) // 2])
    size = SizeSpec("s", 32, 32)
    with pytest.raises(RenderError) as err:
        render(str(src), [Target(size, str(tmp_path / "out.jpg"))], RenderSettings(OutputConfig(sizes=(size,)), 10**8))
    assert "unsupported" not in str(err.value) and ("truncated" in str(err.value) or "corrupt" in str(err.value))


# ---- damaged state files ------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b'{"/x/a.jpg": {"reason": "trunc', b"[1, 2, 3]", b'{"/x/a.jpg": {"reason": 5}}', b"\xff\xfe\x00"])
def test_a_damaged_failures_file_is_set_aside_and_the_daemon_starts(project, start_daemon, content):
    state = project / "state"
    state.mkdir()
    (state / "failures.json").write_bytes(content)
    listed = cli(project, "failed")
    assert listed.returncode == 1 and "damaged" in listed.stderr and "Traceback" not in listed.stderr, listed
    (project / "photos" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    make_jpeg(project / "photos" / "good.jpg")
    daemon = start_daemon()
    line = daemon.wait_log(r"failures\.json is damaged")[0]
    kept = [p.name for p in state.iterdir() if p.name.startswith("failures.json.damaged-")]
    assert len(kept) == 1 and kept[0] in line, (kept, line)
    assert (state / kept[0]).read_bytes() == content  # kept as it was
    wait_for(thumb(project, "good.jpg").exists, 20, message="thumbnail")
    daemon.wait_log(r"failed \S*bad\.jpg")
    wait_for(lambda: "bad.jpg" in cli(project, "failed").stdout, 10, message="the new record is listed")
    assert not daemon.matching("Traceback")


def test_a_damaged_status_file_never_shows_a_traceback(project, start_daemon):
    state = project / "state"
    state.mkdir()
    (state / "status.json").write_text('{"pid": "twelve", "state": "running"}')
    result = cli(project, "status")
    assert result.returncode == 3 and "not running" in result.stdout and "Traceback" not in result.stderr, result
    daemon = start_daemon()
    daemon.wait_ready()
    assert daemon.matching(r"status\.json is damaged .*moved aside")
    wait_for(lambda: cli(project, "status").returncode == 0, 10, message="status of the running daemon")


def test_records_with_wrong_types_are_dropped_and_good_ones_kept(tmp_path):
    good = {"reason": "truncated JPEG", "size": 10, "mtime_ns": 5, "when": 1.5}
    data = {"/p/a.jpg": good, "/p/b.jpg": {**good, "size": "10"}, "/p/c.jpg": {**good, "when": True},
            "relative.jpg": good, "/p/d.jpg": {**good, "extra": 1}}
    (tmp_path / "failures.json").write_text(json.dumps(data))
    store = FailureStore(tmp_path)
    store.load()
    assert [p for p, _ in store.items()] == ["/p/a.jpg"]


def test_merge_from_disk_keeps_unsaved_records_and_takes_retry_clears(tmp_path):
    store = FailureStore(tmp_path)
    store.load()
    st = os.stat(tmp_path)
    store.record("/p/saved-then-cleared.jpg", st, "corrupt JPEG")
    store.record("/p/saved-kept.jpg", st, "corrupt JPEG")
    store.save()
    store.record("/p/unsaved.jpg", st, "truncated JPEG")  # a failure just before a reload
    other = FailureStore(tmp_path)  # `thumbwatch retry /p/saved-then-cleared.jpg`
    other.load()
    other.clear("/p/saved-then-cleared.jpg")
    other.save(force=True)
    assert store.merge_from_disk() == 1
    assert [p for p, _ in store.items()] == ["/p/saved-kept.jpg", "/p/unsaved.jpg"]
    store.save()
    again = FailureStore(tmp_path)
    again.load()
    assert [p for p, _ in again.items()] == ["/p/saved-kept.jpg", "/p/unsaved.jpg"]


# ---- one daemon per state folder ----------------------------------------------------------------


def test_a_second_daemon_on_the_same_state_folder_is_refused_with_the_first_pid(project, start_daemon):
    first = start_daemon()
    first.wait_ready()
    second = start_daemon()
    assert second.wait_exit() == 1
    assert f"already running as pid {first.proc.pid}" in second.text(), second.text()
    log = project / "d.log"
    edit_config(project, "log:\n", f"log:\n  file: {log}\n")
    detached = cli(project, "run", "--daemon", "--pidfile", str(project / "d.pid"))
    assert detached.returncode == 1 and f"pid {first.proc.pid}" in detached.stderr, detached
    scan = cli(project, "scan")
    assert scan.returncode == 1 and f"pid {first.proc.pid}" in scan.stderr, scan


def test_status_ignores_a_stranger_whose_command_line_says_watcher(project):
    stranger = subprocess.Popen(["bash", "-c", "exec -a watcher-thumbwatch sleep 60"])
    try:
        state = project / "state"
        state.mkdir()
        status = {"pid": stranger.pid, "state": "running", "version": "0", "uptime": 1, "folders": [], "workers": [],
                  "done": 0, "failed": 0, "skipped": 0, "retried": 0, "queue": 0, "in_flight": 0, "settling": 0}
        (state / "status.json").write_text(json.dumps(status))
        assert cli(project, "status").returncode == 3
        stop = cli(project, "stop")
        assert stop.returncode == 0 and "not running" in stop.stdout
        assert stranger.poll() is None, "stop must not signal a process that is not ours"
    finally:
        stranger.kill()
        stranger.wait()


def test_daemon_mode_keeps_its_start_folder_for_reload_and_retry_reaches_it(project):
    """Relative paths in the config, --daemon (which moves to /), SIGHUP, retry, stop without a pidfile."""
    log = project / "d.log"
    edit_config(project, "log:\n", "log:\n  file: d.log\n")
    pidfile = project / "d.pid"
    (project / "photos" / "bad.jpg").write_bytes(b"not a photo")
    started = cli(project, "run", "--daemon", "--pidfile", "d.pid")
    assert started.returncode == 0, started
    try:
        wait_for(lambda: log.exists() and "failed" in log.read_text() and "bad.jpg" in log.read_text(), 30, message="first failure")
        pid = int(pidfile.read_text())
        wait_for(lambda: "bad.jpg" in cli(project, "failed").stdout, 10, message="failure saved")
        retry = cli(project, "retry")
        assert retry.returncode == 0 and f"(pid {pid})" in retry.stdout, retry
        wait_for(lambda: log.read_text().count("bad.jpg: ") >= 2, 30, message="retried")
        os.kill(pid, signal.SIGHUP)  # retry asks on the control socket now (issue 20): the reload is SIGHUP's
        wait_for(lambda: "reloaded" in log.read_text(), 30, message="reloaded")
        text = log.read_text()
        assert "reloaded" in text and "reload refused" not in text, text
        make_jpeg(project / "photos" / "after.jpg")
        wait_for(thumb(project, "after.jpg").exists, 20, message="still watching after the reload")
        stop = cli(project, "stop")
        assert stop.returncode == 0 and f"pid {pid}" in stop.stdout, stop
        assert cli(project, "status").returncode == 3
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass


# ---- scan, journald, folders --------------------------------------------------------------------


def test_scan_exits_1_while_failed_photos_remain_also_on_a_second_run(project):
    (project / "photos" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    make_jpeg(project / "photos" / "good.jpg")
    for run in (1, 2):
        result = cli(project, "scan")
        assert result.returncode == 1, (run, result)
        assert "1 photo(s) have no thumbnail because they failed" in result.stderr, result.stderr
    assert thumb(project, "good.jpg").exists()
    (project / "photos" / "bad.jpg").unlink()
    assert cli(project, "scan").returncode == 0


def test_a_config_error_reaches_the_journal_at_priority_err(project, tmp_path):
    edit_config(project, "workers:\n  count: 2", "workers:\n  count: two")
    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err:
        st = os.fstat(err.fileno())
        result = subprocess.run([sys.executable, "-m", "watcher", "run", "-c", "config.yaml"], cwd=project, stderr=err,
                                env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, timeout=60)
    assert result.returncode == 78
    text = err_path.read_text()
    assert text.startswith("<3>thumbwatch: config error:") and "workers.count" in text and len(text.splitlines()) == 1, text


@pytest.mark.parametrize("key, edit", [
    ("state.dir", ("dir: state", "dir: blocker/state")),
    ("log.file", ("log:\n", "log:\n  file: blocker/logs/t.log\n")),
])
@pytest.mark.parametrize("command", ["run", "scan", "check-config"])
def test_unusable_state_or_log_folder_is_one_line_and_exit_78(project, key, edit, command):
    (project / "blocker").write_text("a file where a folder should be")
    edit_config(project, *edit)
    result = cli(project, command)
    assert result.returncode == 78, result
    assert key in result.stderr and "blocker" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_output_dir_dot_is_refused_by_run_and_check_config(project):
    edit_config(project, "output:\n", "output:\n  dir: '.'\n")
    for command in ("check-config", "run"):
        result = cli(project, command)
        assert result.returncode == 78 and "output.dir" in result.stderr, result
    assert not any(project.joinpath("photos").iterdir())


# ---- memory cap ---------------------------------------------------------------------------------


def test_memory_cap_never_raises_a_hard_limit(tmp_path):
    script = textwrap.dedent("""
        import resource, sys
        from watcher.limits import memory_cap
        hard = 1500 << 20
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))   # as `ulimit -v` below 2 GB does
        note = memory_cap(2048)
        assert resource.getrlimit(resource.RLIMIT_AS) == (hard, hard), resource.getrlimit(resource.RLIMIT_AS)
        print(note)
        assert memory_cap(600) is None
        assert resource.getrlimit(resource.RLIMIT_AS) == (600 << 20, 600 << 20)
        try:
            bytearray(800 << 20)
        except MemoryError:
            print("capped")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    note, capped = result.stdout.splitlines()
    assert "1500 MB" in note and "worker_memory_mb=2048" in note and "cannot be raised" in note
    assert capped == "capped"


def test_workers_start_under_a_lower_ulimit_and_say_so_once(project, start_daemon):
    edit_config(project, "state:\n", "limits:\n  worker_memory_mb: 3000\nstate:\n")
    daemon = start_daemon(prefix=("sh", "-c", 'ulimit -v 1800000 && exec "$@"', "sh"))  # 1.7 GB hard limit
    daemon.wait_ready()
    make_jpeg(project / "photos" / "fits.jpg")
    wait_for(thumb(project, "fits.jpg").exists, 20, message="a thumbnail from a capped worker")
    notes = daemon.matching(r"worker_memory_mb=3000")
    assert len(notes) == 1 and "WARNING" in notes[0] and "1757 MB" in notes[0], daemon.text()
