"""The master driven step by step in-process: admission and the supervisor with a fake executor
and a fake clock. Real files in tmp_path; no processes, no observers, no waiting on time.

The end-to-end tests (test_daemon.py, test_faults.py) prove the same behaviours with real
workers; these pin down the decisions themselves, in every interleaving, in milliseconds.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import pytest

from helpers import make_jpeg
from watcher.config import parse
from watcher.events import Notice
from watcher.scan import Scanner
from watcher.executor import Crashed, Failed, Job, Lost, OutputBlocked, Rendered, Returned, TimedOut, Vanished
from watcher.service import Service


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeExecutor:
    """Takes up to `slots` jobs; the test decides each one's outcome with finish()."""

    def __init__(self, slots: int = 2):
        self.slots = slots
        self.taken: list[Job] = []
        self.outcomes: list = []
        self.draining = False
        self.stopped_now = False
        self.explode = False

    def start(self) -> None:
        pass

    def capacity(self) -> int:
        return 0 if self.draining else self.slots - len(self.taken)

    def submit(self, job: Job, settings) -> None:
        self.taken.append(job)

    def waitables(self) -> list:
        return []

    def collect(self, ready, now) -> list:
        if self.explode:
            raise RuntimeError("a bug in the loop")
        out, self.outcomes = self.outcomes, []
        return out

    def next_deadline(self):
        return None

    def in_flight(self) -> int:
        return len(self.taken)

    def in_hand(self) -> int:
        return len(self.taken)

    def resize(self, count: int) -> None:
        self.slots = count

    def set_limits(self, **_limits) -> None:
        pass

    def drain(self) -> None:
        self.draining = True

    def finished(self) -> bool:
        return not self.taken and not self.outcomes

    def stop_now(self) -> list:
        self.stopped_now = True
        held, self.taken = self.taken, []
        return [Returned(job) for job in held]

    def describe(self) -> dict:
        return {"workers": []}

    def summary(self) -> str:
        return f"{self.slots} fake slots"

    def finish(self, path: str, outcome_type=Rendered, **fields):
        job = next(j for j in self.taken if j.path == path)
        self.taken.remove(job)
        if outcome_type is Rendered:
            for target in job.targets:  # what a worker would have written
                Path(target.path).parent.mkdir(parents=True, exist_ok=True)
                Path(target.path).write_bytes(b"thumb")
                st = os.stat(job.path)
                os.utime(target.path, ns=(st.st_atime_ns, st.st_mtime_ns))
            fields = {"ms": 5.0, "outputs": tuple(t.path for t in job.targets), **fields}
        self.outcomes.append(outcome_type(job, **fields))
        return job


@pytest.fixture
def master(tmp_path):
    (tmp_path / "photos").mkdir()
    config = parse(
        {
            "watch": {"paths": ["photos"], "settle_seconds": 2},
            "output": {"sizes": [{"name": "small", "width": 64, "height": 64}]},
            "workers": {"count": 2, "max_retries": 2, "drain_timeout": 5},
            "state": {"dir": "state"},
        },
        file=tmp_path / "config.yaml", base_dir=tmp_path,
    )
    (tmp_path / "state").mkdir()
    clock = Clock()
    svc = Service(config, executor=FakeExecutor(), clock=clock, base_dir=tmp_path)
    svc.clock_ = clock
    svc.admission.wallclock = lambda: clock.now + 10_000_000_000  # every file is old enough to render
    yield svc
    svc.pipe.close()


def photo(svc: Service, name: str) -> str:
    path = svc.rules.roots[0] + "/" + name
    make_jpeg(path)
    return path


def step(svc: Service, advance: float = 0.0) -> None:
    svc.clock_.now += advance
    svc.step(timeout=0)


def taken(svc: Service) -> list[str]:
    return [job.path for job in svc.executor.taken]


# ---- admission: one place, one decision ---------------------------------------------------------


