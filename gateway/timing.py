"""Where a scan sits in time (SPEC.md section 3, DESIGN invariant 5): pure functions, no clock.

Every stored scan gets one authoritative time and says how it was obtained:

``reader``
    The reader's own clock, when the record says it was synced **and** the time is plausible: not
    after the gateway heard it (plus ``future_tolerance_ms``), not after the latest moment the
    boot's tick evidence allows, not older than ``max_age_ms``, not before ``earliest_unix_ms``.
``corrected``
    The record was made before the reader's clock was synced (or its synced time is implausible);
    it is placed from its boot's ticks with the boot's *anchor*, a pairing (ticks, wall time)
    learned from the reader's own synced clock in the same boot: a synced record (exact) or a
    synced heartbeat (``time_s``/``uptime_s``, +/- 1 s). ``wall = anchor_unix + (ticks -
    anchor_ticks)``. The first, most precise anchor of a boot is kept: unsynced records precede the
    first sync of their boot, so the earliest synced record is the nearest one in ticks.
``gateway``
    No synced evidence for the boot: the gateway's receive time, refined by ticks.

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

Clock health (``reader_status.clock_health``) compares the reader's synced clock with that evidence:
``jumped`` when ``reader_ms - ticks`` of one boot changes by more than ``jump_ms`` (a reader's
wall clock and ticks run off one crystal, so only a step moves it), ``drifting`` when the reader's
offset against the gateway (``reader_ms - ticks`` minus the bound's ``unix - ticks``) moves more
than ``drift_ms`` from its first value in the boot or exceeds ``max_offset_ms``; ``unsynced`` when
the reader says so; a flag holds for ``health_hold_ms`` after the last anomaly. Because offsets are
measured against the bound rather than against each message's own receive time, a heartbeat that
sat in the broker's queue does not look like a clock fault.

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


def implausible(record: RecordTime, received_ms: int, bound: Anchor | None,
                policy: TimingPolicy) -> str | None:
    """Why a synced record's own time cannot be used, or None when it can."""
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
    return None


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
    anchor = boot.anchor
    verdicts: list[str | None] = []
    for record in records:
        reason = implausible(record, received_ms, bound, policy) if record.synced else None
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
    return placements, BootTime(anchor, bound)


def learn_heartbeat(boot: BootTime, synced: bool, time_s: int, uptime_s: int, received_ms: int,
                    policy: TimingPolicy) -> tuple[BootTime, Observation | None]:
    """A fresh heartbeat's evidence: the bound from ``uptime_s``, an anchor if its clock is synced.

    Returns the boot's new state and the clock observation (None when unsynced or implausible).
    """
    bound = tighten(boot.bound, uptime_s * 1000, received_ms, policy)
    if not synced:
        return BootTime(boot.anchor, bound), None
    half = HEARTBEAT_RESOLUTION_MS // 2
    reading = RecordTime(True, time_s * 1000 + half, uptime_s * 1000 + half)
    if implausible(reading, received_ms + HEARTBEAT_RESOLUTION_MS, bound, policy):
        return BootTime(boot.anchor, bound), Observation(
            reading.reader_ms, reading.ticks_ms, HEARTBEAT_RESOLUTION_MS)
    candidate = Anchor(reading.ticks_ms, reading.reader_ms, "reader_synced",
                       HEARTBEAT_RESOLUTION_MS)
    observation = Observation(reading.reader_ms, reading.ticks_ms, HEARTBEAT_RESOLUTION_MS)
    return BootTime(adopt(boot.anchor, candidate), bound), observation


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
        offset = (obs.reader_ms - obs.ticks_ms) - bound.offset_ms
        if baseline is None:
            baseline = offset
        tolerance = policy.drift_ms + obs.error_ms + HEARTBEAT_RESOLUTION_MS
        drifted = abs(offset - baseline) > tolerance
        too_far = abs(offset) > policy.max_offset_ms + obs.error_ms
        if (drifted or too_far) and anomaly is None:
            anomaly = "drifting"
    if anomaly is not None:
        return ClockState(boot, anomaly, offset, baseline, now_ms)
    if health in ("jumped", "drifting") and event is not None \
            and now_ms - event < policy.health_hold_ms:
        return ClockState(boot, health, offset, baseline, event)
    return ClockState(boot, "ok", offset, baseline, event)
