"""OpenEMIS Core adapter: attendance by exception (docs/forwarding.md, "OpenEMIS").

OpenEMIS records a student's day only when it is an exception: a row of
``institution-student-absence-details`` per student, class, date, period and subject, whose
``absence_type_id`` says what it is (1 excused, 2 unexcused, 3 late). A class's day is "marked"
by a row of ``student-attendance-marked-records``; on a marked day a student without an absence
row was present. So:

- ``late`` and ``absent``, created or revised: ``POST`` the absence row (``absence_type_id`` 3 and
  2 by default). The row's key is composite — student, institution, academic period, class,
  date, period, subject — and one row holds *either* a late arrival or an absence. A ``POST``
  refused as a duplicate (``409``) updates the row in place (``PUT`` on its key path).
- ``late`` and ``absent``, voided: ``GET`` the row by its key path and ``DELETE`` it only if it
  still holds this kind's absence type: an absence voided because the student turned out to be
  late must not delete the late row that replaced it, whichever order the two arrive in. A row
  that is not there is already what we want. The key is computed from the item and the
  mappings, so it is always known once the student and class are mapped; when they are not,
  the item is parked like any other.
- ``check_in``, ``check_out``, ``unknown_card``: nothing to write ("delivered", with the reason
  "not sent"). A check-in, late or absence of a mapped class also marks that class's day and
  period (once per process; a duplicate is fine), unless ``mark_days = false``.

Login is ``POST {base_url}{login_path}`` with ``username``, ``password`` and ``api_key`` (JSON);
the JWT bearer it answers is cached until shortly before its ``exp`` claim (if it has one) and
fetched again, once, by whichever request finds it stale; a ``401`` logs in again once and
repeats the request. Outcomes follow the contract in ``gateway/forwarders/__init__.py``: other
``4xx`` answers (``400``, ``403``, ``422``, ...) park the item with OpenEMIS's message (student ids
blanked out); ``429``/``503`` with Retry-After retry after that delay and hold back the rest of
the batch; other ``5xx``, a ``404`` on a ``POST`` (a wrong URL), timeouts and refused
connections or credentials raise :class:`TargetDown`. Passwords, the API key, tokens and
student ids are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import json
import logging
import math
import os
import ssl
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from gateway.forwarders import AttendanceItem, DeliveryResult, ForwardTarget, TargetDown
from gateway.forwarders._common import (
    Settings,
    Throttled,
    deliver_each,
    fetch,
    retry_after_s,
    short,
)
from gateway.types import Clock

log = logging.getLogger("gateway.forward.openemis")

DEFAULT_LOGIN_PATH = "/api/login"
DEFAULT_API_PATH = "/api/v5"
ABSENCES = "institution-student-absence-details"
MARKED = "student-attendance-marked-records"
DEFAULT_ABSENCE_TYPES: Mapping[str, int] = {"late": 3, "absent": 2}
SAME = "same"  # students = "same": our student id is the OpenEMIS student_id
_ID_MAX = 2**63 - 1
_REASON_MAX = 300
_MARKED_MAX = 10_000  # (class, date, period, subject) marked by this process, remembered
_MAP_MAX_BYTES = 32 * 1024 * 1024

SETTINGS = ("base_url", "login_path", "api_path", "username", "password_file", "api_key_file",
            "institution_id", "academic_period_id", "classes", "classes_file", "students",
            "students_file", "absence_types", "period", "subject_id", "mark_days", "timeout_s",
            "parallel", "verify", "ca_file")


# --- mappings ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClassIds:
    institution_class_id: int
    education_grade_id: int


class MapError(Exception):
    """A mapping file that cannot be used (the message names the file and the line)."""


def _positive(text: str, where: str) -> int:
    text = text.strip()
    if not text.isdecimal() or not 0 < int(text) <= _ID_MAX:
        raise MapError(f"{where}: {text[:20]!r} is not a positive integer id")
    return int(text)


def _read_csv(path: Path, columns: Sequence[str]) -> list[tuple[int, list[str]]]:
    """Rows of a UTF-8 CSV (a BOM from Excel is fine) whose header has at least ``columns``,
    as (line number, values in ``columns`` order)."""
    try:
        if path.stat().st_size > _MAP_MAX_BYTES:
            raise MapError(f"{path}: larger than {_MAP_MAX_BYTES // 2**20} MiB")
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise MapError(f"{path}: does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MapError(f"{path}: cannot be read: {exc}") from None
    reader = csv.reader(text.splitlines())
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in columns if c not in header]
    if missing:
        raise MapError(f"{path}: the header must name the columns {', '.join(columns)} "
                       f"(missing {', '.join(missing)})")
    index = [header.index(c) for c in columns]
    rows = []
    for number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise MapError(f"{path}:{number}: {len(row)} columns, the header has {len(header)}")
        rows.append((number, [row[i].strip() for i in index]))
    return rows


def load_class_map(path: Path) -> dict[str, ClassIds]:
    """``class_id,institution_class_id,education_grade_id`` (extra columns are ignored)."""
    out: dict[str, ClassIds] = {}
    for number, (ours, class_id, grade_id) in _read_csv(
            path, ("class_id", "institution_class_id", "education_grade_id")):
        where = f"{path}:{number}"
        if not ours:
            raise MapError(f"{where}: empty class_id")
        if ours in out:
            raise MapError(f"{where}: class {ours!r} is listed twice")
        out[ours] = ClassIds(_positive(class_id, where), _positive(grade_id, where))
    return out


def load_student_map(path: Path) -> dict[str, int]:
    """``student_id,openemis_student_id``: our (Ministry) student id, OpenEMIS's student_id."""
    out: dict[str, int] = {}
    for number, (ours, theirs) in _read_csv(path, ("student_id", "openemis_student_id")):
        where = f"{path}:{number}"  # never the ids themselves: they are personal data
        if not ours:
            raise MapError(f"{where}: empty student_id")
        if ours in out:
            raise MapError(f"{where}: a student is listed twice")
        out[ours] = _positive(theirs, where)
    return out


