"""The dashboard's routes: pages (GET, read-only), live taps, exports and operator actions.

- anyone: ``GET /login``, ``POST /login``, ``GET /lang``, ``GET /static/…``;
- viewer (or the anonymous loopback view): ``GET /`` (overview), ``/attendance``,
  ``/attendance/class/{id}``, ``/readers``, ``/unknown-cards``, ``/quarantine``, ``/outbox``,
  ``/events`` (live taps), ``/export.csv``, ``/export.xlsx``;
- operator: ``POST /outbox/{forward|notify}/{name}/retry``, ``/unknown-cards/ack``,
  ``/unknown-cards/assign``;
- admin: ``POST /readers/{id}/rotate``, ``/readers/{id}/finish-rotation``,
  ``/readers/{id}/revoke``;
- any logged-in user: ``POST /logout``.

Queries run on the dashboard's connections (``gateway/dashboard/store.py``); tables and exports
are ``gateway.reports``'s, as in the CLI. Every action that changes something and every export
is recorded with the acting user, role, client address and scope (``gateway/dashboard/audit.py``:
the ``dashboard_audit`` table and a ``dashboard audit`` log line); a refused action is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hmac
import logging
import re
import secrets
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlencode

from aiohttp import web

from gateway import reports
from gateway.dashboard import audit, auth, charts, pages, views
from gateway.dashboard.auth import Role
from gateway.dashboard.i18n import lang_of, session_name, tr
from gateway.dashboard.live import recent_taps
from gateway.dashboard.state import (
    LANG_COOKIE,
    LOGIN_COOKIE,
    SESSION,
    SESSION_COOKIE,
    STATE,
    DashboardState,
    context,
    html,
    refuse,
)
from gateway.outbox import OutboxError
from gateway.registry import Registry, RegistryError

log = logging.getLogger("gateway.dashboard")

STATIC_DIR = Path(__file__).with_name("static")
STATIC_TYPES = {"style.css": "text/css", "live.js": "text/javascript"}
KEEPALIVE_S = 15.0
RATE_WEEKS = 6
RATES_CACHE_MS = 300_000
EXPORT_MAX_DAYS = 366
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_-]+")
# ?done=… after an action: the notice's text and the query parameters it takes
NOTICES = {
    "retried": ("outbox.retried", ("name", "count")),
    "acked": ("unknown.acked", ("card",)),
    "assigned": ("unknown.assigned", ("card", "number", "student")),
    "already": ("unknown.already", ("number", "student")),
    "finished": ("readers.finished", ("reader", "count")),
    "revoked": ("readers.revoked", ("reader",)),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/login", login_form)
    r.add_post("/login", login_submit)
    r.add_post("/logout", logout)
    r.add_get("/lang", set_lang)
    r.add_get("/static/{name}", static)
    r.add_get("/", overview)
    r.add_get("/events", events)
    r.add_get("/attendance", attendance)
    r.add_get("/attendance/class/{class_id}", class_view)
    r.add_get("/readers", readers)
    r.add_get("/unknown-cards", unknown_cards)
    r.add_get("/quarantine", quarantine)
    r.add_get("/outbox", outbox_view)
    r.add_get("/export.csv", export_csv)
    r.add_get("/export.xlsx", export_xlsx)
    r.add_post("/outbox/{kind}/{name}/retry", retry)
    r.add_post("/unknown-cards/ack", acknowledge)
    r.add_post("/unknown-cards/assign", assign)
    r.add_post("/readers/{reader_id}/rotate", rotate)
    r.add_post("/readers/{reader_id}/finish-rotation", finish_rotation)
    r.add_post("/readers/{reader_id}/revoke", revoke)


def requires(role: Role) -> Callable[[Handler], Handler]:
    """Refuse (403) anyone below ``role``; the access middleware already checked the session
    and the CSRF token of a POST."""
    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def checked(request: web.Request) -> web.StreamResponse:
            session = request.get(SESSION)
            if session is None or not auth.has_role(session.role, role):
                log.warning("dashboard action refused", extra={
                    "user": session.username if session else None,
                    "role": session.role if session else "anonymous",
                    "address": request.remote or "unknown", "action": handler.__name__,
                    "needs": role})
                ctx = context(request)
                return refuse(request, 403, "error.forbidden", role=ctx.t(f"role.{role}"))
            return await handler(request)
        return checked
    return wrap


def _state(request: web.Request) -> DashboardState:
    return request.app[STATE]


async def _read(request: web.Request, fn: Callable[[Any], T]) -> T:
    return await _state(request).db.read(fn)


def _actor(request: web.Request) -> audit.Actor:
    session = request.get(SESSION)
    address = request.remote or "unknown"
    if session is None:
        return audit.Actor(None, None, "anonymous", address)
    return audit.Actor(session.user_id, session.username, session.role, address)


def _nothing(conn: sqlite3.Connection) -> None:
    """The change of an action that changes nothing in the database (an export)."""
    return None


async def _audited(request: web.Request, action: str,
                   scope: Callable[[T], Mapping[str, object]],
                   change: Callable[[sqlite3.Connection], T],
                   private: Callable[[T], Mapping[str, object]] | None = None) -> T:
    """``change`` on the write connection, then its audit row in the same database job (after
    the change committed: the registry and the roster run their own transactions), then the
    log line. ``scope(done)`` goes to both, ``private(done)`` (card numbers, student ids) only
    to the row. A change that raises records nothing."""
    state = _state(request)
    actor = _actor(request)

    def run(conn: sqlite3.Connection) -> tuple[T, Mapping[str, object], int]:
        done = change(conn)
        shown = scope(done)
        whole = {**shown, **(private(done) if private is not None else {})}
        return done, shown, audit.record(conn, actor, action, whole, state.clock())

    done, shown, audit_id = await state.db.write(run)
    audit.logged(actor, action, shown, audit_id)
    return done


def _local_path(target: str | None) -> str:
    """Only a path on this site (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


def _notice(request: web.Request) -> str | None:
    found = NOTICES.get(request.query.get("done", ""))
    if found is None:
        return None
    key, names = found
    return context(request).t(key, **{n: request.query.get(n, "") for n in names})


def _date(request: web.Request, name: str, default: dt.date) -> dt.date:
    text = request.query.get(name)
    if not text:
        return default
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise web.HTTPBadRequest(
            text=f"{name}: ngày không hợp lệ / not a date like 2026-09-05") from None


def _cookie(state: DashboardState, response: web.StreamResponse, name: str, value: str, *,
            max_age: int, path: str = "/") -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, httponly=True,
                        samesite="Strict", secure=state.config.dashboard.cookie_secure)


