"""Issue 11: the thumbnail tree tells the truth, after everyday file operations on a live daemon.

Once the watched tree is quiet, every photo has exactly one thumbnail per size showing *that
photo's current content*, and no thumbnail exists without its photo. Each test does one thing a
user does with the real tools (tar, unzip, cp, mv, ln, touch, an editor's save, a chunked
upload), waits until the daemon has gone quiet, and checks the whole tree against an oracle
written from the README, not from the code: which files are photos, where their thumbnails go,
and that each thumbnail's mean colour is its photo's (every photo is one flat colour).
"""

from __future__ import annotations

import fnmatch
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

from helpers import Daemon, edit_config, flat_jpeg_bytes, make_flat_jpeg, mean_colour, palette, same_colour, wait_for

# ---- the oracle: the README's rules, written out independently of watcher/paths.py ------------

TEMP_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial", ".download", "~")
OWN_EXTS = {"jpeg": (".jpg", ".jpeg", ".jpe", ".jfif"), "png": (".png",), "webp": (".webp",)}
FORMAT_EXT = {"jpeg": ".jpg", "png": ".png", "webp": ".webp"}
OK_LINE = r"\bok /"  # one per rendered photo


class Layout:
    """What the tree should look like for one config file: the photos, and their thumbnails."""

    def __init__(self, project: Path, config: Path | dict | None = None):
        data = config if isinstance(config, dict) else yaml.safe_load(Path(config or project / "config.yaml").read_text())
        watch, output = data.get("watch", {}), data.get("output", {})
        self.roots = [project / p for p in watch.get("paths", ["photos"])]
        self.follow = bool(watch.get("follow_symlinks", False))
        self.patterns = [p.lower() for p in watch.get("patterns", ["*.jpg", "*.jpeg"])]
        out = Path(output.get("dir", "thumbs"))
        if out.is_absolute():
            self.out_roots = [out] if len(self.roots) == 1 else [out / r.name for r in self.roots]
        else:
            self.out_roots = [r / out for r in self.roots]
        fmt = output.get("format", "jpeg")
        self.sizes = [dict(size, format=size.get("format", fmt)) for size in output.get("sizes", [{"name": "small", "width": 75, "height": 75}])]

    def wants(self, name: str) -> bool:
        if name.startswith(".") or name.lower().endswith(TEMP_SUFFIXES):
            return False
        return any(fnmatch.fnmatchcase(name.lower(), p) for p in self.patterns)

    def is_output(self, path: str) -> bool:
        return any(path == str(o) or path.startswith(str(o) + os.sep) for o in self.out_roots)

    def in_tree(self, real: str) -> bool:
        return any(real == os.path.realpath(r) or real.startswith(os.path.realpath(r) + os.sep) for r in self.roots)

    def photos(self) -> list[tuple[Path, Path, Path]]:
        """(photo, its root, its output root) for every photo in the watched trees. A folder symlink
        is followed only with follow_symlinks, and then only once and never back into a watched
        or output tree (loops, `..`); with it off, nothing behind a symlink is a photo."""
        found = []
        for root, out_root in zip(self.roots, self.out_roots):
            seen: set[str] = set()
            stack = [str(root)]
            while stack:
                folder = stack.pop()
                try:
                    entries = list(os.scandir(folder))
                except FileNotFoundError:
                    continue
                for entry in entries:
                    name, path = entry.name, entry.path
                    if entry.is_symlink():
                        if not self.follow:
                            continue
                        real = os.path.realpath(path)
                        if os.path.isdir(real):
                            if not name.startswith(".") and not self.in_tree(real) and not self.is_output(real) and real not in seen:
                                seen.add(real)
                                stack.append(path)
                        elif os.path.isfile(real) and self.wants(name):
                            found.append((Path(path), root, out_root))
                    elif entry.is_dir(follow_symlinks=False):
                        if not (name.startswith(".") or name.lower().endswith(TEMP_SUFFIXES) or self.is_output(path)):
                            stack.append(path)
                    elif entry.is_file(follow_symlinks=False) and self.wants(name):
                        found.append((Path(path), root, out_root))
        return found

    def thumbnails_of(self, photo: Path, root: Path, out_root: Path) -> dict[Path, dict]:
        rel = photo.relative_to(root)
        several = len(self.sizes) > 1
        result = {}
        for size in self.sizes:
            ext = photo.suffix.lower()
            name = photo.name if ext in OWN_EXTS[size["format"]] else photo.name + FORMAT_EXT[size["format"]]
            base = out_root / size["name"] if several else out_root
            result[base / rel.parent / name] = size
        return result


