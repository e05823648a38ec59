"""``make run``: a whole school morning on this machine, every part real, all on loopback.

What starts, in a temporary directory (removed at the end unless ``--keep``):

- Mosquitto on a free port, with per-reader accounts and ACLs written from the gateway's reader
  registry (``gateway.broker_config``), as ``attendance-gateway readers add`` leaves them;
- the local peers of ``sim/peers/``: an Ed-Fi ODS/API-like upstream, Zalo ZNS for the parents and
  a signed-webhook receiver for the school's staff (unknown cards);
- a generated school (``sim/school.py``: 12 classes, students with Vietnamese names, guardians
  with phone numbers and consent, card numbers), written as the school office's CSV sheet and
  imported with ``attendance-gateway roster import --sheet`` (the CLI's own code);
- the whole gateway, ``gateway.commands.run.run``, with its SQLite database: ingest, attendance
  rules, forwarding to Ed-Fi, parent notifications, metrics and the operations dashboard, with
  one user per role (viewer, operator, admin) added as ``attendance-gateway users add`` does;
- N readers (``--readers``, at least 2) at two gates, each running the real reader firmware
  under CPython (``sim/firmware_reader.py``).

The morning is compressed ``--speed`` times on the real clock. The school's time zone is a
fixed offset chosen so that it is 06:xx there now, and the session's times in the gateway's
configuration are placed from now on: the gates open, the bell rings ``30 min / speed`` later
(a check-in after it is late), absences are decided ``60 min / speed`` after the gates open.
The script (``sim.school.plan_morning``): a bell-shaped wave of arrivals, late students, some
who never come, repeated taps (again at the same reader a few seconds later, or at the gate's
other reader), a forged batch from a device that has a reader's password but not its key, an
unknown card, and one reader losing its Wi-Fi for a while (it keeps taking taps into its flash
queue) and draining its backlog when it is back.

Output: the dashboard's URL and logins, a progress line per interval when the counts changed,
a line per incident, a table per class. ``--summary FILE``
writes the ground truth as JSON (taps per reader, the records each firmware made and which of
them the gateway stored, events per kind, what the Ed-Fi peer holds, the messages Zalo and the
staff webhook received). Ctrl-C or SIGTERM (a second one skips the waits) stops the script,
brings the offline reader back, lets every reader drain its queue and the outboxes deliver, stops
the readers, the gateway (gracefully), the peers and the broker; ``--duration S`` stops the
same way by itself. Exit status 0 when every record the readers made is stored exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import heapq
import itertools
import json
import logging
import random
import secrets
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import zoneinfo
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from gateway import cli, db
from gateway.broker_config import write_broker_files
from gateway.commands.run import run as run_gateway
from gateway.config import GatewayConfig, load_config
from gateway.dashboard.auth import ROLES, add_user
from gateway.logs import JsonFormatter
from gateway.registry import Credentials, Registry
from gateway.types import system_clock
from sim.broker import MosquittoBroker, free_port
from sim.firmware_reader import FirmwareReader, provision
from sim.hardware import Card
from sim.peers.edfi import EdFiPeer
from sim.peers.webhook import WebhookPeer
from sim.peers.zalo import ZaloPeer
from sim.reader import SimulatedReader
from sim.school import (
    ABSENT_AT_S,
    END_S,
    LATE_AFTER_S,
    Arrival,
    Morning,
    School,
    generate_school,
    plan_morning,
    unknown_card,
)

SCHOOL = "thcs-hoa-sen"  # the MQTT topic segment
GATES = ("Trần Phú", "Lê Lợi")  # named after the streets they open onto; 0 is the main gate
FIRST_READER = 101
EDFI_SCHOOL_ID = 620101001
EDFI_TERM = "Học kỳ I"
ZALO_TEMPLATES = {"check_in": "231133", "late": "231134", "absent": "231135",
                  "check_out": "231136"}
LEAD_S = 3.0  # from writing the configuration to the gates opening: the start-up's time
REPEAT_SAME_S = 4.0  # real seconds: past the firmware's 2 s debounce, inside the repeat window
REPEAT_OTHER_S = 1.0
# Incidents, in school seconds after the gates open.
FORGED_AT_S = 4 * 60
OFFLINE_AT_S = 8 * 60
UNKNOWN_AT_S = 15 * 60
ONLINE_AT_S = 22 * 60
DRAIN_WAIT_S = 15.0  # at the end: the readers' queues, then the outboxes
log = logging.getLogger("sim.demo")


@dataclass(frozen=True)
class Options:
    readers: int = 4
    speed: float = 20.0
    duration: float = 0.0
    class_size: int = 30
    seed: int = 2025
    summary: Path | None = None
    keep: bool = False


def morning_zone(now_s: float) -> zoneinfo.ZoneInfo:
    """A fixed-offset zone in which it is 06:xx at ``now_s``: morning at the school."""
    offset = (6 - time.gmtime(now_s).tm_hour) % 24
    if offset > 14:
        offset -= 24
    # POSIX sign: Etc/GMT-7 is seven hours ahead of UTC
    return zoneinfo.ZoneInfo("Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}")


@dataclass(frozen=True)
class Timeline:
    """School seconds (after the gates open) on the real clock. The bell falls on a whole
    second, so the configuration's ``late_after`` is exactly the script's."""

    start: int  # Unix seconds when the gates open
    scale: float  # real seconds per school second
    zone: zoneinfo.ZoneInfo

    @classmethod
    def make(cls, start: int, speed: float, zone: zoneinfo.ZoneInfo) -> Timeline:
        return cls(start, max(1, round(LATE_AFTER_S / speed)) / LATE_AFTER_S, zone)

    @property
    def speed(self) -> float:
        return 1 / self.scale

    def real(self, school_s: float) -> float:
        return self.start + school_s * self.scale

    def local(self, school_s: float) -> str:
        """The school's time of day at ``school_s``, to the second (as the configuration has
        it)."""
        at = self.start + round(school_s * self.scale)
        return dt.datetime.fromtimestamp(at, self.zone).strftime("%H:%M:%S")

    def utc_offset(self) -> str:
        offset = dt.datetime.now(self.zone).utcoffset() or dt.timedelta()
        return f"UTC{int(offset.total_seconds() // 3600):+d}"


def clock(unix_s: float, zone: zoneinfo.ZoneInfo) -> str:
    return dt.datetime.fromtimestamp(unix_s, zone).strftime("%H:%M:%S")


# --- the gateway's configuration -------------------------------------------------------------

@dataclass(frozen=True)
class Peers:
    edfi: EdFiPeer
    zalo: ZaloPeer
    staff: WebhookPeer


def _secret_file(path: Path, text: str) -> str:
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path.name


def write_config(workdir: Path, timeline: Timeline, broker_port: int, metrics_port: int,
                 dashboard_port: int, peers: Peers, mqtt_password: str,
                 school_year: int) -> Path:
    """``gateway.toml`` for the demo school (every key: gateway/config.py)."""
    today = dt.datetime.fromtimestamp(timeline.start, timeline.zone).date()
    yesterday = today - dt.timedelta(days=1)  # a holiday: no absences for a day not played
    zalo_tables = "".join(
        f'[notify.zalo.{kind}]\ntemplate_id = "{template}"\n'
        f'data = {{ student_name = "{{student}}", class_name = "{{class}}", time = "{{time}}", '
        f'date = "{{date}}" }}\n' for kind, template in ZALO_TEMPLATES.items())
    text = f"""\
