"""Bytes made on one runtime by one codec decode on the other runtime with the other codec."""

from __future__ import annotations

import json
from typing import Any

from protocol import construct_codec
from tests.protocol.vectors import hexed, unhexed

KEY = bytes(range(7, 39))
RECORD_CASES: list[dict[str, Any]] = [
    {"reader_id": 1, "boot": 1, "seq": 1, "clock_synced": True, "tech": "iso14443a",
     "uid": "04a1b2c3", "time_s": 1_795_420_800, "time_ms": 1, "ticks_ms": 0},
    {"reader_id": 4_294_967_294, "boot": 4_294_967_295, "seq": 4_294_967_295,
     "clock_synced": False, "tech": "iso14443a", "uid": "0455667788990011aabb",
     "time_s": 946_684_800, "time_ms": 999, "ticks_ms": 4_294_967_295},
    {"reader_id": 9, "boot": 2, "seq": 77, "clock_synced": True, "tech": "em4100",
     "uid": "ff00000001", "time_s": 2_000_000_000, "time_ms": 500, "ticks_ms": 86_400_000},
    {"reader_id": 9, "boot": 2, "seq": 78, "clock_synced": True, "tech": "wiegand26",
     "uid": "010203", "time_s": 2_000_000_001, "time_ms": 0, "ticks_ms": 86_401_000},
    {"reader_id": 9, "boot": 2, "seq": 80, "clock_synced": True, "tech": "wiegand34",
     "uid": "00000001", "time_s": 2_000_000_002, "time_ms": 7, "ticks_ms": 86_402_000},
    {"reader_id": 9, "boot": 2, "seq": 81, "clock_synced": True, "tech": "wiegand37",
     "uid": "07ffffffff", "time_s": 2_000_000_003, "time_ms": 8, "ticks_ms": 86_403_000},
]

MAKE_ON_MICROPYTHON = """
import json
from binascii import hexlify, unhexlify
from protocol import card, codec
from protocol.hmac256 import HmacSha256

cases = json.loads(CASES)
signer = HmacSha256(unhexlify(KEY))
buf = bytearray(codec.RECORD_MAX_LEN)
writer = codec.BatchWriter()
out = []
for c in cases:
    n = codec.record_into(buf, signer, c["reader_id"], c["boot"], c["seq"],
                          codec.FLAG_CLOCK_SYNCED if c["clock_synced"] else 0,
                          card.tech_code(c["tech"]), unhexlify(c["uid"]), c["time_s"],
                          c["time_ms"], c["ticks_ms"])
    out.append(hexlify(buf[:n]).decode())
    if c["reader_id"] == 9:
        writer.add(buf[:n])
print(json.dumps({"records": out,
                  "batch": hexlify(writer.finish(signer, 9, 2)).decode()}))
"""

DECODE_ON_MICROPYTHON = """
import json
from binascii import hexlify, unhexlify
from protocol import peer

def hexed(v):
    if isinstance(v, (bytes, bytearray, memoryview)):
        return hexlify(bytes(v)).decode()
    if isinstance(v, dict):
        return {k: hexed(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [hexed(x) for x in v]
    return v

key = unhexlify(KEY)
for kind, data in json.loads(MESSAGES):
    print(json.dumps(hexed(peer.decode(kind, unhexlify(data), key))))
"""


def _without_mac(fields: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in fields.items() if k != "mac"}
    if "records" in out:
        out["records"] = [_without_mac(r) for r in out["records"]]
    return out


def _prelude(**values: str) -> str:
    return "".join(f"{name} = {json.dumps(value)}\n" for name, value in values.items())


def test_micropython_made_records_decode_with_construct_on_cpython(mpvm: Any) -> None:
    code = _prelude(CASES=json.dumps(RECORD_CASES), KEY=KEY.hex()) + MAKE_ON_MICROPYTHON
    made = json.loads(mpvm.run(code).strip().splitlines()[-1])
    decoded = [hexed(construct_codec.decode("record", bytes.fromhex(h), KEY))
               for h in made["records"]]
    assert [_without_mac(d) for d in decoded] == RECORD_CASES
    batch = hexed(construct_codec.decode("batch", bytes.fromhex(made["batch"]), KEY))
    assert _without_mac(batch)["records"] == [c for c in RECORD_CASES if c["reader_id"] == 9]
    assert (batch["first_seq"], batch["last_seq"]) == (77, 81)


def test_construct_made_messages_decode_on_micropython(mpvm: Any) -> None:
    nines = [c for c in RECORD_CASES if c["reader_id"] == 9]
    messages: list[tuple[str, dict[str, Any]]] = [
        *[("record", c) for c in RECORD_CASES],
        ("batch", {"reader_id": 9, "boot": 2, "first_seq": 77, "last_seq": 81, "records": nines}),
        ("ack", {"reader_id": 9, "boot": 2, "first_seq": 77, "last_seq": 81,
                 "verdicts": [{"seq": 78, "verdict": "malformed"}]}),
        ("command", {"reader_id": 9, "cmd_seq": 12, "issued_s": 1_795_420_800,
                     "opcode": "set_config", "args": {"debounce_ms": 3000, "volume": 30}}),
        ("result", {"reader_id": 9, "cmd_seq": 12, "status": "bad_args"}),
    ]
    encoded = [(kind, construct_codec.encode(kind, unhexed(fields), KEY).hex())
               for kind, fields in messages]
    code = _prelude(MESSAGES=json.dumps(encoded), KEY=KEY.hex()) + DECODE_ON_MICROPYTHON
    lines = mpvm.run(code).strip().splitlines()
    assert [_without_mac(json.loads(line)) for line in lines] == [f for _, f in messages]
