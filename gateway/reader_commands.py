"""Commands from the gateway to its readers (SPEC.md section 7): issue, sign, deliver, settle.

One module for the concern. The table is ``reader_commands`` (``gateway/migrations/0006``).

**Issuing** (:func:`issue`) writes a ``pending`` row, from any process: the operator's CLI
(``attendance-gateway readers command``) or the gateway itself (:func:`auto_set_time`). Arguments
are checked by the protocol's own encoder (``protocol/construct_codec.py``), so the ranges of
SPEC §7.1 live in one place. ``cmd_seq`` is strictly increasing per reader and never given twice:
the last one is kept in ``reader_command_seq``, which pruning never touches, and each new one is
also at least the gateway clock in Unix seconds. The reader refuses any ``cmd_seq`` not above the
last it applied (``stale``); with the clock floor a gateway whose database was restored from an
older backup, or rebuilt, still issues numbers above everything it issued before.

**Delivering** is the running gateway's :class:`CommandDispatcher`. It polls the table every
second (one indexed query on a separate read connection; the writes go through the ingest's
writer thread, the database's only writer in the service) and sends each reader its *oldest* open
command only, stop and wait: were a later command to overtake a lost one, the reader would apply
the later one and refuse the earlier as ``stale``. A command goes out only when it can arrive at
once: over MQTT (``att/v1/{school}/{reader}/down/cmd``, QoS 1, not retained) to a reader whose
last heartbeat said ``online`` while the gateway's session is up, or to a reader on an RS-485 bus
whose master has it answering. The message is signed with the reader's active key at the first
send (``set_time`` without arguments takes the gateway clock of that moment) and stored; a
command without a result ``resend_after_ms`` after a send is sent again with the *same bytes*
(the reader answers a repeat of its last command with the same result and does not apply it
again), and one still unanswered ``resend_after_ms * max_attempts`` after its first send, or
still undelivered ``max_age_ms`` after it was issued, is ``expired``. A command of a revoked
reader is ``cancelled``; so is an older pending ``set_time`` when a newer one is issued.

**Settling** (:func:`record_result`) happens in the ingest, for results whose MAC verified. The
reader's first definitive answer (``ok``, ``unknown_opcode``, ``bad_args``, ``failed``) is kept:
repeats are counted, and a later ``stale`` (the answer to a resend that arrived after a newer
command) never overwrites it. A result for an ``expired`` command still settles it: it tells
what the reader did. A result for a ``cmd_seq`` the gateway never issued changes nothing.

**Automatic time** (:func:`auto_set_time`): a reader on an RS-485 bus has no NTP. When one of
its (fresh) heartbeats says its clock is not synced, or is more than ``clock_threshold_ms`` off
the gateway's receive time, the ingest issues a ``set_time`` (source ``auto``), at most one
``set_time`` per reader per ``auto_interval_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, TypeVar, cast

from gateway.db import atomic
from gateway.metrics import GatewayMetrics
from gateway.rs485 import ReaderLink
from gateway.types import Clock, KeyRing, TransactionRunner, system_clock
from protocol import codec, construct_codec
from protocol.errors import ProtocolError

log = logging.getLogger("gateway.commands")

Opcode = Literal["set_time", "set_config", "request_heartbeat", "reboot"]
Status = Literal[
    "pending", "sent", "ok", "unknown_opcode", "bad_args", "stale", "failed", "expired", "cancelled"
]
Transport = Literal["mqtt", "rs485"]
ResultOutcome = Literal["recorded", "repeat", "kept", "unknown_command"]
ErrorCode = Literal["bad_value", "unknown_reader", "reader_revoked", "seq_exhausted"]

OPCODES: tuple[str, ...] = tuple(construct_codec.OPCODES.values())
RESULT_STATUSES: tuple[str, ...] = tuple(construct_codec.STATUSES.values())
# set_config keys and their ranges, as the reader's own codec declares them (SPEC §7.1)
CONFIG_RANGES: Mapping[str, tuple[int, int]] = {
    name: (lowest, highest) for name, _width, lowest, highest in codec.CONFIG_KEYS[1:]
}
OPEN: tuple[Status, ...] = ("pending", "sent")
ANSWERED: tuple[Status, ...] = ("ok", "unknown_opcode", "bad_args", "failed")
SOURCE_MAX = 32
POLL_S = 1.0
PRUNE_EVERY_S = 3600.0
_U32_MAX = 0xFFFF_FFFF
_PROBE_KEY = bytes(32)  # arguments are checked by encoding them; this MAC is thrown away
_T = TypeVar("_T")


class CommandError(Exception):
    """A command that was refused; ``code`` says why (the CLI translates it)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CommandPolicy:
    """Timeouts and limits of command delivery; tests shrink them."""

    resend_after_ms: int = 10_000  # no result this long after a send: send the same bytes again
    max_attempts: int = 3  # sends per command; unanswered resend_after_ms * this: expired
    max_age_ms: int = 3_600_000  # an open command older than this expires (reader never online)
    clock_threshold_ms: int = 2_000  # auto set_time when a bus reader's clock is off by more
    auto_interval_ms: int = 60_000  # at most one set_time per reader in this window (auto)
    retention_ms: int = 90 * 86_400_000  # settled commands older than this are pruned

    @property
    def answer_window_ms(self) -> int:
        return self.resend_after_ms * self.max_attempts


