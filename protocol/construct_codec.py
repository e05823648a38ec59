"""Protocol v1 (SPEC.md) as ``construct`` declarations: the gateway's codec.

Every layout of SPEC.md is declared once below and used for both parsing and building. Field rules
live in small adapters (:class:`_Range`, :class:`_Enum`, ...) that raise
:class:`~protocol.errors.ProtocolError` with the code SPEC.md prescribes, so a declaration checks
its fields in offset order in both directions. The checks that SPEC.md wants *before* any field is
interpreted (version, type, the size the length fields imply, then the MAC; §4.1, §11, §9.1) are
made by the functions that drive the declarations, which then parse only input whose structure and
MAC are known to be good.

Public API: :func:`decode`, :func:`encode`, and for the gateway's ingest :func:`split_batch`,
:func:`ack_for_batch`, :func:`verify_mac`, :func:`compute_mac`, :func:`cobs_encode`,
:func:`cobs_decode`, :func:`crc16_ibm3740`.

Hot path: a record is parsed by a compiled declaration (``Construct.compile``) whose adapters keep
their sub-fields compiled; the batch walk (§4.1 steps 2-3) uses the interpreted declaration because
compiled construct code does not detect short reads, which must be reported as ``truncated``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypedDict

import construct as cs

from protocol.errors import ProtocolError

if TYPE_CHECKING:
    from construct.core import Context

    _Adapter = cs.Adapter[Any, Any, Any, Any]  # construct-typing's generics; plain at runtime
else:
    _Adapter = cs.Adapter

__all__ = [
    "KINDS",
    "BatchHeader",
    "ack_for_batch",
    "cobs_decode",
    "cobs_encode",
    "compute_mac",
    "crc16_ibm3740",
    "decode",
    "encode",
    "split_batch",
    "verify_mac",
]

# --------------------------------------------------------------------------------------------------
# Constants (SPEC.md §1, §2, §10)
# --------------------------------------------------------------------------------------------------

VERSION: Final = 0x01
T_RECORD: Final = 0x01
T_BATCH: Final = 0x02
T_ACK: Final = 0x03
T_HEARTBEAT: Final = 0x04
T_COMMAND: Final = 0x05
T_RESULT: Final = 0x06

KEY_LEN: Final = 32
MAC_LEN: Final = 16
U8_MAX: Final = 0xFF
U16_MAX: Final = 0xFFFF
U32_MAX: Final = 0xFFFF_FFFF
READER_ID_MAX: Final = 0xFFFF_FFFE  # 0 and 0xFFFFFFFF are reserved (§1.1)

UID_MAX: Final = 10
RECORD_FIXED: Final = 43  # a record is 43 + uid_len bytes
RECORD_MIN: Final = 46
RECORD_MAX: Final = 53
BATCH_HEADER: Final = 19
BATCH_MAX: Final = 4096
BATCH_MAX_RECORDS: Final = 64
ACK_FIXED: Final = 35  # 19 + 5 * n_verdicts + 16
ACK_MAX_VERDICTS: Final = 64
HEARTBEAT_SIZE: Final = 66
COMMAND_FIXED: Final = 32  # 16 + arg_len + 16
ARGS_MAX: Final = 64
CONFIG_MAX_ENTRIES: Final = 8
RESULT_SIZE: Final = 27

ADDR_MIN: Final = 1
ADDR_MAX: Final = 247
FRAME_OVERHEAD: Final = 5  # addr, ftype, fseq, crc
FRAME_PAYLOAD_MAX: Final = 1024
FRAME_CHUNK_MAX: Final = 1034  # longest COBS-encoded body

KINDS: Final = frozenset({"record", "batch", "ack", "heartbeat", "command", "result", "frame"})

TECHS: Final[Mapping[int, str]] = {
    0x01: "em4100",
    0x02: "iso14443a",
    0x03: "wiegand26",
    0x04: "wiegand34",
    0x05: "wiegand37",
}
UID_LENGTHS: Final[Mapping[str, tuple[int, ...]]] = {
    "em4100": (5,),
    "iso14443a": (4, 7, 10),
    "wiegand26": (3,),
    "wiegand34": (4,),
    "wiegand37": (5,),
}
WIEGAND37_PADDING: Final = 0xF8  # top 5 bits of the first UID byte
VERDICTS: Final[Mapping[int, str]] = {
    0x01: "bad_mac",
    0x02: "malformed",
    0x03: "revoked_key",
    0x04: "identity_conflict",
}
STATES: Final[Mapping[int, str]] = {0: "online", 1: "offline", 2: "fault"}
FAULTS: Final = ("reader_chip", "flash", "queue_full")  # bit 0, 1, 2
LINKS: Final[Mapping[int, str]] = {0: "none", 1: "wifi", 2: "ethernet", 3: "rs485"}
OPCODES: Final[Mapping[int, str]] = {
    0x01: "set_time",
    0x02: "set_config",
    0x03: "request_heartbeat",
    0x04: "reboot",
}
STATUSES: Final[Mapping[int, str]] = {
    0: "ok",
    1: "unknown_opcode",
    2: "bad_args",
    3: "stale",
    4: "failed",
}
FTYPES: Final[Mapping[int, str]] = {0x01: "poll", 0x02: "data", 0x03: "idle", 0x04: "nack"}
FTYPES_WITHOUT_PAYLOAD: Final = frozenset({"idle", "nack"})


def _fail(code: str, detail: str) -> ProtocolError:
    return ProtocolError(code, detail)


# --------------------------------------------------------------------------------------------------
# Field adapters: each raises ProtocolError itself, parsing and building alike
# --------------------------------------------------------------------------------------------------


class _Rule(_Adapter):
    """An adapter holding one SPEC rule; ``label`` names the field in error details.

    Compiled, the sub-field stays compiled and only ``_decode`` is called through construct's
    ``linkedinstances`` table (construct would otherwise run the whole adapter interpreted).
    """

    def __init__(self, label: str, subcon: cs.Construct[Any, Any]) -> None:
        super().__init__(subcon)
        self.label = label

    def _emitparse(self, code: Any) -> str:  # construct's compiler hook (untyped CodeGen)
        code.linkedinstances[id(self)] = self
        inner: Any = self.subcon
        return f"linkedinstances[{id(self)}]._decode({inner._compileparse(code)}, this, '')"


class _Range(_Rule):
    """An unsigned/signed integer field with an allowed range ``lo … hi`` (error ``code``)."""

    def __init__(
        self,
        label: str,
        subcon: cs.FormatField[int, int],
        lo: int,
        hi: int,
        code: str = "bad_field",
    ) -> None:
        super().__init__(label, subcon)
        size = struct.calcsize(subcon.fmtstr)
        signed = subcon.fmtstr[-1].islower()
        self.type_lo = -(1 << (8 * size - 1)) if signed else 0
        self.type_hi = (1 << (8 * size - 1)) - 1 if signed else (1 << (8 * size)) - 1
        self.lo = lo
        self.hi = hi
        self.code = code

    def _decode(self, obj: int, context: Context, path: str) -> int:
        if self.lo <= obj <= self.hi:
            return obj
        raise _fail(self.code, f"{self.label} {obj} outside {self.lo}..{self.hi}")

    def _encode(self, obj: Any, context: Context, path: str) -> int:
        if type(obj) is not int:
            raise _fail("bad_field", f"{self.label} must be an int, not {type(obj).__name__}")
        if not self.type_lo <= obj <= self.type_hi:
            raise _fail("bad_field", f"{self.label} {obj} does not fit its field")
        return self._decode(obj, context, path)

    def _emitparse(self, code: Any) -> str:
        if (self.lo, self.hi) == (self.type_lo, self.type_hi):  # nothing to check when parsing
            inner: Any = self.subcon
            return str(inner._compileparse(code))
        return super()._emitparse(code)


class _NotBefore(_Rule):
    """``last_seq ≥ first_seq`` (ack): a u32 not below an earlier field, else ``bad_sequence``."""

    def __init__(self, label: str, earlier: str) -> None:
        super().__init__(label, cs.Int32ub)
        self.earlier = earlier

    def _decode(self, obj: int, context: Context, path: str) -> int:
        if obj < context[self.earlier]:
            raise _fail(
                "bad_sequence", f"{self.label} {obj} < {self.earlier} {context[self.earlier]}"
            )
        return obj

    def _encode(self, obj: Any, context: Context, path: str) -> int:
        return self._decode(_uint(self.label, obj, U32_MAX), context, path)


class _Enum(_Rule):
    """A u8 code that must be one of ``names`` (unknown → ``code``); the value is the name."""

    def __init__(self, label: str, names: Mapping[int, str], code: str = "bad_field") -> None:
        super().__init__(label, cs.Int8ub)
        self.names = dict(names)
        self.values = {name: value for value, name in names.items()}
        self.code = code

    def _decode(self, obj: int, context: Context, path: str) -> str:
        name = self.names.get(obj)
        if name is None:
            raise _fail(self.code, f"unknown {self.label} 0x{obj:02x}")
        return name

    def _encode(self, obj: Any, context: Context, path: str) -> int:
        value = self.values.get(obj) if isinstance(obj, str) else None
        if value is None:
            raise _fail(self.code, f"unknown {self.label} {obj!r}")
        return value


class _Bits(_Rule):
    """A u8 bit field: bit i is ``names[i]``; a set bit beyond them is reserved → ``bad_flags``.

    Decodes to the list of set names in bit order.
    """

    def __init__(self, label: str, names: Sequence[str]) -> None:
        super().__init__(label, cs.Int8ub)
        self.names = tuple(names)
        self.reserved = U8_MAX & ~((1 << len(names)) - 1)

    def _decode(self, obj: int, context: Context, path: str) -> list[str]:
        if obj & self.reserved:
            raise _fail("bad_flags", f"reserved {self.label} bit set: 0x{obj:02x}")
        return [name for bit, name in enumerate(self.names) if obj >> bit & 1]

    def _encode(self, obj: Any, context: Context, path: str) -> int:
        if not isinstance(obj, list | tuple):
            raise _fail("bad_field", f"{self.label} must be a list of names")
        value = 0
        last = -1
        for name in obj:
            if name not in self.names:
                raise _fail("bad_flags", f"unknown {self.label} bit {name!r}")
            bit = self.names.index(name)
            if bit <= last:
                raise _fail("bad_field", f"{self.label} not in bit order or repeated")
            last = bit
            value |= 1 << bit
        return value


class _ClockSynced(_Rule):
    """The ``flags`` byte of records and heartbeats: bit 0 ``clock_synced``, the rest reserved."""

    def __init__(self) -> None:
        super().__init__("flags", cs.Int8ub)

    def _decode(self, obj: int, context: Context, path: str) -> bool:
        if obj & 0xFE:
            raise _fail("bad_flags", f"reserved flags bit set: 0x{obj:02x}")
        return obj == 1

    def _encode(self, obj: Any, context: Context, path: str) -> int:
        if type(obj) is not bool:
            raise _fail("bad_field", "clock_synced must be a bool")
        return int(obj)


_FW_VERSION = re.compile(r"(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})")


class _FwVersion(_Rule):
    """Three u8 (major, minor, patch) as ``"major.minor.patch"``."""

    def __init__(self) -> None:
        super().__init__("fw_version", cs.Bytes(3))

    def _decode(self, obj: bytes, context: Context, path: str) -> str:
        return f"{obj[0]}.{obj[1]}.{obj[2]}"

    def _encode(self, obj: Any, context: Context, path: str) -> bytes:
        match = _FW_VERSION.fullmatch(obj) if isinstance(obj, str) else None
        parts = [int(part) for part in match.groups()] if match else []
        if not parts or max(parts) > U8_MAX:
            raise _fail("bad_field", f"fw_version {obj!r} is not major.minor.patch (0..255 each)")
        return bytes(parts)


class _CardUid(_Rule):
    """``uid_len`` + ``uid`` of a record, checked against the already decoded ``tech`` (§3.1)."""

    def __init__(self) -> None:
        super().__init__("uid", cs.Prefixed(cs.Int8ub, cs.GreedyBytes))

    def _decode(self, obj: bytes, context: Context, path: str) -> bytes:
        tech = context["tech"]
        if len(obj) not in UID_LENGTHS[tech]:
            raise _fail("bad_card", f"uid_len {len(obj)} not allowed for {tech}")
        if tech == "wiegand37" and obj[0] & WIEGAND37_PADDING:
            raise _fail("bad_card", "wiegand37 padding bits set")
        return obj

    def _encode(self, obj: Any, context: Context, path: str) -> bytes:
        if not isinstance(obj, bytes | bytearray):
            raise _fail("bad_field", "uid must be bytes")
        return self._decode(bytes(obj), context, path)


class _Verdicts(_Rule):
    """The ack's ``n_verdicts`` + verdict list, checked entry by entry in offset order (§5)."""

    def __init__(self) -> None:
        entry = cs.Struct("seq" / cs.Int32ub, "verdict" / cs.Int8ub)
        count = _Range("n_verdicts", cs.Int8ub, 0, ACK_MAX_VERDICTS, "bad_count")
        super().__init__("verdicts", cs.PrefixedArray(count, entry))

    def _decode(self, obj: list[Any], context: Context, path: str) -> list[dict[str, Any]]:
        first, last = context["first_seq"], context["last_seq"]
        out: list[dict[str, Any]] = []
        previous = 0
        for entry in obj:
            seq = entry["seq"]
            if not first <= seq <= last:
                raise _fail("bad_sequence", f"verdict seq {seq} outside {first}..{last}")
            if out and seq <= previous:
                raise _fail("bad_sequence", f"verdict seqs not strictly ascending at {seq}")
            previous = seq
            verdict = VERDICTS.get(entry["verdict"])
            if verdict is None:
                raise _fail("bad_field", f"unknown verdict 0x{entry['verdict']:02x}")
            out.append({"seq": seq, "verdict": verdict})
        return out

    def _encode(self, obj: Any, context: Context, path: str) -> list[dict[str, int]]:
        if not isinstance(obj, list | tuple):
            raise _fail("bad_field", "verdicts must be a list")
        if len(obj) > ACK_MAX_VERDICTS:
            raise _fail("bad_count", f"{len(obj)} verdicts, at most {ACK_MAX_VERDICTS}")
        first, last = context["first_seq"], context["last_seq"]
        entries: list[dict[str, int]] = []
        for entry in obj:
            item = _take(entry, ("seq", "verdict"), "verdict")
            seq = _uint("verdict seq", item["seq"], U32_MAX)
            if not first <= seq <= last:
                raise _fail("bad_sequence", f"verdict seq {seq} outside {first}..{last}")
            if entries and seq <= entries[-1]["seq"]:
                raise _fail("bad_sequence", f"verdict seqs not strictly ascending at {seq}")
            verdict = (
                _VERDICT_CODES.get(item["verdict"]) if isinstance(item["verdict"], str) else None
            )
            if verdict is None:
                raise _fail("bad_field", f"unknown verdict {item['verdict']!r}")
            entries.append({"seq": seq, "verdict": verdict})
        return entries


