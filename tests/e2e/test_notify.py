"""Parent notifications end to end: taps through the gateway as operators run it to a school's
webhook receiver, through a kill -9 while deliveries are in flight.

- The gateway: ``python -m gateway.cli run --config FILE`` in its own process
  (tests/e2e/gateway_process.py), a real Mosquitto, the roster with guardians and their consent
  imported with ``attendance-gateway roster import --sheet``, one ``[attendance]`` session, and
  ``[notify]`` with one ``[[notify.channel]]`` of type ``webhook`` pointing at the peer, its
  ``whsec_`` secret in a mode-600 file.
- The receiver: ``sim/peers/webhook.py`` (verifies the Standard Webhooks signature and the
  timestamp, stores each ``webhook-id`` once and counts repeats), here slowed down so that
  deliveries are in flight when the gateway is killed. It runs in this test's event loop.
- The readers: ``tests/e2e/mqtt_reader.AckingReader`` signing taps with a clock the test sets
  (as in tests/e2e/test_forwarding.py).
- Time: the ``[gateway] timezone`` is a fixed-offset zone in which it is between 10:00 and
  11:00 now. The session (07:00-13:00, late after 08:00, absent at 12:00) is under way and its
  cut-off is still ahead, so no ``absent`` is decided; ``max_delay_min`` is wide enough for the
  morning's taps. Yesterday is a holiday, so no earlier session closes.

The roster: student 0 has two guardians who consented, student 1 one guardian who did not,
every other student one guardian who did. Student 0 taps again (twice: repeats make no event);
student 2 arrives late (the ``late`` message, its check-in ``covered_by_late``).

Checked on the receiver's side, with the gateway stopped: exactly one message per consenting
guardian per event (by student and kind, and by ``webhook-id`` against the ids the gateway
stored), none for the guardian without consent or for the repeated taps, every delivery's
signature verified (no 401), each ``webhook-id`` stored once; a delivery the receiver completed
after the kill is sent again after the restart under the same id and counted as a duplicate.
``notify audit --json`` says why: ``no_consent`` for student 1's guardian, ``covered_by_late``
for student 2's check-in.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from gateway import db
from gateway.notify import message_id
from gateway.registry import Registry
from sim.broker import MosquittoBroker
from sim.peers.webhook import WebhookPeer
from sim.reader import SimulatedReader
from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.mqtt_reader import AckingReader
from tests.e2e.test_forwarding import GatewaySchool, cli, school_zone, until

SCHOOL = "e2e-notify"
CHANNEL = "school-app"
STUDENTS = [f"03{n:08d}" for n in range(12)]
TWO_GUARDIANS, NO_CONSENT, LATE_STUDENT = 0, 1, 2
ON_TIME, REPEAT, REPEAT_AGAIN, LATE, AFTER_RESTART = \
    "07:30:00", "07:31:00", "07:40:00", "08:30:00", "07:45:00"
READERS = {1: "main", 2: "side"}
PEER_DELAY_S = 0.8


def guardian_rows(n: int) -> list[tuple[str, str, str]]:
    """Student ``n``'s guardians as sheet cells: name, phone, consent."""
    if n == TWO_GUARDIANS:
        return [(f"Mẹ em {n}", f"0901{n:06d}", "có"), (f"Bố em {n}", f"0902{n:06d}", "có")]
    return [(f"Phụ huynh {n}", f"0901{n:06d}", "không" if n == NO_CONSENT else "có")]


class Peer(WebhookPeer):
    """The webhook receiver, taking ``delay_s`` before it answers (and verifies), and counting
    the requests it is still handling."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__(secrets=secrets)
        self.delay_s = 0.0
        self.in_flight = 0

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self._slow_hook)
        return app

    async def _slow_hook(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        try:
            await request.read()  # kept by aiohttp for the receiver's own read
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return await self._hook(request)
        finally:
            self.in_flight -= 1

    def accepted(self, since: int = 0) -> list[str]:
        """The ``webhook-id`` of every verified delivery (after request ``since``)."""
        return [r.webhook_id for r in self.received[since:]
                if r.status == 200 and r.webhook_id is not None]


@dataclass
class School(GatewaySchool[Peer]):
    """The notification test's school; the webhook receiver is its peer."""

    def messages(self) -> dict[str, int]:
        return dict(self.query("SELECT state, COUNT(*) FROM notify_messages GROUP BY state"))

    async def delivered(self, timeout_s: float) -> None:
        await until("every message delivered", lambda: self.messages().get("pending", 0) == 0,
                    timeout_s, lambda: f"messages {self.messages()}, peer received "
                                       f"{len(self.peer.received)}, stored "
                                       f"{len(self.peer.stored)}")


