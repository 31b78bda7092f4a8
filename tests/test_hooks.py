"""Hooks: thumbnail events delivered at least once to a real HTTP receiver and a real program,
through a receiver that is slow, down, answers 500 and comes back; the spool's bound; a restart
resuming from the spool; and a real daemon's events end to end."""

from __future__ import annotations

import json
import logging
import os
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from helpers import edit_config, make_flat_jpeg, mean_colour, palette, same_colour, thumb, wait_for
from receiver import Receiver
from watcher import hooks
from watcher.config import ConfigError
from watcher.hooksconfig import HooksConfig, WebhookConfig

pytestmark = pytest.mark.timeout(90)


def event(i: int) -> dict:
    return {"v": 1, "event": "rendered", "photo": f"/p/{i}.jpg", "thumbnails": [], "ms": 1, "host": "h"}


def ids(events: list[dict]) -> set[int]:
    return {int(e["photo"][3:-4]) for e in events}


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.down()


@pytest.fixture
def running(tmp_path):
    """Start Hooks on tmp_path/state; every one started is stopped at teardown."""
    started: list[hooks.Hooks] = []

    def start(config: HooksConfig) -> hooks.Hooks:
        h = hooks.Hooks(config, tmp_path / "state")
        h.start()
        started.append(h)
        return h

    yield start
    for h in started:
        h.stop()


def webhook(url: str, **kwargs) -> HooksConfig:
    token_file = kwargs.pop("token_file", None)
    timeout = kwargs.pop("timeout", 10.0)
    return HooksConfig(webhook=WebhookConfig(url, token_file, timeout), **{"max_wait": 0.05, **kwargs})


# ---- webhook -----------------------------------------------------------------------------------


def test_webhook_gets_every_event_in_batches_with_the_token_never_logged(receiver, running, tmp_path, caplog):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    caplog.set_level(logging.DEBUG)
    h = running(webhook(receiver.url, token_file=token, batch=100))
    for i in range(250):
        h.emit(event(i))
    wait_for(lambda: ids(receiver.events()) == set(range(250)), 20, message="all 250 events delivered")
    assert [e["photo"] for e in receiver.events()] == [f"/p/{i}.jpg" for i in range(250)], "in order, each once"
    assert max(len(b) for b in receiver.batches) <= 100
    assert all(hd["Authorization"] == "Bearer s3cret-token" and hd["Content-Type"] == "application/json" for hd in receiver.headers)
    wait_for(lambda: h.describe()["pending"] == 0, 5)
    assert "s3cret" not in caplog.text


def test_a_receiver_that_answers_500_then_comes_back_gets_everything_with_one_line_each_way(receiver, running, caplog):
    caplog.set_level(logging.INFO, logger="watcher.hooks")
    receiver.mode = "500"
    h = running(webhook(receiver.url, batch=10))
    for i in range(35):
        h.emit(event(i))
    wait_for(lambda: receiver.attempts >= 2, 20, message="retried with back-off")
    assert h.describe()["receivers"] == {"webhook": "down"}
    assert not receiver.events()
    receiver.mode = "ok"
    wait_for(lambda: ids(receiver.events()) == set(range(35)), 90, message="delivered once it came back")
    wait_for(lambda: any("is back" in r.getMessage() for r in caplog.records), 5)
    downs = [r for r in caplog.records if "is down" in r.getMessage()]
    backs = [r for r in caplog.records if "is back" in r.getMessage()]
    assert len(downs) == 1 and downs[0].levelno == logging.WARNING and "HTTP 500" in downs[0].getMessage()
    assert len(backs) == 1 and backs[0].levelno == logging.INFO
    assert h.describe()["receivers"] == {"webhook": "up"}


def test_a_receiver_that_is_down_then_back_on_its_port(receiver, running, caplog):
    caplog.set_level(logging.INFO, logger="watcher.hooks")
    receiver.down()
    h = running(webhook(receiver.url, batch=5))
    for i in range(12):
        h.emit(event(i))
    wait_for(lambda: any("is down" in r.getMessage() for r in caplog.records), 10, message="a down line")
    assert "Connection refused" in next(r.getMessage() for r in caplog.records if "is down" in r.getMessage())
    receiver.up()
    wait_for(lambda: ids(receiver.events()) == set(range(12)), 90, message="delivered once it was back")
    wait_for(lambda: any("is back" in r.getMessage() for r in caplog.records), 5)
    assert len([r for r in caplog.records if "is down" in r.getMessage()]) == 1


