"""An OpenEMIS Core-like server: the part of its API the attendance gateway uses.

- ``POST /api/login`` with JSON ``username``, ``password``, ``api_key`` -> ``{"message":
  "Successful.", "data": {"token": <JWT>}}``. The JWT is HS256-signed by the peer, with ``exp``
  ``token_ttl_s`` ahead on the peer's clock (injectable); an expired, altered or revoked
  (:meth:`OpenEmisPeer.revoke_tokens`) token gets 401 everywhere else.
- ``/api/v5/institution-student-absence-details``: ``POST`` validates the row (integer ids, a
  date, a known student, class, institution and academic period, absence type 1-3; 422 with
  Laravel-style ``errors`` otherwise) and creates it under its composite key (student,
  institution, academic period, class, date, period, subject): 201, or 409 if that key exists.
  ``GET``/``PUT``/``DELETE`` on the key path
  ``/student_id/{..}/institution_id/{..}/academic_period_id/{..}/institution_class_id/{..}/
  date/{..}/period/{..}/subject_id/{..}`` read, update (200) and delete (204) one row; 404 if
  there is none.
- ``POST /api/v5/student-attendance-marked-records``: the class's day and period marked (201),
  409 if already marked.
- Faults (:meth:`OpenEmisPeer.inject`): the next N requests of an endpoint answer a status (500,
  429 or 503 with Retry-After, ...), are slow, or lose their connection.

``requests`` records every request; ``absences`` and ``marked`` hold what is stored.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from sim.peers import LoopbackServer

LOGIN_PATH = "/api/login"
ABSENCES_PATH = "/api/v5/institution-student-absence-details"
MARKED_PATH = "/api/v5/student-attendance-marked-records"
ROW_KEY = ("student_id", "institution_id", "academic_period_id", "institution_class_id", "date",
           "period", "subject_id")
ROW_FIELDS = (*ROW_KEY, "education_grade_id", "absence_type_id")
MARKED_KEY = ("institution_id", "academic_period_id", "institution_class_id", "date", "period",
              "subject_id")
_ROW_PATH = ABSENCES_PATH + "".join(f"/{name}/{{{name}}}" for name in ROW_KEY)
_BODY = web.RequestKey("parsed_body", object)

Endpoint = Literal["login", "data", "any"]
RowKey = tuple[int, int, int, int, str, int, int]


@dataclass(frozen=True)
class Fault:
    kind: Literal["status", "slow", "drop"] = "status"
    status: int = 500
    retry_after: str | None = None
    delay_s: float = 0.0
    endpoint: Endpoint = "data"


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    status: int  # 0: the connection was dropped
    body: Any
    authorized: bool


@dataclass
class OpenEmisPeer(LoopbackServer):
    username: str = "gateway-api"
    password: str = "pa55-for-tests"
    api_key: str = "api-key-for-tests"
    token_ttl_s: float = 600.0
    institution_id: int = 1001
    academic_period_id: int = 32
    students: set[int] = field(default_factory=set)
    classes: dict[int, int] = field(default_factory=dict)  # institution_class_id -> grade id
    clock: Callable[[], float] = time.time  # seconds; tokens expire on this clock
    absences: dict[RowKey, dict[str, Any]] = field(default_factory=dict)
    marked: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    tokens_issued: int = 0

    def __post_init__(self) -> None:
        self._secret = secrets.token_bytes(32)
        self._generation = 0  # tokens of an older generation are revoked
        self._faults: deque[Fault] = deque()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post(LOGIN_PATH, self._login)
        app.router.add_post(ABSENCES_PATH, self._post_absence)
        app.router.add_get(_ROW_PATH, self._get_row)
        app.router.add_put(_ROW_PATH, self._put_row)
        app.router.add_delete(_ROW_PATH, self._delete_row)
        app.router.add_post(MARKED_PATH, self._post_marked)
        return app

    # --- test controls ----------------------------------------------------------------------

    def inject(self, fault: Fault, times: int = 1) -> None:
        self._faults.extend([fault] * times)

    def revoke_tokens(self) -> None:
        """Every token issued so far is refused from now on (server-side expiry)."""
        self._generation += 1

    def count(self, method: str, path: str = ABSENCES_PATH, status: int | None = None) -> int:
        return sum(1 for r in self.requests if r.method == method and r.path.startswith(path)
                   and (status is None or r.status == status))

    def rows(self) -> dict[tuple[int, str, int], int]:
        """(student_id, date, period) -> absence_type_id of every stored row."""
        return {(k[0], k[4], k[5]): row["absence_type_id"] for k, row in self.absences.items()}

    # --- plumbing ---------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                body = "<not json>"
        endpoint: Endpoint = "login" if request.path == LOGIN_PATH else "data"
        fault = None
        if self._faults and self._faults[0].endpoint in (endpoint, "any"):
            fault = self._faults.popleft()
        authorized = endpoint == "login" or self._valid(request.headers.get("Authorization"))

        def record(status: int) -> None:
            self.requests.append(Recorded(request.method, request.path, status, body,
                                          authorized))

        if fault is not None and fault.kind == "drop":
            record(0)
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if fault is not None and fault.kind == "status":
            response = web.json_response({"message": f"Injected {fault.status}"},
                                         status=fault.status)
            if fault.retry_after is not None:
                response.headers["Retry-After"] = fault.retry_after
            record(fault.status)
            return response
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay_s)
        if not authorized:
            response = web.json_response({"message": "Unauthenticated."}, status=401)
        else:
            request[_BODY] = body
            response = await handler(request)
        record(response.status)
        return response

    # --- the JWT ----------------------------------------------------------------------------

    def _sign(self, signing_input: bytes) -> str:
        mac = hmac.new(self._secret, signing_input, hashlib.sha256).digest()
        return _b64url(mac)

    def _issue(self) -> str:
        now = self.clock()
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64url(json.dumps({"sub": self.username, "iat": int(now),
                                      "exp": int(now + self.token_ttl_s),
                                      "gen": self._generation}).encode())
        signing_input = f"{header}.{payload}".encode()
        self.tokens_issued += 1
        return f"{header}.{payload}.{self._sign(signing_input)}"

    def _valid(self, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Bearer "):
            return False
        parts = authorization[7:].split(".")
        if len(parts) != 3:
            return False
        expected = self._sign(f"{parts[0]}.{parts[1]}".encode())
        if not hmac.compare_digest(expected, parts[2]):
            return False
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return bool(claims["gen"] == self._generation and self.clock() < claims["exp"])

    async def _login(self, request: web.Request) -> web.Response:
        body: Any = request[_BODY]
        if not isinstance(body, dict) or (body.get("username"), body.get("password"),
                                          body.get("api_key")) != (self.username, self.password,
                                                                   self.api_key):
            return web.json_response({"message": "Invalid credentials."}, status=401)
        return web.json_response({"message": "Successful.", "data": {"token": self._issue()}})

    # --- absences ---------------------------------------------------------------------------

    def _invalid(self, body: Any, fields: tuple[str, ...]) -> dict[str, list[str]]:
        if not isinstance(body, dict):
            return {"body": ["The body must be a JSON object."]}
        errors: dict[str, list[str]] = {}
        for name in fields:
            value = body.get(name)
            if name == "date":
                try:
                    dt.date.fromisoformat(str(value) if isinstance(value, str) else "")
                except ValueError:
                    errors[name] = ["The date is not a valid date."]
            elif isinstance(value, bool) or not isinstance(value, int):
                errors[name] = [f"The {name.replace('_', ' ')} must be an integer."]
        if errors:
            return errors
        if body["institution_id"] != self.institution_id:
            errors["institution_id"] = ["The selected institution id is invalid."]
        if body["academic_period_id"] != self.academic_period_id:
            errors["academic_period_id"] = ["The selected academic period id is invalid."]
        if self.classes.get(body["institution_class_id"]) != body["education_grade_id"]:
            errors["institution_class_id"] = ["The selected institution class id is invalid."]
        if "student_id" in fields and body["student_id"] not in self.students:
            errors["student_id"] = [f"The selected student id {body['student_id']} is invalid."]
        if "absence_type_id" in fields and body["absence_type_id"] not in (1, 2, 3):
            errors["absence_type_id"] = ["The selected absence type id is invalid."]
        return errors

    async def _post_absence(self, request: web.Request) -> web.Response:
        body: Any = request[_BODY]
        errors = self._invalid(body, ROW_FIELDS)
        if errors:
            return _invalid(errors)
        key: RowKey = tuple(body[name] for name in ROW_KEY)
        if key in self.absences:
            return web.json_response({"message": "The record already exists."}, status=409)
        row = {name: body[name] for name in ROW_FIELDS}
        self.absences[key] = row
        return web.json_response({"message": "Created successfully", "data": row}, status=201)

    def _key_of(self, request: web.Request) -> RowKey | None:
        info = request.match_info
        try:
            dt.date.fromisoformat(info["date"])
            return (int(info["student_id"]), int(info["institution_id"]),
                    int(info["academic_period_id"]), int(info["institution_class_id"]),
                    info["date"], int(info["period"]), int(info["subject_id"]))
        except ValueError:
            return None

    async def _get_row(self, request: web.Request) -> web.Response:
        key = self._key_of(request)
        if key is None or key not in self.absences:
            return web.json_response({"message": "Record not found"}, status=404)
        return web.json_response({"message": "Successful.", "data": self.absences[key]})

    async def _put_row(self, request: web.Request) -> web.Response:
        key = self._key_of(request)
        if key is None or key not in self.absences:
            return web.json_response({"message": "Record not found"}, status=404)
        body: Any = request[_BODY]
        errors = self._invalid(body, ROW_FIELDS)
        if errors:
            return _invalid(errors)
        if tuple(body[name] for name in ROW_KEY) != key:
            return _invalid({"student_id": ["The key cannot be changed."]})
        self.absences[key] = {name: body[name] for name in ROW_FIELDS}
        return web.json_response({"message": "Updated successfully",
                                  "data": self.absences[key]})

    async def _delete_row(self, request: web.Request) -> web.Response:
        key = self._key_of(request)
        if key is None or self.absences.pop(key, None) is None:
            return web.json_response({"message": "Record not found"}, status=404)
        return web.Response(status=204)

    async def _post_marked(self, request: web.Request) -> web.Response:
        body: Any = request[_BODY]
        errors = self._invalid(body, (*MARKED_KEY, "education_grade_id", "no_scheduled_class"))
        if errors:
            return _invalid(errors)
        key = tuple(body[name] for name in MARKED_KEY)
        if key in self.marked:
            return web.json_response({"message": "The record already exists."}, status=409)
        self.marked[key] = dict(body)
        return web.json_response({"message": "Created successfully", "data": body}, status=201)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _invalid(errors: dict[str, list[str]]) -> web.Response:
    return web.json_response({"message": "The given data was invalid.", "errors": errors},
                             status=422)
