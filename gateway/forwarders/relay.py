"""Province relay: attendance events in batches signed by the gateway's own Ed25519 key.

The normative description — batch format, signature, the receiver's verification procedure, the
receiver's answers — is docs/forwarding.md, "Province relay". In short:

- **The key.** Each gateway has one Ed25519 key pair. The private key is generated on first use
  (``build``, or ``attendance-gateway relay public-key``) and kept sealed under the gateway's
  master key (``gateway/keystore.py``, purpose ``gateway_signing_key``) in its own file, mode
  600: the file never holds the raw key. The public key is exported for the province, which
  registers it for the school; its *key id* is the first 16 hex digits of the SHA-256 of the
  32 raw public key bytes.
- **The batch.** One ``deliver`` call makes one batch: a JSON object with the school, the key id,
  a fresh batch id, the creation time and the events, serialised canonically (sorted keys, no
  whitespace, UTF-8, integers only). The signature covers exactly those bytes. What travels is a
  small canonical JSON *envelope* holding the batch text as a string and the signature, so a
  receiver verifies the very bytes that were signed and never re-serialises anything.
- **HTTPS mode.** ``POST {url}`` with ``Content-Type: application/json`` and ``Idempotency-Key:
  <batch id>``; the receiver answers per event (accepted, duplicate, rejected) or refuses the
  whole batch; its answers map onto the outbox's outcomes (docs/forwarding.md).
- **MQTT bridge mode.** The envelope is published at QoS 1 (MQTT 5, persistent session, the
  configured client id) to the provincial broker; the batch is delivered when the PUBACK comes
  back with a success code. "No matching subscribers" is not success: the broker dropped it.

A receiver deduplicates events by ``idempotency_key`` (``{event_key}.{revision}``), so a batch
sent twice — an outbox retry after a crash, a QoS 1 redelivery — records nothing twice.

Logs carry batch ids, counts and outcomes, never student ids.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import re
import ssl
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as mqtt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import ConfigError, load_config
from gateway.forwarders import AttendanceItem, DeliveryResult, ForwardTarget, TargetDown
from gateway.forwarders._common import (
    LOOPBACK_HOSTS,
    PrivateFileError,
    Settings,
    fetch,
    read_private_file,
    retry_after_s,
    short,
)
from gateway.keystore import KeystoreError, Sealer, create_private_file
from gateway.types import Clock

log = logging.getLogger("gateway.forward.relay")

FORMAT = "attendance-relay-batch/1"
CONTENT_TYPE = "application/json"
ENVELOPE_FIELDS = ("batch", "format", "signature")
BATCH_FIELDS = ("batch_id", "created_ms", "events", "format", "key_id", "school_id")
EVENT_FIELDS = ("at_ms", "change", "class_id", "event_key", "gate", "idempotency_key", "kind",
                "revision", "school_date", "session", "student_id")
KINDS = ("check_in", "check_out", "late", "absent", "unknown_card")
CHANGES = ("created", "revised", "voided")
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024
SIGNATURE_LEN = 64
KEY_GENERATION = 1  # in the sealed key's associated data; a new key is a new file, not a bump
DEFAULT_KEY_FILE = "relay-signing.key"
DEFAULT_TOPIC = "attendance/relay/v1/{school_id}"
_SCHOOL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_BATCH_ID = re.compile(r"[0-9a-f]{32}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_SEALED_MAX = 256
_REASON_MAX = 300
_PARK_STATUSES = (400, 401, 403, 413, 422)
# PUBACK reason codes that will not change by sending again: park. Other failures retry.
_MQTT_PARK_CODES = {0x87: "not authorised", 0x90: "topic name invalid",
                    0x95: "packet too large", 0x99: "payload format invalid"}
_NO_MATCHING_SUBSCRIBERS = 0x10

SETTINGS = ("mode", "school_id", "signing_key_file", "master_key_file", "url", "token_file",
            "timeout_s", "verify", "ca_file", "broker_url", "client_id", "username",
            "password_file", "topic", "session_expiry_s", "keepalive_s")


# --- canonical JSON --------------------------------------------------------------------------

def canonical(value: Any) -> bytes:
    """The one serialisation the relay signs: sorted keys, no whitespace, UTF-8, no floats."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


