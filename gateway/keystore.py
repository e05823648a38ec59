"""Reader secrets at rest: AES-256-GCM under a master key kept in its own file.

The database never holds a reader's HMAC key or MQTT password in clear: each is sealed under the
gateway's 32-byte master key (``gateway.master_key_file``) with AES-256-GCM. The associated data
names what the secret is and where it belongs (purpose, ``reader_id``, ``key_id``), so a sealed
blob copied into another row — another reader, another key generation, or from the key column to
the password column — fails to unseal instead of silently becoming that row's secret.

Sealed blob layout (``BLOB_VERSION`` 1)::

    version (1 byte) | nonce (12 random bytes) | ciphertext | GCM tag (16 bytes)

The master key file holds exactly 32 raw bytes, mode 600. It is created on first use (only when
the caller says the database holds nothing sealed yet, see ``gateway/registry.py``), and refused
when group or others have any access to it or when its size is wrong.

The gateway's own Ed25519 key for the province relay (``gateway/forwarders/relay.py``) is sealed
the same way, as purpose ``gateway_signing_key`` with ``reader_id`` 0, in a file of its own written
by :func:`create_private_file`.

Nothing here puts a secret into a message, an exception or a repr.
"""

from __future__ import annotations

import os
import secrets
import stat
import struct
import tempfile
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.files import fsync_path

MASTER_KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
BLOB_VERSION = 1
_AAD_PREFIX = b"attendance-gateway/sealed/v1\x00"

Purpose = Literal["reader_key", "mqtt_password", "gateway_signing_key"]
_PURPOSES: dict[str, bytes] = {"reader_key": b"reader_key", "mqtt_password": b"mqtt_password",
                               "gateway_signing_key": b"gateway_signing_key"}


class KeystoreError(Exception):
    """A master key file or a sealed secret that cannot be used; never carries key material."""


class MasterKey:
    """The 32-byte master key; its repr and str never show the bytes."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != MASTER_KEY_LEN:
            raise KeystoreError(f"a master key is {MASTER_KEY_LEN} bytes, not {len(key)}")
        self._key = bytes(key)

    def __repr__(self) -> str:
        return "MasterKey(<hidden>)"

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(MASTER_KEY_LEN))

    @classmethod
    def load(cls, path: Path, *, create: bool = False) -> MasterKey:
        """Read the master key file; with ``create``, make a fresh one if it does not exist."""
        try:
            return cls._read(path)
        except FileNotFoundError:
            if not create:
                raise KeystoreError(f"{path}: master key file does not exist") from None
        create_private_file(path, secrets.token_bytes(MASTER_KEY_LEN))
        return cls._read(path)

    @classmethod
    def _read(cls, path: Path) -> MasterKey:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise KeystoreError(f"{path}: master key file cannot be read: {exc.strerror}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise KeystoreError(f"{path}: master key file is not a regular file")
        with os.fdopen(fd, "rb") as file:
            if info.st_mode & 0o077:
                raise KeystoreError(
                    f"{path}: master key file is accessible by group or others "
                    f"(mode {stat.S_IMODE(info.st_mode):o}); run chmod 600 on it")
            if info.st_size != MASTER_KEY_LEN:
                raise KeystoreError(
                    f"{path}: master key file must hold exactly {MASTER_KEY_LEN} bytes, "
                    f"not {info.st_size}")
            data = file.read(MASTER_KEY_LEN + 1)
        if len(data) != MASTER_KEY_LEN:
            raise KeystoreError(f"{path}: master key file changed while being read")
        return cls(data)


def create_private_file(path: Path, data: bytes, *, what: str = "master key file") -> None:
    """Create ``path`` holding ``data``, mode 600 from the first byte, durably, never replacing.

    The bytes go to a private temporary file in the same directory, reach the disk, and are then
    hard-linked to ``path``: a crash leaves either no file or a complete one, and a concurrent
    creator's file is kept (``link`` fails if ``path`` exists; the caller reads it back).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        try:
            os.link(tmp, path)
        except FileExistsError:
            return
        fsync_path(path.parent)
    except OSError as exc:
        raise KeystoreError(f"{path}: cannot create {what}: {exc.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)




def _aad(purpose: Purpose, reader_id: int, key_id: int) -> bytes:
    if purpose not in _PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}")
    if not 0 <= reader_id <= 0xFFFFFFFF or not 0 <= key_id < 1 << 63:
        raise ValueError("reader_id or key_id out of range")
    return (_AAD_PREFIX + bytes([BLOB_VERSION]) + _PURPOSES[purpose] + b"\x00"
            + struct.pack(">IQ", reader_id, key_id))


class Sealer:
    """Seals and unseals reader secrets under one master key (AES-256-GCM, bound to their row)."""

    __slots__ = ("_aead",)

    def __init__(self, master: MasterKey) -> None:
        self._aead = AESGCM(master._key)

    def __repr__(self) -> str:
        return "Sealer(<hidden>)"

    @classmethod
    def from_file(cls, path: Path, *, create: bool = False) -> Sealer:
        return cls(MasterKey.load(path, create=create))

    def seal(self, secret: bytes, *, purpose: Purpose, reader_id: int, key_id: int) -> bytes:
        nonce = secrets.token_bytes(NONCE_LEN)
        sealed = self._aead.encrypt(nonce, secret, _aad(purpose, reader_id, key_id))
        return bytes([BLOB_VERSION]) + nonce + sealed

    def unseal(self, blob: bytes, *, purpose: Purpose, reader_id: int, key_id: int) -> bytes:
        where = (f"sealed {purpose} of reader {reader_id} key {key_id}" if reader_id
                 else f"sealed {purpose} key {key_id}")
        blob = bytes(blob)
        if len(blob) < 1 + NONCE_LEN + TAG_LEN or blob[0] != BLOB_VERSION:
            raise KeystoreError(f"{where}: not a sealed secret of format {BLOB_VERSION}")
        nonce, sealed = blob[1:1 + NONCE_LEN], blob[1 + NONCE_LEN:]
        try:
            return self._aead.decrypt(nonce, sealed, _aad(purpose, reader_id, key_id))
        except InvalidTag:
            raise KeystoreError(
                f"{where} does not unseal: wrong master key file, or the row was altered or "
                "moved") from None
