"""Prometheus metrics of the gateway, served in the text format on ``[metrics] listen``.

Each :class:`GatewayMetrics` has its own registry (tests build many gateways in one process); the
HTTP endpoint is prometheus_client's own small threaded server. Counters are updated by the
ingest's writer thread and the MQTT transport; per-reader gauges (heartbeat age, queue depth,
records the reader dropped, clock health) are computed when Prometheus scrapes, from a snapshot
the ingest keeps in memory. The outbox's per-target gauges (pending, parked, oldest pending age,
breaker state) likewise come from a snapshot the outbox refreshes every few seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from gateway.types import Clock

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_HEALTHS = ("unknown", "ok", "unsynced", "drifting", "jumped")
_BREAKER_STATES = ("closed", "open", "half_open")


@dataclass
class ReaderSeen:
    """What the last heartbeat of a reader said, for the per-reader gauges (no personal data)."""

    heartbeat_ms: int
    state: str
    queue_depth: int
    dropped: int
    clock_health: str


class _ReaderCollector(Collector):
    def __init__(self, snapshot: Callable[[], Mapping[int, ReaderSeen]], clock: Clock) -> None:
        self._snapshot = snapshot
        self._clock = clock

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now = self._clock()
        seen = dict(self._snapshot())
        online = GaugeMetricFamily("attendance_readers_online",
                                   "Readers whose last heartbeat said online")
        online.add_metric([], sum(1 for r in seen.values() if r.state == "online"))
        age = GaugeMetricFamily("attendance_reader_last_heartbeat_age_seconds",
                                "Seconds since the reader's last heartbeat", labels=["reader"])
        depth = GaugeMetricFamily("attendance_reader_queue_depth",
                                  "Records waiting on the reader for an ack", labels=["reader"])
        dropped = GaugeMetricFamily("attendance_reader_dropped_records",
                                    "Records the reader's queue dropped (overflow)",
                                    labels=["reader"])
        health = GaugeMetricFamily("attendance_reader_clock_health",
                                   "1 for the reader's current clock health",
                                   labels=["reader", "health"])
        for reader_id, r in sorted(seen.items()):
            label = str(reader_id)
            age.add_metric([label], max(0.0, (now - r.heartbeat_ms) / 1000))
            depth.add_metric([label], r.queue_depth)
            dropped.add_metric([label], r.dropped)
            for name in _HEALTHS:
                health.samples.append(Sample(
                    "attendance_reader_clock_health", {"reader": label, "health": name},
                    1.0 if r.clock_health == name else 0.0))
        return [online, age, depth, dropped, health]


@dataclass
class OutboxSeen:
    """One upstream target's outbox, as last read (gateway/outbox.py)."""

    pending: int
    parked: int
    oldest_pending_ms: int | None
    breaker: str
    paused: bool


class _OutboxCollector(Collector):
    """The gauges of one queue: ``attendance_outbox_*`` by ``target`` (forwarding) or
    ``attendance_notify_*`` by ``channel`` (notifications, gateway/notify.py)."""

    def __init__(self, snapshot: Callable[[], Mapping[str, OutboxSeen]], clock: Clock,
                 family: str = "outbox") -> None:
        self._snapshot = snapshot
        self._clock = clock
        self._prefix = f"attendance_{family}"
        self._label = "target" if family == "outbox" else "channel"

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now = self._clock()
        seen = dict(self._snapshot())
        p, lab = self._prefix, self._label
        pending = GaugeMetricFamily(f"{p}_pending", "Items waiting for delivery", labels=[lab])
        parked = GaugeMetricFamily(f"{p}_parked",
                                   "Items parked until an operator retries them", labels=[lab])
        age = GaugeMetricFamily(f"{p}_oldest_pending_age_seconds",
                                "Age of the oldest pending item (0: none)", labels=[lab])
        paused = GaugeMetricFamily(f"{p}_paused", "1 while paused by an operator",
                                   labels=[lab])
        breaker = GaugeMetricFamily(f"{p}_breaker_state",
                                    "1 for the target's circuit breaker state",
                                    labels=[lab, "state"])
        for target, s in sorted(seen.items()):
            pending.add_metric([target], s.pending)
            parked.add_metric([target], s.parked)
            oldest = s.oldest_pending_ms
            age.add_metric([target], 0.0 if oldest is None else max(0.0, (now - oldest) / 1000))
            paused.add_metric([target], 1.0 if s.paused else 0.0)
            for state in _BREAKER_STATES:
                breaker.add_metric([target, state], 1.0 if s.breaker == state else 0.0)
        return [pending, parked, age, paused, breaker]


