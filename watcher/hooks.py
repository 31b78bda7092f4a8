"""Hooks: deliver thumbnail events (treeevents.py) to a webhook and/or a program, at least once,
without ever holding up rendering.

The master's loop only appends each event to a spool in the state folder (one write() of one
JSON line); a thread per receiver reads the spool from its own cursor and delivers batches:

  webhook   POST {"events": [...]} to hooks.webhook.url (Content-Type: application/json;
            "Authorization: Bearer <token>" from hooks.webhook.token_file). Any 2xx is a
            delivery; anything else, no answer in hooks.webhook.timeout, a refused connection or
            a bad certificate (https is checked against the system's CAs) is a failure.
            Redirects are not followed: they would carry the token elsewhere.
  exec      run hooks.exec (an argv) with the batch as JSON lines on stdin. Exit 0 is a
            delivery; another exit, or running past hooks.exec_timeout (then its process group
            is killed), is a failure. One run at a time.

A batch holds up to hooks.batch events and is sent once it is full or its oldest event has
waited hooks.max_wait seconds. A failed batch is sent again, with back-off (1 s doubling to
60 s), until it gets through: a receiver sees an event at least once, and may see it twice
(after a failure it could not tell from a success, or a restart between a delivery and its
cursor being saved). A receiver going down and coming back is one log line each. At stop, a
receiver that takes deliveries gets what is pending (for up to STOP_GRACE seconds); the rest
waits in the spool for the next start.

The spool: folder <state.dir>/hooks/, segments NNNNNNNNNN.jsonl written in order, and
cursors.json (per receiver: segment, byte offset, events read in it), saved after every
delivery. A restart resumes from the cursors. It holds at most hooks.spool_max events (100,000
by default, ~40 MB of typical events) for the slowest receiver; past that the oldest segment
(a tenth of the bound) is dropped, with one ERROR line per episode and a counter in the status
("hooks": {"dropped": N}) and the metrics. The spool survives the daemon being killed (the
kernel has every line written), not a power cut in the second before.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from . import __version__, treeevents
from .configfile import ConfigError
from .hooksconfig import HooksConfig
from .state import write_json_atomic

logger = logging.getLogger(__name__)

SPOOL_DIR = "hooks"
CURSORS = "cursors.json"
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0
STOP_GRACE = 5.0  # s after stop() for what is pending to go out (a receiver that is up); then it waits in the spool
SEGMENTS = 10  # the spool is cut in about this many segments: the oldest is what a full spool drops

Position = tuple[int, int, int]  # (segment number, byte offset, events before it in the segment)


class DeliveryFailed(Exception):
    """str(error) is the reason, for the one log line that says a receiver is down."""


# ---- the spool ------------------------------------------------------------------------------------


class Spool:
    """Events on disk, in order, with a cursor per receiver. append() is called by the master's
    loop; read() and ack() by each receiver's thread."""

    def __init__(self, folder: Path, receivers: list[str], max_events: int):
        self.folder = folder
        self.max_events = max_events
        self.segment_events = max(1, max_events // SEGMENTS)  # so a count of pending events sums a dozen numbers
        self.receivers = receivers
        self.lock = threading.Lock()
        self.counts: dict[int, int] = {}  # segment number -> events in it
        self.cursors: dict[str, Position] = {}
        self.current = 0  # the segment being written
        self.fd = -1
        self.dropped = 0
        self.full = False  # the overflow ERROR was logged for this episode
        self.write_failed = False
        self.wakers: list[threading.Event] = []

    def open(self) -> int:
        """Find what an earlier run left; write from now on into a new segment. Returns how
        many events wait for the slowest receiver."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in os.listdir(self.folder):
            if name.endswith(".jsonl") and name[:-6].isdigit():
                with open(self.folder / name, "rb") as f:
                    self.counts[int(name[:-6])] = sum(1 for line in f if line.endswith(b"\n"))
        saved = _read_cursors(self.folder / CURSORS)
        first = min(self.counts, default=1)
        for name in self.receivers:
            pos = saved.get(name)
            self.cursors[name] = pos if pos is not None and pos[0] in self.counts else (first, 0, 0)
        # a segment an earlier run was writing may end in half a line: never append to it
        self.current = max(self.counts, default=0) + 1
        self._open_segment()
        self._forget_read()
        return self.pending_max()

    def close(self) -> None:
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def _path(self, segment: int) -> Path:
        return self.folder / f"{segment:010d}.jsonl"

    def _open_segment(self) -> None:
        self.fd = os.open(self._path(self.current), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.counts[self.current] = 0

    # -- the master's side --

    def append(self, event: dict) -> None:
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode("utf-8", "surrogateescape")
        with self.lock:
            if self.fd < 0:
                return
            try:
                if self.counts[self.current] >= self.segment_events:
                    os.close(self.fd)
                    self.fd = -1
                    self.current += 1
                    self._open_segment()
                os.write(self.fd, line)
            except OSError as err:
                self.dropped += 1
                if not self.write_failed:
                    self.write_failed = True
                    logger.error("cannot write thumbnail events to the hooks spool %s: %s; dropping them until it works again", self.folder, err.strerror)
                return
            if self.write_failed:
                self.write_failed = False
                logger.info("the hooks spool %s can be written again", self.folder)
            self.counts[self.current] += 1
            if self._pending_max() > self.max_events:
                self._drop_oldest()
        for wake in self.wakers:
            wake.set()

    def _drop_oldest(self) -> None:
        oldest = min(self.counts)
        if oldest == self.current:
            return
        lost = max((self.counts[oldest] - pos[2] for pos in self.cursors.values() if pos[0] == oldest), default=0)
        for name, pos in self.cursors.items():
            if pos[0] == oldest:
                self.cursors[name] = (oldest + 1, 0, 0)
        del self.counts[oldest]
        _unlink(self._path(oldest))
        self.dropped += lost
        if not self.full:
            self.full = True
            logger.error("hooks spool full (hooks.spool_max %d events, a receiver is down or slow): dropping the oldest; "
                         "%d event(s) dropped so far (see hooks.dropped in the status)", self.max_events, self.dropped)

    # -- a receiver's side --

    def pending(self, name: str) -> int:
        with self.lock:
            return self._pending(self.cursors[name])

    def pending_max(self) -> int:
        with self.lock:
            return self._pending_max()

    def _pending(self, pos: Position) -> int:
        return sum(n for seg, n in self.counts.items() if seg >= pos[0]) - pos[2]

    def _pending_max(self) -> int:
        return max((self._pending(pos) for pos in self.cursors.values()), default=0)

    def read(self, name: str, limit: int) -> tuple[list[bytes], Position]:
        """Up to `limit` events (JSON lines) from the receiver's cursor, and where they end."""
        with self.lock:
            seg, offset, index = self.cursors[name]
        lines: list[bytes] = []
        while len(lines) < limit:
            with self.lock:
                if seg not in self.counts:  # dropped meanwhile
                    later = [s for s in self.counts if s > seg]
                    if not later:
                        break
                    seg, offset, index = min(later), 0, 0
                    continue
                last = seg == self.current
            try:
                with open(self._path(seg), "rb") as f:
                    f.seek(offset)
                    for line in f:
                        if not line.endswith(b"\n"):
                            break  # being written, or left half-written by a crash
                        offset += len(line)
                        index += 1
                        if line.strip():
                            lines.append(line.rstrip(b"\n"))
                        if len(lines) >= limit:
                            break
            except FileNotFoundError:
                with self.lock:
                    if seg in self.counts:
                        break  # not there, yet not dropped: someone removed it; try again later
                continue  # dropped while we read: the check above moves on
            if len(lines) >= limit or last:
                break
            seg, offset, index = seg + 1, 0, 0
        return lines, (seg, offset, index)

    def ack(self, name: str, pos: Position) -> None:
        with self.lock:
            if pos[:2] > self.cursors[name][:2]:  # not behind a drop that moved it meanwhile
                self.cursors[name] = pos
            cursors = dict(self.cursors)
            if self.full and self._pending_max() < self.max_events // 2:
                self.full = False
        try:
            write_json_atomic(self.folder / CURSORS, {n: list(p) for n, p in cursors.items()})
        except OSError as err:
            logger.warning("cannot save the hooks spool's cursors: %s (a restart sends some events again)", err.strerror)
        self._forget_read()

    def _forget_read(self) -> None:
        """Remove the segments every receiver is past."""
        with self.lock:
            low = min((pos[0] for pos in self.cursors.values()), default=self.current)
            done = [seg for seg in self.counts if seg < low and seg != self.current]
            for seg in done:
                del self.counts[seg]
        for seg in done:
            _unlink(self._path(seg))


def _read_cursors(path: Path) -> dict[str, Position]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): (int(v[0]), int(v[1]), int(v[2])) for k, v in data.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, IndexError, AttributeError) as err:
        logger.warning("hooks spool cursors %s unreadable (%s): sending the whole spool again", path, err)
        return {}


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---- receivers ------------------------------------------------------------------------------------