DEFAULT_POLICY = CommandPolicy()


@dataclass(frozen=True)
class Command:
    """One row of ``reader_commands``."""

    command_id: int
    reader_id: int
    cmd_seq: int
    opcode: Opcode
    args: Mapping[str, int]
    source: str
    issued_ms: int
    status: Status
    attempts: int = 0
    sent_ms: int | None = None
    last_sent_ms: int | None = None
    transport: Transport | None = None
    key_id: int | None = None
    message: bytes | None = field(default=None, repr=False)
    result_ms: int | None = None
    results_seen: int = 0
    detail: str | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN


@dataclass(frozen=True)
class Delivery:
    """A command to put on the wire now: ``message`` to ``command.reader_id`` over ``transport``."""

    command: Command
    message: bytes = field(repr=False)
    transport: Transport


@dataclass(frozen=True)
class Due:
    """What one dispatcher step decided (in one transaction)."""

    deliveries: list[Delivery] = field(default_factory=list)
    settled: list[Command] = field(default_factory=list)  # expired or cancelled now


_COLUMNS = (
    "command_id, reader_id, cmd_seq, opcode, args, source, issued_ms, status, attempts, "
    "sent_ms, last_sent_ms, transport, key_id, message, result_ms, results_seen, detail"
)


def _command(row: sqlite3.Row | tuple[object, ...]) -> Command:
    r = tuple(row)
    message = r[13]
    return Command(
        command_id=int(cast(int, r[0])),
        reader_id=int(cast(int, r[1])),
        cmd_seq=int(cast(int, r[2])),
        opcode=cast(Opcode, r[3]),
        args=json.loads(cast(str, r[4])),
        source=str(r[5]),
        issued_ms=int(cast(int, r[6])),
        status=cast(Status, r[7]),
        attempts=int(cast(int, r[8])),
        sent_ms=cast("int | None", r[9]),
        last_sent_ms=cast("int | None", r[10]),
        transport=cast("Transport | None", r[11]),
        key_id=cast("int | None", r[12]),
        message=bytes(cast(bytes, message)) if message is not None else None,
        result_ms=cast("int | None", r[14]),
        results_seen=int(cast(int, r[15])),
        detail=cast("str | None", r[16]),
    )


# -- issuing ----------------------------------------------------------------------------------