# The demo school's gateway, written by sim/demo.py.
[gateway]
school = "{SCHOOL}"
database = "gateway.db"
master_key_file = "master.key"
timezone = "{timeline.zone.key}"

[mqtt]
port = {broker_port}
username = "gateway"
password_file = "{_secret_file(workdir / 'mqtt.password', mqtt_password)}"
keepalive_s = 10

[attendance]
school_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
holidays = ["{yesterday.isoformat()}"]

[[attendance.session]]
name = "morning"
start = "{timeline.local(0)}"
late_after = "{timeline.local(LATE_AFTER_S)}"
absent_at = "{timeline.local(ABSENT_AT_S)}"
end = "{timeline.local(END_S)}"
min_stay_min = 30

[metrics]
listen = "127.0.0.1:{metrics_port}"

[dashboard]
listen = "127.0.0.1:{dashboard_port}"

[outbox]
poll_s = 0.5
retry_initial_s = 2

[[forward]]
name = "so-gd"
type = "edfi"
base_url = "{peers.edfi.base_url}"
client_id = "{peers.edfi.client_id}"
client_secret_file = "{_secret_file(workdir / 'edfi.secret', peers.edfi.client_secret)}"
school_id = {EDFI_SCHOOL_ID}
school_year = {school_year}
session_names = "{EDFI_TERM}"

[notify]
guardian_channel = "zalo"
kinds = ["check_in", "check_out", "late", "absent", "unknown_card"]
daily_cap = 8
max_delay_min = 120
[notify.quiet_hours]
start = "21:00"
end = "06:00"
[notify.staff]
channel = "ops"
{zalo_tables}
[[notify.channel]]
name = "zalo"
type = "zalo"
api_url = "{peers.zalo.api_url}"
token_url = "{peers.zalo.token_url}"
app_id = "{peers.zalo.app_id}"
secret_key_file = "{_secret_file(workdir / 'zalo.key', peers.zalo.secret_key)}"
refresh_token_file = "{_secret_file(workdir / 'zalo.refresh', peers.zalo.refresh_token)}"

