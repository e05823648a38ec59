"""The dashboard's pages as HTML (``gateway/dashboard/html.py`` escapes every value).

Each function takes what its route read and returns the whole page. Forms that change anything
carry the session's CSRF token and are shown only to a role that may send them.
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from gateway import reports
from gateway.dashboard.auth import Role, Session, has_role
from gateway.dashboard.html import Markup, el, join
from gateway.dashboard.i18n import LANGS, Lang, pick, session_name, tr
from gateway.dashboard.live import Tap
from gateway.dashboard.views import ParkedItem, QueueKind, QueueRow
from gateway.registry import Credentials, Reader
from gateway.reports import AttendanceRow, DayReport, QuarantineEntry, ReaderHealth, UnknownCard

_NO_ICON = el("link", rel="icon", href="data:,")  # no /favicon.ico request
NAV = (("/", "nav.overview"), ("/attendance", "nav.attendance"), ("/readers", "nav.readers"),
       ("/unknown-cards", "nav.unknown"), ("/quarantine", "nav.quarantine"),
       ("/outbox", "nav.outbox"))


@dataclass(frozen=True)
class Ctx:
    """Who is looking, in which language, at which page."""

    lang: Lang
    user: Session | None  # None: the anonymous read-only view from loopback
    path: str
    zone: zoneinfo.ZoneInfo
    school: str
    now_ms: int

    def t(self, key: str, **params: object) -> str:
        return tr(self.lang, key, **params)

    def session_title(self, name: str) -> str:
        return self.t("attendance.session", name=session_name(self.lang, name))

    def can(self, role: Role) -> bool:
        return self.user is not None and has_role(self.user.role, role)

    def clock(self, ms: int | None) -> str:
        return reports.clock_text(ms, self.zone)

    def moment(self, ms: int | None) -> str:
        return reports.datetime_text(ms, self.zone)

    def ago(self, ms: int | None) -> str:
        if ms is None:
            return "—"
        return self.t("ago", age=reports.age_text((self.now_ms - ms) / 1000))


def _lang_switch(ctx_lang: Lang, path: str) -> Markup:
    return el("div", [el("a", tr(lang, f"lang.{lang}"), href=f"/lang?l={lang}&next={quote(path)}",
                         cls="current" if lang == ctx_lang else None, hreflang=lang)
                      for lang in LANGS], cls="langs")


def hidden_csrf(ctx: Ctx) -> Markup | None:
    return None if ctx.user is None else el("input", type="hidden", name="csrf",
                                            value=ctx.user.csrf_token)


def post_form(ctx: Ctx, action: str, *fields: object, button: str, cls: str = "inline",
              danger: bool = False) -> Markup:
    return el("form", hidden_csrf(ctx), *fields,
              el("button", button, type="submit", cls="danger" if danger else None),
              method="post", action=action, cls=cls)


def page(ctx: Ctx, title: str, *body: object, notice: str | None = None,
         error: str | None = None, live: bool = False) -> str:
    nav = el("nav", [el("a", ctx.t(key), href=href,
                        aria_current="page" if ctx.path == href or (
                            href != "/" and ctx.path.startswith(href + "/")) else None)
                     for href, key in NAV])
    if ctx.user is None:
        who: Markup = el("span", ctx.t("anonymous"), cls="who")
    else:
        who = el("span", el("b", ctx.user.username), " · ", ctx.t(f"role.{ctx.user.role}"),
                 post_form(ctx, "/logout", button=ctx.t("logout")), cls="who")
    header = el("header", el("div", el("a", ctx.t("app.title"), href="/", cls="brand"),
                             el("span", ctx.school, cls="school"), cls="top"),
                nav, el("div", _lang_switch(ctx.lang, ctx.path), who, cls="tools"))
    flashes = [el("p", notice, cls="notice", role="status") if notice else None,
               el("p", error, cls="error", role="alert") if error else None]
    main = el("main", el("h1", title), flashes, *body)
    scripts = el("script", src="/static/live.js", defer=True) if live else None
    return "<!doctype html>" + el(
        "html", el("head", el("meta", charset="utf-8"),
                   el("meta", name="viewport", content="width=device-width, initial-scale=1"),
                   el("title", f"{title} · {ctx.t('app.title')}"),
                   el("link", rel="stylesheet", href="/static/style.css"), _NO_ICON, scripts),
        el("body", header, main), lang=ctx.lang)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *,
          numeric: Sequence[int] = (), empty: str = "", id_: str | None = None,
          row_classes: Sequence[str | None] | None = None) -> Markup:
    body = []
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes is not None else None
        body.append(el("tr", [el("td", cell, cls="num" if j in numeric else None)
                              for j, cell in enumerate(row)], cls=cls))
    if not body and empty:
        return el("p", empty, cls="empty")
    return el("div", el("table", el("thead", el("tr", [
        el("th", h, cls="num" if j in numeric else None, scope="col")
        for j, h in enumerate(headers)])), el("tbody", body), id=id_), cls="scroll")


def message_page(ctx: Ctx, title: str, text: str) -> str:
    return page(ctx, title, el("p", text), el("p", el("a", ctx.t("back"), href="/")))


# -- login -------------------------------------------------------------------------------------

def login_page(lang: Lang, *, token: str, next_path: str, message: str | None,
               school: str) -> str:
    def t(key: str) -> str:
        return tr(lang, key)
    form = el("form", el("input", type="hidden", name="login_token", value=token),
              el("input", type="hidden", name="next", value=next_path),
              el("label", t("login.username"), el("input", name="username", required=True,
                                                   autocomplete="username", autofocus=True,
                                                   autocapitalize="none", spellcheck="false")),
              el("label", t("login.password"), el("input", name="password", type="password",
                                                   required=True,
                                                   autocomplete="current-password")),
              el("button", t("login.title"), type="submit"),
              method="post", action="/login", cls="login")
    body = el("body", el("main", el("h1", t("app.title")), el("p", school, cls="school"),
                         _lang_switch(lang, "/login"),
                         el("p", message, cls="error", role="alert") if message else None,
                         form, cls="login-box"))
    return "<!doctype html>" + el(
        "html", el("head", el("meta", charset="utf-8"),
                   el("meta", name="viewport", content="width=device-width, initial-scale=1"),
                   el("title", f"{t('login.title')} · {t('app.title')}"),
                   el("link", rel="stylesheet", href="/static/style.css"), _NO_ICON),
        body, lang=lang)


# -- overview ----------------------------------------------------------------------------------

def tap_label(lang: Lang, tap: Tap) -> str:
    return tr(lang, f"kind.{tap.kind}")


def tap_json(lang: Lang, tap: Tap, zone: zoneinfo.ZoneInfo) -> str:
    """One live tap for the browser (``static/live.js``)."""
    return json.dumps({
        "scan": tap.scan_id, "time": reports.clock_text(tap.at_ms, zone),
        "gate": tap.gate or tap.reader or str(tap.reader_id), "kind": tap.kind,
        "label": tap_label(lang, tap), "student": tap.student, "class": tap.class_name,
        "card": tap.card}, ensure_ascii=False)


def _tap_row(ctx: Ctx, tap: Tap) -> list[object]:
    return [ctx.clock(tap.at_ms), tap.gate or tap.reader or str(tap.reader_id),
            tap.student or tap.card or "", tap.class_name or "", tap_label(ctx.lang, tap)]


def _stat(label: str, value: object, href: str | None = None, warn: bool = False) -> Markup:
    inner = [el("span", value, cls="value"), el("span", label, cls="label")]
    return el("a" if href else "div", inner, href=href, cls="stat warn" if warn else "stat")


def overview_page(ctx: Ctx, status: reports.StatusReport, parked: int, taps: Sequence[Tap],
                  chart: tuple[str, Markup] | None, chart_empty: bool) -> str:
    """The day at a glance, live taps, and (``chart``: title, SVG) this session's arrivals."""
    stats = el("div", [
        _stat(ctx.t("overview.readers_online"),
              f"{status.readers_online}/{status.readers_active}", "/readers",
              status.readers_online < status.readers_active),
        _stat(ctx.t("overview.scans_today"), status.scans_today, "/attendance"),
        _stat(ctx.t("overview.queued"), status.queue_depth, "/readers",
              status.oldest_unsent_age_s > 300),
        _stat(ctx.t("overview.unknown_open"), status.unknown_cards_open, "/unknown-cards",
              status.unknown_cards_open > 0),
        _stat(ctx.t("overview.quarantined"), status.quarantined_24h, "/quarantine",
              status.quarantined_24h > 0),
        _stat(ctx.t("overview.parked"), parked, "/outbox", parked > 0),
    ], cls="stats")
    live = el("section", el("h2", ctx.t("live.title"), " ",
                            el("span", "…", id="live-status", cls="live",
                               data_connected=ctx.t("live.connected"),
                               data_disconnected=ctx.t("live.disconnected"))),
              table([ctx.t("col.time"), ctx.t("col.gate"), ctx.t("col.student"),
                     ctx.t("col.class"), ctx.t("col.event")],
                    [_tap_row(ctx, tap) for tap in taps], id_="live-taps",
                    row_classes=[f"kind-{tap.kind}" for tap in taps]),
              el("p", ctx.t("empty"), id="live-empty", cls="empty", hidden=bool(taps)))
    charts = None if chart is None else el(
        "section", el("h2", chart[0]), chart[1],
        el("p", ctx.t("chart.arrivals_none"), cls="empty") if chart_empty else None)
    return page(ctx, ctx.t("nav.overview"), stats, live, charts, live=True)


