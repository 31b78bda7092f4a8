"""The Celery executor's bookkeeping in-process, in milliseconds: claims and dedupe, batch sizing,
backpressure, deadlines, the audit after a broker loss, Returned vs Lost, republishing.

Redis is a small fake of exactly the commands the master side uses (SET NX/EX, GET, EXISTS,
XADD/XREAD/XREVRANGE, XINFO STREAM, INFO, HGETALL, pipelines), with a switch for "the broker is
down" and one for "restarted without its data"; Celery's producer is a list of sent tasks. The
listener thread runs for real against the fake. tests/celery runs the same executor against a
real Redis and real render hosts.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import make_jpeg, wait_for, write_config

redis = pytest.importorskip("redis", reason="the celery extra is not installed (pip install -e '.[test]')")
pytest.importorskip("celery", reason="the celery extra is not installed (pip install -e '.[test]')")

from watcher.backends import results  # noqa: E402
from watcher.backends.celery import wire  # noqa: E402
from watcher.backends.celery.executor import AUDIT_EVERY, BOUNCES_WARN, CeleryExecutor  # noqa: E402
from watcher.config import load  # noqa: E402
from watcher.executor import Failed, Job, Rendered, Returned, TimedOut  # noqa: E402
from watcher.paths import PathRules  # noqa: E402
from watcher.render import RenderSettings  # noqa: E402

pytestmark = pytest.mark.timeout(30)


class FakeRedis:
    """What redis-py returns for the commands the master uses, on one lock; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.values: dict[str, bytes] = {}
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.streams: dict[str, list[tuple[bytes, dict[bytes, bytes]]]] = {}
        self.seq = 0
        self.run_id = "run-1"
        self.down = False
        self.reads_held = False  # the listener's XREAD sees nothing new while set
        self.closing = False  # XREAD returns at once: the test is over

    # -- switches for the tests

    def restart_empty(self) -> None:
        with self.lock:
            self.values.clear()
            self.hashes.clear()
            self.streams.clear()
            self.run_id = f"run-{int(self.run_id[4:]) + 1}"
            self.lock.notify_all()

    def hold_reads(self, held: bool) -> None:
        with self.lock:
            self.reads_held = held
            self.lock.notify_all()

    def _check(self) -> None:
        if self.down:
            raise redis.ConnectionError("Connection refused (the fake is down)")

    # -- commands

    def info(self, section: str) -> dict:
        with self.lock:
            self._check()
            return {"run_id": self.run_id}

    def exists(self, *names: str) -> int:
        with self.lock:
            self._check()
            return sum(int(name in self.values or name in self.streams or name in self.hashes) for name in names)

    def set(self, name: str, value: str, nx: bool = False, ex: int | None = None) -> bool | None:
        with self.lock:
            self._check()
            if nx and name in self.values:
                return None
            self.values[name] = value.encode() if isinstance(value, str) else value
            return True

    def get(self, name: str) -> bytes | None:
        with self.lock:
            self._check()
            return self.values.get(name)

    def delete(self, *names: str) -> int:
        with self.lock:
            self._check()
            return sum(self.values.pop(n, None) is not None for n in names)

    def hgetall(self, name: str) -> dict:
        with self.lock:
            self._check()
            return dict(self.hashes.get(name, {}))

    def xadd(self, name: str, fields: dict, maxlen: int | None = None, approximate: bool = True) -> bytes:
        with self.lock:
            self._check()
            self.seq += 1
            entry_id = f"1-{self.seq}".encode()
            self.streams.setdefault(name, []).append((entry_id, {k.encode(): v.encode() for k, v in fields.items()}))
            self.lock.notify_all()
            return entry_id

    def xinfo_stream(self, name: str) -> dict:
        with self.lock:
            self._check()
            return {"last-generated-id": self.streams[name][-1][0]}

    def xrevrange(self, name: str, count: int) -> list:
        with self.lock:
            self._check()
            return list(reversed(self.streams.get(name, [])))[:count]

    def xread(self, streams: dict, count: int, block: int) -> list:
        [(name, last)] = streams.items()
        deadline = time.monotonic() + block / 1000
        with self.lock:
            while True:
                self._check()
                if last in ("$", b"$"):
                    last = self.streams[name][-1][0] if self.streams.get(name) else b"0-0"
                after = wire.stream_id(last)
                new = [e for e in self.streams.get(name, []) if wire.stream_id(e[0]) > after][:count]
                if new and not self.reads_held:
                    return [[name.encode(), new]]
                left = deadline - time.monotonic()
                if left <= 0 or self.closing:
                    return []
                self.lock.wait(left)

    def pipeline(self, transaction: bool = False) -> "FakePipeline":
        return FakePipeline(self)

    def close(self) -> None:
        pass


