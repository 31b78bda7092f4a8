"""Photo + size specs -> thumbnails on disk. Pure: knows nothing of queues, signals or logging.

Each output is written to a hidden temp name in its final folder, stamped with the photo's
mtime (which is how a later stat-only scan knows it is up to date), then renamed into place.
Expected failures raise RenderError with a human reason; anything else is a bug.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageOps

from .config import OutputConfig
from .paths import Target, temp_path_for


class RenderError(Exception):
    """A photo we cannot thumbnail, for a reason the user should read (str(error))."""


class PhotoVanished(RenderError):
    """The photo was deleted or renamed before we got to it: normal, not an error."""


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


def render(src: str, targets: Sequence[Target], settings: RenderSettings) -> RenderResult:
    try:
        st = os.stat(src)
    except FileNotFoundError:
        raise PhotoVanished("vanished before it could be read") from None
    except PermissionError:
        raise RenderError("permission denied") from None
    if not os.path.isfile(src):
        raise RenderError("not a regular file")
    if st.st_size == 0:
        raise RenderError("empty file (0 bytes)")
    try:
        with Image.open(src) as im:
            w, h = im.size
            if w * h > settings.max_pixels:
                raise RenderError(f"image too large: {w}×{h} exceeds max_pixels ({settings.max_pixels})")
            biggest = max(max(t.size.width or 0, t.size.height or 0) for t in targets)
            im.draft("RGB" if im.mode != "L" else "L", (biggest, biggest))
            im.load()
            upright = ImageOps.exif_transpose(im)
    except RenderError:
        raise
    except FileNotFoundError:
        raise PhotoVanished("vanished while being read") from None
    except PermissionError:
        raise RenderError("permission denied") from None
    except Image.DecompressionBombError as err:
        raise RenderError(f"image too large: {err}") from None
    except Image.UnidentifiedImageError:
        raise RenderError("not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise RenderError(_reason(err)) from None
    if upright.mode not in ("RGB", "L"):
        upright = upright.convert("RGB")
    outputs = []
    for target in targets:
        thumb = upright.copy()
        thumb.thumbnail((target.size.width or 10**6, target.size.height or 10**6), Image.Resampling.LANCZOS)
        _write(thumb, target, settings.output, st)
        outputs.append((target.path, thumb.width, thumb.height))
    return RenderResult(upright.width, upright.height, tuple(outputs))


def _reason(err: BaseException) -> str:
    text = str(err)
    if "truncated" in text:
        return "truncated JPEG"
    return text or type(err).__name__


def _write(thumb: Image.Image, target: Target, output: OutputConfig, st: os.stat_result) -> None:
    temp = temp_path_for(target.path)
    try:
        os.makedirs(os.path.dirname(target.path), exist_ok=True)
        fmt = target.size.format
        params: dict = {}
        if fmt == "jpeg":
            params = {"quality": target.size.quality, "optimize": False}
        elif fmt == "webp":
            params = {"quality": target.size.quality}
        thumb.save(temp, format=fmt.upper(), **params)
        os.utime(temp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(temp, target.path)
    except OSError as err:
        try:
            os.unlink(temp)
        except OSError:
            pass
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise OutputError(f"cannot write {target.path}: {reason}", err.errno) from None

