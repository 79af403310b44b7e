"""MQTT delivery from the outbox (paho-mqtt 2, callback API v2, MQTT 5, QoS 1).

paho keeps messages published while disconnected in memory only: they die with the process. So
the outbox is the truth. The sender publishes stored rows in order, a bounded window at a time, and
marks a row delivered only when its PUBACK arrives. After every (re)connect it starts again from
the oldest undelivered row: a message may then arrive twice, never not at all, and consumers dedupe
by (ticket id, seq). Reconnecting is paho's own (``reconnect_delay_set``), with jitter added to the
first attempt so a fleet of boxes does not stampede a restarted broker.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.clock import Clock
from agent.config import MqttSection
from agent.logs import log_event
from agent.outbox import Outbox, StoredMessage
from agent.tickets import SCHEMA_VERSION
from agent.topics import Topics

log = logging.getLogger("agent.transport")


class MqttSender:
    def __init__(self, cfg: MqttSection, topics: Topics, outbox: Outbox, clock: Clock):
        self.cfg, self.topics, self.outbox, self.clock = cfg, topics, outbox, clock
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"edge-{topics.agent}",
            protocol=mqtt.MQTTv5,
        )
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password)
        self.client.will_set(topics.status(), json.dumps({"state": "offline"}), qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=cfg.reconnect_min_s, max_delay=cfg.reconnect_max_s)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._connected = threading.Event()
        self._generation = 0  # bumped on each connect: tells the sender to restart from the outbox
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self.delivered = 0

    # paho's network thread ------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log_event(log, "broker_refused", level=logging.ERROR, reason=str(reason_code))
            return
        log_event(log, "broker_connected", host=self.cfg.host, port=self.cfg.port)
        client.publish(self.topics.status(), json.dumps({"state": "online"}), qos=1, retain=True)
        self._generation += 1
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._connected.clear()
        if not self._stop.is_set():
            log_event(log, "broker_disconnected", level=logging.WARNING, reason=str(reason_code))

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        # Called with paho's message lock held: only hand the mid over, never block here.
        if reason_code.is_failure:
            log_event(log, "publish_refused", level=logging.ERROR, mid=mid, reason=str(reason_code))
            return
        self._acks.put(mid)

    # lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        # Jitter the first connect so boxes powered on together do not arrive together.
        self._stop.wait(random.uniform(0, min(1.0, self.cfg.reconnect_min_s)))
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()
        self._thread.start()

    def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Try to deliver what is pending for up to ``flush_timeout_s``, then say offline and go."""
        self.flush(flush_timeout_s)
        self._stop.set()
        self._thread.join(timeout=5)
        if self._connected.is_set():
            info = self.client.publish(self.topics.status(), json.dumps({"state": "offline"}), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2)
            except RuntimeError:
                pass  # lost the connection meanwhile: the last will says offline instead
        self.client.disconnect()
        self.client.loop_stop()

    def flush(self, timeout_s: float) -> bool:
        """Wait until the outbox has nothing pending (True) or the timeout passes (False)."""
        deadline = self.clock.now() + timeout_s
        while self.outbox.counts()["pending"]:
            if not self._connected.is_set() or self.clock.now() >= deadline:
                return False
            self._stop.wait(0.05)
        return True

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
                try:
                    body = message.body()
                except OSError as exc:
                    log_event(log, "evidence_unreadable", level=logging.ERROR, id=message.id, reason=str(exc))
                    self.outbox.mark_delivered([message.id], self.clock.now())  # nothing left to send
                    continue
                info = self.client.publish(message.topic, body, qos=1, properties=self._properties(message))
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
    def _properties(message: StoredMessage) -> Properties:
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = message.content_type
        props.UserProperty = [("schema_version", SCHEMA_VERSION), ("kind", message.kind)]
        if message.ticket_id:
            props.UserProperty.append(("ticket_id", message.ticket_id))
        return props
