"""Where a scan sits in time (SPEC.md section 3, DESIGN invariant 5): pure functions, no clock.

Every stored scan gets one authoritative time and says how it was obtained:

``reader``
    The reader's own clock, when the record says it was synced **and** the time is plausible: not
    after the gateway heard it (plus ``future_tolerance_ms``), not after the latest moment the
    boot's tick evidence allows (``after_bound``), not further *behind* that evidence than
    ``max_offset_ms`` (``behind_bound``, see "A clock set back" below), not older than
    ``max_age_ms``, not before ``earliest_unix_ms``.
``corrected``
    The record was made before the reader's clock was synced (or its synced time is implausible);
    it is placed from its boot's ticks with the boot's *anchor*, a pairing (ticks, wall time)
    learned from the reader's own synced clock in the same boot: a synced record (exact) or a
    synced heartbeat (``time_s``/``uptime_s``, +/- 1 s). ``wall = anchor_unix + (ticks -
    anchor_ticks)``. The first, most precise anchor of a boot is kept: unsynced records precede the
    first sync of their boot, so the earliest synced record is the nearest one in ticks. Only a
    plausible reading becomes an anchor, and an anchor that a later, tighter bound shows to be set
    back is dropped (the boot then falls back to ``gateway`` until a plausible reading comes).
``gateway``
    No credible synced evidence for the boot: the gateway's receive time, refined by ticks.

Receive times give the gateway its own evidence, the boot's **receive bound**. A message made at
reader tick ``T`` and received at gateway time ``R`` was made no later than ``R``, so the boot's
offset ``wall - ticks`` is at most ``R - T``; the smallest ``R - T`` seen over the boot's messages
(records, and heartbeats with ``uptime_s``) is an upper bound that a live message makes tight to
within its delivery time. A record placed from the bound (``bound_unix + (T - bound_ticks)``) is
therefore at or after its true time, never later than when it was received, and records keep
their exact tick spacing. This is the "receive time minus queue age" rule made safe:

* a backlog batch alone would anchor the boot hours late (its newest record may be hours old), but
  the reader sends a heartbeat on connect, before its backlog, and that heartbeat is fresh, so the
  bound is good to about a second before the backlog arrives;
* a stale message (queued by the broker while the gateway was down, a retained status) only
  loosens the evidence and never replaces a tighter bound;
* records of an *earlier* boot were made before the later boot started, so the later boot's start
  (``bound_unix - bound_ticks``) bounds them too; the ingest offers it as a bound candidate.

The bound is extrapolated over ticks, and a reader's crystal may run ``drift_ppm`` away from the
gateway's clock: a new observation within that allowance of the prediction replaces the old
reference, so the bound follows the reader's rate instead of ageing.

A clock set back (``behind_bound``). An honest synced clock reads the true time, and the bound
is at or after the true time, so a reading's lag behind the bound, ``bound.wall(ticks) -
reader_ms``, is the bound's looseness plus the reader's own error. The looseness is the delivery
time of the boot's freshest message -- *if* the gateway knows that message was fresh. A batch
cannot vouch for itself: a live tap and a two-hour backlog look the same in it (a reader clock
set back 20 minutes and a batch uploaded 20 minutes late are the same bytes). A heartbeat can:
it is made when it is sent, so its receipt pins the boot's bound to its delivery time plus the
second its ``uptime_s`` is truncated to, and the reader sends one on connect, before its live taps
and its backlog (SPEC.md section 6), then every ``heartbeat_s`` (60 s). Once a fresh heartbeat of
the boot was seen (``BootTime.pinned``), a synced reading that lags the bound by more than
``max_offset_ms`` (5 s) -- beyond the crystal allowance over the ticks since the bound's reference,
and the reading's own resolution for a heartbeat -- comes from a clock that was set back (a
spoofed NTP answer, a hand-set clock): it is not used, its records are placed like any implausible
one (``corrected`` from a credible anchor, else ``gateway`` from the bound), and the same reading
flags the boot ``drifting`` (below: the flag's threshold is the same ``max_offset_ms`` without the
allowance, so every demoted record's boot is flagged when its clock is assessed).

The test compares *offsets* (``reader_ms - ticks`` against the bound's ``wall - ticks``), not
ages: a backlog record made two hours ago at tick ``T`` says ``reader_ms`` two hours back *and*
``T`` two hours of ticks back, so its lag is the same as a live tap's. An honest reader's lag on a
pinned bound is at most the heartbeat's delivery (milliseconds on the LAN, a QoS 1 retry a few
hundred) + 1 s of truncation + its SNTP error (half a round trip to the gateway), and any later
message only tightens the bound; 5 s leaves more than 3.5 s of margin over that, and is the drift
flag's threshold, so there is one number for "this clock is wrong". With the bound pinned, a
believed reader time is never more than ``max_offset_ms`` plus the crystal allowance before the
true time (the bound is never before the truth): a set-back clock can make a late student look
at most 5 s early.

What it cannot tell. Until a boot's bound is pinned its synced times are only bounded from above,
as before: the batches of a boot heard before its first fresh heartbeat -- a heartbeat lost, a
gateway restarted (``pinned`` is not stored; the next heartbeat, within a minute, pins again), the
backlog of an earlier boot the gateway never heard a heartbeat of, uploaded after a reboot.
A heartbeat that sat in the broker's queue while the gateway process was down (a boot begun
then) pins a loose bound: an honest reader's synced records judged against it before a fresh
message tightens it are demoted too -- placed by the bound, at or after their true time by at
most the heartbeat's staleness, never after their receipt -- and the boot is flagged. And a
set-back clock whose every message is also held back by as long looks like an honest one on a
slow link; that needs an attacker who delays all of the reader's traffic by minutes, past its ack
timeouts.

A boot set back and later corrected by a genuine sync: the records made while it was set back
keep their ``corrected``/``gateway`` times; from the first plausible reading on, its records are
``reader`` again (and that reading may become the anchor). The flag holds for
``health_hold_ms``; the drift baseline is taken from the first reading within ``max_offset_ms``,
so the corrected clock is not measured against the set-back one.

So each provenance has a bound (``d``: the looseness of the boot's bound when the record was
placed, the freshest message's delivery time on a working link; ``a``: the crystal allowance,
``drift_ppm`` of the ticks between the reading and the bound's reference):

* ``reader``: at most ``future_tolerance_ms + d + a`` after the true time and, once pinned,
  ``max_offset_ms + a`` before it (an honest reader: its own clock error);
* ``corrected``: the anchor's error (0, or 1 s from a heartbeat) plus the crystal drift over the
  ticks from the anchor, either way, never after the receipt; the anchor passed the ``reader``
  checks when learned and is checked again against the pinned bound before each use;
* ``gateway``: at or after the true time (by at most ``d + a``), never after the receipt.

Clock health (``reader_status.clock_health``) compares the reader's synced clock with that evidence:
``jumped`` when ``reader_ms - ticks`` of one boot changes by more than ``jump_ms`` (a reader's
wall clock and ticks run off one crystal, so only a step moves it), ``drifting`` when the reader's
offset against the gateway (``reader_ms - ticks`` minus the bound's ``unix - ticks``) moves more
than ``drift_ms`` from its baseline (its first value within ``max_offset_ms`` in the boot, or
since a jump) or exceeds ``max_offset_ms``; ``unsynced`` when the reader says so; a flag holds for
``health_hold_ms`` after the last anomaly. Because offsets are measured against the bound rather
than against each message's own receive time, a heartbeat that sat in the broker's queue does not
look like a clock fault.

Ticks wrap at 2**32 ms (49.7 days of uptime): differences are taken modulo 2**32 and read as
signed, which is exact while two ticks of one boot compared here are within 24.8 days.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from gateway.types import TimeSource

AnchorSource = Literal["reader_synced", "gateway_receive"]
ClockHealth = Literal["unknown", "ok", "unsynced", "drifting", "jumped"]

TICKS_MODULUS = 1 << 32
_HALF = 1 << 31
HEARTBEAT_RESOLUTION_MS = 1000  # time_s and uptime_s are whole seconds


def ticks_delta(ticks: int, reference: int) -> int:
    """``ticks - reference`` for 32-bit wrapping tick counters, as a signed difference."""
    return (ticks - reference + _HALF) % TICKS_MODULUS - _HALF


@dataclass(frozen=True)
class TimingPolicy:
    """How far the gateway trusts reader clocks; the defaults suit school gates on one LAN."""

    future_tolerance_ms: int = 2_000
    max_age_ms: int = 45 * 86_400_000  # longer than any queue a reader can hold
    earliest_unix_ms: int = 1_704_067_200_000  # 2024-01-01T00:00Z: an RTC left at its default
    drift_ppm: int = 200  # crystal tolerance plus temperature, generous
    jump_ms: int = 1_000
    drift_ms: int = 2_000
    max_offset_ms: int = 5_000
    health_hold_ms: int = 6 * 3_600_000

    def rate_allowance(self, ticks_apart: int) -> int:
        return abs(ticks_apart) * self.drift_ppm // 1_000_000


@dataclass(frozen=True)
class Anchor:
    """A pairing of a boot's ticks with wall time (Unix ms); ``error_ms`` is its uncertainty."""

    ticks_ms: int
    unix_ms: int
    source: AnchorSource
    error_ms: int = 0

    def wall(self, ticks: int) -> int:
        return self.unix_ms + ticks_delta(ticks, self.ticks_ms)

    @property
    def offset_ms(self) -> int:
        """``wall - ticks`` of the boot (meaningful for comparisons within one boot)."""
        return self.unix_ms - self.ticks_ms


