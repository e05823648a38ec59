"""A real Mosquitto with the password file and ACL generated from the registry (SPEC §8).

Readers publish only under their own ``up`` topics and read only their own ``down`` topics; only
the gateway account reads ``up`` and writes ``down``. Over MQTT 3.1.1 Mosquitto drops a denied
QoS 0/1 publish silently (it still sends PUBACK), so a denial is detected by the gateway *not*
receiving it: each forged publish is followed by a marker on the sender's own topic, and since
one client's messages reach a subscriber in order, the marker's arrival proves the forgery would
have arrived before it. The broker's debug log names each denial too, and over MQTT 5 the PUBACK
says "Not authorized".
"""

from __future__ import annotations

import base64
import contextlib
import queue
import re
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway import db
from gateway.broker_config import hash_password, write_broker_files
from gateway.config import load_config
from gateway.registry import Credentials, Registry
from sim.broker import LOOPBACK, MosquittoBroker, find_mosquitto, find_mosquitto_passwd, free_port
from sim.broker import wait_for_port as _wait_for_port

ROOT = Path(__file__).resolve().parents[2]
SCHOOL = "acl-school"
GATEWAY_USER, GATEWAY_PASSWORD = "gateway", "gateway-password-for-tests"
WAIT_S = 5.0


class Client:
    """A paho client on its own network thread, with what it received in a queue."""

    def __init__(self, broker: MosquittoBroker, client_id: str, username: str | None,
                 password: str | None, protocol: int = mqtt.MQTTv311) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connack: queue.Queue[object] = queue.Queue()
        self.disconnected = threading.Event()
        self.subacks: queue.Queue[object] = queue.Queue()
        self.pubacks: dict[int, object] = {}
        self.mqtt = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                client_id=client_id, protocol=protocol)  # type: ignore[arg-type]
        if username is not None:
            self.mqtt.username_pw_set(username, password)
        self.mqtt.on_connect = lambda c, u, f, reason, p: self.connack.put(reason)
        self.mqtt.on_disconnect = lambda c, u, f, reason, p: self.disconnected.set()
        self.mqtt.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.mqtt.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put(codes)
        self.mqtt.on_publish = lambda c, u, mid, reason, p: self.pubacks.__setitem__(mid, reason)
        # CONNECT and CONNACK on this thread; only an accepted client gets a network thread.
        self.mqtt.connect(broker.host, broker.port, keepalive=10)
        deadline = time.monotonic() + WAIT_S
        while self.connack.empty() and time.monotonic() < deadline:
            self.mqtt.loop(timeout=0.05)
        self.reason = self.connack.get_nowait()
        if self.accepted:
            self.mqtt.loop_start()

    @property
    def accepted(self) -> bool:
        return not getattr(self.reason, "is_failure", True)

    def subscribe(self, topic: str) -> None:
        self.mqtt.subscribe(topic, qos=1)
        self.subacks.get(timeout=WAIT_S)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> object:
        info = self.mqtt.publish(topic, payload, qos=qos)
        if qos:
            info.wait_for_publish(timeout=WAIT_S)
            assert info.is_published(), f"no PUBACK for {topic}"
        return self.pubacks.get(info.mid)

    def received_until(self, marker: bytes) -> list[tuple[str, bytes]]:
        """Everything received up to and including the message whose payload is ``marker``."""
        got = []
        deadline = time.monotonic() + WAIT_S
        while True:
            item = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            got.append(item)
            if item[1] == marker:
                return got

    def close(self) -> None:
        self.mqtt.disconnect()
        if self.accepted:
            self.mqtt.loop_stop()


def _up(reader_id: int, leaf: str = "batch") -> str:
    return f"att/v1/{SCHOOL}/{reader_id}/up/{leaf}"


def _down(reader_id: int, leaf: str = "ack") -> str:
    return f"att/v1/{SCHOOL}/{reader_id}/down/{leaf}"


