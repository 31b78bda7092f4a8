"""Camera RAW (.dng .cr2 .cr3 .nef .nrw .arw .raf .orf .rw2 .pef .srw) through rawpy (LibRaw),
the `raw` extra.

A RAW file is the sensor's mosaic plus the camera's own rendering of it: a JPEG preview, for
most cameras of the sensor's full size or near it (1620 px for some Sony and Nikon bodies). The
thumbnail is made from that preview, the largest LibRaw finds, through the same checks and the
same DCT-scaled decode as a JPEG's embedded preview (preview.py): it must cover the largest
size, have the sensor image's aspect ratio within 1 %, decode cleanly and have no bars.
It is used whatever output.embedded_preview says: the preview is the picture the camera made,
and nobody rewrites a RAW in place (edits live in sidecar files), so it cannot be stale the way
an edited JPEG's can.

Orientation is the RAW's own (LibRaw's sizes.flip, read from the RAW's headers), applied once
by the pipeline: previews are stored as the sensor is, and their own EXIF, when they have one,
is ignored (often it has none, or says 1).

Without a usable preview the mosaic is demosaiced at half size (LibRaw's half_size: each 2×2
block becomes one pixel, no interpolation), with the camera's white balance; if that fails too
the photo fails with "no embedded preview (why) and the raw data does not decode (why)".
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile

from PIL import Image

from . import memcap, preview
from .errors import RenderError
from .formats import OpenedSource, Source, read_exif

logger = logging.getLogger(__name__)

# LibRaw's sizes.flip (its dcraw heritage: bit 0 mirror, bit 1 flip, bit 2 transpose) -> the
# EXIF orientation it was read from (LibRaw maps EXIF o to "50132467"[o]).
FLIP_TO_EXIF = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}
MIME = {".dng": "image/x-adobe-dng", ".cr2": "image/x-canon-cr2", ".cr3": "image/x-canon-cr3",
        ".nef": "image/x-nikon-nef", ".nrw": "image/x-nikon-nrw", ".arw": "image/x-sony-arw",
        ".raf": "image/x-fuji-raf", ".orf": "image/x-olympus-orf", ".rw2": "image/x-panasonic-rw2",
        ".pef": "image/x-pentax-pef", ".srw": "image/x-samsung-srw"}


def open(f, kind: str | None, src: str, settings) -> Source:  # noqa: A001 - the decoder interface
    import rawpy

    try:
        # LibRaw opens the file itself (streamed, not read into memory): the descriptor we
        # hold, so it is the very file the pipeline checked and will check again
        with _libraw_says() as said:
            raw = rawpy.imread(f"/proc/self/fd/{f.fileno()}")
    except rawpy.LibRawFileUnsupportedError:
        looks = f"; looks like {kind}" if kind and kind != "tiff" else ""
        raise RenderError(f"not a camera RAW that LibRaw can read (unsupported or corrupt{looks})") from None
    except rawpy.LibRawError as err:
        raise RenderError(f"unreadable camera RAW ({_words(err, said)})") from None
    except MemoryError:
        raise RenderError("out of memory opening the camera RAW (see limits.worker_memory_mb)") from None
    return RawSource(raw, kind, src)


@contextlib.contextmanager
def _libraw_says():
    """LibRaw reports a damaged file by printing "<file>: Unexpected end of file" on stderr (its
    default data callback, which rawpy does not let us replace): a stray line in the journal
    beside our one line per photo. While LibRaw reads, stderr goes to a temp file; its words
    (collected in the list yielded) go into the reason, anything else back to stderr."""
    said: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no stderr to borrow: let LibRaw print where it will
        yield said
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read(64 * 1024).decode("utf-8", "replace").splitlines():
                if line.startswith("/proc/self/fd/") and ": " in line:
                    said.append(line.split(": ", 1)[1].strip().lower())
                elif line.strip():
                    print(line, file=sys.stderr)


def _words(err: BaseException, said: list[str] | None = None) -> str:
    """LibRaw's message (rawpy passes it as bytes) as text."""
    text = err.args[0] if err.args else ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = str(text or type(err).__name__)
    extra = [s for s in dict.fromkeys(said or ()) if s.lower() not in text.lower()]
    return f"{text}: {', '.join(extra)}" if extra else text