# -- attendance --------------------------------------------------------------------------------

def class_path(class_id: str) -> str:
    return "/attendance/class/" + quote(class_id, safe="")


def _class_name(ctx: Ctx, class_id: str | None, name: str | None) -> str:
    return name or class_id or ctx.t("attendance.no_class")


def export_form(ctx: Ctx, day: dt.date, class_id: str | None = None) -> Markup:
    fields = [el("label", ctx.t("export.from"), el("input", type="date", name="from",
                                                   value=day.isoformat(), required=True)),
              el("label", ctx.t("export.to"), el("input", type="date", name="to",
                                                 value=day.isoformat(), required=True)),
              el("input", type="hidden", name="class", value=class_id) if class_id else None]
    return el("section", el("h2", ctx.t("export.title")), el(
        "form", fields,
        el("button", ctx.t("export.csv"), type="submit", formaction="/export.csv"),
        el("button", ctx.t("export.xlsx"), type="submit", formaction="/export.xlsx"),
        method="get", action="/export.csv", cls="inline export"))


def date_form(ctx: Ctx, day: dt.date, action: str) -> Markup:
    return el("form", el("label", ctx.t("date"), el("input", type="date", name="date",
                                                   value=day.isoformat())),
              el("button", ctx.t("show"), type="submit"), method="get", action=action,
              cls="inline")