@dataclass(frozen=True)
class DeliveryCounters:
    """The counters of one delivery queue (gateway/outbox.py serves forwarding and
    notifications with one loop), labelled by target or channel."""

    enqueued: Counter
    delivered: Counter
    retried: Counter
    parked: Counter
    superseded: Counter
    target_failures: Counter


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.records_stored = Counter("attendance_records_stored",
                                      "Scan records stored (once per identity)", registry=r)
        self.records_duplicate = Counter(
            "attendance_records_duplicate",
            "Exact duplicates of stored records (resends), acknowledged again", registry=r)
        self.quarantined = Counter("attendance_quarantined",
                                   "Messages and records quarantined, by reason",
                                   ["reason"], registry=r)
        self.clock_implausible = Counter(
            "attendance_records_clock_implausible",
            "Records marked clock-synced whose time could not be used", registry=r)
        self.acks_sent = Counter("attendance_acks_sent", "Acks handed to the transport",
                                 registry=r)
        self.heartbeats = Counter("attendance_heartbeats", "Heartbeats verified and applied",
                                  registry=r)
        self.results = Counter("attendance_command_results", "Command results verified",
                               registry=r)
        self.commands_issued = Counter(
            "attendance_commands_issued",
            "Commands to readers taken up by the gateway (first send, or settled unsent), by "
            "opcode and source (cli, auto)", ["opcode", "source"], registry=r)
        self.commands_sent = Counter(
            "attendance_commands_sent", "Command messages handed to a transport, by transport "
            "and attempt (first, resend)", ["transport", "attempt"], registry=r)
        self.commands_settled = Counter(
            "attendance_commands_settled",
            "Commands reaching a final status (a reader's result, expired, cancelled), by status",
            ["status"], registry=r)
        self.errors = Counter("attendance_ingest_errors",
                              "Messages left unacknowledged by an internal error, by stage",
                              ["stage"], registry=r)
        self.batch_latency = Histogram(
            "attendance_batch_latency_seconds",
            "From a batch's arrival to its ack being ready (after the durable commit)",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.commit_seconds = Histogram("attendance_commit_seconds",
                                        "Duration of the durable COMMIT of a group",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.group_records = Histogram("attendance_group_commit_records",
                                       "Records per group commit", buckets=_SIZE_BUCKETS,
                                       registry=r)
        self.group_messages = Histogram("attendance_group_commit_messages",
                                        "Messages per group commit", buckets=_SIZE_BUCKETS,
                                        registry=r)
        self.queue_depth = Gauge("attendance_ingest_queue_depth",
                                 "Messages waiting for the ingest writer", registry=r)
        self.mqtt_messages = Counter("attendance_mqtt_messages", "MQTT messages received",
                                     ["leaf"], registry=r)
        self.mqtt_dropped = Counter("attendance_mqtt_dropped",
                                    "MQTT messages dropped unread, by reason (e.g. flooding)",
                                    ["reason"], registry=r)
        self.mqtt_connected = Gauge("attendance_mqtt_connected",
                                    "1 while the gateway's MQTT session is up", registry=r)
        self.mqtt_connects = Counter("attendance_mqtt_connects",
                                     "MQTT sessions established", registry=r)
        self.outbox_enqueued = Counter(
            "attendance_outbox_items_enqueued",
            "Outbox items committed (one per event version and target)", ["target"], registry=r)
        self.outbox_delivered = Counter("attendance_outbox_items_delivered",
                                        "Items the upstream accepted", ["target"], registry=r)
        self.outbox_retried = Counter(
            "attendance_outbox_items_retried",
            "Item attempts to be retried (the item's or the whole target's failure)",
            ["target"], registry=r)
        self.outbox_parked = Counter("attendance_outbox_items_parked",
                                     "Items the upstream refused for good (parked)",
                                     ["target"], registry=r)
        self.outbox_superseded = Counter(
            "attendance_outbox_items_superseded",
            "Items replaced by a newer version of their event before delivery", ["target"],
            registry=r)
        self.outbox_target_failures = Counter(
            "attendance_outbox_target_failures",
            "Deliveries that failed as a whole (target down, adapter error)", ["target"],
            registry=r)

        self.notify_decisions = Counter(
            "attendance_notify_decisions",
            "Notification decisions per (event, guardian), by outcome (queued, held, skipped) "
            "and reason (gateway/notify.py)", ["outcome", "reason"], registry=r)
        self._notify = DeliveryCounters(
            Counter("attendance_notify_messages_enqueued", "Messages committed for delivery",
                    ["channel"], registry=r),
            Counter("attendance_notify_messages_delivered", "Messages the channel accepted",
                    ["channel"], registry=r),
            Counter("attendance_notify_messages_retried", "Message attempts to be retried",
                    ["channel"], registry=r),
            Counter("attendance_notify_messages_parked",
                    "Messages the channel refused for good (parked)", ["channel"], registry=r),
            Counter("attendance_notify_messages_cancelled",
                    "Messages cancelled before delivery (consent withdrawn, guardian removed, "
                    "event voided)", ["channel"], registry=r),
            Counter("attendance_notify_channel_failures",
                    "Deliveries that failed as a whole (channel down, channel error)",
                    ["channel"], registry=r))

    def counters(self, family: str) -> DeliveryCounters:
        """The counters of a delivery queue: ``outbox`` (forwarding) or ``notify``."""
        if family == "notify":
            return self._notify
        return DeliveryCounters(self.outbox_enqueued, self.outbox_delivered,
                                self.outbox_retried, self.outbox_parked, self.outbox_superseded,
                                self.outbox_target_failures)

    def watch_readers(self, snapshot: Callable[[], Mapping[int, ReaderSeen]],
                      clock: Clock) -> None:
        self.registry.register(_ReaderCollector(snapshot, clock))

    def watch_outbox(self, snapshot: Callable[[], Mapping[str, OutboxSeen]],
                     clock: Clock, family: str = "outbox") -> None:
        self.registry.register(_OutboxCollector(snapshot, clock, family))


class MetricsServer:
    """The ``/metrics`` endpoint on ``host:port``; :meth:`close` stops it."""

    def __init__(self, metrics: GatewayMetrics, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        server, thread = start_http_server(int(port), addr=host.strip("[]"),
                                           registry=metrics.registry)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.port: int = server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
