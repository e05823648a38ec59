"""The operator's commands; each module adds its sub-commands with ``register(subparsers)``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--config FILE`` every command takes."""
    parser.add_argument("--config", type=Path, required=True, metavar="FILE",
                        help="tệp cấu hình cổng / gateway configuration (gateway.toml)")
