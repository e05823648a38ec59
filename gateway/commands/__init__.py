"""The operator's commands; each module adds its sub-commands with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from gateway import db
from gateway.config import GatewayConfig, load_config
from gateway.outbox import OutboxError

Handler = Callable[[argparse.Namespace, GatewayConfig, sqlite3.Connection], int]


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--config FILE`` every command takes."""
    parser.add_argument("--config", type=Path, required=True, metavar="FILE",
                        help="tệp cấu hình cổng / gateway configuration (gateway.toml)")


def queue_command(handler: Handler, errors_vi: Mapping[str, str]
                  ) -> Callable[[argparse.Namespace], int]:
    """A command on a delivery queue (``outbox``, ``notify``): the configured database, which
    must exist, opened for ``handler``; a refused request (``OutboxError``) printed in both
    languages (``errors_vi``: its code in Vietnamese) with exit status 1. A bad configuration
    or database is reported by gateway/cli.py."""
    def run(args: argparse.Namespace) -> int:
        config = load_config(args.config)
        if not config.database.exists():
            print(f"Lỗi / Error: không có cơ sở dữ liệu / no database at {config.database}",
                  file=sys.stderr)
            return 1
        conn = db.connect(config.database)
        try:
            return handler(args, config, conn)
        except OutboxError as exc:
            print(f"{errors_vi.get(exc.code, 'Lỗi')} / {exc}", file=sys.stderr)
            return 1
        finally:
            conn.close()
    return run


def print_json(value: object) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Rows of text as aligned columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
