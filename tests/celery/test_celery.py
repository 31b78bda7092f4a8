"""The Celery backend against a real Redis and real `thumbwatch worker` processes.

Two worker processes started from the CLI stand in for two render hosts. The master side is
either a CeleryExecutor driven by the loop executor.py documents (the first half: one step at a
time, its outcomes inspected) or the real master, `python -m watcher run` (the second half: its
log, its status, SIGTERM, a second master). The oracles for "rendered once" are the outcome
stream in Redis, written by the render hosts, and the tasks waiting in the broker's queue, not
the executor's own bookkeeping; every thumbnail is checked for its own photo's colour.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from helpers import Daemon, make_flat_jpeg, make_jpeg, mean_colour, palette, same_colour, temp_files, thumb, wait_for, write_config

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

    def start(self, config: Path, name: str, *, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
        log = open(self.tmp_path / f"{name}.log", "wb")
        proc = subprocess.Popen([*prefix, sys.executable, "-m", "watcher", "worker", "-c", str(config), "--name", name],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.tmp_path,
                                env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # SIGABRT dumps every thread's stack
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
        from watcher.backends.celery.executor import CeleryExecutor

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


def queued_photos(url: str, queue: str) -> list[str]:
    """The photo keys in the tasks waiting in the broker's queue (Celery's message, as stored)."""
    client = redis.Redis.from_url(url)
    messages = client.lrange(queue, 0, -1)
    client.close()
    keys = []
    for raw in messages:
        message = json.loads(raw)
        assert message["properties"]["body_encoding"] == "base64", message["properties"]
        (photos, _settings, _sizes), _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        keys.extend(photo[0] for photo in photos)
    return keys


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
        seen_outstanding = max(seen_outstanding, m.executor.ledger.tasks_out())
    assert seen_outstanding <= 20, "more tasks outstanding than workers.queue_size"
    assert all(isinstance(o, Rendered) for o in m.outcomes), [o for o in m.outcomes if not isinstance(o, Rendered)][:3]
    assert sorted(o.job.id for o in m.outcomes) == sorted(j.id for j in jobs)
    hosts = {o.host for o in m.outcomes}
    assert hosts == {"w1", "w2"}, hosts
    counts = renders_per_photo(redis_url, f"q{os.getpid()}")
    assert len(counts) == 500 and set(counts.values()) == {1}
    assert_valid_thumbnails(jobs)
    assert m.executor.describe()["render_hosts"].keys() == {"w1", "w2"}


def session_pids(proc: subprocess.Popen) -> set[int]:
    """The processes of a worker started in its own session: its main process and its pool."""
    pids = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                if entry.isdigit() and int(f.read().rsplit(b")", 1)[1].split()[3]) == proc.pid:
                    pids.add(int(entry))
        except OSError:
            continue
    return pids


def test_a_render_host_killed_mid_burst_loses_nothing(cfg, workers, masters, tmp_path, redis_url):
    config = cfg(count=1, vt=4)
    workers.start(config, "w1")
    w2 = workers.start(config, "w2")
    m = masters(config)
    jobs = m.add(photos(tmp_path / "photos", 120, size=(1600, 1200)))
    client = redis.Redis.from_url(redis_url)

    def w2_holds_a_task() -> bool:
        """Frozen (SIGSTOP) while it holds a photo whose outcome it has not sent: the key goes
        with the outcome, in one pipeline. Checked unfrozen, it could finish before the kill."""
        m.step(0.01)
        os.killpg(w2.pid, signal.SIGSTOP)
        pids = session_pids(w2)
        if any(int(v.split()[1]) in pids for v in map(client.get, client.scan_iter(match=f"tw:q{os.getpid()}:inhand:*")) if v):
            return True
        os.killpg(w2.pid, signal.SIGCONT)
        return False

    wait_for(w2_holds_a_task, timeout=30, interval=0, message="w2 rendering a task")
    workers.kill_group("w2")  # the whole host: its main process and its pool child, at once
    killed_at = time.monotonic()
    client.close()
    m.run_until_done(len(jobs), timeout=40)
    took = time.monotonic() - killed_at
    assert all(isinstance(o, Rendered) for o in m.outcomes)
    assert sorted(o.job.id for o in m.outcomes) == sorted(j.id for j in jobs)
    assert 4 - 1 < took < 4 + 15, f"the dead host's task came back after {took:.1f} s (visibility_timeout 4 s)"
    workers.start(config, "w2")  # the host comes back: it removes the temp files its dead processes left
    assert_valid_thumbnails(jobs)


def test_a_render_host_start_removes_only_the_temps_of_its_own_dead_processes(cfg, tmp_path):
    from watcher.paths import PathRules, temp_path_for
    from watcher.thumbtree import remove_stale_temps

    config = load(cfg(), base_dir=tmp_path)
    thumbs = tmp_path / "photos" / "thumbs" / "sub"
    thumbs.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that ran on this host and is gone (reaped: not even a zombie)
    dead_temp = Path(temp_path_for(str(thumbs / "a.jpg"), dead.pid))
    live_temp = Path(temp_path_for(str(thumbs / "b.jpg"), os.getpid()))  # a live process here: still writing
    other_host = thumbs / f".tw-{dead.pid}-otherhost~c.jpg.tmp"  # another render host's, on shared storage
    for path in (dead_temp, live_temp, other_host):
        path.write_bytes(b"partial")
    assert remove_stale_temps(PathRules(config)) == 1
    assert not dead_temp.exists() and live_temp.exists() and other_host.exists()


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
    from watcher.backends.celery.wire import photo_key

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
    Image.effect_noise((8000, 6000), 64).convert("RGB").save(slow, "PNG", compress_level=1)  # ~0.6 s to decode on a quiet box: well over the limit
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
    try:
        # Celery 5.7's pool: a stop that lands as a pool process finishes a task can take 30 s
        # more (the process waits 300 x 0.1 s for its result to be read; seen in 2 of ~40 runs)
        code = w1.wait(30 + 20)
    except subprocess.TimeoutExpired:  # anything longer: leave its stacks in the failure
        for pid in session_pids(w1):
            os.kill(pid, signal.SIGABRT)
        w1.wait(10)
        pytest.fail("the warm shutdown hung for 50 s; the worker's log and stacks:\n" + workers.log("w1").decode()[-6000:])
    assert code == 0, workers.log("w1").decode()[-2000:]
    assert b"Warm shutdown" in workers.log("w1")
    workers.start(config, "w2")  # the rest goes back to the queue, w2 renders it at once
    m.run_until_done(len(jobs), timeout=40)
    assert sorted(o.job.id for o in m.outcomes if isinstance(o, Rendered)) == sorted(j.id for j in jobs)
    assert_valid_thumbnails(jobs)


def test_a_failed_publish_while_the_outcome_stream_is_fine_is_retried_not_stuck(cfg, workers, masters, tmp_path, caplog):
    """The one rare error forced by a patch: the broker refusing a publish while the listener's
    own connection works (nothing else would ever say the broker is back)."""
    from kombu.exceptions import OperationalError

    config = cfg(count=1)
    workers.start(config, "w1")
    m = masters(config)
    real_send, failures = m.executor.app.send_task, []

    def send_once_refused(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise OperationalError("refused once, as a broker out of memory would")
        return real_send(*args, **kwargs)

    m.executor.app.send_task = send_once_refused
    caplog.set_level(logging.INFO, logger="watcher.backends.celery")
    jobs = m.add(photos(tmp_path / "photos", 10))
    m.run_until_done(len(jobs), timeout=20)
    assert failures and all(isinstance(o, Rendered) for o in m.outcomes)
    assert_valid_thumbnails(jobs)
    assert [r.levelname for r in caplog.records if "broker" in r.getMessage()] == ["ERROR", "INFO"], caplog.text


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


# ---- through the real master: `python -m watcher run` with workers.backend: celery ------------

MASTER_CONFIG = """\
watch:
  paths: [photos]
  create: true
  settle_seconds: 0.3
  rescan_interval: 0
