"""``attendance-gateway``: the operator's command (Vietnamese and English)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from gateway.config import ConfigError, load_config
from gateway.keys import KeyFileError, load_reader_keys
from gateway.logs import setup_logging
from gateway.service import GatewayService


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attendance-gateway",
        description="Cổng điểm danh của nhà trường / School attendance gateway",
    )
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="mức ghi nhật ký / log level (default: info)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run", help="chạy cổng: nhận và xác thực lượt quẹt thẻ / run the gateway: ingest and "
        "verify card taps")
    run.add_argument("--config", type=Path, required=True,
                     help="tệp cấu hình TOML / TOML configuration file")
    return parser


async def _run(config_path: Path) -> int:
    config = load_config(config_path)
    keys = load_reader_keys(config.keys_file)
    service = GatewayService(config, keys)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.run(stop)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return asyncio.run(_run(args.config))
    except (ConfigError, KeyFileError) as exc:
        print(f"Lỗi cấu hình / Configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
