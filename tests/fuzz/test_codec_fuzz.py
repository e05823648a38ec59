"""Property tests of the protocol v1 decoders on both codecs (SPEC.md sections 3-7).

Arbitrary bytes, mutated valid messages (re-signed so that mutations reach the field rules) and
generated valid messages: only ``ProtocolError`` ever escapes, both codecs decide alike with the
same code and the same fields, and encode -> decode -> encode is the identity on both.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz import fuzz_codec
from fuzz.common import KEY
from fuzz.samples import messages
from protocol import construct_codec, peer
from tests.fuzz.support import fuzz_settings

U32 = st.integers(0, 0xFFFFFFFF)
POSITIVE = st.integers(1, 0xFFFFFFFF)
READER = st.integers(1, 0xFFFFFFFE)
SAMPLES = messages()
KINDS = fuzz_codec.KINDS


@fuzz_settings(400)
@given(kind=st.sampled_from(KINDS), data=st.binary(max_size=200), resign=st.booleans())
def test_arbitrary_bytes_get_one_answer_from_both_codecs(kind: str, data: bytes,
                                                         resign: bool) -> None:
    message = fuzz_codec.resign(kind, data) if resign else data
    fuzz_codec.differential(kind, message)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid message with a few byte flips, insertions, deletions or a cut."""
    kind, message = draw(st.sampled_from(SAMPLES))
    buf = bytearray(message)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "set", "insert", "delete", "cut")))
        at = draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[at] = draw(st.sampled_from((0, 1, 2, 0x3F, 0x40, 0x41, 0x7F, 0x80, 0xFE, 0xFF)))
        elif op == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=6))
        elif op == "delete" and buf:
            del buf[at:at + draw(st.integers(1, 6))]
        elif op == "cut":
            del buf[at:]
    return kind, bytes(buf)


@fuzz_settings(500)
@given(case=mutated(), resign=st.booleans())
def test_mutated_valid_messages_get_one_answer_from_both_codecs(case: tuple[str, bytes],
                                                                resign: bool) -> None:
    kind, message = case
    fuzz_codec.differential(kind, fuzz_codec.resign(kind, message) if resign else message)


def _uid(tech: str) -> st.SearchStrategy[bytes]:
    sizes = {"em4100": [5], "iso14443a": [4, 7, 10], "wiegand26": [3], "wiegand34": [4],
             "wiegand37": [5]}[tech]
    uid = st.sampled_from(sizes).flatmap(lambda n: st.binary(min_size=n, max_size=n))
    if tech == "wiegand37":
        return uid.map(lambda b: bytes([b[0] & 0x07]) + b[1:])
    return uid


@st.composite
def record_fields(draw: st.DrawFn, reader_id: int | None = None, boot: int | None = None,
                  seq: int | None = None) -> dict[str, Any]:
    tech = draw(st.sampled_from(["em4100", "iso14443a", "wiegand26", "wiegand34", "wiegand37"]))
    return {"reader_id": draw(READER) if reader_id is None else reader_id,
            "boot": draw(POSITIVE) if boot is None else boot,
            "seq": draw(POSITIVE) if seq is None else seq, "clock_synced": draw(st.booleans()),
            "tech": tech, "uid": draw(_uid(tech)), "time_s": draw(U32),
            "time_ms": draw(st.integers(0, 999)), "ticks_ms": draw(U32)}


@st.composite
def batch_fields(draw: st.DrawFn) -> dict[str, Any]:
    reader_id, boot = draw(READER), draw(POSITIVE)
    seqs = sorted(draw(st.sets(POSITIVE, min_size=1, max_size=8)))
    records = [draw(record_fields(reader_id, boot, seq)) for seq in seqs]
    return {"reader_id": reader_id, "boot": boot, "first_seq": seqs[0], "last_seq": seqs[-1],
            "records": records}


@st.composite
def ack_fields(draw: st.DrawFn) -> dict[str, Any]:
    first = draw(POSITIVE)
    last = draw(st.integers(first, min(0xFFFFFFFF, first + 1000)))
    seqs = sorted(draw(st.sets(st.integers(first, last), max_size=min(64, last - first + 1))))
    verdicts = [{"seq": s, "verdict": draw(st.sampled_from(
        ["bad_mac", "malformed", "revoked_key", "identity_conflict"]))} for s in seqs]
    return {"reader_id": draw(READER), "boot": draw(POSITIVE), "first_seq": first,
            "last_seq": last, "verdicts": verdicts}


