"""Camera RAW through rawpy (LibRaw): the camera's embedded JPEG preview as the fast path, the
RAW's own orientation applied once, a half-size demosaic when no preview will do, bad files
explained.

Every DNG is written by the test (tests/mediagen.py: a TIFF with a CFA image and a JPEG preview
in a SubIFD or IFD0, as cameras and Adobe's converter write them), with a flat CFA colour and a
preview of another colour, so a thumbnail shows which of the two it was made from.
Orientation is judged by four distinct corner colours against the Exif spec's words
(helpers.EXIF_SIDES). Real camera files from ../shared/corpus-raw run when that folder exists.
"""

from __future__ import annotations

import os

import pytest
from PIL import Image, ImageStat

from helpers import CORNERS, REPO, corner_colour, edit_config, library_missing, near, stored_test_image, thumb, wait_for
from mediagen import dng, preview_jpeg, textured
from rendering import fails, mean, size
from rendering import run_rgb as run
from watcher.config import parse
from watcher.paths import PathRules
from watcher.render import RenderSettings, formats, render

rawpy = pytest.importorskip("rawpy", reason="the raw extra (rawpy) is not installed: pip install -e '.[test]'")

MAX_PIXELS = 200_000_000
CORPUS_RAW = REPO.parent / "shared" / "corpus-raw"
RED, GREEN, BLUE = (200, 30, 30), (30, 170, 40), (40, 50, 200)










def dominant(im: Image.Image) -> str:
    r, g, b = mean(im)
    return max((("red", r), ("green", g), ("blue", b)), key=lambda kv: kv[1])[0]


def test_the_embedded_preview_stands_in_for_the_sensor_image(tmp_path):
    src = dng(tmp_path / "IMG_0001.DNG", RED, size=(320, 240), preview=textured((320, 240), GREEN))
    (thumb,) = run(src, tmp_path / "out")
    assert thumb.size == (100, 75)
    assert near(mean(thumb), GREEN, 25), mean(thumb)  # the preview's colour, not the CFA's


def test_a_preview_in_ifd0_is_found_too(tmp_path):
    src = dng(tmp_path / "a.dng", RED, size=(320, 240), preview=textured((320, 240), BLUE), preview_in_ifd0=True)
    (thumb,) = run(src, tmp_path / "out")
    assert near(mean(thumb), BLUE, 25), mean(thumb)


def test_the_largest_preview_is_the_one_used(tmp_path):
    """Adobe's converter writes a 256 px thumbnail in IFD0 and the large preview in a SubIFD:
    the large one is used, even where the small one would cover the box."""
    src = dng(tmp_path / "two.dng", RED, size=(1024, 768), preview=textured((1024, 768), GREEN),
              small_preview=textured((256, 192), BLUE))
    (thumb,) = run(src, tmp_path / "out")
    assert near(mean(thumb), GREEN, 25), mean(thumb)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_raws_orientation_is_applied_once_whatever_the_previews_exif_says(tmp_path, orientation):
    """The preview is stored as the sensor is; the RAW's Orientation tag (LibRaw's flip) turns
    it. The preview's own EXIF says the same orientation: applying both would turn it twice."""
    stored = stored_test_image(320, 240, orientation)
    src = dng(tmp_path / "r.dng", (128, 128, 128), size=stored.size, orientation=orientation,
              preview=preview_jpeg(stored, orientation=orientation))
    source = formats.open_photo(open(src, "rb"), "tiff", str(src), None)
    try:
        assert source.orientation == orientation  # LibRaw's flip, read back as EXIF's number
    finally:
        source.close()
    (thumb,) = run(src, tmp_path / "out")
    assert thumb.size == (100, 75)
    for corner, colour in CORNERS.items():
        assert near(corner_colour(thumb, corner), colour), (orientation, corner, corner_colour(thumb, corner))


def test_a_preview_without_exif_is_turned_by_the_raws_orientation(tmp_path):
    stored = stored_test_image(240, 180, 6)
    src = dng(tmp_path / "r.dng", (128, 128, 128), size=stored.size, orientation=6, preview=preview_jpeg(stored))
    (thumb,) = run(src, tmp_path / "out")
    assert thumb.size == (100, 75)
    for corner, colour in CORNERS.items():
        assert near(corner_colour(thumb, corner), colour), (corner, corner_colour(thumb, corner))


def test_the_preview_is_decoded_dct_scaled_as_a_jpeg_preview_is(tmp_path):
    src = dng(tmp_path / "big.dng", RED, size=(64, 48), preview=textured((1600, 1200), GREEN))
    with open(src, "rb") as f:
        source = formats.open_photo(f, "tiff", str(src), None)
        try:
            im, box = source.decode((100, 75), True)
            assert im.size == (200, 150)  # libjpeg's 1/8 scale: the smallest that covers 100x75
            assert near(mean(im), GREEN, 25)
        finally:
            source.close()


