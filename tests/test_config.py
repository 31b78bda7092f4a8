"""Config validation: good files load with defaults, bad ones are refused naming file and key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from watcher.config import ConfigError, load

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_shipped_config_loads_with_every_key_documented(tmp_path):
    config = load(REPO / "config" / "thumbwatch.yaml", base_dir=tmp_path)
    assert config.watch.paths == (tmp_path / "photos",)
    assert config.watch.create is True
    assert [s.name for s in config.output.sizes] == ["small"]
    shipped = (REPO / "config" / "thumbwatch.yaml").read_text()
    for section, values in config.effective().items():
        assert f"{section}:" in shipped
        for key in values:
            assert f"{key}:" in shipped, f"{section}.{key} is not documented in the shipped config"


def test_issue_shape_keeps_working(tmp_path):
    (tmp_path / "photos").mkdir()
    config = load(write(tmp_path, """
watch:
  paths: [photos]
  recursive: true
  patterns: ["*.jpg", "*.jpeg"]
  ignore: []
  observer: auto
output:
  dir: thumbs
  sizes:
    - {name: small, width: 75, height: 75}
  format: jpeg
  quality: 85
workers:
  count: auto
  queue_size: 1000
log:
  level: info
"""), base_dir=tmp_path)
    assert config.workers.count >= 1
    assert config.output.sizes[0].width == 75 and config.output.sizes[0].mode == "fit"
    assert config.output.dir == Path("thumbs")


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("watch: {paths: [photos], recursve: true}", "watch.recursve", "unknown key"),
        ("watch: {paths: [photos]}\nworkrs: {count: 2}", "workrs", "unknown key"),
        ("watch: {paths: [photos], recursive: 'yes'}", "watch.recursive", "true or false"),
        ("watch: {paths: [photos]}\nworkers: {count: two}", "workers.count", "auto or a whole number"),
        ("watch: {paths: [photos]}\nworkers: {queue_size: 0}", "workers.queue_size", "whole number"),
        ("watch: {paths: [photos]}\noutput: {quality: 101}", "output.quality", "from 1 to 100"),
        ("watch: {paths: [photos]}\noutput: {format: gif}", "output.format", "jpeg, webp, png"),
        ("watch: {paths: [photos]}\noutput: {sizes: [{name: s, width: -5, height: 5}]}", "output.sizes[0].width", "whole number"),
        ("watch: {paths: [photos]}\noutput: {sizes: [{width: 5, height: 5}]}", "output.sizes[0].name", "name"),
        ("watch: {paths: [photos]}\noutput: {sizes: [{name: a, width: 5, height: 5}, {name: a, width: 9, height: 9}]}", "output.sizes", "used twice"),
        ("watch: {paths: [photos]}\noutput: {sizes: [{name: s, width: 5, height: 5, template: '../{stem}'}]}", "output.sizes[0].template", "without '..'"),
        ("watch: {paths: [photos]}\noutput: {sizes: [{name: s, width: 5, height: 5, template: '{stem}.thumb'}]}", "output.sizes[0].template", "never share a thumbnail"),
        ("watch: {paths: [photos]}\noutput: {sizes: [{name: s, mode: fill, width: 5}]}", "output.sizes[0].height", "fill needs"),
        ("watch: {paths: [photos]}\noutput: {dir: ../elsewhere}", "output.dir", "no '..'"),
        ("watch: {paths: [nowhere]}", "watch.paths", "does not exist"),
        ("watch: {paths: []}", "watch.paths", "at least one"),
        ("watch: {paths: [photos]}\nlog: {level: loud}", "log.level", "debug, info"),
        ("watch: {paths: [photos]}\nlimits: {photo_timeout: 0}", "limits.photo_timeout", "greater than 0"),
        ("watch: [photos]", "watch", "mapping"),
    ],
)
def test_bad_values_are_refused_naming_file_and_key(tmp_path, text, key, expected):
    (tmp_path / "photos").mkdir()
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(path, base_dir=tmp_path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key}:"), message
    assert expected in message


def test_missing_folder_is_created_only_when_asked(tmp_path):
    config = load(write(tmp_path, "watch: {paths: [new/photos], create: true}"), base_dir=tmp_path)
    assert config.watch.paths == (tmp_path / "new" / "photos",)


def test_output_dir_holding_the_watched_folder_is_refused(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(ConfigError, match="output.dir"):
        load(write(tmp_path, f"watch: {{paths: [photos]}}\noutput: {{dir: {tmp_path}}}"), base_dir=tmp_path)


BOMB = "".join(f"{a}: &{a} [{', '.join([f'*{b}'] * 9)}]\n" for a, b in zip("bcdefghi", "abcdefgh"))


@pytest.mark.parametrize("text, expected", [
    ("watch:\n  paths: [photos]\n  recursive: true\n  recursive: false\n", "watch.recursive: given twice (lines 3 and 4)"),
    ("watch: {paths: [photos]}\nworkers: {count: 1}\nworkers: {count: 2}\n", "workers: given twice (lines 2 and 3)"),
    ("watch: {paths: [photos]}\noutput:\n  sizes:\n    - {name: a, width: 5,\n       width: 6}\n", "output.sizes[0].width: given twice (lines 4 and 5)"),
    ("a: &a [x, x, x, x, x, x, x, x, x]\n" + BOMB + "watch: {paths: *i}\n", "is it an alias bomb?"),
    ("watch: {paths: " + "[" * 5000 + "]" * 5000 + "}\n", "nested more than 32 deep"),
    ("watch: " + "{a: " * 200 + "1" + "}" * 200 + "\n", "nested more than 32 deep"),
    ("watch: &w {paths: [photos], x: *w}\n", "refers to the value holding it"),
])
def test_duplicate_keys_alias_bombs_and_deep_nesting_are_refused_in_one_line(tmp_path, text, expected):
    (tmp_path / "photos").mkdir()
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(path, base_dir=tmp_path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message and len(message) < 300, message


def test_merge_keys_and_a_few_aliases_still_load(tmp_path):
    (tmp_path / "photos").mkdir()
    config = load(write(tmp_path, """
