"""A register-level NXP MFRC522 on a fake SPI bus, with ISO/IEC 14443-3 type A cards in its field.

The driver under test talks to ``MFRC522Emulator.spi`` / ``.cs`` / ``.rst`` exactly as it talks to
machine.SPI and machine.Pin on the reader. Modelled from the MFRC522 datasheet:

- **SPI** (section 8.1.2): one transaction per chip-select low; the first byte is the address byte
  ``(reg << 1) & 0x7E``, bit 7 set for a read. A read sends further addresses (each MISO byte is
  the register addressed by the previous MOSI byte) and ends with 0x00; a write sends data bytes,
  all to the same register (FIFO bursts). ``strict`` (default) raises ``BusError`` on a transfer
  with CS high, an address byte with bit 0 set, or a write byte inside a read.
- **Registers**: reset values of the registers below, FIFO (64 bytes, FlushBuffer, BufferOvfl),
  ComIrqReg/DivIrqReg with Set1/Set2 semantics, ErrorReg (cleared when a command starts), Status1
  (CRCReady, HiAlert/LoAlert), ControlReg RxLastBits, BitFramingReg (StartSend, RxAlign,
  TxLastBits), CollReg (ValuesAfterColl, CollPosNotValid, CollPos), CRCResultReg, VersionReg.
- **Commands**: Idle, Mem, GenerateRandomID, CalcCRC (CRC_A with ModeReg's CRCPreset; stays
  active over later FIFO writes until another command), Transmit, NoCmdChange, Receive,
  Transceive (transmits on StartSend, stays active), SoftReset (register reset, antenna off;
  the oscillator restart is instant). MFAuthent is not modelled
  (``strict``: ``NotImplementedError``), nor are TxCRCEn/RxCRCEn (the driver uses CalcCRC).
- **RF**: cards hear a frame only while the antenna drivers are on (TxControlReg Tx1/Tx2RFEn),
  100 % ASK is forced (TxASKReg) and the chip is not in power-down; turning the field off resets
  them. Their answers are combined bit by bit: where cards differ, the first such bit is a
  collision (ErrorReg CollErr, CollPos), and with ValuesAfterColl = 0 it and every later bit read
  as 0. CollPos counts FIFO bit positions from 1 **including RxAlign** (as NXP documents for its
  later readers; the MFRC522 datasheet is silent), so with RxAlign = 4 a collision in the first
  received bit is CollPos 5; 0 means 32; past 32 CollPosNotValid is set. Received bits are packed
  from bit RxAlign of the first FIFO byte (lower bits 0); RxLastBits gives the valid bits of the
  last byte. RcvOff discards answers.
- **Timer**: time is virtual. An answer arrives at once; when nothing answers, TimerIRq is set at
  once if TModeReg TAuto is set and TReloadReg is not 0 (``timeout_us`` gives the time the real
  timer would take); otherwise no IRQ ever comes, as on the chip.

Faults for tests: ``power_off(miso)`` (no answer, no command, cards unpowered, until
``power_on()``: a power-on reset), ``hang(miso)`` (same, but the ``rst`` pin revives it with a
power-on reset), ``stall()`` (registers work but commands never finish until a soft or hard
reset), ``brownout()`` (a silent power-on reset, antenna off).

Cards: ``Picc(uid)``; ``add(card)``/``remove(card)``; ``card.leave_after(n)`` takes the card out
of the field after it heard ``n`` more frames; ``card.bad_bcc``/``card.bad_crc`` corrupt that many
of its next anticollision BCCs / SAK CRCs (``bad_bcc_level``/``bad_crc_level``: only at that
cascade level). ``frames`` logs every transmitted frame with the number of cards that answered.

This file also runs on MicroPython (the allocation test copies it into the VM): plain classes, no
dataclasses, no typing at runtime, no f-string ``=`` specifiers.
"""

