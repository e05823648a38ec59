"""The demo school generator (sim/school.py): deterministic, unique identities, a sheet the
gateway's roster import takes whole with every Vietnamese letter intact, a morning whose late
and absent students are what the plan says; and the demo's gateway configuration."""

from __future__ import annotations

import datetime as dt
import unicodedata
from pathlib import Path

import pytest

from gateway import db, roster
from gateway.cards import card_id, student_for_card
from gateway.config import load_config
from sim.demo import Peers, Timeline, morning_zone, write_config
from sim.peers.edfi import EdFiPeer
from sim.peers.webhook import WebhookPeer
from sim.peers.zalo import ZaloPeer
from sim.school import (
    FAMILY_NAMES,
    LATE_AFTER_S,
    generate_school,
    plan_morning,
    unknown_card,
)

DIACRITICS = set("ăâđêôơưàáảãạằắẳẵặầấẩẫậèéẻẽẹềếểễệìíỉĩịòóỏõọồốổỗộờớởỡợùúủũụừứửữựỳýỷỹỵ")


def test_the_same_seed_makes_the_same_school_and_another_seed_another() -> None:
    assert generate_school(7, 10) == generate_school(7, 10)
    assert plan_morning(generate_school(7, 10)) == plan_morning(generate_school(7, 10))
    other = generate_school(8, 10)
    assert [s.full_name for s in other.students] != \
        [s.full_name for s in generate_school(7, 10).students]


def test_identities_are_unique_and_well_formed() -> None:
    school = generate_school(3, 30)
    students = school.students
    assert len(students) == 12 * 30
    assert school.classes == ("6A1", "6A2", "6A3", "7A1", "7A2", "7A3", "8A1", "8A2", "8A3",
                              "9A1", "9A2", "9A3")
    ids = [s.student_id for s in students]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 10 and i.isdecimal() for i in ids)
    assert len({s.card for s in students}) == len(students)
    assert len({s.card_number for s in students}) == len(students)
    phones = [g.phone for s in students for g in s.guardians]
    assert len(set(phones)) == len(phones)
    assert all(p.startswith("84") and len(p) == 11 and p.isdecimal() for p in phones)
    assert all(1 <= len(s.guardians) <= 2 for s in students)
    families = {name for name, _ in FAMILY_NAMES}
    for s in students:
        family, middle, given = s.full_name.split(" ")
        assert family in families and middle and given
        assert unicodedata.is_normalized("NFC", s.full_name)
    # realistic, not uniform: Nguyễn is the most common family name
    counts = {f: sum(s.full_name.startswith(f + " ") for s in students) for f in families}
    assert max(counts, key=lambda f: counts[f]) == "Nguyễn"
    consent = [g.consent for s in students for g in s.guardians]
    assert 0.7 < sum(consent) / len(consent) < 0.95


def test_a_tiny_school_still_has_guardians_with_and_without_consent() -> None:
    school = generate_school(1, 1)
    assert school.guardian_phones(consent=True) and school.guardian_phones(consent=False)


def test_the_sheet_imports_whole_with_diacritics_cards_guardians_and_consent(
        tmp_path: Path) -> None:
    school = generate_school(5, 8)
    sheet = school.write_sheet(tmp_path / "hoc-sinh.csv")
    conn = db.connect(tmp_path / "gateway.db")
    try:
        result = roster.import_sheet(conn, sheet)
        assert result.errors == []
        counts = result.counts()
        guardians = sum(len(s.guardians) for s in school.students)
        assert counts["students"]["added"] == counts["cards"]["added"] == len(school.students)
        assert counts["guardians"]["added"] == guardians
        assert counts["classes"]["added"] == 12
        names = dict(conn.execute("SELECT student_id, full_name FROM students"))
        assert names == {s.student_id: s.full_name for s in school.students}
        letters = {c for name in names.values() for c in name.lower()}
        assert len(letters & DIACRITICS) > 10, "Vietnamese letters survived the import"
        stored = {(r[0], r[1], r[2], bool(r[3])) for r in conn.execute(
            "SELECT student_id, name, phone, consent FROM guardians")}
        assert stored == {(s.student_id, g.name, g.phone, g.consent)
                          for s in school.students for g in s.guardians}
        for s in school.students:  # a tap of the card finds its student
            assert student_for_card(conn, card_id(*s.card)) == s.student_id
        assert student_for_card(conn, card_id(*unknown_card(school))) is None
        again = roster.import_sheet(conn, sheet)
        assert again.counts()["students"]["unchanged"] == len(school.students)
    finally:
        conn.close()


def test_the_morning_has_a_wave_late_students_absences_and_repeats() -> None:
    school = generate_school(2025, 30)
    morning = plan_morning(school)
    arrived = [a.student.student_id for a in morning.arrivals]
    absent = [s.student_id for s in morning.absent]
    assert sorted(arrived + absent) == sorted(s.student_id for s in school.students)
    assert [a.at_s for a in morning.arrivals] == sorted(a.at_s for a in morning.arrivals)
    late = morning.late
    assert 0.04 < len(late) / len(school.students) < 0.08 and absent
    assert all(a.at_s > LATE_AFTER_S + 60 for a in late)
    on_time = [a.at_s for a in morning.arrivals if not a.late]
    assert all(0 < t < LATE_AFTER_S - 60 for t in on_time)
    # bell-shaped: most arrive within a few minutes of the peak at 06:48, few at the edges
    near_peak = sum(abs(t - 18 * 60) < 6 * 60 for t in on_time) / len(on_time)
    assert 0.6 < near_peak < 0.8
    assert {a.repeat for a in morning.arrivals} == {None, "same_reader", "other_reader"}
    assert {a.gate for a in morning.arrivals} == {0, 1}


def test_a_tiny_morning_still_has_a_late_and_an_absent_student() -> None:
    morning = plan_morning(generate_school(9, 1))
    assert morning.late and morning.absent


@pytest.mark.parametrize("speed", [1, 7, 20, 300, 1800])
def test_the_demo_config_puts_the_session_on_the_real_clock(tmp_path: Path,
                                                            speed: float) -> None:
    now = 1_790_000_000.0
    zone = morning_zone(now)
    assert dt.datetime.fromtimestamp(now, zone).hour == 6
    timeline = Timeline.make(int(now) + 3, speed, zone)
    peers = Peers(EdFiPeer(), ZaloPeer(), WebhookPeer(secrets=["whsec_" + "A" * 32]))
    config = load_config(write_config(tmp_path, timeline, 1883, 9108, 8080, peers, "pw", 2026))
    (session,) = config.attendance.sessions
    day = dt.datetime.fromtimestamp(timeline.start, zone).date()

    def at(t: dt.time) -> float:
        return dt.datetime.combine(day, t, tzinfo=zone).timestamp()

    assert at(session.start) == timeline.start
    assert at(session.late_after) == timeline.real(LATE_AFTER_S)  # the bell is exact
    assert at(session.start) < at(session.late_after) < at(session.absent_at) \
        < at(session.end)
    assert config.timezone == zone and config.notify.enabled
    assert [t.type for t in config.forward] == ["edfi"]
    assert {c.type for c in config.notify.channels} == {"zalo", "webhook"}
    assert config.dashboard.enabled and config.dashboard.listen == "127.0.0.1:8080"
    yesterday = day - dt.timedelta(days=1)
    assert config.attendance.holidays == {yesterday}