class FakePipeline:
    def __init__(self, client: FakeRedis):
        self.client = client
        self.calls: list = []

    def __getattr__(self, name: str):
        def queue(*args, **kwargs):
            self.calls.append((name, args, kwargs))

        return queue

    def execute(self) -> list:
        with self.client.lock:
            self.client._check()
            return [getattr(self.client, name)(*args, **kwargs) for name, args, kwargs in self.calls]


class FakeSender:
    """Celery's producer: the tasks it was given; `refuse` makes the next session's sends fail."""

    def __init__(self) -> None:
        self.tasks: list[tuple[str, list, float | None]] = []  # task id, photos, time limit
        self.refuse = 0

    @contextmanager
    def session(self):
        def send(task_id: str, args: tuple, time_limit: float | None, count: int) -> None:
            if self.refuse:
                self.refuse -= 1
                raise wire.OperationalError("refused, as a broker out of memory would")
            photos, _settings, _sizes = args
            assert len(photos) == count
            self.tasks.append((task_id, photos, time_limit))

        yield send

    def keys(self) -> list[str]:
        return [photo[0] for _id, photos, _limit in self.tasks for photo in photos]


class Harness:
    """A CeleryExecutor on the fakes, driven as executor.py's loop shows, with a fake clock for
    its audit; render hosts are played by writing outcomes into the fake's stream."""

    def __init__(self, tmp_path: Path, *, batch: int = 4, queue_size: int = 3):
        (tmp_path / "photos").mkdir(exist_ok=True)
        config_path = write_config(tmp_path / "c.yaml", (
            "watch: {paths: [photos]}\noutput: {sizes: [{name: small, width: 48, height: 48}]}\n"
            f"workers: {{backend: celery, queue_size: {queue_size}}}\nlimits: {{photo_timeout: 5}}\n"
            f"celery: {{broker: 'redis://127.0.0.1:1/0', queue: qtest, batch: {batch}, visibility_timeout: 10}}\n"))
        self.tmp_path = tmp_path
        self.config = load(config_path, base_dir=tmp_path)
        self.rules = PathRules(self.config)
        self.settings = RenderSettings(self.config.output, self.config.limits.max_pixels)
        self.redis = FakeRedis()
        self.sender = FakeSender()
        self.keys = wire.Keys("qtest")
        self.now = 1000.0
        self.executor = CeleryExecutor(self.config, client=self.redis, listener_client=self.redis, sender=self.sender)
        self.executor.start()
        self.next_id = 0

    def job(self, name: str, *, same_as: Job | None = None) -> Job:
        if same_as is not None:
            self.next_id += 1
            return Job(self.next_id, same_as.path, same_as.size, same_as.mtime_ns, same_as.targets, same_as.ino)
        path = self.tmp_path / "photos" / name
        if not path.exists():
            make_jpeg(path, 64, 48)
        st = os.stat(path)
        self.next_id += 1
        return Job(self.next_id, str(path), st.st_size, st.st_mtime_ns, self.rules.targets(str(path)), st.st_ino)

    def submit(self, *jobs: Job) -> None:
        for job in jobs:
            self.executor.submit(job, self.settings)

    def flush(self) -> None:
        self.executor.waitables()  # what the loop calls before it sleeps: publishes the batch

    def collect(self, advance: float = 0.0) -> list:
        self.now += advance
        return self.executor.collect([], self.now)

    def collect_until(self, count: int, advance: float = 0.0) -> list:
        got: list = []

        def enough() -> bool:
            got.extend(self.collect(advance))
            return len(got) >= count

        wait_for(enough, timeout=5, message=f"{count} outcome(s)")
        return got

    def key(self, job: Job) -> str:
        return wire.photo_key(job.path, job.size, job.mtime_ns, job.ino)

    def host_reports(self, job: Job, result: results.Result, host: str = "r1") -> None:
        """What a render host does: the outcome on the stream, then the job key deleted."""
        self.redis.xadd(self.keys.outcomes, {"m": wire.outcome_message(result, self.key(job), host, 4242)})
        self.redis.delete(self.keys.job(self.key(job)))

    def note(self, message: dict) -> None:
        self.redis.xadd(self.keys.outcomes, {"m": json.dumps({"v": results.WIRE_VERSION, **message})})

    def close(self) -> None:
        with self.redis.lock:
            self.redis.closing = True
            self.redis.lock.notify_all()
        self.executor.stop_now()