_VERDICT_CODES: Final[Mapping[str, int]] = {name: value for value, name in VERDICTS.items()}


class _CommandArgs(_Rule):
    """``arg_len`` + ``args`` of a command, laid out per the already decoded ``opcode`` (§7.1)."""

    def __init__(self) -> None:
        super().__init__("args", cs.Prefixed(cs.Int8ub, cs.GreedyBytes))

    def _decode(self, obj: bytes, context: Context, path: str) -> dict[str, int]:
        return _ARGS[context["opcode"]].decode(obj)

    def _encode(self, obj: Any, context: Context, path: str) -> bytes:
        if not isinstance(obj, Mapping):
            raise _fail("bad_field", "args must be a mapping")
        raw = _ARGS[context["opcode"]].encode(obj)
        if len(raw) > ARGS_MAX:  # cannot happen with the v1 opcodes; kept for future ones
            raise _fail("bad_field", f"arg_len {len(raw)} above {ARGS_MAX}")
        return raw


def _uint(label: str, obj: Any, hi: int) -> int:
    if type(obj) is not int or not 0 <= obj <= hi:
        raise _fail("bad_field", f"{label} must be an int in 0..{hi}, not {obj!r}")
    return obj


def _u16(label: str, lo: int = 0, hi: int = U16_MAX) -> cs.Renamed[Any, Any]:
    return label / _Range(label, cs.Int16ub, lo, hi)


