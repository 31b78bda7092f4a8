"""Thumbnail events as the tree's operations make them, and the placeholders a worker adds:
real renders, real files, and hashes checked against an implementation we did not write."""

from __future__ import annotations

import base64
import os
import random
from pathlib import Path

import pytest
from PIL import Image

from helpers import make_flat_jpeg
from watcher import treeevents
from watcher.backends import results
from watcher.config import OutputConfig, SizeSpec
from watcher.paths import Target
from watcher.render import RenderSettings, placeholder, render
from watcher.thumbtree import remove_thumbnails


@pytest.fixture
def events():
    got: list[dict] = []
    treeevents.set_sink(got.append)
    yield got
    treeevents.set_sink(None)


SIZES = (SizeSpec("small", 64, 64), SizeSpec("wide", 200, None, mode="width", format="webp"))


def targets(out: Path) -> list[Target]:
    return [Target(SIZES[0], str(out / "small" / "a.jpg")), Target(SIZES[1], str(out / "wide" / "a.jpg.webp"))]


def test_a_render_attempt_reports_each_thumbnail_as_it_is_on_disk(tmp_path):
    src = make_flat_jpeg(tmp_path / "a.jpg", (200, 40, 40), 400, 300)
    wanted = targets(tmp_path / "thumbs")
    done = results.attempt(str(src), wanted, RenderSettings(OutputConfig(sizes=SIZES), 10**8))
    assert isinstance(done, results.Done) and done.placeholder is None
    assert results.from_wire(results.to_wire(done)) == done, "a render host sends it all to the master"
    assert [t["path"] for t in done.thumbnails] == [t.path for t in wanted]
    for thumb, target in zip(done.thumbnails, wanted):
        with Image.open(target.path) as im:
            assert (thumb["width"], thumb["height"]) == im.size
            assert thumb["format"] == im.format.lower() == target.size.format
        assert thumb["bytes"] == os.path.getsize(target.path)
        assert thumb["size"] == target.size.name
    assert [(t["width"], t["height"]) for t in done.thumbnails] == [(64, 48), (200, 150)]


def test_a_render_attempt_adds_the_placeholder_asked_for(tmp_path):
    src = make_flat_jpeg(tmp_path / "a.jpg", (30, 90, 200), 400, 300)
    for kind in ("thumbhash", "blurhash"):
        done = results.attempt(str(src), targets(tmp_path / kind), RenderSettings(OutputConfig(sizes=SIZES, placeholder=kind), 10**8))
        assert done.placeholder["kind"] == kind and done.placeholder["hash"]
        assert results.from_wire(results.to_wire(done)).placeholder == done.placeholder
    assert len(base64.b64decode(results.attempt(str(src), targets(tmp_path / "t2"), RenderSettings(
        OutputConfig(sizes=SIZES, placeholder="thumbhash"), 10**8)).placeholder["hash"])) > 5


def pattern(seed: int, w: int, h: int, alpha: bool) -> Image.Image:
    random.seed(seed)
    im = Image.new("RGBA", (w, h))
    im.putdata([(random.randrange(256), (x * 7) % 256, 90, random.randrange(256) if alpha else 255) for x in range(w * h)])
    return im


# Computed with thumbhash-python 1.0.1 (an independent implementation of the published algorithm)
# from the same pixels; our encoder must agree bit for bit, with and without transparency.
REFERENCE = [
    (1, (32, 24), False, "HPkBBYJmVzRFT2l3iarHqVQDh+hw"),
    (2, (20, 32), False, "HAkCDACGR1QHdmvEh8WGRAALFg=="),
    (3, (24, 24), True, "HAmCBQAIdK+GQ1h1pmCUWf3pof5zWJVIaQ=="),
]


@pytest.mark.parametrize("seed,size,alpha,expected", REFERENCE)
def test_thumbhash_agrees_with_an_independent_implementation(seed, size, alpha, expected):
    assert placeholder.thumbhash(pattern(seed, *size, alpha)) == expected


def test_blurhash_of_a_flat_colour_is_that_colour():
    code = placeholder.blurhash(Image.new("RGB", (32, 24), (255, 0, 0)))
    # BlurHash: 1 char size flag, 1 max AC, 4 chars DC = the average colour in base 83 (sRGB 24-bit)
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"
    dc = 0
    for ch in code[2:6]:
        dc = dc * 83 + digits.index(ch)
    assert dc == 0xFF0000 and code[0] == digits[(3 - 1) * 9 + (4 - 1)]  # 4x3 components


def test_a_placeholder_that_cannot_be_made_fails_nothing(tmp_path, caplog):
    src = make_flat_jpeg(tmp_path / "a.jpg", (10, 10, 10), 80, 60)
    result = render(str(src), targets(tmp_path / "t"), RenderSettings(OutputConfig(sizes=SIZES), 10**8))
    os.unlink(result.outputs[0][0])  # the smallest, gone before the placeholder is made
    assert placeholder.of(result, OutputConfig(placeholder="thumbhash")) is None
    assert "no thumbhash placeholder" in caplog.text


def test_remove_thumbnails_names_what_went(tmp_path, events):
    wanted = targets(tmp_path / "thumbs")
    make_flat_jpeg(wanted[0].path, (1, 2, 3))
    gone: list[str] = []
    assert remove_thumbnails(tuple(wanted), gone) == 1
    assert gone == [wanted[0].path]


def test_no_sink_no_events_and_every_event_carries_the_version(events):
    treeevents.failed("/p/a.jpg", "truncated")
    treeevents.removed([], why="deleted", photo="/p/b.jpg")  # nothing went: no event
    treeevents.moved("/p/x", "/p/y", [("small", "/t/x", "/t/y")])
    treeevents.set_sink(None)
    treeevents.failed("/p/c.jpg", "truncated")
    assert [(e["v"], e["event"]) for e in events] == [(1, "failed"), (1, "moved")]
    assert events[1]["thumbnails"] == [{"size": "small", "from": "/t/x", "to": "/t/y"}]
