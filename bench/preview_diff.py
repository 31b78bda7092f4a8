"""Embedded previews on your own JPEGs: which preview each size would use, how fast, how close.

    .venv/bin/python -m bench.preview_diff [--sizes 75,128,256] PHOTO.jpg ...

For each photo and size: the preview used (or why none), ms per thumbnail with and without
output.embedded_preview (median of 5, in-process), and the mean absolute difference between the
two thumbnails, as the bench reports it: on lossless (PNG) thumbnails, then as JPEG q85
thumbnails, after a 1.5 px Gaussian blur (a shift, crop or colour cast shows there; fine
texture does not), and the largest per-channel difference of the means. The last column is the
full render's own distance to a direct Lanczos resize of the full-resolution photo.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageChops, ImageFilter, ImageOps, ImageStat

from watcher.render import preview
from watcher.config import OutputConfig, SizeSpec
from watcher.paths import Target
from watcher.render import RenderSettings, render


def _mad(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def _thumb(src: Path, out: Path, box: int, embedded: bool, fmt: str) -> tuple[Image.Image, float]:
    spec = SizeSpec("s", box, box, format=fmt)
    target = out / f"{src.stem}-{box}-{embedded}.{'png' if fmt == 'png' else 'jpg'}"
    settings = RenderSettings(OutputConfig(sizes=(spec,), embedded_preview=embedded), 200_000_000)
    times = []
    for _ in range(5 if fmt == "jpeg" else 1):
        start = time.perf_counter()
        render(str(src), [Target(spec, str(target))], settings)
        times.append((time.perf_counter() - start) * 1000)
    with Image.open(target) as im:
        return im.convert("RGB"), statistics.median(times)


def _chosen(src: Path, box: int) -> str:
    """The preview preview.load() would take for a `box` px square (the smallest that passes
    every check), or why there is none; the same walk as load(), spelled out."""
    with open(src, "rb") as f, Image.open(f) as im:
        w, h = im.size
        scale = min(box / w, box / h, 1.0)
        need = (max(1, round(w * scale)), max(1, round(h * scale)))
        try:
            candidates = preview.find(f)
        except (OSError, ValueError, IndexError) as err:
            return f"none (unreadable headers: {err})"
        reasons = []
        for c in sorted(candidates, key=lambda c: c.width * c.height):
            why = preview._unfit(c, (w, h), need)
            if why is None:
                decoded = preview._decode(f, c, im.mode, need)
                if isinstance(decoded, tuple):
                    return f"{c.source} {c.width}x{c.height}"
                why = decoded
            reasons.append(f"{c.source} {c.width}x{c.height}: {why}")
        return "none" + (f" ({'; '.join(reasons)})" if reasons else " (no previews)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.preview_diff", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="75,128,256")
    parser.add_argument("photos", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print(f"{'photo':34s} {'size':>4s} {'ms full':>8s} {'ms prev':>8s} {'png':>5s} {'jpeg':>5s} {'blur':>5s} "
          f"{'colour':>6s} {'full~direct':>11s}  preview used")
    blur = ImageFilter.GaussianBlur(1.5)
    with tempfile.TemporaryDirectory(prefix="tw-preview-") as tmp:
        out = Path(tmp)
        for src in args.photos:
            with Image.open(src) as im:
                upright = ImageOps.exif_transpose(im).convert("RGB")
            for box in (int(b) for b in args.sizes.split(",")):
                full_png, _ = _thumb(src, out, box, False, "png")
                quick_png, _ = _thumb(src, out, box, True, "png")
                full_jpg, ms_full = _thumb(src, out, box, False, "jpeg")
                quick_jpg, ms_quick = _thumb(src, out, box, True, "jpeg")
                colour = max(abs(a - b) for a, b in zip(ImageStat.Stat(quick_png).mean, ImageStat.Stat(full_png).mean))
                direct = upright.resize(full_png.size, Image.Resampling.LANCZOS)
                print(f"{src.name[:34]:34s} {box:4d} {ms_full:8.1f} {ms_quick:8.1f} {_mad(quick_png, full_png):5.2f} "
                      f"{_mad(quick_jpg, full_jpg):5.2f} {_mad(quick_png.filter(blur), full_png.filter(blur)):5.2f} "
                      f"{colour:6.2f} {_mad(full_png, direct):11.2f}  {_chosen(src, box)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