def test_a_slow_receiver_is_given_up_on_and_retried(receiver, running, caplog):
    caplog.set_level(logging.INFO, logger="watcher.hooks")
    receiver.mode, receiver.slow_seconds = "slow", 2.0
    h = running(webhook(receiver.url, batch=50, timeout=0.5))
    for i in range(20):
        h.emit(event(i))
    wait_for(lambda: any("is down" in r.getMessage() for r in caplog.records), 10)
    assert "no answer in 0.5 s" in next(r.getMessage() for r in caplog.records if "is down" in r.getMessage())
    receiver.mode = "ok"
    wait_for(lambda: h.describe()["pending"] == 0, 30, message="delivered once it answered in time")
    assert ids(receiver.events()) == set(range(20))  # at least once: the slow answer may have counted too


def test_https_checks_the_certificate(tmp_path, running, caplog):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    receiver = Receiver(tls=context)
    try:
        caplog.set_level(logging.INFO, logger="watcher.hooks")
        h = running(webhook(receiver.url))
        h.emit(event(1))
        wait_for(lambda: any("is down" in r.getMessage() for r in caplog.records), 10)
        line = next(r.getMessage() for r in caplog.records if "is down" in r.getMessage())
        assert "CERTIFICATE_VERIFY_FAILED" in line, line
        assert not receiver.events()
    finally:
        receiver.down()


def test_an_unreadable_or_empty_token_file_is_a_config_error(tmp_path, receiver):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="hooks.webhook.token_file"):
        hooks.Hooks(webhook(receiver.url, token_file=empty), tmp_path / "state")


# ---- exec --------------------------------------------------------------------------------------

SCRIPT = """#!/bin/sh
# one run at a time, or the test hears of it
[ -e "{dir}/running" ] && echo overlap >> "{dir}/overlap"
touch "{dir}/running"
mode=$(cat "{dir}/mode")
if [ "$mode" = hang ]; then sleep 59.9; fi
if [ "$mode" = fail ]; then cat > /dev/null; rm -f "{dir}/running"; echo "no database" >&2; exit 3; fi
cat >> "{dir}/got"
rm -f "{dir}/running"
"""


def test_exec_hook_that_fails_hangs_and_succeeds(tmp_path, running, caplog):
    caplog.set_level(logging.INFO, logger="watcher.hooks")
    script = tmp_path / "on-thumbnails"
    script.write_text(SCRIPT.format(dir=tmp_path))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "mode").write_text("fail")
    h = running(HooksConfig(exec=(str(script),), exec_timeout=1.0, batch=4, max_wait=0.05))
    for i in range(10):
        h.emit(event(i))
    wait_for(lambda: any("is down" in r.getMessage() for r in caplog.records), 10)
    assert "exited 3: no database" in next(r.getMessage() for r in caplog.records if "is down" in r.getMessage())
    (tmp_path / "mode").write_text("hang")
    wait_for(lambda: (tmp_path / "running").exists(), 10, message="the hanging run started")
    os.unlink(tmp_path / "running")  # the killed run leaves it behind
    (tmp_path / "mode").write_text("ok")
    wait_for(lambda: h.describe()["pending"] == 0, 90, message="delivered once the program works")
    got = [json.loads(line) for line in (tmp_path / "got").read_text().splitlines()]
    assert ids(got) == set(range(10))
    assert not (tmp_path / "overlap").exists(), "two runs at once"
    assert not any("sleep 59.9" in _cmdline(pid) for pid in _pids()), "the hung run was killed with its children"


def test_exec_hook_past_its_timeout_is_killed_and_retried(tmp_path, running, caplog):
    caplog.set_level(logging.INFO, logger="watcher.hooks")
    script = tmp_path / "on-thumbnails"
    script.write_text(SCRIPT.format(dir=tmp_path))
    script.chmod(0o755)
    (tmp_path / "mode").write_text("hang")
    h = running(HooksConfig(exec=(str(script),), exec_timeout=0.5, batch=4, max_wait=0.05))
    h.emit(event(1))
    wait_for(lambda: any("is down" in r.getMessage() for r in caplog.records), 10)
    assert "still running after hooks.exec_timeout 0.5 s; killed" in next(r.getMessage() for r in caplog.records if "is down" in r.getMessage())
    os.unlink(tmp_path / "running")
    (tmp_path / "mode").write_text("ok")
    wait_for(lambda: h.describe()["pending"] == 0, 30)
    assert ids([json.loads(line) for line in (tmp_path / "got").read_text().splitlines()]) == {1}


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# ---- the spool ---------------------------------------------------------------------------------