watch: {paths: [photos]}
output:
  sizes:
    - &s {name: a, width: 64, height: 64}
    - {<<: *s, name: b, width: 128}
"""), base_dir=tmp_path)
    assert [(s.name, s.width, s.height) for s in config.output.sizes] == [("a", 64, 64), ("b", 128, 64)]


def test_a_huge_value_in_an_error_is_shortened(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, "watch: {paths: [photos]}\nworkers: {count: '" + "x" * 100_000 + "'}\n"), base_dir=tmp_path)
    assert "workers.count" in str(err.value) and len(str(err.value)) < 400


@pytest.mark.parametrize("out", [".", "./", "{root}", "{parent}", "{link_to_root}", "{link_to_parent}"])
def test_an_output_dir_that_is_or_holds_a_watched_folder_is_refused(tmp_path, out):
    root = tmp_path / "photos"
    root.mkdir()
    os.symlink(root, tmp_path / "link")
    os.symlink(tmp_path, root / "up")  # a relative output.dir through a symlink inside the folder
    out = out.format(root=root, parent=tmp_path, link_to_root=tmp_path / "link", link_to_parent="up")
    with pytest.raises(ConfigError, match="output.dir"):
        load(write(tmp_path, f"watch: {{paths: [photos]}}\noutput: {{dir: '{out}', sizes: [{{name: a, width: 5}}, {{name: b, width: 9}}]}}"), base_dir=tmp_path)


def test_a_watched_folder_inside_another_ones_thumbnails_is_refused(tmp_path):
    (tmp_path / "a" / "thumbs" / "b").mkdir(parents=True)
    os.symlink(tmp_path / "a" / "thumbs" / "b", tmp_path / "b")
    with pytest.raises(ConfigError, match="watch.paths|output.dir"):
        load(write(tmp_path, "watch: {paths: [a, b]}"), base_dir=tmp_path)


def test_output_dirs_beside_or_inside_the_watched_folder_still_load(tmp_path):
    (tmp_path / "photos").mkdir()
    for out in ("thumbs", "sub/thumbs", str(tmp_path / "thumbs"), str(tmp_path / "photos" / "thumbs")):
        load(write(tmp_path, f"watch: {{paths: [photos]}}\noutput: {{dir: '{out}'}}"), base_dir=tmp_path)


def test_yaml_syntax_error_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid YAML \(line 3\)"):
        load(write(tmp_path, "watch:\n  paths: [photos]\n   bad: 1\n"), base_dir=tmp_path)


def test_effective_config_round_trips(tmp_path):
    (tmp_path / "photos").mkdir()
    config = load(write(tmp_path, "watch: {paths: [photos]}\nworkers: {count: 3}"), base_dir=tmp_path)
    dumped = config.effective()
    assert dumped["workers"]["count"] == 3
    again = load(write(tmp_path, yaml.safe_dump(dumped)), base_dir=tmp_path)
    assert again.effective() == dumped


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "watcher", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_check_config_prints_effective_config(tmp_path):
    (tmp_path / "photos").mkdir()
    write(tmp_path, "watch: {paths: [photos]}")
    result = run_cli("check-config", "-c", "c.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["output"]["sizes"][0]["width"] == 75
    assert effective["watch"]["paths"] == [str(tmp_path / "photos")]


@pytest.mark.parametrize("command", ["check-config", "run", "scan"])
@pytest.mark.parametrize("text, key", [("watch: {paths: [photos], colour: red}", "watch.colour"), ("watch: {paths: [photos], recursive: 3}", "watch.recursive")])
def test_bad_config_exits_78_with_the_key_and_no_traceback(tmp_path, command, text, key):
    (tmp_path / "photos").mkdir()
    write(tmp_path, text)
    result = run_cli(command, "-c", "c.yaml", cwd=tmp_path)
    assert result.returncode == 78
    assert key in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_version(tmp_path):
    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("thumbwatch ")


def test_issue_5_output_shape_keeps_working(tmp_path):
    (tmp_path / "photos").mkdir()
    config = load(write(tmp_path, """
