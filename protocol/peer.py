"""The other side of protocol v1 in runtime-neutral code: decode what readers send, encode what
the gateway sends, and the canonical-fields ``encode``/``decode`` for every kind.

``protocol/codec.py`` holds only what a reader needs, so the reader's RAM carries no code it never
runs; this module adds the rest on top of it. The tests run it on CPython and on the MicroPython
VM against the golden vectors, and tools use it where ``construct`` is not available.
"""

import struct

from protocol import card
from protocol.codec import (
    _HEARTBEAT_FMT,
    ACK_FIXED_LEN,
    ACK_MAX_VERDICTS,
    BATCH_HEADER_LEN,
    BATCH_MAX_LEN,
    BATCH_MAX_RECORDS,
    COMMAND_FIXED_LEN,
    CONFIG_KEYS,
    FAULT_NAMES,
    FLAG_CLOCK_SYNCED,
    HEARTBEAT_LEN,
    LINK_NAMES,
    OPCODE_NAMES,
    RECORD_FIXED_LEN,
    RECORD_MAX_LEN,
    RECORD_MIN_LEN,
    RESULT_LEN,
    STATE_NAMES,
    STATUS_NAMES,
    T_ACK,
    T_BATCH,
    T_COMMAND,
    T_HEARTBEAT,
    T_RECORD,
    T_RESULT,
    VERDICT_NAMES,
    VERSION,
    BatchWriter,
    _check_ack_fields,
    _check_head,
    _check_heartbeat_fields,
    _check_mac,
    _check_reader,
    _check_record_fields,
    _check_size,
    _check_u32,
    _index,
    _name,
    _sign,
    decode_ack,
    decode_command,
    encode_heartbeat,
    encode_result,
    record_into,
    signer_for,
)
from protocol.errors import ProtocolError
from protocol.hmac256 import MAC_LEN

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from protocol.hmac256 import HmacSha256

    Buf = bytes | bytearray | memoryview
    Fields = dict[str, Any]
    Key = bytes | HmacSha256


def record_size(data: "Buf") -> int:
    """Check a record's header and size (no MAC); return its length."""
    _check_head(data, T_RECORD)
    if len(data) < 17:
        raise ProtocolError("truncated", "record shorter than its UID length field")
    uid_len = data[16]
    if uid_len > card.MAX_UID_LEN:
        raise ProtocolError("bad_card", "UID length " + str(uid_len) + " above 10")
    size = RECORD_FIXED_LEN + uid_len
    _check_size(len(data), size)
    return size


def decode_record(data: "Buf", key: "Key") -> "Fields":
    size = record_size(data)
    _check_mac(data, size, signer_for(key))
    reader_id, boot, seq, flags, tech, uid_len = struct.unpack_from(">IIIBBB", data, 2)
    uid = bytes(data[17 : 17 + uid_len])
    time_s, time_ms, ticks_ms = struct.unpack_from(">IHI", data, 17 + uid_len)
    _check_record_fields(reader_id, boot, seq, flags, tech, uid, time_ms)
    return {
        "reader_id": reader_id, "boot": boot, "seq": seq,
        "clock_synced": bool(flags & FLAG_CLOCK_SYNCED), "tech": card.TECH_NAMES[tech],
        "uid": uid, "time_s": time_s, "time_ms": time_ms, "ticks_ms": ticks_ms,
        "mac": bytes(data[size - MAC_LEN : size]),
    }


def encode_record(fields: "Fields", key: "Key") -> bytes:
    buf = bytearray(RECORD_MAX_LEN)
    n = record_into(buf, signer_for(key), fields["reader_id"], fields["boot"], fields["seq"],
                    FLAG_CLOCK_SYNCED if fields["clock_synced"] else 0,
                    card.tech_code(fields["tech"]), fields["uid"], fields["time_s"],
                    fields["time_ms"], fields["ticks_ms"])
    return bytes(buf[:n])


