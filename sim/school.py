"""A generated demo school and its morning at the gate, the same for the same seed.

``generate_school`` makes a lower-secondary school (grades 6-9, classes ``6A1``...``9A3``) whose
students have Vietnamese names (family, middle and given names drawn with realistic weights),
10-digit Ministry student IDs, a MIFARE card each (4-byte UIDs printed as the 10-digit reversed
decimal many card printers use, 7-byte UIDs printed in hex) and one or two guardians with a
Vietnamese mobile number and a consent answer (most yes, some no). ``School.write_sheet`` writes
it as the school office's sheet (docs/roster.md): a title row, the header, one row per guardian,
columns the gateway ignores (STT, date of birth), phone numbers as people type them.

``plan_morning`` is the script of one morning in *school seconds* after the gates open: a
bell-shaped wave of arrivals that peaks before the bell, a few late students, a few who never
come, repeated taps (again at the same reader, or at the gate's other reader), the gate each
student uses. ``sim/demo.py`` plays it on simulated readers.
"""

from __future__ import annotations

import csv
import datetime as dt
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.cards import card_id, printed_numbers
from protocol import card
from protocol.cardforms import printed_forms
from sim.hardware import Card

FAMILY_NAMES: tuple[tuple[str, int], ...] = (  # (name, weight: rough share in percent x 10)
    ("Nguyễn", 380), ("Trần", 110), ("Lê", 95), ("Phạm", 70), ("Hoàng", 30), ("Huỳnh", 21),
    ("Phan", 45), ("Vũ", 30), ("Võ", 25), ("Đặng", 21), ("Bùi", 20), ("Đỗ", 14), ("Hồ", 13),
    ("Ngô", 13), ("Dương", 10), ("Lý", 5), ("Đinh", 6), ("Trương", 5), ("Lương", 4),
    ("Mai", 3), ("Trịnh", 4), ("Đoàn", 4), ("Lâm", 3), ("Tạ", 2), ("Quách", 1),
)
MIDDLE_NAMES = {
    "m": ("Văn", "Văn", "Hữu", "Đức", "Minh", "Quang", "Gia", "Anh", "Thành", "Tuấn", "Xuân",
          "Công", "Đình", "Trọng", "Bảo", "Hoàng", "Nhật", "Phúc"),
    "f": ("Thị", "Thị", "Ngọc", "Thu", "Thanh", "Khánh", "Phương", "Bảo", "Hoài", "Minh",
          "Mỹ", "Quỳnh", "Diệu", "Kim", "Tường", "Hồng", "Thùy", "Ánh"),
}
GIVEN_NAMES = {
    "m": ("An", "Bình", "Cường", "Dũng", "Duy", "Đạt", "Hải", "Hiếu", "Hoàng", "Huy", "Hùng",
          "Khang", "Khoa", "Khôi", "Kiên", "Long", "Lâm", "Minh", "Nam", "Nghĩa", "Nhật",
          "Phát", "Phong", "Phúc", "Quân", "Quang", "Sơn", "Tài", "Thắng", "Thịnh", "Tiến",
          "Trung", "Tuấn", "Việt", "Vinh", "Vũ", "Đức", "Hưng", "Lộc", "Toàn"),
    "f": ("An", "Anh", "Chi", "Diệp", "Dung", "Giang", "Hà", "Hân", "Hằng", "Hiền", "Hoa",
          "Hương", "Huyền", "Lan", "Linh", "Loan", "Mai", "My", "Nga", "Ngân", "Ngọc", "Nhi",
          "Nhung", "Oanh", "Phương", "Quỳnh", "Thảo", "Thư", "Trang", "Trâm", "Uyên", "Vân",
          "Vy", "Yến", "Tuyết", "Hạnh", "Ly", "Trinh"),
}
# Vietnamese mobile prefixes (Viettel, Vinaphone, MobiFone, Vietnamobile, Gmobile ranges).
MOBILE_PREFIXES = ("032", "033", "034", "035", "036", "037", "038", "039", "070", "076", "077",
                   "078", "079", "081", "082", "083", "084", "085", "086", "088", "089", "090",
                   "091", "093", "094", "096", "097", "098")
PROVINCE_CODE = "62"  # the first digits of the Ministry student IDs of Kon Tum's schools
GRADES = (6, 7, 8, 9)
SECTIONS = 3
SCHOOL_YEAR_START = 2025  # grade 6 in the school year 2025-2026 was born in 2014
HEADER = ("STT", "Mã định danh", "Họ và tên", "Ngày sinh", "Lớp", "Số thẻ", "Phụ huynh",
          "Quan hệ", "Số điện thoại", "Đồng ý")

Relation = Literal["Bố", "Mẹ", "Ông", "Bà"]


@dataclass(frozen=True)
class Guardian:
    name: str
    relation: Relation
    phone: str  # international form without + (84 and 9 digits), as the gateway stores it
    consent: bool


@dataclass(frozen=True)
class Student:
    student_id: str
    full_name: str
    class_name: str
    birth_date: dt.date
    card: Card  # what the reader sees
    card_number: str  # what is printed on the card and typed into the sheet
    guardians: tuple[Guardian, ...]