def attendance_page(ctx: Ctx, report: DayReport, rates: tuple[str, Markup] | None) -> str:
    day = dt.date.fromisoformat(report.school_date)
    sections: list[Markup] = [date_form(ctx, day, "/attendance"),
                              el("p", pick(ctx.lang, reports.DAY_KIND_LABELS.get(
                                  report.day_kind, report.day_kind)), cls="muted")]
    for session in report.sessions:
        state = ctx.t("attendance.closed" if session.closed else "attendance.open")
        rows: list[list[object]] = []
        for c in session.classes:
            link = el("a", _class_name(ctx, c.class_id, c.class_name),
                      href=f"{class_path(c.class_id)}?date={day.isoformat()}") \
                if c.class_id else _class_name(ctx, None, None)
            rows.append([link, c.total, c.present, c.late, c.absent, c.not_yet])
        t = session.totals
        rows.append([el("b", ctx.t("attendance.total")), t.total, t.present, t.late, t.absent,
                     t.not_yet])
        sections.append(el("section", el("h2", ctx.session_title(session.session),
                                         " ", el("span", f"({state})", cls="muted")),
                           table([ctx.t("col.class"), ctx.t("col.total"), ctx.t("col.present"),
                                  ctx.t("col.late"), ctx.t("col.absent"), ctx.t("col.not_yet")],
                                 rows, numeric=(1, 2, 3, 4, 5))))
    if not report.sessions:
        sections.append(el("p", ctx.t("attendance.no_sessions"), cls="empty"))
    if rates is not None:
        sections.append(el("section", el("h2", rates[0]), rates[1],
                           el("p", ctx.t("chart.rates_note"), cls="muted")))
    sections.append(export_form(ctx, day))
    return page(ctx, ctx.t("attendance.title", date=day.strftime("%d/%m/%Y")), *sections)


