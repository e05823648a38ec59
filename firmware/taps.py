"""The tap path: a card sighting becomes a signed record in the queue and a beep, at once.

Nothing here waits for flash or network: the record is signed into a pre-allocated buffer,
staged in the queue's RAM ring, and the feedback task is told which pattern to play.
"""

from firmware import feedback
from protocol import codec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from asyncio import Event

    from firmware.clock import Clock
    from firmware.debounce import Debouncer
    from firmware.feedback import Feedback
    from firmware.queue import RecordQueue
    from protocol.hmac256 import HmacSha256


class TapRecorder:
    def __init__(self, reader_id: int, boot: int, signer: "HmacSha256", queue: "RecordQueue",
                 clock: "Clock", debouncer: "Debouncer", feedback: "Feedback") -> None:
        self.reader_id = reader_id
        self.boot = boot
        self.seq = 0
        self.online = False  # set by the link: decides "accepted" or "accepted, queued"
        self.wake: Event | None = None  # set by the link: woken when a record is queued
        self._signer = signer
        self._queue = queue
        self._clock = clock
        self._debouncer = debouncer
        self._feedback = feedback
        self._record = bytearray(codec.RECORD_MAX_LEN)
        self._view = memoryview(self._record)

    def sighting(self, tech: int, uid: "bytearray", n: int, now_ms: int) -> bool:
        """A driver saw card ``uid[:n]``; return True when that made a new scan record."""
        if not self._debouncer.sighting(tech, uid, n, now_ms):
            return False
        self.seq += 1
        time_s, time_ms = self._clock.now()
        size = codec.record_into(
            self._record, self._signer, self.reader_id, self.boot, self.seq,
            codec.FLAG_CLOCK_SYNCED if self._clock.synced else 0, tech, memoryview(uid)[:n],
            time_s, time_ms, self._clock.uptime_ms())
        self._queue.append(self._view[:size])
        self._feedback.signal(feedback.ACCEPTED if self.online else feedback.ACCEPTED_QUEUED)
        if self.wake is not None:
            self.wake.set()
        return True
