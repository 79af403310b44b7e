"""The local monitoring endpoint: Prometheus text on ``/metrics``, the health summary as JSON on
``/healthz``, on one port (``[metrics] listen``), served from a daemon thread (docs/monitor.md).

Nothing is counted twice: the collector reads the counters the agent keeps anyway (each camera's
:class:`~agent.health.CameraHealth`, the outbox, the storage janitor's last report) when it is
scraped. Each agent has its own registry, never prometheus_client's global one, so a process (a
test) can hold several agents.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from agent import __version__
from agent.checkup import State
from agent.clock import Clock
from agent.config import MetricsSection
from agent.health import CameraHealth
from agent.logs import log_event
from agent.outbox import Outbox
from agent.storage import StorageJanitor

log = logging.getLogger("agent.metrics")

# (metric name without _total, CameraHealth snapshot key, help) of the per-camera counters.
CAMERA_COUNTERS = (
    ("edge_camera_frames_decoded", "frames_decoded", "Frames decoded from the stream, analysed or not"),
    ("edge_camera_frames_analysed", "frames_analysed",
     "Frames the detector and the zone rules analysed; rate() of it is the analysis rate"),
    ("edge_camera_decode_errors", "decode_errors", "Corrupt packets, whose frames were lost"),
    ("edge_camera_analysis_errors", "analysis_errors", "Frames whose analysis raised an error"),
    ("edge_camera_disconnects", "disconnects",
     "Connections lost or streams ended; a live camera reconnects after each"),
    ("edge_camera_frames_superseded", "frames_superseded",
     "Sampled frames replaced by a newer one before any worker was free (the box is short of CPU)"),
    ("edge_camera_detections_skipped", "detections_skipped",
     "Analysed frames whose zones had not changed: the detector's last result was reused"),
)


class AgentCollector(Collector):
    """Reads the agent's counters at scrape time."""

    def __init__(self, agent_id: str, cameras: Mapping[str, CameraHealth], outbox: Outbox, janitor: StorageJanitor,
                 clock: Clock, health: Callable[[], dict], broker_connected: Callable[[], bool] | None):
        """``health``: the summary /healthz serves; ``broker_connected`` None: no broker configured."""
        self.agent_id, self.cameras, self.outbox, self.janitor = agent_id, cameras, outbox, janitor
        self.clock, self.health, self.broker_connected = clock, health, broker_connected
        self.started_at = clock.now()

    def collect(self) -> Iterator[Metric]:
        now = self.clock.now()
        yield from self._camera_metrics(now)
        yield from self._outbox_metrics(now)
        yield from self._storage_metrics()
        state = GaugeMetricFamily("edge_health_state", "1 for the box's health state now (/healthz), 0 for the others",
                                  labels=["state"])
        current = self.health()["state"]
        for value in State:
            state.add_metric([value.value], float(value.value == current))
        yield state
        if self.broker_connected is not None:
            yield GaugeMetricFamily("edge_broker_connected", "1 while connected to the MQTT broker",
                                    value=float(self.broker_connected()))
        info = GaugeMetricFamily("edge_agent_info", "The agent's id and version; always 1", labels=["agent", "version"])
        info.add_metric([self.agent_id, __version__], 1.0)
        yield info

    def _camera_metrics(self, now: float) -> Iterator[Metric]:
        counters = {name: CounterMetricFamily(name, text, labels=["camera"]) for name, _, text in CAMERA_COUNTERS}
        connected = GaugeMetricFamily("edge_camera_connected", "1 while the camera's stream is open", labels=["camera"])
        age = GaugeMetricFamily("edge_camera_last_frame_age_seconds",
                                "Seconds since the camera's last decoded frame (since the agent started, "
                                "if none came yet)", labels=["camera"])
        latency = HistogramMetricFamily("edge_camera_inference_seconds",
                                        "Detector time per analysed frame (tiles and zone crops included)",
                                        labels=["camera"])
        for camera, health in list(self.cameras.items()):  # a remote config may add a camera meanwhile
            snapshot = health.snapshot(now)
            for name, key, _ in CAMERA_COUNTERS:
                counters[name].add_metric([camera], snapshot[key])
            connected.add_metric([camera], float(snapshot["connected"]))
            last = snapshot["last_frame_age_s"]
            age.add_metric([camera], now - self.started_at if last is None else last)
            buckets, total_s = health.inference_latency()
            latency.add_metric([camera], buckets, total_s)
        yield from counters.values()
        yield from (connected, age, latency)

    def _outbox_metrics(self, now: float) -> Iterator[Metric]:
        counts = self.outbox.counts()
        oldest = self.outbox.oldest_pending_at()
        yield GaugeMetricFamily("edge_outbox_pending_messages",
                                "Messages stored and not yet acknowledged by the broker", value=counts["pending"])
        yield GaugeMetricFamily("edge_outbox_stored_messages", "Messages in the outbox, delivered or not",
                                value=counts["stored"])
        yield GaugeMetricFamily("edge_outbox_oldest_pending_age_seconds",
                                "Age of the oldest undelivered message; 0 when none is pending",
                                value=0.0 if oldest is None else max(now - oldest, 0.0))

    def _storage_metrics(self) -> Iterator[Metric]:
        limits = self.janitor.limits
        yield GaugeMetricFamily("edge_evidence_quota_bytes", "Evidence folder size that starts pruning",
                                value=limits.evidence_quota_mb * 2**20)
        yield GaugeMetricFamily("edge_disk_min_free_bytes", "Free disk below this starts pruning too",
                                value=limits.min_free_mb * 2**20)
        report = self.janitor.last
        if report is None:  # before the janitor's first round, a moment after start
            return
        yield GaugeMetricFamily("edge_evidence_bytes", "Bytes in the evidence folder at the janitor's last round",
                                value=report.evidence_bytes)
        yield GaugeMetricFamily("edge_disk_free_bytes", "Free bytes on the evidence disk at the janitor's last round",
                                value=report.free_bytes)
        yield GaugeMetricFamily("edge_storage_pressure", "1 when the janitor could not get back under its limits",
                                value=float(report.pressure is not None))


