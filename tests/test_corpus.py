"""The shared corpus of real-world and hostile files: every entry behaves as MANIFEST.tsv says.

good/: an upright thumbnail in every output format, of the size the manifest measured for a
256 px box. bad/: a RenderError whose reason says what the manifest's notes say is wrong.
"""

from __future__ import annotations

import contextlib
import csv
import re
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from helpers import CORPUS, library_missing
from watcher.config import OutputConfig, SizeSpec
from watcher.paths import Target
from watcher.render import RenderError, RenderSettings, render

MANIFEST = CORPUS / "MANIFEST.tsv"
FORMATS = ("jpeg", "webp", "png")
EXT = {"jpeg": ".jpg", "webp": ".webp", "png": ".png"}
# Leading clauses of a note that report what Pillow did; the rest describes the file.
PILLOW_CLAUSES = ("Pillow 13", "load() raises", "getexif() raises", "with ImageFile.LOAD_TRUNCATED", "still fails with", "a second getexif")
# What a bad file's description implies about the reason, most specific first.
REASON_RULES = (
    ("zero-byte", r"^empty file \(0 bytes\)$"),
    ("IMPOSTOR: HEIF", r"^not a JPEG \(looks like HEIF; install thumbwatch\[heif\]\)$"),
    ("HTML", r"^not an image \(looks like HTML\)$"),
    ("12-bit", r"^unsupported JPEG \(12-bit precision\)$"),
    ("decompression bomb", r"^image too large: 65535×65535 exceeds max_pixels \(\d+\)$"),
    ("no frame header", r"^truncated JPEG \(no frame header\)$"),
    ("headers only", r"^truncated JPEG \(headers only, no image data\)$"),
    ("height = 0", r"^corrupt JPEG header \(declares \d+×\d+ pixels\)$"),
    ("corrupted entropy-coded data", r"^corrupt JPEG data$"),
    ("invalid Huffman", r"^corrupt (or truncated )?JPEG data"),
    ("without EOI", r"(truncated|no end marker)"),
    ("truncated", r"^truncated JPEG$"),
    ("cut short", r"^truncated JPEG$"),
    ("header claims", r"^truncated JPEG$"),
)


def manifest(expected: str) -> list:
    if not MANIFEST.exists():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"shared corpus not found at {CORPUS}"), id="no-corpus")]
    with open(MANIFEST, encoding="utf-8", newline="") as f:
        rows = [row for row in csv.DictReader(f, delimiter="\t") if row["expected"] == expected]
    return [pytest.param(row, id=row["file"]) for row in rows]


def description(notes: str) -> str:
    return "; ".join(part for part in notes.split("; ") if not part.startswith(PILLOW_CLAUSES))


def upright_size(notes: str) -> tuple[int, int]:
    found = re.search(r"upright size=(\d+)x(\d+)", notes) or re.search(r"\bsize=(\d+)x(\d+)", notes)
    return int(found[1]), int(found[2])


def settings(fmt: str) -> RenderSettings:
    sizes = (SizeSpec("box", 256, 256, format=fmt), SizeSpec("fill", 64, 64, mode="fill", format=fmt))
    return RenderSettings(OutputConfig(sizes=sizes), 200_000_000)


