"""The Ed-Fi adapter against a real Ed-Fi-like HTTP peer (sim/peers/edfi.py).

Time is injected: the adapter's clock (Unix ms) and the peer's token clock (seconds) are moved
by the tests, so tokens expire without sleeping.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
import os
import sqlite3
import zoneinfo
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import pytest

from gateway import db, outbox
from gateway.config import AttendanceConfig, ConfigError, Session, load_config
from gateway.forwarders import (
    AttendanceItem,
    DeliveryResult,
    EventKind,
    ForwardTarget,
    TargetDown,
)
from gateway.forwarders.edfi import EdFiAdapter, build
from gateway.ingest import Ingest
from gateway.outbox import Enqueuer, OutboxPolicy, OutboxService, build_adapter
from gateway.rules import AttendanceRules, event_key, from_ms, to_ms
from gateway.types import StaticKeyRing, StoredScan
from sim.peers.edfi import NAMESPACE, RESOURCE_PATH, TOKEN_PATH, EdFiPeer, Fault
from tests.gateway.oversized import OversizedPeer
from tests.log_text import logged_text

ZONE = zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh")
STUDENTS = [f"01{n:08d}" for n in range(40)]  # 10-digit Ministry student ids
SESSION = "Học kỳ I"
Change = Literal["created", "revised", "voided"]


class FakeTime:
    """One clock for both sides: the adapter reads ms, the peer seconds."""

    def __init__(self) -> None:
        self.now_ms = to_ms(dt.datetime(2026, 3, 2, 7, 30, tzinfo=ZONE))

    def ms(self) -> int:
        return self.now_ms

    def s(self) -> float:
        return self.now_ms / 1000

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def peer(clock: FakeTime) -> AsyncIterator[EdFiPeer]:
    async with EdFiPeer(students=set(STUDENTS), clock=clock.s) as server:
        yield server


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "edfi.secret"
    path.write_text("s3cr3t-for-tests\n", encoding="utf-8")
    path.chmod(0o600)
    return path


AdapterFactory = Callable[..., EdFiAdapter]


@pytest.fixture
async def make(peer: EdFiPeer, secret_file: Path, clock: FakeTime
               ) -> AsyncIterator[AdapterFactory]:
    made: list[EdFiAdapter] = []

    def factory(**overrides: Any) -> EdFiAdapter:
        adapter = build(_target(peer.base_url, secret_file, **overrides), clock=clock.ms,
                        timezone=ZONE)
        made.append(adapter)
        return adapter

    yield factory
    for adapter in made:
        await adapter.close()


def _target(url: str, secret_file: Path, **overrides: Any) -> ForwardTarget:
    settings: dict[str, Any] = {
        "base_url": url,
        "client_id": "attendance-gateway",
        "client_secret_file": str(secret_file),
        "school_id": 255901001,
        "school_year": 2026,
        "session_names": SESSION,
        "timeout_s": 2,
    }
    settings.update(overrides)
    return ForwardTarget(name="edfi", type="edfi",
                         settings={k: v for k, v in settings.items() if v is not None})


_ids = iter(range(1, 1_000_000))


def item(student: str = STUDENTS[0], kind: EventKind = "check_in", *, at: str = "07:05:00",
         change: Change = "created", revision: int = 0, day: str = "2026-03-02",
         session: str = "morning", upstream_id: str | None = None) -> AttendanceItem:
    at_ms = to_ms(dt.datetime.combine(dt.date.fromisoformat(day), dt.time.fromisoformat(at),
                                      tzinfo=ZONE))
    key = event_key(kind, student, day, session)
    return AttendanceItem(
        item_id=next(_ids), idempotency_key=f"{key}.{revision}", event_key=key,
        revision=revision, change=change, kind=kind,
        school_date=day, session=session, at_ms=at_ms, gate="main",
        student_id=None if kind == "unknown_card" else student, class_id="6A", attempts=0,
        upstream_id=upstream_id)


def outcomes(results: list[DeliveryResult]) -> list[str]:
    return [r.outcome for r in results]


def descriptor(code: str) -> str:
    return f"{NAMESPACE}#{code}"


# --- the resource ------------------------------------------------------------------------------

async def test_events_become_attendance_resources(peer: EdFiPeer, make: AdapterFactory) -> None:
    adapter = make()
    items = [item(STUDENTS[0], "check_in", at="07:05:09"), item(STUDENTS[1], "check_in",
             at="07:21:00"), item(STUDENTS[1], "late", at="07:21:00"),
             item(STUDENTS[2], "absent", at="08:30:00")]
    results = await adapter.deliver(items)
    assert [r.item_id for r in results] == [i.item_id for i in items]
    assert outcomes(results) == ["delivered"] * 4
    assert all(r.upstream_id in peer.records for r in results)
    assert peer.tokens_issued == 1 and adapter.tokens_fetched == 1
    stored = {(r["studentReference"]["studentUniqueId"], r["attendanceEventCategoryDescriptor"]):
              r for r in peer.records.values()}
    assert len(stored) == 4
    first = stored[(STUDENTS[0], descriptor("In Attendance"))]
    assert first["eventDate"] == "2026-03-02"
    assert first["arrivalTime"] == "07:05:09"  # school-local time, not UTC
    assert first["schoolReference"] == {"schoolId": 255901001}
    assert first["sessionReference"] == {"schoolId": 255901001, "schoolYear": 2026,
                                         "sessionName": SESSION}
    assert stored[(STUDENTS[1], descriptor("Tardy"))]["arrivalTime"] == "07:21:00"
    absent = stored[(STUDENTS[2], descriptor("Unexcused Absence"))]
    assert "arrivalTime" not in absent and "departureTime" not in absent


async def test_unknown_cards_and_unmapped_check_outs_are_not_sent(
        peer: EdFiPeer, make: AdapterFactory) -> None:
    adapter = make()
    results = await adapter.deliver([item("card-1", "unknown_card"),
                                     item(kind="check_out", at="11:35:00")])
    assert outcomes(results) == ["delivered", "delivered"]
    assert "unknown cards" in results[0].reason
    assert "check_out is not mapped" in results[1].reason
    assert peer.requests == []  # not even a token


async def test_check_out_as_early_departure_when_configured(
        peer: EdFiPeer, make: AdapterFactory) -> None:
    adapter = make(categories={"check_out": "Early departure", "absent": "Excused Absence"})
    results = await adapter.deliver([item(kind="check_out", at="10:02:03"),
                                     item(STUDENTS[3], "absent")])
    assert outcomes(results) == ["delivered", "delivered"]
    by_code = {r["attendanceEventCategoryDescriptor"]: r for r in peer.records.values()}
    assert by_code[descriptor("Early departure")]["departureTime"] == "10:02:03"
    assert "arrivalTime" not in by_code[descriptor("Early departure")]
    assert descriptor("Excused Absence") in by_code


async def test_session_names_per_session_and_terms(peer: EdFiPeer, make: AdapterFactory) -> None:
    peer.sessions |= {(2026, "HK1 sáng"), (2026, "Học kỳ II")}
    adapter = make(session_names={"morning": "HK1 sáng"},
                   terms=[{"first_day": dt.date(2026, 1, 19), "last_day": "2026-05-31",
                           "session_names": "Học kỳ II"},
                          {"first_day": "2025-09-05", "last_day": "2026-01-17"}])
    results = await adapter.deliver([
        item(STUDENTS[0], day="2025-10-06"),                      # term 1, per-session name
        item(STUDENTS[1], day="2025-10-06", session="afternoon"),  # no name for it
        item(STUDENTS[2], day="2026-03-02"),                      # term 2
        item(STUDENTS[3], day="2026-01-18"),                      # between the terms
    ])
    assert outcomes(results) == ["delivered", "parked", "delivered", "parked"]
    assert "'afternoon' has no Ed-Fi sessionName" in results[1].reason
    assert "no Ed-Fi session is configured for 2026-01-18" in results[3].reason
    names = sorted(r["sessionReference"]["sessionName"] for r in peer.records.values())
    assert names == ["HK1 sáng", "Học kỳ II"]
    assert peer.count("POST", RESOURCE_PATH) == 2  # the parked ones never left


# --- tokens ------------------------------------------------------------------------------------

async def test_token_is_cached_then_refreshed_before_it_runs_out(
        peer: EdFiPeer, make: AdapterFactory, clock: FakeTime) -> None:
    peer.token_ttl_s = 60
    adapter = make()
    await adapter.deliver([item(STUDENTS[0])])
    clock.advance(30)
    await adapter.deliver([item(STUDENTS[1])])
    assert peer.tokens_issued == 1
    clock.advance(25)  # 55 s: inside the last tenth of its life, refreshed without a 401
    await adapter.deliver([item(STUDENTS[2])])
    assert peer.tokens_issued == 2
    assert peer.count("POST", RESOURCE_PATH, status=401) == 0


async def test_token_expiring_mid_batch_is_refreshed_once_per_expiry(
        peer: EdFiPeer, make: AdapterFactory) -> None:
    # The peer's clock runs 0.1 s per request it gets, so its 2 s tokens expire every 20
    # requests, in the middle of a batch, while the adapter's clock stands still (so only the
    # 401s can tell it): each expiry costs one token fetch, however many requests were in flight.
    peer.clock = lambda: len(peer.requests) * 0.1
    adapter = make(parallel=4)
    results = await adapter.deliver([item(s) for s in STUDENTS])
    assert outcomes(results) == ["delivered"] * len(STUDENTS)
    assert 2 <= peer.tokens_issued <= 4
    refused = peer.count("POST", RESOURCE_PATH, status=401)
    assert peer.tokens_issued - 1 <= refused <= 4 * (peer.tokens_issued - 1)
    assert len(peer.records) == len(STUDENTS)
    assert {r["studentReference"]["studentUniqueId"] for r in peer.records.values()} \
        == set(STUDENTS)


async def test_credentials_refused(peer: EdFiPeer, make: AdapterFactory, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not-the-secret", encoding="utf-8")
    wrong.chmod(0o600)
    adapter = make(client_secret_file=str(wrong))
    with pytest.raises(TargetDown, match="credentials refused by the token endpoint"):
        await adapter.deliver([item()])


async def test_401_after_a_fresh_token_is_target_down(peer: EdFiPeer,
                                                      make: AdapterFactory) -> None:
    adapter = make(parallel=1)
    peer.inject(Fault(status=401), times=2)
    with pytest.raises(TargetDown, match="credentials refused"):
        await adapter.deliver([item()])
    assert peer.tokens_issued == 2  # the first, then one refresh; no loop
    assert outcomes(await adapter.deliver([item()])) == ["delivered"]  # and it recovers
    assert len(peer.records) == 1


# --- refusals ----------------------------------------------------------------------------------

async def test_unknown_student_is_parked_without_personal_data(
        peer: EdFiPeer, make: AdapterFactory) -> None:
    adapter = make()
    stranger = "0199999999"
    results = await adapter.deliver([item(stranger), item(STUDENTS[0])])
    assert outcomes(results) == ["parked", "delivered"]
    reason = results[0].reason
    assert reason.startswith("unknown student or session (409 "
                             "urn:ed-fi:api:conflict:unresolved-reference)")
    assert "'Student'" in reason  # the problem's detail
    assert "correlationId" in reason
    assert stranger not in reason
    assert len(peer.records) == 1


async def test_unknown_session_is_parked(peer: EdFiPeer, make: AdapterFactory) -> None:
    adapter = make(session_names="Học kỳ 9")
    results = await adapter.deliver([item()])
    assert outcomes(results) == ["parked"]
    assert "unknown student or session" in results[0].reason and "'Session'" in results[0].reason


async def test_older_ods_conflict_messages(peer: EdFiPeer, make: AdapterFactory) -> None:
    adapter = make(parallel=1)
    peer.inject(Fault(status=409, problem={
        "message": "The value supplied for the related 'student' resource does not exist."}))
    peer.inject(Fault(status=409, problem={"type": "urn:ed-fi:api:conflict:write-conflict",
                                           "detail": "The item was modified meanwhile."}))
    results = await adapter.deliver([item(STUDENTS[0]), item(STUDENTS[1])])
    assert outcomes(results) == ["parked", "retry"]
    assert results[0].reason.startswith("unknown student or session (409 unresolved reference)")
    assert "write conflict" in results[1].reason


async def test_bad_request_is_parked_with_the_problem(peer: EdFiPeer,
                                                      make: AdapterFactory) -> None:
    adapter = make(parallel=1)
    peer.inject(Fault(status=400, problem={
        "type": "urn:ed-fi:api:bad-request:data-validation-failed",
        "title": "Data Validation Failed", "status": 400,
        "detail": f"Student {STUDENTS[0]} cannot be recorded here.",
        "validationErrors": {"$.arrivalTime": ["arrivalTime is out of range."]}}))
    results = await adapter.deliver([item(STUDENTS[0]), item(STUDENTS[1])])
    assert outcomes(results) == ["parked", "delivered"]
    reason = results[0].reason
    assert "400 urn:ed-fi:api:bad-request:data-validation-failed" in reason
    assert "cannot be recorded here" in reason and "$.arrivalTime" in reason
    assert STUDENTS[0] not in reason  # blanked out of the upstream's detail


async def test_unknown_descriptor_is_parked(peer: EdFiPeer, make: AdapterFactory) -> None:
    adapter = make(categories={"late": "Late arrival"})
    results = await adapter.deliver([item(kind="late", at="07:40:00")])
    assert outcomes(results) == ["parked"]
    assert "$.attendanceEventCategoryDescriptor" in results[0].reason


# --- throttling and failures -------------------------------------------------------------------

async def test_429_retry_after_seconds_holds_the_rest_of_the_batch(
        peer: EdFiPeer, make: AdapterFactory) -> None:
    adapter = make(parallel=1)
    await adapter.deliver([item(STUDENTS[0])])  # token, and one record
    peer.inject(Fault(status=429, retry_after="7"))
    results = await adapter.deliver([item(s) for s in STUDENTS[1:5]])
    assert outcomes(results) == ["retry"] * 4
    assert all(r.retry_after_s == 7.0 for r in results)
    assert "429" in results[0].reason
    assert peer.count("POST", RESOURCE_PATH) == 2  # the rest of the batch was not sent
    results = await adapter.deliver([item(s) for s in STUDENTS[1:5]])
    assert outcomes(results) == ["delivered"] * 4


async def test_retry_after_as_an_http_date(peer: EdFiPeer, make: AdapterFactory,
                                           clock: FakeTime) -> None:
    adapter = make(parallel=1)
    when = email.utils.format_datetime(
        dt.datetime.fromtimestamp(clock.ms() / 1000 + 30, tz=dt.UTC), usegmt=True)
    peer.inject(Fault(status=503, retry_after=when))
    results = await adapter.deliver([item()])
    assert outcomes(results) == ["retry"]
    assert results[0].retry_after_s == pytest.approx(30, abs=1)


async def test_429_without_retry_after_leaves_the_delay_to_the_outbox(
        peer: EdFiPeer, make: AdapterFactory) -> None:
    adapter = make()
    peer.inject(Fault(status=429))
    results = await adapter.deliver([item()])
    assert outcomes(results) == ["retry"] and results[0].retry_after_s is None


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_target_down(peer: EdFiPeer, make: AdapterFactory,
                                             status: int) -> None:
    adapter = make(parallel=1)
    peer.inject(Fault(status=status))
    with pytest.raises(TargetDown, match=f"POST answered {status}"):
        await adapter.deliver([item(s) for s in STUDENTS[:3]])
    assert peer.count("POST", RESOURCE_PATH) == 1  # stopped at the first failure
    results = await adapter.deliver([item(s) for s in STUDENTS[:3]])
    assert outcomes(results) == ["delivered"] * 3


async def test_token_endpoint_errors_are_target_down(peer: EdFiPeer,
                                                     make: AdapterFactory) -> None:
    adapter = make()
    peer.inject(Fault(status=500, endpoint="token"))
    with pytest.raises(TargetDown, match="token endpoint answered 500"):
        await adapter.deliver([item()])
    peer.inject(Fault(status=503, retry_after="12", endpoint="token"))
    with pytest.raises(TargetDown) as info:
        await adapter.deliver([item()])
    assert info.value.retry_after_s == 12.0


async def test_timeout_then_redelivery_keeps_one_record(peer: EdFiPeer,
                                                        make: AdapterFactory) -> None:
    adapter = make(timeout_s=0.2, parallel=1)
    await adapter.deliver([item(STUDENTS[5])])  # a token first: only the POST is slow
    peer.inject(Fault(kind="slow", delay_s=0.5))
    with pytest.raises(TargetDown, match="timed out"):
        await adapter.deliver([item(STUDENTS[0], at="07:01:00")])
    await _settle(peer, 3)  # the peer stores it anyway: the answer was lost, not the request
    results = await adapter.deliver([item(STUDENTS[0], at="07:01:00")])
    assert outcomes(results) == ["delivered"]
    assert peer.count("POST", RESOURCE_PATH, status=200) == 1  # an update, not a second record
    assert len(peer.records) == 2


async def test_dropped_connection_and_refused_connection(peer: EdFiPeer,
                                                         make: AdapterFactory) -> None:
    adapter = make()
    peer.inject(Fault(kind="drop"))
    with pytest.raises(TargetDown, match="RemoteProtocolError"):
        await adapter.deliver([item()])
    await peer.close()
    with pytest.raises(TargetDown, match="ConnectError"):
        await adapter.deliver([item()])


# --- revisions and voids -----------------------------------------------------------------------

async def test_revision_updates_the_one_record(peer: EdFiPeer, make: AdapterFactory) -> None:
    adapter = make()
    first = await adapter.deliver([item(at="07:20:00")])
    # a reader's backlog brings an earlier tap: the check-in moves, under the same natural key
    second = await adapter.deliver([item(at="07:04:00", change="revised", revision=1)])
    assert first[0].upstream_id == second[0].upstream_id
    assert [r.status for r in peer.requests if r.method == "POST"
            and r.path == RESOURCE_PATH] == [201, 200]
    (record,) = peer.records.values()
    assert record["arrivalTime"] == "07:04:00"


async def test_versions_of_one_event_in_one_batch(peer: EdFiPeer, make: AdapterFactory) -> None:
    adapter = make()
    results = await adapter.deliver([item(at="07:20:00"),
                                     item(at="07:04:00", change="revised", revision=1)])
    assert outcomes(results) == ["delivered", "delivered"]
    assert "superseded by revision 1" in results[0].reason
    assert peer.count("POST", RESOURCE_PATH) == 1
    assert next(iter(peer.records.values()))["arrivalTime"] == "07:04:00"
    # an older version handed over later is not sent over the newer one
    late = await adapter.deliver([item(at="07:20:00")])
    assert "revision 1 of this event was delivered" in late[0].reason
    assert next(iter(peer.records.values()))["arrivalTime"] == "07:04:00"


async def test_void_deletes_by_known_id(peer: EdFiPeer, make: AdapterFactory) -> None:
    adapter = make()
    late = item(kind="late", at="07:40:00")
    first = await adapter.deliver([late, item(kind="check_in", at="07:40:00")])
    assert len(peer.records) == 2
    (late_id,) = [r.upstream_id for r in first if r.item_id == late.item_id]
    assert late_id is not None  # from the Location header; the outbox keeps it
    # a backlog shows an on-time tap: 'late' is voided upstream, by the id the outbox kept
    results = await adapter.deliver([item(kind="late", change="voided", revision=1,
                                          upstream_id=late_id)])
    assert outcomes(results) == ["delivered"]
    assert peer.count("GET") == 0 and peer.count("DELETE", status=204) == 1
    assert [r["attendanceEventCategoryDescriptor"] for r in peer.records.values()] \
        == [descriptor("In Attendance")]


async def test_void_after_restart_finds_the_record_by_natural_key(
        peer: EdFiPeer, make: AdapterFactory) -> None:
    await make().deliver([item(kind="absent", at="08:30:00")])
    restarted = make()  # the outbox has no id for it (e.g. the answer had no Location)
    results = await restarted.deliver([item(kind="absent", change="voided", revision=1)])
    assert outcomes(results) == ["delivered"]
    (lookup,) = [r for r in peer.requests if r.method == "GET"]
    assert lookup.query["studentUniqueId"] == STUDENTS[0]
    assert lookup.query["attendanceEventCategoryDescriptor"] == descriptor("Unexcused Absence")
    assert peer.records == {}
    # voiding what never reached Ed-Fi (it was parked, say) has nothing to delete
    again = await restarted.deliver([item(STUDENTS[1], "absent", change="voided", revision=1)])
    assert outcomes(again) == ["delivered"]
    assert "no record upstream" in again[0].reason


async def test_void_when_lookup_is_refused_is_parked(peer: EdFiPeer,
                                                     make: AdapterFactory) -> None:
    adapter = make()
    await adapter.deliver([item(STUDENTS[9])])  # a token first
    peer.inject(Fault(status=403, problem={"type": "urn:ed-fi:api:security:authorization",
                                           "detail": "Access to the resource is denied."}))
    results = await adapter.deliver([item(kind="absent", change="voided", revision=1)])
    assert outcomes(results) == ["parked"]
    assert results[0].reason.startswith("voided, but the record to delete cannot be looked up")
    assert "Access to the resource is denied" in results[0].reason


async def test_restored_event_is_created_again(peer: EdFiPeer, make: AdapterFactory) -> None:
    adapter = make()
    await adapter.deliver([item(kind="late", at="07:40:00")])
    await adapter.deliver([item(kind="late", change="voided", revision=1)])
    await adapter.deliver([item(kind="late", at="07:40:00", change="revised", revision=2)])
    assert len(peer.records) == 1
    assert peer.count("POST", RESOURCE_PATH, status=201) == 2


# --- logs and secrets --------------------------------------------------------------------------

async def test_no_secret_token_or_student_id_in_logs(
        peer: EdFiPeer, make: AdapterFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    adapter = make()
    await adapter.deliver([item(STUDENTS[0]), item(kind="absent", change="voided", revision=1)])
    peer.inject(Fault(status=500))
    with pytest.raises(TargetDown):
        await adapter.deliver([item(STUDENTS[1])])
    tokens = {r.bearer for r in peer.requests if r.bearer}
    assert tokens
    text = logged_text(caplog.records)
    assert "target down" in text
    for secret in [*tokens, "s3cr3t-for-tests", STUDENTS[0], STUDENTS[1]]:
        assert secret not in text
    assert "s3cr3t" not in repr(adapter.settings) and "s3cr3t" not in repr(adapter)


# --- configuration -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("overrides", "key", "reason"),
    [
        ({"base_url": None}, "base_url", "is required"),
        ({"base_url": "ftp://ods.example"}, "base_url", "https:// URL"),
        ({"base_url": "http://ods.example/api"}, "base_url", "must be https://"),
        ({"token_url": "https://user:pw@ods.example/oauth/token"}, "token_url", "credentials"),
        ({"client_id": ""}, "client_id", "non-empty string"),
        ({"client_secret_file": None}, "client_secret_file", "is required"),
        ({"client_secret_file": "/nonexistent/edfi.secret"}, "client_secret_file",
         "does not exist"),
        ({"school_id": "255901001"}, "school_id", "must be an integer"),
        ({"school_year": None}, "school_year", "is required"),
        ({"school_year": 26}, "school_year", "between 1991 and 2199"),
        ({"session_names": 3}, "session_names", "one Ed-Fi sessionName"),
        ({"session_names": {"morning": ""}}, "session_names", "one Ed-Fi sessionName"),
        ({"categories": {"unknown_card": "In Attendance"}}, "categories.unknown_card",
         "never sent"),
        ({"categories": {"tardy": "Tardy"}}, "categories.tardy", "is not one of"),
        ({"categories": {"late": "uri://x#Tardy"}}, "categories.late", "code value"),
        ({"descriptor_namespace": "ed-fi.org"}, "descriptor_namespace", "URI"),
        ({"timezone": "Asia/Hanoi_City"}, "timezone", "unknown time zone"),
        ({"timeout_s": 0}, "timeout_s", "between"),
        ({"parallel": 100}, "parallel", "between 1 and 32"),
        ({"verify": "yes"}, "verify", "true or false"),
        ({"verify": False, "ca_file": "ca.pem"}, "ca_file", "not both"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ca_file", "not a usable CA bundle"),
        ({"terms": []}, "terms", "non-empty array"),
        ({"terms": [{"first_day": "2025-09-05", "last_day": "2025-09-01"}]},
         "terms[0].last_day", "before first_day"),
        ({"terms": [{"first_day": "05/09/2025", "last_day": "2026-01-17"}]},
         "terms[0].first_day", "a date like"),
        ({"terms": [{"first_day": "2025-09-05", "last_day": "2026-01-17"},
                    {"first_day": "2026-01-17", "last_day": "2026-05-31"}]}, "terms", "overlap"),
        ({"terms": [{"first_day": "2025-09-05", "last_day": "2026-01-17", "name": "HK1"}]},
         "terms[0].name", "unknown key"),
        ({"client_secret": "inline"}, "client_secret", "unknown key"),
    ],
)
def test_config_errors_name_the_key(secret_file: Path, clock: FakeTime,
                                    overrides: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(_target("https://ods.example/api", secret_file, **overrides), clock=clock.ms)
    assert info.value.key == f"forward.edfi.{key}"
    assert reason in info.value.reason


def test_secret_file_must_be_private(secret_file: Path, clock: FakeTime) -> None:
    os.chmod(secret_file, 0o640)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        build(_target("https://ods.example/api", secret_file), clock=clock.ms)
    assert info.value.key == "forward.edfi.client_secret_file"
    assert "s3cr3t" not in str(info.value)


async def test_settings_defaults_and_relative_paths(tmp_path: Path, clock: FakeTime) -> None:
    (tmp_path / "edfi.secret").write_text("x", encoding="utf-8")
    (tmp_path / "edfi.secret").chmod(0o600)
    target = ForwardTarget("district", "edfi", {
        "base_url": "https://ods.example/api/", "client_id": "k", "client_secret_file":
        "edfi.secret", "school_id": 1, "school_year": 2026, "session_names": "S1",
        "timezone": "Asia/Bangkok"}, max_batch=20, concurrency=3)
    adapter = build(target, clock=clock.ms, config_path=tmp_path / "gateway.toml")
    try:
        s = adapter.settings
        assert (adapter.name, adapter.max_batch, adapter.concurrency) == ("district", 20, 3)
        assert s.data_url == "https://ods.example/api/data/v3"
        assert s.token_url == "https://ods.example/api/oauth/token"
        assert s.descriptor("late") == f"{NAMESPACE}#Tardy"
        assert s.descriptor("check_out") is None and s.descriptor("unknown_card") is None
        assert str(s.timezone) == "Asia/Bangkok"
        assert (s.timeout_s, s.parallel, s.verify) == (15.0, 4, True)
    finally:
        await adapter.close()


async def _settle(peer: EdFiPeer, requests: int) -> None:
    """Wait (briefly) until the peer has finished ``requests`` requests."""
    for _ in range(200):
        if len(peer.requests) >= requests:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the peer saw {len(peer.requests)} requests, not {requests}")


async def test_built_from_the_gateway_config(tmp_path: Path, clock: FakeTime) -> None:
    (tmp_path / "edfi.secret").write_text("x\n", encoding="utf-8")
    (tmp_path / "edfi.secret").chmod(0o600)
    path = tmp_path / "gateway.toml"
    path.write_text("""
