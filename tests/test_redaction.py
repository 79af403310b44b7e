"""A camera password never leaves the box: not in the retained status, the camera_offline ticket,
the log (logfmt or JSON), ``edge-agent check`` or a command's error reply.

The leak paths are driven for real: the agent runs against a camera URL with credentials whose
port is closed, so FFmpeg's own error text (which quotes the URL) is what has to be masked."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading

import pytest

from agent.app import Agent
from agent.cli import main
from agent.config import load_config
from agent.logs import JsonFormatter, LogfmtFormatter, log_event, log_uncaught_exceptions
from agent.redact import add_secret, redact
from agent.transport import Request
from tests.conftest import free_port
from tests.helpers import signed, write_camera, write_edge
from tests.test_whole_loop import Subscriber, wait_for

SECRET = "S3cret"


@pytest.mark.parametrize("text, expected", [
    ("rtsp://admin:S3cret@10.0.0.7:554/h264", "rtsp://admin:***@10.0.0.7:554/h264"),
    ("rtsps://admin:S3cret@cam.local/x", "rtsps://admin:***@cam.local/x"),
    ("http://u:S3cret@host/a?b=c", "http://u:***@host/a?b=c"),
    ("https://u:S3cret@host", "https://u:***@host"),
    ("mqtt://box:S3cret@broker:1883", "mqtt://box:***@broker:1883"),
    ("mqtts://box:S3cret@broker:8883", "mqtts://box:***@broker:8883"),
    ("Connection refused: 'rtsp://admin:S3cret@127.0.0.1:9/x'", "Connection refused: 'rtsp://admin:***@127.0.0.1:9/x'"),
    ("rtsp://admin:p@ss@S3cret@cam/x", "rtsp://admin:***@cam/x"),  # an unescaped '@' in the password
    ("rtsp://:S3cret@cam/x", "rtsp://:***@cam/x"),
    ("two: rtsp://a:S3cret@h1/x rtsp://b:S3cret@h2/y", "two: rtsp://a:***@h1/x rtsp://b:***@h2/y"),
])
def test_url_passwords_are_masked_and_the_rest_is_kept(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", ["rtsp://cam.local:554/x", "rtsp://user@cam/x", "http://host:8080/a@b",
                                  "/var/footage/cam1.mp4", "user:pass without a scheme"])
def test_text_without_url_credentials_is_unchanged(text):
    assert redact(text) == text


def test_registered_secrets_are_masked_anywhere():
    add_secret("mqtt-pw-7f3a91")
    assert redact("auth failed for box with mqtt-pw-7f3a91.") == "auth failed for box with ***."
    add_secret("ab")  # too short to mask without mangling ordinary text
    assert redact("a tab b") == "a tab b"


def _capture(fmt: logging.Formatter) -> tuple[logging.Handler, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(fmt)
    return handler, out


@pytest.fixture
def logs():
    """The agent's log in both formats, as the box would write it."""
    handlers = {"logfmt": _capture(LogfmtFormatter()), "json": _capture(JsonFormatter())}
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.INFO)
    for handler, _ in handlers.values():
        root.addHandler(handler)
    yield {name: out for name, (_, out) in handlers.items()}
    for handler, _ in handlers.values():
        root.removeHandler(handler)
    root.setLevel(old_level)


def test_log_formatters_mask_what_callers_forgot(logs):
    """The last line of defence: a field or a traceback quoting the URL is masked in both formats."""
    log = logging.getLogger("agent.somewhere-new")
    log_event(log, "oops", level=logging.WARNING, url="rtsp://admin:S3cret@cam/x")
    try:
        raise OSError("cannot open rtsp://admin:S3cret@cam/x")
    except OSError:
        log.exception("failed", extra={"fields": {}})
    for name, out in logs.items():
        text = out.getvalue()
        assert SECRET not in text, f"{name} log leaks: {text}"
        assert text.count("rtsp://admin:***@cam/x") >= 2, name
    json_lines = [json.loads(line) for line in logs["json"].getvalue().splitlines() if line.startswith("{")]
    assert [d["event"] for d in json_lines] == ["oops", "failed"]  # still valid JSON after masking


def test_an_exception_nobody_caught_is_logged_redacted(logs, monkeypatch):
    """Python would print it to stderr itself, unredacted; setup_logging routes it through the log."""
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # restored after the test
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    log_uncaught_exceptions()

    def crash():
        raise ValueError("unexpected answer from rtsp://admin:S3cret@cam/x")

    thread = threading.Thread(target=crash, name="camera-cam1")
    thread.start()
    thread.join()
    for name, out in logs.items():
        text = out.getvalue()
        assert "thread_crashed" in text and "camera-cam1" in text and "rtsp://admin:***@cam/x" in text, name
        assert SECRET not in text, name


