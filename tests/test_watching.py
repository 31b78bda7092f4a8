"""How the observers choose: network mounts are polled (inotify can't see other machines' writes)."""

from __future__ import annotations

import os
import queue
import warnings

import pytest
from watchdog.utils.dirsnapshot import DirectorySnapshot

from helpers import inotify_watched_inodes, make_jpeg, wait_for
from watcher.config import parse
from watcher.paths import PathRules
from watcher.watching import Watching, network_fs

MOUNTINFO = """\
22 1 8:1 / / rw,relatime - ext4 /dev/vda1 rw
36 22 0:51 / /mnt/nas rw,noatime - nfs4 nas:/export rw,vers=4.2
37 22 0:52 / /mnt/nas/local rw - ext4 /dev/vdb1 rw
38 22 0:53 / /mnt/share\\040name rw - cifs //server/photos rw
39 22 0:54 / /mnt/cephfs rw - ceph 10.0.0.1:/ rw
40 22 0:55 / /mnt/fusefs rw - fuse.sshfs host:/ rw
"""


def test_network_file_systems_are_found_by_the_longest_mount_point(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert network_fs("/mnt/nas/photos", str(info)) == "nfs4"
    assert network_fs("/mnt/nas/local/photos", str(info)) is None, "a local disk mounted below a network one"
    assert network_fs("/mnt/share name/2024", str(info)) == "cifs"
    assert network_fs("/mnt/cephfs", str(info)) == "ceph"
    assert network_fs("/mnt/fusefs/x", str(info)) == "fuse.sshfs"
    assert network_fs("/mnt/nasty", str(info)) is None, "a prefix of the name is not a mount point"
    assert network_fs("/srv/photos", str(info)) is None


def test_this_machines_own_folders_are_local(tmp_path):
    assert network_fs(str(tmp_path)) is None



def test_the_polling_observer_does_not_see_our_output_tree(tmp_path):
    """Our own thumbnails are churn a poll need not pay for, and their freed inode numbers, reused
    by new photos, would pair up with them as false moves (a folder of thumbnails "moved" to a
    photo, which then was never rendered)."""
    root = tmp_path / "photos"
    (root / "thumbs" / "trip").mkdir(parents=True)
    (root / "trip").mkdir()
    config = parse({"watch": {"paths": ["photos"], "observer": "polling"},
                    "output": {"sizes": [{"name": "small", "width": 64, "height": 64}]}},
                   file=tmp_path / "config.yaml", base_dir=tmp_path)
    for path in (root / "thumbs" / "trip" / "a.jpg", root / "trip" / "a.jpg"):
        make_jpeg(path)
    watching = Watching(config, PathRules(config), lambda notice: None, lambda what, tops: None)
    seen = DirectorySnapshot(str(root), listdir=watching._polled_entries).paths  # what each poll compares
    assert seen == {str(root), str(root / "trip"), str(root / "trip" / "a.jpg")}


@pytest.mark.filterwarnings("error")
def test_a_folder_moved_out_and_back_in_is_watched_once_under_its_new_name(tmp_path):
    """watchdog keeps the watches of a folder moved out of the tree; moved back in (under any
    name) before it learns the folder went, it registered the same inode again and printed
    "RuntimeWarning: Callback with id ... already exists" on stderr, outside the log."""
    root, outside = tmp_path / "photos", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    config = parse({"watch": {"paths": ["photos"], "observer": "inotify"},
                    "output": {"sizes": [{"name": "small", "width": 64, "height": 64}]}},
                   file=tmp_path / "config.yaml", base_dir=tmp_path)
    notices: queue.Queue = queue.Queue()
    caught: list[str] = []
    watching = Watching(config, PathRules(config), notices.put, lambda what, tops: None)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # the observer's threads warn too: every warning, from any thread, is recorded here
        warnings.showwarning = lambda message, category, *args, **kwargs: caught.append(f"{category.__name__}: {message}")
        watching.start()
        try:
            r = os.fsencode(root)
            names = [b"with space", b"new\nline", b"back\\slash", b"bad\xff\xfe"]
            for name in names:
                os.makedirs(os.path.join(r, name, b"sub", b"deeper"))
            new = {os.stat(os.path.join(r, name, *sub)).st_ino for name in names for sub in ((), (b"sub",), (b"sub", b"deeper"))}
            wait_for(lambda: new <= inotify_watched_inodes(os.getpid()), message="inotify watches on the new folders")
            for i, name in enumerate(names):
                os.rename(os.path.join(r, name), os.path.join(os.fsencode(outside), name))
                os.rename(os.path.join(os.fsencode(outside), name), os.path.join(r, name + b" again"))
            last = os.path.join(r, names[-1] + b" again", b"sub", b"deeper", b"new.jpg")
            make_jpeg(os.fsdecode(last))

            def arrived() -> bool:
                while True:
                    try:
                        notice = notices.get_nowait()
                    except queue.Empty:
                        return False
                    if notice.kind == "arrived" and notice.path == os.fsdecode(last):
                        return True

            wait_for(arrived, timeout=10, message="a photo in the folder moved back in is seen under its new name")
        finally:
            watching.stop()
    assert not caught, "\n".join(caught)


def test_a_reload_that_changes_what_is_polled_starts_a_new_poller(tmp_path):
    root = tmp_path / "photos"
    (root / "raw").mkdir(parents=True)
    (root / "jpg").mkdir()

    def config(ignore: list[str], interval: float):
        return parse({"watch": {"paths": ["photos"], "observer": "polling", "poll_interval": interval, "ignore": ignore},
                      "output": {"sizes": [{"name": "small", "width": 64, "height": 64}]}},
                     file=tmp_path / "config.yaml", base_dir=tmp_path)

    notices: queue.Queue = queue.Queue()
    first = config([], 0.1)
    watching = Watching(first, PathRules(first), notices.put, lambda what, tops: None)
    watching.start()
    try:
        old = watching.polling
        second = config(["raw"], 0.1)
        watching.update(second, PathRules(second))
        assert watching.polling is not old and not old.is_alive(), "the old poller is stopped"
        [emitter] = list(watching.polling.emitters)
        wait_for(lambda: emitter.ready)
        assert sorted(emitter.tree.root.dirs) == ["jpg"], "the new rules decide what is polled"
        make_jpeg(root / "jpg" / "a.jpg")
        make_jpeg(root / "raw" / "b.jpg")
        seen: list[str] = []

        def settled() -> bool:
            while not notices.empty():
                seen.append(notices.get_nowait().path)
            return str(root / "jpg" / "a.jpg") in seen

        wait_for(settled, timeout=10)
        assert str(root / "raw" / "b.jpg") not in seen
    finally:
        watching.stop()


def test_the_poller_never_lists_our_output_tree(tmp_path):
    root = tmp_path / "photos"
    (root / "thumbs" / "trip").mkdir(parents=True)
    (root / "trip").mkdir()
    make_jpeg(root / "thumbs" / "trip" / "a.jpg")
    make_jpeg(root / "trip" / "a.jpg")
    config = parse({"watch": {"paths": ["photos"], "observer": "polling", "poll_interval": 0.1},
                    "output": {"sizes": [{"name": "small", "width": 64, "height": 64}]}},
                   file=tmp_path / "config.yaml", base_dir=tmp_path)
    watching = Watching(config, PathRules(config), lambda notice: None, lambda what, tops: None)
    watching.start()
    try:
        [emitter] = list(watching.polling.emitters)
        wait_for(lambda: emitter.ready)
        known = sorted(os.path.relpath(folder.path, root) for folder in emitter.tree.root.walk())
        assert known == [".", "trip"]
    finally:
        watching.stop()
