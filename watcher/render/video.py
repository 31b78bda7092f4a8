"""Video poster frames (.mp4 .mov .m4v .3gp .mkv .webm) through PyAV and the FFmpeg it bundles,
the `video` extra.

The thumbnail of a video is one frame from its first second: the first decoded frame (a
keyframe) if it is not black, else the first of the frames sampled every quarter second up to
1 s whose mean luma is above POSTER_LUMA (a fade-in, a lens cap, a phone's first dark frame),
else the brightest of those seen. Decoding stops at the frame chosen, so a video whose first
frame is fine costs one keyframe decode.

Orientation: phones store video sideways and say how to turn it in the container's display
matrix (FFmpeg hands it to each decoded frame: VideoFrame.rotation), or, in files FFmpeg wrote
before it had display matrices, a `rotate` tag in the stream's metadata. Either becomes the
equivalent EXIF orientation, which the pipeline applies once.

Colour: the frame is converted to 8-bit RGB by swscale with the stream's own matrix and range
(BT.601/709/2020, limited or full). A BT.2020 (HDR or 10-bit) video gets an ICC profile of its
primaries (colour.nclx_profile), so the pipeline converts it to sRGB as it does an Android
HEIF; its transfer curve is taken as is (HLG, what phones record, looks right on SDR; PQ looks
flat, not broken).

The decode runs in a worker, bounded as every photo is: limits.photo_timeout (the master kills
a worker that overruns) and the worker's memory cap. FFmpeg decodes on one thread here: the
pool already runs one worker per core.
"""

from __future__ import annotations

import logging
import os
import struct
from fractions import Fraction

from PIL import Image, ImageStat

from . import colour, memcap
from .errors import RenderError
from .formats import OpenedSource, Source

logger = logging.getLogger(__name__)

POSTER_WITHIN = 1.0  # seconds from the start in which the poster frame is looked for
SAMPLE_EVERY = 0.25  # seconds between the frames whose brightness is looked at
POSTER_LUMA = 24.0  # mean luma (0-255) above which a frame is not "black"
LUMA_PROBE = (64, 36)  # the frame is scaled to this to measure its luma: cheap, and enough
# Clockwise turn to show the frame upright -> the EXIF orientation that says the same.
TURN_TO_EXIF = {0: 1, 90: 6, 180: 3, 270: 8}
MIME = {".mp4": "video/mp4", ".m4v": "video/x-m4v", ".mov": "video/quicktime", ".3gp": "video/3gpp",
        ".mkv": "video/x-matroska", ".webm": "video/webm"}
_BT2020 = {"color_primaries": 9, "color_primary_red_x": 0.708, "color_primary_red_y": 0.292,
           "color_primary_green_x": 0.170, "color_primary_green_y": 0.797, "color_primary_blue_x": 0.131,
           "color_primary_blue_y": 0.046, "color_primary_white_x": 0.3127, "color_primary_white_y": 0.3290}
_AVCOL_PRI_BT2020 = 9


def open(f, kind: str | None, src: str, settings) -> Source:  # noqa: A001 - the decoder interface
    import av

    try:
        # FFmpeg opens the descriptor we hold: the very file the pipeline checks before and after
        container = av.open(f"/proc/self/fd/{f.fileno()}", "r")
    except av.error.InvalidDataError as err:
        raise RenderError(_iso_problem(f) or _unreadable(kind, err)) from None
    except av.error.FFmpegError as err:
        raise RenderError(f"unreadable video ({_words(err)})") from None
    try:
        if not container.streams.video:
            what = "audio only" if container.streams.audio else "no streams FFmpeg can decode"
            raise RenderError(f"no video stream in it ({what})")
        return VideoSource(container, container.streams.video[0], kind, src, settings.max_pixels, f)
    except BaseException:
        container.close()
        raise


def _unreadable(kind: str | None, err: BaseException) -> str:
    words = _words(err)
    if kind in (None, "text", "HTML", "XML", "JSON") or kind in ("jpeg", "png", "gif", "tiff", "bmp", "webp"):
        looks = f"looks like {kind}" if kind else "unrecognised content"
        return f"not a video ({looks})"
    return f"corrupt video ({words})"


def _iso_problem(f) -> str | None:
    """Why an MP4/MOV (ISO media) file cannot be opened, from its top-level boxes: one cut
    short (a box runs past the end) or without its index (no moov box: an MP4 muxer writes it
    last, so an upload cut short has none). None when the boxes look whole or it is no ISO file."""
    try:
        end = os.fstat(f.fileno()).st_size
        pos, names = 0, []
        while pos + 8 <= end:
            f.seek(pos)
            head = f.read(16)
            size, name = struct.unpack(">I4s", head[:8])
            if size == 1 and len(head) == 16:
                size = struct.unpack(">Q", head[8:16])[0]
            elif size == 0:
                size = end - pos
            if size < 8 or not name.isalnum():  # not an ISO box (Matroska, garbage): nothing to say
                return None
            names.append(name)
            if pos + size > end:
                return f"truncated video (its {name.decode('latin-1')} box runs {pos + size - end} bytes past the end)"
            pos += size
    except OSError:
        return None
    if names and names[0] == b"ftyp" and b"moov" not in names:
        return "truncated or incomplete video (no moov box: the index an MP4 muxer writes last)"
    return None


