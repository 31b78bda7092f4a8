"""Rendering one photo in-process for the format tests: a size, the thumbnails it makes (each
checked against the size the renderer reported), the one-line reason a bad file fails with."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageStat

from watcher.config import OutputConfig, SizeSpec
from watcher.paths import Target
from watcher.render import RenderError, RenderSettings, render

MAX_PIXELS = 200_000_000
EXT = {"jpeg": "jpg", "png": "png", "webp": "webp"}


def size(name: str = "s", width: int = 100, height: int = 100, **kw) -> SizeSpec:
    return SizeSpec(name=name, width=width, height=height, **kw)


def run(src: Path, out: Path, *sizes: SizeSpec, **output) -> list[Image.Image]:
    """The thumbnails of `src`, one per size (default: one 100×100), as written."""
    sizes = sizes or (size(),)
    targets = [Target(s, str(out / f"{s.name}.{EXT[s.format]}")) for s in sizes]
    result = render(str(src), targets, RenderSettings(OutputConfig(sizes=tuple(sizes), **output), MAX_PIXELS))
    images = []
    for path, w, h in result.outputs:
        im = Image.open(path)
        im.load()
        assert im.size == (w, h)
        images.append(im)
    return images


def run_rgb(src: Path, out: Path, *sizes: SizeSpec, **output) -> list[Image.Image]:
    return [im.convert("RGB") for im in run(src, out, *sizes, **output)]


def fails(src: Path, tmp_path: Path) -> str:
    """The reason rendering `src` fails with (a RenderError itself, not a subclass)."""
    with pytest.raises(RenderError) as err:
        run(src, tmp_path / "out")
    assert type(err.value) is RenderError
    return str(err.value)


def mean(im: Image.Image) -> tuple[int, int, int]:
    return tuple(round(v) for v in ImageStat.Stat(im).mean[:3])
