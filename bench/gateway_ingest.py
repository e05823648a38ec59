"""Gateway ingest benchmark: throughput, tap-to-ack latency and memory, through real Mosquitto.

    .venv/bin/python bench/gateway_ingest.py [--messages 20000] [--publishers 20] [--quick]

One run, loopback only, about a minute. The gateway is the real command
(``python -m gateway.cli run --config FILE``: registry, ingest with its writer thread, attendance
rules, SQLite in WAL with ``synchronous=FULL``), in its own process; readers are registered in its
database like ``attendance-gateway readers add`` does. Publishers are paho clients in two processes
(one client per reader, 100 readers), sending pre-signed batches at QoS 1 as fast as the broker
takes them.

(a) single-record messages: first a bare paho subscriber that does no work receives them (its
    rate, first to last message), then the same publishers send as many new records to a raw
    relay (a bare paho client answering each at once with an ack-shaped message, no other work),
    then to the gateway, first running the ingest alone (no attendance rules), then as deployed;
    the relay's and the gateway's rates count *acks* arriving at the readers' side, the
    gateway's each published only after the record's commit. Target: gateway >= 0.7 x bare.
    The relay shows what answering every message costs by itself: the broker carries two
    messages per record instead of one, and the answerer both receives and publishes.
(b) batched: 64-record batches; records acked per second. Target >= 20,000. Side by side: the same
    number of rows inserted straight into a fresh database with the gateway's schema and pragmas
    (``executemany``, one transaction per the gateway's mean group commit): what SQLite alone
    takes on this disk, without MQTT, verification, dedup, timestamps or rules.
(c) tap -> ack latency: 50 readers, 200 taps/s in total, each tap a one-record batch; from just
    before the publish to the ack's arrival at the reader. Target p99 <= 25 ms.
(d) resident memory of the gateway process with 100 readers connected (each sent a heartbeat and
    taps). Target <= 80 MB.

The broker holds every queued message (``max_queued_messages``) so that neither subscriber loses
any; ``--inflight`` sets Mosquitto's per-client in-flight window (the gateway acknowledges a
message to the broker only after its commit, so this window is how much it can group).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiomqtt  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402

from bench.results import Figure, add_json_argument, describe_machine, write  # noqa: E402
from gateway import db  # noqa: E402
from gateway.registry import Registry  # noqa: E402
from protocol import construct_codec, topics  # noqa: E402
from sim.broker import MosquittoBroker, free_port  # noqa: E402
from sim.reader import SimulatedReader  # noqa: E402

SCHOOL = "bench-school"
CARD = (2, bytes.fromhex("04a1b2c3"))
Job = tuple[int, list[bytes]]  # reader id, payloads to publish in order


# -- processes ---------------------------------------------------------------------------------


def _publisher(port: int, jobs: list[Job], ready: Any, go: MpEvent) -> None:
    """Publish the jobs' payloads at QoS 1, interleaving readers; return when all are PUBACKed."""
    clients = []
    for reader_id, _ in jobs:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{reader_id}")
        client.max_queued_messages_set(0)
        client.connect("127.0.0.1", port, keepalive=60)
        client.loop_start()
        clients.append(client)
    ready.put(len(clients))
    go.wait()
    infos = []
    longest = max(len(p) for _, p in jobs)
    for i in range(longest):
        for client, (reader_id, payloads) in zip(clients, jobs, strict=True):
            if i < len(payloads):
                topic = topics.topic(SCHOOL, reader_id, "up", "batch")
                infos.append(client.publish(topic, payloads[i], qos=1))
    for info in infos:
        info.wait_for_publish(120)
    for client in clients:
        client.disconnect()
        client.loop_stop()


def _counter(port: int, topic_filter: str, expected: int, ready: Any, result: Any) -> None:
    """Count messages on ``topic_filter`` (a subscriber that does no other work)."""
    got = 0
    first = last = 0.0
    done = threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        nonlocal got, first, last
        now = time.perf_counter()
        if got == 0:
            first = now
        got += 1
        last = now
        if got >= expected:
            done.set()

    def on_subscribe(*args: Any) -> None:
        ready.put(1)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"count-{os.getpid()}")
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.connect("127.0.0.1", port, keepalive=60)
    client.subscribe(topic_filter, qos=1)
    client.loop_start()
    done.wait(180)
    client.disconnect()
    client.loop_stop()
    result.put((got, first, last))