[gateway]
school = "thcs-nguyen-du"
timezone = "Asia/Ho_Chi_Minh"

[[forward]]
name = "so-gd"
type = "edfi"
max_batch = 25
base_url = "https://ods.example/api"
client_id = "gw"
client_secret_file = "edfi.secret"
school_id = 255901001
school_year = 2026
session_names = { morning = "HK1 sáng", afternoon = "HK1 chiều" }
categories = { check_out = "Early departure", absent = "" }

[[forward.terms]]
first_day = 2025-09-05
last_day = 2026-01-17

[[forward.terms]]
first_day = 2026-01-19
last_day = 2026-05-31
session_names = "Học kỳ II"
""", encoding="utf-8")
    config = load_config(path)
    (target,) = config.forward
    adapter = build(target, clock=clock.ms, timezone=config.timezone, config_path=path)
    try:
        s = adapter.settings
        assert adapter.max_batch == 25 and s.client_secret == "x"
        first, second = s.term(dt.date(2025, 10, 1)), s.term(dt.date(2026, 3, 2))
        assert first is not None and second is not None
        assert first.session_name("afternoon") == "HK1 chiều"
        assert second.session_name("afternoon") == "Học kỳ II"
        assert s.descriptor("absent") is None
        assert s.descriptor("check_out") == f"{NAMESPACE}#Early departure"
    finally:
        await adapter.close()


# --- through the outbox ------------------------------------------------------------------------
# The real pipeline: scans -> attendance rules -> outbox rows (same transaction, through the
# ingest's writer) -> the outbox's delivery loop -> this adapter -> the peer, which fails in
# every way it can along the way. Afterwards the peer must hold exactly the live events.

MORNING = Session("morning", dt.time(7, 0), dt.time(7, 15), dt.time(8, 30), dt.time(11, 30), 30)
POLICY = OutboxPolicy(poll_s=0.01, retry_initial_s=5.0, retry_cap_s=40.0, jitter=0.0,
                      breaker_failures=3, breaker_cooldown_s=30.0, breaker_cooldown_cap_s=120.0,
                      probe_batch=1, stop_timeout_s=0.5, status_every_s=0.02,
                      db_error_hold_s=0.05)
ROSTER = STUDENTS[:30]


def _local(day: dt.date, hhmm: str) -> int:
    return to_ms(dt.datetime.combine(day, dt.time.fromisoformat(hhmm), tzinfo=ZONE))


class School:
    """A gateway database with one reader, a roster with cards, the rules and the outbox."""

    def __init__(self, path: Path, ingest: Ingest, clock: FakeTime) -> None:
        self.ingest = ingest
        self.day = dt.date(2026, 3, 2)
        self.seq = 0
        self.rules = AttendanceRules(
            AttendanceConfig(sessions=(MORNING,)), ZONE, 120, clock.ms,
            listeners=[Enqueuer(["edfi"], clock.ms)])

    @staticmethod
    def fill(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO readers (reader_id, name, gate, status, created_ms) "
                     "VALUES (1, 'Cổng chính', 'main', 'active', 0)")
        conn.execute("INSERT INTO reader_keys (key_id, reader_id, sealed_key, state, "
                     "created_ms) VALUES (1, 1, x'00', 'active', 0)")
        conn.execute("INSERT INTO classes VALUES ('6A', 'Lớp 6A', '6', 'test')")
        for n, sid in enumerate(ROSTER):
            conn.execute("INSERT INTO students (student_id, full_name, class_id, active, "
                         "source, updated_ms) VALUES (?, ?, '6A', 1, 'test', 0)",
                         (sid, f"Học sinh {n}"))
            conn.execute("INSERT INTO card_numbers VALUES (?, ?, 'test', 0)",
                         (f"0A0B{n:04X}", sid))

    async def taps(self, *taps: tuple[int, str]) -> None:
        """(student index, local time) taps, stored and applied in one transaction."""
        def apply(conn: sqlite3.Connection) -> None:
            scans = []
            for n, hhmm in taps:
                self.seq += 1
                at_ms = _local(self.day, hhmm)
                card = f"iso14443a:0A0B{n:04X}"
                cursor = conn.execute(
                    "INSERT INTO scans (reader_id, boot, seq, card, reader_time_ms, "
                    "clock_synced, ticks_ms, received_ms, at_ms, time_source, key_id, raw) "
                    "VALUES (1, 1, ?, ?, ?, 1, 0, ?, ?, 'reader', 1, x'00')",
                    (self.seq, card, at_ms, at_ms, at_ms))
                scans.append(StoredScan(int(cursor.lastrowid or 0), 1, "main", card, at_ms,
                                        "reader"))
            self.rules.on_scans(conn, scans)

        await self.ingest.run_in_transaction(apply)

    async def close_session(self) -> int:
        return await self.ingest.run_in_transaction(
            lambda conn: self.rules.close_due_sessions(conn, _local(self.day, "09:05")))


def _outbox_states(conn: sqlite3.Connection) -> dict[str, int]:
    return {str(r[0]): int(r[1]) for r in conn.execute(
        "SELECT state, COUNT(*) FROM outbox GROUP BY state")}


def _expected_upstream(conn: sqlite3.Connection) -> dict[tuple[Any, ...], str | None]:
    """The live events' natural keys in Ed-Fi, with their arrival times."""
    codes = {"check_in": "In Attendance", "late": "Tardy", "absent": "Unexcused Absence"}
    out: dict[tuple[Any, ...], str | None] = {}
    for kind, student, day, at_ms in conn.execute(
            "SELECT kind, student_id, school_date, at_ms FROM attendance_events "
            "WHERE voided_ms IS NULL AND kind IN ('check_in', 'late', 'absent')"):
        key = (descriptor(codes[kind]), day, 255901001, 2026, SESSION, student)
        out[key] = None if kind == "absent" else from_ms(at_ms, ZONE).strftime("%H:%M:%S")
    return out


