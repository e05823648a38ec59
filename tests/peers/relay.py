"""A province's relay receiver, written from docs/forwarding.md ("Province relay") alone.

It does not import the gateway's relay module: it is a second implementation of the receiver's
procedure, so the tests check the published specification, not the code against itself.

- ``POST /relay/v1/batches``: the signed envelope. Verified step by step (envelope, format,
  canonical batch, registered key, Ed25519 signature, event fields); a refusal is all-or-nothing
  (``400 malformed``, ``401 unknown_key``/``bad_signature``, ``413 too_large``). A verified
  batch is answered per event: ``accepted``, ``duplicate`` (its ``idempotency_key`` was stored
  before) or ``rejected`` (a student listed in ``reject_students``). A batch id seen before with
  the same bytes gets the same answer again; with other bytes, 409.
- Faults (:meth:`RelayPeer.inject`): the next N requests answer a status (429/503 with
  Retry-After, 500, ...) or omit some events from the answer.

``events`` holds every stored event by idempotency key; :meth:`RelayPeer.live` folds them into
the current state per event (the newest revision, voided ones removed).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sim.peers import LoopbackServer

PATH = "/relay/v1/batches"
FORMAT = "attendance-relay-batch/1"
MAX_BYTES = 4 * 1024 * 1024
EVENT_FIELDS = {"idempotency_key", "event_key", "revision", "change", "kind", "school_date",
                "session", "at_ms", "student_id", "class_id", "gate"}


@dataclass(frozen=True)
class Fault:
    kind: Literal["status", "omit"] = "status"
    status: int = 500
    retry_after: str | None = None
    omit: int = 1  # "omit": answer for all events but the last ``omit``


@dataclass(frozen=True)
class Recorded:
    status: int
    content_type: str
    idempotency_key: str | None
    batch_id: str | None


@dataclass
class RelayPeer(LoopbackServer):
    keys: dict[tuple[str, str], Ed25519PublicKey] = field(default_factory=dict)
    reject_students: set[str] = field(default_factory=set)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # idempotency_key -> event
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._batches: dict[tuple[str, str], tuple[bytes, dict[str, Any]]] = {}
        self._faults: deque[Fault] = deque()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BYTES + 1024)
        app.router.add_post(PATH, self._receive)
        return app

    def register(self, school_id: str, public_raw: bytes) -> str:
        """File a school's public key; returns its key id (SHA-256 of the raw key, 16 hex)."""
        key_id = hashlib.sha256(public_raw).hexdigest()[:16]
        self.keys[(school_id, key_id)] = Ed25519PublicKey.from_public_bytes(public_raw)
        return key_id

    def inject(self, fault: Fault, times: int = 1) -> None:
        self._faults.extend([fault] * times)

    def live(self) -> dict[str, dict[str, Any]]:
        """event_key -> the newest revision of each event, voided events left out."""
        newest: dict[str, dict[str, Any]] = {}
        for event in self.events.values():
            kept = newest.get(event["event_key"])
            if kept is None or event["revision"] > kept["revision"]:
                newest[event["event_key"]] = event
        return {k: e for k, e in newest.items() if e["change"] != "voided"}

    # --- the receiver's procedure -----------------------------------------------------------

    async def _receive(self, request: web.Request) -> web.Response:
        data = await request.read()
        verified = self._verify(data)
        fault = self._faults.popleft() if self._faults else None
        if isinstance(verified, web.Response):
            response = verified
        elif fault is not None and fault.kind == "status":
            response = web.json_response({"error": "injected", "message": "injected"},
                                         status=fault.status)
            if fault.retry_after is not None:
                response.headers["Retry-After"] = fault.retry_after
        else:
            response = self._store(data, verified, fault)
        batch_id = verified.get("batch_id") if isinstance(verified, dict) else None
        self.requests.append(Recorded(response.status, request.content_type,
                                      request.headers.get("Idempotency-Key"), batch_id))
        return response

    def _verify(self, data: bytes) -> dict[str, Any] | web.Response:
        if len(data) > MAX_BYTES:
            return _refuse(413, "too_large", "the envelope is too large")
        try:
            envelope = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return _refuse(400, "malformed", "the envelope is not JSON")
        if not isinstance(envelope, dict) or set(envelope) != {"format", "batch", "signature"}:
            return _refuse(400, "malformed", "the envelope's fields are wrong")
        if envelope["format"] != FORMAT or not isinstance(envelope["batch"], str) \
                or not isinstance(envelope["signature"], str):
            return _refuse(400, "malformed", "unsupported format or wrong types")
        try:
            signed = envelope["batch"].encode("utf-8")
            signature = base64.b64decode(envelope["signature"], validate=True)
            batch = json.loads(signed)
        except (UnicodeEncodeError, binascii.Error, ValueError):
            return _refuse(400, "malformed", "the batch or the signature does not decode")
        if not isinstance(batch, dict) or set(batch) != {"format", "school_id", "key_id",
                                                         "batch_id", "created_ms", "events"}:
            return _refuse(400, "malformed", "the batch's fields are wrong")
        key = self.keys.get((str(batch["school_id"]), str(batch["key_id"])))
        if key is None:
            return _refuse(401, "unknown_key", "no such key is registered for the school")
        try:
            key.verify(signature, signed)
        except InvalidSignature:
            return _refuse(401, "bad_signature", "the signature does not verify")
        canonical = json.dumps(batch, sort_keys=True, separators=(",", ":"),
                               ensure_ascii=False).encode("utf-8")
        if canonical != signed or batch["format"] != FORMAT:
            return _refuse(400, "malformed", "the batch is not canonical")
        events = batch["events"]
        if not isinstance(events, list) or not all(
                isinstance(e, dict) and set(e) == EVENT_FIELDS
                and e["idempotency_key"] == f"{e['event_key']}.{e['revision']}"
                for e in events):
            return _refuse(400, "malformed", "an event's fields are wrong")
        return batch

    def _store(self, data: bytes, batch: dict[str, Any], fault: Fault | None) -> web.Response:
        seen = self._batches.get((batch["school_id"], batch["batch_id"]))
        if seen is not None:
            if seen[0] != data:
                return _refuse(409, "batch_id_reused", "this batch id came with other bytes")
            return web.json_response(seen[1])
        results = []
        for event in batch["events"]:
            key = event["idempotency_key"]
            if event["student_id"] in self.reject_students:
                results.append({"idempotency_key": key, "status": "rejected",
                                "reason": "unknown student"})
            elif key in self.events:
                results.append({"idempotency_key": key, "status": "duplicate"})
            else:
                self.events[key] = dict(event)
                results.append({"idempotency_key": key, "status": "accepted"})
        if fault is not None and fault.kind == "omit":
            results = results[:-fault.omit]
        answer = {"batch_id": batch["batch_id"], "results": results}
        self._batches[(batch["school_id"], batch["batch_id"])] = (data, answer)
        return web.json_response(answer)


def _refuse(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status)
