"""Model updates by signed command, against a real agent core (real NanoDet models, real SQLite)
and a real HTTP server on loopback serving the files."""

from __future__ import annotations

import hashlib
import http.server
import json
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent import schemas
from agent.app import Agent
from agent.clock import ManualClock
from agent.config import load_config
from agent.model_update import MODELS_DIR, POINTER_FILE, STAGING_DIR
from agent.transport import Request
from agent.typedtoml import ConfigError, read_toml
from agent.types import Frame
from tests.helpers import COMMAND_KEY, NANODET_MANIFEST, REPO, signed, write_camera, write_edge
from tests.onnx_fixtures import IR_VERSION, OPSET
from tests.test_transport_security import Pki, pki  # noqa: F401  (the fixture: a CA and a loopback certificate)
from tools.ref_platform import RefPlatform

START = 1_800_000_000.0
INT8_MANIFEST = REPO / "models" / "nanodet-g-416-int8.toml"
EBIKE_MANIFEST = REPO / "tests" / "data" / "ebike-yolov8n-256.toml"


class FileServer:
    """http.server on 127.0.0.1 serving a folder; remembers every path asked for."""

    def __init__(self, root: Path, tls: ssl.SSLContext | None = None):
        self.root, self.requests, self.scheme = root, [], "https" if tls else "http"
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                server.requests.append(self.path)
                if self.path.startswith("/moved/"):
                    self.send_response(302)
                    self.send_header("Location", self.path.removeprefix("/moved"))
                    self.end_headers()
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, name: str, data: bytes) -> tuple[str, str]:
        """Put ``data`` on the server; returns (its URL, its sha256)."""
        (self.root / name).write_bytes(data)
        return f"{self.scheme}://127.0.0.1:{self.port}/{name}", hashlib.sha256(data).hexdigest()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    srv = FileServer(root)
    yield srv
    srv.stop()


@pytest.fixture
def https_server(tmp_path, pki: Pki):  # noqa: F811 - pytest injects the fixture imported above
    root = tmp_path / "www-tls"
    root.mkdir()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(pki.server, pki.server_key)
    srv = FileServer(root, tls)
    yield srv
    srv.stop()


def make_box(tmp_path: Path, max_bytes: int = 64 * 1024 * 1024, more: str = "") -> Path:
    """Two cameras: cam1 on [models.default] (fp32 NanoDet), cam2 on [models.other]."""
    tmp_path.mkdir(exist_ok=True)
    cam1 = write_camera(tmp_path, "cam1", "/nonexistent.mp4", polygon="[[0, 150], [768, 150], [768, 576], [0, 576]]")
    cam2 = write_camera(tmp_path, "cam2", "/nonexistent.mp4")
    cam2.write_text(cam2.read_text().replace('model = "default"', 'model = "other"'))
    return write_edge(tmp_path, [cam1, cam2], extra=f"""
        [models.other]
        manifest = "{NANODET_MANIFEST}"

        [models_update]
        allowed_hosts = ["127.0.0.1"]
        max_bytes = {max_bytes}
        timeout_s = 10
        {more}
    """)


def start(edge: Path) -> Agent:
    return Agent(load_config(edge), clock=ManualClock(START))


def send(agent: Agent, **body) -> dict:
    doc = {"schema": "edge-agent/command", "schema_version": "1.0", "command_id": uuid.uuid4().hex[:16],
           "verb": "model", **body}
    topic = "cityops/test-box/cmd/model"
    reply = agent.commands.handle(Request(topic, signed(topic, doc, agent.clock.now()), "platform/replies", b"c"))
    schemas.validator("reply").validate(reply)
    return reply


def manifest_keys(path: Path) -> dict:
    """A manifest's keys as the platform sends them: all but file and sha256."""
    return {k: v for k, v in read_toml(path).items() if k not in ("file", "sha256")}


def int8_file() -> bytes:
    return (INT8_MANIFEST.parent / read_toml(INT8_MANIFEST)["file"]).read_bytes()