def test_a_restart_resumes_from_the_spool_and_sends_nothing_twice(receiver, tmp_path):
    receiver.down()
    first = hooks.Hooks(webhook(receiver.url, batch=10), tmp_path / "state")
    first.start()
    for i in range(30):
        first.emit(event(i))
    first.stop()
    receiver.up()
    second = hooks.Hooks(webhook(receiver.url, batch=10), tmp_path / "state")
    second.start()
    try:
        wait_for(lambda: ids(receiver.events()) == set(range(30)), 30, message="the spool of the first run delivered")
        wait_for(lambda: second.describe()["pending"] == 0, 5)
        second.emit(event(30))
        wait_for(lambda: 30 in ids(receiver.events()), 10)
    finally:
        second.stop()
    third = hooks.Hooks(webhook(receiver.url, batch=10), tmp_path / "state")
    third.start()
    try:
        assert third.describe()["pending"] == 0
    finally:
        third.stop()
    assert sorted(e["photo"] for e in receiver.events()) == sorted(f"/p/{i}.jpg" for i in range(31)), "each once"
    assert len(os.listdir(tmp_path / "state" / "hooks")) <= 3, "delivered segments are removed"


def test_the_spool_is_bounded_and_drops_the_oldest_with_one_error(receiver, running, caplog):
    caplog.set_level(logging.INFO, logger="watcher.hooks")
    receiver.down()
    h = running(webhook(receiver.url, batch=100, spool_max=20))
    for i in range(100):
        h.emit(event(i))
    state = h.describe()
    assert state["pending"] <= 20 and state["pending"] + state["dropped"] == 100, state
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "hooks spool full" in errors[0].getMessage()
    receiver.up()
    wait_for(lambda: h.describe()["pending"] == 0, 60, message="the rest delivered")
    got = ids(receiver.events())
    assert 99 in got and 0 not in got and len(got) == 100 - state["dropped"], "the newest kept, the oldest dropped"


def test_a_stop_sends_what_is_pending_to_a_receiver_that_is_up(receiver, tmp_path):
    h = hooks.Hooks(webhook(receiver.url, batch=100, max_wait=3600), tmp_path / "state")
    h.start()
    for i in range(5):
        h.emit(event(i))
    assert not receiver.events(), "a batch waits to fill"
    h.stop()
    assert ids(receiver.events()) == set(range(5))


def test_two_receivers_each_get_every_event(receiver, running, tmp_path):
    script = tmp_path / "on-thumbnails"
    (tmp_path / "mode").write_text("ok")
    script.write_text(SCRIPT.format(dir=tmp_path))
    script.chmod(0o755)
    h = running(HooksConfig(webhook=WebhookConfig(receiver.url), exec=(str(script),), batch=7, max_wait=0.05))
    for i in range(20):
        h.emit(event(i))
    wait_for(lambda: h.describe()["pending"] == 0, 30)
    assert ids(receiver.events()) == set(range(20))
    assert ids([json.loads(line) for line in (tmp_path / "got").read_text().splitlines()]) == set(range(20))


# ---- a real daemon, end to end -----------------------------------------------------------------


