"""The YAML config: parsed with yaml.safe_load, checked key by key, frozen into dataclasses.

Every error is a ConfigError whose text names the file, the key and what was expected;
this module never logs and never reads argv. Each default is written once, on its dataclass
field; the parser reads it from there (a key left out of the file gets the field's default).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .configfile import ConfigError, Section, check_writable, read_yaml  # noqa: F401 (ConfigError: callers import it from here)
from .hooksconfig import HooksConfig, parse_hooks, parse_placeholder

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


def default_state_dir() -> Path:
    """systemd's StateDirectory= when it set one, else the XDG state folder."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(xdg) / "thumbwatch"


def cpu_count() -> int:
    """workers.count: auto, the default: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) or 1


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
    poll_budget: float = 1000.0  # files re-stat'ed per second by the poller's sweep (in-place rewrites)
    settle_seconds: float = 2.0
    rescan_interval: float = 3600.0


@dataclass(frozen=True)
class OutputConfig:
    style: str = "files"
    dir: Path = Path("thumbs")
    sizes: tuple[SizeSpec, ...] = (SizeSpec("small", 75, 75),)
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
    confirm_mass_removal: bool = True  # hold a sweep of most of a root's thumbnails (roots.py)
    placeholder: str = "none"  # thumbhash | blurhash: a tiny preview in each "rendered" event (hooks)


@dataclass(frozen=True)
class WorkersConfig:
    count: int = field(default_factory=cpu_count)  # "auto" in the file
    queue_size: int = 1000
    drain_timeout: float = 30.0
    max_retries: int = 2
    backend: str = "local"


@dataclass(frozen=True)
class CeleryConfig:
    broker: str = "redis://127.0.0.1:6379/0"
    queue: str = "thumbwatch"
    visibility_timeout: float = 300.0  # s a render host may hold a photo before Redis hands it out again
    batch: int = 16  # photos per task, at most (catch-up publishes full batches); 8 misses 6,000/s under load


@dataclass(frozen=True)
class LimitsConfig:
    max_pixels: int = 200_000_000
    photo_timeout: float = 60.0
    worker_memory_mb: int = 2048


@dataclass(frozen=True)
class StateConfig:
    dir: Path = field(default_factory=default_state_dir)


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
    hooks: HooksConfig = field(default_factory=HooksConfig)

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


def load(path: str | os.PathLike[str], *, base_dir: Path | None = None) -> Config:
    """Read, check and freeze the config at `path`. Relative paths resolve against base_dir (default: cwd)."""
    file = Path(path)
    return parse(read_yaml(file), file=file, base_dir=base_dir or Path.cwd())


def parse(data: Any, *, file: Path, base_dir: Path) -> Config:
    top = Section(file, "", data)
    watch, missing = _parse_watch(top.section("watch", WatchConfig), base_dir)
    output = _parse_output(top.section("output", OutputConfig), base_dir)
    workers = _parse_workers(top.section("workers", WorkersConfig))
    limits = _parse_limits(top.section("limits", LimitsConfig))
    state = _parse_state(top.section("state", StateConfig), base_dir)
    if missing:  # unless the last run watched them: a mount not there yet, waited for (roots.py)
        from .roots import remembered

        known = remembered(state.dir)
        for error in missing:
            if error.args[1] not in known:
                raise ConfigError(error.args[0])
    log = _parse_log(top.section("log", LogConfig), base_dir)
    metrics = _parse_metrics(top.section("metrics", MetricsConfig))
    celery = _parse_celery(top.section("celery", CeleryConfig), limits)
    hooks = parse_hooks(top.section("hooks", HooksConfig), base_dir)
    top.close()
    _check_output_outside_roots(top, watch, output)
    _check_under_system_unit(top, output, state)
    return Config(file, watch, output, workers, limits, state, log, metrics, celery, hooks)


def _resolve(base_dir: Path, raw: str) -> Path:
    return Path(os.path.abspath(base_dir / os.path.expanduser(raw)))


def _parse_watch(s: Section, base_dir: Path) -> tuple[WatchConfig, list[ConfigError]]:
    raw_paths = s.strings("paths", ())  # no default: required
    if not raw_paths:
        raise s.error(s.key("paths"), "expected at least one folder to watch")
    create = s.boolean("create")
    paths = []
    missing: list[ConfigError] = []
    for raw in raw_paths:
        path = _resolve(base_dir, raw)
        if path in paths:
            raise s.error(s.key("paths"), f"folder listed twice: {raw}")
        try:
            exists, is_dir = path.exists(), path.is_dir()
        except OSError:  # there, out of reach (ENOTCONN, ESTALE, EIO): roots.py says so and waits
            exists = is_dir = True
        if exists and not is_dir:
            raise s.error(s.key("paths"), f"expected a folder, but {path} is not one")
        if not exists and not create:
            error = s.error(s.key("paths"), f"folder {path} does not exist (create it, or set watch.create: true)")
            missing.append(ConfigError(str(error), str(path)))
        paths.append(path)
    for a in paths:
        for b in paths:
            if a != b and Path(os.path.realpath(b)).is_relative_to(os.path.realpath(a)):
                raise s.error(s.key("paths"), f"{b} lies inside {a} (symlinks resolved); list only the outer folder")
    watch = WatchConfig(
        paths=tuple(paths),
        recursive=s.boolean("recursive"),
        patterns=tuple(p.lower() for p in s.strings("patterns")),
        ignore=s.strings("ignore"),
        observer=s.choice("observer", OBSERVERS),
        create=create,
        follow_symlinks=s.boolean("follow_symlinks"),
        poll_interval=s.number("poll_interval", low=0.1),
        poll_budget=s.number("poll_budget", low=1.0),
        settle_seconds=s.number("settle_seconds", low=0.0, allow_zero=True),
        rescan_interval=s.number("rescan_interval", low=0.0, allow_zero=True),
    )
    s.close()  # whether this install can decode each pattern: render.formats.require_decoders
    return watch, missing


def _parse_output(s: Section, base_dir: Path) -> OutputConfig:
    style = s.choice("style", STYLES)
    raw_dir = s.string("dir", str(s.default("dir")))
    expanded = os.path.expanduser(raw_dir)
    if os.path.isabs(expanded):
        out_dir = Path(os.path.abspath(expanded))
    else:
        if ".." in Path(expanded).parts:
            raise s.error(s.key("dir"), "expected a folder name inside each watched folder (no '..'), or an absolute path", raw_dir)
        out_dir = Path(os.path.normpath(expanded))
    fmt = s.choice("format", FORMATS)
    quality = s.integer("quality", low=1, high=100)
    raw_sizes = s.take("sizes", None)
    if raw_sizes is None:  # the default sizes, with this file's format and quality
        raw_sizes = [_raw_size(spec) for spec in s.default("sizes")]
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
        progressive=s.boolean("progressive"),
        subsampling=s.choice("subsampling", SUBSAMPLINGS),
        lossless=s.boolean("lossless"),
        metadata=s.choice("metadata", METADATA),
        color=s.choice("color", COLORS),
        background=_color(s, "background"),
        delete_with_photo=s.boolean("delete_with_photo"),
        embedded_preview=s.boolean("embedded_preview"),
        confirm_mass_removal=s.boolean("confirm_mass_removal"),
        placeholder=parse_placeholder(s),
    )
    s.close()
    return output


def _raw_size(spec: SizeSpec) -> dict[str, Any]:
    """A default size as the file would write it: format and quality left to the output's."""
    return {f.name: getattr(spec, f.name) for f in fields(SizeSpec) if f.name not in ("format", "quality")}


