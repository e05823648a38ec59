"""NXP MFRC522 (13.56 MHz, ISO/IEC 14443 type A) over SPI: the UID of the card in the field.

Hardware is injected: ``MFRC522(spi, cs, rst=None)`` where ``spi`` is an initialised machine.SPI
(mode 0, MSB first, up to 10 MHz) and ``cs``/``rst`` are output pins (``value(v)``).

What ``poll(now_ms)`` does, every ~50 ms:

- **Health.** One SPI transaction reads VersionReg, TModeReg and TxControlReg. A version of 0x00 or
  0xFF means the chip is not answering (power, wiring, latch-up): ``fault``. A timer or antenna
  setting that is not ours means the chip reset itself (brown-out): it is initialised again
  (``reinits``) and the poll goes on. Any other version is accepted (0x91/0x92 are NXP, clones
  report 0x88, 0x12, 0xB2...).
- **REQA, then WUPA.** REQA wakes cards in IDLE only, so a card that has just entered the field is
  read first even while another one is held; if nothing answers, WUPA also wakes the cards this
  driver halted. Whatever answers goes through anticollision and SELECT at cascade levels 1-3
  (4-, 7- and 10-byte UIDs), then is halted (HLTA).
- **Held card.** A card ends every successful poll halted, and the next poll wakes it again with
  WUPA, so a card held at the reader is reported on *every* poll (``uid[:n]``, same bytes), and 0
  as soon as it is gone. The debouncer tells "held" from "new" by comparing polls; this driver has
  no memory of earlier polls. With several cards in the field, each card that enters is reported
  by the first poll after it entered (REQA finds it while the others sleep); afterwards the held
  set is reported as the card that wins the anticollision (bit 1 at every collision).
- **Checks.** Anticollision is bit-oriented (TxLastBits/RxAlign, position from CollReg); a
  cascade level is accepted only if its BCC matches, the SELECT is answered by exactly one SAK
  byte whose CRC_A (computed by the chip's CRC coprocessor, as the frame CRC of SELECT and HLTA
  is) matches, and the SAK's cascade bit agrees with the cascade tag 0x88. The UID is assembled
  in a scratch buffer and copied to ``uid`` only when complete: a card removed or corrupted
  mid-anticollision gives 0, never a partial UID. ``uid`` is all zero after a poll that returns 0.
- **Timeouts.** The chip's timer ends a receive 2 ms after the end of transmission (TAuto), which
  is a normal "no answer". A command the chip never finishes (no IRQ within 8 ms, measured with
  ``ticks_us``) ends the poll; three such polls in a row set ``fault``.
- **Recovery.** On a fault the next poll resets the chip: a pulse on ``rst`` when given, else a
  SoftReset command. 50 ms later a poll probes it (version, power-down bit clear) and initialises
  it (registers read back, and the CRC coprocessor must give HLTA's known CRC_A 57 CD). Success
  clears ``fault``; failure schedules the next reset after a backoff doubling from 100 ms to 5 s.
  The first poll after construction starts with such a reset, so cards are reported from the
  first poll >= 50 ms later.

``poll`` never raises for card or chip trouble and allocates nothing: buffers and the memoryviews
over them are made in ``__init__``, results of helpers go through attributes, not tuples.
Counters (never reset, for the heartbeat): ``reads``, ``collisions``, ``frame_errors``,
``stuck``, ``resets``, ``reinits``.
"""

from firmware.ticks import ticks_add, ticks_diff, ticks_us
from protocol.card import ISO14443A, MAX_UID_LEN
from protocol.compat import const

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class SPIBus(Protocol):
        """What the driver uses of machine.SPI."""

        def write(self, __buf: "bytearray | memoryview") -> object: ...

        def write_readinto(self, __wbuf: "bytearray | memoryview",
                           __rbuf: "bytearray | memoryview") -> object: ...

    class OutputPin(Protocol):
        """What the driver uses of machine.Pin (configured as an output)."""

        def value(self, __v: int) -> object: ...


