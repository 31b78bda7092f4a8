"""render(): sizes and modes, formats, orientation, colour, metadata, bad input, atomic output.

Real Pillow on generated images; every output is opened again and checked.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat, JpegImagePlugin

from helpers import CORNERS, corner_colour, cornered_image, is_blue, is_red, library_missing, make_jpeg, near, shown_corner, temp_files
from imagegen import alpha_png, camera_like, cmyk_jpeg, gps_exif, swapped_primaries_profile
from watcher.config import OutputConfig, SizeSpec
from watcher.paths import Target
from watcher.render import OutputError, PhotoVanished, RenderError, RenderSettings, render


def size(name: str = "s", width: int | None = 100, height: int | None = 100, **kw) -> SizeSpec:
    return SizeSpec(name=name, width=width, height=height, **kw)


def run(src: Path, out: Path, *sizes: SizeSpec, max_pixels: int = 200_000_000, **output) -> list[Image.Image]:
    """Render `src` to one file per size under `out`; return the outputs, opened and loaded."""
    sizes = sizes or (size(),)
    ext = {"jpeg": "jpg", "webp": "webp", "png": "png"}
    targets = [Target(s, str(out / f"{s.name}.{ext[s.format]}")) for s in sizes]
    result = render(str(src), targets, RenderSettings(OutputConfig(sizes=tuple(sizes), **output), max_pixels))
    assert [o[0] for o in result.outputs] == [t.path for t in targets]
    images = []
    for path, w, h in result.outputs:
        im = Image.open(path)
        im.load()
        assert im.size == (w, h)
        images.append(im)
    return images


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


# --- sizes and modes -------------------------------------------------------------------


def test_fit_keeps_aspect_inside_the_box_and_stamps_the_photo_mtime(tmp_path):
    src = make_jpeg(tmp_path / "p.jpg", 400, 300)
    os.utime(src, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    (thumb,) = run(src, tmp_path / "out", size(width=100, height=100))
    assert thumb.size == (100, 75) and thumb.mode == "RGB" and thumb.format == "JPEG"
    assert is_red(corner_colour(thumb, "tl")) and is_blue(corner_colour(thumb, "br"))
    assert os.stat(tmp_path / "out" / "s.jpg").st_mtime_ns == 1_600_000_000_123_456_789
    assert temp_files(tmp_path / "out") == []


def test_fill_covers_the_box_and_crops_the_centre(tmp_path):
    src = make_jpeg(tmp_path / "p.jpg", 400, 300)
    square, wide = run(src, tmp_path / "out", size("a", 100, 100, mode="fill"), size("b", 120, 30, mode="fill"))
    assert square.size == (100, 100) and wide.size == (120, 30)
    # the crop is centred: 400x300 scaled to 133x100, 16 columns cut off on each side
    assert is_red(corner_colour(square, "tl")) and is_blue(corner_colour(square, "br"))
    assert corner_colour(wide, "tl") == pytest.approx((128, 128, 128), abs=12)  # red corner cropped away


@pytest.mark.parametrize("mode, box, expected", [("width", (200, None), (200, 150)), ("height", (None, 60), (80, 60))])
def test_width_or_height_only(tmp_path, mode, box, expected):
    src = make_jpeg(tmp_path / "p.jpg", 400, 300)
    (thumb,) = run(src, tmp_path / "out", size(width=box[0], height=box[1], mode=mode))
    assert thumb.size == expected


def test_never_upscales_unless_asked(tmp_path):
    src = make_jpeg(tmp_path / "p.jpg", 400, 300)
    fit, fill, width, up = run(
        src, tmp_path / "out",
        size("fit", 1000, 1000), size("fill", 500, 100, mode="fill"), size("w", 800, None, mode="width"),
        size("up", 1000, 1000, upscale=True),
    )
    assert fit.size == (400, 300)
    assert fill.size == (400, 100)  # cropped to the box's height, not enlarged
    assert width.size == (400, 300)
    assert up.size == (1000, 750)


def test_several_sizes_come_out_of_one_decode_and_match_a_single_render(tmp_path):
    src = tmp_path / "p.jpg"
    camera_like(1600, 1200).save(src, quality=90)
    png = dict(format="png")  # lossless, so only the resampling differs
    big, mid, small = run(src, tmp_path / "three", size("l", 1024, 1024, **png), size("m", 512, 512, **png), size("s", 256, 256, **png))
    assert (big.size, mid.size, small.size) == ((1024, 768), (512, 384), (256, 192))
    (alone,) = run(src, tmp_path / "one", size("s", 256, 256, **png))
    assert mean_diff(small, alone) < 2.0
    with Image.open(src) as im:
        reference = im.resize((256, 192), Image.Resampling.LANCZOS)
    assert mean_diff(small, reference) < 2.5


def test_dct_scaled_decode_stays_close_to_a_full_lanczos_resample(tmp_path):
    src = tmp_path / "p.jpg"
    camera_like(2400, 1800).save(src, quality=92)
    (thumb,) = run(src, tmp_path / "out", size(width=256, height=256, format="png"))  # lossless: only resampling differs
    with Image.open(src) as im:
        reference = im.resize((256, 192), Image.Resampling.LANCZOS)
    assert thumb.size == (256, 192)
    assert mean_diff(thumb, reference) < 2.5  # measured 1.5; Pillow's own thumbnail() gives 0.65
    assert ImageStat.Stat(thumb).stddev[0] > 0.97 * ImageStat.Stat(reference).stddev[0]  # not blurred


def test_detail_finer_than_every_size_averages_out_instead_of_aliasing(tmp_path):
    # a grating of period 3.3 px on a 12 MP photo is beyond the resolution of all three sizes:
    # each must come out flat grey, not as moiré bands (measured stddev 0.3-4.2; a box or
    # Hamming resample for the 1024 size gives 14+)
    width, height = 4000, 3000
    row = bytes(int(127.5 + 127.5 * math.cos(2 * math.pi * x / 3.3)) for x in range(width))
    src = tmp_path / "grating.jpg"
    Image.frombytes("L", (width, 1), row).resize((width, height), Image.Resampling.NEAREST).save(src, quality=95)
    png = dict(format="png")
    outputs = run(src, tmp_path / "out", size("l", 1024, 1024, **png), size("m", 512, 512, **png), size("s", 256, 256, **png))
    for thumb in outputs:
        stat_ = ImageStat.Stat(thumb)
        assert stat_.mean[0] == pytest.approx(127.5, abs=6), thumb.size
        assert stat_.stddev[0] < 6, (thumb.size, stat_.stddev[0])


# --- orientation -----------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_upright(tmp_path, orientation):
    src = make_jpeg(tmp_path / "p.jpg", 400, 300, orientation=orientation)
    # the largest size is turned upright; the others are cascaded from it, one cropped
    thumbs = run(src, tmp_path / "out", size("l", 200, 200), size("m", 100, 100), size("fill", 60, 60, mode="fill"))
    assert [t.size for t in thumbs] == [(200, 150), (100, 75), (60, 60)]
    for thumb in thumbs:
        assert is_red(corner_colour(thumb, "tl")), (thumb.size, corner_colour(thumb, "tl"))
        assert is_blue(corner_colour(thumb, "br")), (thumb.size, corner_colour(thumb, "br"))
        assert thumb.getexif().get(0x0112) in (None, 1)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_stored_corner_is_shown_where_the_spec_puts_it(tmp_path, orientation):
    """The oracle is the Exif spec's sentence for each orientation (helpers.EXIF_SIDES), applied
    to pixels: a photo stored with four distinct corner colours comes out with each colour in
    the corner where the spec says it is seen."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    src = tmp_path / "p.jpg"
    cornered_image(300, 200, CORNERS).save(src, "JPEG", quality=95, exif=exif.tobytes())  # as the camera stored it
    thumbs = run(src, tmp_path / "out", size("l", 150, 150), size("m", 60, 60), size("fill", 40, 40, mode="fill"))
    assert thumbs[0].size == ((100, 150) if orientation >= 5 else (150, 100))
    for thumb in thumbs:
        for stored, colour in CORNERS.items():
            shown = shown_corner(orientation, stored)
            assert near(corner_colour(thumb, shown), colour), (thumb.size, stored, shown, corner_colour(thumb, shown))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_orientation_oracle_agrees_with_pillows_exif_transpose(tmp_path, orientation):
    """A second, independent reading of the spec checks the oracle itself (and make_jpeg's
    stored pixels): Pillow's exif_transpose shows the red corner top-left, blue bottom-right."""
    from PIL import ImageOps

    with Image.open(make_jpeg(tmp_path / "p.jpg", 200, 100, orientation=orientation)) as im:
        upright = ImageOps.exif_transpose(im)
    assert upright.size == (200, 100)
    for corner, colour in CORNERS.items():
        assert near(corner_colour(upright, corner), colour), (corner, corner_colour(upright, corner))