def relay(port: int, ready: Any) -> None:
    """A raw relay: answer each batch at once with its first 18 bytes on the reader's
    ``down/ack`` at QoS 1 (where an ack carries the reader id and sequence), doing no other
    work. What any answerer costs the broker and the clients: the floor under the gateway."""

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        reader_id = int.from_bytes(message.payload[2:6], "big")
        client.publish(topics.topic(SCHOOL, reader_id, "down", "ack"), message.payload[:18],
                       qos=1)

    def on_subscribe(*args: Any) -> None:
        ready.put(True)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="relay")
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.connect("127.0.0.1", port)
    client.subscribe(f"att/v1/{SCHOOL}/+/up/batch", qos=1)
    client.loop_forever()


@contextlib.contextmanager
def relaying(port: int) -> Iterator[None]:
    """:func:`relay` in a process of its own while the block runs."""
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    process = ctx.Process(target=relay, args=(port, ready), daemon=True)
    process.start()
    try:
        ready.get(timeout=30)
        yield
    finally:
        process.terminate()
        process.join(10)


def _publish_all(port: int, jobs: list[Job], processes: int = 2) -> None:
    go = mp.Event()
    ready: Any = mp.Queue()
    procs = [mp.Process(target=_publisher, args=(port, jobs[i::processes], ready, go))
             for i in range(processes)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    go.set()
    for p in procs:
        p.join(180)


def _count_while_publishing(port: int, topic_filter: str, jobs: list[Job],
                            expected: int) -> tuple[int, float]:
    ready: Any = mp.Queue()
    result: Any = mp.Queue()
    counter = mp.Process(target=_counter, args=(port, topic_filter, expected, ready, result))
    counter.start()
    ready.get(timeout=30)
    _publish_all(port, jobs)
    got, first, last = result.get(timeout=200)
    counter.join(10)
    return got, got / (last - first) if last > first else 0.0


# -- the gateway -------------------------------------------------------------------------------


class Gateway:
    def __init__(self, workdir: Path, port: int, readers: int) -> None:
        self.metrics_port = free_port()
        self.config = workdir / "gateway.toml"
        self.config.write_text(
            f'[gateway]\nschool = "{SCHOOL}"\ndatabase = "gateway.db"\n'
            f'master_key_file = "master.key"\n\n[mqtt]\nport = {port}\n\n'
            f'[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n\n'
            # as deployed (hardware/gateway/gateway.toml): the dashboard runs, and costs memory
            f'[dashboard]\nlisten = "127.0.0.1:{free_port()}"\n', encoding="utf-8")
        conn = db.connect(workdir / "gateway.db")
        registry = Registry.open(conn, workdir / "master.key")
        self.keys = {rid: registry.register(rid, f"gate {rid}", "main").key
                     for rid in range(1, readers + 1)}
        conn.close()
        self.log = workdir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, rules: bool = True) -> None:
        """The gateway command; ``rules=False``: the same service without the attendance rules."""
        command = [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config),
                   "--log-level", "warning"]
        if not rules:
            command = [sys.executable, "-c", _INGEST_ONLY, str(self.config)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=out)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if "attendance_mqtt_connected 1.0" in self.scrape():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"gateway did not connect: {self.log.read_text()[-2000:]}")

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text: str = response.read().decode()
            return text

    def metric(self, name: str) -> float:
        match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", self.scrape(), re.M)
        return float(match[1]) if match else 0.0

    def rss_mb(self) -> tuple[float, float]:
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status)[1])  # type: ignore[index]
        peak = int(re.search(r"VmHWM:\s+(\d+)", status)[1])  # type: ignore[index]
        return rss / 1024, peak / 1024

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


_INGEST_ONLY = """
import asyncio, signal, sys
from pathlib import Path
from gateway.commands.run import run
from gateway.config import load_config
from gateway.logs import setup_logging
setup_logging("warning")
async def main():
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await run(load_config(Path(sys.argv[1])), stop, with_rules=False)
asyncio.run(main())
"""


