"""A shared RS-485 bus of pseudo-terminals for the real reader firmware and the real bus master.

- ``PtyUart`` is the CPython stand-in for ``machine.UART`` (``timeout=0``) on the slave end of a
  pty: ``readinto`` returns at once with what is there, ``any`` counts waiting bytes (FIONREAD),
  ``write`` refuses to reach the line while the ``DePin`` is low (on a real board those bytes would
  never leave the transceiver), ``flush`` is ``tcdrain``.
- ``BusHub`` is the cable. The gateway's ``BusMaster`` opens one pty's slave by its tty name
  through pyserial; each reader gets a pty of its own. Every byte one station sends reaches every
  other station (readers hear each other too), each receiver with its own seeded damage (bit
  flips, dropped bytes). The hub also watches the clean byte streams for what would be a collision
  on a real bus: a reader starting while another station is mid-frame, or a reader frame that does
  not answer the master's last frame (out of turn: late, twice, or unasked).
- ``BusReader`` is one reader: the real firmware booted from files (``firmware.main.boot``) with
  the Wiegand board profile that has an ``rs485`` table, so ``boot`` builds its ``CommandHandler``,
  ``Uplink`` and ``BusLink`` through ``Hardware.build_bus``.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import random
import shutil
import struct
import termios
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware.bus_link import BusLink
from firmware.commands import CommandHandler
from firmware.drivers.wiegand import WiegandReader
from firmware.feedback import Feedback
from firmware.fs import FS
from firmware.main import boot
from firmware.ticks import ticks_ms
from firmware.uplink import Uplink
from gateway.ingest import Ingest
from protocol import card, construct_codec, frame
from tests.pty_end import PtyEnd

BOARDS = Path(__file__).resolve().parents[2] / "hardware" / "boards"
BOARD = "esp32-devkitc-wiegand"
BAUD = 115200


# -- the reader's hardware ---------------------------------------------------------------------


class DePin:
    """The transceiver's driver-enable line (``machine.Pin`` output)."""

    def __init__(self) -> None:
        self.level = 0
        self.rises = 0

    def value(self, v: int) -> None:
        if v and not self.level:
            self.rises += 1
        self.level = 1 if v else 0


class PtyUart:
    """``machine.UART`` (non-blocking) over a pty slave; only talks while DE is high."""

    def __init__(self, fd: int, de: DePin) -> None:
        self.fd = fd
        self.de = de
        self.frames = 0
        self.written = 0
        self.without_de = 0  # writes attempted with the driver off

    def any(self) -> int:
        raw = fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", raw)[0])

    def readinto(self, buf: bytearray) -> int | None:
        try:
            n = os.readv(self.fd, [buf])
        except BlockingIOError:
            return None
        return n or None

    def write(self, data: memoryview) -> int:
        if not self.de.level:
            self.without_de += 1
            return len(data)
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            sent += os.write(self.fd, view[sent:])  # a full pty raises: the test fails loudly
        self.frames += 1
        self.written += sent
        return sent

    def flush(self) -> None:
        termios.tcdrain(self.fd)


class _Quiet:
    """A Wiegand data line that never pulses (taps come through ``BusReader.tap``)."""

    IRQ_FALLING = 2

    def irq(self, handler: Any = None, trigger: int = 0, hard: bool = False) -> None:
        pass

    def value(self) -> int:
        return 1


class _Out:
    def value(self, v: int) -> None:
        pass

    def freq(self, v: int) -> None:
        pass

    def duty_u16(self, v: int) -> None:
        pass


class _Watchdog:
    def feed(self) -> None:
        pass


class Hardware:
    """What ``firmware/hw_esp32.py`` builds for the Wiegand board with RS-485, for ``boot``."""

    def __init__(self, uart: Any, de: DePin) -> None:
        self.uart = uart
        self.de = de
        self.bus_profile: dict[str, Any] = {}
        self.reboots = 0

    def build_reader(self, profile: dict[str, Any]) -> WiegandReader:
        assert profile["reader"]["type"] == "wiegand"
        return WiegandReader(_Quiet(), _Quiet())

    def build_feedback(self, profile: dict[str, Any], volume: int) -> Feedback:
        return Feedback(_Out(), _Out(), _Out(), volume)

    def build_watchdog(self) -> _Watchdog:
        return _Watchdog()

    def build_bus(self, profile: dict[str, Any]) -> tuple[Any, DePin]:
        self.bus_profile = profile["rs485"]
        return self.uart, self.de

    def set_rtc(self, unix_s: int) -> None:
        pass

    def reboot(self) -> None:
        self.reboots += 1


