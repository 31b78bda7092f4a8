"""Storage that vanishes never deletes thumbnails (issue 19): real mounts under a running daemon.

A watched folder that is a loop-mounted ext4 image or a tmpfs is unmounted (`umount`, `umount -l`)
under `python -m watcher run`, with thumbnails inside the mount (the default relative output.dir)
and in a mirror on the test's own disk (an absolute one). Nothing may be deleted, the daemon says
so once at ERROR and in its status, and when the file system is back it is watched again by
events and caught up without rendering what did not change. The same at start, on an empty or a
missing mount point. And the mass-removal guard, which needs no mount.

Every test that mounts needs root: it skips with a message when not root, and fails instead when
CI=true. Every mount a test makes is unmounted in the fixture's teardown, by path, whatever
happened.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, make_flat_jpeg, mean_colour, wait_for, write_config

COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 200, 20), (200, 40, 200), (20, 190, 200)]


def _need(ok: bool, why: str) -> None:
    """Skip with `why` when `ok` is false; under CI=true, fail instead."""
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI=true: failing instead of skipping)")
    pytest.skip(why)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def mounted(point: Path) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        return any(line.split()[4].replace("\\040", " ") == str(point) for line in f)


class Mounts:
    """The mounts a test makes; teardown unmounts each one still there, by path."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.points: list[Path] = []

    def _run(self, *cmd: str) -> None:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr.strip()}"

    def ext4_image(self, name: str = "disk.img") -> Path:
        image = self.tmp / name
        with open(image, "wb") as f:
            f.truncate(24 << 20)
        self._run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
        return image

    def loop(self, image: Path, point: Path) -> None:
        point.mkdir(parents=True, exist_ok=True)
        self.points.append(point)
        self._run("mount", "-o", "loop", str(image), str(point))

    def tmpfs(self, point: Path) -> None:
        point.mkdir(parents=True, exist_ok=True)
        self.points.append(point)
        self._run("mount", "-t", "tmpfs", "-o", "size=16m", "thumbwatch-test", str(point))

    def dead_fuse(self, point: Path) -> None:
        """A FUSE mount whose process is gone: mounted on /dev/fuse, and the descriptor closed
        without ever answering. Every access to it fails with ENOTCONN, as after a crash of
        sshfs, rclone or s3fs."""
        fd = os.open("/dev/fuse", os.O_RDWR)
        try:
            self.points.append(point)
            options = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
            if _libc().mount(b"thumbwatch-test", os.fsencode(point), b"fuse.thumbwatch-test", 0, options) != 0:
                _need(False, f"cannot mount a FUSE file system here: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(fd)

    def umount(self, point: Path, *, lazy: bool = False, stacked: bool = False) -> None:
        """`stacked`: the top one of two mounts on `point`; the one beneath stays."""
        self._run("umount", *(["-l"] if lazy else []), str(point))
        assert stacked or not mounted(point)

    def cleanup(self) -> None:
        for point in reversed(self.points):
            while mounted(point):
                subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=30)


@pytest.fixture
def mounts(tmp_path: Path):
    _need(os.geteuid() == 0, "storage tests mount loop ext4 images, tmpfs and FUSE: they need root")
    for tool in ("mount", "umount", "mkfs.ext4"):
        _need(shutil.which(tool) is not None, f"storage tests need {tool} (Debian: mount, e2fsprogs)")
    made = Mounts(tmp_path)
    try:
        yield made
    finally:
        made.cleanup()


CONFIG = """\
watch:
  paths: [photos]
  create: {create}
  settle_seconds: 0.2
  rescan_interval: 0
  observer: {observer}
  poll_interval: 0.3
output:
  dir: {out}
  sizes:
    - {{name: small, width: 32, height: 32}}
workers:
  count: 1
  drain_timeout: 20
state:
  dir: state
log:
  level: debug
  progress_interval: 0
"""


def config(tmp: Path, *, absolute: bool, create: bool = True, observer: str = "auto") -> Path:
    out = str(tmp / "mirror") if absolute else "thumbs"
    return write_config(tmp / "storage.yaml", CONFIG.format(create="true" if create else "false", out=out, observer=observer))


def thumbs_of(tmp: Path, absolute: bool) -> Path:
    return tmp / "mirror" if absolute else tmp / "photos" / "thumbs"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every thumbnail below `folder`: name -> (inode, mtime_ns), so a re-render shows."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*.jpg"))}


