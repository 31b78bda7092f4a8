"""Video poster frames through PyAV: a frame from the first second that is not black, turned by
the container's display matrix (or an old-style rotate tag), 10-bit and BT.2020 to sRGB, short
and one-frame clips, bad files explained, and, with a real daemon, a clip written slowly gets
one thumbnail once it is complete.

Every clip is encoded by the test with PyAV (tests/mediagen.py). Orientation is judged by four
distinct corner colours against Pillow's own rotate() of the stored picture (an oracle apart
from the product's table).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from helpers import CORNERS, corner_colour, cornered_image, edit_config, library_missing, near, thumb
from mediagen import audio_only, clip
from rendering import fails, mean, size
from rendering import run_rgb as run
from watcher.config import OutputConfig
from watcher.paths import Target
from watcher.render import RenderError, RenderSettings, formats, render

av = pytest.importorskip("av", reason="the video extra (PyAV) is not installed: pip install -e '.[test]'")

MAX_PIXELS = 200_000_000
RED, GREEN = (200, 30, 30), (30, 170, 40)
W, H = 128, 96










def flat(colour, size=(W, H)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_the_first_frame_is_the_poster_when_it_is_not_black(tmp_path):
    src = clip(tmp_path / "a.mp4", [flat(RED)] * 5 + [flat(GREEN)] * 15)
    (thumb_,) = run(src, tmp_path / "out")
    assert thumb_.size == (100, 75) and near(mean(thumb_), RED, 25), mean(thumb_)


def test_a_black_opening_is_skipped_for_the_first_bright_frame(tmp_path):
    """Black for 0.3 s (a phone's first frames, a fade-in), then the picture."""
    src = clip(tmp_path / "fade.mp4", [flat((0, 0, 0))] * 3 + [flat(GREEN)] * 12, rate=10)
    (thumb_,) = run(src, tmp_path / "out")
    assert near(mean(thumb_), GREEN, 25), mean(thumb_)


def test_a_dark_first_second_gives_its_brightest_sampled_frame(tmp_path):
    dim, dimmer = (16, 16, 16), (4, 4, 4)
    src = clip(tmp_path / "night.mp4", [flat(dimmer)] * 3 + [flat(dim)] * 2 + [flat(dimmer)] * 10, rate=10)
    (thumb_,) = run(src, tmp_path / "out")
    assert abs(mean(thumb_)[1] - 16) <= 4, mean(thumb_)  # the dim frame at 0.3 s, not the dimmer first


def test_a_bright_frame_after_the_first_second_is_not_looked_for(tmp_path):
    src = clip(tmp_path / "late.mp4", [flat((4, 4, 4))] * 15 + [flat(GREEN)] * 5, rate=10)
    (thumb_,) = run(src, tmp_path / "out")
    assert max(mean(thumb_)) < 20, mean(thumb_)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_the_display_matrix_turns_the_poster(tmp_path, rotation):
    """A phone stores its frames sideways and says in the display matrix how to show them:
    `rotation` degrees counter-clockwise (FFmpeg's convention), as Pillow's rotate() does."""
    stored = cornered_image(W, H, CORNERS)
    src = clip(tmp_path / "phone.mp4", [stored] * 3, rotation=rotation)
    (thumb_,) = run(src, tmp_path / "out")
    expected = stored.rotate(rotation, expand=True)
    assert thumb_.size == ((75, 100) if rotation in (90, 270) else (100, 75))
    for corner in CORNERS:
        assert near(corner_colour(thumb_, corner), corner_colour(expected, corner)), (rotation, corner)


def test_an_old_style_rotate_tag_turns_the_poster(tmp_path):
    """Files from before display matrices say `rotate=90`: turn 90 degrees clockwise to show."""
    stored = cornered_image(W, H, CORNERS)
    src = clip(tmp_path / "old.mkv", [stored] * 3, fmt="matroska", rotate_tag=90)
    (thumb_,) = run(src, tmp_path / "out")
    expected = stored.rotate(-90, expand=True)
    assert thumb_.size == (75, 100)
    for corner in CORNERS:
        assert near(corner_colour(thumb_, corner), corner_colour(expected, corner)), corner


def test_sizes_cascade_upright_from_one_poster_frame(tmp_path):
    stored = cornered_image(320, 240, CORNERS)
    src = clip(tmp_path / "phone.mov", [stored] * 3, rotation=270)
    big, small = run(src, tmp_path / "out", size("big", 200, 200), size("small", 40, 40))
    assert big.size == (150, 200) and small.size == (30, 40)
    expected = stored.rotate(270, expand=True)
    for corner in CORNERS:
        assert near(corner_colour(small, corner), corner_colour(expected, corner)), corner


def test_a_one_frame_video_is_its_own_poster(tmp_path):
    src = clip(tmp_path / "one.mp4", [flat(GREEN)])
    (thumb_,) = run(src, tmp_path / "out")
    assert near(mean(thumb_), GREEN, 25)


@pytest.mark.parametrize("name, codec, fmt", [("a.webm", "libvpx-vp9", "webm"), ("a.3gp", "mpeg4", "3gp"), ("a.m4v", "libx264", "mp4")])
def test_other_containers_and_codecs(tmp_path, name, codec, fmt):
    src = clip(tmp_path / name, [flat(RED)] * 2, codec=codec, fmt=fmt)
    (thumb_,) = run(src, tmp_path / "out")
    assert near(mean(thumb_), RED, 30), mean(thumb_)


def test_ten_bit_video_is_scaled_to_eight_bits(tmp_path):
    src = clip(tmp_path / "hdr.mp4", [flat(RED)] * 2, pix_fmt="yuv420p10le")
    assert av.open(str(src)).streams.video[0].codec_context.pix_fmt == "yuv420p10le"
    (thumb_,) = run(src, tmp_path / "out")
    assert near(mean(thumb_), RED, 25), mean(thumb_)


def test_a_phone_hdr_clip_hevc_ten_bit_bt2020_turned_in_a_mov(tmp_path):
    """What an iPhone records upright: HEVC, 10 bit, BT.2020, in a MOV whose display matrix
    turns the sideways frames (-90 degrees: 270 counter-clockwise)."""
    stored = cornered_image(W, H, CORNERS)
    src = clip(tmp_path / "IMG_0001.MOV", [stored] * 3, codec="libx265", fmt="mov", pix_fmt="yuv420p10le",
               primaries=9, rotation=270, options={"x265-params": "log-level=error"})
    assert av.open(str(src)).streams.video[0].codec_context.name == "hevc"
    (thumb_,) = run(src, tmp_path / "out")
    assert thumb_.size == (75, 100)
    expected = stored.rotate(270, expand=True)
    # BT.2020 to sRGB moves each colour away from grey: each corner must still be nearest its own
    for corner in CORNERS:
        got = corner_colour(thumb_, corner)
        nearest = min(CORNERS, key=lambda c: sum((a - b) ** 2 for a, b in zip(got, corner_colour(expected, c))))
        assert nearest == corner, (corner, got)


def test_bt2020_primaries_are_converted_to_srgb(tmp_path):
    """Grey stays grey; a colour in BT.2020's wider gamut comes out more saturated in sRGB."""
    grey, tinted = (128, 128, 128), (150, 90, 80)
    plain = run(clip(tmp_path / "plain.mp4", [flat(tinted)] * 2, pix_fmt="yuv420p10le"), tmp_path / "o1")[0]
    wide = run(clip(tmp_path / "wide.mp4", [flat(tinted)] * 2, pix_fmt="yuv420p10le", primaries=9), tmp_path / "o2")[0]
    grey_wide = run(clip(tmp_path / "grey.mp4", [flat(grey)] * 2, pix_fmt="yuv420p10le", primaries=9), tmp_path / "o3")[0]
    r0, g0, _ = mean(plain)
    r1, g1, _ = mean(wide)
    assert r1 - g1 > r0 - g0 + 10, (mean(plain), mean(wide))
    assert near(mean(grey_wide), grey, 8), mean(grey_wide)


def test_an_audio_only_mp4_has_no_video_stream(tmp_path):
    assert fails(audio_only(tmp_path / "voice.mp4"), tmp_path) == "no video stream in it (audio only)"


def test_an_mp4_that_is_text_is_not_an_image(tmp_path):
    src = tmp_path / "clip.mp4"
    src.write_text("this is not a video\n")
    assert fails(src, tmp_path) == "not an image (looks like text)"


def test_a_truncated_mp4_is_explained(tmp_path):
    """Cut before its index (the moov box an MP4 muxer writes last): an upload cut short."""
    data = clip(tmp_path / "full.mp4", [flat(RED)] * 10).read_bytes()
    src = tmp_path / "cut.mp4"
    src.write_bytes(data[: len(data) // 2])
    assert fails(src, tmp_path).startswith("truncated or incomplete video"), fails(src, tmp_path)


def test_a_truncated_faststart_mp4_is_explained(tmp_path):
    """Index first (faststart, as phones and web uploads write), cut inside its first frame."""
    with av.open(str(tmp_path / "full.mp4"), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for _ in range(10):
            for packet in stream.encode(av.VideoFrame.from_image(flat(RED))):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = (tmp_path / "full.mp4").read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")
    src = tmp_path / "cut.mp4"
    src.write_bytes(data[: data.index(b"mdat") + 20])
    assert fails(src, tmp_path).startswith("truncated video (its mdat box runs "), fails(src, tmp_path)


def test_anamorphic_pixels_are_shown_at_the_display_aspect_ratio(tmp_path):
    """96x96 stored pixels with a 4:3 sample aspect ratio are a 128x96 picture."""
    from fractions import Fraction

    with av.open(str(tmp_path / "sar.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 96, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(4, 3)
        for _ in range(2):
            for packet in stream.encode(av.VideoFrame.from_image(flat(RED, (96, 96)))):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    (thumb_,) = run(tmp_path / "sar.mp4", tmp_path / "out")
    assert thumb_.size == (100, 75) and near(mean(thumb_), RED, 25)


def test_garbage_named_mov_is_explained(tmp_path):
    src = tmp_path / "x.mov"
    src.write_bytes(bytes(range(256)) * 64)
    reason = fails(src, tmp_path)
    assert reason.startswith(("not a video", "corrupt video")), reason


def test_a_video_larger_than_max_pixels_is_refused_before_decoding(tmp_path):
    src = clip(tmp_path / "a.mp4", [flat(RED)])
    targets = [Target(size(), str(tmp_path / "o.jpg"))]
    with pytest.raises(RenderError, match=r"image too large: 128×96 video frames exceed max_pixels \(10000\)"):
        render(str(src), targets, RenderSettings(OutputConfig(sizes=(size(),)), 10_000))


def test_the_video_extensions_are_served_by_pyav():
    for ext in (".mp4", ".mov", ".m4v", ".3gp", ".mkv", ".webm"):
        fmt = formats.format_for(f"x{ext.upper()}", None)
        assert fmt.name == "video" and fmt.decoder() is formats.VIDEO, ext
    with library_missing("av"), pytest.raises(formats.UnservedPattern) as err:
        formats.check_patterns(["*.jpg", "*.mov"])
    assert str(err.value) == "'*.mov': video needs PyAV (FFmpeg): pip install 'thumbwatch[video]'"


CAPPED = """
import sys
from watcher.limits import memory_cap
from watcher.config import OutputConfig, SizeSpec
from watcher.paths import Target
from watcher.render import RenderError, RenderSettings, render
import watcher.render.video, watcher.render.raw, av, rawpy  # a worker has these mapped before a photo needs them
room = int(sys.argv[2])
if room:
    with open("/proc/self/status") as f:
        used = next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmSize:"))
    memory_cap(used + room)
else:
    memory_cap(2048)  # limits.worker_memory_mb's default
s = SizeSpec(name="s", width=64, height=64)
try:
    render(sys.argv[1], [Target(s, sys.argv[1] + ".jpg")], RenderSettings(OutputConfig(sizes=(s,)), 10**9))
    print("ok")
except RenderError as err:
    print("failed:", err)
"""


def test_decoders_work_under_the_workers_memory_cap_and_fail_cleanly_below_it(tmp_path):
    """A worker caps its address space (limits.memory_cap); FFmpeg and LibRaw run inside it.
    In a child process capped as a worker is: a 1080p clip and a 3 MP DNG render under the
    default cap, and with only 10 MB to spare each fails as 'out of memory', not as a corrupt
    file (which tells people to delete a good one) and not as a crash."""
    pytest.importorskip("rawpy")
    from mediagen import dng

    video = clip(tmp_path / "a.mp4", [flat(RED, (1920, 1080))] * 2)
    raw = dng(tmp_path / "a.dng", RED, size=(2000, 1500))
    for src in (video, raw):
        for room, expected in (("0", "ok"), ("10", "failed:")):
            done = subprocess.run([sys.executable, "-c", CAPPED, str(src), room], capture_output=True, text=True, timeout=60)
            out = done.stdout.strip()
            assert out.startswith(expected), (src.name, room, out, done.stderr[-2000:])
            if expected != "ok":
                assert "out of memory" in out, out


def write_slowly(dest: Path, data: bytes, chunks: int, pause: float, out: Path) -> None:
    """One handle, `chunks` writes with `pause` seconds between (the writer's own pace, not a
    wait for the daemon), checking all the while that no thumbnail appears before the end."""
    step = len(data) // chunks + 1
    with open(dest, "wb") as f:
        for i in range(chunks):
            f.write(data[i * step : (i + 1) * step])
            f.flush()
            os.fsync(f.fileno())
            deadline = time.monotonic() + pause
            while time.monotonic() < deadline:
                assert not out.exists(), f"thumbnail written after chunk {i + 1} of {chunks}"
                time.sleep(0.02)


def slow_upload(project: Path, start_daemon, tmp_path: Path, pause: float):
    edit_config(project, "  create: true\n", '  create: true\n  patterns: ["*.jpg", "*.mp4"]\n')
    daemon = start_daemon()
    daemon.wait_ready()
    data = clip(tmp_path / "src.mp4", [flat((0, 0, 0))] * 2 + [flat(GREEN)] * 20).read_bytes()
    out = thumb(project, "VID_0001.mp4.jpg")
    write_slowly(project / "photos" / "VID_0001.mp4", data, 6, pause, out)
    daemon.wait_log(r"ok \S*VID_0001\.mp4")
    with Image.open(out) as im:
        assert im.size == (64, 48) and near(mean(im.convert("RGB")), GREEN, 25)
    with open(f"/proc/{daemon.proc.pid}/maps") as maps:
        assert "libavcodec" not in maps.read()  # the master never loaded FFmpeg
    return daemon


def test_a_clip_written_slowly_gets_one_thumbnail_once_complete(project, start_daemon, tmp_path):
    """A phone upload: one handle, written in chunks, each pause shorter than settle_seconds
    (0.3 s here): the master waits for the close, the worker decodes the whole clip once: one
    thumbnail, no `failed` line; PyAV is loaded in a worker, never in the master."""
    daemon = slow_upload(project, start_daemon, tmp_path, pause=0.15)
    assert not daemon.matching(r" failed /"), daemon.text()
    assert len(daemon.matching(r"ok \S*VID_0001\.mp4")) == 1


def test_a_clip_whose_upload_pauses_longer_than_settle_seconds_is_not_decoded_half_way(project, start_daemon, tmp_path):
    """As above, each pause longer than settle_seconds: the settler's fallback may render the
    clip half-way, but before its close-write a truncated clip is not a failure (settling.py)."""
    daemon = slow_upload(project, start_daemon, tmp_path, pause=0.6)
    assert not daemon.matching(r" failed /"), daemon.text()
    assert len(daemon.matching(r"ok \S*VID_0001\.mp4")) == 1
