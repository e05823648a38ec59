"""HMAC-SHA256 (RFC 2104) for MicroPython, which has ``hashlib.sha256`` but no ``hmac``.

Protocol v1 tags are the first ``MAC_LEN`` bytes of the HMAC. The key pads are computed once per
key, so a tag costs two hash objects and two digests and nothing else.
"""

import hashlib

from protocol.compat import const

_BLOCK = const(64)
MAC_LEN = const(16)


class HmacSha256:
    """HMAC-SHA256 under one key. ``tag`` is the protocol's truncated MAC."""

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        inner = bytearray(_BLOCK)
        outer = bytearray(_BLOCK)
        for i in range(len(key)):
            inner[i] = key[i]
            outer[i] = key[i]
        for i in range(_BLOCK):
            inner[i] ^= 0x36
            outer[i] ^= 0x5C
        self._inner = bytes(inner)
        self._outer = bytes(outer)

    def digest(self, data: bytes | bytearray | memoryview) -> bytes:
        """The full 32-byte HMAC of ``data``."""
        h = hashlib.sha256(self._inner)
        h.update(data)
        o = hashlib.sha256(self._outer)
        o.update(h.digest())
        return o.digest()

    def tag_into(self, data: bytes | bytearray | memoryview, out: bytearray | memoryview,
                 offset: int) -> None:
        """Write the ``MAC_LEN``-byte tag of ``data`` into ``out`` at ``offset``."""
        full = self.digest(data)
        for i in range(MAC_LEN):
            out[offset + i] = full[i]

    def verify(self, data: bytes | bytearray | memoryview,
               tag: bytes | bytearray | memoryview) -> bool:
        """Whether ``tag`` is the tag of ``data``, compared in constant time."""
        if len(tag) != MAC_LEN:
            return False
        full = self.digest(data)
        diff = 0
        for i in range(MAC_LEN):
            diff |= full[i] ^ tag[i]
        return diff == 0