def _student_rows(ctx: Ctx, rows: Iterable[AttendanceRow]) -> list[list[object]]:
    return [[r.student_id, r.full_name, pick(ctx.lang, reports.STATUS_LABELS[r.status]),
             ctx.clock(r.check_in_ms), ctx.clock(r.check_out_ms)] for r in rows]


def class_page(ctx: Ctx, report: DayReport, class_id: str, class_name: str) -> str:
    day = dt.date.fromisoformat(report.school_date)
    headers = [ctx.t("col.student_id"), ctx.t("col.name"), ctx.t("col.status"),
               ctx.t("col.in"), ctx.t("col.out")]
    sections: list[Markup] = [date_form(ctx, day, class_path(class_id))]
    for session in report.sessions:
        rows = [r for r in report.rows if r.session == session.session]
        late = [r for r in rows if r.status == "late"]
        absent = [r for r in rows if r.status == "absent"]
        sections.append(el(
            "section", el("h2", ctx.session_title(session.session)),
            el("h3", ctx.t("class.late"), f" ({len(late)})"),
            table(headers, _student_rows(ctx, late), empty=ctx.t("none")),
            el("h3", ctx.t("class.absent"), f" ({len(absent)})"),
            table(headers, _student_rows(ctx, absent), empty=ctx.t("none")),
            el("h3", ctx.t("class.all"), f" ({len(rows)})"),
            table(headers, _student_rows(ctx, rows), empty=ctx.t("none"),
                  row_classes=[f"status-{r.status}" for r in rows])))
    if not report.sessions:
        sections.append(el("p", ctx.t("attendance.no_sessions"), cls="empty"))
    sections.append(export_form(ctx, day, class_id))
    return page(ctx, ctx.t("class.title", name=class_name, date=day.strftime("%d/%m/%Y")),
                *sections)


# -- readers -----------------------------------------------------------------------------------

def _online(ctx: Ctx, r: ReaderHealth) -> Markup:
    if r.status != "active":
        return el("span", ctx.t("online.revoked"), cls="badge muted")
    return el("span", ctx.t("online.yes" if r.online else "online.no"),
              cls="badge ok" if r.online else "badge bad")


def _reader_actions(ctx: Ctx, reader: Reader | None) -> Markup | None:
    if reader is None or not ctx.can("admin") or reader.status != "active":
        return None
    confirm = el("label", el("input", type="checkbox", name="confirm", value="1",
                             required=True), ctx.t("readers.confirm"), cls="confirm")
    forms = [post_form(ctx, f"/readers/{reader.reader_id}/rotate", confirm,
                       button=ctx.t("readers.rotate"))]
    if any(k.state == "retired" for k in reader.keys):
        forms.append(post_form(ctx, f"/readers/{reader.reader_id}/finish-rotation",
                               button=ctx.t("readers.finish")))
    forms.append(post_form(ctx, f"/readers/{reader.reader_id}/revoke", confirm,
                           button=ctx.t("readers.revoke"), danger=True))
    return el("div", forms, cls="actions")