class Receiver:
    """One thread: read a batch from the spool, deliver it, move the cursor; back off on failure."""

    kind = ""

    def __init__(self, spool: Spool, config: HooksConfig):
        self.spool = spool
        self.config = config
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.down_since: float | None = None
        self.delivered = 0
        self.stop_deadline = 0.0
        self.thread = threading.Thread(target=self.run, name=f"thumbwatch-hook-{self.kind}", daemon=True)

    def describe(self) -> str:
        raise NotImplementedError

    def deliver(self, lines: list[bytes]) -> None:
        raise NotImplementedError

    def run(self) -> None:
        delay = BACKOFF_FIRST
        first_seen: float | None = None
        while not self._done():
            pending = self.spool.pending(self.kind)
            if pending == 0:
                first_seen = None
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            now = time.monotonic()
            first_seen = first_seen or now
            stopping = self.stopping.is_set()  # then what is pending goes at once, while the receiver takes it
            if not stopping and pending < self.config.batch and now - first_seen < self.config.max_wait:
                self.wake.wait(self.config.max_wait - (now - first_seen))  # let the batch fill
                self.wake.clear()
                continue
            lines, end = self.spool.read(self.kind, self.config.batch)
            if not lines:  # the count ran ahead of the file (a segment dropped meanwhile): look again
                self.spool.ack(self.kind, end)
                self.stopping.wait(0.05)
                continue
            try:
                self.deliver(lines)
            except DeliveryFailed as err:
                if self.down_since is None:
                    self.down_since = time.monotonic()
                    logger.warning("hook %s is down: %s; holding %d event(s) in the spool, retrying with back-off (up to %g s)",
                                   self.describe(), err, pending, BACKOFF_MAX)
                if self.stopping.is_set():
                    return  # no back-off at stop: the spool keeps them for the next start
                self.stopping.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            except Exception:
                logger.exception("bug in the %s hook (please report it); retrying", self.kind)
                self.stopping.wait(BACKOFF_MAX)
                continue
            self.spool.ack(self.kind, end)
            self.delivered += len(lines)
            first_seen = None
            delay = BACKOFF_FIRST
            if self.down_since is not None:
                logger.info("hook %s is back after %.0f s: delivering %d held event(s)", self.describe(),
                            time.monotonic() - self.down_since, self.spool.pending(self.kind) + len(lines))
                self.down_since = None

    def _done(self) -> bool:
        """At stop, a receiver that takes deliveries gets what is pending, for up to STOP_GRACE s."""
        if not self.stopping.is_set():
            return False
        return self.down_since is not None or time.monotonic() > self.stop_deadline or self.spool.pending(self.kind) == 0

    def stop(self) -> None:
        self.stop_deadline = time.monotonic() + STOP_GRACE
        self.stopping.set()
        self.wake.set()


