"""HTML escaped by construction, and the charts' SVG."""

from __future__ import annotations

from gateway.dashboard.charts import arrivals_chart, rates_chart
from gateway.dashboard.html import el, esc
from gateway.dashboard.i18n import session_name


def test_text_and_attributes_are_escaped() -> None:
    name = '<script>alert("x")</script> & Ngô'
    cell = el("td", name, title=name, data_kind="a\"b", hidden=True, cls=None)
    assert "<script>" not in cell
    assert cell == ('<td title="&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Ngô" '
                    'data-kind="a&quot;b" hidden>&lt;script&gt;alert(&quot;x&quot;)'
                    '&lt;/script&gt; &amp; Ngô</td>')
    assert el("tr", [el("td", 1), None, [el("td", "2")]]) == "<tr><td>1</td><td>2</td></tr>"
    assert esc(el("b", "x")) == "<b>x</b>"  # already markup: kept
    assert el("input", name="csrf", value="v") == '<input name="csrf" value="v">'


def test_charts_are_svg_with_escaped_labels() -> None:
    bars = [("06:59", 0), ("07:00", 3), ("07:01", 12)]
    svg = arrivals_chart(bars, title="Đến <sớm>", marker=(1, "muộn sau 07:00"))
    assert svg.startswith("<svg") and "&lt;sớm&gt;" in svg
    assert svg.count("<rect") == 2  # no bar for an empty minute
    assert ">07:00<" in svg and "stroke-dasharray" in svg
    grid = rates_chart([("6A", [1.0, None]), ("6<B>", [0.5, 0.93])], ["01/09", "08/09"],
                       title="rates")
    assert ">100%<" in grid and ">50%<" in grid and ">93%<" in grid
    assert "6&lt;B&gt;" in grid


def test_the_usual_session_names_are_translated_and_a_schools_own_kept() -> None:
    assert session_name("vi", "morning") == "sáng" and session_name("en", "Morning") == "morning"
    assert session_name("vi", "afternoon") == "chiều"
    assert session_name("vi", "Ca 1") == "Ca 1" and session_name("en", "Ca 1") == "Ca 1"
