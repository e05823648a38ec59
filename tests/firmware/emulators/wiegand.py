"""A Wiegand reader's D0/D1 lines as seen through machine.Pin: pulse trains on a virtual clock.

Pulses are scheduled in microseconds; ``run_until(t_us)`` fires, in time order, the falling-edge
handler the driver registered on the pulsed line, with the bus clock set to the edge's time, then
leaves the clock at ``t_us``. ``now_us()`` wraps like MicroPython's ``ticks_us`` (2**30), so
``start_us`` near the wrap exercises it. Bit trains (with their parity bits) are built here from the
standard layouts, not with ``protocol.card``, so the tests check the driver and the decoder against
an independent encoder.

Written in the subset MicroPython runs (no dataclasses, no typing at runtime): the same file is
loaded on the MicroPython VM. ``run_until`` and ``Pin.value`` allocate nothing (on MicroPython,
while times stay below 2**30 us), so heap figures measured around them are the driver's own.
"""

TICKS_PERIOD = 1 << 30
TICKS_MASK = TICKS_PERIOD - 1  # a small int on MicroPython (1 << 30 is not: `%` by it allocates)
PULSE_US = 80  # typical low pulse width: 20-100 us

# nbits -> (data bits, data bits covered by the leading even parity, first data bit of the odd one)
LAYOUTS = {26: (24, 12, 12), 34: (32, 16, 16), 37: (35, 18, 17)}
# nbits -> bits of the card number (the facility code is above it)
NUMBER_BITS = {26: 16, 34: 16, 37: 19}


def data_bits(nbits, value):
    """The data bits of ``value`` for an ``nbits`` frame, most significant first."""
    data = LAYOUTS[nbits][0]
    if value >> data:
        raise ValueError("value does not fit in the data bits")
    return [(value >> (data - 1 - i)) & 1 for i in range(data)]


def frame_bits(nbits, value):
    """The full bit train (parity bits included) of ``value`` in an ``nbits`` frame."""
    data, even_len, odd_start = LAYOUTS[nbits]
    bits = data_bits(nbits, value)
    even = 0
    for i in range(even_len):
        even ^= bits[i]
    odd = 1
    for i in range(odd_start, data):
        odd ^= bits[i]
    out = [even]
    out.extend(bits)
    out.append(odd)
    return out


def card_value(nbits, facility, number):
    """The data value of a facility code and card number."""
    if number >> NUMBER_BITS[nbits]:
        raise ValueError("card number does not fit")
    return (facility << NUMBER_BITS[nbits]) | number


def uid_of(nbits, value):
    """The canonical UID (SPEC.md 3.1): the data bits right-aligned in whole bytes."""
    n = (LAYOUTS[nbits][0] + 7) // 8
    return bytes((value >> (8 * (n - 1 - i))) & 0xFF for i in range(n))


class Lcg:
    """A small deterministic random source that behaves the same on both runtimes."""

    def __init__(self, seed=1):
        self.state = seed & 0x7FFFFFFF

    def next(self, bound):
        self.state = (self.state * 1103515245 + 12345) & 0x7FFFFFFF
        return (self.state >> 8) % bound


class Pin:
    """One line: ``irq(handler=, trigger=, hard=)``, ``value()``, ``IRQ_FALLING``."""

    IRQ_FALLING = 2
    IRQ_RISING = 1

    def __init__(self, bus, line):
        self._bus = bus
        self.line = line
        self.handler = None
        self.trigger = 0
        self.hard = False
        self.stuck_low = False
        self.last_edge_us = -1

    def irq(self, handler=None, trigger=3, hard=False):
        self.handler = handler
        self.trigger = trigger
        self.hard = hard

    def value(self):
        if self.stuck_low:
            return 0
        if self.last_edge_us >= 0 and self._bus.t_us - self.last_edge_us < PULSE_US:
            return 0
        return 1


class WiegandBus:
    """The two lines of one reader: ``d0``, ``d1``, ``now_us()``, scheduling, ``run_until``."""

    def __init__(self, start_us=0):
        self.t_us = start_us
        self.d0 = Pin(self, 0)
        self.d1 = Pin(self, 1)
        self._times = []
        self._lines = []
        self._next = 0
        self.fired = 0

    def now_us(self):
        return self.t_us & TICKS_MASK

    def now_ms(self):
        return (self.t_us // 1000) & TICKS_MASK

    # -- scheduling (allocates; call before running) ----------------------------------------------

    def pulse(self, line, at_us):
        """One pulse on D0 (``line`` 0) or D1 (1)."""
        pending = [(self._times[i], i, self._lines[i]) for i in range(self._next, len(self._times))]
        pending.append((at_us, len(self._times), line))
        pending.sort()
        self._times = self._times[: self._next] + [p[0] for p in pending]
        self._lines = self._lines[: self._next] + [p[2] for p in pending]

    def send_bits(self, bits, start_us, spacing_us=2000, jitter_us=0, seed=1):
        """A bit train from ``start_us``, a bit every ``spacing_us`` (+-``jitter_us``).

        Returns the time of the last edge. Jitter below half the spacing keeps the bits in order.
        """
        if 2 * jitter_us >= spacing_us:
            raise ValueError("jitter must stay below half the bit spacing")
        rnd = Lcg(seed)
        t = start_us
        last = start_us
        for bit in bits:
            offset = rnd.next(2 * jitter_us + 1) - jitter_us if jitter_us else 0
            last = t + offset
            self.pulse(bit, last)
            t += spacing_us
        return last

    def send_card(self, nbits, value, start_us, spacing_us=2000, jitter_us=0, seed=1):
        """A well-formed frame of ``value``; returns the time of the last edge."""
        return self.send_bits(frame_bits(nbits, value), start_us, spacing_us, jitter_us, seed)

    # -- time --------------------------------------------------------------------------------------

    def run_until(self, t_us):
        """Fire every pulse due up to ``t_us`` on its line's handler, then set the clock there."""
        times = self._times
        lines = self._lines
        i = self._next
        end = len(times)
        d0 = self.d0
        d1 = self.d1
        while i < end and times[i] <= t_us:
            self.t_us = times[i]
            pin = d1 if lines[i] else d0
            pin.last_edge_us = times[i]
            i += 1
            self._next = i
            self.fired += 1
            if pin.handler is not None and pin.trigger & Pin.IRQ_FALLING:
                pin.handler(pin)
        self.t_us = t_us

    def pending(self):
        return len(self._times) - self._next
