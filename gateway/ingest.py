"""The gateway's ingest: verify, deduplicate, timestamp and durably store what readers send.

:class:`Ingest` implements :class:`gateway.types.IngestSink` for every transport (MQTT, RS-485)
over one SQLite connection (``gateway/db.py``: WAL, ``synchronous=FULL``).

**One writer thread.** Every message goes through one FIFO queue to one thread that owns the
connection: a reader's messages are handled in arrival order, verification included, and the
event loop never waits for the disk. A durable COMMIT costs ~0.3 ms on the development VM but
2-20 ms on a Raspberry Pi's SD card; on the loop that would stall every reader's MQTT traffic for
that long (docs/gateway.md has the measurements).

**Group commit.** The writer opens a transaction for the first message it takes and keeps adding
the messages already waiting, up to ``ingest.group_commit_max`` records or ``group_commit_ms``
since the transaction began, then commits once. It never sleeps hoping for more: messages that
arrive while a COMMIT is being flushed wait in the queue and form the next group, so groups grow
exactly when the disk is the bottleneck and a lone tap is committed at once. (Waiting would also
starve the MQTT transport, whose broker sends only a window of unacknowledged messages.) If one
message of a group fails unexpectedly (database error, rules hook), the group is rolled back and
each message retried in a transaction of its own: the one at fault is left unacknowledged, its
neighbours commit.

**Caches.** The writer is the only writer of ``reader_boots`` and ``reader_status``, so it keeps
them in memory, writes them in the same transaction, and forgets them on any rollback; the
readers' gates are cached until the key ring is replaced. Consecutive batches of a group share one
multi-row INSERT (``RETURNING`` tells which records were new), one upsert per boot and one call
of the rules, so a group costs a handful of statements however many batches it holds.

**Ack after commit (invariant 3).** A message's outcome, and with it the signed ack, is handed
back to the event loop only after COMMIT returned; if the COMMIT fails nothing is acknowledged
and the readers resend.

**What a batch gets** (SPEC.md sections 4.1 and 5): a batch failing steps 1-5, from an unknown
reader, or verifying only with a revoked key is quarantined whole and gets no ack. Otherwise
each record is stored once per identity ``(reader, boot, seq)``; an exact duplicate is counted
and acknowledged again; a record that fails on its own (bad MAC, malformed, revoked key, or an
identity already stored with different bytes) is quarantined and named in the ack's verdicts.
Records that verify with a *retired* key are accepted (they were queued across a key rotation),
and the ack is signed with the key the batch itself verified with, which is the reader's active
key except while a rotation is still reaching the reader.

Quarantine rows are deduplicated on ``(sha256(raw), reason)`` with ``times_seen``; metrics and
logs follow the commit (nothing is counted that was rolled back). Logs never carry card UIDs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

from gateway import reader_commands, timing
from gateway.cards import card_id
from gateway.config import IngestConfig
from gateway.metrics import GatewayMetrics, ReaderSeen
from gateway.types import Clock, KeyRing, StoredScan, system_clock
from gateway.verify import (
    BatchRejected,
    ScanRecord,
    VerifiedBatch,
    claimed_identity,
    verify_batch,
    verify_message,
)
from protocol import construct_codec

log = logging.getLogger("gateway.ingest")

RulesHook = Callable[[sqlite3.Connection, list[StoredScan]], None]
JobKind = Literal["batch", "heartbeat", "result", "reject", "call", "drop"]
T = TypeVar("T")

QUARANTINE_RAW_MAX = 8192  # bytes of a rejected message kept for audit (its sha256 covers all)
# Distinct rejected messages kept row by row, per source (the reader its transport authenticated,
# or "unknown") and hour; beyond, one summary row per source, reason and hour counts the rest.
# With the raw-bytes cap this bounds what one broker account can add: 60 x 8 KiB an hour.
QUARANTINE_ROWS_PER_HOUR = 60
QUARANTINE_KEEP_MS = 365 * 86_400_000  # rows last seen longer ago are deleted, hourly
_HOUR_MS = 3_600_000
_LOG_BURST = 20  # quarantine warnings per reason and minute; the rest are counted, then summed
OFFSET_WRITE_MS = 100  # a reader's clock offset is rewritten when it moved at least this much
_INSERT_CHUNK = 1024  # rows per INSERT statement (12 parameters each, SQLite allows 32766)


@functools.cache
def _insert_sql(rows: int) -> str:
    """One INSERT for a batch's records; RETURNING names those that were new."""
    return ("INSERT INTO scans (reader_id, boot, seq, card, reader_time_ms, clock_synced, "
            "ticks_ms, received_ms, at_ms, time_source, key_id, raw) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
            + " ON CONFLICT (reader_id, boot, seq) DO NOTHING "
            "RETURNING reader_id, boot, seq, scan_id")


@dataclass(frozen=True)
class Outcome:
    """What became of one message, delivered on the event loop after the COMMIT returned.

    ``ack`` is the signed ack to send (batches only); ``committed`` is False when an internal
    error (database, rules hook) left the message unhandled, so the sender must retry.
    """

    ack: bytes | None = None
    committed: bool = True
    value: Any = None  # what a ``call`` returned


