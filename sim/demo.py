"""``make run``: a broker, the gateway and simulated readers on this machine, end to end.

Starts Mosquitto on a free loopback port, registers N readers in a fresh gateway database (keys
sealed under a new master key, as ``attendance-gateway readers add`` does), runs the gateway's
ingest and MQTT session, and runs the readers -- the real reader firmware under CPython
(``sim/firmware_reader.py``) with virtual card taps -- until Ctrl-C (or ``--duration``). Every
scan the gateway durably stores is printed; the gateway acknowledges it to its reader. One
forged batch is sent first to show that a record signed with the wrong key is refused and
quarantined.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import signal
import sqlite3
import sys
import tempfile
import time
import zoneinfo
from pathlib import Path

import aiomqtt

from gateway import db
from gateway.broker_config import write_broker_files
from gateway.config import GatewayConfig, MqttConfig
from gateway.ingest import Ingest
from gateway.metrics import GatewayMetrics, MetricsServer
from gateway.registry import Registry
from gateway.service import GatewayService
from gateway.types import StoredScan
from protocol import card
from sim.broker import MosquittoBroker, free_port
from sim.firmware_reader import FirmwareReader, provision
from sim.hardware import Card
from sim.reader import SimulatedReader

SCHOOL = "demo-school"
CARDS: list[Card] = [
    (card.ISO14443A, bytes.fromhex("04a1b2c3")),
    (card.ISO14443A, bytes.fromhex("04224be2a13c80")),
    (card.EM4100, bytes.fromhex("0f002c8a91")),
    (card.WIEGAND26, bytes.fromhex("7b3039")),
    (card.ISO14443A, bytes.fromhex("3a9c5e21")),
]
_SOURCES = {"reader": "giờ đầu đọc / reader clock", "corrected": "đã hiệu chỉnh / corrected",
            "gateway": "giờ cổng / gateway time"}


def _print_scans(conn: sqlite3.Connection, scans: list[StoredScan]) -> None:
    """The rules hook's place: runs inside the ingest's transaction, before the ack."""
    for s in scans:
        stamp = time.strftime("%H:%M:%S", time.localtime(s.at_ms / 1000)) + f".{s.at_ms % 1000:03d}"
        print(f"{stamp}  đầu đọc/reader {s.reader_id}  cổng/gate {s.gate:<6} {s.card:<26} "
              f"✔ đã lưu / stored ({_SOURCES[s.time_source]})", flush=True)


async def _send_forged_batch(port: int, reader_id: int, password: str) -> None:
    """A device that has a reader's MQTT password (the broker lets it in) but not its key."""
    forger = SimulatedReader(reader_id, secrets.token_bytes(32), SCHOOL, boot=99)
    async with aiomqtt.Client("127.0.0.1", port, identifier="forger", username=str(reader_id),
                              password=password) as client:
        await client.publish(forger.batch_topic, forger.batch([forger.tap(CARDS[0])]), qos=1)


async def _tap_randomly(reader: FirmwareReader, taps_per_s: float, stop: asyncio.Event) -> None:
    """Students at one gate: a random card now and then (repeats within the debounce window
    are folded by the firmware, as at a real gate)."""
    rng = random.Random(reader.root.name)
    while not stop.is_set():
        reader.tap(rng.choice(CARDS))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.expovariate(taps_per_s))


