"""The ways of making a thumbnail that are compared, each a top-level function for a process pool."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from watcher.config import OutputConfig, SizeSpec
from watcher.paths import Target
from watcher.render import RenderSettings, render

ONE_SIZE = (SizeSpec("s256", 256, 256),)
THREE_SIZES = (SizeSpec("s1024", 1024, 1024), SizeSpec("s512", 512, 512), SizeSpec("s256", 256, 256))


def decode_floor(job: tuple[str, str]) -> None:
    """Open, draft to the 1/8 DCT scale, load: the least any JPEG thumbnailer must do."""
    src, _out = job
    with Image.open(src) as im:
        im.draft("RGB", (256, 256))
        im.load()


def classic(job: tuple[str, str]) -> None:
    """The classic `Pool().map(create_thumbnail, paths)` example: ignores EXIF orientation."""
    src, out = job
    with Image.open(src) as im:
        im.thumbnail((256, 256))
        im.save(os.path.join(out, os.path.basename(src)))


def _render(src: str, out: str, sizes: tuple[SizeSpec, ...]) -> None:
    targets = [Target(s, os.path.join(out, s.name, os.path.basename(src))) for s in sizes]
    render(src, targets, RenderSettings(OutputConfig(sizes=sizes), 200_000_000))


def render_one(job: tuple[str, str]) -> None:
    _render(*job, ONE_SIZE)


def render_three(job: tuple[str, str]) -> None:
    _render(*job, THREE_SIZES)


def pyvips_thumbnail(job: tuple[str, str]) -> None:
    import pyvips

    src, out = job
    pyvips.Image.thumbnail(src, 256, height=256).write_to_file(os.path.join(out, Path(src).stem + ".jpg") + "[Q=85]")


def pyvips_available() -> str | None:
    try:
        import pyvips

        return f"pyvips {pyvips.__version__}, libvips {pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}"
    except Exception:
        return None
