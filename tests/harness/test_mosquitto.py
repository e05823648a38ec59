"""The real Mosquitto broker fixture: QoS 1 through it with paho-mqtt 2.2, and its config."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from sim.broker import MosquittoBroker, write_acl_file, write_config, write_password_file


def _client(name: str) -> mqtt.Client:
    return mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"{name}-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
    )


def _connect(client: mqtt.Client, broker: MosquittoBroker) -> None:
    connected = threading.Event()
    client.on_connect = lambda c, userdata, flags, reason, props: connected.set()
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    assert connected.wait(5), "no CONNACK within 5 s"


def test_qos1_publish_subscribe(mosquitto_broker: MosquittoBroker) -> None:
    topic = f"test/{uuid.uuid4().hex}"
    received: list[mqtt.MQTTMessage] = []
    got = threading.Event()
    subscribed = threading.Event()

    sub = _client("sub")
    sub.on_subscribe = lambda c, userdata, mid, reason_codes, props: subscribed.set()

    def on_message(c: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        received.append(msg)
        got.set()

    sub.on_message = on_message
    pub = _client("pub")
    try:
        _connect(sub, mosquitto_broker)
        sub.subscribe(topic, qos=1)
        assert subscribed.wait(5), "no SUBACK within 5 s"
        _connect(pub, mosquitto_broker)
        info = pub.publish(topic, b"\x01scan", qos=1)
        info.wait_for_publish(timeout=5)
        assert info.is_published(), "no PUBACK within 5 s"
        assert got.wait(5), "message not delivered within 5 s"
    finally:
        for c in (pub, sub):
            c.disconnect()
            c.loop_stop()
    assert [(m.topic, m.payload, m.qos) for m in received] == [(topic, b"\x01scan", 1)]


def test_broker_listens_on_loopback_with_nodelay(mosquitto_broker: MosquittoBroker) -> None:
    assert mosquitto_broker.host == "127.0.0.1"
    assert mosquitto_broker.config_path is not None
    config = mosquitto_broker.config_path.read_text().splitlines()
    assert f"listener {mosquitto_broker.port} 127.0.0.1" in config
    assert "set_tcp_nodelay true" in config
    assert "persistence false" in config


def test_password_and_acl_broker(tmp_path: Path) -> None:
    passwd = write_password_file(tmp_path / "passwd", {"reader-01": "s3cret"})
    acl = write_acl_file(
        tmp_path / "acl", ["user reader-01", "topic readwrite readers/reader-01/#"]
    )
    config = write_config(
        tmp_path / "cfg", port=1, allow_anonymous=False, password_file=passwd, acl_file=acl
    )
    assert f"password_file {passwd}" in config.read_text()
    with MosquittoBroker(
        tmp_path / "broker", allow_anonymous=False, password_file=passwd, acl_file=acl
    ) as broker:
        bad = _client("anon")
        result: list[object] = []
        done = threading.Event()

        def on_connect(c: mqtt.Client, u: object, f: object, reason: object, p: object) -> None:
            result.append(reason)
            done.set()

        bad.on_connect = on_connect
        bad.connect(broker.host, broker.port)
        bad.loop_start()
        try:
            assert done.wait(5)
        finally:
            bad.disconnect()
            bad.loop_stop()
        assert getattr(result[0], "is_failure", False), result

        good = _client("reader-01")
        good.username_pw_set("reader-01", "s3cret")
        try:
            _connect(good, broker)
        finally:
            good.disconnect()
            good.loop_stop()


def test_session_broker_is_running(mosquitto_broker_session: MosquittoBroker) -> None:
    assert mosquitto_broker_session.process is not None
    assert mosquitto_broker_session.process.poll() is None
