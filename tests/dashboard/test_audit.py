"""Who did what from the dashboard (gateway/dashboard/audit.py): every state-changing action and
every export is one ``dashboard_audit`` row and one ``dashboard audit`` log line with the acting
user, role, client address, action and scope; a refused action is logged and records nothing.
Through aiohttp's test client over loopback, on the morning of tests/dashboard/school.py."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway import db
from gateway.dashboard import audit
from tests.dashboard.conftest import MakeClient, csrf, login
from tests.dashboard.school import (
    DAY,
    READER,
    STUDENTS,
    TARGET,
    UNKNOWN_CARD,
    Morning,
    at,
    write_config,
)
from tests.log_text import logged_text

UNKNOWN = f"iso14443a:{UNKNOWN_CARD}"
LOOPBACK = "127.0.0.1"


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "gateway.dashboard.audit" and r.getMessage() == "dashboard audit"]


def rows(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [{"audit_id": r[0], "user": r[1], "role": r[2], "address": r[3], "action": r[4],
             "scope": json.loads(r[5])}
            for r in conn.execute("SELECT audit_id, username, role, address, action, scope "
                                  "FROM dashboard_audit ORDER BY audit_id")]


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name)
            for name in ("audit_id", "user", "role", "address", "action", "scope")}


async def test_every_action_and_export_is_recorded_with_user_role_scope_and_address(
        morning: Morning, make_client: MakeClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    [(item_id,)] = morning.conn.execute(
        "SELECT item_id FROM outbox WHERE state = 'parked'").fetchall()
    student = STUDENTS[2][0]
    day = DAY.isoformat()

    operator = await make_client(morning.config)
    await login(operator, "operator")
    token = await csrf(operator, "/outbox")
    for path, data in [(f"/outbox/forward/{TARGET}/retry", {"item": str(item_id)}),
                       ("/unknown-cards/assign", {"card": UNKNOWN, "student_id": student}),
                       ("/unknown-cards/ack", {"card": UNKNOWN})]:
        response = await operator.post(path, data={**data, "csrf": token})
        assert response.status == 200, path
    admin = await make_client(morning.config)
    await login(admin, "admin")
    token = await csrf(admin, "/readers")
    shown: list[str] = []
    for path in ("rotate", "finish-rotation", "revoke"):
        response = await admin.post(f"/readers/{READER}/{path}",
                                    data={"csrf": token, "confirm": "1"})
        assert response.status == 200, path
        shown += re.findall(r"<code>([0-9a-f]{64})</code>", await response.text())
    assert len(shown) == 1  # the new key, shown once
    viewer = await make_client(morning.config)
    await login(viewer, "viewer")
    for fmt in ("csv", "xlsx"):
        response = await viewer.get(f"/export.{fmt}?from=2026-09-01&to={day}&class=6A")
        assert response.status == 200
    response = await viewer.get(f"/export.csv?from={day}&to={day}")
    assert response.status == 200
    token = await csrf(viewer)
    assert (await viewer.post("/logout", data={"csrf": token})).status == 200

    expected = [
        ("operator", "operator", "retry", {"queue": "forward", "target": TARGET,
                                           "asked": [item_id], "items": [item_id]}),
        ("operator", "operator", "assign_card", {"changed": True}),
        ("operator", "operator", "acknowledge_card", {}),
        ("admin", "admin", "rotate_key", {"reader_id": READER, "key_id": 2}),
        ("admin", "admin", "finish_rotation", {"reader_id": READER, "keys_revoked": 1}),
        ("admin", "admin", "revoke_reader", {"reader_id": READER}),
        ("viewer", "viewer", "export", {"format": "csv", "from": "2026-09-01", "to": day,
                                        "class": "6A", "rows": 21}),
        ("viewer", "viewer", "export", {"format": "xlsx", "from": "2026-09-01", "to": day,
                                        "class": "6A", "rows": 21}),
        ("viewer", "viewer", "export", {"format": "csv", "from": day, "to": day,
                                        "class": "*", "rows": 6}),
        ("viewer", "viewer", "logout", {}),
    ]
    lines = [fields(r) for r in audit_lines(caplog)]
    assert [(x["user"], x["role"], x["action"], x["scope"]) for x in lines] == expected
    assert {x["address"] for x in lines} == {LOOPBACK}
    # the table holds the same, and what a log may not: the card and the student
    stored = rows(morning.conn)
    assert [x["audit_id"] for x in stored] == [x["audit_id"] for x in lines]
    private = {"assign_card": {"card": UNKNOWN, "number": UNKNOWN_CARD, "student_id": student},
               "acknowledge_card": {"card": UNKNOWN}}
    assert [(x["user"], x["role"], x["action"], x["scope"]) for x in stored] == [
        (user, role, action, {**scope, **private.get(action, {})})
        for user, role, action, scope in expected]
    assert {x["address"] for x in stored} == {LOOPBACK}
    # no card number, student id or name in any of the gateway's log lines (the test
    # server's access log is aiohttp's: the dashboard runs with access_log=None)
    text = logged_text(r for r in caplog.records if r.name.startswith("gateway"))
    for secret in (UNKNOWN_CARD, student, *(name for _, name, _, _ in STUDENTS)):
        assert secret not in text
    # nor the new key shown on the rotation page, in the log or the table
    assert shown[0] not in text
    assert shown[0] not in json.dumps(stored)


async def test_an_anonymous_export_is_recorded_too(morning: Morning, make_client: MakeClient,
                                                   tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config = write_config(tmp_path, dashboard="anonymous_loopback_view = true")
    client = await make_client(config)
    response = await client.get(f"/export.xlsx?from={DAY}&to={DAY}")
    assert response.status == 200
    [line] = [fields(r) for r in audit_lines(caplog)]
    assert (line["user"], line["role"], line["address"], line["action"]) == \
        (None, "anonymous", LOOPBACK, "export")
    [row] = rows(morning.conn)
    assert row["role"] == "anonymous" and row["scope"]["rows"] == 6


async def test_a_refused_action_is_logged_and_records_nothing(
        morning: Morning, make_client: MakeClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = await make_client(morning.config)
    await login(client, "operator")
    token = await csrf(client, "/readers")
    response = await client.post(f"/readers/{READER}/revoke",
                                 data={"csrf": token, "confirm": "1"})
    assert response.status == 403
    bad = await client.get("/export.csv?from=2026-09-07&to=2026-01-01")  # a bad range
    assert bad.status == 400
    refused = [r for r in caplog.records if r.getMessage() == "dashboard action refused"]
    assert [(r.user, r.role, r.action, r.needs, r.address)  # type: ignore[attr-defined]
            for r in refused] == [("operator", "operator", "revoke", "admin", LOOPBACK)]
    assert audit_lines(caplog) == [] and rows(morning.conn) == []


def test_rows_are_kept_400_days(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "gateway.db")
    actor = audit.Actor(None, None, "anonymous", LOOPBACK)
    first = audit.record(conn, actor, "export", {"n": 1}, at("09:00"))
    audit.record(conn, actor, "export", {"n": 2}, at("09:00") + audit.AUDIT_KEPT_MS)
    assert [e.scope["n"] for e in audit.recent(conn)] == [2, 1]
    audit.record(conn, actor, "export", {"n": 3}, at("09:00") + audit.AUDIT_KEPT_MS + 1)
    assert [e.scope["n"] for e in audit.recent(conn)] == [3, 2]
    assert first not in {e.audit_id for e in audit.recent(conn)}
    conn.close()
