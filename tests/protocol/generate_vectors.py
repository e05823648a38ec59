"""Write vectors.json: golden valid and invalid cases for protocol v1 (SPEC.md).

Bytes are packed here with ``struct`` and ``hmac`` directly, sharing no code with either codec, so
the vectors check the codecs instead of echoing them. Run with CPython from the repository root:
``python tests/protocol/generate_vectors.py``; review the diff of protocol/vectors/vectors.json
before committing it.
"""

import hashlib
import hmac
import json
import struct
from pathlib import Path
from typing import Any

KEYS = {
    "k1": hashlib.sha256(b"attendance protocol v1 vector key 1").digest(),
    "k2": hashlib.sha256(b"attendance protocol v1 vector key 2").digest(),
}
TECH = {"em4100": 1, "iso14443a": 2, "wiegand26": 3, "wiegand34": 4, "wiegand37": 5}
VERDICT = {"bad_mac": 1, "malformed": 2, "revoked_key": 3, "identity_conflict": 4}
STATE = {"online": 0, "offline": 1, "fault": 2}
LINK = {"none": 0, "wifi": 1, "ethernet": 2, "rs485": 3}
FAULTS = ["reader_chip", "flash", "queue_full"]
OPCODE = {"set_time": 1, "set_config": 2, "request_heartbeat": 3, "reboot": 4}
CONFIG_KEY = {
    "debounce_ms": (1, ">H"),
    "volume": (2, ">B"),
    "heartbeat_s": (3, ">H"),
    "batch_max_records": (4, ">B"),
}
STATUS = {"ok": 0, "unknown_opcode": 1, "bad_args": 2, "stale": 3, "failed": 4}
FTYPE = {"poll": 1, "data": 2, "idle": 3, "nack": 4}

valid: list[dict[str, Any]] = []
invalid: list[dict[str, Any]] = []


def mac(body: bytes, key: str = "k1") -> bytes:
    return hmac.new(KEYS[key], body, hashlib.sha256).digest()[:16]


def signed(body: bytes, key: str = "k1") -> bytes:
    return body + mac(body, key)