@dataclass(frozen=True)
class BootTime:
    """What the gateway knows of one boot's place in time (a row of ``reader_boots``)."""

    anchor: Anchor | None = None  # from the reader's synced clock
    bound: Anchor | None = None  # receive bound (source ``gateway_receive``)
    # A fresh heartbeat of the boot has tightened the bound (not stored: a restarted gateway
    # judges the boot again from its next heartbeat); see "A clock set back" above.
    pinned: bool = False

    @property
    def placing(self) -> Anchor | None:
        """The anchor records are placed with: the reader's own, else the receive bound."""
        return self.anchor or self.bound


@dataclass(frozen=True)
class RecordTime:
    """The time fields of one verified record."""

    synced: bool
    reader_ms: int  # time_s * 1000 + time_ms
    ticks_ms: int


@dataclass(frozen=True)
class Placement:
    at_ms: int
    source: TimeSource
    implausible: str | None = None  # why a synced reader time was not used


@dataclass(frozen=True)
class Observation:
    """One reading of the reader's synced clock: ``reader_ms`` at ``ticks_ms``."""

    reader_ms: int
    ticks_ms: int
    error_ms: int  # 0 for a record, HEARTBEAT_RESOLUTION_MS for a heartbeat


@dataclass(frozen=True)
class ClockState:
    """The gateway's view of a reader's clock (columns of ``reader_status``)."""

    boot: int
    health: ClockHealth = "unknown"
    offset_ms: int | None = None  # reader clock minus gateway clock
    baseline_ms: int | None = None  # the offset when this boot's clock was first seen synced
    event_ms: int | None = None  # when the last anomaly was seen


