"""The reader registry and ``attendance-gateway readers``: keys handed out once, sealed at rest,
rotated and revoked in single transactions, and never printed or logged afterwards."""

from __future__ import annotations

import json
import logging
import os
import pwd
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import db
from gateway.broker_config import (
    BrokerConfigError,
    acl_text,
    check_gateway_username,
    write_private_file,
)
from gateway.cli import build_parser
from gateway.keystore import KeystoreError, MasterKey, Purpose, Sealer
from gateway.registry import Registry, RegistryError
from gateway.types import ReaderKey
from tests.log_text import logged_text


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_790_000_000_000

    def __call__(self) -> int:
        self.now += 1000
        return self.now


class FailingSealer(Sealer):
    """Fails sealing the MQTT password: after the reader row and before the key row exist."""

    def seal(self, secret: bytes, *, purpose: Purpose, reader_id: int, key_id: int) -> bytes:
        if purpose == "mqtt_password":
            raise OSError("disk on fire")
        return super().seal(secret, purpose=purpose, reader_id=reader_id, key_id=key_id)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = db.connect(tmp_path / "gateway.db")
    yield connection
    connection.close()


@pytest.fixture
def registry(conn: sqlite3.Connection, tmp_path: Path) -> Registry:
    return Registry.open(conn, tmp_path / "master.key", clock=FakeClock())


def _count(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_register_hands_out_fresh_secrets_once_and_seals_them(
        registry: Registry, conn: sqlite3.Connection, tmp_path: Path) -> None:
    a = registry.register(17, "Cổng chính 1", "main")
    b = registry.register(18, "Cổng phụ", "side", bus_port="/dev/ttyUSB0", bus_address=3)
    assert (a.reader_id, a.key_id, a.mqtt_username, len(a.key)) == (17, 1, "17", 32)
    assert (b.key_id, len(b.mqtt_password)) == (2, 32)
    assert a.key != b.key and a.mqtt_password != b.mqtt_password
    ring = registry.key_ring()
    assert ring.active(17) == ReaderKey(1, a.key, "active")
    assert list(ring.candidates(18)) == [ReaderKey(2, b.key, "active")]
    assert ring.candidates(19) == () and ring.active(19) is None
    assert registry.mqtt_passwords() == {17: a.mqtt_password, 18: b.mqtt_password}
    listed = registry.readers()
    assert [(r.reader_id, r.name, r.gate, r.status, r.bus_port, r.bus_address, r.active_key_id)
            for r in listed] == [(17, "Cổng chính 1", "main", "active", None, None, 1),
                                 (18, "Cổng phụ", "side", "active", "/dev/ttyUSB0", 3, 2)]
    assert listed[0].created_ms == 1_790_000_001_000  # the injected clock
    # At rest there is no key and no password in clear: not in the database, nor its WAL.
    conn.execute("PRAGMA wal_checkpoint(FULL)")
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("gateway.db*"))
    for secret in (a.key, b.key, a.mqtt_password.encode(), b.mqtt_password.encode()):
        assert secret not in stored and secret.hex().encode() not in stored


def test_credentials_repr_hides_the_secrets(registry: Registry) -> None:
    creds = registry.register(1, "r1", "g")
    text = repr(creds) + str(creds)
    assert creds.key.hex() not in text and creds.mqtt_password not in text
    assert "reader_id=1" in text and "key_id=1" in text


@pytest.mark.parametrize(
    ("reader_id", "name", "gate", "bus", "code"),
    [
        (17, "other", "g", {}, "duplicate_id"),
        (20, "Cổng chính 1", "g", {}, "duplicate_name"),
        (20, "other", "g", {"bus_port": "/dev/ttyUSB0", "bus_address": 3}, "bus_address_taken"),
        (0, "x", "g", {}, "bad_value"),
        (4_294_967_295, "x", "g", {}, "bad_value"),
        (True, "x", "g", {}, "bad_value"),
        (20, "  ", "g", {}, "bad_value"),
        (20, "x", "g" * 33, {}, "bad_value"),
        (20, "x\n", "g\x00", {}, "bad_value"),
        (20, "x", "g", {"bus_port": "/dev/ttyUSB0"}, "bad_value"),
        (20, "x", "g", {"bus_address": 3}, "bad_value"),
        (20, "x", "g", {"bus_port": "/dev/ttyUSB0", "bus_address": 0}, "bad_value"),
        (20, "x", "g", {"bus_port": "/dev/ttyUSB0", "bus_address": 248}, "bad_value"),
    ],
)
def test_register_refuses_duplicates_and_bad_values(
        registry: Registry, conn: sqlite3.Connection, reader_id: int, name: str, gate: str,
        bus: dict[str, object], code: str) -> None:
    registry.register(17, "Cổng chính 1", "main", bus_port="/dev/ttyUSB0", bus_address=3)
    with pytest.raises(RegistryError) as info:
        registry.register(reader_id, name, gate, **bus)  # type: ignore[arg-type]
    assert info.value.code == code
    assert (_count(conn, "readers"), _count(conn, "reader_keys")) == (1, 1)


