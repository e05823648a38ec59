"""Tap -> ack latency against load: the gateway beside a raw Mosquitto relay, in one run.

    .venv/bin/python bench/latency.py [--rates 50,100,200,400,800] [--seconds 8] [--json FILE]

50 readers (paho clients in this process, as in bench/gateway_ingest.py (c)) send one-record
batches at QoS 1 at each total rate in turn; the latency of a tap is from just before its publish
to its ack's arrival at the reader. Two answerers, each in its own process, on the same broker:

* **relay**: ``bench.gateway_ingest.relay``, a bare paho client that answers every batch at once
  with an ack-shaped message on the reader's ``down/ack`` (QoS 1), doing no other work: what
  the broker and the clients alone cost;
* **gateway**: the real gateway command (verify, dedup, timestamps, rules, SQLite commit with
  ``synchronous=FULL``, then the signed ack).

The DESIGN.md target is the gateway's p99 <= 25 ms at 200 taps/s. ``make bench`` plots p50, p90
and p99 of both against the rate (docs/bench/latency.png).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_ingest import (  # noqa: E402
    Gateway,
    Readers,
    ack_latencies,
    bench_broker,
    percentile,
    relaying,
)
from bench.results import Figure, add_json_argument, describe_machine, write  # noqa: E402

READERS = list(range(1, 51))
PERCENTILES = (50, 90, 99)


def _sweep(port: int, readers: Readers, rates: list[int], seconds: float,
           label: str) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for rate in rates:
        lat = asyncio.run(ack_latencies(port, readers, READERS, float(rate), seconds))
        row = {f"p{p}": percentile(lat, p) * 1000 for p in PERCENTILES}
        row["taps"] = len(lat)
        out[rate] = row
        print(f"  {label:<8} {rate:>5} taps/s  {len(lat):>6} taps  " + "  ".join(
            f"p{p} {row[f'p{p}']:6.1f} ms" for p in PERCENTILES), flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="50,100,200,400,800",
                        help="total taps/s from the 50 readers, comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per rate")
    add_json_argument(parser)
    args = parser.parse_args()
    try:
        rates = [int(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        parser.error("--rates: integers separated by commas")
    if not rates or min(rates) < 1 or args.seconds <= 0:
        parser.error("--rates and --seconds must be positive")
    print(f"tap -> ack latency, 50 readers, one-record batches at QoS 1; {describe_machine()}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp, \
            bench_broker(Path(tmp), 100) as broker:
        gateway = Gateway(Path(tmp), broker.port, readers=len(READERS))
        readers = Readers(gateway.keys)
        with relaying(broker.port):
            relayed = _sweep(broker.port, readers, rates, args.seconds, "relay")
        try:
            gateway.start()
            answered = _sweep(broker.port, readers, rates, args.seconds, "gateway")
        finally:
            gateway.stop()
    figures = [Figure(f"gateway_p99_{rate}", f"Tap -> ack p99 at {rate} taps/s, gateway",
                      answered[rate]["p99"], "ms", "<= 25 ms" if rate == 200 else "",
                      answered[rate]["p99"] <= 25 if rate == 200 else None,
                      f"raw Mosquitto relay p99 {relayed[rate]['p99']:.1f} ms; gateway p50 "
                      f"{answered[rate]['p50']:.1f} ms")
               for rate in rates]
    write(args.json, "latency", figures, sweep={"rates": rates, "relay": relayed,
                                                 "gateway": answered})
    return 0


if __name__ == "__main__":
    sys.exit(main())
