"""The YAML config: parsed with yaml.safe_load, checked key by key, frozen into dataclasses.

Every error is a ConfigError whose text names the file, the key and what was expected;
this module never logs and never reads argv.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

EX_CONFIG = 78

OBSERVERS = ("auto", "inotify", "polling")
STYLES = ("files", "freedesktop")
MODES = ("fit", "fill", "width", "height")
FORMATS = ("jpeg", "webp", "png")
METADATA = ("none", "exif-no-gps", "all")
COLORS = ("srgb", "keep")
SUBSAMPLINGS = ("4:2:0", "4:4:4")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
BACKENDS = ("local", "celery")
BROKER_SCHEMES = ("redis://", "rediss://", "unix://")
TEMPLATE_FIELDS = ("size", "stem", "ext", "dir")
SIZE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
COLOR_HEX = re.compile(r"^#[0-9A-Fa-f]{6}$")


class ConfigError(Exception):
    """A config that cannot be used; str(error) is the one line shown to the user."""


@dataclass(frozen=True)
class SizeSpec:
    name: str
    width: int | None
    height: int | None
    mode: str = "fit"
    format: str = "jpeg"
    quality: int = 85
    template: str = "{stem}{ext}"
    upscale: bool = False


@dataclass(frozen=True)
class WatchConfig:
    paths: tuple[Path, ...]
    recursive: bool = True
    patterns: tuple[str, ...] = ("*.jpg", "*.jpeg")
    ignore: tuple[str, ...] = ()
    observer: str = "auto"
    create: bool = False
    follow_symlinks: bool = False
    poll_interval: float = 2.0
    settle_seconds: float = 2.0
    rescan_interval: float = 3600.0


@dataclass(frozen=True)
class OutputConfig:
    style: str = "files"
    dir: Path = Path("thumbs")
    sizes: tuple[SizeSpec, ...] = ()
    format: str = "jpeg"
    quality: int = 85
    progressive: bool = False
    subsampling: str = "4:2:0"
    lossless: bool = False
    metadata: str = "none"
    color: str = "srgb"
    background: str = "#ffffff"
    delete_with_photo: bool = True
    embedded_preview: bool = False


@dataclass(frozen=True)
class WorkersConfig:
    count: int = 1
    queue_size: int = 1000
    drain_timeout: float = 30.0
    max_retries: int = 2
    backend: str = "local"


@dataclass(frozen=True)
class CeleryConfig:
    broker: str = "redis://127.0.0.1:6379/0"
    queue: str = "thumbwatch"
    visibility_timeout: float = 300.0  # s a render host may hold a photo before Redis hands it out again
    batch: int = 8  # photos per task, at most (catch-up publishes full batches)


@dataclass(frozen=True)
class LimitsConfig:
    max_pixels: int = 200_000_000
    photo_timeout: float = 60.0
    worker_memory_mb: int = 2048


@dataclass(frozen=True)
class StateConfig:
    dir: Path


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    file: Path | None = None
    format: str = "text"
    photos: str = "info"
    progress_interval: float = 10.0


@dataclass(frozen=True)
class MetricsConfig:
    port: int | None = None
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class Config:
    source: Path
    watch: WatchConfig
    output: OutputConfig
    workers: WorkersConfig
    limits: LimitsConfig
    state: StateConfig
    log: LogConfig
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    celery: CeleryConfig = field(default_factory=CeleryConfig)

    def effective(self) -> dict[str, Any]:
        """The config as plain YAML-able data, every default filled in."""
        return _plain(asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "source"}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def default_state_dir() -> Path:
    """systemd's StateDirectory= when it set one, else the XDG state folder."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(xdg) / "thumbwatch"


