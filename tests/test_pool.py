"""LocalPool in-process: real worker processes on real pipes, each running a small worker function
written here that speaks the pool's messages (messages.py) without rendering, so prefetch,
deadlines, deaths, replacement, poison pills and drains are driven step by step in milliseconds.

A worker reads its instructions from the photo's name (no photo is read):
  ok-*     done at once
  gate-*   says it started (touches <path>.started), then waits for <path>.go, then done
  stuck-*  writes its temp output and never finishes (the pool's deadline must kill it)
  die-*    writes its temp output and is SIGKILLed with the photo in hand
  bug-*    reports a bug (a traceback)
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import wait
from pathlib import Path

import pytest

from watcher.backends import results
from watcher.backends.local import messages as msg
from watcher.backends.local.pool import PREFETCH_BELOW_BYTES, LocalPool
from watcher.config import SizeSpec
from watcher.executor import Crashed, ExecutorBroken, Job, Lost, Rendered, Returned, TimedOut
from watcher.paths import Target, temp_path_for

SMALL = 200_000
BIG = PREFETCH_BELOW_BYTES  # the first size that is not small


# ---- the workers (module level: spawn finds them by name) --------------------------------------


def scripted_worker(conn, memory_mb, draining):
    conn.send(msg.Hello(os.getpid()))
    _serve(conn, draining)


def noting_worker(conn, memory_mb, draining):
    """Says what it could not set up, as the real worker does when the memory cap is refused."""
    conn.send(msg.Hello(os.getpid(), f"memory cap of {memory_mb} MB not set (test)"))
    _serve(conn, draining)


def never_boots(conn, memory_mb, draining):
    os._exit(3)


def _serve(conn, draining):
    settings, settings_sent = None, 0
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        match message:
            case msg.Stop():
                return
            case msg.UseSettings(settings=new):
                settings, settings_sent = new, settings_sent + 1
            case msg.RenderPhoto() if draining.is_set():
                conn.send(msg.NotStarted(message.job_id))
            case msg.RenderPhoto(job_id=job_id, path=path, targets=targets):
                conn.send(_act(job_id, path, targets, f"pid={os.getpid()}", f"settings={settings}", f"sent={settings_sent}"))


def _act(job_id, path, targets, *outputs):
    name = os.path.basename(path)
    if name.startswith("gate-"):
        Path(path + ".started").touch()
        while not os.path.exists(path + ".go"):
            time.sleep(0.002)
    elif name.startswith(("stuck-", "die-")):
        for target in targets:
            Path(temp_path_for(target.path, os.getpid())).touch()
        if name.startswith("die-"):
            os.kill(os.getpid(), signal.SIGKILL)
        while True:
            signal.pause()
    elif name.startswith("bug-"):
        return bug(job_id, "Traceback (most recent call last):\nZeroDivisionError: test")
    return done(job_id, outputs, 1.0)


# How a worker says how a photo ended (the one place to change if that message changes).
def done(job_id, outputs, ms):
    return msg.Finished(job_id, results.Done(outputs, ms))


def bug(job_id, traceback):
    return msg.Finished(job_id, results.Bug(traceback))


# ---- driving the pool as the master does ---------------------------------------------------------


class Photos:
    def __init__(self, folder: Path):
        self.folder = folder
        self.ids = 0

    def job(self, name: str, size: int = SMALL) -> Job:
        self.ids += 1
        target = Target(SizeSpec("small", 64, 64), str(self.folder / "thumbs" / name))
        return Job(self.ids, str(self.folder / name), size, 0, (target,))

    def started(self, job: Job) -> bool:
        return os.path.exists(job.path + ".started")

    def go(self, job: Job) -> None:
        Path(job.path + ".go").touch()

    def temps(self) -> list[str]:
        return sorted(os.listdir(self.folder / "thumbs"))


def run_until(pool: LocalPool, done, timeout: float = 20.0, now=time.monotonic) -> list:
    """The master's loop: wait on the pool's pipes and sentinels, collect, until done(outcomes)."""
    outcomes: list = []
    deadline = time.monotonic() + timeout
    while not done(outcomes):
        assert time.monotonic() < deadline, f"timed out; outcomes so far: {outcomes}; workers: {pool.describe()}"
        outcomes += pool.collect(wait(pool.waitables(), 0.05), now())
    return outcomes


def booted(pool: LocalPool, count: int):
    return lambda _: len(pool.workers) == count and all(w.booted for w in pool.workers)


def pid_of(outcome: Rendered) -> int:
    return int(outcome.outputs[0].removeprefix("pid="))


@pytest.fixture
def photos(tmp_path: Path) -> Photos:
    (tmp_path / "thumbs").mkdir()
    return Photos(tmp_path)


@pytest.fixture
def make_pool():
    pools: list[LocalPool] = []

    def make(count: int, worker=scripted_worker, photo_timeout: float = 30.0, memory_mb: int = 500) -> LocalPool:
        pool = LocalPool(count, memory_mb=memory_mb, photo_timeout=photo_timeout, worker=worker)
        pools.append(pool)
        pool.start()
        return pool

    yield make
    for pool in pools:
        pool.stop_now()
    deadline = time.monotonic() + 5
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not multiprocessing.active_children(), "worker processes outlived the test"


SETTINGS = "settings-1"


# ---- prefetch and capacity -----------------------------------------------------------------------


def test_each_worker_takes_one_photo_before_any_takes_a_second(make_pool, photos):
    pool = make_pool(2)
    assert pool.capacity() == 2
    a, b = photos.job("gate-a.jpg"), photos.job("gate-b.jpg")
    pool.submit(a, SETTINGS)
    pool.submit(b, SETTINGS)
    assert pool.in_hand() == 2 and pool.in_flight() == 2
    assert {len(w.jobs) for w in pool.workers} == {1}, "the emptiest worker gets the photo"
    photos.go(a), photos.go(b)
    outcomes = run_until(pool, lambda o: len(o) == 2)
    assert {type(o) for o in outcomes} == {Rendered}
    assert len({pid_of(o) for o in outcomes}) == 2


def test_prefetch_only_behind_a_small_photo(make_pool, photos):
    pool = make_pool(1)
    first = photos.job("gate-first.jpg", SMALL)
    pool.submit(first, SETTINGS)
    assert pool.capacity() == 1, "behind a small photo the worker takes the next one"
    second = photos.job("gate-second.jpg", BIG)
    pool.submit(second, SETTINGS)
    assert pool.capacity() == 0, "two at most"
    assert pool.in_hand() == 1 and pool.in_flight() == 2
    assert run_until(pool, lambda _: photos.started(first)) == []
    first_deadline = pool.next_deadline()
    photos.go(first)
    (finished,) = run_until(pool, lambda o: len(o) == 1)
    assert finished.job == first and pool.in_hand() == 1
    assert pool.next_deadline() > first_deadline, "the prefetched photo's time limit starts when the one before it ends"
    photos.go(second)
    assert [o.job for o in run_until(pool, lambda o: len(o) == 1)] == [second]

    big = photos.job("gate-big.jpg", BIG)
    pool.submit(big, SETTINGS)
    assert pool.capacity() == 0, "behind a big photo a dropped one would wait a whole render"
    photos.go(big)
    assert [o.job for o in run_until(pool, lambda o: len(o) == 1)] == [big]
    assert pool.capacity() == 1


def test_settings_go_to_each_worker_once_until_they_change(make_pool, photos):
    pool = make_pool(1)
    for name in ("ok-1.jpg", "ok-2.jpg"):
        pool.submit(photos.job(name), SETTINGS)
        run_until(pool, lambda o: len(o) == 1)
    pool.submit(photos.job("ok-3.jpg"), "settings-2")  # a reload
    (last,) = run_until(pool, lambda o: len(o) == 1)
    assert last.outputs[1:] == ("settings=settings-2", "sent=2")


def test_no_capacity_from_a_worker_still_starting_retiring_or_draining(make_pool, photos):
    pool = make_pool(1)
    pool.resize(2)
    assert len(pool.workers) == 2 and pool.capacity() == 1, "the new worker has not said hello yet"
    run_until(pool, booted(pool, 2))
    assert pool.capacity() == 2
    pool.retire(pool.workers[0])
    assert pool.capacity() == 1
    pool.drain()
    assert pool.capacity() == 0
    run_until(pool, lambda _: pool.finished())


# ---- deadlines, deaths, bugs ---------------------------------------------------------------------


def test_a_photo_over_its_time_limit_kills_its_worker_and_a_new_one_starts(make_pool, photos):
    pool = make_pool(1, photo_timeout=30.0)
    stuck, behind = photos.job("stuck-1.jpg"), photos.job("ok-behind.jpg")
    pool.submit(stuck, SETTINGS)
    pool.submit(behind, SETTINGS)
    victim = pool.workers[0]
    temp = temp_path_for(stuck.targets[0].path, victim.pid)
    run_until(pool, lambda _: os.path.exists(temp))
    started = victim.started
    assert pool.next_deadline() == started + 30.0
    assert pool.collect([], started + 29.0) == [], "within its limit"
    assert victim.process.is_alive()

    outcomes = pool.collect([], started + 30.5)
    assert outcomes == [TimedOut(stuck, 30.0), Returned(behind)]
    assert victim.process.exitcode == -signal.SIGKILL
    assert not os.path.exists(temp), "a killed worker's temp output is removed"
    assert victim not in pool.workers and len(pool.workers) == 1, "replaced at once"
    run_until(pool, booted(pool, 1))
    pool.submit(photos.job("ok-after.jpg"), SETTINGS)
    (after,) = run_until(pool, lambda o: len(o) == 1)
    assert isinstance(after, Rendered) and pid_of(after) != victim.pid


def test_a_worker_that_dies_mid_photo_loses_that_photo_only_and_is_replaced(make_pool, photos):
    pool = make_pool(1)
    dying, behind = photos.job("die-1.jpg"), photos.job("ok-behind.jpg")
    pool.submit(dying, SETTINGS)
    pool.submit(behind, SETTINGS)
    victim = pool.workers[0].pid
    outcomes = run_until(pool, lambda o: len(o) == 2)
    assert outcomes[0] == Lost(dying, f"pid={victim}", "killed by SIGKILL (out of memory? the kernel's OOM killer sends SIGKILL)")
    assert outcomes[1] == Returned(behind), "the photo waiting behind it was never started"
    assert photos.temps() == [], "its temp output is removed"
    run_until(pool, booted(pool, 1))
    assert pool.workers[0].pid != victim
    pool.submit(behind, SETTINGS)
    (again,) = run_until(pool, lambda o: len(o) == 1)
    assert isinstance(again, Rendered) and again.job == behind


def test_a_bug_in_the_render_code_is_reported_and_the_worker_goes_on(make_pool, photos):
    pool = make_pool(1)
    buggy = photos.job("bug-1.jpg")
    pool.submit(buggy, SETTINGS)
    pool.submit(photos.job("ok-next.jpg"), SETTINGS)
    crashed, rendered = run_until(pool, lambda o: len(o) == 2)
    assert isinstance(crashed, Crashed) and crashed.job == buggy and "ZeroDivisionError" in crashed.traceback
    assert isinstance(rendered, Rendered) and pid_of(rendered) == pool.workers[0].pid


def test_the_pool_says_what_it_is():
    assert LocalPool(2, memory_mb=500, photo_timeout=30.0).summary() == "2 workers"
    assert LocalPool(1, memory_mb=500, photo_timeout=30.0).summary() == "1 worker"


def test_workers_that_cannot_start_stop_the_pool_instead_of_looping(photos):
    pool = LocalPool(1, memory_mb=500, photo_timeout=30.0, worker=never_boots)
    with pytest.raises(ExecutorBroken, match=r"5 workers in a row died before starting \(last: exit code 3\)"):
        pool.start()
    pool.stop_now()


def test_what_a_worker_could_not_set_up_is_said_once_and_again_when_it_changes(make_pool, photos, caplog):
    caplog.set_level(logging.WARNING, logger="watcher.backends.local.pool")
    pool = make_pool(2, worker=noting_worker, memory_mb=500)
    assert [r.getMessage() for r in caplog.records] == ["memory cap of 500 MB not set (test)"]
    pool.set_limits(memory_mb=600, photo_timeout=30.0)  # for workers started from now on
    pool.resize(3)
    run_until(pool, booted(pool, 3))
    assert [r.getMessage() for r in caplog.records][1:] == ["memory cap of 600 MB not set (test)"]


# ---- poison pills, drain, stop -------------------------------------------------------------------


def test_drain_finishes_the_photo_in_hand_and_hands_back_the_one_waiting(make_pool, photos):
    pool = make_pool(1)
    in_hand, waiting = photos.job("gate-1.jpg"), photos.job("ok-2.jpg")
    pool.submit(in_hand, SETTINGS)
    pool.submit(waiting, SETTINGS)
    worker = pool.workers[0]
    run_until(pool, lambda _: photos.started(in_hand))
    pool.drain()
    assert pool.capacity() == 0 and not pool.finished()
    photos.go(in_hand)
    outcomes = run_until(pool, lambda _: pool.finished())
    assert outcomes == [Rendered(in_hand, 1.0, outcomes[0].outputs), Returned(waiting)]
    assert worker.process.exitcode == 0, "left on its poison pill"
    assert pool.replace_missing() == 0, "a draining pool starts no one"


def test_drain_kills_no_one_for_the_time_limit(make_pool, photos):
    pool = make_pool(1, photo_timeout=30.0)
    slow = photos.job("gate-slow.jpg")
    pool.submit(slow, SETTINGS)
    run_until(pool, lambda _: photos.started(slow))
    pool.drain()
    assert pool.collect([], time.monotonic() + 60) == [], "stopping: the drain limit decides, not the photo's"
    photos.go(slow)
    assert [type(o) for o in run_until(pool, lambda _: pool.finished())] == [Rendered]


def test_shrinking_pills_idle_workers_first_and_a_busy_one_finishes_its_photo(make_pool, photos):
    pool = make_pool(3)
    busy = photos.job("gate-busy.jpg")
    pool.submit(busy, SETTINGS)
    busy_pid = next(w.pid for w in pool.workers if w.jobs)
    pool.resize(1)
    run_until(pool, lambda _: len(pool.workers) == 1)
    assert [w.pid for w in pool.workers] == [busy_pid], "the idle ones went"

    pool.resize(2)
    run_until(pool, booted(pool, 2))
    pool.submit(photos.job("gate-other.jpg"), SETTINGS)
    pool.resize(1)  # both busy now: one takes its pill behind its photo
    retiring = [w for w in pool.workers if w.retiring]
    assert len(retiring) == 1 and retiring[0].jobs
    photos.go(busy)
    for job in [w.job for w in pool.workers]:
        photos.go(job)
    outcomes = run_until(pool, lambda o: len(o) == 2 and len(pool.workers) == 1)
    assert {type(o) for o in outcomes} == {Rendered}, "a pill never costs the photo in hand"
    assert retiring[0].process.exitcode == 0


def test_stop_now_kills_every_worker_and_hands_back_all_it_held(make_pool, photos):
    pool = make_pool(2)
    jobs = [photos.job("stuck-1.jpg"), photos.job("stuck-2.jpg"), photos.job("ok-3.jpg")]
    for job in jobs:
        pool.submit(job, SETTINGS)
    processes = [w.process for w in pool.workers]
    run_until(pool, lambda _: len(photos.temps()) == 2)
    outcomes = pool.stop_now()
    assert sorted(o.job.id for o in outcomes) == [j.id for j in jobs]
    assert all(isinstance(o, Returned) for o in outcomes)
    assert [p.exitcode for p in processes] == [-signal.SIGKILL] * 2
    assert photos.temps() == [] and pool.finished()