def provision(root: Path, reader_id: int, address: int, key: bytes, **config: Any) -> None:
    (root / "boards").mkdir(parents=True)
    shutil.copy(BOARDS / f"{BOARD}.json", root / "boards")
    settings = {
        "reader_id": reader_id,
        "school": "thcs-1",
        "gate": "main",
        "board": BOARD,
        "debounce_ms": 1500,
        "bus_address": address,
        **config,
    }
    (root / "config.json").write_text(json.dumps(settings))
    (root / "key.bin").write_bytes(key)


class BusReader:
    """One reader on the bus: the firmware booted from ``root``, talking through ``uart``.

    ``handed`` counts what the link hands the uplink (``put_ack``, ``put_command``), to prove
    nothing is handed down twice.
    """

    def __init__(
        self,
        root: Path,
        reader_id: int,
        address: int,
        key: bytes,
        uart: Any,
        de: DePin,
        **config: Any,
    ) -> None:
        provision(root, reader_id, address, key, **config)
        self.root = root
        self.reader_id = reader_id
        self.address = address
        self.key = key
        self.uart = uart
        self.de = de
        self.hw = Hardware(uart, de)
        fs = FS(sync=False)
        self.app = boot(fs, str(root), self.hw)
        assert self.app.config.get("bus_address") == address
        link = self.app.link
        if isinstance(link, BusLink):  # boot wired the bus from the board profile
            assert self.hw.bus_profile["baudrate"] == BAUD
            self.link = link
            self.uplink = link.uplink
            self.commands = self.uplink.commands
        else:  # a boot that leaves the link to its caller
            self.commands = CommandHandler(self.app, fs, str(root), reboot=self.hw.reboot)
            self.uplink = Uplink(self.app, self.commands, frame.MAX_PAYLOAD)
            self.link = BusLink(self.uplink, uart, de, address, BAUD)
            self.app.link = self.link
        self.handed: Counter[str] = Counter()
        for name in ("put_ack", "put_command"):
            self._count(name)
        self.uids: list[bytes] = []  # every tap, in order
        self._tasks: list[asyncio.Task[None]] = []

    def _count(self, name: str) -> None:
        inner: Callable[[bytes | bytearray | memoryview], None] = getattr(self.uplink, name)

        def counted(data: bytes | bytearray | memoryview) -> None:
            self.handed[name] += 1
            inner(data)

        setattr(self.uplink, name, counted)

    def relink(self, **options: Any) -> BusLink:
        """A new link on the same uplink and UART, built with ``options``."""
        self.link = BusLink(self.uplink, self.uart, self.de, self.address, BAUD, **options)
        self.app.link = self.link
        return self.link

    def start(self) -> BusReader:
        """The app's tasks; ``ReaderApp.run`` runs its link's ``run`` among them."""
        self._tasks = [asyncio.create_task(self.app.run())]
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for result in results:
            if not isinstance(result, asyncio.CancelledError):
                raise AssertionError(f"reader {self.reader_id} task ended with {result!r}")

    def tap(self) -> bytes:
        """A Wiegand-26 card (facility = address, number = tap count) seen by the reader now."""
        n = len(self.uids) + 1
        uid = bytes((self.address, n >> 8, n & 0xFF))
        assert self.app.taps.sighting(card.WIEGAND26, bytearray(uid), 3, ticks_ms())
        self.uids.append(uid)
        return uid

    def command(self, cmd_seq: int, opcode: str, args: dict[str, int]) -> bytes:
        return construct_codec.encode(
            "command",
            {
                "reader_id": self.reader_id,
                "cmd_seq": cmd_seq,
                "issued_s": 1_790_000_000,
                "opcode": opcode,
                "args": args,
            },
            self.key,
        )


# -- the cable ---------------------------------------------------------------------------------


@dataclass
class Noise:
    """Per chunk delivered to one receiver: the chance of one flipped bit, of one lost byte."""

    flip_down: float = 0.0  # what the master sends, as each reader hears it
    drop_down: float = 0.0
    flip_up: float = 0.0  # what a reader sends, as the master hears it
    drop_up: float = 0.0


@dataclass
class HubStats:
    damage: Counter[str] = field(default_factory=Counter)
    gateway_frames: int = 0
    reader_frames: Counter[int] = field(default_factory=Counter)
    collisions: int = 0  # a reader began while another station was mid-frame
    out_of_turn: int = 0  # a reader frame that answers no open turn of the master
    wrong_address: int = 0  # a reader sent a frame with another address
    polled: Counter[int] = field(default_factory=Counter)  # master frames per address