[[notify.channel]]
name = "ops"
type = "webhook"
url = "{peers.staff.url}"
secret_file = "{_secret_file(workdir / 'ops-hook.key', peers.staff.secrets[0])}"
"""
    path = workdir / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


@dataclass(frozen=True)
class Login:
    username: str
    role: str
    password: str


def dashboard_logins() -> list[Login]:
    """One user per role, with a fresh password each run."""
    return [Login(role, role, secrets.token_urlsafe(12)) for role in ROLES]


def add_dashboard_users(database: Path, logins: list[Login]) -> None:
    """As ``attendance-gateway users add`` does (gateway/dashboard/auth.py)."""
    conn = db.connect(database)
    try:
        for login in logins:
            add_user(conn, login.username, login.password, login.role, system_clock())
    finally:
        conn.close()


# --- the readers and the script --------------------------------------------------------------

@dataclass
class GateReader:
    reader: FirmwareReader
    reader_id: int
    gate: int
    taps: int = 0
    taps_offline: int = 0

    def tap(self, card: Card) -> None:
        self.reader.tap(card)
        self.taps += 1
        if not self.link_up:
            self.taps_offline += 1

    @property
    def link_up(self) -> bool:
        hardware = self.reader.hardware
        return hardware is None or hardware.network is None or hardware.network.up

    def set_link(self, up: bool) -> None:
        """Wi-Fi lost or back: the firmware's link follows the interface (firmware/mqtt_link.py)."""
        hardware = self.reader.hardware
        assert hardware is not None and hardware.network is not None
        hardware.network.up = up


@dataclass
class Offline:
    """The reader that loses its link, and what became of its backlog."""

    reader: GateReader
    cut_at: float | None = None
    back_at: float | None = None
    queued_at_return: int = 0
    peak_queue: int = 0
    drained_at: float | None = None
    seen_offline_by_gateway: bool = False


Action = Callable[[], Awaitable[None]]


class Script:
    """Plays the morning: each action at its real time, in order."""

    def __init__(self, timeline: Timeline, morning: Morning, readers: list[GateReader],
                 stranger: Card, forge: Action, say: Callable[[str], None], seed: int) -> None:
        self.timeline = timeline
        self.readers = readers
        self.stranger = stranger
        self.say = say
        self.rng = random.Random(seed + 4)
        self.offline = Offline(readers[-1])
        self.repeats: Counter[str] = Counter()
        self.unknown_taps = 0
        self._queue: list[tuple[float, int, Action]] = []
        self._order = itertools.count()
        for a in morning.arrivals:
            self._at(timeline.real(a.at_s), self._arrival_action(a))
        self._at(timeline.real(FORGED_AT_S), forge)
        self._at(timeline.real(OFFLINE_AT_S), self._cut)
        self._at(timeline.real(UNKNOWN_AT_S), self._unknown)
        self._at(timeline.real(ONLINE_AT_S), self._restore)

    def _at(self, when: float, action: Action) -> None:
        heapq.heappush(self._queue, (when, next(self._order), action))

    def at_gate(self, gate: int) -> list[GateReader]:
        return [r for r in self.readers if r.gate == gate]

    def _arrival_action(self, a: Arrival) -> Action:
        async def arrive() -> None:
            here = self.at_gate(a.gate)
            reader = self.rng.choice(here)
            reader.tap(a.student.card)
            if a.repeat is None:
                return
            others = [r for r in here if r is not reader]
            again, delay = (self.rng.choice(others), REPEAT_OTHER_S) \
                if a.repeat == "other_reader" and others else (reader, REPEAT_SAME_S)

            async def repeat() -> None:
                again.tap(a.student.card)
                self.repeats["other_reader" if again is not reader else "same_reader"] += 1
            self._at(time.time() + delay, repeat)
        return arrive

    async def _cut(self) -> None:
        r = self.offline.reader
        r.set_link(False)
        self.offline.cut_at = time.time()
        self.say(f"✂  đầu đọc {r.reader_id} (cổng {GATES[r.gate]}) mất Wi-Fi: vẫn nhận thẻ, "
                 f"lưu vào hàng đợi flash / reader {r.reader_id} loses its Wi-Fi: it keeps "
                 f"taking taps into its flash queue")

    async def _restore(self) -> None:
        o = self.offline
        if o.cut_at is None or o.back_at is not None:
            return
        o.reader.set_link(True)
        o.back_at = time.time()
        o.queued_at_return = o.reader.reader.queue_depth
        self.say(f"↻  đầu đọc {o.reader.reader_id} có Wi-Fi lại, {o.queued_at_return} bản ghi "
                 f"chờ gửi / reader {o.reader.reader_id} is back online with "
                 f"{o.queued_at_return} queued records")

    async def _unknown(self) -> None:
        self.at_gate(0)[0].tap(self.stranger)
        self.unknown_taps += 1

    async def play(self, stop: asyncio.Event) -> None:
        while self._queue and not stop.is_set():
            when, _, action = self._queue[0]
            delay = when - time.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            heapq.heappop(self._queue)
            await action()

    async def bring_back(self) -> None:
        """The end of the demo: the offline reader gets its link back, whatever the script."""
        await self._restore()