# --- registers -----------------------------------------------------------------------------------
COMMAND = 0x01
COM_IEN = 0x02
DIV_IEN = 0x03
COM_IRQ = 0x04
DIV_IRQ = 0x05
ERROR = 0x06
STATUS1 = 0x07
STATUS2 = 0x08
FIFO_DATA = 0x09
FIFO_LEVEL = 0x0A
WATER_LEVEL = 0x0B
CONTROL = 0x0C
BIT_FRAMING = 0x0D
COLL = 0x0E
MODE = 0x11
TX_MODE = 0x12
RX_MODE = 0x13
TX_CONTROL = 0x14
TX_ASK = 0x15
CRC_RESULT_MSB = 0x21
CRC_RESULT_LSB = 0x22
RF_CFG = 0x26
T_MODE = 0x2A
T_PRESCALER = 0x2B
T_RELOAD_H = 0x2C
T_RELOAD_L = 0x2D
T_COUNTER_H = 0x2E
T_COUNTER_L = 0x2F
VERSION = 0x37

RESET_VALUES = {
    COMMAND: 0x20, COM_IEN: 0x80, DIV_IEN: 0x00, COM_IRQ: 0x14, DIV_IRQ: 0x00, ERROR: 0x00,
    STATUS2: 0x00, WATER_LEVEL: 0x08, CONTROL: 0x10, BIT_FRAMING: 0x00, COLL: 0xA0, MODE: 0x3F,
    TX_MODE: 0x00, RX_MODE: 0x00, TX_CONTROL: 0x80, TX_ASK: 0x00, 0x16: 0x10, 0x17: 0x84,
    0x18: 0x84, 0x19: 0x4D, 0x1C: 0x62, 0x1D: 0x00, 0x1F: 0xEB, CRC_RESULT_MSB: 0xFF,
    CRC_RESULT_LSB: 0xFF, 0x24: 0x26, RF_CFG: 0x48, 0x27: 0x88, 0x28: 0x20, 0x29: 0x20,
    T_MODE: 0x00, T_PRESCALER: 0x00, T_RELOAD_H: 0x00, T_RELOAD_L: 0x00, 0x33: 0x80, 0x36: 0x40,
}
READ_ONLY = (STATUS1, STATUS2, ERROR, FIFO_LEVEL, T_COUNTER_H, T_COUNTER_L, VERSION,
             CRC_RESULT_MSB, CRC_RESULT_LSB)

# commands
CMD_IDLE = 0x0
CMD_MEM = 0x1
CMD_RANDOM_ID = 0x2
CMD_CALC_CRC = 0x3
CMD_TRANSMIT = 0x4
CMD_NO_CHANGE = 0x7
CMD_RECEIVE = 0x8
CMD_TRANSCEIVE = 0xC
CMD_MF_AUTHENT = 0xE
CMD_SOFT_RESET = 0xF
RCV_OFF = 0x20
POWER_DOWN = 0x10

# ComIrqReg
IRQ_TX = 0x40
IRQ_RX = 0x20
IRQ_IDLE = 0x10
IRQ_HI_ALERT = 0x08
IRQ_LO_ALERT = 0x04
IRQ_ERR = 0x02
IRQ_TIMER = 0x01
IRQ_CRC = 0x04  # DivIrqReg

# ErrorReg
ERR_WR = 0x80
ERR_TEMP = 0x40
ERR_BUFFER_OVFL = 0x10
ERR_COLL = 0x08
ERR_CRC = 0x04
ERR_PARITY = 0x02
ERR_PROTOCOL = 0x01

FIFO_SIZE = 64
CARRIER_HZ = 13560000

# --- ISO/IEC 14443-3 type A ---------------------------------------------------------------------
REQA = 0x26
WUPA = 0x52
SEL = (0x93, 0x95, 0x97)
NVB_SELECT = 0x70
HLTA = 0x50
CT = 0x88
SAK_CASCADE = 0x04

OFF = "OFF"  # not powered: out of the field, or the field is off
IDLE = "IDLE"
READY = "READY"
ACTIVE = "ACTIVE"
HALT = "HALT"


class BusError(Exception):
    """The driver broke the MFRC522's SPI protocol (strict mode)."""


def crc_a(data, preset=0x6363):
    """ISO/IEC 14443-3 CRC_A (x^16 + x^12 + x^5 + 1, reflected); sent low byte first."""
    crc = preset
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc


def bcc(data):
    value = 0
    for b in data:
        value ^= b
    return value


def to_bits(data, nbits=None):
    """Bits of ``data`` in transmission order (LSB of each byte first)."""
    if nbits is None:
        nbits = 8 * len(data)
    return [(data[i >> 3] >> (i & 7)) & 1 for i in range(nbits)]


