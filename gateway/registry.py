"""The reader registry: which readers exist, where they are, and their keys and MQTT passwords.

Every reader has one *active* key generation (an HMAC-SHA256 key and an MQTT password, both fresh
random secrets from ``secrets``, both sealed at rest by ``gateway/keystore.py``). Rotation makes a
new active generation and *retires* the old key: records the reader signed before it was given the
new key still verify. Finishing the rotation revokes the retired keys; revoking a reader revokes
all of its keys and takes it off the broker (``gateway/broker_config.py``). Revoked keys stay in the
key ring so verification can say "revoked key" instead of "unknown reader".

Each change is one ``BEGIN IMMEDIATE`` transaction: on any error nothing is half-registered.
Secrets leave this module only in :class:`Credentials`, returned once by :meth:`Registry.register`
and :meth:`Registry.rotate` for the technician to provision the reader; they are never logged.

The service and the demo::

    conn = gateway.db.connect(config.database)
    registry = Registry.open(conn, config.master_key_file)
    creds = registry.register(17, "Cổng chính 1", "main")   # creds.key, creds.mqtt_password
    ring = registry.key_ring()                              # a gateway.types.KeyRing
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.keystore import Sealer
from gateway.types import Clock, KeyState, ReaderKey, StaticKeyRing, system_clock

log = logging.getLogger("gateway.registry")

KEY_LEN = 32
READER_ID_MAX = 0xFFFFFFFE
NAME_MAX = 64
GATE_MAX = 32  # the reader's own config.json allows 1-32 characters (firmware/config.py)
BUS_ADDRESS_MAX = 247
_PASSWORD_BYTES = 24  # 32 URL-safe characters, 192 bits

ReaderStatus = Literal["active", "revoked"]
ErrorCode = Literal["bad_value", "duplicate_id", "duplicate_name", "bus_address_taken",
                    "unknown_reader", "reader_revoked", "no_master_key"]


class RegistryError(Exception):
    """A registry change that was refused; ``code`` says why (the CLI translates it)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class KeyInfo:
    """A key generation as listed: everything but the secrets."""

    key_id: int
    state: KeyState
    created_ms: int
    retired_ms: int | None
    revoked_ms: int | None


@dataclass(frozen=True)
class Reader:
    reader_id: int
    name: str
    gate: str
    status: ReaderStatus
    bus_port: str | None
    bus_address: int | None
    created_ms: int
    keys: tuple[KeyInfo, ...]

    @property
    def active_key_id(self) -> int | None:
        return next((k.key_id for k in self.keys if k.state == "active"), None)


@dataclass(frozen=True)
class Credentials:
    """What the technician puts on a reader, handed out once; the repr hides the secrets."""

    reader_id: int
    key_id: int
    key: bytes = field(repr=False)
    mqtt_password: str = field(repr=False)

    @property
    def mqtt_username(self) -> str:
        return str(self.reader_id)


def _check_text(what: str, value: str, longest: int) -> str:
    value = value.strip()
    if not value or len(value) > longest or not value.isprintable():
        raise RegistryError("bad_value", f"{what} must be 1-{longest} printable characters")
    return value


def _check_secrets(key: bytes, mqtt_password: str) -> tuple[bytes, str]:
    if not isinstance(key, bytes) or len(key) != KEY_LEN:
        raise RegistryError("bad_value", f"the key must be {KEY_LEN} bytes")
    if not isinstance(mqtt_password, str) or not 16 <= len(mqtt_password) <= 128 \
            or not mqtt_password.isascii() or not mqtt_password.isprintable() \
            or any(c in mqtt_password for c in " :"):
        raise RegistryError("bad_value", "the MQTT password must be 16-128 printable ASCII "
                                         "characters without spaces or colons")
    return key, mqtt_password


def _check_reader_id(reader_id: int) -> int:
    if isinstance(reader_id, bool) or not isinstance(reader_id, int) \
            or not 1 <= reader_id <= READER_ID_MAX:
        raise RegistryError("bad_value", f"reader id must be 1..{READER_ID_MAX}")
    return reader_id


