"""The Celery backend against a real Redis and real `thumbwatch worker` processes.

Two worker processes started from the CLI stand in for two render hosts; the master side is a
CeleryExecutor driven by the loop executor.py documents. The oracle for "rendered once" is the
outcome stream in Redis, written by the render hosts, not the executor's own bookkeeping.
"""

from __future__ import annotations

import json
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from helpers import make_jpeg, wait_for, write_config

redis = pytest.importorskip("redis", reason="the celery extra is not installed (pip install -e '.[test]')")
pytest.importorskip("celery", reason="the celery extra is not installed (pip install -e '.[test]')")

from watcher.config import ConfigError, load  # noqa: E402
from watcher.executor import Failed, Job, Rendered, Returned, TimedOut  # noqa: E402
from watcher.paths import PathRules  # noqa: E402
from watcher.render import RenderSettings  # noqa: E402

pytestmark = pytest.mark.timeout(90)

CONFIG = """\
watch:
  paths: [photos]
  create: true
output:
  sizes:
    - {{name: small, width: 48, height: 48}}
workers:
  count: {count}
  backend: celery
  max_retries: 1
  queue_size: {queue_size}
limits:
  photo_timeout: {photo_timeout}
  worker_memory_mb: 0
state:
  dir: state
log:
  level: info
celery:
  broker: {url}
  queue: q{queue}
  visibility_timeout: {vt}
  batch: 4
"""


@pytest.fixture
def cfg(tmp_path: Path, redis_url: str):
    def make(*, count: int = 1, queue_size: int = 1000, photo_timeout: float = 2, vt: float = 4) -> Path:
        (tmp_path / "photos").mkdir(exist_ok=True)
        text = CONFIG.format(url=redis_url, count=count, queue_size=queue_size, photo_timeout=photo_timeout, vt=vt, queue=os.getpid())
        return write_config(tmp_path / "config.yaml", text)

    return make


class Workers:
    """`thumbwatch worker` processes, each in its own session; all killed (by group) at the end."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, config: Path, name: str) -> subprocess.Popen:
        log = open(self.tmp_path / f"{name}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "watcher", "worker", "-c", str(config), "--name", name],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.tmp_path)
        log.close()
        self.procs[name] = proc
        wait_for(lambda: b"INFO ready: render host" in self.log(name) or proc.poll() is not None, timeout=30, message=f"worker {name} ready")
        assert proc.poll() is None, self.log(name).decode()
        return proc

    def log(self, name: str) -> bytes:
        return (self.tmp_path / f"{name}.log").read_bytes()

    def kill_group(self, name: str) -> None:
        try:
            os.killpg(self.procs[name].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.procs[name].wait(10)

    def stop_all(self) -> None:
        for name in self.procs:
            self.kill_group(name)


@pytest.fixture
def workers(tmp_path: Path):
    w = Workers(tmp_path)
    yield w
    w.stop_all()


class Master:
    """A CeleryExecutor driven exactly as executor.py's loop shows."""

    def __init__(self, config_path: Path):
        from watcher.celery_backend import CeleryExecutor

        self.config = load(config_path, base_dir=config_path.parent)
        self.rules = PathRules(self.config)
        self.settings = RenderSettings(self.config.output, self.config.limits.max_pixels)
        self.executor = CeleryExecutor(self.config)
        self.executor.start()
        self.todo: list[Job] = []
        self.outcomes: list = []
        self.next_id = 0

    def add(self, paths: list[Path]) -> list[Job]:
        jobs = []
        for path in paths:
            st = os.stat(path)
            self.next_id += 1
            jobs.append(Job(self.next_id, str(path), st.st_size, st.st_mtime_ns, self.rules.targets(str(path)), st.st_ino))
        self.todo.extend(jobs)
        return jobs

    def step(self, timeout: float = 0.5) -> None:
        ex = self.executor
        while ex.capacity() and self.todo:
            ex.submit(self.todo.pop(0), self.settings)
        deadline = ex.next_deadline()
        wait = timeout if deadline is None else max(0.0, min(timeout, deadline - time.monotonic()))
        ready = multiprocessing.connection.wait(ex.waitables(), wait)
        self.outcomes.extend(ex.collect(ready, time.monotonic()))

    def run_until_done(self, count: int, timeout: float) -> list:
        deadline = time.monotonic() + timeout
        while len(self.outcomes) < count:
            assert time.monotonic() < deadline, f"{len(self.outcomes)} of {count} outcomes after {timeout} s"
            self.step()
        return self.outcomes

    def close(self) -> None:
        self.executor.stop_now()


