"""``attendance-gateway users``: the dashboard's users (``gateway/dashboard/auth.py``).

``add`` and ``passwd`` ask for the password twice on the terminal (``getpass``), or read one
line from standard input with ``--password-stdin``; never from the command line, where other
users of the machine and the shell history would see it. ``passwd`` and ``disable`` end the
user's open sessions. Exit status: 0 done, 1 refused (bad name, role or password, unknown or
duplicate user), 2 unusable configuration or database.
"""

from __future__ import annotations

import argparse
import getpass
import sqlite3
import sys
from collections.abc import Callable

from gateway import db
from gateway.commands import add_config_argument, print_json, print_table
from gateway.config import load_config
from gateway.dashboard.auth import (
    ROLES,
    AuthError,
    add_user,
    list_users,
    set_disabled,
    set_password,
)
from gateway.types import system_clock

Action = Callable[[sqlite3.Connection, str], int]  # (database, password) -> exit status


class _NoPassword(Exception):
    pass


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "users", help="người dùng bảng điều hành / the dashboard's users",
        description="Người dùng bảng điều hành: người xem, vận hành, quản trị / the "
                    "dashboard's users: viewer, operator, admin")
    actions = parser.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    add_config_argument(common)
    secret = argparse.ArgumentParser(add_help=False)
    secret.add_argument("--password-stdin", action="store_true",
                        help="đọc mật khẩu từ một dòng của stdin / read the password from one "
                             "line of standard input")

    add = actions.add_parser("add", parents=[common, secret],
                             help="thêm người dùng / add a user")
    add.add_argument("username", help="tên đăng nhập / user name (a-z 0-9 . _ -)")
    add.add_argument("--role", choices=ROLES, required=True,
                     help="vai trò / role: viewer (chỉ xem / read only), operator (vận hành: "
                          "gửi lại, thẻ lạ / retry, unknown cards), admin (quản trị: đầu đọc "
                          "và khóa / readers and keys)")
    add.set_defaults(func=_add)

    listing = actions.add_parser("list", parents=[common],
                                 help="danh sách người dùng / list the users")
    listing.add_argument("--json", action="store_true",
                         help="in JSON cho máy đọc / print JSON for tools")
    listing.set_defaults(func=_list)

    passwd = actions.add_parser("passwd", parents=[common, secret],
                                help="đặt mật khẩu mới (đăng xuất mọi phiên) / set a new "
                                     "password (ends the user's sessions)")
    passwd.add_argument("username", help="tên đăng nhập / user name")
    passwd.set_defaults(func=_passwd)

    disable = actions.add_parser("disable", parents=[common],
                                 help="khóa người dùng (đăng xuất mọi phiên) / disable a user "
                                      "(ends their sessions)")
    disable.add_argument("username", help="tên đăng nhập / user name")
    disable.set_defaults(func=_disabler(True))

    enable = actions.add_parser("enable", parents=[common],
                                help="mở khóa người dùng / enable a user again")
    enable.add_argument("username", help="tên đăng nhập / user name")
    enable.set_defaults(func=_disabler(False))


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    if not sys.stdin.isatty():
        raise _NoPassword("không có terminal: dùng --password-stdin / no terminal: use "
                          "--password-stdin")
    first = getpass.getpass("Mật khẩu / Password: ")
    if getpass.getpass("Nhập lại / Again: ") != first:
        raise _NoPassword("hai lần nhập khác nhau / the two entries differ")
    return first


def _run(args: argparse.Namespace, action: Action) -> int:
    config = load_config(args.config)
    try:
        password = _password(args) if hasattr(args, "password_stdin") else ""
    except _NoPassword as exc:
        print(f"Lỗi / Error: {exc}", file=sys.stderr)
        return 1
    conn = db.connect(config.database)
    try:
        return action(conn, password)
    except AuthError as exc:
        print(f"Lỗi / Error: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()


def _add(args: argparse.Namespace) -> int:
    def action(conn: sqlite3.Connection, password: str) -> int:
        user = add_user(conn, args.username, password, args.role, system_clock())
        print(f"Đã thêm / Added: {user.username} ({user.role})")
        return 0
    return _run(args, action)


def _list(args: argparse.Namespace) -> int:
    def action(conn: sqlite3.Connection, _password: str) -> int:
        users = list_users(conn)
        if args.json:
            print_json([{"username": u.username, "role": u.role, "disabled": u.disabled,
                         "created_ms": u.created_ms, "password_changed_ms":
                         u.password_changed_ms, "last_login_ms": u.last_login_ms}
                        for u in users])
            return 0
        if not users:
            print("Chưa có người dùng / no users yet: attendance-gateway users add")
            return 0
        print_table([("TÊN / USER", "VAI TRÒ / ROLE", "TRẠNG THÁI / STATE")] + [
            (u.username, u.role, "khóa / disabled" if u.disabled else "hoạt động / active")
            for u in users])
        return 0
    return _run(args, action)


def _passwd(args: argparse.Namespace) -> int:
    def action(conn: sqlite3.Connection, password: str) -> int:
        set_password(conn, args.username, password, system_clock())
        print(f"Đã đổi mật khẩu / Password changed: {args.username}")
        return 0
    return _run(args, action)


def _disabler(disabled: bool) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        def action(conn: sqlite3.Connection, _password: str) -> int:
            changed = set_disabled(conn, args.username, disabled)
            word = "đã khóa / disabled" if disabled else "đã mở khóa / enabled"
            print(f"{args.username}: {word}" + ("" if changed else
                                                " (không đổi / unchanged)"))
            return 0
        return _run(args, action)
    return handler