class _MapFile:
    """A mapping file, read again when it changes (the roster is fixed, then parked items are
    retried); a file that no longer reads keeps the last good map and says so in the log."""

    def __init__(self, path: Path, loader: Callable[[Path], dict[str, Any]], what: str) -> None:
        self.path, self._loader, self._what = path, loader, what
        self._stamp = self._stat()
        self.value = loader(path)  # MapError: the caller turns it into a ConfigError

    def _stat(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size

    def current(self) -> dict[str, Any]:
        stamp = self._stat()
        if stamp is not None and stamp != self._stamp:
            self._stamp = stamp
            try:
                self.value = self._loader(self.path)
                log.info("mapping reloaded", extra={"map": self._what, "entries": len(self.value)})
            except MapError as exc:
                log.warning("mapping not reloaded, the last good one is kept",
                            extra={"map": self._what, "error": str(exc)})
        return self.value


# --- settings ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class OpenEmisSettings:
    """``target.settings``, validated; secrets are kept out of ``repr``."""

    base_url: str
    login_url: str
    api_url: str  # base_url + api_path
    username: str
    password: str = field(repr=False)
    api_key: str = field(repr=False)
    institution_id: int = 0
    academic_period_id: int = 0
    absence_types: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_ABSENCE_TYPES))
    period: int | Mapping[str, int] = 1  # one period for every session, or ours -> theirs
    subject_id: int = 0
    mark_days: bool = True
    timeout_s: float = 15.0
    parallel: int = 4
    verify: ssl.SSLContext | bool = field(default=True, repr=False)

    def period_of(self, session: str) -> int | None:
        return self.period if isinstance(self.period, int) else self.period.get(session)


def _path(section: Settings, key: str) -> str:
    text = section.text(key)
    if not text.startswith("/") or "?" in text or "#" in text:
        raise section.error(key, f"must be a path starting with '/', not {text!r}")
    return text.rstrip("/")


