"""The queue between producers and dispatcher: coalescing, bounded, two lanes, never blocking the observer."""

import threading

from watcher.jobs import LIVE, SCAN, JobQueue


def test_duplicates_coalesce_and_order_is_kept():
    q = JobQueue(10)
    for path in ["a", "b", "a", "c", "b"]:
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