def truth_problems(project: Path, config: Path | dict | None = None, *, limit: int = 12) -> list[str]:
    """Everything that makes the tree lie, as sentences; [] when it tells the truth."""
    layout = Layout(project, config)
    problems: list[str] = []
    expected: dict[Path, Path] = {}
    for photo, root, out_root in layout.photos():
        try:
            colour = mean_colour(photo)
            with Image.open(photo) as im:
                width, height = im.size
        except (OSError, SyntaxError) as err:
            problems.append(f"{photo.relative_to(project)}: the photo itself cannot be read ({err})")
            continue
        for thumb, size in layout.thumbnails_of(photo, root, out_root).items():
            expected[thumb] = photo
            name = f"{photo.relative_to(project)} -> {thumb.relative_to(project) if thumb.is_relative_to(project) else thumb}"
            try:
                shown = mean_colour(thumb)
                with Image.open(thumb) as im:
                    got = im.size
            except FileNotFoundError:
                problems.append(f"{name}: no thumbnail")
                continue
            except (OSError, SyntaxError) as err:
                problems.append(f"{name}: unreadable thumbnail ({err})")
                continue
            if not same_colour(shown, colour):
                problems.append(f"{name}: thumbnail shows {shown}, the photo is {colour} (a stale or wrong picture)")
            scale = min(1.0, size["width"] / width, size["height"] / height)
            want = (round(width * scale), round(height * scale))
            if abs(got[0] - want[0]) > 1 or abs(got[1] - want[1]) > 1:
                problems.append(f"{name}: thumbnail is {got[0]}x{got[1]}, size {size['name']} wants {want[0]}x{want[1]}")
    for out_root in layout.out_roots:
        for folder, _dirs, files in os.walk(out_root):
            for name in files:
                path = Path(folder) / name
                if name.startswith(".tw-") or name.endswith(".tmp"):
                    problems.append(f"temp file left: {path}")
                elif path not in expected:
                    problems.append(f"orphan thumbnail (no photo of its own): {path.relative_to(project) if path.is_relative_to(project) else path}")
    if len(problems) > limit:
        problems[limit:] = [f"... and {len(problems) - limit} more"]
    return problems


def assert_tree_truthful(project: Path, config: Path | dict | None = None, context: str = "") -> None:
    problems = truth_problems(project, config)
    assert not problems, f"{context}the thumbnail tree lies:\n  " + "\n  ".join(problems)


def quiet_and_truthful(daemon: Daemon, project: Path, config: Path | dict | None = None, *, timeout: float = 8.0,
                       quiet: float = 0.6, context: str = "") -> None:
    """Wait until the tree tells the truth and the daemon has logged nothing more for `quiet`
    seconds (so no late job is about to overwrite or delete something), then check once more."""
    deadline = time.monotonic() + timeout
    lines, since = -1, 0.0
    while True:
        problems = truth_problems(project, config)
        now = time.monotonic()
        if problems or len(daemon.lines) != lines:
            lines, since = len(daemon.lines), now
        elif now - since >= quiet:
            break
        if now > deadline:
            log = "\n".join(daemon.log()[-25:])
            raise AssertionError(f"{context}after {timeout} s the thumbnail tree still lies:\n  " + "\n  ".join(problems or ["(it was truthful, but the daemon never went quiet)"])
                                 + f"\nlast log lines:\n{log}")
        time.sleep(0.05)
    assert_tree_truthful(project, config, context)
    assert not daemon.matching("Traceback"), daemon.text()


def ok_count(daemon: Daemon) -> int:
    return len(daemon.matching(OK_LINE))


def start_quiet(start_daemon, project: Path, config: Path | None = None) -> Daemon:
    daemon = start_daemon(config)
    daemon.wait_ready()
    daemon.wait_log(r"catch-up done")
    quiet_and_truthful(daemon, project, config, context="after the start's catch-up: ")
    return daemon


def stop(daemon: Daemon) -> None:
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0, daemon.text()


def flat_photos(folder: Path, count: int, first_colour: int = 0, prefix: str = "p") -> list[Path]:
    return [make_flat_jpeg(folder / f"{prefix}{i:02}.jpg", palette(first_colour + i)) for i in range(count)]