def test_a_daemon_tells_a_receiver_what_happened_to_each_photo(project, start_daemon, receiver):
    edit_config(project, "log:\n", f"hooks:\n  webhook: {{url: '{receiver.url}'}}\n  max_wait: 0.1\nlog:\n")
    edit_config(project, "output:\n", "output:\n  placeholder: thumbhash\n")
    photos = project / "photos"
    (photos / "album").mkdir()
    daemon = start_daemon()
    daemon.wait_ready()
    names = [f"album/p{i}.jpg" for i in range(4)] + ["top.jpg"]
    for i, name in enumerate(names):
        make_flat_jpeg(photos / name, palette(i * 40), 120, 90)
    (photos / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    wait_for(lambda: len({e["photo"] for e in receiver.of_kind("rendered")}) == len(names), 30, message="a rendered event per photo")
    wait_for(lambda: receiver.of_kind("failed"), 30, message="a failed event")
    rendered = {e["photo"]: e for e in receiver.of_kind("rendered")}
    assert set(rendered) == {str(photos / n) for n in names}, "none for the photo that failed"
    for i, name in enumerate(names):
        e = rendered[str(photos / name)]
        assert e["v"] == 1 and e["ms"] >= 0 and e["host"]
        assert e["placeholder"]["kind"] == "thumbhash" and e["placeholder"]["hash"]
        [t] = e["thumbnails"]
        assert t["path"] == str(thumb(project, name)) and t["size"] == "small" and t["format"] == "jpeg"
        with Image.open(t["path"]) as im:  # what the event says is what is on disk
            assert (t["width"], t["height"]) == im.size == (64, 48)
        assert t["bytes"] == os.path.getsize(t["path"])
        assert same_colour(mean_colour(t["path"]), palette(i * 40))
    [failed] = receiver.of_kind("failed")
    assert failed["photo"] == str(photos / "bad.jpg") and failed["reason"]

    os.unlink(photos / "top.jpg")
    wait_for(lambda: receiver.of_kind("removed"), 20, message="a removed event")
    [removed] = receiver.of_kind("removed")
    assert removed["photo"] == str(photos / "top.jpg") and removed["why"] == "deleted"
    assert removed["thumbnails"] == [str(thumb(project, "top.jpg"))] and not thumb(project, "top.jpg").exists()

    os.rename(photos / "album", photos / "trip")
    wait_for(lambda: receiver.of_kind("moved"), 20, message="a moved event")
    [moved] = receiver.of_kind("moved")
    assert (moved["from"], moved["to"]) == (str(photos / "album"), str(photos / "trip"))
    [carried] = moved["thumbnails"]
    assert carried == {"size": "small", "from": str(thumb(project, "album")), "to": str(thumb(project, "trip"))}
    wait_for(lambda: thumb(project, "trip/p0.jpg").exists(), 10)
    assert len(receiver.of_kind("rendered")) >= len(names), "the moved photos are not rendered again"
    assert daemon.status()["hooks"]["dropped"] == 0


def test_the_example_receiver_keeps_an_index_of_the_thumbnails(project, start_daemon, tmp_path):
    """examples/receiver.py, run as the README says, against a real daemon."""
    import sys

    index_file = tmp_path / "index.json"
    example = subprocess.Popen([sys.executable, str(Path(__file__).parent.parent / "examples" / "receiver.py"), "0", str(index_file)],
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        port = int(example.stdout.readline().split()[-1])
        edit_config(project, "log:\n", f"hooks:\n  webhook: {{url: 'http://127.0.0.1:{port}/'}}\n  max_wait: 0.1\nlog:\n")
        photos = project / "photos"
        (photos / "a").mkdir()
        daemon = start_daemon()
        daemon.wait_ready()
        for i, name in enumerate(["a/1.jpg", "a/2.jpg", "3.jpg", "4.jpg"]):
            make_flat_jpeg(photos / name, palette(i * 50), 100, 80)

        def index() -> dict:
            try:
                return json.loads(index_file.read_text())
            except FileNotFoundError:
                return {}

        def on_disk() -> set[str]:
            return {str(p) for p in (photos / "thumbs").rglob("*.jpg")}

        wait_for(lambda: len(index()) == 4, 30, message="four thumbnails indexed")
        os.unlink(photos / "3.jpg")
        os.rename(photos / "a", photos / "b")
        make_flat_jpeg(photos / "b" / "5.jpg", palette(7), 100, 80)
        wait_for(lambda: set(index()) == on_disk() and len(on_disk()) == 4 and str(thumb(project, "b/5.jpg")) in index(), 30,
                 message="the index follows the removal, the folder's rename and a new photo")
        entry = index()[str(thumb(project, "b/1.jpg"))]
        assert entry == {"photo": str(photos / "b" / "1.jpg"), "size": "small", "width": 64, "height": 51,
                         "bytes": os.path.getsize(thumb(project, "b/1.jpg"))}
    finally:
        os.killpg(example.pid, 9)
        example.wait(10)


# ---- the config --------------------------------------------------------------------------------


@pytest.mark.parametrize("hooks_yaml,message", [
    ("{webhook: {url: 'ftp://example.org/x'}}", "hooks.webhook.url: expected an http:// or https:// URL, got 'ftp://example.org/x'"),
    ("{webhook: {url: 'http://127.0.0.1:9/', token_file: /nonexistent/token}}", "hooks.webhook.token_file: cannot read /nonexistent/token"),
    ("{webhook: {url: 'http://127.0.0.1:9/', tokenfile: x}}", "hooks.webhook.tokenfile: unknown key"),
    ("{exec: [/nonexistent/on-thumbnails]}", "hooks.exec: expected a program that can be run, but /nonexistent/on-thumbnails is not one"),
    ("{exec: [/bin/true], batch: 0}", "hooks.batch: expected a whole number from 1 to 10000, got 0"),
    ("{exec: [/bin/true], spool_max: many}", "hooks.spool_max: expected a whole number, got 'many'"),
])
def test_a_bad_hooks_config_is_refused_naming_the_key(project, hooks_yaml, message):
    import sys

    edit_config(project, "log:\n", f"hooks: {hooks_yaml}\nlog:\n")
    done = subprocess.run([sys.executable, "-m", "watcher", "check-config", "--config", str(project / "config.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 78, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
