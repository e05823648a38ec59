"""Consistent Overhead Byte Stuffing (Cheshire & Baker 1999) into caller-owned buffers.

The encoder emits the canonical form: a final run of 254 non-zero bytes ends the output without a
trailing 0x01 block. The decoder accepts both forms, as every COBS decoder does.
"""

from protocol.errors import ProtocolError


def max_encoded_len(n: int) -> int:
    """The longest encoding of ``n`` bytes (one code byte per started run of 254)."""
    return n + n // 254 + 1


def encode_into(src: bytes | bytearray | memoryview, dst: bytearray | memoryview) -> int:
    """Encode ``src`` into ``dst`` (of ``max_encoded_len(len(src))`` bytes); return the size."""
    n = len(src)
    code_pos = 0
    write = 1
    code = 1
    for i in range(n):
        byte = src[i]
        if byte:
            dst[write] = byte
            write += 1
            code += 1
            if code == 0xFF:
                dst[code_pos] = 0xFF
                if i + 1 == n:
                    return write
                code_pos = write
                write += 1
                code = 1
        else:
            dst[code_pos] = code
            code_pos = write
            write += 1
            code = 1
    dst[code_pos] = code
    return write


def decode_into(src: bytes | bytearray | memoryview, dst: bytearray | memoryview) -> int:
    """Decode one frame's ``src`` (no delimiters) into ``dst``; return the decoded size.

    The decoding is at most ``len(src) - 1`` bytes. Raises ``ProtocolError('bad_framing')`` on a
    zero byte or a run that overruns the input, and ``ProtocolError('too_large')`` when the
    decoding does not fit in ``dst``.
    """
    n = len(src)
    if n == 0:
        raise ProtocolError("bad_framing", "empty COBS chunk")
    cap = len(dst)
    read = 0
    write = 0
    while read < n:
        code = src[read]
        if code == 0:
            raise ProtocolError("bad_framing", "zero byte inside a COBS frame")
        read += 1
        end = read + code - 1
        if end > n:
            raise ProtocolError("bad_framing", "COBS run overruns the frame")
        # the run and the zero after it (if any): checked once per run, not per byte
        if write + code - (1 if code == 0xFF or end == n else 0) > cap:
            raise ProtocolError("too_large", "COBS decoding longer than its buffer")
        while read < end:
            byte = src[read]
            if byte == 0:
                raise ProtocolError("bad_framing", "zero byte inside a COBS frame")
            dst[write] = byte
            write += 1
            read += 1
        if code != 0xFF and read < n:
            dst[write] = 0
            write += 1
    return write
