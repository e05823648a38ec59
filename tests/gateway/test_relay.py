"""The province relay: the gateway's sealed Ed25519 key, signed batches, HTTPS delivery to a
receiver written from the specification (tests/peers/relay.py), the MQTT bridge through a real
Mosquitto, and ``attendance-gateway relay public-key|verify-batch``."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import queue
import threading
import zoneinfo
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.cli import main
from gateway.config import ConfigError
from gateway.forwarders import AttendanceItem, DeliveryResult, EventKind, ForwardTarget, TargetDown
from gateway.forwarders.relay import (
    FORMAT,
    BatchError,
    RelayAdapter,
    SigningKey,
    build,
    canonical,
    event_record,
    key_id_of,
    load_public_key,
    load_signing_key,
    sign_batch,
    verify_batch,
)
from gateway.keystore import KeystoreError, MasterKey, Sealer
from gateway.rules import event_key, to_ms
from sim.broker import MosquittoBroker
from tests.gateway.oversized import OversizedPeer
from tests.peers.relay import Fault, RelayPeer

ZONE = zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh")
SCHOOL = "kt-thcs-012"
DAY = "2026-03-02"
Change = Literal["created", "revised", "voided"]
NOW_MS = to_ms(dt.datetime(2026, 3, 2, 8, 31, tzinfo=ZONE))


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """(master key file, relay key file) in a private directory, neither existing yet."""
    return tmp_path / "etc" / "master.key", tmp_path / "etc" / "relay-signing.key"


@pytest.fixture
def key(keys: tuple[Path, Path]) -> SigningKey:
    master, key_file = keys
    return load_signing_key(key_file, master)


_ids = iter(range(1, 1_000_000))


def item(student: str | None = "0100000001", kind: EventKind = "late", *,
         change: Change = "created", revision: int = 0, gate: str | None = "Cổng chính"
         ) -> AttendanceItem:
    key = event_key(kind, student or "em:0011223344", DAY, "morning")
    return AttendanceItem(item_id=next(_ids), idempotency_key=f"{key}.{revision}",
                          event_key=key, revision=revision, change=change, kind=kind,
                          school_date=DAY, session="morning", at_ms=NOW_MS - 3_600_000,
                          gate=gate, student_id=student,
                          class_id=None if student is None else "6A", attempts=0)


def outcomes(results: list[DeliveryResult]) -> list[str]:
    return [r.outcome for r in results]


def signed(key: SigningKey, items: list[AttendanceItem], batch_id: str = "b" * 32) -> bytes:
    return sign_batch([event_record(i) for i in items], school_id=SCHOOL, key=key,
                      batch_id=batch_id, created_ms=NOW_MS)


# --- the key ---------------------------------------------------------------------------------

def test_the_key_is_made_once_sealed_at_rest_mode_600(keys: tuple[Path, Path]) -> None:
    master, key_file = keys
    first = load_signing_key(key_file, master)
    assert (key_file.stat().st_mode & 0o777) == 0o600
    assert (master.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in key_file.parent.iterdir()) == ["master.key",
                                                                 "relay-signing.key"]
    blob = key_file.read_bytes()
    seed = Sealer.from_file(master).unseal(blob, purpose="gateway_signing_key", reader_id=0,
                                           key_id=1)
    assert len(seed) == 32 and seed not in blob  # the file never holds the raw private key
    assert Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw() \
        == first.public_raw
    again = load_signing_key(key_file, master, create=False)
    assert again.key_id == first.key_id == key_id_of(first.public_raw)
    assert len(first.key_id) == 16 and "hidden" not in repr(first) and seed.hex() not in repr(
        first)
    data = b"attendance"
    first.public_key.verify(again.sign(data), data)


def test_a_key_that_cannot_be_unsealed_is_refused(keys: tuple[Path, Path]) -> None:
    master, key_file = keys
    load_signing_key(key_file, master)
    saved = master.read_bytes()
    master.unlink()
    with pytest.raises(KeystoreError, match="master key file does not exist"):
        load_signing_key(key_file, master)  # never silently replaced by a new key
    assert not master.exists()
    master.write_bytes(MasterKey.generate()._key)
    master.chmod(0o600)
    with pytest.raises(KeystoreError, match="does not unseal"):
        load_signing_key(key_file, master)
    master.write_bytes(saved)
    key_file.chmod(0o640)
    with pytest.raises(KeystoreError, match="chmod 600"):
        load_signing_key(key_file, master)
    key_file.unlink()
    with pytest.raises(KeystoreError, match="does not exist"):
        load_signing_key(key_file, master, create=False)


def test_public_keys_load_as_pem_or_raw_base64(key: SigningKey) -> None:
    for text in (key.public_pem, key.public_b64, f"  {key.public_b64}\n"):
        assert load_public_key(text).public_bytes_raw() == key.public_raw
    for bad in ("not a key", base64.b64encode(b"short").decode(), "-----BEGIN PUBLIC KEY-----"):
        with pytest.raises(ValueError):
            load_public_key(bad)


# --- the batch format ------------------------------------------------------------------------

def test_a_batch_is_canonical_json_signed_over_its_exact_bytes(key: SigningKey) -> None:
    items = [item("0100000001", "late"), item(None, "unknown_card", gate=None),
             item("0100000002", "absent", change="voided", revision=2)]
    envelope = signed(key, items)
    outer = json.loads(envelope)
    assert list(outer) == ["batch", "format", "signature"] and outer["format"] == FORMAT
    assert canonical(outer) == envelope
    inner = outer["batch"].encode("utf-8")
    key.public_key.verify(base64.b64decode(outer["signature"]), inner)
    batch = json.loads(inner)
    assert canonical(batch) == inner and b" " not in inner.replace(b"C\xe1\xbb\x95ng ch", b"")
    assert batch["school_id"] == SCHOOL and batch["key_id"] == key.key_id
    assert batch["created_ms"] == NOW_MS and batch["batch_id"] == "b" * 32
    assert batch["events"][0] == {
        "idempotency_key": items[0].idempotency_key, "event_key": items[0].event_key,
        "revision": 0, "change": "created", "kind": "late", "school_date": DAY,
        "session": "morning", "at_ms": NOW_MS - 3_600_000, "student_id": "0100000001",
        "class_id": "6A", "gate": "Cổng chính"}
    assert batch["events"][1]["student_id"] is None and batch["events"][1]["gate"] is None
    verified = verify_batch(envelope, key.public_key)
    assert verified.events == tuple(batch["events"]) and verified.signed == inner
    lookup = {(SCHOOL, key.key_id): key.public_key}
    assert verify_batch(envelope, lambda s, k: lookup.get((s, k))).batch_id == "b" * 32


def test_every_changed_byte_is_refused(key: SigningKey) -> None:
    envelope = signed(key, [item("0100000001", "late")])
    for i in range(len(envelope)):
        tampered = bytearray(envelope)
        tampered[i] ^= 0x01
        with pytest.raises(BatchError):
            verify_batch(bytes(tampered), key.public_key)


def test_each_step_of_the_verification_names_its_failure(key: SigningKey,
                                                         tmp_path: Path) -> None:
    envelope = signed(key, [item()])
    other = load_signing_key(tmp_path / "other.key", tmp_path / "other-master.key")
    cases: list[tuple[bytes, str]] = [
        (b"\xff" * 10, "malformed"),
        (b"[]", "malformed"),
        (canonical({**json.loads(envelope), "extra": 1}), "malformed"),
        (canonical({**json.loads(envelope), "format": "attendance-relay-batch/9"}),
         "unsupported_format"),
        (canonical({**json.loads(envelope), "signature": "AAAA"}), "malformed"),
        (signed(other, [item()]), "wrong_key"),
        (b" " * (4 * 1024 * 1024 + 1), "too_large"),
        (signed(key, [item()], batch_id="not-hex"), "malformed"),
        (sign_batch([{**event_record(item()), "school_date": "02/03/2026"}], school_id=SCHOOL,
                    key=key, batch_id="c" * 32, created_ms=NOW_MS), "malformed"),
    ]
    for data, code in cases:
        with pytest.raises(BatchError) as caught:
            verify_batch(data, key.public_key)
        assert caught.value.code == code, (code, str(caught.value))
    with pytest.raises(BatchError) as caught:
        verify_batch(envelope, lambda school, key_id: None)
    assert caught.value.code == "unknown_key"
    # Another key claiming ours: the key id says ours, the signature does not.
    forged = json.loads(signed(other, [item()]))
    text = forged["batch"].replace(other.key_id, key.key_id)
    forged["batch"] = text
    forged["signature"] = base64.b64encode(other.sign(text.encode())).decode()
    with pytest.raises(BatchError) as caught:
        verify_batch(canonical(forged), key.public_key)
    assert caught.value.code == "bad_signature"
    # Signed, but not canonical: refused, receivers must not guess a serialisation.
    loose = json.dumps(json.loads(json.loads(envelope)["batch"]), indent=1).encode()
    looser = canonical({"format": FORMAT, "batch": loose.decode(),
                        "signature": base64.b64encode(key.sign(loose)).decode()})
    with pytest.raises(BatchError) as caught:
        verify_batch(looser, key.public_key)
    assert caught.value.code == "not_canonical"


def test_the_documented_test_vector() -> None:
    """docs/forwarding.md, "Test vector": the same bytes, signature included (Ed25519 is
    deterministic), and they verify."""
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    assert (key.public_b64, key.key_id) == ("A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=",
                                            "56475aa75463474c")
    events = [
        {"idempotency_key": "3f2a1c9e8b7d6f5a4e3d2c1b0a998877.0",
         "event_key": "3f2a1c9e8b7d6f5a4e3d2c1b0a998877", "revision": 0, "change": "created",
         "kind": "late", "school_date": "2026-03-02", "session": "morning",
         "at_ms": 1772410860000, "student_id": "0100000001", "class_id": "6A",
         "gate": "Cổng chính"},
        {"idempotency_key": "9c8b7a6f5e4d3c2b1a09f8e7d6c5b4a3.1",
         "event_key": "9c8b7a6f5e4d3c2b1a09f8e7d6c5b4a3", "revision": 1, "change": "voided",
         "kind": "absent", "school_date": "2026-03-02", "session": "morning",
         "at_ms": 1772415000000, "student_id": "0100000002", "class_id": "6A", "gate": None},
    ]
    envelope = sign_batch(events, school_id="kt-thcs-012", key=key,
                          batch_id="5b0e7c3d2a1f4e6b8c9d0a1b2c3d4e5f", created_ms=1772418660000)
    assert len(envelope) == 982
    assert json.loads(envelope)["signature"] == (
        "bMfNF7P0VJHFGSXr63+AM3qPluYEFrNMQSUHo5xbdwh/4lcnXDfmMcJ6NJ88M6ClWSBJJl7THuDxbOf8cQcjCw==")
    doc = (Path(__file__).parents[2] / "docs" / "forwarding.md").read_text(encoding="utf-8")
    assert envelope.decode("utf-8") in doc.splitlines()
    assert verify_batch(envelope, load_public_key(key.public_b64)).events == tuple(events)


# --- HTTPS delivery --------------------------------------------------------------------------

@pytest.fixture
async def peer(key: SigningKey) -> AsyncIterator[RelayPeer]:
    async with RelayPeer() as server:
        server.register(SCHOOL, key.public_raw)
        yield server


AdapterFactory = Callable[..., RelayAdapter]


@pytest.fixture
async def make(keys: tuple[Path, Path], key: SigningKey) -> AsyncIterator[AdapterFactory]:
    made: list[RelayAdapter] = []
    master, _ = keys

    def factory(**settings: Any) -> RelayAdapter:
        settings.setdefault("timeout_s", 2)
        adapter = build(ForwardTarget("province", "relay", settings), clock=lambda: NOW_MS,
                        master_key_file=master, school=SCHOOL)
        made.append(adapter)
        return adapter

    yield factory
    for adapter in made:
        await adapter.close()


async def test_batches_reach_the_receiver_once_per_event(
        peer: RelayPeer, make: AdapterFactory, key: SigningKey) -> None:
    adapter = make(url=peer.url)
    assert adapter.key.key_id == key.key_id  # the one key, loaded from its sealed file
    first = [item("0100000001", "late"), item("0100000002", "check_in"),
             item(None, "unknown_card")]
    assert outcomes(await adapter.deliver(first)) == ["delivered"] * 3
    (request,) = peer.requests
    assert request.status == 200 and request.content_type == "application/json"
    assert request.idempotency_key == request.batch_id and len(request.batch_id or "") == 32
    # The outbox retrying after a crash: a new batch, the same events: recorded once.
    again = await adapter.deliver([*first[:2], item("0100000003", "absent")])
    assert outcomes(again) == ["delivered"] * 3
    assert [r.reason for r in again[:2]] == ["the province had it already"] * 2
    assert len(peer.events) == 4 and peer.requests[1].batch_id != request.batch_id
    # A revision and a void travel as new versions of the same event.
    await adapter.deliver([item("0100000001", "late", change="revised", revision=1),
                           item("0100000003", "absent", change="voided", revision=1)])
    live = peer.live()
    assert len(live) == 3 and live[first[0].event_key]["revision"] == 1
    assert event_key("absent", "0100000003", DAY, "morning") not in live


async def test_the_receiver_refuses_tampered_and_unknown_batches(
        peer: RelayPeer, make: AdapterFactory, key: SigningKey) -> None:
    envelope = signed(key, [item()])
    async with httpx.AsyncClient() as client:
        at = envelope.index(b"0100000001")
        tampered = envelope[:at] + b"0100000009" + envelope[at + 10:]
        response = await client.post(peer.url, content=tampered)
        assert (response.status_code, response.json()["error"]) == (401, "bad_signature")
        response = await client.post(peer.url, content=envelope)
        assert response.status_code == 200
        replay = await client.post(peer.url, content=envelope)  # the same batch again
        assert replay.json() == response.json()
    assert len(peer.events) == 1
    peer.keys.clear()  # the province has not registered this gateway's key (yet)
    results = await make(url=peer.url).deliver([item("0100000002"), item("0100000003")])
    assert outcomes(results) == ["parked", "parked"]
    assert results[0].reason.startswith("the province refused the batch (401): unknown_key")


async def test_per_event_answers(peer: RelayPeer, make: AdapterFactory) -> None:
    adapter = make(url=peer.url)
    peer.reject_students.add("0100000002")
    results = await adapter.deliver([item("0100000001"), item("0100000002")])
    assert outcomes(results) == ["delivered", "parked"]
    assert results[1].reason == "the province rejected the event: unknown student"
    peer.inject(Fault(kind="omit"))
    results = await adapter.deliver([item("0100000003"), item("0100000004")])
    assert outcomes(results) == ["delivered", "retry"]


async def test_throttling_and_failures(peer: RelayPeer, make: AdapterFactory) -> None:
    adapter = make(url=peer.url)
    peer.inject(Fault(status=429, retry_after="12"))
    results = await adapter.deliver([item("0100000001"), item("0100000002")])
    assert outcomes(results) == ["retry", "retry"] and results[0].retry_after_s == 12.0
    peer.inject(Fault(status=503, retry_after="Mon, 02 Mar 2026 01:32:00 GMT"))
    results = await adapter.deliver([item("0100000001")])
    assert results[0].outcome == "retry" and results[0].retry_after_s == 60.0
    peer.inject(Fault(status=500))
    with pytest.raises(TargetDown, match="500"):
        await adapter.deliver([item("0100000001")])
    with pytest.raises(TargetDown, match="404"):
        await make(url=peer.url.replace("batches", "nowhere")).deliver([item()])
    await peer.close()
    with pytest.raises(TargetDown, match="ConnectError"):
        await adapter.deliver([item("0100000001")])
    assert await adapter.deliver([]) == []


async def test_an_oversized_answer_takes_the_target_down(make: AdapterFactory) -> None:
    """The receiver's answer is read to 1 MiB and no further: TargetDown (the batch's items
    stay pending for the outbox's retry), also for an error status's body."""
    async with OversizedPeer() as hostile:
        adapter = make(url=hostile.url("/relay/v1/batches"))
        with pytest.raises(TargetDown, match=r"POST failed: AnswerTooLarge: .*1048576"):
            await adapter.deliver([item(), item("0100000002")])
        hostile.status = 400
        with pytest.raises(TargetDown, match="AnswerTooLarge"):
            await adapter.deliver([item()])
    assert hostile.bodies == 2 and hostile.unread()


@pytest.mark.parametrize(("settings", "key", "message"), [
    ({}, "forward.province.url", "required"),
    ({"url": "http://province.example.vn/relay"}, "forward.province.url", "https"),
    ({"url": "https://p.example.vn", "mode": "amqp"}, "forward.province.mode", "one of"),
    ({"url": "https://p.example.vn", "school_id": "a b"}, "forward.province.school_id",
     "letters"),
    ({"url": "https://p.example.vn", "client_id": "x"}, "forward.province.client_id",
     "not used"),
    ({"mode": "mqtt", "client_id": "gw"}, "forward.province.broker_url", "required"),
    ({"mode": "mqtt", "broker_url": "mqtt://broker.example.vn", "client_id": "gw"},
     "forward.province.broker_url", "mqtts"),
    ({"mode": "mqtt", "broker_url": "mqtts://broker.example.vn"},
     "forward.province.client_id", "required"),
    ({"mode": "mqtt", "broker_url": "mqtts://b.example.vn", "client_id": "gw",
      "topic": "attendance/+/x"}, "forward.province.topic", "wildcards"),
    ({"mode": "mqtt", "broker_url": "mqtts://b.example.vn", "client_id": "gw",
      "url": "https://p.example.vn"}, "forward.province.url", "not used"),
    ({"url": "https://p.example.vn", "token_file": "/nonexistent/token"},
     "forward.province.token_file", "does not exist"),
])
def test_bad_settings_name_their_key(keys: tuple[Path, Path], settings: dict[str, Any],
                                     key: str, message: str) -> None:
    master, _ = keys
    with pytest.raises(ConfigError, match=message) as caught:
        build(ForwardTarget("province", "relay", settings), clock=lambda: 0,
              master_key_file=master, school=SCHOOL)
    assert caught.value.key == key


def test_school_and_master_key_default_to_the_gateway_config(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\nschool = "thcs-nguyen-du"\nmaster_key_file = "keys/m.key"\n',
                      encoding="utf-8")
    adapter = build(ForwardTarget("province", "relay", {"url": "https://p.example.vn/r"}),
                    clock=lambda: 0, config_path=config)
    assert adapter.settings.school_id == "thcs-nguyen-du"
    assert adapter.settings.signing_key_file == tmp_path / "keys" / "relay-signing.key"
    assert (tmp_path / "keys" / "relay-signing.key").exists()
    asyncio.run(adapter.close())


# --- the MQTT bridge -------------------------------------------------------------------------

class ProvinceSubscriber:
    """The province's consumer: MQTT 5, persistent session, QoS 1."""

    def __init__(self, broker: MosquittoBroker, topic: str) -> None:
        self.messages: queue.Queue[bytes] = queue.Queue()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="province-consumer",
                                   protocol=mqtt.MQTTv5)
        self._client.on_message = lambda c, u, m: self.messages.put(bytes(m.payload))
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._broker, self._topic = broker, topic

    def connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self._subscribed.clear()
        self._client.connect(self._broker.host, self._broker.port, clean_start=False,
                             properties=props)
        self._client.loop_start()
        self._client.subscribe(self._topic, qos=1)
        assert self._subscribed.wait(5)

    def disconnect(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def province(mosquitto_broker: MosquittoBroker) -> Iterator[ProvinceSubscriber]:
    subscriber = ProvinceSubscriber(mosquitto_broker, f"attendance/relay/v1/{SCHOOL}")
    yield subscriber
    subscriber.disconnect()


def bridge_settings(broker: MosquittoBroker, **extra: Any) -> dict[str, Any]:
    return {"mode": "mqtt", "broker_url": f"mqtt://{broker.host}:{broker.port}",
            "client_id": f"gateway-{SCHOOL}", **extra}


async def test_the_bridge_delivers_on_puback_to_a_persistent_subscriber(
        mosquitto_broker: MosquittoBroker, province: ProvinceSubscriber,
        make: AdapterFactory, key: SigningKey) -> None:
    province.connect()
    adapter = make(**bridge_settings(mosquitto_broker))
    items = [item("0100000001"), item("0100000002", "absent")]
    assert outcomes(await adapter.deliver(items)) == ["delivered", "delivered"]
    payload = await asyncio.to_thread(province.messages.get, True, 5)
    verified = verify_batch(payload, key.public_key)
    assert [e["idempotency_key"] for e in verified.events] == [i.idempotency_key for i in items]
    # The consumer away, its session kept: the broker queues, PUBACKs, and hands over later.
    province.disconnect()
    assert outcomes(await adapter.deliver([item("0100000003")])) == ["delivered"]
    province.connect()
    payload = await asyncio.to_thread(province.messages.get, True, 5)
    assert verify_batch(payload, key.public_key).events[0]["student_id"] == "0100000003"


async def test_a_broker_without_subscriber_or_connection_is_down(
        mosquitto_broker: MosquittoBroker, make: AdapterFactory) -> None:
    adapter = make(**bridge_settings(mosquitto_broker))
    with pytest.raises(TargetDown, match="no subscriber"):
        await adapter.deliver([item()])
    mosquitto_broker.stop()
    with pytest.raises(TargetDown, match=r"not connected|PUBACK"):
        await make(**bridge_settings(mosquitto_broker, client_id="gw-2"), timeout_s=0.5
                   ).deliver([item()])


# --- the commands ----------------------------------------------------------------------------

def write_config(tmp_path: Path, relay: str = "") -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nschool = "{SCHOOL}"\nmaster_key_file = "etc/master.key"\n'
                      + relay, encoding="utf-8")
    return config


