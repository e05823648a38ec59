"""The interfaces the gateway's parts meet at: keys, the ingest sink, stored scans, clocks."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol, TypeVar

KeyState = Literal["active", "retired", "revoked"]
TimeSource = Literal["reader", "corrected", "gateway"]

# Unix milliseconds now. Injected everywhere time matters so tests can move it.
Clock = Callable[[], int]


def system_clock() -> int:
    return time.time_ns() // 1_000_000


class ReaderKey(NamedTuple):
    key_id: int
    key: bytes
    state: KeyState

    def __repr__(self) -> str:  # never the key material, even in a traceback
        return f"ReaderKey(key_id={self.key_id}, state={self.state!r})"


class KeyRing(Protocol):
    """The verification keys of every registered reader (gateway/registry.py keeps them)."""

    def candidates(self, reader_id: int) -> Sequence[ReaderKey]:
        """The reader's keys to try, active first, then retired, then revoked; empty if unknown."""

    def active(self, reader_id: int) -> ReaderKey | None:
        """The key acks and commands to this reader are signed with."""


class IngestSink(Protocol):
    """Where transports (MQTT, RS-485) hand what readers send (gateway/ingest.py)."""

    async def batch(self, reader_id: int, payload: bytes, transport: str) -> bytes | None:
        """Verify, store durably, and return the signed ack to send back (None: no ack)."""

    async def heartbeat(self, reader_id: int, payload: bytes, transport: str) -> None: ...

    async def result(self, reader_id: int, payload: bytes, transport: str) -> None: ...


@dataclass(frozen=True)
class StoredScan:
    """A scan as committed, handed to the attendance rules in the same transaction."""

    scan_id: int
    reader_id: int
    gate: str
    card: str  # canonical '<tech>:<UID hex>' (gateway/cards.py)
    at_ms: int
    time_source: TimeSource


class StaticKeyRing:
    """A key ring held in memory: what the registry loads, and what tests build directly."""

    def __init__(self, keys: dict[int, Sequence[ReaderKey]]) -> None:
        order = {"active": 0, "retired": 1, "revoked": 2}
        self._keys = {rid: sorted(ks, key=lambda k: order[k.state]) for rid, ks in keys.items()}

    def candidates(self, reader_id: int) -> Sequence[ReaderKey]:
        return self._keys.get(reader_id, ())

    def active(self, reader_id: int) -> ReaderKey | None:
        keys = self._keys.get(reader_id, ())
        return keys[0] if keys and keys[0].state == "active" else None


_T = TypeVar("_T")


class TransactionRunner(Protocol):
    """The database's one writer (``gateway.ingest.Ingest``'s writer thread): ``fn`` runs in a
    transaction of its own there, committed before the awaitable resolves."""

    def run_in_transaction(self, fn: Callable[[sqlite3.Connection], _T]) -> Awaitable[_T]: ...