def test_a_photo_is_in_exactly_one_place_as_it_moves_through(master):
    a = photo(master, "a.jpg")
    assert master.admission.where(a) is None
    master.admission.settle(a)
    assert master.admission.where(a) == "settling"
    step(master, 2.5)  # settled: queued and straight away handed out
    assert master.admission.where(a) == "in-flight" and taken(master) == [a]
    master.executor.finish(a)
    step(master)
    assert master.admission.where(a) is None and master.stats.done == 1


def test_delete_then_create_of_the_same_name_ends_with_the_new_file_rendered(master):
    a = photo(master, "a.jpg")
    master.executor.slots = 0  # nothing dispatched yet: the job waits in the queue
    master.admission.arrived(a)
    os.unlink(a)
    photo(master, "a.jpg")  # recreated before the master hears of the delete
    master.admission.deleted(a)
    assert master.admission.where(a) == "queued", "an older delete notice must not discard the newer job"
    master.executor.slots = 2
    step(master)
    assert taken(master) == [a]


def test_a_real_delete_discards_the_queued_job_and_removes_the_thumbnails(master):
    a = photo(master, "a.jpg")
    master.admission.arrived(a)
    step(master)
    master.executor.finish(a)
    step(master)
    thumb = master.rules.targets(a)[0].path
    assert os.path.exists(thumb)
    master.executor.slots = 0
    master.admission.arrived(a)
    os.unlink(a)
    master.admission.deleted(a)
    assert master.admission.where(a) is None and not os.path.exists(thumb)


def test_replaced_by_a_file_with_the_same_name_size_and_mtime_is_rendered_again(master, tmp_path):
    a = photo(master, "a.jpg")
    master.admission.arrived(a)
    step(master)
    master.executor.finish(a)
    step(master)
    st = os.stat(a)
    assert master.admission.fresh(st, master.rules.targets(a))
    other = tmp_path / "other.jpg"
    other.write_bytes(Path(a).read_bytes())  # same size
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime (cp -p, touch -r)
    os.rename(other, a)  # mv over it: a new ctime nobody can fake
    assert not master.admission.fresh(os.stat(a), master.rules.targets(a))


def test_settling_waits_for_the_file_to_hold_still(master):
    a = photo(master, "a.jpg")
    master.admission.settle(a)
    step(master, 1.0)
    with open(a, "ab") as f:
        f.write(b"more")
    step(master, 1.5)  # changed: the clock starts again
    assert master.admission.where(a) == "settling"
    step(master, 2.5)
    assert taken(master) == [a]


def test_a_new_file_waits_for_its_close_write_and_then_goes_at_once(master):
    a = photo(master, "a.jpg")
    master.admission.created(a)  # being written, as far as the master can tell
    step(master, 1.0)
    assert master.admission.where(a) == "settling" and taken(master) == []
    master.admission.arrived(a)  # closed after writing: no need to wait out settle_seconds
    step(master)
    assert taken(master) == [a]


def test_a_hard_link_goes_at_once_and_one_whose_other_name_is_gone_is_not_lost(master, tmp_path):
    staged = tmp_path / "staged.jpg"
    make_jpeg(staged)
    linked = master.rules.roots[0] + "/linked.jpg"
    os.link(staged, linked)
    master.admission.created(linked)  # two names: complete, and no close-write will come
    assert master.admission.where(linked) == "queued"

    make_jpeg(staged := tmp_path / "staged2.jpg")
    orphan = master.rules.roots[0] + "/orphan.jpg"
    os.link(staged, orphan)
    os.unlink(staged)  # `ln staged x.jpg; rm staged`, done before the master looked
    master.admission.created(orphan)  # one name now: looks like a new file, never closed after writing
    step(master, 1.0)
    assert master.admission.where(orphan) == "settling"
    step(master, 1.5)  # held still for settle_seconds: queued all the same
    assert sorted(taken(master)) == sorted([linked, orphan])