output:
  sizes:
    - {{name: small, width: 48, height: 48}}
workers:
  count: 1
  backend: celery
  drain_timeout: {drain}
  max_retries: 1
limits:
  photo_timeout: 2
  worker_memory_mb: 0
state:
  dir: {state}
log:
  level: info
  progress_interval: 0
celery:
  broker: {url}
  queue: q{queue}
  visibility_timeout: 4
  batch: 4
"""


def master_config(project: Path, url: str, *, name: str = "config.yaml", state: str = "state", drain: float = 20) -> Path:
    return write_config(project / name, MASTER_CONFIG.format(url=url, state=state, drain=drain, queue=os.getpid()))


def flat_photos(project: Path, count: int, size: tuple[int, int] = (96, 72), *, slow: bool = False) -> dict[str, tuple[int, int, int]]:
    """Photos of distinct flat colours, so each thumbnail can be told from every other. `slow`
    ones are 12 MP PNGs (named .jpg, as a camera app might): no JPEG draft decoding, ~50 ms each."""
    colours = {}
    for i in range(count):
        path = project / "photos" / f"f{i:04d}.jpg"
        if slow:
            path.write_bytes(slow_flat_png(palette(i)))
        else:
            make_flat_jpeg(path, palette(i), *size)
        colours[str(path)] = palette(i)
    return colours


_PNG: list[bytes] = []


def slow_flat_png(colour: tuple[int, int, int]) -> bytes:
    """A 4000x3000 one-colour palette PNG: encoded once, then only its PLTE chunk is rewritten."""
    if not _PNG:
        buf = io.BytesIO()
        im = Image.new("P", (4000, 3000), 0)
        im.putpalette([0, 0, 0])
        im.save(buf, "PNG")
        _PNG.append(buf.getvalue())
    data = _PNG[0]
    at = data.index(b"PLTE")  # length (4 bytes) before it, 3 bytes of palette and the CRC after
    rgb = bytes(colour)
    return data[:at + 4] + rgb + zlib.crc32(b"PLTE" + rgb).to_bytes(4, "big") + data[at + 4 + 3 + 4:]


def thumbnails_done(project: Path, colours: dict[str, tuple[int, int, int]]) -> bool:
    return all(thumb(project, os.path.basename(p)).exists() for p in colours)


def assert_flat_thumbnails(project: Path, colours: dict[str, tuple[int, int, int]]) -> None:
    """Every photo has its own thumbnail, of its own colour (not a neighbour's), and no temp file is left."""
    for path, colour in colours.items():
        out = thumb(project, os.path.basename(path))
        with Image.open(out) as im:
            assert max(im.size) == 48, (out, im.size)
        assert same_colour(mean_colour(out), colour), f"{out}: {mean_colour(out)} is not {colour}"
    assert not temp_files(project / "photos"), temp_files(project / "photos")


def ok_lines(daemon: Daemon) -> dict[str, list[str]]:
    """The master's `ok <photo> -> ... on <host>` lines, by photo."""
    lines: dict[str, list[str]] = {}
    for line in daemon.matching(r" INFO ok /"):
        lines.setdefault(line.split(" INFO ok ", 1)[1].split(" -> ", 1)[0], []).append(line)
    return lines


def cli(*args: str, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "watcher", *args, "-c", str(config)], capture_output=True, text=True, timeout=30, cwd=config.parent)