class School:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.conn: sqlite3.Connection = db.connect(tmp_path / "gateway.db")
        self.registry = Registry.open(self.conn, tmp_path / "master.key")
        self.creds: dict[int, Credentials] = {
            rid: self.registry.register(rid, f"reader {rid}", "main") for rid in (1, 2, 3)}
        self.write_files()
        self.clients: list[Client] = []

    def write_files(self) -> None:
        write_broker_files(self.registry, school=SCHOOL, gateway_username=GATEWAY_USER,
                           gateway_password=GATEWAY_PASSWORD, password_file=self.dir / "passwd",
                           acl_file=self.dir / "acl")

    def close_clients(self) -> None:
        while self.clients:
            self.clients.pop().close()

    def client(self, broker: MosquittoBroker, name: str, username: str | None,
               password: str | None, protocol: int = mqtt.MQTTv311) -> Client:
        client = Client(broker, f"{name}-{uuid.uuid4().hex[:6]}", username, password, protocol)
        self.clients.append(client)
        return client

    def reader(self, broker: MosquittoBroker, reader_id: int,
               protocol: int = mqtt.MQTTv311) -> Client:
        client = self.client(broker, f"reader-{reader_id}", str(reader_id),
                             self.creds[reader_id].mqtt_password, protocol)
        assert client.accepted, client.reason
        return client

    def gateway(self, broker: MosquittoBroker) -> Client:
        client = self.client(broker, f"gateway-{SCHOOL}", GATEWAY_USER, GATEWAY_PASSWORD)
        assert client.accepted, client.reason
        client.subscribe(f"att/v1/{SCHOOL}/+/up/#")
        return client


@pytest.fixture
def school(tmp_path: Path) -> Iterator[School]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run `make setup`", pytrace=False)
    s = School(tmp_path)
    yield s
    s.close_clients()
    s.conn.close()


@pytest.fixture
def broker(school: School) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(school.dir / "broker", allow_anonymous=False,
                         password_file=school.dir / "passwd", acl_file=school.dir / "acl",
                         extra_lines=["log_type debug"]) as b:
        yield b
        school.close_clients()  # before the broker goes, or they would wait to reconnect


def test_generated_files_have_mode_600(school: School) -> None:
    for name in ("passwd", "acl"):
        assert ((school.dir / name).stat().st_mode & 0o777) == 0o600


def test_reader_publishes_on_its_own_topic_and_the_gateway_receives_it(
        school: School, broker: MosquittoBroker) -> None:
    gateway = school.gateway(broker)
    reader = school.reader(broker, 1)
    reader.publish(_up(1), b"batch-1")
    reader.publish(_up(1, "status"), b"heartbeat-1", qos=0)
    assert gateway.received_until(b"heartbeat-1") == [(_up(1), b"batch-1"),
                                                      (_up(1, "status"), b"heartbeat-1")]
    # ... and the gateway's ack reaches the reader on its down topic.
    reader.subscribe(f"att/v1/{SCHOOL}/1/down/#")
    gateway.publish(_down(1), b"ack-1")
    assert reader.received_until(b"ack-1") == [(_down(1), b"ack-1")]


def test_reader_cannot_publish_as_another_reader(school: School,
                                                 broker: MosquittoBroker) -> None:
    gateway = school.gateway(broker)
    reader = school.reader(broker, 1)
    reader.publish(_up(2), b"forged-qos1", qos=1)  # PUBACKed all the same over 3.1.1
    reader.publish(_up(2), b"forged-qos0", qos=0)
    reader.publish(_down(1), b"forged-ack")  # and a reader cannot write down topics
    reader.publish(f"att/v1/{SCHOOL}/2/up", b"forged-short")
    # its own tree, but no leaf a reader publishes: cannot be used to flood the gateway
    reader.publish(_up(1, "nonsense"), b"own-tree-unknown-leaf", qos=0)
    reader.publish(f"att/v1/{SCHOOL}/1/up/batch/more", b"own-tree-deeper")
    reader.publish(_up(1), b"marker")
    assert gateway.received_until(b"marker") == [(_up(1), b"marker")]
    time.sleep(0.2)
    assert gateway.messages.empty()
    log = broker.log_text()
    for topic in (_up(2), _down(1), _up(1, "nonsense")):
        assert re.search(rf"Denied PUBLISH from reader-1-\w+ .*'{re.escape(topic)}'", log), log

    # Over MQTT 5 the broker says so in the PUBACK.
    v5 = school.reader(broker, 1, protocol=mqtt.MQTTv5)
    reason = v5.publish(_up(3), b"forged-v5")
    assert getattr(reason, "value", None) == 0x87, reason  # Not authorized
    v5.publish(_up(1), b"marker-v5")
    assert gateway.received_until(b"marker-v5") == [(_up(1), b"marker-v5")]