def thumbnail(src: Path, out: Path, fmt: str) -> tuple[Image.Image, Image.Image]:
    config = settings(fmt)
    targets = [Target(size, str(out / size.name / (src.stem + EXT[fmt]))) for size in config.output.sizes]
    result = render(str(src), targets, config)
    opened = []
    for path, w, h in result.outputs:
        im = Image.open(path)
        im.load()
        assert im.format == fmt.upper() and im.size == (w, h)
        opened.append(im)
    return opened[0], opened[1]


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB").resize(a.size))).mean) / 3


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("row", manifest("thumbnail"))
def test_good_file_gives_an_upright_thumbnail(row, fmt, tmp_path):
    src = CORPUS / row["file"]
    box, fill = thumbnail(src, tmp_path, fmt)
    measured = re.search(r"thumbnail\(\(256,256\)\)->(\d+)x(\d+)", row["notes"])
    assert measured, "manifest note lacks the measured thumbnail size"
    want = (int(measured[1]), int(measured[2]))
    assert abs(box.width - want[0]) <= 1 and abs(box.height - want[1]) <= 1, (box.size, want)
    # fill: cover 64x64 (never enlarging), then crop the centre
    w, h = upright_size(row["notes"])
    scale = min(1.0, max(64 / w, 64 / h))
    assert fill.size == (min(64, max(1, round(w * scale))), min(64, max(1, round(h * scale)))), (fill.size, (w, h))
    if "mode=L " in row["notes"] and fmt != "webp":
        assert box.mode == "L"  # grayscale stays grayscale
    else:
        assert box.mode in ("RGB", "RGBA", "L")
    assert not box.getexif(), "metadata is stripped by default"

    reference = re.search(r"upright: looks like (\w+)\.jpg", row["notes"])
    number = re.match(r"good/exifsamples_landscape_(\d)\.jpg", row["file"])
    if reference or (number and number[1] != "1"):
        same_scene = CORPUS / "good" / (reference[1] + ".jpg" if reference else "exifsamples_landscape_1.jpg")
        upright, _ = thumbnail(same_scene, tmp_path / "reference", fmt)
        # the digit drawn in the landscape photos differs; a wrong orientation differs by ~40+
        assert mean_diff(box, upright) < 15, f"{row['file']} does not look like {same_scene.name} upright"


def naive(src: Path, size: tuple[int, int]) -> Image.Image:
    with Image.open(src) as im:
        return im.convert("RGB").resize(size, Image.Resampling.LANCZOS)


@pytest.mark.parametrize(
    "name, least",
    [("zune_weird_sampling_2_xyb.jpeg", 25), ("pillow_icc_profile_big.jpg", 3)],
)
def test_embedded_profiles_are_applied(name, least, tmp_path):
    if not MANIFEST.exists():
        pytest.skip(f"shared corpus not found at {CORPUS}")
    src = CORPUS / "good" / name
    box, _ = thumbnail(src, tmp_path, "png")
    assert mean_diff(box, naive(src, box.size)) > least  # the manifest: naive vs ICC-managed differ this much


def test_cmyk_photoshop_ycck_is_not_inverted(tmp_path):
    if not MANIFEST.exists():
        pytest.skip(f"shared corpus not found at {CORPUS}")
    src = CORPUS / "good" / "pillow_pil_sample_cmyk.jpg"
    box, _ = thumbnail(src, tmp_path, "png")
    assert box.mode == "RGB"
    # Pillow's own reading of an Adobe YCCK file is right; an extra inversion would give ~200 levels
    assert mean_diff(box, naive(src, box.size)) < 3


@pytest.mark.parametrize("row", manifest("error"))
def test_bad_file_gives_a_human_reason(row, tmp_path):
    what = description(row["notes"])
    pattern = next((rx for key, rx in REASON_RULES if key in what), None)
    assert pattern, f"no reason rule matches the manifest description {what!r}: add one"
    # the HEIF impostor is what an install without the heif extra says (with it, it renders:
    # test_formats_heif)
    with pytest.raises(RenderError) as err, library_missing("pillow_heif") if "HEIF" in row["notes"] else contextlib.nullcontext():
        thumbnail(CORPUS / row["file"], tmp_path, "jpeg")
    reason = str(err.value)
    assert type(err.value) is RenderError
    assert re.search(pattern, reason), f"{reason!r} does not match {pattern!r} for: {what}"
    assert not re.search(r"[A-Z][a-z]+Error|Traceback", reason), reason
    assert not list(tmp_path.rglob("*")) or all(p.is_dir() for p in tmp_path.rglob("*"))
