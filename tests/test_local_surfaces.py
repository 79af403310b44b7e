"""The box's local surfaces: the running agent listens on no TCP port at all, and the calibration
page (a separate command, ``edge-agent calibrate-ui``) listens on loopback unless given a token.

Issue 9's rule for local HTTP endpoints (health, metrics, calibration) is "localhost by default, a
token when bound elsewhere". The agent itself has no such endpoint, so there the rule holds by
there being nothing to reach: the first test reads the running agent's own sockets from /proc and
fails the day a listener appears without the test (and the rule) being revisited. It also sees
the agent's connection to the broker, so an inspection that finds no sockets at all cannot pass by
accident. The calibration page's tests read its listener the same way and knock on it over HTTP.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
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


def tcp_listeners(pid: int) -> list[tuple[str, int]]:
    """(local address, port) of every TCP socket the process listens on, IPv4 and IPv6."""
    inodes = socket_inodes(pid)
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and fields[3] == TCP_LISTEN:
                address, port = fields[1].rsplit(":", 1)
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word of the address in host (little-endian) order.
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.append((str(ipaddress.ip_address(words)), int(port, 16)))
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


# ---------------------------------------------------------------- the calibration page

TOKEN = "a3f1c0de" * 4


def start_page(tmp_path: Path, footage, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """``edge-agent calibrate-ui ARGS`` on a free port; returns the process and the page's URL."""
    cam = write_camera(tmp_path, "cam-file", str(footage["vtest.mp4"]))
    edge = write_edge(tmp_path, [cam], command_key=False)
    with open(tmp_path / "page.log", "wb") as log:
        page = subprocess.Popen([sys.executable, "-m", "agent.cli", "-c", str(edge), "calibrate-ui", "--port", "0",
                                 *args], stdout=subprocess.PIPE, stderr=log, cwd=REPO, text=True,
                                env={**os.environ, **(env or {})})
    line = page.stdout.readline()
    if not line.startswith("calibration page: "):
        page.kill()
        raise AssertionError(f"the page did not start: {line!r} {(tmp_path / 'page.log').read_text()}")
    return page, line.split(": ", 1)[1].strip().split("?")[0]


def stop_page(page: subprocess.Popen) -> None:
    page.send_signal(signal.SIGTERM)
    page.wait(timeout=20)


def get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """Status, headers and body, without following redirects."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_the_calibration_page_listens_on_loopback_by_default(tmp_path, footage):
    page, url = start_page(tmp_path, footage)
    try:
        listeners = tcp_listeners(page.pid)
        port = int(url.rsplit(":", 1)[1].strip("/"))
        assert listeners == [("127.0.0.1", port)], listeners
        status, _, body = get(url + "api/cameras")
        assert status == 200 and b"cam-file" in body
        # Without a token only a loopback Host is served: a DNS name rebound to 127.0.0.1 is not.
        assert get(url + "api/cameras", {"Host": f"evil.example:{port}"})[0] == 403
    finally:
        stop_page(page)


def test_the_calibration_page_refuses_to_bind_elsewhere_without_a_token(tmp_path, footage):
    cam = write_camera(tmp_path, "cam-file", str(footage["vtest.mp4"]))
    edge = write_edge(tmp_path, [cam], command_key=False)
    env = {k: v for k, v in os.environ.items() if k != "EDGE_UI_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "agent.cli", "-c", str(edge), "calibrate-ui", "--bind", "0.0.0.0",
                           "--port", "0"], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert done.returncode == 2
    assert "needs a token" in done.stderr and "--token-file" in done.stderr
    assert "calibration page:" not in done.stdout


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("how", ["file", "env"])
def test_the_calibration_page_bound_elsewhere_needs_its_token(tmp_path, footage, how):
    if how == "file":
        token_file = tmp_path / "page.token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        page, url = start_page(tmp_path, footage, "--bind", "0.0.0.0", "--token-file", str(token_file))
    else:
        page, url = start_page(tmp_path, footage, "--bind", "0.0.0.0", env={"EDGE_UI_TOKEN": TOKEN})
    try:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        assert tcp_listeners(page.pid) == [("0.0.0.0", port)]
        # Knock from the box's own address on the network where it has one, else via loopback.
        host = next((a for a in _own_addresses() if not ipaddress.ip_address(a).is_loopback), "127.0.0.1")
        base = f"http://{host}:{port}/"
        assert get(base + "api/cameras")[0] == 401
        assert get(base)[0] == 401  # the page itself too, not only its API
        assert get(base + "api/cameras", {"Authorization": "Bearer " + "0" * len(TOKEN)})[0] == 401
        status, _, body = get(base + "api/cameras", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and b"cam-file" in body
        # The link a technician opens: the token moves into a cookie and out of the address bar.
        status, headers, _ = get(base + f"?token={TOKEN}")
        assert status == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in headers["Set-Cookie"]
        assert get(base + "api/cameras", {"Cookie": cookie})[0] == 200
        assert get(base + "api/cameras", {"Cookie": "edge_ui_token=wrong"})[0] == 401
        assert get(base + "?token=wrong")[0] == 401
    finally:
        stop_page(page)


def _own_addresses() -> list[str]:
    """This machine's IPv4 addresses as the kernel's routing table knows them."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent, only a route is chosen
            return [probe.getsockname()[0]]
    except OSError:
        return []
