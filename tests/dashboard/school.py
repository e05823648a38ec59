"""A school's database as the gateway leaves it after a morning, for the dashboard's tests.

Everything goes through the gateway's own code: the roster is imported from a sheet, the reader
registered, its signed batches and heartbeat handled by a real :class:`gateway.ingest.Ingest`
with the attendance rules and the outbox's enqueuer, the session closed by the rules. Only the
upstream's verdict is written by hand: one outbox item parked, as an Ed-Fi 409 would park it.
Time is a :class:`Clock` the tests move (Monday 2026-09-07, 09:00 in Hà Nội).
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import zoneinfo
from pathlib import Path

from gateway import db, roster
from gateway.config import GatewayConfig, load_config
from gateway.dashboard.auth import KdfParams, add_user
from gateway.ingest import Ingest
from gateway.outbox import Enqueuer
from gateway.registry import Registry
from gateway.rules import AttendanceRules
from gateway.types import StoredScan
from protocol import construct_codec
from sim.reader import SimulatedReader

ZONE = zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh")
DAY = dt.date(2026, 9, 7)
SCHOOL = "thcs-test"
TARGET = "so-gd"
READER = 17
FAST_KDF = KdfParams(memory_kib=256, iterations=1, lanes=1)  # the tests' users only
PASSWORD = "mat-khau-dai-1"
USERS = {"viewer": "viewer", "operator": "operator", "admin": "admin"}  # name -> role
STUDENTS = [  # (student id, name, class id, card hex)
    ("0100000001", "Nguyễn Văn An", "6A", "0A0B0001"),
    ("0100000002", "Trần Thị Bình", "6A", "0A0B0002"),
    ("0100000003", "Lê Hoàng Cường", "6A", "0A0B0003"),
    ("0100000004", "Phạm Thu Dung", "6B", "0A0B0004"),
    ("0100000005", "Võ Minh Đức", "6B", "0A0B0005"),
    ("0100000006", "Đặng Ngọc Hà", "6B", "0A0B0006"),
]
UNKNOWN_CARD = "DEADBEEF"


def at(hhmm: str) -> int:
    """Unix ms of a local time on DAY."""
    return int(dt.datetime.combine(DAY, dt.time.fromisoformat(hhmm), tzinfo=ZONE)
               .timestamp() * 1000)


class Clock:
    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


def write_config(folder: Path, *, dashboard: str = "", extra: str = "") -> GatewayConfig:
    path = folder / "gateway.toml"
    path.write_text(f"""\
[gateway]
school = "{SCHOOL}"
database = "gateway.db"
master_key_file = "master.key"
timezone = "Asia/Ho_Chi_Minh"

[metrics]
listen = ""

[attendance]
school_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

[[attendance.session]]
name = "morning"
start = "06:30"
late_after = "07:00"
absent_at = "08:00"
end = "11:30"

[[forward]]
name = "{TARGET}"
type = "edfi"
base_url = "http://127.0.0.1:9"
client_id = "gateway"
client_secret_file = "edfi.secret"
school_id = 1
school_year = 2026