def _absence_types(section: Settings) -> dict[str, int]:
    raw = section.table.get("absence_types", {})
    if not isinstance(raw, Mapping):
        raise section.error("absence_types", "must be a table like { late = 3, absent = 2 }")
    sub = section.sub("absence_types", raw)
    sub.check_known(tuple(DEFAULT_ABSENCE_TYPES))
    return {kind: sub.integer(kind, 1, _ID_MAX, default)
            for kind, default in DEFAULT_ABSENCE_TYPES.items()}


def _period(section: Settings) -> int | dict[str, int]:
    raw = section.table.get("period", 1)
    if isinstance(raw, Mapping):
        if not raw:
            raise section.error("period", "an empty table maps no session")
        sub = section.sub("period", raw)
        return {str(name): sub.integer(str(name), 1, _ID_MAX) for name in raw}
    return section.integer("period", 1, _ID_MAX, 1)


def _classes(section: Settings) -> dict[str, ClassIds] | _MapFile:
    if ("classes" in section.table) == ("classes_file" in section.table):
        raise section.error("classes", "give classes (an inline table) or classes_file (a CSV "
                                       "file), one of them")
    if "classes_file" in section.table:
        try:
            return _MapFile(section.file("classes_file"), load_class_map, "classes")
        except MapError as exc:
            raise section.error("classes_file", str(exc)) from None
    raw = section.table["classes"]
    if not isinstance(raw, Mapping) or not raw:
        raise section.error("classes", "must be a table like "
                                       "{ \"6A\" = { institution_class_id = 512, "
                                       "education_grade_id = 61 } }")
    out = {}
    for ours, ids in raw.items():
        if not isinstance(ids, Mapping):
            raise section.error(f"classes.{ours}", "must be a table with institution_class_id "
                                                   "and education_grade_id")
        sub = section.sub(f"classes.{ours}", ids)
        sub.check_known(("institution_class_id", "education_grade_id"))
        out[str(ours)] = ClassIds(sub.integer("institution_class_id", 1, _ID_MAX),
                                  sub.integer("education_grade_id", 1, _ID_MAX))
    return out


def _students(section: Settings) -> _MapFile | None:
    """None: ``students = "same"``."""
    if ("students" in section.table) == ("students_file" in section.table):
        raise section.error("students", "give students = \"same\" or students_file (a CSV "
                                        "file), one of them")
    if "students" in section.table:
        if section.table["students"] != SAME:
            raise section.error("students", "must be \"same\" (our student id is the OpenEMIS "
                                            "student_id), or use students_file")
        return None
    try:
        return _MapFile(section.file("students_file"), load_student_map, "students")
    except MapError as exc:
        raise section.error("students_file", str(exc)) from None


def parse_settings(target: ForwardTarget, *, config_path: Path | None = None
                   ) -> tuple[OpenEmisSettings, dict[str, ClassIds] | _MapFile, _MapFile | None]:
    """Validate ``target.settings`` (reads the secret and mapping files); raises ConfigError.
    Returns the settings, the class map and the student map (None: the same ids)."""
    section = Settings(config_path or Path("<config>"), f"forward.{target.name}",
                       target.settings)
    section.check_known(SETTINGS)
    base = section.url("base_url")
    login_path = _path(section, "login_path") if "login_path" in section.table \
        else DEFAULT_LOGIN_PATH
    api_path = _path(section, "api_path") if "api_path" in section.table else DEFAULT_API_PATH
    settings = OpenEmisSettings(
        base_url=base,
        login_url=base + login_path,
        api_url=base + api_path,
        username=section.text("username"),
        password=section.secret("password_file"),
        api_key=section.secret("api_key_file"),
        institution_id=section.integer("institution_id", 1, _ID_MAX),
        academic_period_id=section.integer("academic_period_id", 1, _ID_MAX),
        absence_types=_absence_types(section),
        period=_period(section),
        subject_id=section.integer("subject_id", 0, _ID_MAX, 0),
        mark_days=section.boolean("mark_days", True),
        timeout_s=section.number("timeout_s", 0.1, 300.0, 15.0),
        parallel=section.integer("parallel", 1, 32, 4),
        verify=section.tls(),
    )
    return settings, _classes(section), _students(section)


