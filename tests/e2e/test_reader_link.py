"""The reader-gateway link under faults (issue 5): the real firmware, a real Mosquitto, the real
gateway.

Each reader here is ``sim.firmware_reader.FirmwareReader``: the reader firmware's own tap path,
flash queue, boot counter, MQTT client and uplink, run under CPython on real files and sockets.
Faults come from a loopback proxy between reader and broker (``sim/proxy.py``: black hole,
lost ack, connections closed or refused, the link cut before SUBSCRIBE), from restarting the
broker, from rebooting the reader and from kill -9 of the gateway process.

After each fault the same contract is checked against the firmware's own ground truth
(``FirmwareReader.made()``, every identity its tap path made): every record stored exactly once
in the gateway's ``scans`` table and nothing else, a backlog stored in ascending ``seq``, nothing
quarantined, the reader's queue empty and the firmware not crashed. Along the way: taps made while
offline get the "accepted, queued" feedback and live ones "accepted"; live taps overtake a
backlog; a reader that loses its link is shown ``offline`` (its retained last will) and
``online`` again once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import traceback
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from firmware.feedback import ACCEPTED, ACCEPTED_QUEUED
from protocol import construct_codec, topics
from sim.broker import LOOPBACK, MosquittoBroker
from sim.firmware_reader import FirmwareReader, provision
from sim.proxy import SUBSCRIBE, LinkProxy
from tests.e2e.gateway_process import GatewayProcess, write_config
from tests.e2e.test_mqtt_ingest import SCHOOL, Env, gateway, make_env

READER = 1
Identity = tuple[int, int]  # (boot, seq) of reader READER

# Short timeouts so each fault is noticed in about a second: the link resends a batch after
# 400 ms without its ack, the client gives up on a PUBACK after 300 ms (x4 tries), pings after
# 0.5 s of quiet and calls the link dead 0.5 s later; the broker drops a reader silent for 1.5 s.
FAST: dict[str, Any] = {
    "ack_timeout_ms": 400, "puback_timeout_ms": 300, "keepalive": 1, "connect_timeout_ms": 500,
    "io_timeout_ms": 500, "backoff_first_ms": 50, "backoff_cap_ms": 300,
}


# --- helpers ---------------------------------------------------------------------------------

async def eventually(predicate: Callable[[], bool], timeout: float, what: str,
                     state: Callable[[], object] | None = None) -> None:
    """Poll ``predicate`` every 10 ms until it holds; fail after ``timeout`` s saying ``what``
    was awaited, with ``state()`` for the diagnosis."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            detail = f"; state: {state()}" if state is not None else ""
            raise AssertionError(f"not within {timeout:g} s: {what}{detail}")
        await asyncio.sleep(0.01)


def stored(env: Env) -> list[Identity]:
    """``(boot, seq)`` of the reader's stored scans, in the order the gateway stored them."""
    return [(b, s) for b, s in env.query(
        "SELECT boot, seq FROM scans WHERE reader_id = ? ORDER BY scan_id", READER)]


def status(env: Env) -> str | None:
    rows = env.query("SELECT state FROM reader_status WHERE reader_id = ?", READER)
    return str(rows[0][0]) if rows else None


def crash(reader: FirmwareReader) -> str:
    """The firmware's crash with its traceback, or "no"."""
    if reader.crashed is None:
        return "no"
    return "".join(traceback.format_exception(reader.crashed))


def describe(env: Env, reader: FirmwareReader) -> Callable[[], str]:
    def state() -> str:
        rows = stored(env)
        made = reader.made()
        missing = sorted(set(made) - set(rows))
        line = (f"made {len(made)}, stored {len(rows)}, missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, queue depth {reader.queue_depth}, "
                f"online {reader.online}, crashed {crash(reader)}")
        if reader.app is not None and reader.app.link is not None:
            link, up = reader.link, reader.link.uplink
            line += (f", batches {up.batches}, acks {up.acks}, stale acks {up.stale_acks}, "
                     f"resends {link.resends}, reconnects {link.client.reconnects}, "
                     f"connect failures {link.client.connect_failures}")
        return line
    return state