# -- the receive bound -------------------------------------------------------------------------


def tighten(bound: Anchor | None, ticks: int, unix_ms: int, policy: TimingPolicy) -> Anchor:
    """The boot's receive bound after learning "tick ``ticks`` happened no later than ``unix_ms``".

    The candidate replaces the bound when it is tighter, or when it is as good as the bound's
    prediction within the crystal allowance (a fresher reference for the same fact).
    """
    if bound is not None:
        slack = policy.rate_allowance(ticks_delta(ticks, bound.ticks_ms))
        if unix_ms > bound.wall(ticks) + slack:
            return bound
    return Anchor(ticks, unix_ms, "gateway_receive")


# -- plausibility and placement ----------------------------------------------------------------


def against_bound(reader_ms: int, ticks: int, bound: Anchor) -> int:
    """A synced reading minus the bound's wall time at the same tick (the reader's clock against
    the gateway's evidence: positive ahead, negative behind). An honest clock is at most the
    bound's looseness behind it."""
    return reader_ms - bound.wall(ticks)


def set_back(reader_ms: int, ticks: int, error_ms: int, bound: Anchor,
             policy: TimingPolicy) -> bool:
    """The reading is further behind the bound than an honest clock can be (``behind_bound``):
    more than ``max_offset_ms`` plus its own error and the crystal allowance since the bound's
    reference (see the module docstring for why that margin never catches an honest reader)."""
    lag = -against_bound(reader_ms, ticks, bound)
    return lag > policy.max_offset_ms + error_ms + policy.rate_allowance(
        ticks_delta(ticks, bound.ticks_ms))


