"""Photo + size specs -> thumbnails on disk. Pure: knows nothing of queues, signals or logging.

The cost of a thumbnail is decoding the photo, so a photo is decoded once, as small as its
decoder can while still covering the largest size (libjpeg's DCT scaling at 1/2, 1/4 or 1/8; an
embedded preview or HEIF thumbnail item with output.embedded_preview); every size is then
resampled from the smallest image already made that covers it, largest size first (see
_resample for the filters). Colour conversion and turning upright are done once, on the largest
size; cropping on each size.

Which decoder opens a photo is formats.py's business; why a photo failed, diagnose.py's;
writing the thumbnails, write.py's. Expected failures raise RenderError with a human reason;
anything else is a bug.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from .. import __version__, freedesktop
from . import colour, formats
from .diagnose import PHOTO_ERRORS, label, read_head, reason, sniff, too_long
from .errors import PhotoChanged, PhotoVanished, RenderError
from .write import metadata, write
from ..config import OutputConfig, SizeSpec
from ..paths import Target

# Lanczos from at least this many times the target size after the integer reduce: with 3.0
# Pillow documents the result as indistinguishable from a full Lanczos resample.
REDUCING_GAP = 3.0
# Pillow's Lanczos from a 3 MP DCT-scaled decode to a 1024 px size costs as much as the decode
# (29 ms): resamples from more than this many pixels use the triangle filter instead (12 ms;
# 1-2% less contrast in fine detail, little moiré; Hamming, as fast, aliased far more on
# gratings). See _resample.
CHEAP_ABOVE = 600_000
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


@dataclass(frozen=True)
class RenderSettings:
    output: OutputConfig
    max_pixels: int


@dataclass(frozen=True)
class RenderResult:
    width: int
    height: int
    outputs: tuple[tuple[str, int, int], ...]
    bytes: tuple[int, ...] = ()  # each output's file size, in the order of outputs (thumbnail events)


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
            raise RenderError(too_long(src, "")) from None
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
    kind = sniff(read_head(f))
    source = formats.open_photo(f, kind, src, settings)
    try:
        return _thumbnails(source, f, src, st, targets, settings, written)
    finally:
        source.close()


def _thumbnails(source: formats.Source, f, src: str, st: os.stat_result, targets: Sequence[Target],
                settings: RenderSettings, written: list[tuple[int, str]]) -> RenderResult:
    output = settings.output
    kind = source.kind
    w, h = source.size
    if w <= 0 or h <= 0:
        raise RenderError(f"corrupt {label(kind)} header (declares {w}×{h} pixels)")
    if w * h > settings.max_pixels:
        raise RenderError(f"image too large: {w}×{h} exceeds max_pixels ({settings.max_pixels})")
    orientation = source.orientation
    swap = orientation in (5, 6, 7, 8)
    upright = (h, w) if swap else (w, h)
    plans = sorted((_plan(t, upright) for t in targets), key=lambda p: p.scaled[0] * p.scaled[1], reverse=True)
    need = None  # what the largest size needs of the decoder, in stored orientation
    if plans:
        biggest = plans[0].scaled
        need = (biggest[1], biggest[0]) if swap else biggest
    try:
        decoded, box = source.decode(need, output.embedded_preview)
        work = _working_mode(decoded)
    except MemoryError:
        raise RenderError(f"out of memory decoding {w}×{h} pixels (see limits.worker_memory_mb)") from None
    except PHOTO_ERRORS as err:
        raise RenderError(reason(err, kind, f)) from None
    profile = source.info.get("icc_profile") or None
    keep_profile = output.color == "keep" and profile is not None and work.mode != "CMYK" and colour.fits(profile, work.mode)
    meta = metadata(source.exif, source.info, output.metadata, profile if keep_profile else None)
    fd_info = None
    if output.style == "freedesktop":
        fd_info = freedesktop.text_chunks(src, st, source.mime, upright)

    made: list[Image.Image] = []  # colour-converted and upright, largest first
    outputs = []
    nbytes: dict[str, int] = {}
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
        written.append(write(thumb, plan.target, output, st, meta, fd_info))
        outputs.append((plan.target.path, thumb.width, thumb.height))
        nbytes[plan.target.path] = os.stat(written[-1][1], dir_fd=written[-1][0]).st_size
    order = {t.path: i for i, t in enumerate(targets)}
    outputs.sort(key=lambda o: order[o[0]])
    return RenderResult(upright[0], upright[1], tuple(outputs), tuple(nbytes[o[0]] for o in outputs))


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
