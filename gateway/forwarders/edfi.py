"""Ed-Fi ODS/API adapter: attendance events as StudentSchoolAttendanceEvents (docs/forwarding.md).

One item becomes one request against ``{data_url}/ed-fi/studentSchoolAttendanceEvents``:

- created or revised: ``POST`` the whole resource. Ed-Fi upserts on the natural key (category
  descriptor, eventDate, school, school year, sessionName, studentUniqueId), so a resend after a
  crash, a retry or a revision updates the one record upstream (``201`` created, ``200`` updated);
- voided: ``DELETE`` the record, by the id its ``Location`` gave (kept by the outbox), else
  by the id a ``GET`` on the natural key finds (Ed-Fi resources are queryable by natural key); a
  record that is not there is already what we want.

Authentication is OAuth2 client credentials (``POST {token_url}``, HTTP Basic key:secret): the
bearer token is cached until shortly before ``expires_in`` runs out and fetched again, once, by
whichever request finds it stale; a ``401`` refreshes it once and repeats the request.

Outcomes follow the contract in ``gateway/forwarders/__init__.py``: problem+json ``400``, ``403``
and ``409`` park the item with the problem's type and detail (the student's id is blanked out of
it); ``429`` and ``503`` with Retry-After ask for a retry after that delay, and the rest of the
batch is not sent; other ``5xx``, timeouts, refused or dropped connections and refused
credentials raise :class:`TargetDown`. Tokens, the secret and student ids are never logged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import ssl
import zoneinfo
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

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
from gateway.rules import from_ms
from gateway.types import Clock

log = logging.getLogger("gateway.forward.edfi")

RESOURCE = "ed-fi/studentSchoolAttendanceEvents"
DEFAULT_NAMESPACE = "uri://ed-fi.org/AttendanceEventCategoryDescriptor"
DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"  # the gateway's own default ([gateway] timezone)
# Our event kinds -> AttendanceEventCategoryDescriptor code values. check_out is sent only when
# configured; unknown_card never (a card without a student is not attendance).
DEFAULT_CATEGORIES: Mapping[str, str] = {
    "check_in": "In Attendance",
    "late": "Tardy",
    "absent": "Unexcused Absence",
}
MAPPABLE_KINDS = ("check_in", "late", "absent", "check_out")
UNRESOLVED_REFERENCE = "urn:ed-fi:api:conflict:unresolved-reference"
WRITE_CONFLICT = "urn:ed-fi:api:conflict:write-conflict"
_REMEMBERED_MAX = 20_000  # event_key -> upstream id / revision kept in memory

SETTINGS = ("base_url", "data_url", "token_url", "client_id", "client_secret_file", "school_id",
            "school_year", "session_names", "terms", "descriptor_namespace", "categories",
            "timezone", "timeout_s", "parallel", "verify", "ca_file")


# --- settings --------------------------------------------------------------------------------

SessionNames = str | Mapping[str, str]  # one Ed-Fi sessionName for all, or ours -> theirs


@dataclass(frozen=True)
class Term:
    """The Ed-Fi Session (school year and sessionName) events of these school dates belong to."""

    first_day: dt.date | None  # None: open-ended (the top-level settings, no [[terms]])
    last_day: dt.date | None
    school_year: int
    session_names: SessionNames

    def covers(self, day: dt.date) -> bool:
        return ((self.first_day is None or self.first_day <= day)
                and (self.last_day is None or day <= self.last_day))

    def session_name(self, ours: str) -> str | None:
        if isinstance(self.session_names, str):
            return self.session_names
        return self.session_names.get(ours)


@dataclass(frozen=True)
class EdFiSettings:
    """``target.settings``, validated. The secret is kept out of ``repr``."""

    data_url: str  # ".../data/v3", no trailing slash
    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    school_id: int
    terms: tuple[Term, ...]
    descriptor_namespace: str
    categories: Mapping[str, str]  # kind -> code value; a kind absent here is not sent
    timezone: dt.tzinfo
    timeout_s: float
    parallel: int
    verify: ssl.SSLContext | bool = field(repr=False)

    def descriptor(self, kind: str) -> str | None:
        code = self.categories.get(kind)
        return None if code is None else f"{self.descriptor_namespace}#{code}"

    def term(self, day: dt.date) -> Term | None:
        return next((t for t in self.terms if t.covers(day)), None)


def _session_names(section: Settings, key: str) -> SessionNames:
    value = section.table.get(key)
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, Mapping) and value and all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in value.items()):
        return {k: v.strip() for k, v in value.items()}
    if value is None:
        raise section.error(key, "is required")
    raise section.error(key, "must be one Ed-Fi sessionName for every session, or a table "
                             "from our session names to Ed-Fi sessionNames")


def _date(section: Settings, key: str) -> dt.date:
    value = section.table.get(key)
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    if value is None:
        raise section.error(key, "is required")
    raise section.error(key, f"must be a date like 2025-09-05, not {value!r}")


def _terms(section: Settings) -> tuple[Term, ...]:
    raw = section.table.get("terms")
    if raw is None:
        return (Term(None, None, section.integer("school_year", 1991, 2199),
                     _session_names(section, "session_names")),)
    if not isinstance(raw, list) or not raw:
        raise section.error("terms", "must be a non-empty array of tables ([[...terms]])")
    terms = []
    for i, table in enumerate(raw):
        if not isinstance(table, Mapping):
            raise section.error(f"terms[{i}]", "must be a table")
        sub = section.sub(f"terms[{i}]", table)
        sub.check_known(("first_day", "last_day", "school_year", "session_names"))
        first, last = _date(sub, "first_day"), _date(sub, "last_day")
        if last < first:
            raise sub.error("last_day", "is before first_day")
        year = (sub.integer("school_year", 1991, 2199) if "school_year" in table
                else section.integer("school_year", 1991, 2199))
        names = (_session_names(sub, "session_names") if "session_names" in table
                 else _session_names(section, "session_names"))
        terms.append(Term(first, last, year, names))
    terms.sort(key=lambda t: t.first_day or dt.date.min)
    for before, after in itertools.pairwise(terms):
        assert before.last_day is not None and after.first_day is not None
        if after.first_day <= before.last_day:
            raise section.error("terms", f"the terms starting {before.first_day} and "
                                         f"{after.first_day} overlap")
    return tuple(terms)


def _categories(section: Settings) -> dict[str, str]:
    raw = section.table.get("categories", {})
    if not isinstance(raw, Mapping):
        raise section.error("categories", "must be a table like { late = \"Tardy\" }")
    out = dict(DEFAULT_CATEGORIES)
    for kind, code in raw.items():
        key = f"categories.{kind}"
        if kind == "unknown_card":
            raise section.error(key, "unknown cards are never sent to Ed-Fi")
        if kind not in MAPPABLE_KINDS:
            raise section.error(key, f"is not one of {', '.join(MAPPABLE_KINDS)}")
        if code == "" or code is False:
            out.pop(kind, None)  # do not send this kind
            continue
        if not isinstance(code, str) or not code.strip() or "#" in code:
            raise section.error(key, "must be a descriptor code value like \"Tardy\" "
                                     "(or \"\" not to send it)")
        out[kind] = code.strip()
    return out


def _timezone(section: Settings, given: dt.tzinfo | None) -> dt.tzinfo:
    if "timezone" not in section.table:
        return given if given is not None else zoneinfo.ZoneInfo(DEFAULT_TIMEZONE)
    name = section.text("timezone")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise section.error("timezone", f"unknown time zone {name!r}") from None


def parse_settings(target: ForwardTarget, *, timezone: dt.tzinfo | None = None,
                   config_path: Path | None = None) -> EdFiSettings:
    """Validate ``target.settings`` (reads the secret file); raises :class:`ConfigError`."""
    section = Settings(config_path or Path("<config>"), f"forward.{target.name}",
                       target.settings)
    section.check_known(SETTINGS)
    base = section.url("base_url", what="the client secret and student ids")
    namespace = section.text("descriptor_namespace", DEFAULT_NAMESPACE)
    if "#" in namespace or "://" not in namespace:
        raise section.error("descriptor_namespace",
                            f"must be a URI without '#', like {DEFAULT_NAMESPACE}")
    return EdFiSettings(
        data_url=section.url("data_url", f"{base}/data/v3", what="student ids"),
        token_url=section.url("token_url", f"{base}/oauth/token", what="the client secret"),
        client_id=section.text("client_id"),
        client_secret=section.secret("client_secret_file"),
        school_id=section.integer("school_id", 1, 2**31 - 1),
        terms=_terms(section),
        descriptor_namespace=namespace.rstrip("/"),
        categories=_categories(section),
        timezone=_timezone(section, timezone),
        timeout_s=section.number("timeout_s", 0.1, 300.0, 15.0),
        parallel=section.integer("parallel", 1, 32, 4),
        verify=section.tls(),
    )


def build(target: ForwardTarget, *, clock: Clock, timezone: dt.tzinfo | None = None,
          config_path: Path | None = None) -> EdFiAdapter:
    """The adapter for one ``[[forward]]`` table of ``type = "edfi"``.

    ``timezone`` (the gateway's ``[gateway] timezone``) places arrival and departure times; a
    ``timezone`` in the target's settings overrides it; without either, Asia/Ho_Chi_Minh.
    ``config_path`` is named in errors and anchors relative paths (default: the working
    directory).
    """
    settings = parse_settings(target, timezone=timezone, config_path=config_path)
    # httpx logs every request line at INFO, and a natural-key lookup carries a student id in
    # its query string: keep that logger to warnings (docs/forwarding.md, "Logs").
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))
    return EdFiAdapter(target.name, settings, clock=clock, max_batch=target.max_batch,
                       concurrency=target.concurrency)


# --- the adapter -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Token:
    value: str = field(repr=False)
    refresh_at_ms: int


Method = Literal["GET", "POST", "DELETE"]


class EdFiAdapter:
    """Delivers attendance items to one Ed-Fi ODS/API (see the module docstring).

    Inside one ``deliver`` call up to ``parallel`` requests are in flight: Ed-Fi has no batch
    write, so a batch is many small requests and their round trips dominate; versions of one
    event are sent one after the other, and only the newest version of an event in a batch is
    sent at all (it carries the whole state).
    """

    def __init__(self, name: str, settings: EdFiSettings, *, clock: Clock, max_batch: int = 50,
                 concurrency: int = 2, transport: httpx.AsyncBaseTransport | None = None
                 ) -> None:
        self.name = name
        self.max_batch = max_batch
        self.concurrency = concurrency
        self.settings = settings
        self._clock = clock
        connections = settings.parallel * max(1, concurrency) + 1
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_s),
            verify=settings.verify,
            limits=httpx.Limits(max_connections=connections,
                                max_keepalive_connections=connections),
            headers={"Accept": "application/json", "User-Agent": "school-attendance-gateway"},
            follow_redirects=False,
            transport=transport,
        )
        self._resource_url = f"{settings.data_url}/{RESOURCE}"
        self._token: _Token | None = None
        self._token_lock = asyncio.Lock()
        self.tokens_fetched = 0  # for metrics and tests
        # What this process learnt, bounded: upstream ids (for deletes without a lookup) and the
        # newest revision delivered per event (an older version arriving later is not sent).
        self._delivered_revision: OrderedDict[str, int] = OrderedDict()

    def __repr__(self) -> str:
        return f"EdFiAdapter(name={self.name!r}, data_url={self.settings.data_url!r})"

    async def close(self) -> None:
        await self._http.aclose()

    # --- deliver -------------------------------------------------------------------------------

    async def deliver(self, items: Sequence[AttendanceItem]) -> list[DeliveryResult]:
        return await deliver_each(self.name, items, self.settings.parallel, self._deliver_one,
                                  log)

    async def _deliver_one(self, item: AttendanceItem) -> DeliveryResult:
        if item.kind == "unknown_card":
            return DeliveryResult(item.item_id, "delivered",
                                  reason="not sent: unknown cards are not attendance in Ed-Fi")
        descriptor = self.settings.descriptor(item.kind)
        if descriptor is None:
            return DeliveryResult(item.item_id, "delivered", reason=(
                f"not sent: {item.kind} is not mapped to an Ed-Fi category "
                f"(forward.{self.name}.categories)"))
        if item.student_id is None:
            return DeliveryResult(item.item_id, "parked", reason="the event has no student id")
        sent = self._delivered_revision.get(item.event_key)
        if sent is not None and sent > item.revision:
            return DeliveryResult(item.item_id, "delivered", reason=(
                f"not sent: revision {sent} of this event was delivered already"))
        try:
            key = self._natural_key(item, descriptor)
        except _Unplaced as exc:
            return DeliveryResult(item.item_id, "parked", reason=str(exc))
        if item.change == "voided":
            result = await self._remove(item, key)
        else:
            result = await self._upsert(item, key)
        if result.outcome == "delivered":
            _remember(self._delivered_revision, item.event_key, item.revision)
        return result

    # --- the resource --------------------------------------------------------------------------

    def _natural_key(self, item: AttendanceItem, descriptor: str) -> dict[str, Any]:
        try:
            day = dt.date.fromisoformat(item.school_date)
        except ValueError:
            raise _Unplaced(f"school date {item.school_date!r} is not a date") from None
        term = self.settings.term(day)
        if term is None:
            raise _Unplaced(f"no Ed-Fi session is configured for {day} "
                            f"(forward.{self.name}.terms)")
        session_name = term.session_name(item.session)
        if session_name is None:
            raise _Unplaced(f"our session {item.session!r} has no Ed-Fi sessionName "
                            f"(forward.{self.name}.session_names)")
        school = self.settings.school_id
        return {
            "attendanceEventCategoryDescriptor": descriptor,
            "eventDate": day.isoformat(),
            "schoolReference": {"schoolId": school},
            "sessionReference": {"schoolId": school, "schoolYear": term.school_year,
                                 "sessionName": session_name},
            "studentReference": {"studentUniqueId": item.student_id},
        }

    def _local_time(self, at_ms: int) -> str:
        return from_ms(at_ms, self.settings.timezone).strftime("%H:%M:%S")

    async def _upsert(self, item: AttendanceItem, key: dict[str, Any]) -> DeliveryResult:
        body = dict(key)
        if item.kind in ("check_in", "late"):
            body["arrivalTime"] = self._local_time(item.at_ms)
        elif item.kind == "check_out":
            body["departureTime"] = self._local_time(item.at_ms)
        response = await self._request("POST", self._resource_url, json=body)
        if response.status_code in (200, 201):
            upstream_id = _id_from_location(response.headers.get("location"))
            return DeliveryResult(item.item_id, "delivered", upstream_id=upstream_id)
        return self._refused(item, response, "POST")

    async def _remove(self, item: AttendanceItem, key: dict[str, Any]) -> DeliveryResult:
        """Delete the record of a voided event: by the id its last delivered version got (the
        outbox keeps it), else by natural-key lookup."""
        if item.upstream_id is not None:
            result = await self._delete(item, item.upstream_id)
            if result is not None:
                return result
        query = {
            "attendanceEventCategoryDescriptor": key["attendanceEventCategoryDescriptor"],
            "eventDate": key["eventDate"],
            "schoolId": str(self.settings.school_id),
            "schoolYear": str(key["sessionReference"]["schoolYear"]),
            "sessionName": key["sessionReference"]["sessionName"],
            "studentUniqueId": key["studentReference"]["studentUniqueId"],
        }
        response = await self._request("GET", self._resource_url, params=query)
        if response.status_code != 200:
            refused = self._refused(item, response, "GET")
            return DeliveryResult(item.item_id, "parked", reason=(
                "voided, but the record to delete cannot be looked up: " + refused.reason))
        found = _ids_in(response)
        if found is None:
            return DeliveryResult(item.item_id, "parked", reason=(
                "voided, but the natural-key lookup did not answer a list of resources"))
        for upstream_id in found:
            result = await self._delete(item, upstream_id)
            if result is not None and result.outcome != "delivered":
                return result
        if not found:
            return DeliveryResult(item.item_id, "delivered",
                                  reason="voided: no record upstream to delete")
        return DeliveryResult(item.item_id, "delivered", upstream_id=found[-1])

    async def _delete(self, item: AttendanceItem, upstream_id: str) -> DeliveryResult | None:
        """None: the id is not (or no longer) there."""
        response = await self._request("DELETE", f"{self._resource_url}/{upstream_id}")
        if response.status_code in (200, 204):
            return DeliveryResult(item.item_id, "delivered", upstream_id=upstream_id)
        if response.status_code == 404:
            return None
        return self._refused(item, response, "DELETE")

    def _refused(self, item: AttendanceItem, response: httpx.Response,
                 method: Method) -> DeliveryResult:
        """An answer that is neither success, 401, throttling nor a server error."""
        status = response.status_code
        problem = _problem(response)
        kind = str(problem.get("type") or "")
        explained = _explain(problem, item.student_id)
        if status == 409 and (kind == UNRESOLVED_REFERENCE or (
                not kind and "does not exist" in explained)):  # the latter: ODS/API 5.x, 6.x
            return DeliveryResult(item.item_id, "parked", reason=(
                f"unknown student or session (409 {kind or 'unresolved reference'}){explained}"))
        if status == 412 or (status == 409 and kind == WRITE_CONFLICT):
            return DeliveryResult(item.item_id, "retry",
                                  reason=f"write conflict upstream ({status}){explained}")
        if status == 404 and method != "DELETE":
            raise TargetDown(f"{method} answered 404: is forward.{self.name}.base_url "
                             f"(or data_url) right?")
        label = f"{status} {kind}".strip()
        return DeliveryResult(item.item_id, "parked",
                              reason=f"refused by Ed-Fi ({label}){explained}")

    # --- HTTP and the token --------------------------------------------------------------------

    async def _request(self, method: Method, url: str, *, json: Any = None,
                       params: Mapping[str, str] | None = None) -> httpx.Response:
        """One request with a valid bearer token: refreshed once on 401. Raises TargetDown
        (unreachable, 5xx, credentials refused) or Throttled (429, 503 with Retry-After)."""
        token = await self._bearer(stale=None)
        response = await self._send(method, url, token, json, params)
        if response.status_code == 401:
            token = await self._bearer(stale=token)
            response = await self._send(method, url, token, json, params)
            if response.status_code == 401:
                raise TargetDown("credentials refused (401 with a fresh token)")
        status = response.status_code
        if status == 429 or (status == 503 and "retry-after" in response.headers):
            delay = self._retry_after(response.headers.get("retry-after"))
            raise Throttled(f"upstream asked to slow down ({status})", delay)
        if status >= 500:
            raise TargetDown(f"{method} answered {status}")
        return response

    async def _send(self, method: Method, url: str, token: str, json: Any,
                    params: Mapping[str, str] | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        try:
            return await fetch(self._http, method, url, headers=headers, json=json,
                               params=params)
        except httpx.TimeoutException as exc:
            raise TargetDown(f"{method} timed out after {self.settings.timeout_s:g} s "
                             f"({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise TargetDown(f"{method} failed: {type(exc).__name__}: {short(str(exc))}"
                             ) from None

    async def _bearer(self, *, stale: str | None) -> str:
        """The cached token, or a new one when it is due for refresh or was refused (``stale``).
        Concurrent callers share one fetch."""
        token = self._token
        if token is not None and token.value != stale and self._clock() < token.refresh_at_ms:
            return token.value
        async with self._token_lock:
            token = self._token
            if token is not None and token.value != stale and self._clock() < token.refresh_at_ms:
                return token.value  # another request fetched it meanwhile
            self._token = await self._fetch_token()
            return self._token.value

    async def _fetch_token(self) -> _Token:
        started = self._clock()
        try:
            response = await fetch(
                self._http, "POST", self.settings.token_url,
                auth=httpx.BasicAuth(self.settings.client_id, self.settings.client_secret),
                data={"grant_type": "client_credentials"})
        except httpx.TimeoutException:
            raise TargetDown(f"token endpoint timed out after {self.settings.timeout_s:g} s"
                             ) from None
        except httpx.TransportError as exc:
            raise TargetDown(f"token endpoint failed: {type(exc).__name__}") from None
        status = response.status_code
        if status in (400, 401, 403):
            error = _problem(response).get("error") or ""
            raise TargetDown(f"credentials refused by the token endpoint ({status} {error})"
                             .replace(" )", ")"))
        if status in (429, 503):
            raise TargetDown(f"token endpoint answered {status}",
                             self._retry_after(response.headers.get("retry-after")))
        if status != 200:
            raise TargetDown(f"token endpoint answered {status}")
        try:
            payload = response.json()
            value = payload["access_token"]
            expires_in = float(payload.get("expires_in", 300))
        except (ValueError, KeyError, TypeError):
            raise TargetDown("token endpoint answered without an access_token") from None
        if not isinstance(value, str) or not value or not 0 < expires_in < 1e9:
            raise TargetDown("token endpoint answered an unusable token")
        self.tokens_fetched += 1
        lifetime_ms = int(expires_in * 1000)
        margin_ms = min(60_000, lifetime_ms // 10)  # refresh shortly before it runs out
        return _Token(value, started + lifetime_ms - margin_ms)

    def _retry_after(self, header: str | None) -> float | None:
        return retry_after_s(header, self._clock())


class _Unplaced(Exception):
    """The item cannot be placed in an Ed-Fi session (configuration): park it."""


def _remember(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _REMEMBERED_MAX:
        cache.popitem(last=False)


def _id_from_location(location: str | None) -> str | None:
    if not location:
        return None
    tail = urlsplit(location).path.rstrip("/").rsplit("/", 1)[-1]
    return tail or None


def _ids_in(response: httpx.Response) -> list[str] | None:
    try:
        payload = response.json()
    except ValueError:
        return None
    if not isinstance(payload, list):
        return None
    return [str(r["id"]) for r in payload if isinstance(r, dict) and isinstance(r.get("id"), str)]


def _problem(response: httpx.Response) -> dict[str, Any]:
    """The problem+json (or any JSON object) of an error answer; {} if there is none."""
    try:
        payload = response.json()
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _explain(problem: Mapping[str, Any], student_id: str | None) -> str:
    """': detail [fields: ...]' from a problem, without the student's id (reasons are shown
    and logged) and not too long."""
    parts = []
    detail = problem.get("detail") or problem.get("message") or problem.get("title")
    if isinstance(detail, str) and detail.strip():
        parts.append(detail.strip())
    fields = problem.get("validationErrors")
    if isinstance(fields, Mapping) and fields:
        parts.append("fields: " + ", ".join(str(k) for k in fields))
    correlation = problem.get("correlationId")
    if isinstance(correlation, str) and correlation:
        parts.append(f"correlationId {correlation}")
    text = "; ".join(parts)
    if student_id:
        text = text.replace(student_id, "<student>")
    return f": {short(text)}" if text else ""
