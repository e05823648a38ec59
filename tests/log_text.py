"""What a log record says: its message and its structured fields, for "nothing secret or personal
is logged" checks. LogRecord's own attributes (times, thread and process ids, file paths) are
left out: their digits can contain a phone number or an id by chance."""

from __future__ import annotations

import logging
from collections.abc import Iterable

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


def logged_text(records: Iterable[logging.LogRecord]) -> str:
    return "\n".join(
        f"{r.getMessage()} {[v for k, v in r.__dict__.items() if k not in _STANDARD]!r}"
        for r in records)
