"""Time placement and clock health (gateway/timing.py) with simulated readers and clocks."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.timing import (
    Anchor,
    BootTime,
    ClockState,
    Observation,
    Placement,
    RecordTime,
    TimingPolicy,
    assess_clock,
    implausible,
    learn_heartbeat,
    place_batch,
    ticks_delta,
    tighten,
)

POLICY = TimingPolicy()
T0 = 1_790_000_000_000  # gateway wall time (ms) at which the simulated reader booted
HOUR = 3_600_000


@dataclass
class SimReader:
    """A reader booted at gateway time ``boot_ms``.

    Its synced clock was set to gateway time + ``offset_ms`` at boot and then runs on the same
    crystal as its ticks, which run ``rate_ppm`` slow (+) or fast (-) against the gateway's clock.
    Unsynced, it reads 2000-01-01 plus uptime.
    """

    boot_ms: int = T0
    offset_ms: int = 0
    rate_ppm: int = 0

    def uptime(self, wall_ms: int) -> int:
        elapsed = wall_ms - self.boot_ms
        return elapsed - elapsed * self.rate_ppm // 1_000_000

    def ticks(self, wall_ms: int) -> int:
        return self.uptime(wall_ms) % (1 << 32)

    def clock(self, wall_ms: int, synced: bool = True) -> int:
        base = self.boot_ms + self.offset_ms if synced else 946_684_800_000
        return base + self.uptime(wall_ms)

    def record(self, wall_ms: int, synced: bool) -> RecordTime:
        return RecordTime(synced, self.clock(wall_ms, synced), self.ticks(wall_ms))

    def heartbeat(self, boot: BootTime, wall_ms: int, received_ms: int,
                  ) -> tuple[BootTime, Observation | None]:
        return learn_heartbeat(boot, True, self.clock(wall_ms) // 1000,
                               self.uptime(wall_ms) // 1000, received_ms, POLICY)


def test_ticks_wrap_at_32_bits() -> None:
    assert ticks_delta(5, 2**32 - 5) == 10
    assert ticks_delta(2**32 - 5, 5) == -10
    assert ticks_delta(1000, 400) == 600
    anchor = Anchor(2**32 - 1000, T0, "reader_synced")
    assert anchor.wall(500) == T0 + 1500


def test_the_receive_bound_keeps_the_tightest_evidence() -> None:
    bound = tighten(None, 10_000, T0 + 10_050, POLICY)  # delivered 50 ms after it was made
    assert bound.wall(10_000) == T0 + 10_050
    stale = tighten(bound, 20_000, T0 + 80_000, POLICY)  # sat an hour in a queue: looser
    assert stale is bound
    fresh = tighten(bound, 30_000, T0 + 30_010, POLICY)
    assert fresh.wall(30_000) == T0 + 30_010 and fresh.source == "gateway_receive"
    # A reading as good as the prediction within the crystal allowance refreshes the reference.
    slow = tighten(fresh, 30_000 + HOUR, T0 + 30_010 + HOUR + 500, POLICY)
    assert slow.ticks_ms == 30_000 + HOUR


def test_plausibility_of_a_synced_reader_clock() -> None:
    now = T0 + HOUR
    ok = RecordTime(True, now - 60_000, 100)
    assert implausible(ok, now, None, POLICY) is None
    assert implausible(RecordTime(True, now + 2_001, 1), now, None, POLICY) == "future"
    assert implausible(RecordTime(True, now + 1_999, 1), now, None, POLICY) is None
    assert implausible(RecordTime(True, 946_684_800_000, 1), now, None, POLICY) == "before_epoch"
    assert implausible(RecordTime(True, now - POLICY.max_age_ms - 1, 1), now, None,
                       POLICY) == "too_old"
    # Made at tick 100 of a boot known to have started at T0: it cannot say T0 + 30 min.
    bound = Anchor(50_000, T0 + 50_000, "gateway_receive")
    assert implausible(RecordTime(True, T0 + HOUR // 2, 100), now, bound, POLICY) == "after_bound"


def test_each_provenance_in_one_boot() -> None:
    reader = SimReader(offset_ms=0)
    sent = T0 + 600_000
    # Two taps before the clock was synced, then two after; uploaded in one batch.
    taps = [T0 + 10_000, T0 + 20_000, T0 + 300_000, T0 + 400_000]
    records = [reader.record(t, synced=i >= 2) for i, t in enumerate(taps)]
    placed, boot = place_batch(records, sent, BootTime(), POLICY)
    assert [p.source for p in placed] == ["corrected", "corrected", "reader", "reader"]
    assert [p.at_ms for p in placed] == taps
    assert boot.anchor == Anchor(reader.ticks(taps[2]), taps[2], "reader_synced", 0)
    assert boot.bound is not None and boot.bound.wall(records[-1].ticks_ms) == sent


def test_unsynced_boot_is_placed_from_receive_times() -> None:
    reader = SimReader()
    taps = [T0 + 5_000, T0 + 65_000, T0 + 66_000]
    records = [reader.record(t, synced=False) for t in taps]
    sent = taps[-1] + 40  # live: uploaded 40 ms after the last tap
    placed, boot = place_batch(records, sent, BootTime(), POLICY)
    assert [p.source for p in placed] == ["gateway"] * 3
    assert [p.at_ms - t for p, t in zip(placed, taps, strict=True)] == [40, 40, 40]
    assert boot.anchor is None and boot.placing == boot.bound


def test_a_backlog_after_an_outage_is_placed_by_the_heartbeat_sent_on_connect() -> None:
    reader = SimReader()
    taps = [T0 + 60_000 + i * 1_000 for i in range(5)]  # made offline, clock never synced
    reconnect = T0 + 3 * HOUR + 250
    boot, observation = learn_heartbeat(BootTime(), False, 0, (reconnect - T0) // 1000,
                                        reconnect + 5, POLICY)
    assert observation is None and boot.bound is not None
    placed, _ = place_batch([reader.record(t, False) for t in taps], reconnect + 30, boot, POLICY)
    for p, t in zip(placed, taps, strict=True):
        assert p.source == "gateway" and 0 <= p.at_ms - t <= 1_000  # within the heartbeat's second
    # Without the heartbeat the backlog would sit three hours late: that is what it avoids.
    alone, _ = place_batch([reader.record(t, False) for t in taps], reconnect + 30, BootTime(),
                           POLICY)
    assert alone[0].at_ms - taps[0] > 2 * HOUR


def test_a_synced_heartbeat_anchors_earlier_unsynced_records() -> None:
    reader = SimReader()
    hb_at = T0 + 120_400
    boot, observation = reader.heartbeat(BootTime(), hb_at, hb_at + 3)
    assert observation is not None
    assert boot.anchor is not None and boot.anchor.error_ms == 1000
    tap = T0 + 30_000
    placed, after = place_batch([reader.record(tap, False)], T0 + 200_000, boot, POLICY)
    assert placed[0].source == "corrected" and abs(placed[0].at_ms - tap) <= 1_000
    # A synced record is exact and replaces the heartbeat's anchor.
    _, after = place_batch([reader.record(T0 + 150_000, True)], T0 + 200_000, after, POLICY)
    assert after.anchor is not None and after.anchor.error_ms == 0


def test_a_clock_in_the_future_is_not_used() -> None:
    reader = SimReader(offset_ms=HOUR)  # synced to a wrong server
    tap = T0 + 50_000
    placed, boot = place_batch([reader.record(tap, True)], tap + 100, BootTime(), POLICY)
    assert placed[0].source == "gateway" and placed[0].implausible == "future"
    assert placed[0].at_ms == tap + 100
    assert boot.anchor is None


def test_an_earlier_boot_is_bounded_by_the_start_of_the_next() -> None:
    reader = SimReader()
    taps = [T0 + 1_000, T0 + 2_000]  # boot 1, never online; power cut at T0 + 2_500
    next_boot_start = T0 + 60_000
    records = [reader.record(t, False) for t in taps]
    placed, _ = place_batch(records, T0 + 5 * HOUR, BootTime(), POLICY, next_boot_start)
    assert [p.at_ms for p in placed] == [next_boot_start - 1_000, next_boot_start]


def _observe(reader: SimReader, wall_ms: int) -> Observation:
    r = reader.record(wall_ms, True)
    return Observation(r.reader_ms, r.ticks_ms, 0)


def test_clock_health_ok_unsynced_jumped_and_held() -> None:
    reader = SimReader(offset_ms=300)
    first = reader.record(T0 + 10_000, True)
    _, boot = place_batch([first], T0 + 10_020, BootTime(), POLICY)
    state = assess_clock(None, 1, [_observe(reader, T0 + 10_000)], boot.anchor, boot.bound, True,
                         T0 + 10_020, POLICY)
    assert state.health == "ok" and state.offset_ms == 280
    assert assess_clock(state, 1, [], boot.anchor, boot.bound, False, T0 + 20_000,
                        POLICY).health == "unsynced"
    reader.offset_ms += 5_000  # someone set the clock: a step within the boot
    jumped = assess_clock(state, 1, [_observe(reader, T0 + 60_000)], boot.anchor, boot.bound,
                          True, T0 + 60_020, POLICY)
    assert jumped.health == "jumped" and jumped.event_ms == T0 + 60_020
    later = T0 + 60_020 + POLICY.health_hold_ms
    assert assess_clock(jumped, 1, [], boot.anchor, boot.bound, True, later - 1,
                        POLICY).health == "jumped"
    assert assess_clock(jumped, 1, [], boot.anchor, boot.bound, True, later,
                        POLICY).health == "ok"


def test_a_queued_heartbeat_is_no_clock_fault_and_drift_is_flagged() -> None:
    reader = SimReader(offset_ms=0, rate_ppm=150)  # a poor crystal: 13 s a day
    boot = BootTime()
    state: ClockState | None = None
    healths = []
    for tenth in range(1, 6 * 30):  # a heartbeat every 10 minutes for 30 hours
        now = T0 + tenth * 600_000
        boot, obs = reader.heartbeat(boot, now, now + 10)
        state = assess_clock(state, 1, [obs] if obs else [], boot.anchor, boot.bound, True,
                             now + 10, POLICY)
        healths.append(state.health)
        if tenth == 12:
            # A heartbeat made now that sat 20 minutes in the broker's queue: the boot's bound,
            # not its receive time, says when it was made, so it is no clock fault.
            late, obs = reader.heartbeat(boot, now, now + 20 * 60_000)
            queued = assess_clock(state, 1, [obs] if obs else [], late.anchor, late.bound, True,
                                  now + 20 * 60_000, POLICY)
            assert queued.health == "ok"
    assert "jumped" not in healths
    assert set(healths[:6 * 4]) == {"ok"}  # 4 hours: 2 s off, within tolerance
    assert healths[-1] == "drifting"
    assert state is not None and state.offset_ms is not None and state.offset_ms < -10_000


# -- a clock set back (docs/SECURITY.md, rogue device: NTP spoofing) ---------------------------

MINUTE = 60_000


def test_a_reading_behind_the_pinned_bound_by_more_than_max_offset_is_set_back() -> None:
    bound = Anchor(100_000, T0 + 100_000, "gateway_receive")
    edge = T0 + 100_000 - POLICY.max_offset_ms  # tick 100_000 read 5 s behind the bound
    assert implausible(RecordTime(True, edge, 100_000), T0 + HOUR, bound, POLICY) is None
    assert implausible(RecordTime(True, edge - 1, 100_000), T0 + HOUR, bound,
                       POLICY) == "behind_bound"
    # The crystal allowance over the ticks since the bound's reference, and a heartbeat's second.
    later = 100_000 + HOUR
    allowance = POLICY.rate_allowance(HOUR)
    assert implausible(RecordTime(True, edge + HOUR - allowance, later), T0 + 2 * HOUR, bound,
                       POLICY) is None
    assert implausible(RecordTime(True, edge - 1_000, 100_000), T0 + HOUR, bound, POLICY,
                       1_000) is None
    # Not pinned by a heartbeat: the bound may be a backlog's own receive time, so no verdict.
    assert implausible(RecordTime(True, edge - HOUR, 100_000), T0 + HOUR, bound, POLICY,
                       pinned=False) is None


def test_a_clock_set_back_is_not_believed_and_is_flagged() -> None:
    reader = SimReader(offset_ms=-20 * MINUTE)  # a spoofed NTP answer before the first connect
    connect = T0 + 30_000
    boot, observation = reader.heartbeat(BootTime(), connect, connect + 15)
    assert boot.pinned and boot.anchor is None and observation is not None
    state = assess_clock(None, 1, [observation], boot.anchor, boot.bound, True, connect + 15,
                         POLICY)
    assert state.health == "drifting" and state.offset_ms is not None
    assert state.offset_ms < -19 * MINUTE
    taps = [T0 + 8 * HOUR + i * 7_000 for i in range(3)]  # live taps, a late student among them
    for tap in taps:
        placed, boot = place_batch([reader.record(tap, True)], tap + 40, boot, POLICY)
        # Placed from the receive bound: at or after the tap, within the delivery time plus the
        # heartbeat's truncated second, and never the 20-minutes-early reader time.
        assert placed[0].source == "gateway" and placed[0].implausible == "behind_bound"
        assert tap <= placed[0].at_ms <= tap + 40
    state = assess_clock(state, 1, [_observe(reader, taps[-1])], boot.anchor, boot.bound, True,
                         taps[-1] + 40, POLICY)
    assert state.health == "drifting" and boot.anchor is None


def test_a_backlog_is_old_in_time_not_in_offset() -> None:
    # An honest reader, its clock 300 ms behind and its crystal 150 ppm slow, offline since early
    # morning: the heartbeat on connect pins the bound, then two-hour-old records arrive.
    reader = SimReader(offset_ms=-300, rate_ppm=150)
    taps = [T0 + HOUR + i * 5 * MINUTE for i in range(4)]
    reconnect = T0 + 3 * HOUR + 500
    boot, observation = reader.heartbeat(BootTime(), reconnect, reconnect + 20)
    assert boot.pinned and observation is not None
    state = assess_clock(None, 1, [observation], boot.anchor, boot.bound, True, reconnect + 20,
                         POLICY)
    placed, boot = place_batch([reader.record(t, True) for t in taps], reconnect + 60, boot,
                               POLICY)
    assert [p.source for p in placed] == ["reader"] * 4
    assert [p.at_ms for p in placed] == [reader.clock(t) for t in taps]
    state = assess_clock(state, 1, [_observe(reader, t) for t in taps], boot.anchor, boot.bound,
                         True, reconnect + 60, POLICY)
    assert state.health == "ok"


def test_a_batch_cannot_vouch_for_its_own_freshness() -> None:
    # No heartbeat yet: a batch whose newest record is 20 minutes old is a late upload or a
    # clock 20 minutes behind, the same bytes. It is believed, and the heartbeat that follows
    # judges the boot from then on.
    reader = SimReader(offset_ms=-20 * MINUTE)
    tap = T0 + HOUR
    placed, boot = place_batch([reader.record(tap, True)], tap + 20, BootTime(), POLICY)
    assert placed[0].source == "reader" and not boot.pinned
    assert boot.anchor is not None  # learned from the set-back clock...
    boot, _ = reader.heartbeat(boot, tap + 60_000, tap + 60_010)
    assert boot.pinned and boot.anchor is None  # ...and dropped once the bound is pinned
    unsynced = reader.record(tap + 90_000, False)
    placed, boot = place_batch([unsynced, reader.record(tap + 91_000, True)], tap + 91_030, boot,
                               POLICY)
    assert [p.source for p in placed] == ["gateway", "gateway"]
    assert [p.implausible for p in placed] == [None, "behind_bound"]
    assert 0 <= placed[0].at_ms - (tap + 90_000) <= 1_100


def test_a_clock_set_back_within_a_boot_is_placed_from_its_honest_anchor() -> None:
    reader = SimReader(offset_ms=0)
    boot, _ = reader.heartbeat(BootTime(), T0 + 30_000, T0 + 30_010)
    placed, boot = place_batch([reader.record(T0 + 40_000, True)], T0 + 40_010, boot, POLICY)
    assert placed[0].source == "reader" and boot.anchor is not None
    state = assess_clock(None, 1, [_observe(reader, T0 + 40_000)], boot.anchor, boot.bound, True,
                         T0 + 40_010, POLICY)
    reader.offset_ms = -20 * MINUTE  # a later, spoofed sync steps the clock back
    tap = T0 + 7 * HOUR
    placed, boot = place_batch([reader.record(tap, True)], tap + 25, boot, POLICY)
    assert placed[0].source == "corrected" and placed[0].implausible == "behind_bound"
    assert abs(placed[0].at_ms - tap) <= POLICY.rate_allowance(7 * HOUR)
    state = assess_clock(state, 1, [_observe(reader, tap)], boot.anchor, boot.bound, True,
                         tap + 25, POLICY)
    assert state.health == "jumped"


def test_a_clock_set_back_then_corrected_is_believed_again() -> None:
    reader = SimReader(offset_ms=-20 * MINUTE)
    boot, obs = reader.heartbeat(BootTime(), T0 + 30_000, T0 + 30_010)
    state = assess_clock(None, 1, [obs] if obs else [], boot.anchor, boot.bound, True,
                         T0 + 30_010, POLICY)
    tap = T0 + HOUR
    placed, boot = place_batch([reader.record(tap, True)], tap + 30, boot, POLICY)
    assert placed[0].source == "gateway" and placed[0].implausible == "behind_bound"
    state = assess_clock(state, 1, [_observe(reader, tap)], boot.anchor, boot.bound, True,
                         tap + 30, POLICY)
    assert state.health == "drifting" and state.baseline_ms is None  # no baseline from it
    reader.offset_ms = 0  # the next sync reaches the real server
    resync = T0 + 6 * HOUR
    boot, obs = reader.heartbeat(boot, resync, resync + 10)
    assert boot.anchor is not None and boot.anchor.error_ms == 1_000
    state = assess_clock(state, 1, [obs] if obs else [], boot.anchor, boot.bound, True,
                         resync + 10, POLICY)
    assert state.baseline_ms is not None and abs(state.baseline_ms) <= 1_000
    later = resync + 30 * MINUTE
    placed, boot = place_batch([reader.record(later, True)], later + 30, boot, POLICY)
    assert placed[0] == Placement(later, "reader")
    state = assess_clock(state, 1, [_observe(reader, later)], boot.anchor, boot.bound, True,
                         later + 30, POLICY)
    assert state.health == "drifting"  # held for health_hold_ms after the set-back readings
    cleared = assess_clock(state, 1, [], boot.anchor, boot.bound, True,
                           tap + 30 + POLICY.health_hold_ms, POLICY)
    assert cleared.health == "ok"
