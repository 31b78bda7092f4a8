"""The filter (what counts as a photo) and the mapping (where its thumbnails go)."""

from __future__ import annotations

import os
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
    assert web.path == str(tmp_path / "photos/thumbs/web/a/b.jpeg.webp")
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
    assert t.path == str(tmp_path / "photos/thumbs/t/d/flat/p.jpg.png")


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


@pytest.mark.parametrize("name", ["a" * 230 + ".jpg", "写" * 83 + ".jpg", "é" * 125 + ".jpeg", "x" * 255, "\udcff" * 200 + ".jpg", "a." + "b" * 240])
def test_temp_names_never_exceed_name_max_and_stay_ours(tmp_path, name):
    assert len(os.fsencode(name)) <= 255
    temp = os.path.basename(temp_path_for(str(tmp_path / name), 4194303))
    assert len(os.fsencode(temp)) <= 255, len(os.fsencode(temp))
    assert is_our_temp(temp) and temp.startswith(".tw-4194303-") and temp.endswith(".tmp")
    assert temp == os.path.basename(temp_path_for(str(tmp_path / name), 4194303))  # the master finds it again
    assert temp != os.path.basename(temp_path_for(str(tmp_path / (name[:-1] + "Z")), 4194303))
    open(tmp_path / temp, "wb").close()  # the kernel takes it


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


# The naming rule, written from the spec (README, Configuration): a photo whose extension is the
# output format's own keeps its name; any other photo keeps its whole name and gets the format's
# extension appended. One row per photo name; columns: jpeg, png, webp output.
NAMING = [
    ("x.jpg", "x.jpg", "x.jpg.png", "x.jpg.webp"),
    ("x.jpeg", "x.jpeg", "x.jpeg.png", "x.jpeg.webp"),
    ("X.JPG", "X.JPG", "X.JPG.png", "X.JPG.webp"),
    ("x.jfif", "x.jfif", "x.jfif.png", "x.jfif.webp"),
    ("x.png", "x.png.jpg", "x.png", "x.png.webp"),
    ("x.PNG", "x.PNG.jpg", "x.PNG", "x.PNG.webp"),
    ("x.webp", "x.webp.jpg", "x.webp.png", "x.webp"),
    ("x.tif", "x.tif.jpg", "x.tif.png", "x.tif.webp"),
    ("IMG.2024.01.jpg", "IMG.2024.01.jpg", "IMG.2024.01.jpg.png", "IMG.2024.01.jpg.webp"),
    # a name that is another photo's name plus the format's extension must not take that photo's
    # thumbnail name: x.png's JPEG thumbnail is x.png.jpg, so the photo x.png.jpg appends again
    ("x.png.jpg", "x.png.jpg.jpg", "x.png.jpg.png", "x.png.jpg.webp"),
    ("x.jpg.png", "x.jpg.png.jpg", "x.jpg.png.png", "x.jpg.png.webp"),
    ("x.jpeg.webp", "x.jpeg.webp.jpg", "x.jpeg.webp.png", "x.jpeg.webp.webp"),
    # ... but a JPEG photo named after another JPEG photo keeps its name with JPEG output
    ("x.jpg.jpg", "x.jpg.jpg", "x.jpg.jpg.png", "x.jpg.jpg.webp"),
]
PATTERNS = ["*.jpg", "*.jpeg", "*.jfif", "*.png", "*.webp", "*.tif"]


@pytest.mark.parametrize("column, fmt", [(1, "jpeg"), (2, "png"), (3, "webp")])
def test_thumbnail_names_follow_the_documented_rule(tmp_path, column, fmt):
    r = rules(tmp_path, {"watch": {"paths": ["photos"], "patterns": PATTERNS}, "output": {"format": fmt}})
    for row in NAMING:
        [target] = r.targets(str(tmp_path / "photos/sub" / row[0]))
        assert target.path == str(tmp_path / "photos/thumbs/sub" / row[column]), (fmt, row[0])


def test_jpeg_photos_keep_their_names_with_the_default_config(tmp_path):
    r = rules(tmp_path, {"watch": {"paths": ["photos"]}})
    for name in ["IMG_0001.JPG", "a.jpeg", "a.jpg", "a.jpg.jpg", "b.png.jpg", "v1.2.jpeg"]:
        assert r.targets(str(tmp_path / "photos" / name))[0].path == str(tmp_path / "photos/thumbs" / name)


# Names built to collide: every photo name, its extension swapped, and every name with every
# extension appended once and twice, in upper and lower case.
_BASES = ["x", "x.jpg", "x.jpeg", "x.png", "x.webp", "x.tif", "x.jpg.png", "x.png.jpg", "a.b"]
_EXTS = ["", ".jpg", ".jpeg", ".JPG", ".jfif", ".png", ".PNG", ".webp", ".tif"]
COLLIDING = sorted({base + e1 + e2 for base in _BASES for e1 in _EXTS for e2 in _EXTS})


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
@pytest.mark.parametrize("patterns", [["*.jpg", "*.jpeg"], PATTERNS, ["*"], ["x*", "*.png"]])
@pytest.mark.parametrize("template", ["{stem}{ext}", "{size}-{stem}{ext}", "{dir}/{stem}_t{ext}"])
def test_no_two_photos_share_a_thumbnail(tmp_path, fmt, patterns, template):
    r = rules(tmp_path, {"watch": {"paths": ["photos"], "patterns": patterns}, "output": {"format": fmt, "sizes": [
        {"name": "a", "width": 9, "height": 9, "template": template},
        {"name": "b", "width": 9, "height": 9, "format": "jpeg"}]}})
    owner: dict[str, str] = {}
    photos = [n for n in COLLIDING if r.wants(str(tmp_path / "photos/d" / n))]
    assert len(photos) > 20
    for name in photos:
        for target in r.targets(str(tmp_path / "photos/d" / name)):
            assert target.path not in owner, f"{name} and {owner.get(target.path)} share {target.path}"
            owner[target.path] = name


def test_temp_names_carry_the_host_and_only_this_hosts_are_cleaned(tmp_path):
    from watcher.paths import HOST, is_this_hosts_temp

    ours = os.path.basename(temp_path_for(str(tmp_path / "a.jpg"), 77))
    assert ours == f".tw-77-{HOST}~a.jpg.tmp" and is_this_hosts_temp(ours)
    assert not is_this_hosts_temp(".tw-77-some-other-host~a.jpg.tmp"), "another render host's temp on shared storage"
    assert is_this_hosts_temp(".tw-77-a.jpg.tmp"), "an older version's temp: it was a single host"