[dashboard]
listen = "127.0.0.1:8080"
{dashboard}
{extra}""", encoding="utf-8")
    return load_config(path)


def import_roster(folder: Path, conn: sqlite3.Connection) -> None:
    sheet = folder / "roster.csv"
    sheet.write_text("Mã định danh,Họ và tên,Lớp,Số thẻ\n" + "".join(
        f"{sid},{name},{cls},{card}\n" for sid, name, cls, card in STUDENTS), encoding="utf-8")
    roster.import_sheet(conn, sheet)


def card(hexed: str) -> tuple[int, bytes]:
    return 2, bytes.fromhex(hexed)  # ISO 14443-A


def heartbeat(key: bytes, now_ms: int, *, reader: int = READER, queue_depth: int = 0,
              oldest_unsent_age_s: int = 0, uptime_s: int = 3_600) -> bytes:
    """A signed heartbeat of a reader with a synced clock, up for ``uptime_s``: its ticks must
    agree with its taps' (the gateway judges a synced clock against the heartbeat's evidence)."""
    return construct_codec.encode("heartbeat", {
        "reader_id": reader, "boot": 1, "state": "online", "faults": [], "fw_version": "1.4.0",
        "link": "wifi", "rssi_dbm": -58, "clock_synced": True, "time_s": now_ms // 1000,
        "uptime_s": uptime_s, "free_heap": 40_000, "queue_depth": queue_depth,
        "oldest_unsent_age_s": oldest_unsent_age_s, "dropped": 0, "last_ack_boot": 1,
        "last_ack_seq": 0}, key)


class Morning:
    """The gateway's side of one school morning, on ``folder``'s database."""

    def __init__(self, folder: Path, config: GatewayConfig, clock: Clock) -> None:
        self.folder, self.config, self.clock = folder, config, clock
        (folder / "edfi.secret").write_text("secret\n", encoding="utf-8")
        self.conn = db.connect(config.database)
        import_roster(folder, self.conn)
        self.registry = Registry.open(self.conn, config.master_key_file, clock)
        self.key = self.registry.register(READER, "Cổng chính 1", "main").key
        self.stamp = self.booted = at("06:00") / 1000  # the reader's ticks count from 06:00
        self.reader = SimulatedReader(READER, self.key, SCHOOL, clock=lambda: self.stamp,
                                      monotonic=lambda: self.stamp)
        self.rules = AttendanceRules(config.attendance, config.timezone,
                                     config.ingest.repeat_window_s, clock, absent_hold_s=0,
                                     listeners=[Enqueuer([TARGET], clock)])
        self.on_scans = self.rules.on_scans  # a test may put a failing hook here
        self.ingest = Ingest(self.conn, self.registry.key_ring(), clock=clock,
                             on_scans=lambda conn, scans: self.on_scans(conn, scans))
        self.committed: list[list[StoredScan]] = []

    async def start(self) -> None:
        self.ingest.start()

    async def taps(self, *taps: tuple[str, str]) -> None:
        """(card hex, HH:MM) taps in one signed batch; returns once committed and acked."""
        records = []
        for hexed, hhmm in taps:
            self.stamp = at(hhmm) / 1000
            records.append(self.reader.tap(card(hexed)))
        ack = await self.ingest.batch(READER, self.reader.batch(records), "test")
        assert ack is not None

    async def morning(self) -> None:
        """On time, late, a repeat, an unknown card; heartbeat; absences; one item parked."""
        await self.taps(("0A0B0001", "06:40"), ("0A0B0004", "06:45"), ("0A0B0002", "07:10"),
                        (UNKNOWN_CARD, "07:05"), ("0A0B0001", "06:41"))
        now = self.clock()
        await self.ingest.heartbeat(READER, heartbeat(
            self.key, now, uptime_s=int(now / 1000 - self.booted)), "test")
        await self.ingest.reject(READER, b"\x00garbage", "mqtt att/v1/x/17/up/batch",
                                 "bad_topic", "a test's garbage")
        await self.ingest.run_in_transaction(
            lambda conn: self.rules.close_due_sessions(conn, self.clock()))
        self.conn.execute(
            "UPDATE outbox SET state = 'parked', parked_reason = '409 unresolved reference' "
            "WHERE item_id = (SELECT MIN(o.item_id) FROM outbox o JOIN attendance_events e "
            "ON e.event_id = o.event_id WHERE e.kind = 'absent')")

    async def close(self) -> None:
        await self.ingest.close()
        self.conn.close()


def add_users(config: GatewayConfig, now_ms: int) -> None:
    conn = db.connect(config.database)
    try:
        for name, role in USERS.items():
            add_user(conn, name, PASSWORD, role, now_ms, FAST_KDF)
    finally:
        conn.close()


def hidden(html: str, name: str) -> str:
    """The value of the first hidden input ``name`` in a page."""
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} in the page"
    return found.group(1)
