"""``attendance-gateway``: the operator's command (Vietnamese and English).

Sub-commands live in ``gateway/commands/``: each module's ``register(subparsers)`` adds its own
and sets ``func`` (taking the parsed arguments, returning the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from gateway import commands
from gateway.config import ConfigError
from gateway.db import DatabaseError
from gateway.logs import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attendance-gateway",
        description="Cổng điểm danh của nhà trường / School attendance gateway",
    )
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"],
                        help="mức ghi nhật ký / log level (default: warning; run: info)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        importlib.import_module(f"{commands.__name__}.{module}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"Lỗi cấu hình / Configuration error: {exc}", file=sys.stderr)
        return 2
    except DatabaseError as exc:
        print(f"Lỗi cơ sở dữ liệu / Database error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
