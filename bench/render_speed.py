"""How close render() comes to the cost of just decoding, on camera-like 12 MP JPEGs.

    .venv/bin/python bench/render_speed.py [--images 4] [--rounds 7]

Prints per-case medians (ms per image) and the two ratios the render targets:
  one size (256 box)            <= 1.15 x decode floor
  three sizes (1024/512/256)    <= 1.8  x one size
where the decode floor is Image.open + draft('RGB', (256, 256)) + load(), nothing else.
The photos are generated once into bench/cache/ (ignored by git).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from PIL import Image  # noqa: E402

from imagegen import camera_like_jpeg  # noqa: E402
from watcher.config import OutputConfig, SizeSpec  # noqa: E402
from watcher.paths import Target  # noqa: E402
from watcher.render import RenderSettings, render  # noqa: E402

CACHE = REPO / "bench" / "cache"


def photos(count: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = CACHE / f"camera_12mp_{i}.jpg"
        if not path.exists():
            camera_like_jpeg(path, 4000, 3000, quality=92)
        paths.append(path)
    return paths


def decode_floor(src: Path) -> None:
    with Image.open(src) as im:
        im.draft("RGB", (256, 256))
        im.load()


def make_render(sizes: tuple[SizeSpec, ...], out: Path):
    settings = RenderSettings(OutputConfig(sizes=sizes), 200_000_000)

    def run(src: Path) -> None:
        targets = [Target(s, str(out / s.name / src.name)) for s in sizes]
        render(str(src), targets, settings)

    return run


def measure(fn, images: list[Path], rounds: int) -> float:
    """Median over rounds of the mean ms per image (cases interleaved by the caller)."""
    samples = []
    for _ in range(rounds):
        gc.collect()
        start = time.perf_counter()
        for src in images:
            fn(src)
        samples.append((time.perf_counter() - start) * 1000 / len(images))
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    images = photos(args.images)
    mb = sum(p.stat().st_size for p in images) / len(images) / 1e6
    with tempfile.TemporaryDirectory(prefix="tw-bench-") as tmp:
        out = Path(tmp)
        one = make_render((SizeSpec("s256", 256, 256),), out)
        three = make_render((SizeSpec("s1024", 1024, 1024), SizeSpec("s512", 512, 512), SizeSpec("s256", 256, 256)), out)
        cases = {"decode floor": decode_floor, "render 1 size (256)": one, "render 3 sizes (1024/512/256)": three}
        for fn in cases.values():  # warm up: page cache, imports, lcms
            for src in images:
                fn(src)
        results = {name: [] for name in cases}
        for _ in range(3):  # interleave the cases so drift in machine load hits all alike
            for name, fn in cases.items():
                results[name].append(measure(fn, images, args.rounds))
        medians = {name: statistics.median(values) for name, values in results.items()}
    print(f"{len(images)} camera-like JPEGs, 4000x3000 q92, {mb:.1f} MB each; Pillow {Image.__version__}; pid {os.getpid()}")
    for name, ms in medians.items():
        print(f"  {name:32s} {ms:7.1f} ms/image (median)")
    floor, single, triple = medians.values()
    print(f"  one size / decode floor          {single / floor:7.3f}   (target <= 1.15)")
    print(f"  three sizes / one size           {triple / single:7.3f}   (target <= 1.8)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
