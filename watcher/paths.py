"""Which files are photos to us, and where each photo's thumbnails go.

Shared by the event handler, the catch-up scan and the master, so that all three agree on
what counts and where it lands. Pure path arithmetic: no file is opened here.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import freedesktop
from .config import Config, SizeSpec

# Names that editors, browsers, rsync and uploaders use while a file is still being written.
TEMP_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial", ".download", "~")
TEMP_PREFIX = ".tw-"  # our own temp outputs: .tw-<pid>-<name>.tmp
FORMAT_EXT = {"jpeg": ".jpg", "webp": ".webp", "png": ".png"}
JPEG_EXTS = (".jpg", ".jpeg", ".jpe", ".jfif")


@dataclass(frozen=True)
class Target:
    """One thumbnail to write: which size, and its final path."""

    size: SizeSpec
    path: str


def is_temp_name(name: str) -> bool:
    """Hidden files (rsync's .name.XXXXXX, ours) and the usual partial-download suffixes."""
    return name.startswith(".") or name.lower().endswith(TEMP_SUFFIXES)


class PathRules:
    """The filter and the mapping for one config."""

    def __init__(self, config: Config):
        self.config = config
        self.roots = tuple(str(p) for p in config.watch.paths)
        self._patterns = [re.compile(fnmatch.translate(p), re.IGNORECASE) for p in config.watch.patterns]
        self._ignore = [re.compile(fnmatch.translate(p), re.IGNORECASE) for p in config.watch.ignore]
        self.output_roots = tuple(self._output_root(root) for root in self.roots)

    def root_of(self, path: str) -> str | None:
        for root in self.roots:
            if path == root or path.startswith(root + os.sep):
                return root
        return None

    def _output_root(self, root: str) -> str:
        out = self.config.output.dir
        if not out.is_absolute():
            return os.path.join(root, str(out))
        if len(self.roots) == 1:
            return str(out)
        return os.path.join(str(out), os.path.basename(root))

    def is_output(self, path: str) -> bool:
        """True for anything inside one of our output trees: never queue our own thumbnails."""
        if self.config.output.style == "freedesktop":
            return path.startswith(str(freedesktop.cache_root()) + os.sep)
        return any(path == o or path.startswith(o + os.sep) for o in self.output_roots)

    def wants(self, path: str) -> bool:
        """Does this path name a photo we should thumbnail (by name alone)?"""
        root = self.root_of(path)
        if root is None or path == root or self.is_output(path):
            return False
        rel = path[len(root) + 1 :]
        parts = rel.split(os.sep)
        if not self.config.watch.recursive and len(parts) > 1:
            return False
        if any(is_temp_name(part) for part in parts):
            return False
        name = parts[-1]
        if not any(p.match(name) for p in self._patterns):
            return False
        return not any(p.match(name) or p.match(rel) for p in self._ignore)

    def wants_dir(self, path: str) -> bool:
        """Should a walk descend into this folder?"""
        root = self.root_of(path)
        if root is None or self.is_output(path):
            return False
        if path == root:
            return True
        if not self.config.watch.recursive:
            return False
        rel = path[len(root) + 1 :]
        if any(part.startswith(".") for part in rel.split(os.sep)):
            return False
        return not any(p.match(rel) or p.match(os.path.basename(path)) for p in self._ignore)

    def targets(self, photo: str) -> tuple[Target, ...]:
        """Every thumbnail path for a photo inside one of the watched folders."""
        output = self.config.output
        if output.style == "freedesktop":
            return tuple(Target(size, str(freedesktop.thumbnail_path(photo, size.name))) for size in freedesktop.SIZES)
        root = self.root_of(photo)
        assert root is not None, photo
        out_root = self.output_roots[self.roots.index(root)]
        rel_dir, name = os.path.split(photo[len(root) + 1 :])
        stem, src_ext = os.path.splitext(name)
        several = len(output.sizes) > 1
        targets = []
        for size in output.sizes:
            ext = src_ext if size.format == "jpeg" and src_ext.lower() in JPEG_EXTS else FORMAT_EXT[size.format]
            base = os.path.join(out_root, size.name) if several else out_root
            rel = size.template.format(size=size.name, stem=stem, ext=ext, dir=rel_dir or ".")
            if "{dir}" not in size.template:
                rel = os.path.join(rel_dir, rel)
            targets.append(Target(size, os.path.normpath(os.path.join(base, rel))))
        return tuple(targets)

    def temp_dirs(self) -> tuple[str, ...]:
        """Where stale temp outputs of a crashed run can be (cleaned at start)."""
        if self.config.output.style == "freedesktop":
            return tuple(str(freedesktop.cache_root() / size.name) for size in freedesktop.SIZES)
        return self.output_roots


def temp_path_for(final: str, pid: int | None = None) -> str:
    """A temp name beside the final path: same folder (so rename is atomic), hidden, ours, and
    naming the writing process, so the master can remove what a killed worker left behind."""
    folder, name = os.path.split(final)
    return os.path.join(folder, f"{TEMP_PREFIX}{pid or os.getpid()}-{name}.tmp")


def is_our_temp(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(".tmp")


def inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def relative_to_root(path: str, root: str) -> Path:
    return Path(path).relative_to(root)


def shown(path: str) -> str:
    """A path for a log line: undecodable bytes and control characters (a newline in a name)
    escaped, so one photo stays one line."""
    text = path.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)
