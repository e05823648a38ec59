"""Mosquitto 2.x credentials and ACL, generated from the reader registry (SPEC §8).

* **Password file**: one user per active reader (username = decimal reader id, its MQTT password
  from the registry) and the gateway's own account (``mqtt.username`` / ``mqtt.password_file`` of
  the gateway configuration). Revoked readers are simply absent, so they cannot connect.
* **ACL file**: reader ``N`` may write only ``att/v1/{school}/N/up/#`` and read only
  ``att/v1/{school}/N/down/#``; the gateway account may read ``att/v1/{school}/+/up/#`` and write
  ``att/v1/{school}/+/down/#``. Anything not granted is denied, ``$SYS`` included.

Hashes are Mosquitto's ``$7$`` format (PBKDF2-HMAC-SHA512, as ``mosquitto_passwd`` writes them)::

    username:$7$<iterations>$<base64 salt (12 bytes)>$<base64 digest (64 bytes)>

computed here with ``hashlib`` so that no password ever travels on a command line
(``mosquitto_passwd -b`` would put each one in the process list) and no child process runs per
reader. The iteration
count is ``mosquitto_passwd``'s default (101): stretching protects guessable passwords, and these
are 192-bit random strings, while every CONNECT pays the hash — 100 readers reconnecting at once
after a power cut should not queue behind a deliberately slow function on a Raspberry Pi.

Both files are written atomically (temporary file, fsync, rename, fsync of the directory) with
mode 600, so Mosquitto never reads half a file on reload; ``owner`` hands them to the broker's user
(``mosquitto`` on Debian), which must be able to read them (see ``hardware/gateway/README.md``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import pwd
import secrets
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.registry import Registry
from protocol import topics

DEFAULT_PASSWORD_FILE = Path("/etc/mosquitto/attendance/passwd")
DEFAULT_ACL_FILE = Path("/etc/mosquitto/attendance/acl")
HASH_ITERATIONS = 101
SALT_LEN = 12
_HEADER = ("# Written by `attendance-gateway readers broker-config` from the reader registry.\n"
           "# Do not edit: the next run replaces this file.\n")


class BrokerConfigError(Exception):
    """Broker files that cannot be written as asked (bad account name, unknown owner, I/O)."""


def hash_password(password: str, *, iterations: int = HASH_ITERATIONS,
                  salt: bytes | None = None) -> str:
    """The Mosquitto 2.x ``$7$`` (PBKDF2-HMAC-SHA512) hash of ``password``."""
    if iterations < 1:
        raise ValueError("iterations must be positive")
    salt = secrets.token_bytes(SALT_LEN) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return (f"$7${iterations}${base64.b64encode(salt).decode('ascii')}"
            f"${base64.b64encode(digest).decode('ascii')}")


def check_gateway_username(username: str) -> str:
    """The gateway's account name: not a reader's (all digits), no ``:``, space or control."""
    if not username or username.isdecimal() or any(c in username for c in ": \t#+/") \
            or not username.isprintable() or len(username) > 64:
        raise BrokerConfigError(
            f"mqtt.username {username!r} cannot be the gateway's broker account: use 1-64 "
            "printable characters without spaces, ':', '/', '#' or '+', not all digits (those "
            "are reader accounts)")
    return username


def password_file_text(accounts: Mapping[str, str], *,
                       iterations: int = HASH_ITERATIONS) -> str:
    """A Mosquitto password file for ``accounts`` (username → password), hashed here."""
    lines = []
    for username, password in accounts.items():
        if not username or ":" in username or not username.isprintable() or " " in username:
            raise BrokerConfigError(f"{username!r} cannot be a broker account name")
        if "\n" in password or not password:
            raise BrokerConfigError(f"the password of account {username!r} is empty or multi-line")
        lines.append(f"{username}:{hash_password(password, iterations=iterations)}\n")
    return "".join(lines)


def acl_text(school: str, gateway_username: str, reader_ids: Iterable[int]) -> str:
    """The ACL: each reader its own ``up`` leaves (write) and ``down`` (read); the gateway the
    rest."""
    topics.check_school(school)
    check_gateway_username(gateway_username)
    base = f"att/v1/{school}"
    out = [_HEADER, "# Anything not granted below is denied.\n\n",
           f"user {gateway_username}\n", f"topic read {base}/+/up/#\n",
           f"topic write {base}/+/down/#\n"]
    for reader_id in sorted(set(reader_ids)):
        # only the three leaves a reader publishes: a stolen password cannot invent topics
        out += [f"\nuser {reader_id}\n",
                *(f"topic write {base}/{reader_id}/up/{leaf}\n" for leaf in topics.UP_LEAVES),
                f"topic read {base}/{reader_id}/down/#\n"]
    return "".join(out)


def write_private_file(path: Path, text: str, *, owner: str | None = None) -> None:
    """Replace ``path`` atomically with ``text``, mode 600, optionally owned by user ``owner``."""
    uid = gid = -1
    if owner is not None:
        try:
            entry = pwd.getpwnam(owner)
        except KeyError:
            raise BrokerConfigError(f"no such user {owner!r} to own {path}") from None
        uid, gid = entry.pw_uid, entry.pw_gid
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise BrokerConfigError(f"{path}: cannot write: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o600)
            if owner is not None:
                os.fchown(out.fileno(), uid, gid)
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise BrokerConfigError(f"{path}: cannot write: {exc.strerror}") from None


@dataclass(frozen=True)
class BrokerFiles:
    password_file: Path
    acl_file: Path
    readers: tuple[int, ...]  # the reader accounts written (active readers)


def write_broker_files(registry: Registry, *, school: str, gateway_username: str,
                       gateway_password: str, password_file: Path = DEFAULT_PASSWORD_FILE,
                       acl_file: Path = DEFAULT_ACL_FILE, owner: str | None = None,
                       iterations: int = HASH_ITERATIONS) -> BrokerFiles:
    """Write the password file and the ACL for every active reader and the gateway account.

    The ACL is written first: a reader that can already connect always has its topics. After
    both are written, Mosquitto must reload them (``systemctl reload mosquitto``, i.e. SIGHUP).
    """
    check_gateway_username(gateway_username)
    passwords = registry.mqtt_passwords()
    accounts = {gateway_username: gateway_password}
    accounts.update((str(rid), pw) for rid, pw in passwords.items())
    acl = acl_text(school, gateway_username, passwords)
    text = password_file_text(accounts, iterations=iterations)
    write_private_file(acl_file, acl, owner=owner)
    write_private_file(password_file, text, owner=owner)
    return BrokerFiles(password_file, acl_file, tuple(sorted(passwords)))
