"""Nothing lost, nothing stuck: bad files, dead and stuck workers, blocked output, watch trouble, kills."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers import REPO, Daemon, corner_colour, edit_config, heavy, is_blue, jpeg_bytes, make_jpeg, move_in, stage, temp_files, thumb, wait_for








def cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "watcher", *args, "-c", "config.yaml"], cwd=project, capture_output=True, text=True, timeout=60)


# ---- bad input --------------------------------------------------------------------------------


def test_failure_is_remembered_across_restarts_until_the_photo_changes(project, start_daemon):
    bad = project / "photos" / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    daemon = start_daemon()
    daemon.wait_log(r"failed \S*bad\.jpg: ")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    listed = cli(project, "failed")
    assert listed.returncode == 0 and "bad.jpg" in listed.stdout, listed
    again = start_daemon()
    again.wait_log(r"catch-up done: found=1 queued=0 skipped=0 failed_before=1")
    assert not again.matching(r"failed \S*bad\.jpg")
    # the photo changes (a fixed re-upload): tried again, and the record goes away
    bad.write_bytes(jpeg_bytes())
    wait_for(thumb(project, "bad.jpg").exists, 20, message="thumbnail of the fixed photo")
    again.signal(signal.SIGTERM)
    assert again.wait_exit() == 0
    assert "bad.jpg" not in cli(project, "failed").stdout


def test_retry_command_clears_records_and_a_running_daemon_tries_again(project, start_daemon):
    (project / "photos" / "later.jpg").write_bytes(b"not yet")
    daemon = start_daemon()
    daemon.wait_log(r"failed \S*later\.jpg")
    wait_for(lambda: "later.jpg" in cli(project, "failed").stdout, 10, message="failure saved")
    result = cli(project, "retry")
    assert result.returncode == 0 and "cleared 1" in result.stdout, result
    daemon.wait_log(r"retry \(control socket")  # asked on the control socket, not by a reload (issue 20)
    daemon.wait_log(r"failed \S*later\.jpg", count=2)


def test_odd_names_zero_bytes_folders_named_like_photos_and_vanishing_files(project, start_daemon):
    daemon = start_daemon()
    daemon.wait_ready()
    photos = project / "photos"
    names = ["with space.jpg", "ünïcødé 写真.jpg", "new\nline.jpg"]
    for name in names:
        make_jpeg(photos / name)
    raw = os.fsencode(str(photos)) + b"/bad-\xff\xfe-bytes.jpg"
    with open(raw, "wb") as f:
        f.write(jpeg_bytes())
    (photos / "folder.jpg").mkdir()
    make_jpeg(photos / "folder.jpg" / "inside.jpg")
    (photos / "empty.jpg").write_bytes(b"")
    for name in names:
        wait_for(thumb(project, name).exists, 20, message=f"thumbnail of {name!r}")
    wait_for(lambda: os.path.exists(os.fsencode(str(thumb(project, ""))) + b"/bad-\xff\xfe-bytes.jpg"), 20, message="undecodable name")
    wait_for(thumb(project, "folder.jpg/inside.jpg").exists, 20, message="photo inside a folder named like a photo")
    daemon.wait_log(r"failed \S*empty\.jpg: .*empty", timeout=20)
    assert daemon.matching(r"new\\nline\.jpg"), "a newline in a name must be escaped in the log"
    assert not [line for line in daemon.log() if line and line[0].islower() and "line.jpg" in line], "a name split a log line"
    assert not daemon.matching("Traceback")


def test_symlink_out_of_the_tree_is_not_followed_by_default(project, start_daemon, tmp_path):
    outside = make_jpeg(tmp_path / "secret" / "outside.jpg")
    os.symlink(outside, project / "photos" / "link.jpg")
    make_jpeg(project / "photos" / "real.jpg")
    daemon = start_daemon()
    daemon.wait_log(r"catch-up done: found=1 ")
    wait_for(thumb(project, "real.jpg").exists, 20, message="real photo")
    assert not thumb(project, "link.jpg").exists()


# ---- worker death and stuck photos ------------------------------------------------------------


def test_killed_worker_is_replaced_and_its_photo_retried(project, start_daemon, tmp_path):
    heavy(project)
    edit_config(project, "count: 2", "count: 1")
    staging = tmp_path / "staging"
    names = [f"k{i}.jpg" for i in range(6)]
    stage(staging, names, 4000, 3000)
    daemon = start_daemon()
    daemon.wait_ready()
    [victim] = daemon.status()["workers"]
    move_in(staging, names, project)
    daemon.wait_log(r"\bok \S*k\d\.jpg")
    os.kill(victim, signal.SIGKILL)
    line = daemon.wait_log(rf"worker exited pid={victim} killed by SIGKILL")[0]
    assert "retrying the photo" in line, daemon.text()
    for name in names:
        wait_for(thumb(project, name).exists, 60, message=f"thumbnail {name}")
    wait_for(lambda: daemon.status()["workers"] and victim not in daemon.status()["workers"], 10, message="replacement in status")
    for name in names:
        daemon.wait_log(rf"\bok \S*{name} ")  # the thumbnail is renamed into place just before its line
        assert len(daemon.matching(rf"\bok \S*{name} ")) == 1, daemon.text()
    assert temp_files(project / "photos") == []


def test_photo_over_its_time_limit_is_recorded_and_the_worker_replaced(project, start_daemon, tmp_path):
    heavy(project, 6000)
    edit_config(project, "state:", "limits:\n  photo_timeout: 0.05\nstate:")
    edit_config(project, "count: 2", "count: 1")
    make_jpeg(tmp_path / "slow.jpg", 6000, 4000)
    daemon = start_daemon()
    daemon.wait_ready()
    [first] = daemon.status()["workers"]
    os.rename(tmp_path / "slow.jpg", project / "photos" / "slow.jpg")
    daemon.wait_log(r"failed \S*slow\.jpg: timed out after 0.05 s")
    make_jpeg(project / "photos" / "tiny.jpg", 16, 16)
    wait_for(thumb(project, "tiny.jpg").exists, 20, message="the next photo still works")
    assert first not in daemon.status()["workers"] or wait_for(lambda: first not in daemon.status()["workers"], 5)
    assert temp_files(project / "photos") == []


def test_memory_cap_turns_a_runaway_decode_into_a_clean_failure(project, start_daemon):
    edit_config(project, "state:", "limits:\n  worker_memory_mb: 300\nstate:")
    edit_config(project, "  create: true\n", '  create: true\n  patterns: ["*.jpg", "*.png"]\n')
    Image.new("RGB", (12000, 12000), (10, 200, 30)).save(project / "photos" / "huge.png")  # 432 MB decoded
    make_jpeg(project / "photos" / "normal.jpg")
    daemon = start_daemon()
    line = daemon.wait_log(r"failed \S*huge\.png: ", timeout=60)[0]
    assert "memory" in line, line
    wait_for(thumb(project, "normal.jpg").exists, 20, message="the pool goes on")
    assert not daemon.matching("Traceback")


# ---- output trouble ---------------------------------------------------------------------------


def test_unwritable_output_holds_photos_logs_once_and_resumes(project, start_daemon):
    edit_config(project, "{name: small, width: 64, height: 64}", "{name: small, width: 64, height: 64}\n    - {name: big, width: 128, height: 128}")
    thumbs = project / "photos" / "thumbs"
    thumbs.mkdir()
    (thumbs / "small").write_text("a file where the size folder must go")
    daemon = start_daemon()
    daemon.wait_ready()
    for i in range(8):
        make_jpeg(project / "photos" / f"held{i}.jpg")
    daemon.wait_log(r"cannot write thumbnails: ")
    wait_for(lambda: daemon.status()["output_blocked"], 10, message="status shows the block")
    (thumbs / "small").unlink()
    daemon.wait_log(r"thumbnails can be written again", timeout=90)
    for i in range(8):
        wait_for((thumbs / "small" / f"held{i}.jpg").exists, 30, message=f"held{i}")
    assert len(daemon.matching(r"cannot write thumbnails")) == 1, daemon.text()
    assert temp_files(project / "photos") == []


@pytest.fixture
def small_disk(project):
    if os.geteuid() != 0:
        pytest.skip("disk-full test mounts a small tmpfs, which needs root")
    mount_point = project / "photos" / "thumbs"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_holds_photos_until_space_returns(project, start_daemon, small_disk):
    edit_config(project, "{name: small, width: 64, height: 64}", "{name: small, width: 400, height: 400}")
    filler = small_disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    daemon = start_daemon()
    daemon.wait_ready()
    for i in range(5):
        make_jpeg(project / "photos" / f"full{i}.jpg", 1600, 1200)
    daemon.wait_log(r"cannot write thumbnails: .*No space left on device")
    assert [p for p in small_disk.iterdir() if p.name != "filler"] == [], "partial or temp files left on the full disk"
    filler.unlink()
    for i in range(5):
        wait_for((small_disk / f"full{i}.jpg").exists, 90, message=f"full{i}.jpg after space returned")
    assert len(daemon.matching(r"cannot write thumbnails")) == 1, daemon.text()
    assert temp_files(small_disk) == []


def test_stale_temp_files_from_a_crash_are_removed_at_start(project, start_daemon):
    thumbs = project / "photos" / "thumbs" / "deep"
    thumbs.mkdir(parents=True)
    stale = thumbs / ".tw-99999-a.jpg.tmp"
    stale.write_bytes(b"half a thumbnail")
    daemon = start_daemon()
    daemon.wait_log(r"removed 1 temp file")
    assert not stale.exists()


# ---- watch trouble ----------------------------------------------------------------------------


def test_removed_watched_folder_is_rewatched_when_it_returns(project, start_daemon, tmp_path):
    edit_config(project, "  create: true\n", "  create: false\n")
    daemon = start_daemon()
    daemon.wait_ready()
    shutil.rmtree(project / "photos")
    daemon.wait_log(r"watched folder \S+photos is gone")
    staged = tmp_path / "returning"
    make_jpeg(staged / "was_here.jpg")
    os.rename(staged, project / "photos")
    daemon.wait_log(r"watched folder \S+photos is back")
    wait_for(thumb(project, "was_here.jpg").exists, 20, message="caught up after return")
    make_jpeg(project / "photos" / "new_after.jpg")
    wait_for(thumb(project, "new_after.jpg").exists, 20, message="watched again")


def test_inotify_watch_limit_falls_back_to_polling(project, start_daemon):
    (project / "nowatch").mkdir()
    edit_config(project, "paths: [photos]", "paths: [photos, nowatch]\n  poll_interval: 0.2")
    daemon = start_daemon(launcher=(str(REPO / "tests" / "limited_watches.py"),))
    daemon.wait_ready()
    line = daemon.wait_log(r"cannot watch \S*nowatch with inotify")[0]
    assert "fs.inotify.max_user_watches" in line and "polling" in line
    make_jpeg(project / "nowatch" / "polled.jpg")
    wait_for((project / "nowatch" / "thumbs" / "polled.jpg").exists, 20, message="photo in the polled folder")
    make_jpeg(project / "photos" / "notified.jpg")
    wait_for(thumb(project, "notified.jpg").exists, 20, message="photo in the inotify folder")


def test_full_queue_drops_events_and_a_rescan_finds_them(project, start_daemon, tmp_path):
    edit_config(project, "count: 2", "count: 2\n  queue_size: 5")
    staging = tmp_path / "staging"
    names = [f"q{i:02d}.jpg" for i in range(60)]
    stage(staging, names, 800, 600)
    daemon = start_daemon()
    daemon.wait_ready()
    move_in(staging, names, project)
    daemon.wait_log(r"queue was full")
    for name in names:
        wait_for(thumb(project, name).exists, 60, message=name)
    for name in names:
        daemon.wait_log(rf"\bok \S*{name} ")  # the thumbnail is renamed into place just before its line
        assert len(daemon.matching(rf"\bok \S*{name} ")) == 1, f"{name} rendered more than once"


def test_reconciliation_rescan_catches_what_no_event_announced(project, start_daemon, tmp_path):
    edit_config(project, "rescan_interval: 0", "rescan_interval: 1")
    source = make_jpeg(project / "photos" / "linked.jpg")
    old = source.stat().st_mtime - 30
    os.utime(source, (old, old))
    daemon = start_daemon()
    daemon.wait_ready()
    wait_for(thumb(project, "linked.jpg").exists, 20, message="catch-up rendered the photo")
    # The thumbnail folder is not watched: its thumbnail removed by hand sends the daemon no event.
    thumb(project, "linked.jpg").unlink()
    wait_for(thumb(project, "linked.jpg").exists, 20, message="rescan found the missing thumbnail")
    daemon.wait_log(r"rescan done: found=1 queued=1")


# ---- kills and bursts -------------------------------------------------------------------------


def test_kill_9_mid_burst_then_restart_completes_everything(project, start_daemon, tmp_path):
    heavy(project, 2000)
    staging = tmp_path / "staging"
    names = [f"k9_{i:02d}.jpg" for i in range(24)]
    stage(staging, names, 3200, 2400)
    daemon = start_daemon()
    daemon.wait_ready()
    move_in(staging, names, project)
    daemon.wait_log(r"\bok \S*k9_", count=3)
    os.killpg(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait(10)
    done_before = len(daemon.matching(r"\bok \S*k9_"))
    assert done_before < len(names)
    again = start_daemon()
    again.wait_log(r"catch-up done: ")
    for name in names:
        wait_for(thumb(project, name).exists, 60, message=name)
    again.signal(signal.SIGTERM)
    assert again.wait_exit() == 0
    assert temp_files(project / "photos") == []
    rendered_again = len(again.matching(r"\bok \S*k9_"))
    assert rendered_again <= len(names) - done_before + 2, "photos with complete thumbnails were rendered again"
    for name in names:
        with Image.open(thumb(project, name)) as im:
            im.load()
            assert is_blue(corner_colour(im, "br"))


def burst(project: Path, start_daemon, tmp_path: Path, count: int) -> Daemon:
    edit_config(project, "  progress_interval: 0\n", "  progress_interval: 1\n  photos: debug\n")
    staging = tmp_path / "staging"
    staging.mkdir()
    data = jpeg_bytes(48, 32)
    for i in range(count):
        (staging / f"b{i:05d}.jpg").write_bytes(data)
    daemon = start_daemon()
    daemon.wait_ready()
    for i in range(count):
        os.rename(staging / f"b{i:05d}.jpg", project / "photos" / f"b{i:05d}.jpg")
    thumbs = project / "photos" / "thumbs"
    wait_for(lambda: thumbs.exists() and sum(1 for _ in os.scandir(thumbs)) >= count, 240, interval=0.2, message=f"{count} thumbnails")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(60) == 0
    return daemon


def test_burst_of_1000_photos_ends_with_exactly_1000_thumbnails(project, start_daemon, tmp_path):
    daemon = burst(project, start_daemon, tmp_path, 1000)
    names = sorted(os.listdir(project / "photos" / "thumbs"))
    assert names == [f"b{i:05d}.jpg" for i in range(1000)]
    stopped = daemon.wait_log(r"stopped: done=(\d+)")[0]
    done = int(stopped.split("done=")[1].split()[0])
    assert done == 1000, f"rendered {done} times for 1000 photos"
    assert len(daemon.log()) < 100, "per-photo lines at debug must keep the log short"


def test_shared_corpus_through_the_daemon(project, start_daemon):
    """Every manifest entry behaves as promised when dropped into a running daemon: one `failed`
    line naming each bad file, an upright thumbnail for each good one, and the pool goes on."""
    from helpers import CORPUS

    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.exists():
        pytest.skip(f"shared corpus not found at {CORPUS}")
    rows = [line.split("\t") for line in manifest.read_text().splitlines()[1:] if line.strip()]
    edit_config(project, "  create: true\n", '  create: true\n  patterns: ["*.jpg", "*.jpeg"]\n')
    daemon = start_daemon()
    daemon.wait_ready()
    for rel, _expected, *_ in rows:
        shutil.copy(CORPUS / rel, project / "photos" / Path(rel).name)
    # with the heif extra (in the test extra), a HEIC named .jpg is decoded for what it is
    heif = importlib.util.find_spec("pillow_heif") is not None
    readable = [Path(row[0]).name for row in rows if heif and "IMPOSTOR: HEIF" in row[-1]]
    good = [Path(rel).name for rel, expected, *_ in rows if expected == "thumbnail"] + readable
    bad = [Path(rel).name for rel, expected, *_ in rows if expected == "error" and Path(rel).name not in readable]
    for name in good:
        wait_for(thumb(project, name).exists, 60, message=f"thumbnail of {name}")
    for name in bad:
        lines = daemon.wait_log(rf"failed \S*/{re.escape(name)}: \S", timeout=60)
        assert len(lines) == 1, lines
        assert not thumb(project, name).exists()
    make_jpeg(project / "photos" / "after_corpus.jpg")
    wait_for(thumb(project, "after_corpus.jpg").exists, 20, message="the pool goes on")
    assert not daemon.matching("Traceback|bug while rendering"), daemon.text()
    with Image.open(thumb(project, "pillow_hopper_orientation_6.jpg")) as rotated, Image.open(thumb(project, "pillow_hopper.jpg")) as upright:
        assert rotated.size == upright.size


def test_unreadable_photo_fails_with_permission_denied(project, start_daemon):
    """Root reads everything, so as root the daemon runs without the capabilities that let it."""
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a file unreadable to the daemon")
        drop = "-dac_override,-dac_read_search"
        prefix = ("setpriv", "--bounding-set", drop, "--inh-caps", drop)
    make_jpeg(project / "photos" / "secret.jpg")
    os.chmod(project / "photos" / "secret.jpg", 0o000)
    make_jpeg(project / "photos" / "open.jpg")
    daemon = start_daemon(prefix=prefix)
    line = daemon.wait_log(r"failed \S*secret\.jpg: ", timeout=30)[0]
    assert "permission denied" in line, line
    wait_for(thumb(project, "open.jpg").exists, 20, message="the readable photo")
    assert not daemon.matching("Traceback")


@pytest.fixture
def tiny_inotify_queue():
    """Lower fs.inotify.max_queued_events while the daemon creates its inotify instance (the
    limit is fixed at creation), and restore it at once: a real kernel queue overflow."""
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    try:
        old = knob.read_text()
        knob.write_text("16\n")
    except OSError as err:
        pytest.skip(f"cannot lower fs.inotify.max_queued_events here: {err.strerror}")
    try:
        yield
    finally:
        knob.write_text(old)


def test_kernel_inotify_queue_overflow_triggers_a_rescan(project, start_daemon, tmp_path, tiny_inotify_queue):
    staging = tmp_path / "staging"
    names = [f"ov{i:03d}.jpg" for i in range(300)]
    data = jpeg_bytes(48, 32)
    staging.mkdir()
    for name in names:
        (staging / name).write_bytes(data)
    daemon = start_daemon()
    daemon.wait_ready()
    move_in(staging, names, project)
    daemon.wait_log(r"inotify queue overflowed and events were lost; rescanning", timeout=30)
    for name in names:
        wait_for(thumb(project, name).exists, 60, message=name)


def test_inotify_watch_limit_on_subfolders_is_reported_and_they_are_polled(project, start_daemon):
    """The limit lowered for the daemon alone, in a user namespace of its own: watchdog swallows
    the error for subfolders, and the daemon must notice it anyway."""
    probe = subprocess.run(["unshare", "-U", "-r", "sh", "-c", "echo 20 > /proc/sys/user/max_inotify_watches"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot lower the inotify watch limit in a user namespace here: {probe.stderr.decode().strip()}")
    for i in range(40):
        (project / "photos" / f"sub{i:02}").mkdir()
    edit_config(project, "rescan_interval: 0", "rescan_interval: 0\n  poll_interval: 0.2")
    daemon = start_daemon(prefix=("unshare", "-U", "-r", "sh", "-c", 'echo 20 > /proc/sys/user/max_inotify_watches && exec "$@"', "sh"))
    daemon.wait_ready()
    line = daemon.wait_log(r"cannot watch \d+ folder\(s\) below")[0]
    assert "ERROR" in line and "fs.inotify.max_user_watches" in line and "raise it to at least" in line and "polling" in line
    unwatched = int(re.search(r"cannot watch (\d+) folder", line).group(1))
    assert 15 <= unwatched <= 21, line
    make_jpeg(project / "photos" / "sub39" / "polled.jpg")
    make_jpeg(project / "photos" / "notified.jpg")
    wait_for(thumb(project, "sub39/polled.jpg").exists, 20, message="photo in a folder inotify could not watch")
    wait_for(thumb(project, "notified.jpg").exists, 20, message="photo in the watched top folder")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_a_log_folder_removed_while_running_costs_the_log_not_the_daemon(project, start_daemon):
    """`rm -rf` of log.file's folder while the daemon runs: logging must never stop it. Photos are
    still rendered, stderr says once that the log is lost (the folder is not made again: the
    admin removed it), and SIGTERM still drains: exit 0, every worker gone (Python 3.11's
    WatchedFileHandler raised from every log call, and the drain that could not log never sent
    its poison pills: the process hung for good in its exit, holding its lock)."""
    edit_config(project, "log:\n", "log:\n  file: logs/thumbwatch.log\n")
    log_file = project / "logs" / "thumbwatch.log"
    daemon = start_daemon()
    wait_for(lambda: log_file.exists() and re.search(r"\bready\b", log_file.read_text()), 30, message="ready, in the log file")
    workers = daemon.children()
    assert workers, "no worker processes seen"
    shutil.rmtree(project / "logs")
    for i in range(2):  # the first log call after the rmtree, and the ones after it
        make_jpeg(project / "photos" / f"after{i}.jpg")
        wait_for(lambda i=i: thumb(project, f"after{i}.jpg").exists(), 20, message=f"after{i}.jpg rendered with the log gone")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0, daemon.text()
    wait_for(lambda: not [pid for pid in workers if _alive(pid)], 10, message=f"worker processes {workers} to exit")
    said = daemon.matching(r"cannot write the log file")
    assert len(said) == 1 and str(log_file) in said[0], daemon.text()
    assert "Traceback" not in daemon.text(), daemon.text()
    assert not (project / "logs").exists(), "the folder the admin removed was made again"


def test_the_log_file_handler_never_raises_says_so_once_and_writes_again_once_it_can(tmp_path, capsys):
    """In-process, the handler alone: its folder removed, no log call raises and stderr hears it
    once; the folder made again (by the admin), lines go to the file again."""
    import logging

    from watcher.logsetup import LogFileHandler

    (tmp_path / "logs").mkdir()
    path = tmp_path / "logs" / "t.log"
    handler = LogFileHandler(path, encoding="utf-8")
    log = logging.getLogger("test_faults.logfile")
    log.propagate = False
    log.addHandler(handler)
    try:
        log.warning("before")
        shutil.rmtree(tmp_path / "logs")
        for i in range(3):
            log.warning("lost %d", i)
        assert not (tmp_path / "logs").exists()
        (tmp_path / "logs").mkdir()
        log.warning("after")
    finally:
        log.removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err.splitlines()
    assert err == [f"thumbwatch: cannot write the log file {path}: No such file or directory; log lines are lost until it can be opened again",
                   f"thumbwatch: writing the log file {path} again"], err
    assert path.read_text() == "after\n"
