"""The systemd unit files: verified by systemd itself, and saying what the daemon relies on."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess

import pytest
import yaml

from helpers import REPO
from watcher.config import EX_CONFIG, ConfigError, WorkersConfig, load

UNITS = ["thumbwatch.service", "thumbwatch@.service"]
USER_UNIT = "user/thumbwatch.service"


def parse(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(REPO / "systemd" / name)
    return parser


@pytest.mark.parametrize("name", UNITS + [USER_UNIT])
def test_systemd_analyze_verify_has_nothing_to_say(tmp_path, name):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's binary exists; thumbwatch is not installed at
    # /usr/local/bin here, so verify a copy that points at a binary that does exist.
    text = (REPO / "systemd" / name).read_text()
    assert "ExecStart=/usr/local/bin/thumbwatch " in text
    copy_name = name.replace("@.", "@photos.").replace("user/", "")
    (tmp_path / copy_name).write_text(text.replace("ExecStart=/usr/local/bin/thumbwatch ", "ExecStart=/bin/true "))
    scope, env = [], None
    if name == USER_UNIT:  # a user manager's view needs a runtime folder of its own
        (tmp_path / "runtime").mkdir(mode=0o700)
        scope, env = ["--user"], {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "runtime")}
    result = subprocess.run([tool, "verify", *scope, str(tmp_path / copy_name)], capture_output=True, text=True, timeout=60, env=env)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 and "Failed to" in output and copy_name not in output:
        pytest.skip(f"systemd-analyze cannot run here: {output.splitlines()[0]}")
    assert result.returncode == 0 and output == "", output


@pytest.mark.parametrize("name", UNITS + [USER_UNIT])
def test_unit_settings_the_daemon_relies_on(name):
    service = parse(name)["Service"]
    assert service["Type"] == "notify"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == str(EX_CONFIG)
    assert service["ExecStart"].split()[1:3] == ["run", "--config"]
    stop = float(service["TimeoutStopSec"])
    assert stop > WorkersConfig.drain_timeout + 5, "systemd would SIGKILL a drain the config allows"
    for hardening in ("NoNewPrivileges", "MemoryDenyWriteExecute", "LockPersonality"):
        assert service[hardening] == "yes", hardening
    assert service["RestrictAddressFamilies"] == "AF_UNIX"


@pytest.mark.parametrize("name", UNITS)
def test_system_units_run_as_the_sysusers_account_with_state_admins_can_find(name):
    service = parse(name)["Service"]
    for hardening in ("PrivateTmp", "PrivateDevices", "ProtectKernelTunables"):
        assert service[hardening] == "yes", hardening
    assert service["ProtectSystem"] == "strict" and service["SystemCallFilter"] == "@system-service"
    assert "DynamicUser" not in service, "a transient uid owns thumbnails nobody can place (issue 13)"
    sysusers = [line.split() for line in (REPO / "systemd/thumbwatch.sysusers").read_text().splitlines() if line[:1] in ("u", "g", "m")]
    assert ["u", service["User"]] == sysusers[1][:2] and service["Group"] == service["User"]
    assert ["g", service["SupplementaryGroups"], "-"] == sysusers[0] and ["m", service["User"], service["SupplementaryGroups"]] in sysusers
    assert service["UMask"] == "0022", "thumbnails readable by a web server by default"
    assert service["Environment"] == "THUMBWATCH_UNIT=system"
    # The photo folder the tmpfiles line makes is the one the shipped config watches and the unit may write.
    tmpfiles = [line.split() for line in (REPO / "systemd/thumbwatch.tmpfiles").read_text().splitlines() if line.startswith("d ")]
    config = yaml.safe_load((REPO / "config/system.yaml").read_text())
    assert tmpfiles == [["d", service["ReadWritePaths"], "2775", "root", service["SupplementaryGroups"], "-"]]
    assert config["watch"]["paths"] == [service["ReadWritePaths"]]
    assert config["state"]["dir"] == "/var/lib/thumbwatch"
    assert config["workers"]["drain_timeout"] + 5 < float(service["TimeoutStopSec"])


def test_the_plain_and_the_template_unit_keep_their_state_apart():
    plain, template = (parse(name)["Service"]["StateDirectory"] for name in UNITS)
    assert plain == "thumbwatch" and template == "thumbwatch-%i", "nested state folders collide (status=238, issue 13)"
    assert parse(UNITS[1])["Service"]["LogsDirectory"] == "thumbwatch-%i"
    # the control socket's folder too (watcher/control.py: $RUNTIME_DIRECTORY/control.sock)
    assert [parse(name)["Service"]["RuntimeDirectory"] for name in UNITS] == ["thumbwatch", "thumbwatch-%i"]


def test_the_metrics_drop_in_adds_tcp_to_what_the_units_allow():
    drop_in = configparser.RawConfigParser()
    drop_in.read(REPO / "systemd/metrics.conf")
    assert drop_in["Service"]["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]


def test_the_desktop_config_runs_under_the_user_unit_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("THUMBWATCH_UNIT", raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert load(REPO / "config/desktop.yaml").output.style == "freedesktop"
    monkeypatch.setenv("THUMBWATCH_UNIT", "system")
    with pytest.raises(ConfigError, match=r"desktop.yaml: output.style: expected files under the system unit.*user unit"):
        load(REPO / "config/desktop.yaml")


def test_a_state_dir_other_than_the_units_is_refused_under_it(tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text(f"watch:\n  paths: [{tmp_path}]\nstate:\n  dir: {tmp_path}/state\n")
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/state")
    assert load(config).state.dir == tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/thumbwatch-other")
    with pytest.raises(ConfigError, match=r"state.dir: expected the unit's StateDirectory= /var/lib/thumbwatch-other"):
        load(config)


def test_logrotate_snippet_signals_a_reopen():
    text = (REPO / "config" / "logrotate.conf").read_text()
    assert "postrotate" in text and "HUP" in text