def readers_page(ctx: Ctx, health: Sequence[ReaderHealth], registry: dict[int, Reader],
                 notice: str | None = None, error: str | None = None) -> str:
    headers = [ctx.t("col.reader"), ctx.t("col.gate"), ctx.t("col.online"),
               ctx.t("col.heartbeat"), ctx.t("col.last_seen"), ctx.t("col.queue"),
               ctx.t("col.oldest"), ctx.t("col.dropped"), ctx.t("col.clock"),
               ctx.t("col.faults")]
    admin = ctx.can("admin")
    if admin:
        headers += [ctx.t("col.keys"), ctx.t("col.actions")]
    rows = []
    for r in health:
        row: list[object] = [
            f"{r.reader_id} · {r.name}", r.gate, _online(ctx, r), ctx.ago(r.last_heartbeat_ms),
            ctx.ago(r.last_seen_ms), "" if r.queue_depth is None else r.queue_depth,
            reports.age_text(r.oldest_unsent_age_s), "" if r.dropped is None else r.dropped,
            el("span", r.clock_health, cls="badge ok" if r.clock_health == "ok" else "badge"),
            r.faults or ""]
        if admin:
            reader = registry.get(r.reader_id)
            keys = ", ".join(f"#{k.key_id} {k.state}" for k in reader.keys) if reader else ""
            row += [keys, _reader_actions(ctx, reader)]
        rows.append(row)
    return page(ctx, ctx.t("readers.title"),
                el("section", table(headers, rows, numeric=(5, 7), empty=ctx.t("empty"))),
                notice=notice, error=error)


def rotated_page(ctx: Ctx, creds: Credentials) -> str:
    return page(ctx, ctx.t("readers.rotate"), el(
        "div", el("p", ctx.t("readers.rotated", reader=creds.reader_id, key_id=creds.key_id)),
        el("dl", el("dt", ctx.t("readers.key")), el("dd", el("code", creds.key.hex())),
           el("dt", ctx.t("readers.mqtt_user")), el("dd", el("code", creds.mqtt_username)),
           el("dt", ctx.t("readers.mqtt_password")), el("dd", el("code", creds.mqtt_password))),
        el("p", ctx.t("readers.broker_hint"), cls="muted"),
        el("p", el("a", ctx.t("back"), href="/readers")), cls="secret"))


# -- unknown cards, quarantine -----------------------------------------------------------------

def unknown_page(ctx: Ctx, cards: Sequence[UnknownCard], show_all: bool,
                 notice: str | None = None, error: str | None = None) -> str:
    operator = ctx.can("operator")
    headers = [ctx.t("col.card"), ctx.t("col.first"), ctx.t("col.last"), ctx.t("col.times"),
               ctx.t("col.reader"), ctx.t("col.ack")]
    if operator:
        headers.append(ctx.t("col.actions"))
    rows = []
    for c in cards:
        row: list[object] = [el("code", c.card), ctx.moment(c.first_ms), ctx.moment(c.last_ms),
                             c.times_seen, c.last_reader or c.last_reader_id or "",
                             ctx.t("yes" if c.acknowledged else "no")]
        if operator:
            card_field = el("input", type="hidden", name="card", value=c.card)
            row.append(el("div", None if c.acknowledged else post_form(
                ctx, "/unknown-cards/ack", card_field, button=ctx.t("unknown.ack")),
                post_form(ctx, "/unknown-cards/assign", card_field,
                          el("input", name="student_id", inputmode="numeric", required=True,
                             placeholder=ctx.t("unknown.student_id"),
                             aria_label=ctx.t("unknown.student_id"), pattern="[0-9]{10}",
                             cls="student-id"),
                          button=ctx.t("unknown.assign")), cls="actions"))
        rows.append(row)
    toggle = el("p", el("a", ctx.t("unknown.open_only" if show_all else "unknown.show_all"),
                        href="/unknown-cards" if show_all else "/unknown-cards?all=1"))
    return page(ctx, ctx.t("unknown.title"), toggle,
                el("section", table(headers, rows, numeric=(3,), empty=ctx.t("empty"),
                                    id_="unknown-cards")),
                notice=notice, error=error)


