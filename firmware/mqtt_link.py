"""The reader's MQTT link (SPEC.md section 8): the uplink's messages over our own MQTT client.

One send task (``run``) does every publish in turn, so the client's in-flight window of one is
never exceeded: command results first, then the status, then the outstanding batch. A batch is
sent when it is new, again on every new connection (the gateway deduplicates; a reader cannot
know whether the ack was lost with the link), and again when the gateway's ack has not come
within ``ack_timeout_ms``. The receive path (the client's callback) only files acks and commands
with the uplink; the send task applies them, since that may write flash.

``online`` is what the tap path's feedback uses: connected to the broker right now.
"""

import asyncio

from firmware.aio import sleep_ms, wait_ms
from firmware.mqtt import MqttClient
from firmware.mqtt_packets import MqttError
from firmware.ticks import ticks_diff, ticks_ms
from protocol import topics
from protocol.compat import const

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    from firmware.app import ReaderApp
    from firmware.uplink import Uplink

    class Network(Protocol):  # firmware/net.py, or the simulator's
        link_type: str
        rssi_dbm: int

        def is_up(self) -> bool: ...

        async def run(self) -> None: ...


# out: a batch of 4096 bytes, its topic (at most 66 bytes), packet id and fixed header;
# in: an ack with 64 verdicts (355 bytes) or a command (at most 96) on its topic
_MAX_PUBLISH = const(4176)
_MAX_PACKET = const(512)
_IDLE_MS = const(1000)
_NET_POLL_MS = const(250)


class MqttLink:
    def __init__(self, app: "ReaderApp", uplink: "Uplink", net: "Network", host: str,
                 port: int = 1883, password: "str | None" = None, keepalive: int = 30,
                 ack_timeout_ms: int = 10000, ssl: "Any" = None, **client_options: "Any") -> None:
        config = app.config
        reader_id = config.reader_id
        self.app = app
        self.uplink = uplink
        self.net = net
        self.link_type = net.link_type
        self.ack_timeout_ms = ack_timeout_ms
        self._batch_topic = topics.topic(config.school, reader_id, "up", "batch").encode()
        self._status_topic = topics.topic(config.school, reader_id, "up", "status").encode()
        self._result_topic = topics.topic(config.school, reader_id, "up", "result").encode()
        self._ack_topic = topics.topic(config.school, reader_id, "down", "ack")
        self._cmd_topic = topics.topic(config.school, reader_id, "down", "cmd")
        self._filter = topics.reader_filter(config.school, reader_id)
        self.client = MqttClient(
            "reader-" + str(reader_id), host, port, username=str(reader_id), password=password,
            keepalive=keepalive, clean_session=False, will_topic=self._status_topic.decode(),
            will_payload=app.heartbeat("offline"), on_message=self._on_message,
            on_connect=uplink.wake.set,
            max_packet=_MAX_PACKET, max_publish=_MAX_PUBLISH, ssl=ssl, **client_options)
        self._epoch = -1
        self._subscribed = False  # SUBACK seen since the broker last started a new session
        self._sent_at = 0
        self._sent = False
        self.resends = 0  # batches sent again because no ack came in time

    # --- Link (firmware/app.py) -------------------------------------------------------------

    @property
    def online(self) -> bool:
        return self.client.connected

    @property
    def rssi_dbm(self) -> int:
        return self.net.rssi_dbm

    def send_status(self, heartbeat: bytes) -> None:
        self.uplink.send_status(heartbeat)

    # --- receive path -----------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes, retain: bool, dup: bool) -> None:
        if topic == self._ack_topic:
            self.uplink.put_ack(payload)
        elif topic == self._cmd_topic:
            self.uplink.put_command(payload)

    # --- send task --------------------------------------------------------------------------

    async def run(self) -> None:
        tasks = [asyncio.create_task(self.net.run()), asyncio.create_task(self._follow_net())]
        try:
            while True:
                if not await self.client.wait_connected(_IDLE_MS):
                    continue
                try:
                    await self._pump()
                except MqttError:
                    pass  # the client reconnects; the outstanding batch is sent again then
        finally:
            for task in tasks:
                task.cancel()
            await self.client.abort()

    async def _follow_net(self) -> None:
        """Run the client only while the network is up: no connect attempts (and no growing
        backoff) while Wi-Fi or the cable is down, a fresh attempt as soon as it is back."""
        net = self.net
        client = self.client
        while True:
            while not net.is_up():
                await sleep_ms(_NET_POLL_MS)
            client.backoff.reset()
            session = asyncio.create_task(client.run())
            while net.is_up() and not session.done():
                await sleep_ms(_NET_POLL_MS)
            await client.abort()  # the socket is dead with the link; the session is kept
            await session

    async def _connected(self) -> None:
        """Once per connection: subscribe (unless the session kept it), status, resend."""
        client = self.client
        if client.connects == self._epoch:
            return
        if not (client.session_present and self._subscribed):
            # "session present" alone is not enough: the broker keeps a session from CONNECT
            # on, so a link lost before the SUBACK leaves one without the subscription
            self._subscribed = False
            await client.subscribe(self._filter, 1)
            self._subscribed = True
        self._epoch = client.connects
        self.uplink.link_up()
        self.uplink.status = self.app.heartbeat()
        self._sent = False

    async def _pump(self) -> None:
        client = self.client
        up = self.uplink
        while client.connected:
            await self._connected()
            up.wake.clear()
            up.take_command()
            if up.take_ack():
                self._sent = False
            while up.results:
                await client.publish(self._result_topic, up.results[0], 1)
                up.result_sent()
            status = up.status
            if status is not None:
                up.status = None
                await client.publish(self._status_topic, status, 1, True)
            wait = _IDLE_MS
            batch = up.batch()
            if batch is not None:
                elapsed = ticks_diff(ticks_ms(), self._sent_at)
                if not self._sent or elapsed >= self.ack_timeout_ms:
                    if self._sent:
                        self.resends += 1
                    await client.publish(self._batch_topic, batch, 1)
                    self._sent = True
                    self._sent_at = ticks_ms()
                    elapsed = 0
                wait = self.ack_timeout_ms - elapsed
            await wait_ms(up.wake.wait(), wait)

