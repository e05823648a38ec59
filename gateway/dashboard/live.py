"""Live taps: the ingest's committed scans, looked up and fanned out to server-sent event streams.

The ingest calls :meth:`LiveHub.publish` on the event loop once a group's COMMIT returned
(``Ingest.committed_listeners``), so a browser never sees a tap that could still be rolled
back. One worker task looks the scans up (reader, student, class, the event the rules made)
on the dashboard's read connection, in arrival order, only while someone is watching. Each
subscriber has a bounded queue: a browser that stops reading loses taps (counted), it never
makes the gateway buffer without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from gateway.dashboard.store import Store
from gateway.types import StoredScan

log = logging.getLogger("gateway.dashboard")

SUBSCRIBER_QUEUE = 256
RECENT = 20


@dataclass(frozen=True)
class Tap:
    scan_id: int
    at_ms: int
    reader_id: int
    reader: str | None
    gate: str | None
    kind: str  # check_in, late, check_out, unknown_card, or tap (no new event: a repeat)
    student_id: str | None
    student: str | None
    class_name: str | None
    card: str | None  # only for an unknown card


_TAPS = (
    "SELECT s.scan_id, s.at_ms, s.reader_id, r.name, r.gate, s.card, t.student_id, "
    "st.full_name, c.name, "
    "(SELECT GROUP_CONCAT(e.kind) FROM attendance_events e WHERE e.scan_id = s.scan_id "
    " AND e.voided_ms IS NULL AND e.student_id IS t.student_id "
    " AND e.school_date = t.school_date) "
    "FROM scans s LEFT JOIN readers r ON r.reader_id = s.reader_id "
    "LEFT JOIN attendance_taps t ON t.scan_id = s.scan_id "
    "LEFT JOIN students st ON st.student_id = t.student_id "
    "LEFT JOIN classes c ON c.class_id = st.class_id ")


def _tap(r: sqlite3.Row) -> Tap:
    kinds = set(str(r[9]).split(",")) if r[9] else set()
    known = r[6] is not None
    kind = ("late" if "late" in kinds else "check_in" if "check_in" in kinds
            else "check_out" if "check_out" in kinds else "tap" if known else "unknown_card")
    return Tap(int(r[0]), int(r[1]), int(r[2]), r[3], r[4], kind, r[6], r[7], r[8],
               None if known else str(r[5]))


def taps(conn: sqlite3.Connection, scan_ids: Sequence[int]) -> list[Tap]:
    """The given scans, oldest first. A scan of a card the rules placed but the roster does not
    know, or that the rules did not see (``run`` without rules), shows its card."""
    marks = ",".join("?" * len(scan_ids))
    return [_tap(r) for r in conn.execute(
        _TAPS + f"WHERE s.scan_id IN ({marks}) ORDER BY s.scan_id", list(scan_ids))]


def recent_taps(conn: sqlite3.Connection, since_ms: int, limit: int = RECENT) -> list[Tap]:
    """The latest taps stored since ``since_ms`` (by their time), newest first."""
    return [_tap(r) for r in conn.execute(
        _TAPS + "WHERE s.at_ms >= ? ORDER BY s.at_ms DESC, s.scan_id DESC LIMIT ?",
        (since_ms, limit))]


class LiveMetrics:
    def __init__(self, clients: Gauge, dropped: Counter) -> None:
        self.clients = clients
        self.dropped = dropped


class Subscription:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Tap | None] = asyncio.Queue(SUBSCRIBER_QUEUE)

    async def get(self) -> Tap | None:
        """The next tap; None when the dashboard stops."""
        return await self.queue.get()


class LiveHub:
    def __init__(self, store: Store, metrics: LiveMetrics) -> None:
        self._store = store
        self._metrics = metrics
        self._subscribers: set[Subscription] = set()
        self._pending: asyncio.Queue[list[int] | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run())

    def publish(self, scans: list[StoredScan]) -> None:
        """Committed scans (called on the event loop by the ingest)."""
        if self._subscribers and self._worker is not None:
            self._pending.put_nowait([s.scan_id for s in scans])

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        sub = Subscription()
        self._subscribers.add(sub)
        self._metrics.clients.inc()
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)
            self._metrics.clients.dec()

    async def _run(self) -> None:
        while (ids := await self._pending.get()) is not None:
            try:
                found = await self._store.read(functools.partial(taps, scan_ids=ids))
            except Exception as exc:
                log.error("live taps not looked up", extra={"error": str(exc)})
                continue
            for sub in list(self._subscribers):
                for tap in found:
                    try:
                        sub.queue.put_nowait(tap)
                    except asyncio.QueueFull:
                        self._metrics.dropped.inc()

    async def close(self) -> None:
        """End every stream and the worker."""
        for sub in list(self._subscribers):
            if sub.queue.full():  # make room for the end marker
                sub.queue.get_nowait()
            sub.queue.put_nowait(None)
        if self._worker is not None:
            self._pending.put_nowait(None)
            await self._worker
            self._worker = None