def run(*argv: str | os.PathLike[str]) -> None:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))}: exit {proc.returncode}: {proc.stderr}"


# ---- replaced photos ---------------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["tar", "unzip"])
def test_an_archive_extracted_over_existing_photos_shows_the_new_pictures(project, start_daemon, tool):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    flat_photos(project / "photos" / "album", 20)
    daemon = start_quiet(start_daemon, project)
    stage = project / "stage" / "album"
    two_days_ago = time.time() - 2 * 86400
    for path in flat_photos(stage, 20, first_colour=100):  # same names, new pictures, older mtimes
        os.utime(path, (two_days_ago, two_days_ago))
    if tool == "tar":
        run("tar", "-cf", project / "album.tar", "-C", project / "stage", "album")
        run("tar", "-xf", project / "album.tar", "-C", project / "photos")
    else:
        with zipfile.ZipFile(project / "album.zip", "w") as archive:
            for path in sorted(stage.iterdir()):
                archive.write(path, f"album/{path.name}")
        run("unzip", "-o", "-q", project / "album.zip", "-d", project / "photos")
    quiet_and_truthful(daemon, project, context=f"{tool} over 20 photos: ")


@pytest.mark.parametrize("how", ["vim-style backup and rewrite", "cp --remove-destination"])
def test_an_editors_save_that_replaces_the_file_shows_the_new_picture(project, start_daemon, how):
    photos = flat_photos(project / "photos", 12)
    daemon = start_quiet(start_daemon, project)
    if how == "cp --remove-destination":
        staged = flat_photos(project / "stage", 12, first_colour=100)
        run("cp", "--remove-destination", *staged, project / "photos")
    else:
        for i, photo in enumerate(photos):  # vim with 'backup': rename the original away, write anew, drop the backup
            backup = photo.with_name(photo.name + "~")
            os.rename(photo, backup)
            with open(photo, "wb") as f:
                f.write(flat_jpeg_bytes(palette(100 + i)))
            os.unlink(backup)
    quiet_and_truthful(daemon, project, context=f"{how} of 12 photos: ")


def test_mv_over_a_photo_with_the_same_mtime_and_size_shows_the_moved_picture(project, start_daemon):
    photos = project / "photos"
    for name, colour in [("a", 1), ("b", 2), ("c", 3), ("d", 4)]:
        make_flat_jpeg(photos / f"{name}.jpg", palette(colour * 40), pad_to=4096)  # equal sizes: only the inode differs
    daemon = start_quiet(start_daemon, project)
    run("touch", "-r", photos / "b.jpg", photos / "a.jpg")
    run("mv", photos / "a.jpg", photos / "b.jpg")
    quiet_and_truthful(daemon, project, context="mv a.jpg b.jpg (equal mtime and size), daemon running: ")
    stop(daemon)
    run("touch", "-r", photos / "d.jpg", photos / "c.jpg")
    run("mv", photos / "c.jpg", photos / "d.jpg")
    daemon = start_daemon()
    daemon.wait_log(r"catch-up done")
    quiet_and_truthful(daemon, project, context="mv c.jpg d.jpg (equal mtime and size) while stopped, then a start: ")


# ---- changes of attributes alone (issue 19) ----------------------------------------------------


def fresh_by_the_readme(photo: Path, thumb: Path) -> bool:
    """The README's rule, written out here: a thumbnail carries its photo's mtime and was
    written (or re-stamped) no earlier than the photo last changed, ctime against ctime."""
    p, t = os.stat(photo), os.stat(thumb)
    return t.st_mtime_ns == p.st_mtime_ns and t.st_ctime_ns >= p.st_ctime_ns


def stale_thumbnails(project: Path) -> list[str]:
    layout = Layout(project)
    return [str(photo.relative_to(project)) for photo, root, out_root in layout.photos()
            for thumb in layout.thumbnails_of(photo, root, out_root) if not fresh_by_the_readme(photo, thumb)]


