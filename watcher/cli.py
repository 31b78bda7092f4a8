"""Command line: argparse and exit codes, nothing else. `python -m watcher` is the same program.

Exit codes: 0 fine; 1 runtime trouble (or `scan` with failed photos); 2 usage; 3 `status`: not
running, or workers could not start; 78 bad config (EX_CONFIG: systemd's
RestartPreventExitStatus=78 stops a restart loop on a config that can never work).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .config import EX_CONFIG, Config, ConfigError, dump, load
from .paths import shown

DEFAULT_CONFIG = os.environ.get("THUMBWATCH_CONFIG", "/etc/thumbwatch/config.yaml")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not getattr(args, "command", None):
        _parser().print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"thumbwatch: config error: {err}", file=sys.stderr)
        return EX_CONFIG
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
    command("scan", cmd_scan, "one-shot: make every missing or stale thumbnail, then exit")
    command("failed", cmd_failed, "list the photos that failed, with reasons")
    retry = command("retry", cmd_retry, "forget failures so those photos are tried again")
    retry.add_argument("paths", nargs="*", help="photos or folders (default: every failure)")
    status = command("status", cmd_status, "say whether the daemon runs, with its counters")
    status.add_argument("--json", action="store_true", help="print the raw status JSON")
    worker = command("worker", cmd_worker, "run a render host: a Celery worker taking photos from the broker (workers.backend: celery)")
    worker.add_argument("--name", help="this render host's name in logs and outcomes (default: the host name)")
    stop = command("stop", cmd_stop, "stop a running daemon (SIGTERM) and wait for it to exit")
    stop.add_argument("--pidfile", type=Path, help="pid file given to run --daemon")
    stop.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    return parser


def _load(args: argparse.Namespace) -> Config:
    return load(args.config)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    print(f"# {config.source}: OK", file=sys.stderr)
    sys.stdout.write(dump(config))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.daemon:
        return _run_daemon(config, args.pidfile)
    return _serve(config, one_shot=False)


def cmd_scan(args: argparse.Namespace) -> int:
    return _serve(_load(args), one_shot=True)


def _serve(config: Config, *, one_shot: bool, early_signals: list[int] | None = None) -> int:
    from . import logsetup
    from .service import Service
    from .systemd import Notifier

    logsetup.configure(config.log)
    service = Service(config, notifier=Notifier(), one_shot=one_shot)
    service.install_signal_handlers()
    service.signals.extend(early_signals or ())
    code = service.run()
    if one_shot and code == 0 and service.stats.failed:
        return 1
    return code


def _run_daemon(config: Config, pidfile: Path | None) -> int:
    from . import daemonize

    if pidfile is None:
        print("thumbwatch: run --daemon needs --pidfile PATH", file=sys.stderr)
        return 2
    pidfile = pidfile.absolute()
    if config.log.file is None:
        print("thumbwatch: config error: log.file: expected a log file path for --daemon (a detached daemon has no terminal)", file=sys.stderr)
        return EX_CONFIG
    try:
        with daemonize.detach(pidfile=pidfile) as early_signals:
            return _serve(config, one_shot=False, early_signals=early_signals)
    except daemonize.AlreadyRunning as err:
        print(f"thumbwatch: {err}", file=sys.stderr)
        return 1


def cmd_worker(args: argparse.Namespace) -> int:
    config = _load(args)
    from . import logsetup

    logsetup.configure(config.log)
    from .celery_backend import worker_main

    return worker_main(config, args.name)


def cmd_failed(args: argparse.Namespace) -> int:
    from .state import FailureStore

    store = FailureStore(_load(args).state.dir)
    store.load()
    for path, failure in store.items():
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(failure.when))
        print(f"{when}\t{shown(path)}\t{failure.reason}")
    print(f"{len(store)} failed photo(s)", file=sys.stderr)
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from .state import FailureStore

    config = _load(args)
    store = FailureStore(config.state.dir)
    store.load()
    if args.paths:
        cleared = sum(store.clear(os.path.abspath(p)) for p in args.paths)
    else:
        cleared = store.clear()
    store.save(force=True)
    pid = _running_pid(config)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)  # the daemon re-reads the records and rescans
        print(f"cleared {cleared} failure record(s); told the running daemon (pid {pid}) to retry them")
    else:
        print(f"cleared {cleared} failure record(s); they are retried at the next start or scan")
    return 0


def _status(config: Config) -> dict | None:
    from .state import STATUS, read_json

    try:
        return read_json(config.state.dir / STATUS)
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return b"thumbwatch" in cmdline or b"watcher" in cmdline


def _running_pid(config: Config) -> int | None:
    status = _status(config)
    if status and status.get("state") == "running" and _alive(int(status["pid"])):
        return int(status["pid"])
    return None


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args)
    status = _status(config)
    running = _running_pid(config) is not None
    if args.json:
        print(json.dumps({**(status or {}), "running": running}, indent=1))
        return 0 if running else 3
    if not running:
        print("thumbwatch is not running" + (f" (last status: {status.get('state')}, pid {status.get('pid')})" if status else ""))
        return 3
    assert status is not None
    print(
        f"thumbwatch {status['version']} running, pid {status['pid']}, up {status['uptime']:.0f} s\n"
        f"  folders:  {', '.join(status['folders'])}\n"
        f"  workers:  {len(status['workers'])} ({', '.join(map(str, status['workers']))})\n"
        f"  done {status['done']}, failed {status['failed']}, skipped {status['skipped']}, retried {status['retried']}\n"
        f"  queue {status['queue']}, in flight {status['in_flight']}, settling {status['settling']}\n"
        f"  render ms p50 {status['render_ms_p50']}, p95 {status['render_ms_p95']}"
        + (f"\n  OUTPUT BLOCKED: {status['output_blocked']}" if status.get("output_blocked") else "")
    )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    if args.pidfile is not None:
        from . import daemonize

        return daemonize.stop(args.pidfile, args.timeout)
    config = _load(args)
    pid = _running_pid(config)
    if pid is None:
        print("thumbwatch is not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        print(f"thumbwatch (pid {pid}) did not stop within {args.timeout:g} s", file=sys.stderr)
        return 1
    print(f"stopped thumbwatch (pid {pid})")
    return 0


