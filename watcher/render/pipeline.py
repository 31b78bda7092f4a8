"""Photo + size specs -> thumbnails on disk. Pure: knows nothing of queues, signals or logging.

The cost of a thumbnail is decoding the photo, so a JPEG is decoded once, with libjpeg's DCT
scaling at the smallest 1/2, 1/4 or 1/8 scale that still covers the largest size; every size is
then resampled from the smallest image already made that covers it, largest size first
(see _resample for the filters). Colour conversion and turning upright are done once, on the
largest size; cropping on each size.

Each output is written to a hidden temp name in its final folder, stamped with the photo's
mtime (which is how a later stat-only scan knows it is up to date), then renamed into place.
Expected failures raise RenderError with a human reason; anything else is a bug.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .. import __version__, freedesktop
from . import colour, preview
from ..config import OutputConfig, SizeSpec
from ..paths import JPEG_EXTS, NAME_MAX, Target, temp_path_for

# Lanczos from at least this many times the target size after the integer reduce: with 3.0
# Pillow documents the result as indistinguishable from a full Lanczos resample.
REDUCING_GAP = 3.0
# Pillow's Lanczos from a 3 MP DCT-scaled decode to a 1024 px size costs as much as the decode
# (29 ms): resamples from more than this many pixels use the triangle filter instead (12 ms;
# 1-2% less contrast in fine detail, little moiré; Hamming, as fast, aliased far more on
# gratings). See _resample.
CHEAP_ABOVE = 600_000
# What we decode (JPEG's opener also yields MPO, which may not be named in formats=); AVIF is
# added when Pillow has it, HEIF when pillow-heif is installed.
BASE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")
ORIENTATION = 0x0112
GPS_IFD = 0x8825
# EXIF orientation -> the transpose that makes the stored pixels upright.
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
MIME = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif",
        "TIFF": "image/tiff", "BMP": "image/bmp", "AVIF": "image/avif", "HEIF": "image/heif"}
_JPEG_SEGMENT = 65533
PATH_MAX = 4096  # bytes in a path, with its terminating NUL (Linux)
_XMP_ORIENTATION = re.compile(rb'(tiff:Orientation(?:="|>))[1-8]')


class RenderError(Exception):
    """A photo we cannot thumbnail, for a reason the user should read (str(error))."""


class PhotoVanished(RenderError):
    """The photo was deleted or renamed before we got to it: normal, not an error."""


class PhotoChanged(PhotoVanished):
    """Replaced or rewritten while it was rendered: the master renders it again once it settles."""


class OutputError(RenderError):
    """The thumbnail could not be written (disk full, folder unwritable): retry later."""

    def __init__(self, reason: str, errno_: int | None):
        super().__init__(reason)
        self.errno = errno_


@dataclass(frozen=True)
class RenderSettings:
    output: OutputConfig
    max_pixels: int


@dataclass(frozen=True)
class RenderResult:
    width: int
    height: int
    outputs: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class _Plan:
    """One target's geometry, upright: scale the whole photo to `scaled`, then crop to `box`."""

    target: Target
    scaled: tuple[int, int]
    box: tuple[int, int, int, int] | None
    upscaled: bool


# Our limits.max_pixels, checked from each photo's header, is the limit; Pillow's own bomb
# check would refuse or warn at a different number. Set once, for every process that renders.
Image.MAX_IMAGE_PIXELS = None


def render(src: str, targets: Sequence[Target], settings: RenderSettings) -> RenderResult:
    fd = _open(src)
    written: list[tuple[int, str]] = []  # each thumbnail written: its folder (open) and name
    try:
        with os.fdopen(fd, "rb") as f, warnings.catch_warnings():
            # Pillow warns about corrupt EXIF and the like on stderr; what matters becomes a RenderError
            warnings.simplefilter("ignore")
            st = os.fstat(f.fileno())
            try:
                result = _render(f, src, st, targets, settings, written)
            except RenderError as err:
                if type(err) is RenderError and settings.output.style == "freedesktop":
                    freedesktop.record_failure(src, st, __version__)
                raise
        if settings.output.style == "freedesktop":
            freedesktop.forget_failure(src, __version__)
        _check_unchanged(src, st, written)
        return result
    finally:
        for dir_fd, _name in written:
            os.close(dir_fd)