class RawSource(OpenedSource):
    """A RAW opened by LibRaw: its size and orientation known, nothing decoded yet."""

    def __init__(self, raw, kind: str | None, src: str):  # noqa: D107 - no Pillow image until decode
        self._raw = raw
        self.kind = kind
        self.image = None
        self.exif = None  # the preview's, once decoded (the pipeline reads it after decode)
        self._info: dict = {}
        sizes = raw.sizes
        self._size = (sizes.width, sizes.height)
        self.orientation = FLIP_TO_EXIF.get(sizes.flip, 1)
        self._mime = MIME.get(os.path.splitext(src)[1].lower(), "image/x-dcraw")

    def close(self) -> None:
        super().close()
        self._raw.close()

    def decode(self, need: tuple[int, int] | None, embedded_preview: bool) -> tuple[Image.Image, tuple | None]:
        found = self._preview(need or (1, 1))
        if isinstance(found, tuple):
            self.image, box = found
            self._info = {k: v for k, v in self.image.info.items() if k == "icc_profile"}
            self.exif = read_exif(self.image)
            return self.image, box
        logger.debug("RAW preview not used: %s; demosaicing at half size", found)
        self.image = self._demosaic(found)
        return self.image, None

    def _preview(self, need: tuple[int, int]) -> tuple[Image.Image, tuple | None] | str:
        """The largest embedded preview, decoded (DCT-scaled to what `need` allows), with its
        crop box; or why it cannot stand in for the photo."""
        import rawpy

        try:
            with _libraw_says() as said:
                thumb = self._raw.extract_thumb()
        except rawpy.LibRawNoThumbnailError:
            return "none in the file"
        except rawpy.LibRawUnsupportedThumbnailError:
            return "in a form LibRaw cannot extract"
        except rawpy.LibRawError as err:
            return f"unreadable: {_words(err, said)}"
        if thumb.format == rawpy.ThumbFormat.BITMAP:  # a few old bodies store plain RGB
            im = Image.fromarray(thumb.data).convert("RGB")
            c = preview.Candidate("raw bitmap", 0, 0, im.width, im.height)
            why = preview._unfit(c, self._size, need)
            if why is None and preview.has_bars(im):
                why = "letterbox or pillarbox bars"
            return (im, None) if why is None else f"{im.width}x{im.height} bitmap: {why}"
        data = thumb.data
        frame = preview._frame_size(data)  # walks the segments to the frame header, copying nothing
        if frame is None:
            return "not a JPEG with a readable header"
        c = preview.Candidate("raw", 0, len(data), *frame)
        why = preview._unfit(c, self._size, need)
        if why is None:
            decoded = preview._decode(io.BytesIO(data), c, "RGB", need)
            if isinstance(decoded, tuple):
                return decoded
            why = decoded
        return f"{c.width}x{c.height} JPEG: {why}"

    def _demosaic(self, why_no_preview: str) -> Image.Image:
        import rawpy

        try:
            # user_flip=0: stored orientation, like the preview; the pipeline turns it once
            with _libraw_says() as said:
                rgb = self._raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8, user_flip=0)
        except rawpy.LibRawError as err:
            if not isinstance(err, (rawpy.LibRawMemPoolOverflowError, rawpy.LibRawUnsufficientMemoryError)) and not memcap.near_cap():
                raise RenderError(f"no embedded preview ({why_no_preview}) and the raw data does not decode ({_words(err, said)})") from None
            raise RenderError(f"no embedded preview ({why_no_preview}) and out of memory demosaicing "
                              f"{self._size[0]}×{self._size[1]} (see limits.worker_memory_mb)") from None
        except MemoryError:
            raise RenderError(f"no embedded preview ({why_no_preview}) and out of memory demosaicing "
                              f"{self._size[0]}×{self._size[1]} (see limits.worker_memory_mb)") from None
        return Image.fromarray(rgb)