class Readers:
    """Signed payloads for every registered reader, continuing their sequences across phases."""

    def __init__(self, keys: dict[int, bytes]) -> None:
        self.sims = {rid: SimulatedReader(rid, key, SCHOOL) for rid, key in keys.items()}

    def jobs(self, reader_ids: list[int], per_reader: int, records: int) -> list[Job]:
        return [(rid, [self.sims[rid].batch([self.sims[rid].tap(CARD) for _ in range(records)])
                       for _ in range(per_reader)]) for rid in reader_ids]


# -- (c) and (d): readers in this process ------------------------------------------------------


async def ack_latencies(port: int, readers: Readers, reader_ids: list[int], rate: float,
                   seconds: float) -> list[float]:
    sent: dict[tuple[int, int], float] = {}
    latencies: list[float] = []
    stop = asyncio.Event()

    async def reader(rid: int, client: aiomqtt.Client) -> None:
        sim = readers.sims[rid]
        topic = topics.topic(SCHOOL, rid, "up", "batch")
        interval = len(reader_ids) / rate
        await asyncio.sleep(interval * reader_ids.index(rid) / len(reader_ids))
        next_at = asyncio.get_running_loop().time()
        while not stop.is_set():
            payload = sim.batch([sim.tap(CARD)])
            sent[(rid, sim.seq)] = time.perf_counter()
            await client.publish(topic, payload, qos=1)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - asyncio.get_running_loop().time()))

    async def listen(client: aiomqtt.Client) -> None:
        async for message in client.messages:
            now = time.perf_counter()
            payload = message.payload
            assert isinstance(payload, bytes)
            rid = int(payload[2:6].hex(), 16)
            seq = int.from_bytes(payload[14:18], "big")
            start = sent.pop((rid, seq), None)
            if start is not None:
                latencies.append(now - start)

    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for rid in reader_ids:
            client = aiomqtt.Client("127.0.0.1", port, identifier=f"reader-{rid}",
                                    clean_session=True)
            await stack.enter_async_context(client)
            await client.subscribe(topics.reader_filter(SCHOOL, rid), qos=1)
            clients[rid] = client
        listeners = [asyncio.create_task(listen(c)) for c in clients.values()]
        tasks = [asyncio.create_task(reader(rid, c)) for rid, c in clients.items()]
        await asyncio.sleep(1.0)  # warm-up, not measured
        latencies.clear()
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
        await asyncio.sleep(0.5)
        for task in listeners:
            task.cancel()
    return latencies


async def _connected(port: int, readers: Readers, gateway: Gateway, count: int) -> tuple[
        float, float]:
    async with contextlib.AsyncExitStack() as stack:
        for rid in list(readers.sims)[:count]:
            sim = readers.sims[rid]
            client = aiomqtt.Client("127.0.0.1", port, identifier=f"reader-{rid}",
                                    clean_session=True)
            await stack.enter_async_context(client)
            await client.subscribe(topics.reader_filter(SCHOOL, rid), qos=1)
            status = construct_codec.encode("heartbeat", {
                "reader_id": rid, "boot": 1, "state": "online", "faults": [],
                "fw_version": "1.0.0", "link": "wifi", "rssi_dbm": -60, "clock_synced": True,
                "time_s": int(time.time()), "uptime_s": 3600, "free_heap": 40_000,
                "queue_depth": 0, "oldest_unsent_age_s": 0, "dropped": 0, "last_ack_boot": 0,
                "last_ack_seq": 0}, gateway.keys[rid])
            await client.publish(topics.topic(SCHOOL, rid, "up", "status"), status, qos=1)
            for _ in range(3):
                await client.publish(topics.topic(SCHOOL, rid, "up", "batch"),
                                     sim.batch([sim.tap(CARD)]), qos=1)
        await asyncio.sleep(3)
        return gateway.rss_mb()


# -- main --------------------------------------------------------------------------------------