def dark_frame_failing_onnx() -> bytes:
    """A YOLO-shaped model (one class, person, one constant box) that onnxruntime cannot run on a
    dark picture: its 5 output values are reshaped to [1, 5, 1] when some pixel is brighter than
    0.5, else to [1, 5, 3], which they cannot fill. A street frame passes; a black one (night, a
    covered lens) fails, for real."""
    constant = np.array([[[100.0], [100.0], [40.0], [80.0], [0.9]]], np.float32)
    nodes = [
        helper.make_node("ReduceMax", ["images"], ["brightest"], keepdims=0),
        helper.make_node("Greater", ["brightest", "half"], ["bright"]),
        helper.make_node("Where", ["bright", "fits", "too_many"], ["shape"]),
        helper.make_node("Reshape", ["constant", "shape"], ["output0"]),
    ]
    initializers = [numpy_helper.from_array(constant, "constant"),
                    numpy_helper.from_array(np.array(0.5, np.float32), "half"),
                    numpy_helper.from_array(np.array([1, 5, 1], np.int64), "fits"),
                    numpy_helper.from_array(np.array([1, 5, 3], np.int64), "too_many")]
    graph = helper.make_graph(nodes, "fails_when_dark",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, None])],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


DARK_FAILING_MANIFEST = {"name": "fails-when-dark", "decoder": "yolo", "source": "tests/test_model_update.py",
                         "licence": "test fixture", "input_name": "images", "input_size": [64, 64],
                         "resize": "stretch", "output": "output0", "classes": ["person"]}


def models_dir(edge: Path) -> Path:
    return edge.parent / "var" / MODELS_DIR


def analyse(agent: Agent, camera: str, image) -> None:
    agent.clock.advance(0.5)
    agent.pipelines[camera].on_frame(Frame(camera, agent.clock.now(), image))


def test_an_update_swaps_one_model_survives_a_restart_and_rolls_back(tmp_path, server, vtest_2fps):
    edge = make_box(tmp_path)
    agent = start(edge)
    analyse(agent, "cam1", vtest_2fps[0])  # the reference frame the new model is tried on
    fp32_sha, other = agent.detectors["default"].sha256, agent.pipelines["cam2"].detector
    url, sha = server.publish("nanodet-int8.onnx", int8_file())

    reply = send(agent, model="default", url=url, sha256=sha, manifest=manifest_keys(INT8_MANIFEST))
    assert reply["ok"], reply
    assert reply["result"] == "model_installed"
    assert reply["model"] == {"name": "default", "manifest_name": "nanodet-g-416-int8", "sha256": sha,
                              "previous_sha256": fp32_sha, "cameras": ["cam1"]}
    assert agent.pipelines["cam1"].detector.sha256 == sha and agent.books["cam1"].model.sha256 == sha
    assert agent.pipelines["cam2"].detector is other, "a camera on another model keeps its detector"
    cameras = {c["camera_id"]: c for c in agent.status()["cameras"]}
    assert (cameras["cam1"]["model_sha256"], cameras["cam2"]["model_sha256"]) == (sha, fp32_sha)
    analyse(agent, "cam1", vtest_2fps[1])
    assert "person" in agent.pipelines["cam1"].latest.detections.names(), "the new model finds vtest's walkers"
    assert not list((models_dir(edge) / STAGING_DIR).iterdir())
    assert sorted(p.suffix for p in (models_dir(edge) / "default").iterdir()) == [".onnx", ".toml"]

    restarted = start(edge)
    assert restarted.detectors["default"].sha256 == sha and restarted.detectors["other"].sha256 == fp32_sha
    assert restarted.books["cam1"].model.name == "nanodet-g-416-int8"

    back = send(restarted, model="default", rollback=True)
    assert back["ok"] and back["result"] == "model_rolled_back", back
    assert back["model"]["sha256"] == fp32_sha and back["model"]["previous_sha256"] is None
    assert restarted.pipelines["cam1"].detector.sha256 == fp32_sha
    assert not list((models_dir(edge) / "default").iterdir()), "the rolled-back model's files are deleted"
    assert start(edge).detectors["default"].sha256 == fp32_sha
    again = send(restarted, model="default", rollback=True)
    assert not again["ok"] and again["error"]["code"] == "no_previous"


