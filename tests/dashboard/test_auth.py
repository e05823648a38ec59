"""The dashboard's users, passwords, sessions, CSRF tokens and login rate limit, with the time
given, over a migrated database."""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import db
from gateway.cli import main
from gateway.dashboard import auth
from gateway.dashboard.auth import AuthError, KdfParams, RateLimit, SessionPolicy
from tests.dashboard.school import write_config

FAST = KdfParams(memory_kib=256, iterations=1, lanes=1)
T0 = 1_788_750_000_000
POLICY = SessionPolicy(idle_ms=30 * 60_000, lifetime_ms=12 * 3_600_000)
LIMIT = RateLimit(window_ms=15 * 60_000, per_user=5, per_address=20)
PASSWORD = "correct horse battery"


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = db.connect(tmp_path / "gateway.db")
    yield conn
    conn.close()


def test_password_hash_is_argon2id_salted_and_verifies() -> None:
    first = auth.hash_password(PASSWORD)  # the deployed cost
    second = auth.hash_password(PASSWORD)
    assert first.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert first != second  # a random salt each time
    assert auth.verify_password(PASSWORD, first)
    assert not auth.verify_password(PASSWORD + " ", first)
    assert not auth.verify_password(PASSWORD, "not a hash")
    assert not auth.verify_password(PASSWORD, first[:-4])


def test_user_names_passwords_and_roles_are_checked(conn: sqlite3.Connection) -> None:
    for name, password, role, code in [("ab", PASSWORD, "viewer", "bad_username"),
                                       ("Ông Ba", PASSWORD, "viewer", "bad_username"),
                                       ("hoa", "short", "viewer", "bad_password"),
                                       ("hoa.nguyen", "Hoa.Nguyen", "viewer", "bad_password"),
                                       ("hoa", PASSWORD, "root", "bad_role")]:
        with pytest.raises(AuthError) as caught:
            auth.add_user(conn, name, password, role, T0, FAST)
        assert caught.value.code == code
        assert caught.value.vi and caught.value.en
    user = auth.add_user(conn, " Hoa.Nguyen ", PASSWORD, "operator", T0, FAST)
    assert (user.username, user.role, user.disabled) == ("hoa.nguyen", "operator", False)
    with pytest.raises(AuthError, match="already exists"):
        auth.add_user(conn, "HOA.NGUYEN", PASSWORD, "viewer", T0, FAST)
    stored = conn.execute("SELECT password_hash FROM dashboard_users").fetchone()[0]
    assert PASSWORD not in stored and stored.startswith("$argon2id$")
    assert auth.has_role("admin", "operator") and auth.has_role("operator", "operator")
    assert not auth.has_role("viewer", "operator") and not auth.has_role("root", "viewer")


def _login(conn: sqlite3.Connection, name: str, password: str, now: int,
           address: str = "192.0.2.1") -> auth.LoginResult:
    return auth.login(conn, name, password, address, now, policy=POLICY, limit=LIMIT,
                      params=FAST)


def test_sessions_expire_when_idle_and_at_their_lifetime(conn: sqlite3.Connection) -> None:
    auth.add_user(conn, "hoa", PASSWORD, "viewer", T0, FAST)
    result = _login(conn, "hoa", PASSWORD, T0)
    assert result.outcome == "ok" and result.session is not None
    token = result.session.token
    stored = conn.execute("SELECT token_sha256 FROM dashboard_sessions").fetchone()[0]
    assert token.encode() not in stored  # only its digest is kept
    state, session = auth.load_session(conn, token, T0 + 29 * 60_000, POLICY)
    assert state == "ok" and session is not None and session.username == "hoa"
    # a live stream left open does not count as activity; a page does
    assert auth.load_session(conn, token, T0 + 58 * 60_000, POLICY, touch=False)[0] == "ok"
    assert auth.load_session(conn, token, T0 + 59 * 60_000, POLICY)[0] == "expired"
    assert auth.load_session(conn, token, T0 + 59 * 60_000, POLICY)[0] == "none"  # deleted
    # used every 20 minutes, still over after 12 hours
    token = _login(conn, "hoa", PASSWORD, T0).session.token
    now = T0
    while auth.load_session(conn, token, now, POLICY)[0] == "ok":
        now += 20 * 60_000
    assert now == T0 + 12 * 3_600_000
    assert auth.load_session(conn, "made-up", T0, POLICY) == ("none", None)
    assert auth.load_session(conn, None, T0, POLICY) == ("none", None)


def test_csrf_token_per_session(conn: sqlite3.Connection) -> None:
    auth.add_user(conn, "hoa", PASSWORD, "operator", T0, FAST)
    one = _login(conn, "hoa", PASSWORD, T0).session
    two = _login(conn, "hoa", PASSWORD, T0).session
    assert one is not None and two is not None
    assert one.session.csrf_token != two.session.csrf_token
    assert auth.csrf_ok(one.session, one.session.csrf_token)
    assert not auth.csrf_ok(one.session, two.session.csrf_token)
    assert not auth.csrf_ok(one.session, "")
    assert not auth.csrf_ok(one.session, None)
    assert not auth.csrf_ok(one.session, one.session.csrf_token + "é")