async def converged(env: Env, reader: FirmwareReader, timeout: float = 15) -> list[Identity]:
    """Wait until the gateway stores everything the reader made and the reader's queue is
    empty; then check the contract and return the stored identities in storing order."""
    def done() -> bool:
        return reader.queue_depth == 0 and len(stored(env)) >= len(reader.made())

    await eventually(done, timeout, "every record stored and acknowledged",
                     describe(env, reader))
    rows = stored(env)
    made = reader.made()
    assert len(made) == len(set(made)), "the firmware made an identity twice"
    assert len(rows) == len(set(rows)), "an identity stored twice"
    assert sorted(rows) == sorted(made), (
        f"missing {sorted(set(made) - set(rows))[:10]}, extra {sorted(set(rows) - set(made))[:10]}")
    assert reader.queue_depth == 0
    assert reader.crashed is None, f"the firmware crashed: {crash(reader)}"
    assert env.query("SELECT reason, boot, seq FROM quarantine") == []
    return rows


def assert_stored_in_order(rows: list[Identity], ids: Iterable[Identity], what: str) -> None:
    """The records ``ids`` were stored in ascending (boot, seq) order."""
    wanted = set(ids)
    order = [i for i in rows if i in wanted]
    assert order == sorted(order), f"{what} stored out of order: {order[:20]}..."


@contextlib.contextmanager
def commits_held(env: Env) -> Iterator[int]:
    """Hold the database's write lock (a gateway whose disk stalls) for less than the ingest's
    busy timeout: the reader's outstanding batch stays unacknowledged meanwhile. Yields how
    many records were stored when the hold began."""
    conn = sqlite3.connect(env.db_path, isolation_level=None, timeout=5)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield len(stored(env))
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def assert_overtook(rows: list[Identity], live: list[Identity], backlog: list[Identity],
                    held_at: int, batch: int) -> None:
    """The live taps, made while the gateway held ``held_at`` records and the reader had a
    batch outstanding, went up in the batch after the next one at the latest (one batch may
    have been filled before they were made), ahead of the rest of the backlog."""
    at = [rows.index(i) for i in live]
    last = max(rows.index(i) for i in backlog)
    assert all(held_at <= a < held_at + 2 * batch + len(live) for a in at), (
        f"live taps stored at {at}, the hold began at {held_at}, batches of {batch}")
    assert max(at) < last, f"live taps stored at {at}, after the backlog (ends at {last})"


def online(reader: FirmwareReader) -> bool:
    """Connected, and the tap path has been told so (its poll picks up the link's state)."""
    return reader.online and reader.app is not None and reader.app.taps.online


def offline(reader: FirmwareReader) -> bool:
    return not reader.online and reader.app is not None and not reader.app.taps.online


def card(n: int) -> tuple[int, bytes]:
    return (2, bytes([0x04, 0xA0, 0x00, n]))


async def tap(reader: FirmwareReader, n: int, timeout: float = 2) -> Identity:
    """Present card ``n`` to the reader and wait for the firmware's poll to record it."""
    before = len(reader.made())
    reader.tap(card(n))
    await eventually(lambda: len(reader.made()) > before, timeout, f"card {n} recorded")
    return reader.made()[-1]


async def retained_status(env: Env, port: int) -> dict[str, Any]:
    """The heartbeat the broker holds retained on the reader's status topic, decoded."""
    topic = topics.topic(SCHOOL, READER, "up", "status")
    async with aiomqtt.Client(LOOPBACK, port, identifier="test-status-probe") as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(3):
            async for message in client.messages:
                assert message.retain, "status published while probing: probe again"
                assert isinstance(message.payload, bytes)
                return construct_codec.decode("heartbeat", message.payload, env.keys[READER])
    raise AssertionError("unreachable")


def new_reader(env: Env, tmp_path: Path, port: int, **options: Any) -> FirmwareReader:
    """Provision reader READER to reach the broker at ``port`` and return it, not started.
    ``options`` go to ``FirmwareReader`` (over ``FAST``), ``config_*`` into its config.json."""
    settings = {k[len("config_"):]: v for k, v in options.items() if k.startswith("config_")}
    settings.setdefault("debounce_ms", 100)
    kwargs = {**FAST, **{k: v for k, v in options.items() if not k.startswith("config_")}}
    root = tmp_path / f"reader-{READER}"
    provision(root, READER, env.keys[READER], SCHOOL, host=LOOPBACK, port=port, password=None,
              **settings)
    return FirmwareReader(root, **kwargs)