def test_reader_reads_only_its_own_down_topics(school: School, broker: MosquittoBroker) -> None:
    gateway = school.gateway(broker)
    one, two = school.reader(broker, 1), school.reader(broker, 2)
    # Mosquitto 2.0 grants these subscriptions but filters every message by the read ACL.
    one.subscribe(f"att/v1/{SCHOOL}/#")
    two.subscribe(f"att/v1/{SCHOOL}/2/down/#")
    gateway.publish(_down(2), b"for-two")
    two.publish(_up(2), b"batch-two")
    gateway.publish(_down(1), b"for-one")
    assert one.received_until(b"for-one") == [(_down(1), b"for-one")]
    assert two.received_until(b"for-two") == [(_down(2), b"for-two")]
    assert gateway.received_until(b"batch-two") == [(_up(2), b"batch-two")]


@pytest.mark.parametrize(
    ("username", "password"),
    [("1", "wrong"), ("1", ""), ("4", "anything"), (None, None), ("gateway", "wrong"),
     ("2", "<reader 1's password>")],
)
def test_bad_credentials_are_refused_at_connect(
        school: School, broker: MosquittoBroker, username: str | None,
        password: str | None) -> None:
    if password == "<reader 1's password>":
        password = school.creds[1].mqtt_password
    client = school.client(broker, "intruder", username, password)
    assert not client.accepted
    assert "not authori" in str(client.reason).lower(), client.reason


def test_revoked_and_rotated_credentials_stop_working_after_a_reload(
        school: School, broker: MosquittoBroker) -> None:
    gateway = school.gateway(broker)
    two = school.reader(broker, 2)
    old_one = school.creds[1].mqtt_password
    school.registry.revoke(2)
    school.creds[1] = school.registry.rotate(1)
    school.write_files()
    assert broker.process is not None
    broker.process.send_signal(signal.SIGHUP)
    # Mosquitto re-checks connected clients on reload and drops the revoked one.
    assert two.disconnected.wait(WAIT_S)
    refused = school.client(broker, "reader-2", "2", school.creds[2].mqtt_password)
    assert not refused.accepted
    assert not school.client(broker, "reader-1", "1", old_one).accepted
    one = school.reader(broker, 1)  # the new password
    one.publish(_up(1), b"after-rotation")
    assert gateway.received_until(b"after-rotation")[-1] == (_up(1), b"after-rotation")
    assert school.reader(broker, 3).accepted


def test_hashes_match_mosquitto_passwd(tmp_path: Path) -> None:
    tool = find_mosquitto_passwd()
    if tool is None:
        pytest.fail("mosquitto_passwd is not installed: run `make setup`", pytrace=False)
    path = tmp_path / "passwd"
    path.write_text("")
    for iterations in ("101", "1000"):
        subprocess.run([tool, "-H", "sha512-pbkdf2", "-I", iterations, "-b", str(path), "u",
                        "pässwörd"], check=True, capture_output=True)
        line = path.read_text().strip()
        _, theirs = line.split(":", 1)
        _, seven, count, salt, _ = theirs.split("$")
        assert (seven, count) == ("7", iterations)
        ours = hash_password("pässwörd", iterations=int(count), salt=base64.b64decode(salt))
        assert ours == theirs


# -- the install files in hardware/gateway/ -----------------------------------------------------