def test_changes_of_attributes_alone_cost_no_render_and_a_same_size_same_mtime_rewrite_still_does(project, start_daemon):
    """chown -R, chmod -R, xattrs, ACLs and touch -a on a live daemon: not one render, every
    thumbnail fresh again and still its photo's picture. Then, in the same run, cp -p of another
    picture of the same size and mtime over a photo (in place: same inode) is rendered."""
    tools = {"setfattr": "attr", "setfacl": "acl"}
    missing = [f"{tool} (apt-get install {package})" for tool, package in tools.items() if shutil.which(tool) is None]
    if missing:
        pytest.skip("not installed: " + ", ".join(missing))
    album = project / "photos" / "album"
    photos = [make_flat_jpeg(album / f"p{i:03}.jpg", palette(i), pad_to=8192) for i in range(200)]  # 200 colours, one size
    daemon = start_quiet(start_daemon, project)
    rendered = ok_count(daemon)
    assert rendered == 200 and stale_thumbnails(project) == []
    # -R on the photos' folder, not the watched one: walked after the photos, the thumbnail
    # folder would get new ctimes too, and the test would pass by the luck of readdir order
    commands = [["chmod", "-R", "g+w", album], ["setfattr", "-n", "user.x", "-v", "1", *photos],
                ["setfacl", "-m", "u:1:r", *photos], ["touch", "-a", *photos]]
    if os.geteuid() == 0:
        commands.insert(0, ["chown", "-R", "1:1", album])
    for command in commands:
        wait_for(lambda: stale_thumbnails(project) == [], 20, message="every thumbnail fresh again before the next tool")
        shown_ctime = {str(p): p.stat().st_ctime_ns for p in photos[:3]}
        run(*command)
        assert any(p.stat().st_ctime_ns != shown_ctime[str(p)] for p in photos[:3]), f"{command[0]} changed no ctime: it proves nothing"
        wait_for(lambda: stale_thumbnails(project) == [], 20, message=f"every thumbnail fresh again after {command[0]}")
        quiet_and_truthful(daemon, project, context=f"{command[0]} over 200 photos: ")
        assert ok_count(daemon) == rendered, f"{command[0]}: {ok_count(daemon) - rendered} photo(s) rendered again"
    # a new hard link outside the watched tree: no event reaches a folder's inotify watch (the
    # link count is the inode's, not the folder's), so nothing is rendered while running; the
    # photos' new ctimes make the next rescan or start render them (README: metadata changes)
    (project / "links").mkdir()
    for p in photos:
        os.link(p, project / "links" / p.name)
    quiet_and_truthful(daemon, project, context="ln of 200 photos outside the tree: ")
    assert ok_count(daemon) == rendered, f"ln: {ok_count(daemon) - rendered} photo(s) rendered again"
    # a rewrite in place of the same size with the same mtime: only its ctime tells
    victim, other = photos[7], make_flat_jpeg(project / "stage" / "other.jpg", palette(210), pad_to=8192)
    os.utime(other, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns))
    inode = victim.stat().st_ino
    run("cp", "-p", other, victim)
    assert victim.stat().st_ino == inode and victim.stat().st_size == other.stat().st_size
    daemon.wait_log(rf"\bok \S*{victim.name} ", count=2)
    quiet_and_truthful(daemon, project, context="cp -p of a same-size same-mtime picture over p007.jpg: ")
    assert ok_count(daemon) == rendered + 1


# ---- moved folders -----------------------------------------------------------------------------


def test_a_folder_moved_out_of_the_tree_takes_its_thumbnails_with_it(project, start_daemon):
    flat_photos(project / "photos" / "trip", 8)
    make_flat_jpeg(project / "photos" / "keep.jpg", palette(50))
    daemon = start_quiet(start_daemon, project)
    (project / "elsewhere").mkdir()
    run("mv", project / "photos" / "trip", project / "elsewhere")
    quiet_and_truthful(daemon, project, context="mv photos/trip elsewhere/ while running: ")


def test_a_folder_moved_out_while_stopped_loses_its_thumbnails_at_the_next_start(project, start_daemon):
    flat_photos(project / "photos" / "trip", 8)
    make_flat_jpeg(project / "photos" / "keep.jpg", palette(50))
    stop(start_quiet(start_daemon, project))
    (project / "elsewhere").mkdir()
    run("mv", project / "photos" / "trip", project / "elsewhere")
    daemon = start_daemon()
    daemon.wait_log(r"catch-up done")
    quiet_and_truthful(daemon, project, context="mv photos/trip elsewhere/ while stopped, then a start: ")