def _u32(label: str, lo: int = 0, hi: int = U32_MAX) -> cs.Renamed[Any, Any]:
    return label / _Range(label, cs.Int32ub, lo, hi)


def _i8(label: str) -> cs.Renamed[Any, Any]:
    return label / _Range(label, cs.Int8sb, -128, 127)


def _header(mtype: int) -> tuple[cs.Renamed[Any, Any], cs.Renamed[Any, Any]]:
    return "version" / cs.Const(VERSION, cs.Int8ub), "type" / cs.Const(mtype, cs.Int8ub)


_MAC_FIELD = "mac" / cs.Bytes(MAC_LEN)

# --------------------------------------------------------------------------------------------------
# Command arguments (§7.1): set_time, set_config TLV entries, none
# --------------------------------------------------------------------------------------------------


class _ArgsCodec:
    def decode(self, raw: bytes) -> dict[str, int]:
        raise NotImplementedError

    def encode(self, args: Mapping[str, Any]) -> bytes:
        raise NotImplementedError


class _NoArgs(_ArgsCodec):
    def __init__(self, opcode: str) -> None:
        self.opcode = opcode

    def decode(self, raw: bytes) -> dict[str, int]:
        if raw:
            raise _fail("bad_field", f"{self.opcode} takes no args, arg_len {len(raw)}")
        return {}

    def encode(self, args: Mapping[str, Any]) -> bytes:
        if args:
            raise _fail("bad_field", f"{self.opcode} takes no args")
        return b""