def time_args(now_ms: int) -> dict[str, int]:
    """``set_time`` arguments for the Unix time ``now_ms``."""
    return {"time_s": now_ms // 1000, "time_ms": now_ms % 1000}


def check_args(
    reader_id: int,
    opcode: str,
    args: Mapping[str, int],
    now_ms: int = 0,
) -> dict[str, int]:
    """``args`` as a plain dict if the protocol accepts them for ``opcode``, else CommandError.

    ``set_time`` without arguments is allowed: the gateway's time when the command is sent.
    """
    if opcode not in OPCODES:
        raise CommandError("bad_value", f"unknown command {opcode!r}; one of {', '.join(OPCODES)}")
    checked = dict(args)
    probe = time_args(now_ms) if opcode == "set_time" and not checked else checked
    try:
        construct_codec.encode(
            "command",
            {"reader_id": reader_id, "cmd_seq": 1, "issued_s": 0, "opcode": opcode, "args": probe},
            _PROBE_KEY,
        )
    except ProtocolError as exc:
        raise CommandError("bad_value", f"{opcode}: {exc.detail or exc.code}") from None
    return checked


def _args_json(args: Mapping[str, int]) -> str:
    return json.dumps(dict(args), sort_keys=True, separators=(",", ":"))


def _next_seq(conn: sqlite3.Connection, reader_id: int, now_ms: int) -> int:
    row = conn.execute(
        "SELECT last_cmd_seq FROM reader_command_seq WHERE reader_id = ?", (reader_id,)
    ).fetchone()
    seq = max(int(row[0]) + 1 if row is not None else 1, now_ms // 1000)
    if seq > _U32_MAX:
        raise CommandError("seq_exhausted", f"reader {reader_id} has used every cmd_seq")
    conn.execute(
        "INSERT INTO reader_command_seq (reader_id, last_cmd_seq) VALUES (?, ?) "
        "ON CONFLICT (reader_id) DO UPDATE SET last_cmd_seq = excluded.last_cmd_seq",
        (reader_id, seq),
    )
    return seq


def issue(
    conn: sqlite3.Connection,
    reader_id: int,
    opcode: str,
    args: Mapping[str, int],
    now_ms: int,
    source: str,
) -> Command:
    """Queue a command for ``reader_id``; the running gateway delivers it.

    Raises CommandError: ``bad_value`` (unknown opcode, arguments SPEC §7.1 refuses, bad
    source), ``unknown_reader``, ``reader_revoked``. Joins the caller's transaction if there is
    one, else runs in its own.
    """
    if not 1 <= len(source) <= SOURCE_MAX or not source.isprintable():
        raise CommandError("bad_value", f"source must be 1-{SOURCE_MAX} printable characters")
    if isinstance(reader_id, bool) or not 1 <= reader_id <= construct_codec.READER_ID_MAX:
        raise CommandError("bad_value", f"reader id must be 1..{construct_codec.READER_ID_MAX}")
    checked = check_args(reader_id, opcode, args, now_ms)
    with atomic(conn, "reader_commands"):
        row = conn.execute(
            "SELECT status FROM readers WHERE reader_id = ?", (reader_id,)
        ).fetchone()
        if row is None:
            raise CommandError("unknown_reader", f"reader {reader_id} is not registered")
        if row[0] != "active":
            raise CommandError("reader_revoked", f"reader {reader_id} is revoked")
        seq = _next_seq(conn, reader_id, now_ms)
        if opcode == "set_time":  # a newer time makes an older one not yet sent pointless
            conn.execute(
                "UPDATE reader_commands SET status = 'cancelled', detail = ? "
                "WHERE reader_id = ? AND opcode = 'set_time' AND status = 'pending'",
                (f"superseded by {seq}", reader_id),
            )
        created = conn.execute(
            "INSERT INTO reader_commands (reader_id, cmd_seq, opcode, args, source, issued_ms) "
            f"VALUES (?, ?, ?, ?, ?, ?) RETURNING {_COLUMNS}",
            (reader_id, seq, opcode, _args_json(checked), source, now_ms),
        ).fetchone()
    return _command(created)


def auto_set_time(
    conn: sqlite3.Connection,
    reader_id: int,
    clock_synced: bool,
    time_s: int,
    received_ms: int,
    transport: str,
    policy: CommandPolicy = DEFAULT_POLICY,
) -> Command | None:
    """After a fresh, verified heartbeat: issue a ``set_time`` if an RS-485 reader needs one.

    Runs inside the ingest's transaction. Only readers heard over a bus are set (the others
    have NTP); ``time_s`` is whole seconds, so the reader's clock is taken at mid-second.
    """
    if not transport.startswith("rs485"):
        return None
    off_ms = time_s * 1000 + 500 - received_ms
    if clock_synced and abs(off_ms) <= policy.clock_threshold_ms:
        return None
    recent = conn.execute(
        "SELECT 1 FROM reader_commands WHERE reader_id = ? AND issued_ms > ? "
        "AND opcode = 'set_time' LIMIT 1",
        (reader_id, received_ms - policy.auto_interval_ms),
    ).fetchone()
    if recent is not None:
        return None
    try:
        return issue(conn, reader_id, "set_time", {}, received_ms, "auto")
    except CommandError:  # a revoked or unknown reader: nothing to set
        return None


# -- delivering -------------------------------------------------------------------------------


def sign(command: Command, key: bytes) -> bytes:
    """The signed ``command`` message (SPEC §7.1) of a row whose arguments are all known."""
    if command.opcode == "set_time" and not command.args:
        raise ValueError("set_time without its time: give time_args(now) when sending")
    return construct_codec.encode(
        "command",
        {
            "reader_id": command.reader_id,
            "cmd_seq": command.cmd_seq,
            "issued_s": min(command.issued_ms // 1000, _U32_MAX),
            "opcode": command.opcode,
            "args": dict(command.args),
        },
        key,
    )


def has_open(conn: sqlite3.Connection) -> bool:
    """Whether any command waits for a send or a result (the dispatcher's cheap poll)."""
    return (
        conn.execute(
            "SELECT 1 FROM reader_commands WHERE status IN ('pending', 'sent') LIMIT 1"
        ).fetchone()
        is not None
    )


def pending(
    conn: sqlite3.Connection, now_ms: int, policy: CommandPolicy = DEFAULT_POLICY
) -> list[Command]:
    """The commands to send now: each reader's oldest open command, if it is pending or its
    last send is ``resend_after_ms`` old with attempts left (stop and wait per reader)."""
    due: list[Command] = []
    seen: set[int] = set()
    for row in conn.execute(
        f"SELECT {_COLUMNS} FROM reader_commands "
        "WHERE status IN ('pending', 'sent') ORDER BY reader_id, cmd_seq"
    ):
        command = _command(row)
        if command.reader_id in seen:
            continue
        seen.add(command.reader_id)
        if command.status == "pending" or (
            command.attempts < policy.max_attempts
            and command.last_sent_ms is not None
            and now_ms - command.last_sent_ms >= policy.resend_after_ms
        ):
            due.append(command)
    return due


def mark_sent(
    conn: sqlite3.Connection,
    command_id: int,
    now_ms: int,
    transport: Transport,
    message: bytes,
    *,
    key_id: int | None = None,
    args: Mapping[str, int] | None = None,
) -> Command | None:
    """Record one send of an open command. The first send fixes ``message`` (and the ``args``
    and ``key_id`` it was made with); later sends keep them. None if it is no longer open."""
    row = conn.execute(
        "UPDATE reader_commands SET status = 'sent', attempts = attempts + 1, "
        "sent_ms = COALESCE(sent_ms, ?), last_sent_ms = ?, transport = ?, "
        "args = CASE WHEN message IS NULL AND ? IS NOT NULL THEN ? ELSE args END, "
        "key_id = COALESCE(key_id, ?), message = COALESCE(message, ?) "
        f"WHERE command_id = ? AND status IN ('pending', 'sent') RETURNING {_COLUMNS}",
        (
            now_ms,
            now_ms,
            transport,
            None if args is None else 1,
            None if args is None else _args_json(args),
            key_id,
            message,
            command_id,
        ),
    ).fetchone()
    return None if row is None else _command(row)


def expire(
    conn: sqlite3.Connection, now_ms: int, policy: CommandPolicy = DEFAULT_POLICY
) -> list[Command]:
    """Expire open commands: sent and unanswered for the whole answer window, or not settled
    ``max_age_ms`` after they were issued. Returns them."""
    window = policy.answer_window_ms
    rows = conn.execute(
        "UPDATE reader_commands SET status = 'expired', detail = CASE "
        "WHEN status = 'pending' THEN ? ELSE ? || attempts || ? END "
        "WHERE status IN ('pending', 'sent') AND (issued_ms <= ? "
        "OR (status = 'sent' AND sent_ms <= ?)) "
        f"RETURNING {_COLUMNS}",
        (
            f"not delivered within {policy.max_age_ms // 1000} s (reader not reachable)",
            "no result after ",
            " send(s)",
            now_ms - policy.max_age_ms,
            now_ms - window,
        ),
    ).fetchall()
    return sorted((_command(r) for r in rows), key=lambda c: (c.reader_id, c.cmd_seq))


def _cancel(conn: sqlite3.Connection, command: Command, detail: str) -> Command:
    row = conn.execute(
        "UPDATE reader_commands SET status = 'cancelled', detail = ? WHERE command_id = ? "
        f"RETURNING {_COLUMNS}",
        (detail, command.command_id),
    ).fetchone()
    return _command(row)


def take_due(
    conn: sqlite3.Connection,
    now_ms: int,
    keys: KeyRing,
    *,
    mqtt_up: bool,
    bus_readers: frozenset[int] | set[int],
    policy: CommandPolicy = DEFAULT_POLICY,
) -> Due:
    """One dispatcher step, in the writer's transaction: expire, then sign and mark sent each
    command that can be delivered now. ``mqtt_up``: the gateway's MQTT session is up;
    ``bus_readers``: the readers a bus master has answering now."""
    out = Due(settled=expire(conn, now_ms, policy))
    revoked = conn.execute(
        "UPDATE reader_commands SET status = 'cancelled', detail = 'reader revoked' "
        "WHERE status IN ('pending', 'sent') AND reader_id IN "
        f"(SELECT reader_id FROM readers WHERE status != 'active') RETURNING {_COLUMNS}"
    ).fetchall()
    out.settled.extend(sorted((_command(r) for r in revoked), key=lambda c: c.cmd_seq))
    for command in pending(conn, now_ms, policy):
        reader = conn.execute(
            "SELECT r.bus_port, s.state FROM readers r "
            "LEFT JOIN reader_status s ON s.reader_id = r.reader_id WHERE r.reader_id = ?",
            (command.reader_id,),
        ).fetchone()
        transport: Transport
        if reader[0] is not None:
            transport, reachable = "rs485", command.reader_id in bus_readers
        else:
            transport, reachable = "mqtt", mqtt_up and reader[1] == "online"
        if not reachable:
            continue
        message, args, key_id = command.message, None, None
        if message is None:
            key = keys.active(command.reader_id)
            if key is None:
                out.settled.append(_cancel(conn, command, "reader has no active key"))
                continue
            if command.opcode == "set_time" and not command.args:
                args = time_args(now_ms)
                command = replace(command, args=args)
            message, key_id = sign(command, key.key), key.key_id
        sent = mark_sent(
            conn, command.command_id, now_ms, transport, message, key_id=key_id, args=args
        )
        if sent is not None:
            out.deliveries.append(Delivery(sent, message, transport))
    return out


# -- settling ---------------------------------------------------------------------------------


def record_result(
    conn: sqlite3.Connection, reader_id: int, cmd_seq: int, status: str, now_ms: int
) -> ResultOutcome:
    """Apply a verified result (inside the ingest's transaction). ``recorded``: the row took
    the status; ``repeat``: the same answer again; ``kept``: another answer after a definitive
    one (e.g. a late ``stale``), ignored; ``unknown_command``: no such command."""
    if status not in RESULT_STATUSES:
        raise ValueError(f"not a result status: {status!r}")
    row = conn.execute(
        "SELECT status FROM reader_commands WHERE reader_id = ? AND cmd_seq = ?",
        (reader_id, cmd_seq),
    ).fetchone()
    if row is None:
        return "unknown_command"
    current = str(row[0])
    if current in ANSWERED or (current == "stale" and status == "stale"):
        conn.execute(
            "UPDATE reader_commands SET results_seen = results_seen + 1 "
            "WHERE reader_id = ? AND cmd_seq = ?",
            (reader_id, cmd_seq),
        )
        return "repeat" if status == current else "kept"
    conn.execute(
        "UPDATE reader_commands SET status = ?, result_ms = ?, "
        "results_seen = results_seen + 1 WHERE reader_id = ? AND cmd_seq = ?",
        (status, now_ms, reader_id, cmd_seq),
    )
    return "recorded"


# -- reading ----------------------------------------------------------------------------------


def get(conn: sqlite3.Connection, command_id: int) -> Command | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM reader_commands WHERE command_id = ?", (command_id,)
    ).fetchone()
    return None if row is None else _command(row)


def recent(
    conn: sqlite3.Connection, reader_id: int | None = None, limit: int = 20
) -> list[Command]:
    """The latest commands, newest first (of one reader if given)."""
    if reader_id is None:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM reader_commands ORDER BY command_id DESC LIMIT ?", (limit,)
        )
    else:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM reader_commands WHERE reader_id = ? "
            "ORDER BY cmd_seq DESC LIMIT ?",
            (reader_id, limit),
        )
    return [_command(r) for r in rows]