def test_a_folder_renamed_inside_the_tree_moves_its_thumbnails_without_rendering(project, start_daemon):
    flat_photos(project / "photos" / "2024" / "trip", 8)
    flat_photos(project / "photos" / "2024" / "trip" / "day2", 3, first_colour=20)
    daemon = start_quiet(start_daemon, project)
    before = ok_count(daemon)
    run("mv", project / "photos" / "2024", project / "photos" / "2024-archive")
    quiet_and_truthful(daemon, project, context="mv photos/2024 photos/2024-archive: ")
    again = daemon.matching(OK_LINE)[before:]
    assert not again, f"a folder rename re-rendered {len(again)} of 11 unchanged photos:\n" + "\n".join(again)


def test_a_hard_link_made_while_running_gets_its_own_thumbnail_promptly(project, start_daemon):
    make_flat_jpeg(project / "photos" / "a.jpg", palette(7))
    (project / "photos" / "sub").mkdir()
    daemon = start_quiet(start_daemon, project)
    run("ln", project / "photos" / "a.jpg", project / "photos" / "b.jpg")
    run("ln", project / "photos" / "a.jpg", project / "photos" / "sub" / "c.jpg")
    quiet_and_truthful(daemon, project, timeout=5, context="ln a.jpg b.jpg and sub/c.jpg (no rescan configured): ")
    make_flat_jpeg(staged := project / "staged.jpg", palette(8))
    os.link(staged, project / "photos" / "d.jpg")
    os.unlink(staged)  # publish by hard link: by the time the daemon looks, d.jpg has one name
    quiet_and_truthful(daemon, project, timeout=5, context="ln staged.jpg photos/d.jpg; rm staged.jpg: ")


# ---- symlinks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["mv", "cp -r"])
@pytest.mark.parametrize("follow", [False, True], ids=["follow_symlinks-false", "follow_symlinks-true"])
def test_a_folder_with_folder_symlinks_brought_in_follows_the_symlink_rule(project, start_daemon, follow, how):
    if follow:
        edit_config(project, "  create: true\n", "  create: true\n  follow_symlinks: true\n")
    make_flat_jpeg(project / "photos" / "top.jpg", palette(3))
    make_flat_jpeg(project / "private" / "secret.jpg", palette(9))  # outside the tree
    album = project / "stage" / "album"
    make_flat_jpeg(album / "inside.jpg", palette(15))
    os.symlink(project / "private", album / "ext")  # to a folder outside the tree
    os.symlink("..", album / "up")  # to the folder the album lands in: a loop
    os.symlink("../thumbs", album / "th")  # into the output tree, once it is in photos/
    daemon = start_quiet(start_daemon, project)
    if how == "mv":
        run("mv", album, project / "photos")
    else:
        run("cp", "-r", album, project / "photos")
    wait_for(lambda: daemon.matching(r"\bok \S*album/inside\.jpg"), 8, message="album/inside.jpg rendered")
    quiet_and_truthful(daemon, project, context=f"{how} of a folder with symlinks to outside, .. and thumbs/, follow_symlinks={follow}: ")
    if not follow:
        assert not daemon.matching(r"secret\.jpg"), "with follow_symlinks off the daemon looked behind a symlink:\n" + "\n".join(daemon.matching(r"secret\.jpg"))


# ---- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_x_jpg_and_x_jpeg_side_by_side_keep_a_thumbnail_each(project, start_daemon, fmt):
    edit_config(project, "{name: small, width: 64, height: 64}", f"{{name: small, width: 64, height: 64, format: {fmt}}}")
    daemon = start_quiet(start_daemon, project)
    make_flat_jpeg(project / "photos" / "x.jpg", palette(5))
    make_flat_jpeg(project / "photos" / "x.jpeg", palette(200))
    quiet_and_truthful(daemon, project, context=f"x.jpg and x.jpeg with {fmt} output: ")
    os.unlink(project / "photos" / "x.jpg")
    quiet_and_truthful(daemon, project, context=f"x.jpg deleted beside x.jpeg with {fmt} output: ")
    assert (project / "photos" / "thumbs" / f"x.jpeg.{fmt}").exists()


# ---- coarse timestamps -------------------------------------------------------------------------