def from_bits(bits):
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def cascade_levels(uid):
    """The 5-byte frames of each cascade level: [CT] UID bytes, then BCC."""
    uid = bytes(uid)
    if len(uid) == 4:
        parts = [uid]
    elif len(uid) == 7:
        parts = [bytes([CT]) + uid[0:3], uid[3:7]]
    elif len(uid) == 10:
        parts = [bytes([CT]) + uid[0:3], bytes([CT]) + uid[3:6], uid[6:10]]
    else:
        raise ValueError("an ISO 14443 type A UID has 4, 7 or 10 bytes")
    return [p + bytes([bcc(p)]) for p in parts]


class Picc:
    """A type A card (PICC) with the ISO/IEC 14443-3 state machine.

    States IDLE, READY, ACTIVE, HALT (OFF outside the field); READY*/ACTIVE* (woken from HALT by
    WUPA) are READY/ACTIVE with ``from_halt`` set: an error sends them back to HALT, not IDLE.
    """

    def __init__(self, uid, sak=None, atqa=None):
        uid = bytes(uid)
        self.levels = cascade_levels(uid)
        if uid[0] == CT:
            raise ValueError("UID0 cannot be the cascade tag 0x88")
        if len(uid) == 7 and uid[3] == CT:
            raise ValueError("UID3 of a double-size UID cannot be the cascade tag 0x88")
        self.uid = uid
        size = len(self.levels) - 1  # ATQA bits 7..6: 0 single, 1 double, 2 triple
        if sak is None:
            sak = (0x08, 0x00, 0x20)[size]  # MIFARE Classic 1K, Ultralight, ISO 14443-4
        self.sak = sak
        self.atqa = bytes(atqa) if atqa is not None else bytes([size << 6 | 0x04, 0x00])
        self.state = OFF
        self.from_halt = False
        self.level = 0
        self.bad_bcc = 0  # corrupt the BCC of this many anticollision answers...
        self.bad_bcc_level = None  # ...at this cascade level (0-2), or at any level
        self.bad_crc = 0  # corrupt the CRC_A of this many SAKs...
        self.bad_crc_level = None  # ...at this cascade level, or at any level
        self.frames_left = -1  # frames heard before leaving the field; -1: stays
        self.heard = 0

    def __repr__(self):
        return "Picc(" + "".join(f"{b:02x}" for b in self.uid) + ")"

    def leave_after(self, frames):
        """Leave the field after hearing ``frames`` more frames (0: before the next one)."""
        self.frames_left = frames

    def power(self, on):
        if not on:
            self.state = OFF
        elif self.state == OFF:
            self.state = IDLE
            self.from_halt = False

    def _error(self):
        self.state = HALT if self.from_halt else IDLE

    def hear(self, bits):
        """The card's answer to a frame (list of bits), or None."""
        if self.state == OFF:
            return None
        self.heard += 1
        n = len(bits)
        if n == 7:
            cmd = from_bits(bits)[0]
            if (cmd == WUPA and self.state in (IDLE, HALT)) or (cmd == REQA and
                                                                 self.state == IDLE):
                self.from_halt = self.state == HALT
                self.state = READY
                self.level = 0
                return to_bits(self.atqa)
            if self.state in (READY, ACTIVE):
                self._error()
            return None
        if self.state in (IDLE, HALT):
            return None
        if n < 16:
            self._error()
            return None
        data = from_bits(bits)
        if self.state == ACTIVE:
            if n == 32 and data[0] == HLTA and data[1] == 0 and self._crc_ok(data):
                self.state = HALT
            else:
                self._error()
            return None
        # READY: anticollision and SELECT at the current cascade level
        sel, nvb = data[0], data[1]
        if sel not in SEL:
            self._error()
            return None
        if sel != SEL[self.level]:
            return None  # another cascade level: for cards further along
        level = self.level
        frame = self.levels[level]
        if nvb == NVB_SELECT:
            if n != 72 or not self._crc_ok(data):
                self._error()
                return None
            if data[2:7] != frame:
                return None  # another card is being selected
            if self.level + 1 < len(self.levels):
                sak = SAK_CASCADE
                self.level += 1
            else:
                sak = self.sak
                self.state = ACTIVE
            crc = crc_a(bytes([sak]))
            answer = bytearray([sak, crc & 0xFF, crc >> 8])
            if self.bad_crc and self.bad_crc_level in (None, level):
                self.bad_crc -= 1
                answer[2] ^= 0x10
            return to_bits(answer)
        valid = ((nvb >> 4) - 2) * 8 + (nvb & 0x0F)
        if nvb >> 4 < 2 or nvb & 0x0F > 7 or valid >= 40 or n != 16 + valid:
            self._error()
            return None
        mine = to_bits(frame)
        if bits[16:] != mine[:valid]:
            return None  # not my UID: stay silent, stay READY
        answer = mine[valid:]
        if self.bad_bcc and self.bad_bcc_level in (None, level):
            self.bad_bcc -= 1
            answer[len(answer) - 1] ^= 1  # the BCC's last bit
        return answer

    @staticmethod
    def _crc_ok(data):
        crc = crc_a(data[:-2])
        return data[-2] == crc & 0xFF and data[-1] == crc >> 8


