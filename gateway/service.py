"""The MQTT transport of the gateway (SPEC.md section 8): one persistent session, ack after commit.

The gateway connects as ``gateway-{school}`` with clean session off and subscribes to
``att/v1/{school}/+/up/#`` at QoS 1. Each message goes to the ingest (``gateway/ingest.py``)
straight from the socket callback, in arrival order:

* ``up/batch`` → :meth:`Ingest.submit` ``batch``; the signed ack it returns is published on the
  reader's ``down/ack`` at QoS 1 once the records are durably committed, never before;
* ``up/status`` → heartbeat (a retained status is flagged: its receive time says nothing);
* ``up/result`` → command result (it settles the command, ``gateway/reader_commands.py``);
* a topic outside the tree, or another school's → quarantined as ``bad_topic``; a payload whose
  reader differs from the topic's → ``identity_mismatch`` (decided by verification);
* a reader with ``max_pending_per_reader`` messages already waiting in the ingest is flooding
  (messages on refused topics count against the reader the topic names, or all together when it
  names none; the broker's ACL lets a reader publish only its three ``up`` leaves anyway):
  its further messages are dropped (counted in ``attendance_mqtt_dropped_total``, logged at most
  once a minute) until it falls below. A reader uploads stop-and-wait, so only a broken or
  hostile one gets there, or a pile of resends queued while the gateway was down; either way the
  reader still holds its records and sends them again.

**The broker keeps every message until it is committed.** The session acknowledges a message to
the broker (its MQTT PUBACK) only after the ingest's COMMIT, in the order the messages came
(MQTT 3.1.1 section 4.6). A gateway killed at any moment therefore gets the uncommitted messages
again from its persistent session when it reconnects, the broker's in-flight window bounds what
the gateway holds in memory (backpressure instead of an unbounded queue), and readers still
resend whatever was not acknowledged. This needs paho's ``manual_ack`` and the message callback,
which aiomqtt 2.5 (pinned) does not expose: :class:`_Session` sets the one and overrides the
other, and the tests fail loudly should a new aiomqtt change them.

**Graceful stop** (SIGTERM/SIGINT in ``gateway/commands/run.py``): stop taking messages (those not
taken stay with the broker), wait for every message already taken to be committed and its ack
published and confirmed by the broker, then disconnect. The caller then closes the ingest and
the database; nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter, deque
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt

from gateway.config import GatewayConfig
from gateway.ingest import Ingest, Outcome
from gateway.retry import Backoff
from protocol import topics
from protocol.errors import ProtocolError

log = logging.getLogger("gateway.mqtt")

ACK_CONFIRM_TIMEOUT_S = 5.0
MAX_PENDING_PER_READER = 256


class _Session(aiomqtt.Client):
    """An aiomqtt client that hands each message over as it is read and PUBACKs on request."""

    def __init__(self, service: GatewayService, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._service = service
        client = self._client
        client.manual_ack_set(True)
        # Per message, paho would otherwise log each packet at debug level and build PUBACK
        # properties for aiomqtt's awaited publish, which the service does not use (acks are
        # confirmed through their MQTTMessageInfo), and hold acks back behind 20 in flight.
        client.disable_logger()
        client.on_publish = None
        client.max_inflight_messages_set(0)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._service._on_message(self, message)

    def publish_now(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        """Queue a QoS 1 publish without waiting for the broker's PUBACK (confirmed later)."""
        return self._client.publish(topic, payload, qos=1)

    def puback(self, mid: int, qos: int) -> None:
        if qos > 0:
            self._client.ack(mid, qos)


def _claimed_reader(topic: str) -> int:
    """The reader a refused topic names (``att/v1/{school}/{reader}/...``), 0 when none: the
    budget its messages are counted against, like a reader's own (``max_pending_per_reader``)."""
    parts = topic.split("/", 4)
    if len(parts) > 3 and parts[3].isascii() and parts[3].isdigit() and len(parts[3]) <= 10:
        return int(parts[3])
    return 0