class _End(PtyEnd):
    """The hub's side of one station's pty."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.mid_frame = False  # the station's last byte was not a delimiter
        self._reading_loop = loop

    def close(self) -> None:
        self._reading_loop.remove_reader(self.master_fd)
        super().close()


class BusHub:
    """One RS-485 bus: the gateway's pty (``port``) and one pty per reader (``attach``)."""

    GATEWAY = 0

    def __init__(self, noise: Noise | None = None, seed: int = 0) -> None:
        self.noise = noise or Noise()
        self.rng = random.Random(seed)
        self.stats = HubStats()
        self._loop = asyncio.get_running_loop()
        self._ends: dict[int, _End] = {}
        self._turn: int | None = None  # address of the master's last frame, until answered
        self._parsers: dict[int, frame.FrameReader] = {}
        gateway = self._add(self.GATEWAY)
        self.port = gateway.port

    def _add(self, station: int) -> _End:
        end = _End(self._loop)
        self._ends[station] = end
        if station == self.GATEWAY:
            self._parsers[station] = frame.FrameReader(self._gateway_frame, _ignore)
        else:

            def heard(addr: int, ftype: int, fseq: int, payload: memoryview) -> None:
                self._reader_frame(station, addr)

            self._parsers[station] = frame.FrameReader(heard, _ignore)
        self._loop.add_reader(end.master_fd, self._readable, station)
        return end

    def attach(self, address: int) -> tuple[PtyUart, DePin]:
        """A reader's UART and DE pin on this bus."""
        end = self._add(address)
        os.set_blocking(end.slave_fd, False)
        de = DePin()
        return PtyUart(end.slave_fd, de), de

    def close(self) -> None:
        for end in self._ends.values():
            end.close()
        self._ends.clear()

    # -- the wire --------------------------------------------------------------------------------

    def _readable(self, station: int) -> None:
        end = self._ends[station]
        try:
            data = os.read(end.master_fd, 4096)
        except BlockingIOError:
            return
        except OSError:  # the station closed its side
            self._loop.remove_reader(end.master_fd)
            return
        if station != self.GATEWAY and any(
            other.mid_frame for s, other in self._ends.items() if s != station
        ):
            self.stats.collisions += 1
        end.mid_frame = data[-1:] not in (b"", b"\x00")
        self._parsers[station].feed(data)
        noise = self.noise
        for other, dest in self._ends.items():
            if other == station:
                continue
            if other == self.GATEWAY:
                dest.send(self._damage(data, noise.flip_up, noise.drop_up, "up"))
            else:
                dest.send(self._damage(data, noise.flip_down, noise.drop_down, "down"))

    def _damage(self, data: bytes, flip: float, drop: float, way: str) -> bytes:
        rng = self.rng
        if not (flip or drop):
            return data
        out = bytearray(data)
        if flip and rng.random() < flip:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
            self.stats.damage[f"flip_{way}"] += 1
        if drop and rng.random() < drop:
            del out[rng.randrange(len(out))]
            self.stats.damage[f"drop_{way}"] += 1
        return bytes(out)

    def _gateway_frame(self, addr: int, ftype: int, fseq: int, payload: memoryview) -> None:
        self.stats.gateway_frames += 1
        self.stats.polled[addr] += 1
        self._turn = addr

    def _reader_frame(self, station: int, addr: int) -> None:
        self.stats.reader_frames[station] += 1
        if addr != station:
            self.stats.wrong_address += 1
        if self._turn == addr:
            self._turn = None
        else:
            self.stats.out_of_turn += 1


def _ignore(code: str) -> None:
    pass


class RecordingIngest(Ingest):
    """The real ingest, also keeping each command result it verified (for the assertions)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.results: list[tuple[int, int, str]] = []  # reader_id, cmd_seq, status
        self.heartbeat_readers: Counter[int] = Counter()

    async def result(self, reader_id: int, payload: bytes, transport: str) -> None:
        await super().result(reader_id, payload, transport)
        key = self.keys.active(reader_id)
        assert key is not None
        fields = construct_codec.decode("result", payload, key.key)  # raises unless genuine
        self.results.append((fields["reader_id"], fields["cmd_seq"], fields["status"]))

    async def heartbeat(
        self, reader_id: int, payload: bytes, transport: str, *, retained: bool = False
    ) -> None:
        await super().heartbeat(reader_id, payload, transport, retained=retained)
        self.heartbeat_readers[reader_id] += 1
