"""Every upstream and channel answer is read through ``gateway.forwarders._common.fetch``: at
most ``MAX_ANSWER_BYTES`` (1 MiB), whatever the peer declares, streams or compresses, and within
the read timeout. Here the helper itself, against a hostile HTTP server on loopback
(tests/gateway/oversized.py); each adapter's and channel's outcome is tested in its own file
(test_edfi.py, test_openemis.py, test_relay.py, test_channels.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.forwarders._common import (
    MAX_ANSWER_BYTES,
    AnswerTooLarge,
    AnswerUndecodable,
    fetch,
)
from tests.gateway.oversized import CHUNK, MiB, Mode, OversizedPeer


@pytest.mark.parametrize("mode", ["chunked", "length", "gzip"])
async def test_an_answer_over_the_cap_is_refused_without_reading_it(mode: Mode) -> None:
    async with OversizedPeer(mode=mode, size=32 * MiB) as peer, \
            httpx.AsyncClient(timeout=5) as client:
        with pytest.raises(AnswerTooLarge, match=str(MAX_ANSWER_BYTES)):
            await fetch(client, "POST", peer.url("/anything"), json={"a": 1})
        await asyncio.sleep(0.2)  # let the server notice the hang-up
    assert peer.requests == [("POST", "/anything")]
    if mode == "gzip":
        assert peer.written < MiB  # 32 KiB that would have inflated to 32 MiB
    else:  # what the kernel's socket buffers took, not the body
        assert peer.bodies == 1 and peer.unread()


@pytest.mark.parametrize("mode", ["chunked", "length", "gzip"])
async def test_an_answer_within_the_cap_is_read_whole(mode: Mode) -> None:
    async with OversizedPeer(mode=mode, size=MAX_ANSWER_BYTES) as peer, \
            httpx.AsyncClient(timeout=5) as client:
        response = await fetch(client, "GET", peer.url("/x"))
    assert response.status_code == 200 and response.reason_phrase == "OK"
    assert len(response.content) == MAX_ANSWER_BYTES and response.content.startswith(b"[ ")
    assert "content-encoding" not in response.headers
    assert response.headers["content-length"] == str(MAX_ANSWER_BYTES)


class _Endless(httpx.AsyncByteStream):
    """A body that never ends, counting what the client pulled."""

    def __init__(self, delay_s: float = 0.0, chunk: bytes = b"x" * CHUNK) -> None:
        self.pulled = 0
        self.delay_s, self.chunk = delay_s, chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            self.pulled += len(self.chunk)
            yield self.chunk


class _Once(httpx.AsyncByteStream):
    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body


async def test_an_endless_body_is_read_to_the_cap_and_no_further() -> None:
    body = _Endless()
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=body))
    async with httpx.AsyncClient(transport=transport, timeout=5) as client:
        with pytest.raises(AnswerTooLarge):
            await fetch(client, "GET", "http://127.0.0.1/x")
    assert MAX_ANSWER_BYTES < body.pulled <= MAX_ANSWER_BYTES + CHUNK


async def test_a_dripping_answer_is_a_timeout() -> None:
    body = _Endless(delay_s=0.05, chunk=b" ")
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=body))
    async with httpx.AsyncClient(transport=transport, timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout, match="not complete within"):
            await fetch(client, "GET", "http://127.0.0.1/x")
    assert time.monotonic() - started < 2 and body.pulled < 100


@pytest.mark.parametrize(("encoding", "body"), [("br", b"\x1b\x00"), ("gzip", b"not gzip")])
async def test_an_encoding_not_asked_for_or_corrupt_is_refused(encoding: str,
                                                               body: bytes) -> None:
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers["accept-encoding"])
        return httpx.Response(200, stream=_Once(body), headers={"Content-Encoding": encoding})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(AnswerUndecodable):
            await fetch(client, "GET", "http://127.0.0.1/x")
    assert asked == ["gzip, deflate"]