@contextlib.contextmanager
def shipped_broker(school: School) -> Iterator[tuple[MosquittoBroker, list[str]]]:
    """hardware/gateway/mosquitto.conf, pointed at the test's files and a loopback port; the
    list gets the broker's output once it stopped."""
    port = free_port()
    text = (ROOT / "hardware" / "gateway" / "mosquitto.conf").read_text()
    assert re.search(r"^listener 1883$", text, re.M)
    text = re.sub(r"^listener 1883$", f"listener {port} {LOOPBACK}", text, flags=re.M)
    text = text.replace("/etc/mosquitto/attendance/passwd", str(school.dir / "passwd"))
    text = text.replace("/etc/mosquitto/attendance/acl", str(school.dir / "acl"))
    for line in ("allow_anonymous false", "set_tcp_nodelay true"):
        assert re.search(rf"^{line}$", text, re.M)
    conf = school.dir / "shipped.conf"
    conf.write_text(text + "\nuser root\nlog_dest stderr\n")
    binary = find_mosquitto()
    assert binary is not None
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    try:
        if not _wait_for_port(LOOPBACK, port, time.monotonic() + WAIT_S):
            proc.kill()
            pytest.fail(f"the shipped config did not start:\n{proc.communicate()[0]}")
        yield MosquittoBroker(school.dir, port=port), output  # only for host/port
        school.close_clients()
    finally:
        proc.terminate()
        output.append(proc.communicate(timeout=5)[0])


def test_shipped_mosquitto_config_runs_with_generated_files(school: School) -> None:
    with shipped_broker(school) as (broker, _):
        gateway = school.gateway(broker)
        school.reader(broker, 1).publish(_up(1), b"through-shipped-config")
        assert gateway.received_until(b"through-shipped-config")
        assert not school.client(broker, "anon", None, None).accepted


def test_the_shipped_broker_disconnects_a_reader_sending_a_packet_over_max_packet_size(
        school: School) -> None:
    """``max_packet_size 8192`` in the shipped config: a reader's 9,000-byte publish never
    reaches the gateway's subscription and the broker drops the reader's connection; a packet
    of exactly 8192 bytes goes through (a batch, at most 4096 bytes, is far below it)."""
    with shipped_broker(school) as (broker, output):
        gateway = school.gateway(broker)
        reader = school.reader(broker, 1)
        topic = _up(1)
        # a whole packet of exactly 8192 bytes: fixed header (3), topic (2 + length),
        # packet id (2), payload
        at_limit = b"b" * (8192 - 3 - (2 + len(topic)) - 2)
        reader.publish(topic, at_limit)
        assert gateway.received_until(at_limit) == [(topic, at_limit)]
        reader.mqtt.reconnect_delay_set(60, 60)  # keep it down once the broker drops it
        info = reader.mqtt.publish(topic, b"x" * 9000, qos=1)
        assert reader.disconnected.wait(WAIT_S), "the broker kept the connection"
        assert not info.is_published()  # no PUBACK
        # The reader connects again and sends a marker. Mosquitto handles one packet at a time:
        # had it forwarded the oversized publish, that would have been before the disconnect,
        # so before the marker.
        school.reader(broker, 1).publish(topic, b"marker")
        assert gateway.received_until(b"marker") == [(topic, b"marker")]
        assert gateway.messages.empty()
    assert re.search(r"Client reader-1-\w+ disconnected due to oversize packet", output[0]), \
        output[0]


def test_sample_gateway_config_loads(tmp_path: Path) -> None:
    text = (ROOT / "hardware" / "gateway" / "gateway.toml").read_text()
    (tmp_path / "mqtt.password").write_text("x\n")
    config = load_config(_write(tmp_path / "gateway.toml",
                                text.replace("/etc/attendance/", f"{tmp_path}/")))
    assert config.mqtt.username == GATEWAY_USER and config.mqtt.password == "x"
    assert config.master_key_file == tmp_path / "master.key"


def test_systemd_unit_restarts_the_gateway() -> None:
    unit = (ROOT / "hardware" / "gateway" / "attendance-gateway.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines()
                    if "=" in line and not line.startswith("#"))
    assert settings["Restart"] in ("always", "on-failure")
    assert settings["User"] == "attendance"
    assert "readers" not in settings["ExecStart"] and " run " in settings["ExecStart"]
    # gateway/systemd.py notifies: READY once started, WATCHDOG while the writer answers
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
    assert 0 < int(settings["WatchdogSec"].removesuffix("s")) <= 60


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
