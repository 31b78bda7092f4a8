"""Benchmark of the Celery backend: `python -m bench.celery` (also run by `make bench`).

1. publish rate: how many photos per second the master's CeleryExecutor puts into the broker
   (no render host running; target >= 6,000 photos/s, ten 16-core hosts at ~25 ms a photo);
2. throughput: one `thumbwatch worker` with 2 processes against the local pool with 2 processes
   (`thumbwatch scan`), the same photos; each rate is taken between the first and the last
   finished photo, so start-up is left out of both (target: celery >= 0.9x local).

Needs redis-server (started here on 127.0.0.1 and a free port, stopped after) and the celery extra.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing.connection
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

CONFIG = """\
watch:
  paths: [photos]
output:
  sizes:
    - {{name: small, width: 256, height: 256}}
workers:
  count: 2
  backend: {backend}
  queue_size: {queue_size}
limits:
  worker_memory_mb: 0
state:
  dir: state-{backend}
log:
  level: info
celery:
  broker: {url}
  queue: bench
  batch: {batch}
"""


def make_photos(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    # a camera-like picture: smooth gradients with some grain (noise alone would make 15 MB files)
    grad = Image.linear_gradient("L").resize(size)
    grain = Image.effect_noise((size[0] // 8, size[1] // 8), 30).resize(size)
    base = Image.merge("RGB", (grad, grain, grad.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    first = folder / "b0000.jpg"
    base.save(first, "JPEG", quality=90)
    paths = [first]
    for i in range(1, count):
        path = folder / f"b{i:04d}.jpg"
        shutil.copyfile(first, path)
        paths.append(path)
    return paths


def start_redis(work: Path) -> tuple[subprocess.Popen, str]:
    from redis_server import _free_port

    port = _free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(work), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def executor_for(config_path: Path):
    from watcher.backends.celery.executor import CeleryExecutor
    from watcher.config import load
    from watcher.paths import PathRules
    from watcher.render import RenderSettings

    config = load(config_path, base_dir=config_path.parent)
    return config, PathRules(config), RenderSettings(config.output, config.limits.max_pixels), CeleryExecutor(config)


def jobs_for(rules, paths: list[Path]):
    from watcher.executor import Job

    out = []
    for i, path in enumerate(paths):
        st = os.stat(path)
        out.append(Job(i, str(path), st.st_size, st.st_mtime_ns, rules.targets(str(path)), st.st_ino))
    return out


PUBLISH_CONFIG = """\
watch:
  paths: [photos]
output:
  sizes:
    - {{name: small, width: 256, height: 256}}
workers:
  backend: celery
state:
  dir: state
celery:
  broker: {url}
  queue: {queue}
