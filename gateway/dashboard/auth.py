"""The dashboard's users, passwords, sessions, CSRF tokens and login rate limit.

Plain functions over an SQLite connection (tables of ``gateway/migrations/0010_dashboard.sql``)
with the time passed in, so tests move it. The web layer (``gateway/dashboard/app.py``) and the
``attendance-gateway users`` command call them; nothing here knows about HTTP.

- **Passwords**: argon2id (RFC 9106) from ``cryptography``, stored as a PHC string that carries
  its own random 16-byte salt and parameters, so they can be raised later without a migration.
  Defaults: 19 MiB, 2 passes, 1 lane (OWASP's minimum for argon2id); about 0.1 s here and a few
  tenths on a Raspberry Pi. The comparison is the library's constant-time one. A login with an
  unknown name verifies against a dummy hash, so timing does not tell which names exist.
- **Sessions**: a random 256-bit token in the cookie; the database keeps only its SHA-256. A
  session ends ``idle`` after its last use or ``lifetime`` after the login, when the user is
  disabled, and when their password changes. ``last_seen_ms`` is rewritten at most once a
  minute (a write per page view would compete with the ingest for the database's write lock).
- **CSRF**: a random token per session, sent back in every form and compared in constant time.
- **Rate limit**: failed logins in the last ``window`` per user name (since its last success) and
  per client address; over the limit, the login is refused without checking the password until
  the oldest counted failure leaves the window. Attempts are rows, so a restart keeps the count.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from gateway.db import atomic

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
Outcome = Literal["ok", "failed", "locked"]

USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{2,31}")
PASSWORD_MIN = 10
PASSWORD_MAX = 256
TOKEN_BYTES = 32
TOUCH_MS = 60_000  # last_seen_ms is rewritten at most this often
ATTEMPTS_KEPT_MS = 30 * 86_400_000  # login attempts are an audit trail for 30 days


@dataclass(frozen=True)
class KdfParams:
    """argon2id cost: memory in KiB, passes, lanes."""

    memory_kib: int = 19 * 1024
    iterations: int = 2
    lanes: int = 1


@dataclass(frozen=True)
class SessionPolicy:
    idle_ms: int = 30 * 60_000
    lifetime_ms: int = 12 * 3_600_000


@dataclass(frozen=True)
class RateLimit:
    window_ms: int = 15 * 60_000
    per_user: int = 5
    per_address: int = 20


class AuthError(Exception):
    """A refused change (``code``), with Vietnamese and English text."""

    def __init__(self, code: str, vi: str, en: str) -> None:
        super().__init__(f"{vi} / {en}")
        self.code = code
        self.vi = vi
        self.en = en


# -- passwords ---------------------------------------------------------------------------------

def hash_password(password: str, params: KdfParams = KdfParams()) -> str:
    """An argon2id PHC string with a fresh random salt."""
    kdf = Argon2id(salt=secrets.token_bytes(16), length=32, iterations=params.iterations,
                   lanes=params.lanes, memory_cost=params.memory_kib)
    return kdf.derive_phc_encoded(password.encode("utf-8"))


def verify_password(password: str, encoded: str) -> bool:
    try:
        Argon2id.verify_phc_encoded(password.encode("utf-8"), encoded)
    except (InvalidKey, ValueError):
        return False
    return True


_dummy: dict[KdfParams, str] = {}


def _dummy_hash(params: KdfParams) -> str:
    """A hash to verify against when the user does not exist (same cost as a real one)."""
    if params not in _dummy:
        _dummy[params] = hash_password(secrets.token_urlsafe(16), params)
    return _dummy[params]


def check_password(username: str, password: str) -> str:
    """The password, or AuthError: 10-256 characters, not the user name."""
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise AuthError("bad_password",
                        f"mật khẩu phải có từ {PASSWORD_MIN} đến {PASSWORD_MAX} ký tự",
                        f"the password must have {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    if password.strip().casefold() == username.casefold():
        raise AuthError("bad_password", "mật khẩu không được trùng tên đăng nhập",
                        "the password must not be the user name")
    return password


def check_username(username: str) -> str:
    name = username.strip().lower()
    if not USERNAME.fullmatch(name):
        raise AuthError("bad_username",
                        "tên đăng nhập: 3-32 ký tự a-z 0-9 . _ - (bắt đầu bằng chữ hoặc số)",
                        "user name: 3-32 characters a-z 0-9 . _ - (starting with a letter or "
                        "digit)")
    return name


def check_role(role: str) -> Role:
    for known in ROLES:
        if role == known:
            return known
    raise AuthError("bad_role", f"vai trò phải là {', '.join(ROLES)}",
                    f"the role must be one of {', '.join(ROLES)}")


_RANK: dict[str, int] = {role: rank for rank, role in enumerate(ROLES)}


def has_role(role: str, needed: Role) -> bool:
    """Roles are ordered: an administrator can do what an operator can, and so on."""
    return _RANK.get(role, -1) >= _RANK[needed]


# -- users -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class User:
    user_id: int
    username: str
    role: Role
    disabled: bool
    created_ms: int
    password_changed_ms: int
    last_login_ms: int | None


_USER_COLUMNS = ("user_id, username, role, disabled, created_ms, password_changed_ms, "
                 "last_login_ms")


def _user(r: sqlite3.Row) -> User:
    return User(int(r["user_id"]), str(r["username"]), check_role(str(r["role"])),
                bool(r["disabled"]), int(r["created_ms"]), int(r["password_changed_ms"]),
                r["last_login_ms"])


def list_users(conn: sqlite3.Connection) -> list[User]:
    return [_user(r) for r in conn.execute(
        f"SELECT {_USER_COLUMNS} FROM dashboard_users ORDER BY username")]


def find_user(conn: sqlite3.Connection, username: str) -> User | None:
    row = conn.execute(f"SELECT {_USER_COLUMNS} FROM dashboard_users WHERE username = ?",
                       (username.strip().lower(),)).fetchone()
    return None if row is None else _user(row)


def _existing(conn: sqlite3.Connection, username: str) -> User:
    user = find_user(conn, username)
    if user is None:
        raise AuthError("unknown_user", f"không có người dùng {username!r}",
                        f"no user {username!r}")
    return user


def add_user(conn: sqlite3.Connection, username: str, password: str, role: str, now_ms: int,
             params: KdfParams = KdfParams()) -> User:
    name = check_username(username)
    checked_role = check_role(role)
    encoded = hash_password(check_password(name, password), params)
    with atomic(conn, "dashboard_users"):
        if find_user(conn, name) is not None:
            raise AuthError("duplicate_user", f"người dùng {name!r} đã có",
                            f"the user {name!r} already exists")
        conn.execute("INSERT INTO dashboard_users (username, password_hash, role, created_ms, "
                     "password_changed_ms) VALUES (?, ?, ?, ?, ?)",
                     (name, encoded, checked_role, now_ms, now_ms))
    return _existing(conn, name)


def set_password(conn: sqlite3.Connection, username: str, password: str, now_ms: int,
                 params: KdfParams = KdfParams()) -> None:
    """A new password; the user's sessions end."""
    user = _existing(conn, username)
    encoded = hash_password(check_password(user.username, password), params)
    with atomic(conn, "dashboard_users"):
        conn.execute("UPDATE dashboard_users SET password_hash = ?, password_changed_ms = ? "
                     "WHERE user_id = ?", (encoded, now_ms, user.user_id))
        conn.execute("DELETE FROM dashboard_sessions WHERE user_id = ?", (user.user_id,))


