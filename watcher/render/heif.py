"""HEIC/HEIF (and AVIF with an older pillow-heif) through pillow-heif, the `heif` extra.

What libheif gives us, and what we rely on:
- the primary image of the file (a burst or collection holds several; the primary is the one
  a viewer shows), in 8 bits per channel whatever the file stores (10-bit HDR photos are scaled
  down, not clipped), RGB or RGBA;
- HEIF's own transforms (irot, imir, clap) applied by the decoder. The EXIF orientation a phone
  also writes describes the same turn: it is NOT applied again (pillow-heif resets it to 1, and
  the Source says `oriented` so the pipeline turns nothing whatever the EXIF says);
- depth maps, gain maps and other auxiliary images are not decoded (options set below);
- the ICC profile (Apple's Display P3) as for any photo; an nclx colour description with other
  primaries than sRGB's is turned into an ICC profile (colour.nclx_profile).

The fast path, with output.embedded_preview: a thumbnail item of the primary image (phones store
one of ~320-512 px) stands in for the photo when it covers the largest size, is a scaled copy
(same aspect within 1 %, same transforms, same colour profile: pillow-heif's draft() picks only
such), decodes cleanly and has no letterbox bars. Otherwise the full image is decoded.
"""

from __future__ import annotations

import logging

from PIL import Image, UnidentifiedImageError

from . import colour, preview
from .diagnose import PHOTO_ERRORS, label
from .errors import RenderError
from .formats import Source

logger = logging.getLogger(__name__)

_registered = False


def _register() -> None:
    """Import pillow-heif and register its Pillow plugin, once per process (a worker, never the
    master: only a HEIF photo in a worker's hands gets here)."""
    global _registered
    if not _registered:
        import pillow_heif
        from pillow_heif import options

        options.DEPTH_IMAGES = False  # depth and gain maps: never shown, not worth decoding
        options.AUX_IMAGES = False
        options.THUMBNAILS = True
        pillow_heif.register_heif_opener()
        if hasattr(pillow_heif, "register_avif_opener"):  # before 1.0; formats.py sends AVIF here only without Pillow's own
            pillow_heif.register_avif_opener()
        _registered = True


def open(f, kind: str | None, src: str, settings) -> Source:  # noqa: A001 - the decoder interface
    _register()
    return HeifSource(_open_image(f, kind), kind, f)


def _open_image(f, kind: str | None) -> Image.Image:
    f.seek(0)
    try:
        return Image.open(f, formats=("AVIF",) if kind == "avif" else ("HEIF",))
    except UnidentifiedImageError:
        # pillow-heif turns libheif's refusal into a SyntaxError that Pillow swallows: ask
        # libheif again for its reason
        raise RenderError(_why_unreadable(f, kind)) from None
    except PHOTO_ERRORS as err:
        raise RenderError(_heif_reason(str(err), kind)) from None


def _why_unreadable(f, kind: str | None) -> str:
    import pillow_heif

    f.seek(0)
    try:
        pillow_heif.open_heif(f)
    except Exception as err:  # noqa: BLE001 - libheif's errors come as several types; we want its words
        return _heif_reason(str(err), kind)
    return f"corrupt {label(kind)} header"


def _heif_reason(text: str, kind: str | None) -> str:
    """libheif's message ("Invalid input: Unexpected end of file: ...") in our words."""
    name = label(kind)
    lowered = text.lower()
    if "end of file" in lowered or "truncated" in lowered or "no more input" in lowered:
        return f"truncated {name}"
    if "security limit" in lowered:
        return f"image too large for libheif ({text.split(':')[-1].strip() or text})"
    if "unsupported" in lowered:
        return f"unsupported {name} ({text.split(':')[-1].strip() or text})"
    if "no such" in lowered and "item" in lowered or "no primary" in lowered or "no 'pitm'" in lowered:
        return f"corrupt {name} (no image in it)"
    return f"corrupt {name} ({text})" if text else f"corrupt {name}"


class HeifSource(Source):
    def __init__(self, image: Image.Image, kind: str | None, f):
        super().__init__(image, kind, oriented=True)
        self._f = f
        nclx = image.info.get("nclx_profile")
        if not image.info.get("icc_profile") and nclx:
            profile = colour.nclx_profile(nclx)
            if profile is not None:
                image.info["icc_profile"] = profile

    def decode(self, need: tuple[int, int] | None, embedded_preview: bool) -> tuple[Image.Image, tuple | None]:
        if need is not None and embedded_preview:
            found = self._thumbnail(need)
            if found is not None:
                return found, None
        try:
            self.image.load()
        except PHOTO_ERRORS as err:
            raise RenderError(_heif_reason(str(err), self.kind)) from None
        return self.image, None

    def _thumbnail(self, need: tuple[int, int]) -> Image.Image | None:
        """The photo's thumbnail item if it passes every check, else None (and the image is
        opened again, to be decoded in full)."""
        im = self.image
        width, height = im.size
        if im.draft(im.mode, need) is None:
            return None
        why = None
        try:
            im.load()
        except Exception as err:  # noqa: BLE001 - a broken thumbnail can raise nearly anything; the photo is the fallback
            why = f"does not decode ({err or type(err).__name__})"
        if why is None:
            ratio, photo_ratio = im.width / im.height, width / height
            if abs(ratio / photo_ratio - 1) > preview.ASPECT_TOLERANCE:
                why = f"aspect ratio {ratio:.3f}, the photo's is {photo_ratio:.3f}"
            elif preview.has_bars(im):
                why = "letterbox or pillarbox bars"
        if why is None:
            return im
        logger.debug("HEIF thumbnail item %dx%d not used: %s", im.width, im.height, why)
        info = im.info
        im.close()
        self.image = _open_image(self._f, self.kind)
        self.image.info = info  # with the profile made from nclx, if any
        return None