class Pin:
    """An output pin the driver drives; the emulator watches its edges."""

    def __init__(self, on_change, level=1):
        self._on_change = on_change
        self._level = level

    def value(self, v=None):
        if v is None:
            return self._level
        v = 1 if v else 0
        if v != self._level:
            self._level = v
            self._on_change(v)
        return None

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


class SPI:
    """machine.SPI's transfer methods, wired to the emulated chip."""

    def __init__(self, chip):
        self._chip = chip

    def write(self, buf):
        exchange = self._chip.exchange
        for b in buf:
            exchange(b)

    def readinto(self, buf, write=0x00):
        exchange = self._chip.exchange
        for i in range(len(buf)):
            buf[i] = exchange(write)

    def write_readinto(self, write_buf, read_buf):
        if len(write_buf) != len(read_buf):
            raise ValueError("buffers must be the same length")
        exchange = self._chip.exchange
        for i in range(len(write_buf)):
            read_buf[i] = exchange(write_buf[i])

    def read(self, nbytes, write=0x00):
        buf = bytearray(nbytes)
        self.readinto(buf, write)
        return bytes(buf)


class MFRC522Emulator:
    def __init__(self, version=0x92, strict=True):
        self.version = version
        self.strict = strict
        self.spi = SPI(self)
        self.cs = Pin(self._cs_edge, 1)
        self.rst = Pin(self._rst_edge, 1)
        self.cards = []
        self.frames = []  # (bytes sent, TxLastBits, number of cards that answered)
        self.transactions = 0
        self._selected = False
        self._index = 0
        self._addr = None
        self._reading = False
        self._dead = None  # MISO value while the chip does not answer
        self._hung = False
        self._in_reset = False
        self._stalled = False
        self._field = False
        self._rand = 0x2545F491
        self._power_on_reset()
        self.resets = 0  # later power-on resets (power, rst pin, brownout) and soft resets

    # -- test controls ------------------------------------------------------------------------

    def add(self, card):
        if card not in self.cards:
            self.cards.append(card)
            card.frames_left = -1
            card.power(self._field)
        return card

    def remove(self, card):
        if card in self.cards:
            self.cards.remove(card)
        card.power(False)

    def power_off(self, miso=0x00):
        """The chip loses power: MISO reads ``miso``, MOSI is ignored, the field is off."""
        self._dead = miso
        self._update_field()

    def power_on(self):
        """Power comes back: a power-on reset."""
        self._dead = None
        self._hung = False
        self._power_on_reset()

    def hang(self, miso=0xFF):
        """The chip latches up: like power_off, but a pulse on ``rst`` revives it."""
        self._dead = miso
        self._hung = True
        self._update_field()

    def stall(self):
        """Commands never finish (no IRQ) until a soft or hard reset; registers still work."""
        self._stalled = True

    def brownout(self):
        """A silent power-on reset (supply dip): every register back to its reset value."""
        self._power_on_reset()

    @property
    def field_on(self):
        return self._field

    def reg(self, addr):
        """A register's stored value, without side effects."""
        return self._regs[addr]

    def timeout_us(self):
        """How long the chip's timer runs before TimerIRq (TPrescalEven = 0)."""
        prescaler = (self._regs[T_MODE] & 0x0F) << 8 | self._regs[T_PRESCALER]
        reload = self._regs[T_RELOAD_H] << 8 | self._regs[T_RELOAD_L]
        return (2 * prescaler + 1) * (reload + 1) * 1000000 // CARRIER_HZ

    # -- reset and field ------------------------------------------------------------------------

    def _power_on_reset(self):
        self._regs = bytearray(64)
        for addr, value in RESET_VALUES.items():
            self._regs[addr] = value
        self._fifo = []
        self._mem = bytearray(25)
        self._crc = 0
        self._crc_ready = True
        self._stalled = False
        self.resets = getattr(self, "resets", 0) + 1
        self._update_field()

    def _update_field(self):
        regs = self._regs
        on = (self._dead is None and not self._in_reset
              and (regs[TX_CONTROL] & 0x03) != 0 and not regs[COMMAND] & POWER_DOWN)
        if on != self._field:
            self._field = on
            for card in self.cards:
                card.power(on)

    def _cs_edge(self, level):
        if level == 0:
            self._selected = True
            self._index = 0
            self._addr = None
            self.transactions += 1
        else:
            self._selected = False

    def _rst_edge(self, level):
        if level == 0:
            self._in_reset = True  # hard power-down
            self._update_field()
        else:
            self._in_reset = False
            if self._dead is not None and self._hung:
                self._dead = None
                self._hung = False
            if self._dead is None:
                self._power_on_reset()

    # -- SPI ------------------------------------------------------------------------------------

    def exchange(self, mosi):
        """One byte on the bus: returns the MISO byte."""
        if self._dead is not None:
            return self._dead
        if self._in_reset:
            return 0x00
        if not self._selected:
            if self.strict:
                raise BusError("SPI transfer with chip select high")
            return 0xFF
        index = self._index
        self._index = index + 1
        if index == 0:
            if mosi & 0x01 and self.strict:
                raise BusError(f"address byte 0x{mosi:02x}: bit 0 must be 0")
            self._addr = (mosi >> 1) & 0x3F
            self._reading = bool(mosi & 0x80)
            return 0x00
        if self._reading:
            value = self._read(self._addr) if self._addr is not None else 0x00
            if mosi & 0x80:
                if mosi & 0x01 and self.strict:
                    raise BusError(f"address byte 0x{mosi:02x}: bit 0 must be 0")
                self._addr = (mosi >> 1) & 0x3F
            elif mosi == 0x00:
                self._addr = None
            elif self.strict:
                raise BusError(f"byte 0x{mosi:02x} in a read: not an address or 0x00")
            return value
        self._write(self._addr, mosi)
        return 0x00

    # -- registers ------------------------------------------------------------------------------

    def _read(self, addr):
        regs = self._regs
        if addr == FIFO_DATA:
            return self._fifo.pop(0) if self._fifo else 0x00
        if addr == FIFO_LEVEL:
            return len(self._fifo)
        if addr == VERSION:
            return self.version
        if addr == COMMAND:
            return regs[COMMAND]
        if addr in (COM_IRQ, DIV_IRQ):
            return regs[addr] & 0x7F
        if addr == STATUS1:
            level = len(self._fifo)
            water = regs[WATER_LEVEL] & 0x3F
            value = 0x20 if self._crc_ready else 0
            if regs[COM_IRQ] & regs[COM_IEN] & 0x7F or regs[DIV_IRQ] & regs[DIV_IEN] & 0x7F:
                value |= 0x10
            if FIFO_SIZE - level <= water:
                value |= 0x02
            if level <= water:
                value |= 0x01
            return value
        if addr in (T_COUNTER_H, T_COUNTER_L):
            return regs[T_RELOAD_H if addr == T_COUNTER_H else T_RELOAD_L]
        return regs[addr]

    def _write(self, addr, value):
        regs = self._regs
        if addr == FIFO_DATA:
            if len(self._fifo) >= FIFO_SIZE:
                regs[ERROR] |= ERR_BUFFER_OVFL
            else:
                self._fifo.append(value)
                if regs[COMMAND] & 0x0F == CMD_CALC_CRC and not self._stalled:
                    self._crc_feed(value)
            return
        if addr == FIFO_LEVEL:
            if value & 0x80:
                self._fifo = []
                regs[ERROR] &= ~ERR_BUFFER_OVFL & 0xFF
            return
        if addr in (COM_IRQ, DIV_IRQ):
            if value & 0x80:
                regs[addr] |= value & 0x7F
            else:
                regs[addr] &= ~value & 0x7F
            return
        if addr == COLL:
            regs[COLL] = (regs[COLL] & 0x7F) | (value & 0x80)
            return
        if addr == CONTROL:
            regs[CONTROL] = (regs[CONTROL] & 0x07) | (value & 0x38) | 0x10
            return
        if addr in READ_ONLY:
            return
        if addr == COMMAND:
            regs[COMMAND] = value & 0x3F
            self._update_field()
            self._command(value & 0x0F)
            return
        regs[addr] = value
        if addr == TX_CONTROL:
            self._update_field()
        elif addr == BIT_FRAMING and value & 0x80 and regs[COMMAND] & 0x0F == CMD_TRANSCEIVE:
            self._transmit(True)

    # -- commands -------------------------------------------------------------------------------

    def _set_command(self, cmd):
        regs = self._regs
        regs[COMMAND] = (regs[COMMAND] & 0x30) | cmd

    def _command(self, cmd):
        regs = self._regs
        if cmd == CMD_SOFT_RESET:
            self._power_on_reset()
            return
        if cmd in (CMD_IDLE, CMD_NO_CHANGE):
            return
        if cmd == CMD_MF_AUTHENT:
            if self.strict:
                raise NotImplementedError("MFAuthent is not emulated")
            regs[ERROR] |= ERR_PROTOCOL
            regs[COM_IRQ] |= IRQ_ERR
            return
        regs[ERROR] &= ERR_BUFFER_OVFL | ERR_WR | ERR_TEMP
        if self._stalled:
            return
        if cmd == CMD_MEM:
            if self._fifo:
                self._mem = bytearray((self._fifo + [0] * 25)[:25])
                self._fifo = self._fifo[25:]
            else:
                self._fifo = list(self._mem)
            self._finish()
        elif cmd == CMD_RANDOM_ID:
            for i in range(10):
                self._rand = (self._rand * 1103515245 + 12345) & 0x7FFFFFFF
                self._mem[i] = self._rand >> 16 & 0xFF
            self._finish()
        elif cmd == CMD_CALC_CRC:
            preset = (0x0000, 0x6363, 0xA671, 0xFFFF)[regs[MODE] & 0x03]
            self._crc = preset
            self._crc_ready = False
            data = self._fifo
            self._fifo = []
            for b in data:
                self._crc_feed(b)
            self._crc_ready = True
        elif cmd == CMD_TRANSMIT:
            self._transmit(False)
            self._finish()
        elif cmd == CMD_TRANSCEIVE and regs[BIT_FRAMING] & 0x80:
            self._transmit(True)
        # CMD_RECEIVE: nothing arrives unless something was sent

    def _finish(self):
        self._set_command(CMD_IDLE)
        self._regs[COM_IRQ] |= IRQ_IDLE

    def _crc_feed(self, b):
        crc = self._crc ^ b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        self._crc = crc
        self._regs[CRC_RESULT_MSB] = crc >> 8
        self._regs[CRC_RESULT_LSB] = crc & 0xFF
        self._regs[DIV_IRQ] |= IRQ_CRC

    def _transmit(self, receive):
        regs = self._regs
        if self._stalled:
            return
        if (regs[TX_MODE] & 0x80 or regs[RX_MODE] & 0x80) and self.strict:
            raise NotImplementedError("TxCRCEn/RxCRCEn are not emulated")
        data = bytes(self._fifo)
        self._fifo = []
        framing = regs[BIT_FRAMING]
        tx_last = framing & 0x07
        rx_align = (framing >> 4) & 0x07
        nbits = 8 * len(data) - ((8 - tx_last) if tx_last and data else 0)
        bits = to_bits(data, nbits)
        regs[ERROR] &= ERR_BUFFER_OVFL | ERR_WR | ERR_TEMP
        regs[COM_IRQ] |= IRQ_TX
        answers = []
        if self._field and regs[TX_ASK] & 0x40:
            for card in list(self.cards):
                if card.frames_left == 0:
                    self.remove(card)
                    continue
                if card.frames_left > 0:
                    card.frames_left -= 1
                answer = card.hear(bits)
                if answer is not None:
                    answers.append(answer)
        self.frames.append((data, tx_last, len(answers)))
        if not receive:
            return
        if not answers or regs[COMMAND] & RCV_OFF:
            if regs[T_MODE] & 0x80 and (regs[T_RELOAD_H] or regs[T_RELOAD_L]):
                regs[COM_IRQ] |= IRQ_TIMER
            return
        self._receive(answers, rx_align)

    def _receive(self, answers, rx_align):
        regs = self._regs
        length = max(len(a) for a in answers)
        keep_after = regs[COLL] & 0x80  # ValuesAfterColl
        bits = []
        coll = -1
        for i in range(length):
            values = [a[i] for a in answers if i < len(a)]
            bit = values[0]
            if coll < 0 and min(values) != max(values):
                coll = i
            if coll >= 0:
                bit = max(values) if keep_after and i > coll else 0
            bits.append(bit)
        stream = [0] * rx_align + bits
        for b in from_bits(stream):
            if len(self._fifo) >= FIFO_SIZE:
                regs[ERROR] |= ERR_BUFFER_OVFL
                break
            self._fifo.append(b)
        regs[CONTROL] = (regs[CONTROL] & 0xF8) | (len(stream) & 7)
        if coll >= 0:
            pos = rx_align + coll + 1
            regs[ERROR] |= ERR_COLL
            if pos <= 32:
                regs[COLL] = (regs[COLL] & 0x80) | (pos & 0x1F)
            else:
                regs[COLL] = (regs[COLL] & 0x80) | 0x20
        else:
            regs[COLL] = (regs[COLL] & 0x80) | 0x20
        regs[COM_IRQ] |= IRQ_RX
        if regs[ERROR] & 0x7F:
            regs[COM_IRQ] |= IRQ_ERR