@pytest.fixture
async def proxy(mosquitto_broker: MosquittoBroker) -> AsyncIterator[LinkProxy]:
    async with LinkProxy(mosquitto_broker.port) as p:
        yield p


@pytest.fixture
def env(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Env:
    return make_env(tmp_path, mosquitto_broker.port, range(READER, READER + 1))


@pytest.fixture
async def readers() -> AsyncIterator[list[FirmwareReader]]:
    """Readers to power off at the end, whatever happened."""
    made: list[FirmwareReader] = []
    yield made
    for r in made:
        await r.stop()


# --- the tests ----------------------------------------------------------------------------------

async def test_online_taps_are_stored_once_and_beep_accepted(
        env: Env, tmp_path: Path, mosquitto_broker: MosquittoBroker,
        readers: list[FirmwareReader]) -> None:
    r = new_reader(env, tmp_path, mosquitto_broker.port)
    readers.append(r)
    async with gateway(env):
        r.start()
        await eventually(lambda: online(r), 5, "online")
        await eventually(lambda: status(env) == "online", 5, "status online at the gateway")
        for n in range(5):
            await tap(r, n)
        rows = await converged(env, r)
    assert rows == r.made() and len(rows) == 5
    assert r.signals == [ACCEPTED] * 5
    assert r.link.uplink.stale_acks == r.link.uplink.bad_acks == 0


async def test_a_lost_ack_is_made_good_by_a_resend(
        env: Env, tmp_path: Path, proxy: LinkProxy, readers: list[FirmwareReader]) -> None:
    r = new_reader(env, tmp_path, proxy.port)
    readers.append(r)
    async with gateway(env):
        r.start()
        await eventually(lambda: online(r), 5, "online", describe(env, r))
        proxy.drop_next_ack(topics.topic(SCHOOL, READER, "down", "ack"))
        await tap(r, 1)
        await eventually(lambda: len(stored(env)) == 1, 5, "the tap stored", describe(env, r))
        await eventually(lambda: not proxy.ack_drop_pending, 5, "the ack dropped")
        assert r.queue_depth == 1, "the reader freed a record without its ack"
        rows = await converged(env, r)
        assert r.link.resends >= 1
        # The broker still holds the dropped ack for the reader's session: after a reconnect it
        # comes again (DUP) and frees nothing, since its batch is long acknowledged.
        reconnects, stale = r.link.client.reconnects, r.link.uplink.stale_acks
        proxy.close_all()
        await eventually(lambda: r.link.client.reconnects > reconnects and online(r), 5,
                         "reconnected", describe(env, r))
        assert r.link.client.session_present
        await eventually(lambda: r.link.uplink.stale_acks > stale, 5,
                         "the dropped ack delivered again, and ignored", describe(env, r))
        await tap(r, 2)
        rows = await converged(env, r)
    assert len(proxy.dropped) == 1
    assert rows == sorted(rows)
    assert r.signals == [ACCEPTED, ACCEPTED]


async def test_a_link_lost_before_subscribe_still_gets_its_acks(
        env: Env, tmp_path: Path, proxy: LinkProxy, readers: list[FirmwareReader]) -> None:
    """The first connection made the broker keep a session (clean session off) but the link
    died before SUBSCRIBE: the next CONNACK says "session present", yet it holds no
    subscription, so the reader must subscribe again or never hear an ack."""
    proxy.cut_before(SUBSCRIBE)
    r = new_reader(env, tmp_path, proxy.port)
    readers.append(r)
    async with gateway(env):
        r.start()
        await eventually(lambda: len(proxy.dropped) == 1 and online(r), 5,
                         "cut before SUBSCRIBE, then reconnected", describe(env, r))
        assert r.link.client.session_present
        await tap(r, 1)
        await converged(env, r, timeout=5)


async def test_a_quick_reconnect_shows_online_again(
        env: Env, tmp_path: Path, proxy: LinkProxy, readers: list[FirmwareReader]) -> None:
    r = new_reader(env, tmp_path, proxy.port)
    readers.append(r)
    async with gateway(env):
        r.start()
        await eventually(lambda: online(r) and status(env) == "online", 5, "online")
        reconnects = r.link.client.reconnects
        proxy.close_all()  # within the reader's first second of uptime
        await eventually(lambda: r.link.client.reconnects > reconnects and online(r), 5,
                         "reconnected", describe(env, r))
        await asyncio.sleep(0.3)  # the will and the new status have reached the gateway
        assert status(env) == "online", "the reader is connected, the gateway says offline"


async def test_reboots_mid_upload_send_the_old_boot_and_new_taps_go_first(
        env: Env, tmp_path: Path, mosquitto_broker: MosquittoBroker,
        readers: list[FirmwareReader]) -> None:
    r = new_reader(env, tmp_path, mosquitto_broker.port, config_batch_max_records=16)
    readers.append(r)
    async with gateway(env):
        r.start()
        backlog = r.queue_taps(2000)  # made before the link came up: a backlog
        assert r.signals == [ACCEPTED_QUEUED] * 2000
        first_boot = backlog[0][0]
        stopped = []
        for reboot in range(1, 5):
            up = r.link.uplink
            await eventually(lambda: up.acks >= 2 and up.outstanding, 10,  # noqa: B023
                             "a few batches acknowledged, one outstanding", describe(env, r))
            stopped.append(r.link)
            await r.restart()  # the power button, mid-upload
            assert r.app is not None and r.app.boot == first_boot + reboot
            assert r.queue_depth > 0, "the backlog drained before the reboot"
        # The firmware that was stopped stays stopped: no old client holds or takes back the
        # broker session the running boot uses (two firmwares on one flash would also corrupt
        # the queue).
        before = [(old.client.reconnects, old.client.connect_failures) for old in stopped]
        for _ in range(20):
            await asyncio.sleep(0.01)
            assert not any(old.client.connected for old in stopped), "a stopped link is up"
        assert [(old.client.reconnects, old.client.connect_failures) for old in stopped] == before
        await eventually(lambda: online(r), 5, "online again", describe(env, r))
        with commits_held(env) as held_at:
            live = [await tap(r, n) for n in range(3)]
        rows = await converged(env, r)
    assert {boot for boot, _ in backlog} == {first_boot}
    assert {boot for boot, _ in live} == {first_boot + 4}
    assert_stored_in_order(rows, backlog, "the first boot's backlog")
    assert_stored_in_order(rows, live, "the last boot's taps")
    assert_overtook(rows, live, backlog, held_at, 16)
    assert r.signals == [ACCEPTED] * 3


@pytest.mark.slow
async def test_a_black_holed_link_is_noticed_shown_offline_and_caught_up(
        env: Env, tmp_path: Path, proxy: LinkProxy, mosquitto_broker: MosquittoBroker,
        readers: list[FirmwareReader]) -> None:
    r = new_reader(env, tmp_path, proxy.port)
    readers.append(r)
    async with gateway(env):
        r.start()
        await eventually(lambda: online(r) and status(env) == "online", 5, "online")
        await tap(r, 1)
        await converged(env, r)
        proxy.black_hole()
        await tap(r, 2)  # the reader does not know yet: its batch goes into the void
        await eventually(lambda: offline(r), 5, "the reader noticing the dead link",
                         describe(env, r))
        await tap(r, 3)
        await eventually(lambda: status(env) == "offline", 5,
                         "the broker's last will marking the reader offline")
        will = await retained_status(env, mosquitto_broker.port)
        assert (will["state"], will["reader_id"]) == ("offline", READER)
        assert r.queue_depth == 2
        proxy.forward()
        rows = await converged(env, r)
        await eventually(lambda: status(env) == "online", 5, "online again at the gateway")
        now = await retained_status(env, mosquitto_broker.port)
        assert now["state"] == "online"
    assert rows == sorted(rows)
    assert r.signals == [ACCEPTED, ACCEPTED, ACCEPTED_QUEUED]
    assert r.link.client.reconnects >= 1


@pytest.mark.slow
async def test_a_day_offline_with_thousands_queued_then_live_taps_overtake_the_backlog(
        env: Env, tmp_path: Path, proxy: LinkProxy, readers: list[FirmwareReader]) -> None:
    r = new_reader(env, tmp_path, proxy.port)
    readers.append(r)
    async with gateway(env):
        r.start()
        await eventually(lambda: online(r), 5, "online")
        first = await tap(r, 0)
        await converged(env, r)
        # The school's Wi-Fi goes: the connection drops and new ones are refused.
        proxy.refuse = True
        proxy.close_all()
        await eventually(lambda: offline(r), 5, "the reader noticing the link is down")
        await eventually(lambda: status(env) == "offline", 5, "offline at the gateway")
        backlog = [*r.queue_taps(3000), await tap(r, 1)]
        client = r.link.client
        await eventually(lambda: client.connect_failures >= 5 and
                         client.backoff.base_ms == client.backoff.cap_ms, 10,
                         "the reconnect backoff at its cap", describe(env, r))
        assert r.queue_depth == len(backlog)
        proxy.refuse = False
        up = r.link.uplink
        acks = up.acks
        await eventually(lambda: up.acks > acks and online(r), 10,
                         "the first batch of the backlog acked", describe(env, r))
        with commits_held(env) as held_at:
            live = [await tap(r, n) for n in (2, 3)]
        rows = await converged(env, r, timeout=60)
        await eventually(lambda: status(env) == "online", 5, "online again at the gateway")
    assert rows[0] == first
    assert_stored_in_order(rows, backlog, "the backlog")
    assert_stored_in_order(rows, live, "the live taps")
    assert_overtook(rows, live, backlog, held_at, 64)
    assert r.signals == [ACCEPTED] + [ACCEPTED_QUEUED] * 3001 + [ACCEPTED] * 2


@pytest.mark.slow
async def test_a_broker_restart_mid_batch(tmp_path: Path, readers: list[FirmwareReader]) -> None:
    broker = await asyncio.to_thread(MosquittoBroker(tmp_path / "broker").start)
    try:
        env = make_env(tmp_path, broker.port, range(READER, READER + 1))
        r = new_reader(env, tmp_path, broker.port, config_batch_max_records=16)
        readers.append(r)
        async with gateway(env) as gw:
            r.start()
            r.queue_taps(1500)
            up = r.link.uplink
            await eventually(lambda: up.acks >= 3 and up.outstanding, 10,
                             "a few batches acknowledged, one outstanding", describe(env, r))
            await asyncio.to_thread(broker.stop)
            assert 0 < len(stored(env)) < 1500, "the backlog was not mid-upload"
            await eventually(lambda: not r.online, 5, "the reader noticing the broker gone")
            await asyncio.sleep(0.3)
            broker = await asyncio.to_thread(
                MosquittoBroker(tmp_path / "broker", port=broker.port).start)
            rows = await converged(env, r, timeout=30)
            assert gw.ingest.metrics.mqtt_connects._value.get() >= 2
            assert not r.link.client.session_present  # a new broker: subscribed again
    finally:
        broker.stop()
    assert rows == sorted(rows)
    assert r.link.client.reconnects >= 1


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_the_gateway_killed_mid_drain_and_restarted(
        tmp_path: Path, mosquitto_broker: MosquittoBroker,
        readers: list[FirmwareReader]) -> None:
    env = make_env(tmp_path, mosquitto_broker.port, range(READER, READER + 1))
    config = write_config(tmp_path / "gateway.toml", SCHOOL, mosquitto_broker.port)
    gw = GatewayProcess(config, tmp_path / "gateway.log")
    try:
        await asyncio.to_thread(gw.start)
        r = new_reader(env, tmp_path, mosquitto_broker.port, config_batch_max_records=16)
        readers.append(r)
        r.start()
        total = len(r.queue_taps(2000))
        await eventually(lambda: len(stored(env)) >= 300, 20, "the drain under way",
                         describe(env, r))
        await asyncio.to_thread(gw.kill9)
        on_disk = set(stored(env))
        assert len(on_disk) < total, "the backlog drained before the kill"
        # Every record the reader let go of was acknowledged after a durable commit.
        boot, last = r.app.last_ack if r.app else (0, 0)
        assert all((boot, s) in on_disk for s in range(1, last + 1)), "acked but not stored"
        await asyncio.sleep(0.5)  # the reader keeps resending into the broker meanwhile
        await asyncio.to_thread(gw.start)
        rows = await converged(env, r, timeout=30)
        assert await asyncio.to_thread(gw.terminate) == 0
    finally:
        gw.ensure_dead()
    assert rows == sorted(rows)
    assert env.query("SELECT COUNT(*) FROM seq_gaps") == [(0,)]
