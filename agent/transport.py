"""MQTT (paho-mqtt 2, callback API v2, MQTT 5, QoS 1): outbox delivery, commands in, status.

paho keeps messages published while disconnected in memory only: they die with the process. So
the outbox is the truth. The sender publishes stored rows in order, a bounded window at a time, and
marks a row delivered only when its PUBACK arrives. After every (re)connect it starts again from
the oldest undelivered row: a message may then arrive twice, never not at all, and consumers dedupe
by (ticket id, seq). Reconnecting is paho's own (``reconnect_delay_set``), with jitter added to the
first attempt so a fleet of boxes does not stampede a restarted broker.

TLS (``[mqtt] tls``) verifies the broker's certificate and host name against the configured CA,
TLS 1.2 at least, with an optional client certificate. Verification is off only with
``tls_insecure``, and then every start says so at WARNING. A broker that cannot be reached or
refuses us is logged at once and then at most once a minute while it keeps failing the same way:
a wrong CA fails every reconnect, and the log must still show what else happens on the box.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.clock import Clock
from agent.config import MqttSection
from agent.logs import log_event
from agent.outbox import Outbox, StoredMessage
from agent.tickets import SCHEMA_VERSION, iso_utc
from agent.topics import Topics

log = logging.getLogger("agent.transport")

TROUBLE_LOG_INTERVAL_S = 60.0


class TroubleLog:
    """Logs each kind of broker failure (event and reason) the first time, then at most once per
    interval with how many repeats it stood for. Kept per kind, so failures that alternate (a
    refused login, a flapping link) are held back as well."""

    def __init__(self, interval_s: float = TROUBLE_LOG_INTERVAL_S):
        self.interval_s = interval_s
        self._kinds: dict[tuple[str, str], tuple[float, int]] = {}  # -> (next line due, repeats held back)
        self._lock = threading.Lock()
        self.suppressed = 0

    def __call__(self, event: str, reason: str, level: int = logging.ERROR) -> None:
        with self._lock:
            now = time.monotonic()
            due, repeats = self._kinds.get((event, reason), (now, 0))
            if now < due:
                self._kinds[(event, reason)] = (due, repeats + 1)
                self.suppressed += 1
                return
            self._kinds[(event, reason)] = (now + self.interval_s, 0)
        log_event(log, event, level=level, reason=reason, **({"repeats": repeats} if repeats else {}))


def tls_context(cfg: MqttSection) -> ssl.SSLContext:
    """The client side of the broker connection: verify the broker, TLS 1.2+, our certificate if any."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=str(cfg.tls_ca) if cfg.tls_ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.tls_cert is not None:
        context.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key))
    if cfg.tls_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True)
class Request:
    """A message received on the command topics, with the MQTT 5 properties a reply needs."""

    topic: str
    payload: bytes
    response_topic: str | None
    correlation_data: bytes | None


