"""CRC-16/IBM-3740 (poly 0x1021, init 0xFFFF, no reflection, xorout 0) for serial frames."""

from array import array


def _make_table() -> "array[int]":
    table = array("H", bytes(512))
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
        table[i] = crc
    return table


_TABLE = _make_table()


def crc16(data: bytes | bytearray | memoryview, crc: int = 0xFFFF) -> int:
    """CRC of ``data``; pass a previous result as ``crc`` to continue over several pieces."""
    table = _TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc
