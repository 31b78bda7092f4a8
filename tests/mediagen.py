"""Camera RAW and video inputs the tests and bench.media make themselves.

`dng()` writes a DNG as cameras and Adobe's converter do: a TIFF whose IFD0 says DNGVersion,
the camera, the orientation and a colour matrix, with SubIFDs holding the CFA image (16-bit
RGGB, flat colour) and a full-size JPEG preview (PhotometricInterpretation YCbCr, compression
7, as the DNG spec asks). Written here byte by byte (no TIFF library), so a test can also cut
or spoil any part of it. `clip()` encodes a video with PyAV.
"""

from __future__ import annotations

import io
import os
import struct
from fractions import Fraction
from pathlib import Path

from PIL import Image, ImageChops

# TIFF field types
BYTE, ASCII, SHORT, LONG, RATIONAL, SRATIONAL = 1, 2, 3, 4, 5, 10
_SIZES = {BYTE: 1, ASCII: 1, SHORT: 2, LONG: 4, RATIONAL: 8, SRATIONAL: 8}
_FORMAT = {BYTE: "B", ASCII: "B", SHORT: "H", LONG: "I"}

# XYZ (D65) -> linear sRGB: as DNG's ColorMatrix1 it makes this "camera" see linear sRGB, so a
# CFA of flat (r, g, b) demosaics to that colour, near enough.
XYZ_TO_SRGB = ((3.2406, -1.5372, -0.4986), (-0.9689, 1.8758, 0.0415), (0.0557, -0.2040, 1.0570))


def _value(type_: int, values) -> bytes:
    if type_ == ASCII:
        return values.encode() + b"\x00"
    if type_ in (RATIONAL, SRATIONAL):
        out = b""
        for v in values:
            fr = Fraction(v).limit_denominator(10000)
            out += struct.pack("<ii" if type_ == SRATIONAL else "<II", fr.numerator, fr.denominator)
        return out
    if type_ == BYTE and isinstance(values, bytes):
        return values
    return struct.pack("<" + _FORMAT[type_] * len(values), *values)


class _Tiff:
    """A little-endian TIFF laid out as: header, blobs (image data), then IFDs."""

    def __init__(self):
        self.data = bytearray(b"II*\x00\x00\x00\x00\x00")

    def blob(self, data: bytes) -> int:
        if len(self.data) % 2:
            self.data += b"\x00"
        at = len(self.data)
        self.data += data
        return at

    def ifd(self, entries: dict[int, tuple[int, object]], next_ifd: int = 0) -> int:
        """Write one IFD (entries: tag -> (type, values)); return its offset."""
        if len(self.data) % 2:
            self.data += b"\x00"
        at = len(self.data)
        extra_at = at + 2 + 12 * len(entries) + 4
        table, extra = b"", b""
        for tag in sorted(entries):
            type_, values = entries[tag]
            raw = _value(type_, values)
            count = len(raw) // _SIZES[type_]
            if len(raw) <= 4:
                field = raw.ljust(4, b"\x00")
            else:
                field = struct.pack("<I", extra_at + len(extra))
                extra += raw + (b"\x00" if len(raw) % 2 else b"")
            table += struct.pack("<HHI", tag, type_, count) + field
        self.data += struct.pack("<H", len(entries)) + table + struct.pack("<I", next_ifd) + extra
        return at

    def set_ifd0(self, at: int) -> None:
        self.data[4:8] = struct.pack("<I", at)


def _jpeg_entries(t: _Tiff, jpeg: bytes) -> dict[int, tuple[int, object]]:
    """The tags of an IFD holding a JPEG preview (its data written into the file now)."""
    width, height = Image.open(io.BytesIO(jpeg)).size
    at = t.blob(jpeg)
    return {
        0x00FE: (LONG, [1]), 0x0100: (LONG, [width]), 0x0101: (LONG, [height]),
        0x0102: (SHORT, [8, 8, 8]), 0x0103: (SHORT, [7]), 0x0106: (SHORT, [6]),
        0x0111: (LONG, [at]), 0x0115: (SHORT, [3]), 0x0116: (LONG, [height]),
        0x0117: (LONG, [len(jpeg)]), 0x011C: (SHORT, [1]),
    }