class MqttTransport:
    """The box's one MQTT client: delivers the outbox, receives commands, keeps the status fresh."""

    def __init__(self, cfg: MqttSection, topics: Topics, outbox: Outbox, clock: Clock,
                 on_command: Callable[[Request], None] | None = None,
                 status: Callable[[], dict] | None = None, password: str | None = None):
        """``password`` is the one :func:`agent.config.load_config` read from the file or
        environment the config names (``BoxConfig.mqtt_password``)."""
        self.cfg, self.topics, self.outbox, self.clock = cfg, topics, outbox, clock
        self.on_command, self.status = on_command, status
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"edge-{topics.agent}",
            protocol=mqtt.MQTTv5,
        )
        if cfg.tls:
            # paho takes its "insecure" flag from the context's check_hostname: no tls_insecure_set.
            self.client.tls_set_context(tls_context(cfg))
        if cfg.username:
            self.client.username_pw_set(cfg.username, password)
        self._trouble = TroubleLog()
        self.client.will_set(topics.status(), json.dumps(self._status_doc("offline")), qos=1, retain=True)
        # paho's hints say int; it computes and sleeps the delays as floats, so 0.5 s works as meant.
        first_s, most_s = cfg.reconnect_min_s, cfg.reconnect_max_s
        self.client.reconnect_delay_set(min_delay=first_s, max_delay=most_s)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._connected = threading.Event()
        self._generation = 0  # bumped on each connect: tells the sender to restart from the outbox
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._status_thread = threading.Thread(target=self._status_loop, name="mqtt-status", daemon=True)
        self.delivered = 0

    # paho's network thread ------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self._trouble("broker_refused", str(reason_code))
            return
        log_event(log, "broker_connected", host=self.cfg.host, port=self.cfg.port, transport=self.cfg.mode())
        # Subscribing here, not once at start, brings the subscription back after every reconnect.
        client.subscribe(self.topics.commands(), qos=1)
        self.publish_status("online")
        self._generation += 1
        self._connected.set()

    def _on_connect_fail(self, client, userdata):
        # paho calls this from inside its ``except OSError`` around the connect, without the
        # error; it is still the one being handled. ssl errors (a wrong CA) are OSErrors too.
        exc = sys.exc_info()[1]
        self._trouble("broker_unreachable", f"{type(exc).__name__}: {exc}" if exc else "connect failed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        was_connected = self._connected.is_set()
        self._connected.clear()
        if not was_connected:
            # The end of a refused login, already logged as broker_refused. Leaving the delay alone
            # lets paho double it: a wrong password must not hit the broker every second forever.
            return
        if not self._stop.is_set():
            self._trouble("broker_disconnected", str(reason_code), logging.WARNING)
        # paho doubles its delay from min_delay; a random min_delay per outage spreads a fleet of
        # boxes over time, so a restarted broker is not hit by all of them at the same instant.
        client.reconnect_delay_set(min_delay=self.cfg.reconnect_min_s * random.uniform(0.5, 1.5),
                                   max_delay=self.cfg.reconnect_max_s)

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        # Called with paho's message lock held: only hand the mid over, never block here.
        if reason_code.is_failure:
            log_event(log, "publish_refused", level=logging.ERROR, mid=mid, reason=str(reason_code))
            return
        self._acks.put(mid)

    def _on_message(self, client, userdata, message):
        if self.on_command is None:
            return
        props = message.properties
        self.on_command(Request(
            topic=message.topic, payload=bytes(message.payload),
            response_topic=getattr(props, "ResponseTopic", None) if props else None,
            correlation_data=getattr(props, "CorrelationData", None) if props else None,
        ))

    def _status_doc(self, state: str) -> dict:
        doc = self.status() if self.status else {}
        return {"schema": "edge-agent/status", "schema_version": SCHEMA_VERSION, "agent_id": self.topics.agent,
                **doc, "state": state, "time": iso_utc(self.clock.now())}

    @property
    def connected(self) -> bool:
        """Connected to the broker now (CONNACK received, not yet disconnected)."""
        return self._connected.is_set()

    def publish_status(self, state: str = "online") -> None:
        """Retained status. Not through the outbox: only the latest matters, and the last will
        covers a silent death."""
        self.client.publish(self.topics.status(), json.dumps(self._status_doc(state), ensure_ascii=False),
                            qos=1, retain=True, properties=self._plain_properties("status"))

    # lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if (reason := self.cfg.insecure()) is not None:
            log_event(log, "mqtt_insecure", level=logging.WARNING, host=self.cfg.host, port=self.cfg.port,
                      reason=f"{reason}; messages can be read or forged on the network")
        # Jitter the first connect so boxes powered on together do not arrive together.
        self._stop.wait(random.uniform(0, min(1.0, self.cfg.reconnect_min_s)))
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()
        self._thread.start()
        self._status_thread.start()

    def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Try to deliver what is pending for up to ``flush_timeout_s``, then say offline and go."""
        self.flush(flush_timeout_s)
        self._stop.set()
        self._thread.join(timeout=5)
        if self._connected.is_set():
            info = self.client.publish(self.topics.status(), json.dumps(self._status_doc("offline")), qos=1,
                                       retain=True, properties=self._plain_properties("status"))
            try:
                info.wait_for_publish(timeout=2)
            except RuntimeError:
                pass  # lost the connection meanwhile: the last will says offline instead
        self.client.disconnect()
        self.client.loop_stop()

    def flush(self, timeout_s: float) -> bool:
        """Wait until the outbox has nothing pending (True) or the timeout passes (False).

        A lost connection does not end the wait: paho is reconnecting meanwhile, and a broker that
        came back a moment before the stop (the fault test's outage) would otherwise find the
        agent gone with tickets it could have delivered. They are stored either way."""
        deadline = self.clock.now() + timeout_s
        while self.outbox.counts()["pending"]:
            if self.clock.now() >= deadline:
                return False
            self._stop.wait(0.05)
        return True

    def _status_loop(self) -> None:
        while not self._stop.wait(self.cfg.status_interval_s):
            if self._connected.is_set():
                self.publish_status("online")

    # sender thread --------------------------------------------------------------------------
    def _send_loop(self) -> None:
        # mid -> outbox row id. Only this thread reads the ack queue, and it records a mid before it
        # next reads the queue, so an ack whose mid is not here is stale (an earlier connection's,
        # or the status message's) and is dropped.
        inflight: dict[int, int] = {}
        last_sent = 0
        generation = -1
        while not self._stop.is_set():
            if not self._connected.wait(timeout=0.5):
                continue
            if generation != self._generation:
                generation = self._generation
                inflight.clear()
                last_sent = 0
            self._collect_acks(inflight)
            room = self.cfg.max_inflight - len(inflight)
            batch = self.outbox.pending(after_id=last_sent, limit=room) if room > 0 else []
            if not batch:
                if room > 0:
                    self.outbox.wait_for_more(last_sent, timeout=0.2)
                else:
                    self._stop.wait(0.01)
                continue
            for message in batch:
                if message.props.expiry_s is not None and self.clock.now() - message.created_at > message.props.expiry_s:
                    # Stale telemetry: nobody wants yesterday's counts after an outage.
                    self.outbox.mark_delivered([message.id], self.clock.now())
                    last_sent = message.id
                    continue
                try:
                    body = message.body()
                except OSError as exc:
                    log_event(log, "evidence_unreadable", level=logging.ERROR, id=message.id, reason=str(exc))
                    self.outbox.mark_delivered([message.id], self.clock.now())  # nothing left to send
                    continue
                info = self.client.publish(message.topic, body, qos=1, retain=message.props.retain,
                                           properties=self._properties(message))
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    break  # disconnected: the next connect restarts from the outbox
                inflight[info.mid] = message.id
                last_sent = message.id

    def _collect_acks(self, inflight: dict[int, int]) -> None:
        ids = []
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                break
            if mid in inflight:
                ids.append(inflight.pop(mid))
        self.outbox.mark_delivered(ids, self.clock.now())
        self.delivered += len(ids)

    @staticmethod
    def _plain_properties(kind: str, content_type: str = "application/json") -> Properties:
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = content_type
        props.UserProperty = [("schema_version", SCHEMA_VERSION), ("kind", kind)]
        return props

    @classmethod
    def _properties(cls, message: StoredMessage) -> Properties:
        props = cls._plain_properties(message.kind, message.content_type)
        # paho makes the attributes a packet type allows on assignment; its class declares none of them.
        if message.ticket_id:
            props.UserProperty.append(("ticket_id", message.ticket_id))  # type: ignore[attr-defined]
        props.UserProperty.extend(pair for pair in message.props.user if pair[0] != "kind")  # type: ignore[attr-defined]
        if message.props.correlation_data is not None:
            props.CorrelationData = message.props.correlation_data
        if message.props.expiry_s is not None:
            props.MessageExpiryInterval = message.props.expiry_s
        return props