async def demo(readers: int, duration: float, taps_per_s: float, workdir: Path) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    conn = db.connect(workdir / "gateway.db")
    registry = Registry.open(conn, workdir / "master.key")
    creds = [registry.register(100 + i, f"Cổng {i + 1}", f"gate-{i + 1}") for i in range(readers)]
    gateway_password = secrets.token_urlsafe(24)
    files = write_broker_files(registry, school=SCHOOL, gateway_username="gateway",
                               gateway_password=gateway_password,
                               password_file=workdir / "mosquitto.passwd",
                               acl_file=workdir / "mosquitto.acl")
    with MosquittoBroker(workdir / "broker", allow_anonymous=False,
                         password_file=files.password_file, acl_file=files.acl_file) as broker:
        print(f"Mosquitto: 127.0.0.1:{broker.port}, tài khoản và ACL riêng từng đầu đọc / "
              f"per-reader accounts and ACL  (thư mục làm việc / workdir {workdir})")
        metrics_listen = f"127.0.0.1:{free_port()}"
        config = GatewayConfig(SCHOOL, workdir / "gateway.db", workdir / "master.key",
                               zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh"),
                               mqtt=MqttConfig(port=broker.port, username="gateway",
                                               password=gateway_password),
                               metrics_listen=metrics_listen)
        metrics = GatewayMetrics()
        server = MetricsServer(metrics, metrics_listen)
        ingest = Ingest(conn, registry.key_ring(), config=config.ingest, metrics=metrics,
                        on_scans=_print_scans)
        ingest.start()
        service = GatewayService(config, ingest)
        gateway_stop = asyncio.Event()
        gateway = asyncio.create_task(service.run(gateway_stop))
        await asyncio.wait_for(service.connected.wait(), 10)
        print(f"Cổng đã kết nối / gateway connected; {readers} đầu đọc mô phỏng / simulated "
              f"readers; số liệu / metrics http://{metrics_listen}/metrics. "
              f"Ctrl-C để dừng / to stop.", flush=True)
        await _send_forged_batch(broker.port, creds[0].reader_id, creds[0].mqtt_password)
        fleet = []
        for c in creds:
            r = FirmwareReader(workdir / "readers" / str(c.reader_id))
            provision(r.root, c.reader_id, c.key, SCHOOL, host="127.0.0.1", port=broker.port,
                      password=c.mqtt_password, gate=f"gate-{c.reader_id - 99}")
            r.start()
            fleet.append(r)
        readers_stop = asyncio.Event()
        tappers = [asyncio.create_task(_tap_randomly(r, taps_per_s, readers_stop)) for r in fleet]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration if duration > 0 else None)
        readers_stop.set()
        await asyncio.gather(*tappers)
        # Let the readers drain their queues before they power off.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while any(r.queue_depth for r in fleet):
                    await asyncio.sleep(0.05)
        for r in fleet:
            await r.stop()
        made = sum(len(r.made()) for r in fleet)
        left = sum(r.queue_depth for r in fleet)
        gateway_stop.set()
        await gateway
        await ingest.close()
        server.close()
        stored = int(metrics.records_stored._value.get())
        acks = int(metrics.acks_sent._value.get())
        forged = conn.execute(
            "SELECT COUNT(*) FROM quarantine WHERE reason = 'bad_mac'").fetchone()[0]
        conn.close()
    print(f"\nTóm tắt / summary: {made} bản ghi đầu đọc đã tạo / records the readers made, "
          f"{stored} đã lưu / stored, {acks} xác nhận / acks, {left} còn trong hàng đợi / left "
          f"in reader queues, {forged} lô giả mạo bị từ chối / forged batch rejected", flush=True)
    return 0 if stored == made and left == 0 and stored > 0 and forged == 1 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.demo",
        description="Chạy thử toàn hệ thống trên máy này / run the whole system on this machine")
    parser.add_argument("--readers", type=int, default=3,
                        help="số đầu đọc mô phỏng / simulated readers (default 3)")
    parser.add_argument("--duration", type=float, default=0,
                        help="dừng sau N giây, 0 = đến khi Ctrl-C / stop after N s, 0 = Ctrl-C")
    parser.add_argument("--rate", type=float, default=1.0,
                        help="lượt quẹt mỗi giây mỗi đầu đọc / taps per second per reader")
    args = parser.parse_args(argv)
    if args.readers < 1 or args.rate <= 0:
        parser.error("--readers must be >= 1 and --rate > 0")
    with tempfile.TemporaryDirectory(prefix="attendance-demo-") as tmp:
        return asyncio.run(demo(args.readers, args.duration, args.rate, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