def cfa_bytes(width: int, height: int, rgb: tuple[int, int, int], white: int = 4095) -> bytes:
    """16-bit RGGB mosaic of one flat linear colour (rgb in 0-255, mapped onto 0..white)."""
    r, g, b = (round(c / 255 * white) for c in rgb)
    even = struct.pack("<HH", r, g) * (width // 2)
    odd = struct.pack("<HH", g, b) * (width // 2)
    return (even + odd) * (height // 2)


def textured(size: tuple[int, int], colour: tuple[int, int, int], spread: float = 6.0) -> Image.Image:
    """A flat colour with a little grain, as a camera's JPEG has (an exactly flat preview reads
    as libjpeg's filler for corrupt data, and is refused)."""
    noise = Image.effect_noise(size, spread)  # centred on 128
    return Image.merge("RGB", [ImageChops.add(Image.new("L", size, c), noise, 1.0, -128) for c in colour])


def mosaic(im: Image.Image, white: int = 4095) -> bytes:
    """The RGGB mosaic a sensor would record of `im` (linear light taken as its values), as
    16-bit little-endian samples on 0..white. Needs numpy (rawpy brings it)."""
    import numpy as np

    rgb = np.asarray(im.convert("RGB"), dtype=np.uint32) * white // 255
    out = np.empty(rgb.shape[:2], dtype="<u2")
    out[0::2, 0::2] = rgb[0::2, 0::2, 0]
    out[0::2, 1::2] = rgb[0::2, 1::2, 1]
    out[1::2, 0::2] = rgb[1::2, 0::2, 1]
    out[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return out.tobytes()


def preview_jpeg(im: Image.Image, *, orientation: int | None = None, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    kw = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    im.convert("RGB").save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


def dng(path: str | os.PathLike[str], cfa_colour: tuple[int, int, int], *, size: tuple[int, int] = (64, 48),
        orientation: int = 1, preview: bytes | Image.Image | None = None, preview_in_ifd0: bool = False,
        cut_raw: bool = False, cfa: bytes | None = None, compressed: bool = False,
        small_preview: Image.Image | None = None) -> Path:
    """Write a DNG: a size[0] x size[1] CFA of `cfa_colour` (stored orientation), tagged with
    `orientation`, and `preview` (a JPEG's bytes, or an image to encode) in a SubIFD after the
    raw one, or in IFD0 as some cameras store it. `cut_raw`: the CFA data ends half-way; `cfa`:
    the mosaic itself (16-bit little-endian RGGB, see mosaic()) instead of a flat colour;
    `compressed`: the mosaic as lossless JPEG (compression 7), as most cameras store it;
    `small_preview`: a second, small JPEG in IFD0 beside `preview` in its SubIFD, as Adobe's
    converter writes a DNG (a 256 px thumbnail and a large preview)."""
    width, height = size
    if isinstance(preview, Image.Image):
        preview = preview_jpeg(preview)
    t = _Tiff()
    raw = cfa if cfa is not None else cfa_bytes(width, height, cfa_colour)
    if compressed:
        raw = lossless_jpeg(raw, width, height)
    raw_at = t.blob(raw[: len(raw) // 2] if cut_raw else raw)
    raw_len = len(raw)
    raw_ifd = {
        0x00FE: (LONG, [0]),  # NewSubFileType: the main image
        0x0100: (LONG, [width]), 0x0101: (LONG, [height]),
        0x0102: (SHORT, [16]), 0x0103: (SHORT, [7 if compressed else 1]), 0x0106: (SHORT, [32803]),  # CFA
        0x0111: (LONG, [raw_at]), 0x0115: (SHORT, [1]), 0x0116: (LONG, [height]), 0x0117: (LONG, [raw_len]),
        0x011C: (SHORT, [1]),
        0x828D: (SHORT, [2, 2]), 0x828E: (BYTE, bytes([0, 1, 1, 2])),  # CFARepeatPatternDim, CFAPattern RGGB
        0xC61A: (LONG, [0]), 0xC61D: (LONG, [4095]),  # BlackLevel, WhiteLevel
        0xC61F: (LONG, [0, 0]), 0xC620: (LONG, [width, height]),  # DefaultCropOrigin, DefaultCropSize
    }
    preview_entries = _jpeg_entries(t, preview_jpeg(small_preview)) if small_preview is not None else None
    if small_preview is not None:
        preview_in_ifd0 = False
    ifd0_entries = preview_entries
    if preview is not None:
        try:
            pw, ph = Image.open(io.BytesIO(preview)).size
        except OSError:  # a spoilt preview: its IFD says the photo's size, as a camera's would
            pw, ph = width, height
        jpeg_at = t.blob(preview)
        preview_entries = {
            0x00FE: (LONG, [1]),  # a reduced-resolution copy
            0x0100: (LONG, [pw]), 0x0101: (LONG, [ph]),
            0x0102: (SHORT, [8, 8, 8]), 0x0103: (SHORT, [7]), 0x0106: (SHORT, [6]),  # JPEG, YCbCr
            0x0111: (LONG, [jpeg_at]), 0x0115: (SHORT, [3]), 0x0116: (LONG, [ph]),
            0x0117: (LONG, [len(preview)]), 0x011C: (SHORT, [1]),
        }
    raw_ifd_at = t.ifd(raw_ifd)
    sub_ifds = [raw_ifd_at]
    if preview_entries is not None and not preview_in_ifd0:
        sub_ifds.append(t.ifd(preview_entries))
    ifd0 = {
        0x010F: (ASCII, "Thumbwatch"), 0x0110: (ASCII, "Test Camera"),
        0x0112: (SHORT, [orientation]),
        0x014A: (LONG, sub_ifds),
        0xC612: (BYTE, bytes([1, 4, 0, 0])), 0xC613: (BYTE, bytes([1, 1, 0, 0])),  # DNGVersion, DNGBackwardVersion
        0xC614: (ASCII, "Thumbwatch Test Camera"),  # UniqueCameraModel
        0xC621: (SRATIONAL, [v for row in XYZ_TO_SRGB for v in row]),  # ColorMatrix1
        0xC628: (RATIONAL, [1, 1, 1]),  # AsShotNeutral
        0xC65A: (SHORT, [21]),  # CalibrationIlluminant1: D65
    }
    if preview_entries is not None and preview_in_ifd0:
        ifd0 = {**preview_entries, **ifd0}
    elif ifd0_entries is not None:
        ifd0 = {**ifd0_entries, **ifd0}
    else:
        ifd0[0x00FE] = (LONG, [1])
    t.set_ifd0(t.ifd(ifd0))
    path = Path(path)
    path.write_bytes(bytes(t.data))
    return path


def clip(path: str | os.PathLike[str], frames: list[Image.Image], *, fmt: str | None = None, codec: str = "libx264",
         rate: int = 10, pix_fmt: str = "yuv420p", rotation: int | None = None, rotate_tag: int | None = None,
         primaries: int | None = None, options: dict | None = None) -> Path:
    """Encode `frames` (all one size) at `rate` fps. `rotation`: a display matrix turning the
    picture that many degrees counter-clockwise (FFmpeg's convention; a phone held upright
    records -90, i.e. 270); `rotate_tag`: the old-style `rotate` tag (clockwise degrees) instead;
    `primaries`: the colour primaries code to declare (9: BT.2020)."""
    import av

    path = Path(path)
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = pix_fmt
        if primaries is not None:
            stream.codec_context.color_primaries = primaries
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if rotate_tag is not None:
            stream.metadata["rotate"] = str(rotate_tag)
        for im in frames:
            frame = av.VideoFrame.from_image(im.convert("RGB")).reformat(format=pix_fmt)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def audio_only(path: str | os.PathLike[str], seconds: float = 0.5) -> Path:
    """An MP4 (an .m4a, really) with one AAC stream and no video."""
    import av

    path = Path(path)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=48000)
        samples = int(48000 * seconds)
        for start in range(0, samples, 1024):
            frame = av.AudioFrame(format="fltp", layout="mono", samples=1024)
            frame.planes[0].update(bytes(4 * 1024))
            frame.sample_rate = 48000
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# Lossless JPEG (ITU T.81 process 14), as cameras and Adobe's converter compress a DNG's mosaic:
# two components interleaved (a CFA row's even and odd columns), predictor 1 (the same colour's
# sample to the left), one Huffman table written here in canonical form.
_LJ_ORDER = (7, 8, 6, 9, 5, 10, 4, 3, 2, 1, 0, 11, 12, 13, 14, 15, 16)  # SSSS by expected frequency
_LJ_LENGTHS = (2, 2, 2) + tuple(range(3, 17))  # Kraft sum 1 - 2**-16: never an all-ones code


def _lj_table() -> tuple[bytes, dict[int, tuple[int, int]]]:
    bits = [0] * 17
    for n in _LJ_LENGTHS:
        bits[n] += 1
    codes, code, prev = {}, 0, _LJ_LENGTHS[0]
    for symbol, n in zip(_LJ_ORDER, _LJ_LENGTHS):
        code <<= n - prev
        prev = n
        codes[symbol] = (code, n)
        code += 1
    dht = bytes([0x00]) + bytes(bits[1:17]) + bytes(_LJ_ORDER)
    return dht, codes


def lossless_jpeg(samples: bytes, width: int, height: int, precision: int = 12) -> bytes:
    """A mosaic (16-bit little-endian, width x height) as a two-component lossless JPEG."""
    import numpy as np

    s = np.frombuffer(samples, dtype="<u2").reshape(height, width).astype(np.int32)
    pred = np.empty_like(s)
    pred[:, 2:] = s[:, :-2]
    pred[1:, :2] = s[:-1, :2]
    pred[0, :2] = 1 << (precision - 1)
    diff = s - pred
    mag = np.abs(diff)
    ssss = np.zeros_like(mag)
    for k in range(1, 17):
        ssss[mag >= (1 << (k - 1))] = k
    extra = np.where(diff >= 0, diff, diff - 1) & ((1 << ssss) - 1)
    dht, codes = _lj_table()
    code_of = np.zeros(17, dtype=np.int64)
    len_of = np.zeros(17, dtype=np.int64)
    for symbol, (code, n) in codes.items():
        code_of[symbol], len_of[symbol] = code, n
    value = (code_of[ssss] << ssss) | extra
    length = len_of[ssss] + ssss
    shifts = np.arange(31, -1, -1)
    chunks = []
    for row in range(height):  # bits of each sample's code, most significant first, row by row
        v, n = value[row], length[row]
        bits = (v[:, None] >> shifts) & 1
        keep = shifts[None, :] < n[:, None]
        chunks.append(bits[keep].astype(np.uint8))
    stream = np.concatenate(chunks)
    pad = (-len(stream)) % 8
    stream = np.concatenate([stream, np.ones(pad, dtype=np.uint8)])
    entropy = np.packbits(stream).tobytes().replace(b"\xff", b"\xff\x00")

    def segment(marker: int, body: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body

    sof = struct.pack(">BHHB", precision, height, width // 2, 2) + bytes([1, 0x11, 0, 2, 0x11, 0])
    sos = bytes([2, 1, 0x00, 2, 0x00, 1, 0, 0])  # two components on table 0, predictor 1, Se 0, Al 0
    return b"\xff\xd8" + segment(0xC4, dht) + segment(0xC3, sof) + segment(0xDA, sos) + entropy + b"\xff\xd9"