def _see_other(path: str, **query: object) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(path + ("?" + urlencode(query) if query else ""))


# -- login, logout, language, static files -----------------------------------------------------

def _login_page(request: web.Request, message: str | None, status: int = 200,
                next_path: str = "/") -> web.Response:
    state = _state(request)
    # one token per browser, kept while it shows login forms (two tabs, a retry)
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = html(pages.login_page(lang_of(request.cookies.get(LANG_COOKIE)), token=token,
                                     next_path=next_path, message=message,
                                     school=state.config.school), status)
    _cookie(state, response, LOGIN_COOKIE, token, max_age=3600, path="/login")
    return response


async def login_form(request: web.Request) -> web.StreamResponse:
    lang = lang_of(request.cookies.get(LANG_COOKIE))
    message = tr(lang, "login.expired") if request.query.get("expired") else None
    return _login_page(request, message, next_path=_local_path(request.query.get("next")))


async def login_submit(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    lang = lang_of(request.cookies.get(LANG_COOKIE))
    form = await request.post()
    next_path = _local_path(str(form.get("next", "/")))
    given, expected = str(form.get("login_token", "")), request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        return _login_page(request, tr(lang, "login.form_expired"), 403, next_path)
    username, password = str(form.get("username", "")), str(form.get("password", ""))
    address = request.remote or "unknown"
    result = await state.db.write(lambda conn: auth.login(
        conn, username, password, address, state.clock(), policy=state.policy,
        limit=state.limit, params=state.kdf))
    state.metrics.logins.labels(result.outcome).inc()
    log.log(logging.INFO if result.outcome == "ok" else logging.WARNING, "dashboard login",
            extra={"outcome": result.outcome, "address": address,
                   "user": result.session.session.username if result.session else None})
    if result.outcome == "locked":
        response = _login_page(request, tr(lang, "login.locked",
                                           minutes=-(-result.retry_after_s // 60)), 429,
                               next_path)
        response.headers["Retry-After"] = str(result.retry_after_s)
        return response
    if result.session is None:
        return _login_page(request, tr(lang, "login.failed"), 401, next_path)
    response = web.HTTPSeeOther(next_path)
    _cookie(state, response, SESSION_COOKIE, result.session.token,
            max_age=state.policy.lifetime_ms // 1000)
    response.del_cookie(LOGIN_COOKIE, path="/login")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    token = request.cookies.get(SESSION_COOKIE)
    if token and request.get(SESSION) is not None:
        await _audited(request, "logout", lambda _: {},
                       lambda conn: auth.end_session(conn, token))
    elif token:
        await state.db.write(lambda conn: auth.end_session(conn, token))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


async def set_lang(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther(_local_path(request.query.get("next")))
    _cookie(_state(request), response, LANG_COOKIE, lang_of(request.query.get("l")),
            max_age=365 * 86_400)
    raise response


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in STATIC_TYPES:
        raise web.HTTPNotFound()
    body = await asyncio.to_thread((STATIC_DIR / name).read_bytes)
    return web.Response(body=body, content_type=STATIC_TYPES[name], charset="utf-8",
                        headers={"Cache-Control": "max-age=300"})


# -- pages -------------------------------------------------------------------------------------

async def overview(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    ctx = context(request)
    calendar = state.calendar

    def read(conn: Any) -> Any:
        now = ctx.now_ms
        status = reports.status_report(conn, calendar, now)
        targets, channels = views.queues(conn, state.config, calendar, now)
        day = calendar.local_date(now)
        taps = recent_taps(conn, calendar.at(day, dt.time()))
        windows = calendar.windows(day)
        started = [w for w in windows if w.start_ms - 30 * 60_000 <= now]
        window = started[-1] if started else (windows[0] if windows else None)
        bars = None if window is None else views.arrivals(conn, window, calendar.timezone, now)
        return status, sum(r.parked for r in targets + channels), taps, window, bars

    status, parked, taps, window, bars = await _read(request, read)
    chart = None
    if window is not None and bars is not None:
        counts, late = bars
        title = ctx.t("chart.arrivals", session=session_name(ctx.lang, window.name))
        chart = (title, charts.arrivals_chart(
            counts, title=title, marker=(late, ctx.t(
                "chart.late_after", time=window.session.late_after.strftime("%H:%M")))))
    return html(pages.overview_page(ctx, status, parked, taps, chart,
                                    chart_empty=bars is not None and not any(
                                        c for _, c in bars[0])))


async def attendance(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    ctx = context(request)
    today = state.calendar.local_date(ctx.now_ms)
    day = _date(request, "date", today)
    report = await _read(request, lambda conn: reports.day_report(conn, state.calendar, day))
    cached = state.cache.get("rates")
    if cached is None or cached[0] <= ctx.now_ms or cached[1][0] != today:
        rates = await _read(request, lambda conn: views.weekly_rates(conn, state.calendar,
                                                                     today, RATE_WEEKS))
        cached = (ctx.now_ms + RATES_CACHE_MS, (today, rates))
        state.cache["rates"] = cached
    columns, rows = cached[1][1]
    title = ctx.t("chart.rates", weeks=RATE_WEEKS)
    chart = (title, charts.rates_chart(rows, columns, title=title)) if rows else None
    return html(pages.attendance_page(ctx, report, chart))


async def class_view(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    ctx = context(request)
    class_id = request.match_info["class_id"]
    day = _date(request, "date", state.calendar.local_date(ctx.now_ms))

    def read(conn: Any) -> Any:
        row = conn.execute("SELECT name FROM classes WHERE class_id = ?", (class_id,)).fetchone()
        if row is None:
            return None
        return str(row[0]), reports.day_report(conn, state.calendar, day, class_id)

    found = await _read(request, read)
    if found is None:
        return refuse(request, 404, "error.not_found")
    name, report = found
    return html(pages.class_page(ctx, report, class_id, name))


async def _readers_page(request: web.Request, error: str | None = None,
                        status: int = 200) -> web.Response:
    state = _state(request)
    ctx = context(request)

    def read(conn: Any) -> Any:
        registry = {r.reader_id: r for r in Registry(conn, state.config.master_key_file
                                                     ).readers()} if ctx.can("admin") else {}
        return reports.reader_health(conn, ctx.now_ms), registry

    health, registry = await _read(request, read)
    return html(pages.readers_page(ctx, health, registry, _notice(request), error), status)


async def readers(request: web.Request) -> web.StreamResponse:
    return await _readers_page(request)


async def _unknown_page(request: web.Request, error: str | None = None,
                        status: int = 200) -> web.Response:
    show_all = request.query.get("all") == "1" or error is not None  # the card in question
    cards = await _read(request, reports.unknown_cards)
    if not show_all:
        cards = [c for c in cards if not c.acknowledged]
    return html(pages.unknown_page(context(request), cards, show_all, _notice(request), error),
                status)


async def unknown_cards(request: web.Request) -> web.StreamResponse:
    return await _unknown_page(request)


async def quarantine(request: web.Request) -> web.StreamResponse:
    entries = await _read(request, lambda conn: reports.quarantine(conn, None, 200))
    return html(pages.quarantine_page(context(request), entries))


async def _outbox_page(request: web.Request, error: str | None = None,
                       status: int = 200) -> web.Response:
    state = _state(request)
    ctx = context(request)

    def read(conn: Any) -> Any:
        targets, channels = views.queues(conn, state.config, state.calendar, ctx.now_ms)
        parked = [(r.kind, r.name, views.parked(conn, r.kind, r.name))
                  for r in targets + channels if r.parked]
        return targets, channels, parked

    targets, channels, parked = await _read(request, read)
    return html(pages.outbox_page(ctx, targets, channels, parked, _notice(request), error),
                status)


async def outbox_view(request: web.Request) -> web.StreamResponse:
    return await _outbox_page(request)


async def export(request: web.Request, fmt: Literal["csv", "xlsx"]) -> web.StreamResponse:
    """The CLI's ``reports export``: the same rows and writer, as a download."""
    state = _state(request)
    today = state.calendar.local_date(state.clock())
    date_from, date_to = _date(request, "from", today), _date(request, "to", today)
    class_id = request.query.get("class") or None
    if date_to < date_from or (date_to - date_from).days >= EXPORT_MAX_DAYS:
        return refuse(request, 400, "export.bad_range", days=EXPORT_MAX_DAYS)

    def write(conn: Any) -> tuple[int, bytes]:
        with tempfile.TemporaryDirectory(prefix="dashboard-export-") as tmp:
            out = Path(tmp) / f"export.{fmt}"
            rows = reports.export(conn, state.calendar, date_from, date_to, fmt, out, class_id)
            return rows, out.read_bytes()

    rows, body = await _read(request, write)
    # recorded before a byte leaves: an export that cannot be recorded is not sent
    await _audited(request, "export", lambda _: {
        "format": fmt, "from": date_from.isoformat(), "to": date_to.isoformat(),
        "class": class_id or "*", "rows": rows}, _nothing)
    name = f"diem-danh_{date_from.isoformat()}_{date_to.isoformat()}"
    if class_id:
        name += "_" + _SAFE_NAME.sub("-", class_id)
    content_type = ("text/csv" if fmt == "csv" else
                    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
    return web.Response(body=body, content_type=content_type, headers={
        "Content-Disposition": f'attachment; filename="{name}.{fmt}"'})


async def export_csv(request: web.Request) -> web.StreamResponse:
    return await export(request, "csv")


async def export_xlsx(request: web.Request) -> web.StreamResponse:
    return await export(request, "xlsx")


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``tap`` per committed scan; ``expired`` when the session ends."""
    state = _state(request)
    ctx = context(request)
    token = request.cookies.get(SESSION_COOKIE)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no", "X-Content-Type-Options": "nosniff"})
    with state.live.subscribe() as sub, contextlib.suppress(ConnectionError):
        await response.prepare(request)  # subscribed first: no tap slips in between
        await response.write(b"retry: 3000\n\n")
        while True:
            try:
                tap = await asyncio.wait_for(sub.get(), KEEPALIVE_S)
            except TimeoutError:
                if ctx.user is not None:
                    found, _ = await state.db.write(lambda conn: auth.load_session(
                        conn, token, state.clock(), state.policy, touch=False))
                    if found != "ok":
                        await response.write(b"event: expired\ndata: {}\n\n")
                        break
                await response.write(b": keepalive\n\n")
                continue
            if tap is None:
                break
            data = pages.tap_json(ctx.lang, tap, ctx.zone)
            await response.write(f"event: tap\ndata: {data}\n\n".encode())
    return response


# -- actions -----------------------------------------------------------------------------------

def _form_value(form: Any, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


@requires("operator")
async def retry(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    kind, name = request.match_info["kind"], request.match_info["name"]
    config = state.config
    configured = ({t.name for t in config.forward} if kind == "forward" else
                  {c.name for c in config.notify.channels} if kind == "notify" else set())
    if name not in configured:
        return refuse(request, 404, "outbox.unknown_target", name=name)
    queue: views.QueueKind = "forward" if kind == "forward" else "notify"
    form = await request.post()
    item_ids: list[int] | None = None
    if _form_value(form, "all") != "1":
        try:
            item_ids = [int(str(v)) for v in form.getall("item", [])]
        except ValueError:
            item_ids = []
        if not item_ids:
            return refuse(request, 400, "error.bad_request", detail="item")
    try:
        done = await _audited(
            request, "retry",
            lambda done: {"queue": queue, "target": name, "asked": item_ids or "all",
                          "items": done},
            lambda conn: views.retry(conn, queue, name, item_ids, state.clock()))
    except OutboxError as exc:
        return await _outbox_page(request, context(request).t("outbox.not_parked",
                                                                detail=str(exc)), 409)
    raise _see_other("/outbox", done="retried", name=name, count=len(done))


@requires("operator")
async def acknowledge(request: web.Request) -> web.StreamResponse:
    card = _form_value(await request.post(), "card")
    try:
        await _audited(request, "acknowledge_card", lambda _: {},
                       lambda conn: views.acknowledge(conn, card),
                       private=lambda _: {"card": card})
    except views.ActionError as exc:
        return await _unknown_page(request, context(request).t(exc.key, **exc.params), 404)
    raise _see_other("/unknown-cards", done="acked", card=card)


@requires("operator")
async def assign(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    form = await request.post()
    card, student = _form_value(form, "card"), _form_value(form, "student_id")
    session = request[SESSION]
    try:
        done = await _audited(
            request, "assign_card", lambda done: {"changed": not done.already},
            lambda conn: views.assign_card(conn, card, student, f"dashboard:{session.username}",
                                           state.clock()),
            private=lambda done: {"card": card, "number": done.number, "student_id": student})
    except views.ActionError as exc:
        status = 409 if exc.key == "unknown.refused" else 400
        return await _unknown_page(request, context(request).t(exc.key, **exc.params), status)
    if done.already:
        raise _see_other("/unknown-cards", done="already", number=done.number, student=student)
    raise _see_other("/unknown-cards", done="assigned", card=card, number=done.number,
                     student=student)


def _reader_id(request: web.Request) -> int:
    try:
        return int(request.match_info["reader_id"])
    except ValueError:
        raise web.HTTPNotFound() from None


async def _registry_action(request: web.Request, action: Callable[[Registry, int], T], *,
                           confirm: bool, name: str,
                           result: Callable[[T], Mapping[str, object]] = lambda _: {}
                           ) -> T | web.Response:
    state = _state(request)
    reader_id = _reader_id(request)
    ctx = context(request)
    if confirm and _form_value(await request.post(), "confirm") != "1":
        return await _readers_page(request, ctx.t("readers.confirm_needed"), 400)
    try:
        return await _audited(
            request, name, lambda done: {"reader_id": reader_id, **result(done)},
            lambda conn: action(Registry.open(conn, state.config.master_key_file), reader_id))
    except RegistryError as exc:
        return await _readers_page(request, ctx.t("readers.refused", detail=str(exc)), 409)


@requires("admin")
async def rotate(request: web.Request) -> web.StreamResponse:
    """A new key generation, shown once on this page (never stored in clear, never again)."""
    done = await _registry_action(request, Registry.rotate, confirm=True, name="rotate_key",
                                  result=lambda creds: {"key_id": creds.key_id})
    if isinstance(done, web.Response):
        return done
    return html(pages.rotated_page(context(request), done))


@requires("admin")
async def finish_rotation(request: web.Request) -> web.StreamResponse:
    done = await _registry_action(request, Registry.finish_rotation, confirm=False,
                                  name="finish_rotation",
                                  result=lambda count: {"keys_revoked": count})
    if isinstance(done, web.Response):
        return done
    raise _see_other("/readers", done="finished", reader=_reader_id(request), count=done)


@requires("admin")
async def revoke(request: web.Request) -> web.StreamResponse:
    done = await _registry_action(request, Registry.revoke, confirm=True, name="revoke_reader")
    if isinstance(done, web.Response):
        return done
    raise _see_other("/readers", done="revoked", reader=_reader_id(request))
