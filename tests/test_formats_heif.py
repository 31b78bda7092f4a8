"""HEIC/HEIF through pillow-heif, and AVIF through Pillow's own plugin: decoded right, turned
upright exactly once, colour to sRGB, the thumbnail item as a fast path, bad files explained.

Every input is made here with pillow-heif (or Pillow's AVIF writer). Orientation is judged by
four distinct corner colours against the Exif spec's words (helpers.EXIF_SIDES), as for JPEG.
"""

from __future__ import annotations

import array
import os
from pathlib import Path

import pytest
from PIL import Image, features

from helpers import CORPUS, CORNERS, corner_colour, cornered_image, edit_config, near, shown_corner, stored_test_image, thumb, wait_for
from imagegen import swapped_primaries_profile
from rendering import fails, run, size
from watcher.config import OutputConfig
from watcher.render import RenderSettings, formats

pillow_heif = pytest.importorskip("pillow_heif", reason="the heif extra (pillow-heif) is not installed: pip install -e '.[test]'")

SETTINGS = 200_000_000








def heic(path: Path, im: Image.Image, *, orientation: int = 1, thumbnails: tuple[int, ...] = (), **params) -> Path:
    """A HEIC written by pillow-heif: an EXIF orientation becomes HEIF's irot/imir transform
    (as phones write it), and the EXIF block keeps saying the same orientation."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    heif = pillow_heif.from_pillow(im)
    heif.save(path, quality=params.pop("quality", 92), exif=exif.tobytes(), thumbnails=list(thumbnails), **params)
    return path


def assert_corners(thumb: Image.Image, orientation: int = 1, tolerance: int = 60) -> None:
    """`thumb` shows upright_test_image: each colour in the corner the spec puts it."""
    for corner, colour in CORNERS.items():
        got = corner_colour(thumb, corner)
        assert near(got, colour, tolerance), (orientation, corner, got, colour)


# --- orientation exactly once ----------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_heif_transform_is_applied_once_and_the_exif_orientation_not_again(tmp_path, orientation):
    src = heic(tmp_path / "p.heic", stored_test_image(240, 160, orientation), orientation=orientation)
    # the file says it twice, as an iPhone's does: an irot/imir transform and the EXIF tag
    stored = pillow_heif.open_heif(src)[0]
    exif = Image.Exif()
    exif.load(stored.info["exif"])
    assert exif.get(0x0112) == orientation
    assert bool(stored._c_image.transformations) == (orientation != 1)  # noqa: SLF001 - checking the input we made
    (thumb,) = run(src, tmp_path / "out", size(width=120, height=120))
    assert thumb.size == (120, 80)
    assert_corners(thumb, orientation)
    assert thumb.getexif().get(0x0112) in (None, 1)


def test_an_exif_orientation_without_a_heif_transform_is_not_applied(tmp_path):
    """HEIF's transforms are what a viewer applies (MIAF); an EXIF orientation the file's
    transforms do not carry out is stale, as after an editor turned the pixels themselves."""
    src = heic(tmp_path / "p.heic", cornered_image(240, 160, CORNERS))
    data = src.read_bytes()
    # the EXIF entry Orientation, SHORT, 1 value: 1, in either byte order
    tag, six = ((b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x01", b"\x00\x06") if b"Exif\x00\x00MM" in data
                else (b"\x12\x01\x03\x00\x01\x00\x00\x00\x01\x00", b"\x06\x00"))
    assert data.count(tag) == 1
    src.write_bytes(data.replace(tag, tag[:8] + six))
    exif = Image.Exif()
    exif.load(pillow_heif.open_heif(src)[0].info["exif"])
    assert exif.get(0x0112) == 6 and not pillow_heif.open_heif(src)[0]._c_image.transformations  # noqa: SLF001
    (thumb,) = run(src, tmp_path / "out", size(width=120, height=120))
    assert thumb.size == (120, 80)
    assert_corners(thumb)


def test_sizes_cascade_upright_from_a_turned_heic(tmp_path):
    src = heic(tmp_path / "p.heic", stored_test_image(400, 300, 6), orientation=6)
    thumbs = run(src, tmp_path / "out", size("l", 200, 200), size("m", 100, 100), size("fill", 60, 60, mode="fill"))
    assert [t.size for t in thumbs] == [(200, 150), (100, 75), (60, 60)]
    for thumb in thumbs:
        assert near(corner_colour(thumb, "tl"), CORNERS["tl"]) and near(corner_colour(thumb, "br"), CORNERS["br"])


# --- full decode: depth, alpha, colour, collections --------------------------------------


def test_ten_bit_heic_is_scaled_to_eight_bits_not_clipped(tmp_path):
    im = stored_test_image(240, 160, 1)
    data = array.array("H", [v * 257 for v in im.tobytes()]).tobytes()  # 16-bit samples; pillow-heif writes 10 bits
    src = tmp_path / "p.heic"
    pillow_heif.from_bytes("RGB;16", im.size, data).save(src, quality=92)
    assert pillow_heif.open_heif(src)[0].info["bit_depth"] == 10
    (thumb,) = run(src, tmp_path / "out", size(width=120, height=120))
    assert_corners(thumb, tolerance=40)
    grey = thumb.getpixel((60, 40))
    assert near(grey, (128, 128, 128), 10), grey  # mid grey stays mid grey: scaled, not clipped or left at 10 bits


def test_alpha_is_kept_in_png_and_flattened_in_jpeg(tmp_path):
    im = Image.new("RGBA", (200, 100), (255, 0, 0, 255))
    im.paste((0, 0, 0, 0), (100, 0, 200, 100))  # right half transparent
    src = tmp_path / "p.heic"
    pillow_heif.from_pillow(im).save(src, quality=-1)  # lossless: alpha exactly 0 and 255
    png, jpeg = run(src, tmp_path / "out", size("p", format="png"), size("j"), background="#ffffff")
    assert png.mode == "RGBA" and png.getpixel((10, 10))[3] == 255 and png.getpixel((90, 10))[3] == 0
    assert near(jpeg.getpixel((10, 10)), (255, 0, 0), 30) and near(jpeg.getpixel((90, 10)), (255, 255, 255), 10)


def test_icc_profile_is_converted_to_srgb(tmp_path):
    src = tmp_path / "p.heic"
    pillow_heif.from_pillow(Image.new("RGB", (64, 48), (255, 0, 0))).save(src, quality=92, icc_profile=swapped_primaries_profile())
    (thumb,) = run(src, tmp_path / "out", size(width=32, height=32))
    r, g, b = thumb.getpixel((10, 10))
    assert g > 200 and r < 60 and b < 60, (r, g, b)  # the profile says this red is green


def test_nclx_display_p3_is_converted_to_srgb(tmp_path):
    """Android phones describe colour by an nclx box, not an ICC profile."""
    src = tmp_path / "p.heic"
    p3 = {"color_primaries": 12, "transfer_characteristics": 13, "matrix_coefficients": 0, "full_range_flag": 1}
    Image.new("RGB", (64, 48), (200, 100, 100)).save(src, "HEIF", quality=-1, chroma=444, nclx_profile=p3)
    # P3 (200, 100, 100) is sRGB (215, 93, 97): linearise, the P3 -> sRGB matrix, encode
    (thumb,) = run(src, tmp_path / "out", size(width=32, height=32, format="png"))
    assert near(thumb.getpixel((10, 10)), (215, 93, 97), 3), thumb.getpixel((10, 10))
    srgb = {"color_primaries": 1, "transfer_characteristics": 13, "matrix_coefficients": 0, "full_range_flag": 1}
    Image.new("RGB", (64, 48), (200, 100, 100)).save(src, "HEIF", quality=-1, chroma=444, nclx_profile=srgb)
    (thumb,) = run(src, tmp_path / "out2", size(width=32, height=32, format="png"))
    assert near(thumb.getpixel((10, 10)), (200, 100, 100), 3), thumb.getpixel((10, 10))


def test_the_primary_image_of_a_collection_is_the_one_shown(tmp_path):
    heif = pillow_heif.from_pillow(Image.new("RGB", (64, 48), (255, 0, 0)))
    heif.add_from_pillow(Image.new("RGB", (64, 48), (0, 0, 255)))
    src = tmp_path / "burst.heic"
    heif.save(src, quality=92, primary_index=1)
    (thumb,) = run(src, tmp_path / "out", size(width=32, height=32))
    assert near(thumb.getpixel((10, 10)), (0, 0, 255)), thumb.getpixel((10, 10))


# --- the thumbnail item -------------------------------------------------------------------


def opened(src: Path, embedded: bool = True):
    settings = RenderSettings(OutputConfig(embedded_preview=embedded), SETTINGS)
    f = open(src, "rb")  # noqa: SIM115 - closed by the caller's source.close() and below
    return f, formats.open_photo(f, "heif", str(src), settings)


def test_thumbnail_item_stands_in_when_it_covers_the_box(tmp_path):
    src = heic(tmp_path / "p.heic", stored_test_image(1200, 900, 1), thumbnails=(320,))
    f, source = opened(src)
    with f:
        decoded, _box = source.decode((256, 192), True)
        assert decoded.size == (320, 240)  # the item, not the 1200×900 photo
        source.close()
    f, source = opened(src)
    with f:
        assert source.decode((400, 300), True)[0].size == (1200, 900)  # too small for the box: the photo
        source.close()
    f, source = opened(src)
    with f:
        assert source.decode((256, 192), False)[0].size == (1200, 900)  # embedded_preview off
        source.close()
    quick, = run(src, tmp_path / "q", size(width=256, height=256), embedded_preview=True)
    full, = run(src, tmp_path / "f", size(width=256, height=256))
    assert quick.size == full.size == (256, 192)
    assert_corners(quick)


def test_thumbnail_item_of_a_turned_heic_is_turned_by_its_own_transform(tmp_path):
    src = heic(tmp_path / "p.heic", stored_test_image(1200, 900, 6), orientation=6, thumbnails=(320,))
    f, source = opened(src)
    with f:
        assert source.decode((256, 192), True)[0].size == (320, 240)  # upright already: landscape
        source.close()
    (thumb,) = run(src, tmp_path / "out", size(width=200, height=200), embedded_preview=True)
    assert thumb.size == (200, 150)
    assert_corners(thumb, 6)


def test_thumbnail_item_with_bars_is_not_used(tmp_path):
    im = Image.new("RGB", (1200, 900), (0, 0, 0))
    im.paste((200, 120, 40), (0, 120, 1200, 780))  # letterboxed: black bands top and bottom
    src = heic(tmp_path / "p.heic", im, thumbnails=(320,))
    f, source = opened(src)
    with f:
        assert source.decode((256, 192), True)[0].size == (1200, 900)
        source.close()


# --- bad input ----------------------------------------------------------------------------


def test_truncated_heic_is_explained(tmp_path):
    src = heic(tmp_path / "p.heic", stored_test_image(400, 300, 1))
    data = src.read_bytes()
    cut = tmp_path / "cut.heic"
    cut.write_bytes(data[: len(data) // 2])
    assert fails(cut, tmp_path) == "truncated HEIF"
    head = tmp_path / "head.heic"
    head.write_bytes(data[:40])
    reason = fails(head, tmp_path)
    assert reason.startswith(("truncated HEIF", "corrupt HEIF")) and "Error" not in reason, reason


def test_a_heic_that_is_text_is_not_an_image(tmp_path):
    src = tmp_path / "notes.heic"
    src.write_text("shopping list: milk, eggs\n")
    assert fails(src, tmp_path) == "not an image (looks like text)"


def test_a_real_phone_heic_named_jpg_renders(tmp_path):
    """The shared corpus's HEIF impostor (exif-samples' samplefilehub.heif renamed .jpg): with
    the heif extra, content decides, and it renders."""
    src = CORPUS / "bad" / "exifsamples_samplefilehub_heif.jpg"
    if not src.exists():
        pytest.skip(f"shared corpus not found at {CORPUS}")
    (thumb,) = run(src, tmp_path / "out", size(width=64, height=64))
    assert max(thumb.size) == 64 and thumb.mode == "RGB"


def test_a_jpeg_named_heic_is_rendered_as_what_it_is(tmp_path):
    src = tmp_path / "p.heic"
    cornered_image(200, 100, CORNERS).save(src, "JPEG", quality=92)
    (thumb,) = run(src, tmp_path / "out")
    assert_corners(thumb)


def test_the_daemon_renders_heic_in_its_workers_and_fails_a_truncated_one_once(project, start_daemon, tmp_path):
    """End to end: pillow-heif is imported in a worker, never in the master; a good, turned HEIC
    gets an upright thumbnail, a truncated one one `failed` line with a reason, and work goes on."""
    edit_config(project, "  create: true\n", '  create: true\n  patterns: ["*.jpg", "*.heic"]\n')
    daemon = start_daemon()
    daemon.wait_ready()
    outside = tmp_path / "phone"
    outside.mkdir()
    good = heic(outside / "IMG_0001.HEIC", stored_test_image(240, 160, 6), orientation=6)
    data = heic(outside / "x.heic", stored_test_image(240, 160, 1)).read_bytes()
    (outside / "IMG_0002.heic").write_bytes(data[: len(data) // 2])
    for name in ("IMG_0001.HEIC", "IMG_0002.heic"):
        os.rename(outside / name, project / "photos" / name)
    path = thumb(project, "IMG_0001.HEIC.jpg")
    wait_for(path.exists, 20, message=f"thumbnail {path}")
    with Image.open(path) as im:
        assert im.size == (64, 43)
        assert_corners(im.convert("RGB"), 6)
    line = daemon.wait_log(r"failed \S*IMG_0002\.heic")[0]
    assert "truncated HEIF" in line and "Traceback" not in daemon.text(), line
    with open(f"/proc/{daemon.proc.pid}/maps") as maps:
        assert "pillow_heif" not in maps.read()  # the master never loaded the decoder
    assert good.exists() is False and len(daemon.matching(r"failed \S*IMG_0002")) == 1


# --- AVIF ---------------------------------------------------------------------------------


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF plugin")
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_avif_through_pillows_plugin_is_turned_upright_once(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    src = tmp_path / "p.avif"
    stored_test_image(240, 160, orientation).save(src, "AVIF", quality=90, exif=exif.tobytes())
    assert formats.format_for(str(src), "avif").decoder() is formats.PILLOW_AVIF
    (thumb,) = run(src, tmp_path / "out", size(width=120, height=120))
    assert thumb.size == (120, 80)
    assert_corners(thumb, orientation)


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF plugin")
def test_avif_nclx_display_p3_is_converted_to_srgb(tmp_path):
    src = tmp_path / "p.avif"
    Image.new("RGB", (64, 48), (200, 100, 100)).save(src, "AVIF", quality=100, subsampling="4:4:4")
    (thumb,) = run(src, tmp_path / "a", size(width=32, height=32, format="png"))
    assert near(thumb.getpixel((10, 10)), (200, 100, 100), 3), thumb.getpixel((10, 10))  # BT.709 primaries: as it is
    data = bytearray(src.read_bytes())
    at = data.index(b"colrnclx")
    assert data[at + 8 : at + 10] == b"\x00\x01"
    data[at + 8 : at + 10] = (12).to_bytes(2, "big")  # the same pixels, described as Display P3
    src.write_bytes(bytes(data))
    (thumb,) = run(src, tmp_path / "b", size(width=32, height=32, format="png"))
    assert near(thumb.getpixel((10, 10)), (215, 93, 97), 4), thumb.getpixel((10, 10))


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF plugin")
def test_truncated_avif_is_explained(tmp_path):
    src = tmp_path / "p.avif"
    stored_test_image(400, 300, 1).save(src, "AVIF", quality=90)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    reason = fails(src, tmp_path)
    assert reason.startswith(("truncated AVIF", "corrupt AVIF", "unreadable AVIF")) and "Error" not in reason, reason


def test_shown_corner_reads_the_spec():
    """The oracle's own spot checks: orientation 6 is a camera turned clockwise, so what it
    stored top-left is seen top-right; 8 the other way; 3 upside down."""
    assert shown_corner(6, "tl") == "tr" and shown_corner(8, "tl") == "bl" and shown_corner(3, "tl") == "br"
    assert shown_corner(2, "tl") == "tr" and shown_corner(5, "tr") == "bl"

