"""Every route of the dashboard and every role, through aiohttp's test client over loopback.

The database is a real morning of the gateway (tests/dashboard/school.py); time is the tests'
clock, so session expiry and the login rate limit are exact.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from pathlib import Path

import openpyxl
import pytest
from prometheus_client import CollectorRegistry

from gateway import db, reports
from gateway.registry import Registry
from gateway.rules import SchoolCalendar
from tests.dashboard.conftest import MakeClient, csrf, login
from tests.dashboard.school import (
    DAY,
    PASSWORD,
    READER,
    STUDENTS,
    TARGET,
    UNKNOWN_CARD,
    Clock,
    Morning,
    write_config,
)

PAGES = ["/", "/attendance", "/attendance/class/6A", "/readers", "/unknown-cards",
         "/quarantine", "/outbox"]
UNKNOWN = f"iso14443a:{UNKNOWN_CARD}"


def parked_items(m: Morning) -> list[tuple[int, str]]:
    return [(int(r[0]), str(r[1])) for r in m.conn.execute(
        "SELECT item_id, state FROM outbox WHERE parked_reason IS NOT NULL")]


async def test_pages_need_a_login(morning: Morning, make_client: MakeClient) -> None:
    client = await make_client(morning.config)
    for path in [*PAGES, "/export.csv", "/events"]:
        response = await client.get(path, allow_redirects=False)
        if path == "/events":
            assert response.status == 401
        else:
            assert response.status == 303, path
            assert response.headers["Location"].startswith("/login?next=")
    response = await client.post(f"/outbox/forward/{TARGET}/retry", data={"all": "1"},
                                 allow_redirects=False)
    assert response.status == 403
    assert "Cần đăng nhập" in await response.text()


async def test_viewer_sees_every_page_and_no_action(morning: Morning,
                                                    make_client: MakeClient) -> None:
    client = await make_client(morning.config)
    response = await login(client, "viewer")
    assert response.status == 303 and response.headers["Location"] == "/"
    texts = {}
    for path in PAGES:
        response = await client.get(path)
        assert response.status == 200, path
        assert response.headers["Cache-Control"] == "no-store"
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        texts[path] = await response.text()
    assert "Trần Thị Bình" in texts["/"] and "Đến muộn" in texts["/"]  # a late arrival
    assert "<svg" in texts["/"]  # arrivals per minute
    assert "/attendance/class/6A" in texts["/attendance"]
    late, absent = texts["/attendance/class/6A"].split("Vắng (", 1)
    assert "Trần Thị Bình" in late.split("Đi muộn (1)", 1)[1]
    assert "Lê Hoàng Cường" in absent.split("Cả lớp", 1)[0]  # never came
    assert "Cổng chính 1" in texts["/readers"] and "badge ok" in texts["/readers"]
    assert UNKNOWN in texts["/unknown-cards"]
    assert "bad_topic" in texts["/quarantine"]
    assert TARGET in texts["/outbox"] and "409 unresolved reference" in texts["/outbox"]
    for text in texts.values():  # no form that changes anything, but logging out
        assert re.findall(r'<form method="post" action="([^"]+)"', text) == ["/logout"]


async def test_viewer_is_refused_a_state_change(morning: Morning,
                                                make_client: MakeClient) -> None:
    client = await make_client(morning.config)
    await login(client, "viewer")
    token = await csrf(client, "/outbox")
    before = parked_items(morning)
    for path, data in [(f"/outbox/forward/{TARGET}/retry", {"all": "1"}),
                       ("/unknown-cards/ack", {"card": UNKNOWN}),
                       ("/unknown-cards/assign", {"card": UNKNOWN, "student_id": STUDENTS[2][0]}),
                       (f"/readers/{READER}/revoke", {"confirm": "1"})]:
        response = await client.post(path, data={**data, "csrf": token}, allow_redirects=False)
        assert response.status == 403, path
        assert "không có quyền" in await response.text()
    assert parked_items(morning) == before
    assert morning.conn.execute("SELECT acknowledged FROM unknown_cards").fetchone()[0] == 0


async def test_operator_is_refused_reader_keys(morning: Morning,
                                               make_client: MakeClient) -> None:
    client = await make_client(morning.config)
    await login(client, "operator")
    token = await csrf(client, "/readers")
    response = await client.post(f"/readers/{READER}/rotate",
                                 data={"csrf": token, "confirm": "1"})
    assert response.status == 403
    assert 'action="/readers/' not in await (await client.get("/readers")).text()


async def test_missing_or_wrong_csrf_is_refused(morning: Morning,
                                                make_client: MakeClient) -> None:
    client = await make_client(morning.config)
    await login(client, "operator")
    token = await csrf(client, "/outbox")
    before = parked_items(morning)
    path = f"/outbox/forward/{TARGET}/retry"
    for data in ({"all": "1"}, {"all": "1", "csrf": ""}, {"all": "1", "csrf": token[:-1] + "x"}):
        response = await client.post(path, data=data, allow_redirects=False)
        assert response.status == 403
        assert "Biểu mẫu không hợp lệ" in await response.text()
    for origin in ("http://evil.example", "null"):  # null: a cross-site form, for browsers
        response = await client.post(path, data={"all": "1", "csrf": token},
                                     headers={"Origin": origin}, allow_redirects=False)
        assert response.status == 403
    assert parked_items(morning) == before
    response = await client.post("/logout", allow_redirects=False)  # logging out needs it too
    assert response.status == 403


async def test_operator_retries_a_parked_item(morning: Morning, make_client: MakeClient) -> None:
    client = await make_client(morning.config)
    await login(client, "operator")
    page = await (await client.get("/outbox")).text()
    [(item_id, state)] = parked_items(morning)
    assert state == "parked" and f'name="item" value="{item_id}"' in page
    token = await csrf(client, "/outbox")
    response = await client.post(f"/outbox/forward/{TARGET}/retry",
                                 data={"csrf": token, "item": str(item_id)})
    assert response.status == 200  # after the redirect
    assert f"{TARGET}: 1 mục đã về hàng chờ" in await response.text()
    assert parked_items(morning) == [(item_id, "pending")]
    again = await client.post(f"/outbox/forward/{TARGET}/retry",
                              data={"csrf": token, "item": str(item_id)})
    assert again.status == 409 and "not parked" in await again.text()
    unknown = await client.post("/outbox/forward/nowhere/retry", data={"csrf": token, "all": "1"})
    assert unknown.status == 404


async def test_expired_session_is_sent_to_the_login(morning: Morning, make_client: MakeClient,
                                                    clock: Clock) -> None:
    client = await make_client(morning.config)
    await login(client, "viewer")
    assert (await client.get("/outbox", allow_redirects=False)).status == 200
    clock.advance(31 * 60)  # idle longer than session_idle_min (30)
    response = await client.get("/outbox", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"].startswith("/login?expired=1&next=")
    page = await client.get(response.headers["Location"])
    assert "Phiên làm việc đã hết hạn" in await page.text()
    # in use all along, a session still ends session_max_hours (12) after the login
    await login(client, "viewer")
    for _ in range(12 * 3):
        clock.advance(20 * 60)
        response = await client.get("/readers", allow_redirects=False)
        if response.status != 200:
            break
    assert response.status == 303 and "expired=1" in response.headers["Location"]


async def test_wrong_password_is_rate_limited(morning: Morning, make_client: MakeClient,
                                              clock: Clock) -> None:
    registry = CollectorRegistry()
    client = await make_client(morning.config, registry=registry)
    for _ in range(3):  # the tests' limit: 3 failures per user in 15 minutes
        response = await login(client, "operator", "wrong password!")
        assert response.status == 401
        assert "Sai tên đăng nhập hoặc mật khẩu" in await response.text()
    response = await login(client, "operator")  # the right password, but locked
    assert response.status == 429
    assert 0 < int(response.headers["Retry-After"]) <= 15 * 60
    assert "Thử lại sau 15 phút" in await response.text()
    restarted = await make_client(morning.config)  # persisted: a restart does not reset it
    assert (await login(restarted, "operator")).status == 429
    assert (await login(restarted, "viewer")).status == 303  # another user is not locked
    clock.advance(15 * 60 + 1)
    assert (await login(restarted, "operator")).status == 303
    assert registry.get_sample_value("attendance_dashboard_logins_total",
                                     {"outcome": "failed"}) == 3
    assert registry.get_sample_value("attendance_dashboard_logins_total",
                                     {"outcome": "locked"}) == 1


async def test_login_refuses_a_forged_form_and_an_open_redirect(morning: Morning,
                                                                make_client: MakeClient) -> None:
    client = await make_client(morning.config)
    response = await client.post("/login", data={"username": "viewer", "password": PASSWORD,
                                                 "login_token": "guess"}, allow_redirects=False)
    assert response.status == 403 and "att_session" not in response.cookies
    response = await login(client, "viewer", next_path="//evil.example/")
    assert response.status == 303 and response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie


async def test_logout_ends_the_session(morning: Morning, make_client: MakeClient) -> None:
    client = await make_client(morning.config)
    await login(client, "viewer")
    token = await csrf(client)
    response = await client.post("/logout", data={"csrf": token}, allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/login"
    assert morning.conn.execute("SELECT COUNT(*) FROM dashboard_sessions").fetchone()[0] == 0
    assert (await client.get("/", allow_redirects=False)).status == 303


async def test_card_assignment(morning: Morning, make_client: MakeClient) -> None:
    client = await make_client(morning.config)
    await login(client, "operator")
    token = await csrf(client, "/unknown-cards")
    cases = [
        ({"student_id": "12345"}, 400, "Không có học sinh mã 12345"),
        ({"student_id": "0999999999"}, 400, "Không có học sinh mã 0999999999"),
        ({"student_id": STUDENTS[0][0], "card": "iso14443a:0A0B0042"}, 400, "Không có thẻ lạ"),
    ]
    for data, status, text in cases:
        response = await client.post("/unknown-cards/assign",
                                     data={"csrf": token, "card": UNKNOWN, **data})
        assert response.status == status, data
        assert text in await response.text()
    response = await client.post("/unknown-cards/assign", data={
        "csrf": token, "card": UNKNOWN, "student_id": STUDENTS[2][0]})
    assert response.status == 200
    assert f"Đã gán thẻ {UNKNOWN} (số {UNKNOWN_CARD}) cho học sinh {STUDENTS[2][0]}" \
        in await response.text()
    assert morning.conn.execute("SELECT student_id FROM card_numbers WHERE number = ?",
                                (UNKNOWN_CARD,)).fetchone()[0] == STUDENTS[2][0]
    assert morning.conn.execute("SELECT acknowledged FROM unknown_cards").fetchone()[0] == 1
    assert morning.conn.execute(  # audited as a roster import by that user
        "SELECT source FROM roster_imports ORDER BY import_id DESC").fetchone()[0] \
        == "dashboard:operator"
    # the student keeps the card printed on the roster
    assert morning.conn.execute("SELECT COUNT(*) FROM card_numbers WHERE student_id = ?",
                                (STUDENTS[2][0],)).fetchone()[0] == 2
    # already assigned: refused for another student, with the roster's words
    response = await client.post("/unknown-cards/assign", data={
        "csrf": token, "card": UNKNOWN, "student_id": STUDENTS[3][0]})
    assert response.status == 409
    text = await response.text()
    assert f"already belongs to student {STUDENTS[2][0]}" in text
    assert f"đã thuộc học sinh {STUDENTS[2][0]}" in text
    response = await client.post("/unknown-cards/assign", data={
        "csrf": token, "card": UNKNOWN, "student_id": STUDENTS[2][0]})
    assert "đã thuộc học sinh" in await response.text() and response.status == 200


async def test_acknowledge_an_unknown_card(morning: Morning, make_client: MakeClient) -> None:
    client = await make_client(morning.config)
    await login(client, "operator")
    token = await csrf(client, "/unknown-cards")
    response = await client.post("/unknown-cards/ack", data={"csrf": token, "card": UNKNOWN})
    assert response.status == 200 and "đã xem" in await response.text()
    assert UNKNOWN not in (await (await client.get("/unknown-cards")).text()).split("</h1>")[1]
    assert UNKNOWN in await (await client.get("/unknown-cards?all=1")).text()
    response = await client.post("/unknown-cards/ack", data={"csrf": token, "card": "nope"})
    assert response.status == 404


async def test_admin_rotates_and_revokes_a_reader(morning: Morning,
                                                  make_client: MakeClient) -> None:
    client = await make_client(morning.config)
    await login(client, "admin")
    token = await csrf(client, "/readers")
    response = await client.post(f"/readers/{READER}/rotate", data={"csrf": token})
    assert response.status == 400  # not confirmed
    response = await client.post(f"/readers/{READER}/rotate",
                                 data={"csrf": token, "confirm": "1"})
    assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
    page = await response.text()
    key_hex = re.findall(r"<code>([0-9a-f]{64})</code>", page)
    assert len(key_hex) == 1
    registry = Registry.open(morning.conn, morning.config.master_key_file)
    active = registry.key_ring().active(READER)
    assert active is not None and active.key.hex() == key_hex[0]
    readers_page = await (await client.get("/readers")).text()
    assert key_hex[0] not in readers_page and "retired" in readers_page
    response = await client.post(f"/readers/{READER}/finish-rotation", data={"csrf": token})
    assert "đã thu hồi 1 khóa cũ" in await response.text()
    response = await client.post(f"/readers/{READER}/revoke",
                                 data={"csrf": token, "confirm": "1"})
    assert "Đã thu hồi đầu đọc 17" in await response.text()
    assert registry.reader(READER).status == "revoked"
    response = await client.post(f"/readers/{READER}/rotate",
                                 data={"csrf": token, "confirm": "1"})
    assert response.status == 409 and "revoked" in await response.text()


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
async def test_export_is_the_cli_export(morning: Morning, make_client: MakeClient,
                                        tmp_path: Path, fmt: str) -> None:
    client = await make_client(morning.config)
    await login(client, "viewer")
    day = DAY.isoformat()
    response = await client.get(f"/export.{fmt}?from={day}&to={day}&class=6A")
    assert response.status == 200
    assert response.headers["Content-Disposition"] == \
        f'attachment; filename="diem-danh_{day}_{day}_6A.{fmt}"'
    body = await response.read()
    expected = tmp_path / f"cli.{fmt}"
    conn = db.connect(morning.config.database)
    try:
        reports.export(conn, SchoolCalendar(morning.config.attendance, morning.config.timezone),
                       DAY, DAY, "csv" if fmt == "csv" else "xlsx", expected, "6A")
    finally:
        conn.close()
    if fmt == "csv":
        assert body == expected.read_bytes()
        rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
        assert rows[0] == list(reports.EXPORT_HEADERS)
        assert [r[5] for r in rows[1:]] == ["Nguyễn Văn An", "Trần Thị Bình", "Lê Hoàng Cường"]
    else:
        sheet = openpyxl.load_workbook(io.BytesIO(body)).active
        assert sheet is not None
        assert [c.value for c in sheet[2]][5] == "Nguyễn Văn An"
    bad = await client.get(f"/export.csv?from={day}&to=2026-01-01")
    assert bad.status == 400


async def test_language_switch_is_remembered(morning: Morning, make_client: MakeClient) -> None:
    client = await make_client(morning.config)
    await login(client, "viewer")
    assert "Điểm danh ngày" in await (await client.get("/attendance")).text()  # default
    response = await client.get("/lang?l=en&next=/attendance")
    text = await response.text()
    assert "Attendance on" in text and 'lang="en"' in text
    assert "Present" in text and "Late" in text
    assert "Arrivals per minute" in await (await client.get("/")).text()
    response = await client.get("/lang?l=vi&next=//evil.example/", allow_redirects=False)
    assert response.headers["Location"] == "/"


async def test_anonymous_view_from_loopback_only_when_enabled(
        morning: Morning, make_client: MakeClient, tmp_path: Path) -> None:
    config = write_config(tmp_path, dashboard="anonymous_loopback_view = true")
    client = await make_client(config)
    response = await client.get("/", allow_redirects=False)
    assert response.status == 200 and "chỉ xem, máy này" in await response.text()
    assert 'name="csrf"' not in await response.text()
    response = await client.post("/unknown-cards/ack", data={"card": UNKNOWN},
                                 allow_redirects=False)
    assert response.status == 403
    for headers in ({"Host": "evil.example:8080"}, {"X-Forwarded-For": "203.0.113.9"}):
        response = await client.get("/", headers=headers, allow_redirects=False)
        assert response.status == 303, headers  # a rebinding page or a proxy: log in
    closed = await make_client(morning.config)  # the default: a login even on loopback
    assert (await closed.get("/", allow_redirects=False)).status == 303


async def test_live_taps_arrive_after_commit(morning: Morning, make_client: MakeClient) -> None:
    registry = CollectorRegistry()
    client = await make_client(morning.config, ingest=morning.ingest, registry=registry)
    await login(client, "viewer")
    async with client.get("/events") as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert registry.get_sample_value("attendance_dashboard_sse_clients") == 1
        await morning.taps(("0A0B0005", "07:20"))
        event = ""
        async with asyncio.timeout(10):
            while "event: tap" not in event:
                event += (await stream.content.readuntil(b"\n\n")).decode()
    data = event.split("data: ", 1)[1]
    assert '"student": "Võ Minh Đức"' in data and '"kind": "late"' in data
    assert '"class": "6B"' in data and '"time": "07:20:00"' in data