# --- steady-state allocation measurement on MicroPython ---------------------------------------

PASS = 0
RECORD = 1
REPLAY = 2


class TapSPI:
    """Between a driver and a bus: passes through, records, or replays a recorded exchange.

    Replay serves MISO bytes from the recording and counts MOSI bytes that differ from it
    (``mismatches``) without allocating, so a driver in a steady state can be measured alone.
    """

    def __init__(self, spi, cs):
        self._spi = spi
        self._cs = cs
        self.cs = _TapPin(self)
        self.mode = PASS
        self.mosi = bytearray()
        self.miso = bytearray()
        self.pos = 0
        self.cycles = 0
        self.mismatches = 0

    def record(self):
        self.mode = RECORD
        self.mosi = bytearray()
        self.miso = bytearray()

    def replay(self):
        if not self.mosi:
            raise ValueError("nothing recorded")
        self.mode = REPLAY
        self.pos = 0
        self.cycles = 0
        self.mismatches = 0

    def passthrough(self):
        self.mode = PASS

    def _cs_value(self, v):
        if self.mode != REPLAY:
            self._cs.value(v)

    def write(self, buf):
        if self.mode == REPLAY:
            self._replay(buf, None)
        elif self.mode == RECORD:
            self._record(buf, bytearray(len(buf)))
        else:
            self._spi.write(buf)

    def readinto(self, buf, write=0x00):
        out = bytearray(len(buf))
        for i in range(len(out)):
            out[i] = write
        self.write_readinto(out, buf)

    def write_readinto(self, write_buf, read_buf):
        if self.mode == REPLAY:
            self._replay(write_buf, read_buf)
        elif self.mode == RECORD:
            self._record(write_buf, read_buf)
        else:
            self._spi.write_readinto(write_buf, read_buf)

    def _record(self, write_buf, read_buf):
        self._spi.write_readinto(write_buf, read_buf)
        self.mosi.extend(write_buf)
        self.miso.extend(read_buf)

    def _replay(self, write_buf, read_buf):
        mosi = self.mosi
        miso = self.miso
        end = len(mosi)
        p = self.pos
        for i in range(len(write_buf)):
            if write_buf[i] != mosi[p]:
                self.mismatches += 1
            if read_buf is not None:
                read_buf[i] = miso[p]
            p += 1
            if p == end:
                p = 0
                self.cycles += 1
        self.pos = p


class _TapPin:
    def __init__(self, tap):
        self._tap = tap

    def value(self, v=None):
        if v is None:
            return self._tap._cs.value()
        self._tap._cs_value(v)
        return None
