"""Log formats: journald priorities, JSON lines, terminal lines; worker records re-emitted once."""

from __future__ import annotations

import json
import logging

import pytest

from watcher import logsetup
from watcher.config import LogConfig


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    yield
    if logsetup._handler is not None:
        root.removeHandler(logsetup._handler)
        logsetup._handler.close()
        logsetup._handler = None
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def record(level: int, msg: str, *args, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("watcher", level, __file__, 1, msg, args, exc_info)


def test_journal_lines_carry_priorities_on_every_line():
    fmt = logsetup.JournalFormatter()
    assert fmt.format(record(logging.INFO, "ok %s", "a.jpg")) == "<6>ok a.jpg"
    assert fmt.format(record(logging.WARNING, "failed")) == "<4>failed"
    lines = fmt.format(record(logging.ERROR, "bug", exc=True)).splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)


def test_json_lines_parse_and_keep_extra_fields():
    line = logsetup.JsonFormatter().format(logging.makeLogRecord({"name": "watcher", "levelno": 30, "levelname": "WARNING", "msg": "failed %s", "args": ("x.jpg",), "photo": "x.jpg"}))
    data = json.loads(line)
    assert data["level"] == "warning" and data["msg"] == "failed x.jpg" and data["photo"] == "x.jpg"
    assert "T" in data["ts"]


def test_configure_twice_does_not_duplicate_lines(tmp_path, restore_logging):
    log = tmp_path / "t.log"
    logsetup.configure(LogConfig(file=log))
    logsetup.configure(LogConfig(file=log))
    logging.getLogger("watcher").info("once")
    assert log.read_text().count("once") == 1
    assert " INFO once" in log.read_text()


def test_forwarded_worker_records_are_written_once_by_the_master(tmp_path, restore_logging):
    log = tmp_path / "t.log"
    logsetup.configure(LogConfig(file=log, format="json"))
    sent = []
    handler = logsetup.ForwardingHandler(sent.append)
    handler.handle(record(logging.ERROR, "from worker %d", 7, exc=True))
    assert sent and isinstance(sent[0], dict)
    logsetup.handle_forwarded(sent[0])
    [line] = log.read_text().splitlines()
    data = json.loads(line)
    assert data["msg"] == "from worker 7" and "ValueError: boom" in data["exc"]


def test_under_journald_only_when_the_stream_matches(tmp_path, monkeypatch):
    with open(tmp_path / "stream", "w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", "1:2")
        assert not logsetup.under_journald(stream)
        import os

        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logsetup.under_journald(stream)


WARN_SCRIPT = """
import warnings
from watcher import logsetup
from watcher.config import LogConfig
logsetup.configure(LogConfig(format={fmt!r}))
warnings.warn_explicit("Callback with id 5 already exists", RuntimeWarning, "/x/watchdog/observers/inotify.py", 365)
"""


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_library_warning_is_one_formatted_log_line_never_raw_on_stderr(fmt):
    import re
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", WARN_SCRIPT.format(fmt=fmt)], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in __import__("os").environ.items() if k not in ("JOURNAL_STREAM", "PYTHONWARNINGS")})
    lines = done.stderr.splitlines()
    assert done.returncode == 0 and len(lines) == 1, done.stderr
    if fmt == "json":
        data = json.loads(lines[0])
        assert data["level"] == "warning" and data["logger"] == "py.warnings"
        assert data["msg"] == "RuntimeWarning: Callback with id 5 already exists (/x/watchdog/observers/inotify.py:365)"
    else:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} WARNING RuntimeWarning: Callback with id 5 already exists "
                            r"\(/x/watchdog/observers/inotify\.py:365\)", lines[0]), lines[0]


def test_a_warning_under_journald_carries_the_warning_priority(restore_logging):
    import warnings

    logsetup.configure(LogConfig())
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    logging.getLogger().addHandler(keep)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("odd thing", UserWarning)
    finally:
        logging.getLogger().removeHandler(keep)
    [rec] = [r for r in records if r.name == "py.warnings"]
    line = logsetup.JournalFormatter("%(message)s").format(rec)
    assert line.startswith("<4>UserWarning: odd thing (") and "\n" not in line


# The daemon as `python -m watcher run` starts it, with one library warning raised right after its
# logging is set up (as watchdog's "Callback with id ... already exists" came, from a thread).
WARNING_DAEMON = """
import sys, threading, warnings
from watcher import cli, logsetup
configure = logsetup.configure
def configure_then_warn(log):
    configure(log)
    def warn():
        warnings.warn_explicit("Callback with id 7 already exists", RuntimeWarning, "/x/watchdog/observers/inotify.py", 365)
    threading.Thread(target=warn).start()
logsetup.configure = configure_then_warn
sys.exit(cli.main())
"""


def test_a_warning_in_the_running_daemon_is_a_log_line(project, start_daemon):
    from helpers import wait_for

    daemon = start_daemon(launcher=("-c", WARNING_DAEMON))
    daemon.wait_ready()
    wait_for(lambda: daemon.matching("Callback with id 7"), 10, message="the warning logged")
    [line] = daemon.matching("Callback with id 7")
    assert " WARNING RuntimeWarning: Callback with id 7 already exists (/x/watchdog/observers/inotify.py:365)" in line, line
    assert not daemon.matching(r"^\s|inotify.py:365: RuntimeWarning"), "raw warning text on stderr"
