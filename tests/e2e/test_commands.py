"""Commands end to end: real Mosquitto, the gateway (service, ingest, command dispatcher, SQLite),
the operator's CLI code path, and a stand-in reader that speaks SPEC.md sections 7 and 8.

The stand-in reader is built from the runtime-neutral codec a reader runs
(``protocol/codec.py``: ``decode_command`` verifies the MAC, ``encode_result`` signs the answer)
and follows SPEC §7.1: a command whose ``cmd_seq`` is above the last one applied is applied, a
repeat of the last one gets the same answer again, an older one ``stale``; a command whose MAC
does not verify gets no answer. (The real firmware, ``firmware/commands.py``, is tested on its
own.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiomqtt
import pytest

from gateway import db
from gateway.cli import build_parser
from gateway.commands import run as run_command
from gateway.config import GatewayConfig, load_config
from gateway.ingest import Ingest
from gateway.metrics import GatewayMetrics
from gateway.reader_commands import CommandDispatcher, CommandPolicy
from gateway.registry import Registry
from gateway.retry import Backoff
from gateway.service import GatewayService
from protocol import codec, construct_codec, topics
from protocol.errors import ProtocolError
from sim.broker import MosquittoBroker

SCHOOL = "e2e-commands"
FAST = CommandPolicy(resend_after_ms=400, max_attempts=3)


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int


class StandInReader:
    """A reader's command side over MQTT (see the module docstring).

    ``ignore`` commands are received and dropped unanswered first (a lost message);
    ``answering`` False leaves every command unanswered.
    """

    def __init__(
        self, reader_id: int, key: bytes, port: int, *, ignore: int = 0, answering: bool = True
    ) -> None:
        self.reader_id = reader_id
        self.key = key
        self.ignore = ignore
        self.answering = answering
        self.received: list[Received] = []
        self.commands: list[dict[str, Any]] = []
        self.bad_commands = 0
        self.last_seq = 0
        self.last_status = "ok"
        self._client = aiomqtt.Client(
            "127.0.0.1", port, identifier=f"reader-{reader_id}", clean_session=False, keepalive=10
        )
        self._listener: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StandInReader:
        await self._client.__aenter__()
        await self._client.subscribe(topics.reader_filter(SCHOOL, self.reader_id), qos=1)
        self._listener = asyncio.create_task(self._listen())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._listener
        await self._client.__aexit__(exc_type, exc, tb)

    async def online(self) -> None:
        """The heartbeat a reader publishes on connect (retained, like the firmware's)."""
        payload = construct_codec.encode(
            "heartbeat",
            {
                "reader_id": self.reader_id,
                "boot": 1,
                "state": "online",
                "faults": [],
                "fw_version": "1.0.0",
                "link": "wifi",
                "rssi_dbm": -50,
                "clock_synced": True,
                "time_s": 1_790_000_000,
                "uptime_s": 5,
                "free_heap": 50_000,
                "queue_depth": 0,
                "oldest_unsent_age_s": 0,
                "dropped": 0,
                "last_ack_boot": 0,
                "last_ack_seq": 0,
            },
            self.key,
        )
        await self._publish("status", payload, retain=True)

    async def answer(self, cmd_seq: int, status: str, key: bytes | None = None) -> None:
        result = codec.encode_result(
            {"reader_id": self.reader_id, "cmd_seq": cmd_seq, "status": status}, key or self.key
        )
        await self._publish("result", result)

    async def _publish(self, leaf: str, payload: bytes, retain: bool = False) -> None:
        await self._client.publish(
            topics.topic(SCHOOL, self.reader_id, "up", leaf), payload, qos=1, retain=retain
        )

    async def _listen(self) -> None:
        async for message in self._client.messages:
            payload = message.payload
            assert isinstance(payload, bytes)
            self.received.append(
                Received(str(message.topic), payload, bool(message.retain), int(message.qos))
            )
            if not str(message.topic).endswith("/down/cmd"):
                continue
            try:
                command = codec.decode_command(payload, self.key)
            except ProtocolError:
                self.bad_commands += 1  # no answer to what does not verify
                continue
            self.commands.append(command)
            if self.ignore:
                self.ignore -= 1
                continue
            if not self.answering or command["reader_id"] != self.reader_id:
                continue
            seq = command["cmd_seq"]
            if seq > self.last_seq:
                self.last_seq, self.last_status = seq, "ok"
                status = "ok"
            else:
                status = self.last_status if seq == self.last_seq else "stale"
            await self.answer(seq, status)


def write_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[gateway]\nschool = "{SCHOOL}"\ndatabase = "gateway.db"\n'
        f'master_key_file = "master.key"\n[mqtt]\nport = {port}\nkeepalive_s = 5\n'
        '[metrics]\nlisten = ""\n',
        encoding="utf-8",
    )
    return path