def test_a_burst_through_the_master_spreads_over_two_hosts_each_photo_once(project, start_daemon, workers, redis_url):
    config = master_config(project, redis_url)
    colours = flat_photos(project, 200)
    workers.start(config, "w1")
    workers.start(config, "w2")
    daemon = start_daemon(config)
    daemon.wait_log(r" INFO ok /", timeout=60, count=200)
    assert_flat_thumbnails(project, colours)
    lines = ok_lines(daemon)
    assert set(lines) == set(colours), set(colours) ^ set(lines)
    assert all(len(v) == 1 for v in lines.values()), [v for v in lines.values() if len(v) > 1][:3]
    hosts = {line.rsplit(" on ", 1)[1] for v in lines.values() for line in v}
    assert hosts == {"w1", "w2"}, hosts
    counts = renders_per_photo(redis_url, f"q{os.getpid()}")
    assert len(counts) == 200 and set(counts.values()) == {1}, "a photo was rendered twice"
    # each render host's own log says the same, one line per photo, and none of Celery's chatter
    host_lines = [line for name in ("w1", "w2") for line in workers.log(name).decode().splitlines()]
    assert sum(" INFO ok /" in line for line in host_lines) == 200
    assert not [line for line in host_lines if "Task thumbwatch.render" in line or "-------------- " in line or "[tasks]" in line]
    # `thumbwatch status` names the render hosts; the status file keeps an (empty) worker list
    status = wait_for(lambda: (out := cli("status", config=config)).returncode == 0 and "w1 (" in out.stdout and "w2 (" in out.stdout and out,
                      timeout=10, message="status listing both render hosts")
    assert "render hosts: w1 (" in status.stdout, status.stdout
    assert daemon.status()["workers"] == [] and daemon.status()["backend"] == "celery"


