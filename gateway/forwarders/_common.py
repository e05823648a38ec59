"""What the upstream adapters share: typed reads of a ``[[forward]]`` table's settings (errors
name ``forward.<name>.<key>``), secret files, HTTP's Retry-After, every HTTP request with a
bounded answer (``fetch``: at most ``MAX_ANSWER_BYTES`` read), and sending a batch one item at a
time to an upstream that has no batch write (``deliver_each``).

Used by ``gateway/forwarders/edfi.py``, ``openemis.py`` and ``relay.py``, and by the
parent-notification channels (``gateway/channels``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
import os
import ssl
import stat
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx

from gateway.config import ConfigError
from gateway.forwarders import AttendanceItem, DeliveryResult, TargetDown

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
RETRY_AFTER_MAX_S = 86_400.0
_SECRET_MAX = 4096
# The largest answer read from an upstream or a channel, after decompression. The answers the
# gateway reads are a token, a problem+json, a per-event result list: a few KiB. A hostile or
# broken peer must not be able to fill the Pi's memory (docs/SECURITY.md, actor 6).
MAX_ANSWER_BYTES = 1024 * 1024
# Compressed answers are inflated here, a bounded piece at a time; brotli or zstd would be
# inflated by httpx without a bound, so they are never asked for.
ACCEPT_ENCODING = "gzip, deflate"


class Settings:
    """Typed reads from ``target.settings`` (or a table inside it)."""

    def __init__(self, path: Path, prefix: str, table: Mapping[str, Any]) -> None:
        self.path, self.prefix, self.table = path, prefix, table

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    def error(self, name: str, reason: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), reason)

    def check_known(self, names: Sequence[str]) -> None:
        for name in self.table:
            if name not in names:
                raise self.error(name, "unknown key (misspelt?)")

    def sub(self, name: str, table: Mapping[str, Any]) -> Settings:
        return Settings(self.path, self.key(name), table)

    def text(self, name: str, default: str | None = None) -> str:
        value = self.table.get(name, default)
        if value is None:
            raise self.error(name, "is required")
        if not isinstance(value, str) or not value.strip():
            raise self.error(name, "must be a non-empty string")
        return value.strip()

    def optional_text(self, name: str) -> str | None:
        return self.text(name) if name in self.table else None

    def integer(self, name: str, lowest: int, highest: int, default: int | None = None) -> int:
        value = self.table.get(name, default)
        if value is None:
            raise self.error(name, "is required")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, "must be an integer")
        if not lowest <= value <= highest:
            raise self.error(name, f"must be between {lowest} and {highest}, not {value}")
        return value

    def number(self, name: str, lowest: float, highest: float, default: float) -> float:
        value = self.table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, "must be a number")
        if not lowest <= value <= highest:
            raise self.error(name, f"must be between {lowest:g} and {highest:g}, not {value}")
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.table.get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, "must be true or false")
        return value

    def choice(self, name: str, choices: Sequence[str], default: str) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def file(self, name: str, default: str | None = None) -> Path:
        """A path; relative paths are relative to the configuration file."""
        value = Path(self.text(name, default))
        return value if value.is_absolute() else self.path.parent / value

    def url(self, name: str, default: str | None = None, *, what: str = "student data") -> str:
        """An ``https://`` URL without a trailing slash; ``http://`` only to this machine."""
        text = self.text(name, default).rstrip("/")
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.error(name, f"must be an https:// URL, not {text!r}")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise self.error(name, "must not carry a query, a fragment or credentials")
        if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
            raise self.error(name, f"must be https:// ({what} cross it); plain http:// is "
                                   "accepted for this machine only")
        return text

    def secret(self, name: str) -> str:
        """The one-line secret in the file named by setting ``name`` (mode 600 required)."""
        path = self.file(name)
        try:
            data = read_private_file(path, _SECRET_MAX)
        except PrivateFileError as exc:
            raise self.error(name, str(exc)) from None
        try:
            value = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise self.error(name, f"{path} is not UTF-8 text") from None
        if not value or "\n" in value:
            raise self.error(name, f"{path} must hold the secret on one line")
        return value

    def tls(self, verify_name: str = "verify", ca_name: str = "ca_file"
            ) -> ssl.SSLContext | bool:
        """``verify = false`` (tests only), a private CA bundle, or the system's CAs."""
        verify = self.boolean(verify_name, True)
        if ca_name not in self.table:
            return verify
        if not verify:
            raise self.error(ca_name, f"give {ca_name} or {verify_name} = false, not both")
        path = self.file(ca_name)
        try:
            return ssl.create_default_context(cafile=str(path))
        except (OSError, ssl.SSLError) as exc:
            raise self.error(ca_name, f"{path} is not a usable CA bundle: {exc}") from None


