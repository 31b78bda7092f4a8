"""A throwaway Debian 12 machine with systemd as PID 1, for `make test-systemd`.

The root file system is built once with mmdebstrap and cached as a tarball under
.cache/systemd-rootfs/, keyed by a hash of what goes into it; each run unpacks a fresh copy,
boots it with systemd-nspawn and tears it down again: every process it started (by PID), the
cgroups it made, the unpacked tree.

This host's PID 1 is not systemd, so `systemd-nspawn -b` cannot register with machined
("Failed to open system bus"): it runs with --register=no --keep-unit inside cgroups made for
it under /sys/fs/cgroup/{systemd,unified}/<name>. Commands reach the machine with nsenter into
its PID 1's namespaces; the host's own services are never touched.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# systemd as PID 1, python3 + venv to install thumbwatch the README's way, sudo because the
# README's steps say sudo, libpam-systemd for a user manager (the user unit; every desktop has
# it), procps for ps/pgrep when a check fails and a person looks.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "libpam-systemd", "python3", "python3-venv", "sudo", "procps")
# Wheels for the machine's pip, fetched on the host once (the host's pip knows its proxy and CA),
# served inside as an offline index through /etc/pip.conf, so `pip install .` needs no network:
# thumbwatch's dependencies, the metrics extra, the build backend.
WHEELS = ("watchdog>=7,<8", "Pillow>=10.1", "PyYAML>=6", "python-daemon>=3", "prometheus-client>=0.20", "setuptools>=64", "wheel")
WHEELS_INSIDE = "/var/cache/thumbwatch-wheels"
CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class MachineError(Exception):
    pass


def missing_tools() -> list[str]:
    return [tool for tool in ("mmdebstrap", "systemd-nspawn", "nsenter") if shutil.which(tool) is None]


def cache_key() -> str:
    text = "\n".join([SUITE, MIRROR, *PACKAGES, "v1"])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rootfs_tarball(cache_dir: Path, log=print, timeout: float = 900) -> Path:
    """The cached tarball of the machine's root file system, built when missing."""
    tarball = cache_dir / f"debian-{SUITE}-{cache_key()}.tar"
    if tarball.exists():
        return tarball
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_name(f"{tarball.stem}.partial-{os.getpid()}.tar")  # mmdebstrap goes by the .tar
    command = ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(partial), MIRROR]
    log(f"building the machine's root file system (once; cached as {tarball}) ...")
    started = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        partial.unlink(missing_ok=True)
        raise MachineError(f"mmdebstrap took over {timeout:.0f} s") from None
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise MachineError(f"mmdebstrap failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    os.replace(partial, tarball)
    log(f"built in {time.monotonic() - started:.0f} s")
    return tarball


def wheelhouse(cache_dir: Path, log=print, timeout: float = 600) -> Path:
    """Wheels for the machine's CPython 3.11 on x86_64 glibc, downloaded once by the host's pip."""
    key = hashlib.sha256("\n".join([*WHEELS, "cp311"]).encode()).hexdigest()[:16]
    folder = cache_dir / f"wheels-{key}"
    if folder.exists():
        return folder
    partial = cache_dir / f"wheels-{key}.partial-{os.getpid()}"
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64")]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--python-version=3.11",
               "--implementation=cp", "--abi=cp311", *platforms, f"--dest={partial}", *WHEELS]
    log(f"downloading wheels for the machine (once; cached as {folder}) ...")
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise MachineError(f"pip download failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    os.replace(partial, folder)
    return folder


class Machine:
    """One booted container. Use as a context manager: leaving it always tears everything down."""

    def __init__(self, tarball: Path, workdir: Path, name: str):
        self.tarball = tarball
        self.root = workdir / "root"
        self.name = name
        self.console = workdir / "console.log"
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None

    # -- life cycle --------------------------------------------------------------------------

    def unpack(self, wheels: Path) -> Path:
        """A fresh copy of the cached tree, with the wheels as its pip's only index."""
        self.root.mkdir(parents=True)
        subprocess.run(["tar", "--numeric-owner", "-C", str(self.root), "-xf", str(self.tarball)], check=True, timeout=120)
        shutil.copytree(wheels, self.path(WHEELS_INSIDE))
        self.path("/etc/pip.conf").write_text(f"[global]\nno-index = true\nfind-links = {WHEELS_INSIDE}\n")
        return self.root

    def boot(self, timeout: float = 90) -> None:
        cgroups = " ".join(f"{shlex.quote(str(root / self.name))}/cgroup.procs" for root in CGROUP_ROOTS)
        for root in CGROUP_ROOTS:
            (root / self.name).mkdir()
        # The shell puts itself into the cgroups, then becomes systemd-nspawn (same PID).
        script = f'for f in {cgroups}; do echo $$ > "$f" || exit 1; done; exec "$@"'
        command = ["sh", "-c", script, "sh", "systemd-nspawn", "--quiet", "--register=no", "--keep-unit",
                   f"--machine={self.name}", f"--directory={self.root}", "--boot"]
        with open(self.console, "wb") as console:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.leader is None:
            self._check_alive()
            self.leader = self._find_leader()
            if time.monotonic() > deadline:
                raise MachineError(f"no systemd in the container after {timeout:.0f} s; console: {self.console_tail()}")
            time.sleep(0.1)
        while True:
            state = self.run("systemctl is-system-running --wait", check=False, timeout=max(1, deadline - time.monotonic())).stdout.strip()
            if state in ("running", "degraded"):
                break
            self._check_alive()
            if time.monotonic() > deadline:
                raise MachineError(f"the container did not finish booting ({state}) in {timeout:.0f} s")
            time.sleep(0.2)
        if state == "degraded":
            failed = self.run("systemctl --failed --no-legend --plain", check=False).stdout.strip()
            raise MachineError(f"the container booted degraded: {failed}")

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise MachineError(f"systemd-nspawn exited {self.proc.returncode}; console: {self.console_tail()}")

    def _find_leader(self) -> int | None:
        """The container's PID 1 as the host sees it: the systemd below systemd-nspawn."""
        assert self.proc is not None
        for pid in _descendants(self.proc.pid):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                ns_pid = Path(f"/proc/{pid}/status").read_text().split("NSpid:")[1].split("\n")[0].split()
            except (OSError, IndexError):
                continue
            if comm == "systemd" and ns_pid[-1] == "1":
                return pid
        return None

    def console_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no console log)"

    def shutdown(self, timeout: float = 30) -> list[str]:
        """Power the machine off (SIGTERM to systemd-nspawn asks its systemd to), then kill
        whatever is left in its cgroups by PID, remove the cgroups and the unpacked tree.
        Returns what needed force, for the caller to report."""
        trouble: list[str] = []
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                trouble.append(f"systemd-nspawn (pid {self.proc.pid}) did not power off in {timeout:.0f} s: killed")
        for root in CGROUP_ROOTS:
            group = root / self.name
            deadline = time.monotonic() + 10
            while group.exists() and (pids := _cgroup_pids(group)):
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                if time.monotonic() > deadline:
                    trouble.append(f"processes {pids} in {group} survived SIGKILL")
                    break
                time.sleep(0.1)
            if self.proc is not None and self.proc.poll() is None:
                self.proc.wait(10)
            for folder in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [group]:
                try:
                    folder.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as err:
                    trouble.append(f"cannot remove cgroup {folder}: {err.strerror}")
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines() if str(self.root) in line.split()[1]]
        for mount in sorted(mounts, key=len, reverse=True):
            trouble.append(f"mount {mount} was left behind: unmounted")
            subprocess.run(["umount", "--lazy", mount], check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        return trouble

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc) -> None:
        trouble = self.shutdown()
        if trouble:
            print("teardown: " + "; ".join(trouble), file=sys.stderr)

    # -- inside ------------------------------------------------------------------------------

    def run(self, command: str, *, user: str | None = None, check: bool = True, timeout: float = 60,
            cwd: str = "/") -> subprocess.CompletedProcess:
        """Run a shell command in the machine, as root or (runuser) as `user`, in a login-like
        environment. Its whole process group is killed at the deadline."""
        assert self.leader is not None
        inner = command if user is None else f"runuser -u {shlex.quote(user)} -- sh -c {shlex.quote(command)}"
        argv = ["nsenter", f"--target={self.leader}", "--all",
                "env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8", "sh", "-c", f"cd {shlex.quote(cwd)} && {inner}"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise MachineError(f"timed out after {timeout:.0f} s: {command}\n{out}{err}") from None
        result = subprocess.CompletedProcess(command, proc.returncode, out, err)
        if check and result.returncode != 0:
            raise MachineError(f"exit {result.returncode}: {command}\n{out}{err}")
        return result

    def path(self, inside: str) -> Path:
        """A path in the machine, as the host sees it (the unpacked tree)."""
        return self.root / inside.lstrip("/")


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                todo.append(child)
    return found


def _cgroup_pids(group: Path) -> list[int]:
    pids = []
    for procs in [group / "cgroup.procs", *group.rglob("cgroup.procs")]:
        try:
            pids += [int(p) for p in procs.read_text().split()]
        except OSError:
            pass
    return sorted(set(pids))


if __name__ == "__main__":
    # `make test-systemd` builds the image first, outside pytest's per-test timeout:
    # python tests/systemd/machine.py CACHE_DIR
    folder = Path(sys.argv[1])
    try:
        rootfs_tarball(folder)
        wheelhouse(folder)
    except MachineError as err:
        sys.exit(f"test-systemd: {err}")