@contextlib.asynccontextmanager
async def school(tmp_path: Path, broker: MosquittoBroker, peer: Peer) -> AsyncIterator[School]:
    """Roster with guardians imported, gateway started, readers registered and connected."""
    zone = school_zone(time.time())
    yesterday = (dt.datetime.now(zone) - dt.timedelta(days=1)).date()
    (tmp_path / "gateway.toml").write_text(f"""\
[gateway]
school = "{SCHOOL}"
database = "gateway.db"
master_key_file = "master.key"
timezone = "{zone.key}"

[mqtt]
port = {broker.port}
keepalive_s = 5

[metrics]
listen = ""

[attendance]
school_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
holidays = ["{yesterday.isoformat()}"]

[[attendance.session]]
name = "morning"
start = "07:00"
late_after = "08:00"
absent_at = "12:00"
end = "13:00"
min_stay_min = 60

[notify]
guardian_channel = "{CHANNEL}"
kinds = ["check_in", "check_out", "late", "absent"]
max_delay_min = 600

[[notify.channel]]
name = "{CHANNEL}"
type = "webhook"
max_batch = 10
concurrency = 2
url = "{peer.url}"
secret_file = "hook.key"
parallel = 4
timeout_s = 5
""", encoding="utf-8")
    secret = tmp_path / "hook.key"
    secret.write_text(peer.secrets[0] + "\n", encoding="utf-8")
    secret.chmod(0o600)
    sheet = tmp_path / "roster.csv"
    sheet.write_text("Mã định danh,Họ và tên,Lớp,Số thẻ,Phụ huynh,Số điện thoại,Đồng ý\n" + "".join(
        f"{sid},Học sinh {n},6A,0A0B{n:04X},{name},{phone},{consent}\n"
        for n, sid in enumerate(STUDENTS) for name, phone, consent in guardian_rows(n)),
        encoding="utf-8")
    s = School(tmp_path, peer, zone, GatewayProcess(tmp_path / "gateway.toml",
                                                    tmp_path / "gateway.log"))
    await cli(s.config, "roster", "import", "--sheet", str(sheet))
    try:
        offset = s.gateway.log.stat().st_size if s.gateway.log.exists() else 0
        await s.start_gateway()
        conn = db.connect(s.db_path, migrate=False)
        try:
            registry = Registry.open(conn, tmp_path / "master.key")
            keys = {rid: registry.register(rid, f"gate {gate}", gate).key
                    for rid, gate in READERS.items()}
        finally:
            conn.close()
        await until("the gateway reloaded its readers",
                    lambda: b'"event": "reader registry reloaded"' in s.log_since(offset), 10)
        async with contextlib.AsyncExitStack() as stack:
            for rid, key in keys.items():
                reader = await stack.enter_async_context(AckingReader(
                    rid, key, SCHOOL, "127.0.0.1", broker.port, ack_timeout_s=1.0))
                reader.sim = SimulatedReader(rid, key, SCHOOL, clock=s.stamp)
                s.readers[rid] = reader
            yield s
    finally:
        s.gateway.ensure_dead()


