"""HTML built from elements, escaped by construction.

Every text and attribute value is escaped unless it is :class:`Markup` (what :func:`el`
returns), so names from the roster or reasons from an upstream cannot inject markup.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import cast

_VOID = {"br", "hr", "img", "input", "link", "meta", "source", "col", "circle", "line", "rect",
         "path", "polyline"}

class Markup(str):
    """Text that is already HTML."""

    __slots__ = ()


def esc(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def _children(children: Iterable[object]) -> Iterable[Markup]:
    for child in children:
        if child is None or child is False:
            continue
        if isinstance(child, str | int | float):
            yield esc(child)
        else:
            yield from _children(cast(Iterable[object], child))


def _attr_name(name: str) -> str:
    if name == "cls":
        return "class"
    return name.rstrip("_").replace("_", "-")


def el(tag: str, *children: object, **attrs: object) -> Markup:
    """``<tag attrs>children</tag>``: ``cls`` is ``class``, ``data_x`` is ``data-x``, a trailing
    underscore is dropped (``for_``); True writes a bare attribute, None and False none."""
    parts = [tag]
    for name, value in attrs.items():
        if value is None or value is False:
            continue
        if value is True:
            parts.append(_attr_name(name))
        else:
            parts.append(f'{_attr_name(name)}="{esc(value)}"')
    opening = "<" + " ".join(parts) + ">"
    if tag in _VOID and not children:
        return Markup(opening[:-1] + "/>" if tag in ("circle", "line", "rect", "path", "polyline")
                      else opening)
    return Markup(opening + "".join(_children(children)) + f"</{tag}>")


def join(items: Iterable[object]) -> Markup:
    return Markup("".join(_children(items)))