watch: {paths: [photos]}
output:
  style: files            # files (default) | freedesktop
  dir: thumbs
  metadata: none          # none (default) | exif-no-gps | all
  color: srgb             # srgb (default) | keep
  sizes:
    - {name: square, width: 75, height: 75, mode: fill}
    - {name: small, width: 256, height: 256}                 # mode: fit is the default
    - {name: web, width: 1024, mode: width, format: webp, quality: 80}
"""), base_dir=tmp_path)
    square, small, web = config.output.sizes
    assert (square.mode, small.mode, web.mode) == ("fill", "fit", "width")
    assert (web.format, web.quality, web.height) == ("webp", 80, None)
    assert config.output.metadata == "none" and config.output.color == "srgb"
    fd = load(write(tmp_path, "watch: {paths: [photos]}\noutput: {style: freedesktop}"), base_dir=tmp_path)
    assert fd.output.style == "freedesktop"


def test_a_file_that_leaves_every_key_out_gets_exactly_the_dataclass_defaults(tmp_path):
    """One source for every default (issue 18): the field on the dataclass. The parser must give a
    key the file leaves out that field's value, section by section and field by field."""
    from dataclasses import MISSING, fields

    from watcher.config import Config, SizeSpec

    (tmp_path / "photos").mkdir()
    config = load(write(tmp_path, "watch: {paths: [photos]}"), base_dir=tmp_path)
    compared = 0
    for section in fields(Config):
        if section.name == "source":
            continue
        parsed = getattr(config, section.name)
        for f in fields(type(parsed)):
            if f.default is MISSING and f.default_factory is MISSING:
                continue  # required (watch.paths)
            default = f.default if f.default is not MISSING else f.default_factory()
            assert getattr(parsed, f.name) == default, f"{section.name}.{f.name}: the parser and the dataclass disagree"
            compared += 1
    for size in config.output.sizes:  # the default size, field by field against SizeSpec's own defaults
        for f in fields(SizeSpec):
            if f.default is not MISSING:
                assert getattr(size, f.name) == f.default, f"output.sizes[0].{f.name}"
    assert compared >= 35


def test_workers_count_auto_is_the_default_and_means_one_worker_per_cpu(tmp_path):
    (tmp_path / "photos").mkdir()
    cpus = len(os.sched_getaffinity(0))
    left_out = load(write(tmp_path, "watch: {paths: [photos]}"), base_dir=tmp_path)
    auto = load(write(tmp_path, "watch: {paths: [photos]}\nworkers: {count: auto}"), base_dir=tmp_path)
    assert left_out.workers.count == auto.workers.count == cpus
    assert "count: auto" in (REPO / "config" / "thumbwatch.yaml").read_text(), "the shipped config says auto"


def test_the_default_size_takes_the_files_format_and_quality(tmp_path):
    (tmp_path / "photos").mkdir()
    config = load(write(tmp_path, "watch: {paths: [photos]}\noutput: {format: png, quality: 70}"), base_dir=tmp_path)
    (size,) = config.output.sizes
    assert (size.name, size.width, size.height, size.mode, size.format, size.quality) == ("small", 75, 75, "fit", "png", 70)
