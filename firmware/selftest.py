"""Self-test run on the reader over the REPL by ``attendance-provision selftest``.

Each check prints one line ``ST|<check>|<PASS|FAIL|SKIP>|<detail>`` and the run ends with
``ST|END|<failures>``; the laptop turns the lines into a table. The checks use the reader's own
files (``config.json``, ``key.bin``, ``boards/``) and build the hardware through the same layer
the application uses (``firmware.hw_esp32`` on the board), so a pass means the application would
start on this hardware:

- ``config``: config.json parses, key.bin holds a key (never printed);
- ``board``: the board profile passes ``firmware.board`` (pin conflicts, impossible pins);
- ``reader``: the card reader chip answers (MFRC522 VersionReg) or its bus opens (UART, Wiegand);
- ``feedback``: a beep and both LEDs play the "accepted" and "rejected" patterns;
- ``flash``: a queue in a scratch directory writes signed records to flash and reads them back,
  then is deleted (the reader's real queue and boot counter are not touched);
- ``link``: the network comes up and the broker accepts the reader's MQTT credentials (CONNACK 0).

Start it with ``selftest.start(hw)``: the network bring-up and the feedback player run as tasks.
"""

import asyncio
import os

from firmware.aio import sleep_ms
from firmware.fs import FS, join
from firmware.ticks import ticks_diff, ticks_ms
from protocol import codec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SCRATCH = "selftest.tmp"
_RECORDS = 5
_CHIP_WAIT_MS = 1000
_LINK_WAIT_MS = 25000
_BROKER_TIMEOUT_S = 5


def _line(check: str, state: str, detail: str) -> None:
    print("ST|" + check + "|" + state + "|" + detail.replace("|", "/").replace("\n", " "))


class _Run:
    def __init__(self, hw: "Any", root: str) -> None:
        self.hw = hw
        self.root = root
        self.fs = FS(sync=False)
        self.failures = 0
        self.config: Any = None
        self.key = b""
        self.profile: Any = None

    def result(self, check: str, ok: bool, detail: str) -> None:
        if not ok:
            self.failures += 1
        _line(check, "PASS" if ok else "FAIL", detail)

    def check_config(self) -> bool:
        from firmware.config import check_key, parse_config

        try:
            raw = self.fs.read_file(join(self.root, "config.json"))
            if raw is None:
                raise ValueError("config.json is missing: run attendance-provision configure")
            self.config = parse_config(raw.decode())
            key = self.fs.read_file(join(self.root, "key.bin"))
            if key is None:
                raise ValueError("key.bin is missing: run attendance-provision configure")
            self.key = check_key(key)
        except ValueError as exc:
            self.result("config", False, str(exc))
            return False
        c = self.config
        self.result("config", True, "reader " + str(c.reader_id) + ", school " + c.school
                    + ", gate " + c.gate + ", board " + c.board)
        return True

    def check_board(self) -> bool:
        from firmware.board import BoardError, load_profile

        raw = self.fs.read_file(join(self.root, "boards/" + self.config.board + ".json"))
        if raw is None:
            self.result("board", False, "boards/" + self.config.board + ".json is missing: "
                        + "run attendance-provision deploy")
            return False
        try:
            self.profile, warnings = load_profile(raw.decode())
        except BoardError as exc:
            self.result("board", False, str(exc))
            return False
        self.result("board", True, self.profile["name"] + (
            "; " + "; ".join(warnings) if warnings else ""))
        return True

    def check_reader(self) -> None:
        kind = self.profile["reader"]["type"]
        try:
            reader = self.hw.build_reader(self.profile)
        except (OSError, ValueError) as exc:
            self.result("reader", False, kind + ": " + str(exc))
            return
        if kind != "mfrc522":
            self.result("reader", True, kind + ": bus open (tap a card with attendance-card "
                        + "watch to see its frames)")
            return
        start = ticks_ms()
        while not getattr(reader, "version", 0) and ticks_diff(ticks_ms(), start) < _CHIP_WAIT_MS:
            reader.poll(ticks_ms())
        version = getattr(reader, "version", 0)
        if version:
            self.result("reader", True, f"MFRC522 answers, VersionReg 0x{version:02X}")
        else:
            self.result("reader", False, "MFRC522 does not answer on SPI "
                        + str(self.profile["reader"]["spi"]) + ": check wiring and 3.3 V")

    async def check_feedback(self) -> None:
        from firmware.feedback import ACCEPTED, REJECTED

        try:
            feedback = self.hw.build_feedback(self.profile, self.config.get("volume"))
        except (OSError, ValueError) as exc:
            self.result("feedback", False, str(exc))
            return
        task = asyncio.create_task(feedback.run())
        for pattern in (ACCEPTED, REJECTED):
            feedback.signal(pattern)
            await sleep_ms(700)
        task.cancel()
        played = feedback.played
        self.result("feedback", played == 2, "played " + str(played) + " of 2 patterns (one "
                    + "high beep with green, one low beep with red)")

    def check_flash(self) -> None:
        from firmware.queue import RecordQueue

        fs = self.fs
        directory = join(self.root, SCRATCH)
        try:
            remove_tree(directory)
            fs.makedirs(directory)
            signer = codec.signer_for(self.key)
            buf = bytearray(53)
            written = []
            queue = RecordQueue(fs, directory, capacity=64, seg_slots=8).open()
            for seq in range(1, _RECORDS + 1):
                n = codec.record_into(buf, signer, self.config.reader_id, 1, seq, 0, 2,
                                      b"\x04\x01\x02\x03", 0, 0, seq)
                written.append(bytes(buf[:n]))
                queue.append(memoryview(buf)[:n])
            queue.flush()
            again = RecordQueue(fs, directory, capacity=64, seg_slots=8).open()
            writer = codec.BatchWriter()
            boot, count = again.fill(writer)
            pos = codec.BATCH_HEADER_LEN
            read = []
            for _ in range(count):
                n = writer.buf[pos]
                read.append(bytes(writer.buf[pos + 1 : pos + 1 + n]))
                pos += 1 + n
            ok = boot == 1 and read == written
            detail = str(count) + " of " + str(_RECORDS) + " records read back" + (
                "" if ok else " wrong") + ", " + str(fs.written) + " bytes written"
        except OSError as exc:
            ok = False
            detail = "flash error " + str(exc)
        finally:
            try:
                remove_tree(directory)
            except OSError as exc:
                ok = False
                detail = "cannot delete the scratch queue: " + str(exc)
        self.result("flash", ok, detail)

    async def check_link(self) -> None:
        kind = self.profile["network"]["type"]
        if kind == "rs485":
            _line("link", "SKIP", "RS-485 bus: the gateway polls this reader; see its logs")
            return
        from firmware.clock import Clock

        try:
            link = self.hw.build_network(self.profile, self.config, Clock())
        except ValueError as exc:
            self.result("link", False, str(exc))
            return
        task = asyncio.create_task(link.run())
        try:
            if not await link.wait_up(_LINK_WAIT_MS):
                self.result("link", False, kind + " did not come up: " + str(link.error))
                return
            self.result("link", *_broker(self.config))
        finally:
            task.cancel()
            link.stop()