def test_a_photo_in_flight_when_its_folder_is_renamed_is_looked_at_again_under_its_new_name(master):
    root = master.rules.roots[0]
    os.mkdir(root + "/trip")
    a = photo(master, "trip/a.jpg")
    master.admission.arrived(a)
    step(master)
    assert taken(master) == [a]
    os.rename(root + "/trip", root + "/trip-2024")
    master.notices.append(Notice("dir-moved", root + "/trip", root + "/trip-2024"))
    os.rename(root + "/trip-2024", root + "/trip-2025")  # and again, before the first outcome is in
    master.notices.append(Notice("dir-moved", root + "/trip-2024", root + "/trip-2025"))
    step(master)
    master.executor.finish(a, Vanished, reason="vanished while being thumbnailed")  # the worker's check
    step(master)
    assert taken(master) == [root + "/trip-2025/a.jpg"]


def test_a_renamed_folders_thumbnails_merge_into_a_thumbnail_folder_already_made_under_the_new_name(master):
    root = master.rules.roots[0]
    for name in ("a.jpg", "b.jpg"):
        photo(master, "trip/" + name)
    thumbs = {name: master.rules.targets(f"{root}/trip/{name}")[0].path for name in ("a.jpg", "b.jpg")}
    for path in thumbs.values():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"old name")
    os.rename(root + "/trip", root + "/trip-2024")
    newer = Path(master.rules.targets(f"{root}/trip-2024/b.jpg")[0].path)
    newer.parent.mkdir(parents=True)
    newer.write_bytes(b"rendered under the new name")  # before the master heard of the rename
    master.notices.append(Notice("dir-moved", root + "/trip", root + "/trip-2024"))
    step(master)
    assert sorted(os.listdir(newer.parent)) == ["a.jpg", "b.jpg"] and newer.read_bytes() == b"rendered under the new name"
    assert not os.path.exists(os.path.dirname(thumbs["a.jpg"])), "the old thumbnail folder must not stay behind"


def test_a_walk_of_one_folder_sweeps_the_thumbnails_of_photos_not_in_it_and_nothing_else(master):
    root = master.rules.roots[0]
    photo(master, "trip/a.jpg")
    thumbs = {name: Path(master.rules.targets(f"{root}/{name}")[0].path) for name in ("trip/a.jpg", "trip/b.jpg", "other/c.jpg")}
    for path in thumbs.values():  # b.jpg and c.jpg are not there: their thumbnails are orphans
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"thumb")
    report = Scanner(master.admission, lambda path: None, lambda report: None).scan("new folder", (root + "/trip",), master.rules)
    assert report.orphans == 1 and not thumbs["trip/b.jpg"].exists()
    assert thumbs["trip/a.jpg"].exists() and thumbs["other/c.jpg"].exists(), "only the walked folder's thumbnails are judged"


def test_a_failure_while_the_file_is_young_settles_quietly_instead_of_failing(master, caplog):
    a = photo(master, "a.jpg")
    master.admission.arrived(a)
    step(master)
    master.admission.wallclock = lambda: os.stat(a).st_mtime + 0.5  # written half a second ago
    master.executor.finish(a, Failed, reason="truncated JPEG")
    with caplog.at_level(logging.INFO, logger="watcher"):
        step(master)
    assert master.admission.where(a) == "settling"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING] and len(master.failures) == 0


def test_lost_workers_retry_the_photo_then_fail_it_with_the_count(master, caplog):
    a = photo(master, "a.jpg")
    master.admission.arrived(a)
    step(master)
    with caplog.at_level(logging.INFO, logger="watcher"):
        for attempt in range(1, 4):
            assert taken(master) == [a], f"attempt {attempt}"
            master.executor.finish(a, Lost, worker="pid=1", how="killed by SIGKILL")
            step(master)
    assert master.admission.where(a) is None
    assert master.failures.items()[0][1].reason.startswith("worker died on it 3 times (killed by SIGKILL")
    assert [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()][-1].endswith("(attempt 3 of 3)")


def test_returned_work_is_not_an_attempt_and_goes_out_first(master):
    a, b = photo(master, "a.jpg"), photo(master, "b.jpg")
    master.executor.slots = 1
    master.admission.arrived(a)
    master.admission.arrived(b)
    step(master)
    job = master.executor.finish(a, Returned)
    step(master)
    assert taken(master) == [a] and master.executor.taken[0].attempts == job.attempts == 0