def expected_ids(s: School) -> dict[str, tuple[str, str]]:
    """The messages that must reach the receiver: message id -> (student, kind), one per live
    ``late`` event or on-time ``check_in`` and consenting guardian of its student."""
    guardians: dict[str, list[int]] = {}
    for gid, student in s.query("SELECT guardian_id, student_id FROM guardians WHERE consent"):
        guardians.setdefault(str(student), []).append(int(gid))
    events = s.query("SELECT kind, student_id, event_key FROM attendance_events "
                     "WHERE voided_ms IS NULL")
    late = {student for kind, student, _ in events if kind == "late"}
    return {message_id(key, f"g{gid}"): (student, kind)
            for kind, student, key in events
            if kind == "late" or (kind == "check_in" and student not in late)
            for gid in guardians.get(student, [])}


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    async with Peer([secret]) as server:
        yield server


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_each_consenting_guardian_gets_one_message_through_a_kill_9(
        tmp_path: Path, mosquitto_broker: MosquittoBroker, peer: Peer) -> None:
    started = time.monotonic()
    async with school(tmp_path, mosquitto_broker, peer) as s:
        # A slow receiver: every delivery takes 0.8 s, so messages are in flight for a while.
        peer.delay_s = PEER_DELAY_S
        await s.tap(1, [(n, ON_TIME) for n in range(len(STUDENTS) - 1) if n != LATE_STUDENT])
        await s.tap(2, [(LATE_STUDENT, LATE)])
        await s.tap(1, [(TWO_GUARDIANS, REPEAT)])
        await until("deliveries in flight", lambda: peer.in_flight >= 2, 10,
                    lambda: f"in flight {peer.in_flight}, messages {s.messages()}")
        # Killed from the event loop itself (it blocks for the few ms the kill takes): every
        # delivery the receiver completes after ``killed_at`` has lost its answer.
        s.gateway.kill9()
        killed_at = len(peer.received)
        await until("the receiver finished the orphaned deliveries",
                    lambda: peer.in_flight == 0, 5)
        orphans = peer.accepted(since=killed_at)
        assert orphans, "no delivery was in flight at the kill"
        assert s.messages().get("pending", 0) > 0, "nothing left to deliver after the kill"
        peer.delay_s = 0.0
        restarted_at = len(peer.received)
        before_restart = set(peer.accepted())
        await s.start_gateway()
        await s.tap(1, [(TWO_GUARDIANS, REPEAT_AGAIN), (len(STUDENTS) - 1, AFTER_RESTART)])
        await s.delivered(15)
        assert await asyncio.to_thread(s.gateway.terminate) == 0

    # On the receiver: exactly the expected messages, each stored once, signatures verified.
    assert peer.refused() == [], f"deliveries refused by the receiver: {peer.refused()}"
    assert all(r.status == 200 for r in peer.received), \
        f"answers other than 200: {[r for r in peer.received if r.status != 200]}"
    expected = expected_ids(s)
    by_student_kind = Counter((p["event"]["student_id"], p["kind"]) for p in peer.stored.values())
    assert by_student_kind == Counter(
        {(STUDENTS[TWO_GUARDIANS], "check_in"): 2, (STUDENTS[LATE_STUDENT], "late"): 1}
        | {(STUDENTS[n], "check_in"): 1 for n in range(3, len(STUDENTS))}), by_student_kind
    assert set(peer.stored) == set(expected), \
        f"missing {set(expected) - set(peer.stored)}, unexpected {set(peer.stored) - set(expected)}"
    assert all((p["event"]["student_id"], p["kind"]) == expected[mid]
               for mid, p in peer.stored.items())
    assert all(p["type"] == f"attendance.{p['kind']}" and p["message_id"] == mid
               for mid, p in peer.stored.items())
    late_text = next(p["text"] for p in peer.stored.values() if p["kind"] == "late")
    assert late_text.startswith(f"Học sinh {LATE_STUDENT} (lớp 6A) đến trường muộn lúc 08:30"), \
        late_text
    # Each webhook-id once in the stored set; a repeat only for a delivery made before the
    # restart (its answer lost to the kill), deduped by the receiver on the same id.
    accepted = Counter(peer.accepted())
    repeated = {mid: n for mid, n in accepted.items() if n > 1}
    assert all(n == 2 and mid in before_restart for mid, n in repeated.items()), repeated
    assert peer.duplicates == sum(n - 1 for n in repeated.values())
    assert set(orphans) <= set(peer.accepted(since=restarted_at)), \
        "a delivery completed after the kill was not sent again under its id"
    assert s.messages() == {"delivered": len(expected)}, s.messages()

    # The audit says why each message was or was not sent.
    audit = await cli(s.config, "notify", "audit", "--json")
    why = Counter((d["student_id"], d["kind"], d["outcome"], d["reason"], d["state"])
                  for d in audit)
    no_consent = s.query("SELECT guardian_id FROM guardians WHERE student_id = ?",
                         STUDENTS[NO_CONSENT])
    assert [(d["guardian_id"], d["kind"], d["outcome"], d["reason"]) for d in audit
            if d["student_id"] == STUDENTS[NO_CONSENT]] \
        == [(no_consent[0][0], "check_in", "skipped", "no_consent")], audit
    assert why[(STUDENTS[TWO_GUARDIANS], "check_in", "queued", "sent", "delivered")] == 2, why
    assert sum(n for key, n in why.items() if key[0] == STUDENTS[TWO_GUARDIANS]) == 2, \
        "the repeated taps made decisions"
    assert why[(STUDENTS[LATE_STUDENT], "check_in", "skipped", "covered_by_late", None)] == 1
    assert why[(STUDENTS[LATE_STUDENT], "late", "queued", "sent", "delivered")] == 1
    print(f"kill -9 with {len(orphans)} deliveries in flight; {peer.duplicates} repeats deduped "
          f"by webhook-id; {len(peer.stored)} messages; {time.monotonic() - started:.1f} s")
