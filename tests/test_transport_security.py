"""The broker connection's security with a real mosquitto: TLS with a CA the test makes, client
certificates, passwords, and the topic ACL of docs/mosquitto-acl.example.

The agent side is the real one: config loaded from an edge.toml (password from a file), the real
MqttTransport delivering from a real outbox."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.app import Agent as EdgeAgent
from agent.clock import SystemClock
from agent.config import BoxConfig, load_config
from agent.outbox import Outbox, OutMessage
from agent.topics import Topics
from agent.transport import MqttTransport, Request
from tests.conftest import Mosquitto, free_port, start_mosquitto
from tests.helpers import REPO, write_camera, write_edge
from tests.test_whole_loop import wait_for

ACL_EXAMPLE = REPO / "docs" / "mosquitto-acl.example"
# The names docs/mosquitto-acl.example uses.
PREFIX, AGENT, PLATFORM = "cityops", "box-0001", "platform"
PASSWORDS = {AGENT: "agent-pw-4711", PLATFORM: "platform-pw-0815"}


# --------------------------------------------------------------------------- a PKI of our own

def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: x509.Name, issuer_key, *, ca: bool = False,
          sans: list[x509.GeneralName] | None = None, usage=None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               # Key identifiers: strict X.509 verification (Python 3.13's default) wants them.
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, stem: str, cert: x509.Certificate, key=None) -> None:
    (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path = folder / f"{stem}.key"
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)


@dataclass(frozen=True)
class Pki:
    dir: Path

    def __getattr__(self, stem: str) -> Path:  # pki.ca -> ca.pem, pki.client_key -> client.key
        name, _, ext = stem.partition("_")
        return self.dir / f"{name}.{ext or 'pem'}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    """ca.pem; server.pem/.key for 127.0.0.1 and localhost; client.pem/.key; other.pem, an unrelated CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key, other_key = _key(), _key()
    ca = _cert("edge test CA", ca_key, _name("edge test CA"), ca_key, ca=True)
    other = _cert("some other CA", other_key, _name("some other CA"), other_key, ca=True)
    server_key, client_key = _key(), _key()
    server = _cert("broker", server_key, ca.subject, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                   sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    client = _cert(AGENT, client_key, ca.subject, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    _write(folder, "ca", ca)
    _write(folder, "other", other)
    _write(folder, "server", server, server_key)
    _write(folder, "client", client, client_key)
    return Pki(folder)


# --------------------------------------------------------------------------- brokers and clients

def _password_file(folder: Path) -> Path:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.fail("mosquitto_passwd not found (Debian's mosquitto package ships it)", pytrace=False)
    path = folder / "passwd"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        subprocess.run([tool, *(["-c"] if i == 0 else []), "-b", str(path), user, password], check=True,
                       capture_output=True, timeout=30)
    path.chmod(0o600)
    return path


@pytest.fixture
def secure_broker(tmp_path_factory, pki):
    """Factory: a mosquitto with a TLS listener (our CA), passwords, no anonymous clients, and the
    documented ACL; ``mtls=True`` requires a client certificate as well."""
    brokers: list[Mosquitto] = []

    def start(mtls: bool = False) -> Mosquitto:
        workdir = tmp_path_factory.mktemp("tls-broker")
        acl = workdir / "acl"
        shutil.copy(ACL_EXAMPLE, acl)
        broker = start_mosquitto(workdir, security=(
            f"cafile {pki.ca}", f"certfile {pki.server}", f"keyfile {pki.server_key}",
            "tls_version tlsv1.2",
            f"require_certificate {'true' if mtls else 'false'}",
            "allow_anonymous false",
            f"password_file {_password_file(workdir)}",
            f"acl_file {acl}",
        ))
        brokers.append(broker)
        return broker

    yield start
    for broker in brokers:
        broker.stop()


class Client:
    """A plain paho client over TLS (the platform's side, or a rogue one), recording what it receives."""

    def __init__(self, broker: Mosquitto, pki: Pki, user: str | None, *, password: str | None = None,
                 ca: Path | None = None, cert: bool = False, client_id: str | None = None):
        self.messages: list[mqtt.MQTTMessage] = []
        self.connack = threading.Event()
        self.reason: mqtt.ReasonCode | None = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{user}",
                                  protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(ca or pki.ca), certfile=str(pki.client) if cert else None,
                            keyfile=str(pki.client_key) if cert else None)
        if user:
            self.client.username_pw_set(user, password or PASSWORDS[user])
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, msg: self.messages.append(msg)
        self.error: Exception | None = None
        try:
            self.client.connect(broker.host, broker.port)
        except OSError as exc:  # a refused handshake (ssl.SSLError is an OSError)
            self.error = exc
            return
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.reason = reason_code
        self.connack.set()

    @property
    def accepted(self) -> bool:
        self.connack.wait(5)
        return self.error is None and self.reason is not None and not self.reason.is_failure

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(5), f"subscription to {topic} not acknowledged"

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --------------------------------------------------------------------------- the agent's side

def agent_config(tmp_path: Path, broker: Mosquitto, pki: Pki, mqtt_lines: str, *, password: bool = True,
                 camera_url: str = "/nonexistent/clip.mp4", extra: str = "") -> BoxConfig:
    """An edge.toml naming the broker with ``mqtt_lines`` and, with ``password``, the agent's
    password in a file beside it (relative path, mode 0600)."""
    if password:
        (tmp_path / "mqtt.password").write_text(PASSWORDS[AGENT] + "\n")
        (tmp_path / "mqtt.password").chmod(0o600)
        mqtt_lines += f'\nusername = "{AGENT}"\npassword_file = "mqtt.password"\n'
    cam = write_camera(tmp_path, "cam1", camera_url)
    edge = write_edge(tmp_path, [cam], agent_id=AGENT, prefix=PREFIX, mqtt_port=broker.port, mqtt_extra=mqtt_lines,
                      extra=extra)
    return load_config(edge)


def verified(pki: Pki, ca: Path | None = None) -> str:
    return f'tls = true\ntls_ca = "{ca or pki.ca}"\n'


class Agent:
    """The real transport and outbox, one ticket stored before it starts."""

    def __init__(self, tmp_path: Path, config: BoxConfig):
        self.outbox = Outbox(tmp_path / "outbox.sqlite")
        self.topics = Topics(config.mqtt.prefix, config.agent.id)
        with self.outbox.transaction(time.time()) as tx:
            tx.add(OutMessage(self.topics.tickets("cam1"), "ticket", "application/json", "t-1",
                              payload=json.dumps({"ticket_id": "t-1", "seq": 1}).encode()))
        self.commands: list[Request] = []
        self.transport = MqttTransport(config.mqtt, self.topics, self.outbox, SystemClock(),
                                       on_command=self.commands.append, password=config.mqtt_password)
        self.transport.start()

    def delivered(self) -> bool:
        return self.outbox.counts()["pending"] == 0

    def stop(self) -> None:
        self.transport.stop(flush_timeout_s=0.5)
        self.outbox.close()


@pytest.fixture
def run_agent(tmp_path):
    agents: list[Agent] = []

    def start(config: BoxConfig) -> Agent:
        agents.append(Agent(tmp_path, config))
        return agents[-1]

    yield start
    for agent in agents:
        agent.stop()


def platform(broker: Mosquitto, pki: Pki) -> Client:
    client = Client(broker, pki, PLATFORM)
    assert client.accepted, f"the platform user is refused: {client.reason or client.error}"
    client.subscribe(f"{PREFIX}/#")
    return client


def tickets_at(client: Client) -> list[dict]:
    return [json.loads(m.payload) for m in client.messages if m.topic.endswith("/tickets")]


def events(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == name]


# --------------------------------------------------------------------------- the tests

def test_agent_delivers_a_ticket_over_verified_tls_with_a_password_from_a_file(tmp_path, pki, secure_broker,
                                                                              run_agent, caplog):
    caplog.set_level(logging.INFO, logger="agent.transport")
    broker = secure_broker()
    sub = platform(broker, pki)
    config = agent_config(tmp_path, broker, pki, verified(pki))
    assert config.mqtt_password == PASSWORDS[AGENT]
    agent = run_agent(config)
    wait_for(agent.delivered, 15, "the ticket delivered over TLS")
    wait_for(lambda: tickets_at(sub), 5, "the ticket at the platform")
    assert tickets_at(sub) == [{"ticket_id": "t-1", "seq": 1}]
    connected = events(caplog, "broker_connected")
    assert connected and connected[0].fields["transport"].startswith("TLS verified against")
    assert not events(caplog, "mqtt_insecure")
    sub.close()


def test_mtls_broker_takes_the_agent_with_its_certificate_and_refuses_a_client_without(tmp_path, pki, secure_broker,
                                                                                      run_agent):
    broker = secure_broker(mtls=True)
    without = Client(broker, pki, PLATFORM, client_id="no-cert")
    assert not without.accepted, "a client without a certificate got in"
    without.close()
    sub = Client(broker, pki, PLATFORM, cert=True)
    assert sub.accepted
    sub.subscribe(f"{PREFIX}/#")
    config = agent_config(tmp_path, broker, pki, verified(pki) + f'tls_cert = "{pki.client}"\ntls_key = "{pki.client_key}"\n')
    assert config.mqtt.mode().startswith("mTLS")
    agent = run_agent(config)
    wait_for(agent.delivered, 15, "the ticket delivered over mTLS")
    wait_for(lambda: tickets_at(sub), 5, "the ticket at the platform")
    sub.close()


def test_a_broker_certificate_from_another_ca_is_refused_and_logged_once(tmp_path, pki, secure_broker, run_agent,
                                                                         caplog):
    caplog.set_level(logging.INFO, logger="agent.transport")
    broker = secure_broker()
    sub = platform(broker, pki)
    agent = run_agent(agent_config(tmp_path, broker, pki, verified(pki, ca=pki.other)))
    time.sleep(4)  # reconnects every 0.2 .. 2 s meanwhile, each failing the handshake
    assert not agent.delivered() and not tickets_at(sub)
    failures = events(caplog, "broker_unreachable")
    assert len(failures) == 1, "a failing handshake is logged once a minute, not on every retry"
    assert agent.transport._trouble.suppressed >= 1, "the agent did retry meanwhile"
    assert "CERTIFICATE_VERIFY_FAILED" in failures[0].fields["reason"]
    assert not events(caplog, "broker_connected")
    sub.close()


def test_clients_without_a_valid_password_are_refused(tmp_path, pki, secure_broker, run_agent, caplog):
    caplog.set_level(logging.INFO, logger="agent.transport")
    broker = secure_broker()
    sub = platform(broker, pki)
    anonymous = Client(broker, pki, None, client_id="anonymous")
    assert not anonymous.accepted, "an anonymous client got in"
    anonymous.close()
    wrong = Client(broker, pki, AGENT, password="guessed", client_id="guesser")
    assert not wrong.accepted, "a wrong password got in"
    wrong.close()
    agent = run_agent(agent_config(tmp_path, broker, pki, verified(pki), password=False))
    time.sleep(3)
    assert not agent.delivered() and not tickets_at(sub)
    refused = events(caplog, "broker_refused")
    assert len(refused) == 1 and "authorized" in refused[0].fields["reason"].lower()
    assert not events(caplog, "broker_disconnected"), "the end of a refused login is no news"
    # The retries back off (0.2, 0.4, 0.8, 1.6 s ...): a handful in 3 s, not one every 0.2 s.
    assert 1 <= agent.transport._trouble.suppressed <= 5
    sub.close()


def test_only_the_insecure_flag_turns_verification_off_and_it_says_so(tmp_path, pki, secure_broker, run_agent,
                                                                      caplog):
    caplog.set_level(logging.INFO, logger="agent.transport")
    broker = secure_broker()
    sub = platform(broker, pki)
    # A CA that cannot verify the broker: refused above; with the flag the agent connects anyway.
    config = agent_config(tmp_path, broker, pki, verified(pki, ca=pki.other) + "tls_insecure = true\n")
    assert config.mqtt.mode().startswith("INSECURE")
    agent = run_agent(config)
    wait_for(agent.delivered, 15, "the ticket delivered without verification")
    warnings = events(caplog, "mqtt_insecure")
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "without verifying" in warnings[0].fields["reason"]
    sub.close()


def test_acl_example_lets_the_agent_work_and_keeps_it_inside_its_prefix(tmp_path, pki, secure_broker, run_agent):
    broker = secure_broker()
    sub = platform(broker, pki)
    agent = run_agent(agent_config(tmp_path, broker, pki, verified(pki)))
    wait_for(agent.delivered, 15, "the ticket delivered under the ACL")
    wait_for(lambda: tickets_at(sub), 5, "the ticket at the platform")
    wait_for(lambda: any(m.topic == f"{PREFIX}/{AGENT}/status" for m in sub.messages), 5, "the retained status")

    # The platform's command reaches the agent through the agent's read grant, and a reply goes
    # to the reply topic the reference platform asks for.
    sub.publish(f"{PREFIX}/{AGENT}/cmd/ack", b'{"verb": "ack"}')
    wait_for(lambda: agent.commands, 5, "the command at the agent")
    reply_topic = f"{PREFIX}/platform/ref-1/replies"
    with agent.outbox.transaction(time.time()) as tx:
        tx.add(OutMessage(reply_topic, "reply", "application/json", payload=b'{"ok": true}'))
    wait_for(lambda: any(m.topic == reply_topic for m in sub.messages), 5, "the reply at the platform")

    # The same credentials cannot write for another box, nor read its commands.
    rogue = Client(broker, pki, AGENT, client_id="rogue-box")
    assert rogue.accepted
    rogue.subscribe(f"{PREFIX}/box-0002/cmd/#")
    rogue.publish(f"{PREFIX}/box-0002/cam1/tickets", b'{"forged": true}')
    rogue.publish(f"{PREFIX}/{AGENT}/cam1/tickets", b'{"own": true}')  # a marker: writes inside arrive
    sub.publish(f"{PREFIX}/box-0002/cmd/ack", b'{"verb": "ack"}')
    wait_for(lambda: {"own": True} in tickets_at(sub), 5, "the publish inside the prefix")
    time.sleep(0.5)  # the forged one went out before the marker; give it the same chance
    assert {"forged": True} not in tickets_at(sub)
    assert not [m for m in sub.messages if m.topic.startswith(f"{PREFIX}/box-0002/") and m.topic.endswith("/tickets")]
    assert not rogue.messages, "the agent's user read another box's commands"
    rogue.close()
    sub.close()


def test_the_whole_agent_runs_over_mtls_under_the_acl(tmp_path, pki, secure_broker):
    """edge-agent's own wiring (app.py): a dead camera's camera_offline ticket and the status reach
    the platform over mTLS with the password from the file, under the documented ACL."""
    broker = secure_broker(mtls=True)
    sub = Client(broker, pki, PLATFORM, cert=True)
    assert sub.accepted
    sub.subscribe(f"{PREFIX}/#")
    config = agent_config(tmp_path, broker, pki,
                          verified(pki) + f'tls_cert = "{pki.client}"\ntls_key = "{pki.client_key}"\n',
                          camera_url=f"rtsp://127.0.0.1:{free_port()}/x", extra="[tickets]\noffline_grace_s = 1\n")
    agent = EdgeAgent(config)
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    runner.start()
    try:
        wait_for(lambda: any(t.get("rule") == "camera_offline" for t in tickets_at(sub)), 30,
                 "the camera_offline ticket at the platform")
        assert any(m.topic == f"{PREFIX}/{AGENT}/status" for m in sub.messages)
    finally:
        stop.set()
        runner.join(timeout=30)
        sub.close()