@dataclass(frozen=True)
class School:
    seed: int
    name: str
    classes: tuple[str, ...]
    students: tuple[Student, ...]

    def by_class(self) -> dict[str, list[Student]]:
        out: dict[str, list[Student]] = {c: [] for c in self.classes}
        for s in self.students:
            out[s.class_name].append(s)
        return out

    def guardian_phones(self, consent: bool) -> set[str]:
        """The phones of the guardians who gave (or did not give) consent."""
        return {g.phone for s in self.students for g in s.guardians if g.consent is consent}

    def write_sheet(self, path: Path) -> Path:
        """The school office's sheet as Excel saves "CSV UTF-8" in a Vietnamese locale: a BOM,
        ``;`` between cells, a title row above the header, one row per guardian."""
        rng = random.Random(self.seed + 1)
        with path.open("w", encoding="utf-8-sig", newline="") as f:
            out = csv.writer(f, delimiter=";")
            out.writerow([f"{self.name.upper()} - DANH SÁCH HỌC SINH NĂM HỌC "
                          f"{SCHOOL_YEAR_START}-{SCHOOL_YEAR_START + 1}"])
            out.writerow(HEADER)
            for n, s in enumerate(self.students, 1):
                for g in s.guardians:
                    out.writerow([n, s.student_id, s.full_name, s.birth_date.strftime("%d/%m/%Y"),
                                  s.class_name, s.card_number, g.name, g.relation,
                                  _typed_phone(g.phone, rng), "có" if g.consent else "không"])
        return path


def _typed_phone(phone: str, rng: random.Random) -> str:
    """``84912345678`` as a secretary types it: 0912345678, 0912 345 678, 0912.345.678 or
    +84 912 345 678."""
    local = "0" + phone[2:]
    style = rng.randrange(4)
    if style == 0:
        return local
    if style == 1:
        return f"{local[:4]} {local[4:7]} {local[7:]}"
    if style == 2:
        return f"{local[:4]}.{local[4:7]}.{local[7:]}"
    return f"+84 {phone[2:5]} {phone[5:8]} {phone[8:]}"


class _Names:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._families = [name for name, _ in FAMILY_NAMES]
        self._weights = [weight for _, weight in FAMILY_NAMES]

    def family(self) -> str:
        return self.rng.choices(self._families, self._weights)[0]

    def person(self, sex: Literal["m", "f"], family: str | None = None) -> str:
        return " ".join((family or self.family(), self.rng.choice(MIDDLE_NAMES[sex]),
                         self.rng.choice(GIVEN_NAMES[sex])))