class Registry:
    """The readers and their sealed keys in the gateway database."""

    def __init__(self, conn: sqlite3.Connection, sealer: Sealer | Path,
                 clock: Clock = system_clock) -> None:
        """``sealer``: a :class:`Sealer`, or the master key file to load one from when needed."""
        self._conn = conn
        self._sealer = sealer if isinstance(sealer, Sealer) else None
        self._master_key_file = sealer if isinstance(sealer, Path) else None
        self._clock = clock

    @classmethod
    def open(cls, conn: sqlite3.Connection, master_key_file: Path,
             clock: Clock = system_clock) -> Registry:
        """The registry of a migrated database, with the master key from ``master_key_file``.

        A missing master key file is created when the first key is sealed (by the first
        ``register``), so a gateway with no readers yet starts without writing under ``/etc``.
        A missing file next to sealed keys means a lost master key: that is refused, since the
        file must be restored from its backup rather than silently replaced.
        """
        registry = cls(conn, master_key_file, clock)
        if master_key_file.exists() or registry._sealed_count():
            registry._sealing()  # a bad or missing file is reported now, not at first use
        return registry

    # -- changes -------------------------------------------------------------------------------

    def register(self, reader_id: int, name: str, gate: str, *, bus_port: str | None = None,
                 bus_address: int | None = None,
                 given: tuple[bytes, str] | None = None) -> Credentials:
        """Add a reader with a fresh key and MQTT password, returned here and never again
        (``given``: the key and password ``attendance-provision`` made and put on the reader)."""
        reader_id = _check_reader_id(reader_id)
        name = _check_text("name", name, NAME_MAX)
        gate = _check_text("gate", gate, GATE_MAX)
        if (bus_port is None) != (bus_address is None):
            raise RegistryError("bad_value",
                                "give both the bus port and the bus address, or neither")
        if bus_port is not None:
            bus_port = _check_text("bus port", bus_port, 255)
        if bus_address is not None and (isinstance(bus_address, bool)
                                        or not 1 <= bus_address <= BUS_ADDRESS_MAX):
            raise RegistryError("bad_value", f"bus address must be 1..{BUS_ADDRESS_MAX}")
        now = self._clock()
        with self._transaction():
            if self._row("SELECT 1 FROM readers WHERE reader_id = ?", reader_id):
                raise RegistryError("duplicate_id", f"reader id {reader_id} is already registered")
            if self._row("SELECT 1 FROM readers WHERE name = ?", name):
                raise RegistryError("duplicate_name", f"the name {name!r} is already in use")
            if bus_port is not None:
                other = self._row("SELECT reader_id FROM readers WHERE bus_port = ? AND "
                                  "bus_address = ?", bus_port, bus_address)
                if other:
                    raise RegistryError(
                        "bus_address_taken",
                        f"address {bus_address} on {bus_port} is taken by reader {other[0]}")
            self._conn.execute(
                "INSERT INTO readers (reader_id, name, gate, status, bus_port, bus_address, "
                "created_ms) VALUES (?, ?, ?, 'active', ?, ?, ?)",
                (reader_id, name, gate, bus_port, bus_address, now))
            creds = self._new_generation(reader_id, now, given)
        log.info("reader registered", extra={"reader_id": reader_id, "reader_name": name,
                                             "gate": gate, "key_id": creds.key_id})
        return creds

    def rotate(self, reader_id: int) -> Credentials:
        """Give an active reader a new key and MQTT password; its old key becomes 'retired'."""
        now = self._clock()
        with self._transaction():
            self._active_reader(reader_id)
            retired = self._conn.execute(
                "UPDATE reader_keys SET state = 'retired', retired_ms = ?, "
                "sealed_mqtt_password = NULL WHERE reader_id = ? AND state = 'active'",
                (now, reader_id)).rowcount
            creds = self._new_generation(reader_id, now)
        log.info("reader key rotated", extra={"reader_id": reader_id, "key_id": creds.key_id,
                                              "keys_retired": retired})
        return creds

    def finish_rotation(self, reader_id: int) -> int:
        """Revoke the reader's retired keys (its old records are in); returns how many."""
        now = self._clock()
        with self._transaction():
            self._reader_row(reader_id)
            count = self._conn.execute(
                "UPDATE reader_keys SET state = 'revoked', revoked_ms = ? "
                "WHERE reader_id = ? AND state = 'retired'", (now, reader_id)).rowcount
        log.info("retired keys revoked", extra={"reader_id": reader_id, "keys_revoked": count})
        return count

    def revoke(self, reader_id: int) -> None:
        """Revoke a reader: its keys stop verifying, it leaves the broker and its bus address."""
        now = self._clock()
        with self._transaction():
            self._active_reader(reader_id)
            self._conn.execute(
                "UPDATE readers SET status = 'revoked', bus_port = NULL, bus_address = NULL "
                "WHERE reader_id = ?", (reader_id,))
            count = self._conn.execute(
                "UPDATE reader_keys SET state = 'revoked', revoked_ms = ?, "
                "sealed_mqtt_password = NULL WHERE reader_id = ? AND state != 'revoked'",
                (now, reader_id)).rowcount
        log.warning("reader revoked", extra={"reader_id": reader_id, "keys_revoked": count})

    def replace(self, reader_id: int, key: bytes, mqtt_password: str) -> tuple[Credentials, int]:
        """Move an active reader to a new board: the given key becomes its only active key and
        every older key is revoked at once (the old board must not sign again). Returns the new
        credentials and :meth:`last_boot`, which the new board must start above."""
        now = self._clock()
        with self._transaction():
            self._active_reader(reader_id)
            revoked = self._conn.execute(
                "UPDATE reader_keys SET state = 'revoked', revoked_ms = ?, "
                "sealed_mqtt_password = NULL WHERE reader_id = ? AND state != 'revoked'",
                (now, reader_id)).rowcount
            creds = self._new_generation(reader_id, now, (key, mqtt_password))
            last = self.last_boot(reader_id)
        log.warning("reader moved to a new board", extra={
            "reader_id": reader_id, "key_id": creds.key_id, "keys_revoked": revoked,
            "last_boot": last})
        return creds, last

    def undo_enrol(self, reader_id: int, key_id: int) -> bool:
        """Take back key generation ``key_id`` of a reader whose board could not be written.

        Only a generation that never verified a record can go; a reader left with no key at
        all (a first enrolment) goes with it. Returns False when there was nothing to undo."""
        with self._transaction():
            row = self._row("SELECT 1 FROM reader_keys WHERE key_id = ? AND reader_id = ?",
                            key_id, reader_id)
            if row is None:
                return False
            if self._row("SELECT 1 FROM scans WHERE key_id = ? LIMIT 1", key_id):
                raise RegistryError("bad_value", f"key {key_id} already signed records; revoke "
                                                 "the reader instead")
            self._conn.execute("DELETE FROM reader_keys WHERE key_id = ?", (key_id,))
            if not self._row("SELECT 1 FROM reader_keys WHERE reader_id = ?", reader_id):
                try:
                    self._conn.execute("DELETE FROM readers WHERE reader_id = ?", (reader_id,))
                except sqlite3.IntegrityError:
                    raise RegistryError("bad_value", f"reader {reader_id} already has data; "
                                                     "revoke it instead") from None
        log.warning("reader enrolment undone", extra={"reader_id": reader_id, "key_id": key_id})
        return True

    # -- reads ---------------------------------------------------------------------------------

    def last_boot(self, reader_id: int) -> int:
        """The highest boot number the gateway has seen from the reader (scans, boots,
        heartbeats, quarantined claims), 0 when none: a replacement board starts above it, so
        its ``(reader, boot, seq)`` identities are new and its records are not taken as
        duplicates of the old board's."""
        row = self._conn.execute(
            "SELECT MAX(b) FROM ("
            "SELECT MAX(boot) AS b FROM reader_boots WHERE reader_id = ? "
            "UNION ALL SELECT MAX(boot) FROM scans WHERE reader_id = ? "
            "UNION ALL SELECT MAX(boot) FROM reader_status WHERE reader_id = ? "
            "UNION ALL SELECT MAX(boot) FROM quarantine WHERE reader_id = ?)",
            (reader_id,) * 4).fetchone()
        return int(row[0] or 0)

    def readers(self) -> list[Reader]:
        keys: dict[int, list[KeyInfo]] = {}
        for row in self._conn.execute(
                "SELECT reader_id, key_id, state, created_ms, retired_ms, revoked_ms "
                "FROM reader_keys ORDER BY reader_id, key_id"):
            keys.setdefault(row[0], []).append(KeyInfo(row[1], row[2], row[3], row[4], row[5]))
        return [Reader(row[0], row[1], row[2], row[3], row[4], row[5], row[6],
                       tuple(keys.get(row[0], ())))
                for row in self._conn.execute(
                    "SELECT reader_id, name, gate, status, bus_port, bus_address, created_ms "
                    "FROM readers ORDER BY reader_id")]

    def reader(self, reader_id: int) -> Reader:
        for found in self.readers():
            if found.reader_id == reader_id:
                return found
        raise RegistryError("unknown_reader", f"reader {reader_id} is not registered")

    def key_ring(self) -> StaticKeyRing:
        """Every reader's keys, unsealed (active, retired and revoked, for verification)."""
        keys: dict[int, list[ReaderKey]] = {}
        for key_id, reader_id, sealed, state in self._conn.execute(
                "SELECT key_id, reader_id, sealed_key, state FROM reader_keys ORDER BY key_id"):
            key = self._sealing().unseal(sealed, purpose="reader_key", reader_id=reader_id,
                                      key_id=key_id)
            keys.setdefault(reader_id, []).append(ReaderKey(key_id, key, state))
        return StaticKeyRing(dict(keys))

    def key_ring_version(self) -> tuple[int, ...]:
        """A cheap value that changes whenever any key is added, retired or revoked.

        A long-running service polls it and rebuilds its key ring when it changes, so a rotation
        made with the CLI reaches the running gateway without a restart.
        """
        row = self._conn.execute(
            "SELECT COUNT(*), COALESCE(MAX(key_id), 0), "
            "COALESCE(SUM(CASE WHEN state = 'active' THEN 1 ELSE 0 END), 0), "
            "COALESCE(SUM(CASE WHEN state = 'retired' THEN 1 ELSE 0 END), 0) "
            "FROM reader_keys").fetchone()
        return tuple(int(v) for v in row)

    def mqtt_passwords(self) -> dict[int, str]:
        """The MQTT password of every active reader, for the broker's password file."""
        out: dict[int, str] = {}
        for reader_id, key_id, sealed in self._conn.execute(
                "SELECT k.reader_id, k.key_id, k.sealed_mqtt_password FROM reader_keys k "
                "JOIN readers r ON r.reader_id = k.reader_id "
                "WHERE r.status = 'active' AND k.state = 'active' "
                "AND k.sealed_mqtt_password IS NOT NULL ORDER BY k.reader_id"):
            password = self._sealing().unseal(sealed, purpose="mqtt_password", reader_id=reader_id,
                                           key_id=key_id)
            out[reader_id] = password.decode("ascii")
        return out

    # -- internals -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        if self._conn.in_transaction:
            raise RuntimeError("registry changes must not run inside another transaction")
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _sealed_count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM reader_keys").fetchone()[0])

    def _sealing(self) -> Sealer:
        if self._sealer is None:
            assert self._master_key_file is not None
            path, sealed = self._master_key_file, self._sealed_count()
            if sealed and not path.exists():
                raise RegistryError(
                    "no_master_key",
                    f"{path}: master key file is missing but the database holds {sealed} "
                    "sealed keys; restore the file from its backup")
            self._sealer = Sealer.from_file(path, create=sealed == 0)
        return self._sealer

    def _row(self, sql: str, *params: object) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
        return row

    def _reader_row(self, reader_id: int) -> sqlite3.Row:
        row = self._row("SELECT status FROM readers WHERE reader_id = ?", reader_id)
        if row is None:
            raise RegistryError("unknown_reader", f"reader {reader_id} is not registered")
        return row

    def _active_reader(self, reader_id: int) -> None:
        if self._reader_row(reader_id)[0] != "active":
            raise RegistryError("reader_revoked", f"reader {reader_id} is revoked")

    def _new_generation(self, reader_id: int, now: int,
                        given: tuple[bytes, str] | None = None) -> Credentials:
        """Insert a new active key generation (inside the caller's transaction); ``given``: the
        key and MQTT password made by the technician's tool, else fresh ones."""
        if given is None:
            key, password = secrets.token_bytes(KEY_LEN), secrets.token_urlsafe(_PASSWORD_BYTES)
        else:
            key, password = _check_secrets(*given)
        # The key id is chosen before inserting because the sealed blobs are bound to it; the
        # write lock of BEGIN IMMEDIATE makes MAX + 1 safe.
        key_id = int(self._conn.execute(
            "SELECT COALESCE(MAX(key_id), 0) + 1 FROM reader_keys").fetchone()[0])
        sealer = self._sealing()
        sealed_key = sealer.seal(key, purpose="reader_key", reader_id=reader_id,
                                       key_id=key_id)
        sealed_password = sealer.seal(password.encode("ascii"), purpose="mqtt_password",
                                            reader_id=reader_id, key_id=key_id)
        self._conn.execute(
            "INSERT INTO reader_keys (key_id, reader_id, sealed_key, state, created_ms, "
            "sealed_mqtt_password) VALUES (?, ?, ?, 'active', ?, ?)",
            (key_id, reader_id, sealed_key, now, sealed_password))
        return Credentials(reader_id, key_id, key, password)