# --- the gateway's key -----------------------------------------------------------------------

def key_id_of(public_raw: bytes) -> str:
    """The key id the province files a public key under: SHA-256 of the raw 32 bytes, 16 hex."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


class SigningKey:
    """The gateway's Ed25519 key pair; the private half never leaves this object."""

    __slots__ = ("_private", "key_id", "public_raw")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_raw = private.public_key().public_bytes_raw()
        self.key_id = key_id_of(self.public_raw)

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._private.public_key()

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode("ascii")

    @property
    def public_pem(self) -> str:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo,
        ).decode("ascii")


def load_signing_key(key_file: Path, master_key_file: Path, *, create: bool = True
                     ) -> SigningKey:
    """The gateway's relay key from ``key_file`` (sealed under the master key); with ``create``,
    a new key is generated, sealed and written (mode 600, never replacing a file) if there is
    none yet. Raises :class:`KeystoreError` with a message fit for the operator.

    A missing master key file is created only together with a new relay key: next to an
    existing sealed relay key it means the master key was lost, and that is refused.
    """
    if not key_file.exists():
        if not create:
            raise KeystoreError(f"{key_file}: relay signing key file does not exist "
                                "(attendance-gateway relay public-key creates it)")
        sealer = Sealer.from_file(master_key_file, create=True)
        seed = Ed25519PrivateKey.generate().private_bytes_raw()
        blob = sealer.seal(seed, purpose="gateway_signing_key", reader_id=0,
                           key_id=KEY_GENERATION)
        create_private_file(key_file, blob, what="relay signing key file")
        log.info("relay signing key created", extra={"file": str(key_file)})
    try:
        blob = read_private_file(key_file, _SEALED_MAX)
    except PrivateFileError as exc:
        raise KeystoreError(f"relay signing key file: {exc}") from None
    sealer = Sealer.from_file(master_key_file, create=False)
    seed = sealer.unseal(blob, purpose="gateway_signing_key", reader_id=0, key_id=KEY_GENERATION)
    return SigningKey(Ed25519PrivateKey.from_private_bytes(seed))


def load_public_key(text: str) -> Ed25519PublicKey:
    """A public key as ``relay public-key`` prints it: PEM, or the raw 32 bytes in base64."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise ValueError(f"not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the PEM key is not an Ed25519 key")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("neither PEM nor base64") from None
    if len(raw) != 32:
        raise ValueError(f"a raw Ed25519 public key is 32 bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


# --- batches ---------------------------------------------------------------------------------

def event_record(item: AttendanceItem) -> dict[str, Any]:
    """One event as it travels (docs/forwarding.md): the item without the outbox's own fields."""
    return {
        "idempotency_key": item.idempotency_key, "event_key": item.event_key,
        "revision": item.revision, "change": item.change, "kind": item.kind,
        "school_date": item.school_date, "session": item.session, "at_ms": item.at_ms,
        "student_id": item.student_id, "class_id": item.class_id, "gate": item.gate,
    }


def sign_batch(events: Sequence[Mapping[str, Any]], *, school_id: str, key: SigningKey,
               batch_id: str, created_ms: int) -> bytes:
    """The signed envelope of one batch, ready to send (canonical JSON bytes)."""
    batch = canonical({"format": FORMAT, "school_id": school_id, "key_id": key.key_id,
                       "batch_id": batch_id, "created_ms": created_ms, "events": list(events)})
    signature = base64.b64encode(key.sign(batch)).decode("ascii")
    return canonical({"format": FORMAT, "batch": batch.decode("utf-8"), "signature": signature})


BatchErrorCode = Literal["too_large", "malformed", "unsupported_format", "not_canonical",
                         "unknown_key", "wrong_key", "bad_signature"]


