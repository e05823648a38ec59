"""What the dashboard's middlewares and routes share: its state, request keys, cookies, and
how a page answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.config import GatewayConfig
from gateway.dashboard import auth
from gateway.dashboard.i18n import lang_of
from gateway.dashboard.live import LiveHub, LiveMetrics
from gateway.dashboard.pages import Ctx, message_page
from gateway.dashboard.store import Store
from gateway.ingest import Ingest
from gateway.rules import SchoolCalendar
from gateway.types import Clock

SESSION_COOKIE = "att_session"
LOGIN_COOKIE = "att_login"
LANG_COOKIE = "lang"


class DashboardMetrics:
    """Prometheus counters of the dashboard, in the gateway's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.logins = Counter("attendance_dashboard_logins", "Dashboard logins by outcome",
                              ["outcome"], registry=registry)
        for outcome in ("ok", "failed", "locked"):
            self.logins.labels(outcome)
        self.live = LiveMetrics(
            Gauge("attendance_dashboard_sse_clients", "Browsers watching live taps",
                  registry=registry),
            Counter("attendance_dashboard_live_taps_dropped",
                    "Live taps not sent to a browser that fell behind", registry=registry))


@dataclass
class DashboardState:
    config: GatewayConfig
    calendar: SchoolCalendar
    metrics: DashboardMetrics
    clock: Clock
    kdf: auth.KdfParams
    policy: auth.SessionPolicy
    limit: auth.RateLimit
    ingest: Ingest | None
    store: Store | None = None
    hub: LiveHub | None = None
    cache: dict[str, tuple[int, Any]] = field(default_factory=dict)  # key -> (until_ms, value)

    @property
    def db(self) -> Store:
        assert self.store is not None, "the dashboard is not running"
        return self.store

    @property
    def live(self) -> LiveHub:
        assert self.hub is not None, "the dashboard is not running"
        return self.hub


STATE = web.AppKey("dashboard", DashboardState)
SESSION = web.RequestKey("session", auth.Session)


def context(request: web.Request) -> Ctx:
    state = request.app[STATE]
    return Ctx(lang_of(request.cookies.get(LANG_COOKIE)), request.get(SESSION), request.path,
               state.config.timezone, state.config.school, state.clock())


def html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def refuse(request: web.Request, status: int, key: str, **params: object) -> web.Response:
    """A page saying why the request was refused."""
    ctx = context(request)
    return html(message_page(ctx, ctx.t("error.title"), ctx.t(key, **params)), status)