def split_batch(data: "Buf", key: "Key") -> "tuple[int, int, int, int, list[memoryview]]":
    """Steps 1-5 of SPEC 4.1: return ``(reader_id, boot, first_seq, last_seq, slices)``.

    ``slices`` are memoryviews of the records, each to be decoded on its own (step 6), so that the
    gateway can quarantine one bad record and keep its neighbours.
    """
    _check_head(data, T_BATCH)
    n = len(data)
    if n > BATCH_MAX_LEN:
        raise ProtocolError("too_large", "batch of " + str(n) + " bytes")
    if n < BATCH_HEADER_LEN:
        raise ProtocolError("truncated", "batch shorter than its header")
    reader_id, boot, first_seq, last_seq, count = struct.unpack_from(">IIIIB", data, 2)
    if not 1 <= count <= BATCH_MAX_RECORDS:
        raise ProtocolError("bad_count", str(count) + " records in a batch")
    view = memoryview(data)
    slices: list[memoryview] = []
    pos = BATCH_HEADER_LEN
    for _ in range(count):
        if pos >= n:
            raise ProtocolError("truncated", "batch ends before record " + str(len(slices) + 1))
        rec_len = data[pos]
        if not RECORD_MIN_LEN <= rec_len <= RECORD_MAX_LEN:
            raise ProtocolError("bad_length", "record length " + str(rec_len))
        pos += 1
        if pos + rec_len > n:
            raise ProtocolError("truncated", "batch ends inside record " + str(len(slices) + 1))
        slices.append(view[pos : pos + rec_len])
        pos += rec_len
    _check_size(n, pos + MAC_LEN)
    _check_mac(data, n, signer_for(key))
    for rec in slices:
        if struct.unpack_from(">II", rec, 2) != (reader_id, boot):
            raise ProtocolError("identity_mismatch", "record of another reader or boot")
    previous = -1  # not 0: a record seq of 0 is step 6's to refuse (bad_field), not step 5's
    for rec in slices:
        seq = struct.unpack_from(">I", rec, 10)[0]
        if seq <= previous:
            raise ProtocolError("bad_sequence", "record seqs not strictly ascending")
        previous = seq
    if struct.unpack_from(">I", slices[0], 10)[0] != first_seq or previous != last_seq:
        raise ProtocolError("bad_sequence", "records do not span first_seq..last_seq")
    return reader_id, boot, first_seq, last_seq, slices


def decode_batch(data: "Buf", key: "Key") -> "Fields":
    signer = signer_for(key)
    reader_id, boot, first_seq, last_seq, slices = split_batch(data, signer)
    return {
        "reader_id": reader_id, "boot": boot, "first_seq": first_seq, "last_seq": last_seq,
        "records": [decode_record(rec, signer) for rec in slices],
        "mac": bytes(data[len(data) - MAC_LEN :]),
    }


def encode_batch(fields: "Fields", key: "Key") -> bytes:
    signer = signer_for(key)
    records = fields["records"]
    if not 1 <= len(records) <= BATCH_MAX_RECORDS:
        raise ProtocolError("bad_count", str(len(records)) + " records in a batch")
    writer = BatchWriter()
    previous = 0
    for rec in records:
        if rec["reader_id"] != fields["reader_id"] or rec["boot"] != fields["boot"]:
            raise ProtocolError("identity_mismatch", "record of another reader or boot")
        if rec["seq"] <= previous:
            raise ProtocolError("bad_sequence", "record seqs not strictly ascending")
        previous = rec["seq"]
        if not writer.add(encode_record(rec, signer)):
            raise ProtocolError("too_large", "records exceed the batch size limit")
    if records[0]["seq"] != fields["first_seq"] or previous != fields["last_seq"]:
        raise ProtocolError("bad_sequence", "records do not span first_seq..last_seq")
    return bytes(writer.finish(signer, fields["reader_id"], fields["boot"]))


def encode_ack(fields: "Fields", key: "Key") -> bytes:
    verdicts = fields["verdicts"]
    if len(verdicts) > ACK_MAX_VERDICTS:
        raise ProtocolError("bad_count", str(len(verdicts)) + " verdicts")
    pairs = [(v["seq"], _index(VERDICT_NAMES, v["verdict"], "verdict", 1)) for v in verdicts]
    _check_ack_fields(fields["reader_id"], fields["boot"], fields["first_seq"],
                      fields["last_seq"], pairs)
    _check_u32(fields["last_seq"], "last_seq")
    buf = bytearray(ACK_FIXED_LEN + 5 * len(pairs))
    struct.pack_into(">BBIIIIB", buf, 0, VERSION, T_ACK, fields["reader_id"], fields["boot"],
                     fields["first_seq"], fields["last_seq"], len(pairs))
    for i, (seq, code) in enumerate(pairs):
        struct.pack_into(">IB", buf, 19 + 5 * i, seq, code)
    return _sign(buf, len(buf) - MAC_LEN, signer_for(key))


