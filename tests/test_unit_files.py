"""The systemd unit files: verified by systemd itself, and saying what the daemon relies on."""

from __future__ import annotations

import configparser
import shutil
import subprocess

import pytest

from helpers import REPO
from watcher.config import EX_CONFIG, WorkersConfig

UNITS = ["thumbwatch.service", "thumbwatch@.service"]


def parse(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(REPO / "systemd" / name)
    return parser


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_has_nothing_to_say(tmp_path, name):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's binary exists; thumbwatch is not installed at
    # /usr/local/bin here, so verify a copy that points at a binary that does exist.
    text = (REPO / "systemd" / name).read_text()
    assert "ExecStart=/usr/local/bin/thumbwatch " in text
    copy_name = name.replace("@.", "@photos.")
    (tmp_path / copy_name).write_text(text.replace("ExecStart=/usr/local/bin/thumbwatch ", "ExecStart=/bin/true "))
    result = subprocess.run([tool, "verify", str(tmp_path / copy_name)], capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 and "Failed to" in output and copy_name not in output:
        pytest.skip(f"systemd-analyze cannot run here: {output.splitlines()[0]}")
    assert result.returncode == 0 and output == "", output


@pytest.mark.parametrize("name", UNITS)
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
    for hardening in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables", "MemoryDenyWriteExecute", "LockPersonality"):
        assert service[hardening] == "yes", hardening
    assert service["ProtectSystem"] == "strict" and service["ReadWritePaths"]
    assert service["RestrictAddressFamilies"] == "AF_UNIX"
    assert service["SystemCallFilter"] == "@system-service"
    assert service["DynamicUser"] == "yes" and service["StateDirectory"].startswith("thumbwatch")


def test_logrotate_snippet_signals_a_reopen():
    text = (REPO / "config" / "logrotate.conf").read_text()
    assert "postrotate" in text and "HUP" in text
