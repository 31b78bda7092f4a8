"""thumbwatch installed the README's way, under a real systemd 252 (Debian 12 in systemd-nspawn).

`make test-systemd` only (THUMBWATCH_SYSTEMD=1). One machine for the module: it is booted, the
README's "Installing" steps run in it verbatim, by an admin with sudo in their own clone (a copy
of the working tree), and each test then checks what a person would, in order. The machine is
always torn down.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from helpers import REPO, corner_colour, is_blue, is_red, make_jpeg, temp_files, wait_for
from machine import Machine, MachineError, missing_tools, rootfs_tarball, wheelhouse

pytestmark = pytest.mark.timeout(300)

CONFIG = "/etc/thumbwatch/config.yaml"
PHOTOS = "/srv/photos"
ADMIN = "admin"  # the admin of the README: a login with sudo
SOURCE = f"/home/{ADMIN}/thumbwatch"  # their clone, in the machine


def install_steps(heading: str = "### Installing", block: int = 0) -> list[str]:
    """The commands of the README's `block`-th ```sh block under `heading`, as written."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading):]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) > block, f"README: no ```sh block #{block} under {heading}"
    return [line for line in blocks[block].splitlines() if line.strip() and not line.lstrip().startswith("#")]


def as_admin(box: Machine, steps: list[str], timeout: float = 180) -> None:
    """Each step as the admin types it: from their clone, sudo where the README says so."""
    for step in steps:
        box.run(f"export HOME=/home/{ADMIN}; {step}", user=ADMIN, cwd=SOURCE, timeout=timeout)


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("make test-systemd needs root (it boots a container with systemd-nspawn)")
    if missing := missing_tools():
        pytest.skip(f"missing {', '.join(missing)}: apt-get install mmdebstrap systemd-container")
    if not all(Path(p).is_dir() for p in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")):
        pytest.skip("needs the cgroup hierarchies /sys/fs/cgroup/systemd and /sys/fs/cgroup/unified")
    cache = REPO / ".cache" / "systemd-rootfs"
    tarball = rootfs_tarball(cache)
    wheels = wheelhouse(cache)
    work = tmp_path_factory.mktemp("machine")
    box = Machine(tarball, work, name=f"thumbwatch-test-{os.getpid()}")
    with box:
        started = time.monotonic()
        box.unpack(wheels)
        make_fixtures(box.path("/opt/fixtures"))
        box.boot()
        print(f"\nbooted in {time.monotonic() - started:.1f} s")
        # The people of the README: the admin installs, alice drops photos, carol may control the
        # service (the thumbwatch group, added below), bob is anyone else (a web server, say).
        box.run(f"useradd --create-home alice && useradd --create-home bob && useradd --create-home carol"
                f" && useradd --create-home {ADMIN} && echo '{ADMIN} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/{ADMIN}")
        copy_working_tree(box.path(SOURCE))
        box.run(f"chown -R {ADMIN}: {SOURCE}")
        as_admin(box, install_steps("### Installing", 0) + install_steps("### Installing", 1))
        box.run("usermod -a -G thumbwatch carol")
        print(f"installed by the README's steps in {time.monotonic() - started:.1f} s")
        yield box


def copy_working_tree(dest: Path) -> None:
    """The working tree as a clone would have it: tracked and new files, not what git ignores."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def make_fixtures(folder: Path) -> None:
    folder.mkdir(parents=True)
    make_jpeg(folder / "sideways.jpg", 400, 300, orientation=6)  # a phone photo taken upright
    make_jpeg(folder / "plain.jpg", 400, 300, orientation=1)
    make_jpeg(folder / "more.jpg", 300, 200, orientation=3)
    make_jpeg(folder / "big.jpg", 4000, 3000, orientation=8)  # ~100 ms a render: a stop finds some in hand
    whole = (folder / "plain.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(whole[: len(whole) // 3])
    for path in [folder, *folder.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)


# -- what a person would look at ---------------------------------------------------------------

def show(box: Machine, unit: str, *props: str) -> dict[str, str]:
    out = box.run(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal(box: Machine, unit: str, priority: str | None = None, since: str | None = None) -> list[str]:
    options = f"-u {unit} -o cat --no-pager" + (f" -p {priority}" if priority else "") + (f" --since=@{since}" if since else "")
    return box.run(f"journalctl {options}").stdout.splitlines()


def status(box: Machine, config: str = CONFIG) -> dict | None:
    """`thumbwatch status --json`, run by the admin from a shell (not inside the unit)."""
    result = box.run(f"thumbwatch status -c {config} --json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def clock(box: Machine) -> str:
    return box.run("date +%s").stdout.strip()


def drop(box: Machine, name: str, folder: str = PHOTOS) -> None:
    """alice, in the photos group, copies a photo in, as she would from a shell."""
    box.run(f"cp /opt/fixtures/{name} {folder}/", user="alice")


def assert_upright(path: Path) -> None:
    with Image.open(path) as im:
        im.load()
        assert max(im.size) <= 75, im.size
        assert is_red(corner_colour(im, "tl")) and is_blue(corner_colour(im, "br")), f"{path} is not upright"


def wait_active(box: Machine, unit: str = "thumbwatch", timeout: float = 60) -> dict[str, str]:
    return wait_for(lambda: (p := show(box, unit, "ActiveState", "MainPID", "StatusText", "NRestarts"))["ActiveState"] == "active" and p,
                    timeout=timeout, interval=0.3, message=f"{unit} active")


# -- the checks, in the order a person would make them ------------------------------------------

def test_the_install_leaves_the_admins_clone_theirs_and_the_documentation_in_place(machine):
    roots = machine.run(f"find {SOURCE} -user root").stdout.split()
    assert not roots, f"root-owned files left in the admin's clone: {roots}"
    assert machine.run(f"ls {SOURCE}/dist").stdout.split()[0].startswith("thumbwatch-")
    for unit in ("thumbwatch", "thumbwatch@x"):
        documentation = show(machine, unit, "Documentation")["Documentation"]
        assert documentation == "file:///usr/share/doc/thumbwatch/README.md", documentation
    assert machine.path("/usr/share/doc/thumbwatch/README.md").read_text() == (REPO / "README.md").read_text()


def test_started_by_the_readme_active_with_a_status_line(machine):
    props = wait_active(machine)
    assert show(machine, "thumbwatch", "UnitFileState")["UnitFileState"] == "enabled"
    wait_for(lambda: "watching" in show(machine, "thumbwatch", "StatusText")["StatusText"], timeout=30, interval=0.3,
             message="a STATUS= line")
    assert show(machine, "thumbwatch", "User")["User"] == "thumbwatch", props
    running = status(machine)
    assert running and running["folders"] == [PHOTOS], running


def test_photos_dropped_by_the_photo_group_become_thumbnails_anyone_can_read(machine):
    drop(machine, "sideways.jpg")
    drop(machine, "plain.jpg")
    thumbs = [machine.path(f"{PHOTOS}/thumbs/{name}") for name in ("sideways.jpg", "plain.jpg")]
    wait_for(lambda: all(t.exists() for t in thumbs), timeout=30, interval=0.2, message="both thumbnails")
    for name in ("sideways.jpg", "plain.jpg"):
        # bob is not in the photos group: "readable by a web server" means by anyone.
        size = machine.run(f"wc -c < {PHOTOS}/thumbs/{name}", user="bob").stdout.strip()
        assert int(size) == machine.path(f"{PHOTOS}/thumbs/{name}").stat().st_size
        listing = machine.run(f"stat -c '%A %U %G' {PHOTOS}/thumbs/{name}").stdout.split()
        assert listing == ["-rw-r--r--", "thumbwatch", "photos"], listing
    # README: "Thumbnails are 0644 in 2755 folders" (setgid, inherited from the photo folder)
    assert machine.run(f"stat -c '%a %U %G' {PHOTOS}/thumbs").stdout.split() == ["2755", "thumbwatch", "photos"]
    for thumb in thumbs:
        assert_upright(thumb)
    ok_lines = [line for line in journal(machine, "thumbwatch") if line.startswith(("ok ", "INFO ok")) or " ok " in line]
    assert any("sideways.jpg" in line for line in ok_lines), ok_lines


def test_a_corrupt_photo_is_the_only_warning(machine):
    drop(machine, "broken.jpg")
    warnings = wait_for(lambda: (w := journal(machine, "thumbwatch", "warning")) and any("broken.jpg" in line for line in w) and w,
                        timeout=30, interval=0.3, message="a warning about broken.jpg")
    assert all("broken.jpg" in line for line in warnings), warnings
    # The admin's view from a shell: the failure records are saved within the daemon's periodic tick.
    failed = wait_for(lambda: (out := machine.run(f"thumbwatch failed -c {CONFIG}").stdout) and out, timeout=30, interval=0.5,
                      message="thumbwatch failed lists a photo")
    assert "broken.jpg" in failed and "plain.jpg" not in failed, failed


def test_retry_from_the_admins_shell_reaches_the_running_service(machine):
    pid = show(machine, "thumbwatch", "MainPID")["MainPID"]
    out = machine.run(f"sudo thumbwatch retry -c {CONFIG}", user=ADMIN).stdout
    assert f"cleared 1 failure record(s) in the running daemon (pid {pid}); 1 photo(s) queued" in out, out
    wait_for(lambda: sum("broken.jpg" in line for line in journal(machine, "thumbwatch", "warning")) == 2, timeout=30, interval=0.3,
             message="broken.jpg tried again")
    assert any("retry (control socket, uid 0" in line for line in journal(machine, "thumbwatch")), "not through the socket"


def test_the_control_socket_is_for_root_and_the_thumbwatch_group(machine):
    pid = show(machine, "thumbwatch", "MainPID")["MainPID"]
    listing = machine.run("stat -c '%a %U %G %F' /run/thumbwatch/control.sock").stdout.strip().split(maxsplit=3)
    assert listing == ["660", "thumbwatch", "thumbwatch", "socket"], listing
    assert machine.run("readlink /var/lib/thumbwatch/control.sock").stdout.strip() == "/run/thumbwatch/control.sock"
    admin = machine.run(f"sudo thumbwatch status --json -c {CONFIG}", user=ADMIN)
    assert json.loads(admin.stdout)["pid"] == int(pid) and "status file" not in admin.stderr, admin
    # carol, in the thumbwatch group, without sudo
    assert "is now paused" in machine.run(f"thumbwatch pause -c {CONFIG}", user="carol").stdout
    wait_for(lambda: show(machine, "thumbwatch", "StatusText")["StatusText"].startswith("paused, "), timeout=15, interval=0.3,
             message="STATUS= says paused")
    assert "PAUSED" in machine.run(f"thumbwatch status -c {CONFIG}", user="carol").stdout
    # alice drops photos, bob is anyone: neither may steer the service; both still see the status file
    for user in ("alice", "bob"):
        refused = machine.run(f"thumbwatch resume -c {CONFIG}", user=user, check=False)
        assert refused.returncode == 1 and "not allowed to use the control socket" in refused.stderr, (user, refused)
        seen = machine.run(f"thumbwatch status -c {CONFIG}", user=user)
        assert "showing the status file" in seen.stderr and f"pid {pid}" in seen.stdout, (user, seen)
    assert "is now running" in machine.run(f"thumbwatch resume -c {CONFIG}", user="carol").stdout
    wait_for(lambda: show(machine, "thumbwatch", "StatusText")["StatusText"].startswith("watching"), timeout=15, interval=0.3,
             message="STATUS= without paused")
    lines = journal(machine, "thumbwatch")
    assert any("paused (control socket" in line for line in lines) and any("resumed (control socket" in line for line in lines)


def test_reload_with_a_new_worker_count(machine):
    before = wait_active(machine)
    machine.run(f"sed -i 's/^  count: auto$/  count: 3/' {CONFIG} && grep -q '^  count: 3$' {CONFIG}")
    machine.run("systemctl reload thumbwatch")
    wait_for(lambda: (s := status(machine)) and len(s["workers"]) == 3, timeout=30, interval=0.3, message="3 workers after reload")
    wait_for(lambda: "3 workers" in show(machine, "thumbwatch", "StatusText")["StatusText"], timeout=15, interval=0.3,
             message="STATUS= says 3 workers")
    assert show(machine, "thumbwatch", "MainPID")["MainPID"] == before["MainPID"], "reload restarted the service"


def test_a_worker_killed_with_sigkill_is_replaced(machine):
    workers = status(machine)["workers"]
    victim = workers[0]
    machine.run(f"kill -9 {victim}")
    wait_for(lambda: (s := status(machine)) and victim not in s["workers"] and len(s["workers"]) == len(workers),
             timeout=30, interval=0.3, message=f"worker {victim} replaced")
    assert any(str(victim) in line for line in journal(machine, "thumbwatch", "err")), "no error line about the killed worker"
    drop(machine, "more.jpg")
    wait_for(lambda: machine.path(f"{PHOTOS}/thumbs/more.jpg").exists(), timeout=30, interval=0.2, message="a photo after the kill")
    assert_upright(machine.path(f"{PHOTOS}/thumbs/more.jpg"))


def test_the_watchdog_stays_quiet_while_idle(machine):
    drop_in = machine.path("/etc/systemd/system/thumbwatch.service.d/test-watchdog.conf")
    drop_in.parent.mkdir(parents=True, exist_ok=True)
    drop_in.write_text("[Service]\nWatchdogSec=2s\n")
    machine.run("systemctl daemon-reload && systemctl restart thumbwatch")
    props = wait_active(machine)
    assert show(machine, "thumbwatch", "WatchdogUSec")["WatchdogUSec"] == "2s"
    since = clock(machine)
    time.sleep(8)  # the thing under test is idleness itself: four watchdog periods of it
    after = show(machine, "thumbwatch", "ActiveState", "MainPID", "NRestarts")
    assert (after["ActiveState"], after["MainPID"], after["NRestarts"]) == ("active", props["MainPID"], props["NRestarts"]), after
    assert not [line for line in journal(machine, "thumbwatch", since=since) if "atchdog" in line]


def test_stop_drains_and_exits_0_without_sigkill(machine):
    since = clock(machine)
    # A burst of big photos, and the stop while they are being rendered.
    machine.run("mkdir /srv/photos/burst && " + " && ".join(f"cp /opt/fixtures/big.jpg /srv/photos/burst/{i:02d}.jpg" for i in range(24)),
                user="alice")
    wait_for(lambda: any(machine.path(f"{PHOTOS}/thumbs/burst").glob("*.jpg")), timeout=30, interval=0.05,
             message="the burst under way")
    machine.run("systemctl stop thumbwatch", timeout=60)
    props = show(machine, "thumbwatch", "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainCode": "1", "ExecMainStatus": "0"}, props
    lines = journal(machine, "thumbwatch", since=since)
    assert any("draining:" in line for line in lines) and any("stopped:" in line for line in lines), lines
    assert not [line for line in lines if "SIGKILL" in line or "Killing process" in line], lines
    burst = machine.path(f"{PHOTOS}/thumbs/burst")
    print(f"\n{next(line for line in lines if 'draining:' in line)}; {len(list(burst.glob('*.jpg')))} of 24 thumbnails made")
    assert not temp_files(burst), temp_files(burst)
    for thumb in burst.glob("*.jpg"):  # whatever was written is whole
        assert_upright(thumb)
    # The next start's catch-up makes the rest.
    machine.run("systemctl start thumbwatch")
    wait_active(machine)
    wait_for(lambda: len(list(burst.glob("*.jpg"))) == 24, timeout=60, interval=0.3, message="all 24 after the restart")


def test_kill_of_the_whole_service_is_restarted(machine):
    before = wait_active(machine)
    machine.run("systemctl kill -s KILL thumbwatch")
    after = wait_for(lambda: (p := show(machine, "thumbwatch", "ActiveState", "MainPID", "NRestarts"))["ActiveState"] == "active"
                     and p["MainPID"] not in ("0", before["MainPID"]) and p, timeout=60, interval=0.3, message="restarted")
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, after
    # the restarted daemon answers on its control socket (a socket left by the kill is replaced)
    answered = machine.run(f"thumbwatch status --json -c {CONFIG}")
    assert json.loads(answered.stdout)["pid"] == int(after["MainPID"]) and "status file" not in answered.stderr, answered


def test_a_second_instance_beside_the_plain_unit(machine):
    # The README's instance steps, verbatim: NAME archive, its own folder /srv/archive.
    as_admin(machine, install_steps("#### More configs on one machine"))
    wait_active(machine, "thumbwatch@archive")
    wait_active(machine, "thumbwatch")
    assert machine.run("stat -c '%a %U %G' /srv/archive").stdout.split() == ["2775", "root", "photos"]
    assert show(machine, "thumbwatch@archive", "ReadWritePaths")["ReadWritePaths"] == "/srv/archive", "may write the plain unit's folder"
    drop(machine, "plain.jpg", "/srv/archive")
    wait_for(lambda: machine.path("/srv/archive/thumbs/plain.jpg").exists(), timeout=30, interval=0.2, message="the instance's thumbnail")
    assert_upright(machine.path("/srv/archive/thumbs/plain.jpg"))
    second = status(machine, "/etc/thumbwatch/archive.yaml")
    assert second and second["folders"] == ["/srv/archive"], second
    assert status(machine)["pid"] != second["pid"]
    assert machine.run("readlink /var/lib/thumbwatch-archive/control.sock").stdout.strip() == "/run/thumbwatch-archive/control.sock"


def failed_start(machine: Machine, name: str, yaml_text: str) -> tuple[dict[str, str], list[str]]:
    machine.path(f"/etc/thumbwatch/{name}.yaml").write_text(yaml_text)
    machine.run(f"systemctl start thumbwatch@{name}", check=False, timeout=60)
    props = wait_for(lambda: (p := show(machine, f"thumbwatch@{name}", "ActiveState", "ExecMainStatus", "NRestarts"))["ActiveState"] == "failed" and p,
                     timeout=30, interval=0.3, message=f"thumbwatch@{name} failed")
    return props, journal(machine, f"thumbwatch@{name}", "err")


def test_a_bad_config_exits_78_without_a_restart_loop(machine):
    props, errors = failed_start(machine, "bad", f"watch:\n  paths: [{PHOTOS}]\nworkers:\n  count: two\nstate:\n  dir: /var/lib/thumbwatch-bad\n")
    assert props["ExecMainStatus"] == "78", props
    assert any("workers.count" in line and "/etc/thumbwatch/bad.yaml" in line for line in errors), errors
    time.sleep(4)  # RestartSec=2: twice that, and still no restart
    assert show(machine, "thumbwatch@bad", "NRestarts", "ActiveState") == {"NRestarts": "0", "ActiveState": "failed"}


def test_freedesktop_is_refused_by_the_system_unit(machine):
    props, errors = failed_start(machine, "desk", f"watch:\n  paths: [{PHOTOS}]\noutput:\n  style: freedesktop\nstate:\n  dir: /var/lib/thumbwatch-desk\n")
    assert props["ExecMainStatus"] == "78", props
    assert any("output.style" in line and "user unit" in line for line in errors), errors


def test_metrics_name_the_unit_setting_then_work_with_the_drop_in(machine):
    name = "metrics"
    # The README: metrics need the extra, and a photo folder of its own (plus ReadWritePaths=).
    readme = (REPO / "README.md").read_text()
    command = re.search(r"\(`(sudo\s+/opt/thumbwatch/bin/pip install '[^`]+')`\)", readme).group(1)
    as_admin(machine, [" ".join(command.split())], timeout=120)
    machine.run("mkdir -p /srv/m && chown root:photos /srv/m && chmod 2775 /srv/m")
    paths = machine.path(f"/etc/systemd/system/thumbwatch@{name}.service.d/paths.conf")
    paths.parent.mkdir(parents=True)
    paths.write_text("[Service]\nReadWritePaths=/srv/m\n")
    machine.run("systemctl daemon-reload")
    props, errors = failed_start(machine, name, f"watch:\n  paths: [/srv/m]\nstate:\n  dir: /var/lib/thumbwatch-{name}\n"
                                 "metrics:\n  port: 9750\n")
    assert props["ExecMainStatus"] == "78", props
    assert any("RestrictAddressFamilies=" in line for line in errors), errors
    # The fix the message names, as systemd/metrics.conf's comment says to install it.
    machine.run(f"mkdir -p /etc/systemd/system/thumbwatch@{name}.service.d"
                f" && cp systemd/metrics.conf /etc/systemd/system/thumbwatch@{name}.service.d/metrics.conf"
                f" && systemctl daemon-reload && systemctl restart thumbwatch@{name}", cwd=SOURCE)
    wait_active(machine, f"thumbwatch@{name}")
    scrape = "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9750/metrics', timeout=5).read().decode())\""
    text = wait_for(lambda: (r := machine.run(scrape, check=False)).returncode == 0 and r.stdout, timeout=30, interval=0.5,
                    message="the metrics endpoint")
    assert "thumbwatch_photos_done" in text


def test_the_user_unit_fills_the_desktop_users_thumbnail_cache(machine):
    # A desktop session stands in as lingering: alice's user manager runs without a login.
    machine.run("loginctl enable-linger alice")
    uid = machine.run("id -u alice").stdout.strip()
    wait_for(lambda: show(machine, f"user@{uid}.service", "ActiveState")["ActiveState"] == "active", timeout=60, interval=0.3,
             message="alice's user manager")
    # Her clone of the repository; then the README's user-unit steps, as alice, verbatim.
    machine.run(f"cp -r {SOURCE} /home/alice/thumbwatch && chown -R alice: /home/alice/thumbwatch")
    for step in install_steps("### Desktop thumbnails"):
        machine.run(f"export XDG_RUNTIME_DIR=/run/user/{uid} HOME=/home/alice; {step}", user="alice", cwd="/home/alice/thumbwatch", timeout=60)
    machine.run("cp /opt/fixtures/sideways.jpg /home/alice/Pictures/", user="alice")
    cache = machine.path("/home/alice/.cache/thumbnails/normal")
    found = wait_for(lambda: cache.is_dir() and [p for p in cache.iterdir() if p.suffix == ".png"], timeout=30, interval=0.3,
                     message="a freedesktop thumbnail in alice's cache")
    with Image.open(found[0]) as im:
        assert im.info.get("Thumb::URI") == "file:///home/alice/Pictures/sideways.jpg", im.info
        im.load()
        assert is_red(corner_colour(im, "tl")) and is_blue(corner_colour(im, "br")), "not upright"
    assert found[0].stat().st_mode & 0o777 == 0o600, oct(found[0].stat().st_mode)
    listing = machine.run(f"XDG_RUNTIME_DIR=/run/user/{uid} systemctl --user show thumbwatch -p ActiveState -p StatusText", user="alice").stdout
    assert "ActiveState=active" in listing and "StatusText=" in listing, listing
    # her own control socket, in her state folder (the user unit has no RuntimeDirectory=)
    sock = machine.run("stat -c '%a %U %F' /home/alice/.local/state/thumbwatch/control.sock").stdout.strip().split(maxsplit=2)
    assert sock == ["660", "alice", "socket"], sock
    asked = machine.run("export HOME=/home/alice; thumbwatch status --json -c ~/.config/thumbwatch/config.yaml", user="alice")
    assert json.loads(asked.stdout)["folders"] == ["/home/alice/Pictures"] and "status file" not in asked.stderr, asked


def test_everything_still_fine_at_the_end(machine):
    failed = machine.run("systemctl --failed --no-legend --plain").stdout.split()
    assert set(u for u in failed if u.endswith(".service")) <= {"thumbwatch@bad.service", "thumbwatch@desk.service"}, failed
    assert status(machine)["failed"] >= 0
