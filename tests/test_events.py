"""The event handler under real inotify: what each everyday tool's events become for the master.

A change of attributes alone must reach the master as "attrib" (its content did not change);
anything that wrote to the photo must reach it as "arrived", and no attribute change made
during that write may pass for a change of attributes alone.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
from pathlib import Path

import pytest
from watchdog.observers.inotify import InotifyObserver

from helpers import make_flat_jpeg, palette
from watcher.config import parse
from watcher.events import INOTIFY_EVENTS, Notice, PhotoEventHandler
from watcher.paths import PathRules


@pytest.fixture
def watched(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    config = parse({"watch": {"paths": ["photos"]}, "state": {"dir": "state"}}, file=tmp_path / "c.yaml", base_dir=tmp_path)
    rules = PathRules(config)
    notices: queue.Queue[Notice] = queue.Queue()
    photo = make_flat_jpeg(root / "a.jpg", palette(1))
    observer = InotifyObserver()
    observer.schedule(PhotoEventHandler(lambda: rules, notices.put, polling=False), str(root), recursive=True,
                      event_filter=list(INOTIFY_EVENTS))
    observer.start()
    try:
        yield photo, notices, tmp_path
    finally:
        observer.stop()
        observer.join(5)


def notices_until_marker(notices: queue.Queue, root: Path) -> list[tuple[str, str]]:
    """Every notice up to the one for a marker photo written last: inotify keeps order, so the
    marker's arrival means everything before it was handled."""
    marker = make_flat_jpeg(root / "zz-marker.jpg", palette(2))
    seen = []
    while True:
        notice = notices.get(timeout=10)
        if notice.path == str(marker):
            if notice.kind == "arrived":
                return seen
            continue
        seen.append((notice.kind, os.path.basename(notice.path)))


def run(*argv) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True)


@pytest.mark.parametrize("tool", ["chmod", "chown", "setfattr", "setfacl", "touch -a"])
def test_a_change_of_attributes_alone_is_an_attrib_notice(watched, tool):
    photo, notices, tmp = watched
    if tool == "chown" and os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    command = {"chmod": ["chmod", "g+w"], "chown": ["chown", "1:1"], "setfattr": ["setfattr", "-n", "user.x", "-v", "1"],
               "setfacl": ["setfacl", "-m", "u:1:r"], "touch -a": ["touch", "-a"]}[tool]
    if shutil.which(command[0]) is None:
        pytest.skip(f"{command[0]} is not installed (apt-get install attr acl)")
    run(*command, photo)
    assert set(notices_until_marker(notices, photo.parent)) == {("attrib", "a.jpg")}


def test_cp_p_over_a_photo_is_an_arrival_and_its_mtime_reset_no_attribute_change(watched):
    """cp -p writes, sets the old mtime (IN_ATTRIB) and only then closes: the attribute change
    is part of the write, and the photo must be rendered again."""
    photo, notices, tmp = watched
    other = make_flat_jpeg(tmp / "other.jpg", palette(3))
    run("cp", "-p", other, photo)
    assert notices_until_marker(notices, photo.parent) == [("arrived", "a.jpg")]


def test_a_write_then_an_mtime_set_after_the_close_is_an_arrival_then_an_attrib(watched):
    """tar and rsync set the mtime by name after closing: the master hears the arrival first (the
    photo is then waiting or in hand, and the attrib notice only makes it look once more)."""
    photo, notices, tmp = watched
    st = os.stat(photo)
    photo.write_bytes(photo.read_bytes())
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert notices_until_marker(notices, photo.parent) == [("arrived", "a.jpg"), ("attrib", "a.jpg")]


def test_a_new_file_closed_unwritten_still_ends_its_wait(watched):
    """Samba creates an empty file and closes it before writing: the master must still hear of
    the close (as attrib, which goes on as a close-write for a photo that is settling)."""
    photo, notices, tmp = watched
    (photo.parent / "new.jpg").touch()
    assert notices_until_marker(notices, photo.parent) == [("created", "new.jpg"), ("attrib", "new.jpg")]


def test_a_touch_of_the_roots_marker_is_a_barrier(watched):
    """The master's re-stamp barrier: its touch of the root's marker comes back as "barrier",
    after every event from before it."""
    from watcher.roots import MARKER, write_marker

    photo, notices, tmp = watched
    assert write_marker(str(photo.parent))
    marker = photo.parent / MARKER
    run("chmod", "g+w", photo)
    st = marker.stat()
    os.utime(marker, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert notices_until_marker(notices, photo.parent) == [("attrib", "a.jpg"), ("barrier", MARKER)]