# --- MFRC522 registers (datasheet section 9) -------------------------------------------------
_COMMAND = const(0x01)
_COM_IRQ = const(0x04)
_DIV_IRQ = const(0x05)
_ERROR = const(0x06)
_FIFO_DATA = const(0x09)
_FIFO_LEVEL = const(0x0A)
_CONTROL = const(0x0C)
_BIT_FRAMING = const(0x0D)
_COLL = const(0x0E)
_MODE = const(0x11)
_TX_MODE = const(0x12)
_RX_MODE = const(0x13)
_TX_CONTROL = const(0x14)
_TX_ASK = const(0x15)
_CRC_MSB = const(0x21)
_CRC_LSB = const(0x22)
_RF_CFG = const(0x26)
_T_MODE = const(0x2A)
_T_PRESCALER = const(0x2B)
_T_RELOAD_H = const(0x2C)
_T_RELOAD_L = const(0x2D)
_VERSION = const(0x37)

# SPI address byte: (register << 1) & 0x7E, bit 7 set for a read
_RD = const(0x80)
_FIFO_WRITE_ADDR = const(0x12)  # _FIFO_DATA << 1
_FIFO_READ_ADDR = const(0x92)  # _RD | _FIFO_DATA << 1

# commands (CommandReg bits 3..0); writing the whole byte also clears RcvOff and PowerDown
_CMD_IDLE = const(0x00)
_CMD_CALC_CRC = const(0x03)
_CMD_TRANSCEIVE = const(0x0C)
_CMD_SOFT_RESET = const(0x0F)
_POWER_DOWN = const(0x10)

# ComIrqReg / DivIrqReg bits; writing a mask with bit 7 clear clears those bits
_IRQ_TIMER = const(0x01)
_IRQ_IDLE = const(0x10)
_IRQ_RX = const(0x20)
_IRQ_ALL = const(0x7F)
_IRQ_CRC = const(0x04)  # DivIrqReg

# ErrorReg bits
_ERR_PROTOCOL = const(0x01)
_ERR_PARITY = const(0x02)
_ERR_COLL = const(0x08)
_ERR_BUFFER_OVFL = const(0x10)

_COLL_POS_NOT_VALID = const(0x20)  # CollReg
_FLUSH = const(0x80)  # FIFOLevelReg
_START_SEND = const(0x80)  # BitFramingReg
_ANTENNA = const(0x03)  # TxControlReg Tx1RFEn | Tx2RFEn

# configuration written by _init and checked by the health read
_T_MODE_VALUE = const(0x80)  # TAuto: the timer starts at the end of every transmission
_T_PRESCALER_VALUE = const(0xA9)  # 13.56 MHz / (2 * 169 + 1) = 40 kHz: 25 us per tick
_T_RELOAD_VALUE = const(80)  # 81 ticks: a receive gives up 2.0 ms after the end of transmission
_MODE_VALUE = const(0x3D)  # TxWaitRF, PolMFin, CRC preset 0x6363 (CRC_A)
_FORCE_100_ASK = const(0x40)  # TxASKReg: ISO 14443 type A uses 100 % ASK

# --- ISO/IEC 14443-3 type A ------------------------------------------------------------------
_REQA = const(0x26)  # short frame, 7 bits
_WUPA = const(0x52)  # short frame, 7 bits
_SEL_CL1 = const(0x93)  # CL2 = 0x95, CL3 = 0x97
_NVB_SELECT = const(0x70)  # SEL, NVB, 4 UID bytes, BCC: all 40 bits valid
_HLTA = const(0x50)
_HLTA_CRC_LO = const(0x57)  # CRC_A of 50 00, sent low byte first
_HLTA_CRC_HI = const(0xCD)
_CT = const(0x88)  # cascade tag
_SAK_CASCADE = const(0x04)  # SAK: UID not complete

# --- timing and recovery -----------------------------------------------------------------------
_DEADLINE_US = const(8000)  # a command the chip has not finished by then is stuck
_MIN_READS = const(4)  # IRQ reads before the deadline may end a wait (survives a late task)
_MAX_STUCK = const(3)  # consecutive polls with a stuck command before fault
_SETTLE_MS = const(50)  # reset -> probe
_BACKOFF_MIN_MS = const(100)
_BACKOFF_MAX_MS = const(5000)

# transceive results
_OK = const(0)
_NONE = const(1)  # the timer ran out: nothing answered
_ERR = const(2)  # framing, parity, protocol, overflow, unexpected length
_COLLISION = const(3)
_STUCK = const(4)  # no IRQ at all: the chip is not working