async def send_forged_batch(port: int, reader_id: int, password: str) -> None:
    """A device that has a reader's MQTT password (the broker lets it in) but not its key."""
    forger = SimulatedReader(reader_id, secrets.token_bytes(32), SCHOOL, boot=99)
    async with aiomqtt.Client("127.0.0.1", port, identifier="forger", username=str(reader_id),
                              password=password) as client:
        await client.publish(forger.batch_topic,
                             forger.batch([forger.tap((2, bytes.fromhex("04a1b2c3")))]), qos=1)


# --- what the gateway has done: read from its database ---------------------------------------

@dataclass
class Snapshot:
    scans: int
    events: Counter[str]
    late: list[tuple[str, int, str]]  # (student_id, at_ms, gate) of live late events
    present: set[str]
    absent: set[str]
    unknown: list[tuple[str, int, str]]  # (card, at_ms, gate)
    quarantined: int
    pending: int  # outbox and parent messages not yet delivered
    messages: dict[str, Counter[str]]  # channel -> state -> count
    reader_states: dict[int, str]


def snapshot(conn: sqlite3.Connection) -> Snapshot:
    events: Counter[str] = Counter()
    late, unknown = [], []
    present, absent = set(), set()
    for kind, student, at_ms, gate, card in conn.execute(
            "SELECT kind, student_id, at_ms, gate, card FROM attendance_events "
            "WHERE voided_ms IS NULL ORDER BY at_ms"):
        events[kind] += 1
        if kind == "check_in":
            present.add(student)
        elif kind == "absent":
            absent.add(student)
        elif kind == "late":
            late.append((student, at_ms, gate))
        elif kind == "unknown_card":
            unknown.append((card, at_ms, gate))
    messages: dict[str, Counter[str]] = {}
    for channel, state, n in conn.execute(
            "SELECT channel, state, COUNT(*) FROM notify_messages GROUP BY channel, state"):
        messages.setdefault(channel, Counter())[state] = n
    pending = conn.execute("SELECT (SELECT COUNT(*) FROM outbox WHERE state = 'pending') + "
                           "(SELECT COUNT(*) FROM notify_messages WHERE state = 'pending')"
                           ).fetchone()[0]
    return Snapshot(
        scans=conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0], events=events,
        late=late, present=present, absent=absent, unknown=unknown,
        quarantined=conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0],
        pending=pending, messages=messages,
        reader_states={r: s for r, s in conn.execute(
            "SELECT reader_id, state FROM reader_status")})


def first_message(conn: sqlite3.Connection, kind: str) -> str | None:
    """The text of the first delivered parent message of ``kind`` (Vietnamese)."""
    row = conn.execute("SELECT text FROM notify_messages WHERE kind = ? AND state = 'delivered' "
                       "AND channel = 'zalo' ORDER BY item_id LIMIT 1", (kind,)).fetchone()
    return None if row is None else str(row[0])


# --- the demo --------------------------------------------------------------------------------

