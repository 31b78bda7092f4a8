"""Embedded previews (output.embedded_preview): used when they can stand in for the photo, and
the full image otherwise.

Generated JPEGs carry a 160×120 EXIF thumbnail and a 1600 px MPF preview, as cameras write them.
Where a test must prove which picture a thumbnail came from, the preview carries a marker the
photo does not (a green centre); honest previews are the photo itself, scaled down.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from helpers import corner_colour, is_blue, is_red
from imagegen import jpeg_bytes, jpeg_with_previews
from watcher.config import ConfigError, OutputConfig, SizeSpec, load
from watcher.paths import Target
from watcher.render.preview import find
from watcher.render import RenderSettings, render

W, H = 2400, 1800
GREEN = (0, 200, 0)


def scene(width: int = W, height: int = H) -> Image.Image:
    """A smooth picture (soft blobs, as a photo's broad areas) with a red top-left corner and a
    blue bottom-right one, so orientation shows."""
    bands = [Image.effect_noise((max(1, width // 200), max(1, height // 200)), 50).resize((width, height), Image.Resampling.BICUBIC)
             for _ in range(3)]
    im = Image.merge("RGB", bands)
    cw, ch = width // 5, height // 5
    im.paste((230, 20, 20), (0, 0, cw, ch))
    im.paste((20, 20, 230), (width - cw, height - ch, width, height))
    return im


def marked(im: Image.Image) -> Image.Image:
    """The picture with a green centre: a thumbnail showing it came from this preview."""
    im = im.copy()
    w, h = im.size
    im.paste(GREEN, (w * 3 // 8, h * 3 // 8, w * 5 // 8, h * 5 // 8))
    return im


def small(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    return im.resize(size, Image.Resampling.LANCZOS)


def thumbnail(src: Path, out: Path, box: int, *, embedded: bool) -> Image.Image:
    spec = SizeSpec("s", box, box)
    target = out / f"{src.stem}-{box}-{'preview' if embedded else 'full'}.jpg"
    render(str(src), [Target(spec, str(target))], RenderSettings(OutputConfig(sizes=(spec,), embedded_preview=embedded), 200_000_000))
    with Image.open(target) as im:
        return im.convert("RGB")


def mad(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def green_centre(im: Image.Image) -> bool:
    r, g, b = im.getpixel((im.width // 2, im.height // 2))
    return g > 150 and r < 80 and b < 80


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    return scene()


def test_previews_are_found_from_the_headers(tmp_path, picture):
    src = jpeg_with_previews(tmp_path / "p.jpg", picture, exif_thumbnail=small(picture, (160, 120)),
                             mpf_preview=small(picture, (1600, 1200)))
    with open(src, "rb") as f:
        found = sorted((c.source, c.width, c.height) for c in find(f))
    assert found == [("exif", 160, 120), ("mpf", 1600, 1200)]


@pytest.mark.parametrize("box, which", [(75, "exif"), (128, "exif"), (200, "mpf"), (256, "mpf")])
def test_the_smallest_preview_that_covers_the_box_is_used(tmp_path, picture, box, which):
    exif = marked(small(picture, (160, 120))) if which == "exif" else small(picture, (160, 120))
    mpf = marked(small(picture, (1600, 1200))) if which == "mpf" else small(picture, (1600, 1200))
    src = jpeg_with_previews(tmp_path / "p.jpg", picture, exif_thumbnail=exif, mpf_preview=mpf)
    assert green_centre(thumbnail(src, tmp_path, box, embedded=True))
    assert not green_centre(thumbnail(src, tmp_path, box, embedded=False))  # off by default: the photo


@pytest.mark.parametrize("orientation", [1, 6, 8])
@pytest.mark.parametrize("box", [75, 256])
def test_honest_previews_match_the_full_render(tmp_path, picture, orientation, box):
    src = jpeg_with_previews(tmp_path / "p.jpg", picture, orientation=orientation,
                             exif_thumbnail=small(picture, (160, 120)), mpf_preview=small(picture, (1600, 1200)))
    full = thumbnail(src, tmp_path, box, embedded=False)
    quick = thumbnail(src, tmp_path, box, embedded=True)
    assert quick.size == full.size == ((box, box * 3 // 4) if orientation == 1 else (box * 3 // 4, box))
    assert mad(quick, full) <= 3
    # an oracle the code didn't write: where the stored top-left (red) corner must end up
    red_corner = {1: "tl", 6: "tr", 8: "bl"}[orientation]
    blue_corner = {1: "br", 6: "bl", 8: "tr"}[orientation]
    assert is_red(corner_colour(quick, red_corner)) and is_blue(corner_colour(quick, blue_corner))


def _letterboxed(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The picture squeezed into `size` between black bars (same outer aspect, wrong content)."""
    w, h = size
    inner = small(im, (w, h * 3 // 4))
    canvas = Image.new("RGB", size, (0, 0, 0))
    canvas.paste(inner, (0, (h - inner.height) // 2))
    return canvas


def _cases(picture: Image.Image) -> dict[str, dict]:
    thumb, preview = small(picture, (160, 120)), small(picture, (1600, 1200))
    return {
        # a 3:2 preview of a 4:3 photo (a cropped edit with a stale preview, or bars cropped away)
        "wrong aspect": {"mpf_preview": marked(small(picture, (1600, 1066))), "exif_thumbnail": thumb},
        "letterbox bars": {"mpf_preview": marked(_letterboxed(picture, (1600, 1200))), "exif_thumbnail": thumb},
        "pillarbox bars": {"mpf_preview": marked(_letterboxed(picture.transpose(Image.Transpose.ROTATE_90), (1200, 1600))
                                                 .transpose(Image.Transpose.ROTATE_270)), "exif_thumbnail": thumb},
        "truncated": {"mpf_preview": jpeg_bytes(marked(preview))[:60_000], "exif_thumbnail": thumb},
        "corrupt data": {"mpf_preview": _scrambled(jpeg_bytes(marked(preview))), "exif_thumbnail": thumb},
        "too small": {"exif_thumbnail": marked(thumb), "mpf_preview": marked(small(picture, (240, 180)))},
        "grayscale preview of a colour photo": {"mpf_preview": marked(preview).convert("L"), "exif_thumbnail": thumb},
    }


def _scrambled(data: bytes) -> bytes:
    """Headers intact, entropy-coded data replaced by bytes that are not valid Huffman codes."""
    sos = data.index(b"\xff\xda")
    return data[: sos + 200] + b"\xff\x00" * ((len(data) - sos - 202) // 2) + b"\xff\xd9"


@pytest.mark.parametrize("case", ["wrong aspect", "letterbox bars", "pillarbox bars", "truncated", "corrupt data",
                                  "too small", "grayscale preview of a colour photo"])
def test_unfit_previews_fall_back_to_the_full_image(tmp_path, picture, case):
    src = jpeg_with_previews(tmp_path / "p.jpg", picture, **_cases(picture)[case])
    quick = thumbnail(src, tmp_path, 256, embedded=True)
    full = thumbnail(src, tmp_path, 256, embedded=False)
    assert not green_centre(quick)
    assert mad(quick, full) == 0  # the very same render: the photo itself


@pytest.mark.parametrize("mp_type", [0x020002, 0x000000], ids=["stereo second view", "undeclared (a gain map)"])
def test_mpf_images_that_are_not_previews_are_never_used(tmp_path, picture, mp_type):
    """An MPO's second view of a stereo pair is another picture, and phones store HDR gain maps
    as MPF images of no declared type: only MP Type 'large thumbnail' entries are previews."""
    src = jpeg_with_previews(tmp_path / "p.jpg", picture, exif_thumbnail=small(picture, (160, 120)),
                             mpf_preview=marked(small(picture, (1600, 1200))), mp_type=mp_type)
    with open(src, "rb") as f:
        assert [c.source for c in find(f)] == ["exif"]
    quick = thumbnail(src, tmp_path, 256, embedded=True)
    assert not green_centre(quick)
    assert mad(quick, thumbnail(src, tmp_path, 256, embedded=False)) == 0


def test_a_photo_without_previews_renders_as_before(tmp_path, picture):
    src = jpeg_with_previews(tmp_path / "p.jpg", picture)
    assert mad(thumbnail(src, tmp_path, 75, embedded=True), thumbnail(src, tmp_path, 75, embedded=False)) == 0


def test_broken_preview_headers_fall_back(tmp_path, picture):
    """An MPF index pointing past the end of the file: the photo, no error."""
    src = jpeg_with_previews(tmp_path / "p.jpg", picture, mpf_preview=marked(small(picture, (1600, 1200))))
    data = bytearray(src.read_bytes())
    src.write_bytes(bytes(data[: len(data) - 5000]))  # the preview is cut; the index still points at it
    quick = thumbnail(src, tmp_path, 256, embedded=True)
    assert not green_centre(quick)


def test_config_key(tmp_path):
    (tmp_path / "photos").mkdir()
    path = tmp_path / "c.yaml"
    path.write_text("watch: {paths: [photos]}\n")
    assert load(path, base_dir=tmp_path).output.embedded_preview is False
    path.write_text("watch: {paths: [photos]}\noutput: {embedded_preview: true}\n")
    assert load(path, base_dir=tmp_path).output.embedded_preview is True
    path.write_text("watch: {paths: [photos]}\noutput: {embedded_preview: sometimes}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: output\.embedded_preview: "):
        load(path, base_dir=tmp_path)