def implausible(record: RecordTime, received_ms: int, bound: Anchor | None,
                policy: TimingPolicy, error_ms: int = 0, pinned: bool = True) -> str | None:
    """Why a synced record's own time cannot be used, or None when it can.

    ``error_ms``: the reading's own uncertainty (a heartbeat's whole seconds), allowed when it is
    compared with the bound from behind; ``pinned``: whether the bound is known to be tight
    enough for that comparison (:attr:`BootTime.pinned`).
    """
    if record.reader_ms > received_ms + policy.future_tolerance_ms:
        return "future"
    if bound is not None:
        latest = bound.wall(record.ticks_ms) + policy.rate_allowance(
            ticks_delta(record.ticks_ms, bound.ticks_ms))
        if record.reader_ms > latest + policy.future_tolerance_ms:
            return "after_bound"
    if record.reader_ms < policy.earliest_unix_ms:
        return "before_epoch"
    if record.reader_ms < received_ms - policy.max_age_ms:
        return "too_old"
    if pinned and bound is not None and set_back(record.reader_ms, record.ticks_ms, error_ms,
                                                 bound, policy):
        return "behind_bound"
    return None


def credible(boot: BootTime, policy: TimingPolicy) -> Anchor | None:
    """The boot's anchor unless its pinned bound shows that it was learned from a set-back clock.

    An anchor passed :func:`implausible` when it was learned, but perhaps before the bound was
    pinned (a batch before the boot's first heartbeat); placing from it would carry a set-back
    time over to ``corrected`` records.
    """
    anchor, bound = boot.anchor, boot.bound
    if anchor is not None and bound is not None and boot.pinned and set_back(
            anchor.unix_ms, anchor.ticks_ms, anchor.error_ms, bound, policy):
        return None
    return anchor


def adopt(anchor: Anchor | None, candidate: Anchor) -> Anchor:
    """Keep the boot's first anchor unless the candidate is more precise."""
    if anchor is None or candidate.error_ms < anchor.error_ms:
        return candidate
    return anchor


def place_batch(records: Sequence[RecordTime], received_ms: int, boot: BootTime,
                policy: TimingPolicy, later_boot_start_ms: int | None = None,
                ) -> tuple[list[Placement], BootTime]:
    """Place the records of one batch (one reader, one boot) and return the boot's new state.

    ``later_boot_start_ms``: the latest start of a later boot of the same reader, if known (the
    records were made before it).
    """
    bound = boot.bound
    if records:  # the newest record (the last: a batch ascends in seq) is the tightest evidence
        bound = tighten(bound, records[-1].ticks_ms, received_ms, policy)
        if later_boot_start_ms is not None:
            bound = tighten(bound, records[-1].ticks_ms, later_boot_start_ms, policy)
    anchor = credible(BootTime(boot.anchor, bound, boot.pinned), policy)
    verdicts: list[str | None] = []
    for record in records:
        reason = implausible(record, received_ms, bound, policy, pinned=boot.pinned) \
            if record.synced else None
        verdicts.append(reason)
        if record.synced and reason is None and (anchor is None or anchor.error_ms > 0):
            anchor = adopt(anchor, Anchor(record.ticks_ms, record.reader_ms, "reader_synced"))
    placements = []
    for record, reason in zip(records, verdicts, strict=True):
        if record.synced and reason is None:
            placements.append(Placement(record.reader_ms, "reader"))
        elif anchor is not None:
            at = min(anchor.wall(record.ticks_ms), received_ms)
            placements.append(Placement(at, "corrected", reason))
        else:
            assert bound is not None  # at least this batch's own receive time
            at = min(bound.wall(record.ticks_ms), received_ms)
            placements.append(Placement(at, "gateway", reason))
    return placements, BootTime(anchor, bound, boot.pinned)