def test_the_preview_is_used_with_embedded_preview_off_too(tmp_path):
    src = dng(tmp_path / "a.dng", RED, size=(320, 240), preview=textured((320, 240), GREEN))
    (thumb,) = run(src, tmp_path / "out", embedded_preview=False)
    assert near(mean(thumb), GREEN, 25), mean(thumb)


def test_sizes_cascade_from_one_preview_decode(tmp_path):
    src = dng(tmp_path / "a.dng", RED, size=(1200, 900), preview=textured((1200, 900), BLUE))
    big, small = run(src, tmp_path / "out", size("big", 400, 400), size("small", 64, 64))
    assert big.size == (400, 300) and small.size == (64, 48)
    assert near(mean(big), BLUE, 25) and near(mean(small), BLUE, 25)


def test_a_raw_without_a_preview_is_demosaiced_at_half_size(tmp_path):
    src = dng(tmp_path / "nopreview.dng", RED, size=(320, 240))
    with open(src, "rb") as f:
        source = formats.open_photo(f, "tiff", str(src), None)
        try:
            im, _box = source.decode((100, 75), True)
            assert im.size == (160, 120)  # half size: each 2x2 block of the mosaic one pixel
        finally:
            source.close()
    (thumb,) = run(src, tmp_path / "out")
    assert thumb.size == (100, 75) and dominant(thumb) == "red", mean(thumb)


def test_a_lossless_jpeg_compressed_mosaic_is_demosaiced_too(tmp_path):
    """Most cameras compress the mosaic (lossless JPEG in DNG, CR2); LibRaw unpacks it."""
    src = dng(tmp_path / "lj.dng", GREEN, size=(320, 240), compressed=True)
    assert b"\xff\xc3" in src.read_bytes()  # a lossless JPEG frame header is in the file
    (thumb,) = run(src, tmp_path / "out")
    assert dominant(thumb) == "green", mean(thumb)


@pytest.mark.parametrize("why, preview", [
    ("too small", textured((64, 48), GREEN)),
    ("another aspect ratio", textured((320, 180), GREEN)),
    ("letterboxed", None),
])
def test_a_preview_that_cannot_stand_in_gives_way_to_the_demosaic(tmp_path, why, preview):
    if preview is None:
        preview = textured((320, 240), GREEN)
        preview.paste((0, 0, 0), (0, 0, 320, 30))
        preview.paste((0, 0, 0), (0, 210, 320, 240))
    src = dng(tmp_path / "p.dng", BLUE, size=(320, 240), preview=preview)
    (thumb,) = run(src, tmp_path / "out")
    assert dominant(thumb) == "blue", (why, mean(thumb))  # the CFA's colour: demosaiced


