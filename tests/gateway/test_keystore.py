"""Reader secrets sealed at rest: round trip, tampering, row binding, and the master key file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.keystore import (
    BLOB_VERSION,
    MASTER_KEY_LEN,
    NONCE_LEN,
    KeystoreError,
    MasterKey,
    Sealer,
)

SECRET = bytes(range(100, 132))


@pytest.fixture
def sealer() -> Sealer:
    return Sealer(MasterKey(bytes(range(32))))


def test_round_trip_and_blob_layout(sealer: Sealer) -> None:
    blob = sealer.seal(SECRET, purpose="reader_key", reader_id=17, key_id=3)
    assert blob[0] == BLOB_VERSION
    assert len(blob) == 1 + NONCE_LEN + len(SECRET) + 16
    assert SECRET not in blob
    assert sealer.unseal(blob, purpose="reader_key", reader_id=17, key_id=3) == SECRET
    # A fresh nonce every time: sealing the same secret twice gives different blobs.
    assert sealer.seal(SECRET, purpose="reader_key", reader_id=17, key_id=3) != blob


def test_every_single_byte_change_is_refused(sealer: Sealer) -> None:
    blob = sealer.seal(SECRET, purpose="reader_key", reader_id=17, key_id=3)
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(KeystoreError, match="reader 17 key 3"):
            sealer.unseal(bytes(tampered), purpose="reader_key", reader_id=17, key_id=3)
    for short in (b"", blob[:1 + NONCE_LEN + 15], blob[:-1]):
        with pytest.raises(KeystoreError):
            sealer.unseal(short, purpose="reader_key", reader_id=17, key_id=3)


@pytest.mark.parametrize(
    ("purpose", "reader_id", "key_id"),
    [("reader_key", 18, 3), ("reader_key", 17, 4), ("mqtt_password", 17, 3)],
    ids=["other reader", "other key generation", "other purpose"],
)
def test_a_blob_moved_to_another_row_does_not_unseal(
        sealer: Sealer, purpose: str, reader_id: int, key_id: int) -> None:
    blob = sealer.seal(SECRET, purpose="reader_key", reader_id=17, key_id=3)
    with pytest.raises(KeystoreError, match="altered or moved"):
        sealer.unseal(blob, purpose=purpose, reader_id=reader_id,  # type: ignore[arg-type]
                      key_id=key_id)


def test_another_master_key_does_not_unseal(sealer: Sealer) -> None:
    blob = sealer.seal(SECRET, purpose="reader_key", reader_id=1, key_id=1)
    with pytest.raises(KeystoreError, match="wrong master key"):
        Sealer(MasterKey.generate()).unseal(blob, purpose="reader_key", reader_id=1, key_id=1)


def test_master_key_file_is_created_once_with_mode_600(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "master.key"
    first = Sealer.from_file(path, create=True)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert path.stat().st_size == MASTER_KEY_LEN
    assert sorted(p.name for p in path.parent.iterdir()) == ["master.key"]  # no temporary left
    blob = first.seal(SECRET, purpose="reader_key", reader_id=1, key_id=1)
    # Created only once: later loads, with or without create, read the same key.
    for create in (True, False):
        again = Sealer.from_file(path, create=create)
        assert again.unseal(blob, purpose="reader_key", reader_id=1, key_id=1) == SECRET


def test_missing_master_key_file_without_create(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="does not exist"):
        MasterKey.load(tmp_path / "master.key")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o660, 0o644, 0o601])
def test_master_key_file_open_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "master.key"
    MasterKey.load(path, create=True)
    os.chmod(path, mode)
    with pytest.raises(KeystoreError, match=f"mode {mode:o}.*chmod 600"):
        MasterKey.load(path)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_master_key_file_of_the_wrong_size_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(b"\x5a" * size)
    path.chmod(0o600)
    with pytest.raises(KeystoreError, match=f"exactly 32 bytes, not {size}"):
        MasterKey.load(path, create=True)  # an existing bad file is never replaced
    assert path.read_bytes() == b"\x5a" * size


def test_master_key_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.mkdir(mode=0o700)
    with pytest.raises(KeystoreError, match=r"not a regular file|cannot be read"):
        MasterKey.load(path)


def test_secrets_never_show_in_reprs_or_errors(tmp_path: Path) -> None:
    key = bytes(range(32))
    master = MasterKey(key)
    sealer = Sealer(master)
    for text in (repr(master), str(master), repr(sealer)):
        assert key.hex() not in text and "hidden" in text
    blob = sealer.seal(SECRET, purpose="reader_key", reader_id=1, key_id=1)
    with pytest.raises(KeystoreError) as info:
        Sealer(MasterKey.generate()).unseal(blob, purpose="reader_key", reader_id=1, key_id=1)
    assert SECRET.hex() not in str(info.value) and key.hex() not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(KeystoreError) as info:
        MasterKey(b"short")
    assert "short" not in str(info.value)