class PrivateFileError(Exception):
    """A secret's file that is missing, unreadable, too big or readable by others."""


def read_private_file(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, refused unless it is a regular file that only its owner can read
    (mode 600 or stricter) and holds at most ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise PrivateFileError(f"{path} does not exist") from None
    except OSError as exc:
        raise PrivateFileError(f"{path} cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise PrivateFileError(f"{path} is not a regular file")
        if info.st_mode & 0o077:
            raise PrivateFileError(
                f"{path} is accessible by group or others (mode "
                f"{stat.S_IMODE(info.st_mode):o}); run chmod 600 on it")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise PrivateFileError(f"{path} is larger than {limit} bytes")
    return data


def retry_after_s(header: str | None, now_ms: int) -> float | None:
    """Retry-After as seconds from now (delta-seconds or an HTTP date, RFC 9110), capped at a
    day; None when absent or unreadable."""
    if not header:
        return None
    header = header.strip()
    try:
        seconds = float(header)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = when.timestamp() - now_ms / 1000
    if seconds != seconds:  # NaN
        return None
    return min(max(0.0, seconds), RETRY_AFTER_MAX_S)


def short(text: str, limit: int = 300) -> str:
    """One line of at most ``limit`` characters, for a parked reason or a log field."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


class AnswerTooLarge(httpx.TransportError):
    """An answer longer than ``MAX_ANSWER_BYTES`` (declared, received or inflated): reading
    stopped there. A transport error, so every adapter and channel treats it as the target
    being down (``TargetDown``: the items stay pending and are retried later)."""


class AnswerUndecodable(httpx.TransportError):
    """An answer in a content-encoding we did not ask for, or a corrupt gzip/deflate body."""


async def fetch(client: httpx.AsyncClient, method: str, url: str, *,
                auth: httpx.Auth | None = None, limit: int = MAX_ANSWER_BYTES,
                **kwargs: Any) -> httpx.Response:
    """``client.request(method, url, **kwargs)``, reading at most ``limit`` bytes of the answer.

    The answer is streamed: a ``Content-Length`` above ``limit`` is refused before its body, a
    body (chunked or not) is read until it passes ``limit`` and no further, and gzip/deflate
    are inflated a bounded piece at a time (a small compressed body cannot become a large
    one). The whole body must arrive within the client's read timeout (a peer dripping a byte
    at a time is a timeout, not a wait of hours). Raises :class:`AnswerTooLarge`,
    :class:`AnswerUndecodable` or ``httpx.ReadTimeout`` (all ``httpx.TransportError``, as a
    refused connection is), else returns the answer with its body read: ``.json()``,
    ``.text`` and ``.content`` then work on at most ``limit`` bytes.
    """
    headers = httpx.Headers(kwargs.pop("headers", None))
    headers.setdefault("Accept-Encoding", ACCEPT_ENCODING)
    request = client.build_request(method, url, headers=headers, **kwargs)
    response = await client.send(request, stream=True,
                                 auth=httpx.USE_CLIENT_DEFAULT if auth is None else auth)
    try:
        declared = response.headers.get("content-length", "").strip()
        if declared.isdecimal() and int(declared) > limit:
            raise AnswerTooLarge(f"answer of {declared} bytes, more than {limit}",
                                 request=request)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            inflate = None
        elif encoding in ("gzip", "x-gzip", "deflate"):
            inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)  # a gzip or a zlib header
        else:
            raise AnswerUndecodable(f"answer in content-encoding {short(encoding, 40)!r}",
                                    request=request)
        body = bytearray()
        received = 0
        try:
            async with asyncio.timeout(client.timeout.read):
                async for raw in response.aiter_raw():
                    received += len(raw)
                    if received > limit:
                        raise AnswerTooLarge(f"answer of more than {limit} bytes",
                                             request=request)
                    if inflate is None:
                        body += raw
                        continue
                    try:  # at most one byte beyond what still fits: enough to know
                        body += inflate.decompress(raw, limit - len(body) + 1)
                    except zlib.error:
                        raise AnswerUndecodable(f"answer is not valid {encoding}",
                                                request=request) from None
                    if len(body) > limit:
                        raise AnswerTooLarge(f"answer inflating to more than {limit} bytes",
                                             request=request)
        except TimeoutError:
            raise httpx.ReadTimeout(f"answer not complete within {client.timeout.read} s",
                                    request=request) from None
    finally:
        await response.aclose()
    kept = httpx.Headers([(k, v) for k, v in response.headers.multi_items()
                          if k.lower() not in ("content-encoding", "content-length",
                                               "transfer-encoding")])
    extensions = {k: v for k, v in response.extensions.items()
                  if k in ("http_version", "reason_phrase")}
    return httpx.Response(response.status_code, headers=kept, content=bytes(body),
                          request=request, extensions=extensions)


class Throttled(Exception):
    """A 429 or 503 with Retry-After: this item and the rest of the batch wait."""

    def __init__(self, reason: str, retry_after_s: float | None) -> None:
        super().__init__(reason)
        self.reason, self.retry_after_s = reason, retry_after_s


class Deliverable(Protocol):
    """What ``deliver_each`` needs of an item: the outbox row it answers."""

    @property
    def item_id(self) -> int: ...


_Item = TypeVar("_Item", bound=Deliverable)


async def deliver_each(name: str, items: Sequence[_Item], parallel: int,
                       one: Callable[[_Item], Awaitable[DeliveryResult]],
                       log: logging.Logger) -> list[DeliveryResult]:
    """Deliver ``items`` with ``one`` per item, up to ``parallel`` requests in flight, in the
    outbox's order. Items are attendance items (forwarders) or anything with an ``item_id``
    (parent-notification messages, ``gateway/channels``).

    Of attendance items, only the newest version of an event in the batch is sent (it carries
    the whole state); the older ones are answered delivered-superseded. When ``one`` raises
    ``Throttled`` that item and every item not started yet answer ``retry`` with its
    Retry-After. A ``TargetDown`` (or any other exception: a bug) stops the batch and is raised
    once the requests in flight are done.
    """
    results: dict[int, DeliveryResult] = {}
    newest: dict[str, AttendanceItem] = {}
    for item in items:
        if isinstance(item, AttendanceItem):
            kept = newest.get(item.event_key)
            if kept is None or item.revision > kept.revision:
                newest[item.event_key] = item
    queue: list[_Item] = []
    for item in items:
        if isinstance(item, AttendanceItem) and newest[item.event_key] is not item:
            kept = newest[item.event_key]
            results[item.item_id] = DeliveryResult(
                item.item_id, "delivered",
                reason=f"not sent: superseded by revision {kept.revision} in the same batch")
        else:
            queue.append(item)
    queue.reverse()  # pop() from the end keeps the outbox's order
    throttled: Throttled | None = None
    down: TargetDown | None = None
    crashed: BaseException | None = None

    async def worker() -> None:
        nonlocal throttled, down, crashed
        while queue and down is None and crashed is None:
            item = queue.pop()
            if throttled is not None:
                results[item.item_id] = DeliveryResult(item.item_id, "retry",
                                                       reason=throttled.reason,
                                                       retry_after_s=throttled.retry_after_s)
                continue
            try:
                results[item.item_id] = await one(item)
            except Throttled as exc:
                throttled = throttled or exc
                results[item.item_id] = DeliveryResult(item.item_id, "retry", reason=exc.reason,
                                                       retry_after_s=exc.retry_after_s)
            except TargetDown as exc:
                down = down or exc
            except Exception as exc:  # a bug: let the outbox see it, after the others
                crashed = crashed or exc

    await asyncio.gather(*(worker() for _ in range(min(parallel, len(queue)))))
    if crashed is not None:
        raise crashed
    if down is not None:
        log.warning("target down", extra={"target": name, "reason": down.reason})
        raise down
    counts: dict[str, int] = {}
    for result in results.values():
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
    log.debug("batch delivered", extra={"target": name, **counts})
    return [results[item.item_id] for item in items]