_SET_TIME_ARGS = cs.Struct(_u32("time_s"), _u16("time_ms", 0, 999))
_SET_TIME_LEN: Final = 6


class _SetTimeArgs(_ArgsCodec):
    def decode(self, raw: bytes) -> dict[str, int]:
        if len(raw) != _SET_TIME_LEN:
            raise _fail("bad_field", f"set_time needs arg_len 6, got {len(raw)}")
        parsed = _parse(_SET_TIME_ARGS, raw)
        return {"time_s": parsed["time_s"], "time_ms": parsed["time_ms"]}

    def encode(self, args: Mapping[str, Any]) -> bytes:
        return _build(_SET_TIME_ARGS, _take(args, ("time_s", "time_ms"), "set_time args"))


# name, value layout (u8/u16), allowed range
_CONFIG_KEYS: Final[Mapping[int, tuple[str, cs.Construct[int, int]]]] = {
    0x01: ("debounce_ms", _Range("debounce_ms", cs.Int16ub, 100, 60000)),
    0x02: ("volume", _Range("volume", cs.Int8ub, 0, 100)),
    0x03: ("heartbeat_s", _Range("heartbeat_s", cs.Int16ub, 10, 3600)),
    0x04: ("batch_max_records", _Range("batch_max_records", cs.Int8ub, 1, 64)),
}
_CONFIG_CODES: Final[Mapping[str, int]] = {name: key for key, (name, _) in _CONFIG_KEYS.items()}
_CONFIG_ENTRY = cs.Struct("key" / cs.Int8ub, "value" / cs.Prefixed(cs.Int8ub, cs.GreedyBytes))
_CONFIG_ENTRIES = cs.Struct("entries" / cs.GreedyRange(_CONFIG_ENTRY), cs.Terminated)


class _SetConfigArgs(_ArgsCodec):
    def decode(self, raw: bytes) -> dict[str, int]:
        try:
            entries = _CONFIG_ENTRIES.parse(raw)["entries"]
        except cs.ConstructError:  # GreedyRange stopped at an entry that runs past arg_len
            raise _fail("bad_field", "set_config entry cut by arg_len") from None
        if not 1 <= len(entries) <= CONFIG_MAX_ENTRIES:
            raise _fail("bad_field", f"set_config needs 1..8 entries, got {len(entries)}")
        out: dict[str, int] = {}
        previous = 0
        for entry in entries:
            key = entry["key"]
            if key not in _CONFIG_KEYS:
                raise _fail("bad_field", f"unknown config key 0x{key:02x}")
            if key <= previous:
                raise _fail("bad_field", "config keys not strictly ascending")
            previous = key
            name, layout = _CONFIG_KEYS[key]
            if len(entry["value"]) != layout.sizeof():
                raise _fail("bad_field", f"{name} value length {len(entry['value'])}")
            out[name] = _parse(layout, entry["value"])
        return out

    def encode(self, args: Mapping[str, Any]) -> bytes:
        if not args:
            raise _fail("bad_field", "set_config needs at least one entry")
        entries = []
        for name in args:
            if name not in _CONFIG_CODES:
                raise _fail("bad_field", f"unknown config key {name!r}")
        for name in sorted(args, key=_CONFIG_CODES.__getitem__):
            key = _CONFIG_CODES[name]
            entries.append({"key": key, "value": _build(_CONFIG_KEYS[key][1], args[name])})
        return _build(_CONFIG_ENTRIES, {"entries": entries})


_ARGS: Final[Mapping[str, _ArgsCodec]] = {
    "set_time": _SetTimeArgs(),
    "set_config": _SetConfigArgs(),
    "request_heartbeat": _NoArgs("request_heartbeat"),
    "reboot": _NoArgs("reboot"),
}

# --------------------------------------------------------------------------------------------------
# Message declarations (§3 - §7)
# --------------------------------------------------------------------------------------------------

RECORD = cs.Struct(
    *_header(T_RECORD),
    _u32("reader_id", 1, READER_ID_MAX),
    _u32("boot", 1),
    _u32("seq", 1),
    "clock_synced" / _ClockSynced(),
    "tech" / _Enum("tech", TECHS, "bad_card"),
    "uid" / _CardUid(),  # uid_len, uid
    _u32("time_s"),
    _u16("time_ms", 0, 999),
    _u32("ticks_ms"),
    _MAC_FIELD,
)