def test_same_bus_address_on_another_port_is_fine(registry: Registry) -> None:
    registry.register(1, "a", "g", bus_port="/dev/ttyUSB0", bus_address=3)
    registry.register(2, "b", "g", bus_port="/dev/ttyUSB1", bus_address=3)
    assert [r.bus_address for r in registry.readers()] == [3, 3]


def test_rotate_retires_the_old_key_then_finish_revokes_it(registry: Registry) -> None:
    first = registry.register(5, "r5", "g")
    version = registry.key_ring_version()
    second = registry.rotate(5)
    assert (second.key_id, second.reader_id) == (2, 5)
    assert second.key != first.key and second.mqtt_password != first.mqtt_password
    ring = registry.key_ring()
    assert list(ring.candidates(5)) == [ReaderKey(2, second.key, "active"),
                                        ReaderKey(1, first.key, "retired")]
    assert ring.active(5) == ReaderKey(2, second.key, "active")
    assert registry.mqtt_passwords() == {5: second.mqtt_password}
    keys = registry.reader(5).keys
    assert [(k.key_id, k.state) for k in keys] == [(1, "retired"), (2, "active")]
    assert keys[0].retired_ms is not None and keys[0].revoked_ms is None
    assert registry.key_ring_version() != version
    third = registry.rotate(5)
    assert [k.state for k in registry.reader(5).keys] == ["retired", "retired", "active"]
    version = registry.key_ring_version()
    assert registry.finish_rotation(5) == 2
    assert registry.finish_rotation(5) == 0
    assert registry.key_ring_version() != version
    assert [(k.key_id, k.state) for k in registry.key_ring().candidates(5)] == \
        [(3, "active"), (1, "revoked"), (2, "revoked")]
    assert registry.key_ring().active(5) == ReaderKey(3, third.key, "active")


def test_retired_passwords_are_not_kept(registry: Registry, conn: sqlite3.Connection) -> None:
    registry.register(5, "r5", "g")
    registry.rotate(5)
    rows = conn.execute("SELECT key_id, sealed_mqtt_password IS NULL FROM reader_keys "
                        "ORDER BY key_id").fetchall()
    assert [tuple(r) for r in rows] == [(1, 1), (2, 0)]


def test_revoke_revokes_every_key_and_frees_the_bus_address(registry: Registry) -> None:
    registry.register(7, "r7", "g", bus_port="/dev/ttyUSB0", bus_address=9)
    registry.rotate(7)
    registry.register(8, "r8", "g")
    registry.revoke(7)
    reader = registry.reader(7)
    assert (reader.status, reader.bus_port, reader.bus_address) == ("revoked", None, None)
    assert all(k.state == "revoked" and k.revoked_ms for k in reader.keys)
    ring = registry.key_ring()
    assert ring.active(7) is None
    assert [k.state for k in ring.candidates(7)] == ["revoked", "revoked"]
    assert set(registry.mqtt_passwords()) == {8}
    for change in (lambda: registry.rotate(7), lambda: registry.revoke(7)):
        with pytest.raises(RegistryError) as info:
            change()
        assert info.value.code == "reader_revoked"
    with pytest.raises(RegistryError) as info:
        registry.register(7, "r7 again", "g")
    assert info.value.code == "duplicate_id"
    # A replacement reader can take the bus address of the revoked one.
    registry.register(9, "r9", "g", bus_port="/dev/ttyUSB0", bus_address=9)


def test_unknown_readers(registry: Registry) -> None:
    for change in (lambda: registry.rotate(3), lambda: registry.revoke(3),
                   lambda: registry.finish_rotation(3), lambda: registry.reader(3)):
        with pytest.raises(RegistryError) as info:
            change()
        assert info.value.code == "unknown_reader"


def test_a_failure_mid_registration_leaves_nothing_behind(
        conn: sqlite3.Connection) -> None:
    registry = Registry(conn, FailingSealer(MasterKey.generate()), FakeClock())
    with pytest.raises(OSError, match="disk on fire"):
        registry.register(1, "r1", "g")
    assert (_count(conn, "readers"), _count(conn, "reader_keys")) == (0, 0)
    assert not conn.in_transaction


