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


# nclx colour_primaries codes (ISO/IEC 23091-2) that are sRGB's own: BT.709, and "unspecified".
_SRGB_PRIMARIES = (1, 2)
# The others a photo may carry: red, green, blue and white (x, y), from the same table.
_PRIMARIES = {
    5: ((0.64, 0.33), (0.29, 0.60), (0.15, 0.06), (0.3127, 0.3290)),  # BT.470 BG (PAL)
    6: ((0.630, 0.340), (0.310, 0.595), (0.155, 0.070), (0.3127, 0.3290)),  # SMPTE 170M (NTSC)
    7: ((0.630, 0.340), (0.310, 0.595), (0.155, 0.070), (0.3127, 0.3290)),  # SMPTE 240M
    9: ((0.708, 0.292), (0.170, 0.797), (0.131, 0.046), (0.3127, 0.3290)),  # BT.2020
    11: ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060), (0.314, 0.351)),  # DCI-P3
    12: ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060), (0.3127, 0.3290)),  # Display P3
}
_D50 = (0.9642, 1.0, 0.8249)


def read_nclx(head: bytes) -> dict | None:
    """The nclx colour description of a HEIF/AVIF file from its first bytes (its 'colr' box of
    type 'nclx', in the meta box before the image data), or None. For decoders that do not
    report it (Pillow's AVIF plugin converts YUV to RGB but says nothing of the primaries)."""
    at = head.find(b"colrnclx")
    if at < 0 or len(head) < at + 15:
        return None
    primaries, transfer, matrix = (int.from_bytes(head[at + 8 + 2 * i : at + 10 + 2 * i], "big") for i in range(3))
    return {"color_primaries": primaries, "transfer_characteristics": transfer, "matrix_coefficients": matrix}


def nclx_profile(nclx: dict) -> bytes | None:
    """An ICC profile for pixels that HEIF/AVIF describe by an nclx box instead of a profile
    (Android phones: Display P3 or BT.2020 primaries), so that to_srgb converts them; None when
    the primaries are sRGB's already (nothing to do). The transfer curve is taken as sRGB's:
    it is what P3 uses, and what libheif's 8-bit output of an HDR photo comes nearest to."""
    code = nclx.get("color_primaries") if isinstance(nclx, dict) else None
    if code in _SRGB_PRIMARIES:
        return None
    try:
        xy = [(float(nclx[f"color_primary_{c}_x"]), float(nclx[f"color_primary_{c}_y"])) for c in ("red", "green", "blue", "white")]
    except (KeyError, TypeError, ValueError, AttributeError):
        if code not in _PRIMARIES:
            return None
        xy = list(_PRIMARIES[code])
    if any(y <= 0 for _x, y in xy):
        return None
    return _matrix_profile(xy[:3], xy[3])


def _xyz(x: float, y: float) -> tuple[float, float, float]:
    return (x / y, 1.0, (1 - x - y) / y)


def _solve(m: list[list[float]], v: tuple[float, ...]) -> list[float]:
    """m⁻¹·v for a 3×3 matrix (Cramer's rule: three numbers, once per profile)."""
    def det(a):
        return (a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
                + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]))
    d = det(m)
    out = []
    for col in range(3):
        replaced = [[v[r] if c == col else m[r][c] for c in range(3)] for r in range(3)]
        out.append(det(replaced) / d)
    return out


def _matrix_profile(primaries: list[tuple[float, float]], white: tuple[float, float]) -> bytes:
    """An ICC v2 RGB matrix/TRC profile: primaries and white point (xy), the sRGB curve, its
    colorants adapted to the D50 of the profile connection space (Bradford)."""
    import struct

    cols = [_xyz(*p) for p in primaries]
    m = [[cols[c][r] for c in range(3)] for r in range(3)]
    w = _xyz(*white)
    s = _solve(m, w)
    rgb_to_xyz = [[m[r][c] * s[c] for c in range(3)] for r in range(3)]
    bradford = [[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]]
    cone_src = [sum(bradford[r][k] * w[k] for k in range(3)) for r in range(3)]
    cone_dst = [sum(bradford[r][k] * _D50[k] for k in range(3)) for r in range(3)]
    inv = [_solve(bradford, tuple(1.0 if i == j else 0.0 for i in range(3))) for j in range(3)]  # columns of B⁻¹
    b_inv = [[inv[c][r] for c in range(3)] for r in range(3)]
    scale = [[bradford[r][c] * cone_dst[r] / cone_src[r] for c in range(3)] for r in range(3)]
    adapt = [[sum(b_inv[r][k] * scale[k][c] for k in range(3)) for c in range(3)] for r in range(3)]
    d50 = [[sum(adapt[r][k] * rgb_to_xyz[k][c] for k in range(3)) for c in range(3)] for r in range(3)]

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz_tag(v) -> bytes:
        return b"XYZ \0\0\0\0" + b"".join(s15(x) for x in v)

    curve = [round(65535 * ((i / 1023) / 12.92 if i / 1023 <= 0.04045 else ((i / 1023 + 0.055) / 1.055) ** 2.4)) for i in range(1024)]
    trc = b"curv\0\0\0\0" + struct.pack(">I", len(curve)) + struct.pack(f">{len(curve)}H", *curve)
    text = b"thumbwatch nclx RGB\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0\0\0" + b"\0" * 67
    tags = [(b"desc", desc), (b"wtpt", xyz_tag(_D50)), (b"rXYZ", xyz_tag([d50[r][0] for r in range(3)])),
            (b"gXYZ", xyz_tag([d50[r][1] for r in range(3)])), (b"bXYZ", xyz_tag([d50[r][2] for r in range(3)])),
            (b"rTRC", trc), (b"gTRC", trc), (b"bTRC", trc)]
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    table, data, placed = b"", b"", {}
    for sig, body in tags:
        if body not in placed:  # the three curves share one copy
            pad = (-offset) % 4
            data += b"\0" * pad
            offset += pad
            placed[body] = offset
            data += body
            offset += len(body)
        table += sig + struct.pack(">II", placed[body], len(body))
    size = 128 + table_size + len(data)
    header = (struct.pack(">I", size) + b"\0\0\0\0" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + b"".join(s15(x) for x in _D50) + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + table + data