@pytest.fixture
def h(tmp_path: Path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def done(job: Job) -> results.Done:
    return results.Done(tuple(t.path for t in job.targets), 12.0)


# ---- claims and dedupe ----------------------------------------------------------------------


def test_the_same_photo_version_is_published_once_and_every_job_for_it_gets_the_outcome(h):
    a = h.job("a.jpg")
    twin = h.job("", same_as=a)
    h.submit(a, twin)
    h.flush()
    assert h.sender.keys() == [h.key(a)]
    assert h.redis.get(h.keys.job(h.key(a))).decode().startswith(f"{os.uname().nodename}:{os.getpid()}:")
    h.host_reports(a, done(a))
    outcomes = h.collect_until(2)
    assert sorted(o.job.id for o in outcomes) == [a.id, twin.id]
    assert all(isinstance(o, Rendered) and o.host == "r1" and o.ms == 12.0 for o in outcomes)
    assert h.executor.in_flight() == 0 and h.executor.finished()


def test_a_photo_another_watcher_queued_is_joined_not_published_again(h):
    a, b = h.job("a.jpg"), h.job("b.jpg")
    h.redis.set(h.keys.job(h.key(a)), "other-master:1:abc")
    h.submit(a, b)
    h.flush()
    assert h.sender.keys() == [h.key(b)], "a is another watcher's: joined"
    assert h.executor.in_hand() == 2
    h.host_reports(a, done(a), host="r2")
    [outcome] = h.collect_until(1)
    assert isinstance(outcome, Rendered) and outcome.job.id == a.id and outcome.host == "r2"


def test_a_claim_of_ours_whose_message_never_left_is_sent(h):
    a = h.job("a.jpg")
    h.redis.set(h.keys.job(h.key(a)), h.executor.batcher.token)  # claimed, then the broker went away
    h.submit(a)
    h.flush()
    assert h.sender.keys() == [h.key(a)]


# ---- batch sizing and backpressure ----------------------------------------------------------


def test_tasks_hold_at_most_celery_batch_photos_and_never_more_than_queue_size_are_out(h):
    assert h.executor.capacity() == 3 * 4
    jobs = [h.job(f"p{i}.jpg") for i in range(12)]
    h.submit(*jobs)
    assert h.executor.capacity() == 0, "queue_size 3 x batch 4 taken"
    h.flush()
    assert [len(photos) for _id, photos, _limit in h.sender.tasks] == [4, 4, 4]
    assert all(limit == 5 * (4 + 1) + 10 for _id, _photos, limit in h.sender.tasks), "a task's hard time limit covers its photos"
    assert h.executor.capacity() == 0
    for job in jobs[:3]:
        h.host_reports(job, done(job))
    h.collect_until(3)
    assert h.executor.capacity() == 0, "a task with a photo unreported is still out"
    h.host_reports(jobs[3], done(jobs[3]))
    h.collect_until(1)
    assert h.executor.capacity() == 4, "one task done: room for one more task"


def test_a_task_carries_one_set_of_render_settings(h):
    a, b = h.job("a.jpg"), h.job("b.jpg")
    h.executor.submit(a, h.settings)
    h.executor.submit(b, RenderSettings(h.config.output, h.config.limits.max_pixels + 1))  # a reload
    h.flush()
    assert [len(photos) for _id, photos, _limit in h.sender.tasks] == [1, 1]


def test_a_partial_batch_waits_for_more_until_the_master_sleeps(h):
    jobs = [h.job(f"p{i}.jpg") for i in range(3)]
    h.submit(*jobs)
    assert h.sender.tasks == [], "submit alone does not publish a partial batch"
    h.flush()
    assert [len(photos) for _id, photos, _limit in h.sender.tasks] == [3]


def test_a_refused_publish_holds_the_photos_takes_nothing_new_and_sends_them_once_the_broker_answers(h, caplog):
    caplog.set_level(logging.INFO, logger="watcher.backends.celery")
    jobs = [h.job(f"p{i}.jpg") for i in range(6)]
    h.sender.refuse = 1
    h.submit(*jobs)
    h.flush()
    assert h.sender.tasks == [] and not h.executor.broker_up
    assert h.executor.capacity() == 0, "backpressure while the broker is away"
    assert h.executor.in_flight() == 6, "held, not lost"
    wait_for(lambda: h.collect() == [] and h.executor.broker_up, timeout=5, message="the listener says the broker answers again")
    h.flush()
    assert sorted(h.sender.keys()) == sorted(h.key(j) for j in jobs)
    assert [r.levelname for r in caplog.records if "broker" in r.getMessage()] == ["ERROR", "INFO"], caplog.text


def test_the_broker_down_at_the_claim_holds_everything_and_resumes(h):
    jobs = [h.job(f"p{i}.jpg") for i in range(5)]
    h.submit(*jobs)
    h.redis.down = True
    h.flush()
    assert h.sender.tasks == [] and h.executor.in_flight() == 5 and h.executor.capacity() == 0
    h.redis.down = False
    wait_for(lambda: h.collect() == [] and h.executor.broker_up, timeout=5, message="broker back")
    h.flush()
    assert sorted(h.sender.keys()) == sorted(h.key(j) for j in jobs)
    for job in jobs:
        h.host_reports(job, done(job))
    assert sorted(o.job.id for o in h.collect_until(5)) == sorted(j.id for j in jobs)


# ---- deadlines --------------------------------------------------------------------------------


def test_the_next_deadline_is_the_audit_while_photos_are_out_and_none_otherwise(h):
    assert h.executor.next_deadline() is None
    a = h.job("a.jpg")
    h.submit(a)
    h.flush()
    h.collect()
    assert h.executor.next_deadline() == h.now + AUDIT_EVERY
    h.host_reports(a, done(a))
    h.collect_until(1)
    assert h.executor.next_deadline() is None


# ---- the audit after a broker loss, and republishing ------------------------------------------


def test_a_missing_job_key_is_lost_only_once_the_stream_was_read_past_the_check(h, caplog):
    a, b = h.job("a.jpg"), h.job("b.jpg")
    h.submit(a, b)
    h.flush()
    h.collect()  # first audit: both keys there
    assert len(h.sender.tasks) == 1
    h.redis.hold_reads(True)
    h.host_reports(a, done(a))  # a's outcome is in the stream, its key gone: not lost
    h.redis.delete(h.keys.job(h.key(b)))  # b's key gone without an outcome: lost (a Redis that lost data)
    assert h.collect(AUDIT_EVERY) == []
    assert len(h.sender.tasks) == 1, "suspects are not republished before the stream is read past the check"
    assert h.executor.audit.suspects is not None and h.executor.audit.suspects[0] == {h.key(a), h.key(b)}
    h.redis.hold_reads(False)
    outcomes = h.collect_until(1)
    assert [type(o) for o in outcomes] == [Rendered] and outcomes[0].job.id == a.id
    wait_for(lambda: h.collect() == [] and len(h.sender.tasks) == 2, timeout=5, message="b published again")
    assert h.sender.tasks[1][1][0][0] == h.key(b), "b alone was lost, a was reported"
    assert "1 queued photo(s) are no longer in the broker" in caplog.text
    h.host_reports(b, done(b))
    assert [o.job.id for o in h.collect_until(1)] == [b.id]


def test_a_broker_restarted_without_its_data_gets_every_waiting_photo_again(h, caplog):
    caplog.set_level(logging.INFO, logger="watcher.backends.celery")
    jobs = [h.job(f"p{i}.jpg") for i in range(6)]
    h.submit(*jobs)
    h.flush()
    h.collect()
    h.redis.down = True
    wait_for(lambda: h.collect() == [] and not h.executor.broker_up, timeout=5, message="broker loss noticed")
    h.redis.restart_empty()
    h.redis.down = False
    wait_for(lambda: h.collect() == [] and len(h.sender.keys()) == 12, timeout=5, message="all six published again")
    assert sorted(h.sender.keys()[6:]) == sorted(h.key(j) for j in jobs)
    assert "the broker is back (it restarted)" in caplog.text


# ---- what comes back: Returned, not Lost; failures; late duplicates --------------------------


def test_drain_returns_what_was_not_published_and_waits_for_what_was(tmp_path):
    h = Harness(tmp_path, batch=2, queue_size=1)
    try:
        jobs = [h.job(f"p{i}.jpg") for i in range(2)]
        h.submit(*jobs)
        h.flush()
        late = h.job("late.jpg")
        h.executor.batcher.pending.append((late, {}))  # taken while the task was out
        h.executor.drain()
        assert h.executor.capacity() == 0
        outcomes = h.collect()
        assert [(type(o), o.job.id) for o in outcomes] == [(Returned, late.id)]
        assert not h.executor.finished()
        for job in jobs:
            h.host_reports(job, done(job))
        assert all(isinstance(o, Rendered) for o in h.collect_until(2))
        assert h.executor.finished()
    finally:
        h.close()


def test_stop_now_hands_back_everything_as_returned_never_lost(h):
    jobs = [h.job(f"p{i}.jpg") for i in range(5)]
    h.submit(*jobs)
    h.flush()
    outcomes = h.executor.stop_now()
    assert sorted(o.job.id for o in outcomes) == sorted(j.id for j in jobs)
    assert all(type(o) is Returned for o in outcomes)


def test_a_dead_render_process_is_logged_and_the_photo_stays_out_until_its_outcome(h, caplog):
    a = h.job("a.jpg")
    h.submit(a)
    h.flush()
    h.note({"k": "lost", "key": h.key(a), "h": "r1", "pid": 77, "r": "killed by SIGKILL", "n": 1})
    wait_for(lambda: h.collect() == [] and "worker exited pid=77 killed by SIGKILL while rendering" in caplog.text,
             timeout=5, message="the lost line")
    assert h.executor.in_hand() == 1, "the broker hands it out again: no outcome yet"
    h.host_reports(a, results.CannotRender("worker died on it 2 times (killed by SIGKILL)"))
    [failed] = h.collect_until(1)
    assert isinstance(failed, Failed) and failed.reason.startswith("worker died on it 2 times") and failed.host == "r1"


def test_a_time_out_and_an_unreadable_outcome_become_outcomes(h):
    a, b = h.job("a.jpg"), h.job("b.jpg")
    h.submit(a, b)
    h.flush()
    h.host_reports(a, results.OverTime(5.0))
    h.redis.xadd(h.keys.outcomes, {"m": json.dumps({"v": 99, "k": "ok", "key": h.key(b), "h": "r9"})})
    outcomes = {o.job.id: o for o in h.collect_until(2)}
    assert isinstance(outcomes[a.id], TimedOut) and outcomes[a.id].limit == 5.0
    assert isinstance(outcomes[b.id], Failed) and "outcome version 99" in outcomes[b.id].reason


def test_a_late_outcome_for_a_photo_no_one_waits_for_is_ignored(h):
    a = h.job("a.jpg")
    h.host_reports(a, done(a))
    assert h.collect(0.1) == [] and h.collect() == []


# ---- render hosts that cannot see a root ------------------------------------------------------


def test_blind_hosts_are_listed_and_a_photo_bounced_too_often_is_a_warning(h, caplog):
    a = h.job("a.jpg")
    h.submit(a)
    h.flush()
    root = str(h.tmp_path / "photos")
    assert h.sender.tasks[0][1][0][6] == root, "each photo names its root"
    h.note({"k": "blind", "h": "r2", "root": root, "r": "empty"})
    for _ in range(BOUNCES_WARN + 2):
        h.note({"k": "bounced", "h": "r2", "keys": [h.key(a)]})
    wait_for(lambda: h.collect() == [] and h.executor.describe()["blind_hosts"] == {"r2": {root: "empty"}}, timeout=5, message="blind r2")
    assert "cannot see their root: r2" in h.executor.summary()
    warnings = [r for r in caplog.records if "given back" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING" and "r2 (4x)" in warnings[0].getMessage(), caplog.text
    h.note({"k": "sees", "h": "r2", "root": root})
    wait_for(lambda: h.collect() == [] and h.executor.describe()["blind_hosts"] == {}, timeout=5, message="r2 sees again")


def test_summary_names_the_hosts_heard_from(h):
    assert h.executor.summary() == "render hosts (none heard from yet) via redis://127.0.0.1:1/0 queue qtest"
    a = h.job("a.jpg")
    h.submit(a)
    h.flush()
    h.host_reports(a, done(a), host="r1")
    h.collect_until(1)
    assert h.executor.summary() == "render hosts r1 via redis://127.0.0.1:1/0 queue qtest"