def test_result_reports_the_upright_size(tmp_path):
    src = make_jpeg(tmp_path / "p.jpg", 400, 300, orientation=6)
    result = render(str(src), [Target(size(), str(tmp_path / "t.jpg"))], RenderSettings(OutputConfig(), 10**8))
    assert (result.width, result.height) == (400, 300)
    assert result.outputs == ((str(tmp_path / "t.jpg"), 100, 75),)


# --- formats ---------------------------------------------------------------------------


def test_jpeg_options_progressive_subsampling_and_quality_per_size(tmp_path):
    src = tmp_path / "p.jpg"
    camera_like(800, 600).save(src, quality=95)
    plain, fine, rough = run(
        src, tmp_path / "a", size("plain", 200, 200), size("fine", 200, 200, quality=95), size("rough", 200, 200, quality=20)
    )
    assert not plain.info.get("progressive") and JpegImagePlugin.get_sampling(plain) == 2  # 4:2:0
    assert os.path.getsize(rough.filename) < os.path.getsize(plain.filename) < os.path.getsize(fine.filename)
    (prog,) = run(src, tmp_path / "b", size(), progressive=True, subsampling="4:4:4")
    assert prog.info.get("progressive") and JpegImagePlugin.get_sampling(prog) == 0


@pytest.mark.parametrize("lossless, chunk", [(False, b"VP8 "), (True, b"VP8L")])
def test_webp_lossy_or_lossless(tmp_path, lossless, chunk):
    src = make_jpeg(tmp_path / "p.jpg", 400, 300)
    (thumb,) = run(src, tmp_path / "out", size(format="webp", quality=80), lossless=lossless)
    assert thumb.format == "WEBP" and thumb.size == (100, 75)
    assert Path(thumb.filename).read_bytes()[12:16] == chunk
    assert is_red(corner_colour(thumb, "tl"))


