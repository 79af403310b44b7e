"""``edge-agent run`` as systemd runs it: sd_notify READY/WATCHDOG/STOPPING to a real unix socket,
SIGHUP reloads a config that passes ``check`` and keeps the running one otherwise, SIGTERM stops
cleanly; the unit file passes ``systemd-analyze``; ``--version``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agent import __version__
from agent.migrations import MIGRATIONS
from agent.sdnotify import ServiceNotifier
from tests.helpers import REPO, looping_camera, write_edge

UNIT = REPO / "packaging" / "edge-agent.service"


class NotifySocket:
    """What systemd listens on: a unix datagram socket, abstract (``@name``) or a file."""

    def __init__(self, path: Path | None = None):
        self.address = str(path) if path else f"@edge-agent-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path) if path else "\0" + self.address[1:])
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str = "1", timeout: float = 120,
                 proc: subprocess.Popen | None = None) -> dict[str, str]:
        """The first message from now on with ``key=value``; fails if the agent exits first."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.5)
        while time.monotonic() < deadline:
            try:
                datagram = self.sock.recv(4096)
            except TimeoutError:
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"agent exited with {proc.returncode} before {key}={value}") from None
                continue
            message = dict(line.split("=", 1) for line in datagram.decode().splitlines())
            self.messages.append(message)
            if message.get(key) == value:
                return message
        raise AssertionError(f"no {key}={value} within {timeout} s; got {self.messages}")

    def close(self):
        self.sock.close()


def start_agent(edge: Path, notify: NotifySocket, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "30000000"}
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "agent.cli", "-c", str(edge), "run"], stdout=log,
                                stderr=subprocess.STDOUT, cwd=REPO, env=env)


def stop_agent(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("agent did not stop within 60 s of SIGTERM") from None


def wait_for_log(log_path: Path, text: str, proc: subprocess.Popen, after: int = 0, timeout: float = 120) -> str:
    """The first log line holding ``text`` past character ``after`` of the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_path.read_text()[after:].splitlines():
            if text in line:
                return line
        if proc.poll() is not None:
            raise AssertionError(f"agent exited with {proc.returncode} before {text!r}:\n{log_path.read_text()}")
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in the log within {timeout} s:\n{log_path.read_text()}")


def test_the_agent_tells_systemd_ready_watchdog_and_stopping(tmp_path, footage):
    edge = write_edge(tmp_path, [looping_camera(tmp_path, "cam1", footage["vtest.mp4"])])
    notify = NotifySocket()
    agent = start_agent(edge, notify, tmp_path / "agent.log")
    try:
        ready = notify.wait_for("READY", proc=agent)
        assert ready["STATUS"].startswith("1 cameras, outbox ") and " pending of " in ready["STATUS"]
        notify.wait_for("WATCHDOG", proc=agent)
        notify.wait_for("WATCHDOG", proc=agent)  # from the loop, not once
    finally:
        code = stop_agent(agent)
    stopping = notify.wait_for("STOPPING", timeout=5)
    notify.close()
    assert stopping["STATUS"] == "stopping on SIGTERM"
    assert code == 0, (tmp_path / "agent.log").read_text()
    assert "event=agent_stopped" in (tmp_path / "agent.log").read_text()


def test_sighup_keeps_the_running_config_when_the_new_one_is_broken_and_reloads_a_good_one(tmp_path, footage):
    cam1 = looping_camera(tmp_path, "cam1", footage["vtest.mp4"])
    edge = write_edge(tmp_path, [cam1])
    good_camera = cam1.read_text()
    log_path = tmp_path / "agent.log"
    notify = NotifySocket()
    agent = start_agent(edge, notify, log_path)
    try:
        notify.wait_for("READY", proc=agent)

        cam1.write_text(good_camera.replace("min_dwell_s", "min_dwel_s"))
        mark = len(log_path.read_text())
        agent.send_signal(signal.SIGHUP)
        refused = wait_for_log(log_path, "event=config_reload_refused", agent, after=mark)
        assert f"file={cam1}" in refused and "key=zones.plaza.rule.min_dwel_s" in refused, refused
        assert "unknown key" in refused and "running=\"the old config\"" in refused
        assert notify.wait_for("READY", proc=agent)["STATUS"].startswith("config reload refused")
        assert any(m.get("RELOADING") == "1" and "MONOTONIC_USEC" in m for m in notify.messages)
        notify.wait_for("WATCHDOG", proc=agent)  # the old agent runs on
        assert agent.poll() is None
        assert "event=agent_stopped" not in log_path.read_text()[mark:]

        cam1.write_text(good_camera)
        write_edge(tmp_path, [cam1, looping_camera(tmp_path, "cam2", footage["vtest.mp4"])])
        mark = len(log_path.read_text())
        agent.send_signal(signal.SIGHUP)
        wait_for_log(log_path, "event=config_reloaded", agent, after=mark)
        assert notify.wait_for("READY", proc=agent)["STATUS"].startswith("2 cameras, ")
        wait_for_log(log_path, "event=camera_connected camera=cam2", agent, after=mark)
        reload_log = log_path.read_text()[mark:]
        # The old agent stopped cleanly before the new one started.
        assert reload_log.index("event=agent_stopped") < reload_log.index("event=config_reloaded")
        assert agent.poll() is None
    finally:
        code = stop_agent(agent)
        notify.close()
    assert code == 0, log_path.read_text()


def test_the_notifier_sends_to_a_socket_file_and_is_quiet_without_one(tmp_path):
    notify = NotifySocket(tmp_path / "notify")
    notifier = ServiceNotifier.from_env({"NOTIFY_SOCKET": notify.address})
    notifier.watchdog()  # no WATCHDOG_USEC: the unit asked for no watchdog, nothing is sent
    notifier.ready("2 cameras")
    assert notify.wait_for("READY", timeout=5) == {"READY": "1", "STATUS": "2 cameras"}
    assert len(notify.messages) == 1
    other_pid = ServiceNotifier.from_env({"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "1000000",
                                          "WATCHDOG_PID": str(os.getpid() + 1)})
    assert not other_pid.watchdog_enabled  # the watchdog is for another process of the unit
    notify.close()
    ServiceNotifier.from_env({}).ready("nobody listens")  # no NOTIFY_SOCKET: a no-op, no error


def test_version_names_the_release_and_the_database_schema():
    out = subprocess.run([sys.executable, "-m", "agent.cli", "--version"], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert out.returncode == 0
    assert out.stdout.strip() == f"edge-agent {__version__} (database schema {MIGRATIONS[-1].version})"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_the_unit_file_passes_systemd_analyze_verify_and_stays_hardened(tmp_path):
    """verify checks that ExecStart exists: the installed path is swapped for this venv's."""
    unit = tmp_path / "edge-agent.service"
    executable = Path(sys.executable).parent / "edge-agent"
    assert executable.is_file(), f"{executable}: the package is not installed in this venv"
    unit.write_text(UNIT.read_text().replace("/opt/edge-agent/venv/bin/edge-agent", str(executable)))
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on a misspelt key or value too, and says so on stderr.
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20", str(unit)],
                              capture_output=True, text=True, timeout=60)
    assert security.returncode == 0, security.stdout[-2000:]  # exposure above 2.0 of 10: hardening lost
