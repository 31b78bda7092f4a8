"""Shared test tools: generated photos, waiting on conditions with a deadline, and a daemon runner."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"

# The Exif/TIFF spec's own words for tag 0x0112: for each orientation, the side of the upright
# picture where the stored image's 0th row lies, and the side where its 0th column lies
# ("6: the 0th row represents the visual right-hand side of the image, and the 0th column the
# visual top"). The oracle of the orientation tests, written from the spec and nothing else:
# not from the product's transpose table, nor from Pillow's.
EXIF_SIDES = {
    1: ("top", "left"), 2: ("top", "right"), 3: ("bottom", "right"), 4: ("bottom", "left"),
    5: ("left", "top"), 6: ("right", "top"), 7: ("right", "bottom"), 8: ("left", "bottom"),
}
_OPPOSITE = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}
# Four distinct corners, so any wrong turn or mirror shows.
CORNERS = {"tl": (255, 0, 0), "tr": (0, 190, 0), "bl": (255, 220, 0), "br": (0, 0, 255)}


def shown_corner(orientation: int, stored: str) -> str:
    """Where a corner of the stored pixels ('tl', 'tr', 'bl', 'br') is seen once the photo is
    shown upright: its row lies on the 0th row's side or the opposite one, its column likewise."""
    row_side, column_side = EXIF_SIDES[orientation]
    sides = {row_side if stored[0] == "t" else _OPPOSITE[row_side], column_side if stored[1] == "l" else _OPPOSITE[column_side]}
    return ("t" if "top" in sides else "b") + ("l" if "left" in sides else "r")


def cornered_image(width: int, height: int, colours: dict[str, tuple[int, int, int]]) -> Image.Image:
    """Grey, with a block a quarter of each side in each corner, in the given colours."""
    im = Image.new("RGB", (width, height), (128, 128, 128))
    cw, ch = max(1, width // 4), max(1, height // 4)
    for corner, colour in colours.items():
        x = 0 if corner[1] == "l" else width - cw
        y = 0 if corner[0] == "t" else height - ch
        im.paste(colour, (x, y, x + cw, y + ch))
    return im


def upright_test_image(width: int, height: int) -> Image.Image:
    """Grey image with a red top-left corner, a blue bottom-right one (and green top-right,
    yellow bottom-left), so orientation shows."""
    return cornered_image(width, height, CORNERS)


def stored_test_image(width: int, height: int, orientation: int) -> Image.Image:
    """The pixels a camera stores for an upright width x height picture (upright_test_image)
    taken at `orientation`: each stored corner gets the colour of the upright corner where the
    spec says it is shown."""
    swapped = orientation >= 5
    sw, sh = (height, width) if swapped else (width, height)
    stored = Image.new("RGB", (sw, sh), (128, 128, 128))
    cw, ch = max(1, width // 4), max(1, height // 4)
    bw, bh = (ch, cw) if swapped else (cw, ch)
    for corner in CORNERS:
        x = 0 if corner[1] == "l" else sw - bw
        y = 0 if corner[0] == "t" else sh - bh
        stored.paste(CORNERS[shown_corner(orientation, corner)], (x, y, x + bw, y + bh))
    return stored


def make_jpeg(path: str | os.PathLike[str], width: int = 400, height: int = 300, *, orientation: int = 1, quality: int = 90) -> Path:
    """Write a JPEG whose *upright* view is width x height with a red top-left corner.

    The pixels are stored as a camera would store them for `orientation`, with the EXIF tag set,
    so only a reader that applies the orientation sees the red corner top-left.
    """
    path = Path(path)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    stored_test_image(width, height, orientation).save(path, "JPEG", quality=quality, exif=exif.tobytes())
    return path


def jpeg_bytes(width: int = 400, height: int = 300, *, orientation: int = 1) -> bytes:
    import io

    buf = io.BytesIO()
    upright = upright_test_image(width, height)
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def corner_colour(im: Image.Image, corner: str) -> tuple[int, int, int]:
    """Colour a few pixels in from a corner ('tl', 'tr', 'bl', 'br')."""
    im = im.convert("RGB")
    x = 2 if corner[1] == "l" else im.width - 3
    y = 2 if corner[0] == "t" else im.height - 3
    return im.getpixel((x, y))


def is_red(rgb: tuple[int, int, int]) -> bool:
    r, g, b = rgb
    return r > 180 and g < 80 and b < 80


def is_blue(rgb: tuple[int, int, int]) -> bool:
    r, g, b = rgb
    return b > 180 and r < 80 and g < 80


def near(rgb: tuple[int, int, int], colour: tuple[int, int, int], tolerance: int = 60) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(rgb, colour))


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.02, message: str = "") -> object:
    """Poll until predicate() is truthy; fail the test with `message` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {message or predicate}")
        time.sleep(interval)


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


class Daemon:
    """`python -m watcher run` as a subprocess in its own session, with its log captured line by line."""

    def __init__(self, config: Path, *, args: tuple[str, ...] = (), env: dict[str, str] | None = None, cwd: Path | None = None, command: str = "run", launcher: tuple[str, ...] = ("-m", "watcher"), prefix: tuple[str, ...] = ()):
        self.config = config
        full_env = dict(os.environ)
        full_env.pop("JOURNAL_STREAM", None)
        full_env.pop("NOTIFY_SOCKET", None)
        full_env["PYTHONUNBUFFERED"] = "1"
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, *launcher, command, "--config", str(config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd or config.parent,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._lock:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def log(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def text(self) -> str:
        return "\n".join(self.log())

    def matching(self, pattern: str) -> list[str]:
        rx = re.compile(pattern)
        return [line for line in self.log() if rx.search(line)]

    def wait_log(self, pattern: str, timeout: float = 20.0, count: int = 1) -> list[str]:
        def enough() -> bool:
            return len(self.matching(pattern)) >= count or self.proc.poll() is not None and len(self.matching(pattern)) >= count

        try:
            wait_for(lambda: enough() or self.proc.poll() is not None, timeout, message=f"log line /{pattern}/ x{count}")
        except AssertionError:
            raise AssertionError(f"no log line /{pattern}/ x{count} within {timeout}s; log so far:\n{self.text()}") from None
        if self.proc.poll() is not None:
            self._reader.join(5)  # the process is gone: read what it wrote last
        found = self.matching(pattern)
        if len(found) < count:
            raise AssertionError(f"daemon exited (code {self.proc.returncode}) before /{pattern}/ x{count}; log:\n{self.text()}")
        return found

    def status(self) -> dict:
        """The daemon's status file (state dir 'state' next to the config, as the tests set it)."""
        import json

        return json.loads((self.config.parent / "state" / "status.json").read_text())

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.wait_log(r"\bready\b", timeout)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon did not exit within {timeout}s; log:\n{self.text()}") from None

    def children(self) -> list[int]:
        """Pids of every process in the daemon's session (its workers, forkserver...), itself excluded."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self.proc.pid:
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            # fields after the comm: state ppid pgrp session ...
            if fields[0] != b"Z" and int(fields[3]) == self.proc.pid:
                pids.append(int(entry))
        return pids

    def kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self._reader.join(5)


def edit_config(project: Path, old: str, new: str) -> None:
    """Change one piece of a test project's config.yaml (failing loudly if it isn't there)."""
    cfg = project / "config.yaml"
    text = cfg.read_text()
    assert old in text, old
    write_config(cfg, text.replace(old, new, 1))


def heavy(project: Path, box: int = 3000) -> None:
    """Make each photo take a while to render: a large size forces a near-full decode."""
    edit_config(project, "{name: small, width: 64, height: 64}", f"{{name: small, width: {box}, height: {box}}}")


def thumb(project: Path, rel: str) -> Path:
    return project / "photos" / "thumbs" / rel


def stage(folder: Path, names: list[str], width: int, height: int) -> None:
    """Camera-like photos prepared outside the watched tree, to be moved in as a backlog."""
    for name in names:
        make_jpeg(folder / name, width, height)


def move_in(folder: Path, names: list[str], project: Path) -> None:
    for name in names:
        os.rename(folder / name, project / "photos" / name)


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tw-")]


def flat_jpeg_bytes(colour: tuple[int, int, int], width: int = 96, height: int = 72, *, pad_to: int = 0) -> bytes:
    """A JPEG of one flat colour; `pad_to` appends bytes after the end marker (decoders ignore
    them) so that photos of different colours can have exactly the same size."""
    import io

    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    assert len(data) <= pad_to or not pad_to, f"a {width}x{height} JPEG is {len(data)} bytes, over pad_to={pad_to}"
    return data + b"\0" * (pad_to - len(data)) if pad_to else data


def make_flat_jpeg(path: str | os.PathLike[str], colour: tuple[int, int, int], width: int = 96, height: int = 72, *, pad_to: int = 0) -> Path:
    """Write a flat-colour JPEG in one write (so its close is the whole photo)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(flat_jpeg_bytes(colour, width, height, pad_to=pad_to))
    return path