def test_png_output(tmp_path):
    src = make_jpeg(tmp_path / "p.jpg", 400, 300, orientation=8)
    (thumb,) = run(src, tmp_path / "out", size(format="png"))
    assert thumb.format == "PNG" and thumb.mode == "RGB" and thumb.size == (100, 75)
    assert is_red(corner_colour(thumb, "tl"))


def test_alpha_is_flattened_on_the_background_for_jpeg_and_kept_for_png(tmp_path):
    src = alpha_png(tmp_path / "a.png")
    white, png, webp = run(src, tmp_path / "a", size("j", 40, 40), size("p", 40, 40, format="png"), size("w", 40, 40, format="webp"))
    assert white.mode == "RGB" and corner_colour(white, "tl") == pytest.approx((255, 255, 255), abs=8)
    assert is_red(white.getpixel((20, 15)))
    assert png.mode == "RGBA" and png.getpixel((0, 0))[3] == 0 and is_red(png.getpixel((20, 15))[:3])
    assert webp.mode == "RGBA" and webp.getpixel((0, 0))[3] == 0
    (green,) = run(src, tmp_path / "b", size("j", 40, 40), background="#00ff00")
    assert corner_colour(green, "tl") == pytest.approx((0, 255, 0), abs=20)  # JPEG ringing near the red


def test_grayscale_stays_grayscale(tmp_path):
    src = tmp_path / "g.jpg"
    Image.linear_gradient("L").resize((300, 200)).save(src)
    jpeg, png = run(src, tmp_path / "out", size("j"), size("p", format="png"))
    assert jpeg.mode == "L" and png.mode == "L"


def test_other_inputs_png_named_jpg_gif_first_frame_and_16_bit_gray(tmp_path):
    impostor = tmp_path / "really_a_png.jpg"
    make_jpeg(tmp_path / "x.jpg")
    Image.open(tmp_path / "x.jpg").save(impostor, "PNG")
    (thumb,) = run(impostor, tmp_path / "a")
    assert thumb.size == (100, 75) and is_red(corner_colour(thumb, "tl"))

    gif = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (50, 50), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    (first,) = run(gif, tmp_path / "b")
    assert is_red(corner_colour(first, "tl"))

    deep = tmp_path / "deep.png"
    Image.new("I;16", (64, 64), 32768).save(deep)
    (gray,) = run(deep, tmp_path / "c", size(format="png"))
    assert gray.mode == "L" and gray.getpixel((5, 5)) == pytest.approx(128, abs=1)

    tiff = tmp_path / "t.tif"
    Image.open(tmp_path / "x.jpg").save(tiff)
    (from_tiff,) = run(tiff, tmp_path / "d")
    assert is_red(corner_colour(from_tiff, "tl"))


