"""``backup``, ``restore`` and ``migrate``: the database's safety net and its upgrades
(gateway/backup.py does the work; docs/install.md tells the technician when to use which).

Exit status: 0 done, 1 refused (the gateway runs, a corrupt or too new backup, the master key does
not match, no database), 2 unusable configuration (reported by gateway/cli.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway import backup as backups
from gateway import db
from gateway.commands import add_config_argument, print_json
from gateway.config import load_config


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    make = subparsers.add_parser(
        "backup", help="sao lưu cơ sở dữ liệu (khi cổng đang chạy) / back up the database "
                       "(while the gateway runs)",
        description="Sao lưu cơ sở dữ liệu nhất quán, chỉ chủ sở hữu đọc được; giữ N bản mới "
                    "nhất. Khoá chủ KHÔNG nằm trong bản sao lưu / a consistent, private backup "
                    "of the database; the newest N are kept. The master key is NOT in it: back "
                    "it up separately, offline")
    add_config_argument(make)
    make.add_argument("--dir", type=Path, metavar="DIR",
                      help="thư mục sao lưu / backup folder (default: 'backups' beside the "
                           "database)")
    make.add_argument("--keep", type=int, default=backups.DEFAULT_KEEP, metavar="N",
                      help="số bản giữ lại / backups to keep (default: %(default)s)")
    make.add_argument("--json", action="store_true", help="in JSON cho máy / print JSON")
    make.set_defaults(func=_backup)

    restore = subparsers.add_parser(
        "restore", help="khôi phục cơ sở dữ liệu từ bản sao lưu (cổng phải dừng) / restore the "
                        "database from a backup (the gateway must be stopped)",
        description="Kiểm tra bản sao lưu, nâng cấp nếu cũ, giữ lại cơ sở dữ liệu đang dùng rồi "
                    "thay thế / checks the backup, migrates an older one, keeps the replaced "
                    "database aside, then puts the backup in place")
    restore.add_argument("file", type=Path, metavar="FILE",
                         help="tệp sao lưu / the backup file")
    add_config_argument(restore)
    restore.add_argument("--yes", action="store_true",
                         help="không hỏi lại / do not ask for confirmation")
    restore.add_argument("--service", default=backups.SERVICE, metavar="UNIT",
                         help="dịch vụ systemd của cổng, phải đang dừng / the gateway's systemd "
                              "unit, which must be stopped (default: %(default)s; '' to skip)")
    restore.set_defaults(func=_restore)

    migrate = subparsers.add_parser(
        "migrate", help="nâng cấp lược đồ cơ sở dữ liệu / apply the database migrations",
        description="Áp dụng các bước nâng cấp cơ sở dữ liệu còn thiếu (sau khi cập nhật phần "
                    "mềm) / apply the migrations this software has and the database lacks "
                    "(after an upgrade of the software)")
    add_config_argument(migrate)
    migrate.add_argument("--json", action="store_true", help="in JSON cho máy / print JSON")
    migrate.set_defaults(func=_migrate)


def _refused(exc: backups.BackupError) -> int:
    print(f"Lỗi / Error: {exc}", file=sys.stderr)
    return 1


def _backup(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    directory = args.dir or config.database.parent / "backups"
    try:
        result = backups.backup(config.database, directory, keep=args.keep)
    except backups.BackupError as exc:
        return _refused(exc)
    if args.json:
        print_json({"path": str(result.path), "size": result.size, "schema": result.schema,
                    "integrity": "ok", "removed": [str(p) for p in result.removed],
                    "master_key_included": False})
        return 0
    print(f"Đã sao lưu / Backed up: {result.path} ({result.size:,} bytes, schema "
          f"{result.schema}, integrity ok)")
    for path in result.removed:
        print(f"Đã xoá bản cũ / Removed old backup: {path}")
    print(f"Lưu ý / Note: khoá chủ {config.master_key_file} không có trong bản sao lưu, hãy giữ "
          "một bản riêng ngoại tuyến / the master key is not in the backup: keep a copy of it "
          "offline, apart from these backups")
    return 0


def _restore(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if not args.yes:
        if not sys.stdin.isatty():
            print("Lỗi / Error: thêm --yes để khôi phục không cần hỏi / add --yes to restore "
                  "without a question", file=sys.stderr)
            return 1
        answer = input(f"Thay {config.database} bằng {args.file}? / Replace {config.database} "
                       f"with {args.file}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes", "c", "có", "co"):
            print("Đã huỷ / Cancelled", file=sys.stderr)
            return 1
    try:
        result = backups.restore(args.file, config.database, config.master_key_file,
                                 unit=args.service or None)
    except backups.BackupError as exc:
        return _refused(exc)
    applied = ", ".join(result.applied) or "không có / none"
    print(f"Đã khôi phục / Restored {result.database} from {result.source} "
          f"(schema {result.from_schema} → {result.schema}; migrations applied: {applied})")
    if result.replaced is not None:
        print(f"Cơ sở dữ liệu cũ được giữ tại / The replaced database was kept as "
              f"{result.replaced}")
    print("Khởi động lại cổng / Start the gateway again: sudo systemctl start attendance-gateway")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    path = config.database
    created = not path.exists()
    in_use = backups.database_in_use(path)  # before this process opens it (POSIX locks)
    conn = db.connect(path, migrate=False)
    try:
        before = db.schema_version(conn)
        latest = db.latest_version()
        if in_use and before < latest:
            return _refused(backups.BackupError(
                "in_use", f"cơ sở dữ liệu đang được dùng / {path} is open in another process "
                          "(stop the gateway first: sudo systemctl stop attendance-gateway)"))
        applied = db.apply_migrations(conn)  # DatabaseError (newer schema): gateway/cli.py
        after = db.schema_version(conn)
    finally:
        conn.close()
    if args.json:
        print_json({"database": str(path), "created": created, "from": before, "to": after,
                    "applied": applied})
    elif applied:
        print(f"Đã nâng cấp / Migrated {path}: schema {before} → {after} "
              f"({', '.join(applied)})")
    else:
        print(f"Đã ở phiên bản mới nhất / Already up to date: {path}, schema {after}")
    return 0