class BatchError(Exception):
    """A batch that does not verify; ``code`` says which step refused it."""

    def __init__(self, code: BatchErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class VerifiedBatch:
    school_id: str
    key_id: str
    batch_id: str
    created_ms: int
    events: tuple[Mapping[str, Any], ...]
    signed: bytes = field(repr=False)  # the exact bytes the signature covers


KeyLookup = Callable[[str, str], Ed25519PublicKey | None]  # (school_id, key_id) -> key


def verify_batch(data: bytes, keys: Ed25519PublicKey | KeyLookup) -> VerifiedBatch:
    """Verify one envelope as the receiver must (docs/forwarding.md, "Receiver's procedure").

    ``keys`` is the one public key expected (``relay verify-batch --public-key``), or a lookup of
    the province's registered keys by school and key id. Raises :class:`BatchError`.
    """
    if len(data) > MAX_ENVELOPE_BYTES:
        raise BatchError("too_large", f"{len(data)} bytes, more than {MAX_ENVELOPE_BYTES}")
    envelope = _json_object(data, "the envelope")
    if set(envelope) != set(ENVELOPE_FIELDS):
        raise BatchError("malformed", "the envelope must have exactly the fields "
                                      + ", ".join(ENVELOPE_FIELDS))
    if envelope["format"] != FORMAT:
        raise BatchError("unsupported_format", f"format {short(str(envelope['format']), 60)!r} "
                                               f"is not {FORMAT}")
    text, signature_b64 = envelope["batch"], envelope["signature"]
    if not isinstance(text, str) or not isinstance(signature_b64, str):
        raise BatchError("malformed", "batch and signature must be strings")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        signed = text.encode("utf-8")
    except (binascii.Error, ValueError):
        raise BatchError("malformed", "signature is not base64, or batch is not "
                                      "valid Unicode") from None
    if len(signature) != SIGNATURE_LEN:
        raise BatchError("malformed", f"an Ed25519 signature is {SIGNATURE_LEN} bytes, "
                                      f"not {len(signature)}")
    batch = _json_object(signed, "the batch")
    if set(batch) != set(BATCH_FIELDS):
        raise BatchError("malformed", "the batch must have exactly the fields "
                                      + ", ".join(BATCH_FIELDS))
    if batch["format"] != FORMAT:
        raise BatchError("unsupported_format", "the batch's format differs from the envelope's")
    school_id, key_id = batch["school_id"], batch["key_id"]
    if not isinstance(school_id, str) or not isinstance(key_id, str):
        raise BatchError("malformed", "school_id and key_id must be strings")
    if isinstance(keys, Ed25519PublicKey):
        expected = key_id_of(keys.public_bytes_raw())
        if key_id != expected:
            raise BatchError("wrong_key", f"signed with key {short(key_id, 40)}, not with the "
                                          f"given key {expected}")
        public = keys
    else:
        found = keys(school_id, key_id)
        if found is None:
            raise BatchError("unknown_key", f"no key {short(key_id, 40)} is registered for "
                                            f"school {short(school_id, 64)}")
        public = found
    try:
        public.verify(signature, signed)
    except InvalidSignature:
        raise BatchError("bad_signature", "the signature does not match the batch") from None
    if canonical(batch) != signed:
        raise BatchError("not_canonical", "the batch is not in canonical form (sorted keys, "
                                          "no whitespace, UTF-8)")
    batch_id, created_ms, events = batch["batch_id"], batch["created_ms"], batch["events"]
    if not isinstance(batch_id, str) or not _BATCH_ID.fullmatch(batch_id) \
            or not _is_int(created_ms) or not isinstance(events, list):
        raise BatchError("malformed", "batch_id (32 hex digits), created_ms (an integer) or "
                                      "events (an array) is wrong")
    for i, event in enumerate(events):
        problem = _event_problem(event)
        if problem:
            raise BatchError("malformed", f"event {i}: {problem}")
    return VerifiedBatch(school_id, key_id, batch_id, created_ms, tuple(events), signed)


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BatchError("malformed", f"{what} is not UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise BatchError("malformed", f"{what} is not a JSON object")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _event_problem(event: object) -> str:
    if not isinstance(event, dict):
        return "not an object"
    if set(event) != set(EVENT_FIELDS):
        return "must have exactly the fields " + ", ".join(EVENT_FIELDS)
    for name in ("idempotency_key", "event_key", "school_date", "session"):
        if not isinstance(event[name], str) or not event[name]:
            return f"{name} must be a non-empty string"
    if not _DATE.fullmatch(event["school_date"]):
        return "school_date must be a date like 2026-03-02"
    for name in ("student_id", "class_id", "gate"):
        if event[name] is not None and not isinstance(event[name], str):
            return f"{name} must be a string or null"
    if not _is_int(event["revision"]) or not _is_int(event["at_ms"]):
        return "revision and at_ms must be integers"
    if event["kind"] not in KINDS:
        return "kind must be one of " + ", ".join(KINDS)
    if event["change"] not in CHANGES:
        return "change must be one of " + ", ".join(CHANGES)
    if event["idempotency_key"] != f"{event['event_key']}.{event['revision']}":
        return "idempotency_key must be event_key.revision"
    return ""


# --- settings --------------------------------------------------------------------------------

Mode = Literal["https", "mqtt"]


@dataclass(frozen=True)
class RelaySettings:
    """``target.settings`` of a ``type = "relay"`` target, validated; secrets out of ``repr``."""

    mode: Mode
    school_id: str
    signing_key_file: Path
    master_key_file: Path
    timeout_s: float
    verify: ssl.SSLContext | bool = field(repr=False)
    # https
    url: str = ""
    token: str | None = field(default=None, repr=False)
    # mqtt
    broker_host: str = ""
    broker_port: int = 0
    broker_tls: bool = True
    client_id: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    topic: str = ""
    session_expiry_s: int = 7 * 86_400
    keepalive_s: int = 30


def parse_settings(target: ForwardTarget, *, config_path: Path | None = None,
                   master_key_file: Path | None = None, school: str | None = None
                   ) -> RelaySettings:
    """Validate ``target.settings`` (reads the token or password file); raises ConfigError.

    ``master_key_file`` and ``school`` are the gateway's ``[gateway] master_key_file`` and
    ``school``: the defaults of the target's ``master_key_file`` and ``school_id``. When they are
    not given they are read from the configuration at ``config_path``, which also anchors
    relative paths and is named in errors.
    """
    where = config_path or Path("<config>")
    section = Settings(where, f"forward.{target.name}", target.settings)
    section.check_known(SETTINGS)
    if (master_key_file is None or school is None) and config_path is not None:
        master_key_file, school = _gateway_defaults(config_path, master_key_file, school)
    mode: Mode = "mqtt" if section.choice("mode", ("https", "mqtt"), "https") == "mqtt" \
        else "https"
    school_id = section.text("school_id", school)
    if not _SCHOOL_ID.fullmatch(school_id):
        raise section.error("school_id", "must be 1-64 characters: letters, digits, '.', '_', "
                                         "'-', starting with a letter or digit")
    if "master_key_file" in section.table or master_key_file is None:
        master = section.file("master_key_file")
    else:
        master = master_key_file
    common: dict[str, Any] = {
        "mode": mode, "school_id": school_id,
        "signing_key_file": section.file("signing_key_file",
                                         str(master.parent / DEFAULT_KEY_FILE)),
        "master_key_file": master,
        "timeout_s": section.number("timeout_s", 0.1, 300.0, 15.0),
        "verify": section.tls(),
    }
    https_only = ("url", "token_file")
    mqtt_only = ("broker_url", "client_id", "username", "password_file", "topic",
                 "session_expiry_s", "keepalive_s")
    for name in mqtt_only if mode == "https" else https_only:
        if name in section.table:
            raise section.error(name, f"is not used with mode = \"{mode}\"")
    if mode == "https":
        token = section.secret("token_file") if "token_file" in section.table else None
        return RelaySettings(**common, url=section.url("url", what="student ids"), token=token)
    host, port, tls = _broker(section)
    username = section.optional_text("username")
    password = section.secret("password_file") if "password_file" in section.table else None
    if password is not None and username is None:
        raise section.error("password_file", "needs username")
    topic = section.text("topic", DEFAULT_TOPIC).replace("{school_id}", school_id)
    if any(c in topic for c in "+#\x00") or topic.startswith("$"):
        raise section.error("topic", "must be a plain topic name: no wildcards, no '$' start")
    return RelaySettings(
        **common, broker_host=host, broker_port=port, broker_tls=tls,
        client_id=section.text("client_id"), username=username, password=password, topic=topic,
        session_expiry_s=section.integer("session_expiry_s", 0, 2**32 - 1, 7 * 86_400),
        keepalive_s=section.integer("keepalive_s", 5, 3600, 30),
    )


def _gateway_defaults(config_path: Path, master_key_file: Path | None, school: str | None
                      ) -> tuple[Path | None, str | None]:
    """``[gateway] master_key_file`` and ``school`` from the configuration file, where not given.
    An unreadable configuration leaves them unknown (the target must then name them)."""
    try:
        config = load_config(config_path)
    except ConfigError:
        return master_key_file, school
    return master_key_file or config.master_key_file, school or config.school


def _broker(section: Settings) -> tuple[str, int, bool]:
    text = section.text("broker_url")
    parts = urlsplit(text)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.path.strip("/") \
            or parts.query or parts.username or parts.password:
        raise section.error("broker_url", f"must be mqtts://host[:port], not {text!r}")
    if parts.scheme == "mqtt" and parts.hostname not in LOOPBACK_HOSTS:
        raise section.error("broker_url", "must be mqtts:// (student ids and the broker "
                                          "password cross it); mqtt:// is accepted for this "
                                          "machine only")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise section.error("broker_url", f"has a bad port: {text!r}") from None
    return parts.hostname, port, parts.scheme == "mqtts"


def build(target: ForwardTarget, *, clock: Clock, config_path: Path | None = None,
          master_key_file: Path | None = None, school: str | None = None) -> RelayAdapter:
    """The adapter for one ``[[forward]]`` table of ``type = "relay"``.

    Loads the gateway's signing key, generating and sealing it on first use. For
    ``master_key_file``, ``school`` and ``config_path`` see :func:`parse_settings`.
    """
    settings = parse_settings(target, config_path=config_path, master_key_file=master_key_file,
                              school=school)
    try:
        key = load_signing_key(settings.signing_key_file, settings.master_key_file)
    except KeystoreError as exc:
        raise ConfigError(config_path or Path("<config>"),
                          f"forward.{target.name}.signing_key_file", str(exc)) from None
    return RelayAdapter(target.name, settings, key, clock=clock, max_batch=target.max_batch,
                        concurrency=target.concurrency)


# --- the adapter -----------------------------------------------------------------------------

class RelayAdapter:
    """Delivers attendance items to the province as signed batches (module docstring)."""

    def __init__(self, name: str, settings: RelaySettings, key: SigningKey, *, clock: Clock,
                 max_batch: int = 50, concurrency: int = 2,
                 transport: httpx.AsyncBaseTransport | None = None,
                 batch_ids: Callable[[], str] = lambda: uuid.uuid4().hex) -> None:
        self.name = name
        self.max_batch = max_batch
        self.concurrency = concurrency
        self.settings = settings
        self.key = key
        self._clock = clock
        self._batch_ids = batch_ids
        self._http: httpx.AsyncClient | None = None
        self._bridge: _MqttBridge | None = None
        if settings.mode == "https":
            headers = {"Accept": "application/json", "User-Agent": "school-attendance-gateway"}
            if settings.token:
                headers["Authorization"] = f"Bearer {settings.token}"
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(settings.timeout_s), verify=settings.verify,
                headers=headers, follow_redirects=False, transport=transport)
        else:
            self._bridge = _MqttBridge(settings)
        self.batches_sent = 0  # for metrics and tests

    def __repr__(self) -> str:
        where = self.settings.url or f"{self.settings.broker_host}:{self.settings.broker_port}"
        return f"RelayAdapter(name={self.name!r}, mode={self.settings.mode!r}, to={where!r})"

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._bridge is not None:
            await self._bridge.close()

    def sign(self, items: Sequence[AttendanceItem], batch_id: str) -> bytes:
        return sign_batch([event_record(item) for item in items],
                          school_id=self.settings.school_id, key=self.key,
                          batch_id=batch_id, created_ms=self._clock())

    async def deliver(self, items: Sequence[AttendanceItem]) -> list[DeliveryResult]:
        if not items:
            return []
        batch_id = self._batch_ids()
        envelope = self.sign(items, batch_id)
        if self._bridge is not None:
            results = await self._publish(items, envelope, batch_id)
        else:
            results = await self._post(items, envelope, batch_id)
        self.batches_sent += 1
        counts: dict[str, int] = {}
        for result in results:
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
        log.info("relay batch", extra={"target": self.name, "batch_id": batch_id,
                                       "events": len(items), "bytes": len(envelope), **counts})
        return results

    # --- HTTPS ---------------------------------------------------------------------------------

    async def _post(self, items: Sequence[AttendanceItem], envelope: bytes,
                    batch_id: str) -> list[DeliveryResult]:
        assert self._http is not None
        try:
            response = await fetch(
                self._http, "POST", self.settings.url, content=envelope,
                headers={"Content-Type": CONTENT_TYPE, "Idempotency-Key": batch_id})
        except httpx.TimeoutException:
            raise TargetDown(f"POST timed out after {self.settings.timeout_s:g} s") from None
        except httpx.TransportError as exc:
            raise TargetDown(f"POST failed: {type(exc).__name__}: {short(str(exc))}") from None
        status = response.status_code
        if 200 <= status < 300:
            return self._per_event(items, response)
        explained = _explain(response)
        if status == 429 or (status == 503 and "retry-after" in response.headers):
            delay = retry_after_s(response.headers.get("retry-after"), self._clock())
            return _all(items, "retry", f"the province asked to slow down ({status})", delay)
        if status >= 500:
            raise TargetDown(f"POST answered {status}{explained}")
        if status == 404:
            raise TargetDown(f"POST answered 404: is forward.{self.name}.url right?")
        if status in _PARK_STATUSES:
            return _all(items, "parked", f"the province refused the batch ({status}){explained}")
        return _all(items, "retry", f"the province answered {status}{explained}")

    def _per_event(self, items: Sequence[AttendanceItem],
                   response: httpx.Response) -> list[DeliveryResult]:
        """2xx: ``results`` per event, or all accepted when there is no ``results``."""
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = {}
        answers = body.get("results") if isinstance(body, dict) else None
        if answers is None:
            return _all(items, "delivered", "")
        if not isinstance(answers, list):
            return _all(items, "retry", "the province's answer has no usable results")
        by_key: dict[str, Mapping[str, Any]] = {}
        for answer in answers:
            if isinstance(answer, dict) and isinstance(answer.get("idempotency_key"), str):
                by_key[answer["idempotency_key"]] = answer
        results = []
        for item in items:
            answer = by_key.get(item.idempotency_key)
            status = answer.get("status") if answer is not None else None
            if status in ("accepted", "duplicate"):
                results.append(DeliveryResult(
                    item.item_id, "delivered",
                    reason="" if status == "accepted" else "the province had it already"))
            elif status == "rejected":
                why = answer.get("reason") if answer is not None else None
                text = f": {short(why, _REASON_MAX)}" if isinstance(why, str) and why else ""
                results.append(DeliveryResult(item.item_id, "parked",
                                              reason=f"the province rejected the event{text}"))
            else:
                results.append(DeliveryResult(item.item_id, "retry", reason=(
                    "the province's answer did not settle this event")))
        return results

    # --- MQTT ----------------------------------------------------------------------------------

    async def _publish(self, items: Sequence[AttendanceItem], envelope: bytes,
                       batch_id: str) -> list[DeliveryResult]:
        assert self._bridge is not None
        code = await self._bridge.publish(envelope)
        value = code.value
        if value == _NO_MATCHING_SUBSCRIBERS:
            raise TargetDown(f"the provincial broker has no subscriber for "
                             f"{self.settings.topic} and dropped the batch")
        if value < 0x80:
            return _all(items, "delivered", "")
        if value in _MQTT_PARK_CODES:
            return _all(items, "parked", f"the provincial broker refused the batch "
                                         f"({_MQTT_PARK_CODES[value]}, 0x{value:02x})")
        return _all(items, "retry", f"the provincial broker refused the batch ({code}, "
                                    f"0x{value:02x})")


def _all(items: Sequence[AttendanceItem], outcome: Literal["delivered", "retry", "parked"],
         reason: str, retry_after: float | None = None) -> list[DeliveryResult]:
    return [DeliveryResult(item.item_id, outcome, reason=reason, retry_after_s=retry_after)
            for item in items]


def _explain(response: httpx.Response) -> str:
    """': error: message' from the receiver's JSON error body; '' if there is none."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    parts = [str(body[k]) for k in ("error", "message") if isinstance(body.get(k), str)]
    return f": {short(': '.join(parts), _REASON_MAX)}" if parts else ""


class _MqttBridge:
    """One MQTT 5 session with the provincial broker: paho's network thread, asyncio waiters.

    Clean start off and a session expiry interval, so the broker keeps the session (in-flight
    QoS 1 messages) across reconnects; paho reconnects by itself with a capped delay. A publish
    is only attempted while connected — a batch is never queued inside paho while the broker is
    away, the outbox keeps it — and waits for its PUBACK's reason code.
    """

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._connected: asyncio.Event | None = None
        self._refused: str | None = None
        self._waiting: dict[int, asyncio.Future[ReasonCode]] = {}
        self._start_lock = asyncio.Lock()

    async def _start(self) -> None:
        async with self._start_lock:
            if self._client is not None:
                return
            self._loop = asyncio.get_running_loop()
            self._connected = asyncio.Event()
            s = self.settings
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id,
                                 protocol=mqtt.MQTTv5)
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_publish = self._on_publish
            client.reconnect_delay_set(1, 30)
            client.max_queued_messages_set(1000)
            if s.username is not None:
                client.username_pw_set(s.username, s.password)
            if s.broker_tls:
                context = s.verify if isinstance(s.verify, ssl.SSLContext) \
                    else ssl.create_default_context()
                if s.verify is False:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                client.tls_set_context(context)
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = s.session_expiry_s
            try:
                client.connect_async(s.broker_host, s.broker_port, keepalive=s.keepalive_s,
                                     clean_start=False, properties=properties)
            except (OSError, ValueError) as exc:
                raise TargetDown(f"cannot connect to the provincial broker: {exc}") from None
            client.loop_start()
            self._client = client

    # paho's network thread calls these; they hand over to the event loop.
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(self._connect_result, reason)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                       properties: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._lost, reason)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._settle, mid, reason)

    def _connect_result(self, reason: ReasonCode) -> None:
        assert self._connected is not None
        if reason.is_failure:
            self._refused = str(reason)
            self._connected.clear()
            log.warning("provincial broker refused the connection",
                        extra={"reason": str(reason)})
        else:
            self._refused = None
            self._connected.set()
            log.info("connected to the provincial broker",
                     extra={"host": self.settings.broker_host})

    def _lost(self, reason: ReasonCode) -> None:
        assert self._connected is not None
        if self._connected.is_set():
            log.warning("provincial broker connection lost", extra={"reason": str(reason)})
        self._connected.clear()

    def _settle(self, mid: int, reason: ReasonCode) -> None:
        future = self._waiting.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reason)

    async def publish(self, payload: bytes) -> ReasonCode:
        await self._start()
        assert self._client is not None and self._connected is not None
        timeout = self.settings.timeout_s
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            why = f" (refused: {self._refused})" if self._refused else ""
            raise TargetDown(f"not connected to the provincial broker within {timeout:g} s"
                             f"{why}") from None
        info = self._client.publish(self.settings.topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise TargetDown(f"publish failed: {mqtt.error_string(info.rc)}")
        assert self._loop is not None
        future: asyncio.Future[ReasonCode] = self._loop.create_future()
        self._waiting[info.mid] = future
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TargetDown(f"no PUBACK from the provincial broker within {timeout:g} s"
                             ) from None
        finally:
            self._waiting.pop(info.mid, None)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)

