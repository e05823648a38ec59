"""An Ed-Fi ODS/API-like server: the part of the contract the attendance gateway uses.

- ``POST /oauth/token``: OAuth2 client credentials, HTTP Basic ``key:secret``, form
  ``grant_type=client_credentials`` -> ``{access_token, expires_in, token_type}``. Tokens expire
  after ``token_ttl_s`` on the peer's clock (injectable); :meth:`EdFiPeer.expire_tokens` ends
  them all at once.
- ``/data/v3/ed-fi/studentSchoolAttendanceEvents``: bearer token required (401 otherwise).
  ``POST`` validates the body (400 problem+json with ``validationErrors``), resolves the school,
  session, student and descriptor (an unknown reference: 409
  ``urn:ed-fi:api:conflict:unresolved-reference``) and upserts on the natural key (category
  descriptor, eventDate, schoolId, schoolYear, sessionName, studentUniqueId): 201 with
  ``Location`` when created, 200 when updated. ``GET`` lists, filtered by natural-key query
  parameters (flattened names, as Ed-Fi does); ``GET``/``DELETE`` ``/{id}``.
- Faults (:meth:`EdFiPeer.inject`): the next N requests of an endpoint answer a status (500,
  429 with Retry-After, 400, ...), are slow (then handled: the client may have given up on a
  request the peer still stores), or have their connection dropped without an answer.

``requests`` records every request; ``records`` holds the stored resources by id.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from sim.peers import LoopbackServer

RESOURCE_PATH = "/data/v3/ed-fi/studentSchoolAttendanceEvents"
TOKEN_PATH = "/oauth/token"
NAMESPACE = "uri://ed-fi.org/AttendanceEventCategoryDescriptor"
CATEGORIES = ("In Attendance", "Excused Absence", "Unexcused Absence", "Tardy",
              "Early departure", "Partial")
UNRESOLVED = "urn:ed-fi:api:conflict:unresolved-reference"
VALIDATION_FAILED = "urn:ed-fi:api:bad-request:data-validation-failed"
NATURAL_KEY = ("attendanceEventCategoryDescriptor", "eventDate", "schoolId", "schoolYear",
               "sessionName", "studentUniqueId")
_BODY: web.RequestKey[Any] = web.RequestKey("parsed_body", object)  # read by the middleware
_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d:[0-5]\d$")

Endpoint = Literal["data", "token", "any"]
NaturalKey = tuple[str, str, int, int, str, str]


@dataclass(frozen=True)
class Fault:
    """What the next request to ``endpoint`` gets instead of (or before) its answer."""

    kind: Literal["status", "slow", "drop"] = "status"
    status: int = 500
    retry_after: str | None = None  # a 429/503's Retry-After header, as sent
    problem: dict[str, Any] | None = None  # the problem+json body (a default one if None)
    delay_s: float = 0.0  # "slow": wait this long, then handle the request normally
    endpoint: Endpoint = "data"


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    status: int  # 0: the connection was dropped
    body: Any  # parsed JSON or form, None if empty
    bearer: str | None  # the token presented (never compared by tests, only counted)
    fault: str | None = None


@dataclass
class EdFiPeer(LoopbackServer):
    client_id: str = "attendance-gateway"
    client_secret: str = "s3cr3t-for-tests"
    token_ttl_s: float = 2.0
    school_id: int = 255901001
    sessions: set[tuple[int, str]] = field(default_factory=lambda: {(2026, "Học kỳ I")})
    students: set[str] = field(default_factory=set)
    namespace: str = NAMESPACE
    clock: Callable[[], float] = time.monotonic  # seconds; tokens expire on this clock
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    tokens_issued: int = 0

    def __post_init__(self) -> None:
        self._tokens: dict[str, float] = {}  # token -> expiry on self.clock
        self._by_key: dict[NaturalKey, str] = {}
        self._faults: deque[Fault] = deque()

    # --- life ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post(TOKEN_PATH, self._token)
        app.router.add_post(RESOURCE_PATH, self._post)
        app.router.add_get(RESOURCE_PATH, self._list)
        app.router.add_get(RESOURCE_PATH + "/{id}", self._get)
        app.router.add_delete(RESOURCE_PATH + "/{id}", self._delete)
        return app

    # --- test controls ----------------------------------------------------------------------

    def inject(self, fault: Fault, times: int = 1) -> None:
        """The next ``times`` requests to ``fault.endpoint`` get ``fault`` (in FIFO order)."""
        self._faults.extend([fault] * times)

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def pending_faults(self) -> int:
        return len(self._faults)

    def expire_tokens(self) -> None:
        self._tokens.clear()

    def natural_key(self, resource: dict[str, Any]) -> NaturalKey:
        return _key(resource)

    def count(self, method: str, path: str = RESOURCE_PATH, status: int | None = None) -> int:
        return sum(1 for r in self.requests if r.method == method and r.path.startswith(path)
                   and (status is None or r.status == status))

    def by_key(self) -> dict[NaturalKey, dict[str, Any]]:
        return {key: self.records[rid] for key, rid in self._by_key.items()}

    # --- plumbing ---------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        body = await _body(request)
        bearer = request.headers.get("Authorization", "")
        token = bearer[7:] if bearer.startswith("Bearer ") else None
        endpoint: Endpoint = "token" if request.path == TOKEN_PATH else "data"
        fault = self._take_fault(endpoint)

        def record(status: int, note: str | None = None) -> None:
            self.requests.append(Recorded(request.method, request.path, dict(request.query),
                                          status, body, token, note))

        if fault is not None and fault.kind == "drop":
            record(0, "drop")
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)  # never reaches the client
        if fault is not None and fault.kind == "status":
            response = _fault_response(fault)
            record(response.status, "status")
            return response
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay_s)
        if endpoint == "data" and not self._valid(token):
            response = _problem(401, "urn:ed-fi:api:security:authentication",
                                "Unauthorized", "The access token is invalid or has expired.")
            response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        else:
            request[_BODY] = body
            response = await handler(request)
        record(response.status, fault.kind if fault else None)
        return response

    def _take_fault(self, endpoint: Endpoint) -> Fault | None:
        if self._faults and self._faults[0].endpoint in (endpoint, "any"):
            return self._faults.popleft()
        return None

    def _valid(self, token: str | None) -> bool:
        expires = self._tokens.get(token or "")
        return expires is not None and self.clock() < expires

    # --- token ------------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        try:
            key, _, secret = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            key = secret = ""
        if not header.startswith("Basic ") or (key, secret) != (self.client_id,
                                                                  self.client_secret):
            return web.json_response({"error": "invalid_client"}, status=401)
        form = request[_BODY]
        if not isinstance(form, dict) or form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        token = secrets.token_hex(16)
        self._tokens[token] = self.clock() + self.token_ttl_s
        self.tokens_issued += 1
        return web.json_response({"access_token": token, "expires_in": self.token_ttl_s,
                                  "token_type": "bearer"})

    # --- the resource -----------------------------------------------------------------------

    async def _post(self, request: web.Request) -> web.Response:
        body = request[_BODY]
        errors = _validate(body)
        if errors:
            return _problem(400, VALIDATION_FAILED, "Data Validation Failed",
                            "Data validation failed. See 'validationErrors' for details.",
                            validationErrors=errors)
        descriptor = body["attendanceEventCategoryDescriptor"]
        namespace, _, code = descriptor.partition("#")
        if namespace != self.namespace or code not in CATEGORIES:
            return _problem(400, VALIDATION_FAILED, "Data Validation Failed",
                            "Data validation failed. See 'validationErrors' for details.",
                            validationErrors={"$.attendanceEventCategoryDescriptor": [
                                "AttendanceEventCategoryDescriptor value does not exist."]})
        session = body["sessionReference"]
        missing = []
        if body["schoolReference"]["schoolId"] != self.school_id:
            missing.append("School")
        if (session["schoolYear"], session["sessionName"]) not in self.sessions \
                or session["schoolId"] != self.school_id:
            missing.append("Session")
        if body["studentReference"]["studentUniqueId"] not in self.students:
            missing.append("Student")
        if missing:
            names = ", ".join(f"'{m}'" for m in missing)
            return _problem(409, UNRESOLVED, "Unresolved Reference",
                            f"The referenced {names} item(s) do not exist.")
        key = _key(body)
        now = dt.datetime.now(dt.UTC).isoformat()
        existing = self._by_key.get(key)
        resource = copy.deepcopy(body)
        resource.pop("id", None)
        if existing is None:
            rid = secrets.token_hex(16)
            self._by_key[key] = rid
            status = 201
        else:
            rid = existing
            status = 200
        resource.update({"id": rid, "_etag": secrets.token_hex(8), "_lastModifiedDate": now})
        self.records[rid] = resource
        return web.Response(status=status,
                            headers={"Location": f"{self.base_url}{RESOURCE_PATH}/{rid}"})

    async def _list(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        limit = int(query.pop("limit", "25"))
        offset = int(query.pop("offset", "0"))
        unknown = [name for name in query if name not in NATURAL_KEY]
        if unknown:
            return _problem(400, "urn:ed-fi:api:bad-request", "Bad Request",
                            f"The request is invalid: unknown parameter(s) {', '.join(unknown)}")
        found = [r for r in self.records.values()
                 if all(str(_flat(r)[name]) == value for name, value in query.items())]
        return web.json_response(found[offset:offset + limit])

    async def _get(self, request: web.Request) -> web.Response:
        record = self.records.get(request.match_info["id"])
        if record is None:
            return _problem(404, "urn:ed-fi:api:not-found", "Not Found",
                            "The specified data could not be found.")
        return web.json_response(record)

    async def _delete(self, request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        record = self.records.pop(rid, None)
        if record is None:
            return _problem(404, "urn:ed-fi:api:not-found", "Not Found",
                            "Resource to delete was not found.")
        del self._by_key[_key(record)]
        return web.Response(status=204)


def _flat(resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "attendanceEventCategoryDescriptor": resource["attendanceEventCategoryDescriptor"],
        "eventDate": resource["eventDate"],
        "schoolId": resource["schoolReference"]["schoolId"],
        "schoolYear": resource["sessionReference"]["schoolYear"],
        "sessionName": resource["sessionReference"]["sessionName"],
        "studentUniqueId": resource["studentReference"]["studentUniqueId"],
    }


def _key(resource: dict[str, Any]) -> NaturalKey:
    flat = _flat(resource)
    return (flat["attendanceEventCategoryDescriptor"], flat["eventDate"], flat["schoolId"],
            flat["schoolYear"], flat["sessionName"], flat["studentUniqueId"])


async def _body(request: web.Request) -> Any:
    if not request.can_read_body:
        return None
    if request.content_type == "application/x-www-form-urlencoded":
        return dict(await request.post())
    try:
        return await request.json()
    except ValueError:
        return "<not json>"


def _validate(body: Any) -> dict[str, list[str]]:
    if not isinstance(body, dict):
        return {"$": ["The request body must be a JSON object."]}
    errors: dict[str, list[str]] = {}

    def need(path: str, value: Any, kind: type | tuple[type, ...]) -> None:
        if value is None:
            errors[path] = [f"{path.rsplit('.', 1)[-1]} is required."]
        elif isinstance(value, bool) or not isinstance(value, kind) or value == "":
            errors[path] = [f"{path.rsplit('.', 1)[-1]} has an invalid value."]

    def member(obj: Any, name: str) -> Any:
        return obj.get(name) if isinstance(obj, dict) else None

    need("$.attendanceEventCategoryDescriptor", body.get("attendanceEventCategoryDescriptor"),
         str)
    need("$.eventDate", body.get("eventDate"), str)
    if "$.eventDate" not in errors:
        try:
            dt.date.fromisoformat(body["eventDate"])
        except ValueError:
            errors["$.eventDate"] = ["eventDate is not a valid date."]
    need("$.schoolReference.schoolId", member(body.get("schoolReference"), "schoolId"), int)
    session = body.get("sessionReference")
    need("$.sessionReference.schoolId", member(session, "schoolId"), int)
    need("$.sessionReference.schoolYear", member(session, "schoolYear"), int)
    need("$.sessionReference.sessionName", member(session, "sessionName"), str)
    need("$.studentReference.studentUniqueId",
         member(body.get("studentReference"), "studentUniqueId"), str)
    for name in ("arrivalTime", "departureTime"):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or not _TIME.match(value)):
            errors[f"$.{name}"] = [f"{name} must be a time like 07:05:00."]
    return errors


def _problem(status: int, kind: str, title: str, detail: str, **extra: Any) -> web.Response:
    payload = {"detail": detail, "type": kind, "title": title, "status": status,
               "correlationId": secrets.token_hex(6), **extra}
    return web.json_response(payload, status=status, content_type="application/problem+json")


def _fault_response(fault: Fault) -> web.Response:
    defaults = {
        400: ("urn:ed-fi:api:bad-request", "Bad Request", "The request is invalid."),
        429: ("urn:ed-fi:api:too-many-requests", "Too Many Requests", "Slow down."),
        503: ("urn:ed-fi:api:service-unavailable", "Service Unavailable", "Try again later."),
    }
    kind, title, detail = defaults.get(fault.status, (
        "urn:ed-fi:api:system-error", "System Error",
        "An unexpected problem has occurred."))
    payload = fault.problem or {"detail": detail, "type": kind, "title": title,
                                "status": fault.status, "correlationId": secrets.token_hex(6)}
    response = web.json_response(payload, status=fault.status,
                                 content_type="application/problem+json")
    if fault.retry_after is not None:
        response.headers["Retry-After"] = fault.retry_after
    return response

