"""Both codecs against the golden vectors, on CPython and (runtime-neutral codec) on MicroPython."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from protocol import construct_codec, peer
from protocol.errors import ProtocolError
from tests.protocol.vectors import VECTORS_PATH, case_id, hexed, key, unhexed, vectors

CODECS: dict[str, tuple[Callable[..., Any], Callable[..., bytes]]] = {
    "runtime_neutral": (peer.decode, peer.encode),
    "construct": (construct_codec.decode, construct_codec.encode),
}
VALID = vectors()["valid"]
INVALID = vectors()["invalid"]
SIGNED_VALID = [c for c in VALID if c["kind"] != "frame"]


def test_vectors_cover_every_kind_and_error() -> None:
    kinds = {"record", "batch", "ack", "heartbeat", "command", "result", "frame"}
    assert {c["kind"] for c in VALID} == kinds
    assert {c["kind"] for c in INVALID} == kinds
    spec = (Path(__file__).resolve().parents[2] / "protocol" / "SPEC.md").read_text()
    errors = {c["error"] for c in INVALID}
    # every code the vectors use is specified, and every specified code but bad_topic is exercised
    for code in errors:
        assert f"| `{code}` |" in spec
    assert errors | {"bad_topic"} == {
        "truncated", "trailing_bytes", "too_large", "unsupported_version", "wrong_type", "bad_mac",
        "bad_card", "bad_flags", "bad_field", "bad_count", "bad_length", "identity_mismatch",
        "bad_sequence", "bad_framing", "bad_crc", "bad_topic",
    }


@pytest.mark.parametrize("codec_name", CODECS)
@pytest.mark.parametrize("case", VALID, ids=case_id)
def test_valid_vector_decodes_and_reencodes(codec_name: str, case: dict[str, Any]) -> None:
    decode, encode = CODECS[codec_name]
    data = bytes.fromhex(case["hex"])
    assert hexed(decode(case["kind"], data, key(case["key"]))) == case["fields"]
    assert encode(case["kind"], unhexed(case["fields"]), key(case["key"])) == data


@pytest.mark.parametrize("codec_name", CODECS)
@pytest.mark.parametrize("case", INVALID, ids=case_id)
def test_invalid_vector_is_rejected_with_its_code(codec_name: str, case: dict[str, Any]) -> None:
    decode, _ = CODECS[codec_name]
    with pytest.raises(ProtocolError) as info:
        decode(case["kind"], bytes.fromhex(case["hex"]), key(case["key"]))
    assert info.value.code == case["error"], info.value.detail


@pytest.mark.parametrize("codec_name", CODECS)
@pytest.mark.parametrize("case", SIGNED_VALID, ids=case_id)
def test_every_single_byte_change_is_rejected(codec_name: str, case: dict[str, Any]) -> None:
    decode, _ = CODECS[codec_name]
    data = bytearray.fromhex(case["hex"])
    accepted = []
    for i in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            data[i] ^= mask
            try:
                decode(case["kind"], bytes(data), key(case["key"]))
                accepted.append((i, mask))
            except ProtocolError:
                pass
            data[i] ^= mask
    assert accepted == []


@pytest.mark.parametrize("codec_name", CODECS)
def test_wrong_key_is_rejected_for_every_signed_kind(codec_name: str) -> None:
    decode, _ = CODECS[codec_name]
    for case in SIGNED_VALID:
        with pytest.raises(ProtocolError) as info:
            decode(case["kind"], bytes.fromhex(case["hex"]), key("k2"))
        assert info.value.code == "bad_mac", case["name"]


def test_runtime_neutral_codec_passes_the_vectors_on_micropython(mpvm: Any) -> None:
    script = (Path(__file__).with_name("mp_vectors.py")).read_text()
    out = mpvm.run(script, files={"vectors.json": VECTORS_PATH.read_text()})
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    records = [c for c in VALID if c["kind"] == "record"]
    assert len(results) == len(VALID) + len(INVALID) + len(records)
    failures = [r for r in results if not r["ok"]]
    assert failures == []