@pytest.fixture
def masters():
    made: list[Master] = []

    def make(config_path: Path) -> Master:
        m = Master(config_path)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def photos(folder: Path, count: int, prefix: str = "p", size: tuple[int, int] = (160, 120)) -> list[Path]:
    return [make_jpeg(folder / f"{prefix}{i:04d}.jpg", *size) for i in range(count)]


def stream(url: str, queue: str) -> list[dict]:
    client = redis.Redis.from_url(url)
    entries = client.xrange(f"tw:{queue}:outcomes")
    client.close()
    return [json.loads(fields[b"m"]) for _id, fields in entries]


def renders_per_photo(url: str, queue: str) -> dict[str, int]:
    """From the render hosts' own reports: how many times each photo version was really rendered."""
    counts: dict[str, int] = {}
    for m in stream(url, queue):
        if m["k"] == "ok" and not m.get("again"):
            counts[m["key"]] = counts.get(m["key"], 0) + 1
    return counts


def assert_valid_thumbnails(jobs: list[Job]) -> None:
    for job in jobs:
        for target in job.targets:
            with Image.open(target.path) as im:
                im.load()
                assert im.size == (48, 36), (target.path, im.size)
                r, g, b = im.convert("RGB").getpixel((1, 1))
                assert r > 180 and g < 90 and b < 90, f"{target.path}: top-left not red: {(r, g, b)}"
            assert os.stat(target.path).st_mtime_ns == job.mtime_ns
        leftovers = [n for n in os.listdir(os.path.dirname(job.targets[0].path)) if n.startswith(".")]
        assert not leftovers, leftovers


def test_config_refuses_a_visibility_timeout_below_twice_the_photo_timeout(tmp_path: Path):
    (tmp_path / "photos").mkdir()
    path = write_config(tmp_path / "c.yaml", "watch: {paths: [photos]}\nlimits: {photo_timeout: 60}\ncelery: {visibility_timeout: 100}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: celery.visibility_timeout: expected at least 2 x limits.photo_timeout = 120 s"):
        load(path, base_dir=tmp_path)
    write_config(path, "watch: {paths: [photos]}\ncelery: {broker: 'amqp://localhost'}\n")
    with pytest.raises(ConfigError, match=r"celery.broker: expected a Redis URL"):
        load(path, base_dir=tmp_path)
    write_config(path, "watch: {paths: [photos]}\nworkers: {backend: dask}\n")
    with pytest.raises(ConfigError, match=r"workers.backend: expected one of local, celery"):
        load(path, base_dir=tmp_path)
    assert load(write_config(path, "watch: {paths: [photos]}\n"), base_dir=tmp_path).workers.backend == "local"


def test_a_burst_spreads_over_two_render_hosts_each_photo_rendered_once(cfg, workers, masters, tmp_path, redis_url):
    config = cfg(count=1, queue_size=20)
    workers.start(config, "w1")
    workers.start(config, "w2")
    m = masters(config)
    jobs = m.add(photos(tmp_path / "photos", 500))
    seen_outstanding = 0
    deadline = time.monotonic() + 60
    while len(m.outcomes) < len(jobs):
        assert time.monotonic() < deadline
        m.step()
        seen_outstanding = max(seen_outstanding, len(m.executor.task_keys))
    assert seen_outstanding <= 20, "more tasks outstanding than workers.queue_size"
    assert all(isinstance(o, Rendered) for o in m.outcomes), [o for o in m.outcomes if not isinstance(o, Rendered)][:3]
    assert sorted(o.job.id for o in m.outcomes) == sorted(j.id for j in jobs)
    hosts = {o.host for o in m.outcomes}
    assert hosts == {"w1", "w2"}, hosts
    counts = renders_per_photo(redis_url, f"q{os.getpid()}")
    assert len(counts) == 500 and set(counts.values()) == {1}
    assert_valid_thumbnails(jobs)
    assert m.executor.describe()["render_hosts"].keys() == {"w1", "w2"}