def agent_registry(collector: AgentCollector) -> CollectorRegistry:
    """The agent's own registry: its counters and this process's CPU seconds, memory and open files."""
    registry = CollectorRegistry()
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper must not hold up the agent's stop


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        """A line per scrape (every 15 s, forever) would drown the agent's own log."""


class MetricsServer:
    """``/metrics`` and ``/healthz`` on ``section.listen``: :meth:`start`, then :meth:`stop`."""

    def __init__(self, section: MetricsSection, registry: CollectorRegistry, health: Callable[[], dict]):
        self.section, self.health = section, health
        self._prometheus = make_wsgi_app(registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; OSError when the address cannot be bound (taken, not this box's)."""
        host, port = self.section.address
        server_class = _ThreadingWSGIServer6 if ":" in host else _ThreadingWSGIServer
        self._server = make_server(host, port, self._app, server_class=server_class, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="metrics", daemon=True)
        self._thread.start()
        log_event(log, "metrics_listening", listen=self.section.listen, paths="/metrics,/healthz",
                  reachable_from="this box" if self.section.loopback else "the network, without login")

    def stop(self) -> None:
        if self._server is None or self._thread is None:  # both set by start()
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None

    def _app(self, environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        try:
            if path == "/metrics":
                return self._prometheus(environ, start_response)
            if path == "/healthz":
                summary = self.health()
                # A probe (curl -f, a load balancer) sees failing as an error; degraded still works.
                status = "503 Service Unavailable" if summary["state"] == State.FAILING.value else "200 OK"
                return _reply(start_response, status, json.dumps(summary, ensure_ascii=False), "application/json")
        except Exception as exc:  # noqa: BLE001 - wsgiref would print the traceback to stderr, past the log's redaction
            log_event(log, "metrics_request_failed", level=logging.ERROR, path=path,
                      reason=f"{type(exc).__name__}: {exc}")
            return _reply(start_response, "500 Internal Server Error", "internal error, see the agent's log\n")
        return _reply(start_response, "404 Not Found", "not found: the paths are /metrics and /healthz\n")


def _reply(start_response: Callable, status: str, text: str, content_type: str = "text/plain") -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", f"{content_type}; charset=utf-8"), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store")])
    return [body]


def serve_metrics(section: MetricsSection | None, registry: CollectorRegistry,
                  health: Callable[[], dict]) -> MetricsServer | None:
    """The started server, or None: without ``[metrics]``, or when its address cannot be bound
    (logged as an error: the cameras matter more than their metrics)."""
    if section is None:
        return None
    server = MetricsServer(section, registry, health)
    try:
        server.start()
    except OSError as exc:
        log_event(log, "metrics_unavailable", level=logging.ERROR, listen=section.listen,
                  reason=exc.strerror or str(exc))
        return None
    return server