def test_the_model_before_the_last_update_is_kept_and_older_ones_deleted(tmp_path, server, vtest_2fps):
    edge = make_box(tmp_path)
    agent = start(edge)
    analyse(agent, "cam1", vtest_2fps[0])
    int8_url, int8_sha = server.publish("nanodet-int8.onnx", int8_file())
    dark_url, dark_sha = server.publish("fails-when-dark.onnx", dark_frame_failing_onnx())
    first = send(agent, model="default", url=int8_url, sha256=int8_sha, manifest=manifest_keys(INT8_MANIFEST))
    second = send(agent, model="default", url=dark_url, sha256=dark_sha, manifest=DARK_FAILING_MANIFEST)
    assert second["model"]["previous_sha256"] == int8_sha
    third = send(agent, model="default", url=int8_url, sha256=int8_sha, manifest=manifest_keys(INT8_MANIFEST))
    assert first["ok"] and third["ok"] and third["model"]["previous_sha256"] == dark_sha
    stems = {p.stem for p in (models_dir(edge) / "default").iterdir()}
    assert stems == {f"{dark_sha[:12]}-{second['command_id']}", f"{int8_sha[:12]}-{third['command_id']}"}
    back = send(agent, model="default", rollback=True)
    assert back["model"]["sha256"] == dark_sha and agent.pipelines["cam1"].detector.sha256 == dark_sha
    assert {p.stem for p in (models_dir(edge) / "default").iterdir()} == {f"{dark_sha[:12]}-{second['command_id']}"}
    assert send(agent, model="default", rollback=True)["error"]["code"] == "no_previous"


def assert_unchanged(agent: Agent, edge: Path, before) -> None:
    assert agent.pipelines["cam1"].detector is before
    assert agent.detectors["default"] is before
    assert not (models_dir(edge) / POINTER_FILE).exists()
    assert not list((models_dir(edge) / STAGING_DIR).iterdir()), "the staged download is deleted"
    assert not list((models_dir(edge) / "default").iterdir()), "nothing half-installed is left"
    assert start(edge).detectors["default"].sha256 == before.sha256


def test_a_file_whose_hash_differs_is_refused(tmp_path, server):
    edge = make_box(tmp_path)
    agent = start(edge)
    before = agent.detectors["default"]
    url, sha = server.publish("nanodet-int8.onnx", int8_file())
    wrong = hashlib.sha256(b"another file").hexdigest()
    reply = send(agent, model="default", url=url, sha256=wrong)
    assert not reply["ok"] and reply["error"]["code"] == "bad_hash"
    assert sha in reply["error"]["message"] and wrong in reply["error"]["message"]
    assert server.requests == ["/nanodet-int8.onnx"]
    assert_unchanged(agent, edge, before)


def test_a_file_that_is_no_onnx_model_is_refused(tmp_path, server):
    edge = make_box(tmp_path)
    agent = start(edge)
    before = agent.detectors["default"]
    url, sha = server.publish("broken.onnx", b"\x08\x07 this is not a protobuf " * 500)
    reply = send(agent, model="default", url=url, sha256=sha, manifest=manifest_keys(INT8_MANIFEST))
    assert not reply["ok"] and reply["error"]["code"] == "bad_model"
    assert "onnxruntime cannot load the model" in reply["error"]["message"]
    assert_unchanged(agent, edge, before)


def test_a_host_off_the_allow_list_is_not_contacted(tmp_path, server):
    edge = make_box(tmp_path)
    agent = start(edge)
    before = agent.detectors["default"]
    url, sha = server.publish("nanodet-int8.onnx", int8_file())
    reply = send(agent, model="default", url=url.replace("127.0.0.1", "localhost"), sha256=sha)
    assert not reply["ok"] and reply["error"]["code"] == "host_not_allowed"
    assert "'localhost'" in reply["error"]["message"]
    moved = send(agent, model="default", url=url.replace(f"{server.port}/", f"{server.port}/moved/"), sha256=sha)
    assert not moved["ok"] and moved["error"]["code"] == "download_failed" and "redirect" in moved["error"]["message"]
    assert server.requests == ["/moved/nanodet-int8.onnx"], "the redirect is not followed"
    assert_unchanged(agent, edge, before)


def test_a_file_over_the_byte_cap_is_refused(tmp_path, server):
    edge = make_box(tmp_path, max_bytes=1024 * 1024)
    agent = start(edge)
    before = agent.detectors["default"]
    url, sha = server.publish("nanodet-int8.onnx", int8_file())
    reply = send(agent, model="default", url=url, sha256=sha)
    assert not reply["ok"] and reply["error"]["code"] == "too_large"
    assert_unchanged(agent, edge, before)