def older_than_settling(photos: dict) -> None:
    """A catch-up queues only photos older than watch.settle_seconds (0.3 s here); a master that
    starts within that of their writing settles them first (a race these tests lost under load)."""
    newest = max(os.stat(p).st_mtime for p in photos)
    wait_for(lambda: time.time() - newest > 0.3 + 0.05, timeout=5, message="photos older than settle_seconds")


def test_a_second_master_on_the_same_tree_and_broker_renders_nothing_twice(project, start_daemon, workers, redis_url):
    colours = flat_photos(project, 60)
    older_than_settling(colours)
    first = start_daemon(master_config(project, redis_url))
    second = start_daemon(master_config(project, redis_url, name="second.yaml", state="state2"))  # the instance lock is per state folder
    for daemon in (first, second):
        daemon.wait_log(r"catch-up done: found=60 queued=60")
    queued = wait_for(lambda: len(keys := queued_photos(redis_url, f"q{os.getpid()}")) >= 60 and keys, timeout=10, message="60 photos queued")
    time.sleep(0.5)  # not synchronisation: a grace period in which a duplicate publish would show
    queued = queued_photos(redis_url, f"q{os.getpid()}")
    assert len(queued) == len(set(queued)) == 60, f"{len(queued)} photos queued for 60: the second master queued again"
    workers.start(project / "config.yaml", "w1")  # both have queued (or joined) every photo before anything renders
    first.wait_log(r" INFO ok /", timeout=40, count=60)
    second.wait_log(r" INFO ok /", timeout=40, count=60)
    assert_flat_thumbnails(project, colours)
    counts = renders_per_photo(redis_url, f"q{os.getpid()}")
    assert len(counts) == 60 and set(counts.values()) == {1}, "a photo was rendered twice"
    for daemon in (first, second):
        assert set(ok_lines(daemon)) == set(colours)
        assert all(len(v) == 1 for v in ok_lines(daemon).values())


def test_sigterm_to_the_master_leaves_queued_work_to_the_broker_and_the_next_start(project, start_daemon, workers, redis_url):
    config = master_config(project, redis_url, drain=1)
    colours = flat_photos(project, 60, slow=True)
    w1 = workers.start(config, "w1")
    daemon = start_daemon(config)
    daemon.wait_log(r" INFO ok /", timeout=30, count=3)
    # w1 frozen from here to its kill: on a quiet box it would otherwise render the rest of the
    # queue while the master drains and exits, and leave the restart nothing to prove
    os.killpg(w1.pid, signal.SIGSTOP)
    daemon.signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert daemon.wait_exit(20) == 0, daemon.text()
    assert time.monotonic() - signalled < 1 + 8, "not stopped within drain_timeout (1 s) and a margin"
    assert daemon.matching(r"stopping at once \(drain_timeout of 1 s\)"), daemon.text()
    done_by_first = set(ok_lines(daemon))
    assert len(done_by_first) < 60, "everything finished before the stop: the test proves nothing"
    workers.kill_group("w1")  # what is still queued waits in the broker for the next render host
    restarted = start_daemon(config)
    restarted.wait_ready()
    workers.start(config, "w2")
    wait_for(lambda: thumbnails_done(project, colours), timeout=60, message="every photo's thumbnail")
    restarted.wait_log(r"catch-up done")
    assert_flat_thumbnails(project, colours)
    counts = renders_per_photo(redis_url, f"q{os.getpid()}")
    assert len(counts) == 60 and set(counts.values()) == {1}, "a photo was rendered twice"
    assert not set(ok_lines(restarted)) & done_by_first, "the restart queued again what the first run reported done"
    assert ok_lines(restarted), "nothing was left for the restart: the test proves nothing"