BATCH = cs.Struct(
    *_header(T_BATCH),
    _u32("reader_id"),
    _u32("boot"),
    _u32("first_seq"),
    _u32("last_seq"),
    "records"
    / cs.PrefixedArray(
        _Range("count", cs.Int8ub, 1, BATCH_MAX_RECORDS, "bad_count"),
        cs.Prefixed(
            _Range("rec_len", cs.Int8ub, RECORD_MIN, RECORD_MAX, "bad_length"), cs.GreedyBytes
        ),
    ),
    _MAC_FIELD,
    cs.Terminated,
)

ACK = cs.Struct(
    *_header(T_ACK),
    _u32("reader_id", 1, READER_ID_MAX),
    _u32("boot", 1),
    _u32("first_seq", 1),
    "last_seq" / _NotBefore("last_seq", "first_seq"),
    "verdicts" / _Verdicts(),  # n_verdicts, verdicts
    _MAC_FIELD,
)

HEARTBEAT = cs.Struct(
    *_header(T_HEARTBEAT),
    _u32("reader_id", 1, READER_ID_MAX),
    _u32("boot", 1),
    "state" / _Enum("state", STATES),
    "faults" / _Bits("faults", FAULTS),
    "fw_version" / _FwVersion(),
    "link" / _Enum("link", LINKS),
    _i8("rssi_dbm"),
    "clock_synced" / _ClockSynced(),
    _u32("time_s"),
    _u32("uptime_s"),
    _u32("free_heap"),
    _u32("queue_depth"),
    _u32("oldest_unsent_age_s"),
    _u32("dropped"),
    _u32("last_ack_boot"),
    _u32("last_ack_seq"),
    _MAC_FIELD,
)

COMMAND = cs.Struct(
    *_header(T_COMMAND),
    _u32("reader_id", 1, READER_ID_MAX),
    _u32("cmd_seq", 1),
    _u32("issued_s"),
    "opcode" / _Enum("opcode", OPCODES),
    "args" / _CommandArgs(),  # arg_len, args
    _MAC_FIELD,
)

RESULT = cs.Struct(
    *_header(T_RESULT),
    _u32("reader_id", 1, READER_ID_MAX),
    _u32("cmd_seq", 1),
    "status" / _Enum("status", STATUSES),
    _MAC_FIELD,
)

# --------------------------------------------------------------------------------------------------
# RS-485 frame body (§9.1): CRC-16/IBM-3740 as a construct Checksum, COBS as helpers
# --------------------------------------------------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE: Final = _crc_table()


def crc16_ibm3740(data: bytes) -> int:
    """CRC-16/IBM-3740: poly 0x1021, init 0xFFFF, unreflected, xorout 0; 0x29B1 for b"123456789"."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc


FRAME_BODY = cs.Struct(
    "covered"
    / cs.RawCopy(
        cs.Struct(
            "addr" / cs.Int8ub,
            "ftype" / cs.Int8ub,
            "fseq" / cs.Int8ub,
            "payload" / cs.Bytes(cs.this._params.payload_len),
        )
    ),
    "crc" / cs.Checksum(cs.Int16ub, crc16_ibm3740, cs.this.covered.data),
    cs.Terminated,
)


def cobs_encode(data: bytes) -> bytes:
    """COBS (Cheshire & Baker 1999); a final run of 254 non-zero bytes gets no extra ``01`` code."""
    out = bytearray()
    runs = bytes(data).split(b"\x00")
    for index, run in enumerate(runs):
        while len(run) >= 254:
            out.append(0xFF)
            out += run[:254]
            run = run[254:]
            if not run and index == len(runs) - 1:
                return bytes(out)
        out.append(len(run) + 1)
        out += run
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Inverse of :func:`cobs_encode` for one chunk (no ``0x00``); ``bad_framing`` if invalid.

    The redundant ``01`` code some encoders put after a final 254-byte run is accepted.
    """
    if not data:
        raise _fail("bad_framing", "empty COBS chunk")
    if 0 in data:
        raise _fail("bad_framing", "0x00 inside a COBS chunk")
    out = bytearray()
    end = len(data)
    index = 0
    while index < end:
        code = data[index]
        following = index + code
        if following > end:
            raise _fail("bad_framing", f"COBS code 0x{code:02x} at {index} runs past the chunk")
        out += data[index + 1 : following]
        if code != 0xFF and following < end:
            out.append(0)
        index = following
    return bytes(out)


# --------------------------------------------------------------------------------------------------
# Driving the declarations
# --------------------------------------------------------------------------------------------------


def _parse(con: cs.Construct[Any, Any], data: bytes, **params: Any) -> Any:
    """``con.parse`` with every construct failure turned into a ProtocolError."""
    try:
        return con.parse(data, **params)
    except ProtocolError:
        raise
    except cs.StreamError as exc:
        raise _fail("truncated", str(exc)) from None
    except cs.TerminatedError as exc:
        raise _fail("trailing_bytes", str(exc)) from None
    except cs.ChecksumError as exc:
        raise _fail("bad_crc", str(exc)) from None
    except (cs.ConstructError, struct.error, LookupError, TypeError, ValueError) as exc:
        raise _fail("bad_field", f"{type(exc).__name__}: {exc}") from None


def _build(con: cs.Construct[Any, Any], obj: Any, **params: Any) -> bytes:
    """``con.build`` with every construct failure turned into a ProtocolError(bad_field)."""
    try:
        return con.build(obj, **params)
    except ProtocolError:
        raise
    except (cs.ConstructError, struct.error, LookupError, TypeError, ValueError) as exc:
        raise _fail("bad_field", f"{type(exc).__name__}: {exc}") from None