def learn_heartbeat(boot: BootTime, synced: bool, time_s: int, uptime_s: int, received_ms: int,
                    policy: TimingPolicy) -> tuple[BootTime, Observation | None]:
    """A fresh heartbeat's evidence: the bound from ``uptime_s``, an anchor if its clock is synced.

    The heartbeat was made when it was sent, so the bound is now pinned (``BootTime.pinned``).
    Returns the boot's new state and the clock observation (None when unsynced).
    """
    bound = tighten(boot.bound, uptime_s * 1000, received_ms, policy)
    anchor = credible(BootTime(boot.anchor, bound, True), policy)
    if not synced:
        return BootTime(anchor, bound, True), None
    half = HEARTBEAT_RESOLUTION_MS // 2
    reading = RecordTime(True, time_s * 1000 + half, uptime_s * 1000 + half)
    observation = Observation(reading.reader_ms, reading.ticks_ms, HEARTBEAT_RESOLUTION_MS)
    if implausible(reading, received_ms + HEARTBEAT_RESOLUTION_MS, bound, policy,
                   HEARTBEAT_RESOLUTION_MS):
        return BootTime(anchor, bound, True), observation
    candidate = Anchor(reading.ticks_ms, reading.reader_ms, "reader_synced",
                       HEARTBEAT_RESOLUTION_MS)
    return BootTime(adopt(anchor, candidate), bound, True), observation


# -- clock health ------------------------------------------------------------------------------


def assess_clock(state: ClockState | None, boot: int, observations: Sequence[Observation],
                 anchor: Anchor | None, bound: Anchor | None, synced: bool, now_ms: int,
                 policy: TimingPolicy) -> ClockState:
    """The reader's clock health after ``observations`` of one boot (in ticks order).

    ``synced`` is the reader's own latest statement (heartbeat flag, or the batch's last record);
    ``anchor`` and ``bound`` are the boot's evidence *including* these observations.
    """
    if state is None or state.boot != boot:
        state = ClockState(boot)
    if not synced:
        return replace(state, health="unsynced", offset_ms=None, baseline_ms=None)
    health: ClockHealth = state.health if state.health not in ("unknown", "unsynced") else "ok"
    offset, baseline, event = state.offset_ms, state.baseline_ms, state.event_ms
    anomaly: ClockHealth | None = None
    for obs in observations:
        if anchor is not None:
            allowed = (policy.jump_ms + anchor.error_ms + obs.error_ms
                       + policy.rate_allowance(ticks_delta(obs.ticks_ms, anchor.ticks_ms)))
            if abs((obs.reader_ms - obs.ticks_ms) - anchor.offset_ms) > allowed:
                anomaly = "jumped"
                baseline = None  # measure drift afresh from the new setting
        if bound is None:
            continue
        offset = against_bound(obs.reader_ms, obs.ticks_ms, bound)
        too_far = abs(offset) > policy.max_offset_ms + obs.error_ms
        if baseline is None and not too_far:
            baseline = offset  # a set-back (or stale) first reading is no baseline
        tolerance = policy.drift_ms + obs.error_ms + HEARTBEAT_RESOLUTION_MS
        drifted = baseline is not None and abs(offset - baseline) > tolerance
        if (drifted or too_far) and anomaly is None:
            anomaly = "drifting"
    if anomaly is not None:
        return ClockState(boot, anomaly, offset, baseline, now_ms)
    if health in ("jumped", "drifting") and event is not None \
            and now_ms - event < policy.health_hold_ms:
        return ClockState(boot, health, offset, baseline, event)
    return ClockState(boot, "ok", offset, baseline, event)
