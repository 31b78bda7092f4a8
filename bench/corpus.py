"""The benchmark's inputs, generated deterministically once and cached under bench/cache/.

Camera-like JPEGs (seeded noise at three scales plus grain, so they entropy-code like real
photos: ~3.3 MB at 12 MP, 4:2:2 at q85-87, decoding in about the time a camera's photo does) with EXIF orientations 1/3/6/8; a 2 MP set; a 100,000-photo tree
with up-to-date placeholder thumbnails for the catch-up walk; a burst of small photos.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

from PIL import Image, ImageChops

CACHE = Path(__file__).resolve().parent / "cache"
ORIENTATIONS = (1, 3, 6, 8)
DISTINCT = 16  # distinct pictures; each is saved under several orientations and qualities


def _noise(rng: random.Random, width: int, height: int) -> Image.Image:
    return Image.frombytes("L", (width, height), rng.randbytes(width * height))


def camera_like(seed: int, width: int, height: int) -> Image.Image:
    rng = random.Random(seed)
    bands = []
    for _ in range(3):
        base = _noise(rng, max(1, width // 40), max(1, height // 40)).resize((width, height), Image.Resampling.BICUBIC)
        mid = _noise(rng, max(1, width // 8), max(1, height // 8)).resize((width, height), Image.Resampling.BICUBIC)
        grain = _noise(rng, width, height).point(lambda v: 120 + v // 16)
        bands.append(ImageChops.add(ImageChops.add(base, mid, scale=2.0), grain, offset=-120))
    return Image.merge("RGB", bands)


def _jpeg(im: Image.Image, orientation: int, quality: int) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "thumbwatch-bench"
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, subsampling="4:2:2", exif=exif.tobytes())  # as many cameras write
    return buf.getvalue()


def photo_set(name: str, count: int, width: int, height: int) -> list[Path]:
    """`count` JPEGs in bench/cache/<name>/, made once; orientation cycles through 1/3/6/8."""
    folder = CACHE / f"{name}-{width}x{height}-v3"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}_{i:04d}.jpg" for i in range(count)]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    pictures: dict[int, Image.Image] = {}
    for i in missing:
        seed = i % DISTINCT
        if seed not in pictures:
            pictures[seed] = camera_like(seed + width, width, height)
        data = _jpeg(pictures[seed], ORIENTATIONS[i % len(ORIENTATIONS)], 85 + (i // DISTINCT) % 3)
        temp = paths[i].with_suffix(".part")
        temp.write_bytes(data)
        os.replace(temp, paths[i])
    return paths


def small_jpeg() -> bytes:
    return _jpeg(camera_like(7, 64, 48), 1, 85)


def catchup_tree(count: int = 100_000, per_folder: int = 1000) -> Path:
    """A watched tree of `count` empty placeholder photos, each with an up-to-date placeholder
    thumbnail (same mtime), as the stat-only check needs. Built once."""
    root = CACHE / f"catchup-{count}"
    done = root / ".complete"
    if done.exists():
        return root / "photos"
    photos = root / "photos"
    stamp = 1_700_000_000
    for i in range(count):
        folder = f"d{i // per_folder:04d}"
        photo = photos / folder / f"p{i:06d}.jpg"
        thumb = photos / "thumbs" / folder / f"p{i:06d}.jpg"
        if i % per_folder == 0:
            photo.parent.mkdir(parents=True, exist_ok=True)
            thumb.parent.mkdir(parents=True, exist_ok=True)
        for path in (photo, thumb):
            with open(path, "wb"):
                pass
            os.utime(path, (stamp, stamp))
    done.touch()
    return photos


def photo_like(seed: int, width: int, height: int) -> Image.Image:
    """Like camera_like, but with a photo's statistics: detail in brightness at every scale,
    each finer octave weaker (1/f), colour only at coarse scales (as in real photos, and as
    JPEG's chroma subsampling assumes), and the same pixel grain, which keeps the decode cost a
    camera photo's. camera_like's three unrelated bands at full strength down to 8 px are
    saturated colour noise at 75 px, where any two correct resamplers differ by ~7 levels."""
    rng = random.Random(seed)

    def octave(divisor: int, weight: float) -> Image.Image:
        noise = _noise(rng, max(1, width // divisor), max(1, height // divisor)).resize((width, height), Image.Resampling.BICUBIC)
        return noise.point(lambda v: round((v - 128) * weight) + 128)

    luma = Image.new("L", (width, height), 128)
    for divisor, weight in ((300, 0.8), (75, 0.4), (18, 0.2), (5, 0.1)):
        luma = ImageChops.add(luma, octave(divisor, weight), offset=-128)
    bands = []
    for _ in range(3):
        tinted = ImageChops.add(luma, octave(300, 0.35), offset=-128)
        grain = _noise(rng, width, height).point(lambda v: 120 + v // 16)
        bands.append(ImageChops.add(tinted, grain, offset=-120))
    return Image.merge("RGB", bands)


def _jpeg_data(im: Image.Image, quality: int, subsampling: str = "4:2:0") -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, subsampling=subsampling)
    return buf.getvalue()


def preview_set(count: int, width: int = 4000, height: int = 3000) -> list[Path]:
    """`count` 12 MP photo-like JPEGs as cameras write them: EXIF orientation (1/3/6/8), a
    160×120 EXIF thumbnail, and a 1600 px MPF preview after the main image. Made once."""
    from .tests_imagegen import jpeg_with_previews

    folder = CACHE / f"previews-{width}x{height}-v2"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"pv_{i:04d}.jpg" for i in range(count)]
    pictures: dict[int, Image.Image] = {}
    for i, path in enumerate(paths):
        if path.exists():
            continue
        seed = i % 4
        if seed not in pictures:
            pictures[seed] = photo_like(seed + 1000, width, height)
        main = pictures[seed]
        thumb = _jpeg_data(main.resize((160, 120), Image.Resampling.LANCZOS), 90)
        preview = _jpeg_data(main.resize((1600, 1200), Image.Resampling.LANCZOS), 90)
        temp = path.with_suffix(".part")
        jpeg_with_previews(temp, main, orientation=ORIENTATIONS[i % len(ORIENTATIONS)], exif_thumbnail=thumb,
                           mpf_preview=preview, quality=85 + (i // 4) % 3, subsampling="4:2:2")
        os.replace(temp, path)
    return paths


def heif_set(count: int, width: int = 4032, height: int = 3024) -> list[Path]:
    """`count` 12 MP photo-like HEICs as phones write them: HEVC at about an iPhone's size per
    pixel, a 320 px thumbnail item, orientation 1 or 6 as an irot transform plus the EXIF tag.
    Made once (x265 takes tens of seconds for each on this box)."""
    import pillow_heif

    folder = CACHE / f"heic-{width}x{height}-v1"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"heic_{i:04d}.heic" for i in range(count)]
    for i, path in enumerate(paths):
        if path.exists():
            continue
        exif = Image.Exif()
        exif[0x010F] = "thumbwatch-bench"
        exif[0x0112] = (1, 6)[i % 2]
        temp = path.with_suffix(".part")
        pillow_heif.from_pillow(photo_like(i + 2000, width, height)).save(temp, format="HEIF", quality=50, thumbnails=[320],
                                                                         exif=exif.tobytes())
        os.replace(temp, path)
    return paths


def avif_set(count: int, width: int = 4032, height: int = 3024) -> list[Path]:
    """`count` 12 MP photo-like AVIFs written by Pillow's AVIF plugin (libavif), orientation 1
    or 6 (written as irot). Made once."""
    folder = CACHE / f"avif-{width}x{height}-v1"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"avif_{i:04d}.avif" for i in range(count)]
    for i, path in enumerate(paths):
        if path.exists():
            continue
        exif = Image.Exif()
        exif[0x0112] = (1, 6)[i % 2]
        temp = path.with_suffix(".part")
        photo_like(i + 3000, width, height).save(temp, format="AVIF", quality=60, speed=8, exif=exif.tobytes())
        os.replace(temp, path)
    return paths