# --- colour ----------------------------------------------------------------------------


@pytest.mark.parametrize("adobe", [True, False], ids=["adobe-inverted", "plain-no-app14"])
def test_cmyk_jpeg_keeps_its_colours(tmp_path, adobe):
    src = cmyk_jpeg(tmp_path / "c.jpg", adobe=adobe)
    with Image.open(src) as im:
        assert im.mode == "CMYK" and ("adobe" in im.info) == adobe
    jpeg, png = run(src, tmp_path / "out", size("j", 64, 64), size("p", 64, 64, format="png"))
    for thumb in (jpeg, png):
        assert thumb.mode == "RGB"
        assert is_red(corner_colour(thumb, "tl")), corner_colour(thumb, "tl")
        assert is_blue(corner_colour(thumb, "br")), corner_colour(thumb, "br")


def tagged_red(path: Path, profile: bytes) -> Path:
    Image.new("RGB", (120, 90), (255, 0, 0)).save(path, quality=95, icc_profile=profile)
    return path


def test_icc_profile_is_applied_then_dropped_by_default(tmp_path):
    src = tagged_red(tmp_path / "p.jpg", swapped_primaries_profile())
    jpeg, png, webp = run(src, tmp_path / "out", size("j"), size("p", format="png"), size("w", format="webp"))
    for thumb in (jpeg, png, webp):
        r, g, b = thumb.convert("RGB").getpixel((10, 10))[:3]
        assert g > 200 and r < 60 and b < 60, (thumb.format, (r, g, b))  # the profile says this red is green
        assert not thumb.info.get("icc_profile")


def test_icc_profile_kept_with_color_keep(tmp_path):
    profile = swapped_primaries_profile()
    src = tagged_red(tmp_path / "p.jpg", profile)
    jpeg, png, webp = run(src, tmp_path / "out", size("j"), size("p", format="png"), size("w", format="webp"), color="keep")
    for thumb in (jpeg, png, webp):
        assert is_red(thumb.convert("RGB").getpixel((10, 10)))
        assert thumb.info.get("icc_profile") == profile


def test_broken_icc_profile_does_not_fail_the_photo(tmp_path):
    src = tagged_red(tmp_path / "p.jpg", b"profile")
    (thumb,) = run(src, tmp_path / "a")
    assert is_red(thumb.getpixel((10, 10))) and not thumb.info.get("icc_profile")
    (kept,) = run(src, tmp_path / "b", color="keep")
    assert is_red(kept.getpixel((10, 10))) and not kept.info.get("icc_profile")  # garbage is not copied


# --- metadata --------------------------------------------------------------------------


def camera_jpeg(path: Path) -> Path:
    """Orientation 6, GPS position, a comment and XMP that repeats the orientation."""
    make_jpeg(path, 400, 300, orientation=6)
    with Image.open(path) as im:
        stored = im.copy()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    stored.save(path, quality=90, exif=gps_exif(6).tobytes(), comment=b"holiday", xmp=xmp)
    return path


def test_metadata_stripped_by_default(tmp_path):
    src = camera_jpeg(tmp_path / "p.jpg")
    jpeg, png, webp = run(src, tmp_path / "out", size("j"), size("p", format="png"), size("w", format="webp"))
    for thumb in (jpeg, png, webp):
        assert len(thumb.getexif()) == 0, thumb.format
        assert "xmp" not in thumb.info and "comment" not in thumb.info
        assert is_red(corner_colour(thumb, "tl"))


def test_exif_no_gps_keeps_exif_without_position_and_resets_orientation(tmp_path):
    src = camera_jpeg(tmp_path / "p.jpg")
    jpeg, webp = run(src, tmp_path / "out", size("j"), size("w", format="webp"), metadata="exif-no-gps")
    for thumb in (jpeg, webp):
        exif = thumb.getexif()
        assert exif.get(0x010F) == "TestCam"
        assert exif.get(0x0112) == 1
        assert 0x8825 not in exif and not exif.get_ifd(0x8825)
        assert "xmp" not in thumb.info
        assert is_red(corner_colour(thumb, "tl"))


