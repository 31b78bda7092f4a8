"""GET /healthz beside /metrics on a real daemon, and the hooks' spool in the metrics."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request

import pytest

from helpers import edit_config, make_jpeg, thumb, wait_for
from receiver import Receiver

pytestmark = pytest.mark.timeout(90)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_healthz_is_200_while_running_and_503_with_a_reason_while_a_folder_is_gone(project, start_daemon):
    pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")
    port = free_port()
    edit_config(project, "log:\n", f"metrics:\n  port: {port}\nlog:\n")
    daemon = start_daemon()
    daemon.wait_ready()
    wait_for(lambda: get(port, "/healthz") == (200, "ok\n"), 10, message="healthy once the loop runs")
    os.rename(project / "photos", project / "away")
    wait_for(lambda: get(port, "/healthz")[0] == 503, 15, message="unhealthy while the folder is gone")
    status, text = get(port, "/healthz")
    assert text.startswith(f"watched folder(s) not available: {project / 'photos'}: it does not exist") and text.count("\n") == 1, text
    os.rename(project / "away", project / "photos")
    wait_for(lambda: get(port, "/healthz") == (200, "ok\n"), 15, message="healthy again")
    assert "thumbwatch_photos_done_total" in get(port, "/metrics")[1]


def test_the_hooks_spool_shows_in_the_metrics(project, start_daemon):
    pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")
    receiver = Receiver()
    receiver.down()  # nobody listens: the events wait in the spool
    port = free_port()
    edit_config(project, "log:\n", f"metrics:\n  port: {port}\nhooks:\n  webhook: {{url: '{receiver.url}'}}\n  max_wait: 0.1\nlog:\n")
    daemon = start_daemon()
    daemon.wait_ready()
    for i in range(3):
        make_jpeg(project / "photos" / f"m{i}.jpg", 120, 90)
    wait_for(lambda: thumb(project, "m2.jpg").exists(), 20)
    down = 'thumbwatch_hook_up{receiver="webhook"} 0.0'
    wait_for(lambda: down in get(port, "/metrics")[1], 15, message="the receiver is down")
    text = get(port, "/metrics")[1]
    assert "thumbwatch_hooks_pending 3.0" in text and "thumbwatch_hooks_dropped_total 0.0" in text
    receiver.up()
    try:
        wait_for(lambda: "thumbwatch_hooks_pending 0.0" in get(port, "/metrics")[1], 30, message="delivered")
        assert 'thumbwatch_hook_up{receiver="webhook"} 1.0' in get(port, "/metrics")[1]
        assert len(receiver.of_kind("rendered")) == 3
    finally:
        receiver.down()
