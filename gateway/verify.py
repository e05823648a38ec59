"""Verification of what readers send, before anything else touches it (invariant 2).

Transport-neutral: MQTT and RS-485 ingest both hand payloads here with the reader id their
transport vouches for (topic or bus address). Keys come from a :class:`gateway.types.KeyRing`:
the reader's active key is tried first, then its retired and revoked keys, so a record a reader
signed before a key rotation still verifies (retired), and one that verifies only with a revoked
key is named as such instead of "bad MAC".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.types import KeyRing, ReaderKey
from protocol import construct_codec
from protocol.errors import ProtocolError

# The codes of SPEC.md section 11 that a record can fail with on its own, mapped to the ack
# verdict of section 5 (anything else a record fails with is "malformed").
_VERDICT_FOR_ERROR = {"bad_mac": "bad_mac", "revoked_key": "revoked_key"}


@dataclass(frozen=True)
class ScanRecord:
    """A record whose MAC verified (with key ``key_id``) and whose fields are valid."""

    reader_id: int
    boot: int
    seq: int
    clock_synced: bool
    tech: str
    uid: bytes
    time_s: int
    time_ms: int
    ticks_ms: int
    key_id: int
    raw: bytes

    @property
    def reader_ms(self) -> int:
        return self.time_s * 1000 + self.time_ms


@dataclass(frozen=True)
class RejectedRecord:
    """A record of an authenticated batch that failed on its own; acked with ``verdict``.

    ``reason`` is the specific code (``bad_mac``, ``bad_card``, ``revoked_key``, ...).
    """

    seq: int
    verdict: str
    reason: str
    detail: str
    raw: bytes


@dataclass(frozen=True)
class VerifiedBatch:
    reader_id: int
    boot: int
    first_seq: int
    last_seq: int
    key: ReaderKey  # the key the batch itself verified with (its ack is signed with it)
    records: list[ScanRecord]
    rejected: list[RejectedRecord]


class BatchRejected(Exception):
    """A message that cannot be trusted at all (SPEC 4.1 steps 1-5, unknown or revoked reader)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _claimed_reader(payload: bytes) -> int | None:
    return int.from_bytes(payload[2:6], "big") if len(payload) >= 6 else None


def _candidates(reader_id: int, keys: KeyRing) -> list[ReaderKey]:
    candidates = list(keys.candidates(reader_id))
    if not candidates:
        raise BatchRejected("unknown_reader", f"no key for reader {reader_id}")
    return candidates


def _mismatch_or(exc: ProtocolError, reader_id: int, payload: bytes) -> BatchRejected:
    """A MAC failure on a message that claims another reader than its transport is a mismatch."""
    claimed = _claimed_reader(payload)
    if exc.code == "bad_mac" and claimed is not None and claimed != reader_id:
        return BatchRejected("identity_mismatch",
                             f"message of reader {claimed} sent as reader {reader_id}")
    return BatchRejected(exc.code, exc.detail)


def _revoked(key: ReaderKey, what: str) -> BatchRejected:
    return BatchRejected("revoked_key", f"{what} verifies only with revoked key {key.key_id}")


def verify_batch(reader_id: int, payload: bytes, keys: KeyRing) -> VerifiedBatch:
    """Verify a batch the transport attributes to ``reader_id`` (SPEC.md 4.1, all six steps)."""
    candidates = _candidates(reader_id, keys)
    key = candidates[0]
    try:
        header, slices = construct_codec.split_batch(payload, key.key)
    except ProtocolError as exc:
        # Steps 1-3 are key-independent: only a MAC failure is worth trying the other keys for.
        other = next((k for k in candidates[1:] if exc.code == "bad_mac"
                      and construct_codec.verify_mac(payload, k.key)), None)
        if other is None:
            raise _mismatch_or(exc, reader_id, payload) from None
        key = other
        try:
            header, slices = construct_codec.split_batch(payload, key.key)
        except ProtocolError as again:
            raise BatchRejected(again.code, again.detail) from None
    if key.state == "revoked":
        raise _revoked(key, "batch")
    if header["reader_id"] != reader_id:
        raise BatchRejected("identity_mismatch",
                            f"batch of reader {header['reader_id']} sent as reader {reader_id}")
    records: list[ScanRecord] = []
    rejected: list[RejectedRecord] = []
    for raw in slices:
        try:
            fields, record_key = _decode_record(raw, key, candidates)
        except ProtocolError as exc:
            seq = int.from_bytes(raw[10:14], "big")  # authenticated by the batch MAC
            verdict = _VERDICT_FOR_ERROR.get(exc.code, "malformed")
            rejected.append(RejectedRecord(seq, verdict, exc.code, exc.detail, bytes(raw)))
            continue
        records.append(ScanRecord(
            reader_id=fields["reader_id"], boot=fields["boot"], seq=fields["seq"],
            clock_synced=fields["clock_synced"], tech=fields["tech"], uid=fields["uid"],
            time_s=fields["time_s"], time_ms=fields["time_ms"], ticks_ms=fields["ticks_ms"],
            key_id=record_key.key_id, raw=bytes(raw)))
    return VerifiedBatch(header["reader_id"], header["boot"], header["first_seq"],
                         header["last_seq"], key, records, rejected)


def _decode_record(raw: bytes, key: ReaderKey, candidates: list[ReaderKey],
                   ) -> tuple[dict[str, Any], ReaderKey]:
    """Step 6 for one record: the batch's key first (the usual case), then the reader's others."""
    try:
        return construct_codec.decode("record", raw, key.key), key
    except ProtocolError as exc:
        if exc.code != "bad_mac":
            raise
    for other in candidates:
        if other is not key and construct_codec.verify_mac(raw, other.key):
            if other.state == "revoked":
                raise ProtocolError("revoked_key",
                                    f"record verifies only with revoked key {other.key_id}")
            return construct_codec.decode("record", raw, other.key), other
    raise ProtocolError("bad_mac", "record MAC does not verify with any key of the reader")


def verify_message(kind: str, reader_id: int, payload: bytes, keys: KeyRing,
                   ) -> tuple[dict[str, Any], ReaderKey]:
    """Verify a ``heartbeat`` or ``result`` from ``reader_id``; its fields and the key used."""
    candidates = _candidates(reader_id, keys)
    try:
        fields = construct_codec.decode(kind, payload, candidates[0].key)
        key = candidates[0]
    except ProtocolError as exc:
        other = next((k for k in candidates[1:] if exc.code == "bad_mac"
                      and construct_codec.verify_mac(payload, k.key)), None)
        if other is None:
            raise _mismatch_or(exc, reader_id, payload) from None
        try:
            fields = construct_codec.decode(kind, payload, other.key)
        except ProtocolError as again:
            raise BatchRejected(again.code, again.detail) from None
        key = other
    if key.state == "revoked":
        raise _revoked(key, kind)
    if fields["reader_id"] != reader_id:
        raise BatchRejected("identity_mismatch",
                            f"{kind} of reader {fields['reader_id']} sent as reader {reader_id}")
    return fields, key


def claimed_identity(payload: bytes) -> tuple[int | None, int | None]:
    """``(reader_id, boot)`` as an unverified batch or heartbeat claims them (quarantine rows)."""
    if len(payload) < 10 or payload[1] not in (construct_codec.T_BATCH,
                                               construct_codec.T_HEARTBEAT):
        return _claimed_reader(payload), None
    return _claimed_reader(payload), int.from_bytes(payload[6:10], "big")


