"""``make run``: a broker, the gateway and simulated readers on this machine, end to end.

Starts Mosquitto on a free loopback port, provisions N readers (fresh keys written with mode 600,
a gateway config), runs the gateway service and the readers until Ctrl-C (or ``--duration``), and
prints every record the gateway verified. One forged batch is sent first to show that a record
signed with the wrong key is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

from gateway.config import load_config
from gateway.keys import load_reader_keys, write_reader_keys
from gateway.service import GatewayService
from gateway.verify import VerifiedBatch
from protocol import card
from sim.broker import MosquittoBroker
from sim.reader import Card, SimulatedReader

SCHOOL = "demo-school"
CARDS: list[Card] = [
    (card.ISO14443A, bytes.fromhex("04a1b2c3")),
    (card.ISO14443A, bytes.fromhex("04224be2a13c80")),
    (card.EM4100, bytes.fromhex("0f002c8a91")),
    (card.WIEGAND26, bytes.fromhex("7b3039")),
    (card.ISO14443A, bytes.fromhex("3a9c5e21")),
]


def _print_batch(batch: VerifiedBatch) -> None:
    for r in batch.records:
        stamp = time.strftime("%H:%M:%S", time.localtime(r.time_s)) + f".{r.time_ms:03d}"
        clock = "đồng hồ đã đồng bộ / clock synced" if r.clock_synced else "chưa đồng bộ/unsynced"
        print(f"{stamp}  đầu đọc/reader {r.reader_id}  boot {r.boot} #{r.seq:<4} "
              f"{r.tech:<10} {r.uid.hex().upper():<14}  ✔ đã xác thực / verified ({clock})",
              flush=True)
    for bad in batch.rejected:
        print(f"    đầu đọc/reader {batch.reader_id}  #{bad.seq}  ✘ {bad.verdict}", flush=True)


def _write_config(workdir: Path, port: int, keys: dict[int, bytes]) -> Path:
    write_reader_keys(workdir / "reader-keys.toml", keys)
    config = workdir / "gateway.toml"
    config.write_text(
        f'[gateway]\nschool = "{SCHOOL}"\nkeys_file = "reader-keys.toml"\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n', encoding="utf-8")
    return config


async def _send_forged_batch(port: int, reader_id: int) -> None:
    forger = SimulatedReader(reader_id, secrets.token_bytes(32), SCHOOL, boot=99)
    async with aiomqtt.Client("127.0.0.1", port, identifier="forger") as client:
        await client.publish(forger.batch_topic, forger.batch([forger.tap(CARDS[0])]), qos=1)


async def demo(readers: int, duration: float, taps_per_s: float, workdir: Path) -> int:
    keys = {100 + i: secrets.token_bytes(32) for i in range(readers)}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with MosquittoBroker(workdir / "broker") as broker:
        print(f"Mosquitto: 127.0.0.1:{broker.port}  (thư mục làm việc / workdir {workdir})")
        config = load_config(_write_config(workdir, broker.port, keys))
        service = GatewayService(config, load_reader_keys(config.keys_file),
                                 on_batch=_print_batch)
        gateway = asyncio.create_task(service.run(stop))
        await asyncio.wait_for(service.connected.wait(), 10)
        print(f"Cổng đã kết nối / gateway connected; {readers} đầu đọc mô phỏng / simulated "
              f"readers. Ctrl-C để dừng / to stop.", flush=True)
        await _send_forged_batch(broker.port, next(iter(keys)))
        sims = [SimulatedReader(rid, key, SCHOOL) for rid, key in keys.items()]
        tasks = [asyncio.create_task(s.run("127.0.0.1", broker.port, CARDS, taps_per_s, stop))
                 for s in sims]
        if duration > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
            stop.set()
        published = sum(await asyncio.gather(*tasks))
        await asyncio.sleep(0.5)  # let the last publications arrive before the gateway stops
        await gateway
    verified = service.counters["records_verified"]
    forged = service.counters["rejected_bad_mac"]
    print(f"\nTóm tắt / summary: {published} lượt quẹt / taps published, {verified} đã xác thực / "
          f"verified, {forged} lô giả mạo bị từ chối / forged batch rejected", flush=True)
    return 0 if verified == published and verified > 0 and forged == 1 else 1


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