def _open(src: str) -> int:
    # O_NONBLOCK: a FIFO named x.jpg must not hang the worker in open().
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except (FileNotFoundError, NotADirectoryError):
        raise PhotoVanished("vanished before it could be read") from None
    except PermissionError:
        raise RenderError("permission denied") from None
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            raise RenderError(_too_long(src, "")) from None
        raise RenderError(f"cannot open: {os.strerror(err.errno) if err.errno else err}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise RenderError("not a regular file (a folder)" if stat.S_ISDIR(mode) else "not a regular file")
    return fd


def _check_unchanged(src: str, opened: os.stat_result, written: list[tuple[int, str]]) -> None:
    """A photo deleted, replaced, rewritten or moved while we worked must not keep the
    thumbnails we just wrote: they show what was there before, and carry a stamp that could
    pass for the new file's (a replacement with the same mtime: tar x, cp -p), or sit where no
    photo is. Removed from the folder they were written to, wherever it is now. Its own
    event, or the master, looks at the photo again."""
    try:
        now = os.stat(src)
    except OSError:
        now = None
    if now is not None and (now.st_dev, now.st_ino, now.st_ctime_ns) == (opened.st_dev, opened.st_ino, opened.st_ctime_ns):
        return
    for dir_fd, name in written:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
    if now is None:
        raise PhotoVanished("vanished while being thumbnailed")
    raise PhotoChanged("changed while being thumbnailed")


def _render(f, src: str, st: os.stat_result, targets: Sequence[Target], settings: RenderSettings,
            written: list[tuple[int, str]]) -> RenderResult:
    if st.st_size == 0:
        raise RenderError("empty file (0 bytes)")
    head = _read_head(f)
    kind = _sniff(head)
    if kind == "jpeg":
        _check_jpeg_frame(f, settings.max_pixels)
    jpeg_named = os.path.splitext(src)[1].lower() in JPEG_EXTS
    formats = _formats_for(kind, jpeg_named)
    try:
        im = Image.open(f, formats=formats)
    except UnidentifiedImageError:
        raise RenderError(_unidentified(kind, f, jpeg_named)) from None
    except _PHOTO_ERRORS as err:
        raise RenderError(_reason(err, kind, f)) from None
    try:
        return _thumbnails(im, kind, f, src, st, targets, settings, written)
    finally:
        im.close()


def _thumbnails(im: Image.Image, kind: str | None, f, src: str, st: os.stat_result, targets: Sequence[Target],
                settings: RenderSettings, written: list[tuple[int, str]]) -> RenderResult:
    output = settings.output
    w, h = im.size
    if w <= 0 or h <= 0:
        raise RenderError(f"corrupt {_label(kind)} header (declares {w}×{h} pixels)")
    if w * h > settings.max_pixels:
        raise RenderError(f"image too large: {w}×{h} exceeds max_pixels ({settings.max_pixels})")
    exif = _exif(im)
    orientation = _orientation(exif)
    swap = orientation in (5, 6, 7, 8)
    upright = (h, w) if swap else (w, h)
    plans = sorted((_plan(t, upright) for t in targets), key=lambda p: p.scaled[0] * p.scaled[1], reverse=True)
    box = None
    embedded = None  # (decoded preview, its draft box) when a camera's preview stands in for the photo
    if plans and im.format in ("JPEG", "MPO"):
        biggest = plans[0].scaled
        need = (biggest[1], biggest[0]) if swap else biggest
        if output.embedded_preview:
            embedded = preview.load(f, im, need)
        # libjpeg's DCT scaling: the smallest of 1/8, 1/4, 1/2 that still covers the biggest size
        drafted = im.draft(im.mode, need) if embedded is None else None
        if drafted is not None:
            box = drafted[1]
    try:
        if embedded is not None:
            decoded, box = embedded
        else:
            im.load()
            decoded = im
        work = _working_mode(decoded)
    except MemoryError:
        raise RenderError(f"out of memory decoding {w}×{h} pixels (see limits.worker_memory_mb)") from None
    except _PHOTO_ERRORS as err:
        raise RenderError(_reason(err, kind, f)) from None
    profile = im.info.get("icc_profile") or None
    keep_profile = output.color == "keep" and profile is not None and work.mode != "CMYK" and colour.fits(profile, work.mode)
    metadata = _metadata(exif, im.info, output.metadata, profile if keep_profile else None)
    fd_info = None
    if output.style == "freedesktop":
        fd_info = freedesktop.text_chunks(src, st, MIME.get(im.format or "", "application/octet-stream"), upright)

    made: list[Image.Image] = []  # colour-converted and upright, largest first
    outputs = []
    for plan in plans:
        # resample from the smallest image made so far that covers this size, else the decoded
        # one (in stored orientation: it is turned after scaling, where that is cheap)
        covering = [m for m in made if m.width >= plan.scaled[0] and m.height >= plan.scaled[1]]
        if covering:
            scaled = _resample(covering[-1], plan.scaled, None)
        else:
            scaled = _resample(work, (plan.scaled[1], plan.scaled[0]) if swap else plan.scaled, box)
            scaled = scaled if keep_profile else colour.to_srgb(scaled, profile)
            if scaled.mode == "CMYK":
                scaled = scaled.convert("RGB")
            if orientation in UPRIGHT:
                scaled = scaled.transpose(UPRIGHT[orientation])
            if scaled is work:
                scaled = work.copy()  # never hand the decoded image (and its info) to the writer
        if not plan.upscaled:
            made.append(scaled)
        thumb = scaled.crop(plan.box) if plan.box is not None else scaled
        written.append(_write(thumb, plan.target, output, st, metadata, fd_info))
        outputs.append((plan.target.path, thumb.width, thumb.height))
    order = {t.path: i for i, t in enumerate(targets)}
    outputs.sort(key=lambda o: order[o[0]])
    return RenderResult(upright[0], upright[1], tuple(outputs))


def _resample(source: Image.Image, size: tuple[int, int], box: tuple[float, float, float, float] | None) -> Image.Image:
    """Scale to `size`.

    A whole-number ratio (to within a source pixel, trimmed off the right and bottom) is a box
    reduce: the grids line up, and it is how each cascade step from the size above is made.
    Any other ratio: Pillow reduces by the integer part beyond REDUCING_GAP, then resamples the
    rest with Lanczos, or, where that rest still spans more than CHEAP_ABOVE pixels (a 1024 px
    size from a 3 MP DCT-scaled decode), with Pillow's antialiased bilinear (triangle) filter,
    since Lanczos there costs as much as the decode itself.
    """
    if box is None:
        if source.size == size:
            return source
        k = round(source.width / size[0])
        if k >= 2 and all(k * want <= have < k * want + k for want, have in zip(size, source.size)):
            return source.reduce(k, box=(0, 0, k * size[0], k * size[1]))
    ratio = min(source.width / size[0], source.height / size[1])
    k = max(1, int(ratio / REDUCING_GAP))
    cheap = (source.width // k) * (source.height // k) > CHEAP_ABOVE
    return source.resize(size, Image.Resampling.BILINEAR if cheap else Image.Resampling.LANCZOS, box=box, reducing_gap=REDUCING_GAP)


def _plan(target: Target, upright: tuple[int, int]) -> _Plan:
    """Where the photo must be scaled to, and cropped to, for one size; never up unless asked."""
    spec: SizeSpec = target.size
    w, h = upright
    bw, bh = spec.width, spec.height
    if spec.mode == "width":
        scale = bw / w
    elif spec.mode == "height":
        scale = bh / h
    elif spec.mode == "fill":
        scale = max(bw / w, bh / h)
    else:
        scale = min(bw / w, bh / h)
    if scale > 1 and not spec.upscale:
        scale = 1.0
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    crop = None
    if spec.mode == "fit":
        sw, sh = min(sw, bw), min(sh, bh)
    elif spec.mode == "fill":
        cw, ch = min(sw, bw), min(sh, bh)
        if (cw, ch) != (sw, sh):
            left, top = (sw - cw) // 2, (sh - ch) // 2
            crop = (left, top, left + cw, top + ch)
    return _Plan(target, (sw, sh), crop, scale > 1)


# --- decoding ---------------------------------------------------------------------------

# What Pillow raises for a bad photo: more than OSError (corrupt EXIF gives SyntaxError, a
# bomb a plain Exception subclass, broken headers ValueError/struct.error/ZeroDivisionError).
_PHOTO_ERRORS = (
    OSError, SyntaxError, ValueError, TypeError, struct.error, ZeroDivisionError, EOFError,
    IndexError, KeyError, OverflowError, MemoryError, Image.DecompressionBombError,
)


def _formats_for(kind: str | None, jpeg_named: bool) -> tuple[str, ...]:
    formats = list(BASE_FORMATS)
    if kind in ("heif", "avif"):
        if _heif_registered():
            formats.append("HEIF")
        elif kind == "heif":
            what = "not a JPEG (looks like HEIF" if jpeg_named else "HEIF image (cannot be read"
            raise RenderError(f"{what}; install thumbwatch[heif])")
    if "AVIF" in Image.registered_extensions().values():
        formats.append("AVIF")
    return tuple(formats)


_heif: bool | None = None


def _heif_registered() -> bool:
    """Register pillow-heif's opener the first time a HEIF/AVIF file shows up (if installed)."""
    global _heif
    if _heif is None:
        try:
            from pillow_heif import register_heif_opener
        except ImportError:
            _heif = False
        else:
            register_heif_opener()
            _heif = True
    return _heif


def _read_head(f) -> bytes:
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
_IMAGE_KINDS = ("jpeg", "png", "gif", "webp", "tiff", "bmp", "heif", "avif")
_NOT_IMAGES = ("HTML", "SVG", "XML", "JSON", "text", "PDF", "ZIP", "gzip", "7z", "RAR", "zero bytes only")
_LABEL = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WebP", "tiff": "TIFF", "bmp": "BMP",
          "heif": "HEIF", "avif": "AVIF"}


def _sniff(head: bytes) -> str | None:
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


def _label(kind: str | None) -> str:
    return _LABEL.get(kind or "", "image")


def _unidentified(kind: str | None, f, jpeg_named: bool) -> str:
    """Why Pillow did not recognise the file, in words."""
    if kind == "jpeg":
        return _jpeg_header_problem(f)
    if kind is None:
        return "not an image (unrecognised content)"
    if kind not in _IMAGE_KINDS:
        if kind in _NOT_IMAGES or kind.endswith("video"):
            return f"not an image (looks like {kind})"
        return f"not a JPEG (looks like {kind}, which is not supported)" if jpeg_named else f"unsupported format ({kind})"
    return f"corrupt {_label(kind)} header"


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


def _check_jpeg_frame(f, max_pixels: int) -> None:
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


def _reason(err: BaseException, kind: str | None, f) -> str:
    """A short human reason for what Pillow raised while opening or decoding."""
    label = _label(kind)
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
        return f"truncated {label}"
    if "broken data stream" in lowered:
        if kind == "jpeg" and not _ends_with_eoi(f):
            return "corrupt or truncated JPEG data (no end marker)"
        return f"corrupt {label} data"
    if "cannot load this image" in lowered:
        return f"truncated {label} (headers only, no image data)" if kind == "jpeg" else f"corrupt {label} data"
    if isinstance(err, SyntaxError):
        return f"corrupt {label} ({text})" if text else f"corrupt {label}"
    return f"unreadable {label} ({text})" if text else f"unreadable {label} ({type(err).__name__})"


def _ends_with_eoi(f) -> bool:
    try:
        f.seek(-2, os.SEEK_END)
        return f.read(2) == b"\xff\xd9"
    except OSError:
        return False


def _exif(im: Image.Image) -> Image.Exif | None:
    try:
        exif = im.getexif()
        exif.get_ifd(GPS_IFD)  # parse the sub-IFDs now: a corrupt one must not fail the save later
        exif.get_ifd(0x8769)
        return exif
    except Exception:  # noqa: BLE001 - a corrupt EXIF block can raise nearly anything; it is optional
        return None


def _orientation(exif: Image.Exif | None) -> int:
    if exif is None:
        return 1
    value = exif.get(ORIENTATION, 1)
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _working_mode(im: Image.Image) -> Image.Image:
    """The decoded image in a mode we resample: L, LA, RGB, RGBA or CMYK (upright colours)."""
    mode = im.mode
    if mode == "CMYK":
        if im.format in ("JPEG", "MPO") and "adobe" not in im.info:
            # Pillow reads every CMYK JPEG as Adobe-inverted; without an Adobe APP14 segment the
            # values are plain, so undo its inversion.
            from PIL import ImageChops

            return ImageChops.invert(im)
        return im
    if mode in ("L", "LA", "RGB", "RGBA"):
        return im
    if mode in ("1",):
        return im.convert("L")
    if mode in ("P", "PA"):
        return im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    if mode.startswith("I"):
        return im.convert("I").point(lambda v: v / 256).convert("L")  # 16-bit gray: scale, don't clip
    if mode == "F":
        return im.point(lambda v: v * 255).convert("L")
    if mode in ("La", "RGBa"):
        return im.convert(mode.upper())
    return im.convert("RGBA" if "A" in mode else "RGB")


# --- writing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Metadata:
    exif: bytes | None = None
    xmp: bytes | None = None
    comment: bytes | None = None
    icc: bytes | None = None


def _metadata(exif: Image.Exif | None, info: dict, policy: str, icc: bytes | None) -> _Metadata:
    """What travels into the thumbnail: nothing by default; GPS only with 'all'."""
    if policy == "none" or exif is None and policy == "exif-no-gps":
        return _Metadata(icc=icc or None)
    raw_exif = None
    if exif is not None and len(exif):
        if policy == "exif-no-gps":
            exif.pop(GPS_IFD, None)
        if ORIENTATION in exif:
            exif[ORIENTATION] = 1  # the pixels are upright now
        try:
            raw_exif = exif.tobytes()
        except Exception:  # noqa: BLE001 - Pillow cannot re-serialise some odd EXIF: drop it, keep the photo
            raw_exif = None
    if policy == "exif-no-gps":
        return _Metadata(exif=raw_exif, icc=icc or None)
    xmp = info.get("xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    if xmp:
        xmp = _XMP_ORIENTATION.sub(rb"\g<1>1", xmp)
    comment = info.get("comment")
    if isinstance(comment, str):
        comment = comment.encode("utf-8")
    return _Metadata(exif=raw_exif, xmp=xmp or None, comment=comment or None, icc=icc or None)


def _save_params(thumb: Image.Image, spec: SizeSpec, output: OutputConfig, meta: _Metadata,
                 fd_info: PngImagePlugin.PngInfo | None) -> tuple[Image.Image, dict]:
    fmt = spec.format
    params: dict = {}
    thumb.info = {}  # Pillow falls back to im.info for icc_profile, comment, exif...: only what we pass
    if fmt == "jpeg":
        thumb = colour.flatten(thumb, output.background)
        params = {"quality": spec.quality, "optimize": False, "progressive": output.progressive}
        if thumb.mode == "RGB":
            params["subsampling"] = output.subsampling
        # a JPEG segment holds 64 KB: an oversized block is dropped rather than failing the photo
        if meta.comment and len(meta.comment) <= _JPEG_SEGMENT:
            params["comment"] = meta.comment
        if meta.xmp and len(meta.xmp) <= _JPEG_SEGMENT - 29:
            params["xmp"] = meta.xmp
        if meta.exif and len(meta.exif) > _JPEG_SEGMENT - 6:
            meta = _Metadata(icc=meta.icc)
    elif fmt == "webp":
        params = {"quality": spec.quality, "lossless": output.lossless}
        if thumb.mode not in ("RGB", "RGBA"):
            thumb = thumb.convert("RGBA" if thumb.mode == "LA" else "RGB")
        if meta.xmp:
            params["xmp"] = meta.xmp
    else:
        pnginfo = fd_info or PngImagePlugin.PngInfo()
        if meta.xmp:
            pnginfo.add_itxt("XML:com.adobe.xmp", meta.xmp.decode("utf-8", "replace"))
        params = {"pnginfo": pnginfo}
    if meta.exif:
        params["exif"] = meta.exif
    if meta.icc:
        params["icc_profile"] = meta.icc
    return thumb, params


def _write(thumb: Image.Image, target: Target, output: OutputConfig, st: os.stat_result, meta: _Metadata,
           fd_info: PngImagePlugin.PngInfo | None) -> tuple[int, str]:
    """Write one thumbnail by temp file and rename. Returns its folder, open, and its name."""
    thumb, params = _save_params(thumb, target.size, output, meta, fd_info)
    private = output.style == "freedesktop"
    too_long = _too_long(target.path, " for the output file system")
    if too_long:
        raise RenderError(too_long)  # this photo's thumbnail can't exist; the others can
    folder, name = os.path.split(target.path)
    temp = os.path.basename(temp_path_for(target.path))
    dir_fd, created = -1, False
    try:
        if private:
            freedesktop.ensure_dir(folder)
        else:
            os.makedirs(folder, exist_ok=True)
        # From here on relative to the folder itself, not its path: when the master moves it
        # meanwhile (its photos' folder was renamed), the thumbnail lands in it all the same and
        # no temp file is stranded under a name nobody will rename.
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600 if private else 0o666, dir_fd=dir_fd)
        created = True
        with os.fdopen(fd, "wb") as out:
            thumb.save(out, format=target.size.format.upper(), **params)
        os.utime(temp, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dir_fd)
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return dir_fd, name
    except OSError as err:
        _discard(temp, created, dir_fd)
        if err.errno == errno.ENAMETOOLONG:  # a file system with shorter names than NAME_MAX
            raise RenderError(f"name too long for the output file system: {target.path}") from None
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise OutputError(f"cannot write {target.path}: {reason}", err.errno) from None
    except BaseException:
        _discard(temp, created, dir_fd)
        raise


def _too_long(path: str, where: str) -> str:
    """Why `path` cannot be used on Linux, or "" when it can."""
    name, full = len(os.fsencode(os.path.basename(path))), len(os.fsencode(path))
    if name > NAME_MAX:
        return f"name too long{where}: {name} bytes, the limit is {NAME_MAX}"
    if full >= PATH_MAX:
        return f"path too long{where}: {full} bytes, the limit is {PATH_MAX - 1}"
    return "cannot open: file name too long" if not where else ""


def _discard(temp: str, created: bool, dir_fd: int) -> None:
    if created:
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except OSError:
            pass
    if dir_fd >= 0:
        os.close(dir_fd)
