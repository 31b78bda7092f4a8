"""The queue between producers and dispatcher: coalescing, bounded, two lanes, never blocking the
observer, and a live lane that takes turns between folders."""

import os
import random
import threading

import pytest

from PIL import Image

from helpers import corner_colour, heavy, is_blue, jpeg_bytes, make_jpeg, thumb
from watcher.admission import Admission, Stats
from watcher.config import parse
from watcher.jobs import LIVE, SCAN, JobQueue, top_level
from watcher.paths import PathRules
from watcher.state import FailureStore


def test_duplicates_coalesce_and_order_is_kept():
    q = JobQueue(10)
    for path in ["a", "b", "a", "c", "b"]:  # one folder: arrival order
        assert q.offer(path)
    assert [q.pop(), q.pop(), q.pop(), q.pop()] == ["a", "b", "c", None]


def test_full_queue_drops_and_flags_overflow_once_there_is_room():
    q = JobQueue(2)
    assert q.offer("a") and q.offer("b")
    assert not q.offer("c")
    assert not q.take_overflow(), "no room yet for the rescan's findings"
    q.pop()
    assert q.take_overflow()
    assert not q.take_overflow()


def test_put_waits_for_room_and_gives_up_on_stop():
    q = JobQueue(1)
    stop = threading.Event()
    assert q.put("a", stop)
    result = []
    t = threading.Thread(target=lambda: result.append(q.put("b", stop)))
    t.start()
    assert q.pop() == "a"
    t.join(5)
    assert result == [True] and q.pop() == "b"
    assert q.put("c", stop)
    stop.set()
    assert q.put("d", stop) is False


def test_live_events_go_ahead_of_a_full_scan_lane_and_are_never_dropped_for_it():
    q = JobQueue(3)
    stop = threading.Event()
    for name in ["s1", "s2", "s3"]:
        assert q.put(name, stop)
    assert q.offer("live1"), "a scan that filled its lane must not cost a live event its place"
    assert q.lane_of("live1") == LIVE and q.lane_of("s1") == SCAN
    assert q.offer("s2"), "a live event for a path the scan queued moves it ahead"
    assert [q.pop() for _ in range(5)] == ["live1", "s2", "s1", "s3", None]
    assert not q.overflowed


def test_discard_removes_from_either_lane():
    q = JobQueue(3)
    stop = threading.Event()
    q.put("a", stop)
    q.offer("b")
    assert q.discard("a") and q.discard("b") and not q.discard("c")
    assert len(q) == 0


def test_the_master_is_woken_when_work_appears_not_for_every_photo():
    wakes = []
    q = JobQueue(100, lambda: wakes.append(1))
    stop = threading.Event()
    for name in ["a", "b", "c"]:
        q.put(name, stop)
    q.offer("live")
    assert len(wakes) == 1, "a master holding work takes more when a worker comes free"
    while q.pop():
        pass
    q.offer("again")
    assert len(wakes) == 2, "an empty queue that gets work wakes the master"


# ---- the fair live lane -------------------------------------------------------------------------


def drain(q: JobQueue) -> list[str]:
    popped = []
    while (path := q.pop()) is not None:
        popped.append(path)
    return popped


def test_a_photo_dropped_into_another_folder_waits_for_one_import_photo_not_the_import():
    q = JobQueue(1000)
    for i in range(500):
        q.offer(f"/p/import/{i:03d}.jpg")
    q.offer("/p/mine/drop.jpg")
    popped = drain(q)
    assert popped[:3] == ["/p/import/000.jpg", "/p/mine/drop.jpg", "/p/import/001.jpg"]
    assert popped[2:] == [f"/p/import/{i:03d}.jpg" for i in range(1, 500)], "within a folder, arrival order"


def test_folders_take_turns_in_the_order_they_got_work():
    q = JobQueue(100)
    for path in ["/p/a/1", "/p/a/2", "/p/a/3", "/p/b/1", "/p/a/4", "/p/b/2", "/p/c/1", "/p/a/5"]:
        q.offer(path)
    # written from the rule: a, b, c in turn (each to the back after its turn), oldest first in each
    assert drain(q) == ["/p/a/1", "/p/b/1", "/p/c/1", "/p/a/2", "/p/b/2", "/p/a/3", "/p/a/4", "/p/a/5"]


