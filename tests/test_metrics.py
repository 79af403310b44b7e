"""The local monitoring endpoint on real parts: an agent running on real footage, scraped over
HTTP on loopback while it runs, parsed with prometheus_client's own text parser; the retained
status through a real mosquitto; the health verdicts on real CameraHealth and Outbox objects."""

from __future__ import annotations

import json
import logging
import socket
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import schemas
from agent.app import Agent
from agent.checkup import OUTBOX_STALE_S, Checkup, camera_verdict
from agent.clock import ManualClock
from agent.config import ConfigError, MetricsSection, load_config
from agent.health import LATENCY_BUCKETS_S, LatencyHistogram
from agent.metrics import serve_metrics
from agent.outbox import Outbox, OutMessage
from agent.storage import StorageJanitor, StorageLimits
from tests.conftest import free_port, port_accepts
from tests.helpers import write_camera, write_edge
from tests.test_whole_loop import Subscriber, wait_for

CAMERA_METRICS = {"edge_camera_frames_decoded", "edge_camera_frames_analysed", "edge_camera_decode_errors",
                  "edge_camera_analysis_errors", "edge_camera_disconnects", "edge_camera_connected",
                  "edge_camera_last_frame_age_seconds", "edge_camera_inference_seconds"}
BOX_METRICS = {"edge_outbox_pending_messages", "edge_outbox_stored_messages", "edge_outbox_oldest_pending_age_seconds",
               "edge_evidence_bytes", "edge_evidence_quota_bytes", "edge_disk_free_bytes", "edge_disk_min_free_bytes",
               "edge_storage_pressure", "edge_health_state", "edge_agent_info", "process_cpu_seconds",
               "process_resident_memory_bytes"}
SEEDED = 3  # messages stored before the agent starts, as if left undelivered by an earlier run
SEEDED_AGE_S = 120.0


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """{family name: {(sample name, sorted labels): value}} of one scrape."""
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, text
    return {family.name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
            for family in text_string_to_metric_families(text)}


def sample(families: dict, name: str, **labels) -> float:
    family = next((name.removesuffix(end) for end in ("_total", "_bucket", "_count", "_sum") if name.endswith(end)
                   and name.removesuffix(end) in families), name)
    return families[family][(name, tuple(sorted(labels.items())))]


