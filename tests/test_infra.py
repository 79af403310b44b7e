"""The real-parts fixtures themselves work: a real broker and a real RTSP camera."""

from __future__ import annotations

import threading

import av
import paho.mqtt.client as mqtt
import pytest


def _connected_client(host: str, port: int, on_message=None) -> tuple[mqtt.Client, threading.Event]:
    connected = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_connect = lambda client, userdata, flags, rc, props: connected.set()
    if on_message is not None:
        c.on_message = on_message
    c.connect(host, port, keepalive=10)
    c.loop_start()
    assert connected.wait(5), f"no CONNACK from {host}:{port}"
    return c, connected


def test_mosquitto_pubsub_and_restart(mosquitto):
    got: list[tuple[str, bytes]] = []
    arrived = threading.Event()

    def on_message(client, userdata, msg):
        got.append((msg.topic, msg.payload))
        arrived.set()

    sub, _ = _connected_client(mosquitto.host, mosquitto.port, on_message)
    pub, _ = _connected_client(mosquitto.host, mosquitto.port)
    try:
        subscribed = threading.Event()
        sub.on_subscribe = lambda client, userdata, mid, rcs, props: subscribed.set()
        sub.subscribe("edge/test/#", qos=1)
        assert subscribed.wait(5)
        pub.publish("edge/test/hello", b"world", qos=1).wait_for_publish(5)
        assert arrived.wait(5), "message not delivered"
        assert got == [("edge/test/hello", b"world")]
    finally:
        for c in (sub, pub):
            c.loop_stop()
            c.disconnect()

    port = mosquitto.port
    mosquitto.stop()
    assert not mosquitto.running
    with pytest.raises(OSError):
        mqtt.Client(mqtt.CallbackAPIVersion.VERSION2).connect(mosquitto.host, port)
    mosquitto.start()
    assert mosquitto.port == port
    c, _ = _connected_client(mosquitto.host, mosquitto.port)
    c.loop_stop()
    c.disconnect()


def test_rtsp_server_serves_footage(footage, rtsp_server):
    assert set(footage) >= {"vtest.avi", "vtest.mp4", "bikes.mp4",
                            "person.jpg", "dog.jpg", "horses.jpg", "kite.jpg"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in footage.values())

    srv = rtsp_server({"/cam1": footage["vtest.mp4"]})
    url = srv.urls["/cam1"]
    assert url == f"rtsp://127.0.0.1:{srv.port}/cam1"
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=5) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = 0
        for frame in c.decode(stream):
            assert (frame.width, frame.height) == (768, 576)
            frames += 1
            if frames >= 20:
                break
    assert frames >= 20
    srv.stop()
    assert not srv.running