class GatewayService:
    """The MQTT session of one school's gateway, feeding :class:`gateway.ingest.Ingest`."""

    def __init__(self, config: GatewayConfig, ingest: Ingest, backoff: Backoff | None = None,
                 *, max_pending_per_reader: int = MAX_PENDING_PER_READER) -> None:
        self.config = config
        self.ingest = ingest
        self.metrics = ingest.metrics
        self.connected = asyncio.Event()
        self._backoff = backoff or Backoff()
        self._session: _Session | None = None
        self._accepting = False
        self._unconfirmed: deque[mqtt.MQTTMessageInfo] = deque()
        self._max_pending = max_pending_per_reader
        self._pending: Counter[int] = Counter()
        self._flood_logged: dict[int, float] = {}

    # -- messages (on the event loop, from the socket callback) --------------------------------

    def _on_message(self, session: _Session, message: mqtt.MQTTMessage) -> None:
        if not self._accepting or session is not self._session:
            return  # not acknowledged: the broker delivers it again to the next session
        topic, payload = message.topic, bytes(message.payload)
        transport = f"mqtt {topic}"
        mid, qos = message.mid, message.qos
        try:
            school, reader_id, direction, leaf = topics.parse(topic)
            if school != self.config.school or direction != "up":
                raise ProtocolError("bad_topic", f"not an upstream topic of this school: {topic}")
        except ProtocolError as exc:
            self.metrics.mqtt_messages.labels("bad_topic").inc()
            source = _claimed_reader(topic)
            if self._pending[source] >= self._max_pending:
                self._flooding(session, source, mid, qos)
                return
            self._pending[source] += 1
            self.ingest.submit("reject", None, payload, transport,
                               lambda outcome: self._finish(session, mid, qos, None, outcome,
                                                            source),
                               reason=exc.code, detail=exc.detail)
            return
        self.metrics.mqtt_messages.labels(leaf).inc()
        if self._pending[reader_id] >= self._max_pending:
            self._flooding(session, reader_id, mid, qos)
            return
        self._pending[reader_id] += 1
        if leaf == "batch":
            ack_topic = topics.topic(school, reader_id, "down", "ack")
            self.ingest.submit("batch", reader_id, payload, transport,
                               lambda outcome: self._finish(session, mid, qos, ack_topic, outcome,
                                                            reader_id))
        else:
            self.ingest.submit("heartbeat" if leaf == "status" else "result", reader_id,
                               payload, transport,
                               lambda outcome: self._finish(session, mid, qos, None, outcome,
                                                            reader_id),
                               retained=bool(message.retain))

    def _flooding(self, session: _Session, reader_id: int, mid: int, qos: int) -> None:
        self.metrics.mqtt_dropped.labels("flooding").inc()
        now = asyncio.get_running_loop().time()
        if now - self._flood_logged.get(reader_id, -60.0) >= 60.0:
            self._flood_logged[reader_id] = now
            log.warning("reader flooding: messages dropped", extra={
                "reader_id": reader_id, "pending": self._pending[reader_id]})
        # Released at the broker in arrival order, behind the messages already taken.
        self.ingest.submit("drop", reader_id, b"", "mqtt",
                           lambda outcome: self._finish(session, mid, qos, None, outcome))

    def _finish(self, session: _Session, mid: int, qos: int, ack_topic: str | None,
                outcome: Outcome, reader_id: int | None = None) -> None:
        """After the COMMIT: publish the ack, then release the message at the broker."""
        if reader_id is not None:
            self._pending[reader_id] -= 1
            if self._pending[reader_id] <= 0:
                del self._pending[reader_id]
        if session is not self._session:
            return  # that session is gone; the broker redelivers to the new one
        if ack_topic is not None and outcome.ack is not None:
            info = session.publish_now(ack_topic, outcome.ack)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                self.metrics.acks_sent.inc()
                unconfirmed = self._unconfirmed
                unconfirmed.append(info)
                while unconfirmed and unconfirmed[0].is_published():  # the broker confirms in order
                    unconfirmed.popleft()
            else:
                log.warning("ack not sent", extra={"topic": ack_topic, "rc": int(info.rc)})
        if outcome.committed:
            session.puback(mid, qos)
        # Not committed (database error): no PUBACK, so the broker redelivers it after the next
        # reconnect; the reader also resends on its own.

    def publish_command(self, reader_id: int, message: bytes) -> bool:
        """Publish a signed command on the reader's ``down/cmd`` (QoS 1, not retained), for
        ``gateway/reader_commands.py``; False when there is no session to take it."""
        session = self._session
        if session is None or not self.connected.is_set():
            return False
        name = topics.topic(self.config.school, reader_id, "down", "cmd")
        info = session.publish_now(name, message)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("command not published", extra={"topic": name, "rc": int(info.rc)})
            return False
        return True

    # -- the session ---------------------------------------------------------------------------

    def _new_session(self) -> _Session:
        m = self.config.mqtt
        return _Session(self, m.host, m.port, username=m.username, password=m.password,
                        identifier=self.config.client_id, clean_session=False,
                        keepalive=m.keepalive_s,
                        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])

    async def run(self, stop: asyncio.Event) -> None:
        """Ingest until ``stop`` is set, reconnecting with backoff when the broker goes away."""
        m = self.config.mqtt
        while not stop.is_set():
            try:
                session = self._new_session()
                # Accept from the first byte: a persistent session's queued messages arrive right
                # after CONNACK, before SUBACK.
                self._session, self._accepting = session, True
                async with session:
                    await session.subscribe(topics.gateway_filter(self.config.school), qos=1)
                    self._backoff.reset()
                    self.connected.set()
                    self.metrics.mqtt_connected.set(1)
                    self.metrics.mqtt_connects.inc()
                    log.info("connected", extra={"host": m.host, "port": m.port,
                                                 "client_id": self.config.client_id})
                    if await self._until_stop_or_disconnect(session, stop):
                        await self._stop_session()
                        break
            except aiomqtt.MqttError as exc:
                self._lost()
                delay = self._backoff.next_delay()
                log.warning("broker unreachable", extra={"error": str(exc),
                                                         "retry_in_s": round(delay, 2)})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        self._lost()
        await self.ingest.drain()
        log.info("disconnected")

    def _lost(self) -> None:
        self._accepting = False
        self._session = None
        self._unconfirmed = deque()
        self.connected.clear()
        self.metrics.mqtt_connected.set(0)

    async def _until_stop_or_disconnect(self, session: _Session, stop: asyncio.Event) -> bool:
        """True when ``stop`` was set; raises MqttError when the session drops first."""
        stopping = asyncio.create_task(stop.wait())
        dropped = asyncio.create_task(self._disconnect_of(session))
        try:
            done, _ = await asyncio.wait({stopping, dropped},
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopping, dropped):
                task.cancel()
        if dropped in done:
            dropped.result()  # raises the MqttError of the disconnect
        return True

    @staticmethod
    async def _disconnect_of(session: _Session) -> None:
        """Returns never; raises MqttError when the session drops.

        Messages never reach aiomqtt's queue (see _Session), so iterating only waits for the
        disconnect, which aiomqtt raises as MqttError.
        """
        async for _ in session.messages:
            log.error("message bypassed the ingest")
        raise aiomqtt.MqttError("message iteration ended")

    async def _stop_session(self) -> None:
        """Stop taking messages, finish the ones taken, make sure their acks left."""
        self._accepting = False
        log.info("stopping: finishing messages in flight")
        await self.ingest.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACK_CONFIRM_TIMEOUT_S
        while any(not i.is_published() for i in self._unconfirmed) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        unconfirmed = sum(1 for i in self._unconfirmed if not i.is_published())
        if unconfirmed:
            log.warning("acks not confirmed by the broker before disconnecting",
                        extra={"acks": unconfirmed})