class Webhook(Receiver):
    kind = "webhook"

    def __init__(self, spool: Spool, config: HooksConfig):
        super().__init__(spool, config)
        assert config.webhook is not None
        self.url = config.webhook.url
        self.timeout = config.webhook.timeout
        self.headers = {"Content-Type": "application/json", "User-Agent": f"thumbwatch/{__version__}"}
        if config.webhook.token_file is not None:
            try:
                token = config.webhook.token_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as err:
                raise ConfigError(f"hooks.webhook.token_file: cannot read {config.webhook.token_file}: {err}") from None
            if not token:
                raise ConfigError(f"hooks.webhook.token_file: {config.webhook.token_file} is empty")
            self.headers["Authorization"] = f"Bearer {token}"
        handlers: list = [_NoRedirects()]
        if self.url.startswith("https:"):
            handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context()))
        self.opener = urllib.request.build_opener(*handlers)

    def describe(self) -> str:
        url = urllib.parse.urlsplit(self.url)  # user:password@ and a query string may hold secrets
        return urllib.parse.urlunsplit((url.scheme, url.hostname + (f":{url.port}" if url.port else ""), url.path, "", ""))

    def deliver(self, lines: list[bytes]) -> None:
        body = b'{"events":[' + b",".join(lines) + b"]}"
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                response.read(1 << 16)
        except urllib.error.HTTPError as err:
            raise DeliveryFailed(f"HTTP {err.code} {err.reason}") from None
        except urllib.error.URLError as err:
            raise DeliveryFailed(str(getattr(err.reason, "strerror", None) or err.reason)) from None
        except TimeoutError:
            raise DeliveryFailed(f"no answer in {self.timeout:g} s") from None
        except OSError as err:
            raise DeliveryFailed(err.strerror or str(err)) from None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003
        return None  # a 3xx becomes an HTTPError: a failure that names the code


