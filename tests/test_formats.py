"""The format registry: which decoder serves each watch pattern, a pattern this install cannot
decode refused at start (exit 78, with the pip install to run), the decoder picked per file by
content (or by name where content cannot tell), optional libraries imported only when needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, library_missing, make_jpeg, write_config
from watcher.config import OutputConfig, SizeSpec
from watcher.paths import Target
from watcher.render import RenderError, RenderSettings, formats, render


def config_text(tmp_path: Path, patterns: str) -> Path:
    (tmp_path / "photos").mkdir(exist_ok=True)
    return write_config(tmp_path / "config.yaml", f"watch:\n  paths: [{tmp_path / 'photos'}]\n  patterns: {patterns}\n")


def test_patterns_name_formats_by_their_extension():
    names = lambda pattern: [f.name for f in formats.formats_named(pattern)]  # noqa: E731
    assert names("*.jpg") == names("*.JPEG") == names("*.jp*g") == names("IMG_*.jpe") == ["JPEG"]
    assert names("*.heic") == names("*.hif") == ["HEIF"]
    assert names("*.avif") == ["AVIF"]
    assert names("*.cr2") == names("*.dng") == ["camera RAW"]
    assert names("*.mov") == ["video"]
    assert names("*.tif*") == ["TIFF"]
    assert names("*") == names("IMG_*") == [f.name for f in formats.FORMATS]
    assert names("*.xyz") == []


def test_check_says_which_decoder_serves_each_pattern():
    lines = formats.check_patterns(["*.jpg", "*.png", "*.xyz"])
    assert lines[0] == "*.jpg: JPEG by Pillow"
    assert lines[1] == "*.png: PNG by Pillow"
    assert lines[2].startswith("*.xyz: no known photo extension")


def test_a_pattern_this_install_cannot_decode_is_refused_with_what_to_install():
    with library_missing("pillow_heif"):
        with pytest.raises(formats.UnservedPattern) as err:
            formats.check_patterns(["*.jpg", "*.heic"])
        assert str(err.value) == "'*.heic': HEIF needs pillow-heif: pip install 'thumbwatch[heif]'"
        # a pattern naming every format is accepted, and says what is missing
        (line,) = formats.check_patterns(["*"])
        assert "JPEG, PNG, WebP, GIF, TIFF, BMP by Pillow" in line
        assert "HEIF not here (pillow-heif: pip install 'thumbwatch[heif]')" in line
    for fmt in formats.FORMATS:  # whatever else this install lacks (RAW, video...) is refused the same way
        if fmt.decoder() is None:
            with pytest.raises(formats.UnservedPattern, match=r"needs .*: (pip install 'thumbwatch\[|not supported|a Pillow)"):
                formats.check_patterns([f"*{fmt.extensions[0]}"])


def test_a_library_installed_after_start_is_seen_by_the_next_check(monkeypatch):
    """A reload after `pip install 'thumbwatch[heif]'` must not refuse what is now installed."""
    pytest.importorskip("pillow_heif")
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # not installed, as Python sees it
    with pytest.raises(formats.UnservedPattern):
        formats.check_patterns(["*.heic"])
    monkeypatch.delitem(sys.modules, "pillow_heif")  # "installed" now; nobody clears the registry's memory
    assert formats.check_patterns(["*.heic"]) == ["*.heic: HEIF by pillow-heif"]


def test_the_config_refuses_it_naming_the_key(tmp_path):
    from watcher.config import ConfigError, load
    from watcher.render.formats import require_decoders

    path = config_text(tmp_path, '["*.jpg", "*.HEIC"]')
    with library_missing("pillow_heif"), pytest.raises(ConfigError) as err:
        require_decoders(load(path, base_dir=tmp_path))
    assert str(err.value) == (f"{path}: watch.patterns: a pattern this install cannot decode: "
                              "'*.heic': HEIF needs pillow-heif: pip install 'thumbwatch[heif]'")
    assert load(config_text(tmp_path, '["*.jpg"]'), base_dir=tmp_path).watch.patterns == ("*.jpg",)


def test_check_config_prints_the_decoders_and_exits_78_on_an_undecodable_pattern(tmp_path):
    path = config_text(tmp_path, '["*.jpg", "*.png"]')
    done = subprocess.run([sys.executable, "-m", "watcher", "check-config", "--config", str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "# watch.patterns: *.jpg: JPEG by Pillow\n" in done.stderr and "# watch.patterns: *.png: PNG by Pillow\n" in done.stderr
    code = ("import sys; sys.modules['pillow_heif'] = None\n"  # as if the heif extra were not installed
            "from watcher.cli import main; sys.exit(main(sys.argv[1:]))")
    path = config_text(tmp_path, '["*.jpg", "*.heic"]')
    done = subprocess.run([sys.executable, "-c", code, "check-config", "--config", str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 78
    assert done.stderr.strip().splitlines()[-1].endswith("'*.heic': HEIF needs pillow-heif: pip install 'thumbwatch[heif]'")
    assert "Traceback" not in done.stderr


def test_optional_libraries_are_imported_only_when_a_photo_needs_them(tmp_path):
    """The check at start looks for pillow-heif without importing it; rendering a JPEG does not
    import it either."""
    path = config_text(tmp_path, '["*.jpg", "*.heic"]')
    photo = make_jpeg(tmp_path / "photos" / "p.jpg")
    code = ("import sys\n"
            "from pathlib import Path\n"
            "from watcher.config import OutputConfig, SizeSpec, load\n"
            "from watcher.paths import Target\n"
            "from watcher.render import RenderSettings, render\n"
            f"load({str(path)!r}, base_dir=Path({str(tmp_path)!r}))\n"
            "size = SizeSpec(name='s', width=64, height=64)\n"
            f"render({str(photo)!r}, [Target(size, {str(tmp_path / 't.jpg')!r})], RenderSettings(OutputConfig(sizes=(size,)), 10**8))\n"
            "print(sorted(m for m in ('pillow_heif', 'rawpy', 'av') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert (tmp_path / "t.jpg").exists()


@pytest.mark.parametrize("name, kind, expected", [
    ("IMG_1.jpg", "jpeg", "JPEG"),
    ("IMG_1.heic", "jpeg", "JPEG"),  # content decides: a JPEG named .heic is a JPEG
    ("IMG_1.jpg", "heif", "HEIF"),  # and a HEIC named .jpg a HEIC
    ("IMG_1.DNG", "tiff", "camera RAW"),  # a DNG is a TIFF inside: the name decides
    ("IMG_1.CR3", "Canon CR3 raw", "camera RAW"),
    ("clip.MOV", "QuickTime video", "video"),
    ("clip.mp4", "text", "image"),  # plainly not a video: whoever opens it says what it is
    ("notes.heic", "text", "image"),
    ("x.bin", None, "image"),
])
def test_the_decoder_is_picked_by_content_or_by_name_where_content_cannot_tell(name, kind, expected):
    assert formats.format_for(name, kind).name == expected


def run_one(src: Path, tmp_path: Path) -> str:
    size = SizeSpec(name="s", width=64, height=64)
    with pytest.raises(RenderError) as err:
        render(str(src), [Target(size, str(tmp_path / "out" / "s.jpg"))], RenderSettings(OutputConfig(sizes=(size,)), 10**8))
    assert type(err.value) is RenderError
    return str(err.value)


def test_a_file_whose_decoder_is_missing_fails_with_what_to_install(tmp_path):
    src = tmp_path / "p.heic"
    src.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
    with library_missing("pillow_heif"):
        assert run_one(src, tmp_path) == "HEIF image (cannot be read; install thumbwatch[heif])"
    for fmt in (f for f in formats.FORMATS if f.by_extension and f.decoder() is None):
        other = tmp_path / f"x{fmt.extensions[0]}"
        make_jpeg(other)  # content a decoder could read: only the missing decoder stops it
        reason = run_one(other, tmp_path)
        assert reason.startswith(f"{fmt.name} {fmt.noun} (cannot be read; "), reason


def test_text_named_like_a_video_is_not_an_image(tmp_path):
    src = tmp_path / "clip.mp4"
    src.write_text("this is not a video\n")
    assert run_one(src, tmp_path) == "not an image (looks like text)"