def test_a_render_host_killed_mid_burst_loses_nothing(cfg, workers, masters, tmp_path):
    config = cfg(count=1, vt=4)
    workers.start(config, "w1")
    workers.start(config, "w2")
    m = masters(config)
    jobs = m.add(photos(tmp_path / "photos", 120, size=(1600, 1200)))
    wait_for(lambda: m.step() or any(o.host == "w2" for o in m.outcomes), timeout=30, message="w2 rendering")
    workers.kill_group("w2")  # the whole host: its main process and its pool child, at once
    killed_at = time.monotonic()
    m.run_until_done(len(jobs), timeout=40)
    took = time.monotonic() - killed_at
    assert all(isinstance(o, Rendered) for o in m.outcomes)
    assert sorted(o.job.id for o in m.outcomes) == sorted(j.id for j in jobs)
    assert took < 4 + 15, f"the dead host's photos took {took:.1f} s to re-run (visibility_timeout 4 s)"
    assert_valid_thumbnails(jobs)


def test_a_second_watcher_on_the_same_tree_joins_instead_of_queueing_again(cfg, workers, masters, tmp_path, redis_url):
    config = cfg(count=2)
    paths = photos(tmp_path / "photos", 60)
    a, b = masters(config), masters(config)
    jobs_a, jobs_b = a.add(paths), b.add(paths)
    for _ in range(3):  # both publish before any render host runs
        a.step(0.05)
        b.step(0.05)
    workers.start(config, "w1")
    deadline = time.monotonic() + 40
    while len(a.outcomes) < 60 or len(b.outcomes) < 60:
        assert time.monotonic() < deadline, (len(a.outcomes), len(b.outcomes))
        a.step(0.1)
        b.step(0.1)
    assert all(isinstance(o, Rendered) for o in a.outcomes + b.outcomes)
    counts = renders_per_photo(redis_url, f"q{os.getpid()}")
    assert len(counts) == 60 and set(counts.values()) == {1}, "a photo was rendered twice"
    assert_valid_thumbnails(jobs_a)
    assert len(jobs_b) == 60


def test_a_photo_that_keeps_killing_its_worker_is_failed_after_max_retries(cfg, workers, masters, tmp_path, redis_url):
    config = cfg(count=1, photo_timeout=10, vt=20)
    workers.start(config, "w1")
    m = masters(config)
    poison = tmp_path / "photos" / "poison.jpg"
    Image.effect_noise((3000, 3000), 64).convert("RGB").save(poison, "PNG")  # slow: a full PNG decode
    good = photos(tmp_path / "photos", 3)
    [poison_job] = m.add([poison])
    m.add(good)
    client = redis.Redis.from_url(redis_url)
    prefix = f"tw:q{os.getpid()}:"
    from watcher.celery_backend import photo_key

    key = photo_key(poison_job.path, poison_job.size, poison_job.mtime_ns, poison_job.ino)
    kills = 0
    deadline = time.monotonic() + 60
    while len(m.outcomes) < 4:
        assert time.monotonic() < deadline, m.outcomes
        m.step(0.05)
        for name in client.scan_iter(match=prefix + "inhand:*"):
            value = client.get(name)
            if value and value.decode().startswith(key):
                os.kill(int(value.split()[1]), signal.SIGKILL)  # the pool process rendering it
                kills += 1
                wait_for(lambda: not client.exists(name), timeout=10, message="the parent noting the death")
    client.close()
    [failed] = [o for o in m.outcomes if o.job.path == str(poison)]
    assert isinstance(failed, Failed), failed
    assert failed.reason.startswith("worker died on it 2 times (killed by SIGKILL"), failed.reason
    assert kills == 2
    assert sum(isinstance(o, Rendered) for o in m.outcomes) == 3
    lost = [x for x in stream(redis_url, f"q{os.getpid()}") if x["k"] == "lost"]
    assert len(lost) == 2 and all(x["h"] == "w1" for x in lost)


