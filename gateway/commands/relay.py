"""``attendance-gateway relay``: the gateway's key for the province relay, and the check the
province runs on a batch (docs/forwarding.md, "Province relay").

- ``relay public-key --config FILE [--target NAME]`` prints the gateway's Ed25519 public key (PEM
  and raw base64) and its key id, creating and sealing the key pair if there is none yet; the
  private key is never printed.
- ``relay verify-batch FILE --public-key KEY`` verifies one signed batch (the body of an HTTPS
  POST or an MQTT payload, saved to a file) against the school's public key and prints its
  events. Exit status 0: the batch verifies; 1: it does not (format, signature, other key);
  2: the file or the key cannot be read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from gateway.commands import add_config_argument
from gateway.config import ConfigError, load_config
from gateway.forwarders import ForwardTarget
from gateway.forwarders.relay import (
    DEFAULT_KEY_FILE,
    BatchError,
    VerifiedBatch,
    load_public_key,
    load_signing_key,
    parse_settings,
    verify_batch,
)
from gateway.keystore import KeystoreError

_VI = {
    "too_large": "Gói quá lớn",
    "malformed": "Gói sai định dạng",
    "unsupported_format": "Định dạng gói không được hỗ trợ",
    "not_canonical": "Gói không ở dạng chuẩn",
    "unknown_key": "Khóa chưa được đăng ký",
    "wrong_key": "Gói được ký bằng khóa khác",
    "bad_signature": "Chữ ký không hợp lệ",
}
_EN = {
    "too_large": "batch too large",
    "malformed": "malformed batch",
    "unsupported_format": "unsupported batch format",
    "not_canonical": "batch not in canonical form",
    "unknown_key": "unknown key",
    "wrong_key": "signed with another key",
    "bad_signature": "invalid signature",
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "relay", help="khóa ký và gói gửi Sở / the province relay: signing key and batches",
        description="Chuyển tiếp điểm danh lên Sở (gói có chữ ký Ed25519) / the province relay "
                    "(Ed25519-signed batches)")
    actions = parser.add_subparsers(dest="relay_command", required=True, metavar="ACTION")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true",
                         help="in JSON cho máy đọc / print JSON for tools")

    public = actions.add_parser(
        "public-key", parents=[as_json],
        help="in khóa công khai để Sở đăng ký (tạo khóa nếu chưa có) / print the public key "
             "for the province to register (creates the key pair if needed)")
    add_config_argument(public)
    public.add_argument("--target", metavar="NAME",
                        help="tên [[forward]] kiểu relay / the relay [[forward]]'s name (when "
                             "there are several)")
    public.set_defaults(func=_public_key)

    verify = actions.add_parser(
        "verify-batch", parents=[as_json],
        help="kiểm tra chữ ký và định dạng một gói / verify a batch's signature and format",
        description="Kiểm tra một gói (thân POST hoặc payload MQTT đã lưu thành tệp) với khóa "
                    "công khai của trường / verify one batch (an HTTPS body or MQTT payload "
                    "saved to a file) against the school's public key. Exit 0 valid, 1 invalid, "
                    "2 unreadable.")
    verify.add_argument("file", metavar="FILE", help="tệp gói / the batch file ('-': stdin)")
    verify.add_argument("--public-key", required=True, metavar="KEY",
                        help="khóa công khai: tệp PEM, hoặc base64 32 byte / the public key: a "
                             "PEM file, or the raw 32 bytes in base64 (inline or in a file)")
    verify.set_defaults(func=_verify_batch)


# --- public-key ------------------------------------------------------------------------------

def _relay_target(args: argparse.Namespace, targets: tuple[ForwardTarget, ...]
                  ) -> ForwardTarget | None:
    relays = [t for t in targets if t.type == "relay"]
    if args.target is not None:
        chosen = [t for t in relays if t.name == args.target]
        if not chosen:
            names = ", ".join(t.name for t in relays) or "(none)"
            raise ConfigError(args.config, f"forward.{args.target}",
                              f"is not a [[forward]] of type \"relay\" (those are: {names})")
        return chosen[0]
    if len(relays) > 1:
        raise ConfigError(args.config, "forward", "several relay targets: choose one with "
                                                  "--target")
    return relays[0] if relays else None


def _public_key(args: argparse.Namespace) -> int:
    config = load_config(args.config)  # ConfigError: reported by gateway/cli.py
    target = _relay_target(args, config.forward)
    if target is not None:
        settings = parse_settings(target, config_path=args.config,
                                  master_key_file=config.master_key_file, school=config.school)
        key_file, master, school_id = (settings.signing_key_file, settings.master_key_file,
                                       settings.school_id)
    else:  # no relay configured yet: the key the default relay settings would use
        key_file = config.master_key_file.parent / DEFAULT_KEY_FILE
        master, school_id = config.master_key_file, config.school
    try:
        key = load_signing_key(key_file, master, create=True)
    except KeystoreError as exc:
        print(f"Lỗi khóa / Key error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"target": target.name if target else None, "school_id": school_id,
                          "key_id": key.key_id, "public_key_base64": key.public_b64,
                          "public_key_pem": key.public_pem, "key_file": str(key_file)},
                         ensure_ascii=False, indent=2))
        return 0
    name = f"“{target.name}”" if target else "(chưa cấu hình / not configured yet)"
    print(f"Khóa công khai của cổng / gateway public key — relay {name}, "
          f"trường / school {school_id}")
    print(f"  key id        {key.key_id}")
    print(f"  raw (base64)  {key.public_b64}")
    print(key.public_pem, end="")
    print("Gửi khóa này cho Sở GD&ĐT để đăng ký cho trường / give this key to the province to "
          "register for the school")
    return 0


# --- verify-batch ----------------------------------------------------------------------------

def _read_key(text: str) -> str:
    path = Path(text)
    try:
        if path.is_file():
            return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} cannot be read: {exc}") from None
    return text


def _verify_batch(args: argparse.Namespace) -> int:
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        print(f"Không đọc được tệp / cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        public = load_public_key(_read_key(args.public_key))
    except ValueError as exc:
        print(f"Khóa công khai không dùng được / unusable public key: {exc}", file=sys.stderr)
        return 2
    try:
        batch = verify_batch(data, public)
    except BatchError as exc:
        if args.json:
            print(json.dumps({"valid": False, "error": exc.code, "message": str(exc)},
                             ensure_ascii=False, indent=2))
        print(f"KHÔNG HỢP LỆ / INVALID — {_VI[exc.code]} / {_EN[exc.code]}: {exc}",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"valid": True, **_batch_json(batch)}, ensure_ascii=False, indent=2))
        return 0
    print(f"HỢP LỆ / VALID — trường / school {batch.school_id}, key id {batch.key_id}")
    print(f"  batch id  {batch.batch_id}")
    print(f"  tạo lúc / created  {_utc(batch.created_ms)}")
    print(f"  sự kiện / events   {len(batch.events)}")
    if batch.events:
        _print_events(batch)
    return 0


def _utc(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _batch_json(batch: VerifiedBatch) -> dict[str, Any]:
    return {"school_id": batch.school_id, "key_id": batch.key_id, "batch_id": batch.batch_id,
            "created_ms": batch.created_ms, "events": list(batch.events)}


def _print_events(batch: VerifiedBatch) -> None:
    rows = [("KHÓA / IDEMPOTENCY KEY", "THAY ĐỔI / CHANGE", "LOẠI / KIND", "NGÀY / DATE",
             "BUỔI / SESSION", "LÚC / AT (UTC)", "HỌC SINH / STUDENT", "LỚP / CLASS",
             "CỔNG / GATE")]
    for e in batch.events:
        rows.append((str(e["idempotency_key"]), str(e["change"]), str(e["kind"]),
                     str(e["school_date"]), str(e["session"]), _utc(int(e["at_ms"])),
                     e["student_id"] or "-", e["class_id"] or "-", e["gate"] or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
