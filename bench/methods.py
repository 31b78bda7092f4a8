"""The ways of making a thumbnail that are compared, each a top-level function for a process pool.

Rows "at equal settings" all write what thumbwatch writes: JPEG quality 85, 4:2:0 chroma, no
metadata, upright, Lanczos (after DCT-domain scaling where the method does it), to a temp name
renamed into place. The classic example as written (quality 75, orientation ignored, written in
place) is kept apart as a figure.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageOps

from watcher.config import OutputConfig, SizeSpec
from watcher.paths import Target
from watcher.render import RenderSettings, render

QUALITY = 85
SUBSAMPLING = "4:2:0"
FILTER = "Lanczos-3 (Pillow: reducing_gap 3.0 after DCT scaling; libvips: lanczos3 after shrink-on-load)"
ONE_SIZE = (SizeSpec("s256", 256, 256, quality=QUALITY),)
THREE_SIZES = (SizeSpec("s1024", 1024, 1024), SizeSpec("s512", 512, 512), SizeSpec("s256", 256, 256))
SETTINGS = {"quality": QUALITY, "subsampling": SUBSAMPLING, "metadata": "stripped", "filter": FILTER,
            "write": "temp name, then rename"}


def decode_floor(job: tuple[str, str]) -> None:
    """Open, draft to the 1/8 DCT scale, load: the least any JPEG thumbnailer must do."""
    src, _out = job
    with Image.open(src) as im:
        im.draft("RGB", (256, 256))
        im.load()


def decode_floor_1024(job: tuple[str, str]) -> None:
    """The floor for three sizes up to 1024 px: open, draft to the DCT scale the 1024 px box
    forces (1/2 for a 12 MP photo: 1/4 would be smaller than the box), load."""
    src, _out = job
    with Image.open(src) as im:
        w, h = im.size
        scale = min(1024 / w, 1024 / h)
        im.draft("RGB", (round(w * scale), round(h * scale)))
        im.load()


def classic_as_written(job: tuple[str, str]) -> None:
    """The classic `Pool().map(create_thumbnail, paths)` example as written: Pillow's defaults
    (quality 75), EXIF orientation ignored, written in place."""
    src, out = job
    with Image.open(src) as im:
        im.thumbnail((256, 256))
        im.save(os.path.join(out, os.path.basename(src)))


def _save_atomic(im: Image.Image, path: str) -> None:
    temp = os.path.join(os.path.dirname(path), f".{os.getpid()}-{os.path.basename(path)}.tmp")  # per writer, as ours
    im.save(temp, "JPEG", quality=QUALITY, subsampling=SUBSAMPLING)
    os.replace(temp, path)


def classic_equal(job: tuple[str, str]) -> None:
    """The classic example at thumbwatch's settings: upright (exif_transpose), quality 85, 4:2:0,
    no metadata, Lanczos with reducing_gap 3.0 (DCT scaling inside thumbnail()), temp + rename."""
    src, out = job
    with Image.open(src) as im:
        im.thumbnail((256, 256), Image.Resampling.LANCZOS, reducing_gap=3.0)
        im = ImageOps.exif_transpose(im)
        im.info = {}
        _save_atomic(im, os.path.join(out, "classic", os.path.basename(src)))


def _render(src: str, out: str, sizes: tuple[SizeSpec, ...], embedded: bool = False) -> None:
    targets = [Target(s, os.path.join(out, s.name, os.path.basename(src))) for s in sizes]
    render(src, targets, RenderSettings(OutputConfig(sizes=sizes, embedded_preview=embedded), 200_000_000))


def render_one(job: tuple[str, str]) -> None:
    _render(*job, ONE_SIZE)


def render_three(job: tuple[str, str]) -> None:
    _render(*job, THREE_SIZES)


def pyvips_equal(job: tuple[str, str]) -> None:
    """libvips' thumbnail (shrink-on-load, lanczos3, upright by default) at the same settings."""
    import pyvips

    src, out = job
    path = os.path.join(out, "pyvips", Path(src).stem + ".jpg")
    temp = os.path.join(os.path.dirname(path), f".{os.getpid()}-{os.path.basename(path)}.tmp.jpg")
    pyvips.Image.thumbnail(src, 256, height=256).jpegsave(temp, Q=QUALITY, strip=True, subsample_mode="on")
    os.replace(temp, path)


def pyvips_available() -> str | None:
    try:
        import pyvips

        return f"pyvips {pyvips.__version__}, libvips {pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}"
    except Exception:
        return None