def test_output_block_probes_one_photo_at_a_time_with_back_off(master, caplog):
    paths = [photo(master, f"p{i}.jpg") for i in range(4)]
    for p in paths:
        master.admission.arrived(p)
    step(master)
    first, second = taken(master)
    with caplog.at_level(logging.INFO, logger="watcher"):
        master.executor.finish(first, OutputBlocked, reason="No space left on device", errno=28)
        master.executor.finish(second, OutputBlocked, reason="No space left on device", errno=28)
        step(master)
        assert taken(master) == [], "blocked: nothing goes out before the first probe time"
        step(master, 1.1)
        assert len(taken(master)) == 1, "one probe"
        probe = taken(master)[0]
        master.executor.finish(probe, OutputBlocked, reason="No space left on device", errno=28)
        step(master, 1.1)
        assert taken(master) == [], "blocked again: the delay doubled to 2 s"
        step(master, 1.0)
        assert taken(master) == [], "1 s into a 2 s delay"
        step(master, 1.0)
        assert len(taken(master)) == 1
        master.executor.finish(taken(master)[0])
        step(master)
    assert len(taken(master)) == 2, "unblocked: full speed again"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["cannot write thumbnails: No space left on device; holding photos and retrying with back-off"]
    assert any("can be written again" in r.getMessage() for r in caplog.records)


def test_timed_out_and_crashed_photos_are_recorded_and_the_rest_goes_on(master):
    a, b, c = photo(master, "a.jpg"), photo(master, "b.jpg"), photo(master, "c.jpg")
    for p in (a, b, c):
        master.admission.arrived(p)
    step(master)
    master.executor.finish(a, TimedOut, limit=30.0)
    master.executor.finish(b, Crashed, traceback="Traceback: boom")
    step(master)
    reasons = dict((p, f.reason) for p, f in master.failures.items())
    assert reasons == {a: "timed out after 30 s", b: "internal error (see the log)"}
    assert taken(master) == [c]


def test_a_failed_photo_loses_its_old_thumbnail(master):
    a = photo(master, "a.jpg")
    master.admission.arrived(a)
    step(master)
    master.executor.finish(a)
    step(master)
    thumb = master.rules.targets(a)[0].path
    with open(a, "r+b") as f:
        f.truncate(100)  # now broken
    master.admission.arrived(a)
    step(master)
    master.executor.finish(a, Failed, reason="truncated JPEG")
    step(master)
    assert not os.path.exists(thumb), "a thumbnail of what the file held before shows the wrong picture"


def test_vanished_photo_is_not_a_failure(master):
    a = photo(master, "a.jpg")
    master.admission.arrived(a)
    step(master)
    os.unlink(a)
    master.executor.finish(a, Vanished, reason="vanished while being thumbnailed")
    step(master)
    assert master.stats.vanished == 1 and len(master.failures) == 0


# ---- the supervisor --------------------------------------------------------------------------


def test_one_handler_per_signal_and_a_second_term_forces_the_stop(master):
    a = photo(master, "a.jpg")
    master.admission.arrived(a)
    step(master)
    master.on_signal(signal.SIGTERM, None)
    step(master)
    assert master.stopping and not master.forced
    master.on_signal(signal.SIGINT, None)
    master._handle_signals()
    assert master.forced
    assert master.drain() == 0
    assert master.executor.stopped_now, "a forced stop does not wait for the photo in hand"


def test_drain_waits_for_the_photo_in_hand_and_saves_state(master):
    a, b = photo(master, "a.jpg"), photo(master, "b.jpg")
    master.admission.arrived(a)
    master.admission.arrived(b)
    step(master)
    master.executor.finish(b, Failed, reason="corrupt JPEG data")
    master.on_signal(signal.SIGTERM, None)
    step(master)
    master.executor.finish(a)  # the photo in hand finishes while draining
    assert master.drain() == 0
    assert not master.executor.stopped_now and master.stats.done == 1
    assert "b.jpg" in (Path(master.config.state.dir) / "failures.json").read_text()


