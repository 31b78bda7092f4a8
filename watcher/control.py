"""The control socket: admins talk to the running daemon (`thumbwatch status|retry|stop|pause|resume`).

An AF_UNIX stream socket, `control.sock`, in `$RUNTIME_DIRECTORY` when systemd gives the service
one (RuntimeDirectory=), else in the state folder. With a runtime folder the state folder holds
a symlink `control.sock` to it, so the admin commands find the socket from the config alone.
The socket is mode 0660 and belongs to the daemon's group: root and the members of the
service's group may use it, nobody else (connect(2) needs write permission on the file).

Protocol: one request per connection, one JSON object on one line; one JSON line back.

  {"command": "status"}                          -> {"ok": true, "status": {... as status.json}}
  {"command": "retry", "paths": ["/srv/a.jpg"]}  -> {"ok": true, "cleared": 1, "queued": 1, "paused": false}
                                                    (no "paths", or an empty list: every failure)
  {"command": "pause"}, {"command": "resume"}    -> {"ok": true, "paused": true, "changed": true}
  {"command": "stop"}                            -> {"ok": true, "pid": 1234}
  anything else                                  -> {"ok": false, "error": "..."}

Threads: one accepts, one per connection reads its request and waits for the reply. The main
loop owns all state, so a request is handed to it (woken through its pipe) and answered there,
in `Control.serve()`, called from every step(). A socket file left by a daemon killed with -9
is replaced at the next start, once nothing answers on it; anything else at that name is left
alone and the daemon runs without a control socket, saying why.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
import threading
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SOCKET = "control.sock"
MODE = 0o660
MAX_REQUEST = 1 << 20  # a retry naming many paths fits; a stranger's stream does not
CLIENT_TIMEOUT = 10.0  # seconds a client may take to send its request
REPLY_TIMEOUT = 30.0  # seconds a connection waits for the loop (a reload can take a while)
MAX_CLIENTS = 16
COMMANDS = ("status", "retry", "pause", "resume", "stop")
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path, less its NUL


class ControlError(Exception):
    """The daemon could not be asked (str says why); `answered` is False when nobody listens."""

    def __init__(self, text: str, *, answered: bool = False):
        super().__init__(text)
        self.answered = answered


# ---- where the socket is -----------------------------------------------------------------------


def socket_path(state_dir: Path) -> Path:
    """Where clients connect: the socket, or the symlink to it, in the state folder."""
    return state_dir / SOCKET


def _runtime_dir() -> Path | None:
    value = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(value) if value else None


@contextmanager
def _addressable(path: Path):
    """`path` as an AF_UNIX address: itself, or, past sun_path's 107 bytes, the same file
    reached through /proc/self/fd and a descriptor of its folder."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _answers(path: Path) -> bool:
    """Something accepts connections at `path` (a daemon, ours or not)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            with _addressable(path) as address:
                probe.connect(address)
        except OSError:
            return False  # refused (stale), gone, dangling symlink, not a socket
    return True


def _free(path: Path) -> str | None:
    """None when `path` may be (re)placed by us: absent, or a socket or symlink nobody answers
    on. Otherwise why not."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not (stat.S_ISSOCK(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        return f"{path} exists and is not a socket"
    if _answers(path):
        return f"something already answers on {path}"
    return None


# ---- the server: threads that hand requests to the loop -------------------------------------


@dataclass
class Pending:
    """One request waiting for the main loop's answer."""

    request: dict
    peer: str
    done: threading.Event = field(default_factory=threading.Event)
    reply: dict | None = None

    def answer(self, reply: dict) -> None:
        self.reply = reply
        self.done.set()