def _raw_sqlite(workdir: Path, readers: int, rows: int, group: int) -> float:
    """Rows/s of plain ``executemany`` inserts into the gateway's schema, ``group`` rows per
    transaction (the comparison of (b))."""
    conn = db.connect(workdir / "raw.db")
    registry = Registry.open(conn, workdir / "raw.key")
    key_ids = {rid: registry.register(rid, f"raw {rid}", "main").key_id
               for rid in range(1, readers + 1)}
    raw = bytes(40)
    now = int(time.time() * 1000)
    records = [(rid, 1, i, "iso14443a:04a1b2c3", now, 1, i, now, now, "reader", key_ids[rid], raw)
               for i in range(rows // readers + 1) for rid in key_ids][:rows]
    insert = ("INSERT INTO scans (reader_id, boot, seq, card, reader_time_ms, clock_synced, "
              "ticks_ms, received_ms, at_ms, time_source, key_id, raw) "
              "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    began = time.perf_counter()
    for first in range(0, len(records), group):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(insert, records[first:first + group])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - began
    conn.close()
    return len(records) / elapsed


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@contextlib.contextmanager
def bench_broker(workdir: Path, inflight: int) -> Iterator[MosquittoBroker]:
    lines = ["max_queued_messages 1000000", f"max_inflight_messages {inflight}"]
    with MosquittoBroker(workdir / "broker", extra_lines=lines) as broker:
        yield broker


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="(a) messages per side")
    parser.add_argument("--publishers", type=int, default=100,
                        help="(a)/(b) readers publishing (each stays under the gateway's "
                             "flood limit of 256 messages waiting)")
    parser.add_argument("--batches", type=int, default=1_000, help="(b) 64-record batches")
    parser.add_argument("--latency-s", type=float, default=15.0, help="(c) measured seconds")
    parser.add_argument("--inflight", type=int, default=100,
                        help="Mosquitto max_inflight_messages (default 100)")
    parser.add_argument("--quick", action="store_true", help="a fifth of everything")
    add_json_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.messages //= 5
        args.batches //= 5
        args.latency_s /= 5
    per_reader = args.messages // args.publishers
    n = per_reader * args.publishers
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp, \
            bench_broker(Path(tmp), args.inflight) as broker:
        workdir = Path(tmp)
        gateway = Gateway(workdir, broker.port, readers=100)
        try:
            readers = Readers(gateway.keys)
            pubs = list(range(1, args.publishers + 1))
            print(f"Mosquitto 127.0.0.1:{broker.port}, max_inflight_messages {args.inflight}; "
                  f"{describe_machine()}", flush=True)

            # (a) bare subscriber, then the gateway (ingest alone, then as deployed)
            def single(label: str) -> float:
                topic = topics.gateway_filter(SCHOOL) if label == "bare" \
                    else f"att/v1/{SCHOOL}/+/down/ack"
                got, rate = _count_while_publishing(broker.port, topic,
                                                    readers.jobs(pubs, per_reader, 1), n)
                assert got == n, f"{label}: {got} of {n}"
                return rate

            bare = single("bare")
            with relaying(broker.port):
                relayed = single("relay")
            gateway.start(rules=False)
            ingest_only = single("ingest only")
            gateway.stop()
            gateway.start()
            deployed = single("gateway")
            groups = (gateway.metric("attendance_group_commit_messages_sum"),
                      gateway.metric("attendance_group_commit_messages_count"))
            group_records = gateway.metric("attendance_group_commit_records_sum")
            group_count = gateway.metric("attendance_group_commit_records_count")
            print(f"(a) single-record QoS 1, {args.publishers} publishers, {n} messages each run:\n"
                  f"    bare paho subscriber   {bare:8,.0f} msg/s\n"
                  f"    raw relay (no work)    {relayed:8,.0f} acks/s          "
                  f"ratio {relayed / bare:.2f}\n"
                  f"    gateway, ingest only   {ingest_only:8,.0f} records acked/s  "
                  f"ratio {ingest_only / bare:.2f}\n"
                  f"    gateway with rules     {deployed:8,.0f} records acked/s  "
                  f"ratio {deployed / bare:.2f} (target >= 0.7; mean group commit "
                  f"{groups[0] / max(1.0, groups[1]):.0f} messages)\n"
                  f"    gateway / raw relay    {deployed / relayed:8.2f}", flush=True)

            # (b) batched
            per = max(1, args.batches // args.publishers)
            stored_before = gateway.metric("attendance_records_stored_total")
            got, batches_s = _count_while_publishing(broker.port, f"att/v1/{SCHOOL}/+/down/ack",
                                                     readers.jobs(pubs, per, 64), per * len(pubs))
            assert got == per * len(pubs)
            stored = gateway.metric("attendance_records_stored_total") - stored_before
            assert stored == per * len(pubs) * 64, stored
            group = round((gateway.metric("attendance_group_commit_records_sum") - group_records)
                          / max(1.0, gateway.metric("attendance_group_commit_records_count")
                                - group_count))
            raw_rows_s = _raw_sqlite(workdir, len(pubs), int(stored), max(1, group))
            print(f"(b) batches of 64 records: {batches_s * 64:,.0f} records/s "
                  f"({batches_s:,.0f} batches/s; target >= 20,000 records/s)\n"
                  f"    raw SQLite executemany, same rows, {group} per transaction: "
                  f"{raw_rows_s:,.0f} rows/s (gateway {batches_s * 64 / raw_rows_s:.2f}x)",
                  flush=True)

            # (c) tap -> ack latency
            lat = asyncio.run(ack_latencies(broker.port, readers, list(range(21, 71)), 200.0,
                                       args.latency_s))
            p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
            print(f"(c) tap -> ack, 50 readers, 200 taps/s, {len(lat)} taps: p50 {p50:.1f} ms, "
                  f"p99 {p99:.1f} ms, max {max(lat) * 1000:.1f} ms, mean "
                  f"{statistics.mean(lat) * 1000:.1f} ms (target p99 <= 25 ms)", flush=True)

            # (d) memory with 100 readers connected, in a gateway started afresh
            _, load_peak = gateway.rss_mb()
            gateway.stop()
            gateway.start()
            rss, peak = asyncio.run(_connected(broker.port, readers, gateway, 100))
            print(f"(d) gateway with 100 readers connected: RSS {rss:.1f} MB, peak {peak:.1f} MB "
                  f"(target <= 80 MB); the gateway of (a)-(c) peaked at {load_peak:.1f} MB",
                  flush=True)
            write(args.json, "gateway_ingest", [
                Figure("ingest_ratio", "Gateway ingest, single-record QoS 1, vs bare paho "
                       "subscriber", deployed / bare, "x", ">= 0.7x", deployed / bare >= 0.7,
                       f"gateway {deployed:,.0f} records acked/s, bare {bare:,.0f} msg/s, "
                       f"ingest alone {ingest_only / bare:.2f}x; a raw relay that does no work "
                       f"{relayed / bare:.2f}x, so the gateway reaches {deployed / relayed:.2f}x "
                       f"of the relay; {n:,} messages per run"),
                Figure("batched_rate", "Gateway ingest, 64-record batches", batches_s * 64,
                       "records/s", ">= 20,000 records/s", batches_s * 64 >= 20_000,
                       f"raw SQLite executemany of the same rows: {raw_rows_s:,.0f} rows/s "
                       f"(gateway {batches_s * 64 / raw_rows_s:.2f}x)"),
                Figure("ack_p99", "Tap -> ack p99, 50 readers, 200 taps/s", p99, "ms",
                       "<= 25 ms", p99 <= 25, f"p50 {p50:.1f} ms, max {max(lat) * 1000:.1f} ms, "
                       f"{len(lat):,} taps"),
                Figure("rss_100", "Gateway resident memory, 100 readers connected", rss, "MB",
                       "<= 80 MB", rss <= 80, f"peak {peak:.1f} MB; under load (a)-(c) "
                       f"{load_peak:.1f} MB"),
            ], comparisons={"bare_paho_msg_s": bare, "gateway_acked_s": deployed,
                            "relay_acked_s": relayed,
                            "ingest_only_acked_s": ingest_only, "raw_sqlite_rows_s": raw_rows_s,
                            "gateway_batched_records_s": batches_s * 64})
        finally:
            gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