def test_a_bug_in_the_loop_still_drains_and_saves_state(master, caplog):
    a = photo(master, "a.jpg")
    master.admission._fail(a, os.stat(a), "corrupt JPEG data")
    master.executor.explode = True
    master.start = lambda: None  # no observers or scanner threads: the loop alone
    with caplog.at_level(logging.INFO, logger="watcher"):
        assert master.run() == 1
    assert any(r.levelno == logging.ERROR and "bug in the main loop" in r.getMessage() and r.exc_info for r in caplog.records)
    assert master.executor.draining
    assert "a.jpg" in (Path(master.config.state.dir) / "failures.json").read_text()


class RaisingHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise FileNotFoundError(2, "No such file or directory")


def test_a_log_call_that_raises_cannot_keep_the_pills_from_the_workers(master, caplog):
    """A handler that raises (Python 3.11's WatchedFileHandler did, its folder removed: logsetup.py
    fences it now) must not keep drain() from telling the executor to drain first: a worker
    without its pill keeps the process from ever exiting."""
    handler = RaisingHandler()
    logger = logging.getLogger("watcher")
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="watcher"), pytest.raises(FileNotFoundError):
            master.drain()
    finally:
        logger.removeHandler(handler)
    assert master.executor.draining


def test_reload_during_a_backlog_keeps_the_queue_and_resizes(master, tmp_path):
    paths = [photo(master, f"p{i}.jpg") for i in range(6)]
    master.executor.slots = 0
    for p in paths:
        master.admission.arrived(p)
    master.config.source.write_text(
        "watch: {paths: [photos], settle_seconds: 2}\n"
        "output: {sizes: [{name: small, width: 64, height: 64}]}\n"
        "workers: {count: 3, max_retries: 2, drain_timeout: 5}\n"
        "state: {dir: state}\n"
    )
    master.on_signal(signal.SIGHUP, None)
    step(master)
    assert master.config.workers.count == 3 and master.executor.slots == 3
    assert sorted(taken(master)) == sorted(paths[:3]) and master.admission.waiting() == 3


def test_reload_keeps_failure_records_not_yet_saved(master):
    a = photo(master, "a.jpg")
    master.admission._fail(a, os.stat(a), "corrupt JPEG data")
    master.config.source.write_text("watch: {paths: [photos]}\nstate: {dir: state}\n")
    master.reload()
    assert [p for p, _f in master.failures.items()] == [a]


def test_photos_cleared_by_retry_go_to_the_live_lane_at_reload(master):
    from watcher.jobs import LIVE
    from watcher.state import FailureStore

    a = photo(master, "a.jpg")
    master.admission._fail(a, os.stat(a), "corrupt JPEG data")
    master.failures.save()
    other = FailureStore(master.config.state.dir)  # what `thumbwatch retry` does
    other.load()
    other.clear()
    other.save(force=True)
    master.executor.slots = 0
    master.config.source.write_text("watch: {paths: [photos]}\nstate: {dir: state}\n")
    master.reload()
    assert len(master.failures) == 0 and master.admission.queue.lane_of(a) == LIVE


def test_a_photo_seen_again_while_in_flight_is_rendered_once_at_a_time_then_looked_at_again(master):
    a = photo(master, "a.jpg")
    master.admission.arrived(a)
    step(master)
    assert taken(master) == [a]
    master.admission.arrived(a)  # rewritten while it was rendered
    step(master)
    assert taken(master) == [a], "never two renders of one photo at once"
    assert master.admission.where(a) == "in-flight"
    master.executor.finish(a)
    os.utime(a, ns=(1, 1))  # what the rewrite left: the thumbnail just written is stale
    step(master)
    assert taken(master) == [a], "looked at again once the first render was in"


def test_a_config_error_found_only_on_starting_exits_78_without_a_traceback(master, caplog):
    from watcher.config import EX_CONFIG, ConfigError

    def start():
        raise ConfigError("metrics.port: expected a free port, 9101 is taken")

    master.start = start
    with caplog.at_level(logging.INFO, logger="watcher"):
        assert master.run() == EX_CONFIG
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == ["config error: metrics.port: expected a free port, 9101 is taken"]
    assert not any(r.exc_info for r in errors)


# ---- a change of attributes alone (issue 19) ----------------------------------------------------


