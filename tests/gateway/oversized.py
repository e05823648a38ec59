"""A hostile upstream for the answer-size tests: a real HTTP server on loopback that answers
every request with a body of ``size`` bytes (chunked without a Content-Length, or with one, or
gzip-compressed so that a small body inflates to ``size``), except the paths in ``canned``,
which get a small JSON answer (an upstream's token endpoint, so an adapter gets as far as its
data request).

``written`` counts the body bytes the server got out before the client hung up (over all
``bodies`` it started): a client that stops at its cap leaves most of each large body unsent
(what it did send is what the kernel's socket buffers took, a few MiB on loopback).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from sim.peers import LoopbackServer

MiB = 1024 * 1024
CHUNK = 64 * 1024
Mode = Literal["chunked", "length", "gzip"]


@dataclass
class OversizedPeer(LoopbackServer):
    size: int = 32 * MiB
    mode: Mode = "chunked"
    status: int = 200
    canned: dict[str, Any] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    bodies: int = 0  # oversized answers started
    written: int = 0
    finished: int = 0  # bodies sent to the end

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        return app

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        await request.read()
        if request.path in self.canned:
            return web.json_response(self.canned[request.path])
        response = web.StreamResponse(status=self.status,
                                      headers={"Content-Type": "application/json"})
        if self.mode == "length":
            response.content_length = self.size
        else:
            response.enable_chunked_encoding()
        if self.mode == "gzip":
            response.headers["Content-Encoding"] = "gzip"
        await response.prepare(request)
        self.bodies += 1
        try:
            async for chunk in self._body():
                await response.write(chunk)
                self.written += len(chunk)
            await response.write_eof()
            self.finished += 1
        except ConnectionError:
            pass  # the client hung up: what it had not read stays unsent
        return response

    async def _body(self) -> Any:
        """``size`` bytes of a JSON-looking body, or its gzip compression (about 1/1000)."""
        pad = b"[" + b" " * (CHUNK - 1)
        if self.mode != "gzip":
            left = self.size
            while left > 0:
                yield pad[:min(CHUNK, left)]
                left -= CHUNK
            return
        deflate = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
        left = self.size
        while left > 0:
            out = deflate.compress(pad[:min(CHUNK, left)])
            left -= CHUNK
            if out:
                yield out
        yield deflate.flush()

    def unread(self) -> bool:
        """No body was sent to its end, and at most half of them all went out."""
        return self.finished == 0 and self.written <= self.bodies * self.size // 2
