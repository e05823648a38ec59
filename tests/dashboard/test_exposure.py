"""What the dashboard exposes: no page, export or live tap shows a guardian or a phone number,
for any role; and a dashboard listening beyond loopback over plain HTTP says so in the log."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from aiohttp import web

from gateway import roster
from gateway.dashboard.app import Dashboard
from gateway.metrics import GatewayMetrics
from tests.dashboard.conftest import MakeClient, login
from tests.dashboard.school import (
    DAY,
    STUDENTS,
    USERS,
    Clock,
    Morning,
    at,
    write_config,
)

GUARDIANS = {  # student id -> (guardian, phone as the school typed it, its nine digits)
    STUDENTS[0][0]: ("Hoàng Thị Xuân", "0912 345 678", "912345678"),
    STUDENTS[1][0]: ("Đinh Quốc Vượng", "+84 983 111 222", "983111222"),
    STUDENTS[4][0]: ("Lương Bích Yến", "0707.654.321", "707654321"),
}
# a guardian's name, and every form a phone could take on a page: as typed, as stored (84…),
# as a local number, its digits
FORBIDDEN = [text for name, typed, digits in GUARDIANS.values()
             for text in (name, typed, "84" + digits, "0" + digits, digits)]


def import_guardians(m: Morning) -> None:
    """The roster again, now with a consenting guardian for three students."""
    lines = ["Mã định danh,Họ và tên,Lớp,Số thẻ,Phụ huynh,Số điện thoại,Đồng ý"]
    for sid, name, cls, card in STUDENTS:
        guardian = f"{GUARDIANS[sid][0]},{GUARDIANS[sid][1]},có" if sid in GUARDIANS else ",,"
        lines.append(f"{sid},{name},{cls},{card},{guardian}")
    sheet = m.folder / "roster-guardians.csv"
    sheet.write_text("\n".join(lines) + "\n", encoding="utf-8")
    roster.import_sheet(m.conn, sheet)
    stored = {str(r[0]) for r in m.conn.execute("SELECT phone FROM guardians")}
    assert stored == {"84" + digits for _, _, digits in GUARDIANS.values()}


def xlsx_text(body: bytes) -> str:
    book = openpyxl.load_workbook(io.BytesIO(body))
    return "\n".join(str(c.value) for sheet in book.worksheets for row in sheet.iter_rows()
                     for c in row if c.value is not None)


async def _everything(client: Any) -> list[str]:
    """Every page a user can open, the unknown cards with the acknowledged ones, and both
    exports of the whole day."""
    texts = []
    paths = ["/", "/attendance", "/attendance/class/6A", "/attendance/class/6B", "/readers",
             "/unknown-cards", "/unknown-cards?all=1", "/quarantine", "/outbox",
             f"/export.csv?from={DAY}&to={DAY}"]
    for path in paths:
        response = await client.get(path)
        assert response.status == 200, path
        texts.append(await response.text())
    response = await client.get(f"/export.xlsx?from={DAY}&to={DAY}")
    assert response.status == 200
    texts.append(xlsx_text(await response.read()))
    return texts


async def test_no_page_export_or_live_tap_shows_a_guardian_or_a_phone(
        morning: Morning, make_client: MakeClient, tmp_path: Path) -> None:
    import_guardians(morning)
    seen: list[str] = []
    for user in USERS:
        client = await make_client(morning.config)
        await login(client, user)
        seen += await _everything(client)
    anonymous = await make_client(write_config(tmp_path,
                                               dashboard="anonymous_loopback_view = true"))
    seen += await _everything(anonymous)
    client = await make_client(morning.config, ingest=morning.ingest)
    await login(client, "viewer")
    async with client.get("/events") as stream:
        await morning.taps((STUDENTS[4][3], "07:20"))  # a student with a guardian
        event = ""
        async with asyncio.timeout(10):
            while "event: tap" not in event:
                event += (await stream.content.readuntil(b"\n\n")).decode()
    seen.append(event)
    whole = "\n".join(seen)
    assert STUDENTS[0][1] in whole and STUDENTS[4][1] in event  # the pages do show students
    for text in FORBIDDEN:
        assert text not in whole, text


@pytest.mark.parametrize(("host", "cookie_secure", "warned"), [
    ("0.0.0.0", False, True),
    ("0.0.0.0", True, False),  # behind a TLS proxy
    ("127.0.0.1", False, False),
])
async def test_listening_beyond_loopback_over_plain_http_is_warned(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        host: str, cookie_secure: bool, warned: bool) -> None:
    """The dashboard is told to listen on ``host``; the socket itself is bound to loopback
    (the tests touch no other interface)."""
    asked: list[str] = []

    class LoopbackSite(web.TCPSite):
        def __init__(self, runner: web.BaseRunner, host: str | None = None,
                     port: int | None = None, **kwargs: Any) -> None:
            asked.append(str(host))
            super().__init__(runner, "127.0.0.1", port, **kwargs)

    monkeypatch.setattr(web, "TCPSite", LoopbackSite)
    config = write_config(tmp_path)
    config = dataclasses.replace(config, dashboard=dataclasses.replace(
        config.dashboard, listen=f"{host}:0", cookie_secure=cookie_secure))
    m = Morning(tmp_path, config, Clock(at("09:00")))
    await m.start()
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, "gateway.dashboard")
    task = asyncio.create_task(Dashboard(config, m.ingest, GatewayMetrics()).run(stop))
    try:
        async with asyncio.timeout(10):
            while not any(r.getMessage() == "dashboard" for r in caplog.records):
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await m.close()
    assert asked == [host]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and "beyond loopback over plain HTTP" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert warnings[0].listen == f"{host}:0"  # type: ignore[attr-defined]