def rendered(svc: Service, name: str) -> str:
    """A photo with thumbnails that show it, as a worker would have left them."""
    path = photo(svc, name)
    svc.admission.arrived(path)
    step(svc)
    svc.executor.finish(path)
    step(svc)
    assert svc.admission.fresh(os.stat(path), svc.rules.targets(path))
    return path


def after_ctime_of(path: str, tmp: Path) -> None:
    """Return once the kernel's ctime clock (coarse: a few ms) has moved past `path`'s ctime."""
    probe, deadline = tmp / "ctime-probe", time.monotonic() + 5
    while True:
        probe.write_bytes(b"")
        if os.stat(probe).st_ctime_ns > os.stat(path).st_ctime_ns:
            return
        assert time.monotonic() < deadline, "the ctime clock did not move in 5 s"


def test_an_attribute_change_restamps_the_thumbnails_without_a_render(master, tmp_path):
    a = rendered(master, "a.jpg")
    thumb = master.rules.targets(a)[0].path
    before = os.stat(thumb)
    after_ctime_of(thumb, tmp_path)
    os.chmod(a, 0o640)  # a new ctime, the same content
    assert not master.admission.fresh(os.stat(a), master.rules.targets(a)), "the freshness rule sees the new ctime"
    master.notices.append(Notice("attrib", a))
    step(master)
    step(master, 1.0)
    assert master.stats.restamped == 0, "not at once: an event for a write right after may be on its way"
    from watcher.roots import MARKER

    master.notices.append(Notice("barrier", os.path.join(master.rules.roots[0], MARKER)))  # the root's marker, touched by the master
    step(master)
    assert taken(master) == [] and master.stats.restamped == 1
    assert master.admission.fresh(os.stat(a), master.rules.targets(a))
    after = os.stat(thumb)
    assert (after.st_mtime_ns, after.st_size, after.st_ino) == (before.st_mtime_ns, before.st_size, before.st_ino)


def test_an_attribute_change_of_a_photo_in_hand_looks_again_after_its_render(master):
    a = photo(master, "a.jpg")
    master.admission.arrived(a)
    step(master)
    assert taken(master) == [a]
    os.chmod(a, 0o640)
    master.notices.append(Notice("attrib", a))
    step(master)
    assert taken(master) == [a] and master.stats.restamped == 0, "one render at a time, nothing re-stamped"
    master.executor.finish(a)
    os.utime(a, ns=(1, 1))  # the render read what the attribute change left behind: stale now
    step(master)
    assert taken(master) == [a], "looked at again once the render was in"


def test_a_same_mtime_rewrite_right_after_an_attribute_change_is_rendered_not_restamped(master, tmp_path):
    """chmod, then cp -p of another picture of the same size and mtime into the same file: by the
    time the master reads the chmod's notice the rewrite may be on disk already, its own notice
    still on the way. The re-stamp waits, and the rewrite's arrival cancels it."""
    a = rendered(master, "a.jpg")
    after_ctime_of(master.rules.targets(a)[0].path, tmp_path)
    os.chmod(a, 0o640)
    st = os.stat(a)
    with open(a, "r+b") as f:  # another picture, same size, in place
        f.write(b"\xff\xd8\xff\xe0" + os.urandom(64))
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    master.notices.append(Notice("attrib", a))
    step(master)
    master.notices.append(Notice("arrived", a))  # the rewrite's close-write, read a moment later
    step(master, 2.5)
    assert master.stats.restamped == 0 and taken(master) == [a]


def test_an_attribute_change_that_moved_the_mtime_renders(master):
    a = rendered(master, "a.jpg")
    os.utime(a, ns=(10**18, 10**18))  # touch -d: the thumbnail no longer carries the photo's mtime
    master.notices.append(Notice("attrib", a))
    step(master)
    assert taken(master) == [a] and master.stats.restamped == 0