@st.composite
def heartbeat_fields(draw: st.DrawFn) -> dict[str, Any]:
    faults = draw(st.lists(st.sampled_from(["reader_chip", "flash", "queue_full"]), unique=True))
    order = ["reader_chip", "flash", "queue_full"]
    fields = {"reader_id": draw(READER), "boot": draw(POSITIVE),
              "state": draw(st.sampled_from(["online", "offline", "fault"])),
              "faults": sorted(faults, key=order.index),
              "fw_version": ".".join(str(draw(st.integers(0, 255))) for _ in range(3)),
              "link": draw(st.sampled_from(["none", "wifi", "ethernet", "rs485"])),
              "rssi_dbm": draw(st.integers(-128, 127)), "clock_synced": draw(st.booleans())}
    for name in ("time_s", "uptime_s", "free_heap", "queue_depth", "oldest_unsent_age_s",
                 "dropped", "last_ack_boot", "last_ack_seq"):
        fields[name] = draw(U32)
    return fields


CONFIG_RANGES = {"debounce_ms": (100, 60000), "volume": (0, 100), "heartbeat_s": (10, 3600),
                 "batch_max_records": (1, 64)}


@st.composite
def command_fields(draw: st.DrawFn) -> dict[str, Any]:
    opcode = draw(st.sampled_from(["set_time", "set_config", "request_heartbeat", "reboot"]))
    args: dict[str, int] = {}
    if opcode == "set_time":
        args = {"time_s": draw(U32), "time_ms": draw(st.integers(0, 999))}
    elif opcode == "set_config":
        names = draw(st.sets(st.sampled_from(sorted(CONFIG_RANGES)), min_size=1))
        args = {name: draw(st.integers(*CONFIG_RANGES[name])) for name in names}
    return {"reader_id": draw(READER), "cmd_seq": draw(POSITIVE), "issued_s": draw(U32),
            "opcode": opcode, "args": args}


@st.composite
def result_fields(draw: st.DrawFn) -> dict[str, Any]:
    return {"reader_id": draw(READER), "cmd_seq": draw(POSITIVE), "status": draw(
        st.sampled_from(["ok", "unknown_opcode", "bad_args", "stale", "failed"]))}


def _without_mac(fields: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in fields.items() if k != "mac"}
    if "records" in out:
        out["records"] = [_without_mac(r) for r in out["records"]]
    return out


VALID = {"record": record_fields(), "batch": batch_fields(), "ack": ack_fields(),
         "heartbeat": heartbeat_fields(), "command": command_fields(), "result": result_fields()}


@pytest.mark.parametrize("kind", KINDS)
@fuzz_settings(60)
@given(data=st.data())
def test_valid_fields_round_trip_on_both_codecs(kind: str, data: st.DataObject) -> None:
    fields = data.draw(VALID[kind])
    encoded = peer.encode(kind, fields, KEY)
    assert construct_codec.encode(kind, fields, KEY) == encoded
    for decode in (peer.decode, construct_codec.decode):
        assert _without_mac(decode(kind, encoded, KEY)) == fields
    outcome = fuzz_codec.differential(kind, encoded)  # and re-encodes to the same bytes
    assert outcome[0] == "ok"


def test_regression_batch_record_seq_0_is_left_to_the_record_decoder() -> None:
    """Found by atheris (fuzz/corpus/codec/crash-batch-record-seq-0-step-order): a batch with
    first_seq 0 whose first record has seq 0 passes SPEC 4.1 step 5 (ascending, spans
    first_seq..last_seq); the record is step 6's to refuse. protocol/peer.py started its
    ascending check from 0 and answered bad_sequence for the whole batch, construct did not."""
    records = [dict(r, seq=s) for r, s in zip(
        [r for _, r in [("", {"reader_id": 17, "boot": 3, "clock_synced": True,
                              "tech": "wiegand26", "uid": b"\x2a\x12\x34", "time_s": 5,
                              "time_ms": 0, "ticks_ms": 0})] * 2], (1, 2), strict=True)]
    encoded = bytearray(peer.encode("batch", {"reader_id": 17, "boot": 3, "first_seq": 1,
                                              "last_seq": 2, "records": records}, KEY))
    encoded[10:14] = bytes(4)  # first_seq 0
    encoded[20 + 10:20 + 14] = bytes(4)  # the first record's seq 0
    message = fuzz_codec.resign("batch", bytes(encoded))
    assert fuzz_codec.differential("batch", message) == ("error", "bad_field")