def test_top_level_folders_take_turns_however_many_folders_an_import_spreads_over():
    q = JobQueue(1000, root_of=lambda path: "/p")
    for i in range(5):
        for folder in range(20):  # rsync of a tree: 20 folders of 5
            q.offer(f"/p/alice/{folder:02d}/{i}.jpg")
    q.offer("/p/bob/drop.jpg")
    q.offer("/p/right-in-the-root.jpg")
    popped = drain(q)
    assert popped[:3] == ["/p/alice/00/0.jpg", "/p/bob/drop.jpg", "/p/right-in-the-root.jpg"]
    assert popped[3:23] == [f"/p/alice/{folder:02d}/0.jpg" for folder in range(1, 20)] + ["/p/alice/00/1.jpg"], \
        "inside a top-level folder, its folders take turns"


def test_without_roots_folders_alone_take_turns():
    q = JobQueue(1000)
    for i in range(2):
        for folder in range(3):
            q.offer(f"/p/alice/{folder}/{i}.jpg")
    q.offer("/p/bob/drop.jpg")
    assert drain(q)[:5] == ["/p/alice/0/0.jpg", "/p/alice/1/0.jpg", "/p/alice/2/0.jpg", "/p/bob/drop.jpg", "/p/alice/0/1.jpg"]


def test_inside_one_top_level_folder_its_folders_take_turns():
    q = JobQueue(100, root_of=lambda path: "/p")
    for path in ["/p/2024/trip/1", "/p/2024/trip/2", "/p/2024/trip/3", "/p/2024/party/1", "/p/2024/1"]:
        q.offer(path)
    assert drain(q) == ["/p/2024/trip/1", "/p/2024/party/1", "/p/2024/1", "/p/2024/trip/2", "/p/2024/trip/3"]


def test_top_level_folder_of_a_path():
    # written from the rule: the first folder under the root; the root for a photo right in it
    assert top_level("/srv/photos/alice/2024/trip/a.jpg", "/srv/photos") == "/srv/photos/alice"
    assert top_level("/srv/photos/alice/a.jpg", "/srv/photos") == "/srv/photos/alice"
    assert top_level("/srv/photos/a.jpg", "/srv/photos") == "/srv/photos"
    assert top_level("/elsewhere/a.jpg", None) == ""


def test_admission_queues_by_the_watched_roots_top_level_folders(tmp_path):
    """The wiring: admission gives the queue its roots (a live event goes through arrived())."""
    (tmp_path / "photos").mkdir()
    config = parse({"watch": {"paths": ["photos"]}, "state": {"dir": "state"}}, file=tmp_path / "config.yaml", base_dir=tmp_path)
    admission = Admission(config, PathRules(config), FailureStore(tmp_path / "state"), Stats())
    root = str(tmp_path / "photos")
    for i in range(3):
        for folder in range(4):
            admission.arrived(f"{root}/alice/{folder}/{i}.jpg")
    admission.arrived(f"{root}/bob/drop.jpg")
    assert admission.where(f"{root}/bob/drop.jpg") == "queued"
    assert [admission.queue.pop() for _ in range(2)] == [f"{root}/alice/0/0.jpg", f"{root}/bob/drop.jpg"]


def test_a_folder_that_ran_dry_joins_the_turns_at_the_back():
    q = JobQueue(100)
    for path in ["/p/a/1", "/p/b/1", "/p/b/2"]:
        q.offer(path)
    assert q.pop() == "/p/a/1"
    q.offer("/p/a/2")  # a has nothing waiting: it rejoins behind b
    assert drain(q) == ["/p/b/1", "/p/a/2", "/p/b/2"]


def test_discard_and_moving_from_the_scan_lane_keep_the_turns():
    q = JobQueue(100)
    stop = threading.Event()
    for path in ["/p/a/1", "/p/a/2", "/p/b/1"]:
        q.offer(path)
    q.put("/p/c/1", stop)
    assert q.discard("/p/a/1") and q.discard("/p/b/1") and not q.discard("/p/b/1")
    assert q.lane_of("/p/b/1") is None and q.lengths() == (1, 1)
    q.offer("/p/c/1")  # a live event for a path the scan queued
    assert q.lane_of("/p/c/1") == LIVE and q.lengths() == (2, 0)
    assert drain(q) == ["/p/a/2", "/p/c/1"]


def test_a_full_live_lane_drops_the_newest_of_the_biggest_folder_not_a_newcomer():
    q = JobQueue(4)
    for i in range(1, 5):
        assert q.offer(f"/p/import/{i}")
    assert q.offer("/p/mine/drop"), "another folder's photo gets a place"
    assert q.overflowed, "the dropped one is found again by the overflow rescan"
    assert q.lane_of("/p/import/4") is None and q.lane_of("/p/mine/drop") == LIVE
    assert len(q) == 4, "still bounded"
    assert not q.offer("/p/import/5"), "the biggest folder's own newcomer is the one dropped"
    assert q.offer("/p/other/x") and q.lane_of("/p/import/3") is None
    assert q.offer("/p/more/y") and q.lane_of("/p/import/2") is None
    assert not q.offer("/p/last/z"), "one each: no folder holds more than z's would, so z is dropped, as before"
    assert len(q) == 4
    assert drain(q) == ["/p/import/1", "/p/mine/drop", "/p/other/x", "/p/more/y"]