def test_an_attribute_change_of_a_photo_settling_or_queued_restamps_nothing(master, tmp_path):
    a = rendered(master, "a.jpg")
    b = rendered(master, "b.jpg")
    master.executor.slots = 0
    after_ctime_of(master.rules.targets(b)[0].path, tmp_path)
    os.chmod(a, 0o640)
    os.chmod(b, 0o640)
    master.admission.settle(a)  # a poll saw it change: it may be being written
    master.admission.arrived(b)  # closed after writing: queued
    master.notices.extend([Notice("attrib", a), Notice("attrib", b)])
    step(master)
    assert master.stats.restamped == 0
    assert master.admission.where(a) == "settling" and master.admission.where(b) == "queued"
    master.executor.slots = 2
    step(master, 2.5)
    assert sorted(taken(master)) == sorted([a, b]), "both rendered: what was pending goes on as before"


def test_a_restamp_waits_for_its_roots_barrier_and_a_write_before_it_cancels_the_restamp(master, tmp_path):
    """With a marker in the root (roots.py), the master touches it and re-stamps only once that
    touch's event is back: inotify delivers it after every event from before, however late."""
    from watcher.roots import MARKER, write_marker

    root = master.rules.roots[0]
    assert write_marker(root)
    marker = os.path.join(root, MARKER)
    a, b = rendered(master, "a.jpg"), rendered(master, "b.jpg")
    after_ctime_of(master.rules.targets(b)[0].path, tmp_path)
    os.chmod(a, 0o640)
    os.chmod(b, 0o640)
    master.notices.extend([Notice("attrib", a), Notice("attrib", b)])
    step(master)
    before = os.stat(marker).st_ctime_ns
    step(master, 10.0)
    assert master.stats.restamped == 0, "no barrier back yet: however long it takes"
    assert os.stat(marker).st_ctime_ns > before, "the barrier was sent: the marker touched"
    st = os.stat(b)  # b rewritten in place with the same size and mtime, its close-write behind the barrier
    with open(b, "r+b") as f:
        f.write(b"\xff\xd8\xff\xe0" + os.urandom(64))
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    master.notices.extend([Notice("arrived", b), Notice("barrier", marker)])
    step(master)
    assert master.stats.restamped == 1 and master.admission.fresh(os.stat(a), master.rules.targets(a))
    assert taken(master) == [b], "the rewrite is rendered, not re-stamped"


def test_without_a_marker_to_touch_a_restamp_waits_two_seconds_and_gives_up_after_a_minute(tmp_path):
    from watcher.settling import Restamps

    clock = Clock()
    restamps = Restamps(clock)
    (tmp_path / "root").mkdir()
    photo = tmp_path / "root" / "a.jpg"
    photo.write_bytes(b"x")
    restamps.wait(str(photo), os.stat(photo), str(tmp_path / "root"))  # no .thumbwatch-root there
    assert restamps.due() == [] and len(restamps) == 1
    clock.now += 2.5
    assert restamps.due() == [(str(photo), os.stat(photo).st_ctime_ns)] and len(restamps) == 0
    from watcher.roots import write_marker

    other = tmp_path / "other"
    other.mkdir()
    assert write_marker(str(other))
    restamps.wait(str(photo), os.stat(photo), str(other))
    clock.now += 30
    assert restamps.due() == [], "a barrier was sent: it waits for it"
    clock.now += 31
    assert restamps.due() == [(str(photo), None)], "a minute without the barrier: looked at as after a write"


# ---- a file created and not yet closed: a paused writer is not a truncated photo ------------------


def half_written(svc: Service, name: str) -> tuple[str, bytes]:
    """A photo whose writer has written its first half and paused, the file still open."""
    path = photo(svc, name)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return path, data


# what the real decoders said of files cut short (the HEIC and DNG ones do not say "truncated")
CUT_SHORT = ["truncated JPEG", "corrupt HEIF (Invalid input: No 'meta' box: Cannot read full meta box)",
             "not a camera RAW that LibRaw can read (unsupported or corrupt)",
             "truncated or incomplete video (no moov box: the index an MP4 muxer writes last)"]


