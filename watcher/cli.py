"""Command line: argparse and exit codes, nothing else. `python -m watcher` is the same program.

The admin commands (`status`, `retry`, `stop`, `pause`, `resume`) ask a running daemon through
its control socket (control.py) and read or edit the state folder's files when none runs.

Exit codes: 0 fine; 1 runtime trouble (or `scan` with failed photos, or the daemon could not be
asked); 2 usage; 3 `status`, `pause`, `resume`: not running, or workers could not start; 78 bad
config (EX_CONFIG: systemd's RestartPreventExitStatus=78 stops a restart loop on a config that
can never work).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

from . import __version__, control, instance
from .config import EX_CONFIG, Config, ConfigError, check_folders, dump, load
from .render.formats import require_decoders
from .logsetup import under_journald
from .paths import shown

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = os.environ.get("THUMBWATCH_CONFIG", "/etc/thumbwatch/config.yaml")
START_GRACE = 10.0  # seconds a daemon that holds its lock may take to open its control socket


def _error(text: str) -> None:
    """One line on stderr before (or instead of) logging: at priority err under journald, so
    `journalctl -p warning` shows why the unit stopped."""
    print(("<3>" if under_journald(sys.stderr) else "") + f"thumbwatch: {text}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not getattr(args, "command", None):
        _parser().print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except ConfigError as err:
        _error(f"config error: {err}")
        return EX_CONFIG
    except instance.AlreadyRunning as err:
        _error(str(err))
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thumbwatch", description="Watch folders and make thumbnails of the photos that arrive.")
    parser.add_argument("--version", action="version", version=f"thumbwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default: {DEFAULT_CONFIG}, or $THUMBWATCH_CONFIG)")
        p.set_defaults(func=func)
        return p

    run = command("run", cmd_run, "run the daemon (in the foreground unless --daemon)")
    run.add_argument("--daemon", action="store_true", help="detach as a classic daemon (not under systemd)")
    run.add_argument("--pidfile", type=Path, help="pid file for --daemon (refuses to start if another instance holds it)")
    command("check-config", cmd_check_config, "validate the config and print it with every default filled in")
    scan = command("scan", cmd_scan, "one-shot: make every missing or stale thumbnail, then exit")
    scan.add_argument("--confirm-removals", action="store_true",
                      help="remove thumbnails whose photos are gone even when that is most of a folder's (held otherwise)")
    command("failed", cmd_failed, "list the photos that failed, with reasons")
    retry = command("retry", cmd_retry, "forget failures so those photos are tried again (a running daemon tries them at once)")
    retry.add_argument("paths", nargs="*", help="photos or folders (default: every failure)")
    status = command("status", cmd_status, "say whether the daemon runs, with its counters")
    status.add_argument("--json", action="store_true", help="print the raw status JSON")
    command("pause", cmd_pause, "hold the running daemon's photos: nothing new goes to the workers; events and scans still queue")
    command("resume", cmd_resume, "let a paused daemon hand photos to its workers again")
    worker = command("worker", cmd_worker, "run a render host: a Celery worker taking photos from the broker (workers.backend: celery)")
    worker.add_argument("--name", help="this render host's name in logs and outcomes (default: the host name)")
    stop = command("stop", cmd_stop, "stop a running daemon (its control socket, or SIGTERM) and wait for it to exit")
    stop.add_argument("--pidfile", type=Path, help="pid file given to run --daemon")
    stop.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    return parser


def _load(args: argparse.Namespace) -> Config:
    # Absolute, as relative paths in it are: a reload (SIGHUP) after --daemon moved to / must
    # find the same files.
    config = load(os.path.abspath(args.config), base_dir=Path.cwd())
    require_decoders(config)
    return config


def _lock(config: Config) -> instance.Instance:
    """The state folder's lock, before anything starts; a state folder we cannot use is a
    config error naming the key."""
    try:
        return instance.acquire(config.state.dir)
    except OSError as err:
        raise ConfigError(f"{config.source}: state.dir: cannot use {config.state.dir}: {os.strerror(err.errno or 0)}") from None


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    check_folders(config)
    for line in require_decoders(config):  # which decoder serves each pattern
        print(f"# watch.patterns: {line}", file=sys.stderr)
    print(f"# {config.source}: OK", file=sys.stderr)
    sys.stdout.write(dump(config))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    check_folders(config)
    if args.daemon:
        return _run_daemon(config, args.pidfile)
    lock = _lock(config)  # noqa: F841 (held until the process exits)
    return _serve(config, one_shot=False)


def cmd_scan(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.confirm_removals:  # lifts the mass-removal guard (roots.py) for this scan only
        config = replace(config, output=replace(config.output, confirm_mass_removal=False))
    check_folders(config)
    lock = _lock(config)  # noqa: F841
    return _serve(config, one_shot=True)


def _serve(config: Config, *, one_shot: bool, early_signals: list[int] | None = None, base_dir: Path | None = None) -> int:
    """Run the service. base_dir: what relative paths in the config resolve against on a reload
    (the directory the command was started in, also after --daemon moved to /)."""
    from . import logsetup
    from .service import Service
    from .state import check_state_dir
    from .systemd import Notifier

    logsetup.configure(config.log)
    check_state_dir(config.state.dir)
    if config.metrics.port is not None:
        from . import metrics

        metrics.preflight(config.metrics)  # a config error (exit 78) before anything starts
    service = Service(config, notifier=Notifier(), one_shot=one_shot, base_dir=base_dir or Path.cwd())
    service.install_signal_handlers()
    service.signals.extend(early_signals or ())
    code = service.run()
    if one_shot and code == 0 and service.roots.unavailable():
        return 1  # its ERROR lines said which folders were not there
    if one_shot and code == 0:
        left = _failed_in_tree(config)
        if left or service.stats.failed:
            logger.warning("scan: %d photo(s) have no thumbnail because they failed (`thumbwatch failed` lists them, "
                           "`thumbwatch retry` tries them again)", max(left, service.stats.failed))
            return 1
    return code


def _failed_in_tree(config: Config) -> int:
    """Photos under the watched folders, still there and unchanged, that are on record as failed."""
    from .state import FailureStore

    store = FailureStore(config.state.dir)
    store.load()
    roots = [str(root) for root in config.watch.paths]
    count = 0
    for path, _failure in store.items():
        if not any(path.startswith(root + os.sep) for root in roots):
            continue
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            continue
        count += store.known(path, st)
    return count


def _run_daemon(config: Config, pidfile: Path | None) -> int:
    from . import daemonize

    if pidfile is None:
        print("thumbwatch: run --daemon needs --pidfile PATH", file=sys.stderr)
        return 2
    pidfile = pidfile.absolute()
    if config.log.file is None:
        _error(f"config error: {config.source}: log.file: expected a log file path for --daemon (a detached daemon has no terminal)")
        return EX_CONFIG
    lock = _lock(config)  # before detaching: a second instance is refused here, on the terminal
    base_dir = Path.cwd()  # detaching moves to /
    try:
        with daemonize.detach(pidfile=pidfile, preserve=(lock.fd,)) as early_signals:
            lock.write_pid()  # the detached process's pid, for `status`, `stop` and `retry`
            return _serve(config, one_shot=False, early_signals=early_signals, base_dir=base_dir)
    except daemonize.AlreadyRunning as err:
        _error(str(err))
        return 1


def cmd_worker(args: argparse.Namespace) -> int:
    config = _load(args)
    from . import logsetup

    logsetup.configure(config.log)
    from .backends.celery.main import worker_main

    return worker_main(config, args.name)


def cmd_failed(args: argparse.Namespace) -> int:
    from .state import Damaged, FailureStore

    store = FailureStore(_load(args).state.dir)
    try:
        store.load(repair=False)  # read-only: the daemon moves a damaged file aside
    except Damaged as err:
        _error(f"{store.path} is damaged ({err}); the daemon moves it aside at its next start")
        return 1
    for path, failure in store.items():
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(failure.when))
        print(f"{when}\t{shown(path)}\t{failure.reason}")
    print(f"{len(store)} failed photo(s)", file=sys.stderr)
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from .state import FailureStore

    config = _load(args)
    paths = [os.path.abspath(p) for p in args.paths]
    if config.workers.backend == "celery":
        from .backends.celery.executor import forget

        forget(config, paths or None)  # their dedupe keys too, before the photos are queued again
    pid = instance.running_pid(config.state.dir)
    if pid is not None:
        try:
            reply = _ask(config, pid, "retry", paths=paths)
        except control.ControlError as err:
            if err.answered:
                _error(f"the running daemon (pid {pid}) refused: {err}")
                return 1
            print(f"thumbwatch: {err}; clearing the file and signalling the daemon instead", file=sys.stderr)
        except PermissionError:
            return _not_allowed(config, pid)
        else:
            when = "at `thumbwatch resume` (the daemon is paused)" if reply.get("paused") else "now"
            print(f"cleared {reply['cleared']} failure record(s) in the running daemon (pid {pid}); "
                  f"{reply['queued']} photo(s) queued to be tried {when}")
            return 0
    store = FailureStore(config.state.dir)
    store.load()  # a damaged file is moved aside (and named) before we write a new one
    if paths:
        cleared = sum(store.clear(p) for p in paths)
    else:
        cleared = store.clear()
    store.save(force=True)
    pid = instance.running_pid(config.state.dir)
    if pid is not None:  # a daemon without its socket: a reload re-reads the records (records it has not saved yet stay)
        os.kill(pid, signal.SIGHUP)
        print(f"cleared {cleared} failure record(s); told the running daemon (pid {pid}) to retry them")
    else:
        print(f"cleared {cleared} failure record(s); they are retried at the next start or scan")
    return 0


def _ask(config: Config, pid: int, command: str, **args) -> dict:
    """The running daemon's reply on its control socket. A daemon still starting gets a few
    seconds to open it. ControlError or PermissionError when it cannot be asked."""
    deadline = time.monotonic() + START_GRACE
    while True:
        try:
            return control.request(config.state.dir, command, **args)
        except control.ControlError as err:
            if err.answered or time.monotonic() >= deadline or instance.running_pid(config.state.dir) != pid:
                raise
        time.sleep(0.1)


def _not_allowed(config: Config, pid: int) -> int:
    path = control.socket_path(config.state.dir)
    _error(f"not allowed to use the control socket {path} of the running daemon (pid {pid}): "
           f"root and the members of the service's group may (`ls -lL {path}` shows it)")
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    from .state import read_status

    config = _load(args)
    pid = instance.running_pid(config.state.dir)
    running = pid is not None
    status = None
    if running:
        try:
            status = control.request(config.state.dir, "status", timeout=10)["status"]  # live, from the loop
        except (OSError, control.ControlError) as err:
            print(f"thumbwatch: the control socket does not answer ({err}); showing the status file", file=sys.stderr)
    if status is None:
        status = read_status(config.state.dir)  # checked: a damaged file reads as none
        if running and (status is None or status["pid"] != pid or status["state"] not in ("running", "paused")):
            status = None  # the file is an earlier run's: the one running has not written its own yet
    if args.json:
        print(json.dumps({**(status or {}), "running": running}, indent=1))
        return 0 if running else 3
    if not running:
        print("thumbwatch is not running" + (f" (last status: {status.get('state')}, pid {status.get('pid')})" if status else ""))
        return 3
    if status is None:
        print(f"thumbwatch running, pid {pid} (starting: no status yet)")
        return 0
    paused = status["state"] == "paused"
    print(
        f"thumbwatch {status['version']} {'PAUSED' if paused else 'running'}, pid {status['pid']}, up {status['uptime']:.0f} s\n"
        f"  folders:  {', '.join(status['folders'])}\n"
        f"  workers:  {len(status['workers'])} ({', '.join(map(str, status['workers']))})\n"
        f"  done {status['done']}, failed {status['failed']}, skipped {status['skipped']}, retried {status['retried']}\n"
        f"  queue {status['queue']}, in flight {status['in_flight']}, settling {status['settling']}\n"
        f"  render ms p50 {status['render_ms_p50']}, p95 {status['render_ms_p95']}"
        + (f"\n  OUTPUT BLOCKED: {status['output_blocked']}" if status.get("output_blocked") else "")
        + "".join(f"\n  UNAVAILABLE: {root}: {why}" for root, why in sorted((status.get("unavailable_folders") or {}).items()))
        + "".join(f"\n  REMOVALS HELD: {n} thumbnail(s) under {root} (`thumbwatch scan --confirm-removals`)"
                  for root, n in sorted((status.get("removals_held") or {}).items()))
        + ("\n  paused: photos queue up but none goes to the workers (`thumbwatch resume`)" if paused else "")
        + (f"\n  hooks:    {h['pending']} event(s) pending, {h['dropped']} dropped; " + ", ".join(f"{k} {v}" for k, v in h["receivers"].items())
           if (h := status.get("hooks")) else "")
        + _render_hosts(status)
    )
    return 0


def _render_hosts(status: dict) -> str:
    """The Celery backend's render hosts seen in the last hour, with how long ago."""
    hosts = status.get("render_hosts")
    if not isinstance(hosts, dict):
        return ""
    seen = ", ".join(f"{host} ({ago:.0f} s ago)" for host, ago in hosts.items() if isinstance(ago, (int, float))) or "none yet"
    blind = status.get("blind_hosts") or {}
    cannot = "".join(f"\n  render host {host} CANNOT SEE {root}: {why}" for host, roots in blind.items() for root, why in roots.items())
    return f"\n  render hosts: {seen}" + ("" if status.get("broker_up", True) else "  BROKER UNREACHABLE") + cannot


