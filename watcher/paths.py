"""Which files are photos to us, and where each photo's thumbnails go.

Shared by the event handler, the catch-up scan and the master, so that all three agree on
what counts and where it lands. Pure path arithmetic: no file is opened here.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import socket
import time
from dataclasses import dataclass

from . import freedesktop
from .config import Config, SizeSpec

# Names that editors, browsers, rsync and uploaders use while a file is still being written.
TEMP_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial", ".download", "~")
TEMP_PREFIX = ".tw-"  # our own temp outputs: .tw-<pid>-<host>~<name>.tmp
FORMAT_EXT = {"jpeg": ".jpg", "webp": ".webp", "png": ".png"}
JPEG_EXTS = (".jpg", ".jpeg", ".jpe", ".jfif")
# The photo extensions a format keeps as they are: a JPEG photo with JPEG output keeps its name.
OWN_EXTS = {"jpeg": JPEG_EXTS, "webp": (".webp",), "png": (".png",)}


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
        # Can a name without a dot be a photo? Not with patterns like *.jpg ("[.]" is a dot too).
        self.dotless_photos = any("." not in p or "[" in p for p in config.watch.patterns)
        self.output_roots = tuple(self._output_root(root) for root in self.roots)
        self._folders: dict[str, FolderRules] = {}
        self._real_roots: dict[str, str] = {}
        self._real_outputs: tuple[str, ...] | None = None
        self._followable_folders: dict[str, tuple[bool, float]] = {}

    def root_of(self, path: str) -> str | None:
        for root in self.roots:
            if path == root or path.startswith(root + os.sep):
                return root
        return None

    def followable(self, path: str) -> bool:
        """May a walk or an event go through this path? The one symlink rule for events, scans
        and admission. With watch.follow_symlinks off, only if no symlink leads to it from its
        watched folder: neither the file itself nor a folder between (linked in from
        elsewhere, a link to `..`). With it on, a link may lead out of the watched folders, but
        never back into them or into an output tree: what is there is reached under its own
        name, so nothing is walked twice and a loop ends."""
        root = self.root_of(path)
        if root is None:
            return False
        rel = path[len(root) + 1 :]
        real_root = self._real_root(root)
        real = os.path.realpath(path)
        if real == (os.path.join(real_root, rel) if rel else real_root):
            return True
        return self.config.watch.follow_symlinks and not self.really_inside_roots(real)

    def photo_followable(self, path: str) -> bool:
        """followable() for a photo, with its folder's answer kept for a moment: a burst or a
        catch-up then pays one lstat per photo, not a realpath of every folder above it."""
        folder = os.path.dirname(path)
        now = time.monotonic()
        known = self._followable_folders.get(folder)
        if known is None or now - known[1] > FOLLOWABLE_FOR:
            if len(self._followable_folders) > 4096:
                self._followable_folders.clear()
            known = self._followable_folders[folder] = (self.followable(folder), now)
        if not known[0]:
            return False
        if not os.path.islink(path):
            return True
        return self.config.watch.follow_symlinks and not self.really_inside_roots(os.path.realpath(path))

    def _real_root(self, root: str) -> str:
        real = self._real_roots.get(root)
        if real is None:
            real = self._real_roots[root] = os.path.realpath(root)
        return real

    def really_inside_roots(self, real: str) -> bool:
        """Is a resolved path (os.path.realpath) one of the watched folders, inside one, or
        inside an output tree?"""
        for root in self.roots:
            real_root = self._real_root(root)
            if real == real_root or real.startswith(real_root + os.sep):
                return True
        if self._real_outputs is None:
            self._real_outputs = tuple(os.path.realpath(o) for o in self.output_roots)
        return any(real == o or real.startswith(o + os.sep) for o in self._real_outputs)

    def names_photo(self, name: str) -> bool:
        """Does a file name match watch.patterns (whatever its folder)?"""
        return any(p.match(name) for p in self._patterns)

    def sweepable(self) -> bool:
        """Can a reconciliation tell our thumbnails by name? Not in the shared freedesktop
        cache, and not when a size names its files by a template of its own."""
        return self.config.output.style != "freedesktop" and all(s.template == "{stem}{ext}" for s in self.config.output.sizes)

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

    def folder(self, folder: str) -> "FolderRules":
        """The rules for the photos directly in `folder`, worked out once per folder: a catch-up
        walk over 100,000 photos then pays only a name check and a string join per photo."""
        rules = self._folders.get(folder)
        if rules is None:
            if len(self._folders) > 4096:
                self._folders.clear()
            rules = self._folders[folder] = FolderRules(self, folder)
        return rules

    def wants(self, path: str) -> bool:
        """Does this path name a photo we should thumbnail (by name alone)?"""
        folder, name = os.path.split(path)
        return self.folder(folder).wants(name)

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
        folder, name = os.path.split(photo)
        return self.folder(folder).targets(name)

    def temp_dirs(self) -> tuple[str, ...]:
        """Where stale temp outputs of a crashed run can be (cleaned at start)."""
        if self.config.output.style == "freedesktop":
            return tuple(str(freedesktop.cache_root() / size.name) for size in freedesktop.SIZES)
        return self.output_roots


class FolderRules:
    """The filter and the mapping for the photos directly inside one folder."""

    def __init__(self, rules: PathRules, folder: str):
        self.rules = rules
        self.folder = folder
        root = rules.root_of(folder)
        self.rel_dir = "" if root is None or folder == root else folder[len(root) + 1 :]
        parts = self.rel_dir.split(os.sep) if self.rel_dir else []
        self.ok = (
            root is not None
            and not rules.is_output(folder)
            and (rules.config.watch.recursive or not parts)
            and not any(is_temp_name(part) for part in parts)
        )
        self.freedesktop = rules.config.output.style == "freedesktop"
        self.bases: list[tuple[SizeSpec, str]] = []
        if self.ok and not self.freedesktop:
            out_root = rules.output_roots[rules.roots.index(root)]
            several = len(rules.config.output.sizes) > 1
            for size in rules.config.output.sizes:
                base = os.path.join(out_root, size.name) if several else out_root
                if "{dir}" not in size.template and self.rel_dir:
                    base = os.path.join(base, self.rel_dir)
                self.bases.append((size, base))

    def wants(self, name: str) -> bool:
        if not self.ok or is_temp_name(name):
            return False
        rules = self.rules
        if not any(p.match(name) for p in rules._patterns):
            return False
        rel = os.path.join(self.rel_dir, name) if self.rel_dir else name
        return not any(p.match(name) or p.match(rel) for p in rules._ignore)

    def targets(self, name: str) -> tuple[Target, ...]:
        if self.freedesktop:
            photo = os.path.join(self.folder, name)
            return tuple(Target(size, str(freedesktop.thumbnail_path(photo, size.name))) for size in freedesktop.SIZES)
        assert self.ok, os.path.join(self.folder, name)
        targets = []
        for size, base in self.bases:
            if self._keeps_name(name, size.format):
                stem, ext = os.path.splitext(name)
            else:
                stem, ext = name, FORMAT_EXT[size.format]
            if size.template == "{stem}{ext}":
                targets.append(Target(size, f"{base}{os.sep}{stem}{ext}"))
                continue
            rel = size.template.format(size=size.name, stem=stem, ext=ext, dir=self.rel_dir or ".")
            targets.append(Target(size, os.path.normpath(os.path.join(base, rel))))
        return tuple(targets)

    def _keeps_name(self, name: str, fmt: str) -> bool:
        """Does this photo's thumbnail keep the photo's own name, or append the format's extension
        (x.jpeg -> x.jpeg.png)? Kept only when the name already ends in one of the format's own
        extensions and is not itself another photo's name plus that extension (x.png.jpg appends
        when x.png is a photo too, whose thumbnail is x.png.jpg): no two photos share a thumbnail."""
        stem, ext = os.path.splitext(name)
        if ext.lower() not in OWN_EXTS[fmt]:
            return False
        if "." not in stem and not self.rules.dotless_photos:
            return True  # the common case, decided without matching patterns: IMG_0001.jpg
        return not (self.wants(stem) and not self._keeps_name(stem, fmt))


NAME_MAX = 255  # bytes in one file name, on every Linux file system we write to


# How long a folder's answer to followable() is kept (seconds).
FOLLOWABLE_FOR = 2.0

# This host, as temp names carry it: render hosts on shared storage write beside each other.
HOST = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:32] or "host"
_TEMP_HOST = re.compile(r"^" + re.escape(TEMP_PREFIX) + r"\d+-([A-Za-z0-9.-]{1,32})~")


def temp_path_for(final: str, pid: int | None = None) -> str:
    """A temp name beside the final path: same folder (so rename is atomic), hidden, ours, and
    naming the writing process and host (.tw-<pid>-<host>~<name>.tmp), so the master can remove
    what a killed worker left behind, and a start-up cleans only its own host's leftovers.

    Never longer than NAME_MAX bytes: for a long name the middle is replaced by a hash of the
    whole name, keeping its start and its extension, so a name the file system can hold always
    gets a temp name it can hold too (and the same one every time, for the same pid)."""
    folder, name = os.path.split(final)
    head = f"{TEMP_PREFIX}{pid or os.getpid()}-{HOST}~"
    temp = f"{head}{name}.tmp"
    if len(os.fsencode(temp)) <= NAME_MAX:
        return os.path.join(folder, temp)
    digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:12]
    stem, ext = os.path.splitext(name)
    if len(os.fsencode(ext)) > 16:
        ext = ""
    room = NAME_MAX - len(os.fsencode(f"{head}~{digest}{ext}.tmp"))
    return os.path.join(folder, f"{head}{_cut(stem, room)}~{digest}{ext}.tmp")


def _cut(text: str, limit: int) -> str:
    """The longest start of `text` whose file-system encoding fits in `limit` bytes (whole characters only)."""
    used = 0
    for i, char in enumerate(text):
        used += len(os.fsencode(char))
        if used > limit:
            return text[:i]
    return text


def is_our_temp(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(".tmp")


def is_this_hosts_temp(name: str) -> bool:
    """A temp output written on this host (render hosts sharing storage clean only their own),
    or by a version that did not name the host (a single host, then)."""
    if not is_our_temp(name):
        return False
    match = _TEMP_HOST.match(name)
    return match is None or match.group(1) == HOST


def shown(path: str) -> str:
    """A path for a log line: undecodable bytes and control characters (a newline in a name)
    escaped, so one photo stays one line."""
    text = path.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)
