"""Optional Prometheus endpoint (metrics.port set), served by the official prometheus-client.

Values are read from the master's status() at scrape time, so there is no second set of
counters to keep in step. Off by default; binds to metrics.host (localhost) only.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

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


def start(config: MetricsConfig, status: Callable[[], dict]) -> None:
    try:
        from prometheus_client import start_http_server
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
            yield GaugeMetricFamily("thumbwatch_workers", "Worker processes", value=len(values["workers"]))

    REGISTRY.register(Collector())
    try:
        start_http_server(config.port, addr=config.host)
    except OSError as err:
        raise ConfigError(_cannot_listen(config, err)) from None
    logger.info("metrics on http://%s:%d/metrics", config.host, config.port)
