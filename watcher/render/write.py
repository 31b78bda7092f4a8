"""Writing thumbnails: what metadata travels with them, the save options per output format, and
the temp-name-then-rename that means nobody ever sees half a thumbnail.

Each output is written to a hidden temp name in its final folder, stamped with the photo's
mtime (which is how a later stat-only scan knows it is up to date), then renamed into place.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

from PIL import Image, PngImagePlugin

from . import colour
from .. import freedesktop
from .diagnose import too_long
from .errors import OutputError, RenderError
from ..config import OutputConfig, SizeSpec
from ..paths import Target, temp_path_for

ORIENTATION = 0x0112
GPS_IFD = 0x8825
_JPEG_SEGMENT = 65533
_XMP_ORIENTATION = re.compile(rb'(tiff:Orientation(?:="|>))[1-8]')


@dataclass(frozen=True)
class Metadata:
    exif: bytes | None = None
    xmp: bytes | None = None
    comment: bytes | None = None
    icc: bytes | None = None


def metadata(exif: Image.Exif | None, info: dict, policy: str, icc: bytes | None) -> Metadata:
    """What travels into the thumbnail: nothing by default; GPS only with 'all'."""
    if policy == "none" or exif is None and policy == "exif-no-gps":
        return Metadata(icc=icc or None)
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
        return Metadata(exif=raw_exif, icc=icc or None)
    xmp = info.get("xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    if xmp:
        xmp = _XMP_ORIENTATION.sub(rb"\g<1>1", xmp)
    comment = info.get("comment")
    if isinstance(comment, str):
        comment = comment.encode("utf-8")
    return Metadata(exif=raw_exif, xmp=xmp or None, comment=comment or None, icc=icc or None)


def _save_params(thumb: Image.Image, spec: SizeSpec, output: OutputConfig, meta: Metadata,
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
            meta = Metadata(icc=meta.icc)
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


def write(thumb: Image.Image, target: Target, output: OutputConfig, st: os.stat_result, meta: Metadata,
          fd_info: PngImagePlugin.PngInfo | None) -> tuple[int, str]:
    """Write one thumbnail by temp file and rename. Returns its folder, open, and its name."""
    thumb, params = _save_params(thumb, target.size, output, meta, fd_info)
    private = output.style == "freedesktop"
    long_name = too_long(target.path, " for the output file system")
    if long_name:
        raise RenderError(long_name)  # this photo's thumbnail can't exist; the others can
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



def _discard(temp: str, created: bool, dir_fd: int) -> None:
    if created:
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except OSError:
            pass
    if dir_fd >= 0:
        os.close(dir_fd)