def _take(
    fields: Any, names: Sequence[str], what: str, optional: Sequence[str] = ()
) -> dict[str, Any]:
    """The named fields of an encoder input, which must have all of them and nothing else."""
    if not isinstance(fields, Mapping):
        raise _fail("bad_field", f"{what} must be a mapping")
    missing = [name for name in names if name not in fields]
    if missing:
        raise _fail("bad_field", f"{what} lacks {', '.join(missing)}")
    unknown = [str(name) for name in fields if name not in names and name not in optional]
    if unknown:
        raise _fail("bad_field", f"{what} has unknown field(s) {', '.join(unknown)}")
    return {name: fields[name] for name in names}


def _bytes(data: Any) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"data must be bytes, not {type(data).__name__}")


def _key(key: bytes | None, kind: str) -> bytes:
    if type(key) is bytes and len(key) == KEY_LEN:
        return key
    if key is None:
        raise TypeError(f"a {kind} is signed: a key is required")
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_LEN:
        raise ValueError(f"a reader key is {KEY_LEN} bytes")
    return bytes(key)


def compute_mac(key: bytes, data: bytes) -> bytes:
    """First 16 bytes of HMAC-SHA256(key, data)."""
    return hmac.digest(key, data, hashlib.sha256)[:MAC_LEN]


def verify_mac(data: bytes, key: bytes) -> bool:
    """Whether the last 16 bytes of a message are its MAC under ``key`` (constant-time compare).

    For a record the gateway could not verify with the reader's current key, this tells whether a
    revoked key made it (verdict ``revoked_key``, §5).
    """
    data = _bytes(data)
    if len(data) <= MAC_LEN:
        return False
    return hmac.compare_digest(data[-MAC_LEN:], compute_mac(_key(key, "message"), data[:-MAC_LEN]))


def _check_mac(data: bytes, key: bytes) -> None:
    expected = hmac.digest(key, data[:-MAC_LEN], hashlib.sha256)[:MAC_LEN]
    if not hmac.compare_digest(data[-MAC_LEN:], expected):
        raise _fail("bad_mac", "MAC does not verify")


def _check_header(data: bytes, mtype: int, name: str) -> None:
    if len(data) < 2:
        raise _fail("truncated", f"{len(data)} bytes, no header")
    if data[0] != VERSION:
        raise _fail("unsupported_version", f"version {data[0]}")
    if data[1] != mtype:
        raise _fail(
            "wrong_type", f"type 0x{data[1]:02x} where a {name} (0x{mtype:02x}) is expected"
        )


def _length_at(data: bytes, offset: int, name: str) -> int:
    if len(data) <= offset:
        raise _fail("truncated", f"{len(data)} bytes, no {name}")
    return data[offset]


def _record_size(data: bytes) -> int:
    uid_len = _length_at(data, 16, "uid_len")
    if uid_len > UID_MAX:
        raise _fail("bad_card", f"uid_len {uid_len} above {UID_MAX}")
    return RECORD_FIXED + uid_len


def _ack_size(data: bytes) -> int:
    count = _length_at(data, 18, "n_verdicts")
    if count > ACK_MAX_VERDICTS:
        raise _fail("bad_count", f"n_verdicts {count} above {ACK_MAX_VERDICTS}")
    return ACK_FIXED + 5 * count


def _command_size(data: bytes) -> int:
    arg_len = _length_at(data, 15, "arg_len")
    if arg_len > ARGS_MAX:
        raise _fail("bad_field", f"arg_len {arg_len} above {ARGS_MAX}")
    return COMMAND_FIXED + arg_len


