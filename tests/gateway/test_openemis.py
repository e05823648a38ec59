"""The OpenEMIS adapter against a real OpenEMIS-like HTTP peer (tests/peers/openemis.py).

One fake clock serves both sides (the adapter reads Unix ms, the peer seconds), so JWTs expire
without sleeping.
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import pytest

from gateway.config import ConfigError, load_config
from gateway.forwarders import AttendanceItem, DeliveryResult, EventKind, ForwardTarget, TargetDown
from gateway.forwarders.openemis import OpenEmisAdapter, build
from gateway.rules import event_key, to_ms
from tests.gateway.oversized import OversizedPeer
from tests.log_text import logged_text
from tests.peers.openemis import ABSENCES_PATH, LOGIN_PATH, MARKED_PATH, Fault, OpenEmisPeer

ZONE = zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh")
STUDENTS = {f"01{n:08d}": 5000 + n for n in range(10)}  # Ministry id -> OpenEMIS student_id
S0, S1, S2 = list(STUDENTS)[:3]
CLASSES = {"6A": (512, 61), "7B": (513, 71)}  # our class -> (institution_class_id, grade id)
DAY = "2026-03-02"
Change = Literal["created", "revised", "voided"]


class FakeTime:
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
async def peer(clock: FakeTime) -> AsyncIterator[OpenEmisPeer]:
    server = OpenEmisPeer(students=set(STUDENTS.values()) - {STUDENTS[S2]},
                          classes=dict(CLASSES.values()), clock=clock.s)
    async with server:
        yield server


def _secret(path: Path, text: str) -> str:
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    students = tmp_path / "openemis-students.csv"
    students.write_text("student_id,openemis_student_id,name\n" + "".join(
        f"{ours},{theirs},x\n" for ours, theirs in STUDENTS.items() if ours != S1),
        encoding="utf-8-sig")
    return {"password_file": _secret(tmp_path / "oe.password", "pa55-for-tests"),
            "api_key_file": _secret(tmp_path / "oe.apikey", "api-key-for-tests"),
            "students_file": str(students)}


def settings(url: str, files: dict[str, str], **overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "base_url": url, "username": "gateway-api", **files,
        "institution_id": 1001, "academic_period_id": 32,
        "classes": {name: {"institution_class_id": ids[0], "education_grade_id": ids[1]}
                    for name, ids in CLASSES.items()},
        "period": {"morning": 1, "afternoon": 2}, "timeout_s": 2,
    }
    out.update(overrides)
    return {k: v for k, v in out.items() if v is not None}


AdapterFactory = Callable[..., OpenEmisAdapter]


@pytest.fixture
async def make(peer: OpenEmisPeer, files: dict[str, str], clock: FakeTime
               ) -> AsyncIterator[AdapterFactory]:
    made: list[OpenEmisAdapter] = []

    def factory(**overrides: Any) -> OpenEmisAdapter:
        target = ForwardTarget("oe", "openemis", settings(peer.base_url, files, **overrides))
        adapter = build(target, clock=clock.ms)
        made.append(adapter)
        return adapter

    yield factory
    for adapter in made:
        await adapter.close()


_ids = iter(range(1, 1_000_000))


def item(student: str | None = S0, kind: EventKind = "late", *, change: Change = "created",
         revision: int = 0, session: str = "morning", class_id: str | None = "6A",
         at: str = "07:21:00") -> AttendanceItem:
    at_ms = to_ms(dt.datetime.combine(dt.date.fromisoformat(DAY), dt.time.fromisoformat(at),
                                      tzinfo=ZONE))
    key = event_key(kind, student or "em:0011223344", DAY, session)
    return AttendanceItem(item_id=next(_ids), idempotency_key=f"{key}.{revision}",
                          event_key=key, revision=revision, change=change, kind=kind,
                          school_date=DAY, session=session, at_ms=at_ms, gate="main",
                          student_id=student, class_id=class_id, attempts=0)


def outcomes(results: list[DeliveryResult]) -> list[str]:
    return [r.outcome for r in results]


# --- what is written -------------------------------------------------------------------------

async def test_late_and_absent_become_absence_rows_with_the_configured_ids(
        peer: OpenEmisPeer, make: AdapterFactory) -> None:
    adapter = make()
    items = [item(S0, "late"), item(S0, "check_in"), item("0100000003", "absent"),
             item("0100000004", "late", session="afternoon", class_id="7B"),
             item(S0, "check_out"), item(None, "unknown_card")]
    results = await adapter.deliver(items)
    assert [r.item_id for r in results] == [i.item_id for i in items]
    assert outcomes(results) == ["delivered"] * 6
    assert all(r.reason.startswith("not sent") for r in results[4:])
    assert results[1].reason.startswith("not sent")
    assert peer.rows() == {(5000, DAY, 1): 3, (5003, DAY, 1): 2, (5004, DAY, 2): 3}
    row = peer.absences[(5004, 1001, 32, 513, DAY, 2, 0)]
    assert row == {"student_id": 5004, "institution_id": 1001, "academic_period_id": 32,
                   "institution_class_id": 513, "education_grade_id": 71, "date": DAY,
                   "period": 2, "subject_id": 0, "absence_type_id": 3}
    # Each class's day and period marked once, by whatever reached it first (here 6A's
    # check-in and late share a mark).
    assert sorted(peer.marked) == [(1001, 32, 512, DAY, 1, 0), (1001, 32, 513, DAY, 2, 0)]
    assert peer.count("POST", MARKED_PATH) == 2
    assert peer.marked[(1001, 32, 512, DAY, 1, 0)]["no_scheduled_class"] == 0
    assert adapter.logins == 1


async def test_absence_type_ids_period_and_subject_are_settings(
        peer: OpenEmisPeer, make: AdapterFactory) -> None:
    adapter = make(absence_types={"late": 1, "absent": 1}, period=3, subject_id=0,
                   mark_days=False)
    results = await adapter.deliver([item(S0, "late"), item("0100000003", "absent",
                                                            session="afternoon")])
    assert outcomes(results) == ["delivered", "delivered"]
    assert peer.rows() == {(5000, DAY, 3): 1, (5003, DAY, 3): 1}
    assert peer.marked == {} and peer.count("POST", MARKED_PATH) == 0


async def test_a_resend_updates_the_one_row(peer: OpenEmisPeer, make: AdapterFactory) -> None:
    adapter = make()
    late = item(S0, "late")
    assert outcomes(await adapter.deliver([late])) == ["delivered"]
    again = await adapter.deliver([late])  # the outbox retrying after a crash
    assert outcomes(again) == ["delivered"] and again[0].reason == "updated in place"
    assert len(peer.absences) == 1 and peer.count("PUT") == 1


async def test_same_student_ids(peer: OpenEmisPeer, make: AdapterFactory) -> None:
    adapter = make(students="same", students_file=None)
    results = await adapter.deliver([item("5001", "absent"), item("01-ABC", "late")])
    assert outcomes(results) == ["delivered", "parked"]
    assert "not an OpenEMIS student_id" in results[1].reason
    assert peer.rows() == {(5001, DAY, 1): 2}


# --- what is parked --------------------------------------------------------------------------

async def test_unmapped_students_classes_and_sessions_are_parked_without_requests(
        peer: OpenEmisPeer, make: AdapterFactory) -> None:
    adapter = make()
    results = await adapter.deliver([
        item(S1, "late"),                         # not in the student map
        item(S0, "absent", class_id="9Z"),        # class not mapped
        item("0100000003", "absent", class_id=None),  # no class in the roster
        item("0100000004", "late", session="evening"),  # no period for this session
        item(S0, "check_in", class_id="9Z"),      # nothing to send, nothing to mark
    ])
    assert outcomes(results) == ["parked"] * 4 + ["delivered"]
    assert "student map" in results[0].reason and S1 not in results[0].reason
    assert "class '9Z'" in results[1].reason and "forward.oe.classes" in results[1].reason
    assert "no class" in results[2].reason
    assert "session 'evening'" in results[3].reason
    assert peer.requests == []  # not even a login


async def test_a_student_openemis_does_not_know_is_parked_without_its_id(
        peer: OpenEmisPeer, make: AdapterFactory) -> None:
    adapter = make()
    (result,) = await adapter.deliver([item(S2, "absent")])  # mapped, but unknown upstream
    assert result.outcome == "parked"
    assert result.reason.startswith("refused by OpenEMIS (422)")
    assert "fields: student_id" in result.reason
    assert S2 not in result.reason and str(STUDENTS[S2]) not in result.reason
    assert "<student>" in result.reason


async def test_a_fixed_student_map_is_read_again(
        peer: OpenEmisPeer, make: AdapterFactory, files: dict[str, str]) -> None:
    adapter = make()
    parked = item(S1, "late")
    assert outcomes(await adapter.deliver([parked])) == ["parked"]
    path = Path(files["students_file"])
    path.write_text(path.read_text(encoding="utf-8-sig") + f"{S1},{STUDENTS[S1]},x\n",
                    encoding="utf-8")
    assert outcomes(await adapter.deliver([parked])) == ["delivered"]  # the operator's retry
    path.write_text("broken\n", encoding="utf-8")  # a bad edit keeps the last good map
    assert outcomes(await adapter.deliver([item(S1, "absent", session="afternoon")])) == [
        "delivered"]


# --- voided events ---------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["void_first", "late_first"])
async def test_an_absence_voided_by_a_late_arrival_leaves_the_late_row(
        peer: OpenEmisPeer, make: AdapterFactory, order: str) -> None:
    adapter = make()
    absent = item(S0, "absent")
    assert outcomes(await adapter.deliver([absent])) == ["delivered"]
    assert peer.rows() == {(5000, DAY, 1): 2}
    void = item(S0, "absent", change="voided", revision=1)
    late = item(S0, "late", at="08:41:00")
    batch = [void, late] if order == "void_first" else [late, void]
    assert outcomes(await adapter.deliver(batch)) == ["delivered", "delivered"]
    assert peer.rows() == {(5000, DAY, 1): 3}
    # Later, an on-time tap from a backlog voids the late as well: the row goes.
    assert outcomes(await adapter.deliver([item(S0, "late", change="voided", revision=1)])) \
        == ["delivered"]
    assert peer.rows() == {}
    (gone,) = await adapter.deliver([item(S0, "late", change="voided", revision=2)])
    assert gone.outcome == "delivered" and "no row" in gone.reason


async def test_only_the_newest_version_of_an_event_in_a_batch_is_sent(
        peer: OpenEmisPeer, make: AdapterFactory) -> None:
    adapter = make()
    created = item(S0, "absent")
    voided = item(S0, "absent", change="voided", revision=1)
    results = await adapter.deliver([created, voided])
    assert outcomes(results) == ["delivered", "delivered"]
    assert "superseded by revision 1" in results[0].reason
    assert peer.count("POST") == 0 and peer.rows() == {}


# --- login and the JWT -----------------------------------------------------------------------

async def test_the_jwt_is_cached_and_renewed_before_it_expires(
        peer: OpenEmisPeer, make: AdapterFactory, clock: FakeTime) -> None:
    peer.token_ttl_s = 300
    adapter = make()
    await adapter.deliver([item(S0, "late")])
    await adapter.deliver([item("0100000003", "late")])
    assert adapter.logins == 1 and peer.tokens_issued == 1
    login = next(r for r in peer.requests if r.path == LOGIN_PATH)
    assert login.body == {"username": "gateway-api", "password": "pa55-for-tests",
                          "api_key": "api-key-for-tests"}
    clock.advance(290)  # within the refresh margin of exp: a new login, before any 401
    await adapter.deliver([item("0100000004", "late")])
    assert adapter.logins == 2
    assert all(r.status != 401 for r in peer.requests)


async def test_a_token_refused_before_its_exp_logs_in_again_once(
        peer: OpenEmisPeer, make: AdapterFactory, clock: FakeTime) -> None:
    adapter = make()
    await adapter.deliver([item(S0, "late")])
    clock.advance(1)
    peer.revoke_tokens()
    results = await adapter.deliver([item("0100000003", "absent")])
    assert outcomes(results) == ["delivered"]
    assert adapter.logins == 2 and peer.count("POST", ABSENCES_PATH, 401) == 1
    peer.inject(Fault(status=401), times=2)  # refused with the fresh token as well
    with pytest.raises(TargetDown, match="fresh token"):
        await adapter.deliver([item("0100000004", "absent")])


async def test_refused_credentials_take_the_target_down(
        peer: OpenEmisPeer, make: AdapterFactory) -> None:
    peer.api_key = "another"
    adapter = make()
    with pytest.raises(TargetDown, match="refused the login") as caught:
        await adapter.deliver([item(S0, "late")])
    assert "api-key-for-tests" not in caught.value.reason


# --- throttling and failures -----------------------------------------------------------------

@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_holds_back_the_rest_of_the_batch(
        peer: OpenEmisPeer, make: AdapterFactory, status: int) -> None:
    adapter = make(parallel=1, mark_days=False)
    await adapter.deliver([item(S0, "late")])  # logged in
    peer.inject(Fault(status=status, retry_after="7"))
    items = [item("0100000003", "late"), item("0100000004", "late"), item(S0, "check_in")]
    results = await adapter.deliver(items)
    assert outcomes(results) == ["retry"] * 3
    assert {r.retry_after_s for r in results} == {7.0}
    assert peer.count("POST") == 2  # the first late and the throttled one; then nothing
    assert outcomes(await adapter.deliver(items)) == ["delivered"] * 3


async def test_server_errors_timeouts_and_refused_connections_take_the_target_down(
        peer: OpenEmisPeer, make: AdapterFactory) -> None:
    adapter = make(timeout_s=0.3)
    await adapter.deliver([item(S0, "late")])
    peer.inject(Fault(status=500))
    with pytest.raises(TargetDown, match="answered 500"):
        await adapter.deliver([item("0100000003", "late")])
    peer.inject(Fault(kind="slow", delay_s=1.0))
    with pytest.raises(TargetDown, match="timed out"):
        await adapter.deliver([item("0100000004", "late")])
    peer.inject(Fault(kind="drop"))
    with pytest.raises(TargetDown, match="failed"):
        await adapter.deliver([item("0100000005", "late")])
    await peer.close()
    with pytest.raises(TargetDown):
        await adapter.deliver([item("0100000006", "late")])


async def test_an_oversized_answer_takes_the_target_down(
        files: dict[str, str], clock: FakeTime) -> None:
    """The login's or the data request's answer is read to 1 MiB and no further: TargetDown,
    so the outbox keeps the items and retries them later."""
    login = {"data": {"token": "eyJhbGciOiJub25lIn0.e30.x"}}
    async with OversizedPeer(canned={LOGIN_PATH: login}) as hostile:
        adapter = build(ForwardTarget("oe", "openemis", settings(hostile.base_url, files)),
                        clock=clock.ms)
        try:
            with pytest.raises(TargetDown, match="POST failed: AnswerTooLarge"):
                await adapter.deliver([item(S0, "late")])
            hostile.canned.clear()
            fresh = build(ForwardTarget("oe", "openemis", settings(hostile.base_url, files)),
                          clock=clock.ms)
            try:
                with pytest.raises(TargetDown, match="login failed: AnswerTooLarge"):
                    await fresh.deliver([item(S0, "late")])
            finally:
                await fresh.close()
        finally:
            await adapter.close()
    assert hostile.bodies == 2 and hostile.unread()


async def test_login_server_errors_take_the_target_down(
        peer: OpenEmisPeer, make: AdapterFactory) -> None:
    peer.inject(Fault(status=503, retry_after="30", endpoint="login"))
    adapter = make()
    with pytest.raises(TargetDown) as caught:
        await adapter.deliver([item(S0, "late")])
    assert caught.value.retry_after_s == 30.0
    peer.inject(Fault(status=500, endpoint="login"))
    with pytest.raises(TargetDown, match="login answered 500"):
        await adapter.deliver([item(S0, "late")])


async def test_nothing_secret_or_personal_reaches_the_logs(
        peer: OpenEmisPeer, make: AdapterFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    adapter = make()
    await adapter.deliver([item(S0, "late"), item(S1, "absent"), item(S2, "absent")])
    peer.revoke_tokens()
    peer.inject(Fault(status=500))
    with pytest.raises(TargetDown):
        await adapter.deliver([item("0100000003", "late")])
    # Ours, and httpx's request lines (URLs carry the row's key); not httpcore's socket chatter,
    # whose ports and addresses can contain any digits.
    text = logged_text(r for r in caplog.records
                       if r.name.startswith("gateway") or r.name == "httpx")
    assert "target down" in text
    for secret in ("pa55-for-tests", "api-key-for-tests", *STUDENTS, *map(str,
                                                                           STUDENTS.values())):
        assert secret not in text
    assert "Bearer" not in text and "eyJ" not in text


# --- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "key", "message"), [
    ({"base_url": None}, "forward.oe.base_url", "required"),
    ({"base_url": "http://emis.example.org"}, "forward.oe.base_url", "https"),
    ({"institution_id": "1001"}, "forward.oe.institution_id", "integer"),
    ({"academic_period_id": 0}, "forward.oe.academic_period_id", "between"),
    ({"classes": None}, "forward.oe.classes", "one of them"),
    ({"classes": {"6A": {"institution_class_id": 512}}},
     "forward.oe.classes.6A.education_grade_id", "required"),
    ({"students": "same"}, "forward.oe.students", "one of them"),
    ({"students": "mapped", "students_file": None}, "forward.oe.students", "same"),
    ({"absence_types": {"late": 3, "excused": 1}}, "forward.oe.absence_types.excused",
     "unknown"),
    ({"period": {"morning": "1"}}, "forward.oe.period.morning", "integer"),
    ({"subject_id": -1}, "forward.oe.subject_id", "between"),
    ({"login_path": "api/login"}, "forward.oe.login_path", "starting with '/'"),
    ({"pasword_file": "x"}, "forward.oe.pasword_file", "unknown key"),
])
def test_bad_settings_name_their_key(files: dict[str, str], overrides: dict[str, Any],
                                     key: str, message: str) -> None:
    target = ForwardTarget("oe", "openemis",
                           settings("https://emis.example.org", files, **overrides))
    with pytest.raises(ConfigError, match=message) as caught:
        build(target, clock=lambda: 0)
    assert caught.value.key == key


def test_secret_and_map_files_are_checked(files: dict[str, str], tmp_path: Path) -> None:
    Path(files["password_file"]).chmod(0o644)
    target = ForwardTarget("oe", "openemis", settings("https://emis.example.org", files))
    with pytest.raises(ConfigError, match="chmod 600") as caught:
        build(target, clock=lambda: 0)
    assert caught.value.key == "forward.oe.password_file"
    Path(files["password_file"]).chmod(0o600)
    bad = tmp_path / "bad.csv"
    bad.write_text(f"student_id,openemis_student_id\n{S0},5000\n{S0},5001\n", encoding="utf-8")
    target = ForwardTarget("oe", "openemis", settings("https://emis.example.org", files,
                                                      students_file=str(bad)))
    with pytest.raises(ConfigError, match=r"bad.csv:3: a student is listed twice") as caught:
        build(target, clock=lambda: 0)
    assert S0 not in str(caught.value)


async def test_a_forward_table_in_the_gateway_config(
        peer: OpenEmisPeer, files: dict[str, str], tmp_path: Path, clock: FakeTime) -> None:
    classes = tmp_path / "classes.csv"
    classes.write_text("class_id,institution_class_id,education_grade_id\n6A,512,61\n",
                       encoding="utf-8")
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[gateway]
school = "thcs-nguyen-du"

[[forward]]
name = "openemis"
type = "openemis"
max_batch = 20
base_url = "{peer.base_url}"
username = "gateway-api"
password_file = "oe.password"
api_key_file = "oe.apikey"
institution_id = 1001
academic_period_id = 32
classes_file = "classes.csv"
students_file = "openemis-students.csv"
period = {{ morning = 1, afternoon = 2 }}
""", encoding="utf-8")
    (target,) = load_config(config).forward
    adapter = build(target, clock=clock.ms, config_path=config)
    try:
        assert adapter.max_batch == 20
        assert outcomes(await adapter.deliver([item(S0, "absent")])) == ["delivered"]
        assert peer.rows() == {(5000, DAY, 1): 2}
    finally:
        await adapter.close()
