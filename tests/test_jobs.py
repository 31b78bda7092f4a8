"""The queue between producers and dispatcher: coalescing, bounded, never blocking the observer."""

import threading

from watcher.jobs import JobQueue


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
    q.offer("a")
    stop = threading.Event()
    result = []
    t = threading.Thread(target=lambda: result.append(q.put("b", stop)))
    t.start()
    assert q.pop() == "a"
    t.join(5)
    assert result == [True] and q.pop() == "b"
    q.offer("c")
    stop.set()
    assert q.put("d", stop) is False
