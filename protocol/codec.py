"""Runtime-neutral codec for protocol v1 messages (SPEC.md sections 3-7).

Runs unchanged on MicroPython and CPython. The tap path uses ``record_into``, which writes a signed
record into a caller-owned buffer; everything else speaks the canonical field dictionaries of
``protocol/vectors/README.md`` through ``encode``/``decode``. Every decoder checks structure, then
the MAC, then field rules, and raises ``ProtocolError`` with the code SPEC.md prescribes.
"""

import struct

from protocol import card
from protocol.compat import const
from protocol.errors import ProtocolError
from protocol.hmac256 import MAC_LEN, HmacSha256

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Buf = bytes | bytearray | memoryview
    Fields = dict[str, Any]
    Key = bytes | HmacSha256


VERSION = const(1)

T_RECORD = const(1)
T_BATCH = const(2)
T_ACK = const(3)
T_HEARTBEAT = const(4)
T_COMMAND = const(5)
T_RESULT = const(6)

RECORD_FIXED_LEN = const(43)  # record size without the UID
RECORD_MIN_LEN = const(46)
RECORD_MAX_LEN = const(53)
BATCH_HEADER_LEN = const(19)
BATCH_MAX_LEN = const(4096)
BATCH_MAX_RECORDS = const(64)
ACK_FIXED_LEN = const(35)
ACK_MAX_VERDICTS = const(64)
HEARTBEAT_LEN = const(66)
COMMAND_FIXED_LEN = const(32)
COMMAND_MAX_ARGS = const(64)
RESULT_LEN = const(27)

FLAG_CLOCK_SYNCED = const(1)
_MAX_READER_ID = const(0xFFFFFFFE)

VERDICT_NAMES = ("", "bad_mac", "malformed", "revoked_key", "identity_conflict")
STATE_NAMES = ("online", "offline", "fault")
FAULT_NAMES = ("reader_chip", "flash", "queue_full")
LINK_NAMES = ("none", "wifi", "ethernet", "rs485")
OPCODE_NAMES = ("", "set_time", "set_config", "request_heartbeat", "reboot")
STATUS_NAMES = ("ok", "unknown_opcode", "bad_args", "stale", "failed")
# set_config keys: (name, value size, lowest, highest), indexed by key code.
CONFIG_KEYS = (
    ("", 0, 0, 0),
    ("debounce_ms", 2, 100, 60000),
    ("volume", 1, 0, 100),
    ("heartbeat_s", 2, 10, 3600),
    ("batch_max_records", 1, 1, BATCH_MAX_RECORDS),
)

_HEARTBEAT_FMT = ">IIBBBBBBbBIIIIIIII"
_HEARTBEAT_COUNTERS = ("time_s", "uptime_s", "free_heap", "queue_depth", "oldest_unsent_age_s",
                       "dropped", "last_ack_boot", "last_ack_seq")


def signer_for(key: "Key") -> HmacSha256:
    """Accept a raw 32-byte key or an already built signer."""
    if isinstance(key, HmacSha256):
        return key
    return HmacSha256(key)


def _index(names: "tuple[str, ...]", name: str, what: str, first: int = 0) -> int:
    for i in range(first, len(names)):
        if names[i] == name:
            return i
    raise ProtocolError("bad_field", "unknown " + what + " " + repr(name))


def _name(names: "tuple[str, ...]", code: int, what: str, first: int = 0) -> str:
    if first <= code < len(names):
        return names[code]
    raise ProtocolError("bad_field", "unknown " + what + " " + str(code))


def _check_head(data: "Buf", mtype: int) -> None:
    if len(data) < 2:
        raise ProtocolError("truncated", "message shorter than its header")
    if data[0] != VERSION:
        raise ProtocolError("unsupported_version", "version " + str(data[0]))
    if data[1] != mtype:
        raise ProtocolError("wrong_type", "type " + str(data[1]) + ", expected " + str(mtype))


def _check_size(n: int, size: int) -> None:
    if n < size:
        raise ProtocolError("truncated", str(n) + " bytes, expected " + str(size))
    if n > size:
        raise ProtocolError("trailing_bytes", str(n - size) + " bytes after the message")


