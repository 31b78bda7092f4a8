"""The freedesktop.org Thumbnail Managing Standard: where thumbnails live, what they are named and
what they carry.

Spec: thumbnails are PNGs in $XDG_CACHE_HOME/thumbnails/<flavor>/, named by the MD5 of the
photo's canonical file:// URI, carrying Thumb::* text chunks (Thumb::MTime is how a reader
knows a thumbnail is fresh), written atomically, files 0600 and folders 0700. A photo that
cannot be thumbnailed gets an entry in fail/<program>-<version>/ so no one retries it until
it changes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import quote

from PIL import Image, PngImagePlugin

from .config import SizeSpec

SIZES = (
    SizeSpec(name="normal", width=128, height=128, format="png"),
    SizeSpec(name="large", width=256, height=256, format="png"),
    SizeSpec(name="x-large", width=512, height=512, format="png"),
    SizeSpec(name="xx-large", width=1024, height=1024, format="png"),
)
PROGRAM = "thumbwatch"
# What GLib's g_filename_to_uri() leaves unescaped in a path (RFC 3986 unreserved, '/', and
# the sub-delims and ':' '@' a path may hold, except ';'). GNOME, and every reader that follows
# it, hashes that exact string, so a different choice means thumbnails nobody finds.
_URI_SAFE = "/!$&'()*+,-.:=@_~"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(os.path.abspath(base)) / "thumbnails"


def uri_for(path: str) -> str:
    """The canonical file:// URI: absolute path, its bytes percent-encoded (UTF-8 for non-ASCII,
    upper-case hex, a space as %20), leaving letters, digits and _URI_SAFE as they are."""
    raw = os.fsencode(os.path.abspath(path))
    return "file://" + quote(raw, safe=_URI_SAFE)


def _digest(photo: str) -> str:
    return hashlib.md5(uri_for(photo).encode("ascii")).hexdigest()


def thumbnail_path(photo: str, flavor: str) -> Path:
    return cache_root() / flavor / f"{_digest(photo)}.png"


def fail_path(photo: str, version: str) -> Path:
    return cache_root() / "fail" / f"{PROGRAM}-{version}" / f"{_digest(photo)}.png"


def ensure_dir(folder: str | os.PathLike[str]) -> None:
    """Create a thumbnail folder 0700 (and thumbnails/ itself, 0700), leaving existing ones alone."""
    folder = Path(folder)
    root = cache_root()
    chain = [folder, *folder.parents]
    private = [p for p in chain if p == root or root in p.parents]
    if not private:
        folder.mkdir(parents=True, exist_ok=True)
        return
    outside = root.parent
    outside.mkdir(parents=True, exist_ok=True)
    for p in reversed(private):
        try:
            os.mkdir(p, 0o700)
        except FileExistsError:
            pass


def text_chunks(photo: str, st: os.stat_result, mimetype: str, size: tuple[int, int]) -> PngImagePlugin.PngInfo:
    """The Thumb::* chunks for a thumbnail of `photo`, whose upright size is `size`."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Thumb::URI", uri_for(photo))
    info.add_text("Thumb::MTime", str(int(st.st_mtime)))
    info.add_text("Thumb::Size", str(st.st_size))
    info.add_text("Thumb::Mimetype", mimetype)
    info.add_text("Thumb::Image::Width", str(size[0]))
    info.add_text("Thumb::Image::Height", str(size[1]))
    info.add_text("Software", PROGRAM)
    return info


def record_failure(photo: str, st: os.stat_result, version: str) -> None:
    """Write the spec's fail entry (a 1×1 PNG with Thumb::URI and Thumb::MTime). Best effort:
    a full disk here must not hide the photo's own error."""
    final = fail_path(photo, version)
    temp = final.with_name(f".tw-{os.getpid()}-{final.name}.tmp")
    info = PngImagePlugin.PngInfo()
    info.add_text("Thumb::URI", uri_for(photo))
    info.add_text("Thumb::MTime", str(int(st.st_mtime)))
    info.add_text("Software", PROGRAM)
    try:
        ensure_dir(final.parent)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            Image.new("RGBA", (1, 1)).save(out, "PNG", pnginfo=info)
        os.replace(temp, final)
    except OSError:
        try:
            os.unlink(temp)
        except OSError:
            pass


def forget_failure(photo: str, version: str) -> None:
    """A photo that now thumbnails fine has no business in fail/."""
    try:
        os.unlink(fail_path(photo, version))
    except OSError:
        pass