def _words(err: BaseException) -> str:
    """FFmpeg's own reason, without PyAV's errno and file name decorations."""
    text = getattr(err, "strerror", None) or str(err)
    return str(text).strip() or type(err).__name__


def _luma(frame) -> float:
    small = frame.reformat(width=LUMA_PROBE[0], height=LUMA_PROBE[1], format="rgb24")
    return ImageStat.Stat(small.to_image().convert("L")).mean[0]


class VideoSource(OpenedSource):
    """A video opened by FFmpeg, its poster frame decoded (in stored orientation), the turn its
    display matrix or rotate tag asks for known."""

    def __init__(self, container, stream, kind: str | None, src: str, max_pixels: int, f):  # noqa: D107 - no Pillow image until decode
        self._container = container
        self._stream = stream
        self._f = f
        self.kind = kind
        self.image = None
        self.exif = None  # a video's metadata (place, time) never travels into its thumbnail
        self._info: dict = {}
        self._mime = MIME.get(os.path.splitext(src)[1].lower(), "video/mp4")
        ctx = stream.codec_context
        ctx.thread_count = 1
        sar = stream.sample_aspect_ratio or ctx.sample_aspect_ratio
        self._sar = Fraction(sar) if sar and sar > 0 else Fraction(1)
        width, height = ctx.width, ctx.height
        if width * height > max_pixels:  # before any frame is decoded
            raise RenderError(f"image too large: {width}×{height} video frames exceed max_pixels ({max_pixels})")
        # The poster is decoded now, not in decode(): the display matrix comes with decoded
        # frames, and the pipeline needs the orientation before it asks for pixels.
        self._frame = self._poster()
        self._size = (round(self._frame.width * self._sar), self._frame.height)
        turn = _frame_turn(self._frame)
        self.orientation = TURN_TO_EXIF.get(turn if turn is not None else _metadata_turn(stream), 1)

    def close(self) -> None:
        super().close()
        self._container.close()

    def decode(self, need: tuple[int, int] | None, embedded_preview: bool) -> tuple[Image.Image, tuple | None]:
        frame = self._frame
        if frame.color_primaries == _AVCOL_PRI_BT2020:
            self._info = {"icc_profile": colour.nclx_profile(_BT2020)}
        im = frame.reformat(format="rgb24", src_color_range=frame.color_range).to_image()
        if self._sar != 1:
            im = im.resize(self._size, Image.Resampling.BILINEAR)
        self.image = im
        return im, None

    def _poster(self):
        """The first frame of the first second that is not black, else the brightest sampled."""
        import av

        stream = self._stream
        base = stream.time_base or Fraction(1, 90000)
        start = None
        next_sample = 0.0
        best, best_luma = None, -1.0
        try:
            for frame in self._container.decode(stream):
                if frame.pts is None:
                    at = 0.0 if start is None else next_sample
                else:
                    start = frame.pts if start is None else start
                    at = float((frame.pts - start) * base)
                if at > POSTER_WITHIN and best is not None:
                    break
                if at < next_sample and best is not None:
                    continue
                luma = _luma(frame)
                if luma > POSTER_LUMA:
                    return frame
                if luma > best_luma:
                    best, best_luma = frame, luma
                next_sample = at + SAMPLE_EVERY
        except av.error.FFmpegError as err:
            if best is None and (isinstance(err, av.error.MemoryError) or memcap.near_cap()):
                raise RenderError(f"out of memory decoding {self._stream.codec_context.width}×{self._stream.codec_context.height} "
                                  f"video frames (see limits.worker_memory_mb)") from None
            if best is None:
                raise RenderError(_iso_problem(self._f) or f"corrupt video: no frame decodes ({_words(err)})") from None
            logger.debug("video decode stopped early (%s): poster frame from what decoded", _words(err))
        if best is None:
            raise RenderError(_iso_problem(self._f) or "no frame in the video decodes (an empty video stream)")
        logger.debug("no frame in the first %.0f s is brighter than luma %.0f: the brightest (%.1f) is the poster",
                     POSTER_WITHIN, POSTER_LUMA, best_luma)
        return best


def _frame_turn(frame) -> int | None:
    """The clockwise turn the display matrix on a decoded frame asks for, or None without one."""
    rotation = getattr(frame, "rotation", 0)
    if not rotation:
        return None
    # FFmpeg gives the matrix's counter-clockwise angle; showing upright turns it back
    return round(-rotation / 90) * 90 % 360


def _metadata_turn(stream) -> int:
    """The clockwise turn in an older file's `rotate` tag (what FFmpeg wrote before display matrices)."""
    tags = {k.lower(): v for k, v in stream.metadata.items()}  # Matroska keeps tags upper-case
    try:
        return round(float(tags.get("rotate", 0)) / 90) * 90 % 360
    except (TypeError, ValueError):
        return 0
