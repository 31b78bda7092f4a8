"""End to end: the daemon as a subprocess, real files, real inotify, real worker processes, real signals."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from PIL import Image

from helpers import (corner_colour, edit_config, flat_jpeg_bytes, heavy, inotify_watched_inodes, is_blue, is_red, jpeg_bytes, make_jpeg, mean_colour, move_in,
                     same_colour, stage, temp_files, thumb, wait_for)
from imagegen import camera_like_jpeg

OK = r"\bok \S*{name}\S* -> "


def ok_lines(daemon, name: str) -> list[str]:
    return daemon.matching(OK.format(name=name.replace(".", r"\.")))




def wait_thumb(project: Path, rel: str, timeout: float = 20.0) -> Image.Image:
    path = thumb(project, rel)
    wait_for(path.exists, timeout, message=f"thumbnail {path}")
    with Image.open(path) as im:
        im.load()
        return im.copy()


def test_copied_in_photos_get_upright_thumbnails_once(project, start_daemon, tmp_path):
    daemon = start_daemon()
    daemon.wait_ready()
    outside = tmp_path / "camera"
    for orientation in (1, 6, 8):
        make_jpeg(outside / f"o{orientation}.jpg", 600, 400, orientation=orientation)
        shutil.copy(outside / f"o{orientation}.jpg", project / "photos" / f"o{orientation}.jpg")
    for orientation in (1, 6, 8):
        im = wait_thumb(project, f"o{orientation}.jpg")
        assert im.size == (64, 43), f"orientation {orientation}: {im.size}"
        assert is_red(corner_colour(im, "tl")), f"orientation {orientation}: top-left is {corner_colour(im, 'tl')}"
        assert is_blue(corner_colour(im, "br"))
    daemon.wait_log(OK.format(name="o8"), count=1)
    for orientation in (1, 6, 8):
        assert len(ok_lines(daemon, f"o{orientation}.jpg")) == 1, daemon.text()
    assert daemon.matching(r"thumbwatch \S+ starting: folders=\S+ workers=2 sizes=\[small:64x64")
    if os.geteuid() == 0:
        assert daemon.matching(r"WARNING running as root: run unprivileged .*User=thumbwatch"), "no warning when run as root"


def test_portrait_photo_stays_portrait(project, start_daemon):
    daemon = start_daemon()
    daemon.wait_ready()
    make_jpeg(project / "photos" / "portrait.jpg", 300, 600, orientation=6)
    im = wait_thumb(project, "portrait.jpg")
    assert im.size == (32, 64)


def test_moved_in_and_renamed_from_temp_name(project, start_daemon, tmp_path):
    daemon = start_daemon()
    daemon.wait_ready()
    outside = tmp_path / "upload.jpg"
    make_jpeg(outside)
    os.rename(outside, project / "photos" / "moved.jpg")
    # rsync and browsers write a hidden or .part name, then rename it into place
    (project / "photos" / ".rsync.jpg.a1B2c3").write_bytes(jpeg_bytes())
    os.rename(project / "photos" / ".rsync.jpg.a1B2c3", project / "photos" / "rsynced.jpg")
    (project / "photos" / "download.jpg.part").write_bytes(jpeg_bytes())
    os.rename(project / "photos" / "download.jpg.part", project / "photos" / "download.jpg")
    for name in ("moved.jpg", "rsynced.jpg", "download.jpg"):
        wait_thumb(project, name)
    daemon.wait_log(OK.format(name="download"))
    assert not thumb(project, ".rsync.jpg.a1B2c3").exists()
    assert not daemon.matching(r"\.part|a1B2c3"), daemon.text()


def test_slow_writer_gives_exactly_one_complete_thumbnail(project, start_daemon):
    daemon = start_daemon()
    daemon.wait_ready()
    data = jpeg_bytes(800, 600)
    path = project / "photos" / "slow.jpg"
    chunks = [data[i : i + len(data) // 10 + 1] for i in range(0, len(data), len(data) // 10 + 1)]
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
            f.flush()
            time.sleep(0.3)  # the writer's pace, not synchronisation: the photo takes ~3 s to arrive
    im = wait_thumb(project, "slow.jpg")
    assert im.size == (64, 48)
    assert is_blue(corner_colour(im, "br")), "thumbnail of a partial image"
    daemon.wait_log(OK.format(name="slow"))
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert len(ok_lines(daemon, "slow.jpg")) == 1, daemon.text()
    assert not daemon.matching(r"failed .*slow"), daemon.text()


def test_new_subfolders_created_or_moved_in_are_watched(project, start_daemon, tmp_path):
    daemon = start_daemon()
    daemon.wait_ready()
    (project / "photos" / "2024" / "june").mkdir(parents=True)
    make_jpeg(project / "photos" / "2024" / "june" / "a.jpg")
    album = tmp_path / "album"
    make_jpeg(album / "b.jpg")
    make_jpeg(album / "inner" / "c.jpg")
    os.rename(album, project / "photos" / "album")
    wait_thumb(project, "2024/june/a.jpg")
    wait_thumb(project, "album/b.jpg")
    wait_thumb(project, "album/inner/c.jpg")
    # a photo written into the moved-in folder afterwards is seen too
    make_jpeg(project / "photos" / "album" / "inner" / "d.jpg")
    wait_thumb(project, "album/inner/d.jpg")


def test_bad_file_fails_once_and_the_pool_goes_on(project, start_daemon):
    daemon = start_daemon()
    daemon.wait_ready()
    (project / "photos" / "broken.jpg").write_bytes(b"this is not a jpeg at all")
    make_jpeg(project / "photos" / "fine.jpg")
    wait_thumb(project, "fine.jpg")
    line = daemon.wait_log(r"failed \S*broken\.jpg: ")[0]
    assert "Traceback" not in daemon.text()
    make_jpeg(project / "photos" / "after.jpg")
    wait_thumb(project, "after.jpg")
    assert len(daemon.matching(r"failed \S*broken\.jpg")) == 1, line


def test_deleting_a_photo_removes_its_thumbnails(project, start_daemon):
    daemon = start_daemon()
    daemon.wait_ready()
    make_jpeg(project / "photos" / "gone.jpg")
    wait_thumb(project, "gone.jpg")
    (project / "photos" / "gone.jpg").unlink()
    wait_for(lambda: not thumb(project, "gone.jpg").exists(), message="thumbnail removed")


def test_catch_up_renders_missing_and_stale_skips_up_to_date(project, start_daemon):
    photos = project / "photos"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        make_jpeg(photos / name)
    old = time.time() - 60
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        os.utime(photos / name, (old, old))
    daemon = start_daemon()
    daemon.wait_log(r"catch-up done: found=3 queued=3 skipped=0")
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        wait_thumb(project, name)
    daemon.wait_log(OK.format(name="c"))
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    # b is overwritten while the daemon is down: its thumbnail is stale; a and c are up to date
    make_jpeg(photos / "b.jpg", 300, 600)
    os.utime(photos / "b.jpg", (old + 10, old + 10))
    again = start_daemon()
    again.wait_log(r"catch-up done: found=3 queued=1 skipped=2")
    wait_for(lambda: Image.open(thumb(project, "b.jpg")).size == (32, 64), message="b.jpg remade")


def test_sigterm_during_a_burst_drains_cleanly_and_restart_completes(project, start_daemon, tmp_path):
    heavy(project)
    staging = tmp_path / "staging"
    names = [f"burst{i:03d}.jpg" for i in range(30)]
    stage(staging, names, 3200, 2400)
    daemon = start_daemon()
    daemon.wait_ready()
    move_in(staging, names, project)
    daemon.wait_log(r"\bok \S*burst", count=2)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0, daemon.text()
    wait_for(lambda: not daemon.children(), 5, message="worker processes to go with the daemon")
    assert temp_files(project / "photos") == []
    daemon.wait_log(r"draining: ")
    daemon.wait_log(r"stopped: done=\d+")
    assert "Traceback" not in daemon.text()
    done_before = len(daemon.matching(r"\bok \S*burst"))
    assert done_before < len(names), "the burst finished before SIGTERM; make it bigger"
    again = start_daemon()
    again.wait_log(rf"catch-up done: found={len(names)} queued={len(names) - done_before} skipped={done_before}")
    for name in names:
        wait_thumb(project, name, timeout=60)




def test_workers_ignore_the_groupwide_signal_and_finish_the_photo_in_hand(project, start_daemon, tmp_path):
    """systemd signals the whole cgroup and Ctrl-C the whole process group: photos in hand finish."""
    heavy(project)
    staging = tmp_path / "staging"
    for i in range(6):
        make_jpeg(staging / f"big{i}.jpg", 4000, 3000)
    daemon = start_daemon()
    daemon.wait_ready()
    for i in range(6):
        os.rename(staging / f"big{i}.jpg", project / "photos" / f"big{i}.jpg")
    daemon.wait_log(r"\bok \S*big")
    os.killpg(daemon.proc.pid, signal.SIGINT)
    assert daemon.wait_exit(30) == 0, daemon.text()
    in_hand = int(daemon.wait_log(r"draining: (\d+) photo")[0].split("draining: ")[1].split()[0])
    log = daemon.log()
    draining_at = next(i for i, line in enumerate(log) if "draining: " in line)
    finished_after = [line for line in log[draining_at:] if re.search(r"\bok \S+ -> ", line)]
    assert in_hand >= 1, "nothing was in hand when the signal came; the test proves nothing"
    # Every photo in hand finishes. The master's count can lag by one result per worker (a photo
    # finished but not yet reported as the signal lands), and no worker starts another one.
    assert in_hand <= len(finished_after) <= in_hand + 2, daemon.text()
    assert len(daemon.matching(r"\bok \S+ -> ")) < 6, "the backlog was rendered during the drain"
    assert not daemon.matching(r"worker exited"), daemon.text()
    assert temp_files(project / "photos") == []


def test_second_signal_stops_at_once(project, start_daemon, tmp_path):
    heavy(project)
    edit_config(project, "count: 2", "count: 1")
    staging = tmp_path / "staging"
    for i in range(10):
        make_jpeg(staging / f"s{i}.jpg", 4000, 3000)
    daemon = start_daemon()
    daemon.wait_ready()
    for i in range(10):
        os.rename(staging / f"s{i}.jpg", project / "photos" / f"s{i}.jpg")
    daemon.wait_log(r"\bok \S*s\d+\.jpg")
    daemon.signal(signal.SIGTERM)
    daemon.wait_log(r"draining")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(15) == 0
    assert temp_files(project / "photos") == []


def test_scan_is_one_shot(project, tmp_path):
    import subprocess
    import sys

    for i in range(5):
        make_jpeg(project / "photos" / "deep" / f"p{i}.jpg")
    result = subprocess.run([sys.executable, "-m", "watcher", "scan", "-c", "config.yaml"], cwd=project, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for i in range(5):
        assert thumb(project, f"deep/p{i}.jpg").exists()
    assert "catch-up done: found=5" in result.stderr


def test_daemon_outputs_are_never_queued_even_inside_the_tree(project, start_daemon):
    daemon = start_daemon()
    daemon.wait_ready()
    make_jpeg(project / "photos" / "self.jpg")
    wait_thumb(project, "self.jpg")
    make_jpeg(project / "photos" / "second.jpg")
    wait_thumb(project, "second.jpg")
    daemon.wait_log(OK.format(name="second"))
    assert not daemon.matching(r"\bok \S*/thumbs/"), daemon.text()


@pytest.mark.parametrize("observer", ["polling"])
def test_polling_observer_waits_for_files_to_settle(project, start_daemon, observer):
    edit_config(project, "settle_seconds: 0.3", "settle_seconds: 1.5")
    edit_config(project, "  rescan_interval: 0\n", f"  rescan_interval: 0\n  observer: {observer}\n  poll_interval: 0.2\n")
    daemon = start_daemon()
    daemon.wait_ready()
    data = jpeg_bytes(800, 600)
    with open(project / "photos" / "polled.jpg", "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(0.8)  # the writer's pace: half the photo sits there across several polls
        f.write(data[len(data) // 2 :])
    im = wait_thumb(project, "polled.jpg")
    assert is_blue(corner_colour(im, "br"))
    daemon.wait_log(OK.format(name="polled"))
    assert len(ok_lines(daemon, "polled.jpg")) == 1
    assert not daemon.matching(r"\bfailed \S"), daemon.text()


def minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def test_a_worker_reuses_freed_image_memory_instead_of_faulting_it_in_for_every_photo(project, start_daemon, tmp_path):
    # glibc's moving mmap/trim thresholds can hand each decoded image back to the kernel and
    # fault it in again for the next photo: ~3,900 faults per 2 MP photo at three sizes.
    edit_config(project, "    - {name: small, width: 64, height: 64}",
                "    - {name: l, width: 1024, height: 1024}\n    - {name: m, width: 512, height: 512}\n    - {name: s, width: 256, height: 256}")
    edit_config(project, "count: 2", "count: 1")
    staging = tmp_path / "staging"
    names = [f"p{i}.jpg" for i in range(11)]
    for name in names:
        camera_like_jpeg(staging / name, 1600, 1200, quality=85)
    daemon = start_daemon()
    daemon.wait_ready()
    (worker,) = daemon.status()["workers"]
    move_in(staging, names[:3], project)  # the heap grows to what a photo needs
    for name in names[:3]:
        wait_for(thumb(project, f"s/{name}").exists, 20, message=name)
    before = minor_faults(worker)
    move_in(staging, names[3:], project)
    for name in names[3:]:
        wait_for(thumb(project, f"s/{name}").exists, 20, message=name)
    per_photo = (minor_faults(worker) - before) / len(names[3:])
    assert per_photo < 300, f"{per_photo:.0f} page faults per photo"


def inodes(*paths: Path) -> set[int]:
    return {p.stat().st_ino for p in paths}


def test_thumbnail_folders_inside_the_watched_tree_take_no_inotify_watch(project, start_daemon):
    # each thumbnail written in a watched folder would wake the observer four times, and each
    # thumbnail folder would use one more of the user's inotify watches
    daemon = start_daemon()
    daemon.wait_ready()
    photos, thumbs = project / "photos", project / "photos" / "thumbs"
    make_jpeg(photos / "a" / "b" / "p.jpg")
    wait_thumb(project, "a/b/p.jpg")
    make_jpeg(photos / "a" / "b" / "q.jpg")  # a/b is watched: this one comes by its event
    wait_thumb(project, "a/b/q.jpg")
    watched = inotify_watched_inodes(daemon.proc.pid)
    assert inodes(photos, photos / "a", photos / "a" / "b") <= watched
    assert not inodes(thumbs, thumbs / "a", thumbs / "a" / "b") & watched

    # a reload that moves the output: the old thumbnail folders are ordinary folders now
    edit_config(project, "output:\n", "output:\n  dir: previews\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"reloaded .*output\.dir")
    make_jpeg(photos / "a" / "r.jpg")
    wait_for((photos / "previews" / "a" / "r.jpg").exists, 20, message="thumbnail in the new output folder")
    watched = inotify_watched_inodes(daemon.proc.pid)
    assert inodes(photos / "a", thumbs, thumbs / "a") <= watched
    assert not inodes(photos / "previews", photos / "previews" / "a") & watched


def test_a_photo_whose_upload_pauses_longer_than_settle_seconds_gets_one_thumbnail_and_no_failure(project, start_daemon):
    """A phone uploading over Wi-Fi: the file is created, half written, and the writer pauses
    longer than settle_seconds before the rest and the close. The settler's fallback renders it
    half-way (it might be a hard link that will never be closed); truncated before its
    close-write, that is no failure: no `failed` line, and one thumbnail of the whole photo."""
    config = project / "config.yaml"
    config.write_text(re.sub(r"(?m)^  level: \w+$", "  level: debug", config.read_text()))  # for the line it waits for
    daemon = start_daemon()
    daemon.wait_ready()
    colour = (40, 90, 210)
    data = flat_jpeg_bytes(colour, 640, 480)
    out = thumb(project, "upload.jpg")
    with open(project / "photos" / "upload.jpg", "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        # the writer's own pause, past settle_seconds (0.3) and the master's housekeeping turn
        daemon.wait_log(r"failed before its close-write, waiting for that: \S*upload\.jpg", timeout=20)
        assert not out.exists()
        f.write(data[len(data) // 2 :])
    daemon.wait_log(OK.format(name="upload"))
    assert same_colour(mean_colour(out), colour)
    assert not daemon.matching(r" failed /"), daemon.text()
    assert len(daemon.matching(OK.format(name="upload"))) == 1
