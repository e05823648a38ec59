"""Commands from the gateway (SPEC.md section 7): authenticate, apply once, answer.

A command is applied only when its MAC verifies under the reader's key, it is addressed to this
reader and its ``cmd_seq`` is above the last one applied. The last ``(cmd_seq, status)`` is kept in
flash (``cmd.seq``), so a command delivered twice (QoS 1, a retransmitted poll) or replayed is
never applied twice: the repeat of the last command gets the same answer again, an older one
``stale``. A message whose MAC does not verify gets no answer at all (a forger learns nothing);
it is counted in ``rejected``.

``set_config`` is persisted to ``config.json`` (written new, then renamed) before the answer;
``reboot`` is answered first and carried out by ``after_result`` once the link sent the answer.
"""

import struct

from firmware.fs import join
from protocol import codec
from protocol.crc16 import crc16
from protocol.errors import ProtocolError
from protocol.hmac256 import MAC_LEN

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from firmware.app import ReaderApp
    from firmware.fs import FS

SEQ_FILE = "cmd.seq"
_SEQ_LEN = 9  # b"CQ" | cmd_seq u32 | status u8 | CRC-16 of the 7 bytes before it
_OK = 0
_UNKNOWN_OPCODE = 1
_BAD_ARGS = 2
_STALE = 3
_FAILED = 4


def _decode_seq(data: "bytes | None") -> "tuple[int, int]":
    if data is None or len(data) != _SEQ_LEN or data[0] != 0x43 or data[1] != 0x51:
        return 0, 0
    if crc16(memoryview(data)[:7]) != (data[7] << 8) | data[8]:
        return 0, 0
    seq, status = struct.unpack_from(">IB", data, 2)
    return seq, status


class CommandHandler:
    def __init__(
        self, app: "ReaderApp", fs: "FS", root: str, reboot: "Callable[[], None] | None" = None
    ) -> None:
        self.app = app
        self.fs = fs
        self.root = root
        self._reboot = reboot
        self._seq_path = join(join(root, "data"), SEQ_FILE)
        self.last_seq, self.last_status = _decode_seq(fs.read_file(self._seq_path))
        self.reboot_pending = False
        self.heartbeat_requested = False
        self.applied = 0
        self.rejected = 0

    def handle(self, data: "bytes | bytearray | memoryview") -> "bytes | None":
        """The signed result to send for ``data``, or None when it must go unanswered."""
        app = self.app
        try:
            fields = codec.decode_command(data, app.signer)
        except ProtocolError as exc:
            return self._refused(data, exc)
        if fields["reader_id"] != app.config.reader_id:
            self.rejected += 1
            return None
        seq = fields["cmd_seq"]
        if seq <= self.last_seq:
            return self._result(seq, self.last_status if seq == self.last_seq else _STALE)
        status = self._apply(fields["opcode"], fields["args"])
        return self._done(seq, status)

    def _refused(
        self, data: "bytes | bytearray | memoryview", exc: ProtocolError
    ) -> "bytes | None":
        """A command that failed after its MAC verified still gets an answer."""
        n = len(data)
        if (
            exc.code not in ("bad_field", "bad_count")
            or n < codec.COMMAND_FIXED_LEN
            or n != codec.COMMAND_FIXED_LEN + data[15]
        ):
            self.rejected += 1
            return None
        view = memoryview(data)
        if not self.app.signer.verify(view[: n - MAC_LEN], view[n - MAC_LEN :]):
            self.rejected += 1
            return None
        reader_id, seq = struct.unpack_from(">II", data, 2)
        if reader_id != self.app.config.reader_id or seq == 0:
            self.rejected += 1
            return None
        if seq <= self.last_seq:
            return self._result(seq, self.last_status if seq == self.last_seq else _STALE)
        opcode = data[14]
        return self._done(
            seq, _UNKNOWN_OPCODE if not 1 <= opcode < len(codec.OPCODE_NAMES) else _BAD_ARGS
        )

    def _apply(self, opcode: str, args: "dict[str, int]") -> int:
        app = self.app
        try:
            if opcode == "set_time":
                app.clock.set_time(args["time_s"], args["time_ms"])
            elif opcode == "set_config":
                app.apply_config(args)
                self._save_config()
            elif opcode == "request_heartbeat":
                self.heartbeat_requested = True
            else:
                self.reboot_pending = True
        except OSError:
            return _FAILED
        self.applied += 1
        return _OK

    def _save_config(self) -> None:
        path = join(self.root, "config.json")
        self.fs.write_file(path + ".new", self.app.config.to_json().encode())
        self.fs.rename(path + ".new", path)

    def _done(self, seq: int, status: int) -> "bytes | None":
        buf = bytearray(_SEQ_LEN)
        struct.pack_into(">BBIB", buf, 0, 0x43, 0x51, seq, status)
        struct.pack_into(">H", buf, 7, crc16(memoryview(buf)[:7]))
        try:
            self.fs.write_file(self._seq_path + ".new", buf)
            self.fs.rename(self._seq_path + ".new", self._seq_path)
        except OSError:
            # not durable: the command must not count as applied, or a power cut could apply it
            # twice; the gateway sees "failed" and may send it again
            self.reboot_pending = False
            return self._result(seq, _FAILED)
        self.last_seq = seq
        self.last_status = status
        return self._result(seq, status)

    def _result(self, seq: int, status: int) -> bytes:
        return codec.encode_result(
            {
                "reader_id": self.app.config.reader_id,
                "cmd_seq": seq,
                "status": codec.STATUS_NAMES[status],
            },
            self.app.signer,
        )

    def after_result(self) -> None:
        """The link sent the last result: carry out a pending reboot."""
        if self.reboot_pending and self._reboot is not None:
            self.reboot_pending = False
            self._reboot()