def _check_mac(data: "Buf", size: int, signer: HmacSha256) -> None:
    body = size - MAC_LEN
    view = memoryview(data)
    if not signer.verify(view[:body], view[body:size]):
        raise ProtocolError("bad_mac", "MAC does not verify")


def _sign(buf: bytearray, size: int, signer: HmacSha256) -> bytes:
    """Append the tag over ``buf[:size]`` and return the finished message."""
    signer.tag_into(memoryview(buf)[:size], buf, size)
    return bytes(buf[: size + MAC_LEN])


def _check_u32(value: int, what: str, lowest: int = 0, highest: int = 0xFFFFFFFF) -> None:
    if not lowest <= value <= highest:
        raise ProtocolError("bad_field", what + " " + str(value) + " out of range")


def _check_reader(reader_id: int) -> None:
    _check_u32(reader_id, "reader_id", 1, _MAX_READER_ID)


# --- scan record (SPEC 3) ---------------------------------------------------------------------


def record_len(uid_len: int) -> int:
    return RECORD_FIXED_LEN + uid_len


def _check_record_fields(reader_id: int, boot: int, seq: int, flags: int, tech: int,
                         uid: "Buf", time_ms: int) -> None:
    _check_reader(reader_id)
    _check_u32(boot, "boot", 1)
    _check_u32(seq, "seq", 1)
    if flags & ~FLAG_CLOCK_SYNCED:
        raise ProtocolError("bad_flags", "reserved record flag set")
    card.check_uid(tech, uid)
    if not 0 <= time_ms <= 999:
        raise ProtocolError("bad_field", "time_ms " + str(time_ms) + " out of range")


def record_into(buf: "bytearray | memoryview", signer: HmacSha256, reader_id: int, boot: int,
                seq: int, flags: int, tech: int, uid: "Buf",
                time_s: int, time_ms: int, ticks_ms: int) -> int:
    """Write a signed scan record into ``buf`` (at least 53 bytes); return its length.

    ``ticks_ms`` is taken modulo 2**32, as SPEC.md section 3 defines it.
    """
    _check_record_fields(reader_id, boot, seq, flags, tech, uid, time_ms)
    _check_u32(time_s, "time_s")
    n = len(uid)
    struct.pack_into(">BBIIIBBB", buf, 0, VERSION, T_RECORD, reader_id, boot, seq, flags, tech, n)
    for i in range(n):
        buf[17 + i] = uid[i]
    struct.pack_into(">IHI", buf, 17 + n, time_s, time_ms, ticks_ms & 0xFFFFFFFF)
    body = 27 + n
    signer.tag_into(memoryview(buf)[:body], buf, body)
    return body + MAC_LEN


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


# --- batch (SPEC 4) ---------------------------------------------------------------------------


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
    previous = 0
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


class BatchWriter:
    """Builds a batch in one pre-allocated buffer from records already signed (e.g. from flash)."""

    def __init__(self, max_len: int = BATCH_MAX_LEN, max_records: int = BATCH_MAX_RECORDS) -> None:
        self.buf = bytearray(max_len)
        self.max_len = max_len
        self.max_records = max_records
        self.count = 0
        self._pos = BATCH_HEADER_LEN
        self._first = 0
        self._last = 0

    def reset(self) -> None:
        self.count = 0
        self._pos = BATCH_HEADER_LEN

    def fits(self, rec_len: int) -> bool:
        return (self.count < self.max_records
                and self._pos + 1 + rec_len + MAC_LEN <= self.max_len)

    def add(self, rec: "Buf") -> bool:
        """Append one record; False (and nothing written) when the batch is full."""
        n = len(rec)
        if not self.fits(n):
            return False
        seq = (rec[10] << 24) | (rec[11] << 16) | (rec[12] << 8) | rec[13]  # no tuple
        if self.count == 0:
            self._first = seq
        self._last = seq
        buf = self.buf
        buf[self._pos] = n
        buf[self._pos + 1 : self._pos + 1 + n] = rec
        self._pos += 1 + n
        self.count += 1
        return True

    def finish(self, signer: HmacSha256, reader_id: int, boot: int) -> memoryview:
        """Write header and MAC; return a view of the finished batch inside ``buf``."""
        if self.count == 0:
            raise ProtocolError("bad_count", "a batch needs at least one record")
        struct.pack_into(">BBIIIIB", self.buf, 0, VERSION, T_BATCH, reader_id, boot,
                         self._first, self._last, self.count)
        signer.tag_into(memoryview(self.buf)[: self._pos], self.buf, self._pos)
        return memoryview(self.buf)[: self._pos + MAC_LEN]


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


