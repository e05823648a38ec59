"""Valid inputs made by the project's own encoders: the corpus's seeds and the tests' base cases."""

from __future__ import annotations

from typing import Any

from fuzz.common import KEY
from protocol import frame, peer

UIDS = {
    "em4100": bytes.fromhex("0A1B2C3D4E"),
    "iso14443a": bytes.fromhex("04A1B2C3"),
    "wiegand26": bytes.fromhex("2A1234"),
    "wiegand34": bytes.fromhex("00FF1234"),
    "wiegand37": bytes.fromhex("07FFFF1234"),
}


def record_fields(seq: int, tech: str = "em4100", uid: bytes | None = None,
                  synced: bool = True) -> dict[str, Any]:
    return {"reader_id": 17, "boot": 3, "seq": seq, "clock_synced": synced, "tech": tech,
            "uid": UIDS[tech] if uid is None else uid, "time_s": 1_767_225_600 + seq,
            "time_ms": 250, "ticks_ms": 1000 * seq}


def messages() -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for i, tech in enumerate(UIDS):
        out.append(("record", peer.encode("record", record_fields(i + 1, tech), KEY)))
    out.append(("record", peer.encode(
        "record", record_fields(9, "iso14443a", bytes(range(1, 11)), False), KEY)))
    records = [record_fields(s, tech) for s, tech in zip((4, 5, 9), UIDS, strict=False)]
    out.append(("batch", peer.encode("batch", {"reader_id": 17, "boot": 3, "first_seq": 4,
                                               "last_seq": 9, "records": records}, KEY)))
    out.append(("batch", peer.encode("batch", {"reader_id": 17, "boot": 3, "first_seq": 1,
                                               "last_seq": 1, "records": [record_fields(1)]},
                                     KEY)))
    for verdicts in ([], [{"seq": 5, "verdict": "bad_mac"},
                          {"seq": 9, "verdict": "identity_conflict"}]):
        out.append(("ack", peer.encode("ack", {"reader_id": 17, "boot": 3, "first_seq": 4,
                                               "last_seq": 9, "verdicts": verdicts}, KEY)))
    out.append(("heartbeat", peer.encode("heartbeat", {
        "reader_id": 17, "boot": 3, "state": "fault", "faults": ["reader_chip", "queue_full"],
        "fw_version": "1.2.3", "link": "wifi", "rssi_dbm": -61, "clock_synced": True,
        "time_s": 1_767_225_600, "uptime_s": 3600, "free_heap": 40_000, "queue_depth": 12,
        "oldest_unsent_age_s": 30, "dropped": 0, "last_ack_boot": 3, "last_ack_seq": 8}, KEY)))
    for opcode, args in (("set_time", {"time_s": 1_767_225_600, "time_ms": 999}),
                         ("set_config", {"debounce_ms": 1500, "volume": 40, "heartbeat_s": 60,
                                         "batch_max_records": 64}),
                         ("set_config", {"volume": 0}),
                         ("request_heartbeat", {}), ("reboot", {})):
        out.append(("command", peer.encode("command", {
            "reader_id": 17, "cmd_seq": 7, "issued_s": 1_767_225_600, "opcode": opcode,
            "args": args}, KEY)))
    for status in ("ok", "stale"):
        out.append(("result", peer.encode("result", {"reader_id": 17, "cmd_seq": 7,
                                                     "status": status}, KEY)))
    return out


def frames() -> list[bytes]:
    """Wire frames (delimiters included) of every frame type, carrying real messages."""
    encoder = frame.FrameEncoder()
    payloads = dict(messages())
    out = [bytes(encoder.encode(5, frame.POLL, 1)),
           bytes(encoder.encode(5, frame.POLL, 2, payloads["ack"])),
           bytes(encoder.encode(247, frame.DATA, 255, payloads["batch"])),
           bytes(encoder.encode(1, frame.IDLE, 0)),
           bytes(encoder.encode(9, frame.NACK, 3)),
           bytes(encoder.encode(9, frame.DATA, 4, bytes(1024))),
           bytes(encoder.encode(9, frame.DATA, 5, bytes(range(1, 256)) * 4 + b"\x01" * 4))]
    return out