def test_a_model_without_the_classes_the_zones_need_is_refused(tmp_path, server):
    edge = make_box(tmp_path)
    agent = start(edge)
    before = agent.detectors["default"]
    url, sha = server.publish("ebike.onnx", (EBIKE_MANIFEST.parent / "ebike-yolov8n-256.onnx").read_bytes())
    reply = send(agent, model="default", url=url, sha256=sha, manifest=manifest_keys(EBIKE_MANIFEST))
    assert not reply["ok"] and reply["error"]["code"] == "classes_missing"
    assert "'person'" in reply["error"]["message"]
    assert_unchanged(agent, edge, before)


def test_bad_manifest_and_unknown_model_are_refused_before_any_download(tmp_path, server):
    edge = make_box(tmp_path)
    agent = start(edge)
    url, sha = server.publish("nanodet-int8.onnx", int8_file())
    keys = manifest_keys(INT8_MANIFEST) | {"decoder": "ssd"}
    reply = send(agent, model="default", url=url, sha256=sha, manifest=keys)
    assert reply["error"]["code"] == "bad_manifest" and "decoder" in reply["error"]["message"]
    assert send(agent, model="nosuch", url=url, sha256=sha)["error"]["code"] == "unknown_model"
    both = send(agent, model="default", url=url, sha256=sha, rollback=True)
    assert both["error"]["code"] == "bad_schema"
    assert server.requests == []


def test_an_installed_model_damaged_on_disk_is_rolled_back_at_start(tmp_path, server):
    edge = make_box(tmp_path)
    agent = start(edge)
    url, sha = server.publish("nanodet-int8.onnx", int8_file())
    assert send(agent, model="default", url=url, sha256=sha, manifest=manifest_keys(INT8_MANIFEST))["ok"]
    installed = next((models_dir(edge) / "default").glob("*.onnx"))
    installed.write_bytes(installed.read_bytes()[:1000])  # a disk error, a half-finished copy by hand
    restarted = start(edge)
    assert restarted.detectors["default"].sha256 == agent.detectors["other"].sha256  # edge.toml's fp32
    assert json.loads((models_dir(edge) / POINTER_FILE).read_text())["models"] == {}


def test_an_edited_edge_toml_wins_over_an_earlier_update(tmp_path, server):
    edge = make_box(tmp_path)
    agent = start(edge)
    url, sha = server.publish("nanodet-int8.onnx", int8_file())
    assert send(agent, model="default", url=url, sha256=sha, manifest=manifest_keys(INT8_MANIFEST))["ok"]
    # The operator points [models.default] at another manifest (here: the fp32 one, copied).
    fp32 = read_toml(NANODET_MANIFEST)
    copy = tmp_path / "fp32-copy.toml"
    copy.write_text(NANODET_MANIFEST.read_text().replace(f'file = "{fp32["file"]}"',
                                                         f'file = "{NANODET_MANIFEST.parent / fp32["file"]}"'))
    old_line = f'manifest = "{NANODET_MANIFEST}"\nthreads'
    edge.write_text(edge.read_text().replace(old_line, f'manifest = "{copy}"\nthreads'))
    restarted = start(edge)
    assert restarted.detectors["default"].sha256 == fp32["sha256"]
    assert restarted.models.active.entry("default", copy) is None


def test_a_model_that_fails_on_the_cameras_first_frame_is_rolled_back(tmp_path, server, vtest_2fps):
    edge = make_box(tmp_path)
    agent = start(edge)
    analyse(agent, "cam1", vtest_2fps[0])
    before = agent.detectors["default"]
    url, sha = server.publish("fails-when-dark.onnx", dark_frame_failing_onnx())
    reply = send(agent, model="default", url=url, sha256=sha, manifest=DARK_FAILING_MANIFEST)
    assert reply["ok"], "it runs on the camera's last picture, a street by day"
    assert agent.pipelines["cam1"].detector.sha256 == sha
    analyse(agent, "cam1", np.zeros_like(vtest_2fps[1]))  # the lens is covered
    assert agent.health["cam1"].snapshot(agent.clock.now())["analysis_errors"] == 1
    assert agent.pipelines["cam1"].detector is before and agent.detectors["default"] is before
    assert agent.books["cam1"].model.sha256 == before.sha256
    assert json.loads((models_dir(edge) / POINTER_FILE).read_text())["models"] == {}
    assert not list((models_dir(edge) / "default").iterdir())
    analyse(agent, "cam1", np.zeros_like(vtest_2fps[1]))
    assert agent.health["cam1"].snapshot(agent.clock.now())["analysis_errors"] == 1, "the old model runs it"
    assert start(edge).detectors["default"].sha256 == before.sha256