def test_password_change_and_disable_end_sessions(conn: sqlite3.Connection) -> None:
    auth.add_user(conn, "hoa", PASSWORD, "admin", T0, FAST)
    token = _login(conn, "hoa", PASSWORD, T0).session.token
    auth.set_password(conn, "hoa", "another long password", T0 + 1, FAST)
    assert auth.load_session(conn, token, T0 + 2, POLICY)[0] == "none"
    assert _login(conn, "hoa", PASSWORD, T0 + 3).outcome == "failed"
    token = _login(conn, "hoa", "another long password", T0 + 4).session.token
    assert auth.set_disabled(conn, "hoa", True)
    assert not auth.set_disabled(conn, "hoa", True)
    assert auth.load_session(conn, token, T0 + 5, POLICY)[0] == "none"
    assert _login(conn, "hoa", "another long password", T0 + 6).outcome == "failed"
    assert auth.set_disabled(conn, "hoa", False)
    assert _login(conn, "hoa", "another long password", T0 + 7).outcome == "ok"
    with pytest.raises(AuthError, match="no user"):
        auth.set_password(conn, "nobody", PASSWORD, T0, FAST)


def test_rate_limit_per_user_and_per_address(conn: sqlite3.Connection,
                                             tmp_path: Path) -> None:
    auth.add_user(conn, "hoa", PASSWORD, "viewer", T0, FAST)
    now = T0
    for _ in range(5):
        now += 1000
        assert _login(conn, "hoa", "wrong", now).outcome == "failed"
    now += 1000
    locked = _login(conn, "hoa", PASSWORD, now)
    assert locked.outcome == "locked"
    assert locked.retry_after_s == (T0 + 1000 + 15 * 60_000 - now) // 1000
    other = db.connect(tmp_path / "gateway.db")  # what another process (a restart) sees
    try:
        assert _login(other, "hoa", PASSWORD, now + 1000).outcome == "locked"
    finally:
        other.close()
    # the lock ends when the oldest counted failure leaves the window
    assert _login(conn, "hoa", PASSWORD, T0 + 1000 + 15 * 60_000).outcome == "ok"
    # a success resets the count for the user; an unknown name is counted the same way
    assert _login(conn, "hoa", "wrong", T0 + 16 * 60_000).outcome == "failed"
    assert _login(conn, "hoa", PASSWORD, T0 + 16 * 60_000 + 1).outcome == "ok"
    now = T0 + 20 * 60_000
    for i in range(20):  # one address trying many names
        assert _login(conn, f"guess{i}", "wrong", now + i, "198.51.100.7").outcome == "failed"
    assert _login(conn, "hoa", PASSWORD, now + 30, "198.51.100.7").outcome == "locked"
    assert _login(conn, "hoa", PASSWORD, now + 30, "198.51.100.8").outcome == "ok"
    kept = {r[0] for r in conn.execute("SELECT user_key FROM dashboard_login_attempts")}
    assert "wrong" not in str(kept) and "guess1" not in str(kept)  # names only as digests


def test_login_attempts_are_kept_30_days(conn: sqlite3.Connection) -> None:
    auth.add_user(conn, "hoa", PASSWORD, "viewer", T0, FAST)
    assert _login(conn, "hoa", "wrong", T0).outcome == "failed"
    later = T0 + auth.ATTEMPTS_KEPT_MS
    assert _login(conn, "hoa", PASSWORD, later).outcome == "ok"
    times = [int(r[0]) for r in conn.execute(
        "SELECT at_ms FROM dashboard_login_attempts ORDER BY at_ms")]
    assert times == [T0, later]  # 30 days old: still kept
    assert _login(conn, "hoa", PASSWORD, later + 1).outcome == "ok"
    times = [int(r[0]) for r in conn.execute(
        "SELECT at_ms FROM dashboard_login_attempts ORDER BY at_ms")]
    assert times == [later, later + 1]  # the first attempt is gone


def test_users_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    path = str(config.path)

    def run(*args: str, stdin: str = "") -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        return main(["users", *args, "--config", path])

    assert run("add", "co.lan", "--role", "operator", "--password-stdin",
               stdin=PASSWORD + "\n") == 0
    assert run("add", "co.lan", "--role", "viewer", "--password-stdin",
               stdin=PASSWORD + "\n") == 1
    assert "already exists" in capsys.readouterr().err
    assert run("add", "thay.binh", "--role", "admin", "--password-stdin", stdin="short\n") == 1
    assert run("add", "thay.binh", "--role", "admin") == 1  # no terminal, no --password-stdin
    assert "--password-stdin" in capsys.readouterr().err
    capsys.readouterr()
    assert run("list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(u["username"], u["role"], u["disabled"]) for u in listed] == [
        ("co.lan", "operator", False)]
    assert run("passwd", "co.lan", "--password-stdin", stdin="a new long password\n") == 0
    assert run("disable", "co.lan") == 0
    assert run("list") == 0
    assert "khóa / disabled" in capsys.readouterr().out
    assert run("enable", "co.lan") == 0
    assert run("passwd", "nobody", "--password-stdin", stdin=PASSWORD + "\n") == 1
    conn = db.connect(config.database)
    try:
        result = _login(conn, "co.lan", "a new long password", T0)
    finally:
        conn.close()
    assert result.outcome == "ok"