def cmd_stop(args: argparse.Namespace) -> int:
    if args.pidfile is not None:
        from . import daemonize

        return daemonize.stop(args.pidfile, args.timeout)
    config = _load(args)
    pid = instance.running_pid(config.state.dir)
    if pid is None:
        print("thumbwatch is not running")
        return 0
    still_held = lambda: instance.running_pid(config.state.dir)  # noqa: E731
    try:
        control.request(config.state.dir, "stop", timeout=10)
        stopped = instance.wait_gone(pid, args.timeout, still_held)
    except (OSError, control.ControlError):  # no socket (or not ours to use): the signal, as before
        stopped = instance.stop(pid, args.timeout, still_held)
    if not stopped:
        print(f"thumbwatch (pid {pid}) did not stop within {args.timeout:g} s", file=sys.stderr)
        return 1
    print(f"stopped thumbwatch (pid {pid})")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    return _pause(args, "pause")


def cmd_resume(args: argparse.Namespace) -> int:
    return _pause(args, "resume")


def _pause(args: argparse.Namespace, command: str) -> int:
    config = _load(args)
    pid = instance.running_pid(config.state.dir)
    if pid is None:
        print("thumbwatch is not running")
        return 3
    try:
        reply = _ask(config, pid, command)
    except PermissionError:
        return _not_allowed(config, pid)
    except control.ControlError as err:
        _error(f"cannot ask the running daemon (pid {pid}): {err}")
        return 1
    now = "paused: photos queue up, none goes to the workers" if reply["paused"] else "running: photos go to the workers"
    print(f"thumbwatch (pid {pid}) {'is now' if reply['changed'] else 'was already'} {now}")
    return 0
