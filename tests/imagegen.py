"""Generated test photos for render tests and the speed bench: camera-like JPEGs, CMYK patches,
an ICC profile that visibly changes colours, EXIF with GPS, images with alpha."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

from PIL import Image, ImageChops

RED_CMYK = (0, 255, 255, 0)
GPS_IFD = 0x8825


def camera_like(width: int = 4000, height: int = 3000) -> Image.Image:
    """Textured noise at three scales plus fine grain: JPEG-encodes like a camera photo (~3 MB
    at 12 MP, q92), so decoding costs what a real one does."""
    bands = []
    for _ in range(3):
        base = Image.effect_noise((max(1, width // 40), max(1, height // 40)), 60).resize((width, height), Image.Resampling.BICUBIC)
        mid = Image.effect_noise((max(1, width // 4), max(1, height // 4)), 30).resize((width, height), Image.Resampling.BILINEAR)
        grain = Image.effect_noise((width, height), 4)
        bands.append(ImageChops.add(ImageChops.add(base, mid, scale=2.0), grain, offset=-64))
    return Image.merge("RGB", bands)


def camera_like_jpeg(path: str | os.PathLike[str], width: int = 4000, height: int = 3000, quality: int = 92) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x010F] = "thumbwatch"
    exif[0x0112] = 1
    camera_like(width, height).save(path, "JPEG", quality=quality, exif=exif.tobytes())
    return path


def cmyk_jpeg(path: str | os.PathLike[str], size: tuple[int, int] = (64, 48), *, adobe: bool = True) -> Path:
    """A CMYK JPEG whose left half is pure red (C=0 M=Y=100% K=0) and right half pure blue.

    adobe=True: Photoshop's convention, as Pillow and libjpeg write it (Adobe APP14 segment,
    inverted values). adobe=False: plain CMYK values and no APP14, as some RIP software writes.
    """
    path = Path(path)
    im = Image.new("CMYK", size, (255, 255, 0, 0))
    im.paste(RED_CMYK, (0, 0, size[0] // 2, size[1]))
    if adobe:
        im.save(path, "JPEG", quality=95)
        return path
    # Pillow writes inverted data with an APP14 segment: write the inverse image, drop APP14,
    # and the stored values are the plain ones.
    buf = io.BytesIO()
    ImageChops.invert(im).save(buf, "JPEG", quality=95)
    path.write_bytes(_drop_segment(buf.getvalue(), 0xEE))
    return path


def _drop_segment(data: bytes, marker: int) -> bytes:
    out, pos = bytearray(data[:2]), 2
    while pos < len(data) and data[pos + 1] != 0xDA:
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if data[pos + 1] != marker:
            out += data[pos : pos + 2 + length]
        pos += 2 + length
    return bytes(out + data[pos:])


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def swapped_primaries_profile() -> bytes:
    """A valid RGB matrix/TRC ICC profile whose red primary is sRGB's green and vice versa.

    Pixels tagged with it and stored as (255, 0, 0) are green in sRGB: a test can tell at a
    glance whether the profile was applied.
    """
    d50_r = (0.4361, 0.2225, 0.0139)
    d50_g = (0.3851, 0.7169, 0.0971)
    d50_b = (0.1431, 0.0606, 0.7141)
    tags = [
        (b"desc", _desc("thumbwatch swapped R/G")),
        (b"wtpt", _xyz((0.9642, 1.0, 0.8249))),
        (b"rXYZ", _xyz(d50_g)),
        (b"gXYZ", _xyz(d50_r)),
        (b"bXYZ", _xyz(d50_b)),
        (b"rTRC", _curve(2.2)),
        (b"gTRC", _curve(2.2)),
        (b"bTRC", _curve(2.2)),
        (b"cprt", b"text\x00\x00\x00\x00public domain\x00\x00\x00"),
    ]
    table_len = 4 + 12 * len(tags)
    offset = 128 + table_len
    table, body = bytearray(struct.pack(">I", len(tags))), bytearray()
    for sig, data in tags:
        while len(data) % 4:
            data += b"\x00"
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = 128 + len(table) + len(body)
    header = bytearray(128)
    header[0:4] = struct.pack(">I", size)
    header[8:12] = b"\x02\x10\x00\x00"  # version 2.1
    header[12:16] = b"mntr"
    header[16:20] = b"RGB "
    header[20:24] = b"XYZ "
    header[36:40] = b"acsp"
    header[68:80] = _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    return bytes(header + table + body)


def _xyz(v: tuple[float, float, float]) -> bytes:
    return b"XYZ \x00\x00\x00\x00" + b"".join(_s15(c) for c in v)


def _curve(gamma: float) -> bytes:
    return b"curv\x00\x00\x00\x00" + struct.pack(">IH", 1, round(gamma * 256))


def _desc(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\x00"
    return b"desc\x00\x00\x00\x00" + struct.pack(">I", len(ascii_)) + ascii_ + b"\x00" * 4 + b"\x00" * 4 + b"\x00" * 3 + b"\x00" * 67


def gps_exif(orientation: int = 1) -> Image.Exif:
    """EXIF with a camera make, an orientation and a GPS position (Zurich)."""
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif[0x0112] = orientation
    exif[GPS_IFD] = {1: "N", 2: (47.0, 22.0, 0.0), 3: "E", 4: (8.0, 32.0, 0.0)}
    return exif


def alpha_png(path: str | os.PathLike[str], size: tuple[int, int] = (80, 60)) -> Path:
    """Fully transparent black everywhere except an opaque red square in the middle."""
    path = Path(path)
    im = Image.new("RGBA", size, (0, 0, 0, 0))
    w, h = size
    im.paste((255, 0, 0, 255), (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    im.save(path, "PNG")
    return path
