"""The box's local surfaces: the running agent listens on no TCP port at all.

Issue 9's rule for local HTTP endpoints (health, metrics, calibration) is "localhost by default, a
token when bound elsewhere". The agent has no such endpoint yet, so the rule holds by there being
nothing to reach: this test reads the running agent's own sockets from /proc and fails the day a
listener appears without the test (and the rule) being revisited. It also sees the agent's
connection to the broker, so an inspection that finds no sockets at all cannot pass by accident.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, write_camera, write_edge
from tests.test_whole_loop import Subscriber, wait_for

TCP_LISTEN, TCP_ESTABLISHED = "0A", "01"


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed between listing and reading
            continue
        if match := re.fullmatch(r"socket:\[(\d+)\]", target):
            inodes.add(match.group(1))
    return inodes


def tcp_sockets(pid: int) -> list[tuple[str, int, int]]:
    """(state, local port, remote port) of every TCP socket the process holds, IPv4 and IPv6."""
    inodes = socket_inodes(pid)
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if inode in inodes:
                found.append((state, int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_the_running_agent_listens_on_no_tcp_port(tmp_path, footage, mosquitto):
    cam = write_camera(tmp_path, "cam-file", str(footage["vtest.mp4"]), realtime=True)
    edge = write_edge(tmp_path, [cam], mqtt_port=mosquitto.port)
    sub = Subscriber(mosquitto.port, "cityops/test-box/status")
    with open(tmp_path / "agent.log", "wb") as log:
        agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "-c", str(edge), "run"],
                                 stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_for(lambda: sub.on("/status"), 60, "the agent's status on the broker", agent)
        wait_for(lambda: "camera_connected" in (tmp_path / "agent.log").read_text(), 60,
                 "the camera to connect", agent)
        sockets = tcp_sockets(agent.pid)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
        sub.close()
    assert (TCP_ESTABLISHED, mosquitto.port) in {(state, remote) for state, _, remote in sockets}, sockets
    listening = [local for state, local, _ in sockets if state == TCP_LISTEN]
    assert listening == [], f"the agent listens on TCP ports {listening}: bind to localhost and require a token"