# health read results
_H_OK = const(0)
_H_DEAD = const(1)
_H_REINIT = const(2)

# recovery states
_RUN = const(0)
_RESET = const(1)
_PROBE = const(2)

_TX_MAX = const(9)  # SELECT: SEL NVB UID0-3 BCC CRC CRC
_RX_MAX = const(16)  # longest answer read from the FIFO; more is an error


class MFRC522:
    """Reader interface: ``tech``, ``uid``, ``fault``, ``poll(now_ms) -> int`` (UID length or 0)."""

    def __init__(self, spi: "SPIBus", cs: "OutputPin", rst: "OutputPin | None" = None,
                 rx_gain: int = 7) -> None:
        if rx_gain < 0 or rx_gain > 7:
            raise ValueError("rx_gain is RFCfgReg RxGain, 0..7 (7 = 48 dB)")
        self.tech = ISO14443A
        self.uid = bytearray(MAX_UID_LEN)
        self.fault = False
        self.version = 0  # VersionReg at the last initialisation
        self.sak = 0  # SAK of the last card read (0x08 MIFARE Classic 1K, 0x20 ISO 14443-4...)
        # counters (never reset; the heartbeat reports them)
        self.reads = 0
        self.collisions = 0
        self.frame_errors = 0
        self.stuck = 0
        self.resets = 0
        self.reinits = 0
        self._spi = spi
        self._cs = cs
        self._rst = rst
        self._gain = rx_gain << 4
        cs.value(1)
        if rst is not None:
            rst.value(1)
        # register access: [address, value] out, [x, value] in
        self._w2 = bytearray(2)
        self._r2 = bytearray(2)
        self._r2in = bytearray(2)
        # health read: VersionReg, TModeReg, TxControlReg in one transaction
        self._hq = bytearray((_RD | _VERSION << 1, _RD | _T_MODE << 1, _RD | _TX_CONTROL << 1, 0))
        self._hr = bytearray(4)
        # FIFO write: [FIFODataReg address, frame bytes...]; view n writes n frame bytes
        self._tx = bytearray(1 + _TX_MAX)
        self._tx[0] = _FIFO_WRITE_ADDR
        tx = memoryview(self._tx)
        self._tx_views = tuple(tx[: 1 + n] for n in range(_TX_MAX + 1))
        # FIFO read of n bytes: n read addresses then 0x00 out, [x, data...] in
        self._fq = bytearray(_RX_MAX + 1)
        for i in range(_RX_MAX + 1):
            self._fq[i] = _FIFO_READ_ADDR
        self._fr = bytearray(_RX_MAX + 1)
        fq = memoryview(self._fq)
        fr = memoryview(self._fr)
        self._fq_views = tuple(fq[: 1 + n] for n in range(_RX_MAX + 1))
        self._fr_views = tuple(fr[: 1 + n] for n in range(_RX_MAX + 1))
        # last answer
        self._rx = bytearray(_RX_MAX)
        self._rx_n = 0
        self._rx_last = 0
        self._coll_pos = 0
        self._crc_lo = 0
        self._crc_hi = 0
        # anticollision: one cascade level (UID0-3 or CT UID0-2, then BCC); UID assembly
        self._cl = bytearray(5)
        self._work = bytearray(MAX_UID_LEN)
        # recovery
        self._state = _RESET
        self._due = -1  # ticks_ms of the next recovery step; -1: the next poll
        self._backoff = _BACKOFF_MIN_MS
        self._stuck_polls = 0
        self._stuck_now = False

    # -- the reader interface ---------------------------------------------------------------

    def poll(self, now_ms: int) -> int:
        """UID length (4, 7 or 10) of the card in the field, its bytes in ``uid``; else 0."""
        if self._state != _RUN and not self._recover(now_ms):
            return self._none()
        health = self._health()
        if health == _H_DEAD:
            return self._fail(now_ms)
        if health == _H_REINIT:
            self.reinits += 1
            if not self._init():
                return self._fail(now_ms)
        self._stuck_now = False
        n = self._activate(_REQA)
        if n == 0 and not self._stuck_now:
            n = self._activate(_WUPA)
        if self._stuck_now:
            self.stuck += 1
            self._stuck_polls += 1
            if self._stuck_polls >= _MAX_STUCK:
                return self._fail(now_ms)
            return self._none()
        self._stuck_polls = 0
        if n == 0:
            return self._none()
        uid = self.uid
        work = self._work
        for i in range(MAX_UID_LEN):
            uid[i] = work[i] if i < n else 0
        self.reads += 1
        return n

    def _none(self) -> int:
        uid = self.uid
        for i in range(MAX_UID_LEN):
            uid[i] = 0
        return 0

    # -- recovery ---------------------------------------------------------------------------

    def _fail(self, now_ms: int) -> int:
        self.fault = True
        self._state = _RESET
        self._due = now_ms
        self._stuck_polls = 0
        return self._none()

    def _recover(self, now_ms: int) -> bool:
        """One step of reset -> settle -> probe; True once the chip is initialised."""
        if self._due >= 0 and ticks_diff(now_ms, self._due) < 0:
            return False
        if self._state == _RESET:
            rst = self._rst
            if rst is not None:
                rst.value(0)  # >= 100 ns low: a hard power-down, then a power-on reset
                rst.value(1)
            else:
                self._write(_COMMAND, _CMD_SOFT_RESET)
            self.resets += 1
            self._state = _PROBE
            self._due = ticks_add(now_ms, _SETTLE_MS)
            return False
        if self._init():
            self._state = _RUN
            self.fault = False
            self._backoff = _BACKOFF_MIN_MS
            return True
        self.fault = True
        self._state = _RESET
        self._due = ticks_add(now_ms, self._backoff)
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX_MS)
        return False

    def _init(self) -> bool:
        """Configure the chip after a reset; False if it does not answer like an MFRC522."""
        version = self._read(_VERSION)
        if version == 0x00 or version == 0xFF or self._read(_COMMAND) & _POWER_DOWN:
            return False
        self._write(_COMMAND, _CMD_IDLE)
        self._write(_T_MODE, _T_MODE_VALUE)
        self._write(_T_PRESCALER, _T_PRESCALER_VALUE)
        self._write(_T_RELOAD_H, _T_RELOAD_VALUE >> 8)
        self._write(_T_RELOAD_L, _T_RELOAD_VALUE & 0xFF)
        self._write(_TX_ASK, _FORCE_100_ASK)
        self._write(_MODE, _MODE_VALUE)
        self._write(_TX_MODE, 0x00)  # 106 kBd, no hardware CRC: CRCs go through the coprocessor
        self._write(_RX_MODE, 0x00)
        self._write(_RF_CFG, self._gain)
        self._write(_COLL, 0x00)  # ValuesAfterColl = 0: bits after a collision read as 0
        self._write(_TX_CONTROL, self._read(_TX_CONTROL) | _ANTENNA)
        if (self._read(_T_MODE) != _T_MODE_VALUE
                or self._read(_T_PRESCALER) != _T_PRESCALER_VALUE
                or self._read(_MODE) != _MODE_VALUE
                or self._read(_TX_CONTROL) & _ANTENNA != _ANTENNA):
            return False
        # the coprocessor must give the CRC_A every HLTA carries
        tx = self._tx
        tx[1] = _HLTA
        tx[2] = 0x00
        if not self._crc(2) or self._crc_lo != _HLTA_CRC_LO or self._crc_hi != _HLTA_CRC_HI:
            return False
        self.version = version
        return True

    def _health(self) -> int:
        cs = self._cs
        cs.value(0)
        self._spi.write_readinto(self._hq, self._hr)
        cs.value(1)
        hr = self._hr
        if hr[1] == 0x00 or hr[1] == 0xFF:
            return _H_DEAD
        if hr[2] != _T_MODE_VALUE or hr[3] & _ANTENNA != _ANTENNA:
            return _H_REINIT
        return _H_OK

    # -- ISO/IEC 14443-3 ----------------------------------------------------------------------

    def _activate(self, request: int) -> int:
        """REQA or WUPA, anticollision and SELECT over the cascade levels, HLTA; UID length."""
        tx = self._tx
        tx[1] = request
        status = self._transceive(1, 7, 0)
        if status == _OK:
            # ATQA: 2 bytes; bits 4..0 flag bit-frame anticollision (absent: e.g. Topaz)
            if self._rx_n != 2 or self._rx_last != 0 or self._rx[0] & 0x1F == 0:
                self.frame_errors += 1
                return 0
        elif status != _COLLISION:  # several cards answering ATQA collide: normal
            return 0
        work = self._work
        cl = self._cl
        n = 0
        for level in range(3):
            sak = self._select_level(_SEL_CL1 + 2 * level)
            if sak < 0:
                return 0
            if sak & _SAK_CASCADE:
                if cl[0] != _CT or level == 2:
                    self.frame_errors += 1
                    return 0
                for i in range(3):
                    work[n + i] = cl[1 + i]
                n += 3
            elif level == 0 and cl[0] == _CT:  # UID0 is never the cascade tag
                self.frame_errors += 1
                return 0
            else:
                for i in range(4):
                    work[n + i] = cl[i]
                self.sak = sak
                self._halt()
                return n + 4
        return 0

    def _select_level(self, sel: int) -> int:
        """Anticollision then SELECT at one level into ``_cl``; the SAK, or -1."""
        tx = self._tx
        rx = self._rx
        cl = self._cl
        known = 0  # bits of UID0-3 + BCC already known
        while known < 40:
            full = known >> 3
            part = known & 7
            tx[1] = sel
            tx[2] = (2 + full) << 4 | part  # NVB: bytes (SEL and NVB included), bits
            count = full + 1 if part else full
            for i in range(count):
                tx[3 + i] = cl[i]
            status = self._transceive(2 + count, part, part)
            if status == _COLLISION:
                self.collisions += 1
                # CollPos counts FIFO bits from bit 0 of the first received byte (RxAlign
                # included), so it is an offset from the start of UID byte ``full``
                bit = (full << 3) + self._coll_pos - 1
                last = bit >> 3
                if self._coll_pos == 0 or bit < known or bit >= 40 or last - full >= self._rx_n:
                    self.frame_errors += 1
                    return -1
                self._merge(full, part, last + 1)
                shift = bit & 7
                cl[last] = (cl[last] & ((1 << shift) - 1)) | (1 << shift)  # choose 1
                known = bit + 1
            elif status == _OK:
                if self._rx_n != 5 - full or self._rx_last != 0:
                    self.frame_errors += 1
                    return -1
                self._merge(full, part, 5)
                known = 40
            else:
                return -1
        if cl[0] ^ cl[1] ^ cl[2] ^ cl[3] != cl[4]:
            self.frame_errors += 1
            return -1
        tx[1] = sel
        tx[2] = _NVB_SELECT
        for i in range(5):
            tx[3 + i] = cl[i]
        if not self._crc(7):
            return -1
        tx[8] = self._crc_lo
        tx[9] = self._crc_hi
        status = self._transceive(9, 0, 0)
        if status != _OK:
            if status != _NONE and status != _STUCK:
                self.frame_errors += 1
            return -1
        if self._rx_n != 3 or self._rx_last != 0:
            self.frame_errors += 1
            return -1
        sak = rx[0]
        crc_lo = rx[1]
        crc_hi = rx[2]
        tx[1] = sak
        if not self._crc(1):
            return -1
        if crc_lo != self._crc_lo or crc_hi != self._crc_hi:
            self.frame_errors += 1
            return -1
        return sak

    def _merge(self, full: int, part: int, end: int) -> None:
        """Copy received bytes into ``_cl[full:end]``, keeping the ``part`` bits already sent."""
        cl = self._cl
        rx = self._rx
        for t in range(full, end):
            v = rx[t - full]
            if t == full and part:
                keep = (1 << part) - 1
                v = (cl[t] & keep) | (v & ~keep & 0xFF)
            cl[t] = v

    def _halt(self) -> None:
        tx = self._tx
        tx[1] = _HLTA
        tx[2] = 0x00
        tx[3] = _HLTA_CRC_LO
        tx[4] = _HLTA_CRC_HI
        # A card acknowledges HLTA by silence; an answer (NAK) or a lost HLTA leaves it awake,
        # and the next poll's REQA sends it back to IDLE: the UID read stands either way.
        self._transceive(4, 0, 0)

    # -- MFRC522 commands ---------------------------------------------------------------------

    def _transceive(self, n_tx: int, tx_last_bits: int, rx_align: int) -> int:
        """Send ``_tx[1:1 + n_tx]``; the answer goes to ``_rx[:_rx_n]`` (``_rx_last`` bits)."""
        self._write(_COMMAND, _CMD_IDLE)
        self._write(_COM_IRQ, _IRQ_ALL)
        self._write(_FIFO_LEVEL, _FLUSH)
        self._write_buf(self._tx_views[n_tx])
        framing = rx_align << 4 | tx_last_bits
        self._write(_BIT_FRAMING, framing)
        self._write(_COMMAND, _CMD_TRANSCEIVE)
        self._write(_BIT_FRAMING, framing | _START_SEND)
        irq = self._wait(_COM_IRQ, _IRQ_RX | _IRQ_IDLE | _IRQ_TIMER)
        self._write(_COMMAND, _CMD_IDLE)
        if irq == 0:
            self._stuck_now = True
            return _STUCK
        if not irq & (_IRQ_RX | _IRQ_IDLE):
            return _NONE
        error = self._read(_ERROR)
        if error & _ERR_BUFFER_OVFL:
            return _ERR
        n = self._read(_FIFO_LEVEL) & 0x7F
        if n == 0 or n > _RX_MAX:
            return _ERR
        self._rx_last = self._read(_CONTROL) & 0x07
        self._read_fifo(n)
        if error & _ERR_COLL:
            coll = self._read(_COLL)
            if coll & _COLL_POS_NOT_VALID:
                self._coll_pos = 0
            else:
                self._coll_pos = coll & 0x1F or 32
            return _COLLISION
        if error & (_ERR_PARITY | _ERR_PROTOCOL):
            return _ERR
        return _OK

    def _crc(self, n: int) -> bool:
        """CRC_A of ``_tx[1:1 + n]`` by the coprocessor into ``_crc_lo``/``_crc_hi``."""
        self._write(_COMMAND, _CMD_IDLE)
        self._write(_DIV_IRQ, _IRQ_CRC)
        self._write(_FIFO_LEVEL, _FLUSH)
        self._write_buf(self._tx_views[n])
        self._write(_COMMAND, _CMD_CALC_CRC)
        irq = self._wait(_DIV_IRQ, _IRQ_CRC)
        self._write(_COMMAND, _CMD_IDLE)
        if irq == 0:
            self._stuck_now = True
            return False
        self._crc_lo = self._read(_CRC_LSB)
        self._crc_hi = self._read(_CRC_MSB)
        return True

    def _wait(self, reg: int, mask: int) -> int:
        """Read ``reg`` until a ``mask`` bit is set; its value, or 0 past the deadline."""
        start = ticks_us()
        reads = 0
        while True:
            value = self._read(reg) & mask
            if value:
                return value
            reads += 1
            if reads >= _MIN_READS and ticks_diff(ticks_us(), start) > _DEADLINE_US:
                return self._read(reg) & mask

    # -- SPI ----------------------------------------------------------------------------------

    def _write(self, reg: int, value: int) -> None:
        b = self._w2
        b[0] = reg << 1
        b[1] = value
        cs = self._cs
        cs.value(0)
        self._spi.write(b)
        cs.value(1)

    def _read(self, reg: int) -> int:
        b = self._r2
        b[0] = _RD | reg << 1
        cs = self._cs
        cs.value(0)
        self._spi.write_readinto(b, self._r2in)
        cs.value(1)
        return self._r2in[1]

    def _write_buf(self, view: memoryview) -> None:
        cs = self._cs
        cs.value(0)
        self._spi.write(view)
        cs.value(1)

    def _read_fifo(self, n: int) -> None:
        fq = self._fq
        fq[n] = 0x00  # end of the read
        cs = self._cs
        cs.value(0)
        self._spi.write_readinto(self._fq_views[n], self._fr_views[n])
        cs.value(1)
        fq[n] = _FIFO_READ_ADDR
        fr = self._fr
        rx = self._rx
        for i in range(n):
            rx[i] = fr[1 + i]
        self._rx_n = n
