"""``machine`` for the virtual board (MicroPython code, runs in the VM; see vboard.py).

What is wired to the board comes from ``/lib/vboard.json``: ``mfrc522`` (``cs`` and ``rst`` pin
numbers, ``cards`` in the field as UID hex, ``dead``: the chip does not answer) is the emulated
chip of tests/firmware/emulators on the SPI bus; ``uart`` maps a UART id to the bytes (hex) its
receiver hears. Pins and PWM outputs record every setting in ``log``.
"""

import json

from mfrc522_emulator import MFRC522Emulator, Picc

with open("/lib/vboard.json") as _f:
    _CFG = json.load(_f)
log = []
_chip = []


def chip():
    spec = _CFG.get("mfrc522")
    if spec is None:
        return None
    if not _chip:
        c = MFRC522Emulator()
        for uid in spec.get("cards", []):
            c.add(Picc(bytes.fromhex(uid)))
        if spec.get("dead"):
            c.power_off()
        _chip.append(c)
    return _chip[0]


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 2
    PULL_DOWN = 1
    IRQ_FALLING = 2
    IRQ_RISING = 1

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self._level = 1 if pull == Pin.PULL_UP else 0
        self._target = None
        spec = _CFG.get("mfrc522") or {}
        c = chip()
        if c is not None and id == spec.get("cs"):
            self._target = c.cs
        elif c is not None and id == spec.get("rst"):
            self._target = c.rst
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            return self._level
        self._level = 1 if v else 0
        log.append(("pin", self.id, self._level))
        if self._target is not None:
            self._target.value(self._level)
        return None

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=0, hard=False):
        return None


class SPI:
    def __init__(self, id, baudrate=1000000, polarity=0, phase=0, sck=None, mosi=None,
                 miso=None):
        c = chip()
        if c is None:
            raise OSError(19)  # ENODEV: nothing on this bus
        self._spi = c.spi

    def write(self, buf):
        self._spi.write(buf)

    def readinto(self, buf, write=0x00):
        self._spi.readinto(buf, write)

    def read(self, nbytes, write=0x00):
        return self._spi.read(nbytes, write)

    def write_readinto(self, write_buf, read_buf):
        self._spi.write_readinto(write_buf, read_buf)


class PWM:
    def __init__(self, pin, freq=0, duty_u16=0):
        self._pin = pin.id
        self.freq(freq)
        self.duty_u16(duty_u16)

    def freq(self, v=None):
        if v is not None:
            log.append(("freq", self._pin, v))

    def duty_u16(self, v=None):
        if v is not None:
            log.append(("duty", self._pin, v))

    def deinit(self):
        return None


class UART:
    def __init__(self, id, baudrate=9600, rx=None, tx=None, rxbuf=256, timeout=0, **kw):
        self._rx = bytearray(bytes.fromhex(_CFG.get("uart", {}).get(str(id), "")))

    def any(self):
        return len(self._rx)

    def readinto(self, buf, nbytes=-1):
        n = min(len(buf), len(self._rx))
        if not n:
            return None
        buf[:n] = self._rx[:n]
        self._rx = self._rx[n:]
        return n

    def read(self, nbytes=-1):
        if not self._rx:
            return None
        n = len(self._rx) if nbytes < 0 else min(nbytes, len(self._rx))
        data = bytes(self._rx[:n])
        self._rx = self._rx[n:]
        return data

    def write(self, buf):
        return len(buf)


class WDT:
    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout

    def feed(self):
        return None


class RTC:
    def datetime(self, t=None):
        return (2026, 1, 1, 3, 0, 0, 0, 0) if t is None else None


def reset():
    raise SystemExit("machine.reset")
