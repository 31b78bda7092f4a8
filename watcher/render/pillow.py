"""The formats Pillow decodes itself: JPEG (and MPO), PNG, WebP, GIF, TIFF, BMP, and AVIF when
Pillow has its AVIF plugin (which reports AVIF's irot/imir as the EXIF orientation, so the
pipeline turns it upright once, as for a JPEG; its nclx primaries we read ourselves).

JPEG has the fast paths: libjpeg's DCT scaling (decode at the smallest 1/2, 1/4 or 1/8 scale
that still covers the largest thumbnail) and, with output.embedded_preview, a camera's embedded
preview instead of the photo (preview.py).
"""

from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError

from . import colour, preview
from .diagnose import PHOTO_ERRORS, check_jpeg_frame, reason, unidentified
from .errors import RenderError
from .formats import Source
from ..paths import JPEG_EXTS

# What we ask Pillow to recognise (JPEG's opener also yields MPO, which may not be named in
# formats=); AVIF only for a file that looks like one.
BASE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")
_NCLX_HEAD = 64 * 1024  # an AVIF's meta box, with its colr, comes first and is small


def open(f, kind: str | None, src: str, settings) -> Source:  # noqa: A001 - the decoder interface
    if kind == "jpeg":
        check_jpeg_frame(f, settings.max_pixels)
    jpeg_named = os.path.splitext(src)[1].lower() in JPEG_EXTS
    formats = (*BASE_FORMATS, "AVIF") if kind == "avif" else BASE_FORMATS
    try:
        im = Image.open(f, formats=formats)
    except UnidentifiedImageError:
        raise RenderError(unidentified(kind, f, jpeg_named)) from None
    except PHOTO_ERRORS as err:
        raise RenderError(reason(err, kind, f)) from None
    if kind == "avif" and not im.info.get("icc_profile"):
        _profile_from_nclx(im, f)
    return PillowSource(im, kind, f)


def _profile_from_nclx(im: Image.Image, f) -> None:
    """An AVIF that describes its colour by nclx primaries other than sRGB's (Display P3,
    BT.2020) gets an ICC profile made from them, so the pipeline converts it to sRGB as it
    would a profiled photo (Pillow's plugin reports no primaries)."""
    try:
        f.seek(0)
        nclx = colour.read_nclx(f.read(_NCLX_HEAD))
    except OSError:
        return
    profile = colour.nclx_profile(nclx) if nclx else None
    if profile is not None:
        im.info["icc_profile"] = profile


class PillowSource(Source):
    def __init__(self, image: Image.Image, kind: str | None, f, *, previews: bool = True, orientation: int | None = None):
        """`previews`: look for a camera's embedded previews in `f` when asked to; `orientation`:
        the one to apply instead of the image's own EXIF (a JPEG taken out of a RAW file)."""
        super().__init__(image, kind)
        self._f = f
        self._previews = previews
        if orientation is not None:
            self.orientation = orientation

    def decode(self, need: tuple[int, int] | None, embedded_preview: bool) -> tuple[Image.Image, tuple | None]:
        im = self.image
        if need is None or im.format not in ("JPEG", "MPO"):
            im.load()
            return im, None
        if embedded_preview and self._previews:
            found = preview.load(self._f, im, need)
            if found is not None:
                return found
        # libjpeg's DCT scaling: the smallest of 1/8, 1/4, 1/2 that still covers the biggest size
        drafted = im.draft(im.mode, need)
        im.load()
        return im, drafted[1] if drafted is not None else None
