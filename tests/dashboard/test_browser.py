"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright, against a
real gateway (``gateway.commands.run.run``) on this test's event loop, a real Mosquitto, a
reader publishing signed batches over MQTT (``tests/e2e/mqtt_reader.AckingReader``) and an
Ed-Fi-like upstream (``sim/peers/edfi.py``) that does not know one student, so that student's
absence is parked (409 unresolved reference).

Time: like tests/e2e/test_forwarding.py, the school's zone is chosen so that it is between 10:00
and 11:00 there now; the morning session (06:00-11:30, late after 07:00, absent at 08:00) is
under way and closed. The gateway starts with no reader, so every student is absent at once;
then the reader is registered and taps stamped 06:30 (on time) or 07:30 (late) arrive.

One gateway and one browser serve the module's tests (each test opens its own browser context,
so its own cookies). Screenshots of the main pages go to ``$DASHBOARD_SCREENSHOTS`` (default
``tests/artifacts/screenshots/``, git-ignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from gateway import db, roster
from gateway.commands.run import run
from gateway.config import GatewayConfig, load_config
from gateway.dashboard.auth import add_user
from gateway.registry import Registry
from sim.broker import MosquittoBroker, find_mosquitto, free_port
from sim.peers.edfi import EdFiPeer
from sim.reader import SimulatedReader
from tests.dashboard.school import FAST_KDF, PASSWORD, USERS, heartbeat
from tests.e2e.gateway_process import ROOT
from tests.e2e.mqtt_reader import AckingReader
from tests.e2e.test_forwarding import school_zone

pytestmark = pytest.mark.asyncio(loop_scope="module")

SCHOOL = "thcs-dashboard"
TARGET = "so-gd"
READER = 21
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
STUDENTS = [  # (student id, name, class, card)
    ("0200000001", "Nguyễn Thị Lan", "7A", "0C0D0001"),
    ("0200000002", "Trần Văn Minh", "7A", "0C0D0002"),
    ("0200000003", "Lê Thu Ngân", "7A", "0C0D0003"),
    ("0200000004", "Phạm Quốc Phong", "7B", "0C0D0004"),
    ("0200000005", "Hoàng Gia Quân", "7B", "0C0D0005"),
]
NOT_UPSTREAM = STUDENTS[4][0]  # on our roster, not in the ODS: its absence is parked
SHOTS = Path(os.environ.get("DASHBOARD_SCREENSHOTS", ROOT / "tests" / "artifacts" / "screenshots"))


def card(hexed: str) -> tuple[int, bytes]:
    return 2, bytes.fromhex(hexed)


@dataclass
class Gateway:
    config: GatewayConfig
    url: str
    peer: EdFiPeer
    reader: AckingReader
    browser: Browser
    stamp: list[float]

    def query(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        return query(self.config, sql, *args)

    async def tap(self, *taps: tuple[str, str]) -> None:
        """(card hex, local HH:MM) taps today, as one signed batch, acked after the commit."""
        zone = self.config.timezone
        records = []
        for hexed, hhmm in taps:
            self.stamp[0] = dt.datetime.combine(dt.datetime.now(zone).date(),
                                                dt.time.fromisoformat(hhmm),
                                                tzinfo=zone).timestamp()
            records.append(self.reader.sim.tap(card(hexed)))
        await self.reader.send(self.reader.sim.batch(records), deadline_s=20)

    async def page(self, user: str | None, **options: object) -> tuple[BrowserContext, Page]:
        """A fresh browser context (its own cookies), logged in as ``user``."""
        context = await self.browser.new_context(accept_downloads=True, **options)
        page = await context.new_page()
        await page.goto(self.url + "/login")
        if user is not None:
            await page.fill("input[name=username]", user)
            await page.fill("input[name=password]", PASSWORD)
            await page.click("form.login button")
            await expect(page.locator("header .who b")).to_have_text(user)
        return context, page


def query(config: GatewayConfig, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(config.database)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def until(what: str, check: Callable[[], bool], timeout_s: float = 20,
                detail: Callable[[], object] = lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s. {detail()}")
        await asyncio.sleep(0.1)


def write_setup(folder: Path, broker_port: int, peer: EdFiPeer, port: int) -> GatewayConfig:
    zone = school_zone(time.time())
    yesterday = dt.datetime.now(zone).date() - dt.timedelta(days=1)  # only today's session closes
    secret = folder / "edfi.secret"
    secret.write_text(peer.client_secret + "\n", encoding="utf-8")
    secret.chmod(0o600)
    path = folder / "gateway.toml"
    path.write_text(f"""\
[gateway]
school = "{SCHOOL}"
database = "gateway.db"
master_key_file = "master.key"
timezone = "{zone.key}"

[mqtt]
port = {broker_port}
keepalive_s = 5

[metrics]
listen = ""

[attendance]
school_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
holidays = ["{yesterday.isoformat()}"]

[[attendance.session]]
name = "morning"
start = "06:00"
late_after = "07:00"
absent_at = "08:00"
end = "11:30"

[outbox]
retry_initial_s = 1

[[forward]]
name = "{TARGET}"
type = "edfi"
base_url = "{peer.base_url}"
client_id = "{peer.client_id}"
client_secret_file = "edfi.secret"
school_id = {peer.school_id}
school_year = 2026
session_names = "Học kỳ I"
timeout_s = 5

[dashboard]
listen = "127.0.0.1:{port}"
""", encoding="utf-8")
    config = load_config(path)
    sheet = folder / "roster.csv"
    sheet.write_text("Mã định danh,Họ và tên,Lớp,Số thẻ\n" + "".join(
        f"{sid},{name},{cls},{hexed}\n" for sid, name, cls, hexed in STUDENTS), encoding="utf-8")
    conn = db.connect(config.database)
    try:
        roster.import_sheet(conn, sheet)
        for name, role in USERS.items():
            add_user(conn, name, PASSWORD, role, int(time.time() * 1000), FAST_KDF)
    finally:
        conn.close()
    return config


async def dashboard_up(url: str, gateway: asyncio.Task[int]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            if gateway.done():
                gateway.result()  # its error
                raise AssertionError("the gateway stopped")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url + "/login") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise AssertionError("the dashboard did not start")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run `make setup`", pytrace=False)
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser-deps`", pytrace=False)
    folder = tmp_path_factory.mktemp("dashboard-browser")
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        broker = stack.enter_context(MosquittoBroker(folder / "mosquitto"))
        peer = await stack.enter_async_context(EdFiPeer(
            sessions={(2026, "Học kỳ I")},
            students={sid for sid, *_ in STUDENTS if sid != NOT_UPSTREAM}))
        port = free_port()
        config = write_setup(folder, broker.port, peer, port)
        stop = asyncio.Event()
        task = asyncio.create_task(run(config, stop))

        async def stop_gateway() -> None:
            stop.set()
            await asyncio.wait_for(task, 30)
        stack.push_async_callback(stop_gateway)
        url = f"http://127.0.0.1:{port}"
        await dashboard_up(url, task)
        await until("every student absent, one absence parked upstream", lambda: query(
            config, "SELECT COUNT(*) FROM outbox WHERE state = 'parked'")[0][0] == 1
            and query(config, "SELECT COUNT(*) FROM outbox WHERE state = 'pending'")[0][0] == 0,
            detail=lambda: query(config, "SELECT state, parked_reason, last_error FROM outbox"))
        conn = db.connect(config.database, migrate=False)
        try:
            key = Registry.open(conn, config.master_key_file).register(
                READER, "Cổng chính", "main").key
        finally:
            conn.close()
        zone = config.timezone
        booted = dt.datetime.combine(dt.datetime.now(zone).date(), dt.time(6, 0),
                                     tzinfo=zone).timestamp()  # the reader's ticks count from 06:00
        stamp = [booted]
        reader = await stack.enter_async_context(AckingReader(
            READER, key, SCHOOL, "127.0.0.1", broker.port, ack_timeout_s=1.0))
        reader.sim = SimulatedReader(READER, key, SCHOOL, clock=lambda: stamp[0],
                                     monotonic=lambda: stamp[0])
        playwright = await stack.enter_async_context(async_playwright())
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        stack.push_async_callback(browser.close)
        g = Gateway(config, url, peer, reader, browser, stamp)
        # the morning so far: on time, late, an unknown card, and a forged batch (quarantined)
        await g.tap(("0C0D0001", "06:30"), ("0C0D0004", "06:40"), ("0C0D0002", "07:30"),
                    ("0EADBEEF", "07:05"))
        await reader.publish(b"\x01" + bytes(40))
        await reader.publish(heartbeat(key, int(time.time() * 1000), reader=READER,
                                       queue_depth=3, oldest_unsent_age_s=12,
                                       uptime_s=int(time.time() - booted)), "status")
        await until("the forged batch quarantined, the heartbeat stored",
                    lambda: bool(g.query("SELECT 1 FROM quarantine"))
                    and bool(g.query("SELECT 1 FROM reader_status")))
        yield g


async def shot(page: Page, name: str) -> None:
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def test_login_and_watch_a_tap_arrive_live(gateway: Gateway) -> None:
    context, page = await gateway.page(None)
    await shot(page, "login")
    await page.fill("input[name=username]", "viewer")
    await page.fill("input[name=password]", "wrong password")
    await page.click("form.login button")
    await expect(page.locator("p.error")).to_contain_text("Sai tên đăng nhập hoặc mật khẩu")
    await page.fill("input[name=username]", "viewer")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("form.login button")
    await expect(page.locator("h1")).to_have_text("Tổng quan")
    await expect(page.locator("#live-status")).to_have_text("Đang nhận trực tiếp")
    rows = page.locator("#live-taps tbody tr")
    await expect(rows.first).to_contain_text("Trần Văn Minh")  # the latest tap, late
    await expect(page.locator("svg.chart")).to_be_visible()
    before = await rows.count()
    await gateway.tap(("0C0D0003", "06:50"))  # Lê Thu Ngân arrives
    await expect(rows.first).to_contain_text("Lê Thu Ngân")
    await expect(rows.first).to_contain_text("Đến")
    await expect(rows).to_have_count(before + 1)
    await shot(page, "overview")
    await context.close()


async def test_open_a_class_and_export_csv(gateway: Gateway) -> None:
    context, page = await gateway.page("viewer")
    await page.click("nav >> text=Điểm danh")
    await expect(page.locator("h1")).to_contain_text("Điểm danh ngày")
    await shot(page, "attendance")
    await page.click("a[href^='/attendance/class/7A']")
    await expect(page.locator("h1")).to_contain_text("Lớp 7A")
    late = page.locator("section h3", has_text="Đi muộn")
    await expect(late).to_have_text("Đi muộn (1)")
    await expect(page.locator("table").first).to_contain_text("Trần Văn Minh")
    await shot(page, "class")
    async with page.expect_download() as info:
        await page.click("text=Xuất CSV")
    download = await info.value
    assert download.suggested_filename.startswith("diem-danh_")
    assert download.suggested_filename.endswith("_7A.csv")
    saved = Path(await download.path())
    rows = list(csv.reader(io.StringIO(saved.read_text(encoding="utf-8-sig"))))
    assert rows[0][:2] == ["Ngày / Date", "Buổi / Session"]
    by_name = {r[5]: r for r in rows[1:]}
    assert set(by_name) == {"Nguyễn Thị Lan", "Trần Văn Minh", "Lê Thu Ngân"}
    assert by_name["Trần Văn Minh"][8] == "1"  # late
    assert by_name["Nguyễn Thị Lan"][6] == "06:30:00"
    await context.close()


async def test_operator_retries_a_parked_item(gateway: Gateway) -> None:
    [(item_id,)] = gateway.query("SELECT item_id FROM outbox WHERE state = 'parked'")
    gateway.peer.students.add(NOT_UPSTREAM)  # the district fixed its roster
    context, page = await gateway.page("operator")
    await page.goto(gateway.url + "/outbox")
    section = page.locator(f"#parked-forward-{TARGET}")
    await expect(section).to_contain_text("409")
    await shot(page, "outbox")
    await section.locator("button", has_text="Gửi lại").first.click()
    await expect(page.locator("p.notice")).to_contain_text("1 mục đã về hàng chờ")
    await until("the retried item delivered", lambda: gateway.query(
        "SELECT state FROM outbox WHERE item_id = ?", item_id)[0][0] == "delivered")
    await context.close()


async def test_viewer_is_refused(gateway: Gateway) -> None:
    context, page = await gateway.page("viewer")
    await page.goto(gateway.url + "/unknown-cards")
    await expect(page.locator("#unknown-cards")).to_contain_text("0EADBEEF")
    await expect(page.locator("form[action='/unknown-cards/assign']")).to_have_count(0)
    status, text = await page.evaluate("""async () => {
        const csrf = document.querySelector("input[name=csrf]").value;
        const response = await fetch("/unknown-cards/ack", {method: "POST",
            body: new URLSearchParams({csrf, card: "iso14443a:0EADBEEF"})});
        return [response.status, await response.text()];
    }""")
    assert status == 403 and "Bạn không có quyền làm việc này" in text
    assert gateway.query("SELECT acknowledged FROM unknown_cards")[0][0] == 0
    await page.goto(gateway.url + "/quarantine")
    await shot(page, "quarantine")
    await page.goto(gateway.url + "/readers")
    table = page.locator("table")
    await expect(table).to_contain_text("Cổng chính")
    await expect(table.locator("td.num").first).to_have_text("3")  # queue depth
    await shot(page, "readers")
    await context.close()


async def test_operator_assigns_the_unknown_card(gateway: Gateway) -> None:
    context, page = await gateway.page("operator")
    await page.goto(gateway.url + "/unknown-cards")
    form = page.locator("form[action='/unknown-cards/assign']")
    await form.locator("input[name=student_id]").fill(STUDENTS[0][0])  # already has a card,
    await form.locator("button").click()  # and may have two
    await expect(page.locator("p.notice")).to_contain_text("Đã gán thẻ iso14443a:0EADBEEF")
    await page.goto(gateway.url + "/unknown-cards?all=1")
    form = page.locator("form[action='/unknown-cards/assign']")
    await form.locator("input[name=student_id]").fill(STUDENTS[1][0])
    await form.locator("button").click()
    await expect(page.locator("p.error")).to_contain_text(
        f"already belongs to student {STUDENTS[0][0]}")
    await shot(page, "unknown-cards")
    await context.close()


async def test_phone_screen(gateway: Gateway) -> None:
    context, page = await gateway.page("operator", viewport={"width": 390, "height": 844},
                                       device_scale_factor=2, is_mobile=True, has_touch=True)
    for path, name in [("/", "phone-overview"), ("/attendance", "phone-attendance"),
                       ("/outbox", "phone-outbox")]:
        await page.goto(gateway.url + path)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width} px wide on a 390 px screen"
        await shot(page, name)
    await page.click("text=English")
    await expect(page.locator("h1")).to_contain_text("Outboxes")
    await context.close()
