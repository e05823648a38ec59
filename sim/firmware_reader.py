"""Simulated readers that run the real reader firmware under CPython.

``FirmwareReader`` provisions a reader's flash as a directory (``config.json``, ``key.bin``,
``boards/``, ``data/``), boots it with ``firmware.main.boot`` on ``sim.hardware.SimHardware``
and runs ``ReaderApp.run`` as a task: the real tap path, debounce, flash queue, boot counter,
MQTT client, uplink and command handling. Many run side by side in one event loop.

Ground truth for tests and benchmarks: ``made()`` lists every record identity the firmware made
(``(boot, seq)``, from its tap path), whatever happened to it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

from firmware.app import ReaderApp
from firmware.backoff import Backoff
from firmware.fs import FS
from firmware.main import boot
from firmware.mqtt_link import MqttLink
from firmware.ticks import ticks_ms
from protocol.card import ISO14443A
from sim.hardware import Card, SimHardware

BOARDS = Path(__file__).resolve().parents[1] / "hardware" / "boards"
DEFAULT_BOARD = "esp32-devkitc-mfrc522"
_FLUSH_EVERY = 16  # ``queue_taps`` flushes after this many records (the RAM ring holds 32)


def provision(root: Path, reader_id: int, key: bytes, school: str, *, host: str, port: int,
              password: str | None, gate: str = "main", board: str = DEFAULT_BOARD,
              **settings: Any) -> None:
    """Write what ``attendance-provision configure`` writes to a reader's flash."""
    (root / "boards").mkdir(parents=True, exist_ok=True)
    shutil.copy(BOARDS / f"{board}.json", root / "boards")
    network: dict[str, Any] = {"broker": host, "port": port}
    if password is not None:
        network["mqtt_password"] = password
    config = {"reader_id": reader_id, "school": school, "gate": gate, "board": board,
              "network": network, **settings}
    (root / "config.json").write_text(json.dumps(config))
    (root / "key.bin").write_bytes(key)


