"""The freedesktop.org Thumbnail Managing Standard: where thumbnails live and what they are named.

Spec: thumbnails are PNGs in $XDG_CACHE_HOME/thumbnails/<flavor>/, named by the MD5 of the
photo's canonical file:// URI (RFC 3986 percent-encoding), carrying Thumb::* text chunks.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import quote

from .config import SizeSpec

SIZES = (
    SizeSpec(name="normal", width=128, height=128, format="png"),
    SizeSpec(name="large", width=256, height=256, format="png"),
    SizeSpec(name="x-large", width=512, height=512, format="png"),
    SizeSpec(name="xx-large", width=1024, height=1024, format="png"),
)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(os.path.abspath(base)) / "thumbnails"


def uri_for(path: str) -> str:
    """The canonical file:// URI: absolute path, bytes percent-encoded except RFC 3986 unreserved and '/'."""
    raw = os.fsencode(os.path.abspath(path))
    return "file://" + quote(raw, safe="/-._~")


def thumbnail_path(photo: str, flavor: str) -> Path:
    digest = hashlib.md5(uri_for(photo).encode("ascii")).hexdigest()
    return cache_root() / flavor / f"{digest}.png"