"""


def publish_rate(work: Path, url: str, name: str) -> dict:
    """The DEFAULT config's publish rate (celery.batch, workers.queue_size as shipped), driven as
    the master's loop drives it: submit while capacity() says so, then waitables() before the
    wait (which publishes what is pending). No render host runs, so this fills the window of
    queue_size tasks x batch photos once, from empty."""
    folder = work / f"pub-{name}"
    (folder / "photos").mkdir(parents=True)
    config_path = folder / "config.yaml"
    config_path.write_text(PUBLISH_CONFIG.format(url=url, queue=f"pub-{name}"))
    config, rules, settings, ex = executor_for(config_path)
    count = config.workers.queue_size * config.celery.batch
    names = [folder / "photos" / f"x{i:06d}.jpg" for i in range(count)]
    for path in names:
        path.touch()
    ex.start()
    jobs = jobs_for(rules, names)
    memory0 = ex.redis.info("memory")["used_memory"]
    cpu0, t0 = time.process_time(), time.perf_counter()
    while jobs:
        while ex.capacity() and jobs:
            ex.submit(jobs.pop(), settings)
        ex.waitables()  # the loop is about to wait: publishes everything pending
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    tasks = ex.ledger.tasks_out()
    memory = ex.redis.info("memory")["used_memory"] - memory0  # the queued tasks and their job keys
    ex.stop_now()
    ex.redis.flushdb()  # the next run starts from an empty broker, as this one did
    return {"batch": config.celery.batch, "queue_size": config.workers.queue_size, "photos": count, "tasks": tasks,
            "redis_bytes_per_photo": round(memory / count),
            "seconds": round(elapsed, 3), "photos_per_s": round(count / elapsed), "cpu_ms_per_photo": round(cpu * 1000 / count, 4)}


def master_publish_rate(work: Path, url: str, name: str) -> dict:
    """The same window filled by the real master, `python -m watcher run` with the default config:
    its catch-up walk, admission and loop included. Timed from its "ready" line to the moment the
    broker holds queue_size x batch photos (tasks counted in Redis, polled every 10 ms)."""
    import redis

    folder = work / f"master-{name}"
    (folder / "photos").mkdir(parents=True)
    config_path = folder / "config.yaml"
    config_path.write_text(PUBLISH_CONFIG.format(url=url, queue=f"master-{name}"))
    from watcher.config import load

    config = load(config_path, base_dir=folder)
    count = config.workers.queue_size * config.celery.batch
    old = time.time() - 3600  # a catch-up's photos are not being written: none waits to settle
    for i in range(count):
        photo = folder / "photos" / f"x{i:06d}.jpg"
        photo.write_bytes(b"\xff\xd8 not decoded: no render host runs")
        os.utime(photo, (old, old))
    client = redis.Redis.from_url(url)
    log = open(folder / "master.log", "wb")
    master = subprocess.Popen([sys.executable, "-m", "watcher", "run", "-c", "config.yaml"], cwd=folder,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while b"INFO ready:" not in (folder / "master.log").read_bytes():
            if master.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((folder / "master.log").read_text()[-3000:])
            time.sleep(0.01)
        t0 = time.perf_counter()
        while client.llen(f"master-{name}") < config.workers.queue_size:
            if master.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{client.llen(f'master-{name}')} tasks queued:\n" + (folder / "master.log").read_text()[-3000:])
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
    finally:
        os.killpg(master.pid, signal.SIGKILL)
        master.wait(30)
        log.close()
        client.flushdb()
        client.close()
    return {"photos": count, "seconds": round(elapsed, 3), "photos_per_s": round(count / elapsed)}


def rate(times: list[float]) -> float:
    times = sorted(times)
    return (len(times) - 1) / (times[-1] - times[0])


def local_rate(work: Path, url: str, count: int, size: tuple[int, int]) -> float:
    folder = work / "local"
    make_photos(folder / "photos", count, size)
    (folder / "config.yaml").write_text(CONFIG.format(backend="local", url=url, queue_size=1000, batch=8))
    out = subprocess.run([sys.executable, "-m", "watcher", "scan", "-c", "config.yaml"], cwd=folder, capture_output=True, text=True)
    stamps = []
    for line in out.stderr.splitlines():
        match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) \w+ ok ", line)
        if match:
            stamps.append(time.mktime(time.strptime(match.group(1)[:19], "%Y-%m-%d %H:%M:%S")) + float("0" + match.group(1)[19:]))
    if len(stamps) != count:
        raise SystemExit(f"local scan made {len(stamps)} ok lines of {count} (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return rate(stamps)


def celery_rate(work: Path, url: str, count: int, size: tuple[int, int], batch: int) -> float:
    folder = work / f"celery-{batch}"
    make_photos(folder / "photos", count, size)
    config_path = folder / "config.yaml"
    config_path.write_text(CONFIG.format(backend="celery", url=url, queue_size=1000, batch=batch))
    log = open(folder / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "watcher", "worker", "-c", "config.yaml", "--name", "bench"], cwd=folder,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready_by = time.monotonic() + 60
        while b"INFO ready: render host" not in (folder / "worker.log").read_bytes():
            if worker.poll() is not None or time.monotonic() > ready_by:
                raise SystemExit((folder / "worker.log").read_text()[-3000:])
            time.sleep(0.05)
        _config, rules, settings, ex = executor_for(config_path)
        ex.start()
        todo = jobs_for(rules, sorted((folder / "photos").glob("*.jpg")))
        stamps: list[float] = []
        deadline = time.monotonic() + 300
        while len(stamps) < count and time.monotonic() < deadline:
            while ex.capacity() and todo:
                ex.submit(todo.pop(0), settings)
            ready = multiprocessing.connection.wait(ex.waitables(), 1.0)
            for outcome in ex.collect(ready, time.monotonic()):
                assert type(outcome).__name__ == "Rendered", outcome
                stamps.append(time.time())
        ex.stop_now()
        return rate(stamps)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.celery")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer photos, one round")
    parser.add_argument("--publish-only", action="store_true", help="only the publish rate (5 runs), not the render throughput")
    args = parser.parse_args()
    if not (shutil.which("redis-server") or os.path.exists("/usr/bin/redis-server")):
        print("bench.celery: redis-server is not installed; skipped")
        return 0
    count, rounds = (60, 1) if args.quick else (200, 3)
    size = (4000, 3000)  # 12 MP, 256 px thumbnails, as the main bench
    work = Path(tempfile.mkdtemp(prefix="thumbwatch-bench-celery-"))
    proc, url = start_redis(work)
    results: dict = {}
    try:
        runs = [publish_rate(work, url, str(i)) for i in range(1 if args.quick else 5)]
        rates = sorted(r["photos_per_s"] for r in runs)
        results["publish"] = {**runs[0], "photos_per_s": rates[len(rates) // 2], "runs_photos_per_s": [r["photos_per_s"] for r in runs],
                              "cpu_ms_per_photo": sorted(r["cpu_ms_per_photo"] for r in runs)[len(runs) // 2]}
        masters = [master_publish_rate(work, url, str(i)) for i in range(1 if args.quick else 3)]
        rates = sorted(r["photos_per_s"] for r in masters)
        results["master_publish"] = {**masters[0], "photos_per_s": rates[len(rates) // 2], "runs_photos_per_s": [r["photos_per_s"] for r in masters]}
        local, celery = [], []
        for r in range(0 if args.publish_only else rounds):  # interleaved, so a shared machine's drift hits both alike
            shutil.rmtree(work / "local", ignore_errors=True)
            shutil.rmtree(work / "celery-8", ignore_errors=True)
            local.append(local_rate(work, url, count, size))
            celery.append(celery_rate(work, url, count, size, 8))
        if local:
            results["local_img_s"] = sorted(local)[len(local) // 2]
            results["celery_img_s"] = sorted(celery)[len(celery) // 2]
            results["celery_vs_local"] = round(results["celery_img_s"] / results["local_img_s"], 3)
            results["rounds"] = {"local": [round(x, 1) for x in local], "celery": [round(x, 1) for x in celery]}
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    pub = results["publish"]
    print(f"publish, default config (celery.batch {pub['batch']}, workers.queue_size {pub['queue_size']}): median {pub['photos_per_s']} photos/s "
          f"into the broker over {len(pub['runs_photos_per_s'])} run(s) {pub['runs_photos_per_s']} ({pub['photos']} photos in {pub['tasks']} tasks each, "
          f"{pub['cpu_ms_per_photo']} ms CPU per photo, {pub['redis_bytes_per_photo']} bytes of Redis memory per queued photo); target >= 6000: {'pass' if pub['photos_per_s'] >= 6000 else 'MISS'}")
    mp = results["master_publish"]
    print(f"publish through the real master (thumbwatch run, catch-up walk and admission included): median {mp['photos_per_s']} photos/s "
          f"over {len(mp['runs_photos_per_s'])} run(s) {mp['runs_photos_per_s']} ({mp['photos']} photos from its ready line); "
          f"target >= 6000: {'pass' if mp['photos_per_s'] >= 6000 else 'MISS'}")
    if args.publish_only:
        return 0
    print(f"throughput, 12 MP -> 256 px, 2 processes: local pool {results['local_img_s']:.1f} img/s, celery {results['celery_img_s']:.1f} img/s "
          f"= {results['celery_vs_local']:.3f}x (target >= 0.9: {'pass' if results['celery_vs_local'] >= 0.9 else 'MISS'}); rounds {results['rounds']}")
    out = REPO / "bench" / "results" / "celery.json"
    out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