def photos(folder: Path, n: int, prefix: str = "p") -> list[str]:
    names = [f"{prefix}{i}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        make_flat_jpeg(folder / name, COLOURS[i % len(COLOURS)])
    return names


def near(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    return all(abs(x - y) < 40 for x, y in zip(a, b))


def unavailable_in_status(daemon) -> dict:
    try:
        return daemon.status().get("unavailable_folders") or {}
    except (OSError, ValueError):
        return {}


def ok_lines(daemon, name: str = "") -> list[str]:
    return daemon.matching(rf"INFO ok \S*{name}")


def error_lines(daemon) -> list[str]:
    return daemon.matching(r"ERROR watched folder \S*photos is (unavailable|gone)")


def reload_and_wait(daemon, n: int) -> None:
    """A reload walks the watched folders (its rescan): once it is done, whatever a walk of an
    unmounted folder would sweep has been swept."""
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"reload rescan done", count=n)


# ---- under a running daemon ------------------------------------------------------------------


@pytest.mark.parametrize("absolute,lazy,observer", [(True, True, "auto"), (True, False, "auto"), (False, False, "auto"),
                                                    (False, True, "auto"), (True, True, "polling")],
                         ids=["mirror-lazy", "mirror-umount", "inside-umount", "inside-lazy", "mirror-lazy-polling"])
def test_unmounting_the_watched_folder_deletes_no_thumbnail(mounts, start_daemon, tmp_path, absolute, lazy, observer):
    """(Under polling, a poll of the empty mount point reports every photo deleted: those
    notices must not remove their thumbnails either.)"""
    root = tmp_path / "photos"
    image = mounts.ext4_image()
    mounts.loop(image, root)
    names = photos(root, 6)
    daemon = start_daemon(config(tmp_path, absolute=absolute, observer=observer))
    daemon.wait_ready()
    out = thumbs_of(tmp_path, absolute)
    wait_for(lambda: all((out / n).exists() for n in names), 30, message="six thumbnails")
    daemon.wait_log(r"catch-up done")
    before = snapshot(out)
    assert len(before) == 6

    mounts.umount(root, lazy=lazy)
    reload_and_wait(daemon, 1)
    if absolute:
        assert snapshot(out) == before, "thumbnails in the mirror were touched while the folder was unmounted"
    assert not (root / "thumbs").exists() and not (root / ".thumbwatch-root").exists(), "wrote into the empty mount point"
    daemon.wait_log(r"ERROR watched folder \S*photos is unavailable: not mounted")
    wait_for(lambda: str(root) in unavailable_in_status(daemon), 10, message="status says unavailable")

    # While it is away: one photo changes (the image mounted elsewhere), the rest do not.
    elsewhere = tmp_path / "elsewhere"
    mounts.loop(image, elsewhere)
    make_flat_jpeg(elsewhere / "p0.jpg", (250, 250, 250))
    mounts.umount(elsewhere)
    mounts.loop(image, root)
    daemon.wait_log(r"watched folder \S*photos is back")
    daemon.wait_log(r"catch-up of returned folder done")
    wait_for(lambda: len(ok_lines(daemon)) == 7, 20, message="the changed photo rendered again")
    wait_for(lambda: not unavailable_in_status(daemon), 10, message="status says available again")
    after = snapshot(out)
    assert set(after) == set(before)
    assert [n for n in before if after[n] != before[n]] == ["p0.jpg"], "only the changed photo is rendered again"
    assert near(mean_colour(out / "p0.jpg"), (250, 250, 250))

    # Watched again by events: no rescan runs (rescan_interval 0), yet a new photo is rendered.
    scans = len(daemon.matching(r" done: found="))
    make_flat_jpeg(root / "new.jpg", (10, 10, 10))
    wait_for((out / "new.jpg").exists, 20, message="a new photo after the remount, by its event")
    assert len(daemon.matching(r" done: found=")) == scans, "found by a rescan, not by an event"
    assert len(error_lines(daemon)) == 1, daemon.text()
    assert not daemon.matching(r"removed \d+ thumbnail"), daemon.text()
    assert not daemon.matching(r"WARNING failed "), daemon.text()


def test_a_fuse_mount_whose_process_died_is_unavailable_not_empty(mounts, start_daemon, tmp_path):
    """ENOTCONN: a dead FUSE mount stacked over the watched file system (as when sshfs or rclone
    dies); then it is unmounted and the folder is back, unchanged."""
    _need(os.path.exists("/dev/fuse"), "no /dev/fuse here: cannot make a dead FUSE mount")
    root = tmp_path / "photos"
    mounts.loop(mounts.ext4_image(), root)
    names = photos(root, 4)
    daemon = start_daemon(config(tmp_path, absolute=True))
    daemon.wait_ready()
    out = thumbs_of(tmp_path, True)
    wait_for(lambda: all((out / n).exists() for n in names), 30, message="four thumbnails")
    daemon.wait_log(r"catch-up done")
    before = snapshot(out)

    mounts.dead_fuse(root)
    with pytest.raises(OSError) as err:
        os.stat(root)
    assert err.value.errno == errno.ENOTCONN
    reload_and_wait(daemon, 1)
    assert snapshot(out) == before
    daemon.wait_log(r"ERROR watched folder \S*photos is unavailable: transport endpoint is not connected")
    wait_for(lambda: unavailable_in_status(daemon).get(str(root), "").startswith("transport endpoint is not connected"), 10,
             message="status says ENOTCONN")

    mounts.umount(root, lazy=True, stacked=True)  # the dead FUSE mount only: the ext4 beneath it is there again
    daemon.wait_log(r"watched folder \S*photos is back")
    daemon.wait_log(r"catch-up of returned folder done")
    assert ok_lines(daemon) != [] and len(ok_lines(daemon)) == 4, "nothing changed, nothing is rendered again"
    make_flat_jpeg(root / "new.jpg", (10, 10, 10))
    wait_for((out / "new.jpg").exists, 20, message="a new photo, by its event")
    assert snapshot(out).items() >= before.items()
    assert len(error_lines(daemon)) == 1 and not daemon.matching(r"WARNING failed "), daemon.text()


def test_a_tmpfs_replaced_by_an_empty_one_is_not_taken_for_the_folder(mounts, start_daemon, tmp_path):
    """tmpfs forgets everything on unmount: a new empty tmpfs in its place is another file system
    (no marker), not the watched folder emptied. The mirror stays whole."""
    root = tmp_path / "photos"
    mounts.tmpfs(root)
    names = photos(root, 4)
    daemon = start_daemon(config(tmp_path, absolute=True))
    daemon.wait_ready()
    out = thumbs_of(tmp_path, True)
    wait_for(lambda: all((out / n).exists() for n in names), 30, message="four thumbnails")
    daemon.wait_log(r"catch-up done")
    before = snapshot(out)

    mounts.umount(root, lazy=True)
    mounts.tmpfs(root)  # a fresh, empty one
    reload_and_wait(daemon, 1)
    assert snapshot(out) == before
    daemon.wait_log(r"ERROR watched folder \S*photos is unavailable: (not mounted|its marker)")
    wait_for(lambda: unavailable_in_status(daemon).get(str(root), "").startswith("its marker .thumbwatch-root is missing"),
             10, message="status: another file system")
    if daemon.matching(r"unavailable: not mounted"):  # the check saw the empty mount point before the new tmpfs
        daemon.wait_log(r"WARNING watched folder \S*photos is still unavailable, now: its marker")
    make_flat_jpeg(root / "stranger.jpg", (10, 10, 10))  # not watched: it is not the folder we know
    reload_and_wait(daemon, 2)
    assert snapshot(out) == before
    assert len(error_lines(daemon)) == 1, daemon.text()
    assert not (out / "stranger.jpg").exists()


# ---- at start --------------------------------------------------------------------------------


def _first_run(mounts: Mounts, start_daemon, tmp_path: Path, names: int = 5) -> tuple[Path, Path, dict]:
    """A run with the file system mounted, so the state folder knows the root; then stopped."""
    root = tmp_path / "photos"
    image = mounts.ext4_image()
    mounts.loop(image, root)
    made = photos(root, names)
    daemon = start_daemon(config(tmp_path, absolute=True))
    out = thumbs_of(tmp_path, True)
    wait_for(lambda: all((out / n).exists() for n in made), 30, message="thumbnails of the first run")
    daemon.wait_log(r"catch-up done")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    return root, image, snapshot(out)


def _systemd_messages(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(65536).decode())
        except BlockingIOError:
            return messages


@pytest.mark.parametrize("create", [True, False], ids=["create", "no-create"])
def test_an_empty_mount_point_at_start_is_waited_for(mounts, start_daemon, tmp_path, create):
    root, image, before = _first_run(mounts, start_daemon, tmp_path)
    mounts.umount(root)
    config(tmp_path, absolute=True, create=create)
    scan = subprocess.run([sys.executable, "-m", "watcher", "scan", "--confirm-removals", "--config", str(tmp_path / "storage.yaml")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert scan.returncode == 1, scan.stdout + scan.stderr  # one-shot, even confirmed: nothing swept, and it says why
    assert snapshot(tmp_path / "mirror") == before, "`thumbwatch scan` swept the mirror of an empty mount point"
    assert re.search(r"ERROR watched folder \S*photos is unavailable: not mounted", scan.stdout + scan.stderr), scan.stdout + scan.stderr
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    daemon = start_daemon(config(tmp_path, absolute=True, create=create), env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    daemon.wait_ready()
    daemon.wait_log(r"catch-up done")
    assert snapshot(tmp_path / "mirror") == before, "the mirror was swept on an empty mount point"
    assert os.listdir(root) == [], "wrote into the empty mount point"
    assert error_lines(daemon), daemon.text()
    assert str(root) in unavailable_in_status(daemon)
    ready = [m for m in _systemd_messages(notify) if "READY=1" in m]
    assert ready and f"UNAVAILABLE {root}: not mounted" in ready[0], ready
    shown = subprocess.run([sys.executable, "-m", "watcher", "status", "--config", str(tmp_path / "storage.yaml")],
                           capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert f"UNAVAILABLE: {root}: not mounted" in shown.stdout, shown.stdout + shown.stderr

    mounts.loop(image, root)
    daemon.wait_log(r"watched folder \S*photos is back", timeout=20)
    daemon.wait_log(r"catch-up of returned folder done")
    assert ok_lines(daemon) == [], "nothing changed, nothing is rendered"
    assert snapshot(tmp_path / "mirror") == before
    make_flat_jpeg(root / "new.jpg", (10, 10, 10))
    wait_for((tmp_path / "mirror" / "new.jpg").exists, 20, message="a new photo, by its event")
    assert len(error_lines(daemon)) == 1, daemon.text()
    wait_for(lambda: any(m.startswith("STATUS=") and "UNAVAILABLE" not in m for m in _systemd_messages(notify)), 10,
             message="systemd's STATUS without UNAVAILABLE")
    notify.close()


@pytest.mark.parametrize("create", [True, False], ids=["create", "no-create"])
def test_a_missing_mount_point_at_start_is_not_created_and_is_waited_for(mounts, start_daemon, tmp_path, create):
    root, image, before = _first_run(mounts, start_daemon, tmp_path)
    mounts.umount(root)
    root.rmdir()
    daemon = start_daemon(config(tmp_path, absolute=True, create=create))
    daemon.wait_ready()
    daemon.wait_log(r"catch-up done")
    assert not root.exists(), "watch.create made a folder where the mount point was"
    assert snapshot(tmp_path / "mirror") == before
    daemon.wait_log(r"ERROR watched folder \S*photos is gone: it does not exist")
    wait_for(lambda: str(root) in unavailable_in_status(daemon), 10, message="status says unavailable")

    mounts.loop(image, root)  # makes the mount point again
    daemon.wait_log(r"watched folder \S*photos is back", timeout=20)
    daemon.wait_log(r"catch-up of returned folder done")
    assert ok_lines(daemon) == []
    make_flat_jpeg(root / "new.jpg", (10, 10, 10))
    wait_for((tmp_path / "mirror" / "new.jpg").exists, 20, message="a new photo, by its event")


# ---- the mass-removal guard (no mount) ---------------------------------------------------------


def test_a_mass_removal_is_held_until_confirmed(start_daemon, tmp_path):
    """Thumbnails of 1,500 photos that went while the daemon was stopped (nobody saw them go):
    held with one ERROR, not removed; `thumbwatch scan --confirm-removals` removes them. A photo
    seen going (its delete event) loses its thumbnail at once, guard or not."""
    root = tmp_path / "photos"
    kept = photos(root, 3, prefix="kept")
    cfg = config(tmp_path, absolute=False)
    daemon = start_daemon(cfg)
    out = thumbs_of(tmp_path, False)
    wait_for(lambda: all((out / n).exists() for n in kept), 30, message="three thumbnails")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    # 1,500 thumbnails whose photos are gone (hard links of a real one: same bytes, cheap)
    for i in range(1500):
        os.link(out / "kept0.jpg", out / f"gone{i:04}.jpg")

    daemon = start_daemon(cfg)
    daemon.wait_log(r"catch-up done")
    assert len(list(out.glob("gone*.jpg"))) == 1500
    held = daemon.wait_log(r"ERROR holding back the removal of 1500 of 1503 thumbnail\(s\) under \S*photos")
    assert "--confirm-removals" in held[0]
    assert len(list(out.glob("gone*.jpg"))) == 1500
    wait_for(lambda: daemon.status().get("removals_held") == {str(root): 1500}, 10, message="status says held")
    (root / "kept1.jpg").unlink()  # seen going: not held
    wait_for(lambda: not (out / "kept1.jpg").exists(), 20, message="the thumbnail of a deleted photo")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0

    scan = subprocess.run([sys.executable, "-m", "watcher", "scan", "--confirm-removals", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert scan.returncode == 0, scan.stdout + scan.stderr
    assert "removed 1500 thumbnail(s) whose photo is gone" in scan.stdout + scan.stderr
    assert sorted(p.name for p in out.glob("*.jpg")) == ["kept0.jpg", "kept2.jpg"]


# ---- the monitor itself, in-process ------------------------------------------------------------


def test_the_root_monitor_says_why_and_remembers(mounts, tmp_path, monkeypatch):
    from watcher.roots import MARKER, RootMonitor, read_marker, remembered

    root = tmp_path / "photos"
    state = tmp_path / "state"
    mounts.tmpfs(root)
    monitor = RootMonitor((str(root),), state)
    monitor.start()
    ident = read_marker(str(root))
    assert ident and monitor.check(str(root)) is None
    assert remembered(state)[str(root)].mounted and remembered(state)[str(root)].marker == ident

    mounts.umount(root)
    assert monitor.check(str(root)).startswith("not mounted")
    assert monitor.changes() == [(str(root), monitor.unavailable()[str(root)])]
    mounts.tmpfs(root)  # another, empty file system in its place
    assert monitor.check(str(root)).startswith(f"its marker {MARKER} is missing")
    (root / MARKER).write_text('{"id": "someone-else"}')
    assert "another folder's marker" in monitor.check(str(root))
    (root / MARKER).write_text(json.dumps({"id": ident}))
    assert monitor.check(str(root)) is None
    changes = monitor.changes()  # the reason changed twice while it was away, then it was back
    assert [(r, why and why.split(" ")[:2]) for r, why in changes] == [
        (str(root), ["its", "marker"]), (str(root), ["it", "holds"]), (str(root), None)]

    real_stat = os.stat

    def stale(path, *args, **kwargs):
        if os.fspath(path) == str(root):
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE), str(path))  # no NFS server here to lose it
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stale)
    assert monitor.check(str(root)).startswith("stale file handle")
    monkeypatch.undo()

    mounts.umount(root)
    root.rmdir()
    restarted = RootMonitor((str(root),), state, create=True)
    restarted.start()
    assert not root.exists(), "a remembered root is never created"
    assert restarted.unavailable()[str(root)].startswith("it does not exist")
    assert monitor.epoch[str(root)] == 2


def test_a_plain_folder_made_anew_is_taken_and_marked(tmp_path):
    """Not a mount point, same file system, marker gone with the folder: somebody made it anew
    (rm -rf; mkdir). It is the folder to watch; it gets a new marker."""
    from watcher.roots import RootMonitor, read_marker

    root = tmp_path / "photos"
    root.mkdir()
    monitor = RootMonitor((str(root),), tmp_path / "state")
    monitor.start()
    first = read_marker(str(root))
    shutil.rmtree(root)
    assert monitor.check(str(root)).startswith("it does not exist")
    root.mkdir()
    assert monitor.check(str(root)) is None
    assert read_marker(str(root)) not in (None, first)


@pytest.mark.parametrize("orphans,kept,held", [(1001, 999, True), (1000, 0, False), (1001, 1001, False)],
                         ids=["most-and-many", "not-over-1000", "not-over-half"])
def test_the_mass_removal_threshold(tmp_path, orphans, kept, held):
    """More than 1,000 and more than half of the thumbnails a pass looked at: held, unless confirmed."""
    from watcher.config import parse
    from watcher.paths import PathRules
    from watcher.roots import RootMonitor
    from watcher.thumbtree import sweep_orphans

    (tmp_path / "photos").mkdir()
    config = parse({"watch": {"paths": ["photos"]}, "state": {"dir": "state"}}, file=tmp_path / "c.yaml", base_dir=tmp_path)
    rules = PathRules(config)
    out = Path(rules.output_roots[0])
    out.mkdir()
    names = [f"o{i}.jpg" for i in range(orphans)] + [f"k{i}.jpg" for i in range(kept)]
    for name in names:
        (out / name).write_bytes(b"")
    expected = {str(out / f"k{i}.jpg") for i in range(kept)}
    monitor = RootMonitor(rules.roots, tmp_path / "state")
    since = os.stat(out / names[-1]).st_ctime_ns + 1
    removed = sweep_orphans(rules, [str(out)], expected, since, monitor.removal_guard(rules.roots[0], confirmed=False))
    assert removed == (0 if held else orphans)
    assert monitor.held_removals() == ({rules.roots[0]: orphans} if held else {})
    if held:
        assert sweep_orphans(rules, [str(out)], expected, since, monitor.removal_guard(rules.roots[0], confirmed=True)) == orphans
        assert monitor.held_removals() == {}
    assert sorted(os.listdir(out)) == sorted(f"k{i}.jpg" for i in range(kept))


def test_delete_notices_and_failures_under_an_unavailable_root_remove_nothing(mounts, tmp_path):
    """What a poll of an empty mount point reports (every photo deleted, every folder gone) and
    what a FUSE mount in trouble makes of renders (failures) removes no thumbnail and records
    no failure, in-process; the same notices under an available root do remove."""
    from watcher.admission import Admission
    from watcher.config import parse
    from watcher.paths import PathRules
    from watcher.roots import RootMonitor
    from watcher.state import FailureStore
    from watcher.status import Stats

    root = tmp_path / "photos"
    mounts.tmpfs(root)
    (root / "album").mkdir()
    config = parse({"watch": {"paths": ["photos"]}, "output": {"dir": str(tmp_path / "mirror")}, "state": {"dir": "state"}},
                   file=tmp_path / "c.yaml", base_dir=tmp_path)
    rules = PathRules(config)
    thumbs = [Path(t.path) for photo in ("p.jpg", "q.jpg", "album/a.jpg") for t in rules.targets(str(root / photo))]
    for thumb in thumbs:
        thumb.parent.mkdir(parents=True, exist_ok=True)
        thumb.write_bytes(b"a thumbnail")
    monitor = RootMonitor(rules.roots, tmp_path / "state")
    monitor.start()
    failures = FailureStore(tmp_path / "state")
    admission = Admission(config, rules, failures, Stats(), present=monitor.present)

    mounts.umount(root)
    admission.deleted(str(root / "p.jpg"))
    admission.folder_gone(str(root / "album"))
    admission._fail(str(root / "q.jpg"), None, "Transport endpoint is not connected")
    assert all(t.exists() for t in thumbs) and len(failures) == 0

    mounts.tmpfs(root)
    (root / ".thumbwatch-root").write_text(json.dumps({"id": monitor.known[str(root)].marker}))  # the same folder, back
    admission.deleted(str(root / "p.jpg"))
    admission.folder_gone(str(root / "album"))
    assert [t.name for t in thumbs if t.exists()] == ["q.jpg"]


def test_a_walk_that_cannot_read_a_folder_sweeps_nothing_under_its_root(tmp_path, monkeypatch):
    """EIO on one folder (a disk or a FUSE mount in trouble): its photos are not in the walk, so
    the walk's sweep would take their thumbnails for orphans. It sweeps nothing under that root."""
    from watcher.admission import Admission
    from watcher.config import parse
    from watcher.paths import PathRules
    from watcher.roots import RootMonitor
    from watcher.scan import Scanner
    from watcher.state import FailureStore
    from watcher.status import Stats

    root = tmp_path / "photos"
    for name in ("album/a.jpg", "b.jpg", "gone.jpg"):
        make_flat_jpeg(root / name, (200, 30, 30))
    config = parse({"watch": {"paths": ["photos"]}, "output": {"dir": str(tmp_path / "mirror")}, "state": {"dir": "state"}},
                   file=tmp_path / "c.yaml", base_dir=tmp_path)
    rules = PathRules(config)
    for name in ("album/a.jpg", "b.jpg", "gone.jpg"):
        for target in rules.targets(str(root / name)):
            Path(target.path).parent.mkdir(parents=True, exist_ok=True)
            Path(target.path).write_bytes(b"a thumbnail")
    (root / "gone.jpg").unlink()
    monitor = RootMonitor(rules.roots, tmp_path / "state")
    monitor.start()
    admission = Admission(config, rules, FailureStore(tmp_path / "state"), Stats(), present=monitor.present)
    scanner = Scanner(admission, lambda path: None, lambda report: None, monitor)
    real_scandir = os.scandir

    def failing(path="."):
        if os.fspath(path) == str(root / "album"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))  # no failing disk at hand
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", failing)
    assert scanner.scan("rescan", rules.roots, rules).orphans == 0
    assert (tmp_path / "mirror" / "album" / "a.jpg").exists() and (tmp_path / "mirror" / "gone.jpg").exists()
    monkeypatch.undo()
    assert scanner.scan("rescan", rules.roots, rules).orphans == 1  # read whole: the one photo that went
    assert sorted(p.name for p in (tmp_path / "mirror").rglob("*.jpg")) == ["a.jpg", "b.jpg"]


def test_a_dead_fuse_mount_at_start_is_waited_for(mounts, start_daemon, tmp_path):
    """At start, the folder the last run watched answers ENOTCONN: the config still loads, the
    daemon starts, says why, sweeps nothing, and takes the folder up when it is back."""
    _need(os.path.exists("/dev/fuse"), "no /dev/fuse here: cannot make a dead FUSE mount")
    root, _image, before = _first_run(mounts, start_daemon, tmp_path)
    mounts.dead_fuse(root)
    daemon = start_daemon(config(tmp_path, absolute=True, create=True))
    daemon.wait_ready()
    daemon.wait_log(r"catch-up done")
    assert snapshot(tmp_path / "mirror") == before
    daemon.wait_log(r"ERROR watched folder \S*photos is unavailable: transport endpoint is not connected")
    mounts.umount(root, lazy=True, stacked=True)
    daemon.wait_log(r"watched folder \S*photos is back")
    daemon.wait_log(r"catch-up of returned folder done")
    assert ok_lines(daemon) == [] and snapshot(tmp_path / "mirror") == before
    assert not daemon.matching(r"Traceback|bug in"), daemon.text()


def test_the_config_key_lets_a_mass_removal_go(tmp_path):
    """output.confirm_mass_removal: false — a sweep of 1,001 of 1,001 thumbnails is done, not held."""
    from watcher.admission import Admission
    from watcher.config import parse
    from watcher.paths import PathRules
    from watcher.roots import RootMonitor
    from watcher.scan import Scanner
    from watcher.state import FailureStore
    from watcher.status import Stats

    (tmp_path / "photos").mkdir()
    for confirm, left in ((True, 1001), (False, 0)):
        config = parse({"watch": {"paths": ["photos"]}, "output": {"confirm_mass_removal": confirm}, "state": {"dir": "state"}},
                       file=tmp_path / "c.yaml", base_dir=tmp_path)
        rules = PathRules(config)
        out = Path(rules.output_roots[0])
        out.mkdir(exist_ok=True)
        for i in range(1001):
            (out / f"gone{i}.jpg").touch()
        monitor = RootMonitor(rules.roots, tmp_path / "state")
        monitor.start()
        admission = Admission(config, rules, FailureStore(tmp_path / "state"), Stats(), present=monitor.present)
        Scanner(admission, lambda path: None, lambda report: None, monitor).scan("rescan", rules.roots, rules)
        assert len(list(out.glob("*.jpg"))) == left


def test_a_damaged_roots_file_is_moved_aside_and_said(tmp_path, caplog):
    from watcher.roots import ROOTS_FILE, RootMonitor, remembered

    (tmp_path / "photos").mkdir()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / ROOTS_FILE).write_text("{not json")
    RootMonitor((str(tmp_path / "photos"),), tmp_path / "state").start()
    assert any("roots.json is damaged" in r.getMessage() and "moved aside" in r.getMessage() for r in caplog.records)
    assert list((tmp_path / "state").glob("roots.json.damaged-*"))
    assert str(tmp_path / "photos") in remembered(tmp_path / "state")
