"""Embedded previews: the JPEGs a camera stores inside its photo, used instead of decoding the photo.

Most camera JPEGs carry a small EXIF thumbnail (IFD1, often 160×120) and many an MPF preview
(CIPA DC-007; up to about 1920 px). For a thumbnail box that a preview covers, decoding the
preview costs a fraction of decoding the photo. It is opt-in (`output.embedded_preview`): a
photo edited by a tool that leaves the old preview in place would get the old picture.

A preview is used only if it is at least as large as the box needs, has the photo's aspect
ratio within 1 %, decodes cleanly in the photo's colour mode and has no letterbox or pillarbox
bars; otherwise the caller decodes the photo as before. The photo's EXIF orientation and ICC
profile apply to the preview (the caller does both): previews are stored as the photo is.

The segments are parsed here (headers only, by seeking), not through Pillow's MPO plugin: we
need offsets and dimensions before anything is decoded, and Pillow exposes no offsets for IFD1.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from dataclasses import dataclass

from PIL import Image, ImageStat

logger = logging.getLogger(__name__)

ASPECT_TOLERANCE = 0.01
# Letterbox check: a band of this share of the height (width) at both edges, each darker than
# BAR_MEAN and more uniform than BAR_STDDEV, is a bar.
BAR_SHARE = 0.03
BAR_MEAN = 24.0
BAR_STDDEV = 6.0
FLAT_STDDEV = 0.5
# Headers to read at most while looking for APP1/APP2 (a camera's EXIF block is at most 64 KB).
_HEAD_LIMIT = 256 * 1024
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# MP Type codes (CIPA DC-007, 5.2.3.3.1) of the images that are previews of the photo: large
# thumbnails of VGA and full-HD class. The others are other pictures: a stereo pair's second
# view (0x020002 disparity), a panorama's or multi-angle set's other frames, and images of no
# declared type (0x000000), as which phones store HDR gain maps.
_MP_PREVIEW_TYPES = frozenset({0x010001, 0x010002})


@dataclass(frozen=True)
class Candidate:
    """One embedded JPEG: where it is in the file and its stored size."""

    source: str  # "exif" or "mpf"
    offset: int
    length: int
    width: int
    height: int


def load(f, photo: Image.Image, need: tuple[int, int]) -> tuple[Image.Image, tuple[int, int, int, int] | None] | None:
    """The smallest embedded preview of the open photo `f` that passes every check, decoded (DCT
    scaled down where that still covers `need`, the stored-orientation size the largest
    thumbnail needs), with the crop box of the scaled decode; or None: decode the photo."""
    width, height = photo.size
    try:
        candidates = find(f)
    except (OSError, ValueError, IndexError, struct.error) as err:
        logger.debug("no embedded preview: unreadable headers (%s)", err)
        return None
    for c in sorted(candidates, key=lambda c: c.width * c.height):
        why = _unfit(c, (width, height), need)
        if why is None:
            decoded = _decode(f, c, photo.mode, need)
            if isinstance(decoded, tuple):
                return decoded
            why = decoded
        logger.debug("embedded %s preview %dx%d not used: %s", c.source, c.width, c.height, why)
    return None


def find(f) -> list[Candidate]:
    """Every embedded JPEG preview the headers point at (EXIF IFD1, MPF entries after the first)."""
    found: list[Candidate] = []
    size = os.fstat(f.fileno()).st_size
    for marker, start, body in _segments(f):
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00"):
            found += _exif_thumbnail(f, start + 6, body[6:], size)
        elif marker == 0xE2 and body.startswith(b"MPF\x00"):
            found += _mpf_previews(f, start + 4, body[4:], size)
    return found


def _segments(f):
    """(marker, file offset of the body, body) for each APPn segment before the image data."""
    f.seek(2)
    pos = 2
    while pos < _HEAD_LIMIT:
        head = f.read(4)
        if len(head) < 4 or head[0] != 0xFF:
            return
        marker, length = head[1], struct.unpack(">H", head[2:4])[0]
        if marker in (0xDA, 0xD9) or marker in _SOF or length < 2:
            return
        if 0xE1 <= marker <= 0xE2:
            yield marker, pos + 4, f.read(length - 2)
        else:
            f.seek(length - 2, os.SEEK_CUR)
        pos += 2 + length


def _tiff(data: bytes) -> tuple[str, int]:
    if data[:4] == b"II*\x00":
        return "<", struct.unpack("<I", data[4:8])[0]
    if data[:4] == b"MM\x00*":
        return ">", struct.unpack(">I", data[4:8])[0]
    raise ValueError("no TIFF header")


def _entries(data: bytes, order: str, at: int) -> tuple[dict[int, tuple[int, int, int, bytes]], int]:
    """An IFD's entries {tag: (type, count, value-or-offset, raw 4 bytes)} and the next IFD's offset."""
    (count,) = struct.unpack(order + "H", data[at : at + 2])
    entries = {}
    for i in range(count):
        raw = data[at + 2 + 12 * i : at + 14 + 12 * i]
        tag, type_, n = struct.unpack(order + "HHI", raw[:8])
        value = struct.unpack(order + ("H" if type_ == 3 else "I"), raw[8:10] if type_ == 3 else raw[8:12])[0]
        entries[tag] = (type_, n, value, raw[8:12])
    end = at + 2 + 12 * count
    (next_ifd,) = struct.unpack(order + "I", data[end : end + 4])
    return entries, next_ifd


def _exif_thumbnail(f, tiff_at: int, data: bytes, size: int) -> list[Candidate]:
    order, ifd0 = _tiff(data)
    _, ifd1 = _entries(data, order, ifd0)
    if not ifd1:
        return []
    entries, _ = _entries(data, order, ifd1)
    if 0x0201 not in entries or 0x0202 not in entries:
        return []
    return _candidate(f, "exif", tiff_at + entries[0x0201][2], entries[0x0202][2], size)


def _mpf_previews(f, tiff_at: int, data: bytes, size: int) -> list[Candidate]:
    order, ifd = _tiff(data)
    entries, _ = _entries(data, order, ifd)
    if 0xB002 not in entries:
        return []
    _type, n, offset, _raw = entries[0xB002]
    table = data[offset : offset + n]
    found = []
    for i in range(1, len(table) // 16):  # the first entry is the photo itself
        attribute, length, data_offset = struct.unpack(order + "III", table[16 * i : 16 * i + 12])
        if (attribute >> 24) & 0x7 == 0 and attribute & 0xFFFFFF in _MP_PREVIEW_TYPES and data_offset:
            found += _candidate(f, "mpf", tiff_at + data_offset, length, size)
    return found


def _candidate(f, source: str, offset: int, length: int, size: int) -> list[Candidate]:
    if length < 4 or offset <= 0 or offset + length > size:
        return []
    f.seek(offset)
    head = f.read(min(length, 64 * 1024))
    frame = _frame_size(head)
    if frame is None:
        return []
    return [Candidate(source, offset, length, *frame)]


def _frame_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, walking the segments in `data`."""
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return (width, height) if width and height else None
        if marker in (0xDA, 0xD9) or length < 2:
            return None
        pos += 2 + length
    return None


