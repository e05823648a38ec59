"""A fake ESP ROM bootloader on a pseudo-terminal: enough of esptool's serial protocol for the
real esptool to detect the chip, and a record of every command it was sent.

Frames are SLIP (0xC0 ends, 0xDB 0xDC / 0xDB 0xDD escape); a request is ``<BBHI`` (0, op, length,
checksum) + data, a response ``<BBHI`` (1, op, length, value) + data ending in status bytes
(0 = success; 1 then an error code). Answered: SYNC (0x08, eight replies as the ROM does),
READ_REG (0x0A; 0x40001000 is the chip-detect magic register: 0x00F01D83 on an ESP32) and
GET_SECURITY_INFO (0x14: the ESP32's ROM refuses it with "invalid command", later chips return
flags, key purposes and their chip id). Anything else is refused with "invalid command", so a
write can never succeed here: tests stop before it.
"""

from __future__ import annotations

import os
import struct
import threading
import tty

SYNC, READ_REG, GET_SECURITY_INFO = 0x08, 0x0A, 0x14
WRITE_OPS = {0x02, 0x03, 0x05, 0x07, 0x10, 0x11, 0xD0, 0xD1}  # flash/RAM writes, erases
CHIPS = {"ESP32": (0x00F01D83, None), "ESP32-S3": (0, 9), "ESP32-C3": (0, 5)}


class FakeRom:
    def __init__(self, chip: str = "ESP32") -> None:
        self.magic, self.chip_id = CHIPS[chip]
        self.master_fd, self.slave_fd = os.openpty()
        tty.setraw(self.slave_fd)
        self.port = os.ttyname(self.slave_fd)
        self.ops: list[int] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _reply(self, op: int, value: int = 0, data: bytes = b"\x00\x00\x00\x00") -> None:
        packet = struct.pack("<BBHI", 1, op, len(data), value) + data
        escaped = packet.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
        os.write(self.master_fd, b"\xc0" + escaped + b"\xc0")

    def _handle(self, frame: bytes) -> None:
        if len(frame) < 8 or frame[0] != 0:
            return
        op = frame[1]
        self.ops.append(op)
        data = frame[8:]
        if op == SYNC:
            for _ in range(8):
                self._reply(op, 0x20120707)
        elif op == READ_REG:
            addr = struct.unpack_from("<I", data)[0]
            self._reply(op, self.magic if addr == 0x40001000 else 0)
        elif op == GET_SECURITY_INFO and self.chip_id is not None:
            info = struct.pack("<IBBBBBBBBII", 0, 0, 0, 0, 0, 0, 0, 0, 0, self.chip_id, 0)
            self._reply(op, 0, info + b"\x00\x00\x00\x00")
        else:
            self._reply(op, 0, b"\x01\x05\x00\x00")

    def _serve(self) -> None:
        frame = bytearray()
        escape = in_frame = False
        while not self._stop:
            try:
                chunk = os.read(self.master_fd, 4096)
            except OSError:
                return
            for b in chunk:
                if b == 0xC0:
                    if in_frame and frame:
                        self._handle(bytes(frame))
                    frame.clear()
                    in_frame = True
                elif escape:
                    frame.append({0xDC: 0xC0, 0xDD: 0xDB}.get(b, b))
                    escape = False
                elif b == 0xDB:
                    escape = True
                elif in_frame:
                    frame.append(b)

    def close(self) -> None:
        self._stop = True
        os.close(self.slave_fd)
        os.close(self.master_fd)
