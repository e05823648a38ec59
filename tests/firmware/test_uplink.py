"""The transport-neutral uplink and the command handler, on the real firmware stack (no broker).

Batches are stop-and-wait (the same bytes until the matching ack), live taps go first, only a
verified ack of exactly the outstanding range advances the flash queue; commands are applied
once, persisted, answered, and a forged one is not answered at all.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from firmware.app import ReaderApp
from firmware.fs import FS
from firmware.main import boot
from firmware.uplink import Uplink
from protocol import construct_codec, frame, peer
from protocol.card import ISO14443A
from sim.firmware_reader import provision
from sim.hardware import SimHardware
from tests.mpvm import MPVM

KEY = bytes(range(7, 39))
READER = 31


def _cards(n: int) -> list[bytes]:
    return [bytes([0x04, i >> 8 & 0xFF, i & 0xFF, 0x5A]) for i in range(n)]


class Reader:
    """One booted firmware stack from a provisioned directory, taps made by the real tap path."""

    def __init__(self, root: Path, **settings: Any) -> None:
        self.root = root
        if not (root / "config.json").exists():
            provision(root, READER, KEY, "thcs-1", host="127.0.0.1", port=1, password=None,
                      debounce_ms=100, **settings)
        self.hw = SimHardware(ntp=False)
        self.app: ReaderApp = boot(FS(), str(root), self.hw)
        link: Any = self.app.link
        self.up: Uplink = link.uplink
        self.now = 1_000_000

    def tap(self, n: int = 1) -> None:
        for uid in _cards(n):
            self.now += 500
            assert self.app.taps.sighting(ISO14443A, bytearray(uid), 4, self.now)

    def ack_for(self, batch: memoryview, key: bytes = KEY, **changes: Any) -> bytes:
        fields = {"reader_id": READER, "boot": int.from_bytes(batch[6:10], "big"),
                  "first_seq": int.from_bytes(batch[10:14], "big"),
                  "last_seq": int.from_bytes(batch[14:18], "big"), "verdicts": []}
        fields.update(changes)
        return peer.encode_ack(fields, key)

    def command(self, cmd_seq: int, opcode: str, args: dict[str, int] | None = None,
                key: bytes = KEY, reader_id: int = READER) -> bytes:
        return peer.encode_command({"reader_id": reader_id, "cmd_seq": cmd_seq, "issued_s": 0,
                                    "opcode": opcode, "args": args or {}}, key)

    def run_command(self, data: bytes) -> dict[str, Any] | None:
        self.up.put_command(data)
        self.up.take_command()
        if not self.up.results:
            return None
        result = peer.decode_result(self.up.results[0], KEY)
        self.up.result_sent()
        return result


def _seqs(batch: memoryview) -> list[int]:
    decoded = construct_codec.decode("batch", bytes(batch), KEY)
    return [r["seq"] for r in decoded["records"]]


def test_stop_and_wait_only_the_matching_verified_ack_advances_the_queue(tmp_path: Path) -> None:
    r = Reader(tmp_path)
    assert r.up.batch() is None
    r.tap(3)
    batch = r.up.batch()
    assert batch is not None and _seqs(batch) == [1, 2, 3]
    first = bytes(batch)
    r.tap(2)  # made while the batch is outstanding: it waits for the next batch
    again = r.up.batch()
    assert again is not None and bytes(again) == first

    for bad in (r.ack_for(batch, key=bytes(32)),           # forged: does not verify
                r.ack_for(batch, last_seq=2),              # another range
                r.ack_for(batch, boot=7),                  # another boot
                r.ack_for(batch, reader_id=READER + 1, key=KEY)):  # another reader
        r.up.put_ack(bad)
        assert not r.up.take_ack()
    assert (r.up.bad_acks, r.up.stale_acks) == (1, 3)
    assert r.app.queue.depth == 5 and r.up.outstanding

    r.up.put_ack(r.ack_for(batch))
    assert r.up.take_ack()
    assert r.app.queue.depth == 2 and r.app.last_ack == (1, 3) and not r.up.outstanding
    r.up.put_ack(r.ack_for(batch))  # the same ack replayed frees nothing more
    assert not r.up.take_ack() and r.up.stale_acks == 4
    nxt = r.up.batch()
    assert nxt is not None and _seqs(nxt) == [4, 5]


def test_live_taps_go_ahead_of_the_backlog(tmp_path: Path) -> None:
    r = Reader(tmp_path, batch_max_records=4)
    r.tap(10)  # made while offline
    r.app.queue.flush()
    r.up.link_up()
    r.tap(2)  # live
    order: list[list[int]] = []
    while (batch := r.up.batch()) is not None:
        order.append(_seqs(batch))
        r.up.put_ack(r.ack_for(batch))
        assert r.up.take_ack()
    assert order == [[11, 12], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert r.app.queue.depth == 0


def test_the_previous_boot_is_sent_after_a_reboot_and_serial_batches_fit_a_frame(
        tmp_path: Path) -> None:
    r = Reader(tmp_path)
    r.tap(30)
    r.app.queue.flush()
    r2 = Reader(tmp_path)  # a reboot: the queue still holds boot 1
    assert r2.app.boot == 2
    r2.tap(1)
    serial = Uplink(r2.app, r2.up.commands, frame.MAX_PAYLOAD)
    sent: list[tuple[int, list[int]]] = []
    while (batch := serial.batch()) is not None:
        assert len(batch) <= frame.MAX_PAYLOAD
        sent.append((int.from_bytes(batch[6:10], "big"), _seqs(batch)))
        serial.put_ack(r2.ack_for(batch))
        assert serial.take_ack()
    assert [b for b, _ in sent] == [1, 1, 2]
    assert [s for b, seqs in sent if b == 1 for s in seqs] == list(range(1, 31))
    assert sent[-1] == (2, [1])


def test_commands_are_applied_once_persisted_and_answered(tmp_path: Path) -> None:
    r = Reader(tmp_path)
    result = r.run_command(r.command(1, "set_time", {"time_s": 1_795_420_800, "time_ms": 250}))
    assert result is not None and (result["cmd_seq"], result["status"]) == (1, "ok")
    assert r.app.clock.synced and r.hw.rtc == [1_795_420_800]

    # the same command again (QoS 1 redelivery): the same answer, not applied twice
    again = r.run_command(r.command(1, "set_time", {"time_s": 1_795_420_800, "time_ms": 250}))
    assert again is not None and again["status"] == "ok" and r.hw.rtc == [1_795_420_800]

    result = r.run_command(r.command(2, "set_config", {"debounce_ms": 900, "volume": 15}))
    assert result is not None and result["status"] == "ok"
    assert (r.app.debouncer.gap_ms, r.app.feedback.volume) == (900, 15)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["debounce_ms"], saved["volume"]) == (900, 15)

    result = r.run_command(r.command(3, "request_heartbeat"))
    assert result is not None and result["status"] == "ok"
    assert r.up.status is not None
    assert construct_codec.decode("heartbeat", r.up.status, KEY)["reader_id"] == READER

    # an older command is stale; after a reboot the last cmd_seq is still known
    stale = r.run_command(r.command(2, "set_config", {"volume": 90}))
    assert stale is not None and stale["status"] == "stale" and r.app.feedback.volume == 15
    r2 = Reader(tmp_path)
    assert (r2.app.debouncer.gap_ms, r2.app.feedback.volume) == (900, 15)
    stale = r2.run_command(r2.command(3, "request_heartbeat"))
    assert stale is not None and stale["status"] == "ok"  # the answer it gave, not re-applied
    assert r2.up.status is None


def test_reboot_is_answered_first(tmp_path: Path) -> None:
    r = Reader(tmp_path)
    r.up.put_command(r.command(5, "reboot"))
    r.up.take_command()
    assert r.hw.reboots == 0 and len(r.up.results) == 1
    assert peer.decode_result(r.up.results[0], KEY)["status"] == "ok"
    r.up.result_sent()
    assert r.hw.reboots == 1


@pytest.mark.parametrize("name", ["forged", "other_reader", "truncated"])
def test_commands_that_do_not_verify_get_no_answer(tmp_path: Path, name: str) -> None:
    r = Reader(tmp_path)
    data = {"forged": r.command(1, "reboot", key=bytes(32)),
            "other_reader": r.command(1, "reboot", reader_id=READER + 1),
            "truncated": r.command(1, "reboot")[:-1]}[name]
    assert r.run_command(data) is None
    assert r.up.commands.rejected == 1 and r.hw.reboots == 0


def test_unknown_opcode_and_bad_arguments_are_answered_after_the_mac_verified(
        tmp_path: Path) -> None:
    r = Reader(tmp_path)
    signer = r.app.signer

    def signed(cmd_seq: int, opcode: int, args: bytes) -> bytes:
        body = bytearray(struct.pack(">BBIIIBB", 1, 5, READER, cmd_seq, 0, opcode, len(args)))
        body += args
        return bytes(body) + signer.digest(bytes(body))[:16]

    result = r.run_command(signed(1, 9, b""))
    assert result is not None and result["status"] == "unknown_opcode"
    result = r.run_command(signed(2, 2, bytes([2, 1, 101])))  # volume 101: out of range
    assert result is not None and result["status"] == "bad_args"
    assert r.app.feedback.volume == 60
    forged = bytearray(signed(3, 9, b""))
    forged[-1] ^= 1
    assert r.run_command(bytes(forged)) is None


def test_a_full_ack_and_command_slot_is_counted_not_grown(tmp_path: Path) -> None:
    r = Reader(tmp_path)
    for _ in range(10):
        r.up.put_ack(b"\x01\x03")
        r.up.put_command(b"\x01\x05")
    assert r.up.overflow == 12
    assert not r.up.take_ack() and r.up.bad_acks == 4
    r.up.take_command()
    assert r.up.results == [] and r.up.commands.rejected == 4


def test_uplink_and_commands_on_micropython(mpvm: MPVM, tmp_path: Path) -> None:
    """The same stop-and-wait and command rules on the real MicroPython VM."""
    ack = peer.encode_ack({"reader_id": READER, "boot": 1, "first_seq": 1, "last_seq": 3,
                           "verdicts": []}, KEY)
    cmd = peer.encode_command({"reader_id": READER, "cmd_seq": 4, "issued_s": 0,
                               "opcode": "set_config", "args": {"volume": 20}}, KEY)
    code = f"""