def _broker(config: "Any") -> "tuple[bool, str]":
    """MQTT CONNECT with the reader's credentials; ``(accepted, detail)``."""
    import socket

    from firmware import mqtt_packets

    net = config.network
    host = net.get("broker", "")
    port = net.get("port", 1883)
    where = "broker " + host + ":" + str(port)
    sock = socket.socket()
    try:
        sock.settimeout(_BROKER_TIMEOUT_S)
        sock.connect(socket.getaddrinfo(host, port)[0][-1])
        sock.send(mqtt_packets.connect("selftest-" + str(config.reader_id), True, 30,
                                       str(config.reader_id), net.get("mqtt_password")))
        reply = sock.recv(4)
    except OSError as exc:
        return False, where + " unreachable: " + str(exc)
    finally:
        sock.close()
    if len(reply) != 4 or reply[0] != 0x20:
        return False, where + " did not answer MQTT"
    if reply[3]:
        return False, where + " refused the reader's credentials (CONNACK " + str(reply[3]) + ")"
    return True, where + " accepted the reader's credentials"


def remove_tree(path: str) -> None:
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        full = join(path, name)
        if os.stat(full)[0] & 0x4000:
            remove_tree(full)
        else:
            os.remove(full)
    os.rmdir(path)


async def main(hw: "Any", root: str = "/") -> int:
    """Run every check; print the lines and return the number of failures."""
    run = _Run(hw, root)
    if run.check_config() and run.check_board():
        run.check_reader()
        await run.check_feedback()
        run.check_flash()
        await run.check_link()
    else:
        for check in ("reader", "feedback", "flash", "link"):
            _line(check, "SKIP", "needs a valid config and board profile")
    print("ST|END|" + str(run.failures))
    return run.failures


def start(hw: "Any", root: str = "/") -> "Any":
    """Run :func:`main` to the end where ``asyncio.run`` blocks (the board); on an event-driven
    port without it (the WebAssembly VM of the tests' virtual board) start it as a task, which
    prints the same lines once the REPL has returned (the task is returned)."""
    run = getattr(asyncio, "run", None)
    if run is None:
        return asyncio.create_task(main(hw, root))
    return run(main(hw, root))