class Narrator:
    """Prints what happens, once each: a progress line per interval, incidents as they come."""

    def __init__(self, school: School, timeline: Timeline, script: Script,
                 peers: Peers) -> None:
        self.school = school
        self.students = {s.student_id: s for s in school.students}
        self.timeline = timeline
        self.script = script
        self.peers = peers
        self.said: set[str] = set()
        self.morning_over = asyncio.Event()
        self._last_progress = ""

    def say(self, text: str) -> None:
        print(f"{clock(time.time(), self.timeline.zone)}  {text}", flush=True)

    def once(self, key: str, text: str) -> None:
        if key not in self.said:
            self.said.add(key)
            self.say(text)

    def progress(self, snap: Snapshot) -> None:
        """The counts so far, when they changed since the last line."""
        taps = sum(r.taps for r in self.script.readers)
        line = (f"quẹt/taps {taps:4}  lưu/stored {snap.scans:4}  có mặt/present "
                f"{snap.events['check_in']:4}  muộn/late {snap.events['late']:3}  vắng/absent "
                f"{snap.events['absent']:3}  thẻ lạ/unknown {snap.events['unknown_card']}  "
                f"Ed-Fi {len(self.peers.edfi.records):4}  Zalo {len(self.peers.zalo.sent):4}")
        if line != self._last_progress:
            self._last_progress = line
            self.say(line)

    def incidents(self, snap: Snapshot, conn: sqlite3.Connection) -> None:
        zone = self.timeline.zone
        o = self.script.offline
        rid = o.reader.reader_id
        if o.cut_at is not None and o.back_at is None:
            o.peak_queue = max(o.peak_queue, o.reader.reader.queue_depth)
            if snap.reader_states.get(rid) == "offline":
                o.seen_offline_by_gateway = True
                self.once("offline", f"   cổng điểm danh thấy đầu đọc {rid} ngoại tuyến (di chúc "
                                     f"MQTT) / the gateway shows reader {rid} offline (its MQTT "
                                     f"last will)")
        if o.back_at is not None and o.drained_at is None and o.reader.reader.online \
                and o.reader.reader.queue_depth == 0:
            o.drained_at = time.time()
            self.once("drained", f"✔  đầu đọc {rid} đã gửi hết {o.queued_at_return} bản ghi "
                                 f"trong {o.drained_at - o.back_at:.1f} s, giờ quẹt giữ nguyên "
                                 f"/ reader {rid} drained its backlog, tap times kept")
        if snap.quarantined:
            self.once("forged", "⛔ một lô bản ghi giả mạo (đúng mật khẩu MQTT, sai khoá) bị cách "
                                "ly / a forged batch (right MQTT password, wrong key) was "
                                "quarantined")
        for card, at_ms, gate in snap.unknown:
            self.once(f"unknown {card}", f"?  thẻ lạ / unknown card {card} lúc/at "
                                         f"{clock(at_ms / 1000, zone)}, cổng/gate {gate}: báo "
                                         f"nhân viên / staff alerted (webhook)")
        for student_id, at_ms, gate in snap.late[:3]:
            s = self.students[student_id]
            self.once(f"late {student_id}", f"⏰ muộn / late: {s.full_name} ({s.class_name}) "
                                            f"lúc/at {clock(at_ms / 1000, zone)}, cổng/gate "
                                            f"{gate}")
        for kind, label in (("late", "muộn / late"), ("absent", "vắng / absent")):
            text = first_message(conn, kind)
            if text is not None:
                self.once(f"message {kind}", f"✉  tin Zalo mẫu ({label}) / a sample Zalo "
                                             f"message: «{text}»")
        if snap.events["absent"]:
            self.once("absent", f"∅  đã chốt vắng / absences recorded: {snap.events['absent']} "
                                f"học sinh / students")
        if snap.events["absent"] and time.time() > self.timeline.real(ABSENT_AT_S) \
                and not self.morning_over.is_set():
            self.morning_over.set()
            self.classes(snap)
            self.say("Buổi sáng đã xong; cổng vẫn chạy, Ctrl-C để dừng / the morning is over; "
                     "the gateway keeps running, Ctrl-C to stop")

    def classes(self, snap: Snapshot) -> None:
        late = {student for student, _, _ in snap.late}
        print(f"   {'lớp/class':10}{'sĩ số/size':>11}{'có mặt/present':>16}{'muộn/late':>11}"
              f"{'vắng/absent':>13}", flush=True)
        for class_name, students in self.school.by_class().items():
            ids = {s.student_id for s in students}
            print(f"   {class_name:10}{len(ids):>11}{len(ids & snap.present):>16}"
                  f"{len(ids & late):>11}{len(ids & snap.absent):>13}", flush=True)

    async def watch(self, conn: sqlite3.Connection, stop: asyncio.Event) -> None:
        every = max(2.0, 5 * 60 * self.timeline.scale)
        next_progress = self.timeline.real(0) + every
        while not stop.is_set():
            snap = snapshot(conn)
            self.incidents(snap, conn)
            if time.time() >= next_progress:
                self.progress(snap)
                next_progress += every
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)


def _header(school: School, opts: Options, timeline: Timeline, broker_port: int,
            metrics_port: int, dashboard_port: int, logins: list[Login], peers: Peers,
            workdir: Path) -> None:
    guardians = [g for s in school.students for g in s.guardians]
    consented = sum(g.consent for g in guardians)
    print(f"""
{school.name} (mô phỏng / simulated), hạt giống / seed {opts.seed}
  {len(school.classes)} lớp / classes, {len(school.students)} học sinh / students, \
{len(guardians)} phụ huynh / guardians ({consented} đồng ý nhận tin / consented, \
{len(guardians) - consented} không / did not), {opts.readers} đầu đọc / readers at 2 cổng / gates \
({', '.join(GATES)})
  Mosquitto 127.0.0.1:{broker_port} · Ed-Fi {peers.edfi.base_url} · Zalo ZNS \
http://127.0.0.1:{peers.zalo.port} · webhook nhân viên / staff {peers.staff.url}
  Số liệu / metrics: http://127.0.0.1:{metrics_port}/metrics
  Bảng điều khiển / dashboard: http://127.0.0.1:{dashboard_port}/  đăng nhập / logins: \
{', '.join(f'{x.username} / {x.password}' for x in logins)}
  Thư mục / workdir: {workdir}
  Giờ trường / school time ({timeline.utc_offset()}, nhanh gấp / faster x{timeline.speed:g}): \
mở cổng / gates open {timeline.local(0)} · muộn sau / late after \
{timeline.local(LATE_AFTER_S)} · chốt vắng / absent at {timeline.local(ABSENT_AT_S)}
  Ctrl-C để dừng / to stop
""", flush=True)


