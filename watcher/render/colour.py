"""Colour management for thumbnails: embedded ICC profiles, CMYK, and the sRGB that browsers assume.

Pure functions over small (already downscaled) images. Building an lcms transform costs far
more than applying one to a thumbnail, so transforms are cached per profile (by hash), and so
are failures: a broken profile is tried once per worker, not once per photo.
"""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict

from PIL import Image, ImageCms

_CACHE_SIZE = 64
_transforms: OrderedDict[tuple[bytes, str, str], ImageCms.ImageCmsTransform | None] = OrderedDict()
_spaces: OrderedDict[bytes, str | None] = OrderedDict()
_srgb: ImageCms.ImageCmsProfile | None = None

# The ICC colour space of a profile -> the Pillow modes whose pixels it can describe.
_MODES_FOR_SPACE = {"RGB": ("RGB", "RGBA"), "GRAY": ("L", "LA"), "CMYK": ("CMYK",)}


def _digest(profile: bytes) -> bytes:
    return hashlib.blake2b(profile, digest_size=16).digest()


def _remember(cache: OrderedDict, key, value):
    cache[key] = value
    if len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return value


def profile_space(profile: bytes) -> str | None:
    """'RGB', 'GRAY', 'CMYK'... for a profile lcms can parse, else None (a broken profile)."""
    key = _digest(profile)
    if key in _spaces:
        return _spaces[key]
    try:
        space = ImageCms.ImageCmsProfile(io.BytesIO(profile)).profile.xcolor_space.strip()
    except (OSError, ValueError, TypeError, ImageCms.PyCMSError):
        space = None
    return _remember(_spaces, key, space)


def fits(profile: bytes, mode: str) -> bool:
    """Can this profile travel with pixels of this mode (keep it as is in the thumbnail)?"""
    return mode in _MODES_FOR_SPACE.get(profile_space(profile) or "", ())


def _transform(profile: bytes, in_mode: str, out_mode: str) -> ImageCms.ImageCmsTransform | None:
    global _srgb
    key = (_digest(profile), in_mode, out_mode)
    if key in _transforms:
        _transforms.move_to_end(key)
        return _transforms[key]
    if _srgb is None:
        _srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        transform = ImageCms.buildTransform(source, _srgb, in_mode, out_mode, ImageCms.Intent.PERCEPTUAL)
    except (OSError, ValueError, TypeError, ImageCms.PyCMSError):
        transform = None  # broken, or not for these pixels (an RGB profile on a gray JPEG)
    return _remember(_transforms, key, transform)


def to_srgb(im: Image.Image, profile: bytes | None) -> Image.Image:
    """The image's pixels in sRGB (RGB/RGBA), or L/LA left as they are; CMYK always becomes RGB.

    With no usable profile the pixels are taken to be sRGB already (what every browser does),
    except CMYK, which gets Pillow's naive conversion.
    """
    if im.mode in ("L", "LA"):
        return im  # grayscale stays grayscale; a gray gamma differs from sRGB's only slightly
    out_mode = "RGBA" if im.mode == "RGBA" else "RGB"
    if profile and im.mode in ("RGB", "RGBA", "CMYK"):
        transform = _transform(profile, im.mode, out_mode)
        if transform is not None:
            try:
                return ImageCms.applyTransform(im, transform)
            except (OSError, ValueError, ImageCms.PyCMSError):
                pass
    return im if im.mode == out_mode else im.convert(out_mode)


def flatten(im: Image.Image, background: str) -> Image.Image:
    """Composite an image with alpha onto an opaque '#rrggbb' background (JPEG has no alpha)."""
    if im.mode not in ("RGBA", "LA"):
        return im
    rgb = tuple(int(background[i : i + 2], 16) for i in (1, 3, 5))
    if im.mode == "LA" and rgb[0] == rgb[1] == rgb[2]:
        base = Image.new("L", im.size, rgb[0])
        base.paste(im.getchannel("L"), mask=im.getchannel("A"))
        return base
    base = Image.new("RGB", im.size, rgb)
    src = im.convert("RGBA") if im.mode == "LA" else im
    base.paste(src.convert("RGB"), mask=src.getchannel("A"))
    return base