class Server:
    def __init__(self, state_dir: Path, wake: Callable[[], None]):
        self.state_dir = state_dir
        self.wake = wake
        self.path: Path | None = None  # the socket file we bound
        self.link: Path | None = None  # the state folder's symlink to it, when in a runtime folder
        self._ino = 0
        self._sock: socket.socket | None = None
        self._pending: deque[Pending] = deque()
        self._lock = threading.Lock()
        self._clients: set[threading.Thread] = set()
        self._closed = threading.Event()
        self._acceptor: threading.Thread | None = None

    def open(self) -> Path:
        """Bind and listen; OSError or ControlError (str says why) when it cannot."""
        runtime = _runtime_dir()
        path = (runtime or self.state_dir) / SOCKET
        why = _free(path)
        if why:
            raise ControlError(why)
        link = socket_path(self.state_dir) if runtime is not None and runtime != self.state_dir else None
        if link is not None and (why := _free(link)):
            raise ControlError(why)
        temp = path.with_name(f".{SOCKET}.{os.getpid()}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # not inheritable: workers never hold it
        try:
            _unlink(temp)
            with _addressable(temp) as address:
                sock.bind(address)
            # Mode and group on a name nobody connects to yet, then renamed into place: never a
            # moment with the umask's mode, and a stale socket is replaced in one step.
            os.chmod(temp, MODE)
            os.chown(temp, -1, os.getegid())  # not a setgid folder's group: the service's own
            sock.listen(MAX_CLIENTS)
            os.rename(temp, path)
            if link is not None:
                link_temp = link.with_name(f".{SOCKET}.{os.getpid()}.link")
                _unlink(link_temp)
                os.symlink(path, link_temp)
                os.rename(link_temp, link)
        except BaseException:
            sock.close()
            _unlink(temp)
            raise
        self._sock, self.path, self.link = sock, path, link
        self._ino = os.stat(path).st_ino
        self._acceptor = threading.Thread(target=self._accept, name="control-accept", daemon=True)
        self._acceptor.start()
        return path

    def take(self) -> list[Pending]:
        """The requests waiting for the loop (loop side)."""
        with self._lock:
            taken = list(self._pending)
            self._pending.clear()
        return taken

    def close(self) -> None:
        """Stop accepting, answer whatever waits with 'stopping', remove the socket file (if it
        is still ours) and the symlink (if it still points at it)."""
        self._closed.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes accept() in the acceptor thread
            except OSError:
                pass
            if self._acceptor is not None:
                self._acceptor.join(5)
            self._sock.close()
            self._sock = None
            self._remove_files()
        for pending in self.take():
            pending.answer({"ok": False, "error": "the daemon is stopping"})
        with self._lock:
            clients = list(self._clients)
        for thread in clients:
            thread.join(2)

    def _remove_files(self) -> None:
        if self.path is None:
            return
        try:
            if os.lstat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except OSError:
            pass
        if self.link is not None:
            try:
                if os.readlink(self.link) == str(self.path):
                    os.unlink(self.link)
            except OSError:
                pass

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, _address = self._sock.accept()
            except OSError:
                if self._closed.is_set():
                    return
                continue  # ECONNABORTED and the like: the next one
            with self._lock:
                busy = len(self._clients) >= MAX_CLIENTS
                if not busy:
                    thread = threading.Thread(target=self._client, args=(conn,), name="control-client", daemon=True)
                    self._clients.add(thread)
            if busy:
                _send(conn, {"ok": False, "error": f"busy: {MAX_CLIENTS} requests already waiting"})
                conn.close()
            else:
                thread.start()

    def _client(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(CLIENT_TIMEOUT)
                try:
                    request = _read_request(conn)
                except ControlError as err:
                    _send(conn, {"ok": False, "error": str(err)})
                    return
                pending = Pending(request, _peer(conn))
                with self._lock:
                    if self._closed.is_set():
                        pending.answer({"ok": False, "error": "the daemon is stopping"})
                    else:
                        self._pending.append(pending)
                self.wake()
                if not pending.done.wait(REPLY_TIMEOUT):
                    pending.answer({"ok": False, "error": f"the daemon did not answer within {REPLY_TIMEOUT:g} s"})
                _send(conn, pending.reply or {"ok": False, "error": "no answer"})
        except OSError:
            pass  # the client went away: nothing to tell it
        finally:
            with self._lock:
                self._clients.discard(threading.current_thread())


def _read_request(conn: socket.socket) -> dict:
    data = b""
    try:
        while b"\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REQUEST:
                raise ControlError(f"request over {MAX_REQUEST} bytes")
    except socket.timeout:
        raise ControlError(f"no request within {CLIENT_TIMEOUT:g} s") from None
    line = data.split(b"\n", 1)[0]
    try:
        request = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ControlError("expected one JSON object on one line") from None
    if not isinstance(request, dict) or request.get("command") not in COMMANDS:
        raise ControlError(f"expected {{\"command\": one of {', '.join(COMMANDS)}}}")
    paths = request.get("paths", [])
    if not isinstance(paths, list) or not all(isinstance(p, str) and p.startswith("/") and "\0" not in p for p in paths):
        raise ControlError("paths: expected a list of absolute paths")
    return request


def _send(conn: socket.socket, reply: dict) -> None:
    try:
        conn.sendall(json.dumps(reply).encode() + b"\n")
    except OSError:
        pass


def _peer(conn: socket.socket) -> str:
    try:
        pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except OSError:
        return "unknown"
    return f"uid {uid}, pid {pid}"


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---- the loop's side: what each command does ---------------------------------------------------


class Control:
    """Owned by the service; every method runs in the main loop's thread."""

    def __init__(self, service: Any):
        self.service = service
        self.paused = False
        self.server: Server | None = None

    def open(self) -> None:
        """At start, after the executor forked its workers (the acceptor is a thread). Without a
        socket the daemon still renders: one error line says why."""
        server = Server(self.service.config.state.dir, self.service.wake)
        try:
            path = server.open()
        except (OSError, ControlError) as err:
            text = os.strerror(err.errno) if isinstance(err, OSError) and err.errno else str(err)
            logger.error("no control socket: %s; `thumbwatch status` reads the status file, `retry` and `stop` signal "
                         "the daemon, `pause` and `resume` cannot be used", text)
            return
        self.server = server
        logger.debug("control socket %s", path)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def state(self) -> str:
        """What the status file and `status` say while the loop runs."""
        return "paused" if self.paused else "running"

    def serve(self) -> None:
        """Answer the requests that came in since the last step."""
        if self.server is None:
            return
        for pending in self.server.take():
            try:
                reply = self.run(pending.request, pending.peer)
            except Exception:
                logger.exception("bug answering %r on the control socket (please report it)", pending.request.get("command"))
                reply = {"ok": False, "error": "internal error (see the daemon's log)"}
            pending.answer(reply)

    def run(self, request: dict, peer: str = "") -> dict:
        command = request["command"]
        by = f" (control socket, {peer})" if peer else ""
        service = self.service
        match command:
            case "status":
                return {"ok": True, "status": service.status.snapshot(self.state())}
            case "retry":
                cleared, queued = self.retry(request.get("paths") or [])
                logger.info("retry%s: cleared %d failure record(s), %d photo(s) queued", by, cleared, queued)
                return {"ok": True, "cleared": cleared, "queued": queued, "paused": self.paused}
            case "pause" | "resume":
                paused = command == "pause"
                changed = paused != self.paused
                self.paused = paused
                if changed and paused:
                    logger.info("paused%s: no photo goes to the workers until `thumbwatch resume`; %d queued", by, service.admission.waiting())
                elif changed:
                    logger.info("resumed%s: %d photo(s) queued", by, service.admission.waiting())
                return {"ok": True, "paused": paused, "changed": changed}
            case "stop":
                if not service.stopping:
                    logger.info("stop asked for%s", by)
                    service.stopping = True
                return {"ok": True, "pid": os.getpid()}
        return {"ok": False, "error": f"unknown command {command!r}"}

    def retry(self, paths: list[str]) -> tuple[int, int]:
        """Forget the failure records under `paths` (all of them when empty), in memory and on
        disk, and queue those photos in the live lane. Returns (cleared, queued)."""
        service = self.service
        failures = service.failures
        before = {path for path, _failure in failures.items()}
        if paths:
            for path in paths:
                failures.clear(path)
        else:
            failures.clear()
        cleared = sorted(before - {path for path, _failure in failures.items()})
        try:
            failures.save(force=True)
        except OSError as err:
            logger.error("cannot save failure records: %s", err)
        queued = 0
        for path in cleared:
            if service.rules.wants(path):
                service.admission.retry_now(path)
                queued += 1
        return len(cleared), queued


# ---- the client -----------------------------------------------------------------------------


def request(state_dir: Path, command: str, *, timeout: float = REPLY_TIMEOUT + 5, **args: Any) -> dict:
    """Ask the daemon of `state_dir`; its reply. ControlError when nobody answers (answered=False)
    or it refused (answered=True); PermissionError when the socket's mode keeps us out."""
    path = socket_path(state_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with _addressable(path) as address:
                sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as err:
            raise ControlError(f"nobody answers on {path} ({os.strerror(err.errno or 0)})") from None
        except socket.timeout:
            raise ControlError(f"nobody answers on {path} (timed out)") from None
        sock.sendall(json.dumps({"command": command, **args}).encode() + b"\n")
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            raise ControlError(f"the daemon took over {timeout:g} s to answer on {path}", answered=True) from None
    try:
        reply = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ControlError(f"no answer on {path} (the daemon stopped?)", answered=True) from None
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = reply.get("error") if isinstance(reply, dict) else None
        raise ControlError(str(error or "refused"), answered=True)
    return reply