def _setup_logging(workdir: Path) -> None:
    """The gateway's JSON log to ``gateway.log`` in the workdir; errors also on stderr."""
    to_file = logging.FileHandler(workdir / "gateway.log", encoding="utf-8")
    to_file.setFormatter(JsonFormatter())
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setFormatter(JsonFormatter())
    to_stderr.setLevel(logging.ERROR)
    root = logging.getLogger()
    root.handlers[:] = [to_file, to_stderr]
    root.setLevel(logging.INFO)


class Stopper:
    """SIGINT/SIGTERM: the first stops the demo, a second skips the waits for draining."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()
        self.signalled = False

    def __call__(self) -> None:
        if self.stop.is_set():
            self.hurry.set()
        self.signalled = True
        self.stop.set()

    async def until(self, what: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not what():
            if self.hurry.is_set() or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True


async def demo(opts: Options, workdir: Path) -> int:
    stopper = Stopper()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopper)
    school = generate_school(opts.seed, opts.class_size)
    morning = plan_morning(school)
    sheet = school.write_sheet(workdir / "hoc-sinh.csv")
    conn = db.connect(workdir / "gateway.db")
    try:
        registry = Registry.open(conn, workdir / "master.key")
        creds = [registry.register(FIRST_READER + i, f"Cổng {GATES[i % 2]} - đầu đọc {i // 2 + 1}",
                                   GATES[i % 2]) for i in range(opts.readers)]
        mqtt_password = secrets.token_urlsafe(24)
        files = write_broker_files(registry, school=SCHOOL, gateway_username="gateway",
                                   gateway_password=mqtt_password,
                                   password_file=workdir / "mosquitto.passwd",
                                   acl_file=workdir / "mosquitto.acl")
    finally:
        conn.close()
    now = time.time()
    zone = morning_zone(now)
    today = dt.datetime.fromtimestamp(now, zone).date()
    school_year = today.year + 1 if today.month >= 8 else today.year
    async with contextlib.AsyncExitStack() as stack:
        broker = stack.enter_context(MosquittoBroker(
            workdir / "broker", allow_anonymous=False, password_file=files.password_file,
            acl_file=files.acl_file))
        peers = Peers(
            await stack.enter_async_context(EdFiPeer(
                school_id=EDFI_SCHOOL_ID, sessions={(school_year, EDFI_TERM)},
                students={s.student_id for s in school.students}, token_ttl_s=1800)),
            await stack.enter_async_context(ZaloPeer(templates=set(ZALO_TEMPLATES.values()))),
            await stack.enter_async_context(WebhookPeer(
                secrets=["whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()])))
        metrics_port, dashboard_port = free_port(), free_port()
        logins = dashboard_logins()
        timeline = Timeline.make(int(time.time() + LEAD_S), opts.speed, zone)
        config_path = write_config(workdir, timeline, broker.port, metrics_port,
                                   dashboard_port, peers, mqtt_password, school_year)
        _header(school, opts, timeline, broker.port, metrics_port, dashboard_port, logins,
                peers, workdir)
        imported = cli.main(["roster", "import", "--config", str(config_path),
                             "--sheet", str(sheet)])
        if imported != 0:
            print(f"Nhập danh sách thất bại / roster import failed ({imported})", flush=True)
            return 1
        config = load_config(config_path)
        add_dashboard_users(config.database, logins)
        _setup_logging(workdir)
        status = await _morning(opts, workdir, school, morning, config, timeline, creds,
                                broker, peers, stopper)
    return status


async def _morning(opts: Options, workdir: Path, school: School, morning: Morning,
                   config: GatewayConfig, timeline: Timeline, creds: list[Credentials],
                   broker: MosquittoBroker, peers: Peers, stopper: Stopper) -> int:
    gateway_stop = asyncio.Event()
    gateway = asyncio.create_task(run_gateway(config, gateway_stop))
    fleet = []
    for i, c in enumerate(creds):
        root = workdir / "readers" / str(c.reader_id)
        provision(root, c.reader_id, c.key, SCHOOL, host="127.0.0.1", port=broker.port,
                  password=c.mqtt_password, gate=GATES[i % 2], heartbeat_s=10)
        # sync=False: the readers share this machine's disk where each real one has its flash
        fleet.append(GateReader(FirmwareReader(root, sync=False), c.reader_id, i % 2))
    for r in fleet:
        r.reader.start()
    read = db.connect(config.database, migrate=False)
    script = Script(timeline, morning, fleet, unknown_card(school),
                    lambda: send_forged_batch(broker.port, creds[0].reader_id,
                                              creds[0].mqtt_password),
                    lambda text: narrator.say(text), opts.seed)
    narrator = Narrator(school, timeline, script, peers)
    tasks: list[asyncio.Task[None]] = []
    try:
        ready = await stopper.until(lambda: gateway.done() or (
            all(r.reader.online for r in fleet)
            and list(snapshot(read).reader_states.values()).count("online") == len(fleet)), 20)
        started = ready and not gateway.done()
        if not started:
            narrator.say("Cổng hoặc đầu đọc không khởi động được / the gateway or a reader did "
                         f"not start; xem / see {workdir / 'gateway.log'}")
        else:
            narrator.say(f"{len(fleet)} đầu đọc đã kết nối, mở cổng lúc {timeline.local(0)} / "
                         f"{len(fleet)} readers connected, the gates open at "
                         f"{timeline.local(0)}")
            tasks = [asyncio.create_task(script.play(stopper.stop)),
                     asyncio.create_task(narrator.watch(read, stopper.stop))]
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(stopper.stop.wait()),
                                                gateway]
            await asyncio.wait(waits, timeout=opts.duration or None,
                               return_when=asyncio.FIRST_COMPLETED)
            waits[0].cancel()
        if gateway.done():
            narrator.say("Cổng điểm danh đã dừng bất ngờ / the gateway stopped unexpectedly")
        stopper.stop.set()
        for task in tasks:
            await task
        narrator.say("Đang dừng: chờ đầu đọc gửi hết và hàng đợi gửi đi / stopping: waiting "
                     "for the readers' queues and the outboxes to drain")
        await script.bring_back()
        drained = await stopper.until(lambda: all(
            r.reader.online and r.reader.queue_depth == 0 for r in fleet), DRAIN_WAIT_S)
        if drained:
            await stopper.until(lambda: snapshot(read).pending == 0, DRAIN_WAIT_S)
        if script.offline.drained_at is None and script.offline.back_at is not None \
                and script.offline.reader.reader.queue_depth == 0:
            script.offline.drained_at = time.time()
    finally:
        for r in fleet:
            await r.reader.stop()
        gateway_stop.set()
        status = await gateway
        read.close()
    summary = _summary(opts, workdir, school, morning, config, script, peers, stopper, status)
    _final(narrator, summary, config)
    if opts.summary is not None:
        opts.summary.write_text(json.dumps(summary, ensure_ascii=False, indent=2),
                                encoding="utf-8")
    return 0 if started and summary["nothing_lost"] else 1


def _summary(opts: Options, workdir: Path, school: School, morning: Morning,
             config: GatewayConfig, script: Script, peers: Peers, stopper: Stopper,
             gateway_status: int) -> dict[str, Any]:
    """The ground truth, with the gateway stopped."""
    conn = db.connect(config.database, migrate=False)
    try:
        stored: dict[int, set[tuple[int, int]]] = {}
        for reader_id, boot, seq in conn.execute("SELECT reader_id, boot, seq FROM scans"):
            stored.setdefault(reader_id, set()).add((boot, seq))
        snap = snapshot(conn)
        outbox = dict(conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"))
    finally:
        conn.close()
    readers = {}
    for r in script.readers:
        made = r.reader.made()
        have = stored.get(r.reader_id, set())
        readers[str(r.reader_id)] = {
            "gate": GATES[r.gate], "taps": r.taps, "records_made": len(made),
            "stored": len(have), "missing": len(set(made) - have),
            "unexpected": len(have - set(made)), "doubled": len(made) - len(set(made)),
            "queue_left": r.reader.queue_depth,
            "crashed": None if r.reader.crashed is None else repr(r.reader.crashed)}
    o = script.offline
    categories = Counter(str(rec["attendanceEventCategoryDescriptor"]).partition("#")[2]
                         for rec in peers.edfi.records.values())
    nothing_lost = gateway_status == 0 and all(
        v["missing"] == 0 and v["unexpected"] == 0 and v["queue_left"] == 0
        and v["crashed"] is None for v in readers.values())
    late_planned = {a.student.student_id for a in morning.late}
    return {
        "seed": opts.seed, "class_size": opts.class_size, "speed": script.timeline.speed,
        "readers_count": opts.readers, "interrupted": stopper.signalled,
        "workdir": str(workdir), "kept": opts.keep,
        "dashboard": f"http://{config.dashboard.listen}/",
        "school": {"classes": len(school.classes), "students": len(school.students),
                   "late_planned": len(late_planned),
                   "absent_planned": len(morning.absent)},
        "readers": readers,
        "taps": sum(r.taps for r in script.readers),
        "records_made": sum(v["records_made"] for v in readers.values()),
        "scans_stored": snap.scans,
        "nothing_lost": nothing_lost,
        "repeats": dict(script.repeats),
        "unknown_card_taps": script.unknown_taps,
        "quarantined": snap.quarantined,
        "offline": {"reader": o.reader.reader_id, "taps_while_offline": o.reader.taps_offline,
                    "queued_at_return": o.queued_at_return, "peak_queue": o.peak_queue,
                    "seen_offline_by_gateway": o.seen_offline_by_gateway,
                    "cut": o.cut_at is not None, "back": o.back_at is not None,
                    "drained": o.drained_at is not None,
                    "drain_s": None if o.drained_at is None or o.back_at is None
                    else round(o.drained_at - o.back_at, 3)},
        "events": dict(snap.events),
        "arrived_students": sorted(snap.present),
        "late_students": sorted(s for s, _, _ in snap.late),
        "late_unplanned": sorted({s for s, _, _ in snap.late} - late_planned),
        "outbox": outbox,
        "messages": {channel: dict(states) for channel, states in snap.messages.items()},
        "edfi": {"records": len(peers.edfi.records), "by_category": dict(categories),
                 "expected": snap.events["check_in"] + snap.events["late"]
                 + snap.events["absent"]},
        "zalo": {"sent": len(peers.zalo.sent), "duplicates": peers.zalo.duplicates,
                 "phones": sorted(str(m["phone"]) for m in peers.zalo.sent.values())},
        "staff_webhook": {"received": len(peers.staff.stored),
                          "kinds": sorted(str(m.get("kind")) for m in
                                          peers.staff.stored.values())},
    }


def _final(narrator: Narrator, summary: dict[str, Any], config: GatewayConfig) -> None:
    conn = db.connect(config.database, migrate=False)
    try:
        narrator.classes(snapshot(conn))
    finally:
        conn.close()
    events, off, repeats = summary["events"], summary["offline"], summary["repeats"]
    lines = [
        "",
        "Tóm tắt / summary",
        f"  quẹt thẻ / taps {summary['taps']} → bản ghi đầu đọc / reader records "
        f"{summary['records_made']} → đã lưu / stored {summary['scans_stored']}",
        f"  quẹt lặp lại / repeated taps: {repeats.get('same_reader', 0)} cùng đầu đọc / same "
        f"reader, {repeats.get('other_reader', 0)} đầu đọc khác cùng cổng / other reader of the "
        f"gate; thẻ lạ / unknown card: {summary['unknown_card_taps']}",
        f"  sự kiện / events: đến / check-in {events.get('check_in', 0)}, muộn / late "
        f"{events.get('late', 0)}, vắng / absent {events.get('absent', 0)}, thẻ lạ / unknown "
        f"card {events.get('unknown_card', 0)}",
        f"  đầu đọc mất mạng / offline reader {off['reader']}: {off['taps_while_offline']} lượt "
        f"quẹt khi mất mạng / taps while offline, "
        + ("đã gửi hết / drained" if off["drained"] else "CHƯA gửi hết / NOT drained"),
        f"  Ed-Fi: {summary['edfi']['records']} bản ghi / records (sự kiện cần gửi / events to "
        f"send: {summary['edfi']['expected']}) · Zalo: {summary['zalo']['sent']} tin / messages "
        f"· nhân viên / staff: {summary['staff_webhook']['received']} · cách ly / quarantined: "
        f"{summary['quarantined']}",
        "  ✔ không mất, không trùng bản ghi nào / nothing lost, nothing doubled"
        if summary["nothing_lost"] else "  ✘ có bản ghi bị mất / records were lost",
    ]
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.demo",
        description="Chạy thử toàn hệ thống trên máy này: một buổi sáng ở cổng trường / run "
                    "the whole system on this machine: one morning at the school gate")
    parser.add_argument("--readers", type=int, default=4,
                        help="số đầu đọc ở 2 cổng / readers at the two gates (>= 2, default 4)")
    parser.add_argument("--speed", type=float, default=20,
                        help="buổi sáng nhanh gấp / how many times faster than real time "
                             "(default 20)")
    parser.add_argument("--duration", type=float, default=0,
                        help="dừng sau N giây, 0 = đến khi Ctrl-C / stop after N s, 0 = Ctrl-C")
    parser.add_argument("--class-size", type=int, default=30,
                        help="học sinh mỗi lớp / students per class (default 30)")
    parser.add_argument("--seed", type=int, default=2025,
                        help="hạt giống của trường mô phỏng / the generated school's seed")
    parser.add_argument("--summary", type=Path, metavar="FILE",
                        help="ghi tóm tắt JSON / write the JSON summary to FILE")
    parser.add_argument("--keep", action="store_true",
                        help="giữ thư mục làm việc / keep the working directory")
    args = parser.parse_args(argv)
    if args.readers < 2 or not 1 <= args.speed <= 1800 or args.class_size < 1 \
            or args.duration < 0:
        parser.error("--readers must be >= 2, --speed 1..1800, --class-size >= 1, "
                     "--duration >= 0")
    opts = Options(args.readers, args.speed, args.duration, args.class_size, args.seed,
                   args.summary, args.keep)
    workdir = Path(tempfile.mkdtemp(prefix="attendance-demo-"))
    try:
        return asyncio.run(demo(opts, workdir))
    finally:
        if opts.keep:
            print(f"Thư mục làm việc được giữ / workdir kept: {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
