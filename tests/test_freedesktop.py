"""The freedesktop.org Thumbnail Managing Standard: URIs, names, Thumb::* chunks, modes, fail entries."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from PIL import Image

from helpers import corner_colour, is_red, make_jpeg, temp_files
from watcher import __version__, freedesktop
from watcher.config import OutputConfig
from watcher.paths import Target
from watcher.render import PhotoVanished, RenderError, RenderSettings, render

SETTINGS = RenderSettings(OutputConfig(style="freedesktop", sizes=freedesktop.SIZES), 200_000_000)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "thumbnails"


def chunks(path: Path) -> dict[str, str] | None:
    try:
        with Image.open(path, formats=("PNG",)) as im:
            im.load()
            return dict(im.text)
    except (OSError, SyntaxError, ValueError):
        return None


def stamped_for(path: Path, photo: str) -> bool:
    """Does the PNG at `path` carry the spec's stamp of `photo` as it is now (Thumb::URI, and
    Thumb::MTime in whole seconds)? Read the way a desktop program reads it."""
    text = chunks(path)
    return (text is not None and text.get("Thumb::URI") == freedesktop.uri_for(photo)
            and text.get("Thumb::MTime") == str(int(os.stat(photo).st_mtime)))


def is_fresh(photo: str, flavor: str | None = None) -> bool:
    flavors = [flavor] if flavor else [size.name for size in freedesktop.SIZES]
    return all(stamped_for(freedesktop.thumbnail_path(photo, name), photo) for name in flavors)


def has_failed(photo: str, version: str) -> bool:
    return stamped_for(freedesktop.fail_path(photo, version), photo)


def targets(photo: Path) -> list[Target]:
    return [Target(size, str(freedesktop.thumbnail_path(str(photo), size.name))) for size in freedesktop.SIZES]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(
    "path, uri",
    [
        ("/home/ann/Pictures/a b.jpg", "file:///home/ann/Pictures/a%20b.jpg"),
        ("/home/ann/Ärger/café.jpg", "file:///home/ann/%C3%84rger/caf%C3%A9.jpg"),
        ("/p/IMG (1) & co,+x=1@y:z!'*$~.jpg", "file:///p/IMG%20(1)%20&%20co,+x=1@y:z!'*$~.jpg"),
        ("/p/50%#hash?q;[x]{y}<z>|\"`^\\.jpg", "file:///p/50%25%23hash%3Fq%3B%5Bx%5D%7By%7D%3Cz%3E%7C%22%60%5E%5C.jpg"),
    ],
)
def test_uri_escapes_like_glib(path, uri):
    assert freedesktop.uri_for(path) == uri
    assert freedesktop.thumbnail_path(path, "normal").name == hashlib.md5(uri.encode()).hexdigest() + ".png"


def test_uri_of_undecodable_bytes_and_relative_paths(tmp_path, monkeypatch):
    name = os.fsdecode(b"bad\xffname.jpg")
    assert freedesktop.uri_for(f"/p/{name}") == "file:///p/bad%FFname.jpg"
    monkeypatch.chdir(tmp_path)
    assert freedesktop.uri_for("x.jpg") == "file://" + str(tmp_path / "x.jpg")


def test_thumbnails_carry_the_spec_chunks_with_private_modes(tmp_path, cache):
    photo = make_jpeg(tmp_path / "Ferien 2024" / "Strand é.jpg", 2000, 1500, orientation=6)
    os.utime(photo, (1_700_000_000, 1_700_000_000.75))
    result = render(str(photo), targets(photo), SETTINGS)
    uri = "file://" + str(tmp_path).replace(" ", "%20") + "/Ferien%202024/Strand%20%C3%A9.jpg"
    digest = hashlib.md5(uri.encode()).hexdigest()
    expected = {"normal": (128, 96), "large": (256, 192), "x-large": (512, 384), "xx-large": (1024, 768)}
    assert (result.width, result.height) == (2000, 1500)  # upright (stored 1500x2000, orientation 6)
    for flavor, box in expected.items():
        path = cache / flavor / f"{digest}.png"
        with Image.open(path) as thumb:
            thumb.load()
            assert thumb.format == "PNG" and thumb.size == box
            assert is_red(corner_colour(thumb, "tl"))
            assert thumb.text["Thumb::URI"] == uri
            assert thumb.text["Thumb::MTime"] == "1700000000"
            assert thumb.text["Thumb::Size"] == str(photo.stat().st_size)
            assert thumb.text["Thumb::Mimetype"] == "image/jpeg"
            assert (thumb.text["Thumb::Image::Width"], thumb.text["Thumb::Image::Height"]) == ("2000", "1500")
        assert mode(path) == 0o600
        assert mode(path.parent) == 0o700
        assert os.stat(path).st_mtime_ns == photo.stat().st_mtime_ns
        assert temp_files(path.parent) == []
    assert mode(cache) == 0o700
    assert is_fresh(str(photo))


def test_never_upscales_a_small_photo(tmp_path, cache):
    photo = make_jpeg(tmp_path / "small.jpg", 300, 200)
    render(str(photo), targets(photo), SETTINGS)
    sizes = {}
    for target in targets(photo):
        with Image.open(target.path) as thumb:
            sizes[target.size.name] = thumb.size
    assert sizes == {"normal": (128, 85), "large": (256, 171), "x-large": (300, 200), "xx-large": (300, 200)}


def test_is_fresh_follows_the_photo_mtime(tmp_path):
    photo = make_jpeg(tmp_path / "p.jpg")
    assert not is_fresh(str(photo))
    render(str(photo), targets(photo), SETTINGS)
    assert is_fresh(str(photo)) and is_fresh(str(photo), "large")
    st = photo.stat()
    os.utime(photo, (st.st_atime, st.st_mtime + 10))
    assert not is_fresh(str(photo))


def test_a_failure_is_recorded_then_cleared_when_the_photo_is_fixed(tmp_path, cache):
    photo = tmp_path / "broken.jpg"
    photo.write_bytes(make_jpeg(tmp_path / "x.jpg").read_bytes()[:600])
    with pytest.raises(RenderError, match="truncated JPEG"):
        render(str(photo), targets(photo), SETTINGS)
    fail = cache / "fail" / f"thumbwatch-{__version__}" / (hashlib.md5(freedesktop.uri_for(str(photo)).encode()).hexdigest() + ".png")
    with Image.open(fail) as entry:
        entry.load()
        assert entry.size == (1, 1)
        assert entry.text["Thumb::URI"] == freedesktop.uri_for(str(photo))
        assert entry.text["Thumb::MTime"] == str(int(photo.stat().st_mtime))
    assert mode(fail) == 0o600 and mode(fail.parent) == 0o700 and mode(fail.parent.parent) == 0o700
    assert has_failed(str(photo), __version__)
    assert not any((cache / size.name).glob("*.png") for size in freedesktop.SIZES if (cache / size.name).exists())

    make_jpeg(photo)
    os.utime(photo, (1_800_000_000, 1_800_000_000))
    render(str(photo), targets(photo), SETTINGS)
    assert not fail.exists() and not has_failed(str(photo), __version__)
    assert is_fresh(str(photo))


def test_no_fail_entry_for_a_vanished_photo(tmp_path, cache):
    with pytest.raises(PhotoVanished):
        render(str(tmp_path / "gone.jpg"), targets(tmp_path / "gone.jpg"), SETTINGS)
    assert not (cache / "fail").exists()
