"""Why a file failed, in words a person can act on: what its first bytes say it is, what is
wrong with a JPEG's headers, and what a decoder's exception means. Every reason here ends up
in one `failed` log line; none names an exception class."""

from __future__ import annotations

import os
import struct

from PIL import Image

from .errors import RenderError
from ..paths import NAME_MAX

PATH_MAX = 4096  # bytes in a path, with its terminating NUL (Linux)


# What Pillow raises for a bad photo: more than OSError (corrupt EXIF gives SyntaxError, a
# bomb a plain Exception subclass, broken headers ValueError/struct.error/ZeroDivisionError).
PHOTO_ERRORS = (
    OSError, SyntaxError, ValueError, TypeError, struct.error, ZeroDivisionError, EOFError,
    IndexError, KeyError, OverflowError, MemoryError, Image.DecompressionBombError,
)


def read_head(f) -> bytes:
    try:
        head = f.read(512)
        f.seek(0)
    except OSError as err:
        raise RenderError(f"read error: {os.strerror(err.errno) if err.errno else err}") from None
    return head


_FTYP_BRANDS = {
    b"heic": "heif", b"heix": "heif", b"hevc": "heif", b"hevx": "heif", b"heim": "heif", b"heis": "heif",
    b"mif1": "heif", b"msf1": "heif", b"avif": "avif", b"avis": "avif", b"crx ": "Canon CR3 raw",
    b"qt  ": "QuickTime video", b"isom": "MP4 video", b"iso2": "MP4 video", b"mp41": "MP4 video",
    b"mp42": "MP4 video", b"M4V ": "MP4 video", b"3gp4": "3GP video", b"3gp5": "3GP video",
    b"jp2 ": "JPEG 2000", b"jxl ": "JPEG XL",
}
_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"II+\x00", "tiff"), (b"MM\x00+", "tiff"), (b"BM", "bmp"),
    (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL ", "JPEG XL"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"8BPS", "Photoshop PSD"), (b"FUJIFILMCCD-RAW", "Fujifilm raw"), (b"%PDF", "PDF"),
    (b"PK\x03\x04", "ZIP"), (b"\x1f\x8b", "gzip"), (b"7z\xbc\xaf", "7z"), (b"Rar!", "RAR"),
)
# Kinds we would decode; anything else sniffed is "not an image".
IMAGE_KINDS = ("jpeg", "png", "gif", "webp", "tiff", "bmp", "heif", "avif")
NOT_IMAGES = ("HTML", "SVG", "XML", "JSON", "text", "PDF", "ZIP", "gzip", "7z", "RAR", "zero bytes only")
_LABEL = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WebP", "tiff": "TIFF", "bmp": "BMP",
          "heif": "HEIF", "avif": "AVIF"}


def sniff(head: bytes) -> str | None:
    """What the first bytes say the file is: a kind we decode, something else by name, or None."""
    if not head.strip(b"\x00"):
        return "zero bytes only"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        brand = _FTYP_BRANDS.get(head[8:12])
        if brand is None:
            # the major brand may be generic: look through the compatible brands too
            compatible = [head[i : i + 4] for i in range(16, min(len(head), int.from_bytes(head[:4], "big")), 4)]
            brand = next((_FTYP_BRANDS[b] for b in compatible if b in _FTYP_BRANDS), "ISO media (MP4/HEIF family)")
        return brand
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "HTML"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "SVG"
    if text.startswith(b"<?xml"):
        return "XML"
    if text.startswith((b"{", b"[")):
        return "JSON"
    if head and all(32 <= c < 127 or c in b"\t\r\n" for c in head):
        return "text"
    return None


def label(kind: str | None) -> str:
    return _LABEL.get(kind or "", "image")


def unidentified(kind: str | None, f, jpeg_named: bool) -> str:
    """Why Pillow did not recognise the file, in words."""
    if kind == "jpeg":
        return _jpeg_header_problem(f)
    if kind is None:
        return "not an image (unrecognised content)"
    if kind not in IMAGE_KINDS:
        if kind in NOT_IMAGES or kind.endswith("video"):
            return f"not an image (looks like {kind})"
        return f"not a JPEG (looks like {kind}, which is not supported)" if jpeg_named else f"unsupported format ({kind})"
    return f"corrupt {label(kind)} header"


