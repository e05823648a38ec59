"""Loading the golden vectors and comparing codec output with them (CPython side)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

VECTORS_PATH = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "vectors.json"
BYTES_FIELDS = ("uid", "mac", "payload")


@cache
def vectors() -> dict[str, Any]:
    return json.loads(VECTORS_PATH.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def key(name: str | None) -> bytes | None:
    return None if name is None else bytes.fromhex(vectors()["keys"][name])


def hexed(value: Any) -> Any:
    """Codec output in the vectors' JSON form (bytes as lowercase hex)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {k: hexed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [hexed(v) for v in value]
    return value


def unhexed(fields: dict[str, Any]) -> dict[str, Any]:
    """The vectors' JSON fields as codec input (hex back to bytes)."""
    out = dict(fields)
    for name in BYTES_FIELDS:
        if name in out:
            out[name] = bytes.fromhex(out[name])
    if "records" in out:
        out["records"] = [unhexed(r) for r in out["records"]]
    return out


def case_id(case: dict[str, Any]) -> str:
    return str(case["name"])
