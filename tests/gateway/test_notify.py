"""Parent notifications (gateway/notify.py): the rules, templates in both languages, consent and
opt-outs, quiet hours, the daily cap, the audit's reasons, delivery through the shared outbox
loop with retries, parking and a kill -9, purge, no personal data in logs, and a morning at a
simulated school.

The channel here is a test channel that records messages and dedups by ``message_id`` like a
real provider does with its tracking id; the channels' HTTP behaviour is tested with theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.machinery
import logging
import random
import sys
import time
import types
import zoneinfo
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway import db, notify
from gateway.channels import ChannelConfig, Message
from gateway.cli import main as cli_main
from gateway.config import (
    AttendanceConfig,
    ConfigError,
    NotifyConfig,
    OutboxConfig,
    QuietHours,
    Session,
    StaffRecipient,
    ZaloTemplate,
    load_config,
)
from gateway.forwarders import DeliveryResult, TargetDown
from gateway.ingest import Ingest
from gateway.notify import Notifier, make_store, message_id
from gateway.outbox import OutboxPolicy, OutboxService, TargetDelivery, policy_from_config
from gateway.rules import AttendanceRules, event_key, to_ms
from gateway.types import StaticKeyRing, StoredScan
from tests.log_text import logged_text

TZ = zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh")
MONDAY = dt.date(2026, 9, 7)
MORNING = Session("morning", dt.time(7, 0), dt.time(7, 15), dt.time(8, 30), dt.time(11, 30), 30)
AFTERNOON = Session("afternoon", dt.time(13, 0), dt.time(13, 15), dt.time(14, 0),
                    dt.time(17, 0), 30)
ATTENDANCE = AttendanceConfig(sessions=(MORNING, AFTERNOON))
POLICY = OutboxPolicy(poll_s=0.01, retry_initial_s=5.0, retry_cap_s=40.0, jitter=0.0,
                      breaker_failures=3, breaker_cooldown_s=30.0, stop_timeout_s=0.2,
                      status_every_s=0.05, db_error_hold_s=0.05)
STAFF_PHONE = "84900000001"
UNKNOWN = "iso14443a:DEADBEEF"
# (student, name, class, guardians: (name, phone, consent, locale))
STUDENTS = {
    "S1": ("Nguyễn Văn An", "6A", [("Nguyễn Thị Hoa", "84912345678", True, "vi"),
                                   ("Nguyễn Văn Hùng", "84912345679", True, "en")]),
    "S2": ("Trần Thị Bình", "6A", [("Trần Văn Đức", "84987654321", False, "vi")]),
    "S3": ("Lê Minh Châu", "6B", [("Lê Thị Mai", "84911112222", True, "vi")]),
    "S4": ("Phạm Đức Dũng", "6B", []),
}


def at(hhmm: str, day: dt.date = MONDAY) -> int:
    return to_ms(dt.datetime.combine(day, dt.time.fromisoformat(hhmm), tzinfo=TZ))


class FakeClock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


def card_of(student: str) -> str:
    return f"{0x04000000 + int(student[1:]):08X}"


class School:
    """A gateway database with readers, a roster with guardians, the rules and the notifier."""

    def __init__(self, path: Path, clock: FakeClock, config: NotifyConfig,
                 students: dict[str, tuple[str, str, list[tuple[str, str, bool, str]]]]
                 = STUDENTS) -> None:
        self.path, self.clock = path, clock
        self.conn = c = db.connect(path)
        for reader_id, gate in ((1, "A"), (2, "B")):
            c.execute("INSERT INTO readers (reader_id, name, gate, status, created_ms) "
                      "VALUES (?, ?, ?, 'active', 0)", (reader_id, f"Cổng {gate}", gate))
            c.execute("INSERT INTO reader_keys (key_id, reader_id, sealed_key, state, "
                      "created_ms) VALUES (?, ?, x'00', 'active', 0)", (reader_id, reader_id))
        classes = sorted({cls for _n, cls, _g in students.values()})
        c.executemany("INSERT INTO classes VALUES (?, ?, '6', 'test')",
                      [(cls, f"Lớp {cls}") for cls in classes])
        c.execute("BEGIN")
        for sid, (name, cls, guardians) in students.items():
            c.execute("INSERT INTO students (student_id, full_name, class_id, active, source, "
                      "updated_ms) VALUES (?, ?, ?, 1, 'test', 0)", (sid, name, cls))
            c.execute("INSERT INTO card_numbers VALUES (?, ?, 'test', 0)", (card_of(sid), sid))
            for gname, phone, consent, locale in guardians:
                c.execute("INSERT INTO guardians (student_id, name, phone, relation, consent, "
                          "consent_ms, consent_source, locale) VALUES (?, ?, ?, NULL, ?, ?, "
                          "'paper form', ?)", (sid, gname, phone, int(consent),
                                               0 if consent else None, locale))
        c.execute("COMMIT")
        self.seq = 0
        self.notifier = Notifier(config, ATTENDANCE, TZ, school="thcs-a", clock=clock)
        self.rules = AttendanceRules(ATTENDANCE, TZ, 120, clock, absent_hold_s=0,
                                     listeners=[self.notifier])

    def scan(self, student: str, hhmm: str, reader: int = 1) -> StoredScan:
        self.seq += 1
        card = UNKNOWN if student == "?" else f"iso14443a:{card_of(student)}"
        when = at(hhmm)
        cursor = self.conn.execute(
            "INSERT INTO scans (reader_id, boot, seq, card, reader_time_ms, clock_synced, "
            "ticks_ms, received_ms, at_ms, time_source, key_id, raw) "
            "VALUES (?, 1, ?, ?, ?, 1, 0, ?, ?, 'reader', ?, x'00')",
            (reader, self.seq, card, when, when, when, reader))
        return StoredScan(int(cursor.lastrowid or 0), reader, "AB"[reader - 1], card, when,
                          "reader")

    def tap(self, student: str, hhmm: str, reader: int = 1, *, now: str | None = None) -> None:
        """A tap at ``hhmm`` received at ``now`` (default: then)."""
        self.clock.now = at(now or hhmm)
        with db.atomic(self.conn):
            self.rules.on_scans(self.conn, [self.scan(student, hhmm, reader)])

    def close_sessions(self, hhmm: str) -> int:
        self.clock.now = at(hhmm)
        return self.rules.close_due_sessions(self.conn, self.clock.now)

    def messages(self) -> list[tuple[str, str | None, int | None, str, str]]:
        """(kind, student, guardian, state, text) of the stored messages."""
        return [(r[0], r[1], r[2], r[3], r[4]) for r in self.conn.execute(
            "SELECT kind, student_id, guardian_id, state, text FROM notify_messages "
            "ORDER BY item_id")]

    def reasons(self, student: str | None = None) -> list[tuple[str, int | None, str, str]]:
        """(kind, guardian, outcome, reason) of the audit."""
        return [(d.kind, d.guardian_id, d.outcome, d.reason)
                for d in notify.decisions(self.conn, student_id=student)]

    def guardian(self, phone: str) -> int:
        return int(self.conn.execute("SELECT guardian_id FROM guardians WHERE phone = ?",
                                     (phone,)).fetchone()[0])


def config(**changes: Any) -> NotifyConfig:
    base: dict[str, Any] = dict(
        enabled=True, guardian_channel="sms", daily_cap=8, max_delay_min=120,
        staff=StaffRecipient("sms", STAFF_PHONE, "vi"),
        zalo={"check_in": ZaloTemplate("231456", {"student_name": "{student}",
                                                  "time": "{time}", "gate": "{gate}"})})
    base.update(changes)
    return NotifyConfig(**base)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(at("06:00"))


@pytest.fixture
def school(tmp_path: Path, clock: FakeClock) -> Iterator[School]:
    s = School(tmp_path / "gateway.db", clock, config())
    yield s
    s.conn.close()


# -- the rules ---------------------------------------------------------------------------------


def test_first_check_in_once_per_consenting_guardian_in_their_language(school: School) -> None:
    for hhmm in ("07:02", "07:03", "07:10"):  # a small child taps three times
        school.tap("S1", hhmm)
    school.tap("S1", "07:05", reader=2)  # and at the other gate
    msgs = school.messages()
    assert [(m[0], m[3]) for m in msgs] == [("check_in", "pending")] * 2
    assert msgs[0][4] == ("Nguyễn Văn An (lớp 6A) đã đến trường lúc 07:02 ngày 07/09/2026, "
                          "cổng A.")
    assert msgs[1][4] == ("Nguyễn Văn An (class 6A) arrived at school at 07:02 on 2026-09-07, "
                          "gate A.")
    row = school.conn.execute("SELECT template_id, template_data, message_id FROM "
                              "notify_messages ORDER BY item_id").fetchone()
    assert row[0] == "231456" and '"student_name": "Nguyễn Văn An"' in row[1]
    key = event_key("check_in", "S1", MONDAY, "morning")
    assert row[2] == message_id(key, f"g{school.guardian('84912345678')}")


def test_check_out_only_after_the_minimum_stay(school: School) -> None:
    school.tap("S3", "07:05")
    school.tap("S3", "07:20")  # 15 min: not a check-out
    assert [m[0] for m in school.messages()] == ["check_in"]
    school.tap("S3", "11:00")
    assert [m[0] for m in school.messages()] == ["check_in", "check_out"]
    assert "đã ra về lúc 11:00" in school.messages()[1][4]


def test_late_arrival_sends_one_late_message(school: School) -> None:
    school.tap("S3", "07:25")
    assert [(m[0], m[4]) for m in school.messages()] == [
        ("late", "Lê Minh Châu (lớp 6B) đến trường muộn lúc 07:25 ngày 07/09/2026, cổng A.")]
    assert ("check_in", school.guardian("84911112222"), "skipped", "covered_by_late") in \
        school.reasons("S3")


def test_absent_at_cut_off_and_the_audit_says_why_for_everyone(school: School) -> None:
    school.tap("S3", "07:05")
    assert school.close_sessions("08:29") == 0
    assert school.close_sessions("08:31") == 3  # S1, S2, S4
    absent = [(m[1], m[4]) for m in school.messages() if m[0] == "absent"]
    assert absent == [("S1", "Nguyễn Văn An (lớp 6A) chưa đến trường ngày 07/09/2026 "
                             "(tính đến 08:30)."),
                      ("S1", "Nguyễn Văn An (class 6A) has not arrived at school on 2026-09-07 "
                             "(as of 08:30).")]
    assert school.reasons("S2") == [("absent", school.guardian("84987654321"), "skipped",
                                     "no_consent")]
    assert school.reasons("S4") == [("absent", None, "skipped", "no_guardian")]


def test_a_revision_never_sends_a_second_message(school: School) -> None:
    school.tap("S3", "07:10")
    school.tap("S3", "07:04", reader=2, now="07:12")  # a backlog: the check-in moves earlier
    assert [m[0] for m in school.messages()] == ["check_in"]
    assert [r[3] for r in school.reasons("S3")] == ["sent", "revision"]


def test_a_check_in_after_a_delivered_absent_is_the_correction(school: School) -> None:
    school.close_sessions("08:31")
    school.conn.execute("UPDATE notify_messages SET state = 'delivered' WHERE student_id = 'S3'")
    school.tap("S3", "07:05", now="10:45")  # the reader's backlog, 3 h 40 late
    kinds = [(m[0], m[3]) for m in school.messages() if m[1] == "S3"]
    assert kinds == [("absent", "delivered"), ("check_in", "pending")]
    assert [r[3] for r in school.reasons("S3")] == ["sent", "sent", "already_delivered"]
    school.tap("S1", "07:06", now="10:46")  # no absent was delivered to S1's guardians: too old
    assert {r[3] for r in school.reasons("S1") if r[0] == "check_in"} == {"too_old"}


def test_a_voided_event_cancels_its_unsent_messages(school: School) -> None:
    school.close_sessions("08:31")
    school.tap("S1", "07:05", now="08:40")  # absent voided before delivery
    states = {(m[0], m[3]) for m in school.messages() if m[1] == "S1"}
    assert states == {("absent", "cancelled"), ("check_in", "pending")}
    assert [r[3] for r in school.reasons("S1") if r[2] == "cancelled"] == ["event_voided"] * 2


def test_quiet_hours_hold_some_kinds_and_drop_the_others(tmp_path: Path,
                                                          clock: FakeClock) -> None:
    quiet = QuietHours(dt.time(7, 0), dt.time(9, 0), frozenset({"absent"}))
    s = School(tmp_path / "q.db", clock, config(quiet_hours=quiet))
    try:
        s.tap("S3", "07:05")
        s.close_sessions("08:31")
        assert [(m[0], m[1]) for m in s.messages()] == [("absent", "S1"), ("absent", "S1")]
        due = {int(r[0]) for r in s.conn.execute("SELECT next_attempt_ms FROM notify_messages")}
        assert due == {at("09:00")}
        assert s.reasons("S3") == [("check_in", s.guardian("84911112222"), "skipped",
                                    "quiet_hours")]
        assert {r[2:] for r in s.reasons("S1")} == {("held", "quiet_hours")}
    finally:
        s.conn.close()


def test_consent_opt_out_kind_off_and_daily_cap(tmp_path: Path, clock: FakeClock) -> None:
    s = School(tmp_path / "c.db", clock, config(daily_cap=2, kinds=frozenset(
        {"check_in", "check_out", "absent"})))
    try:
        hoa, hung = s.guardian("84912345678"), s.guardian("84912345679")
        assert notify.set_opt_out(s.conn, hung, "check_out", True, "phone call", 0)
        s.tap("S1", "07:05")
        s.tap("S1", "11:00")
        s.tap("S1", "13:05")  # the afternoon: third message for Hoa that day
        s.tap("S3", "13:20")  # late is off for this school
        assert s.reasons("S1") == [
            ("check_in", hoa, "queued", "sent"), ("check_in", hung, "queued", "sent"),
            ("check_out", hoa, "queued", "sent"), ("check_out", hung, "skipped", "opted_out"),
            ("check_in", hoa, "skipped", "daily_cap"), ("check_in", hung, "queued", "sent")]
        assert ("late", s.guardian("84911112222"), "skipped", "kind_off") in s.reasons("S3")
        # consent history: the paper form, then a withdrawal with its time and source
        s.clock.now = at("14:00")
        assert notify.set_consent(s.conn, hoa, False, "đơn rút đồng ý", s.clock.now)
        assert [tuple(r) for r in s.conn.execute(
            "SELECT consent, at_ms, source FROM guardian_consent_log WHERE guardian_id = ? "
            "ORDER BY log_id", (hoa,))] == [(1, 0, "paper form"), (0, at("14:00"),
                                                                   "đơn rút đồng ý")]
    finally:
        s.conn.close()


def test_an_unknown_card_goes_to_the_staff_recipient_only(school: School) -> None:
    school.tap("?", "07:30")
    ((kind, student, guardian, _state, text),) = school.messages()
    assert (kind, student, guardian) == ("unknown_card", None, None)
    assert text == ("Thẻ chưa đăng ký iso14443a:DEADBEEF được quẹt lúc 07:30 ngày 07/09/2026, "
                    "cổng A.")


def test_template_placeholders_are_checked_at_load(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    install_channel_module(monkeypatch)
    path = tmp_path / "gateway.toml"
    body = ('[gateway]\nschool = "thcs-a"\n[notify]\nguardian_channel = "sms"\n'
            '[[notify.channel]]\nname = "sms"\ntype = "notifytestchannel"\n')
    path.write_text(body + '[notify.templates.vi]\ncheck_in = "{student} lúc {phone}"\n',
                    encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "notify.templates.vi.check_in" and "{phone}" in err.value.reason
    path.write_text(body + '[notify.zalo.late]\ntemplate_id = "1"\n'
                           'data = { name = "{student.__class__}" }\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "notify.zalo.late.data.name"
    path.write_text(body + '[notify.templates.en]\nlate = "{student} late at {time}"\n'
                           '[notify.quiet_hours]\nstart = "21:00"\nend = "06:00"\n',
                    encoding="utf-8")
    loaded = load_config(path).notify
    assert loaded.templates["en"]["late"] == "{student} late at {time}"
    assert loaded.quiet_hours == QuietHours(dt.time(21), dt.time(6),
                                            frozenset({"absent", "unknown_card"}))
    assert loaded.channels[0].type == "notifytestchannel"


# -- delivery ----------------------------------------------------------------------------------


class TestChannel:
    """Records every message; keeps one per message_id (as a provider's tracking id does);
    ``answer`` decides per message (None: deliver), ``down`` fails the whole batch."""

    __test__ = False

    def __init__(self, name: str = "sms", max_batch: int = 20, concurrency: int = 2) -> None:
        self.name, self.max_batch, self.concurrency = name, max_batch, concurrency
        self.received: list[Message] = []
        self.kept: dict[str, Message] = {}
        self.answer: Callable[[Message], DeliveryResult | None] = lambda m: None
        self.down: BaseException | None = None
        self.accept_then_hang = False
        self.closed = False

    async def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]:
        if self.down is not None:
            raise self.down
        out = []
        for m in messages:
            result = self.answer(m)
            if result is None:
                self.received.append(m)
                self.kept.setdefault(m.message_id, m)
                result = DeliveryResult(m.item_id, "delivered", upstream_id=m.message_id[:8])
            out.append(result)
        if self.accept_then_hang:  # the provider has them; our process never hears back
            await asyncio.Event().wait()
        return out

    async def close(self) -> None:
        self.closed = True


@contextlib.asynccontextmanager
async def delivering(school: School, channel: TestChannel, *, reopen: bool = False
                     ) -> AsyncIterator[TargetDelivery[Message]]:
    """The notifier's delivery loop for ``channel`` through an ingest's writer."""
    conn = db.connect(school.path) if reopen else school.conn
    ingest = Ingest(conn, StaticKeyRing({}), clock=school.clock)
    ingest.start()
    reads = db.connect(school.path, migrate=False)
    service = OutboxService(ingest, [channel], reads, clock=school.clock, policy=POLICY,
                            store=make_store(STAFF_PHONE))
    await service.start()
    try:
        yield service.deliveries[channel.name]
    finally:
        await service.deliveries[channel.name].wait_idle()
        await service.close()
        await ingest.close()
        reads.close()
        if reopen:
            conn.close()


async def step(delivery: TargetDelivery[Message]) -> None:
    await delivery.fill()
    await delivery.wait_idle()


async def test_retries_429_and_parking_keep_one_message_id(school: School) -> None:
    school.tap("S1", "07:05")
    school.tap("S3", "07:06")
    school.tap("?", "07:07")
    hoa_en = school.guardian("84912345679")
    tries: dict[str, int] = {}

    def answer(m: Message) -> DeliveryResult | None:
        tries[m.message_id] = tries.get(m.message_id, 0) + 1
        if m.phone == "84911112222" and tries[m.message_id] == 1:
            return DeliveryResult(m.item_id, "retry", "rate limited", retry_after_s=60)
        if m.phone == "84912345679":
            return DeliveryResult(m.item_id, "parked", "invalid phone number")
        return None

    channel = TestChannel()
    channel.answer = answer
    async with delivering(school, channel) as delivery:
        await step(delivery)
        states = {(m[2], m[3]) for m in school.messages()}
        assert (hoa_en, "parked") in states and (None, "delivered") in states
        assert [tuple(r) for r in school.conn.execute(
            "SELECT parked_reason FROM notify_messages WHERE state = 'parked'")] == [
            ("invalid phone number",)]
        school.clock.advance(30)
        await step(delivery)  # the 429's Retry-After holds the channel
        assert len(channel.received) == 2
        school.clock.advance(31)
        await step(delivery)
        assert len(channel.received) == 3
        channel.answer = lambda m: None
        assert notify.retry_parked(school.conn, "sms", None, school.clock()) != []
        await step(delivery)
    assert {m[3] for m in school.messages()} == {"delivered"}
    assert len(channel.received) == len(channel.kept) == 4
    staff = [m for m in channel.received if m.kind == "unknown_card"]
    assert staff[0].phone == STAFF_PHONE and staff[0].event["card"] == UNKNOWN


async def test_a_channel_down_is_retried_with_backoff_then_delivered(school: School) -> None:
    school.tap("S3", "07:05")
    channel = TestChannel()
    channel.down = TargetDown("connection refused")
    async with delivering(school, channel) as delivery:
        await step(delivery)
        assert school.messages()[0][3] == "pending"
        channel.down = None
        school.clock.advance(6)
        await step(delivery)
    assert school.messages()[0][3] == "delivered" and len(channel.received) == 1


async def test_consent_withdrawn_or_guardian_removed_before_delivery_cancels(
        school: School) -> None:
    school.tap("S1", "07:05")
    school.tap("S3", "07:06")
    notify.set_consent(school.conn, school.guardian("84912345678"), False, "call", 1)
    school.conn.execute("DELETE FROM guardians WHERE phone = '84911112222'")  # roster import
    assert notify.set_opt_out(school.conn, school.guardian("84912345679"), "check_in", True,
                              "app", 2)
    channel = TestChannel()
    async with delivering(school, channel) as delivery:
        await step(delivery)
    assert channel.received == []
    assert sorted(str(r[0]) for r in school.conn.execute(
        "SELECT parked_reason FROM notify_messages")) == [
        "consent withdrawn", "guardian removed", "the guardian turned this kind off"]


async def test_kill_9_mid_delivery_sends_again_under_the_same_message_ids(
        school: School) -> None:
    for sid, hhmm in (("S1", "07:05"), ("S3", "07:06")):
        school.tap(sid, hhmm)
    school.conn.close()
    first = TestChannel()
    first.accept_then_hang = True
    conn = db.connect(school.path)
    ingest = Ingest(conn, StaticKeyRing({}), clock=school.clock)
    ingest.start()
    reads = db.connect(school.path, migrate=False)
    service = OutboxService(ingest, [first], reads, clock=school.clock,
                            policy=OutboxPolicy(poll_s=0.01, stop_timeout_s=0.01),
                            store=make_store())
    task = asyncio.create_task(service.run(asyncio.Event()))
    async with asyncio.timeout(5):
        while len(first.received) < 3:
            await asyncio.sleep(0.005)
    task.cancel()  # kill -9: nothing after the provider's answer ran
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await ingest.close()
    reads.close()
    conn.close()

    school.conn = db.connect(school.path)  # the restart
    assert {m[3] for m in school.messages()} == {"pending"}
    again = TestChannel()
    again.kept = first.kept  # the same provider
    async with delivering(school, again) as delivery:
        await step(delivery)
    assert {m[3] for m in school.messages()} == {"delivered"}
    assert sorted(m.message_id for m in again.received) == sorted(
        m.message_id for m in first.received)
    assert len(first.kept) == 3


async def test_status_pause_and_metrics(school: School) -> None:
    school.tap("S3", "07:05")
    assert notify.pause(school.conn, "sms", True, 0)
    channel = TestChannel()
    async with delivering(school, channel) as delivery:
        await step(delivery)
        assert channel.received == [] and delivery.paused
        assert notify.status(school.conn)["sms"].pending == 1
        notify.pause(school.conn, "sms", False, 0)
        await step(delivery)
    assert notify.status(school.conn, since_ms=0)["sms"].delivered_since == 1


# -- the operator's command, purge, logs -------------------------------------------------------


def install_channel_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    name = "gateway.channels.notifytestchannel"
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.built = []  # type: ignore[attr-defined]

    def build(cfg: ChannelConfig, *, clock: Any) -> TestChannel:
        channel = TestChannel(cfg.name, cfg.max_batch, cfg.concurrency)
        module.built.append(channel)
        return channel

    module.build = build  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_cli_audit_retry_purge(school: School, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    install_channel_module(monkeypatch)
    school.tap("S1", "07:05")
    school.close_sessions("08:31")
    school.conn.execute("UPDATE notify_messages SET state = 'parked', parked_reason = 'bad' "
                        "WHERE kind = 'absent'")
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nschool = "thcs-a"\n[notify]\nguardian_channel = "sms"\n'
                    '[[notify.channel]]\nname = "sms"\ntype = "notifytestchannel"\n',
                    encoding="utf-8")
    cfg = ["--config", str(path)]

    def run(*argv: str) -> tuple[int, str]:
        code = cli_main(["notify", *argv, *cfg])
        out, err = capsys.readouterr()
        return code, out + err

    code, out = run("status")
    assert code == 0 and "sms" in out and "CHỜ / PENDING" in out
    code, out = run("audit", "--student", "S2")
    assert code == 0 and "no_consent: phụ huynh chưa đồng ý / the guardian has not consented" \
        in out
    code, out = run("list", "sms", "--state", "parked")
    assert code == 0 and "bad" in out
    code, out = run("retry", "sms", "--all")
    assert code == 0 and "1 tin" in out
    code, out = run("retry", "nope", "--all")
    assert code == 1 and "Không có kênh này" in out
    hoa = school.guardian("84912345678")
    code, out = run("purge", "--student", "S1")
    assert code == 0
    assert "guardians: 2 — phụ huynh (tên, số điện thoại) / guardians (names, phone numbers)" \
        in out
    assert "notify_messages_redacted: 2" in out and "notify_messages_cancelled: 2" in out
    assert school.conn.execute("SELECT COUNT(*) FROM guardians WHERE student_id = 'S1'"
                               ).fetchone()[0] == 0
    texts = {str(r[0]) for r in school.conn.execute(
        "SELECT text FROM notify_messages WHERE student_id = 'S1'")}
    assert texts == {notify.REDACTED}
    assert ("check_in", hoa, "queued", "sent") in school.reasons("S1")  # the audit stays
    code, out = run("purge", "--guardian", "99999")
    assert code == 1 and "no such guardian" in out
    dump = "\n".join(school.conn.iterdump())
    for secret in ("Nguyễn Thị Hoa", "84912345678", "Nguyễn Văn An ("):
        assert secret not in dump


async def test_no_names_or_phone_numbers_in_logs(school: School,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    school.tap("S1", "07:05")
    school.close_sessions("08:31")
    channel = TestChannel()
    channel.answer = lambda m: DeliveryResult(m.item_id, "parked", "invalid phone number")
    async with delivering(school, channel) as delivery:
        await step(delivery)
    text = logged_text(caplog.records)
    assert "notify item parked" in text
    for _sid, (name, _cls, guardians) in STUDENTS.items():
        assert name not in text
        for gname, phone, _c, _l in guardians:
            assert gname not in text and phone not in text


# -- a morning at a simulated school -----------------------------------------------------------

DAY_MS = 86_400_000


def test_delivered_and_cancelled_messages_are_pruned_after_90_days_pending_and_parked_never(
        school: School) -> None:
    """Data minimisation: the notification outbox's hourly prune (``store.prune`` with the
    outbox policy's ``retention_ms``, gateway/outbox.py ``_monitor``) deletes delivered and
    cancelled messages whose last change (``updated_ms``) is older than 90 days, and audit
    decisions older than 90 days; pending and parked messages stay at any age."""
    school.tap("S1", "07:05")  # real messages and decisions, copied below at other ages and states
    now = school.clock.now
    template = school.conn.execute("SELECT MIN(item_id) FROM notify_messages").fetchone()[0]
    columns = ("channel, event_id, event_key, guardian_id, student_id, school_date, kind, "
               "locale, text, template_id, template_data, event, next_attempt_ms")

    def copy(state: str, created_days: int, updated_days: int) -> int:
        cursor = school.conn.execute(
            f"INSERT INTO notify_messages (message_id, state, created_ms, updated_ms, "
            f"delivered_ms, {columns}) SELECT ?, ?, ?, ?, ?, {columns} FROM notify_messages "
            "WHERE item_id = ?",
            (f"prune-{state}-{created_days}-{updated_days}", state, now - created_days * DAY_MS,
             now - updated_days * DAY_MS,
             now - updated_days * DAY_MS if state == "delivered" else None, template))
        return int(cursor.lastrowid or 0)

    ages = (0, 1, 89, 91, 400)
    made: dict[tuple[str, int | str], int] = {
        (state, age): copy(state, age, age) for state in notify.MESSAGE_STATES for age in ages}
    # created long ago, delivered lately: the age counts from the last change
    made[("delivered", "created 200 days ago, delivered 10 days ago")] = copy("delivered", 200, 10)
    decided = {age: int(school.conn.execute(
        "INSERT INTO notify_decisions (decided_ms, event_id, event_key, revision, change, kind, "
        "student_id, school_date, guardian_id, outcome, reason, item_id) SELECT ?, event_id, "
        "event_key, revision, change, kind, student_id, school_date, guardian_id, outcome, "
        "reason, item_id FROM notify_decisions ORDER BY decision_id LIMIT 1",
        (now - age * DAY_MS,)).lastrowid or 0) for age in ages}
    before = school.conn.execute("SELECT COUNT(*) FROM notify_messages").fetchone()[0]

    # what the notifications' OutboxService runs every hour (its clock minus 90 days)
    store = make_store(STAFF_PHONE)
    assert store.prune is notify.prune
    retention = policy_from_config(OutboxConfig()).retention_ms
    assert retention == OutboxPolicy().retention_ms == 90 * DAY_MS
    pruned = store.prune(school.conn, before_ms=now - retention)

    left = {int(r[0]) for r in school.conn.execute("SELECT item_id FROM notify_messages")}
    gone = {key for key, item in made.items() if item not in left}
    assert gone == {(state, age) for state in ("delivered", "cancelled") for age in (91, 400)}
    assert pruned == len(gone) == 4
    assert school.conn.execute("SELECT COUNT(*) FROM notify_messages").fetchone()[0] == \
        before - 4  # the real messages (just made) stay
    kept = {int(r[0]) for r in school.conn.execute("SELECT decision_id FROM notify_decisions")}
    assert {age for age, d in decided.items() if d not in kept} == {91, 400}
    assert notify.prune(school.conn, before_ms=now - retention) == 0


FAMILY = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi",
          "Đỗ", "Hồ", "Ngô", "Dương", "Lý"]
MIDDLE = ["Văn", "Thị", "Minh", "Thanh", "Ngọc", "Đức", "Gia", "Bảo", "Hữu", "Khánh"]
GIVEN = ["An", "Bình", "Châu", "Dũng", "Giang", "Hà", "Hải", "Hiếu", "Hương", "Khoa", "Linh",
         "Long", "Mai", "Nam", "Ngân", "Phúc", "Quân", "Sơn", "Tâm", "Thảo", "Trang", "Tuấn",
         "Uyên", "Vy", "Yến"]


def roster(count: int, rng: random.Random
           ) -> dict[str, tuple[str, str, list[tuple[str, str, bool, str]]]]:
    out = {}
    for i in range(1, count + 1):
        family = rng.choice(FAMILY)
        name = f"{family} {rng.choice(MIDDLE)} {rng.choice(GIVEN)}"
        guardians = []
        for g in range(rng.choice((1, 1, 2))):
            consent = rng.random() > 0.15  # some guardians never consented
            guardians.append((f"{rng.choice(FAMILY)} Thị {rng.choice(GIVEN)}",
                              f"849{i:05d}{g:02d}", consent, "en" if rng.random() < 0.1
                              else "vi"))
        out[f"S{i}"] = (name, f"{6 + i % 4}{'ABCD'[i % 3]}", guardians)
    return out


async def test_a_morning_at_a_simulated_school(tmp_path: Path) -> None:
    """1,000 students: repeated taps, late arrivals, absentees at cut-off, guardians without
    consent, quiet hours until 07:05, the gateway killed mid-delivery. Exactly the expected
    messages arrive, each once, and the audit accounts for every (event, guardian)."""
    started = time.monotonic()
    rng = random.Random(7)
    students = roster(1000, rng)
    clock = FakeClock(at("06:00"))
    quiet = QuietHours(dt.time(21, 0), dt.time(7, 5), frozenset({"absent"}))
    s = School(tmp_path / "school.db", clock, config(quiet_hours=quiet, staff=None),
               students)
    expected: set[str] = set()
    plan = {}
    for sid in students:
        r = rng.random()
        plan[sid] = "absent" if r < 0.05 else "late" if r < 0.15 else "early" if r < 0.2 \
            else "on_time"
    scans: list[tuple[int, str, int]] = []
    for sid, kind in plan.items():
        if kind == "absent":
            continue
        minute = {"early": rng.randint(0, 3), "on_time": rng.randint(5, 14),
                  "late": rng.randint(16, 25)}[kind]
        first = at("07:00") + minute * 60_000 + rng.randint(0, 59_000)
        for k in range(rng.choice((1, 1, 2, 3))):  # repeated taps
            scans.append((first + k * rng.randint(1_000, 20_000), sid, rng.choice((1, 2))))
    scans.sort()
    batch: list[StoredScan] = []
    for when, sid, reader in scans:
        hhmm = dt.datetime.fromtimestamp(when / 1000, TZ).strftime("%H:%M:%S")
        s.clock.now = when
        batch.append(s.scan(sid, hhmm, reader))
        if len(batch) == 25:
            with db.atomic(s.conn):
                s.rules.on_scans(s.conn, batch)
            batch = []
    if batch:
        with db.atomic(s.conn):
            s.rules.on_scans(s.conn, batch)
    s.close_sessions("08:31")
    for sid, kind in plan.items():
        for gid, consent in s.conn.execute(
                "SELECT guardian_id, consent FROM guardians WHERE student_id = ?", (sid,)):
            if not consent or kind == "early":  # before 07:05: quiet hours, dropped
                continue
            event = {"absent": "absent", "late": "late", "on_time": "check_in"}[kind]
            expected.add(message_id(event_key(event, sid, MONDAY, "morning"), f"g{gid}"))
    assert {str(r[0]) for r in s.conn.execute("SELECT message_id FROM notify_messages")} == \
        expected
    # every (event, guardian) has a decision, and each decision a reason
    undecided = s.conn.execute(
        "SELECT COUNT(*) FROM attendance_events e JOIN guardians g ON g.student_id = "
        "e.student_id WHERE NOT EXISTS (SELECT 1 FROM notify_decisions d WHERE d.event_id = "
        "e.event_id AND d.guardian_id = g.guardian_id)").fetchone()[0]
    assert undecided == 0
    reasons = dict(s.conn.execute("SELECT reason, COUNT(*) FROM notify_decisions "
                                  "GROUP BY reason").fetchall())
    assert {"sent", "no_consent", "quiet_hours", "covered_by_late"} <= set(reasons)
    s.conn.close()

    # delivery, killed once mid-way, with a flaky provider
    provider: dict[str, Message] = {}
    received: list[str] = []

    def flaky(m: Message) -> DeliveryResult | None:
        if rng.random() < 0.05:
            return DeliveryResult(m.item_id, "retry", "provider busy", retry_after_s=1)
        return None

    dying = TestChannel(max_batch=50, concurrency=2)
    dying.kept, dying.answer = provider, flaky
    async with delivering(s, dying, reopen=True) as delivery:
        for _ in range(4):
            s.clock.advance(60)
            await step(delivery)
        dying.accept_then_hang = True
        s.clock.advance(60)
        assert await delivery.fill()  # these reach the provider; the gateway dies before
        # recording what became of them
        await asyncio.sleep(0.05)
        for task in list(delivery._tasks):
            task.cancel()
        await asyncio.gather(*delivery._tasks, return_exceptions=True)
    received += [m.message_id for m in dying.received]
    s.conn = db.connect(s.path)
    second = TestChannel(max_batch=50, concurrency=2)
    second.kept, second.answer = provider, flaky
    async with delivering(s, second) as delivery:
        for _ in range(200):
            if not s.conn.execute("SELECT 1 FROM notify_messages WHERE state = 'pending' "
                                  "LIMIT 1").fetchone():
                break
            s.clock.advance(60)
            await step(delivery)
    received += [m.message_id for m in second.received]
    assert set(provider) == expected  # each expected message reached the provider once ...
    assert len(received) > len(expected)  # ... though some were sent twice (the kill)
    assert {str(r[0]) for r in s.conn.execute("SELECT DISTINCT state FROM notify_messages")} \
        == {"delivered"}
    s.conn.close()
    assert time.monotonic() - started < 20