def _jpeg_frame(f) -> tuple[int, int, int, int] | str:
    """Walk the JPEG markers (seeking over segments) to the frame header: (marker, precision,
    width, height), or why there is none."""
    try:
        f.seek(2)
        while True:
            prefix = f.read(4)
            while prefix[:1] == b"\xff" and prefix[1:2] == b"\xff":  # fill bytes
                prefix = prefix[1:] + f.read(1)
            if len(prefix) < 4:
                return "truncated JPEG (no frame header)"
            if prefix[0] != 0xFF:
                return "corrupt JPEG header"
            marker, length = prefix[1], int.from_bytes(prefix[2:4], "big")
            if marker in (0xDA, 0xD9):
                return "corrupt JPEG (image data before any frame header)"
            if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:  # F7: JPEG-LS
                frame = f.read(5)
                if len(frame) < 5:
                    return "truncated JPEG (frame header cut short)"
                height, width = struct.unpack(">HH", frame[1:5])
                return marker, frame[0], width, height
            if length < 2:
                return "corrupt JPEG header"
            f.seek(length - 2, os.SEEK_CUR)
    except OSError as err:
        return f"read error: {os.strerror(err.errno) if err.errno else err}"
    finally:
        try:
            f.seek(0)
        except OSError:
            pass


def check_jpeg_frame(f, max_pixels: int) -> None:
    """Refuse an over-limit JPEG from its frame header, before Pillow sees it."""
    frame = _jpeg_frame(f)
    if isinstance(frame, tuple):
        _marker, _precision, width, height = frame
        if width * height > max_pixels:
            raise RenderError(f"image too large: {width}×{height} exceeds max_pixels ({max_pixels})")


def _jpeg_header_problem(f) -> str:
    """Why Pillow refused a file that starts like a JPEG."""
    frame = _jpeg_frame(f)
    if isinstance(frame, str):
        return frame
    unsupported = _unsupported_jpeg(frame)
    if unsupported:
        return unsupported
    _marker, _precision, width, height = frame
    if height == 0 or width == 0:
        return f"corrupt JPEG header (declares {width}×{height} pixels)"
    return "corrupt JPEG header"


# Frame markers of JPEG variants libjpeg (so Pillow) cannot decode. Arithmetic coding (SOF9-11)
# is not here: the libjpeg-turbo in Pillow's wheels decodes it.
_JPEG_VARIANTS = {0xF7: "JPEG-LS", 0xC3: "lossless", 0xC7: "lossless, hierarchical", 0xCB: "lossless, arithmetic",
                  0xCF: "lossless, hierarchical", 0xC5: "hierarchical", 0xC6: "hierarchical", 0xCD: "hierarchical",
                  0xCE: "hierarchical"}


def _unsupported_jpeg(frame: tuple[int, int, int, int] | str) -> str | None:
    """"unsupported JPEG (...)" for a valid JPEG variant we cannot decode, so it is never called
    corrupt (which tells people to delete good files); None for a baseline/progressive frame."""
    if isinstance(frame, str):
        return None
    marker, precision, _width, _height = frame
    if marker == 0xF7 or marker in (0xC3, 0xC7, 0xCB, 0xCF):
        return f"unsupported JPEG ({_JPEG_VARIANTS[marker]})"
    if precision != 8:
        return f"unsupported JPEG ({precision}-bit precision)"
    if marker in _JPEG_VARIANTS:
        return f"unsupported JPEG ({_JPEG_VARIANTS[marker]})"
    return None


def reason(err: BaseException, kind: str | None, f) -> str:
    """A short human reason for what Pillow raised while opening or decoding."""
    name = label(kind)
    text = str(err)
    if isinstance(err, MemoryError):
        return "out of memory while decoding"
    if isinstance(err, Image.DecompressionBombError):
        return f"image too large: {text}"
    if isinstance(err, OSError) and err.errno is not None:
        return f"read error: {os.strerror(err.errno)}"
    if kind == "jpeg":
        unsupported = _unsupported_jpeg(_jpeg_frame(f))  # Pillow opens these, then fails to decode
        if unsupported:
            return unsupported
    lowered = text.lower()
    if "truncated" in lowered:
        if kind == "jpeg" and "file read" in lowered:
            return "truncated JPEG (no frame header)"
        return f"truncated {name}"
    if "broken data stream" in lowered:
        if kind == "jpeg" and not _ends_with_eoi(f):
            return "corrupt or truncated JPEG data (no end marker)"
        return f"corrupt {name} data"
    if "cannot load this image" in lowered:
        return f"truncated {name} (headers only, no image data)" if kind == "jpeg" else f"corrupt {name} data"
    if isinstance(err, SyntaxError):
        return f"corrupt {name} ({text})" if text else f"corrupt {name}"
    return f"unreadable {name} ({text})" if text else f"unreadable {name} ({type(err).__name__})"


def _ends_with_eoi(f) -> bool:
    try:
        f.seek(-2, os.SEEK_END)
        return f.read(2) == b"\xff\xd9"
    except OSError:
        return False



def too_long(path: str, where: str) -> str:
    """Why `path` cannot be used on Linux, or "" when it can."""
    name, full = len(os.fsencode(os.path.basename(path))), len(os.fsencode(path))
    if name > NAME_MAX:
        return f"name too long{where}: {name} bytes, the limit is {NAME_MAX}"
    if full >= PATH_MAX:
        return f"path too long{where}: {full} bytes, the limit is {PATH_MAX - 1}"
    return "cannot open: file name too long" if not where else ""