def _color(s: Section, name: str) -> str:
    value = s.take(name)
    if not isinstance(value, str) or not COLOR_HEX.match(value):
        raise s.error(s.key(name), "expected a colour like '#ffffff'", value)
    return value.lower()


def _parse_size(parent: Section, index: int, raw: Any, fmt: str, quality: int) -> SizeSpec:
    s = Section(parent.file, f"{parent.key('sizes')}[{index}].", raw, SizeSpec)
    name = s.string("name", None)
    if name is None:
        raise s.error(s.key("name"), "expected a name for this size (it names the size's folder)")
    if not SIZE_NAME.match(name):
        raise s.error(s.key("name"), "expected letters, digits, '.', '_' or '-' (it becomes a folder name)", name)
    width = s.integer("width", None, low=1, high=20000)
    height = s.integer("height", None, low=1, high=20000)
    default_mode = s.default("mode")  # with both sides given; with one, that side is the mode
    if width is not None and height is None:
        default_mode = "width"
    elif height is not None and width is None:
        default_mode = "height"
    mode = s.choice("mode", MODES, default_mode)
    need = {"fit": ("width", "height"), "fill": ("width", "height"), "width": ("width",), "height": ("height",)}[mode]
    for key in need:
        if {"width": width, "height": height}[key] is None:
            raise s.error(s.key(key), f"expected a whole number of pixels (mode {mode} needs {' and '.join(need)})")
    template = s.string("template")
    _check_template(s, template)
    size = SizeSpec(
        name=name,
        width=width,
        height=height,
        mode=mode,
        format=s.choice("format", FORMATS, fmt),  # each size inherits the output's format and quality
        quality=s.integer("quality", quality, low=1, high=100),
        template=template,
        upscale=s.boolean("upscale"),
    )
    s.close()
    return size


