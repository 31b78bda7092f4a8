"""The sd_notify protocol: one datagram per message to $NOTIFY_SOCKET. A no-op when it is unset.

A few lines, so no dependency. '@' at the start of the address means Linux's abstract namespace.
Sending never raises: the daemon must not die because the socket went away; the first
failure is logged once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

logger = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if address.startswith("@"):
            self.address = "\0" + address[1:]
        elif address.startswith("/"):
            self.address = address
        self._watchdog_usec = _watchdog_usec(env)
        self._warned = False
        self._sock: socket.socket | None = None

    def send(self, *fields: str) -> None:
        if self.address is None:
            return
        message = "\n".join(fields).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self.address)
        except OSError as err:
            if not self._warned:
                logger.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), err)
                self._warned = True

    def ready(self, status: str = "") -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self, status: str = "") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def reloading(self) -> None:
        # systemd >= 253 (Type=notify-reload) wants the monotonic time the reload started at.
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}", "STATUS=reloading")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between keep-alives: half of WatchdogSec=, or None when the unit sets none."""
        if self._watchdog_usec is None or self.address is None:
            return None
        return self._watchdog_usec / 2e6


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # meant for another process of the unit
    return usec if usec > 0 else None
