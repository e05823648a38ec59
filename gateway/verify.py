"""Verification of what readers send, before anything else touches it (invariant 2).

Transport-neutral: MQTT and RS-485 ingest both hand payloads here with the reader id their
transport vouches for (topic or bus address).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from protocol import construct_codec
from protocol.errors import ProtocolError

# SPEC.md section 5: the ack verdict for a record that fails on its own.
_VERDICT_FOR_ERROR = {"bad_mac": "bad_mac"}


@dataclass(frozen=True)
class ScanRecord:
    """A record whose MAC verified and whose fields are valid."""

    reader_id: int
    boot: int
    seq: int
    clock_synced: bool
    tech: str
    uid: bytes
    time_s: int
    time_ms: int
    ticks_ms: int
    raw: bytes


@dataclass(frozen=True)
class RejectedRecord:
    """A record of an authenticated batch that failed on its own; acked with ``verdict``."""

    seq: int
    verdict: str
    reason: str
    raw: bytes


@dataclass(frozen=True)
class VerifiedBatch:
    reader_id: int
    boot: int
    first_seq: int
    last_seq: int
    records: list[ScanRecord]
    rejected: list[RejectedRecord]


class BatchRejected(Exception):
    """A batch that cannot be trusted at all (SPEC 4.1 steps 1-5, or an unknown reader)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def verify_batch(reader_id: int, payload: bytes, keys: Mapping[int, bytes]) -> VerifiedBatch:
    """Verify a batch the transport attributes to ``reader_id``."""
    key = keys.get(reader_id)
    if key is None:
        raise BatchRejected("unknown_reader", f"no key for reader {reader_id}")
    try:
        header, slices = construct_codec.split_batch(payload, key)
    except ProtocolError as exc:
        raise BatchRejected(exc.code, exc.detail) from None
    if header["reader_id"] != reader_id:
        raise BatchRejected("identity_mismatch",
                            f"batch of reader {header['reader_id']} sent as reader {reader_id}")
    records: list[ScanRecord] = []
    rejected: list[RejectedRecord] = []
    for raw in slices:
        try:
            f = construct_codec.decode("record", raw, key)
        except ProtocolError as exc:
            seq = int.from_bytes(raw[10:14], "big")
            verdict = _VERDICT_FOR_ERROR.get(exc.code, "malformed")
            rejected.append(RejectedRecord(seq, verdict, str(exc), bytes(raw)))
            continue
        records.append(ScanRecord(
            reader_id=f["reader_id"], boot=f["boot"], seq=f["seq"],
            clock_synced=f["clock_synced"], tech=f["tech"], uid=f["uid"], time_s=f["time_s"],
            time_ms=f["time_ms"], ticks_ms=f["ticks_ms"], raw=bytes(raw)))
    return VerifiedBatch(header["reader_id"], header["boot"], header["first_seq"],
                         header["last_seq"], records, rejected)