def test_the_broker_restarted_under_the_master_loses_nothing(project, start_daemon, workers, redis_url, redis_server):
    config = master_config(project, redis_url)
    colours = flat_photos(project, 80, slow=True)
    workers.start(config, "w1")
    daemon = start_daemon(config)
    daemon.wait_log(r" INFO ok /", timeout=30, count=5)
    redis_server.restart()  # no persistence: the queued tasks and the job keys are gone
    wait_for(lambda: len(ok_lines(daemon)) == 80, timeout=60, message="an ok line for every photo")
    assert daemon.matching(r"queued photo\(s\) are no longer in the broker .*; publishing them again"), "the restart lost nothing: the test proves nothing"
    assert_flat_thumbnails(project, colours)
    assert all(len(v) == 1 for v in ok_lines(daemon).values()), "a photo reported twice"
    errors = daemon.matching(r" (ERROR|CRITICAL) ")
    assert len(errors) == 1 and "lost the broker" in errors[0], errors
    assert len(daemon.matching(r"the broker is back \(it restarted\)")) == 1, daemon.text()
    host_log = workers.log("w1").decode()
    host_errors = [line for line in host_log.splitlines() if " ERROR " in line]
    if "stopped unexpectedly" in host_log:
        # kombu 5.x can die of the restart itself ("Unrecoverable error: AttributeError(... 'hostname')",
        # then "Error on stopping Hub"): the host said so and started again, and every photo got done
        host_errors = [line for line in host_errors if "Error on stopping Hub" not in line and "stopped unexpectedly" not in line]
    assert len(host_errors) <= 1, host_errors  # Celery's reconnect error, said once


def test_retry_clears_the_dedupe_keys_of_photos_queued_by_a_stopped_master(project, start_daemon, redis_url):
    config = master_config(project, redis_url, drain=0.5)
    colours = flat_photos(project, 12)
    older_than_settling(colours)
    daemon = start_daemon(config)  # no render host: everything stays queued
    daemon.wait_log(r"catch-up done: found=12 queued=12")
    client = redis.Redis.from_url(redis_url)
    prefix = f"tw:q{os.getpid()}:job:"
    wait_for(lambda: len(list(client.scan_iter(match=prefix + "*"))) == 12, timeout=10, message="12 job keys")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0
    one = next(iter(colours))
    out = cli("retry", one, config=config)
    assert out.returncode == 0, out.stderr
    assert len(list(client.scan_iter(match=prefix + "*"))) == 11, "retry PATH clears that photo's key only"
    out = cli("retry", config=config)
    assert out.returncode == 0, out.stderr
    assert not list(client.scan_iter(match=prefix + "*")), "retry left dedupe keys behind"
    client.close()


# ---- a render host that cannot see the watched root --------------------------------------------