async def test_through_the_outbox_every_event_exactly_once_while_the_peer_flaps(
        tmp_path: Path, peer: EdFiPeer, secret_file: Path, clock: FakeTime) -> None:
    peer.token_ttl_s = 600  # on the shared fake clock: retries and outages outlive tokens
    path = tmp_path / "gateway.db"
    conn = db.connect(path)
    School.fill(conn)
    read_conn = db.connect(path, migrate=False)
    ingest = Ingest(conn, StaticKeyRing({}), clock=clock.ms)
    ingest.start()
    school = School(path, ingest, clock)
    adapter = build_adapter(_target(peer.base_url, secret_file, timeout_s=0.25),
                            clock=clock.ms, timezone=ZONE)
    service = OutboxService(ingest, [adapter], read_conn, clock=clock.ms, policy=POLICY)
    await service.start()
    delivery = service.deliveries["edfi"]

    async def step() -> None:
        await delivery.fill()
        await delivery.wait_idle()

    async def drain() -> None:
        for _ in range(60):
            await step()
            if _outbox_states(read_conn).get("pending", 0) == 0:
                return
            clock.advance(150)  # past any backoff, Retry-After or breaker cool-down
        raise AssertionError(f"outbox not drained: {_outbox_states(read_conn)}")

    try:
        # 07:00-07:40: arrivals, delivered while the peer fails now and then
        peer.inject(Fault(status=500), times=2)
        await school.taps(*((n, f"07:0{n % 10}:{n:02d}") for n in range(6)))
        await step()
        peer.inject(Fault(status=429, retry_after="20"))
        await school.taps(*((n, f"07:1{n % 5}:00") for n in range(6, 12)))
        await step()
        peer.inject(Fault(kind="drop"))
        await school.taps(*((n, f"07:{16 + n}:30") for n in range(12, 20)))
        await step()
        peer.expire_tokens()
        peer.inject(Fault(kind="slow", delay_s=0.4))  # stored upstream, the answer is lost
        await step()
        await drain()
        assert len(peer.records) == 20 + 8
        # the upstream is down for two hours while a reader's backlog arrives: earlier taps
        # revise four check-ins and void their 'late'; one student leaves (check-out)
        await peer.close()
        await school.taps(*((n, "07:05:00") for n in range(12, 16)), (2, "11:40:00"))
        for _ in range(8):
            clock.advance(900)
            await step()
        assert delivery.breaker.state == "open"
        await peer.start()  # same port, same records
        peer.inject(Fault(status=503, retry_after="5", endpoint="token"))
        await drain()
        # 09:05: the session closes; absences for the ten who never came ...
        assert await school.close_session() == 10
        peer.inject(Fault(status=500), times=1)
        await drain()
        # ... two of whom tapped at 07:10 on a reader whose backlog comes in only now
        await school.taps((20, "07:10:00"), (21, "07:10:30"))
        await drain()
    finally:
        await delivery.wait_idle()
        await service.close()
        await ingest.close()

    states = _outbox_states(read_conn)
    assert states.get("pending", 0) == 0 and states.get("parked", 0) == 0, states
    expected = _expected_upstream(read_conn)
    live = {k: r.get("arrivalTime") for k, r in peer.by_key().items()}
    assert live == expected
    assert len(peer.records) == len(expected) == 22 + 4 + 8  # check-ins, lates, absences
    # the backlog's revisions and voids reached Ed-Fi
    assert {s for (c, *_r, s) in live if c == descriptor("Tardy")} == set(STUDENTS[16:20])
    assert {s for (c, *_r, s) in live if c == descriptor("Unexcused Absence")} \
        == set(STUDENTS[22:30])
    assert live[(descriptor("In Attendance"), "2026-03-02", 255901001, 2026, SESSION,
                 STUDENTS[12])] == "07:05:00"
    assert peer.count("DELETE", status=204) == 4 + 2  # four Tardy, two absences
    # every fault was met: 500s, 429, a drop, expired tokens, a lost answer, the outage
    assert peer.pending_faults == 0
    assert {r.fault for r in peer.requests} >= {"status", "drop", "slow"}
    assert peer.count("POST", RESOURCE_PATH, status=401) >= 1
    assert peer.count("POST", RESOURCE_PATH, status=200) >= 1  # the lost answer, re-sent
    read_conn.close()
    conn.close()