def test_public_key_prints_the_key_and_creates_it_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, '\n[[forward]]\nname = "so-gd"\ntype = "relay"\n'
                                    'url = "https://relay.example.vn/v1/batches"\n'
                                    'school_id = "KT-012"\n'
                                    'signing_key_file = "etc/relay.key"\n')
    assert main(["relay", "public-key", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    key = load_signing_key(tmp_path / "etc" / "relay.key", tmp_path / "etc" / "master.key",
                           create=False)
    assert key.public_b64 in out and key.public_pem in out and key.key_id in out
    assert "KT-012" in out and "so-gd" in out
    assert main(["relay", "public-key", "--config", str(config), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["key_id"] == key.key_id and shown["public_key_base64"] == key.public_b64
    assert main(["relay", "public-key", "--config", str(config), "--target", "other"]) == 2
    assert "forward.other" in capsys.readouterr().err


def test_public_key_without_a_relay_target_uses_the_default_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    assert main(["relay", "public-key", "--config", str(config), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["school_id"] == SCHOOL and shown["target"] is None
    assert shown["key_file"] == str(tmp_path / "etc" / "relay-signing.key")
    assert ((tmp_path / "etc" / "relay-signing.key").stat().st_mode & 0o777) == 0o600


def test_verify_batch_on_good_tampered_and_wrong_key_files(
        tmp_path: Path, key: SigningKey, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "batch.json"
    good.write_bytes(signed(key, [item("0100000001", "late"), item(None, "unknown_card")]))
    pem = tmp_path / "school.pem"
    pem.write_text(key.public_pem, encoding="ascii")
    for public in (str(pem), key.public_b64):
        assert main(["relay", "verify-batch", str(good), "--public-key", public]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"HỢP LỆ / VALID — trường / school {SCHOOL}, key id {key.key_id}")
        assert "created  2026-03-02T01:31:00.000Z" in out
        assert "0100000001" in out and "unknown_card" in out and "2026-03-02T00:31:00.000Z" in out
    assert main(["relay", "verify-batch", str(good), "--public-key", key.public_b64,
                 "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["valid"] is True and len(shown["events"]) == 2

    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(good.read_bytes().replace(b'\\"late\\"', b'\\"absent\\"'))
    assert main(["relay", "verify-batch", str(tampered), "--public-key", str(pem)]) == 1
    err = capsys.readouterr().err
    assert "KHÔNG HỢP LỆ / INVALID — Chữ ký không hợp lệ / invalid signature" in err

    other = load_signing_key(tmp_path / "o.key", tmp_path / "o-master.key")
    assert main(["relay", "verify-batch", str(good), "--public-key", other.public_b64]) == 1
    err = capsys.readouterr().err
    assert "Gói được ký bằng khóa khác / signed with another key" in err and key.key_id in err

    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"{not json")
    assert main(["relay", "verify-batch", str(garbage), "--public-key", str(pem)]) == 1
    assert "Gói sai định dạng / malformed batch" in capsys.readouterr().err
    assert main(["relay", "verify-batch", str(tmp_path / "missing.json"),
                 "--public-key", str(pem)]) == 2
    assert main(["relay", "verify-batch", str(good), "--public-key", "nonsense"]) == 2
    assert "unusable public key" in capsys.readouterr().err
