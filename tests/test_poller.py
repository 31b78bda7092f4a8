"""The poller for big trees: folders listed only when their stamp changed, a budgeted sweep for
in-place rewrites, coarse (1 s) folder timestamps, and a real daemon that polls.

The tree is driven one poll at a time in-process, on the real file system; listings are
counted through the lister the poller is given (a real os.scandir), never a mock of the OS.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from watchdog.events import FileModifiedEvent

from helpers import edit_config, make_flat_jpeg, mean_colour, wait_for
from watcher.poller import COARSEST_STAMP, PolledTree


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Tree:
    """A PolledTree on a real folder, with its listings counted and a hand-driven clock."""

    def __init__(self, root: Path, lister=None):
        self.root = root
        self.listed: list[str] = []
        self.clock = Clock()
        self.lister = lister or os.scandir
        self.tree = PolledTree(str(root), lister=self._list, descend=lambda entry: not entry.name.startswith("."),
                               clock=self.clock)

    def _list(self, folder: str):
        self.listed.append(os.path.relpath(folder, self.root))
        return self.lister(folder)

    def start(self) -> list:
        events = self.tree.baseline()
        assert events is not None
        self.settle()
        return events

    def settle(self) -> None:
        """Let the coarse-stamp window of every change seen so far pass (a poll lists them once more)."""
        self.clock.now += COARSEST_STAMP + 1
        assert self.tree.poll() is not None
        self.listed.clear()

    def poll(self) -> list[tuple[str, str, str]]:
        events = self.tree.poll()
        assert events is not None
        return [(type(e).__name__, self._rel(e.src_path), self._rel(e.dest_path)) for e in events]

    def _rel(self, path) -> str:
        return os.path.relpath(path, self.root) if path else ""


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root = tmp_path / "photos"
    for folder in ("a", "b", "b/c", "d"):
        (root / folder).mkdir(parents=True)
        for i in range(3):
            (root / folder / f"p{i}.jpg").write_bytes(b"x" * 10)
    return Tree(root)


def test_a_poll_lists_only_the_folders_whose_stamp_changed(tree):
    tree.start()
    assert tree.poll() == [] and tree.listed == [], "an idle tree is stat'ed, never listed"
    (tree.root / "b" / "c" / "new.jpg").write_bytes(b"new")
    assert tree.poll() == [("FileCreatedEvent", "b/c/new.jpg", "")]
    assert tree.listed == ["b/c"], "only the folder that gained a name is listed, not its parents"
    tree.settle()
    (tree.root / "a" / "p0.jpg").unlink()
    os.rename(tree.root / "d" / "p1.jpg", tree.root / "d" / "q1.jpg")
    assert sorted(tree.poll()) == [("FileCreatedEvent", "d/q1.jpg", ""), ("FileDeletedEvent", "a/p0.jpg", ""),
                                   ("FileDeletedEvent", "d/p1.jpg", "")]
    assert sorted(tree.listed) == ["a", "d"]


def test_a_changed_folder_is_listed_again_until_its_stamp_tick_has_passed(tree):
    tree.start()
    (tree.root / "a" / "new.jpg").write_bytes(b"new")
    tree.poll()
    tree.listed.clear()
    tree.clock.now += COARSEST_STAMP / 2
    assert tree.poll() == [] and tree.listed == ["a"], "within the window: listed again, nothing new to report"
    tree.listed.clear()
    tree.clock.now += COARSEST_STAMP
    tree.poll()
    assert tree.listed == ["a"], "the first poll after the window lists it a last time"
    tree.listed.clear()
    tree.poll()
    assert tree.listed == []


def test_new_removed_and_renamed_folders(tree):
    tree.start()
    (tree.root / "e" / "f").mkdir(parents=True)
    (tree.root / "e" / "f" / "x.jpg").write_bytes(b"x")
    assert sorted(tree.poll()) == [("DirCreatedEvent", "e", ""), ("DirCreatedEvent", "e/f", ""),
                                   ("FileCreatedEvent", "e/f/x.jpg", "")]
    tree.settle()
    os.rename(tree.root / "b", tree.root / "e" / "moved")
    events = tree.poll()
    assert events[0] == ("DirMovedEvent", "b", "e/moved"), "a folder's move goes out before anything inside it"
    assert sorted(events[1:]) == sorted([("FileMovedEvent", f"b/{n}", f"e/moved/{n}")
                                         for n in ("p0.jpg", "p1.jpg", "p2.jpg", "c/p0.jpg", "c/p1.jpg", "c/p2.jpg")])
    tree.settle()
    shutil.rmtree(tree.root / "e")
    events = tree.poll()
    assert {("DirDeletedEvent", p, "") for p in ("e", "e/f", "e/moved", "e/moved/c")} <= set(events)
    assert ("FileDeletedEvent", "e/moved/c/p2.jpg", "") in events and ("FileDeletedEvent", "e/f/x.jpg", "") in events
    deletes = [i for i, e in enumerate(events) if e[0] == "FileDeletedEvent"]
    assert len(deletes) == 7


def test_a_name_given_to_another_file_is_a_deletion_then_a_creation(tree):
    tree.start()
    staged = tree.root / "a" / ".p1.jpg.tmp"
    staged.write_bytes(b"new content")
    os.replace(staged, tree.root / "a" / "p1.jpg")  # an editor's or rsync's atomic save
    assert tree.poll() == [("FileDeletedEvent", "a/p1.jpg", ""), ("FileCreatedEvent", "a/p1.jpg", "")]


def test_a_file_rewritten_in_place_is_found_by_the_sweep_within_its_bound(tree):
    tree.start()
    photo = tree.root / "b" / "c" / "p1.jpg"
    ino = photo.stat().st_ino
    with open(photo, "r+b") as f:  # rsync --inplace: same inode, new content
        f.write(b"rewritten in place")
    assert photo.stat().st_ino == ino
    assert tree.poll() == [], "an in-place rewrite changes no folder"
    files = tree.tree.files
    assert files == 12
    allowance = 5  # stats per tick: budget x poll interval
    found_at = None
    for tick in range(1, 20):
        events, spent = tree.tree.sweep(allowance)
        assert spent <= allowance
        if events:
            assert [(type(e), e.src_path) for e in events] == [(FileModifiedEvent, str(photo))]
            found_at = tick
            break
    assert found_at is not None and found_at <= math.ceil(files / allowance) + 1, found_at
    assert tree.tree.sweep_bound(budget=10.0, interval=2.0) == files / 10 + 4
    for _ in range(10):
        assert tree.tree.sweep(allowance)[0] == [], "reported once"


def test_the_sweep_starts_a_folder_over_when_it_was_listed_meanwhile(tree):
    tree.start()
    tree.tree.sweep(2)  # half-way through the first folder
    first = tree.tree._round[0]
    (Path(first.path) / "aaa.jpg").write_bytes(b"new")
    tree.poll()
    with open(Path(first.path) / "aaa.jpg", "r+b") as f:
        f.write(b"rewritten")
    seen = []
    for _ in range(10):
        seen += [e.src_path for e in tree.tree.sweep(3)[0]]
    assert seen == [os.path.join(first.path, "aaa.jpg")]


def test_a_listing_that_fails_changes_nothing(tmp_path):
    failing: set[str] = set()

    def lister(folder: str):
        if folder in failing:
            raise OSError(errno.EIO, "Input/output error")
        return os.scandir(folder)

    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    (root / "a" / "p.jpg").write_bytes(b"x")
    tree = Tree(root, lister)
    tree.start()
    failing.add(str(root / "a"))
    (root / "a" / "q.jpg").write_bytes(b"x")
    assert tree.poll() == [], "an unreadable folder is not an empty one"
    failing.clear()
    assert tree.poll() == [("FileCreatedEvent", "a/q.jpg", "")], "read again at the next poll"


def test_hidden_folders_are_not_polled_and_the_root_gone_is_one_event(tree):
    tree.start()
    (tree.root / ".cache").mkdir()
    (tree.root / ".cache" / "x.jpg").write_bytes(b"x")
    assert tree.poll() == []
    assert tree.listed == ["."]
    shutil.rmtree(tree.root)
    assert tree.poll() == [("DirDeletedEvent", ".", "")]


def test_a_poll_stops_half_way_when_asked(tree):
    stop = []
    tree.tree.stopping = lambda: bool(stop)
    tree.start()
    for i in range(4):
        (tree.root / "a" / f"n{i}.jpg").write_bytes(b"x")
    stop.append(True)
    assert tree.tree.poll() is None and tree.tree.baseline() is None


def test_memory_per_photo_is_small(tmp_path):
    """What the poller keeps per photo, with 100 photos per folder (the bench measures the whole
    master; this keeps the structure honest)."""
    import sys

    root = tmp_path / "photos"
    for d in range(10):
        (root / f"folder{d:04d}").mkdir(parents=True)
        for i in range(100):
            (root / f"folder{d:04d}" / f"IMG_{d:04d}_{i:04d}.jpg").write_bytes(b"")
    tree = Tree(root)
    tree.start()
    size = 0
    for folder in tree.tree.root.walk():
        size += sys.getsizeof(folder) + sys.getsizeof(folder.path) + sys.getsizeof(folder.names)
        size += sys.getsizeof(folder.stats) + sys.getsizeof(folder.dirs)
    per_photo = size / 1000
    assert per_photo < 64, f"{per_photo:.0f} bytes per photo"


# ---- coarse (1 s) folder timestamps, on a real file system -------------------------------------


@pytest.fixture
def ext4_1s(tmp_path: Path):
    """ext4 with 128-byte inodes (no room for sub-second timestamps), loop-mounted by this test."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the coarse-timestamp test needs root (loop mount) in CI")
        pytest.skip("mounting a loop image needs root")
    if not shutil.which("mkfs.ext4"):
        pytest.skip("mkfs.ext4 not installed (Debian: e2fsprogs)")
    image, mnt = tmp_path / "ext4.img", tmp_path / "ext4"
    with open(image, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-I", "128", str(image)], check=True, capture_output=True)
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a loop image here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_two_changes_to_a_folder_within_one_second_are_both_seen(ext4_1s):
    """The real clock and a real 1 s file system: the second name arrives after the poll that
    saw the first, with the folder's stamp unchanged — only the coarse-stamp rule finds it."""
    root = ext4_1s / "photos"
    (root / "a").mkdir(parents=True)
    tree = PolledTree(str(root), lister=os.scandir, descend=lambda entry: True)
    assert tree.baseline() is not None
    folder = root / "a"
    for attempt in range(10):
        # start just after a second boundary, so both changes fall into one tick
        wait_for(lambda: time.time() % 1 < 0.2, timeout=2, interval=0.01)
        first, second = folder / f"first{attempt}.jpg", folder / f"second{attempt}.jpg"
        first.write_bytes(b"1")
        stamp = folder.stat().st_ctime_ns
        assert stamp % 1_000_000_000 == 0, "not a 1 s file system"
        seen = [e.src_path for e in tree.poll() or []]
        assert str(first) in seen
        second.write_bytes(b"2")
        if folder.stat().st_ctime_ns != stamp:
            continue  # the second boundary came between: not the case under test, try again
        later = [e.src_path for e in tree.poll() or []]
        assert str(second) in later, "the second name of one second was missed"
        break
    else:
        pytest.fail("could not make two changes within one second in 10 tries")


# ---- a real daemon -----------------------------------------------------------------------------


def test_a_polling_daemon_renders_new_photos_and_removes_thumbnails_of_deleted_ones(project, start_daemon):
    edit_config(project, "  settle_seconds: 0.3", "  settle_seconds: 0.3\n  observer: polling\n  poll_interval: 0.2")
    photos = project / "photos"
    (photos / "trip" / "day1").mkdir(parents=True)
    make_flat_jpeg(photos / "trip" / "day1" / "old.jpg", (200, 30, 30))
    daemon = start_daemon()
    daemon.wait_ready()
    daemon.wait_log(r"polling .*photos: 3 folder\(s\)")  # photos, trip, trip/day1; not thumbs
    thumbs = project / "photos" / "thumbs"
    wait_for(lambda: (thumbs / "trip" / "day1" / "old.jpg").exists(), message="the catch-up renders the photo there at start")
    make_flat_jpeg(photos / "trip" / "day1" / "new.jpg", (30, 200, 30))
    (photos / "later").mkdir()
    make_flat_jpeg(photos / "later" / "blue.jpg", (30, 30, 200))
    wait_for(lambda: (thumbs / "trip" / "day1" / "new.jpg").exists() and (thumbs / "later" / "blue.jpg").exists())
    assert max(mean_colour(thumbs / "trip" / "day1" / "new.jpg")) == mean_colour(thumbs / "trip" / "day1" / "new.jpg")[1]
    assert max(mean_colour(thumbs / "later" / "blue.jpg")) == mean_colour(thumbs / "later" / "blue.jpg")[2]
    daemon.wait_log(r"\bok \S*later/blue\.jpg")  # its ok line follows its thumbnail: count after both
    daemon.wait_log(r"\bok \S*day1/new\.jpg")
    before = len(daemon.matching(r"\bok /"))
    os.rename(photos / "trip", photos / "journey")
    wait_for(lambda: (thumbs / "journey" / "day1" / "new.jpg").exists() and not (thumbs / "trip").exists(),
             message="a renamed folder takes its thumbnails along")
    (photos / "later" / "blue.jpg").unlink()
    wait_for(lambda: not (thumbs / "later" / "blue.jpg").exists())
    assert len(daemon.matching(r"\bok /")) == before, "the rename re-rendered nothing:\n" + daemon.text()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0, daemon.text()


def test_the_first_listing_reports_files_changed_moments_ago(tree, monkeypatch):
    """The start's catch-up walk runs beside the first listing: a photo that arrives in a folder
    the walk has passed and the listing has not yet reached would be in neither's report."""
    events = tree.tree.baseline()
    assert sorted(os.path.relpath(e.src_path, tree.root) for e in events) == sorted(
        f"{folder}/p{i}.jpg" for folder in ("a", "b", "b/c", "d") for i in range(3))
    import watcher.poller

    monkeypatch.setattr(watcher.poller, "BASELINE_MARGIN", -60.0)  # as if every file were older than the margin
    quiet = PolledTree(str(tree.root), lister=os.scandir, descend=lambda entry: True)
    assert quiet.baseline() == []


def test_a_file_system_unmounted_below_a_polled_folder_deletes_nothing(ext4_1s, tmp_path, caplog):
    """Absence is not deletion: a disk mounted on a subfolder goes away (umount -l, a stale
    share). The name now leads to the empty folder below, and the parent did not change."""
    root = tmp_path / "photos"
    (root / "local").mkdir(parents=True)
    (root / "local" / "a.jpg").write_bytes(b"x")
    (ext4_1s / "trip").mkdir()
    (ext4_1s / "trip" / "b.jpg").write_bytes(b"x")
    (ext4_1s / "c.jpg").write_bytes(b"x")
    mount_point = root / "disk"
    mount_point.mkdir()
    subprocess.run(["mount", "--bind", str(ext4_1s), str(mount_point)], check=True)
    try:
        tree = Tree(root)
        tree.start()
        assert sorted(tree.tree.root.dirs) == ["disk", "local"] and tree.tree.files == 3
        subprocess.run(["umount", "-l", str(mount_point)], check=True)
        assert tree.poll() == [], "an unmounted disk's photos are not deleted ones"
        assert tree.poll() == []
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and str(mount_point) in warnings[0], warnings
        subprocess.run(["mount", "--bind", str(ext4_1s), str(mount_point)], check=True)
        # a later second than the folder's last change (this test's clock is the hand-driven one)
        made = (ext4_1s / "trip").stat().st_ctime
        wait_for(lambda: time.time() >= made + 1.05, timeout=3, interval=0.05)
        (ext4_1s / "trip" / "new.jpg").write_bytes(b"x")
        assert tree.poll() == [("FileCreatedEvent", "disk/trip/new.jpg", "")], "back: polled as before"
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
