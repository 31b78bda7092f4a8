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


# --- JPEGs carrying embedded previews (an EXIF IFD1 thumbnail, an MPF preview image) ----------


def jpeg_bytes(im: Image.Image, quality: int = 90, subsampling: str = "4:2:0") -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, subsampling=subsampling)
    return buf.getvalue()


def _ifd(entries: list[tuple[int, int, int, bytes]], start: int, next_ifd: int) -> tuple[bytes, bytes]:
    """A little-endian TIFF IFD at offset `start`: (tag, type, count, value bytes). Values over
    4 bytes go after the IFD; returns (ifd, data that follows it)."""
    head = struct.pack("<H", len(entries))
    extra_at = start + 2 + 12 * len(entries) + 4
    extra = bytearray()
    for tag, type_, count, value in entries:
        if len(value) <= 4:
            head += struct.pack("<HHI", tag, type_, count) + value.ljust(4, b"\x00")
        else:
            head += struct.pack("<HHII", tag, type_, count, extra_at + len(extra))
            extra += value + (b"\x00" if len(value) % 2 else b"")
    return head + struct.pack("<I", next_ifd), bytes(extra)


def _exif_app1(orientation: int, thumbnail: bytes | None) -> bytes:
    """APP1 Exif: IFD0 (Make, Orientation) and, with a thumbnail, IFD1 pointing at its JPEG."""
    make = b"TestCam\x00"
    ifd0_entries = [(0x010F, 2, len(make), make), (0x0112, 3, 1, struct.pack("<H", orientation))]
    ifd0_len = 2 + 12 * len(ifd0_entries) + 4 + len(make)
    ifd1_at = 8 + ifd0_len if thumbnail is not None else 0
    ifd0, extra0 = _ifd(ifd0_entries, 8, ifd1_at)
    tiff = bytearray(b"II*\x00" + struct.pack("<I", 8) + ifd0 + extra0)
    if thumbnail is not None:
        thumb_at = ifd1_at + 2 + 12 * 3 + 4
        ifd1, _ = _ifd([(0x0103, 3, 1, struct.pack("<H", 6)), (0x0201, 4, 1, struct.pack("<I", thumb_at)),
                        (0x0202, 4, 1, struct.pack("<I", len(thumbnail)))], ifd1_at, 0)
        tiff += ifd1 + thumbnail
    body = b"Exif\x00\x00" + bytes(tiff)
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def _mpf_app2(main_size: int, preview_size: int, preview_offset: int, mp_type: int = 0x010001) -> bytes:
    """APP2 MPF with two MP entries: the primary image and a second one, by default a
    large-thumbnail preview (MP Type 0x010001; 0x020002 is a stereo pair's second view)."""
    entries = (struct.pack("<IIIHH", 0x20030000, main_size, 0, 0, 0)
               + struct.pack("<IIIHH", mp_type, preview_size, preview_offset, 0, 0))
    ifd, extra = _ifd([(0xB000, 7, 4, b"0100"), (0xB001, 4, 1, struct.pack("<I", 2)), (0xB002, 7, 32, entries)], 8, 0)
    body = b"MPF\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd + extra
    return b"\xff\xe2" + struct.pack(">H", len(body) + 2) + body


def jpeg_with_previews(path: str | os.PathLike[str], main: Image.Image, *, orientation: int = 1,
                       exif_thumbnail: Image.Image | bytes | None = None, mpf_preview: Image.Image | bytes | None = None,
                       quality: int = 90, subsampling: str = "4:2:0", mp_type: int = 0x010001) -> Path:
    """A JPEG as cameras write them: EXIF (orientation, optionally a thumbnail in IFD1) and,
    optionally, an MPF index with one preview image stored after the main image's EOI.

    Previews are given as images (encoded here at q90) or as raw bytes (to plant broken ones);
    `mp_type` is the MPF entry's MP Type code for the second image.
    """
    path = Path(path)
    thumb = jpeg_bytes(exif_thumbnail) if isinstance(exif_thumbnail, Image.Image) else exif_thumbnail
    preview = jpeg_bytes(mpf_preview) if isinstance(mpf_preview, Image.Image) else mpf_preview
    body = jpeg_bytes(main, quality, subsampling)[2:]  # without SOI
    app1 = _exif_app1(orientation, thumb)
    if preview is None:
        path.write_bytes(b"\xff\xd8" + app1 + body)
        return path
    app2_len = len(_mpf_app2(0, 0, 0))
    main_size = 2 + len(app1) + app2_len + len(body)
    mpf_header_at = 2 + len(app1) + 4 + 4  # marker, length, "MPF\0": the TIFF header starts here
    app2 = _mpf_app2(main_size, len(preview), main_size - mpf_header_at, mp_type)
    path.write_bytes(b"\xff\xd8" + app1 + app2 + body + preview)
    return path