def test_all_keeps_gps_xmp_and_comment(tmp_path):
    src = camera_jpeg(tmp_path / "p.jpg")
    jpeg, png, webp = run(src, tmp_path / "out", size("j"), size("p", format="png"), size("w", format="webp"), metadata="all")
    for thumb in (jpeg, png, webp):
        exif = thumb.getexif()
        assert exif.get(0x0112) == 1 and exif.get_ifd(0x8825).get(1) == "N", thumb.format
        xmp = thumb.info["xmp"]
        assert b'tiff:Orientation="1"' in (xmp if isinstance(xmp, bytes) else xmp.encode())
        assert is_red(corner_colour(thumb, "tl"))
    assert jpeg.info.get("comment") == b"holiday"


# --- bad input and failures ------------------------------------------------------------


def fails(src: Path, tmp_path: Path, **kw) -> str:
    with pytest.raises(RenderError) as err:
        run(src, tmp_path / "out", **kw)
    assert type(err.value) is RenderError
    assert temp_files(tmp_path / "out") == [] if (tmp_path / "out").exists() else True
    return str(err.value)


def test_empty_file(tmp_path):
    (tmp_path / "e.jpg").write_bytes(b"")
    assert fails(tmp_path / "e.jpg", tmp_path) == "empty file (0 bytes)"


def test_folder_and_fifo_named_like_photos(tmp_path):
    (tmp_path / "d.jpg").mkdir()
    assert fails(tmp_path / "d.jpg", tmp_path).startswith("not a regular file")
    os.mkfifo(tmp_path / "f.jpg")
    assert fails(tmp_path / "f.jpg", tmp_path) == "not a regular file"  # and it did not hang in open()


def test_vanished_photo(tmp_path):
    with pytest.raises(PhotoVanished):
        run(tmp_path / "gone.jpg", tmp_path / "out")


@pytest.mark.parametrize("photo_moved", [True, False], ids=["photo-folder-renamed", "only-thumbnails-moved"])
def test_a_folder_moved_while_its_thumbnail_is_saved_strands_no_temp_file(tmp_path, monkeypatch, photo_moved):
    """The master moves a thumbnail folder when its photos' folder is renamed; a worker may be
    saving into it at that moment (injected here right after Pillow's save, the widest window)."""
    src = make_jpeg(tmp_path / "trip" / "p.jpg")
    out, moved = tmp_path / "thumbs" / "trip", tmp_path / "thumbs" / "trip-2024"
    real_save = Image.Image.save

    def save_then_move(self, fp, *args, **kw):
        real_save(self, fp, *args, **kw)
        if photo_moved:
            os.rename(tmp_path / "trip", tmp_path / "trip-2024")
        os.rename(out, moved)

    monkeypatch.setattr(Image.Image, "save", save_then_move)
    settings = RenderSettings(OutputConfig(sizes=(size(),)), 200_000_000)
    if photo_moved:
        with pytest.raises(PhotoVanished):  # what was written goes: the master looks at trip-2024/p.jpg again
            render(str(src), [Target(size(), str(out / "s.jpg"))], settings)
        assert os.listdir(moved) == []
    else:
        render(str(src), [Target(size(), str(out / "s.jpg"))], settings)
        assert os.listdir(moved) == ["s.jpg"] and not temp_files(tmp_path)  # landed in the folder, moved
    assert not out.exists()


def test_permission_denied(tmp_path, monkeypatch):
    src = make_jpeg(tmp_path / "p.jpg")
    src.chmod(0)
    if os.access(src, os.R_OK):  # root reads anything: force the error it would get
        import watcher.render.pipeline as render_module

        real_open = os.open

        def deny(path, *args, **kw):
            if str(path) == str(src):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kw)

        monkeypatch.setattr(render_module.os, "open", deny)
    assert fails(src, tmp_path) == "permission denied"