# file systems whose timestamps are coarser than a nanosecond: FAT keeps 2 s, ext4 with 128-byte
# inodes (no room for the extra timestamp bits) keeps 1 s; the tools that make them
COARSE = {
    "vfat": (("mkfs.vfat", "mkfs.fat"), ("-n", "THUMBS"), "dosfstools"),
    "ext4-128-byte-inodes": (("mkfs.ext4",), ("-q", "-F", "-I", "128"), "e2fsprogs"),
}


@pytest.fixture(params=sorted(COARSE))
def coarse_fs(request, tmp_path: Path):
    """A real coarse-timestamp file system on a loop image, mounted by this test and unmounted by
    it. Skips unless root, with the mkfs tool, mount, loop devices and the kernel's driver."""
    kind = request.param
    tools, options, package = COARSE[kind]
    if os.geteuid() != 0:
        pytest.skip(f"mounting a {kind} loop image needs root")
    mkfs = next(filter(None, map(shutil.which, tools)), None)
    if mkfs is None:
        pytest.skip(f"{tools[0]} not installed (Debian: {package}); cannot make a {kind} file system")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("mount/umount not installed")
    image, mnt = tmp_path / f"{kind}.img", tmp_path / kind
    with open(image, "wb") as f:
        f.truncate(32 * 1024 * 1024)
    made = subprocess.run([mkfs, *options, str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"{mkfs} failed: {made.stderr.strip()}")
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {kind} loop image here: {mounted.stderr.strip()}")
    try:
        probe = mnt / "probe"
        probe.touch()
        os.utime(probe, ns=(1_700_000_000_123_456_789,) * 2)
        assert probe.stat().st_mtime_ns % 1_000_000_000 == 0, f"{kind} kept sub-second mtimes: not a coarse file system"
        probe.unlink()
        yield mnt
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)  # a daemon being torn down may still hold a file there
        else:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_thumbnails_on_a_coarse_timestamp_file_system_are_not_rendered_again_at_a_restart(project, start_daemon, coarse_fs):
    edit_config(project, "output:\n", f"output:\n  dir: {coarse_fs / 'thumbs'}\n")
    for i, photo in enumerate(flat_photos(project / "photos", 12)):
        t = 1_700_000_000_123_456_789 + i * 1_000_000_321  # sub-second mtimes FAT cannot store
        os.utime(photo, ns=(t, t))
    stop(start_quiet(start_daemon, project))
    daemon = start_quiet(start_daemon, project)
    again = daemon.matching(OK_LINE)
    assert not again, f"a restart re-rendered {len(again)} of 12 up-to-date photos whose thumbnails are on {coarse_fs.name}:\n" + "\n".join(again)
    stop(daemon)
    scan = start_daemon(command="scan")
    assert scan.wait_exit() == 0, scan.text()
    assert not scan.matching(OK_LINE), "`thumbwatch scan` re-rendered up-to-date photos:\n" + scan.text()


# ---- slow writers ------------------------------------------------------------------------------

UNREAD = 1_000_000_000  # an atime no read can leave behind: 1 s after the epoch


