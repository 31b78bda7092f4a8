"""Which decoder serves which photo: the one registry of formats, by file name and by content.

Patterns (watch.patterns) stay the way people choose what is a photo. This module says, for each
pattern, which formats it names and which decoder serves them, so that check-config and the
start can refuse a pattern this install cannot decode (one line with the `pip install` to run)
instead of failing every photo it matches.

At render time `open_photo` picks the decoder for one file: by what its first bytes say, or, for
formats whose content does not tell them apart (camera RAW is TIFF inside, video is ISO media
like HEIF), by the file's extension. It imports that decoder's module then, so an optional
library is loaded only in a worker, and only when a photo needs it.

A decoder is a module of this package with one function

    open(f, kind, src, settings) -> Source

`f` is the photo, open for reading (binary, seekable), `kind` what its first bytes say
(diagnose.sniff), `src` its path, `settings` the RenderSettings. It returns a Source: the
photo's size and metadata, its pixels decoded only when the pipeline asks (Source.decode,
with the size the largest thumbnail needs, so a decoder can take a fast path). Expected
failures raise RenderError with a human reason; what a library raises while decoding is
turned into one by the pipeline (diagnose.reason). To add a format: a Format row below, and
for a new library a Decoder row and its module (raw.py and video.py plug in here: their rows,
RAW and VIDEO, are below; a pattern naming them is refused until the module exists).

A decoder that finds a JPEG inside its file (a RAW's preview) can return
pillow.PillowSource(Image.open(BytesIO(jpeg)), "jpeg", None, previews=False, orientation=...)
and gets the JPEG path's DCT-scaled decode; one that makes pixels itself (a video frame)
returns Source(image, kind, oriented=True) with the image already upright.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache

from PIL import Image

from .diagnose import NOT_IMAGES
from .errors import RenderError
from ..configfile import ConfigError
from ..paths import JPEG_EXTS

ORIENTATION = 0x0112
GPS_IFD = 0x8825
EXIF_IFD = 0x8769
MIME = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif",
        "TIFF": "image/tiff", "BMP": "image/bmp", "AVIF": "image/avif", "HEIF": "image/heif"}


@dataclass(frozen=True)
class Decoder:
    """A library that decodes some formats, and the module of this package that drives it."""

    name: str  # as check-config names it
    module: str  # watcher.render.<module> has open(f, kind, src, settings) -> Source
    extra: str | None = None  # the thumbwatch extra that installs the library
    library: str | None = None  # the import name that must be there
    needs: str = ""  # what to do when it isn't, if not the extra

    def missing(self) -> str | None:
        """Why this install cannot use the decoder, with what to run; None when it can."""
        return _missing(self)

    def opener(self) -> Callable[..., Source]:
        return _opener(self.module)


@dataclass(frozen=True)
class Format:
    name: str
    extensions: tuple[str, ...]
    kinds: tuple[str, ...]  # what diagnose.sniff calls its content
    decoders: tuple[Decoder, ...]  # in order of preference: the first this install has serves it
    by_extension: bool = False  # its content does not identify it: the file name does
    noun: str = "image"  # what one is called in a failure: "HEIF image", "video file"

    def decoder(self) -> Decoder | None:
        return next((d for d in self.decoders if d.missing() is None), None)

    def missing(self) -> str:
        """What to install for this format (the preferred decoder's way)."""
        return f"{self.name} needs {self.decoders[0].name}: {self.decoders[0].missing()}"


PILLOW = Decoder("Pillow", "pillow")
PILLOW_AVIF = Decoder("Pillow's AVIF plugin", "pillow", library="PIL._avif",
                      needs="a Pillow built with AVIF (pip install 'Pillow>=11.3')")
HEIF = Decoder("pillow-heif", "heif", extra="heif", library="pillow_heif")
HEIF_AVIF = Decoder("pillow-heif (AV1)", "heif", extra="heif", library="pillow_heif")
RAW = Decoder("rawpy (LibRaw)", "raw", extra="raw", library="rawpy")
VIDEO = Decoder("PyAV (FFmpeg)", "video", extra="video", library="av")

RAW_EXTS = (".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw")
VIDEO_EXTS = (".mp4", ".mov", ".m4v", ".3gp", ".mkv", ".webm")

FORMATS = (
    Format("JPEG", JPEG_EXTS, ("jpeg",), (PILLOW,)),
    Format("PNG", (".png",), ("png",), (PILLOW,)),
    Format("WebP", (".webp",), ("webp",), (PILLOW,)),
    Format("GIF", (".gif",), ("gif",), (PILLOW,)),
    Format("TIFF", (".tif", ".tiff"), ("tiff",), (PILLOW,)),
    Format("BMP", (".bmp",), ("bmp",), (PILLOW,)),
    Format("HEIF", (".heic", ".heif", ".hif"), ("heif",), (HEIF,)),
    Format("AVIF", (".avif",), ("avif",), (PILLOW_AVIF, HEIF_AVIF)),
    Format("camera RAW", RAW_EXTS, (), (RAW,), by_extension=True),
    Format("video", VIDEO_EXTS, (), (VIDEO,), by_extension=True, noun="file"),
)
_BY_EXTENSION = {ext: fmt for fmt in FORMATS for ext in fmt.extensions}
_BY_KIND = {kind: fmt for fmt in FORMATS for kind in fmt.kinds}
# Formats the Pillow decoder tries on a file whose content nothing here recognises.
_UNKNOWN = Format("image", (), (), (PILLOW,))


@cache
def _missing(decoder: Decoder) -> str | None:
    if decoder.library is None:
        return None
    if importlib.util.find_spec(f"{__package__}.{decoder.module}") is None:
        return "not supported by this version of thumbwatch"
    try:
        found = importlib.util.find_spec(decoder.library) is not None
    except ImportError:  # a submodule of a package that is not there
        found = False
    if found and decoder is HEIF_AVIF:
        found = _heif_has_av1()
    if found:
        return None
    return decoder.needs or f"pip install 'thumbwatch[{decoder.extra}]'"


def _heif_has_av1() -> bool:
    """pillow-heif dropped AVIF in 1.0; older builds decode it with libheif's AV1 plugin."""
    import pillow_heif

    return bool(pillow_heif.libheif_info().get("AVIF"))


@cache
def _opener(module: str) -> Callable[..., Source]:
    return importlib.import_module(f"{__package__}.{module}").open


# --- per file -------------------------------------------------------------------------


def format_for(src: str, kind: str | None) -> Format:
    """The format that serves this file: by its name when the content cannot tell (and is not
    plainly something else, like text), else by its content."""
    named = _BY_EXTENSION.get(os.path.splitext(src)[1].lower())
    if named is not None and named.by_extension and kind not in NOT_IMAGES:
        return named
    return _BY_KIND.get(kind or "", _UNKNOWN)


def open_photo(f, kind: str | None, src: str, settings) -> Source:
    """Open the photo with the decoder that serves it, or say what to install."""
    fmt = format_for(src, kind)
    decoder = fmt.decoder()
    if decoder is None:
        raise RenderError(_uninstalled(fmt, src))
    return decoder.opener()(f, kind, src, settings)


def _uninstalled(fmt: Format, src: str) -> str:
    hint = fmt.decoders[0].missing() or ""
    if fmt.decoders[0].extra and hint.startswith("pip install"):
        hint = f"install thumbwatch[{fmt.decoders[0].extra}]"
    named = _BY_EXTENSION.get(os.path.splitext(src)[1].lower())
    if named is not None and named is not fmt:
        return f"not a {named.name} (looks like {fmt.name}; {hint})"
    return f"{fmt.name} {fmt.noun} (cannot be read; {hint})"


class Source:
    """A photo opened by its decoder: size and metadata known, pixels decoded on demand.

    `image` is a Pillow image in the photo's stored orientation; `orientation` is the EXIF
    orientation still to apply to it (1 when the decoder has turned it upright itself, as
    libheif does with HEIF's irot/imir: never turned twice)."""

    def __init__(self, image: Image.Image, kind: str | None, *, oriented: bool = False):
        self.image = image
        self.kind = kind
        self.exif = read_exif(image)
        self.orientation = 1 if oriented else exif_orientation(self.exif)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    @property
    def info(self) -> dict:
        return self.image.info

    @property
    def mime(self) -> str:
        return MIME.get(self.image.format or "", "application/octet-stream")

    def decode(self, need: tuple[int, int] | None, embedded_preview: bool) -> tuple[Image.Image, tuple | None]:
        """The pixels, at least `need` (stored orientation) when given, and the crop box of the
        photo they show when a decoder scaled them (None: the whole image)."""
        self.image.load()
        return self.image, None

    def close(self) -> None:
        self.image.close()


class OpenedSource(Source):
    """A source whose size, metadata and type its decoder knows at open, before any pixels are
    decoded (a RAW's sensor size, a video's display size): the decoder sets `_size`, `_info`
    and `_mime`, and `image` holds what decode() made (None until then), for close()."""

    image: Image.Image | None
    _size: tuple[int, int]
    _info: dict
    _mime: str

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    @property
    def info(self) -> dict:
        return self._info

    @property
    def mime(self) -> str:
        return self._mime

    def close(self) -> None:
        if self.image is not None:
            self.image.close()


def read_exif(im: Image.Image) -> Image.Exif | None:
    try:
        exif = im.getexif()
        exif.get_ifd(GPS_IFD)  # parse the sub-IFDs now: a corrupt one must not fail the save later
        exif.get_ifd(EXIF_IFD)
        return exif
    except Exception:  # noqa: BLE001 - a corrupt EXIF block can raise nearly anything; it is optional
        return None


def exif_orientation(exif: Image.Exif | None) -> int:
    if exif is None:
        return 1
    value = exif.get(ORIENTATION, 1)
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# --- per pattern (check-config and the start) -------------------------------------------


class UnservedPattern(ValueError):
    """A watch pattern names only formats this install cannot decode."""


def formats_named(pattern: str) -> tuple[Format, ...]:
    """The formats whose files the pattern can match, judged by the extension it asks for
    ("*.heic" names HEIF; "*.jp*g" JPEG; "IMG_*" or "*" every format)."""
    tail = pattern.rsplit("/", 1)[-1]
    if "." not in tail:
        return FORMATS
    rx = re.compile(fnmatch.translate(tail.rsplit(".", 1)[1]), re.IGNORECASE)
    return tuple(f for f in FORMATS if any(rx.match(ext[1:]) for ext in f.extensions))


def serving(pattern: str) -> str:
    """One line: which decoder serves each format the pattern names. Raises UnservedPattern
    when it names formats and none of them can be decoded here."""
    named = formats_named(pattern)
    if not named:
        return f"{pattern}: no known photo extension; files it matches are decoded by content ({PILLOW.name})"
    served = [(fmt, fmt.decoder()) for fmt in named]
    if all(decoder is None for _fmt, decoder in served):
        raise UnservedPattern(f"{pattern!r}: " + "; ".join(fmt.missing() for fmt in named))
    served_by: dict[str, list[str]] = {}
    unserved: list[str] = []
    for fmt, decoder in served:
        if decoder is None:
            unserved.append(f"{fmt.name} not here ({fmt.decoders[0].name}: {fmt.decoders[0].missing()})")
        else:
            served_by.setdefault(decoder.name, []).append(fmt.name)
    return f"{pattern}: " + "; ".join([f"{', '.join(names)} by {name}" for name, names in served_by.items()] + unserved)


def check_patterns(patterns: Iterable[str]) -> list[str]:
    """serving() for each pattern: what check-config prints; UnservedPattern for the first
    pattern this install cannot serve at all. Looks again each time (a reload after
    `pip install 'thumbwatch[heif]'` sees the new library)."""
    importlib.invalidate_caches()
    _missing.cache_clear()
    return [serving(p) for p in patterns]


def require_decoders(config) -> list[str]:
    """check_patterns for a loaded config, as a config error naming the key: the start,
    check-config and every reload call it (config.py cannot: render imports config)."""
    try:
        return check_patterns(config.watch.patterns)
    except UnservedPattern as err:
        raise ConfigError(f"{config.source}: watch.patterns: a pattern this install cannot decode: {err}") from None