def test_a_render_host_that_sees_an_empty_folder_for_the_root_gives_its_photos_back(cfg, workers, masters, tmp_path, caplog):
    """w2 runs in its own mount namespace with an empty folder bind-mounted over the photos (a
    share not mounted there): it takes no photo from that root, says so once at ERROR, the
    master lists it, w1 renders everything; once the folder is back, w2 takes photos again."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("this test needs root (a mount namespace and a bind mount)")
        pytest.skip("needs root: a mount namespace and a bind mount")
    from watcher.roots import write_marker

    config = cfg(count=1, vt=8)
    root = str(tmp_path / "photos")
    write_marker(root)  # as the watcher does for each root it watches
    empty = tmp_path / "not-mounted"
    empty.mkdir()
    workers.start(config, "w1")
    w2 = workers.start(config, "w2", prefix=("unshare", "--mount", "--propagation", "private", "sh", "-c",
                                             'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", str(empty), root))
    caplog.set_level(logging.INFO, logger="watcher.backends.celery")
    m = masters(config)
    jobs = m.add(photos(tmp_path / "photos", 60))
    m.run_until_done(len(jobs), timeout=60)
    assert all(isinstance(o, Rendered) for o in m.outcomes), [o for o in m.outcomes if not isinstance(o, Rendered)][:3]
    assert sorted(o.job.id for o in m.outcomes) == sorted(j.id for j in jobs), "nothing lost"
    assert {o.host for o in m.outcomes} == {"w1"}
    assert_valid_thumbnails(jobs)
    errors = [line for line in workers.log("w2").decode().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"render host w2 cannot see root {root}: no .thumbwatch-root marker" in errors[0], errors
    wait_for(lambda: m.step(0.05) or "w2" in m.executor.describe()["blind_hosts"], timeout=10, message="the master lists w2")
    assert list(m.executor.describe()["blind_hosts"]["w2"]) == [root]
    assert "w2 (" + root + ")" in m.executor.summary()

    subprocess.run(["nsenter", f"--target={w2.pid}", "--mount", "umount", root], check=True)  # the share is mounted now
    deadline, round_ = time.monotonic() + 60, 0
    while "w2" not in {o.host for o in m.outcomes[len(jobs):]}:  # w2 looks again within seconds
        assert time.monotonic() < deadline, "w2 did not take photos again"
        round_ += 1
        done = len(m.outcomes)
        more = m.add(photos(tmp_path / "photos", 20, prefix=f"r{round_}-"))
        m.run_until_done(done + len(more), timeout=30)
        assert all(isinstance(o, Rendered) for o in m.outcomes[done:])
    wait_for(lambda: b"INFO render host w2 sees root" in workers.log("w2"), timeout=10, message="w2's INFO line")
    log = workers.log("w2").decode()
    assert log.count("sees root") == 1 and log.count(" ERROR ") == 1, log[-3000:]
    wait_for(lambda: m.step(0.05) or m.executor.describe()["blind_hosts"] == {}, timeout=10, message="w2 no longer listed")


# ---- the memory cap on a real render host ------------------------------------------------------


def test_a_render_host_under_a_lower_ulimit_keeps_it_says_so_once_and_renders(cfg, workers, masters, tmp_path):
    """limits.worker_memory_mb 2048 under an address-space limit of 1536 MB (as a unit's LimitAS=
    would set): every render process keeps 1536 MB, soft and hard, and still renders; the host
    says once why its cap is lower."""
    low = 1536 << 20
    config = cfg(count=2)
    text = config.read_text().replace("worker_memory_mb: 0", "worker_memory_mb: 2048")
    config.write_text(text)
    w1 = workers.start(config, "w1", prefix=("prlimit", f"--as={low}:{low}"))
    m = masters(config)
    jobs = m.add(photos(tmp_path / "photos", 6))
    m.run_until_done(len(jobs), timeout=30)
    assert all(isinstance(o, Rendered) for o in m.outcomes)
    pool = session_pids(w1) - {w1.pid}
    assert len(pool) == 2, pool
    for pid in pool:
        line = next(x for x in open(f"/proc/{pid}/limits").read().splitlines() if x.startswith("Max address space"))
        assert line.split()[3:5] == [str(low), str(low)], line
    notes = [x for x in workers.log("w1").decode().splitlines() if "worker memory cap" in x]
    assert len(notes) == 1 and " WARNING " in notes[0] and "1536 MB, not limits.worker_memory_mb=2048" in notes[0], notes