# --- ack (SPEC 5) -----------------------------------------------------------------------------


def _check_ack_fields(reader_id: int, boot: int, first_seq: int, last_seq: int,
                      verdicts: "list[tuple[int, int]]") -> None:
    _check_reader(reader_id)
    _check_u32(boot, "boot", 1)
    _check_u32(first_seq, "first_seq", 1)
    if last_seq < first_seq:
        raise ProtocolError("bad_sequence", "ack last_seq below first_seq")
    previous = first_seq - 1
    for seq, verdict in verdicts:
        if not previous < seq <= last_seq:
            raise ProtocolError("bad_sequence", "verdict seq outside the range or not ascending")
        previous = seq
        _name(VERDICT_NAMES, verdict, "verdict", 1)


def decode_ack(data: "Buf", key: "Key") -> "Fields":
    _check_head(data, T_ACK)
    if len(data) < BATCH_HEADER_LEN:
        raise ProtocolError("truncated", "ack shorter than its header")
    count = data[18]
    if count > ACK_MAX_VERDICTS:
        raise ProtocolError("bad_count", str(count) + " verdicts")
    size = ACK_FIXED_LEN + 5 * count
    _check_size(len(data), size)
    _check_mac(data, size, signer_for(key))
    reader_id, boot, first_seq, last_seq = struct.unpack_from(">IIII", data, 2)
    pairs = [struct.unpack_from(">IB", data, 19 + 5 * i) for i in range(count)]
    _check_ack_fields(reader_id, boot, first_seq, last_seq, pairs)
    return {
        "reader_id": reader_id, "boot": boot, "first_seq": first_seq, "last_seq": last_seq,
        "verdicts": [{"seq": seq, "verdict": VERDICT_NAMES[code]} for seq, code in pairs],
        "mac": bytes(data[size - MAC_LEN : size]),
    }


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


# --- heartbeat (SPEC 6) -----------------------------------------------------------------------


def _check_heartbeat_fields(reader_id: int, boot: int, state: int, faults: int, link: int,
                            flags: int) -> None:
    _check_reader(reader_id)
    _check_u32(boot, "boot", 1)
    _name(STATE_NAMES, state, "state")
    if faults >> len(FAULT_NAMES):
        raise ProtocolError("bad_flags", "reserved fault bit set")
    _name(LINK_NAMES, link, "link")
    if flags & ~FLAG_CLOCK_SYNCED:
        raise ProtocolError("bad_flags", "reserved heartbeat flag set")


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


def encode_heartbeat(fields: "Fields", key: "Key") -> bytes:
    faults = 0
    for name in fields["faults"]:
        faults |= 1 << _index(FAULT_NAMES, name, "fault")
    state = _index(STATE_NAMES, fields["state"], "state")
    link = _index(LINK_NAMES, fields["link"], "link")
    flags = FLAG_CLOCK_SYNCED if fields["clock_synced"] else 0
    _check_heartbeat_fields(fields["reader_id"], fields["boot"], state, faults, link, flags)
    version = fields["fw_version"].split(".")
    if len(version) != 3:
        raise ProtocolError("bad_field", "fw_version must be major.minor.patch")
    try:
        major, minor, patch = (int(part) for part in version)
    except ValueError:
        raise ProtocolError("bad_field", "fw_version parts must be numbers") from None
    for part in (major, minor, patch):
        if not 0 <= part <= 255:
            raise ProtocolError("bad_field", "fw_version part out of range")
    if not -128 <= fields["rssi_dbm"] <= 127:
        raise ProtocolError("bad_field", "rssi_dbm out of range")
    for name in _HEARTBEAT_COUNTERS:
        _check_u32(fields[name], name)
    buf = bytearray(HEARTBEAT_LEN)
    buf[0] = VERSION
    buf[1] = T_HEARTBEAT
    struct.pack_into(
        _HEARTBEAT_FMT, buf, 2, fields["reader_id"], fields["boot"], state, faults, major, minor,
        patch, link, fields["rssi_dbm"], flags, *[fields[name] for name in _HEARTBEAT_COUNTERS])
    return _sign(buf, HEARTBEAT_LEN - MAC_LEN, signer_for(key))