def hexed(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: hexed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [hexed(v) for v in value]
    return value


def add_valid(name: str, kind: str, data: bytes, fields: dict[str, Any], key: str | None = "k1"):
    valid.append(
        {"name": name, "kind": kind, "key": key, "hex": data.hex(), "fields": hexed(fields)}
    )


def add_invalid(name: str, kind: str, data: bytes, error: str, key: str | None = "k1") -> None:
    invalid.append({"name": name, "kind": kind, "key": key, "hex": data.hex(), "error": error})


# --- scan record -----------------------------------------------------------------------------


def record_body(
    reader_id: int,
    boot: int,
    seq: int,
    flags: int,
    tech: int,
    uid: bytes,
    time_s: int,
    time_ms: int,
    ticks_ms: int,
    version: int = 1,
    rtype: int = 1,
) -> bytes:
    return (
        struct.pack(">BBIIIBBB", version, rtype, reader_id, boot, seq, flags, tech, len(uid))
        + uid
        + struct.pack(">IHI", time_s, time_ms, ticks_ms)
    )


def record(fields: dict[str, Any], key: str = "k1") -> bytes:
    body = record_body(
        fields["reader_id"],
        fields["boot"],
        fields["seq"],
        1 if fields["clock_synced"] else 0,
        TECH[fields["tech"]],
        fields["uid"],
        fields["time_s"],
        fields["time_ms"],
        fields["ticks_ms"],
    )
    return signed(body, key)


def record_fields(
    reader_id: int = 17,
    boot: int = 3,
    seq: int = 1,
    clock_synced: bool = True,
    tech: str = "iso14443a",
    uid: bytes = bytes.fromhex("04a1b2c3"),
    time_s: int = 1_795_420_800,
    time_ms: int = 250,
    ticks_ms: int = 61_250,
) -> dict:
    return {
        "reader_id": reader_id,
        "boot": boot,
        "seq": seq,
        "clock_synced": clock_synced,
        "tech": tech,
        "uid": uid,
        "time_s": time_s,
        "time_ms": time_ms,
        "ticks_ms": ticks_ms,
    }


def with_mac(fields: dict[str, Any], data: bytes) -> dict[str, Any]:
    return {**fields, "mac": data[-16:]}


RECORDS = {
    "record_iso14443a_4": record_fields(),
    "record_iso14443a_7": record_fields(seq=2, uid=bytes.fromhex("04224be2a13c80")),
    "record_iso14443a_10": record_fields(seq=3, uid=bytes.fromhex("0455667788990011aabb")),
    "record_em4100": record_fields(seq=4, tech="em4100", uid=bytes.fromhex("0f002c8a91")),
    "record_em4100_unsynced": record_fields(
        boot=4,
        seq=1,
        clock_synced=False,
        tech="em4100",
        uid=bytes.fromhex("1a00f3c2b7"),
        time_s=946_684_812,
        time_ms=0,
        ticks_ms=12_004,
    ),
    "record_wiegand26": record_fields(seq=5, tech="wiegand26", uid=bytes.fromhex("7b3039")),
    "record_wiegand34": record_fields(seq=6, tech="wiegand34", uid=bytes.fromhex("04d23039")),
    "record_wiegand37": record_fields(seq=7, tech="wiegand37", uid=bytes.fromhex("0709a4063f")),
    "record_limits": record_fields(
        reader_id=0xFFFFFFFE,
        boot=0xFFFFFFFF,
        seq=0xFFFFFFFF,
        time_s=0xFFFFFFFF,
        time_ms=999,
        ticks_ms=0xFFFFFFFF,
    ),
}
for name, fields in RECORDS.items():
    data = record(fields)
    add_valid(name, "record", data, with_mac(fields, data))

good = record(RECORDS["record_iso14443a_4"])
add_invalid("record_empty", "record", b"", "truncated")
add_invalid("record_one_byte", "record", good[:1], "truncated")
add_invalid("record_version_0", "record", bytes([0]) + good[1:], "unsupported_version")
add_invalid("record_version_2", "record", bytes([2]) + good[1:], "unsupported_version")
add_invalid("record_type_batch", "record", good[:1] + bytes([2]) + good[2:], "wrong_type")
add_invalid("record_cut_before_uid_len", "record", good[:16], "truncated")
add_invalid("record_cut_in_mac", "record", good[:-1], "truncated")
add_invalid("record_trailing_byte", "record", good + b"\x00", "trailing_bytes")
add_invalid(
    "record_uid_len_11",
    "record",
    signed(record_body(17, 3, 1, 1, 2, bytes(11), 1_795_420_800, 0, 0)),
    "bad_card",
)
add_invalid("record_mac_flipped", "record", good[:-1] + bytes([good[-1] ^ 0x01]), "bad_mac")
add_invalid(
    "record_uid_altered", "record", good[:17] + bytes([good[17] ^ 0x80]) + good[18:], "bad_mac"
)
add_invalid("record_wrong_key", "record", record(RECORDS["record_iso14443a_4"], "k2"), "bad_mac")
add_invalid(
    "record_unknown_tech",
    "record",
    signed(record_body(17, 3, 1, 1, 6, bytes(5), 1_795_420_800, 0, 0)),
    "bad_card",
)
add_invalid(
    "record_tech_zero",
    "record",
    signed(record_body(17, 3, 1, 1, 0, bytes(4), 1_795_420_800, 0, 0)),
    "bad_card",
)
add_invalid(
    "record_em4100_uid_len_4",
    "record",
    signed(record_body(17, 3, 1, 1, 1, bytes(4), 1_795_420_800, 0, 0)),
    "bad_card",
)
add_invalid(
    "record_iso14443a_uid_len_5",
    "record",
    signed(record_body(17, 3, 1, 1, 2, bytes(5), 1_795_420_800, 0, 0)),
    "bad_card",
)
add_invalid(
    "record_wiegand26_uid_len_4",
    "record",
    signed(record_body(17, 3, 1, 1, 3, bytes(4), 1_795_420_800, 0, 0)),
    "bad_card",
)
add_invalid(
    "record_wiegand37_padding_set",
    "record",
    signed(record_body(17, 3, 1, 1, 5, bytes.fromhex("0809a4063f"), 1_795_420_800, 0, 0)),
    "bad_card",
)
add_invalid(
    "record_reserved_flag",
    "record",
    signed(record_body(17, 3, 1, 3, 2, bytes(4), 1_795_420_800, 0, 0)),
    "bad_flags",
)
add_invalid(
    "record_time_ms_1000",
    "record",
    signed(record_body(17, 3, 1, 1, 2, bytes(4), 1_795_420_800, 1000, 0)),
    "bad_field",
)
add_invalid(
    "record_reader_id_0",
    "record",
    signed(record_body(0, 3, 1, 1, 2, bytes(4), 1_795_420_800, 0, 0)),
    "bad_field",
)
add_invalid(
    "record_reader_id_reserved",
    "record",
    signed(record_body(0xFFFFFFFF, 3, 1, 1, 2, bytes(4), 1_795_420_800, 0, 0)),
    "bad_field",
)
add_invalid(
    "record_boot_0",
    "record",
    signed(record_body(17, 0, 1, 1, 2, bytes(4), 1_795_420_800, 0, 0)),
    "bad_field",
)
add_invalid(
    "record_seq_0",
    "record",
    signed(record_body(17, 3, 0, 1, 2, bytes(4), 1_795_420_800, 0, 0)),
    "bad_field",
)


# --- batch -----------------------------------------------------------------------------------


def batch_body(
    reader_id: int,
    boot: int,
    first: int,
    last: int,
    recs: list[bytes],
    count: int | None = None,
    version: int = 1,
    btype: int = 2,
) -> bytes:
    n = len(recs) if count is None else count
    out = struct.pack(">BBIIIIB", version, btype, reader_id, boot, first, last, n)
    for r in recs:
        out += bytes([len(r)]) + r
    return out


def batch(reader_id: int, boot: int, recs: list[dict[str, Any]], key: str = "k1") -> bytes:
    raw = [record(r, key) for r in recs]
    return signed(batch_body(reader_id, boot, recs[0]["seq"], recs[-1]["seq"], raw), key)


def batch_fields(reader_id: int, boot: int, recs: list[dict[str, Any]], data: bytes) -> dict:
    return {
        "reader_id": reader_id,
        "boot": boot,
        "first_seq": recs[0]["seq"],
        "last_seq": recs[-1]["seq"],
        "records": [with_mac(r, record(r)) for r in recs],
        "mac": data[-16:],
    }


one = [record_fields(seq=9)]
mixed = [
    record_fields(seq=10),
    record_fields(seq=11, tech="em4100", uid=bytes.fromhex("0f002c8a91")),
    record_fields(seq=14, clock_synced=False, tech="wiegand26", uid=bytes.fromhex("7b3039")),
]
full = [
    record_fields(
        seq=100 + i,
        tech="iso14443a",
        uid=bytes([4, i, 0x2B, 0xE2, 0xA1, 0x3C, 0x80, i, 0x10, 0x20]),
        ticks_ms=5_000_000 + 37 * i,
    )
    for i in range(64)
]
for name, recs in (("batch_one", one), ("batch_mixed_with_gap", mixed), ("batch_64_max", full)):
    data = batch(17, 3, recs)
    assert len(data) <= 4096
    add_valid(name, "batch", data, batch_fields(17, 3, recs, data))

good_batch = batch(17, 3, mixed)
r10, r11, r14 = (record(r) for r in mixed)
add_invalid("batch_empty", "batch", b"", "truncated")
add_invalid("batch_version_3", "batch", bytes([3]) + good_batch[1:], "unsupported_version")
add_invalid("batch_given_a_record", "batch", record(mixed[0]), "wrong_type")
add_invalid("batch_oversize", "batch", bytes([1, 2]) + bytes(4095), "too_large")
add_invalid("batch_header_cut", "batch", good_batch[:18], "truncated")
add_invalid("batch_count_0", "batch", signed(batch_body(17, 3, 10, 14, [], count=0)), "bad_count")
add_invalid(
    "batch_count_65", "batch", signed(batch_body(17, 3, 10, 14, [r10], count=65)), "bad_count"
)
add_invalid(
    "batch_rec_len_45",
    "batch",
    signed(batch_body(17, 3, 10, 10, [])[:-1] + bytes([1, 45]) + r10[:45]),
    "bad_length",
)
add_invalid(
    "batch_rec_len_54",
    "batch",
    signed(batch_body(17, 3, 10, 10, [], count=1) + bytes([54]) + r10 + bytes(7)),
    "bad_length",
)
add_invalid(
    "batch_record_cut",
    "batch",
    batch_body(17, 3, 10, 10, [], count=1) + bytes([47]) + r10[:20],
    "truncated",
)
add_invalid(
    "batch_missing_record",
    "batch",
    signed(batch_body(17, 3, 10, 14, [r10, r11, r14], count=3))[: -16 - len(r14) - 1],
    "truncated",
)
add_invalid("batch_mac_cut", "batch", good_batch[:-6], "truncated")
add_invalid("batch_trailing_byte", "batch", good_batch + b"\x00", "trailing_bytes")
add_invalid(
    "batch_mac_flipped",
    "batch",
    good_batch[:-16] + bytes([good_batch[-16] ^ 0x40]) + good_batch[-15:],
    "bad_mac",
)
add_invalid(
    "batch_header_altered",
    "batch",
    good_batch[:13] + bytes([good_batch[13] ^ 0x01]) + good_batch[14:],
    "bad_mac",
)
add_invalid("batch_wrong_key", "batch", batch(17, 3, mixed, "k2"), "bad_mac")
other_reader = record(record_fields(reader_id=18, seq=11))
add_invalid(
    "batch_record_of_other_reader",
    "batch",
    signed(batch_body(17, 3, 10, 11, [r10, other_reader])),
    "identity_mismatch",
)
other_boot = record(record_fields(boot=2, seq=11))
add_invalid(
    "batch_record_of_other_boot",
    "batch",
    signed(batch_body(17, 3, 10, 11, [r10, other_boot])),
    "identity_mismatch",
)
add_invalid(
    "batch_identity_checked_before_sequence",
    "batch",
    signed(batch_body(17, 3, 11, 11, [r11, r10, other_reader])),
    "identity_mismatch",
)
add_invalid(
    "batch_seq_descending", "batch", signed(batch_body(17, 3, 11, 10, [r11, r10])), "bad_sequence"
)
add_invalid(
    "batch_seq_repeated", "batch", signed(batch_body(17, 3, 10, 10, [r10, r10])), "bad_sequence"
)
add_invalid(
    "batch_first_seq_wrong",
    "batch",
    signed(batch_body(17, 3, 9, 14, [r10, r11, r14])),
    "bad_sequence",
)
add_invalid(
    "batch_last_seq_wrong",
    "batch",
    signed(batch_body(17, 3, 10, 15, [r10, r11, r14])),
    "bad_sequence",
)
add_invalid(
    "batch_inner_record_wrong_key",
    "batch",
    signed(batch_body(17, 3, 10, 11, [r10, record(mixed[1], "k2")])),
    "bad_mac",
)
bad_card_rec = signed(record_body(17, 3, 11, 1, 1, bytes(4), 1_795_420_800, 0, 0))
add_invalid(
    "batch_inner_record_bad_card",
    "batch",
    signed(batch_body(17, 3, 10, 11, [r10, bad_card_rec])),
    "bad_card",
)
long_uid = record(record_fields(seq=11, uid=bytes.fromhex("04224be2a13c80")))
add_invalid(
    "batch_rec_len_shorter_than_record",
    "batch",
    signed(
        batch_body(17, 3, 10, 11, [], count=2)
        + bytes([len(r10)])
        + r10
        + bytes([47])
        + long_uid[:47]
    ),
    "truncated",
)


# --- ack -------------------------------------------------------------------------------------


def ack_body(
    reader_id: int,
    boot: int,
    first: int,
    last: int,
    verdicts: list[tuple[int, int]],
    count: int | None = None,
) -> bytes:
    n = len(verdicts) if count is None else count
    out = struct.pack(">BBIIIIB", 1, 3, reader_id, boot, first, last, n)
    for seq, code in verdicts:
        out += struct.pack(">IB", seq, code)
    return out


for name, verdicts in (
    ("ack_plain", []),
    (
        "ack_with_verdicts",
        [(11, VERDICT["bad_mac"]), (13, VERDICT["malformed"]), (14, VERDICT["identity_conflict"])],
    ),
):
    data = signed(ack_body(17, 3, 10, 14, verdicts))
    names = {v: k for k, v in VERDICT.items()}
    add_valid(
        name,
        "ack",
        data,
        {
            "reader_id": 17,
            "boot": 3,
            "first_seq": 10,
            "last_seq": 14,
            "verdicts": [{"seq": s, "verdict": names[c]} for s, c in verdicts],
            "mac": data[-16:],
        },
    )
data = signed(ack_body(17, 3, 7, 7, [(7, VERDICT["revoked_key"])]))
add_valid(
    "ack_single_revoked",
    "ack",
    data,
    {
        "reader_id": 17,
        "boot": 3,
        "first_seq": 7,
        "last_seq": 7,
        "verdicts": [{"seq": 7, "verdict": "revoked_key"}],
        "mac": data[-16:],
    },
)
good_ack = signed(ack_body(17, 3, 10, 14, [(11, 1)]))
add_invalid("ack_cut", "ack", good_ack[:-1], "truncated")
add_invalid("ack_trailing", "ack", good_ack + b"\x01", "trailing_bytes")
add_invalid("ack_wrong_type", "ack", good_ack[:1] + b"\x05" + good_ack[2:], "wrong_type")
add_invalid("ack_wrong_key", "ack", signed(ack_body(17, 3, 10, 14, [(11, 1)]), "k2"), "bad_mac")
add_invalid(
    "ack_65_verdicts",
    "ack",
    signed(ack_body(17, 3, 1, 65, [(i + 1, 1) for i in range(65)])),
    "bad_count",
)
add_invalid("ack_unknown_verdict", "ack", signed(ack_body(17, 3, 10, 14, [(11, 5)])), "bad_field")
add_invalid(
    "ack_verdict_outside_range", "ack", signed(ack_body(17, 3, 10, 14, [(15, 1)])), "bad_sequence"
)
add_invalid(
    "ack_verdicts_not_ascending",
    "ack",
    signed(ack_body(17, 3, 10, 14, [(12, 1), (11, 1)])),
    "bad_sequence",
)
add_invalid("ack_range_reversed", "ack", signed(ack_body(17, 3, 14, 10, [])), "bad_sequence")
add_invalid("ack_boot_0", "ack", signed(ack_body(17, 0, 10, 14, [])), "bad_field")
add_invalid("ack_first_seq_0", "ack", signed(ack_body(17, 3, 0, 14, [])), "bad_field")
add_invalid("ack_reader_id_0", "ack", signed(ack_body(0, 3, 10, 14, [])), "bad_field")


# --- heartbeat -------------------------------------------------------------------------------


def heartbeat_body(
    h: dict[str, Any],
    faults_bits: int | None = None,
    flags: int | None = None,
    state: int | None = None,
    link: int | None = None,
) -> bytes:
    fbits = sum(1 << FAULTS.index(f) for f in h["faults"]) if faults_bits is None else faults_bits
    major, minor, patch = (int(p) for p in h["fw_version"].split("."))
    return struct.pack(
        ">BBIIBBBBBBbBIIIIIIII",
        1,
        4,
        h["reader_id"],
        h["boot"],
        STATE[h["state"]] if state is None else state,
        fbits,
        major,
        minor,
        patch,
        LINK[h["link"]] if link is None else link,
        h["rssi_dbm"],
        (1 if h["clock_synced"] else 0) if flags is None else flags,
        h["time_s"],
        h["uptime_s"],
        h["free_heap"],
        h["queue_depth"],
        h["oldest_unsent_age_s"],
        h["dropped"],
        h["last_ack_boot"],
        h["last_ack_seq"],
    )


HB = {
    "reader_id": 17,
    "boot": 3,
    "state": "online",
    "faults": [],
    "fw_version": "1.0.0",
    "link": "wifi",
    "rssi_dbm": -61,
    "clock_synced": True,
    "time_s": 1_795_420_860,
    "uptime_s": 3600,
    "free_heap": 98_304,
    "queue_depth": 2,
    "oldest_unsent_age_s": 4,
    "dropped": 0,
    "last_ack_boot": 3,
    "last_ack_seq": 14,
}
HEARTBEATS = {
    "heartbeat_online": HB,
    "heartbeat_last_will": {
        **HB,
        "state": "offline",
        "uptime_s": 0,
        "queue_depth": 0,
        "oldest_unsent_age_s": 0,
        "last_ack_boot": 0,
        "last_ack_seq": 0,
    },
    "heartbeat_fault_rs485": {
        **HB,
        "state": "fault",
        "faults": ["reader_chip", "queue_full"],
        "fw_version": "2.10.255",
        "link": "rs485",
        "rssi_dbm": 0,
        "clock_synced": False,
        "queue_depth": 20_000,
        "oldest_unsent_age_s": 86_400,
        "dropped": 1_234,
    },
    "heartbeat_ethernet_all_faults": {
        **HB,
        "faults": ["reader_chip", "flash", "queue_full"],
        "state": "fault",
        "link": "ethernet",
        "rssi_dbm": 0,
    },
}
for name, h in HEARTBEATS.items():
    data = signed(heartbeat_body(h))
    add_valid(name, "heartbeat", data, {**h, "mac": data[-16:]})
good_hb = signed(heartbeat_body(HB))
assert len(good_hb) == 66
add_invalid("heartbeat_cut", "heartbeat", good_hb[:65], "truncated")
add_invalid("heartbeat_trailing", "heartbeat", good_hb + b"\x00", "trailing_bytes")
add_invalid("heartbeat_version_2", "heartbeat", b"\x02" + good_hb[1:], "unsupported_version")
add_invalid(
    "heartbeat_mac_flipped",
    "heartbeat",
    good_hb[:-3] + bytes([good_hb[-3] ^ 0xFF]) + good_hb[-2:],
    "bad_mac",
)
add_invalid("heartbeat_wrong_key", "heartbeat", signed(heartbeat_body(HB), "k2"), "bad_mac")
add_invalid("heartbeat_state_3", "heartbeat", signed(heartbeat_body(HB, state=3)), "bad_field")
add_invalid("heartbeat_link_4", "heartbeat", signed(heartbeat_body(HB, link=4)), "bad_field")
add_invalid(
    "heartbeat_reserved_fault", "heartbeat", signed(heartbeat_body(HB, faults_bits=8)), "bad_flags"
)
add_invalid(
    "heartbeat_reserved_flag", "heartbeat", signed(heartbeat_body(HB, flags=0x80)), "bad_flags"
)
add_invalid(
    "heartbeat_reader_id_0",
    "heartbeat",
    signed(heartbeat_body({**HB, "reader_id": 0})),
    "bad_field",
)
add_invalid("heartbeat_boot_0", "heartbeat", signed(heartbeat_body({**HB, "boot": 0})), "bad_field")


# --- command and result ----------------------------------------------------------------------


def command_body(
    reader_id: int,
    cmd_seq: int,
    issued_s: int,
    opcode: int,
    args: bytes,
    arg_len: int | None = None,
) -> bytes:
    n = len(args) if arg_len is None else arg_len
    return struct.pack(">BBIIIBB", 1, 5, reader_id, cmd_seq, issued_s, opcode, n) + args


def config_args(values: dict[str, int]) -> bytes:
    out = b""
    for name, value in values.items():
        code, fmt = CONFIG_KEY[name]
        packed = struct.pack(fmt, value)
        out += bytes([code, len(packed)]) + packed
    return out


COMMANDS = [
    (
        "command_set_time",
        1,
        "set_time",
        struct.pack(">IH", 1_795_420_801, 500),
        {"time_s": 1_795_420_801, "time_ms": 500},
    ),
    (
        "command_set_config_all",
        2,
        "set_config",
        config_args(
            {"debounce_ms": 1500, "volume": 80, "heartbeat_s": 60, "batch_max_records": 32}
        ),
        {"debounce_ms": 1500, "volume": 80, "heartbeat_s": 60, "batch_max_records": 32},
    ),
    ("command_set_config_volume_off", 3, "set_config", config_args({"volume": 0}), {"volume": 0}),
    ("command_request_heartbeat", 4, "request_heartbeat", b"", {}),
    ("command_reboot", 0xFFFFFFFF, "reboot", b"", {}),
]
for name, cmd_seq, opcode, args, fields in COMMANDS:
    data = signed(command_body(17, cmd_seq, 1_795_420_800, OPCODE[opcode], args))
    add_valid(
        name,
        "command",
        data,
        {
            "reader_id": 17,
            "cmd_seq": cmd_seq,
            "issued_s": 1_795_420_800,
            "opcode": opcode,
            "args": fields,
            "mac": data[-16:],
        },
    )
set_time = signed(command_body(17, 1, 1_795_420_800, 1, struct.pack(">IH", 1_795_420_801, 500)))
add_invalid("command_cut", "command", set_time[:-2], "truncated")
add_invalid("command_trailing", "command", set_time + b"\x00", "trailing_bytes")
add_invalid(
    "command_wrong_key",
    "command",
    signed(command_body(17, 1, 0, 1, struct.pack(">IH", 5, 5)), "k2"),
    "bad_mac",
)
add_invalid(
    "command_arg_len_65", "command", signed(command_body(17, 1, 0, 2, bytes(65))), "bad_field"
)
add_invalid(
    "command_unknown_opcode", "command", signed(command_body(17, 1, 0, 9, b"")), "bad_field"
)
add_invalid("command_opcode_0", "command", signed(command_body(17, 1, 0, 0, b"")), "bad_field")
add_invalid(
    "command_set_time_short_args",
    "command",
    signed(command_body(17, 1, 0, 1, struct.pack(">IB", 5, 5))),
    "bad_field",
)
add_invalid(
    "command_set_time_ms_1000",
    "command",
    signed(command_body(17, 1, 0, 1, struct.pack(">IH", 5, 1000))),
    "bad_field",
)
add_invalid(
    "command_reboot_with_args", "command", signed(command_body(17, 1, 0, 4, b"\x00")), "bad_field"
)
add_invalid(
    "command_set_config_empty", "command", signed(command_body(17, 1, 0, 2, b"")), "bad_field"
)
add_invalid(
    "command_set_config_unknown_key",
    "command",
    signed(command_body(17, 1, 0, 2, bytes([9, 1, 1]))),
    "bad_field",
)
add_invalid(
    "command_set_config_keys_descending",
    "command",
    signed(command_body(17, 1, 0, 2, bytes([2, 1, 50, 1, 2, 0x05, 0xDC]))),
    "bad_field",
)
add_invalid(
    "command_set_config_value_length",
    "command",
    signed(command_body(17, 1, 0, 2, bytes([1, 1, 50]))),
    "bad_field",
)
add_invalid(
    "command_set_config_entry_cut",
    "command",
    signed(command_body(17, 1, 0, 2, bytes([1, 2, 5]))),
    "bad_field",
)
add_invalid(
    "command_set_config_volume_101",
    "command",
    signed(command_body(17, 1, 0, 2, bytes([2, 1, 101]))),
    "bad_field",
)
add_invalid(
    "command_set_config_debounce_99",
    "command",
    signed(command_body(17, 1, 0, 2, bytes([1, 2, 0, 99]))),
    "bad_field",
)
add_invalid("command_cmd_seq_0", "command", signed(command_body(17, 0, 0, 3, b"")), "bad_field")
add_invalid("command_reader_id_0", "command", signed(command_body(0, 1, 0, 3, b"")), "bad_field")


def result_body(reader_id: int, cmd_seq: int, status: int) -> bytes:
    return struct.pack(">BBIIB", 1, 6, reader_id, cmd_seq, status)


for name, status in (("result_ok", "ok"), ("result_stale", "stale"), ("result_failed", "failed")):
    data = signed(result_body(17, 2, STATUS[status]))
    add_valid(
        name, "result", data, {"reader_id": 17, "cmd_seq": 2, "status": status, "mac": data[-16:]}
    )
good_result = signed(result_body(17, 2, 0))
add_invalid("result_cut", "result", good_result[:26], "truncated")
add_invalid("result_trailing", "result", good_result + b"\x00", "trailing_bytes")
add_invalid(
    "result_wrong_type", "result", good_result[:1] + b"\x04" + good_result[2:], "wrong_type"
)
add_invalid(
    "result_bad_mac", "result", good_result[:-1] + bytes([good_result[-1] ^ 0x10]), "bad_mac"
)
add_invalid("result_status_5", "result", signed(result_body(17, 2, 5)), "bad_field")
add_invalid("result_cmd_seq_0", "result", signed(result_body(17, 0, 0)), "bad_field")


# --- serial frames ---------------------------------------------------------------------------


def crc16(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


assert crc16(b"123456789") == 0x29B1


def cobs(data: bytes) -> bytes:
    """Canonical COBS: a final run of 254 non-zero bytes ends the output (no trailing 0x01)."""
    out = bytearray()
    block = bytearray()
    for i, byte in enumerate(data):
        if byte == 0:
            out += bytes([len(block) + 1]) + block
            block.clear()
            continue
        block.append(byte)
        if len(block) == 254:
            out += b"\xff" + block
            block.clear()
            if i + 1 == len(data):
                return bytes(out)
    out += bytes([len(block) + 1]) + block
    return bytes(out)


assert cobs(b"") == b"\x01" and cobs(b"\x00") == b"\x01\x01"
assert cobs(bytes(range(1, 255))) == b"\xff" + bytes(range(1, 255))
assert cobs(bytes(range(1, 256))) == b"\xff" + bytes(range(1, 255)) + b"\x02\xff"


def frame_body(addr: int, ftype: int, fseq: int, payload: bytes) -> bytes:
    body = bytes([addr, ftype, fseq]) + payload
    return body + struct.pack(">H", crc16(body))


def frame(addr: int, ftype: int, fseq: int, payload: bytes) -> bytes:
    return b"\x00" + cobs(frame_body(addr, ftype, fseq, payload)) + b"\x00"


names = {v: k for k, v in FTYPE.items()}
zeros_then_long = bytes(3) + bytes((i % 255) + 1 for i in range(600))
FRAMES = [
    ("frame_poll_empty", 1, 1, 0, b""),
    ("frame_poll_with_ack", 1, 1, 1, good_ack),
    ("frame_data_batch", 7, 2, 255, batch(17, 3, one)),
    ("frame_idle", 247, 3, 9, b""),
    ("frame_nack", 12, 4, 200, b""),
    ("frame_data_long_runs", 3, 2, 5, zeros_then_long),
    ("frame_data_254_nonzero", 3, 2, 6, bytes(range(1, 255))),
    ("frame_data_max_payload", 3, 2, 7, bytes((i * 7) % 256 for i in range(1024))),
]
for name, addr, ftype, fseq, payload in FRAMES:
    data = frame(addr, ftype, fseq, payload)
    assert b"\x00" not in data[1:-1]
    add_valid(
        name,
        "frame",
        data,
        {"addr": addr, "ftype": names[ftype], "fseq": fseq, "payload": payload},
        key=None,
    )

good_frame = frame(1, 1, 1, good_ack)
add_invalid("frame_no_leading_delimiter", "frame", good_frame[1:], "bad_framing", key=None)
add_invalid("frame_no_trailing_delimiter", "frame", good_frame[:-1], "bad_framing", key=None)
add_invalid("frame_empty_chunk", "frame", b"\x00\x00", "bad_framing", key=None)
add_invalid(
    "frame_zero_inside",
    "frame",
    good_frame[:10] + b"\x00" + good_frame[11:],
    "bad_framing",
    key=None,
)
add_invalid("frame_cobs_overrun", "frame", b"\x00\x09\x01\x02\x03\x00", "bad_framing", key=None)
body = bytearray(frame_body(1, 1, 1, good_ack))
body[5] ^= 0x04
add_invalid("frame_bad_crc", "frame", b"\x00" + cobs(bytes(body)) + b"\x00", "bad_crc", key=None)
add_invalid(
    "frame_body_4_bytes",
    "frame",
    b"\x00" + cobs(bytes([1, 1, 1, 0])) + b"\x00",
    "truncated",
    key=None,
)
add_invalid("frame_addr_0", "frame", frame(0, 1, 1, b""), "bad_field", key=None)
add_invalid("frame_addr_248", "frame", frame(248, 1, 1, b""), "bad_field", key=None)
add_invalid("frame_unknown_ftype", "frame", frame(1, 5, 1, b""), "bad_field", key=None)
add_invalid("frame_idle_with_payload", "frame", frame(1, 3, 1, b"\x01"), "trailing_bytes", key=None)
add_invalid(
    "frame_nack_with_payload", "frame", frame(1, 4, 1, b"\x01\x02"), "trailing_bytes", key=None
)
add_invalid(
    "frame_payload_1025",
    "frame",
    frame(1, 2, 1, bytes(range(1, 256)) * 4 + b"\x01\x02\x03\x04\x05"),
    "too_large",
    key=None,
)
add_invalid("frame_payload_1025_zeros", "frame", frame(1, 2, 1, bytes(1025)), "too_large", key=None)


def main() -> None:
    names_seen = [v["name"] for v in valid + invalid]
    assert len(names_seen) == len(set(names_seen)), "vector names must be unique"
    out = {
        "spec": "protocol/SPEC.md v1",
        "keys": {k: v.hex() for k, v in KEYS.items()},
        "valid": valid,
        "invalid": invalid,
    }
    path = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "vectors.json"
    path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"{len(valid)} valid and {len(invalid)} invalid vectors written to {path}")


if __name__ == "__main__":
    main()