def spoilt(im: Image.Image) -> bytes:
    """A JPEG cut off half-way through its image data (headers intact), as a card error leaves it."""
    data = preview_jpeg(im)
    sos = data.index(b"\xff\xda")
    return data[: (sos + len(data)) // 2]


def test_a_corrupt_preview_gives_way_to_the_demosaic(tmp_path):
    src = dng(tmp_path / "c.dng", BLUE, size=(320, 240), preview=spoilt(textured((320, 240), GREEN)))
    (thumb,) = run(src, tmp_path / "out")
    assert dominant(thumb) == "blue", mean(thumb)


def test_a_corrupt_preview_and_cut_raw_data_fail_with_both_reasons(tmp_path):
    src = dng(tmp_path / "c.dng", BLUE, size=(320, 240), preview=spoilt(textured((320, 240), GREEN)), cut_raw=True)
    reason = fails(src, tmp_path)
    assert reason.startswith("no embedded preview (320x240 JPEG: ") and "and the raw data does not decode (" in reason, reason


def test_no_preview_and_cut_raw_data_fail_with_a_reason(tmp_path):
    src = dng(tmp_path / "c.dng", BLUE, size=(320, 240), cut_raw=True)
    assert fails(src, tmp_path).startswith("no embedded preview (none in the file) and the raw data does not decode ("), fails(src, tmp_path)


def test_a_text_file_named_dng_is_not_an_image(tmp_path):
    src = tmp_path / "notes.dng"
    src.write_text("shopping list: milk, film\n")
    assert fails(src, tmp_path) == "not an image (looks like text)"


def test_a_jpeg_named_cr2_is_refused_by_libraw_with_a_reason(tmp_path):
    src = tmp_path / "IMG_2.CR2"
    src.write_bytes(preview_jpeg(textured((64, 48), RED)))
    reason = fails(src, tmp_path)
    assert reason.startswith("not a camera RAW that LibRaw can read") and "jpeg" in reason, reason


def test_garbage_named_nef_is_refused_with_a_reason(tmp_path):
    src = tmp_path / "DSC_1.NEF"
    src.write_bytes(bytes(range(256)) * 64)
    assert fails(src, tmp_path).startswith("not a camera RAW that LibRaw can read"), fails(src, tmp_path)


def test_raw_and_jpeg_of_one_shot_get_two_thumbnails_that_never_share_a_name(tmp_path):
    """IMG_1.CR2 and IMG_1.JPG: the JPEG keeps its name, the RAW's gets .jpg appended (paths'
    distinct-names rule), and each thumbnail shows its own photo."""
    (tmp_path / "photos").mkdir()
    rules = PathRules(parse({"watch": {"paths": ["photos"], "patterns": ["*.jpg", "*.cr2", "*.dng"]}},
                            file=tmp_path / "c.yaml", base_dir=tmp_path))
    photos = tmp_path / "photos"
    raw = dng(photos / "IMG_1.CR2", RED, size=(320, 240), preview=textured((320, 240), GREEN))
    textured((320, 240), BLUE).save(photos / "IMG_1.JPG", quality=90)
    [raw_target] = rules.targets(str(raw))
    [jpeg_target] = rules.targets(str(photos / "IMG_1.JPG"))
    assert raw_target.path != jpeg_target.path
    assert raw_target.path.endswith("IMG_1.CR2.jpg") and jpeg_target.path.endswith("IMG_1.JPG")
    for src, target in ((raw, raw_target), (photos / "IMG_1.JPG", jpeg_target)):
        render(str(src), [target], RenderSettings(rules.config.output, MAX_PIXELS))
    with Image.open(raw_target.path) as a, Image.open(jpeg_target.path) as b:
        assert near(mean(a.convert("RGB")), GREEN, 25) and near(mean(b.convert("RGB")), BLUE, 25)


def test_the_raw_extensions_are_served_by_rawpy():
    for ext in (".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw"):
        fmt = formats.format_for(f"x{ext.upper()}", "tiff")
        assert fmt.name == "camera RAW" and fmt.decoder() is formats.RAW, ext
    assert "camera RAW by rawpy (LibRaw)" in formats.serving("*.cr2")
    with library_missing("rawpy"), pytest.raises(formats.UnservedPattern) as err:
        formats.check_patterns(["*.jpg", "*.CR2"])
    assert str(err.value) == "'*.CR2': camera RAW needs rawpy (LibRaw): pip install 'thumbwatch[raw]'"


@pytest.mark.skipif(not CORPUS_RAW.is_dir(), reason=f"no real camera files: {CORPUS_RAW} is absent")
def test_real_camera_files_render_upright_from_their_previews(tmp_path):
    files = sorted(p for p in CORPUS_RAW.rglob("*") if p.suffix.lower() in formats.RAW_EXTS)
    assert files, f"{CORPUS_RAW} holds no RAW files"
    for src in files:
        with rawpy.imread(str(src)) as raw:
            sizes = raw.sizes
        (thumb,) = run(src, tmp_path / src.name, size(width=256, height=256))
        upright = (sizes.height, sizes.width) if sizes.flip in (5, 6) else (sizes.width, sizes.height)
        assert (thumb.width >= thumb.height) == (upright[0] >= upright[1]), (src, thumb.size, sizes)
        assert ImageStat.Stat(thumb.convert("L")).stddev[0] > 5, src  # a picture, not a flat fill


def test_the_daemon_thumbnails_a_raw_and_jpeg_pair_in_its_workers(project, start_daemon, tmp_path):
    """End to end: IMG_1.CR2 and IMG_1.JPG moved in together get a thumbnail each, each of its
    own picture; a RAW with nothing decodable fails once with its reason; LibRaw is loaded in a
    worker, never in the master."""
    edit_config(project, "  create: true\n", '  create: true\n  patterns: ["*.jpg", "*.cr2", "*.dng"]\n')
    daemon = start_daemon()
    daemon.wait_ready()
    card = tmp_path / "card"
    card.mkdir()
    dng(card / "IMG_1.CR2", RED, size=(320, 240), orientation=6, preview=textured((320, 240), GREEN))
    textured((320, 240), BLUE).save(card / "IMG_1.JPG", quality=90)
    dng(card / "IMG_2.DNG", RED, size=(320, 240), cut_raw=True)
    for name in ("IMG_1.CR2", "IMG_1.JPG", "IMG_2.DNG"):
        os.rename(card / name, project / "photos" / name)
    raw_thumb, jpeg_thumb = thumb(project, "IMG_1.CR2.jpg"), thumb(project, "IMG_1.JPG")
    wait_for(lambda: raw_thumb.exists() and jpeg_thumb.exists(), 20, message="both thumbnails")
    with Image.open(raw_thumb) as a, Image.open(jpeg_thumb) as b:
        assert a.size == (48, 64) and near(mean(a.convert("RGB")), GREEN, 25)  # turned by the RAW's orientation
        assert b.size == (64, 48) and near(mean(b.convert("RGB")), BLUE, 25)
    line = daemon.wait_log(r"failed \S*IMG_2\.DNG")[0]
    assert "no embedded preview (none in the file) and the raw data does not decode (Input/output error: unexpected end of file)" in line, line
    assert not daemon.matching("Unexpected end of file"), daemon.text()  # LibRaw's own stderr line is in the reason, not beside it
    assert "Traceback" not in daemon.text()
    with open(f"/proc/{daemon.proc.pid}/maps") as maps:
        assert "rawpy" not in maps.read()  # the master never loaded LibRaw