def prune(conn: sqlite3.Connection, before_ms: int) -> int:
    """Delete settled commands issued before ``before_ms``; returns how many. Sequence numbers
    are kept apart (``reader_command_seq``), so none is ever given again."""
    with atomic(conn, "reader_commands"):
        return conn.execute(
            "DELETE FROM reader_commands WHERE issued_ms < ? AND status NOT IN ('pending', 'sent')",
            (before_ms,),
        ).rowcount


# -- the running gateway's side ---------------------------------------------------------------


class Writer(TransactionRunner, Protocol):
    """Where the dispatcher's writes go: the ingest (its writer thread) and its key ring."""

    @property
    def keys(self) -> KeyRing: ...


class MqttLink(Protocol):
    """The MQTT session (gateway/service.py)."""

    @property
    def connected(self) -> asyncio.Event: ...

    def publish_command(self, reader_id: int, message: bytes) -> bool: ...


class BusLink(Protocol):
    """An RS-485 bus master (gateway/rs485.py)."""

    def send_command(self, reader_id: int, command: bytes) -> bool: ...

    def withdraw_command(self, reader_id: int, command: bytes) -> bool: ...

    def links(self) -> list[ReaderLink]: ...


class CommandDispatcher:
    """Delivers, resends and expires commands while the gateway runs; see the module docstring.

    ``read_conn``: a connection of its own for the once-a-second look at the table (without it
    every step goes through the writer).
    """

    def __init__(
        self,
        writer: Writer,
        *,
        mqtt: MqttLink | None = None,
        buses: Sequence[BusLink] = (),
        read_conn: sqlite3.Connection | None = None,
        metrics: GatewayMetrics | None = None,
        clock: Clock = system_clock,
        policy: CommandPolicy = DEFAULT_POLICY,
        poll_s: float = POLL_S,
    ) -> None:
        self._writer = writer
        self._mqtt = mqtt
        self._buses = list(buses)
        self._read_conn = read_conn
        self.metrics = metrics
        self._clock = clock
        self.policy = policy
        self._poll_s = poll_s
        self._pruned_at: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Step every ``poll_s`` until ``stop``; a failed step is logged and retried."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                await self.step()
                if self._pruned_at is None or loop.time() - self._pruned_at >= PRUNE_EVERY_S:
                    self._pruned_at = loop.time()
                    before = self._clock() - self.policy.retention_ms
                    pruned = await self._writer.run_in_transaction(
                        functools.partial(prune, before_ms=before)
                    )
                    if pruned:
                        log.info("old commands pruned", extra={"commands": pruned})
            except Exception as exc:
                log.error("command delivery step failed", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._poll_s)

    async def step(self) -> Due:
        """Expire, then deliver what can go now; returns what was decided."""
        if self._read_conn is not None:
            conn = self._read_conn
            if not await asyncio.get_running_loop().run_in_executor(None, has_open, conn):
                return Due()
        now = self._clock()
        keys = self._writer.keys
        mqtt_up = self._mqtt is not None and self._mqtt.connected.is_set()
        bus_readers = frozenset(
            link.reader_id for bus in self._buses for link in bus.links() if link.answering
        )
        policy = self.policy
        due = await self._writer.run_in_transaction(
            lambda conn: take_due(
                conn, now, keys, mqtt_up=mqtt_up, bus_readers=bus_readers, policy=policy
            )
        )
        for command in due.settled:
            self._settled(command)
        for delivery in due.deliveries:
            self._deliver(delivery)
        return due

    def _deliver(self, delivery: Delivery) -> None:
        command = delivery.command
        fields = {
            "reader_id": command.reader_id,
            "cmd_seq": command.cmd_seq,
            "opcode": command.opcode,
            "source": command.source,
            "transport": delivery.transport,
            "attempt": command.attempts,
        }
        if delivery.transport == "mqtt":
            assert self._mqtt is not None
            handed = self._mqtt.publish_command(command.reader_id, delivery.message)
        else:
            handed = any(
                bus.send_command(command.reader_id, delivery.message) for bus in self._buses
            )
        m = self.metrics
        if m is not None:
            if command.attempts == 1:
                m.commands_issued.labels(command.opcode, command.source).inc()
            if handed:
                m.commands_sent.labels(
                    delivery.transport, "first" if command.attempts == 1 else "resend"
                ).inc()
        if handed:
            log.info("command sent", extra=fields)
        else:  # counted as an attempt all the same: sent again after the timeout
            log.warning("command not handed to its transport", extra=fields)

    def _settled(self, command: Command) -> None:
        if command.transport == "rs485" and command.message is not None:
            for bus in self._buses:  # still queued for a reader that stopped answering
                bus.withdraw_command(command.reader_id, command.message)
        m = self.metrics
        if m is not None:
            if command.attempts == 0:
                m.commands_issued.labels(command.opcode, command.source).inc()
            m.commands_settled.labels(command.status).inc()
        log.warning(
            f"command {command.status}",
            extra={
                "reader_id": command.reader_id,
                "cmd_seq": command.cmd_seq,
                "opcode": command.opcode,
                "source": command.source,
                "attempts": command.attempts,
                "detail": command.detail,
            },
        )