def set_disabled(conn: sqlite3.Connection, username: str, disabled: bool) -> bool:
    """Disable (ending the user's sessions) or enable a user; False if it already was so."""
    user = _existing(conn, username)
    if user.disabled == disabled:
        return False
    with atomic(conn, "dashboard_users"):
        conn.execute("UPDATE dashboard_users SET disabled = ? WHERE user_id = ?",
                     (int(disabled), user.user_id))
        conn.execute("DELETE FROM dashboard_sessions WHERE user_id = ?", (user.user_id,))
    return True


# -- sessions ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Session:
    user_id: int
    username: str
    role: Role
    csrf_token: str
    expires_ms: int


@dataclass(frozen=True)
class NewSession:
    token: str  # for the cookie only; never stored
    session: Session


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


def create_session(conn: sqlite3.Connection, user: User, address: str, now_ms: int,
                   policy: SessionPolicy) -> NewSession:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    csrf = secrets.token_urlsafe(TOKEN_BYTES)
    expires = now_ms + policy.lifetime_ms
    with atomic(conn, "dashboard_sessions"):
        conn.execute("DELETE FROM dashboard_sessions WHERE expires_ms <= ? OR last_seen_ms <= ?",
                     (now_ms, now_ms - policy.idle_ms))
        conn.execute("INSERT INTO dashboard_sessions (token_sha256, user_id, csrf_token, "
                     "created_ms, last_seen_ms, expires_ms, address) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (_digest(token), user.user_id, csrf, now_ms, now_ms, expires, address))
        conn.execute("UPDATE dashboard_users SET last_login_ms = ? WHERE user_id = ?",
                     (now_ms, user.user_id))
    return NewSession(token, Session(user.user_id, user.username, user.role, csrf, expires))


SessionState = Literal["ok", "none", "expired"]


def load_session(conn: sqlite3.Connection, token: str | None, now_ms: int,
                 policy: SessionPolicy, *, touch: bool = True
                 ) -> tuple[SessionState, Session | None]:
    """The live session of a cookie's token: ``ok``, ``none`` (no such session) or ``expired``
    (idle or past its lifetime, or its user disabled: the row is deleted). ``touch``: this use
    counts as activity (a page, an action; not a live stream left open)."""
    if not token:
        return "none", None
    digest = _digest(token)
    row = conn.execute(
        "SELECT s.user_id, u.username, u.role, s.csrf_token, s.last_seen_ms, s.expires_ms, "
        "u.disabled FROM dashboard_sessions s JOIN dashboard_users u ON u.user_id = s.user_id "
        "WHERE s.token_sha256 = ?", (digest,)).fetchone()
    if row is None:
        return "none", None
    user_id, username, role, csrf, last_seen, expires, disabled = tuple(row)
    if disabled or now_ms >= int(expires) or now_ms - int(last_seen) >= policy.idle_ms:
        with atomic(conn, "dashboard_sessions"):
            conn.execute("DELETE FROM dashboard_sessions WHERE token_sha256 = ?", (digest,))
        return "expired", None
    if touch and now_ms - int(last_seen) >= TOUCH_MS:
        with atomic(conn, "dashboard_sessions"):
            conn.execute("UPDATE dashboard_sessions SET last_seen_ms = ? WHERE token_sha256 = ?",
                         (now_ms, digest))
    return "ok", Session(int(user_id), str(username), check_role(str(role)), str(csrf),
                         int(expires))


def end_session(conn: sqlite3.Connection, token: str) -> None:
    with atomic(conn, "dashboard_sessions"):
        conn.execute("DELETE FROM dashboard_sessions WHERE token_sha256 = ?", (_digest(token),))


def csrf_ok(session: Session, given: str | None) -> bool:
    """Whether a form's token is the session's (constant time)."""
    return bool(given) and hmac.compare_digest(session.csrf_token.encode(),
                                               str(given).encode("utf-8", "replace"))


# -- login -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoginResult:
    outcome: Outcome
    session: NewSession | None = None
    retry_after_s: int = 0


def user_key(username: str) -> str:
    return hashlib.sha256(username.strip().lower().encode("utf-8")).hexdigest()


def _locked_until(times: list[int], limit: int, window_ms: int) -> int | None:
    """When the limit stops applying, given failure times newest first (None: not reached)."""
    if len(times) < limit:
        return None
    return times[limit - 1] + window_ms


def lock_until(conn: sqlite3.Connection, username: str, address: str, now_ms: int,
               limit: RateLimit) -> int | None:
    """The time until which logins for this name or from this address are refused, if any."""
    since = now_ms - limit.window_ms
    key = user_key(username)
    last_ok = conn.execute("SELECT MAX(at_ms) FROM dashboard_login_attempts "
                           "WHERE user_key = ? AND outcome = 'ok'", (key,)).fetchone()[0]
    by_user = [int(r[0]) for r in conn.execute(
        "SELECT at_ms FROM dashboard_login_attempts WHERE user_key = ? AND outcome = 'failed' "
        "AND at_ms > ? ORDER BY at_ms DESC LIMIT ?",
        (key, max(since, int(last_ok or 0)), limit.per_user))]
    by_address = [int(r[0]) for r in conn.execute(
        "SELECT at_ms FROM dashboard_login_attempts WHERE address = ? AND outcome = 'failed' "
        "AND at_ms > ? ORDER BY at_ms DESC LIMIT ?", (address, since, limit.per_address))]
    until = [t for t in (_locked_until(by_user, limit.per_user, limit.window_ms),
                         _locked_until(by_address, limit.per_address, limit.window_ms))
             if t is not None and t > now_ms]
    return max(until) if until else None


def _record(conn: sqlite3.Connection, username: str, user: User | None, address: str,
            now_ms: int, outcome: Outcome) -> None:
    conn.execute("INSERT INTO dashboard_login_attempts (at_ms, user_key, user_id, address, "
                 "outcome) VALUES (?, ?, ?, ?, ?)",
                 (now_ms, user_key(username), user.user_id if user else None, address, outcome))
    conn.execute("DELETE FROM dashboard_login_attempts WHERE at_ms < ?",
                 (now_ms - ATTEMPTS_KEPT_MS,))


def login(conn: sqlite3.Connection, username: str, password: str, address: str, now_ms: int,
          *, policy: SessionPolicy, limit: RateLimit,
          params: KdfParams = KdfParams()) -> LoginResult:
    """Check a login and open a session. The password is checked outside any transaction (it
    takes a tenth of a second or more and must not hold the database's write lock)."""
    username = username.strip().lower()[:64]
    locked = lock_until(conn, username, address, now_ms, limit)
    if locked is not None:
        with atomic(conn, "dashboard_login"):
            _record(conn, username, find_user(conn, username), address, now_ms, "locked")
        return LoginResult("locked", retry_after_s=max(1, -(-(locked - now_ms) // 1000)))
    user = find_user(conn, username)
    row = None if user is None else conn.execute(
        "SELECT password_hash FROM dashboard_users WHERE user_id = ?", (user.user_id,)).fetchone()
    encoded = _dummy_hash(params) if row is None else str(row[0])
    good = verify_password(password, encoded) and user is not None and not user.disabled
    with atomic(conn, "dashboard_login"):
        _record(conn, username, user, address, now_ms, "ok" if good else "failed")
    if not good or user is None:
        return LoginResult("failed")
    return LoginResult("ok", create_session(conn, user, address, now_ms, policy))