import asyncio, json
from firmware.app import ReaderApp
from firmware.clock import Clock
from firmware.commands import CommandHandler
from firmware.config import parse_config
from firmware.debounce import Debouncer
from firmware.feedback import Feedback
from firmware.fs import FS
from firmware.queue import RecordQueue
from firmware.uplink import Uplink

class Out:
    def value(self, v): pass
    def freq(self, v): pass
    def duty_u16(self, v): pass

class NoCard:
    tech = 0
    uid = bytearray(10)
    fault = False
    def poll(self, now): return 0

fs = FS()
fs.makedirs('/r/data/queue')
config = parse_config(json.dumps({{"reader_id": {READER}, "school": "s", "gate": "g",
                                  "board": "b", "debounce_ms": 100}}))
queue = RecordQueue(fs, '/r/data/queue', capacity=64).open()
app = ReaderApp(config, {KEY!r}, 1, NoCard(), Feedback(Out(), Out(), Out()), queue, Clock())
up = Uplink(app, CommandHandler(app, fs, '/r'))
now = 1000
for i in range(3):
    now += 500
    app.taps.sighting(2, bytearray(b'\\x04\\x00' + bytes([i, 7])), 4, now)
b = up.batch()
print(len(b), b[18], up.wake.is_set())
up.put_ack({ack!r})
print(up.take_ack(), queue.depth, app.last_ack)
up.put_command({cmd!r})
up.take_command()
print(len(up.results), app.feedback.volume, fs.read_file('/r/config.json') is not None)
"""
    out = mpvm.run(code, timeout=60).split()
    assert out == ["179", "3", "True", "True", "0", "(1,", "3)", "1", "20", "True"]