@pytest.mark.parametrize("reason", CUT_SHORT)
def test_a_new_file_whose_writer_pauses_past_settle_seconds_fails_quietly_until_its_close_write(master, caplog, reason):
    """The fallback renders a new file that held still for settle_seconds (it may be a hard link
    that will never be closed after writing); failing before its close-write came, it is not
    failed: it waits for its close-write (or a minute), and the close-write renders it."""
    from watcher.settling import UNCLOSED_PATIENCE

    a, data = half_written(master, "a.jpg")
    master.admission.created(a)
    with caplog.at_level(logging.DEBUG, logger="watcher"):
        step(master, 2.5)  # held still for settle_seconds: the fallback renders it
        assert taken(master) == [a]
        master.executor.finish(a, Failed, reason=reason)
        step(master)
        assert master.admission.where(a) == "settling" and len(master.failures) == 0 and master.stats.failed == 0
        step(master, UNCLOSED_PATIENCE - 1)  # paused longer still: not rendered again half-way
        assert taken(master) == [] and master.admission.where(a) == "settling"
        with open(a, "ab") as f:
            f.write(data[len(data) // 2:])
        master.admission.arrived(a)  # its close-write: at once
        step(master)
        assert taken(master) == [a]
        master.executor.finish(a)
        step(master)
    assert master.admission.where(a) is None and master.stats.done == 1 and len(master.failures) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]
    assert any("failed before its close-write" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


def test_a_new_file_never_closed_is_failed_after_a_minute_without_a_change(master, caplog):
    """An upload that died half-way: its failure is said once it held still for UNCLOSED_PATIENCE
    (a write meanwhile starts that wait again), not at every pause."""
    from watcher.settling import UNCLOSED_PATIENCE

    a, data = half_written(master, "a.jpg")
    master.admission.created(a)
    step(master, 2.5)
    master.executor.finish(a, Failed, reason="truncated JPEG")
    step(master)
    step(master, UNCLOSED_PATIENCE - 10)
    with open(a, "ab") as f:
        f.write(data[len(data) // 2 : len(data) * 3 // 4])  # the writer went on, then stopped for good
    step(master, 1)  # the change is seen
    step(master, UNCLOSED_PATIENCE - 1)
    assert taken(master) == [], "a change starts the minute again"
    with caplog.at_level(logging.INFO, logger="watcher"):
        step(master, 2)
        assert taken(master) == [a]
        master.executor.finish(a, Failed, reason="truncated JPEG")
        step(master)
    assert master.admission.where(a) is None and master.failures.items()[0][1].reason == "truncated JPEG"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [f"failed {a}: truncated JPEG"]


def test_a_file_closed_after_writing_fails_at_once_and_a_corrupt_one_published_by_ln_rm_a_minute_later(master, tmp_path, caplog):
    """What the hold is not for: a file whose close-write came fails at once. The price of it: a
    corrupt photo published by `ln staged x.jpg; rm staged` (no close-write will come) is said to
    fail once, a minute later, and is not rendered in between."""
    from watcher.settling import UNCLOSED_PATIENCE

    a = photo(master, "a.jpg")
    master.admission.created(a)
    master.admission.arrived(a)  # closed after writing: complete, as far as anyone can tell
    step(master)
    master.executor.finish(a, Failed, reason="truncated JPEG")
    staged = tmp_path / "staged.jpg"
    staged.write_bytes(b"\xff\xd8\xff\xe0 not really")
    b = master.rules.roots[0] + "/b.jpg"
    os.link(staged, b)
    os.unlink(staged)
    master.admission.created(b)
    step(master, 2.5)
    master.executor.finish(b, Failed, reason="corrupt JPEG header")
    step(master)
    assert [path for path, _failure in master.failures.items()] == [a] and master.admission.where(b) == "settling"
    step(master, UNCLOSED_PATIENCE - 1)
    assert taken(master) == []
    with caplog.at_level(logging.INFO, logger="watcher"):
        step(master, 2)
        master.executor.finish(b, Failed, reason="corrupt JPEG header")
        step(master)
    assert sorted(path for path, _failure in master.failures.items()) == sorted([a, b])
    assert master.admission.where(a) is None and master.admission.where(b) is None
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [f"failed {a}: truncated JPEG",
                                                                                        f"failed {b}: corrupt JPEG header"]