def build(target: ForwardTarget, *, clock: Clock, config_path: Path | None = None
          ) -> OpenEmisAdapter:
    """The adapter for one ``[[forward]]`` table of ``type = "openemis"``."""
    settings, classes, students = parse_settings(target, config_path=config_path)
    # httpx logs every request line at INFO, and an absence row's key path carries a student
    # id: keep that logger to warnings (docs/forwarding.md).
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))
    return OpenEmisAdapter(target.name, settings, classes=classes, students=students,
                           clock=clock, max_batch=target.max_batch,
                           concurrency=target.concurrency)


# --- the adapter -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Token:
    value: str = field(repr=False)
    refresh_at_ms: int | None  # None: no exp claim, used until refused


class _Unmapped(Exception):
    """The item cannot be placed in OpenEMIS (mapping or configuration): park it."""


@dataclass(frozen=True)
class _Row:
    """Where an item lands in OpenEMIS: the absence row's composite key and the class's ids."""

    student_id: int
    classes: ClassIds
    date: str
    period: int
    subject_id: int

    def marked_key(self) -> tuple[int, str, int, int]:
        return (self.classes.institution_class_id, self.date, self.period, self.subject_id)


Method = Literal["GET", "POST", "PUT", "DELETE"]


class OpenEmisAdapter:
    """Delivers attendance items to one OpenEMIS Core (see the module docstring).

    Inside one ``deliver`` call up to ``parallel`` requests are in flight; only the newest
    version of an event in a batch is sent (it carries the whole state), and the items that
    touch one absence row (a student's late and absent of one session) take turns.
    """

    def __init__(self, name: str, settings: OpenEmisSettings, *,
                 classes: dict[str, ClassIds] | _MapFile, students: _MapFile | None,
                 clock: Clock, max_batch: int = 50, concurrency: int = 2,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.max_batch = max_batch
        self.concurrency = concurrency
        self.settings = settings
        self._classes = classes
        self._students = students
        self._clock = clock
        connections = settings.parallel * max(1, concurrency) + 1
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_s), verify=settings.verify,
            limits=httpx.Limits(max_connections=connections,
                                max_keepalive_connections=connections),
            headers={"Accept": "application/json", "User-Agent": "school-attendance-gateway"},
            follow_redirects=False, transport=transport)
        self._absences_url = f"{settings.api_url}/{ABSENCES}"
        self._marked_url = f"{settings.api_url}/{MARKED}"
        self._token: _Token | None = None
        self._token_lock = asyncio.Lock()
        self._row_locks: weakref.WeakValueDictionary[tuple[int, str, int, int, int],
                                                     asyncio.Lock] = weakref.WeakValueDictionary()
        self._marked: OrderedDict[tuple[int, str, int, int], None] = OrderedDict()
        self._marking: dict[tuple[int, str, int, int], asyncio.Lock] = {}
        self.logins = 0  # for metrics and tests

    def __repr__(self) -> str:
        return f"OpenEmisAdapter(name={self.name!r}, base_url={self.settings.base_url!r})"

    async def close(self) -> None:
        await self._http.aclose()

    # --- deliver -------------------------------------------------------------------------------

    async def deliver(self, items: Sequence[AttendanceItem]) -> list[DeliveryResult]:
        return await deliver_each(self.name, items, self.settings.parallel, self._deliver_one,
                                  log)

    async def _deliver_one(self, item: AttendanceItem) -> DeliveryResult:
        try:
            if item.kind in ("late", "absent"):
                return await self._absence(item)
            if item.kind == "check_in":
                await self._mark_for(item)
                return DeliveryResult(item.item_id, "delivered", reason=(
                    "not sent: OpenEMIS records attendance by exception"))
            return DeliveryResult(item.item_id, "delivered", reason=(
                f"not sent: OpenEMIS has no record for {item.kind}"))
        except _Unmapped as exc:
            return DeliveryResult(item.item_id, "parked", reason=str(exc))

    # --- mapping -------------------------------------------------------------------------------

    def _class_ids(self, class_id: str | None) -> ClassIds:
        if class_id is None:
            raise _Unmapped("the student has no class in the roster")
        classes = self._classes if isinstance(self._classes, dict) else self._classes.current()
        ids = classes.get(class_id)
        if ids is None:
            where = "classes_file" if isinstance(self._classes, _MapFile) else "classes"
            raise _Unmapped(f"class {class_id!r} has no OpenEMIS institution_class_id "
                            f"(forward.{self.name}.{where})")
        return ids

    def _student(self, student_id: str | None) -> int:
        if student_id is None:
            raise _Unmapped("the event has no student id")
        if self._students is None:
            if not student_id.isdecimal() or not 0 < int(student_id) <= _ID_MAX:
                raise _Unmapped(f"students = \"same\", but the student id is not an OpenEMIS "
                                f"student_id (a positive integer) (forward.{self.name}.students)")
            return int(student_id)
        found = self._students.current().get(student_id)
        if found is None:
            raise _Unmapped(f"the student is not in the OpenEMIS student map "
                            f"(forward.{self.name}.students_file)")
        return int(found)

    def _row(self, item: AttendanceItem) -> _Row:
        classes = self._class_ids(item.class_id)
        period = self.settings.period_of(item.session)
        if period is None:
            raise _Unmapped(f"session {item.session!r} has no OpenEMIS period "
                            f"(forward.{self.name}.period)")
        return _Row(self._student(item.student_id), classes, item.school_date, period,
                    self.settings.subject_id)

    def _row_url(self, row: _Row) -> str:
        s = self.settings
        return (f"{self._absences_url}/student_id/{row.student_id}/institution_id/"
                f"{s.institution_id}/academic_period_id/{s.academic_period_id}/"
                f"institution_class_id/{row.classes.institution_class_id}/date/{row.date}/"
                f"period/{row.period}/subject_id/{row.subject_id}")

    def _row_body(self, row: _Row, absence_type_id: int) -> dict[str, Any]:
        s = self.settings
        return {
            "student_id": row.student_id, "institution_id": s.institution_id,
            "academic_period_id": s.academic_period_id,
            "institution_class_id": row.classes.institution_class_id,
            "education_grade_id": row.classes.education_grade_id, "date": row.date,
            "period": row.period, "subject_id": row.subject_id,
            "absence_type_id": absence_type_id,
        }

    # --- absences ------------------------------------------------------------------------------

    async def _absence(self, item: AttendanceItem) -> DeliveryResult:
        row = self._row(item)
        await self._mark(row)
        type_id = self.settings.absence_types[item.kind]
        key = (row.student_id, row.date, row.period, row.subject_id,
               row.classes.institution_class_id)
        lock = self._row_locks.get(key)
        if lock is None:
            lock = self._row_locks[key] = asyncio.Lock()
        async with lock:
            if item.change == "voided":
                return await self._remove(item, row, type_id)
            return await self._upsert(item, row, type_id)

    async def _upsert(self, item: AttendanceItem, row: _Row, type_id: int) -> DeliveryResult:
        body = self._row_body(row, type_id)
        response = await self._request("POST", self._absences_url, json=body)
        if response.status_code in (200, 201, 204):
            return DeliveryResult(item.item_id, "delivered")
        if response.status_code == 404:
            raise TargetDown(f"POST {ABSENCES} answered 404: are forward.{self.name}.base_url "
                             f"and api_path right?")
        if response.status_code == 409:  # the row exists (the other kind, or our resend)
            response = await self._request("PUT", self._row_url(row), json=body)
            if response.status_code in (200, 201, 204):
                return DeliveryResult(item.item_id, "delivered", reason="updated in place")
            if response.status_code == 404:  # deleted in between: try again later
                return DeliveryResult(item.item_id, "retry",
                                      reason="the row vanished between POST and PUT")
        return self._refused(item, row, response)

    async def _remove(self, item: AttendanceItem, row: _Row, type_id: int) -> DeliveryResult:
        url = self._row_url(row)
        response = await self._request("GET", url)
        if response.status_code == 404:
            return DeliveryResult(item.item_id, "delivered",
                                  reason="voided: no row upstream to delete")
        if response.status_code != 200:
            refused = self._refused(item, row, response)
            return DeliveryResult(item.item_id, "parked",
                                  reason=f"voided, but the row cannot be read: {refused.reason}")
        held = _absence_type_in(response)
        if held is None:
            return DeliveryResult(item.item_id, "parked", reason=(
                "voided, but OpenEMIS's answer does not say which absence type the row holds"))
        if held != type_id:
            return DeliveryResult(item.item_id, "delivered", reason=(
                f"voided: the row now holds absence type {held}, left in place"))
        response = await self._request("DELETE", url)
        if response.status_code in (200, 202, 204, 404):
            return DeliveryResult(item.item_id, "delivered")
        return self._refused(item, row, response)

    # --- the day's "marked" record -------------------------------------------------------------

    async def _mark_for(self, item: AttendanceItem) -> None:
        """A check-in marks its class's day, if the class is mapped (nothing to park if not)."""
        if not self.settings.mark_days or item.class_id is None:
            return
        try:
            classes = self._class_ids(item.class_id)
        except _Unmapped:
            return
        period = self.settings.period_of(item.session)
        if period is not None:
            await self._mark(_Row(0, classes, item.school_date, period, self.settings.subject_id))

    async def _mark(self, row: _Row) -> None:
        """POST the class's marked record for the row's date and period, once per process.

        A 409 (or any 4xx but 401 and 429) is taken as "already marked, or not markable": it is
        logged and not retried, since the absence rows must not wait on it.
        """
        if not self.settings.mark_days:
            return
        key = row.marked_key()
        if key in self._marked:
            return
        lock = self._marking.setdefault(key, asyncio.Lock())
        async with lock:
            if key in self._marked:
                return
            s = self.settings
            body = {"institution_id": s.institution_id,
                    "academic_period_id": s.academic_period_id,
                    "institution_class_id": row.classes.institution_class_id,
                    "education_grade_id": row.classes.education_grade_id, "date": row.date,
                    "period": row.period, "subject_id": row.subject_id,
                    "no_scheduled_class": 0}
            try:
                response = await self._request("POST", self._marked_url, json=body)
            finally:
                self._marking.pop(key, None)
            status = response.status_code
            if status == 404:
                raise TargetDown(f"POST {MARKED} answered 404: are forward.{self.name}."
                                 f"base_url and api_path right?")
            if status not in (200, 201, 204, 409):
                log.warning("day not marked", extra={
                    "target": self.name, "status": status,
                    "institution_class_id": row.classes.institution_class_id,
                    "date": row.date, "period": row.period,
                    "detail": _explain(response, ())})
            self._marked[key] = None
            while len(self._marked) > _MARKED_MAX:
                self._marked.popitem(last=False)

    def _refused(self, item: AttendanceItem, row: _Row, response: httpx.Response
                 ) -> DeliveryResult:
        """An answer that is neither success, 401, throttling nor a server error: park."""
        hidden = tuple(x for x in (item.student_id, str(row.student_id)) if x)
        return DeliveryResult(item.item_id, "parked", reason=(
            f"refused by OpenEMIS ({response.status_code}){_explain(response, hidden)}"))

    # --- HTTP and the token --------------------------------------------------------------------

    async def _request(self, method: Method, url: str, *, json: Any = None) -> httpx.Response:
        """One request with a valid bearer token, logging in again once on 401. Raises
        TargetDown (unreachable, 5xx, credentials refused) or Throttled (429, 503+Retry-After)."""
        token = await self._bearer(stale=None)
        response = await self._send(method, url, token, json)
        if response.status_code == 401:
            token = await self._bearer(stale=token)
            response = await self._send(method, url, token, json)
            if response.status_code == 401:
                raise TargetDown("OpenEMIS refused a fresh token (401)")
        status = response.status_code
        if status == 429 or (status == 503 and "retry-after" in response.headers):
            delay = retry_after_s(response.headers.get("retry-after"), self._clock())
            raise Throttled(f"OpenEMIS asked to slow down ({status})", delay)
        if status >= 500:
            raise TargetDown(f"{method} answered {status}")
        return response

    async def _send(self, method: Method, url: str, token: str, json: Any) -> httpx.Response:
        try:
            return await fetch(self._http, method, url, json=json,
                               headers={"Authorization": f"Bearer {token}"})
        except httpx.TimeoutException as exc:
            raise TargetDown(f"{method} timed out after {self.settings.timeout_s:g} s "
                             f"({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise TargetDown(f"{method} failed: {type(exc).__name__}") from None

    async def _bearer(self, *, stale: str | None) -> str:
        """The cached JWT, or a new one when it is about to expire or was refused (``stale``).
        Concurrent callers share one login."""
        if self._usable(self._token, stale):
            assert self._token is not None
            return self._token.value
        async with self._token_lock:
            if self._usable(self._token, stale):
                assert self._token is not None
                return self._token.value
            self._token = await self._login()
            return self._token.value

    def _usable(self, token: _Token | None, stale: str | None) -> bool:
        return token is not None and token.value != stale and (
            token.refresh_at_ms is None or self._clock() < token.refresh_at_ms)

    async def _login(self) -> _Token:
        s = self.settings
        started = self._clock()
        try:
            response = await fetch(self._http, "POST", s.login_url, json={
                "username": s.username, "password": s.password, "api_key": s.api_key})
        except httpx.TimeoutException:
            raise TargetDown(f"login timed out after {s.timeout_s:g} s") from None
        except httpx.TransportError as exc:
            raise TargetDown(f"login failed: {type(exc).__name__}") from None
        status = response.status_code
        if status in (400, 401, 403, 422):
            raise TargetDown(f"OpenEMIS refused the login ({status}): check "
                             f"forward.{self.name}.username, password_file and api_key_file")
        if status in (429, 503):
            raise TargetDown(f"login answered {status}",
                             retry_after_s(response.headers.get("retry-after"), self._clock()))
        if status not in (200, 201):
            raise TargetDown(f"login answered {status}")
        token = _token_in(response)
        if token is None:
            raise TargetDown("login answered without a token")
        self.logins += 1
        expires = _jwt_expiry_ms(token)
        refresh_at = None
        if expires is not None:
            lifetime = max(0, expires - started)
            refresh_at = expires - min(60_000, lifetime // 10)
        return _Token(token, refresh_at)


def _token_in(response: httpx.Response) -> str | None:
    """The JWT of a login answer: ``data.token`` (OpenEMIS), or ``token``/``access_token``."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    data = body.get("data")
    for holder in (data if isinstance(data, dict) else {}, body):
        for name in ("token", "access_token"):
            value = holder.get(name)
            if isinstance(value, str) and value:
                return value
    return None


def _jwt_expiry_ms(token: str) -> int | None:
    """The ``exp`` claim of a JWT in Unix ms (read, not verified: only to refresh in time)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    return int(exp * 1000)


def _absence_type_in(response: httpx.Response) -> int | None:
    """``absence_type_id`` of a row as OpenEMIS answers it: ``{data: {...}}``, ``{data:
    [{...}]}`` or the row itself."""
    try:
        body = response.json()
    except ValueError:
        return None
    row = body.get("data", body) if isinstance(body, dict) else None
    if isinstance(row, list) and len(row) == 1:
        row = row[0]
    value = row.get("absence_type_id") if isinstance(row, dict) else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _explain(response: httpx.Response, hidden: Sequence[str]) -> str:
    """': message [fields: ...]' from OpenEMIS's error answer, without the ``hidden`` ids."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    parts = []
    for name in ("message", "error", "description"):
        value = body.get(name)
        if isinstance(value, str) and value.strip():
            parts.append(value.strip())
            break
    errors = body.get("errors")
    if isinstance(errors, Mapping) and errors:
        fields = []
        for name, messages in errors.items():
            first = messages[0] if isinstance(messages, list) and messages else messages
            fields.append(f"{name} ({first})" if isinstance(first, str) else str(name))
        parts.append("fields: " + ", ".join(fields))
    text = "; ".join(parts)
    for value in hidden:
        text = text.replace(value, "<student>")
    return f": {short(text, _REASON_MAX)}" if text else ""