def test_a_full_lane_drops_from_the_biggest_top_level_folder_first():
    q = JobQueue(4, root_of=lambda path: "/p")
    for path in ["/p/imp/d1/1", "/p/imp/d1/2", "/p/imp/d2/1", "/p/bob/1"]:
        q.offer(path)
    assert q.offer("/p/carol/1") and q.lane_of("/p/imp/d1/2") is None, "imp holds 3: its biggest folder's newest goes"
    assert q.offer("/p/bob/2") is False, "imp 2, bob 1: bob's own newcomer is dropped"
    assert drain(q) == ["/p/imp/d1/1", "/p/bob/1", "/p/carol/1", "/p/imp/d2/1"]


@pytest.mark.parametrize("with_roots", [False, True])
def test_randomized_no_photo_waits_for_more_than_one_turn_of_each_group_ahead_of_it(with_roots):
    """The bound, checked against an independent model of what is waiting: a photo that is the
    first of its group when it arrives (its folder; with roots, its top-level folder) is popped
    after at most one photo of each other group that was waiting then."""
    seed = random.randrange(1 << 32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    q = JobQueue(10_000, root_of=(lambda path: "/p") if with_roots else (lambda path: None))

    def group(path: str) -> str:
        return "/".join(path.split("/")[:3]) if with_roots else os.path.dirname(path)

    arrived: dict[str, tuple[int, set[str]]] = {}  # path -> (pops so far, groups waiting then)
    waiting: dict[str, list[str]] = {}  # each folder's paths, in arrival order
    pops = 0
    for step in range(3000):
        if rng.random() < 0.55:
            top = rng.choice("abcdefg") if rng.random() < 0.3 else "import"
            path = f"/p/{top}/{rng.choice('xyz') if top == 'import' else 'x'}/{step}"
            ahead = {group(paths[0]) for paths in waiting.values() if paths}
            q.offer(path)
            arrived[path] = (pops, ahead)
            waiting.setdefault(os.path.dirname(path), []).append(path)
        else:
            path = q.pop()
            if path is None:
                assert not any(waiting.values()), f"seed={seed}"
                continue
            pops += 1
            folder = os.path.dirname(path)
            assert waiting[folder][0] == path, f"seed={seed}: within a folder, arrival order"
            waiting[folder].pop(0)
            before, ahead = arrived[path]
            if group(path) not in ahead:
                waited = pops - 1 - before
                assert waited <= len(ahead), f"seed={seed}: {path} waited {waited} pops behind {len(ahead)} groups"


def test_daemon_renders_a_drop_into_another_folder_before_most_of_an_rsync_import(project, start_daemon):
    """A real daemon: an rsync-style import (temp name, then rename) of 300 photos into A, then
    one photo written into B: B's ok line comes before most of A's (first come, first served put
    it after nearly all of them)."""
    heavy(project)  # a near-full decode per photo, so the import outruns the workers, as a real one does
    daemon = start_daemon()
    daemon.wait_ready()
    a, b = project / "photos" / "A", project / "photos" / "B"
    a.mkdir(), b.mkdir()
    data = jpeg_bytes(1600, 1200)
    temps = [a / f".a{i:03d}.jpg.Xy12Z{i}" for i in range(300)]  # rsync's temp names: hidden, not photos
    for temp in temps:
        temp.write_bytes(data)
    for i, temp in enumerate(temps):  # written before the clock starts, so 300 renames land at once
        os.rename(temp, a / f"a{i:03d}.jpg")
    make_jpeg(b / "drop.jpg", 1600, 1200)
    daemon.wait_log(r"\bok \S*/A/a\d{3}\.jpg -> |\bok \S*B/drop\.jpg -> ", timeout=90, count=301)
    oks = daemon.matching(r"\bok \S*(/A/a\d{3}|B/drop)\.jpg -> ")
    position = next(i for i, line in enumerate(oks) if "B/drop.jpg" in line)
    assert position < 150, f"B's photo came after {position} of the import's 300"
    assert len(oks) == 301, "each photo once"
    with Image.open(thumb(project, "B/drop.jpg")) as im:
        assert is_blue(corner_colour(im.convert("RGB"), "br")), "B's thumbnail shows B's photo"