class Exec(Receiver):
    kind = "exec"

    def describe(self) -> str:
        return " ".join(self.config.exec)

    def deliver(self, lines: list[bytes]) -> None:
        try:
            proc = subprocess.Popen(self.config.exec, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    start_new_session=True, close_fds=True)
        except OSError as err:
            raise DeliveryFailed(f"cannot run it: {err.strerror}") from None
        data: bytes | None = b"\n".join(lines) + b"\n"
        deadline = time.monotonic() + self.config.exec_timeout
        stopped_at = None
        while True:
            try:
                _out, err_text = proc.communicate(data, timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                data = None
                now = time.monotonic()
                if self.stopping.is_set():
                    stopped_at = stopped_at or now
                if now >= deadline or (stopped_at is not None and now - stopped_at >= STOP_GRACE):
                    _kill_group(proc)
                    proc.communicate()
                    if now >= deadline:
                        raise DeliveryFailed(f"still running after hooks.exec_timeout {self.config.exec_timeout:g} s; killed") from None
                    raise DeliveryFailed("stopping") from None
        if proc.returncode != 0:
            last = (err_text or b"").decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            how = f"exited {proc.returncode}" if proc.returncode > 0 else f"killed by {signal.Signals(-proc.returncode).name}"
            raise DeliveryFailed(how + (f": {last[0][:200]}" if last[0] else ""))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---- what the master holds ------------------------------------------------------------------------


class Hooks:
    def __init__(self, config: HooksConfig, state_dir: Path):
        self.config = config
        receivers: list[type[Receiver]] = ([Webhook] if config.webhook else []) + ([Exec] if config.exec else [])
        self.spool = Spool(state_dir / SPOOL_DIR, [r.kind for r in receivers], config.spool_max)
        self.receivers = [r(self.spool, config) for r in receivers]
        self.spool.wakers = [r.wake for r in self.receivers]

    def start(self) -> None:
        held = self.spool.open()
        logger.info("hooks: %s; spool %s (at most %d events)%s", ", ".join(f"{r.kind} {r.describe()}" for r in self.receivers),
                    self.spool.folder, self.config.spool_max, f", {held} event(s) from before" if held else "")
        for receiver in self.receivers:
            receiver.thread.start()

    def emit(self, event: dict) -> None:
        self.spool.append(event)

    def stop(self) -> None:
        """Deliveries in progress get STOP_GRACE seconds; what is not delivered stays in the spool."""
        for receiver in self.receivers:
            receiver.stop()
        for receiver in self.receivers:
            receiver.thread.join(STOP_GRACE + 1)
        self.spool.close()

    def describe(self) -> dict:
        return {
            "pending": self.spool.pending_max(),
            "dropped": self.spool.dropped,
            "receivers": {r.kind: "down" if r.down_since is not None else "up" for r in self.receivers},
        }


def start(config: HooksConfig, state_dir: Path) -> Hooks | None:
    """The master's start: the spool opened, the receivers' threads running, and the thumbnail
    events going to the spool. None when no receiver is configured (no events are made)."""
    if config.webhook is None and not config.exec:
        return None
    hooks = Hooks(config, state_dir)
    try:
        hooks.start()
    except OSError as err:
        raise ConfigError(f"state.dir: cannot keep the hooks spool in {hooks.spool.folder}: {err.strerror}") from None
    treeevents.set_sink(hooks.emit)
    return hooks


def stop(hooks: Hooks | None) -> None:
    """The master's stop: no more events; what was not delivered stays for the next start."""
    if hooks is not None:
        treeevents.set_sink(None)
        hooks.stop()