def _check_template(s: Section, template: str) -> None:
    try:
        sample = template.format(size="s", stem="x", ext=".jpg", dir="d")
    except (KeyError, IndexError, ValueError):
        raise s.error(s.key("template"), "expected only the placeholders {" + "}, {".join(TEMPLATE_FIELDS) + "}", template) from None
    if os.path.isabs(sample) or ".." in Path(sample).parts or "{stem}" not in template:
        raise s.error(s.key("template"), "expected a relative name containing {stem}, without '..'", template)
    if "{ext}" not in template:
        raise s.error(s.key("template"), "expected {ext} in it too, so that x.jpg and x.jpeg never share a thumbnail", template)


def _parse_workers(s: Section) -> WorkersConfig:
    raw_count = s.take("count", "auto")
    if raw_count == "auto":  # the field's default: one worker per CPU
        count = s.default("count")
    elif isinstance(raw_count, int) and not isinstance(raw_count, bool) and 1 <= raw_count <= 256:
        count = raw_count
    else:
        raise s.error(s.key("count"), "expected auto or a whole number from 1 to 256", raw_count)
    workers = WorkersConfig(
        count=count,
        queue_size=s.integer("queue_size", low=1, high=10_000_000),
        drain_timeout=s.number("drain_timeout", low=0.0),
        max_retries=s.integer("max_retries", low=0, high=100),
        backend=s.choice("backend", BACKENDS),
    )
    s.close()
    return workers


def _parse_limits(s: Section) -> LimitsConfig:
    limits = LimitsConfig(
        max_pixels=s.integer("max_pixels", low=1),
        photo_timeout=s.number("photo_timeout", low=0.0),
        worker_memory_mb=s.integer("worker_memory_mb", low=0),
    )
    if 0 < limits.worker_memory_mb < 200:
        raise s.error(s.key("worker_memory_mb"), "expected 0 (no cap) or at least 200 (a worker needs ~100 MB to start)", limits.worker_memory_mb)
    s.close()
    return limits


def _parse_state(s: Section, base_dir: Path) -> StateConfig:
    raw = s.string("dir", None)
    state = StateConfig(dir=_resolve(base_dir, raw) if raw else s.default("dir"))
    s.close()
    return state


def _parse_log(s: Section, base_dir: Path) -> LogConfig:
    raw_file = s.string("file")
    log = LogConfig(
        level=s.choice("level", LOG_LEVELS),
        file=_resolve(base_dir, raw_file) if raw_file else None,
        format=s.choice("format", LOG_FORMATS),
        photos=s.choice("photos", LOG_LEVELS[:2]),
        progress_interval=s.number("progress_interval", low=0.0, allow_zero=True),
    )
    s.close()
    return log


def _parse_metrics(s: Section) -> MetricsConfig:
    metrics = MetricsConfig(
        port=s.integer("port", low=1, high=65535),
        host=s.string("host"),
    )
    s.close()
    return metrics