class _Section:
    """One mapping of the file, read key by key; leftover keys are refused on close()."""

    def __init__(self, file: Path, prefix: str, data: Any):
        self.file = file
        self.prefix = prefix
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.error(prefix.rstrip(".") or "(top level)", "expected a mapping", data)
        self.data = dict(data)

    def error(self, key: str, expected: str, got: Any = ...) -> ConfigError:
        text = f"{self.file}: {key}: {expected}"
        if got is not ...:
            text += f", got {got!r}"
        return ConfigError(text)

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def take(self, name: str, default: Any) -> Any:
        return self.data.pop(name, default)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.take(name, default)
        if not isinstance(value, bool):
            raise self.error(self.key(name), "expected true or false", value)
        return value

    def integer(self, name: str, default: Any, *, low: int, high: int | None = None) -> Any:
        value = self.take(name, default)
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(self.key(name), "expected a whole number", value)
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise self.error(self.key(name), f"expected a whole number {bounds}", value)
        return value

    def number(self, name: str, default: float, *, low: float, allow_zero: bool = False) -> float:
        value = self.take(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(self.key(name), "expected a number of seconds", value)
        if value < low or (value == 0 and not allow_zero and low == 0):
            raise self.error(self.key(name), f"expected a number greater than {low}", value)
        return float(value)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.take(name, default)
        if isinstance(value, str):
            value = value.lower()
        if value not in choices:
            raise self.error(self.key(name), "expected one of " + ", ".join(choices), value)
        return value

    def string(self, name: str, default: Any) -> Any:
        value = self.take(name, default)
        if value is None and default is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.error(self.key(name), "expected a non-empty string", value)
        return value

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.take(name, list(default))
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(self.key(name), "expected a list of strings", value)
        return tuple(value)

    def section(self, name: str) -> "_Section":
        return _Section(self.file, self.key(name) + ".", self.take(name, None))

    def close(self) -> None:
        if self.data:
            unknown = sorted(str(k) for k in self.data)
            raise self.error(self.key(unknown[0]), "unknown key (check the spelling against config/thumbwatch.yaml)")


def load(path: str | os.PathLike[str], *, base_dir: Path | None = None) -> Config:
    """Read, check and freeze the config at `path`. Relative paths resolve against base_dir (default: cwd)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{file}: cannot read: {err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{file}: not valid YAML{line}: {problem}") from None
    return parse(data, file=file, base_dir=base_dir or Path.cwd())


def parse(data: Any, *, file: Path, base_dir: Path) -> Config:
    top = _Section(file, "", data)
    watch = _parse_watch(top.section("watch"), base_dir)
    output = _parse_output(top.section("output"), base_dir)
    workers = _parse_workers(top.section("workers"))
    limits = _parse_limits(top.section("limits"))
    state = _parse_state(top.section("state"), base_dir)
    log = _parse_log(top.section("log"), base_dir)
    metrics = _parse_metrics(top.section("metrics"))
    celery = _parse_celery(top.section("celery"), limits)
    top.close()
    _check_output_outside_roots(top, watch, output)
    return Config(file, watch, output, workers, limits, state, log, metrics, celery)


def _resolve(base_dir: Path, raw: str) -> Path:
    return Path(os.path.abspath(base_dir / os.path.expanduser(raw)))


def _parse_watch(s: _Section, base_dir: Path) -> WatchConfig:
    raw_paths = s.strings("paths", ())
    if not raw_paths:
        raise s.error(s.key("paths"), "expected at least one folder to watch")
    create = s.boolean("create", False)
    paths = []
    for raw in raw_paths:
        path = _resolve(base_dir, raw)
        if path in paths:
            raise s.error(s.key("paths"), f"folder listed twice: {raw}")
        if path.exists() and not path.is_dir():
            raise s.error(s.key("paths"), f"expected a folder, but {path} is not one")
        if not path.exists() and not create:
            raise s.error(s.key("paths"), f"folder {path} does not exist (create it, or set watch.create: true)")
        paths.append(path)
    for a in paths:
        for b in paths:
            if a != b and b.is_relative_to(a):
                raise s.error(s.key("paths"), f"{b} lies inside {a}; list only the outer folder")
    watch = WatchConfig(
        paths=tuple(paths),
        recursive=s.boolean("recursive", True),
        patterns=tuple(p.lower() for p in s.strings("patterns", ("*.jpg", "*.jpeg"))),
        ignore=s.strings("ignore", ()),
        observer=s.choice("observer", "auto", OBSERVERS),
        create=create,
        follow_symlinks=s.boolean("follow_symlinks", False),
        poll_interval=s.number("poll_interval", 2.0, low=0.1),
        settle_seconds=s.number("settle_seconds", 2.0, low=0.0, allow_zero=True),
        rescan_interval=s.number("rescan_interval", 3600.0, low=0.0, allow_zero=True),
    )
    s.close()
    return watch


def _parse_output(s: _Section, base_dir: Path) -> OutputConfig:
    style = s.choice("style", "files", STYLES)
    raw_dir = s.string("dir", "thumbs")
    expanded = os.path.expanduser(raw_dir)
    if os.path.isabs(expanded):
        out_dir = Path(os.path.abspath(expanded))
    else:
        if ".." in Path(expanded).parts:
            raise s.error(s.key("dir"), "expected a folder name inside each watched folder (no '..'), or an absolute path", raw_dir)
        out_dir = Path(os.path.normpath(expanded))
    fmt = s.choice("format", "jpeg", FORMATS)
    quality = s.integer("quality", 85, low=1, high=100)
    raw_sizes = s.take("sizes", None)
    if raw_sizes is None:
        raw_sizes = [{"name": "small", "width": 75, "height": 75}]
    if not isinstance(raw_sizes, list) or not raw_sizes:
        raise s.error(s.key("sizes"), "expected a list of sizes like {name: small, width: 256, height: 256}", raw_sizes)
    sizes = tuple(_parse_size(s, i, raw, fmt, quality) for i, raw in enumerate(raw_sizes))
    names = [size.name for size in sizes]
    for name in names:
        if names.count(name) > 1:
            raise s.error(s.key("sizes"), f"size name {name!r} is used twice")
    output = OutputConfig(
        style=style,
        dir=out_dir,
        sizes=sizes,
        format=fmt,
        quality=quality,
        progressive=s.boolean("progressive", False),
        subsampling=s.choice("subsampling", "4:2:0", SUBSAMPLINGS),
        lossless=s.boolean("lossless", False),
        metadata=s.choice("metadata", "none", METADATA),
        color=s.choice("color", "srgb", COLORS),
        background=_color(s, "background", "#ffffff"),
        delete_with_photo=s.boolean("delete_with_photo", True),
        embedded_preview=s.boolean("embedded_preview", False),
    )
    s.close()
    return output


def _color(s: _Section, name: str, default: str) -> str:
    value = s.take(name, default)
    if not isinstance(value, str) or not COLOR_HEX.match(value):
        raise s.error(s.key(name), "expected a colour like '#ffffff'", value)
    return value.lower()


def _parse_size(parent: _Section, index: int, raw: Any, fmt: str, quality: int) -> SizeSpec:
    s = _Section(parent.file, f"{parent.key('sizes')}[{index}].", raw)
    name = s.string("name", None)
    if name is None:
        raise s.error(s.key("name"), "expected a name for this size (it names the size's folder)")
    if not SIZE_NAME.match(name):
        raise s.error(s.key("name"), "expected letters, digits, '.', '_' or '-' (it becomes a folder name)", name)
    width = s.integer("width", None, low=1, high=20000)
    height = s.integer("height", None, low=1, high=20000)
    default_mode = "fit"
    if width is not None and height is None:
        default_mode = "width"
    elif height is not None and width is None:
        default_mode = "height"
    mode = s.choice("mode", default_mode, MODES)
    need = {"fit": ("width", "height"), "fill": ("width", "height"), "width": ("width",), "height": ("height",)}[mode]
    for key in need:
        if {"width": width, "height": height}[key] is None:
            raise s.error(s.key(key), f"expected a whole number of pixels (mode {mode} needs {' and '.join(need)})")
    template = s.string("template", "{stem}{ext}")
    _check_template(s, template)
    size = SizeSpec(
        name=name,
        width=width,
        height=height,
        mode=mode,
        format=s.choice("format", fmt, FORMATS),
        quality=s.integer("quality", quality, low=1, high=100),
        template=template,
        upscale=s.boolean("upscale", False),
    )
    s.close()
    return size


def _check_template(s: _Section, template: str) -> None:
    try:
        sample = template.format(size="s", stem="x", ext=".jpg", dir="d")
    except (KeyError, IndexError, ValueError):
        raise s.error(s.key("template"), "expected only the placeholders {" + "}, {".join(TEMPLATE_FIELDS) + "}", template) from None
    if os.path.isabs(sample) or ".." in Path(sample).parts or "{stem}" not in template:
        raise s.error(s.key("template"), "expected a relative name containing {stem}, without '..'", template)


def _parse_workers(s: _Section) -> WorkersConfig:
    raw_count = s.take("count", "auto")
    if raw_count == "auto":
        count = len(os.sched_getaffinity(0)) or 1
    elif isinstance(raw_count, int) and not isinstance(raw_count, bool) and 1 <= raw_count <= 256:
        count = raw_count
    else:
        raise s.error(s.key("count"), "expected auto or a whole number from 1 to 256", raw_count)
    workers = WorkersConfig(
        count=count,
        queue_size=s.integer("queue_size", 1000, low=1, high=10_000_000),
        drain_timeout=s.number("drain_timeout", 30.0, low=0.0),
        max_retries=s.integer("max_retries", 2, low=0, high=100),
        backend=s.choice("backend", "local", BACKENDS),
    )
    s.close()
    return workers


def _parse_limits(s: _Section) -> LimitsConfig:
    limits = LimitsConfig(
        max_pixels=s.integer("max_pixels", 200_000_000, low=1),
        photo_timeout=s.number("photo_timeout", 60.0, low=0.0),
        worker_memory_mb=s.integer("worker_memory_mb", 2048, low=0),
    )
    if 0 < limits.worker_memory_mb < 200:
        raise s.error(s.key("worker_memory_mb"), "expected 0 (no cap) or at least 200 (a worker needs ~100 MB to start)", limits.worker_memory_mb)
    s.close()
    return limits


def _parse_state(s: _Section, base_dir: Path) -> StateConfig:
    raw = s.string("dir", None)
    state = StateConfig(dir=_resolve(base_dir, raw) if raw else default_state_dir())
    s.close()
    return state


def _parse_log(s: _Section, base_dir: Path) -> LogConfig:
    raw_file = s.string("file", None)
    log = LogConfig(
        level=s.choice("level", "info", LOG_LEVELS),
        file=_resolve(base_dir, raw_file) if raw_file else None,
        format=s.choice("format", "text", LOG_FORMATS),
        photos=s.choice("photos", "info", LOG_LEVELS[:2]),
        progress_interval=s.number("progress_interval", 10.0, low=0.0, allow_zero=True),
    )
    s.close()
    return log


def _parse_metrics(s: _Section) -> MetricsConfig:
    metrics = MetricsConfig(
        port=s.integer("port", None, low=1, high=65535),
        host=s.string("host", "127.0.0.1"),
    )
    s.close()
    return metrics


def _parse_celery(s: _Section, limits: LimitsConfig) -> CeleryConfig:
    broker = s.string("broker", CeleryConfig.broker)
    if not broker.startswith(BROKER_SCHEMES):
        raise s.error(s.key("broker"), "expected a Redis URL like redis://127.0.0.1:6379/0 (or rediss://, unix://)", broker)
    queue = s.string("queue", CeleryConfig.queue)
    if not SIZE_NAME.match(queue):
        raise s.error(s.key("queue"), "expected letters, digits, '.', '_' or '-'", queue)
    celery = CeleryConfig(
        broker=broker,
        queue=queue,
        visibility_timeout=s.number("visibility_timeout", CeleryConfig.visibility_timeout, low=1.0),
        batch=s.integer("batch", CeleryConfig.batch, low=1, high=1000),
    )
    if celery.visibility_timeout < 2 * limits.photo_timeout:
        raise s.error(s.key("visibility_timeout"), f"expected at least 2 x limits.photo_timeout = {2 * limits.photo_timeout:g} s (a photo held longer would run twice at once)", celery.visibility_timeout)
    s.close()
    return celery


def _check_output_outside_roots(top: _Section, watch: WatchConfig, output: OutputConfig) -> None:
    if not output.dir.is_absolute():
        return
    for root in watch.paths:
        if root.is_relative_to(output.dir):
            raise top.error("output.dir", f"expected a folder outside the watched folder {root}, not one holding it", str(output.dir))
    names = [root.name for root in watch.paths]
    if len(watch.paths) > 1 and len(set(names)) != len(names):
        raise top.error("watch.paths", "with an absolute output.dir, watched folders need distinct last names (each gets output.dir/<name>/)")


def dump(config: Config) -> str:
    return yaml.safe_dump(config.effective(), sort_keys=False, allow_unicode=True)
