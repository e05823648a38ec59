"""The dashboard's two charts as inline SVG, drawn on the server (no script, no library: the
school may be offline). Sizes are in a ``viewBox``, so CSS scales them to a phone's width.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.dashboard.html import Markup, el, join

_AXIS = "#6b7280"
_BAR = "#2563eb"
_LATE = "#dc2626"


def _nice_max(value: int) -> int:
    """The y axis' top: 1, 2 or 5 times a power of ten, at least ``value``."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if factor * step >= value:
                return factor * step
        step *= 10


def arrivals_chart(bars: Sequence[tuple[str, int]], *, title: str,
                   marker: tuple[int, str] | None = None) -> Markup:
    """Arrivals per minute: ``bars`` are (``HH:MM``, count) in order; ``marker`` is (bar index,
    label) of the late line. Minutes on the quarter hour are labelled."""
    width, height, left, bottom, top = 520, 200, 30, 26, 14  # small: readable on a phone
    plot_w, plot_h = width - left - 18, height - bottom - top
    top_value = _nice_max(max([2, *(c for _, c in bars)]))  # whole numbers on the axis
    step = plot_w / max(1, len(bars))
    parts: list[Markup] = [el("title", title)]
    for fraction in (0, 0.5, 1):
        y = top + plot_h * (1 - fraction)
        parts.append(el("line", x1=left, x2=left + plot_w, y1=f"{y:.1f}", y2=f"{y:.1f}",
                        stroke="#e5e7eb"))
        parts.append(el("text", f"{top_value * fraction:g}", x=left - 4, y=f"{y + 4:.1f}",
                        text_anchor="end", font_size=11, fill=_AXIS))
    for i, (label, count) in enumerate(bars):
        x = left + i * step
        if count:
            h = plot_h * count / top_value
            parts.append(el("rect", el("title", f"{label}: {count}"), x=f"{x + step * 0.1:.1f}",
                            y=f"{top + plot_h - h:.1f}", width=f"{max(1.0, step * 0.8):.1f}",
                            height=f"{h:.1f}", fill=_BAR))
        if label.endswith((":00", ":15", ":30", ":45")):
            parts.append(el("text", label, x=f"{x + step / 2:.1f}", y=height - 8,
                            text_anchor="middle", font_size=11, fill=_AXIS))
    if marker is not None and 0 <= marker[0] <= len(bars):
        x = left + marker[0] * step
        parts.append(el("line", x1=f"{x:.1f}", x2=f"{x:.1f}", y1=top, y2=top + plot_h,
                        stroke=_LATE, stroke_dasharray="4 3"))
        parts.append(el("text", marker[1], x=f"{x + 4:.1f}", y=top + 10, font_size=11,
                        fill=_LATE))
    return el("svg", join(parts), viewBox=f"0 0 {width} {height}", role="img",
              aria_label=title, cls="chart")


def _rate_colour(rate: float) -> str:
    if rate >= 0.95:
        return "#15803d"
    if rate >= 0.9:
        return "#65a30d"
    if rate >= 0.8:
        return "#d97706"
    return "#dc2626"


def rates_chart(rows: Sequence[tuple[str, Sequence[float | None]]], columns: Sequence[str], *,
                title: str) -> Markup:
    """Attendance rate per class (rows) and week (columns), a coloured cell with the percent;
    a week without closed sessions is blank."""
    label_w, cell_w, cell_h, head = 96, 62, 26, 22
    width = label_w + cell_w * len(columns) + 4
    height = head + cell_h * len(rows) + 4
    parts: list[Markup] = [el("title", title)]
    for j, column in enumerate(columns):
        parts.append(el("text", column, x=label_w + j * cell_w + cell_w / 2, y=15,
                        text_anchor="middle", font_size=11, fill=_AXIS))
    for i, (name, rates) in enumerate(rows):
        y = head + i * cell_h
        parts.append(el("text", name, x=label_w - 6, y=y + 17, text_anchor="end", font_size=12,
                        fill="#111827"))
        for j, rate in enumerate(rates):
            x = label_w + j * cell_w
            if rate is None:
                parts.append(el("rect", x=x + 1, y=y + 1, width=cell_w - 2, height=cell_h - 2,
                                fill="#f3f4f6"))
                continue
            text = f"{rate * 100:.0f}%"
            parts.append(el("rect", el("title", f"{name} {columns[j]}: {text}"), x=x + 1,
                            y=y + 1, width=cell_w - 2, height=cell_h - 2,
                            fill=_rate_colour(rate)))
            parts.append(el("text", text, x=x + cell_w / 2, y=y + 17, text_anchor="middle",
                            font_size=12, fill="#ffffff"))
    return el("svg", join(parts), viewBox=f"0 0 {width} {height}", role="img",
              aria_label=title, cls="chart")