Done = Callable[[Outcome], None]


@dataclass
class _Job:
    kind: JobKind
    reader_id: int | None
    payload: bytes
    transport: str
    received_ms: int
    started: float  # perf_counter() at arrival, for the latency histogram
    done: Done
    retained: bool = False
    reason: str = ""
    detail: str = ""
    call: Callable[[sqlite3.Connection], Any] | None = None

    @property
    def weight(self) -> int:
        """Records this message adds to a group (a batch's ``count`` byte; 1 otherwise)."""
        if self.kind == "batch" and len(self.payload) > 18:
            return max(1, self.payload[18])
        return 1


@dataclass
class _Effects:
    """What a handled message changes outside the database, applied only after COMMIT."""

    ack: bytes | None = None
    stored: int = 0
    duplicates: int = 0
    implausible: int = 0
    quarantined: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    seen: tuple[int, ReaderSeen] | None = None
    offline: int | None = None
    heartbeat: bool = False
    result: dict[str, object] | None = None
    command: reader_commands.Command | None = None  # issued automatically (set_time)
    error: str | None = None
    value: Any = None
    scans: list[StoredScan] = field(default_factory=list)  # for the committed listeners


class _QuarantineLog:
    """Quarantine warnings without flooding the log: a burst per reason and minute, then a sum."""

    def __init__(self) -> None:
        self._window = 0
        self._counts: Counter[str] = Counter()

    def warn(self, reason: str, fields: dict[str, object]) -> None:
        window = int(time.monotonic() // 60)
        if window != self._window:
            suppressed = {r: n - _LOG_BURST for r, n in self._counts.items() if n > _LOG_BURST}
            if suppressed:
                log.warning("quarantine warnings suppressed", extra={"suppressed": suppressed})
            self._window, self._counts = window, Counter()
        self._counts[reason] += 1
        if self._counts[reason] <= _LOG_BURST:
            log.warning("quarantined", extra={"reason": reason, **fields})


class Ingest:
    """Verify, store and acknowledge reader messages; see the module docstring."""

    def __init__(self, conn: sqlite3.Connection, keys: KeyRing, *,
                 config: IngestConfig | None = None, clock: Clock = system_clock,
                 on_scans: RulesHook | None = None, metrics: GatewayMetrics | None = None,
                 policy: timing.TimingPolicy | None = None) -> None:
        self._keys = keys
        self._gates: dict[int, str | None] = {}
        self._boots: dict[tuple[int, int], timing.BootTime] = {}
        self._max_boot: dict[int, int] = {}
        self._statuses: dict[int, _Status | None] = {}
        self._dirty_boots: dict[tuple[int, int], tuple[int, int]] = {}  # first_seen_ms, max_seq
        self._conn = conn
        self._config = config or IngestConfig()
        self._clock = clock
        self._on_scans = on_scans
        self.metrics = metrics or GatewayMetrics()
        self._policy = policy or timing.TimingPolicy()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._pending = 0
        self._idle = asyncio.Event()
        self._qlog = _QuarantineLog()
        self._quarantine_rows: Counter[tuple[int | None, int]] = Counter()  # (source, hour)
        self._pruned_hour = -1
        self._seen: dict[int, ReaderSeen] = self._load_seen()
        self.metrics.watch_readers(lambda: self._seen, clock)
        # Called on the event loop with the scans of each group, only once its COMMIT returned.
        self.committed_listeners: list[Callable[[list[StoredScan]], None]] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread; outcomes are delivered on the running event loop."""
        if self._thread is not None:
            raise RuntimeError("ingest already started")
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._writer, name="ingest-writer", daemon=True)
        self._thread.start()

    async def drain(self) -> None:
        """Wait until every message submitted so far has its outcome delivered."""
        await self._idle.wait()

    async def close(self) -> None:
        """Stop taking messages, commit and deliver what was submitted, stop the writer.

        The connection stays open: whoever opened it closes it.
        """
        if self._thread is None or self._closing:
            return
        self._closing = True
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        await asyncio.sleep(0)  # run the outcome callbacks the writer scheduled last
        await self.drain()

    # -- IngestSink ----------------------------------------------------------------------------

    def submit(self, kind: JobKind, reader_id: int | None, payload: bytes, transport: str,
               done: Done, *, retained: bool = False, reason: str = "", detail: str = "",
               call: Callable[[sqlite3.Connection], Any] | None = None) -> None:
        """Queue one message; ``done(outcome)`` runs on the event loop after its COMMIT.

        Call it on the event loop's thread (the loop :meth:`start` ran on).
        The transports' hot path (no task per message). ``kind`` ``reject``: a message the
        transport itself refused (``reason``, e.g. ``bad_topic``), quarantined as given;
        ``drop``: a message the transport drops (e.g. flooding) and only wants answered in order.
        """
        if self._thread is None or self._closing:
            raise RuntimeError("ingest is not running")
        self._pending += 1
        self._idle.clear()
        self._queue.put(_Job(kind, reader_id, bytes(payload), transport, self._clock(),
                             time.perf_counter(), done, retained, reason, detail, call))
        self.metrics.queue_depth.inc()

    async def _call(self, kind: JobKind, reader_id: int | None, payload: bytes, transport: str,
                    *, retained: bool = False, reason: str = "", detail: str = "",
                    call: Callable[[sqlite3.Connection], Any] | None = None) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

        def done(outcome: Outcome) -> None:
            if not future.done():
                future.set_result(outcome)

        self.submit(kind, reader_id, payload, transport, done, retained=retained, reason=reason,
                    detail=detail, call=call)
        return await future

    async def batch(self, reader_id: int, payload: bytes, transport: str) -> bytes | None:
        return (await self._call("batch", reader_id, payload, transport)).ack

    async def heartbeat(self, reader_id: int, payload: bytes, transport: str, *,
                        retained: bool = False) -> None:
        await self._call("heartbeat", reader_id, payload, transport, retained=retained)

    async def result(self, reader_id: int, payload: bytes, transport: str) -> None:
        await self._call("result", reader_id, payload, transport)

    async def reject(self, reader_id: int | None, payload: bytes, transport: str, reason: str,
                     detail: str) -> None:
        """Quarantine a message the transport refused before it reached verification."""
        await self._call("reject", reader_id, payload, transport, reason=reason, detail=detail)

    async def run_in_transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the writer thread inside a group transaction; its result once
        committed. For the gateway's other writers (e.g. the rules' absence timer), so the
        database keeps one writer. Raises RuntimeError if it failed or was not committed.
        """
        outcome = await self._call("call", None, b"", "internal", call=fn)
        if not outcome.committed:
            raise RuntimeError("the transaction failed (see the log)")
        return cast(T, outcome.value)

    # -- the writer thread ---------------------------------------------------------------------

    def _writer(self) -> None:
        max_records = self._config.group_commit_max
        window = self._config.group_commit_ms / 1000
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            jobs, records = [first], first.weight
            began = time.monotonic()
            while records < max_records and time.monotonic() - began < window:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                jobs.append(job)
                records += job.weight
            self._group(jobs, records)

    def _group(self, jobs: list[_Job], records: int) -> None:
        """One transaction for ``jobs``; if one fails, each is retried in its own transaction.

        Failures are rare (a database error, the rules hook), so messages share the transaction
        without a savepoint each; the retry isolates the one at fault while its neighbours are
        still committed and acknowledged.
        """
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            effects = self._handle_all(jobs)
            self._prune_quarantine(jobs[-1].received_ms)
        except Exception as exc:
            self._rollback()
            if len(jobs) > 1:
                for job in jobs:
                    self._group([job], job.weight)
                return
            stage = "rules" if isinstance(exc, _RulesError) else jobs[0].kind
            log.exception("message left unacknowledged: internal error",
                          extra={"reader_id": jobs[0].reader_id, "transport": jobs[0].transport,
                                 "stage": stage})
            self._deliver(jobs, [_Effects(error=stage)], committed=False)
            return
        started = time.perf_counter()
        try:
            conn.execute("COMMIT")
        except Exception:  # the disk or the database failed: nothing of the group is acked
            log.exception("commit failed: nothing of this group is acknowledged",
                          extra={"messages": len(jobs)})
            self._rollback()
            self._deliver(jobs, [_Effects(error="commit")] * len(jobs), committed=False)
            return
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self.metrics.group_records.observe(records)
        self.metrics.group_messages.observe(len(jobs))
        self._deliver(jobs, effects, committed=True)

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        self._forget()

    def _handle_all(self, jobs: list[_Job]) -> list[_Effects]:
        """Handle a group in order; consecutive batches share their INSERT and the rules call."""
        effects: list[_Effects | None] = [None] * len(jobs)
        pending: list[_Prepared] = []
        for index, job in enumerate(jobs):
            if job.kind == "batch":
                prepared = self._prepare_batch(job, index)
                if isinstance(prepared, _Effects):
                    effects[index] = prepared
                else:
                    pending.append(prepared)
                continue
            self._store_batches(pending, effects)
            pending = []
            effects[index] = self._handle(job)
        self._store_batches(pending, effects)
        done = [e for e in effects if e is not None]
        assert len(done) == len(jobs)
        return done

    def _handle(self, job: _Job) -> _Effects:
        if job.kind == "heartbeat":
            return self._heartbeat(job)
        if job.kind == "result":
            return self._result(job)
        if job.kind == "call":
            assert job.call is not None
            return _Effects(value=job.call(self._conn))
        if job.kind == "drop":  # refused by the transport (counted there): only keeps its order
            return _Effects()
        effects = _Effects()
        self._quarantine(job, effects, job.reason, job.detail, job.payload, job.reader_id, None,
                         None)
        return effects

    def _deliver(self, jobs: list[_Job], effects: list[_Effects], *, committed: bool) -> None:
        outcomes = []
        now = time.perf_counter()
        m = self.metrics
        for job, eff in zip(jobs, effects, strict=True):
            ok = committed and eff.error is None
            if not ok:
                m.errors.labels(eff.error or "commit").inc()
                outcomes.append(Outcome(None, False))
                continue
            self._apply(eff)
            if job.kind == "batch":
                m.batch_latency.observe(now - job.started)
            outcomes.append(Outcome(eff.ack, True, eff.value))
        m.queue_depth.dec(len(jobs))
        loop = self._loop
        assert loop is not None
        scans = [s for eff in effects for s in eff.scans] if committed else []
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(self._resolve, jobs, outcomes)
            for listener in self.committed_listeners if scans else ():
                loop.call_soon_threadsafe(listener, scans)

    def _apply(self, eff: _Effects) -> None:
        m = self.metrics
        if eff.stored:
            m.records_stored.inc(eff.stored)
        if eff.duplicates:
            m.records_duplicate.inc(eff.duplicates)
        if eff.implausible:
            m.clock_implausible.inc(eff.implausible)
        for reason, fields in eff.quarantined:
            m.quarantined.labels(reason).inc()
            self._qlog.warn(reason, fields)
        if eff.heartbeat:
            m.heartbeats.inc()
        if eff.seen is not None:
            self._seen = {**self._seen, eff.seen[0]: eff.seen[1]}
        if eff.offline is not None and eff.offline in self._seen:
            seen = self._seen[eff.offline]
            self._seen = {**self._seen, eff.offline: ReaderSeen(
                seen.heartbeat_ms, "offline", seen.queue_depth, seen.dropped, seen.clock_health)}
        if eff.result is not None:
            m.results.inc()
            if eff.result["command"] == "recorded":
                m.commands_settled.labels(str(eff.result["status"])).inc()
            log.log(logging.INFO if eff.result["command"] in ("recorded", "repeat")
                    else logging.WARNING, "command result", extra=eff.result)
        if eff.command is not None:
            log.info("reader clock to be set", extra={
                "reader_id": eff.command.reader_id, "cmd_seq": eff.command.cmd_seq})

    def _resolve(self, jobs: list[_Job], outcomes: list[Outcome]) -> None:
        for job, outcome in zip(jobs, outcomes, strict=True):
            try:
                job.done(outcome)
            except Exception:
                log.exception("outcome callback failed", extra={"transport": job.transport})
        self._pending -= len(jobs)
        if self._pending == 0:
            self._idle.set()

    # -- quarantine ----------------------------------------------------------------------------

    def _quarantine(self, job: _Job, eff: _Effects, reason: str, detail: str, raw: bytes,
                    reader_id: int | None, boot: int | None, seq: int | None) -> None:
        """Keep a rejected message for audit: the same bytes again only count on their row;
        a source's distinct messages beyond QUARANTINE_ROWS_PER_HOUR go to a summary row."""
        digest = hashlib.sha256(raw).digest()
        conn, now = self._conn, job.received_ms
        eff.quarantined.append((reason, {"reader_id": reader_id, "boot": boot, "seq": seq,
                                         "detail": detail, "transport": job.transport}))
        if conn.execute("UPDATE quarantine SET last_ms = ?, times_seen = times_seen + 1 "
                        "WHERE raw_sha256 = ? AND reason = ?", (now, digest, reason)).rowcount:
            return
        source, hour = job.reader_id, now // _HOUR_MS
        if self._quarantine_rows[(source, hour)] >= QUARANTINE_ROWS_PER_HOUR:
            who = "unknown" if source is None else str(source)
            summary = hashlib.sha256(f"over the hourly limit {who} {hour}".encode()).digest()
            conn.execute(
                "INSERT INTO quarantine (first_ms, last_ms, times_seen, transport, reader_id, "
                "reason, detail, raw, raw_sha256) VALUES (?, ?, 1, ?, ?, ?, ?, x'', ?) "
                "ON CONFLICT (raw_sha256, reason) DO UPDATE SET last_ms = excluded.last_ms, "
                "times_seen = times_seen + 1",
                (now, now, job.transport, source, reason,
                 f"more than {QUARANTINE_ROWS_PER_HOUR} distinct rejected messages from this "
                 "source in one hour: counted here, not kept", summary))
            return
        if len(self._quarantine_rows) > 1024:  # sources of past hours
            for key in [k for k in self._quarantine_rows if k[1] < hour]:
                del self._quarantine_rows[key]
        self._quarantine_rows[(source, hour)] += 1
        kept = raw[:QUARANTINE_RAW_MAX]
        if len(raw) > QUARANTINE_RAW_MAX:
            detail = f"{detail} (first {QUARANTINE_RAW_MAX} of {len(raw)} bytes kept)"
        conn.execute(
            "INSERT INTO quarantine (first_ms, last_ms, times_seen, transport, reader_id, boot, "
            "seq, reason, detail, raw, raw_sha256) VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?)",
            (now, now, job.transport, reader_id, boot, seq, reason, detail, kept, digest))

    def _prune_quarantine(self, now_ms: int) -> None:
        """Once an hour, in the group's transaction: rows not seen for QUARANTINE_KEEP_MS."""
        if now_ms // _HOUR_MS == self._pruned_hour:
            return
        self._pruned_hour = now_ms // _HOUR_MS
        pruned = self._conn.execute("DELETE FROM quarantine WHERE last_ms < ?",
                                    (now_ms - QUARANTINE_KEEP_MS,)).rowcount
        if pruned:
            log.info("old quarantine rows pruned", extra={"rows": pruned})

    def _reject_message(self, job: _Job, eff: _Effects, exc: BatchRejected) -> _Effects:
        """Quarantine a whole message under the reader its transport named, else the claimed one."""
        claimed, boot = claimed_identity(job.payload)
        reader_id = job.reader_id if job.reader_id is not None else claimed
        self._quarantine(job, eff, exc.reason, exc.detail, job.payload, reader_id, boot, None)
        return eff

    # -- batches -------------------------------------------------------------------------------

    def _prepare_batch(self, job: _Job, index: int) -> _Prepared | _Effects:
        """Verify and place one batch (records are inserted with the group's other batches)."""
        eff = _Effects()
        assert job.reader_id is not None
        try:
            vb = verify_batch(job.reader_id, job.payload, self.keys)
        except BatchRejected as exc:
            return self._reject_message(job, eff, exc)
        gate = self._gate(vb.reader_id)
        if gate is None:  # keys without a registered reader: nothing to attribute scans to
            return self._reject_message(job, eff, BatchRejected(
                "unknown_reader", f"reader {vb.reader_id} has keys but is not registered"))
        boot = self._load_boot(vb.reader_id, vb.boot)
        times = [timing.RecordTime(r.clock_synced, r.reader_ms, r.ticks_ms) for r in vb.records]
        placements, new_boot = timing.place_batch(times, job.received_ms, boot, self._policy,
                                                  self._later_boot_start(vb.reader_id, vb.boot))
        self._keep_boot(vb.reader_id, vb.boot, job.received_ms, new_boot, vb.last_seq)
        self._batch_clock(vb, new_boot, job.received_ms)
        verdicts: dict[int, str] = {}
        for bad in vb.rejected:
            verdicts[bad.seq] = bad.verdict
            self._quarantine(job, eff, bad.reason, bad.detail, bad.raw, vb.reader_id, vb.boot,
                             bad.seq)
        eff.implausible = sum(1 for p in placements if p.implausible)
        cards = [card_id(r.tech, r.uid) for r in vb.records]
        return _Prepared(index, job, vb, gate, placements, cards, verdicts, eff)

    def _store_batches(self, pending: list[_Prepared], effects: list[_Effects | None]) -> None:
        """Insert the records of consecutive batches at once, run the rules once, sign the acks.

        A record already stored (an exact resend, also one earlier in the same group) is a
        duplicate; one stored with other bytes is an identity conflict.
        """
        if not pending:
            return
        inserted = self._insert_scans(pending)
        stored_all: list[StoredScan] = []
        for p in pending:
            stored: list[StoredScan] = []
            for record, placed, card in zip(p.vb.records, p.placements, p.cards, strict=True):
                scan_id = inserted.pop((record.reader_id, record.boot, record.seq), None)
                if scan_id is not None:
                    stored.append(StoredScan(scan_id, record.reader_id, p.gate, card,
                                             placed.at_ms, placed.source))
                elif self._same_bytes(record):
                    p.eff.duplicates += 1
                else:
                    p.verdicts[record.seq] = "identity_conflict"
                    self._quarantine(p.job, p.eff, "identity_conflict",
                                     "a different record is stored under this identity",
                                     record.raw, record.reader_id, record.boot, record.seq)
            p.eff.stored = len(stored)
            p.eff.scans = stored
            stored_all += stored
        self._write_boots()
        if stored_all and self._on_scans is not None:
            try:
                self._on_scans(self._conn, stored_all)
            except Exception as exc:
                raise _RulesError(str(exc)) from exc
        debug = log.isEnabledFor(logging.DEBUG)
        for p in pending:
            p.eff.ack = self._ack(p.vb, p.verdicts)
            effects[p.index] = p.eff
            if debug:
                log.debug("batch stored", extra={
                    "reader_id": p.vb.reader_id, "boot": p.vb.boot, "first_seq": p.vb.first_seq,
                    "last_seq": p.vb.last_seq, "stored": p.eff.stored,
                    "duplicates": p.eff.duplicates, "verdicts": len(p.verdicts),
                    "transport": p.job.transport})

    def _insert_scans(self, pending: list[_Prepared]) -> dict[tuple[int, int, int], int]:
        """Insert records not stored yet; ``{identity: scan_id}`` of those that were new.

        Statements of power-of-two sizes (at most ``_INSERT_CHUNK`` rows) keep the prepared
        statement cache small.
        """
        rows: list[tuple[object, ...]] = []
        for p in pending:
            received_ms = p.job.received_ms
            for record, placed, card in zip(p.vb.records, p.placements, p.cards, strict=True):
                rows.append((record.reader_id, record.boot, record.seq, card, record.reader_ms,
                             int(record.clock_synced), record.ticks_ms, received_ms,
                             placed.at_ms, placed.source, record.key_id, record.raw))
        inserted: dict[tuple[int, int, int], int] = {}
        at = 0
        while at < len(rows):
            size = min(_INSERT_CHUNK, 1 << ((len(rows) - at).bit_length() - 1))
            params = [value for row in rows[at:at + size] for value in row]
            for reader_id, boot, seq, scan_id in self._conn.execute(_insert_sql(size), params):
                inserted[(int(reader_id), int(boot), int(seq))] = int(scan_id)
            at += size
        return inserted

    def _same_bytes(self, record: ScanRecord) -> bool:
        row = self._conn.execute(
            "SELECT raw FROM scans WHERE reader_id = ? AND boot = ? AND seq = ?",
            (record.reader_id, record.boot, record.seq)).fetchone()
        return row is not None and bytes(row[0]) == record.raw

    @staticmethod
    def _ack(vb: VerifiedBatch, verdicts: dict[int, str]) -> bytes:
        return construct_codec.ack_for_batch(vb.reader_id, vb.boot, vb.first_seq, vb.last_seq,
                                             verdicts, vb.key.key)

    def _batch_clock(self, vb: VerifiedBatch, boot: timing.BootTime, now_ms: int) -> None:
        """Clock health from the batch's synced records, for the reader's current boot only."""
        status = self._status(vb.reader_id)
        if status is None or status.boot != vb.boot:
            return  # no heartbeat yet (no status row), or a backlog of another boot
        observations = [timing.Observation(r.reader_ms, r.ticks_ms, 0)
                        for r in vb.records if r.clock_synced]
        if not observations:
            return
        after = timing.assess_clock(status.clock, vb.boot, observations, boot.anchor, boot.bound,
                                    True, now_ms, self._policy)
        if after != status.clock:
            self._save_clock(vb.reader_id, status, after)

    # -- heartbeats and results ----------------------------------------------------------------

    def _heartbeat(self, job: _Job) -> _Effects:
        eff = _Effects()
        assert job.reader_id is not None
        try:
            hb, _key = verify_message("heartbeat", job.reader_id, job.payload, self.keys)
        except BatchRejected as exc:
            return self._reject_message(job, eff, exc)
        conn = self._conn
        reader_id, boot_no, uptime = int(hb["reader_id"]), int(hb["boot"]), int(hb["uptime_s"])
        if self._gate(reader_id) is None:
            return self._reject_message(job, eff, BatchRejected(
                "unknown_reader", f"reader {reader_id} has keys but is not registered"))
        status = self._status(reader_id)
        # A reader that reconnects within the uptime second of its last heartbeat sends the same
        # (boot, uptime) again, after its last will marked it offline: that one is news.
        back_online = (status is not None and status.state == "offline"
                       and (boot_no, uptime) == (status.boot, status.uptime_s)
                       and hb["state"] != "offline" and not job.retained)
        if status is not None and (boot_no, uptime) <= (status.boot, status.uptime_s) \
                and not back_online:
            # Older than what is stored: a replay, or the last will registered at connect time.
            if hb["state"] == "offline" and boot_no == status.boot:
                conn.execute("UPDATE reader_status SET state = 'offline' WHERE reader_id = ?",
                             (reader_id,))
                self._statuses[reader_id] = dataclasses.replace(status, state="offline")
                eff.offline = reader_id
            eff.heartbeat = True
            return eff
        boot = self._load_boot(reader_id, boot_no)
        before = status.clock if status is not None else None
        if job.retained:  # its receive time says nothing about when it was sent
            clock = before if before is not None and before.boot == boot_no \
                else timing.ClockState(boot_no)
        else:
            boot, observation = timing.learn_heartbeat(
                boot, hb["clock_synced"], hb["time_s"], uptime, job.received_ms, self._policy)
            clock = timing.assess_clock(before, boot_no, [observation] if observation else [],
                                        boot.anchor, boot.bound, hb["clock_synced"],
                                        job.received_ms, self._policy)
        self._save_boot(reader_id, boot_no, job.received_ms, boot, 0)
        conn.execute(
            "INSERT INTO reader_status (reader_id, received_ms, boot, state, faults, fw_version, "
            "link, rssi_dbm, clock_synced, reader_time_s, uptime_s, free_heap, queue_depth, "
            "oldest_unsent_age_s, dropped, last_ack_boot, last_ack_seq, clock_offset_ms, "
            "clock_health, clock_baseline_ms, clock_event_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (reader_id) DO UPDATE SET received_ms = excluded.received_ms, "
            "boot = excluded.boot, state = excluded.state, faults = excluded.faults, "
            "fw_version = excluded.fw_version, link = excluded.link, "
            "rssi_dbm = excluded.rssi_dbm, clock_synced = excluded.clock_synced, "
            "reader_time_s = excluded.reader_time_s, uptime_s = excluded.uptime_s, "
            "free_heap = excluded.free_heap, queue_depth = excluded.queue_depth, "
            "oldest_unsent_age_s = excluded.oldest_unsent_age_s, dropped = excluded.dropped, "
            "last_ack_boot = excluded.last_ack_boot, last_ack_seq = excluded.last_ack_seq, "
            "clock_offset_ms = excluded.clock_offset_ms, clock_health = excluded.clock_health, "
            "clock_baseline_ms = excluded.clock_baseline_ms, "
            "clock_event_ms = excluded.clock_event_ms",
            (reader_id, job.received_ms, boot_no, hb["state"], ",".join(hb["faults"]),
             hb["fw_version"], hb["link"], hb["rssi_dbm"], int(hb["clock_synced"]), hb["time_s"],
             uptime, hb["free_heap"], hb["queue_depth"], hb["oldest_unsent_age_s"],
             hb["dropped"], hb["last_ack_boot"], hb["last_ack_seq"], clock.offset_ms,
             clock.health, clock.baseline_ms, clock.event_ms))
        self._statuses[reader_id] = _Status(boot_no, uptime, clock, clock.offset_ms, hb["state"])
        if not job.retained:  # a bus reader without NTP gets the gateway's time
            eff.command = reader_commands.auto_set_time(
                conn, reader_id, hb["clock_synced"], hb["time_s"], job.received_ms,
                job.transport)
        eff.heartbeat = True
        eff.seen = (reader_id, ReaderSeen(job.received_ms, hb["state"], hb["queue_depth"],
                                          hb["dropped"], clock.health))
        if hb["faults"] or hb["state"] != "online" or clock.health in ("drifting", "jumped"):
            log.warning("reader needs attention", extra={
                "reader_id": reader_id, "boot": boot_no, "state": hb["state"],
                "faults": hb["faults"], "dropped": hb["dropped"], "clock_health": clock.health,
                "clock_offset_ms": clock.offset_ms})
        return eff

    def _result(self, job: _Job) -> _Effects:
        eff = _Effects()
        assert job.reader_id is not None
        try:
            fields, _key = verify_message("result", job.reader_id, job.payload, self.keys)
        except BatchRejected as exc:
            return self._reject_message(job, eff, exc)
        settled = reader_commands.record_result(self._conn, job.reader_id, fields["cmd_seq"],
                                                fields["status"], job.received_ms)
        eff.result = {"reader_id": fields["reader_id"], "cmd_seq": fields["cmd_seq"],
                      "status": fields["status"], "transport": job.transport, "command": settled}
        return eff

    # -- readers, reader_boots and reader_status (written through, forgotten on rollback) ------

    @property
    def keys(self) -> KeyRing:
        return self._keys

    @keys.setter
    def keys(self, ring: KeyRing) -> None:
        """Replace the key ring (the registry changed); read by the writer once per message."""
        self._keys = ring
        self._gates = {}

    def _forget(self) -> None:
        self._gates, self._boots, self._max_boot, self._statuses = {}, {}, {}, {}
        self._dirty_boots = {}

    def _gate(self, reader_id: int) -> str | None:
        """The reader's gate, or None if it has no ``readers`` row."""
        if reader_id not in self._gates:
            row = self._conn.execute("SELECT gate FROM readers WHERE reader_id = ?",
                                     (reader_id,)).fetchone()
            self._gates[reader_id] = str(row[0]) if row is not None else None
        return self._gates[reader_id]

    def _load_boot(self, reader_id: int, boot: int) -> timing.BootTime:
        cached = self._boots.get((reader_id, boot))
        if cached is not None:
            return cached
        row = self._conn.execute(
            "SELECT anchor_ticks_ms, anchor_unix_ms, anchor_source, anchor_error_ms, "
            "bound_ticks_ms, bound_unix_ms FROM reader_boots WHERE reader_id = ? AND boot = ?",
            (reader_id, boot)).fetchone()
        if row is None:
            return timing.BootTime()
        anchor = None
        if row[2] == "reader_synced":
            anchor = timing.Anchor(row[0], row[1], "reader_synced", row[3] or 0)
        bound = None
        if row[4] is not None:
            bound = timing.Anchor(row[4], row[5], "gateway_receive")
        state = timing.BootTime(anchor, bound)
        self._boots[(reader_id, boot)] = state
        return state

    def _later_boot_start(self, reader_id: int, boot: int) -> int | None:
        """The earliest known start of a later boot of the reader (its records came before)."""
        if reader_id not in self._max_boot:
            row = self._conn.execute("SELECT MAX(boot) FROM reader_boots WHERE reader_id = ?",
                                     (reader_id,)).fetchone()
            self._max_boot[reader_id] = int(row[0] or 0)
        if boot >= self._max_boot[reader_id]:
            return None
        self._write_boots()  # the later boot may be known only in memory yet
        row = self._conn.execute(
            "SELECT MIN(bound_unix_ms - bound_ticks_ms) FROM reader_boots WHERE reader_id = ? "
            "AND boot > ? AND bound_unix_ms IS NOT NULL", (reader_id, boot)).fetchone()
        return None if row[0] is None else int(row[0])

    def _keep_boot(self, reader_id: int, boot: int, now_ms: int, state: timing.BootTime,
                   max_seq: int) -> None:
        """Remember a boot's new state; :meth:`_write_boots` writes it (once per group)."""
        self._boots[(reader_id, boot)] = state
        first_seen, seq = self._dirty_boots.get((reader_id, boot), (now_ms, 0))
        self._dirty_boots[(reader_id, boot)] = (first_seen, max(seq, max_seq))
        if reader_id in self._max_boot:
            self._max_boot[reader_id] = max(self._max_boot[reader_id], boot)

    def _save_boot(self, reader_id: int, boot: int, now_ms: int, state: timing.BootTime,
                   max_seq: int) -> None:
        self._keep_boot(reader_id, boot, now_ms, state, max_seq)
        self._write_boots()

    def _write_boots(self) -> None:
        rows = []
        for (reader_id, boot), (first_seen, max_seq) in self._dirty_boots.items():
            state = self._boots[(reader_id, boot)]
            placing, bound = state.placing, state.bound
            rows.append((reader_id, boot, first_seen,
                         placing.ticks_ms if placing else None,
                         placing.unix_ms if placing else None,
                         placing.source if placing else None,
                         placing.error_ms if placing else None,
                         bound.ticks_ms if bound else None, bound.unix_ms if bound else None,
                         max_seq))
        self._dirty_boots = {}
        self._conn.executemany(
            "INSERT INTO reader_boots (reader_id, boot, first_seen_ms, anchor_ticks_ms, "
            "anchor_unix_ms, anchor_source, anchor_error_ms, bound_ticks_ms, bound_unix_ms, "
            "max_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (reader_id, boot) DO UPDATE SET "
            "anchor_ticks_ms = excluded.anchor_ticks_ms, anchor_unix_ms = excluded.anchor_unix_ms, "
            "anchor_source = excluded.anchor_source, anchor_error_ms = excluded.anchor_error_ms, "
            "bound_ticks_ms = excluded.bound_ticks_ms, bound_unix_ms = excluded.bound_unix_ms, "
            "max_seq = MAX(max_seq, excluded.max_seq)", rows)

    def _status(self, reader_id: int) -> _Status | None:
        if reader_id not in self._statuses:
            row = self._conn.execute(
                "SELECT boot, uptime_s, clock_health, clock_offset_ms, clock_baseline_ms, "
                "clock_event_ms, state FROM reader_status WHERE reader_id = ?",
                (reader_id,)).fetchone()
            self._statuses[reader_id] = None if row is None else _Status(
                int(row[0]), int(row[1]),
                timing.ClockState(int(row[0]), row[2], row[3], row[4], row[5]), row[3], row[6])
        return self._statuses[reader_id]

    def _save_clock(self, reader_id: int, status: _Status, state: timing.ClockState) -> None:
        """Keep the new clock state; write it unless only the offset moved, by < 100 ms."""
        written = status.written_offset_ms
        quiet = (state.health, state.baseline_ms, state.event_ms) == (
            status.clock.health, status.clock.baseline_ms, status.clock.event_ms) and (
            written is not None and state.offset_ms is not None
            and abs(state.offset_ms - written) < OFFSET_WRITE_MS)
        if not quiet:
            self._conn.execute(
                "UPDATE reader_status SET clock_health = ?, clock_offset_ms = ?, "
                "clock_baseline_ms = ?, clock_event_ms = ? WHERE reader_id = ? AND boot = ?",
                (state.health, state.offset_ms, state.baseline_ms, state.event_ms, reader_id,
                 state.boot))
            written = state.offset_ms
        self._statuses[reader_id] = dataclasses.replace(status, clock=state,
                                                        written_offset_ms=written)

    def _load_seen(self) -> dict[int, ReaderSeen]:
        try:
            rows = self._conn.execute(
                "SELECT reader_id, received_ms, state, queue_depth, dropped, clock_health "
                "FROM reader_status").fetchall()
        except sqlite3.Error:
            return {}
        return {int(r[0]): ReaderSeen(r[1], r[2], r[3], r[4], r[5]) for r in rows}


@dataclass
class _Prepared:
    """A verified, placed batch waiting for the group's INSERT."""

    index: int  # in the group
    job: _Job
    vb: VerifiedBatch
    gate: str
    placements: list[timing.Placement]
    cards: list[str]  # canonical card ids, by record
    verdicts: dict[int, str]
    eff: _Effects


@dataclass(frozen=True)
class _Status:
    """The part of a ``reader_status`` row the writer needs, cached."""

    boot: int
    uptime_s: int
    clock: timing.ClockState
    written_offset_ms: int | None  # the clock_offset_ms in the table
    state: str = "online"


class _RulesError(Exception):
    """The attendance rules hook failed: the batch is rolled back and not acknowledged."""