def test_a_failing_camera_with_credentials_leaks_nothing_to_broker_or_log(tmp_path, mosquitto, logs):
    url = f"rtsp://admin:{SECRET}@127.0.0.1:{free_port()}/x"  # closed: FFmpeg fails and quotes the URL
    cam = write_camera(tmp_path, "cam1", url)
    edge = write_edge(tmp_path, [cam], mqtt_port=mosquitto.port, mqtt_extra="status_interval_s = 1\n",
                      extra="[tickets]\noffline_grace_s = 1\n")
    sub = Subscriber(mosquitto.port, "cityops/#")
    agent = Agent(load_config(edge))
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    runner.start()

    def status_with_error():
        docs = [json.loads(m.payload) for m in sub.on("/status")]
        return [d for d in docs if d.get("cameras") and d["cameras"][0]["last_error"]]

    def offline_ticket():
        return [d for d in (json.loads(m.payload) for m in sub.on("/tickets")) if d["rule"] == "camera_offline"]

    try:
        wait_for(status_with_error, 30, "a status with the camera's error")
        wait_for(offline_ticket, 30, "the camera_offline ticket")
    finally:
        stop.set()
        runner.join(timeout=30)
        sub.close()

    # What went to the broker, every byte of it, and the log.
    for message in sub.messages:
        assert SECRET.encode() not in bytes(message.payload), f"leak on {message.topic}"
    assert "admin:***@127.0.0.1" in status_with_error()[-1]["cameras"][0]["last_error"]
    assert "admin:***@127.0.0.1" in offline_ticket()[0]["facts"]["last_error"]
    for name, out in logs.items():
        text = out.getvalue()
        assert SECRET not in text, f"{name} log leaks"
        assert "camera_dropped" in text and "admin:***@127.0.0.1" in text, name


def test_check_output_masks_the_camera_password(tmp_path, capsys):
    cam = write_camera(tmp_path, "cam1", f"rtsp://admin:{SECRET}@10.0.0.7:554/h264")
    assert main(["-c", str(write_edge(tmp_path, [cam])), "check"]) == 0
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    assert "camera cam1: rtsp://admin:***@10.0.0.7:554/h264" in out.out


def test_a_command_failing_with_the_url_in_its_error_replies_without_the_password(tmp_path, monkeypatch, logs):
    url = f"rtsp://admin:{SECRET}@10.0.0.7:554/h264"
    agent = Agent(load_config(write_edge(tmp_path, [write_camera(tmp_path, "cam1", url)])))

    def bug(command, now):  # a bug deep in a verb, whose exception quotes the camera URL
        raise RuntimeError(f"cannot reopen {url}")

    monkeypatch.setattr(agent.commands, "_dispatch", bug)
    doc = {"schema": "edge-agent/command", "schema_version": "1.0", "command_id": "c-1", "verb": "unmute",
           "camera_id": "cam1"}
    topic = "cityops/test-box/cmd/unmute"
    reply = agent.commands.handle(Request(topic, signed(topic, doc, agent.clock.now()), None, None))
    assert reply["error"] == {"code": "internal", "message": "RuntimeError: cannot reopen rtsp://admin:***@10.0.0.7:554/h264"}
    stored, _ = agent.outbox.messages("reply")[-1]
    assert SECRET.encode() not in stored.body()
    for name, out in logs.items():
        assert "command_failed" in out.getvalue() and SECRET not in out.getvalue(), name
    agent.outbox.close()


@pytest.mark.parametrize("password", ["pw-from-env-93c1", 'pw-"quoted"\\93c2'],
                         ids=["plain", "escaped in JSON"])
def test_the_mqtt_password_read_at_start_is_masked_in_the_log(tmp_path, monkeypatch, logs, password):
    monkeypatch.setenv("EDGE_TEST_MQTT_PASSWORD", password)
    cam = write_camera(tmp_path, "cam1", "/nonexistent/clip.mp4")
    edge = write_edge(tmp_path, [cam], mqtt_port=1883,
                      mqtt_extra='username = "box"\npassword_env = "EDGE_TEST_MQTT_PASSWORD"\n')
    assert load_config(edge).mqtt_password == password
    log_event(logging.getLogger("agent.x"), "debugging", reason=f"sent {password} to the broker")
    for name, out in logs.items():
        text = out.getvalue()
        assert password[-4:] not in text and "sent *** to the broker" in text, f"{name}: {text}"