def decode_heartbeat(data: "Buf", key: "Key") -> "Fields":
    _check_head(data, T_HEARTBEAT)
    _check_size(len(data), HEARTBEAT_LEN)
    _check_mac(data, HEARTBEAT_LEN, signer_for(key))
    (reader_id, boot, state, faults, major, minor, patch, link, rssi, flags, time_s, uptime_s,
     free_heap, queue_depth, oldest, dropped, ack_boot, ack_seq) = struct.unpack_from(
        _HEARTBEAT_FMT, data, 2)
    _check_heartbeat_fields(reader_id, boot, state, faults, link, flags)
    return {
        "reader_id": reader_id, "boot": boot, "state": STATE_NAMES[state],
        "faults": [FAULT_NAMES[i] for i in range(len(FAULT_NAMES)) if faults & (1 << i)],
        "fw_version": str(major) + "." + str(minor) + "." + str(patch),
        "link": LINK_NAMES[link], "rssi_dbm": rssi, "clock_synced": bool(flags),
        "time_s": time_s, "uptime_s": uptime_s, "free_heap": free_heap,
        "queue_depth": queue_depth, "oldest_unsent_age_s": oldest, "dropped": dropped,
        "last_ack_boot": ack_boot, "last_ack_seq": ack_seq,
        "mac": bytes(data[HEARTBEAT_LEN - MAC_LEN :]),
    }


def _args_from_fields(opcode: int, args: "dict[str, int]") -> bytes:
    if opcode == 1:
        time_ms = args["time_ms"]
        if not 0 <= time_ms <= 999:
            raise ProtocolError("bad_field", "time_ms out of range")
        _check_u32(args["time_s"], "time_s")
        return struct.pack(">IH", args["time_s"], time_ms)
    if opcode == 2:
        out = bytearray()
        known = 0
        for code in range(1, len(CONFIG_KEYS)):
            name, width, lowest, highest = CONFIG_KEYS[code]
            if name in args:
                known += 1
                value = args[name]
                if not lowest <= value <= highest:
                    raise ProtocolError("bad_field", name + " " + str(value) + " out of range")
                out.append(code)
                out.append(width)
                out.extend(struct.pack(">B" if width == 1 else ">H", value))
        if known < len(args):
            raise ProtocolError("bad_field", "unknown config name in " + repr(list(args)))
        if not out:
            raise ProtocolError("bad_field", "set_config without entries")
        return bytes(out)
    if args:
        raise ProtocolError("bad_field", OPCODE_NAMES[opcode] + " takes no arguments")
    return b""


def encode_command(fields: "Fields", key: "Key") -> bytes:
    _check_reader(fields["reader_id"])
    _check_u32(fields["cmd_seq"], "cmd_seq", 1)
    _check_u32(fields["issued_s"], "issued_s")
    opcode = _index(OPCODE_NAMES, fields["opcode"], "opcode", 1)
    args = _args_from_fields(opcode, fields["args"])
    buf = bytearray(COMMAND_FIXED_LEN + len(args))
    struct.pack_into(">BBIIIBB", buf, 0, VERSION, T_COMMAND, fields["reader_id"],
                     fields["cmd_seq"], fields["issued_s"], opcode, len(args))
    buf[16 : 16 + len(args)] = args
    return _sign(buf, 16 + len(args), signer_for(key))


def decode_result(data: "Buf", key: "Key") -> "Fields":
    _check_head(data, T_RESULT)
    _check_size(len(data), RESULT_LEN)
    _check_mac(data, RESULT_LEN, signer_for(key))
    reader_id, cmd_seq, status = struct.unpack_from(">IIB", data, 2)
    _check_reader(reader_id)
    _check_u32(cmd_seq, "cmd_seq", 1)
    return {"reader_id": reader_id, "cmd_seq": cmd_seq,
            "status": _name(STATUS_NAMES, status, "status"),
            "mac": bytes(data[RESULT_LEN - MAC_LEN :])}


_DECODERS = {"record": decode_record, "batch": decode_batch, "ack": decode_ack,
             "heartbeat": decode_heartbeat, "command": decode_command, "result": decode_result}


_ENCODERS = {"record": encode_record, "batch": encode_batch, "ack": encode_ack,
             "heartbeat": encode_heartbeat, "command": encode_command, "result": encode_result}


def decode(kind: str, data: "Buf", key: "Key | None"
           ) -> "Fields":
    """Decode one message of ``kind`` (``frame`` takes no key) into its canonical fields."""
    if kind == "frame":
        from protocol import frame

        return frame.decode(data)
    if key is None:
        raise ProtocolError("bad_mac", "no key to verify a " + kind)
    return _DECODERS[kind](data, key)


def encode(kind: str, fields: "Fields", key: "Key | None") -> bytes:
    """Encode canonical fields as one message of ``kind``, signed with ``key``."""
    if kind == "frame":
        from protocol import frame

        return frame.encode(fields)
    if key is None:
        raise ProtocolError("bad_mac", "no key to sign a " + kind)
    return _ENCODERS[kind](fields, key)
