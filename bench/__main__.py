"""`make bench` / `python -m bench`: thumbwatch's speed, latency, catch-up and memory, each as a
ratio to a baseline measured in the same run on the same files, so results hold on a noisy box.

    python -m bench [--quick] [--only render,preview,throughput,latency,lanes,catchup,memory]
                    [--repeats 3] [--workers N] [--out FILE]

Prints the machine, a table and every target as PASS, MARGINAL (passing by less than 1 %),
FAIL, or NOISY (the method's own noise in this run is larger than the margin tested) with its
figure, and writes bench/results/latest.json (or --out). Figures are medians over --repeats.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import io
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

from PIL import Image

from watcher.backends.local.worker import keep_freed_memory

from . import corpus, methods
from watcher.config import OutputConfig, SizeSpec
from watcher.paths import Target
from watcher.render import RenderSettings, render

from .daemon import BenchDaemon, count_files, cpu_ticks, vm_kb
from bench import cpu_name  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WORK = corpus.CACHE / "run"
# Processes for every method and the daemon's workers: the machine's (set in main, --workers).
WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def median_of(repeats: int, measure) -> float:
    return statistics.median(measure() for _ in range(repeats))


def _warm(fn, job, ready) -> None:
    fn(job)
    ready.wait()


def _warm_pool(fn, job: tuple[str, str]):
    """WORKERS forked processes that have each run `fn` once (imports, library set-up, first-call
    costs: libvips starts its thread pool then) before the clock starts: fair to every method."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Barrier(WORKERS + 1)
    pool = ctx.Pool(WORKERS, initializer=_warm, initargs=(fn, job, ready))
    ready.wait(timeout=120)
    return pool


def _cpu_of(fn_job) -> float:
    """Run one job in a pool worker; its CPU time in seconds (this worker's threads)."""
    fn, job = fn_job
    start = time.process_time()
    fn(job)
    return time.process_time() - start


def pool_rate(fn, paths: list[Path], out: Path, chunksize: int = 4, cpu: list[float] | None = None) -> float:
    """Images per second for `fn` over `paths` in WORKERS processes (chunks of 4, like Pool.map);
    with `cpu`, the CPU ms per photo the workers spent is appended to it."""
    jobs = _jobs(paths, out)
    with _warm_pool(fn, jobs[0]) as pool:
        start = time.perf_counter()
        seconds = pool.map(_cpu_of, [(fn, job) for job in jobs], chunksize=chunksize)
        rate = len(paths) / (time.perf_counter() - start)
    if cpu is not None:
        cpu.append(sum(seconds) * 1000 / len(paths))
    return rate