def test_a_photo_over_the_time_limit_is_timed_out_on_the_render_host(cfg, workers, masters, tmp_path):
    config = cfg(count=1, photo_timeout=0.3, vt=4)
    workers.start(config, "w1")
    m = masters(config)
    slow = tmp_path / "photos" / "slow.jpg"
    Image.effect_noise((4000, 4000), 64).convert("RGB").save(slow, "PNG")
    jobs = m.add([slow] + photos(tmp_path / "photos", 3))
    m.run_until_done(4, timeout=40)
    [out] = [o for o in m.outcomes if o.job.path == str(slow)]
    assert isinstance(out, TimedOut) and out.limit == 0.3, out
    assert sum(isinstance(o, Rendered) for o in m.outcomes) == 3
    assert not os.path.exists(jobs[0].targets[0].path)


def test_the_broker_restarted_mid_burst_loses_nothing(cfg, workers, masters, tmp_path, redis_server, caplog):
    config = cfg(count=2, vt=4)
    workers.start(config, "w1")
    m = masters(config)
    jobs = m.add(photos(tmp_path / "photos", 150, size=(1200, 900)))
    wait_for(lambda: m.step() or len(m.outcomes) >= 10, timeout=30, message="rendering started")
    redis_server.restart()  # no persistence: queued tasks and job keys are gone
    m.run_until_done(len(jobs), timeout=60)
    assert sorted(o.job.id for o in m.outcomes if isinstance(o, Rendered)) == sorted(j.id for j in jobs)
    assert_valid_thumbnails(jobs)


def test_sigterm_to_a_render_host_is_a_warm_shutdown(cfg, workers, masters, tmp_path):
    config = cfg(count=1, vt=4)
    w1 = workers.start(config, "w1")
    m = masters(config)
    jobs = m.add(photos(tmp_path / "photos", 60, size=(1600, 1200)))
    wait_for(lambda: m.step() or len(m.outcomes) >= 3, timeout=30, message="rendering started")
    w1.send_signal(signal.SIGTERM)
    assert w1.wait(30) == 0, workers.log("w1").decode()[-2000:]
    assert b"Warm shutdown" in workers.log("w1")
    workers.start(config, "w2")  # the rest goes back to the queue, w2 renders it at once
    m.run_until_done(len(jobs), timeout=40)
    assert sorted(o.job.id for o in m.outcomes if isinstance(o, Rendered)) == sorted(j.id for j in jobs)
    assert_valid_thumbnails(jobs)


def test_drain_returns_what_was_not_published_and_waits_for_the_rest(cfg, workers, masters, tmp_path):
    config = cfg(count=1, queue_size=2)
    workers.start(config, "w1")
    m = masters(config)
    jobs = m.add(photos(tmp_path / "photos", 40))
    m.step(0.01)
    m.executor.drain()
    assert m.executor.capacity() == 0
    deadline = time.monotonic() + 20
    while not m.executor.finished():
        assert time.monotonic() < deadline
        m.step(0.1)
    returned = [o for o in m.outcomes if isinstance(o, Returned)]
    rendered = [o for o in m.outcomes if isinstance(o, Rendered)]
    assert len(rendered) == 8 and len(returned) == 0, "queue_size 2 tasks x batch 4 were published"
    assert len(m.todo) == 32
    assert_valid_thumbnails([o.job for o in rendered])
    assert len(jobs) == 40