def _parse_celery(s: Section, limits: LimitsConfig) -> CeleryConfig:
    broker = s.string("broker")
    if not broker.startswith(BROKER_SCHEMES):
        raise s.error(s.key("broker"), "expected a Redis URL like redis://127.0.0.1:6379/0 (or rediss://, unix://)", broker)
    queue = s.string("queue")
    if not SIZE_NAME.match(queue):
        raise s.error(s.key("queue"), "expected letters, digits, '.', '_' or '-'", queue)
    celery = CeleryConfig(
        broker=broker,
        queue=queue,
        visibility_timeout=s.number("visibility_timeout", low=1.0),
        batch=s.integer("batch", low=1, high=1000),
    )
    if celery.visibility_timeout < 2 * limits.photo_timeout:
        raise s.error(s.key("visibility_timeout"), f"expected at least 2 x limits.photo_timeout = {2 * limits.photo_timeout:g} s (a photo held longer would run twice at once)", celery.visibility_timeout)
    s.close()
    return celery


def _check_under_system_unit(top: Section, output: OutputConfig, state: StateConfig) -> None:
    """What cannot work under the shipped system units: they set THUMBWATCH_UNIT=system and
    StateDirectory= (the only writable state folder under ProtectSystem=strict)."""
    if os.environ.get("THUMBWATCH_UNIT") == "system" and output.style == "freedesktop":
        raise top.error("output.style", "expected files under the system unit: freedesktop thumbnails belong in a desktop "
                        "user's own cache, so run the user unit (systemd/user/thumbwatch.service, systemctl --user) for them",
                        output.style)
    granted = [Path(d) for d in os.environ.get("STATE_DIRECTORY", "").split(":") if d]
    if granted and state.dir not in granted:
        raise top.error("state.dir", f"expected the unit's StateDirectory= {granted[0]} (the only state folder it may write)", str(state.dir))


def _check_output_outside_roots(top: Section, watch: WatchConfig, output: OutputConfig) -> None:
    """No watched folder may be, or lie inside, a thumbnail tree: thumbnails would be taken for
    photos (thumbnails of thumbnails without end) or, with one size, every photo for output.
    Compared with symlinks resolved, as the kernel will see them."""
    if output.style == "freedesktop":
        return
    if output.dir == Path("."):
        raise top.error("output.dir", "expected a subfolder name such as thumbs, not the watched folder itself "
                        "(its thumbnails would be taken for new photos)", ".")
    if output.dir.is_absolute():
        for root in watch.paths:
            if root.is_relative_to(output.dir):
                raise top.error("output.dir", f"expected a folder outside the watched folder {root}, not one holding it", str(output.dir))
    several = len(watch.paths) > 1
    for root in watch.paths:
        if output.dir.is_absolute():
            tree = output.dir / root.name if several else output.dir
        else:
            tree = root / output.dir
        real_tree = Path(os.path.realpath(tree))
        for other in watch.paths:
            real_other = Path(os.path.realpath(other))
            if real_other.is_relative_to(real_tree):
                through = "" if real_tree == tree else f" (through a symlink, {tree} is {real_tree})"
                raise top.error("output.dir", f"thumbnails of {root} would go to {tree}{through}, which holds the watched folder {other}; "
                                "expected a folder outside every watched folder's tree", str(output.dir))
    names = [root.name for root in watch.paths]
    if len(watch.paths) > 1 and len(set(names)) != len(names):
        raise top.error("watch.paths", "with an absolute output.dir, watched folders need distinct last names (each gets output.dir/<name>/)")


def check_folders(config: Config) -> None:
    """The state folder and the log file can be made and written, before anything starts:
    a ConfigError naming the key and the folder otherwise. Creates nothing."""
    check_writable(config.source, "state.dir", config.state.dir, folder=True)
    if config.log.file is not None:
        check_writable(config.source, "log.file", config.log.file, folder=False)


# What a reload cannot change in a running daemon (key prefixes): said, and left for a restart.
RESTART_NEEDED = ("state.", "watch.observer", "metrics.", "workers.backend", "celery.", "hooks.")


def changes(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """What differs between two configs ("key: old -> new"), and which of those only a restart applies."""
    changed = _diff(old.effective(), new.effective())
    return changed, [c for c in changed if c.startswith(RESTART_NEEDED)]


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed.extend(_diff(a, b, f"{prefix}{key}."))
        elif a != b:
            changed.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changed


def dump(config: Config) -> str:
    return yaml.safe_dump(config.effective(), sort_keys=False, allow_unicode=True)