def start_agent(tmp_path, footage, port: int, mqtt_port: int | None = None, mqtt_extra: str = ""):
    # dwell 600 s: no ticket opens while the test runs, so the outbox holds exactly what the test put there.
    camera = write_camera(tmp_path, "cam1", str(footage["vtest.mp4"]), dwell=600, realtime=True)
    edge = write_edge(tmp_path, [camera], mqtt_port=mqtt_port, mqtt_extra=mqtt_extra,
                      extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n[tickets]\nclips = false\n')
    agent = Agent(load_config(edge))
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    return agent, stop, thread


def seed_outbox(agent: Agent) -> None:
    with agent.outbox.transaction(agent.clock.now() - SEEDED_AGE_S) as tx:
        for index in range(SEEDED):
            tx.add(OutMessage(f"cityops/test-box/probe/{index}", "probe", "application/json", payload=b"{}"))


def test_a_running_agent_serves_its_metrics_and_health_over_http(tmp_path, footage):
    port = free_port()
    agent, stop, thread = start_agent(tmp_path, footage, port)
    seed_outbox(agent)
    thread.start()
    try:
        def analysed_and_tidied():
            if not port_accepts("127.0.0.1", port):
                return False
            families = scrape(port)
            return ("edge_evidence_bytes" in families
                    and sample(families, "edge_camera_inference_seconds_count", camera="cam1") >= 2)

        wait_for(analysed_and_tidied, 60, "two analysed frames and the janitor's first round")
        families = scrape(port)
        counts = agent.outbox.counts()
        status, health_text = get(f"http://127.0.0.1:{port}/healthz")
        missing_status, _ = get(f"http://127.0.0.1:{port}/nothing-here")
        status_doc = agent.status()
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert not port_accepts("127.0.0.1", port), "the endpoint must close when the agent stops"

    assert CAMERA_METRICS | BOX_METRICS <= families.keys(), sorted(CAMERA_METRICS | BOX_METRICS - families.keys())
    assert sample(families, "edge_camera_frames_decoded_total", camera="cam1") > 0
    assert sample(families, "edge_camera_frames_analysed_total", camera="cam1") > 0
    assert sample(families, "edge_camera_connected", camera="cam1") == 1
    assert 0 <= sample(families, "edge_camera_last_frame_age_seconds", camera="cam1") < 30
    buckets = [sample(families, "edge_camera_inference_seconds_bucket", camera="cam1", le=le)
               for le in [repr(b) for b in LATENCY_BUCKETS_S] + ["+Inf"]]
    latency_count = sample(families, "edge_camera_inference_seconds_count", camera="cam1")
    assert latency_count >= 2 and buckets == sorted(buckets) and buckets[-1] == latency_count
    assert sample(families, "edge_camera_inference_seconds_sum", camera="cam1") > 0

    assert counts == {"stored": SEEDED, "pending": SEEDED}
    assert sample(families, "edge_outbox_pending_messages") == counts["pending"]
    assert sample(families, "edge_outbox_stored_messages") == counts["stored"]
    assert sample(families, "edge_outbox_oldest_pending_age_seconds") >= SEEDED_AGE_S
    assert sample(families, "edge_evidence_quota_bytes") == StorageLimits().evidence_quota_mb * 2**20
    assert sample(families, "edge_disk_free_bytes") > 0 and sample(families, "edge_storage_pressure") == 0
    assert sample(families, "process_cpu_seconds_total") > 0 and sample(families, "process_resident_memory_bytes") > 0
    assert sample(families, "edge_agent_info", agent="test-box", version="0.1.0") == 1
    assert sample(families, "edge_health_state", state="ok") == 1
    assert sample(families, "edge_health_state", state="failing") == 0
    assert "edge_broker_connected" not in families, "a store-only box has no broker link to report"

    # Store-only: every message stays pending by design, so the old ones are no reason for alarm.
    assert status == 200 and missing_status == 404
    health = json.loads(health_text)
    assert health == {"state": "ok", "reasons": [], "cameras": [{"camera_id": "cam1", "state": "ok", "reasons": []}]}
    assert status_doc["health"] == health
    schemas.validator("status").validate({"schema": "edge-agent/status", "schema_version": "1.0",
                                          "agent_id": "test-box", "state": "online",
                                          "time": "2026-12-08T00:00:00Z", **status_doc})


def test_the_retained_status_carries_the_health_and_healthz_sees_the_broker_go(tmp_path, footage, mosquitto):
    port = free_port()
    agent, stop, thread = start_agent(tmp_path, footage, port, mqtt_port=mosquitto.port,
                                      mqtt_extra="status_interval_s = 1\n")
    sub = Subscriber(mosquitto.port, "cityops/test-box/status")
    thread.start()
    try:
        def status_with_a_camera_analysing():
            docs = [json.loads(m.payload) for m in sub.on("/status")]
            return [d for d in docs if d["state"] == "online" and d["cameras"][0]["frames_analysed"] > 0]

        wait_for(status_with_a_camera_analysing, 60, "a status message after the first analysed frame")
        doc = status_with_a_camera_analysing()[-1]
        wait_for(lambda: scrape(port)["edge_broker_connected"], 20, "the broker link in the metrics")
        connected = json.loads(get(f"http://127.0.0.1:{port}/healthz")[1])
        mosquitto.stop()
        wait_for(lambda: not agent.transport.connected, 20, "the agent to notice the broker is gone")
        status, text = get(f"http://127.0.0.1:{port}/healthz")
        families = scrape(port)
    finally:
        stop.set()
        thread.join(timeout=30)
        sub.close()
    schemas.validator("status").validate(doc)
    assert doc["health"]["state"] == "ok" and doc["health"]["cameras"][0] == {
        "camera_id": "cam1", "state": "ok", "reasons": []}
    assert connected["state"] == "ok", connected
    health = json.loads(text)
    assert status == 200, "degraded still answers 200: only failing is an error for probes"
    assert health["state"] == "degraded" and health["reasons"] == ["broker: not connected"], health
    assert sample(families, "edge_broker_connected") == 0
    assert sample(families, "edge_health_state", state="degraded") == 1


@pytest.fixture
def checkup(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite")
    clock = ManualClock()
    janitor = StorageJanitor(outbox, tmp_path / "evidence", StorageLimits())
    yield Checkup(outbox, janitor, clock, grace_s=60.0, delivers=True), outbox, clock
    outbox.close()


def entry(camera_id="cam1", **changes) -> dict:
    """A camera's status entry (CameraHealth.snapshot plus suspended) of a camera doing well."""
    return {"camera_id": camera_id, "connected": True, "last_frame_age_s": 0.5, "analysis_fps": 2.0,
            "analysis_errors": 0, "last_error": "", "suspended": None, "zones_outside_picture": [], **changes}


def test_a_camera_is_failing_after_the_offline_grace_and_degraded_while_it_recovers():
    assert camera_verdict(entry(), 60, 300).state.value == "ok"
    waiting = camera_verdict(entry(last_frame_age_s=None, connected=False), 60, 10)
    assert (waiting.state.value, waiting.reasons) == ("degraded", ("waiting for the first frame",))
    never = camera_verdict(entry(last_frame_age_s=None, connected=False), 60, 75)
    assert never.state.value == "failing" and "75 s" in never.reasons[0]
    stale = camera_verdict(entry(last_frame_age_s=61.0, connected=False), 60, 300)
    assert (stale.state.value, stale.reasons) == ("failing", ("no frame for 61 s",))
    assert camera_verdict(entry(connected=False), 60, 300).reasons == ("reconnecting",)
    moved = camera_verdict(entry(suspended="view_shifted", zones_outside_picture=["kerb"]), 60, 300)
    assert moved.state.value == "degraded" and moved.reasons == (
        "zones suspended: view_shifted", "zones outside the picture: kerb")
    broken = camera_verdict(entry(analysis_errors=4, analysis_fps=0.0, last_error="ValueError: bad"), 60, 300)
    assert broken.reasons == ("frames arrive but analysis fails: ValueError: bad",)
    assert camera_verdict(entry(analysis_errors=4), 60, 300).state.value == "ok", "old errors, analysing now"


def test_the_box_fails_only_when_every_camera_does_and_a_stuck_outbox_degrades_it(checkup):
    check, outbox, clock = checkup
    clock.advance(300)
    dead = entry("cam2", last_frame_age_s=90.0, connected=False)
    assert check.summary([entry(), entry("cam2")])["state"] == "ok"
    one_dead = check.summary([entry(), dead])
    assert one_dead["state"] == "degraded" and one_dead["reasons"] == ["camera cam2: no frame for 90 s"]
    assert [c["state"] for c in one_dead["cameras"]] == ["ok", "failing"]
    assert check.summary([dict(dead, camera_id="cam1"), dead])["state"] == "failing"

    with outbox.transaction(clock.now()) as tx:
        tx.add(OutMessage("t", "ticket", "application/json", payload=b"{}"))
    assert check.summary([entry()])["state"] == "ok", "a fresh message is in flight, not stuck"
    clock.advance(OUTBOX_STALE_S + 1)
    stuck = check.summary([entry()], broker_connected=False)
    assert stuck["state"] == "degraded"
    assert stuck["reasons"] == ["broker: not connected", (f"outbox: a message has waited {OUTBOX_STALE_S + 1:.0f} s "
                                                         "for delivery")]


@pytest.mark.parametrize("listen, reason", [
    ("9108", "expected host:port"),
    ("127.0.0.1:99999", "port 1-65535"),
    ("127.0.0.1:", "expected host:port"),
    ("metrics.example.org:9108", "not an IP address or localhost"),
])
def test_a_bad_listen_address_fails_at_load_naming_the_file_and_key(tmp_path, footage, listen, reason):
    camera = write_camera(tmp_path, "cam1", str(footage["vtest.mp4"]))
    edge = write_edge(tmp_path, [camera], extra=f'\n[metrics]\nlisten = "{listen}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(edge)
    assert str(caught.value).startswith(f"{edge}: metrics: listen: ") and reason in str(caught.value)


def test_metrics_are_off_without_the_table_and_loopback_by_default(tmp_path, footage):
    camera = write_camera(tmp_path, "cam1", str(footage["vtest.mp4"]))
    assert load_config(write_edge(tmp_path, [camera])).metrics is None
    assert MetricsSection().address == ("127.0.0.1", 9108) and MetricsSection().loopback
    ipv6 = MetricsSection("[::1]:9200")
    assert ipv6.address == ("::1", 9200) and ipv6.loopback
    assert not MetricsSection("0.0.0.0:9108").loopback


def test_a_taken_port_is_logged_and_the_agent_goes_on_without_metrics(caplog):
    caplog.set_level(logging.ERROR, logger="agent.metrics")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = serve_metrics(MetricsSection(f"127.0.0.1:{port}"), None, dict)
    assert server is None
    (record,) = [r for r in caplog.records if r.getMessage() == "metrics_unavailable"]
    assert record.fields["listen"] == f"127.0.0.1:{port}" and "in use" in record.fields["reason"]


def test_latency_buckets_count_each_bound_inclusively():
    histogram = LatencyHistogram()
    for seconds in (0.005, 0.0051, 2.0, 3.5):
        histogram.add(seconds)
    cumulative = dict(histogram.cumulative())
    assert cumulative["0.005"] == 1 and cumulative["0.01"] == 2 and cumulative["2.0"] == 3
    assert cumulative["+Inf"] == 4 and histogram.total_s == pytest.approx(5.5101)