def noisy_jpeg_bytes(colour: tuple[int, int, int], width: int = 480, height: int = 360) -> bytes:
    """A photo of one mean colour that is big enough (~150 KB of noise) to arrive in chunks."""
    import io

    rng = random.Random(sum(colour))
    noise = bytes(max(0, min(255, c + rng.randint(-30, 30))) for _ in range(width * height) for c in colour)
    buf = io.BytesIO()
    Image.frombytes("RGB", (width, height), noise).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_a_slow_upload_that_reopens_the_file_per_chunk_is_not_a_failure(project, start_daemon):
    """An SMB/FTP-style upload: open, append a chunk, close, repeat. After each chunk the uploader
    waits until the daemon has read the file (its atime moves off a marker the test set), or at
    most 0.5 s: well inside settle_seconds (2 s), so the file never holds still long enough to be a
    genuine failure, and every close is seen by a render of a truncated photo on today's daemon."""
    edit_config(project, "settle_seconds: 0.3", "settle_seconds: 2")
    daemon = start_quiet(start_daemon, project)
    data = noisy_jpeg_bytes(palette(123))
    target = project / "photos" / "upload.jpg"
    chunks = [data[i : i + len(data) // 6 + 1] for i in range(0, len(data), len(data) // 6 + 1)]
    reads = 0
    for n, chunk in enumerate(chunks):
        if target.exists():
            os.utime(target, ns=(UNREAD, target.stat().st_mtime_ns))
        with open(target, "ab") as f:
            f.write(chunk)
        if n == 0:
            os.utime(target, ns=(UNREAD, target.stat().st_mtime_ns))
        if n < len(chunks) - 1:
            deadline = time.monotonic() + 0.5
            while target.stat().st_atime_ns == UNREAD and time.monotonic() < deadline:
                time.sleep(0.01)
            reads += target.stat().st_atime_ns != UNREAD
    daemon.wait_log(r"\bok \S*upload\.jpg", timeout=15)
    quiet_and_truthful(daemon, project, context=f"an upload in {len(chunks)} chunks ({reads} read by the daemon between chunks): ")
    failed = daemon.matching(r"\bfailed\b")
    stop(daemon)
    listed = subprocess.run([sys.executable, "-m", "watcher", "failed", "--config", str(project / "config.yaml")], capture_output=True, text=True, cwd=project)
    assert not failed, f"false failures for a photo that was still arriving ({reads} chunk(s) read mid-upload):\n" + "\n".join(failed)
    assert listed.stdout.strip() == "", f"failure records for a photo that was fine:\n{listed.stdout}"


# ---- reloads -----------------------------------------------------------------------------------


def test_a_size_removed_by_a_reload_loses_its_thumbnails_at_the_next_reconciliation(project, start_daemon):
    edit_config(project, "    - {name: small, width: 64, height: 64}\n",
                "    - {name: small, width: 64, height: 64}\n    - {name: large, width: 128, height: 128}\n")
    for i in range(6):
        make_flat_jpeg(project / "photos" / f"p{i}.jpg", palette(30 + i), 200, 150)
    daemon = start_quiet(start_daemon, project)
    assert (project / "photos" / "thumbs" / "large" / "p0.jpg").exists()
    edit_config(project, "{name: large, width: 128, height: 128}", "{name: medium, width: 100, height: 100}")
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"reloaded ")
    stop(daemon)
    scan = start_daemon(command="scan")
    assert scan.wait_exit() == 0, scan.text()
    assert_tree_truthful(project, context="sizes [small, large] -> [small, medium] by SIGHUP, then `thumbwatch scan`: ")


# ---- everything at once ------------------------------------------------------------------------


@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_random_operations_on_a_live_daemon_leave_a_truthful_tree(project, start_daemon, observer):
    if observer == "polling":  # what a network file system gets (observer: auto picks it there)
        edit_config(project, "  settle_seconds: 0.3", "  settle_seconds: 0.3\n  observer: polling\n  poll_interval: 0.2")
    seed = int(os.environ.get("THUMBWATCH_TRUTH_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    root, outside = project / "photos", project / "outside"
    outside.mkdir()
    names = iter(range(10**6))
    colours = iter(range(10**6))

    def new_name(ext: str | None = None) -> str:
        return f"p{next(names)}{ext or rng.choice(['.jpg', '.jpg', '.jpeg', '.JPG'])}"

    def folders() -> list[Path]:
        return [Path(d) for d, _s, _f in os.walk(root) if not d.startswith(str(root / "thumbs"))]

    def photos(where: Path = root) -> list[Path]:
        # not the watcher's root marker (roots.py): renamed to a photo's name, it would be a photo that is JSON
        return [Path(d) / f for d, _s, fs in os.walk(where) if not d.startswith(str(root / "thumbs")) for f in fs
                if f != ".thumbwatch-root"]

    def write(path: Path) -> None:
        path.write_bytes(flat_jpeg_bytes(palette(next(colours))))

    for i in range(4):
        (root / f"d{i}" / "e").mkdir(parents=True)
    for _ in range(30):
        write(rng.choice(folders()) / new_name())
    daemon = start_quiet(start_daemon, project)

    done: list[str] = []
    for _ in range(300):
        op = rng.choice(["create", "create", "overwrite", "replace", "delete", "rename", "rename", "rename folder",
                         "move out", "move in", "link", "mkdir", "chmod", "xattr", "touch -a", "cp -p over"])
        files, dirs = photos(), folders()
        sub = [d for d in dirs if d != root]
        if not files and op in ("overwrite", "replace", "delete", "rename", "link", "chmod", "xattr", "touch -a", "cp -p over"):
            op = "create"
        victim = rng.choice(files) if files else root
        if op == "cp -p over" and observer == "polling":
            op = "overwrite"  # same size and mtime in the same inode: a poll by (size, mtime) cannot see it
        if op in ("overwrite", "cp -p over") and victim.stat().st_nlink > 1:
            op = "replace"  # in place would change its other names too, with no event for them
        if op == "create":
            write(target := rng.choice(dirs) / new_name())
            done.append(f"create {target.relative_to(project)}")
        elif op == "overwrite":
            write(victim)
            done.append(f"overwrite {victim.relative_to(project)}")
        elif op == "replace":  # an editor's or rsync's atomic save
            temp = victim.with_name(f".{victim.name}.{rng.randrange(10**6)}")
            write(temp)
            os.replace(temp, victim)
            done.append(f"replace {victim.relative_to(project)}")
        elif op == "delete":
            victim.unlink()
            done.append(f"delete {victim.relative_to(project)}")
        elif op == "rename":
            dest = rng.choice(files) if rng.random() < 0.3 else rng.choice(dirs) / new_name()
            os.rename(victim, dest)
            done.append(f"rename {victim.relative_to(project)} {dest.relative_to(project)}")
        elif op == "rename folder" and sub:
            victim = rng.choice(sub)
            parents = [d for d in dirs if d != victim and not d.is_relative_to(victim)]
            dest = rng.choice(parents) / f"d{next(names)}"
            os.rename(victim, dest)
            done.append(f"rename folder {victim.relative_to(project)} {dest.relative_to(project)}")
        elif op == "move out" and (files or sub):
            victim = rng.choice(sub) if sub and (rng.random() < 0.3 or not files) else victim
            os.rename(victim, outside / f"o{next(names)}-{victim.name}")
            done.append(f"move out {victim.relative_to(project)}")
        elif op == "move in":
            away = sorted(outside.iterdir())
            if away:
                victim = rng.choice(away)
                dest = rng.choice(dirs) / (f"d{next(names)}" if victim.is_dir() else new_name(victim.suffix))
                os.rename(victim, dest)
                done.append(f"move in {dest.relative_to(project)}")
        elif op == "link" and files:
            os.link(victim, link := rng.choice(dirs) / new_name())
            done.append(f"link {victim.relative_to(project)} {link.relative_to(project)}")
        elif op == "mkdir":
            (folder := rng.choice(dirs) / f"d{next(names)}").mkdir()
            done.append(f"mkdir {folder.relative_to(project)}")
        elif op == "chmod":  # attributes alone: a new ctime, the same picture
            victim.chmod(victim.stat().st_mode ^ 0o020)
            done.append(f"chmod {victim.relative_to(project)}")
        elif op == "xattr":
            os.setxattr(victim, "user.thumbwatch-test", str(rng.randrange(10**6)).encode())
            done.append(f"xattr {victim.relative_to(project)}")
        elif op == "touch -a":
            run("touch", "-a", victim)  # opens it for writing, writes nothing
            done.append(f"touch -a {victim.relative_to(project)}")
        elif op == "cp -p over":  # a new picture into the same inode, then the old mtime back (before the close)
            staged = outside / f".staged{next(names)}.jpg"
            write(staged)
            os.utime(staged, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns))
            run("cp", "-p", staged, victim)
            staged.unlink()
            done.append(f"cp -p over {victim.relative_to(project)}")
        if rng.random() < 0.1:
            time.sleep(rng.uniform(0, 0.05))  # pacing, not synchronisation: let some jobs be in flight
    recent = "\n    ".join(done[-10:])
    try:
        quiet_and_truthful(daemon, project, timeout=20,
                           context=f"THUMBWATCH_TRUTH_SEED={seed} ({len(done)} operations, {len(photos())} photos; the last ones:\n    {recent})\n")
    except AssertionError as err:
        lies = str(err).split("last log lines")[0]
        names = set(re.findall(r"(?:d\d+/)?p\d+\.", lies))  # a photo's name, with its folder's
        related = [op for op in done if any(re.search(rf"\b{re.escape(n)}", op) for n in names)]
        # The seed replays the operations, not the timing: keep everything this run did and said.
        (project / "operations.txt").write_text("\n".join(done) + "\n")
        (project / "daemon.log").write_text(daemon.text())
        raise AssertionError(f"{err}\nthe operations on those photos and their folders:\n    " + "\n    ".join(related[-40:])
                             + f"\nall operations and the whole log: {project}/operations.txt, daemon.log") from None