def test_a_failure_mid_rotation_keeps_the_old_key_active(
        conn: sqlite3.Connection, tmp_path: Path) -> None:
    master = MasterKey.generate()
    creds = Registry(conn, Sealer(master), FakeClock()).register(1, "r1", "g")
    failing = Registry(conn, FailingSealer(master), FakeClock())
    with pytest.raises(OSError):
        failing.rotate(1)
    assert failing.key_ring().active(1) == ReaderKey(1, creds.key, "active")
    assert failing.mqtt_passwords() == {1: creds.mqtt_password}


def test_a_sealed_key_moved_to_another_row_does_not_unseal(
        registry: Registry, conn: sqlite3.Connection) -> None:
    registry.register(1, "r1", "g")
    registry.register(2, "r2", "g")
    conn.execute("UPDATE reader_keys SET sealed_key = "
                 "(SELECT sealed_key FROM reader_keys WHERE reader_id = 1) WHERE reader_id = 2")
    with pytest.raises(KeystoreError, match=r"reader 2 key 2.*altered or moved"):
        registry.key_ring()


def test_wrong_master_key_file_is_detected(
        registry: Registry, conn: sqlite3.Connection, tmp_path: Path) -> None:
    registry.register(1, "r1", "g")
    other = tmp_path / "other.key"
    MasterKey.load(other, create=True)
    with pytest.raises(KeystoreError, match="wrong master key"):
        Registry.open(conn, other).key_ring()


def test_the_master_key_is_created_by_the_first_registration_only(
        conn: sqlite3.Connection, tmp_path: Path) -> None:
    path = tmp_path / "etc" / "master.key"
    registry = Registry.open(conn, path)
    # A gateway without readers starts without writing the master key (/etc may be read-only).
    assert registry.key_ring().candidates(1) == () and registry.mqtt_passwords() == {}
    assert not path.exists()
    registry.register(1, "r1", "g")
    assert (path.stat().st_mode & 0o777) == 0o600
    path.unlink()
    with pytest.raises(RegistryError) as info:
        Registry.open(conn, path)
    assert info.value.code == "no_master_key" and "restore" in str(info.value)
    assert not path.exists()