@dataclass(frozen=True)
class _Message:
    """A fixed-layout message: its declaration and how SPEC §11 sizes it before the MAC."""

    name: str
    mtype: int
    declaration: cs.Construct[Any, Any]
    fields: tuple[str, ...]
    size: Callable[[bytes], int]
    parser: cs.Construct[Any, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parser", self.declaration.compile())

    def decode(self, data: bytes, key: bytes) -> dict[str, Any]:
        _check_header(data, self.mtype, self.name)
        size = self.size(data)
        if len(data) != size:
            code = "truncated" if len(data) < size else "trailing_bytes"
            raise _fail(code, f"{len(data)} bytes, a {self.name} of this layout is {size}")
        _check_mac(data, key)
        parsed = _parse(self.parser, data)
        return {name: parsed[name] for name in self.fields}

    def encode(self, fields: Mapping[str, Any], key: bytes) -> bytes:
        obj = _take(fields, self.fields[:-1], self.name, optional=("mac",))
        obj["mac"] = bytes(MAC_LEN)
        body = _build(self.declaration, obj)[:-MAC_LEN]
        return body + compute_mac(key, body)


def _fixed_size(size: int) -> Callable[[bytes], int]:
    return lambda data: size


_RECORD_FIELDS: Final = (
    "reader_id", "boot", "seq", "clock_synced", "tech", "uid", "time_s", "time_ms", "ticks_ms",
    "mac",
)  # fmt: skip
_HEARTBEAT_FIELDS: Final = (
    "reader_id", "boot", "state", "faults", "fw_version", "link", "rssi_dbm", "clock_synced",
    "time_s", "uptime_s", "free_heap", "queue_depth", "oldest_unsent_age_s", "dropped",
    "last_ack_boot", "last_ack_seq", "mac",
)  # fmt: skip
_MESSAGES: Final[Mapping[str, _Message]] = {
    "record": _Message("record", T_RECORD, RECORD, _RECORD_FIELDS, _record_size),
    "ack": _Message(
        "ack",
        T_ACK,
        ACK,
        ("reader_id", "boot", "first_seq", "last_seq", "verdicts", "mac"),
        _ack_size,
    ),
    "heartbeat": _Message(
        "heartbeat",
        T_HEARTBEAT,
        HEARTBEAT,
        _HEARTBEAT_FIELDS,
        _fixed_size(HEARTBEAT_SIZE),
    ),
    "command": _Message(
        "command",
        T_COMMAND,
        COMMAND,
        ("reader_id", "cmd_seq", "issued_s", "opcode", "args", "mac"),
        _command_size,
    ),
    "result": _Message(
        "result",
        T_RESULT,
        RESULT,
        ("reader_id", "cmd_seq", "status", "mac"),
        _fixed_size(RESULT_SIZE),
    ),
}
_RECORD: Final = _MESSAGES["record"]

# --------------------------------------------------------------------------------------------------
# Batch (§4)
# --------------------------------------------------------------------------------------------------


class BatchHeader(TypedDict):
    """The authenticated header of a batch (what its ack refers to)."""

    reader_id: int
    boot: int
    first_seq: int
    last_seq: int
    mac: bytes




def split_batch(data: bytes, key: bytes) -> tuple[BatchHeader, list[bytes]]:
    """SPEC §4.1 steps 1-5; returns the header and each record's raw bytes (``rec_len`` long).

    The gateway then decodes each record on its own (step 6, ``decode("record", ...)``) so that a
    bad record is quarantined without rejecting its neighbours.
    """
    data = _bytes(data)
    key = _key(key, "batch")
    # step 1
    _check_header(data, T_BATCH, "batch")
    if len(data) > BATCH_MAX:
        raise _fail("too_large", f"{len(data)} bytes, a batch is at most {BATCH_MAX}")
    # steps 2-3: header, count, walking rec_len-prefixed records, then exactly the MAC. The
    # ingest's hot path: a well-formed batch is walked with plain offsets; anything else goes
    # through the declaration, which names the exact error.
    records = _walk_records(data)
    if records is None:
        parsed = _parse(BATCH, data)
        records = list(parsed["records"])
    reader_id, boot, first_seq, last_seq = _BATCH_HEAD.unpack_from(data, 2)
    # step 4
    _check_mac(data, key)
    # step 5
    seqs = []
    for index, record in enumerate(records):
        rec_reader, rec_boot, seq = _RECORD_IDENTITY.unpack_from(record, 2)
        if rec_reader != reader_id or rec_boot != boot:
            raise _fail(
                "identity_mismatch",
                f"record {index} is ({rec_reader}, {rec_boot}), the batch ({reader_id}, {boot})",
            )
        seqs.append(seq)
    _check_sequence(seqs, first_seq, last_seq)
    header: BatchHeader = {
        "reader_id": reader_id,
        "boot": boot,
        "first_seq": first_seq,
        "last_seq": last_seq,
        "mac": data[-MAC_LEN:],
    }
    return header, records


_BATCH_HEAD = struct.Struct(">IIII")
_RECORD_IDENTITY = struct.Struct(">III")


def _walk_records(data: bytes) -> list[bytes] | None:
    """The record slices of a structurally valid batch, or None to let ``BATCH`` find the error."""
    if len(data) < BATCH_HEADER + MAC_LEN:
        return None
    count = data[BATCH_HEADER - 1]
    if not 1 <= count <= BATCH_MAX_RECORDS:
        return None
    end = len(data) - MAC_LEN
    pos = BATCH_HEADER
    records = []
    for _ in range(count):
        if pos >= end:
            return None
        size = data[pos]
        if not RECORD_MIN <= size <= RECORD_MAX or pos + 1 + size > end:
            return None
        records.append(data[pos + 1 : pos + 1 + size])
        pos += 1 + size
    return records if pos == end else None


_ACK_HEAD = struct.Struct(">BBIIIIB")
_ACK_VERDICT = struct.Struct(">IB")


def ack_for_batch(reader_id: int, boot: int, first_seq: int, last_seq: int,
                  verdicts: Mapping[int, str], key: bytes) -> bytes:
    """The signed ack of a batch ``split_batch`` accepted, with ``{seq: verdict}`` (§5).

    The ingest's hot path: ``struct`` and one HMAC instead of building ``ACK`` (about ten times
    faster). The identity and range come from a header ``split_batch`` checked; the verdicts are
    checked here with the declaration's rules, and the tests compare both builders byte for byte.
    """
    if len(verdicts) > ACK_MAX_VERDICTS:
        raise _fail("bad_count", f"{len(verdicts)} verdicts, at most {ACK_MAX_VERDICTS}")
    out = bytearray(_ACK_HEAD.pack(VERSION, T_ACK, reader_id, boot, first_seq, last_seq,
                                   len(verdicts)))
    for seq in sorted(verdicts):
        code = _VERDICT_CODES.get(verdicts[seq])
        if code is None:
            raise _fail("bad_field", f"unknown verdict {verdicts[seq]!r}")
        if not first_seq <= seq <= last_seq:
            raise _fail("bad_sequence", f"verdict seq {seq} outside {first_seq}..{last_seq}")
        out += _ACK_VERDICT.pack(seq, code)
    out += hmac.digest(_key(key, "ack"), out, hashlib.sha256)[:MAC_LEN]
    return bytes(out)


def _check_sequence(seqs: Sequence[int], first_seq: int, last_seq: int) -> None:
    for previous, seq in itertools.pairwise(seqs):
        if seq <= previous:
            raise _fail("bad_sequence", f"record seqs not strictly ascending: {previous}, {seq}")
    if seqs[0] != first_seq:
        raise _fail("bad_sequence", f"first record seq {seqs[0]} != first_seq {first_seq}")
    if seqs[-1] != last_seq:
        raise _fail("bad_sequence", f"last record seq {seqs[-1]} != last_seq {last_seq}")


def _decode_batch(data: bytes, key: bytes) -> dict[str, Any]:
    header, records = split_batch(data, key)
    return {
        "reader_id": header["reader_id"],
        "boot": header["boot"],
        "first_seq": header["first_seq"],
        "last_seq": header["last_seq"],
        "records": [_RECORD.decode(record, key) for record in records],  # step 6
        "mac": header["mac"],
    }


def _encode_batch(fields: Mapping[str, Any], key: bytes) -> bytes:
    names = ("reader_id", "boot", "first_seq", "last_seq", "records")
    obj = _take(fields, names, "batch", optional=("mac",))
    records = obj["records"]
    if not isinstance(records, list | tuple):
        raise _fail("bad_field", "records must be a list of record fields")
    if not 1 <= len(records) <= BATCH_MAX_RECORDS:
        raise _fail("bad_count", f"{len(records)} records, a batch has 1..{BATCH_MAX_RECORDS}")
    raw = [_RECORD.encode(record, key) for record in records]
    obj["records"] = raw
    obj["mac"] = bytes(MAC_LEN)
    body = _build(BATCH, obj)[:-MAC_LEN]
    if len(body) + MAC_LEN > BATCH_MAX:
        raise _fail("too_large", f"{len(body) + MAC_LEN} bytes, a batch is at most {BATCH_MAX}")
    for index, record in enumerate(records):
        if record["reader_id"] != obj["reader_id"] or record["boot"] != obj["boot"]:
            raise _fail("identity_mismatch", f"record {index} is not of the batch's reader/boot")
    _check_sequence([record["seq"] for record in records], obj["first_seq"], obj["last_seq"])
    return body + compute_mac(key, body)


# --------------------------------------------------------------------------------------------------
# Frame (§9.1)
# --------------------------------------------------------------------------------------------------

_FTYPE_CODES: Final[Mapping[str, int]] = {name: code for code, name in FTYPES.items()}
_FRAME_FIELDS: Final = ("addr", "ftype", "fseq", "payload")


def _check_frame_fields(addr: int, ftype: str | None, payload: bytes) -> None:
    if not ADDR_MIN <= addr <= ADDR_MAX:
        raise _fail("bad_field", f"addr {addr} outside {ADDR_MIN}..{ADDR_MAX}")
    if ftype is None:
        raise _fail("bad_field", "unknown ftype")
    if payload and ftype in FTYPES_WITHOUT_PAYLOAD:
        raise _fail("trailing_bytes", f"{len(payload)}-byte payload on {ftype}")
    if len(payload) > FRAME_PAYLOAD_MAX:
        raise _fail("too_large", f"payload of {len(payload)} bytes, at most {FRAME_PAYLOAD_MAX}")


def _decode_frame(data: bytes) -> dict[str, Any]:
    if len(data) < 2 or data[0] != 0 or data[-1] != 0:
        raise _fail("bad_framing", "a frame begins and ends with 0x00")
    chunk = data[1:-1]
    if len(chunk) > FRAME_CHUNK_MAX:
        raise _fail("too_large", f"{len(chunk)}-byte chunk, at most {FRAME_CHUNK_MAX}")
    body = cobs_decode(chunk)
    if len(body) < FRAME_OVERHEAD:
        raise _fail("truncated", f"{len(body)}-byte frame body")
    covered = _parse(FRAME_BODY, body, payload_len=len(body) - FRAME_OVERHEAD)["covered"]["value"]
    ftype = FTYPES.get(covered["ftype"])
    _check_frame_fields(covered["addr"], ftype, covered["payload"])
    return {
        "addr": covered["addr"],
        "ftype": ftype,
        "fseq": covered["fseq"],
        "payload": covered["payload"],
    }


def _encode_frame(fields: Mapping[str, Any]) -> bytes:
    obj = _take(fields, _FRAME_FIELDS, "frame")
    addr = _uint("addr", obj["addr"], U8_MAX)
    ftype = obj["ftype"]
    fseq = _uint("fseq", obj["fseq"], U8_MAX)
    payload = obj["payload"]
    if not isinstance(payload, bytes | bytearray):
        raise _fail("bad_field", "payload must be bytes")
    payload = bytes(payload)
    code = _FTYPE_CODES.get(ftype) if isinstance(ftype, str) else None
    _check_frame_fields(addr, ftype if code is not None else None, payload)
    value = {"addr": addr, "ftype": code, "fseq": fseq, "payload": payload}
    body = _build(FRAME_BODY, {"covered": {"value": value}}, payload_len=len(payload))
    return b"\x00" + cobs_encode(body) + b"\x00"


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


def decode(kind: str, data: bytes, key: bytes | None) -> dict[str, Any]:
    """Decode one message of ``kind`` (fields as in vectors/README.md), or raise ProtocolError.

    ``key`` is the reader's 32-byte key, ``None`` for ``frame`` (whose wire bytes, delimiters
    included, are ``data``).
    """
    data = _bytes(data)
    if kind == "frame":
        return _decode_frame(data)
    if kind == "batch":
        return _decode_batch(data, _key(key, kind))
    message = _MESSAGES.get(kind)
    if message is None:
        raise ValueError(f"unknown kind {kind!r}; one of {sorted(KINDS)}")
    return message.decode(data, _key(key, kind))


def encode(kind: str, fields: Mapping[str, Any], key: bytes | None) -> bytes:
    """Encode ``fields`` as a message of ``kind``; the MAC is computed from ``key`` (``mac`` in
    ``fields`` is ignored). Invalid fields raise the ProtocolError the decoder would raise.
    """
    if kind == "frame":
        return _encode_frame(fields)
    if kind == "batch":
        return _encode_batch(fields, _key(key, kind))
    message = _MESSAGES.get(kind)
    if message is None:
        raise ValueError(f"unknown kind {kind!r}; one of {sorted(KINDS)}")
    return message.encode(fields, _key(key, kind))