def test_https_is_verified_against_the_ca_configured(tmp_path, https_server, pki: Pki):  # noqa: F811 - the fixture
    url, sha = https_server.publish("nanodet-int8.onnx", int8_file())
    system_cas = start(make_box(tmp_path / "a"))
    reply = send(system_cas, model="default", url=url, sha256=sha, manifest=manifest_keys(INT8_MANIFEST))
    assert not reply["ok"] and reply["error"]["code"] == "download_failed"
    assert "CERTIFICATE_VERIFY_FAILED" in reply["error"]["message"], "our own CA is not a system CA"
    assert https_server.requests == []
    city_ca = start(make_box(tmp_path / "b", more=f'tls_ca = "{pki.ca}"'))
    reply = send(city_ca, model="default", url=url, sha256=sha, manifest=manifest_keys(INT8_MANIFEST))
    assert reply["ok"] and city_ca.detectors["default"].sha256 == sha, reply


@pytest.mark.parametrize("host", ["http://files.city", "files.city:8080", "ops@files.city", ""])
def test_allowed_hosts_are_bare_hosts(tmp_path, host):
    edge = make_box(tmp_path)
    edge.write_text(edge.read_text().replace('allowed_hosts = ["127.0.0.1"]', f'allowed_hosts = ["{host}"]'))
    with pytest.raises(ConfigError, match="models_update: allowed_hosts"):
        load_config(edge)


def test_a_model_command_over_the_broker_updates_a_running_agent(tmp_path, server, mosquitto, footage):
    """The whole path: the reference platform signs and publishes, the agent process receives it
    from the broker, downloads, switches, replies; after it stops, `check` shows the new model."""
    cam = write_camera(tmp_path, "cam1", str(footage["vtest.mp4"]), realtime=True)
    cam.write_text(cam.read_text().replace("realtime = true", "realtime = true\nloop = true"))
    edge = write_edge(tmp_path, [cam], mqtt_port=mosquitto.port,
                      extra='[models_update]\nallowed_hosts = ["127.0.0.1"]\n')
    url, sha = server.publish("nanodet-int8.onnx", int8_file())
    with open(tmp_path / "agent.log", "wb") as log, \
            RefPlatform(mosquitto.host, mosquitto.port, tmp_path / "platform.sqlite", command_timeout_s=60,
                        command_keys={"test-box": COMMAND_KEY}) as platform:
        agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "-c", str(edge), "run"],
                                 stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            wait_until(lambda: platform.db.read("SELECT state FROM agents WHERE agent = 'test-box'"), agent,
                       "the agent's status on the broker")
            reply = platform.update_model("test-box", "default", url, sha, manifest_keys(INT8_MANIFEST))
            violations = platform.violation_list()
        finally:
            agent.send_signal(signal.SIGTERM)
            code = agent.wait(timeout=30)
    log_text = (tmp_path / "agent.log").read_text()
    assert code == 0, log_text
    assert reply.ok and reply.result == "model_installed", reply.raw
    assert reply.raw["model"]["sha256"] == sha and reply.raw["model"]["cameras"] == ["cam1"]
    assert violations == [], "status (with model_sha256) and reply pass the platform's schema checks"
    assert "event=model_installed model=default" in log_text
    check = subprocess.run([sys.executable, "-m", "agent.cli", "-c", str(edge), "check"], cwd=REPO,
                           capture_output=True, text=True)
    assert f"model default: {sha[:12]}-" in check.stdout and f"sha256 {sha[:12]}" in check.stdout, check.stdout


def wait_until(predicate, proc: subprocess.Popen, what: str, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {what} (agent exit code {proc.poll()})")
        time.sleep(0.2)