def test_an_unusable_master_key_file_is_reported_at_open(
        conn: sqlite3.Connection, tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(bytes(31))
    path.chmod(0o600)
    with pytest.raises(KeystoreError, match="exactly 32 bytes"):
        Registry.open(conn, path)


def test_nothing_secret_is_logged(registry: Registry, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    issued = [registry.register(1, "r1", "g"), registry.rotate(1)]
    registry.finish_rotation(1)
    registry.revoke(1)
    assert len(caplog.records) == 4
    logged = caplog.text + logged_text(caplog.records)
    for creds in issued:
        assert creds.key.hex() not in logged and repr(creds.key) not in logged
        assert creds.mqtt_password not in logged


# -- attendance-gateway readers ------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "mqtt.password").write_text("gateway-secret\n")
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nschool = "thcs-a"\ndatabase = "gateway.db"\n'
                    'master_key_file = "master.key"\n'
                    '[mqtt]\nusername = "gateway"\npassword_file = "mqtt.password"\n'
                    '[[rs485]]\nport = "/dev/ttyUSB0"\n', encoding="utf-8")
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(list(argv))
    status = int(args.func(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_add_prints_the_secrets_once_and_nothing_else_does(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = str(config)
    status, out, _ = _run(capsys, "readers", "add", "--config", c, "17", "--name", "Cổng chính 1",
                          "--gate", "main", "--json")
    assert status == 0
    added = json.loads(out)
    assert (added["reader_id"], added["school"], added["mqtt_username"], added["key_id"]) == \
        (17, "thcs-a", "17", 1)
    secrets = [added["key_hex"], added["mqtt_password"]]
    status, out, _ = _run(capsys, "readers", "add", "--config", c, "18", "--name", "Cổng phụ",
                          "--gate", "side", "--bus-port", "/dev/ttyUSB0", "--bus-address", "2")
    assert status == 0 and "SHOWN ONCE" in out and "key (hex)" in out
    status, out, _ = _run(capsys, "readers", "rotate", "--config", c, "17", "--json")
    rotated = json.loads(out)
    assert rotated["key_id"] == 3 and rotated["key_hex"] != added["key_hex"]
    secrets += [rotated["key_hex"], rotated["mqtt_password"]]

    quiet = [
        ("readers", "list", "--config", c),
        ("readers", "list", "--config", c, "--json"),
        ("readers", "rotate", "--config", c, "17", "--finish"),
        ("readers", "revoke", "--config", c, "18"),
        ("readers", "broker-config", "--config", c, "--password-file",
         str(tmp_path / "broker" / "passwd"), "--acl-file", str(tmp_path / "broker" / "acl")),
        ("readers", "list", "--config", c, "--json"),
    ]
    outputs = []
    for argv in quiet:
        status, out, err = _run(capsys, *argv)
        assert status == 0, err
        outputs.append(out + err)
    for text in outputs:
        for secret in secrets:
            assert secret not in text
    listed = json.loads(outputs[-1])
    assert [(r["reader_id"], r["status"], [k["state"] for k in r["keys"]]) for r in listed] == \
        [(17, "active", ["revoked", "active"]), (18, "revoked", ["revoked"])]
    assert "Cổng chính 1" in outputs[0] and "#3 (+1 retired)" in outputs[0]
    acl = (tmp_path / "broker" / "acl").read_text()
    assert "user 17\n" in acl and "user 18" not in acl
    passwd = (tmp_path / "broker" / "passwd").read_text()
    assert [line.split(":")[0] for line in passwd.splitlines()] == ["gateway", "17"]


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (("add", "17", "--name", "again", "--gate", "g"), 1, "đã được đăng ký"),
        (("add", "20", "--name", "x", "--gate", "g", "--bus-port", "/dev/ttyS9",
          "--bus-address", "1"), 1, "not an [[rs485]] port"),
        (("rotate", "99"), 1, "Chưa đăng ký"),
        (("revoke", "99"), 1, "not registered"),
    ],
)
def test_cli_errors_are_bilingual_and_exit_non_zero(
        config: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], status: int,
        message: str) -> None:
    _run(capsys, "readers", "add", "--config", str(config), "17", "--name", "a", "--gate", "g")
    got, out, err = _run(capsys, "readers", argv[0], "--config", str(config), *argv[1:])
    assert got == status and message in err and out == ""


def test_cli_broker_config_needs_the_gateway_account(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\nschool = "s"\n', encoding="utf-8")
    status, _, err = _run(capsys, "readers", "broker-config", "--config", str(config),
                          "--password-file", str(tmp_path / "p"), "--acl-file",
                          str(tmp_path / "a"))
    assert status == 2 and "mqtt.username" in err
    assert not (tmp_path / "p").exists()


def test_cli_refuses_a_readable_master_key(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "master.key").write_bytes(bytes(32))
    (tmp_path / "master.key").chmod(0o644)
    status, _, err = _run(capsys, "readers", "list", "--config", str(config))
    assert status == 2 and "chmod 600" in err


def test_cli_help_is_bilingual(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["readers", "--help"])
    out = capsys.readouterr().out
    for action in ("add", "list", "rotate", "revoke", "broker-config"):
        assert action in out
    assert "đăng ký" in out and "register" in out



# -- broker files --------------------------------------------------------------------------------


def test_broker_files_are_replaced_whole_with_mode_600(tmp_path: Path) -> None:
    path = tmp_path / "mosquitto" / "acl"
    write_private_file(path, "old\n")
    path.chmod(0o644)
    write_private_file(path, "new\n")
    assert path.read_text() == "new\n" and (path.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["acl"]  # no temporary file left


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_broker_files_can_be_handed_to_the_broker_user(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    write_private_file(path, "x\n", owner="nobody")
    assert path.stat().st_uid == pwd.getpwnam("nobody").pw_uid


def test_broker_file_owner_must_exist(tmp_path: Path) -> None:
    with pytest.raises(BrokerConfigError, match="no such user"):
        write_private_file(tmp_path / "passwd", "x\n", owner="no-such-user-here")
    assert not (tmp_path / "passwd").exists()


@pytest.mark.parametrize("username", ["17", "", "a b", "gate:way", "a/b", "#", "x" * 65])
def test_gateway_account_name_cannot_be_a_reader_or_malformed(username: str) -> None:
    with pytest.raises(BrokerConfigError):
        check_gateway_username(username)


def test_acl_grants_each_reader_its_own_topics_only() -> None:
    text = acl_text("thcs-a", "gateway", [2, 1, 2])
    blocks = [b.strip().splitlines() for b in text.split("\n\n")[1:]]
    assert blocks == [
        ["user gateway", "topic read att/v1/thcs-a/+/up/#", "topic write att/v1/thcs-a/+/down/#"],
        ["user 1", "topic write att/v1/thcs-a/1/up/batch", "topic write att/v1/thcs-a/1/up/status",
         "topic write att/v1/thcs-a/1/up/result", "topic read att/v1/thcs-a/1/down/#"],
        ["user 2", "topic write att/v1/thcs-a/2/up/batch", "topic write att/v1/thcs-a/2/up/status",
         "topic write att/v1/thcs-a/2/up/result", "topic read att/v1/thcs-a/2/down/#"],
    ]