def test_max_pixels_checked_from_the_header(tmp_path):
    src = make_jpeg(tmp_path / "p.jpg", 400, 300)
    assert fails(src, tmp_path, max_pixels=1000) == "image too large: 400×300 exceeds max_pixels (1000)"
    # a few hundred bytes declaring 40000x40000: refused before anything is decoded
    data = bytearray(src.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (40000).to_bytes(2, "big") * 2
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(bytes(data[: sof + 400]))
    assert fails(bomb, tmp_path, max_pixels=100_000_000) == "image too large: 40000×40000 exceeds max_pixels (100000000)"


def test_truncated_and_corrupt_jpeg(tmp_path):
    src = tmp_path / "p.jpg"
    camera_like(600, 400).save(src, quality=90)
    data = src.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    assert fails(cut, tmp_path) == "truncated JPEG"
    head_only = tmp_path / "head.jpg"
    head_only.write_bytes(data[:10])
    assert fails(head_only, tmp_path).startswith("truncated JPEG")


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"<!DOCTYPE html><html><body>404</body></html>", "not an image (looks like HTML)"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "not an image (looks like PDF)"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, "not a JPEG (looks like HEIF; install thumbwatch[heif])"),
        (b"\x00" * 300, "not an image (looks like zero bytes only)"),
    ],
)
def test_impostors_named_jpg_are_explained(tmp_path, content, reason):
    src = tmp_path / "photo.jpg"
    src.write_bytes(content)
    # the HEIF case is what an install without the heif extra says
    with library_missing("pillow_heif") if b"ftypheic" in content else contextlib.nullcontext():
        assert fails(src, tmp_path) == reason


def test_a_broken_heif_named_jpg_is_explained_with_the_heif_extra(tmp_path):
    pytest.importorskip("pillow_heif")
    src = tmp_path / "photo.jpg"
    src.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
    assert fails(src, tmp_path).startswith("corrupt HEIF (")


def test_twelve_bit_jpeg_is_unsupported_not_corrupt(tmp_path):
    src = make_jpeg(tmp_path / "p.jpg", 40, 30)
    data = bytearray(src.read_bytes())
    data[data.index(b"\xff\xc0") + 4] = 12  # frame precision
    (tmp_path / "p12.jpg").write_bytes(bytes(data))
    assert fails(tmp_path / "p12.jpg", tmp_path) == "unsupported JPEG (12-bit precision)"


def test_unwritable_output_is_an_output_error_and_leaves_no_temp(tmp_path):
    src = make_jpeg(tmp_path / "p.jpg")
    (tmp_path / "out").write_text("a file where the folder should be")
    with pytest.raises(OutputError) as err:
        run(src, tmp_path / "out" / "sub")
    assert err.value.errno is not None and "cannot write" in str(err.value)

    folder = tmp_path / "ro"
    folder.mkdir()
    target = Target(size(), str(folder / "t.jpg"))
    os.mkdir(folder / "t.jpg")  # the final name is taken by a folder: the rename fails
    with pytest.raises(OutputError):
        render(str(src), [target], RenderSettings(OutputConfig(), 10**8))
    assert temp_files(folder) == []
    assert stat.S_ISDIR(os.stat(folder / "t.jpg").st_mode)


def test_heif_input_with_pillow_heif(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    src = tmp_path / "p.heic"
    pillow_heif.register_heif_opener()
    make_jpeg(tmp_path / "x.jpg")
    Image.open(tmp_path / "x.jpg").save(src, "HEIF")
    (thumb,) = run(src, tmp_path / "out")
    assert thumb.size == (100, 75) and is_red(corner_colour(thumb, "tl"))


def test_settings_are_picklable_for_the_worker_pool(tmp_path):
    import pickle

    settings = RenderSettings(OutputConfig(sizes=(size(),)), 1000)
    assert pickle.loads(pickle.dumps(settings)) == settings
    assert replace(settings, max_pixels=5).max_pixels == 5


def test_running_out_of_memory_is_a_clean_failure(tmp_path):
    # a worker under a memory cap (RLIMIT_AS, as the pool sets it) decoding a 144 MB image
    import subprocess
    import sys

    src = tmp_path / "big.png"
    Image.new("RGB", (6000, 6000), (10, 200, 30)).save(src, compress_level=1)
    code = f"""
import resource, sys
sys.path[:0] = {[str(Path(__file__).parent.parent)]!r}
from watcher.config import OutputConfig, SizeSpec
from watcher.paths import Target
from watcher.render import RenderError, RenderSettings, render
size = SizeSpec("s", 64, 64)
settings = RenderSettings(OutputConfig(sizes=(size,)), 10**9)
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 60 * 2**20, vm + 60 * 2**20))
try:
    render({str(src)!r}, [Target(size, {str(tmp_path / "t.jpg")!r})], settings)
except RenderError as err:
    print("RenderError:", err)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "RenderError: out of memory decoding 6000×6000 pixels (see limits.worker_memory_mb)", done