# --- an answer too large to read (docs/SECURITY.md, actor 6) ---------------------------------

TOKEN = {"access_token": "token-for-tests", "expires_in": 300, "token_type": "bearer"}


async def test_an_oversized_answer_takes_the_target_down_and_nothing_is_lost(
        tmp_path: Path, secret_file: Path, clock: FakeTime) -> None:
    """A 32 MiB answer (chunked, no Content-Length) is read to 1 MiB, no further: the target is
    down, the event stays pending, and goes once when the upstream answers sanely again."""
    path = tmp_path / "gateway.db"
    conn = db.connect(path)
    School.fill(conn)
    read_conn = db.connect(path, migrate=False)
    ingest = Ingest(conn, StaticKeyRing({}), clock=clock.ms)
    ingest.start()
    school = School(path, ingest, clock)
    hostile = await OversizedPeer(canned={TOKEN_PATH: TOKEN}).start()
    adapter = build_adapter(_target(hostile.base_url, secret_file), clock=clock.ms,
                            timezone=ZONE)
    service = OutboxService(ingest, [adapter], read_conn, clock=clock.ms, policy=POLICY)
    await service.start()
    delivery = service.deliveries["edfi"]
    try:
        # the data endpoint's answer is too large
        with pytest.raises(TargetDown, match=r"POST failed: AnswerTooLarge: .*1048576"):
            await adapter.deliver([item()])
        # so is the token endpoint's
        hostile.canned.clear()
        fresh = build(_target(hostile.base_url, secret_file), clock=clock.ms, timezone=ZONE)
        try:
            with pytest.raises(TargetDown, match="token endpoint failed: AnswerTooLarge"):
                await fresh.deliver([item()])
        finally:
            await fresh.close()
        # through the outbox: the tap's event is retried later, not lost and not parked
        hostile.canned[TOKEN_PATH] = TOKEN
        await school.taps((0, "07:05:00"))
        await delivery.fill()
        await delivery.wait_idle()
        (pending,) = outbox.items(read_conn, "edfi")
        assert pending.attempts == 1 and "AnswerTooLarge" in (pending.last_error or "")
        assert _outbox_states(read_conn) == {"pending": 1}
        assert hostile.bodies == 3 and hostile.unread()
        # the upstream comes back sane on the same address: the event goes, once
        await hostile.close()
        async with EdFiPeer(students=set(STUDENTS), clock=clock.s) as peer:
            peer.port = hostile.port
            await peer.close()
            await peer.start()
            clock.advance(60)  # past the retry's backoff
            await delivery.fill()
            await delivery.wait_idle()
            assert _outbox_states(read_conn) == {"delivered": 1}
            assert len(peer.records) == 1
    finally:
        await delivery.wait_idle()
        await service.close()
        await ingest.close()
        await hostile.close()
        read_conn.close()
        conn.close()


@pytest.mark.parametrize("expires_in", [float("inf"), float("nan"), -5, 10**12])
async def test_a_token_with_an_unusable_lifetime_is_refused(
        secret_file: Path, clock: FakeTime, expires_in: float) -> None:
    """Found by fuzzing: an ``expires_in`` of infinity made ``int(expires_in * 1000)`` raise
    out of the delivery; any lifetime that is not a positive number of seconds is refused."""
    hostile = await OversizedPeer(canned={TOKEN_PATH: {"access_token": "t",
                                                       "expires_in": expires_in}}).start()
    adapter = build(_target(hostile.base_url, secret_file), clock=clock.ms, timezone=ZONE)
    try:
        with pytest.raises(TargetDown, match="unusable token"):
            await adapter.deliver([item()])
    finally:
        await adapter.close()
        await hostile.close()
