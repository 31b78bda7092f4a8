"""Logging for the way people read it: journald, a terminal, a rotated file, or JSON lines.

configure() may be called again on reload: it replaces our handler instead of stacking one
more. Python warnings from any library (watchdog's "Callback with id ... already exists", say)
go through logging too (logger py.warnings, level WARNING, one line: category, text, where),
never raw on stderr. Worker processes never write logs themselves; ForwardingHandler ships each record to the
master over the worker's pipe and handle_forwarded() writes it there, so lines never interleave.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from .config import LogConfig

# syslog priorities, which journald reads from a "<N>" line prefix
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
QUIET = {"PIL": logging.WARNING, "watchdog": logging.WARNING}

_handler: logging.Handler | None = None


def under_journald(stream: Any = None) -> bool:
    """systemd sets $JOURNAL_STREAM to device:inode of the stream it connected to stderr."""
    stream = stream or sys.stderr
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


class TerminalFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")


class JournalFormatter(logging.Formatter):
    """No timestamp (journald adds its own); every line of a traceback keeps the priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


class JsonFormatter(logging.Formatter):
    STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}" + time.strftime("%z", time.localtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exc"] = record.exc_text
        for key, value in vars(record).items():
            if key not in self.STANDARD and not key.startswith("_"):
                data[key] = value
        return json.dumps(data, ensure_ascii=False, default=str)


class LogFileHandler(logging.handlers.WatchedFileHandler):
    """A WatchedFileHandler that never raises into the caller. Python 3.11's reopens the file
    outside any try: with its folder removed every log call raised, and a master that cannot log
    could not drain. The folder is not made again (the admin removed it): stderr hears once that
    lines are lost, and writing resumes once the file can be opened again."""

    lost = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            super().emit(record)
        except OSError as err:
            self.stream = None  # opened again at the next record
            if not self.lost:
                self.lost = True
                _say(f"thumbwatch: cannot write the log file {self.baseFilename}: {err.strerror or err}; "
                     "log lines are lost until it can be opened again")
        else:
            if self.lost:
                self.lost = False
                _say(f"thumbwatch: writing the log file {self.baseFilename} again")


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        pass  # no stderr (a classic daemon's is /dev/null at best): nowhere left to tell


def configure(log: LogConfig) -> None:
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    if log.file is not None:
        log.file.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = LogFileHandler(log.file, encoding="utf-8")
        formatter: logging.Formatter = TerminalFormatter()
    else:
        handler = logging.StreamHandler(sys.stderr)
        formatter = JournalFormatter() if under_journald() else TerminalFormatter()
    if log.format == "json":
        formatter = JsonFormatter()
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(log.level.upper())
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(max(level, root.level))
    capture_warnings()
    _handler = handler


class OneLineWarning(logging.Filter):
    """logging.captureWarnings() logs warnings.formatwarning()'s text: "file:line: Category: text"
    and then the source line. Keep the first line, put the category first: "RuntimeWarning:
    Callback with id 3 already exists (watchdog/observers/inotify.py:365)"."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage().strip().splitlines()[0] if record.getMessage().strip() else ""
        where, sep, rest = text.partition(": ")
        if sep and ":" in where:
            text = f"{rest} ({where})"
        record.msg, record.args = text, ()
        return True


_one_line = OneLineWarning()


def capture_warnings() -> None:
    logging.captureWarnings(False)  # forget a capture that a catch_warnings() since undid
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    if _one_line not in warnings_logger.filters:
        warnings_logger.addFilter(_one_line)


def reopen() -> None:
    """After logrotate moved the file: open the path again (SIGHUP)."""
    if isinstance(_handler, logging.handlers.WatchedFileHandler):
        try:
            _handler.reopenIfNeeded()
        except OSError:
            pass  # its folder is gone: LogFileHandler says so at the next line


class ForwardingHandler(logging.Handler):
    """In a worker: turn each record into a small picklable dict and hand it to `send`."""

    def __init__(self, send: Callable[[dict], None]):
        super().__init__()
        self.send = send
        capture_warnings()  # a worker's warnings take the same way as its log records

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc_text = record.exc_text or (logging.Formatter().formatException(record.exc_info) if record.exc_info else None)
            self.send({
                "name": record.name, "levelno": record.levelno, "levelname": record.levelname,
                "msg": record.getMessage(), "created": record.created, "msecs": record.msecs,
                "process": record.process, "exc_text": exc_text,
            })
        except Exception:
            self.handleError(record)


def handle_forwarded(data: dict) -> None:
    """In the master: write a worker's record through the master's own handlers."""
    record = logging.makeLogRecord(data)
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)
