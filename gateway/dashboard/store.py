"""The dashboard's database access: two connections of its own, each on one worker thread.

Pages read in a snapshot (``BEGIN`` ... ``ROLLBACK``) on the read connection, so a page is
consistent and never waits behind a write. Writes (the dashboard's own tables, operator actions)
run on the write connection in short transactions, one at a time; SQLite's busy timeout (5 s,
``gateway/db.py``) covers the moment the ingest's writer holds the lock. The event loop only
awaits: no query runs on it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from gateway import db

T = TypeVar("T")


class Store:
    def __init__(self, path: Path) -> None:
        self._read_conn = db.connect(path, migrate=False)
        try:
            self._write_conn = db.connect(path, migrate=False)
        except BaseException:
            self._read_conn.close()
            raise
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="dashboard-read")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="dashboard-write")

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` in one read snapshot."""
        def snapshot() -> T:
            conn = self._read_conn
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        return await asyncio.get_running_loop().run_in_executor(self._reader, snapshot)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` on the write connection; ``fn`` opens its own short transactions."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn,
                                                                 self._write_conn)

    def close(self) -> None:
        self._reader.shutdown(wait=True)
        self._writer.shutdown(wait=True)
        self._read_conn.close()
        self._write_conn.close()
