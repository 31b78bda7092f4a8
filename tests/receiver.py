"""A real HTTP receiver for hook tests: http.server on 127.0.0.1, a free port, in a thread.

It can answer 200, answer 500, take its time (slow), or be down (its socket closed) and come
back on the same port. It records every batch it accepted, with the headers it got.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self, port: int = 0, tls: ssl.SSLContext | None = None):
        self.tls = tls
        self.mode = "ok"  # ok | 500 | slow
        self.slow_seconds = 3.0
        self.batches: list[list[dict]] = []
        self.headers: list[dict] = []
        self.attempts = 0
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.port = port
        self.up()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/thumbnails"

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.attempts += 1
                    mode = receiver.mode
                if mode == "slow":
                    time.sleep(receiver.slow_seconds)  # the receiver being slow is what is tested
                if mode == "500":
                    self.send_response(500)
                    self.end_headers()
                    return
                events = json.loads(body)["events"]
                with receiver.lock:
                    receiver.batches.append(events)
                    receiver.headers.append(dict(self.headers))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(5)
            self.server = None

    def events(self) -> list[dict]:
        with self.lock:
            return [event for batch in self.batches for event in batch]

    def of_kind(self, kind: str) -> list[dict]:
        return [e for e in self.events() if e["event"] == kind]
