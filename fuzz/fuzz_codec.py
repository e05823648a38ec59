"""Protocol v1 messages (SPEC.md sections 3-7) on both codecs, differentially.

Input: one selector byte, then the message. The selector's low bits pick the kind (record,
batch, ack, heartbeat, command, result); bit 7 re-signs the message (and, in a batch, every
record slice the ``rec_len`` walk finds) with ``KEY``, so that mutations get past the MAC to the
field rules. Properties:

- ``protocol.peer`` (the runtime-neutral codec) and ``protocol.construct_codec`` raise nothing
  but ``ProtocolError``, reach the same decision with the same error code, and decode the same
  fields (SPEC.md fixes the order of the checks, so the first failure is the same);
- an accepted message re-encodes, on both codecs, to exactly its bytes (the format is
  canonical), and a batch's ``split_batch`` agrees on the header and the record slices.
"""

from __future__ import annotations

import sys
from typing import Any

from fuzz.common import KEY, Bug
from protocol import construct_codec, peer
from protocol.errors import ProtocolError

KINDS = ("record", "batch", "ack", "heartbeat", "command", "result")
MAC_LEN = 16
RESIGN = 0x80


def mac(body: bytes | bytearray) -> bytes:
    return construct_codec.compute_mac(KEY, bytes(body))


def resign(kind: str, message: bytes) -> bytes:
    """``message`` with its trailing MAC (and a batch's record MACs) made valid for ``KEY``."""
    buf = bytearray(message)
    if kind == "batch" and len(buf) >= 19:
        pos = 19
        for _ in range(buf[18]):
            if pos >= len(buf):
                break
            size = buf[pos]
            end = pos + 1 + size
            if size > MAC_LEN and end <= len(buf):
                buf[end - MAC_LEN:end] = mac(buf[pos + 1:end - MAC_LEN])
            pos = end
    if len(buf) > MAC_LEN:
        buf[-MAC_LEN:] = mac(buf[:-MAC_LEN])
    return bytes(buf)


def outcome(decode: Any, kind: str, message: bytes) -> tuple[str, Any]:
    try:
        return "ok", decode(kind, message, KEY)
    except ProtocolError as exc:
        return "error", exc.code


def differential(kind: str, message: bytes) -> tuple[str, Any]:
    """Decode on both codecs; raise :class:`Bug` unless they agree. Returns the outcome."""
    neutral = outcome(peer.decode, kind, message)
    declared = outcome(construct_codec.decode, kind, message)
    if neutral != declared:
        raise Bug(f"{kind} {message.hex()}: runtime-neutral {neutral!r}, construct {declared!r}")
    if neutral[0] == "ok":
        for name, encode in (("runtime-neutral", peer.encode),
                             ("construct", construct_codec.encode)):
            again = encode(kind, neutral[1], KEY)
            if again != message:
                raise Bug(f"{kind} {message.hex()}: {name} re-encodes it as {again.hex()}")
    if kind == "batch":
        split(message)
    return neutral


def split(message: bytes) -> None:
    try:
        reader_id, boot, first, last, slices = peer.split_batch(message, KEY)
        neutral: Any = ((reader_id, boot, first, last), [bytes(s) for s in slices])
    except ProtocolError as exc:
        neutral = exc.code
    try:
        header, records = construct_codec.split_batch(message, KEY)
        declared: Any = ((header["reader_id"], header["boot"], header["first_seq"],
                          header["last_seq"]), records)
    except ProtocolError as exc:
        declared = exc.code
    if neutral != declared:
        raise Bug(f"split_batch {message.hex()}: {neutral!r} != {declared!r}")


def check(data: bytes) -> None:
    if not data:
        return
    kind = KINDS[(data[0] & 0x7F) % len(KINDS)]
    message = data[1:]
    if data[0] & RESIGN:
        message = resign(kind, message)
    differential(kind, message)


def seeds() -> list[bytes]:
    """Valid messages of every kind made by the project's own encoders (the corpus's seeds)."""
    from fuzz.samples import messages

    out = []
    for kind, message in messages():
        out.append(bytes([KINDS.index(kind)]) + message)
        out.append(bytes([KINDS.index(kind) | RESIGN]) + message)
    return out


if __name__ == "__main__":
    from fuzz.common import fuzz_main

    fuzz_main(check, sys.argv)
