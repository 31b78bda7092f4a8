"""Optional Prometheus endpoint (metrics.port set), served by the official prometheus-client,
and GET /healthz beside it.

Values are read from the master's status() at scrape time, so there is no second set of
counters to keep in step. Off by default; binds to metrics.host (localhost) only.

/healthz answers 200 "ok" while the master's loop runs and the watched folders are available,
503 with a one-line reason otherwise; the master's health() callable decides (service.py).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .config import ConfigError, MetricsConfig

logger = logging.getLogger(__name__)

COUNTERS = {
    "done": "Photos thumbnailed",
    "failed": "Photos that failed",
    "skipped": "Photos skipped because their thumbnails were up to date",
    "retried": "Photos retried after their worker died",
}
GAUGES = {
    "queue": "Photos waiting for a worker",
    "in_flight": "Photos being rendered",
    "settling": "Files waiting to stop changing",
    "uptime": "Seconds since start",
    "render_ms_p50": "Median render time of recent photos, ms",
    "render_ms_p95": "95th percentile render time of recent photos, ms",
}


def preflight(config: MetricsConfig) -> None:
    """Before anything starts: the library is installed, and this process may open a TCP socket
    at all (the shipped systemd units' RestrictAddressFamilies=AF_UNIX forbids it)."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError("metrics.port: needs the prometheus-client library (pip install 'thumbwatch[metrics]')") from None
    try:
        family = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as err:
        raise ConfigError(f"metrics.host: cannot resolve {config.host!r}: {err.strerror}") from None
    try:
        socket.socket(family, socket.SOCK_STREAM).close()
    except OSError as err:
        raise ConfigError(_cannot_listen(config, err)) from None


def _cannot_listen(config: MetricsConfig, err: OSError) -> str:
    text = f"metrics.port: cannot listen on {config.host}:{config.port}: {err.strerror}"
    if err.errno == errno.EAFNOSUPPORT:
        # What the shipped systemd units' RestrictAddressFamilies=AF_UNIX does to a TCP socket.
        text += ("; under systemd, allow TCP in the unit: `systemctl edit thumbwatch` (or thumbwatch@NAME) and add "
                 "[Service] RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 (the drop-in systemd/metrics.conf)")
    return text


def start(config: MetricsConfig, status: Callable[[], dict], health: Callable[[], str | None] = lambda: None) -> WSGIServer:
    """Serve /metrics and /healthz from a thread; `health()` returns why the daemon is not
    healthy, or None."""
    try:
        from prometheus_client import make_wsgi_app
        from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
    except ImportError:
        raise ConfigError("metrics.port: needs the prometheus-client library (pip install 'thumbwatch[metrics]')") from None

    class Collector:
        def collect(self):
            values = status()
            for key, text in COUNTERS.items():
                yield CounterMetricFamily(f"thumbwatch_photos_{key}", text, value=values[key])
            for key, text in GAUGES.items():
                if values.get(key) is not None:
                    yield GaugeMetricFamily(f"thumbwatch_{key}", text, value=values[key])
            yield GaugeMetricFamily("thumbwatch_workers", "Worker processes", value=len(values.get("workers", ())))
            hooks = values.get("hooks")
            if hooks:
                yield GaugeMetricFamily("thumbwatch_hooks_pending", "Thumbnail events in the hooks spool not yet delivered (the slowest receiver)", value=hooks["pending"])
                yield CounterMetricFamily("thumbwatch_hooks_dropped", "Thumbnail events dropped from the full hooks spool", value=hooks["dropped"])
                up = GaugeMetricFamily("thumbwatch_hook_up", "1 while a hook's receiver takes deliveries", labels=["receiver"])
                for name, state in hooks["receivers"].items():
                    up.add_metric([name], 1 if state == "up" else 0)
                yield up

    collector = Collector()
    REGISTRY.register(collector)
    metrics_app = make_wsgi_app(REGISTRY)

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return metrics_app(environ, start_response)
        try:
            reason = health()
        except Exception as err:  # a bug must not take the endpoint down with it
            logger.exception("bug in the health check (please report it)")
            reason = f"health check failed: {err}"
        text = "ok" if reason is None else " ".join(reason.split())
        start_response("200 OK" if reason is None else "503 Service Unavailable",
                       [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")])
        return [(text + "\n").encode("utf-8", "replace")]

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)[0][0]

    try:
        server = make_server(config.host, config.port, app, Server, handler_class=_Quiet)
    except OSError as err:
        REGISTRY.unregister(collector)
        raise ConfigError(_cannot_listen(config, err)) from None
    threading.Thread(target=server.serve_forever, name="thumbwatch-metrics", daemon=True).start()
    logger.info("metrics on http://%s:%d/metrics, health on /healthz", config.host, server.server_port)
    return server


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass  # a scrape every 15 s is not worth a log line
