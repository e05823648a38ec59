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


# --- batch (SPEC 4) ---------------------------------------------------------------------------


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


def encode_result(fields: "Fields", key: "Key") -> bytes:
    _check_reader(fields["reader_id"])
    _check_u32(fields["cmd_seq"], "cmd_seq", 1)
    buf = bytearray(RESULT_LEN)
    struct.pack_into(">BBIIB", buf, 0, VERSION, T_RESULT, fields["reader_id"], fields["cmd_seq"],
                     _index(STATUS_NAMES, fields["status"], "status"))
    return _sign(buf, RESULT_LEN - MAC_LEN, signer_for(key))