def register(config: GatewayConfig, *reader_ids: int) -> dict[int, bytes]:
    conn = db.connect(config.database)
    try:
        registry = Registry.open(conn, config.master_key_file)
        return {rid: registry.register(rid, f"reader {rid}", "main").key for rid in reader_ids}
    finally:
        conn.close()


def query(config: GatewayConfig, sql: str, *params: object) -> list[tuple[Any, ...]]:
    conn = db.connect(config.database, migrate=False)
    try:
        return [tuple(r) for r in conn.execute(sql, params).fetchall()]
    finally:
        conn.close()


def cli(*argv: str) -> int:
    """The operator's command, in-process: ``attendance-gateway ARGV``."""
    args = build_parser().parse_args(list(argv))
    return int(args.func(args))


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


@pytest.fixture
def config_file(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Path:
    return write_config(tmp_path, mosquitto_broker.port)


@dataclass
class Running:
    ingest: Ingest
    metrics: GatewayMetrics


@contextlib.asynccontextmanager
async def gateway(config: GatewayConfig, policy: CommandPolicy) -> AsyncIterator[Running]:
    """The service's parts as ``attendance-gateway run`` wires them, with short timeouts."""
    conn = db.connect(config.database)
    read_conn = db.connect(config.database, migrate=False)
    metrics = GatewayMetrics()
    ingest = Ingest(
        conn,
        Registry.open(conn, config.master_key_file).key_ring(),
        config=config.ingest,
        metrics=metrics,
    )
    ingest.start()
    service = GatewayService(config, ingest, backoff=Backoff(initial_s=0.05, cap_s=0.2))
    dispatcher = CommandDispatcher(
        ingest, mqtt=service, read_conn=read_conn, metrics=metrics, policy=policy, poll_s=0.05
    )
    stop = asyncio.Event()
    tasks = asyncio.gather(service.run(stop), dispatcher.run(stop))
    try:
        await asyncio.wait_for(service.connected.wait(), 10)
        yield Running(ingest, metrics)
    finally:
        stop.set()
        await tasks
        await ingest.close()
        read_conn.close()
        conn.close()


async def test_a_command_from_the_cli_is_delivered_verified_answered_and_settled(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``attendance-gateway run`` as deployed, ``readers command … --wait`` as typed."""
    config = load_config(config_file)
    keys = register(config, 1, 2)
    stop = asyncio.Event()
    running = asyncio.create_task(run_command.run(config, stop))
    try:
        async with (
            StandInReader(1, keys[1], config.mqtt.port) as reader,
            StandInReader(2, keys[2], config.mqtt.port) as other,
        ):
            await reader.online()
            await other.online()
            status = await asyncio.to_thread(
                cli,
                "readers",
                "command",
                "--config",
                str(config_file),
                "1",
                "set-config",
                "--volume",
                "70",
                "--debounce-ms",
                "500",
                "--wait",
                "20",
                "--json",
            )
            await asyncio.sleep(0.2)  # nothing else arrives
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
    out = json.loads(capsys.readouterr().out)
    assert status == 0
    assert (out["status"], out["attempts"], out["transport"], out["source"]) == (
        "ok",
        1,
        "mqtt",
        "cli",
    )
    # one message on the reader's own down/cmd, QoS 1, not retained; the other reader got nothing
    assert [(r.topic, r.retain, r.qos) for r in reader.received] == [
        (f"att/v1/{SCHOOL}/1/down/cmd", False, 1)
    ]
    assert other.received == [] and reader.bad_commands == 0
    command = reader.commands[0]
    assert (command["reader_id"], command["cmd_seq"], command["opcode"], command["args"]) == (
        1,
        out["cmd_seq"],
        "set_config",
        {"debounce_ms": 500, "volume": 70},
    )
    assert query(
        config, "SELECT reader_id, cmd_seq, status, results_seen, key_id FROM reader_commands"
    ) == [(1, out["cmd_seq"], "ok", 1, 1)]
    assert query(config, "SELECT COUNT(*) FROM quarantine") == [(0,)]


async def test_an_unanswered_command_is_sent_again_with_the_same_cmd_seq_and_bytes(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(config_file)
    keys = register(config, 1)
    async with (
        gateway(config, FAST) as gw,
        StandInReader(1, keys[1], config.mqtt.port, ignore=1) as reader,
    ):
        await reader.online()
        assert cli("readers", "command", "--config", str(config_file), "1", "reboot") == 0
        await until(lambda: query(config, "SELECT status FROM reader_commands") == [("ok",)])
        metrics = gw.metrics
    capsys.readouterr()
    assert len(reader.received) == 2
    first, second = reader.received
    assert first.payload == second.payload  # the same bytes, so the same cmd_seq and MAC
    assert [c["cmd_seq"] for c in reader.commands] == [reader.last_seq] * 2
    assert query(config, "SELECT cmd_seq, attempts, status FROM reader_commands") == [
        (reader.last_seq, 2, "ok")
    ]
    assert metrics.commands_sent.labels("mqtt", "first")._value.get() == 1
    assert metrics.commands_sent.labels("mqtt", "resend")._value.get() == 1
    assert metrics.commands_issued.labels("reboot", "cli")._value.get() == 1
    assert metrics.commands_settled.labels("ok")._value.get() == 1


async def test_a_result_with_a_bad_mac_is_quarantined_and_changes_nothing(
    config_file: Path,
) -> None:
    config = load_config(config_file)
    keys = register(config, 1, 2)
    async with (
        gateway(config, CommandPolicy(resend_after_ms=60_000)),
        StandInReader(1, keys[1], config.mqtt.port, answering=False) as reader,
    ):
        await reader.online()
        assert cli("readers", "command", "--config", str(config_file), "1", "heartbeat") == 0
        await until(lambda: len(reader.commands) == 1)
        seq = reader.commands[0]["cmd_seq"]
        await reader.answer(seq, "ok", key=bytes(32))  # forged
        await reader.answer(seq, "ok", key=keys[2])  # another reader's key
        await until(lambda: query(config, "SELECT COUNT(*) FROM quarantine") == [(2,)])
        assert query(config, "SELECT status, results_seen, result_ms FROM reader_commands") == [
            ("sent", 0, None)
        ]
        await reader.answer(seq, "ok")
        await until(lambda: query(config, "SELECT status FROM reader_commands") == [("ok",)])
    assert (
        query(config, "SELECT reason, reader_id, transport FROM quarantine ORDER BY quarantine_id")
        == [("bad_mac", 1, f"mqtt att/v1/{SCHOOL}/1/up/result")] * 2
    )
    assert len(reader.commands) == 1


async def test_a_command_left_unanswered_expires_and_a_late_result_still_settles_it(
    config_file: Path,
) -> None:
    config = load_config(config_file)
    keys = register(config, 1)
    policy = CommandPolicy(resend_after_ms=300, max_attempts=2)
    async with (
        gateway(config, policy) as gw,
        StandInReader(1, keys[1], config.mqtt.port, answering=False) as reader,
    ):
        await reader.online()
        assert cli("readers", "command", "--config", str(config_file), "1", "set-time") == 0
        await until(lambda: query(config, "SELECT status FROM reader_commands") == [("expired",)])
        assert len(reader.commands) == 2 and reader.commands[0] == reader.commands[1]
        await reader.answer(reader.commands[0]["cmd_seq"], "ok")
        await until(lambda: query(config, "SELECT status FROM reader_commands") == [("ok",)])
        metrics = gw.metrics
    assert query(config, "SELECT opcode, attempts, detail FROM reader_commands") == [
        ("set_time", 2, "no result after 2 send(s)")
    ]
    args = reader.commands[0]["args"]
    assert set(args) == {"time_s", "time_ms"} and args["time_s"] > 1_700_000_000
    assert metrics.commands_settled.labels("expired")._value.get() == 1
    assert metrics.commands_settled.labels("ok")._value.get() == 1
