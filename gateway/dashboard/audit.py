"""The dashboard's audit trail: who did what, from where, to which scope.

Every state-changing action (retrying parked items, acknowledging or assigning an unknown card,
rotating, finishing a rotation, revoking a reader, logging out) and every export is one row of
``dashboard_audit`` (migration 0011) and one structured log line ``dashboard audit`` with the
same fields and the row's ``audit_id``. The row holds the whole scope (a card number, a
student id); the log line only what a log may carry (no card numbers, no student ids or names:
docs/SECURITY.md, "Logs carry no personal data"), so a journal reader goes from the line to the
row by ``audit_id``. Rows are kept ``AUDIT_KEPT_MS`` (400 days: a school year and its
follow-up); older ones are deleted as new ones are written.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.db import atomic

log = logging.getLogger("gateway.dashboard.audit")

AUDIT_KEPT_MS = 400 * 86_400_000


@dataclass(frozen=True)
class Actor:
    """Who acts: a logged-in user (``user_id``, ``username``, ``role``) or the anonymous
    loopback view (``None``, ``None``, ``"anonymous"``), from ``address``."""

    user_id: int | None
    username: str | None
    role: str
    address: str


@dataclass(frozen=True)
class Entry:
    audit_id: int
    at_ms: int
    username: str | None
    role: str
    address: str
    action: str
    scope: dict[str, Any]


def record(conn: sqlite3.Connection, actor: Actor, action: str, scope: Mapping[str, Any],
           now_ms: int) -> int:
    """Store one action (its own short transaction); returns its ``audit_id``."""
    with atomic(conn, "dashboard_audit"):
        conn.execute("DELETE FROM dashboard_audit WHERE at_ms < ?", (now_ms - AUDIT_KEPT_MS,))
        cursor = conn.execute(
            "INSERT INTO dashboard_audit (at_ms, user_id, username, role, address, action, "
            "scope) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (now_ms, actor.user_id, actor.username, actor.role, actor.address, action,
             json.dumps(dict(scope), ensure_ascii=False, sort_keys=True, default=str)))
    return int(cursor.lastrowid or 0)


def logged(actor: Actor, action: str, scope: Mapping[str, Any], audit_id: int) -> None:
    """The log line of a recorded action; ``scope`` is what the log may carry."""
    log.info("dashboard audit", extra={
        "user": actor.username, "role": actor.role, "address": actor.address,
        "action": action, "scope": dict(scope), "audit_id": audit_id})


def recent(conn: sqlite3.Connection, limit: int = 50) -> list[Entry]:
    """The newest entries first."""
    return [Entry(int(r[0]), int(r[1]), r[2], str(r[3]), str(r[4]), str(r[5]),
                  json.loads(r[6]))
            for r in conn.execute(
                "SELECT audit_id, at_ms, username, role, address, action, scope "
                "FROM dashboard_audit ORDER BY audit_id DESC LIMIT ?", (limit,))]