# --- command and result (SPEC 7) --------------------------------------------------------------


def _config_from_args(args: "Buf") -> "Fields":
    if not args:
        raise ProtocolError("bad_field", "set_config without entries")
    values = {}
    pos = 0
    previous = 0
    while pos < len(args):
        if pos + 2 > len(args):
            raise ProtocolError("bad_field", "set_config entry cut short")
        code = args[pos]
        size = args[pos + 1]
        if code <= previous:
            raise ProtocolError("bad_field", "set_config keys not strictly ascending")
        previous = code
        if code >= len(CONFIG_KEYS):
            raise ProtocolError("bad_field", "unknown config key " + str(code))
        name, width, lowest, highest = CONFIG_KEYS[code]
        if size != width or pos + 2 + size > len(args):
            raise ProtocolError("bad_field", name + " value must be " + str(width) + " bytes")
        value = args[pos + 2] if width == 1 else struct.unpack_from(">H", args, pos + 2)[0]
        if not lowest <= value <= highest:
            raise ProtocolError("bad_field", name + " " + str(value) + " out of range")
        values[name] = value
        pos += 2 + size
    return values


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


def _args_to_fields(opcode: int, args: "Buf") -> "Fields":
    if opcode == 1:
        if len(args) != 6:
            raise ProtocolError("bad_field", "set_time takes 6 bytes of arguments")
        time_s, time_ms = struct.unpack_from(">IH", args, 0)
        if time_ms > 999:
            raise ProtocolError("bad_field", "time_ms out of range")
        return {"time_s": time_s, "time_ms": time_ms}
    if opcode == 2:
        return _config_from_args(args)
    if args:
        raise ProtocolError("bad_field", OPCODE_NAMES[opcode] + " takes no arguments")
    return {}


def decode_command(data: "Buf", key: "Key") -> "Fields":
    _check_head(data, T_COMMAND)
    if len(data) < 16:
        raise ProtocolError("truncated", "command shorter than its header")
    arg_len = data[15]
    if arg_len > COMMAND_MAX_ARGS:
        raise ProtocolError("bad_field", "arg_len " + str(arg_len) + " above 64")
    size = COMMAND_FIXED_LEN + arg_len
    _check_size(len(data), size)
    _check_mac(data, size, signer_for(key))
    reader_id, cmd_seq, issued_s, opcode = struct.unpack_from(">IIIB", data, 2)
    _check_reader(reader_id)
    _check_u32(cmd_seq, "cmd_seq", 1)
    name = _name(OPCODE_NAMES, opcode, "opcode", 1)
    return {
        "reader_id": reader_id, "cmd_seq": cmd_seq, "issued_s": issued_s, "opcode": name,
        "args": _args_to_fields(opcode, memoryview(data)[16 : 16 + arg_len]),
        "mac": bytes(data[size - MAC_LEN : size]),
    }


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


def encode_result(fields: "Fields", key: "Key") -> bytes:
    _check_reader(fields["reader_id"])
    _check_u32(fields["cmd_seq"], "cmd_seq", 1)
    buf = bytearray(RESULT_LEN)
    struct.pack_into(">BBIIB", buf, 0, VERSION, T_RESULT, fields["reader_id"], fields["cmd_seq"],
                     _index(STATUS_NAMES, fields["status"], "status"))
    return _sign(buf, RESULT_LEN - MAC_LEN, signer_for(key))


# --- dispatch ---------------------------------------------------------------------------------

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