class _Unique:
    """Draws values until one not drawn before comes up."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def take(self, *draws: str) -> bool:
        """Take all of ``draws`` if none was taken before."""
        if self.seen.intersection(draws):
            return False
        self.seen.update(draws)
        return True


def _card_forms(tap: Card) -> list[str]:
    """Every number the gateway matches a tap of this card against (gateway/cards.py)."""
    return printed_numbers(card_id(*tap))


def _card(rng: random.Random, forms: _Unique) -> tuple[Card, str]:
    """A MIFARE card that no other card of the school can be mistaken for: (what the reader
    sees, what is printed on it)."""
    while True:
        if rng.random() < 0.7:  # MIFARE Classic: a random 4-byte NUID (not the 0x88 cascade tag)
            first = rng.randrange(255)
            uid = bytes([first + (first >= 0x88)]) + rng.randbytes(3)
            printed = printed_forms(card.ISO14443A, uid)["reversed_decimal"]
        else:  # NTAG / Ultralight / DESFire: 7 bytes, NXP's manufacturer byte first
            uid = b"\x04" + rng.randbytes(6)
            printed = printed_forms(card.ISO14443A, uid)["hex"]
        tap = (card.ISO14443A, uid)
        if forms.take(*_card_forms(tap)):
            return tap, printed


def _phone(rng: random.Random, phones: _Unique) -> str:
    while True:
        local = rng.choice(MOBILE_PREFIXES) + f"{rng.randrange(10**7):07d}"
        if phones.take(local):
            return "84" + local[1:]


def _guardians(rng: random.Random, names: _Names, student_family: str,
               phones: _Unique) -> tuple[Guardian, ...]:
    roll = rng.random()
    if roll < 0.05:  # raised by a grandparent
        relation: Relation = rng.choice(("Ông", "Bà"))
        sex: Literal["m", "f"] = "m" if relation == "Ông" else "f"
        kin = [(relation, names.person(sex, student_family if sex == "m" else None))]
    else:
        father: tuple[Relation, str] = ("Bố", names.person("m", student_family))
        mother: tuple[Relation, str] = ("Mẹ", names.person("f"))
        kin = [father, mother] if roll < 0.4 else [mother if rng.random() < 0.6 else father]
    return tuple(Guardian(name, relation, _phone(rng, phones), rng.random() < 0.85)
                 for relation, name in kin)


def generate_school(seed: int = 2025, class_size: int = 30) -> School:
    """Twelve classes (6A1 ... 9A3) of ``class_size`` students each, deterministic in ``seed``.

    At least one guardian gave consent and at least one did not, whatever the size."""
    if class_size < 1:
        raise ValueError("class_size must be at least 1")
    rng = random.Random(seed)
    names = _Names(rng)
    ids, forms, phones = _Unique(), _Unique(), _Unique()
    classes = tuple(f"{grade}A{section}" for grade in GRADES
                    for section in range(1, SECTIONS + 1))
    students = []
    for class_name in classes:
        born = SCHOOL_YEAR_START - int(class_name[0]) - 5
        for _ in range(class_size):
            while not ids.take(sid := PROVINCE_CODE + f"{rng.randrange(10**8):08d}"):
                pass
            sex: Literal["m", "f"] = rng.choice(("m", "f"))
            family = names.family()
            tap, printed = _card(rng, forms)
            students.append(Student(
                student_id=sid, full_name=names.person(sex, family), class_name=class_name,
                birth_date=dt.date(born, 1, 1) + dt.timedelta(days=rng.randrange(365)),
                card=tap, card_number=printed,
                guardians=_guardians(rng, names, family, phones)))
    _both_consent_answers(students)
    return School(seed, "Trường THCS Hoa Sen", classes, tuple(students))


def _both_consent_answers(students: list[Student]) -> None:
    """Make the first student's first guardian say no, or the last student's say yes, if
    nobody did: the demo shows both cases even for a tiny school."""
    answers = {g.consent for s in students for g in s.guardians}
    for wanted, index in ((False, 0), (True, len(students) - 1)):
        if wanted not in answers:
            s = students[index]
            first = Guardian(s.guardians[0].name, s.guardians[0].relation,
                             s.guardians[0].phone, wanted)
            students[index] = Student(s.student_id, s.full_name, s.class_name, s.birth_date,
                                      s.card, s.card_number, (first, *s.guardians[1:]))
            answers.add(wanted)


def unknown_card(school: School) -> Card:
    """A card that is not on the roster (a visitor's, or a new card nobody registered)."""
    taken = {number for s in school.students for number in _card_forms(s.card)}
    rng = random.Random(school.seed + 2)
    while True:
        tap = (card.ISO14443A, b"\x04" + rng.randbytes(6))
        if taken.isdisjoint(_card_forms(tap)):
            return tap


# --- the morning -----------------------------------------------------------------------------

# School times in seconds after the gates open (06:30): the bell at 07:00 (late after it), the
# absence cut-off at 07:30, the session's end at 11:30.
OPEN_AT = dt.time(6, 30)
LATE_AFTER_S = 30 * 60
ABSENT_AT_S = 60 * 60
END_S = 5 * 60 * 60
_MARGIN_S = 2 * 60  # no arrival this close to the bell, so "late" is never a matter of jitter
Repeat = Literal["same_reader", "other_reader"]


@dataclass(frozen=True)
class Arrival:
    student: Student
    at_s: float  # school seconds after the gates open
    gate: int  # 0: the main gate, 1: the side gate
    late: bool
    repeat: Repeat | None  # the student taps once more a moment later


@dataclass(frozen=True)
class Morning:
    arrivals: tuple[Arrival, ...]  # in time order
    absent: tuple[Student, ...]  # never come

    @property
    def late(self) -> list[Arrival]:
        return [a for a in self.arrivals if a.late]


def plan_morning(school: School) -> Morning:
    """Who arrives when, at which gate, and who taps twice; deterministic in the school's seed.

    On-time arrivals follow a bell curve peaking at 06:48 (sd 6 min, cut 2 minutes before the
    bell); about 6 % of the students arrive late (07:02-07:20) and about 3 % not at all, at
    least one of each. About 65 % use the main gate; about 6 % tap again at the same reader and
    6 % at the gate's other reader."""
    rng = random.Random(school.seed + 3)
    students = list(school.students)
    rng.shuffle(students)
    n = len(students)
    n_absent = max(1, round(n * 0.03)) if n > 2 else 0
    n_late = max(1, round(n * 0.06)) if n > 1 else 0
    absent = students[:n_absent]
    arrivals = []
    for i, s in enumerate(students[n_absent:]):
        late = i < n_late
        if late:
            at = rng.uniform(LATE_AFTER_S + _MARGIN_S, LATE_AFTER_S + 20 * 60)
        else:
            at = rng.gauss(18 * 60, 6 * 60)
            at = min(max(at, 60.0), LATE_AFTER_S - _MARGIN_S)
        roll = rng.random()
        repeat: Repeat | None = ("same_reader" if roll < 0.06 else
                                 "other_reader" if roll < 0.12 else None)
        arrivals.append(Arrival(s, at, 0 if rng.random() < 0.65 else 1, late, repeat))
    arrivals.sort(key=lambda a: a.at_s)
    return Morning(tuple(arrivals), tuple(sorted(absent, key=lambda s: s.student_id)))


def school_clock(at_s: float) -> str:
    """School seconds after the gates open as a time of day, HH:MM."""
    start = dt.datetime.combine(dt.date(2000, 1, 1), OPEN_AT)
    return (start + dt.timedelta(seconds=at_s)).strftime("%H:%M")