def _unfit(c: Candidate, photo: tuple[int, int], need: tuple[int, int]) -> str | None:
    """Why a preview cannot stand in for the photo from its header alone, or None."""
    if c.width < need[0] or c.height < need[1]:
        return f"smaller than the {need[0]}x{need[1]} needed"
    ratio, photo_ratio = c.width / c.height, photo[0] / photo[1]
    if abs(ratio / photo_ratio - 1) > ASPECT_TOLERANCE:
        return f"aspect ratio {ratio:.3f}, the photo's is {photo_ratio:.3f}"
    return None


def _decode(f, c: Candidate, mode: str, need: tuple[int, int]):
    """(image, draft box) if the preview decodes cleanly and has no bars, else the reason."""
    f.seek(c.offset)
    data = f.read(c.length)
    if len(data) != c.length or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "truncated (no end marker)"
    try:
        im = Image.open(io.BytesIO(data), formats=("JPEG",))
        if im.mode != mode:
            return f"colour mode {im.mode}, the photo's is {mode}"
        box = None
        drafted = im.draft(im.mode, need)
        if drafted is not None:
            box = drafted[1]
        im.load()
    except Exception as err:  # noqa: BLE001 - a broken preview can raise nearly anything; the photo is the fallback
        return f"does not decode ({err or type(err).__name__})"
    if _flat_tail(im):
        return "corrupt data (its last rows are one flat colour, as libjpeg fills what it cannot decode)"
    if has_bars(im):
        return "letterbox or pillarbox bars"
    return im, box


def _flat_tail(im: Image.Image) -> bool:
    """libjpeg only warns about corrupt entropy-coded data, and Pillow passes no warning on:
    it decodes the rest of the image as copies of the last good block. A camera's preview is
    never exactly flat across its bottom rows (grain, JPEG noise); one that is, is not trusted."""
    tail = im.crop((0, im.height - max(1, im.height // 16), im.width, im.height))
    return max(ImageStat.Stat(tail).stddev) < FLAT_STDDEV


def has_bars(im: Image.Image) -> bool:
    """Near-uniform dark bands along both long edges of either pair: a letterboxed preview."""
    gray = im.convert("L")
    w, h = gray.size
    bh, bw = max(1, round(h * BAR_SHARE)), max(1, round(w * BAR_SHARE))
    pairs = (((0, 0, w, bh), (0, h - bh, w, h)), ((0, 0, bw, h), (w - bw, 0, w, h)))
    for pair in pairs:
        stats = [ImageStat.Stat(gray.crop(box)) for box in pair]
        if all(s.mean[0] < BAR_MEAN and s.stddev[0] < BAR_STDDEV for s in stats):
            return True
    return False