def bare_loop_rate(fn, paths: list[Path], out: Path, cpu: list[float] | None = None) -> float:
    """A bare loop in each of WORKERS processes over its share of the photos: no queue, no watching."""
    return pool_rate(fn, paths, out, chunksize=-(-len(paths) // WORKERS), cpu=cpu)


def _jobs(paths: list[Path], out: Path) -> list[tuple[str, str]]:
    shutil.rmtree(out, ignore_errors=True)
    for sub in ("", "classic", "pyvips", *(s.name for s in methods.THREE_SIZES)):
        (out / sub).mkdir(parents=True, exist_ok=True)
    return [(str(p), str(out)) for p in paths]


def daemon_rate(paths: list[Path], boxes: tuple[int, ...], result: dict, outside: bool = False) -> float:
    """A backlog moved into the watched folder of a running daemon: first move to last thumbnail.

    Thumbnails go where the default config puts them, inside the watched folder (which the
    observer leaves unwatched), or with `outside` into a separate tree: the two should match.
    """
    shutil.rmtree(WORK, ignore_errors=True)
    staging, photos = WORK / "staging", WORK / "photos"
    staging.mkdir(parents=True)
    photos.mkdir()
    for p in paths:
        os.link(p, staging / p.name)
    thumbs = WORK / "thumbs-outside" if outside else photos / "thumbs"
    daemon = BenchDaemon(WORK, photos, boxes, output=str(thumbs) if outside else "thumbs", workers=WORKERS)
    try:
        daemon.wait_line(r"catch-up done")
        before = daemon.done
        pids = daemon.pids()
        main_ticks, all_ticks = cpu_ticks([daemon.proc.pid]), cpu_ticks(pids)
        start = time.perf_counter()
        for p in paths:
            os.rename(staging / p.name, photos / p.name)
        elapsed = daemon.wait_done(before + len(paths)) - start
        tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
        main_ms = (cpu_ticks([daemon.proc.pid]) - main_ticks) * tick_ms / len(paths)
        result.setdefault("main_cpu_ms_per_photo", []).append(main_ms)
        result.setdefault("cpu_ms_per_photo", []).append((cpu_ticks(pids) - all_ticks) * tick_ms / len(paths))
        last = thumbs / (f"s{boxes[-1]}" if len(boxes) > 1 else "")
        if count_files(last) != len(paths):
            raise RuntimeError(f"{count_files(last)} thumbnails in {last}, expected {len(paths)}")
        workers = daemon.status()["workers"]
        result.setdefault("worker_peak_rss_mb", []).extend(round(vm_kb(pid) / 1024, 1) for pid in workers)
        return len(paths) / elapsed
    finally:
        daemon.stop()


# In-process rows are timed in CPU time (time.process_time): each is one thread doing one
# photo after another, so its CPU time is the work it does, whatever else loads this shared box
# (wall-clock ratios here spread from 0.6x to 2.6x between rounds while 8 people build).
CLOCK = time.process_time


def per_image_ms(paths: list[Path], out: Path, repeats: int) -> dict[str, float]:
    """In-process CPU ms per image, the cases interleaved so drifting load hits all alike."""
    for sub in (s.name for s in methods.THREE_SIZES):
        (out / sub).mkdir(parents=True, exist_ok=True)
    cases = {"decode_floor": methods.decode_floor, "decode_floor_1024": methods.decode_floor_1024,
             "render_one": methods.render_one, "render_three": methods.render_three}
    jobs = [(str(p), str(out)) for p in paths]
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn(jobs[0])
    for _ in range(repeats):
        for name, fn in cases.items():
            gc.collect()
            start = CLOCK()
            for job in jobs:
                fn(job)
            samples[name].append((CLOCK() - start) * 1000 / len(jobs))
    return {name: round(statistics.median(v), 2) for name, v in samples.items()}


def round_ratios(samples: dict[str, list[float]], a: str, b: str) -> list[float]:
    """a / b in each round of the bench (each round measures every method once, so a drift of
    this shared box hits both sides of a ratio alike)."""
    return [round(x / y, 3) for x, y in zip(samples[a], samples[b])]


def orientation_check(paths: list[Path], out: Path) -> dict[str, bool]:
    """Orientation-6 photos are portrait when upright: ours must be, the classic isn't."""
    six = [p for p in paths if Image.open(p).getexif().get(0x0112) == 6][:3]
    ours, naive = [], []
    for p in six:
        methods.render_one((str(p), str(out)))
        methods.classic_as_written((str(p), str(out)))
        with Image.open(out / "s256" / p.name) as a, Image.open(out / p.name) as b:
            ours.append(a.height > a.width)
            naive.append(b.height > b.width)
    return {"thumbwatch_upright": all(ours), "classic_upright": all(naive)}


def bench_throughput(n12: int, n2: int, repeats: int, results: dict) -> None:
    twelve = corpus.photo_set("cam12", n12, 4000, 3000)
    two = corpus.photo_set("cam2", n2, 1632, 1224)
    for p in twelve + two:
        p.read_bytes()  # warm the page cache: we measure decoding, not the disk
    out = WORK.parent / "out"
    info = results.setdefault("throughput", {})
    info["photos_12mp"] = {"count": len(twelve), "mean_mb": round(sum(p.stat().st_size for p in twelve) / len(twelve) / 1e6, 2)}
    for label, paths in (("12mp", twelve), ("2mp", two)):
        one_mem: dict = {}
        three_mem: dict = {}
        outside: dict = {}
        cpu: dict[str, list[float]] = {"decode_floor": [], "bare_render_1size": []}
        methods_ = {
            "decode_floor": lambda: pool_rate(methods.decode_floor, paths, out, cpu=cpu["decode_floor"]),
            "decode_floor_1024": lambda: pool_rate(methods.decode_floor_1024, paths, out),
            "classic_equal_settings": lambda: pool_rate(methods.classic_equal, paths, out),
            "bare_render_1size": lambda: bare_loop_rate(methods.render_one, paths, out, cpu=cpu["bare_render_1size"]),
            "bare_render_3sizes": lambda: bare_loop_rate(methods.render_three, paths, out),
            "pyvips_equal_settings": lambda: pool_rate(methods.pyvips_equal, paths, out),
            "classic_as_written": lambda: pool_rate(methods.classic_as_written, paths, out),
            "daemon_1size": lambda: daemon_rate(paths, (256,), one_mem),
            "daemon_3sizes": lambda: daemon_rate(paths, (1024, 512, 256), three_mem),
            "daemon_1size_thumbs_outside": lambda: daemon_rate(paths, (256,), outside, outside=True),
        }
        if not methods.pyvips_available():
            del methods_["pyvips_equal_settings"]
        # Rounds of every method, not every repeat of one method in a row: this shared box
        # drifts by several percent over minutes, and a drift must hit all methods alike.
        samples: dict[str, list[float]] = {name: [] for name in methods_}
        for _ in range(repeats):
            for name, measure in methods_.items():
                samples[name].append(measure())
        rates = {name: statistics.median(values) for name, values in samples.items()}
        if label == "12mp":
            mem = {"one_size": max(one_mem["worker_peak_rss_mb"]), "three_sizes": max(three_mem["worker_peak_rss_mb"])}
            results.setdefault("memory", {})["worker_peak_rss_mb_12mp"] = mem
        info[label] = {k: round(v, 1) for k, v in rates.items()}
        info[label + "_samples"] = {k: [round(v, 1) for v in values] for k, values in samples.items()}
        # CPU per photo (workers; the daemon's main process too): the work done, whatever else
        # loads this shared box, beside the wall-clock rates it slows down
        cpu["daemon_1size"] = one_mem["cpu_ms_per_photo"]
        info[label + "_cpu_ms_per_photo"] = {k: [round(v, 2) for v in values] for k, values in cpu.items()}
        info[label + "_round_ratios"] = {
            "daemon_1size / decode_floor": round_ratios(samples, "daemon_1size", "decode_floor"),
            "daemon_1size / bare_render_1size": round_ratios(samples, "daemon_1size", "bare_render_1size"),
            "daemon_3sizes / decode_floor_1024": round_ratios(samples, "daemon_3sizes", "decode_floor_1024"),
        }
        # the daemon's main process: observer threads, queue, dispatch, logging (10 ms ticks)
        info[label + "_main_cpu_ms_per_photo"] = {
            "thumbs_inside": round(statistics.median(one_mem["main_cpu_ms_per_photo"]), 2),
            "thumbs_outside": round(statistics.median(outside["main_cpu_ms_per_photo"]), 2),
        }
    results["orientation"] = orientation_check(twelve, out)
    results["pyvips"] = methods.pyvips_available()


def bench_render(n: int, repeats: int, results: dict) -> None:
    paths = corpus.photo_set("cam12", n, 4000, 3000)
    results["render_ms_per_image"] = per_image_ms(paths[: min(len(paths), 16)], WORK.parent / "out-inproc", max(repeats, 3))


def bench_latency(n: int, results: dict) -> None:
    paths = corpus.photo_set("cam12", n, 4000, 3000)
    shutil.rmtree(WORK, ignore_errors=True)
    photos = WORK / "photos"
    photos.mkdir(parents=True)
    data = [p.read_bytes() for p in paths]
    decode = []
    for p in paths:
        start = time.perf_counter()
        methods.decode_floor((str(p), ""))
        decode.append((time.perf_counter() - start) * 1000)
    daemon = BenchDaemon(WORK, photos, (256,), workers=WORKERS)
    latencies = []
    try:
        daemon.wait_line(r"catch-up done")
        time.sleep(1.0)  # let the daemon go idle: this measures an idle daemon's reaction
        for i, blob in enumerate(data):
            name = f"lat{i:03d}.jpg"
            with open(photos / name, "wb") as f:
                f.write(blob)
            closed = time.perf_counter()
            # the daemon's own "ok" line (after the rename), read by a thread blocked on its pipe
            latencies.append((daemon.wait_ok(name) - closed) * 1000)
            time.sleep(0.1)  # not synchronisation: spaces the drops so each meets an idle daemon
        pids = daemon.pids()
        before = cpu_ticks(pids)
        time.sleep(5.0)
        idle_ticks = cpu_ticks(pids) - before
    finally:
        daemon.stop()
    latencies.sort()
    results["latency"] = {
        "photos": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1),
        "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
        "decode_ms_median": round(statistics.median(decode), 1),
        "idle_cpu_percent": round(100 * idle_ticks / os.sysconf("SC_CLK_TCK") / 5.0, 2),
    }


def walk_seconds(top: Path) -> float:
    """scandir + stat of every file the daemon's catch-up must look at: each photo and each
    photo's thumbnail (the thumbnail tree is walked too)."""
    start = time.perf_counter()
    stack = [str(top)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    entry.stat()
    return time.perf_counter() - start


def bench_catchup(count: int, repeats: int, results: dict) -> None:
    photos = corpus.catchup_tree(count)
    walk_seconds(photos)  # warm the dentry and inode caches for both
    walk = median_of(repeats, lambda: walk_seconds(photos))

    def daemon_catchup() -> float:
        daemon = BenchDaemon(WORK.parent / "catchup-state", photos, (256,), workers=WORKERS)
        try:
            _, match = daemon.wait_line(rf"catch-up done: found={count} queued=0 skipped={count} .* in ([\d.]+) s", timeout=600)
            return float(match.group(1))
        finally:
            daemon.stop()

    daemon_catchup()
    catchup = median_of(repeats, daemon_catchup)
    results["catchup"] = {"photos": count, "scandir_stat_walk_s": round(walk, 3), "daemon_catchup_s": round(catchup, 3)}


def burst(count: int) -> Path:
    """`count` small (64×48) photos in a staging folder, made once."""
    folder = corpus.CACHE / f"burst-{count}"
    staging = folder / "staging"
    if not (folder / ".complete").exists():
        staging.mkdir(parents=True, exist_ok=True)
        blob = corpus.small_jpeg()
        for i in range(count):
            (staging / f"b{i:05d}.jpg").write_bytes(blob)
        (folder / ".complete").touch()
    return staging


def bench_memory(count: int, results: dict) -> None:
    staging = burst(count)
    shutil.rmtree(WORK, ignore_errors=True)
    photos = WORK / "photos"
    photos.mkdir(parents=True)
    names = sorted(os.listdir(staging))
    daemon = BenchDaemon(WORK, photos, (256,), workers=WORKERS)
    try:
        daemon.wait_line(r"catch-up done")
        for name in names:
            os.rename(staging / name, photos / name)
        daemon.wait_done(len(names))
        peak = vm_kb(daemon.proc.pid)
    finally:
        daemon.stop()
        for name in names:
            os.rename(photos / name, staging / name)
    results.setdefault("memory", {})["main_peak_rss_mb_burst"] = {"photos": len(names), "peak_mb": round(peak / 1024, 1)}


def bench_preview(n: int, repeats: int, results: dict) -> None:
    """output.embedded_preview on 12 MP photo-like JPEGs carrying a 160×120 EXIF thumbnail and a
    1600 px MPF preview: ms per image against the full image's decode floor, in-process; where
    the 256 px time goes; and how far the thumbnails are from the full render's.

    Differences are measured on lossless (PNG) thumbnails: they compare the pictures the two
    renders make. A JPEG encode alone moves a 75 px thumbnail of a textured photo by ~5 levels,
    so two JPEG thumbnails differ by that much whatever they were made from: that figure is
    printed apart. So are the full render's own distance to a direct Lanczos resize of the
    full-resolution photo (what a faithful thumbnail is), and two views where a shift, a crop or
    a colour cast would show and fine texture does not: the difference after a 1.5 px Gaussian
    blur, and the largest per-channel difference of the means.
    """
    from PIL import ImageChops, ImageFilter, ImageOps, ImageStat

    from watcher.render import preview

    paths = corpus.preview_set(n)
    out = WORK.parent / "out-preview"
    shutil.rmtree(out, ignore_errors=True)
    jobs = [str(p) for p in paths]

    def render_with(box: int, embedded: bool = True, fmt: str = "jpeg", folder: str = ""):
        spec = SizeSpec(f"p{box}", box, box, format=fmt)
        settings = RenderSettings(OutputConfig(sizes=(spec,), embedded_preview=embedded), 200_000_000)

        def run(src: str, where: str = folder) -> str:
            target = out / where / (Path(src).stem + (".png" if fmt == "png" else ".jpg"))
            target.parent.mkdir(parents=True, exist_ok=True)
            render(src, [Target(spec, str(target))], settings)
            return str(target)
        return run

    # where the 256 px time goes: the preview found and decoded at the DCT scale covering the
    # box and checked, the Lanczos resample, the JPEG encode (the rest: open, EXIF, write)
    decoded: dict[str, Image.Image] = {}
    need = {}

    def step_load(src: str) -> None:
        with open(src, "rb") as f, Image.open(f) as im:
            w, h = im.size
            need[src] = (256, round(256 * h / w)) if w >= h else (round(256 * w / h), 256)
            got = preview.load(f, im, need[src])
            assert got is not None, f"{src}: no usable preview"
            decoded[src] = got[0]

    def step_resample(src: str) -> None:
        decoded[src + "/256"] = decoded[src].resize(need[src], Image.Resampling.LANCZOS, reducing_gap=3.0)

    def step_encode(src: str) -> None:
        decoded[src + "/256"].save(io.BytesIO(), "JPEG", quality=85, subsampling="4:2:0")

    cases = {"decode_floor": lambda src, where: methods.decode_floor((src, "")),
             "preview_75": render_with(75), "preview_256": render_with(256),
             "preview_256_load": lambda src, where: step_load(src),
             "preview_256_resample": lambda src, where: step_resample(src),
             "preview_256_encode": lambda src, where: step_encode(src)}
    for fn in cases.values():
        fn(jobs[0], "warm")
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for rnd in range(max(repeats, 5)):
        for name, fn in cases.items():
            where = f"{name}-{rnd}"  # each round writes new files, as a new photo's thumbnail is
            gc.collect()
            start = CLOCK()
            for src in jobs:
                fn(src, where)
            samples[name].append((CLOCK() - start) * 1000 / len(jobs))

    def mad(a: Image.Image, b: Image.Image) -> float:
        assert a.size == b.size, f"sizes differ: {a.size} and {b.size}"
        return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3

    def rgb(path: str) -> Image.Image:
        with Image.open(path) as im:
            return im.convert("RGB")

    blur = ImageFilter.GaussianBlur(1.5)
    diff: dict[int, dict] = {}
    for box in (75, 256):
        rows: dict[str, list[float]] = {k: [] for k in ("png", "jpeg", "blurred", "colour", "full_vs_direct")}
        for src in jobs:
            quick, full = rgb(render_with(box, True, "png", "d-preview")(src)), rgb(render_with(box, False, "png", "d-full")(src))
            rows["png"].append(mad(quick, full))
            rows["jpeg"].append(mad(rgb(render_with(box, True, "jpeg", "d-preview")(src)), rgb(render_with(box, False, "jpeg", "d-full")(src))))
            rows["blurred"].append(mad(quick.filter(blur), full.filter(blur)))
            rows["colour"].append(max(abs(a - b) for a, b in zip(ImageStat.Stat(quick).mean, ImageStat.Stat(full).mean)))
            with Image.open(src) as im:
                direct = ImageOps.exif_transpose(im).convert("RGB").resize(full.size, Image.Resampling.LANCZOS)
            rows["full_vs_direct"].append(mad(full, direct))
        diff[box] = {"mean": round(statistics.mean(rows["png"]), 2), "max": round(max(rows["png"]), 2),
                     "jpeg_outputs_mean": round(statistics.mean(rows["jpeg"]), 2),
                     "blurred_mean": round(statistics.mean(rows["blurred"]), 2),
                     "colour_shift_max": round(max(rows["colour"]), 2),
                     "full_render_vs_direct_lanczos_mean": round(statistics.mean(rows["full_vs_direct"]), 2)}
    shutil.rmtree(out, ignore_errors=True)
    results["preview"] = {
        "photos": len(paths), "mean_mb": round(sum(p.stat().st_size for p in paths) / len(paths) / 1e6, 2),
        "ms_per_image": {k: round(statistics.median(v), 2) for k, v in samples.items()},
        "ms_per_image_spread": {k: [round(min(v), 2), round(max(v), 2)] for k, v in samples.items()},
        "mean_abs_diff_vs_full_render": diff,
    }


LANE_PHASE_S = 2.0  # the lanes scenario alternates phases this long with drops and without
LANE_GAP_S = 0.3  # between one drop's thumbnail and the next drop, in a phase with drops


def bench_lanes(count: int, nlive: int, results: dict) -> None:
    """Issue 14's two lanes: 12 MP photos dropped one at a time during a catch-up of `count`
    12 MP photos (hard links to the throughput corpus, so the backlog costs no disk), against
    the same drops into an idle daemon just before.

    The backlog is real work, each photo a full render, and it is not waited out: the scenario
    runs for a few dozen phases and stops the daemon (a backlog of tiny photos would finish, but
    it makes the master the bottleneck, handling a thousand outcomes a second on one of the two
    cores the measured workers need: a drop then waits for CPU, not for a worker).

    - Latency of a drop: its close to its "ok" line. The limit is the idle run's p95 + 2 × one
      backlog photo's time per worker (the photo in hand and the prefetched one).
    - Backlog throughput: phases of LANE_PHASE_S with drops and without alternate, so whatever
      else loads this shared box hits both alike. In the phases without, the same files are
      written at the same pace outside the watched folder: writing 3 MB photos costs the kernel
      CPU time the workers would otherwise have, whoever writes them, and the target is about
      what the daemon does with them. Backlog photos per second in the phases with drops, on
      the worker time the drops left to it (each drop's own render time, from its ok line,
      taken out), against the phases without. The raw ratio is printed as a figure.
    """
    live = corpus.photo_set("cam12", nlive, 4000, 3000)
    corpus_files = live  # the backlog: hard links to the same photos, each name its own render
    data = [p.read_bytes() for p in live]
    for p in corpus_files:
        p.read_bytes()  # warm the page cache: the backlog decodes, it does not wait for the disk
    timer = threading.Event()  # never set: its wait() is a sleep that is not a poll

    def drop(daemon: BenchDaemon, photos: Path, name: str, blob: bytes) -> float:
        with open(photos / name, "wb") as f:
            f.write(blob)
        closed = time.perf_counter()
        return (daemon.wait_ok(name, timeout=600) - closed) * 1000

    # idle: the same drops into a daemon with nothing else to do
    shutil.rmtree(WORK, ignore_errors=True)
    photos = WORK / "photos"
    photos.mkdir(parents=True)
    daemon = BenchDaemon(WORK, photos, (256,), queue=1000, workers=WORKERS)
    idle: dict[str, float] = {}
    try:
        daemon.wait_line(r"catch-up done")
        timer.wait(1.0)  # let the daemon go idle
        for i, blob in enumerate(data):
            name = f"idle{i:03d}.jpg"
            idle[name] = drop(daemon, photos, name, blob)
            timer.wait(0.1)  # not synchronisation: spaces the drops as the latency bench does
    finally:
        daemon.stop()
    idle_ms = dict(daemon.ok_ms)

    shutil.rmtree(WORK, ignore_errors=True)
    photos.mkdir(parents=True)
    decoys = WORK / "decoys"
    decoys.mkdir()
    names = [f"bl{i:05d}.jpg" for i in range(count)]
    for i, name in enumerate(names):
        os.link(corpus_files[i % len(corpus_files)], photos / name)
    daemon = BenchDaemon(WORK, photos, (256,), queue=1000, workers=WORKERS)
    phases: list[tuple[bool, float, float, list[str]]] = []  # (with drops, start, end, photos dropped)
    busy: dict[str, float] = {}
    try:
        daemon.wait_line(r"ready", timeout=300)
        daemon.wait_done(4 * WORKERS, timeout=300)  # the backlog is under way
        while len(busy) < len(data):
            start, dropped = time.perf_counter(), []
            while time.perf_counter() - start < LANE_PHASE_S and len(busy) < len(data):
                name = f"live{len(busy):03d}.jpg"
                busy[name] = drop(daemon, photos, name, data[len(busy)])
                dropped.append(name)
                timer.wait(LANE_GAP_S)
            phases.append((True, start, time.perf_counter(), dropped))
            # the control: the same files written at the same pace, outside the watched folder
            start, every = time.perf_counter(), (time.perf_counter() - start) / len(dropped)
            for i, name in enumerate(dropped):
                timer.wait(max(0.0, start + i * every - time.perf_counter()))
                (decoys / name).write_bytes(data[int(name[4:7])])
            timer.wait(max(0.0, start + LANE_PHASE_S - time.perf_counter()))
            phases.append((False, start, time.perf_counter(), []))
        backlog_done = sum(1 for n in names if n in daemon.ok_at)
    finally:
        daemon.stop()
    if backlog_done >= count:
        raise RuntimeError(f"the {count}-photo backlog ran out before the drops ended: make it larger")
    done = sorted(daemon.ok_at[n] for n in names if n in daemon.ok_at)

    def rate(drops: bool, correct: bool) -> float:
        photos_done, seconds = 0, 0.0
        for with_drops, start, end, dropped in phases:
            if with_drops == drops:
                photos_done += bisect.bisect_left(done, end) - bisect.bisect_left(done, start)
                seconds += end - start - (sum(daemon.ok_ms[n] for n in dropped) / 1000 / WORKERS if correct else 0)
        return photos_done / seconds

    def pct(values: list[float], q: float) -> float:
        values = sorted(values)
        return round(values[int(q * (len(values) - 1))], 1)

    def idle_share(drops: bool) -> float:
        """The share of the workers' time in one kind of phase that went to no photo at all."""
        busy_ms = total_ms = 0.0
        for with_drops, start, end, _ in phases:
            if with_drops == drops:
                total_ms += (end - start) * 1000 * WORKERS
                busy_ms += sum(ms for n, ms in daemon.ok_ms.items() if start <= daemon.ok_at[n] < end)
        return round(1 - busy_ms / total_ms, 3)

    def paired() -> tuple[float, float]:
        """Each phase with drops against the phases without on either side of it (the load on this
        shared box drifts within a minute: pairs of neighbours see the same load): the median of
        those ratios, and its standard error (1.25 × 1.48 × MAD / √n), the method's noise."""
        def phase_rate(i: int, correct: bool) -> float:
            _, start, end, dropped = phases[i]
            taken = sum(daemon.ok_ms[n] for n in dropped) / 1000 / WORKERS if correct else 0
            return (bisect.bisect_left(done, end) - bisect.bisect_left(done, start)) / (end - start - taken)
        ratios = [phase_rate(i, True) / statistics.mean(phase_rate(j, False) for j in (i - 1, i + 1) if 0 <= j < len(phases))
                  for i, (with_drops, *_rest) in enumerate(phases) if with_drops]
        median = statistics.median(ratios)
        mad = statistics.median(abs(r - median) for r in ratios)
        return round(median, 3), round(1.2533 * 1.4826 * mad / len(ratios) ** 0.5, 3)

    def backlog_ms(drops: bool) -> float:
        """Median render time, from the ok lines, of the backlog photos done in one kind of phase."""
        return statistics.median(daemon.ok_ms[n] for n in names if n in daemon.ok_at and any(
            with_drops == drops and start <= daemon.ok_at[n] < end for with_drops, start, end, _ in phases))

    alone = rate(False, False)
    ratio_paired, ratio_stderr = paired()
    results["lanes"] = {
        "backlog_photos": count, "backlog": "12 MP JPEGs, hard links to the throughput corpus; the run stops before it is done",
        "backlog_done_during_run": backlog_done, "live": "12 MP JPEGs, 256 px", "live_drops": len(busy),
        "phases": f"{sum(1 for p in phases if p[0])} of {LANE_PHASE_S:g} s with drops, {sum(1 for p in phases if not p[0])} without, alternating",
        "backlog_rate_without_drops": round(alone, 2),
        "backlog_rate_with_drops_raw": round(rate(True, False), 2),
        "backlog_rate_with_drops": round(rate(True, True), 2),
        "backlog_render_ms": round(1000 * WORKERS / alone, 1),
        "live_p50_ms": pct(list(busy.values()), 0.5), "live_p95_ms": pct(list(busy.values()), 0.95),
        "idle_p50_ms": pct(list(idle.values()), 0.5), "idle_p95_ms": pct(list(idle.values()), 0.95),
        # the latency without the photo's own render time: what the queue and the master add
        "live_wait_p50_ms": pct([v - daemon.ok_ms[n] for n, v in busy.items()], 0.5),
        "live_wait_p95_ms": pct([v - daemon.ok_ms[n] for n, v in busy.items()], 0.95),
        "idle_wait_p95_ms": pct([v - idle_ms[n] for n, v in idle.items()], 0.95),
        "live_render_ms_p50": pct([daemon.ok_ms[n] for n in busy], 0.5),
        "live_render_ms_p95": pct([daemon.ok_ms[n] for n in busy], 0.95),
        "idle_render_ms_p50": pct([idle_ms[n] for n in idle], 0.5),
        "backlog_render_ms_p50_with_drops": backlog_ms(True), "backlog_render_ms_p50_without": backlog_ms(False),
        "worker_idle_share_with_drops": idle_share(True), "worker_idle_share_without": idle_share(False),
        "backlog_ratio_paired": ratio_paired, "backlog_ratio_paired_stderr": ratio_stderr,
        # each phase: with drops?, seconds, backlog photos done, their median render ms, drops
        "phase_detail": [(with_drops, round(end - start, 2), len(in_phase), statistics.median(in_phase) if in_phase else None, len(dropped))
                         for with_drops, start, end, dropped in phases
                         for in_phase in [[daemon.ok_ms[n] for n in names if n in daemon.ok_at and start <= daemon.ok_at[n] < end]]],
    }


MARGIN = 0.01  # a target met by less than this share of its limit is MARGINAL


def targets(r: dict) -> list[tuple[str, str, str]]:
    """(name, figure, verdict): PASS, MARGINAL (passing by less than 1 %), FAIL, FIGURE, or
    NOISY (the method's own noise, measured in the same run, is larger than the margin tested)."""
    rows = []

    def add(name: str, value: float, limit: float, below: bool, unit: str = "×") -> None:
        ok = value <= limit if below else value >= limit
        close = abs(value - limit) < MARGIN * abs(limit)
        verdict = "FAIL" if not ok else "MARGINAL" if close else "PASS"
        rows.append((name, f"{value:.3g}{unit} ({'≤' if below else '≥'} {limit:g}{unit})", verdict))

    def add_rounds(name: str, values: list[float], limit: float, below: bool) -> None:
        """A target judged on the median of the per-round ratios, with their spread printed."""
        add(name, statistics.median(values), limit, below)
        name, figure, verdict = rows[-1]
        rows[-1] = (name, f"{figure}, median of {len(values)} rounds, spread {min(values):.3g}–{max(values):.3g}", verdict)

    if "render_ms_per_image" in r:
        m = r["render_ms_per_image"]
        add("render one size / decode floor, per image", m["render_one"] / m["decode_floor"], 1.1, True)
        if "decode_floor_1024" in m:
            add("render three sizes (1024, 512, 256) / decode floor at the 1024 px size's DCT scale (1/2), per image",
                m["render_three"] / m["decode_floor_1024"], 1.3, True)
        rows.append(("  render three sizes / one size, per image (a figure)", f"{m['render_three'] / m['render_one']:.3g}×", "FIGURE"))
    if "preview" in r:
        pv = r["preview"]["ms_per_image"]
        mad = r["preview"]["mean_abs_diff_vs_full_render"]
        add("embedded preview, 75 px: speed-up over the full image's decode floor", pv["decode_floor"] / pv["preview_75"], 10, False)
        add("embedded preview, 256 px: speed-up over the full image's decode floor", pv["decode_floor"] / pv["preview_256"], 2.5, False)
        for box in (75, 256):
            d = mad[box] if box in mad else mad[str(box)]
            add(f"embedded preview, {box} px: mean abs difference to the full render (lossless thumbnails)", d["mean"], 3, True, " levels")
            rows.append((f"  {box} px: as JPEG q85 thumbnails; the full render vs a direct Lanczos; after a 1.5 px blur; colour shift",
                         f"{d['jpeg_outputs_mean']:.3g}; {d['full_render_vs_direct_lanczos_mean']:.3g}; {d['blurred_mean']:.3g}; "
                         f"{d['colour_shift_max']:.3g} levels", "FIGURE"))
    t = r.get("throughput", {}).get("12mp")
    if t:
        rr = r["throughput"].get("12mp_round_ratios")
        if rr:
            add_rounds("daemon / full-image decode floor, throughput, 12 MP", rr["daemon_1size / decode_floor"], 0.9, False)
            add_rounds("daemon three sizes / decode floor at the 1024 px size's DCT scale, time per photo, 12 MP",
                       [1 / x for x in rr["daemon_3sizes / decode_floor_1024"]], 1.3, True)
        else:
            add("daemon / full-image decode floor, throughput", t["daemon_1size"] / t["decode_floor"], 0.9, False)
        for size in ("12mp", "2mp"):
            rr = r["throughput"].get(size + "_round_ratios")
            if rr:
                add_rounds(f"daemon / bare render loop, one size, throughput, {size.upper()} (no slowdown from the daemon)",
                           rr["daemon_1size / bare_render_1size"], 0.95, False)
            cpu = r["throughput"].get(size + "_cpu_ms_per_photo")
            if cpu:
                med = {k: statistics.median(v) for k, v in cpu.items()}
                rows.append((f"  {size.upper()}: CPU per photo, bare render loop / daemon (workers + main process); decode floor (a figure)",
                             f"{med['bare_render_1size'] / med['daemon_1size']:.3g}× ({med['bare_render_1size']:.3g} / "
                             f"{med['daemon_1size']:.3g} ms); floor {med['decode_floor']:.3g} ms", "FIGURE"))
        if "pyvips_equal_settings" in t:
            add("daemon / pyvips at equal settings, throughput", t["daemon_1size"] / t["pyvips_equal_settings"], 1.25, False)
        rows.append(("  daemon three sizes / one size, time per photo (a figure)", f"{t['daemon_1size'] / t['daemon_3sizes']:.3g}×", "FIGURE"))
        rows.append(("daemon / classic example at equal settings (a figure, not a target)", f"{t['daemon_1size'] / t['classic_equal_settings']:.3g}×", "FIGURE"))
        rows.append(("daemon / classic example as written (q75, not upright; a figure)", f"{t['daemon_1size'] / t['classic_as_written']:.3g}×", "FIGURE"))
        o = r["orientation"]
        rows.append(("EXIF orientation: ours upright, classic as written not", f"ours {o['thumbwatch_upright']}, classic {o['classic_upright']}", "PASS" if o["thumbwatch_upright"] else "FAIL"))
    if "latency" in r:
        lat = r["latency"]
        add("latency p50 - decode time", lat["p50_ms"] - lat["decode_ms_median"], 10, True, " ms")
        add("latency p95 / p50", lat["p95_ms"] / lat["p50_ms"], 2, True)
        add("idle CPU, main + workers", lat["idle_cpu_percent"], 0.5, True, " %")
    if r.get("lanes", {}).get("live_drops"):
        ln = r["lanes"]
        limit = round(ln["idle_p95_ms"] + 2 * ln["backlog_render_ms"], 1)
        add(f"live drop p95 during a {ln['backlog_photos']:,}-photo backlog (limit: idle p95 + 2 × one backlog photo)", ln["live_p95_ms"], limit, True, " ms")
        rows.append(("  the same without each photo's own render time (the wait: queue, dispatch, log)",
                     f"{ln['live_wait_p95_ms']:.3g} ms (idle {ln['idle_wait_p95_ms']:.3g} ms)", "FIGURE"))
        name = "backlog throughput with live drops / without, on the worker time the drops left (median of neighbour pairs)"
        ratio, noise = ln["backlog_ratio_paired"], ln["backlog_ratio_paired_stderr"]
        if noise > 1 - 0.98 and abs(ratio - 0.98) < 2 * noise:  # this box can't tell now: say so
            rows.append((name, f"{ratio:.3g}× ± {noise:.2g} (≥ 0.98×): the method's noise now is larger than the margin", "NOISY"))
        else:
            add(name, ratio, 0.98, False)
        rows.append(("  the same over all phases, with the drops' renders taken out; and raw",
                     f"{ln['backlog_rate_with_drops'] / ln['backlog_rate_without_drops']:.3g}×; "
                     f"{ln['backlog_rate_with_drops_raw'] / ln['backlog_rate_without_drops']:.3g}×", "FIGURE"))
        if "worker_idle_share_with_drops" in ln:
            rows.append(("  workers' idle share, with drops / without; backlog photo's render, with / without (load-independent)",
                         f"{ln['worker_idle_share_with_drops']:.1%} / {ln['worker_idle_share_without']:.1%}; "
                         f"{ln['backlog_render_ms_p50_with_drops']:.3g} / {ln['backlog_render_ms_p50_without']:.3g} ms", "FIGURE"))
    if "catchup" in r:
        c = r["catchup"]
        add(f"catch-up of {c['photos']:,} / scandir+stat of photos and thumbnails", c["daemon_catchup_s"] / c["scandir_stat_walk_s"], 4, True)
    mem = r.get("memory", {})
    if "main_peak_rss_mb_burst" in mem:
        add(f"main process peak RSS, {mem['main_peak_rss_mb_burst']['photos']:,}-file burst", mem["main_peak_rss_mb_burst"]["peak_mb"], 80, True, " MB")
    if "worker_peak_rss_mb_12mp" in mem:
        add("worker peak RSS at 12 MP, one size", mem["worker_peak_rss_mb_12mp"]["one_size"], 40, True, " MB")
    return rows


def machine() -> dict:
    cpu = cpu_name()
    from PIL import features

    return {
        "host": platform.node(), "arch": platform.machine(), "cpu": cpu, "cpus": os.cpu_count(),
        "usable_cpus": WORKERS if not hasattr(os, "sched_getaffinity") else len(os.sched_getaffinity(0)),
        "python": platform.python_version(), "pillow": Image.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo") or "no (plain libjpeg)", "pyvips": methods.pyvips_available(),
    }


def report(r: dict) -> str:
    m = r["machine"]
    lines = [f"thumbwatch bench — {m['cpu']} ({m['arch']}), {m['cpus']} CPUs ({m['usable_cpus']} usable), "
             f"Python {m['python']}, Pillow {m['pillow']}, libjpeg-turbo {m['libjpeg_turbo']}, {m['pyvips'] or 'no pyvips'}",
             f"{r['workers']} processes per method; equal-settings rows: " + ", ".join(f"{k} {v}" for k, v in methods.SETTINGS.items()), ""]
    for label in ("12mp", "2mp"):
        t = r.get("throughput", {}).get(label)
        if not t:
            continue
        base = t["bare_render_1size"]
        lines.append(f"throughput, {label.upper()} → 256 px, {r['workers']} processes (median of {r['repeats']}):")
        lines.append(f"  {'method':34s} {'img/s':>7s} {'× bare render':>14s}")
        for name, rate in t.items():
            lines.append(f"  {name:34s} {rate:7.1f} {rate / base:14.2f}")
        cpu = r["throughput"].get(label + "_main_cpu_ms_per_photo")
        if cpu:
            lines.append("  daemon main process CPU per photo (ms): " + ", ".join(f"{k} {v}" for k, v in cpu.items()))
        lines.append("")
    if "render_ms_per_image" in r:
        lines.append("in-process, CPU ms per 12 MP image: " + ", ".join(f"{k} {v}" for k, v in r["render_ms_per_image"].items()))
    if "preview" in r:
        pv = r["preview"]
        spread = pv.get("ms_per_image_spread", {})
        lines.append(f"embedded previews, {pv['photos']} photo-like 12 MP JPEGs of {pv['mean_mb']} MB with a 160×120 EXIF thumbnail "
                     "and a 1600 px MPF preview; CPU ms per image, median (fastest–slowest round):")
        lines.append("  " + ", ".join(f"{k} {v}" + (f" ({spread[k][0]}–{spread[k][1]})" if k in spread else "")
                                      for k, v in pv["ms_per_image"].items()))
        for box, d in pv["mean_abs_diff_vs_full_render"].items():
            lines.append(f"  {box} px against the full render, mean abs difference in levels: lossless {d['mean']} (worst photo {d['max']}), "
                         f"as JPEG q85 thumbnails {d['jpeg_outputs_mean']}, after a 1.5 px blur {d['blurred_mean']}, "
                         f"colour shift ≤ {d['colour_shift_max']}; the full render against a direct Lanczos {d['full_render_vs_direct_lanczos_mean']}")
    if "lanes" in r:
        lines.append("two lanes: " + ", ".join(f"{k} {v}" for k, v in r["lanes"].items()))
    if "latency" in r:
        lines.append("latency (close → the daemon's ok line): " + ", ".join(f"{k} {v}" for k, v in r["latency"].items()))
    if "catchup" in r:
        lines.append("catch-up: " + ", ".join(f"{k} {v}" for k, v in r["catchup"].items()))
    if "memory" in r:
        lines.append("memory: " + json.dumps(r["memory"]))
    lines += ["", "targets:"]
    for name, value, verdict in targets(r):
        lines.append(f"  {verdict:8s}  {name}: {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer photos and repeats: a smoke run")
    parser.add_argument("--only", default="render,preview,throughput,latency,lanes,catchup,memory")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="processes per method and daemon workers (default: the machine's usable CPUs)")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json", help="where to write the results (default: %(default)s)")
    args = parser.parse_args(argv)
    global WORKERS
    if args.workers:
        WORKERS = args.workers
    only = set(args.only.split(","))
    # The allocator settings of the daemon's workers, for this process and every process it
    # forks: all methods run alike, and none at the mercy of glibc's moving thresholds.
    keep_freed_memory()
    repeats = 1 if args.quick else args.repeats
    n12, n2, nlat, ncatch, nburst, npv = (24, 24, 10, 10_000, 2_000, 8) if args.quick else (80, 120, 40, 100_000, 20_000, 16)
    results: dict = {
        "machine": machine(),
        "workers": WORKERS,
        "equal_settings": methods.SETTINGS,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "repeats": repeats,
        "quick": args.quick,
    }
    steps = [
        ("render", lambda: bench_render(n12, repeats, results)),
        ("preview", lambda: bench_preview(npv, repeats, results)),
        ("throughput", lambda: bench_throughput(n12, n2, repeats, results)),
        ("latency", lambda: bench_latency(nlat, results)),
        ("lanes", lambda: bench_lanes(nburst, 20 if args.quick else 40, results)),
        ("catchup", lambda: bench_catchup(ncatch, repeats, results)),
        ("memory", lambda: bench_memory(nburst, results)),
    ]
    for name, step in steps:
        if name in only:
            started = time.perf_counter()
            print(f"[bench] {name} …", file=sys.stderr, flush=True)
            step()
            print(f"[bench] {name} done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    results["targets"] = [{"name": n, "value": v, "verdict": verdict} for n, v, verdict in targets(results)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    print(report(results))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
