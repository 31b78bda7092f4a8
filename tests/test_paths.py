"""The filter (what counts as a photo) and the mapping (where its thumbnails go)."""

from __future__ import annotations

from pathlib import Path

import pytest

from watcher.config import parse
from watcher.paths import PathRules, is_our_temp, shown, temp_path_for


def rules(tmp_path: Path, data: dict) -> PathRules:
    for raw in data.get("watch", {}).get("paths", []):
        (tmp_path / raw).mkdir(parents=True, exist_ok=True)
    return PathRules(parse(data, file=tmp_path / "c.yaml", base_dir=tmp_path))


def test_one_size_goes_straight_into_thumbs_inside_the_watched_folder(tmp_path):
    r = rules(tmp_path, {"watch": {"paths": ["photos"]}})
    [target] = r.targets(str(tmp_path / "photos/2024/trip/IMG_1.JPG"))
    assert target.path == str(tmp_path / "photos/thumbs/2024/trip/IMG_1.JPG")


def test_several_sizes_get_a_folder_each_and_their_own_extension(tmp_path):
    r = rules(tmp_path, {"watch": {"paths": ["photos"]}, "output": {"sizes": [
        {"name": "small", "width": 75, "height": 75},
        {"name": "web", "width": 1024, "format": "webp"},
    ]}})
    small, web = r.targets(str(tmp_path / "photos/a/b.jpeg"))
    assert small.path == str(tmp_path / "photos/thumbs/small/a/b.jpeg")
    assert web.path == str(tmp_path / "photos/thumbs/web/a/b.webp")
    assert web.size.mode == "width"


def test_absolute_output_dir_mirrors_the_tree(tmp_path):
    out = tmp_path / "out"
    r = rules(tmp_path, {"watch": {"paths": ["photos"]}, "output": {"dir": str(out)}})
    [target] = r.targets(str(tmp_path / "photos/x/y.jpg"))
    assert target.path == str(out / "x/y.jpg")


def test_absolute_output_dir_with_several_folders_keeps_them_apart(tmp_path):
    out = tmp_path / "out"
    r = rules(tmp_path, {"watch": {"paths": ["a/photos", "b/scans"]}, "output": {"dir": str(out)}})
    assert r.targets(str(tmp_path / "a/photos/1.jpg"))[0].path == str(out / "photos/1.jpg")
    assert r.targets(str(tmp_path / "b/scans/1.jpg"))[0].path == str(out / "scans/1.jpg")


def test_template_places_the_name(tmp_path):
    r = rules(tmp_path, {"watch": {"paths": ["photos"]}, "output": {"sizes": [
        {"name": "s", "width": 9, "height": 9, "template": "{stem}_{size}{ext}"},
        {"name": "t", "width": 9, "height": 9, "template": "flat/{stem}{ext}", "format": "png"},
    ]}})
    s, t = r.targets(str(tmp_path / "photos/d/p.jpg"))
    assert s.path == str(tmp_path / "photos/thumbs/s/d/p_s.jpg")
    assert t.path == str(tmp_path / "photos/thumbs/t/d/flat/p.png")


@pytest.mark.parametrize("name, wanted", [
    ("a.jpg", True), ("B.JPG", True), ("c.Jpeg", True), ("sub/d.jpg", True),
    ("e.png", False), (".hidden.jpg", False), ("f.jpg.part", False), ("g.jpg~", False),
    (".g.jpg.Xy12Ab", False), ("h.tmp", False), (".tw-12-i.jpg.tmp", False),
    ("thumbs/j.jpg", False), ("thumbs/sub/k.jpg", False), (".git/l.jpg", False),
    ("skip_me.jpg", False), ("private/m.jpg", False),
])
def test_filter(tmp_path, name, wanted):
    r = rules(tmp_path, {"watch": {"paths": ["photos"], "ignore": ["skip_*", "private/*"]}})
    assert r.wants(str(tmp_path / "photos" / name)) is wanted


def test_non_recursive_ignores_subfolders(tmp_path):
    r = rules(tmp_path, {"watch": {"paths": ["photos"], "recursive": False}})
    assert r.wants(str(tmp_path / "photos/a.jpg"))
    assert not r.wants(str(tmp_path / "photos/sub/a.jpg"))
    assert not r.wants_dir(str(tmp_path / "photos/sub"))


def test_paths_outside_the_watched_folders_are_not_ours(tmp_path):
    r = rules(tmp_path, {"watch": {"paths": ["photos"]}})
    assert not r.wants(str(tmp_path / "photos2/a.jpg"))
    assert not r.wants(str(tmp_path / "a.jpg"))


def test_temp_names_are_hidden_ours_and_name_the_writer(tmp_path):
    temp = temp_path_for(str(tmp_path / "thumbs/a.jpg"), 4242)
    assert Path(temp).parent == tmp_path / "thumbs"
    assert is_our_temp(Path(temp).name) and "4242" in temp


def test_shown_keeps_one_line_per_path():
    assert shown("a\nb.jpg") == "a\\nb.jpg"
    assert shown("caf\udce9.jpg") == "caf\\udce9.jpg"
    assert shown("café.jpg") == "café.jpg"


@pytest.mark.parametrize("name", ["..jpg.jpg", "...jpg", "a\\..\\..\\b.jpg", "%2e%2e%2fx.jpg", "-rf.jpg", "\udcff\udcfe.jpg", "x\ny.jpg"])
def test_no_photo_name_maps_outside_the_output_tree(tmp_path, name):
    r = rules(tmp_path, {"watch": {"paths": ["photos"]}, "output": {"sizes": [
        {"name": "a", "width": 9, "height": 9}, {"name": "b", "width": 9, "height": 9, "template": "{dir}/{size}-{stem}{ext}"}]}})
    for target in r.targets(str(tmp_path / "photos" / "sub" / name)):
        assert Path(target.path).resolve().is_relative_to((tmp_path / "photos" / "thumbs").resolve()), target.path