def mean_colour(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """The mean RGB of an image file (a thumbnail, or a flat photo itself)."""
    from PIL import ImageStat

    with Image.open(path) as im:
        return tuple(round(v) for v in ImageStat.Stat(im.convert("RGB")).mean)  # type: ignore[return-value]


def same_colour(a: tuple[int, int, int], b: tuple[int, int, int], tolerance: int = 12) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b))


def palette(i: int) -> tuple[int, int, int]:
    """The i-th of 216 flat colours, each at least 40 apart from the others in some channel."""
    i %= 216
    return (20 + 40 * (i % 6), 20 + 40 * (i // 6 % 6), 20 + 40 * (i // 36))


@contextlib.contextmanager
def library_missing(name: str):
    """As if the optional library `name` (pillow_heif...) were not installed: None in
    sys.modules is Python's own marker that makes every import and find_spec of it fail, and the
    render registry is made to look again (it remembers what it found once per process)."""
    from watcher.render import formats

    before = sys.modules.get(name, ...)
    sys.modules[name] = None  # type: ignore[assignment]
    formats._missing.cache_clear()
    try:
        yield
    finally:
        if before is ...:
            del sys.modules[name]
        else:
            sys.modules[name] = before
        formats._missing.cache_clear()


def inotify_watched_inodes(pid: int) -> set[int]:
    """The inodes of every folder the process holds an inotify watch on, as the kernel says."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        inodes.update(int(m.group(1), 16) for m in re.finditer(r"^inotify wd:\S+ ino:([0-9a-f]+)", text, re.MULTILINE))
    return inodes
