"""The gateway's database: SQLite in WAL mode with numbered migrations.

Durability is the contract here: the ingest acknowledges a reader's batch only after the
transaction holding its records committed, so the connection runs with ``synchronous=FULL``
(a commit has reached the disk when it returns) and foreign keys on.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

MIGRATIONS = "gateway.migrations"


class DatabaseError(Exception):
    """A database the gateway cannot use (newer than this software, unreadable, corrupt)."""


def _migrations() -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files(MIGRATIONS).iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def latest_version() -> int:
    return _migrations()[-1][0]


def connect(path: Path | str, *, migrate: bool = True) -> sqlite3.Connection:
    """Open (and by default migrate) the database at ``path``."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        if migrate:
            apply_migrations(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise DatabaseError(f"{path}: {exc}") from None
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                 "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL)")
    row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)


def apply_migrations(conn: sqlite3.Connection) -> list[str]:
    """Apply every migration newer than the database, each in its own transaction."""
    current = schema_version(conn)
    available = _migrations()
    if current > available[-1][0]:
        raise DatabaseError(f"database schema {current} is newer than this gateway "
                            f"({available[-1][0]}): upgrade the gateway software")
    applied = []
    for version, name, sql in available:
        if version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (version, name, applied_ms) "
                         "VALUES (?, ?, ?)", (version, name, int(time.time() * 1000)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


def _statements(sql: str) -> list[str]:
    """Split a migration into statements (``sqlite3.complete_statement`` knows the grammar)."""
    statements, pending = [], ""
    for line in sql.splitlines(keepends=True):
        if not pending and (not line.strip() or line.lstrip().startswith("--")):
            continue
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip():
        raise DatabaseError(f"unterminated statement in migration: {pending[:60]!r}")
    return statements


@contextmanager
def atomic(conn: sqlite3.Connection, name: str = "gateway_atomic") -> Iterator[None]:
    """All or nothing: a savepoint inside the caller's transaction, or a transaction of its own."""
    if conn.in_transaction:
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            raise
        conn.execute(f"RELEASE {name}")
    else:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
