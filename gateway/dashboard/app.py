"""The dashboard's aiohttp application and its life inside the gateway.

:class:`Dashboard` runs on the gateway's event loop (``gateway/commands/run.py`` gathers
``dashboard.run(stop)`` with the other services) when the configuration has a ``[dashboard]``
table. :func:`create_app` builds the application (tests use it directly).

Every request passes two middlewares:

- **security headers**: a strict Content-Security-Policy (scripts, styles and connections to
  this origin only; no inline script or style), no framing, no sniffing, no referrer to other
  sites (``same-origin``: with ``no-referrer`` browsers send ``Origin: null`` even on our own
  forms), and ``Cache-Control: no-store`` on everything but the static files;
- **access**: the session cookie is looked up (``gateway/dashboard/auth.py``). Without a
  session, ``GET`` pages redirect to the login (``expired=1`` when the session just ended), unless
  ``anonymous_loopback_view`` is on and the request comes from a loopback address, names a
  loopback host (a DNS-rebinding page cannot pass) and carries no proxy headers: then it gets
  the read-only view. Every ``POST`` needs a session and its CSRF token (and a matching
  ``Origin`` when the browser sends one); roles are checked by each action
  (``gateway/dashboard/routes.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.dashboard import auth, routes
from gateway.dashboard.live import LiveHub
from gateway.dashboard.state import (
    SESSION,
    SESSION_COOKIE,
    STATE,
    DashboardMetrics,
    DashboardState,
    refuse,
)
from gateway.dashboard.store import Store
from gateway.ingest import Ingest
from gateway.metrics import GatewayMetrics
from gateway.rules import SchoolCalendar
from gateway.types import Clock, system_clock

log = logging.getLogger("gateway.dashboard")

SHUTDOWN_TIMEOUT_S = 2.0
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "[::1]", "::1"}
_PUBLIC = {"/login", "/lang"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def anonymous_allowed(request: web.Request, config: GatewayConfig) -> bool:
    """The read-only view without a login: enabled, from loopback, for a loopback host name,
    not relayed by a proxy."""
    if not config.dashboard.anonymous_loopback_view:
        return False
    if "Forwarded" in request.headers or "X-Forwarded-For" in request.headers:
        return False
    try:
        if not ipaddress.ip_address((request.remote or "").split("%")[0]).is_loopback:
            return False
    except ValueError:
        return False
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    return host.lower() in _LOOPBACK_HOSTS


def _same_origin(request: web.Request) -> bool:
    """The form came from this site: its ``Origin`` names our host (a cross-site request gets
    ``null`` under our referrer policy). Without the header, SameSite and the token decide."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == request.host.lower()


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _headers(request, exc)
        raise
    _headers(request, response)
    return response


def _headers(request: web.Request, response: web.StreamResponse) -> None:
    if response.prepared:  # a stream (live taps) set its own before starting
        return
    response.headers.setdefault("Content-Security-Policy", _CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")


@web.middleware
async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    if request.path in _PUBLIC or request.path.startswith("/static/"):
        return await handler(request)
    token = request.cookies.get(SESSION_COOKIE)
    found: tuple[auth.SessionState, auth.Session | None] = ("none", None)
    if token:
        touch = request.path != "/events"  # watching live taps does not keep a session alive
        found = await state.db.write(lambda conn: auth.load_session(
            conn, token, state.clock(), state.policy, touch=touch))
    session_state, session = found
    if session is not None:
        request[SESSION] = session
        if request.method == "POST":
            form = await request.post()
            given = form.get("csrf")
            if not (_same_origin(request) and auth.csrf_ok(
                    session, given if isinstance(given, str) else None)):
                return refuse(request, 403, "error.csrf")
        return await handler(request)
    if request.method == "GET" and anonymous_allowed(request, state.config):
        return await handler(request)
    if request.path == "/events":
        raise web.HTTPUnauthorized()
    if request.method == "GET" or session_state == "expired":
        query = "expired=1&" if session_state == "expired" else ""
        target = request.path_qs if request.method == "GET" else "/"
        response = web.HTTPSeeOther(f"/login?{query}{urlencode({'next': target})}")
        if token:
            response.del_cookie(SESSION_COOKIE, path="/")
        raise response
    return refuse(request, 403, "error.login_needed")


def create_app(config: GatewayConfig, metrics: DashboardMetrics, *, ingest: Ingest | None = None,
               clock: Clock = system_clock, kdf: auth.KdfParams | None = None,
               limit: auth.RateLimit | None = None) -> web.Application:
    """The dashboard application; its database connections and live hub open on startup and
    close on cleanup (after the live streams ended at shutdown)."""
    settings = config.dashboard
    state = DashboardState(
        config, SchoolCalendar(config.attendance, config.timezone), metrics, clock,
        kdf or auth.KdfParams(),
        auth.SessionPolicy(idle_ms=settings.session_idle_min * 60_000,
                           lifetime_ms=settings.session_max_hours * 3_600_000),
        limit or auth.RateLimit(), ingest)
    app = web.Application(middlewares=[security_headers, access], client_max_size=64 * 1024)
    app[STATE] = state
    routes.add_routes(app)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        state.store = Store(config.database)
        state.hub = LiveHub(state.store, metrics.live)
        state.hub.start()
        if ingest is not None:
            ingest.committed_listeners.append(state.hub.publish)
        try:
            yield
        finally:
            if ingest is not None:
                ingest.committed_listeners.remove(state.hub.publish)
            await state.hub.close()  # idempotent: shutdown closed it already
            state.store.close()

    async def end_streams(app: web.Application) -> None:
        if state.hub is not None:
            await state.hub.close()

    app.cleanup_ctx.append(resources)
    app.on_shutdown.append(end_streams)
    return app


class Dashboard:
    """The dashboard as one of the gateway's services: ``await dashboard.run(stop)``."""

    def __init__(self, config: GatewayConfig, ingest: Ingest, metrics: GatewayMetrics) -> None:
        self._config = config
        self._ingest = ingest
        self._metrics = metrics

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set. A dashboard that cannot listen (port taken, bad
        address) is logged and left off: readers' taps must keep flowing without it."""
        settings = self._config.dashboard
        if not settings.enabled:
            return
        app = create_app(self._config, DashboardMetrics(self._metrics.registry),
                         ingest=self._ingest)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        host, _, port = settings.listen.rpartition(":")
        try:
            await web.TCPSite(runner, host.strip("[]"), int(port)).start()
        except OSError as exc:
            log.error("dashboard not started", extra={"listen": settings.listen,
                                                      "error": str(exc)})
            await runner.cleanup()
            return
        log.info("dashboard", extra={"url": f"http://{settings.listen}/",
                                     "anonymous_loopback_view":
                                         settings.anonymous_loopback_view})
        if not _is_loopback(host.strip("[]")) and not settings.cookie_secure:
            log.warning("dashboard reachable beyond loopback over plain HTTP: put a TLS proxy "
                        "in front and set cookie_secure", extra={"listen": settings.listen})
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await runner.cleanup()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
