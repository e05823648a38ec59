"""The transport-neutral half of the reader-gateway link: what goes up next, what comes down.

MQTT (``firmware/mqtt_link.py``) and RS-485 (``firmware/bus_link.py``) differ in how bytes
move; everything else lives here, once:

- **Batches, stop and wait.** ``batch()`` returns the outstanding batch, or fills a new one from
  the queue: live taps first (records of this boot made since the link last came up, see
  ``link_up``), the backlog after, oldest boot first, ascending ``seq``. The batch stays
  outstanding -- and ``batch()`` returns the very same bytes -- until ``take_ack`` applies the
  gateway's ack of exactly its ``(boot, first_seq, last_seq)``: only then does the flash queue
  advance (SPEC.md section 5). A transport resends the outstanding batch after a reconnect, a
  reboot (the queue still holds it), or when no ack came in time.
- **Acks and commands** arrive from the transport's receive path with ``put_ack`` /
  ``put_command`` (no flash I/O there, bounded slots) and are applied by the transport's send
  task with ``take_ack`` / ``take_command``, which may write flash.
- **Status and results**: the app's heartbeat task calls ``send_status``; command results wait in
  ``results``. ``wake`` is set whenever anything is waiting (also by the tap path), so a
  transport never needs to poll.
"""

import asyncio

from protocol import codec
from protocol.errors import ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from firmware.app import ReaderApp
    from firmware.commands import CommandHandler

_SLOTS = 4  # acks and commands waiting for the send task; more are dropped and counted


def _u32(buf: "bytes | bytearray | memoryview", off: int) -> int:
    return (buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3]


class Uplink:
    def __init__(
        self, app: "ReaderApp", commands: "CommandHandler", max_len: int = codec.BATCH_MAX_LEN
    ) -> None:
        self.app = app
        self.commands = commands
        self.wake = asyncio.Event()
        app.taps.wake = self.wake
        self._writer = codec.BatchWriter(max_len)
        self._batch: memoryview | None = None
        self.out_boot = 0
        self.out_first = 0
        self.out_last = 0
        self.live_from = 0
        self.status: bytes | None = None
        self.results: list[bytes] = []
        self._acks: list[bytes] = []
        self._commands: list[bytes] = []
        # counters, for the heartbeat's neighbours (logs, tests, the technician's self-test)
        self.batches = 0
        self.acks = 0
        self.stale_acks = 0
        self.bad_acks = 0
        self.overflow = 0

    # --- up ---------------------------------------------------------------------------------

    def link_up(self) -> None:
        """The link (re)connected: taps from now on are live and go ahead of the backlog."""
        self.live_from = self.app.taps.seq + 1

    @property
    def outstanding(self) -> bool:
        return self._batch is not None

    def batch(self) -> "memoryview | None":
        """The outstanding batch, else a new one from the queue; None when nothing waits."""
        if self._batch is not None:
            return self._batch
        app = self.app
        writer = self._writer
        writer.max_records = app.config.get("batch_max_records")
        boot = n = 0
        if self.live_from:
            boot, n = app.queue.fill(writer, app.boot, self.live_from)
        if not n:
            boot, n = app.queue.fill(writer)
        if not n:
            return None
        batch = writer.finish(app.signer, app.config.reader_id, boot)
        self.out_boot = boot
        self.out_first = _u32(batch, 10)
        self.out_last = _u32(batch, 14)
        self._batch = batch
        self.batches += 1
        return batch

    def send_status(self, heartbeat: bytes) -> None:
        """The app's heartbeat task: a newer status replaces one not yet sent."""
        self.status = heartbeat
        self.wake.set()

    # --- down -------------------------------------------------------------------------------

    def put_ack(self, data: "bytes | bytearray | memoryview") -> None:
        if len(self._acks) < _SLOTS:
            self._acks.append(bytes(data))
        else:
            self.overflow += 1  # harmless: the batch is resent and acked again
        self.wake.set()

    def put_command(self, data: "bytes | bytearray | memoryview") -> None:
        if len(self._commands) < _SLOTS:
            self._commands.append(bytes(data))
        else:
            self.overflow += 1  # the gateway sees no result and may send it again
        self.wake.set()

    def take_ack(self) -> bool:
        """Apply the acks received; True when one of them freed the outstanding batch."""
        freed = False
        while self._acks:
            if self.apply_ack(self._acks.pop(0)):
                freed = True
        return freed

    def apply_ack(self, data: "bytes | bytearray | memoryview") -> bool:
        """Verify ``data`` and, when it acks the outstanding batch, advance the flash queue."""
        app = self.app
        try:
            ack = codec.decode_ack(data, app.signer)
        except ProtocolError:
            self.bad_acks += 1
            return False
        if (
            self._batch is None
            or ack["reader_id"] != app.config.reader_id
            or ack["boot"] != self.out_boot
            or ack["first_seq"] != self.out_first
            or ack["last_seq"] != self.out_last
        ):
            self.stale_acks += 1  # a replayed or late ack frees nothing
            return False
        try:
            app.queue.ack(self.out_boot, self.out_first, self.out_last)
        except OSError:
            app.flash_fault = True  # kept outstanding: resent, acked again, applied then
            return False
        app.last_ack = (self.out_boot, self.out_last)
        self._batch = None
        self.acks += 1
        return True

    def take_command(self) -> None:
        """Apply the commands received; their results go to ``results``."""
        commands = self.commands
        while self._commands:
            result = commands.handle(self._commands.pop(0))
            if result is not None:
                self.results.append(result)
            if commands.heartbeat_requested:
                commands.heartbeat_requested = False
                self.status = self.app.heartbeat()

    def result_sent(self) -> None:
        """The oldest result went out; a pending reboot happens now that it is answered."""
        self.results.pop(0)
        if not self.results:
            self.commands.after_result()