def quarantine_page(ctx: Ctx, entries: Sequence[QuarantineEntry]) -> str:
    return page(ctx, ctx.t("quarantine.title"), el("section", table(
        ["#", ctx.t("col.last"), ctx.t("col.times"), ctx.t("col.transport"),
         ctx.t("col.reader"), "Boot", "Seq", ctx.t("col.reason"), ctx.t("col.detail"),
         ctx.t("col.size")],
        [[e.quarantine_id, ctx.moment(e.last_ms), e.times_seen, e.transport,
          "" if e.reader_id is None else e.reader_id, "" if e.boot is None else e.boot,
          "" if e.seq is None else e.seq, el("code", e.reason), e.detail, e.size]
         for e in entries], numeric=(0, 2, 9), empty=ctx.t("empty"))))


# -- outboxes ----------------------------------------------------------------------------------

def _queue_table(ctx: Ctx, rows: Sequence[QueueRow], empty: str) -> Markup:
    return table(
        [ctx.t("col.target"), ctx.t("col.type"), ctx.t("col.state"), ctx.t("col.pending"),
         ctx.t("col.parked"), ctx.t("col.delivered"), ctx.t("col.oldest_pending"),
         ctx.t("col.breaker"), ctx.t("col.last_error")],
        [[r.name, r.type or "—", ctx.t(f"state.{r.state}"), r.pending, r.parked,
          r.delivered_today, reports.age_text(r.oldest_pending_age_s) or "—",
          el("span", ctx.t(f"breaker.{r.breaker}") + (f" ({r.failures})" if r.failures else ""),
             cls="badge ok" if r.breaker == "closed" else "badge bad"),
          r.last_error or ""] for r in rows],
        numeric=(3, 4, 5), empty=empty)


def _parked_section(ctx: Ctx, kind: QueueKind, name: str, items: Sequence[ParkedItem]) -> Markup:
    operator = ctx.can("operator")
    action = f"/outbox/{kind}/{name}/retry"
    headers = [ctx.t("col.item"), ctx.t("col.kind"), ctx.t("date"), ctx.t("col.student_id"),
               ctx.t("col.tries"), ctx.t("col.since"), ctx.t("col.reason")]
    if operator:
        headers.append(ctx.t("col.actions"))
    rows = []
    for i in items:
        row: list[object] = [i.item_id, i.kind, i.school_date, i.student_id or "—", i.attempts,
                             ctx.moment(i.since_ms), i.reason]
        if operator:
            row.append(post_form(ctx, action, el("input", type="hidden", name="item",
                                                 value=i.item_id),
                                 button=ctx.t("outbox.retry")))
        rows.append(row)
    retry_all = post_form(ctx, action, el("input", type="hidden", name="all", value="1"),
                          button=ctx.t("outbox.retry_all")) if operator else None
    return el("section", el("h3", ctx.t("outbox.parked_items", name=name)),
              table(headers, rows, numeric=(0, 4)), retry_all, id=f"parked-{kind}-{name}")


def outbox_page(ctx: Ctx, targets: Sequence[QueueRow], channels: Sequence[QueueRow],
                parked: Sequence[tuple[QueueKind, str, Sequence[ParkedItem]]],
                notice: str | None = None, error: str | None = None) -> str:
    return page(ctx, ctx.t("outbox.title"),
                el("section", el("h2", ctx.t("outbox.targets")),
                   _queue_table(ctx, targets, ctx.t("outbox.none_targets"))),
                el("section", el("h2", ctx.t("outbox.channels")),
                   _queue_table(ctx, channels, ctx.t("outbox.none_channels"))),
                join(_parked_section(ctx, kind, name, items) for kind, name, items in parked),
                notice=notice, error=error)