class FirmwareReader:
    def __init__(self, root: Path, *, ntp: bool = True, ack_timeout_ms: int = 10000,
                 sync: bool = True, puback_timeout_ms: int | None = None,
                 **client_options: Any) -> None:
        """``sync=False`` skips fsync: many simulated readers share one disk, where each real
        reader has its own flash (benchmarks use it; the durability tests do not).

        ``ack_timeout_ms`` is the link's wait for the gateway's ack before it resends a batch,
        ``puback_timeout_ms`` the MQTT client's wait for a PUBACK (its own ``ack_timeout_ms``).
        ``client_options`` are set on the firmware's ``MqttClient`` at every boot (``keepalive``,
        ``connect_timeout_ms``, ``io_timeout_ms``, ``retries``, ``backoff_first_ms``,
        ``backoff_cap_ms``, ...); a name the client does not have is a ``TypeError``."""
        self.root = root
        self.ntp = ntp
        self.sync = sync
        self.ack_timeout_ms = ack_timeout_ms
        self.puback_timeout_ms = puback_timeout_ms
        self.client_options = client_options
        self._cards = 0  # cards made up by ``queue_taps`` so far
        self.app: ReaderApp | None = None
        self.hardware: SimHardware | None = None
        self._earlier: list[tuple[int, int]] = []  # (boot, records made) of past boots
        self.boots = 0
        self.crashed: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> ReaderApp:
        """Power on: boot from the files and run the application."""
        self.hardware = SimHardware(self.ntp, on_reboot=self._reboot_requested)
        app = boot(FS(self.sync), str(self.root), self.hardware)
        link: Any = app.link
        if link is not None and hasattr(link, "ack_timeout_ms"):
            link.ack_timeout_ms = self.ack_timeout_ms
            client = link.client
            options = dict(self.client_options)
            first = options.pop("backoff_first_ms", client.backoff.first_ms)
            cap = options.pop("backoff_cap_ms", client.backoff.cap_ms)
            # the client made its Backoff from its defaults in __init__: make it again
            client.backoff = Backoff(client.client_id, first, cap)
            for name, value in options.items():
                if not hasattr(client, name):
                    raise TypeError(f"MqttClient has no option {name!r}")
                setattr(client, name, value)
            if self.puback_timeout_ms is not None:
                client.ack_timeout_ms = self.puback_timeout_ms
        self.app = app
        self.boots += 1
        self._task = asyncio.create_task(self._run(app))
        return app

    async def _run(self, app: ReaderApp) -> None:
        try:
            await app.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the board would reset; the test wants to know
            self.crashed = exc

    async def stop(self, flush: bool = True) -> None:
        """Power off (nothing to do when off). ``flush=False`` is a power cut: records still in
        RAM are lost."""
        app, task = self.app, self._task
        if task is None:
            return  # already off: its records are counted once in ``made()``
        self._task = None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if app is not None:
            self._earlier.append((app.boot, app.taps.seq))
            if flush:
                app.queue.flush()

    async def restart(self, flush: bool = True) -> ReaderApp:
        await self.stop(flush)
        return self.start()

    def _reboot_requested(self) -> None:
        """The gateway's ``reboot`` command (``machine.reset()`` on the board)."""
        asyncio.get_running_loop().create_task(self.restart())

    # --- the gate ---------------------------------------------------------------------------

    def tap(self, card: Card) -> None:
        """Present a card; the next poll of the firmware sees it."""
        assert self.hardware is not None, "start() the reader first"
        self.hardware.reader.tap(card)

    def queue_taps(self, n: int) -> list[tuple[int, int]]:
        """``n`` different cards, one after the other, at once: each goes through the
        firmware's real tap path (debounce, signed record, RAM ring, feedback) and the flash
        queue is flushed as the app's flush task would: hours at a busy gate in a moment.
        Card ``i`` (counted over the reader's life) has the 7-byte ISO 14443-A UID
        ``04 <i as 6 bytes>``, never the same card twice, so the debouncer folds none.
        Returns the identities made."""
        app = self.app
        assert app is not None and self._task is not None, "start() the reader first"
        uid = bytearray(10)
        uid[0] = 0x04
        made = []
        for _ in range(n):
            self._cards += 1
            uid[1:7] = self._cards.to_bytes(6, "big")
            if not app.taps.sighting(ISO14443A, uid, 7, ticks_ms()):
                raise AssertionError(f"the debouncer folded card {self._cards}")
            made.append((app.boot, app.taps.seq))
            if len(made) % _FLUSH_EVERY == 0:
                app.queue.flush()  # before the RAM ring overflows
        app.queue.flush()
        return made

    @property
    def link(self) -> MqttLink:
        """The running firmware's MQTT link (``.client``, ``.uplink``, ``.resends``)."""
        app = self.app
        assert app is not None and isinstance(app.link, MqttLink), "no MQTT link running"
        return app.link

    @property
    def signals(self) -> list[int]:
        """The feedback patterns the tap path asked for in this boot, in order
        (``firmware.feedback.ACCEPTED`` while online, ``ACCEPTED_QUEUED`` while offline)."""
        hardware = self.hardware
        assert hardware is not None and hardware.feedback is not None, "start() the reader first"
        return hardware.feedback.signals

    def made(self) -> list[tuple[int, int]]:
        """Every ``(boot, seq)`` the firmware made, in order, across boots."""
        runs = list(self._earlier)
        if self._task is not None and self.app is not None:
            runs.append((self.app.boot, self.app.taps.seq))
        return [(b, s) for b, n in runs for s in range(1, n + 1)]

    @property
    def queue_depth(self) -> int:
        return self.app.queue.depth if self.app is not None else 0

    @property
    def online(self) -> bool:
        return self.app is not None and self.app.link is not None and self.app.link.online
