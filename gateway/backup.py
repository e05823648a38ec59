"""Backups of the gateway's database, their restore, and the checks around both.

**Backup** (``attendance-gateway backup``, nightly from ``attendance-backup.timer``) runs while the
gateway runs. It uses SQLite's ``VACUUM INTO``: one read transaction, so the copy is the database
exactly as of one commit, while the gateway keeps writing (WAL readers never block the writer nor
the writer them). Compared with the online-backup API it writes a compact copy (no free pages)
and reads every row on the way, so a damaged page shows up at backup time, not on the day of the
restore. SQLite does not sync the file it writes; we do: the copy goes to a private temporary
file (mode 600 from its creation), is checked (``PRAGMA integrity_check``, the schema version),
synced, and only then linked under its final name ``{stem}-YYYYMMDDTHHMMSSZ.db`` (UTC). A crash
leaves no backup or a whole one. The newest ``keep`` backups stay; older ones of that name pattern
are removed (nothing else in the folder is touched).

**The master key is not in the backup.** The database holds reader keys only sealed under the
master key (``gateway/keystore.py``), which lives in its own file. That is the point: a copy of the
database — a backup on a USB stick, a file sent to support — cannot forge a reader's records. It
also means a database backup alone cannot bring the readers back: keep a copy of the master key
file offline, apart from the database backups (docs/install.md).

**Restore** (``attendance-gateway restore FILE``) replaces the database with a backup, only while
nothing has the database open: SQLite keeps a shared lock on byte 128 (the "DMS" byte) of the
``-shm`` file for as long as a connection is open in WAL mode, so if we can take it exclusively,
no process (gateway, dashboard, a CLI command) uses the database. The backup is copied next to
the database, checked (``integrity_check``; a gateway database; a schema not newer than this
software), migrated to this software's schema, its sealed keys opened with this gateway's master
key; only then is the live database (with its ``-wal``) renamed aside to
``{name}.replaced-{stamp}`` and the copy renamed into place. A refused restore leaves the live
database untouched.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from gateway import db
from gateway.files import fsync_path
from gateway.keystore import KeystoreError
from gateway.registry import Registry, RegistryError

DEFAULT_KEEP = 14
SERVICE = "attendance-gateway.service"
_DMS_BYTE = 128  # SQLite's unix VFS: (22 + 8) * 4 + 8, the -shm "dead man switch" lock
_SIDE = ("-wal", "-shm", "-journal")


class BackupError(Exception):
    """A backup or restore that was refused or failed; ``code`` names why, the text says it in
    Vietnamese and English."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    schema: int
    removed: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class RestoreResult:
    database: Path
    source: Path
    from_schema: int
    schema: int
    applied: list[str]
    replaced: Path | None  # where the previous database was kept


def _stamp(now: dt.datetime | None) -> str:
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def _pattern(database: Path) -> re.Pattern[str]:
    return re.compile(re.escape(database.stem) + r"-\d{8}T\d{6}Z\.db")


def _private_empty_file(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)  # whatever the umask
    os.close(fd)


def _remove(path: Path) -> None:
    for suffix in ("", *_SIDE):
        Path(str(path) + suffix).unlink(missing_ok=True)


def check_file(path: Path) -> int:
    """Check a database file that nobody else uses (a backup, a staged copy); return its schema
    version.

    Raises :class:`BackupError` if it is not an SQLite database, fails ``integrity_check``, is
    not a gateway database, or has a schema newer than this software.
    """
    try:
        conn = sqlite3.connect(str(path))
    except sqlite3.Error as exc:
        raise BackupError("unreadable", f"không mở được / cannot open {path}: {exc}") from None
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
        if rows != ["ok"]:
            raise BackupError("corrupt", f"tệp bị hỏng / {path} fails the integrity check: "
                                         + "; ".join(rows[:5]))
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                        "AND name = 'schema_migrations'").fetchone() is None:
            raise BackupError("not_gateway", f"không phải cơ sở dữ liệu của cổng / {path} is "
                                             "not a gateway database (no schema_migrations)")
        version = int(conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]
                      or 0)
    except sqlite3.DatabaseError as exc:
        raise BackupError("corrupt", f"tệp bị hỏng / {path} is not a usable SQLite database: "
                                     f"{exc}") from None
    finally:
        conn.close()
    latest = db.latest_version()
    if version > latest:
        raise BackupError("too_new", f"phiên bản dữ liệu mới hơn phần mềm / {path} has schema "
                                     f"{version}, newer than this gateway ({latest}): upgrade "
                                     "the gateway software first")
    return version


def backup(database: Path, directory: Path, *, keep: int = DEFAULT_KEEP,
           now: dt.datetime | None = None) -> BackupResult:
    """Write a consistent, checked, private copy of ``database`` into ``directory``; keep the
    newest ``keep`` backups of it there. Safe while the gateway runs."""
    if keep < 1:
        raise BackupError("bad_value", "phải giữ ít nhất một bản / keep at least one backup")
    if not database.is_file():
        raise BackupError("no_database", f"không có cơ sở dữ liệu / no database at {database}")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    final = directory / f"{database.stem}-{_stamp(now)}.db"
    if final.exists():
        raise BackupError("exists", f"bản sao lưu đã có / {final} already exists")
    partial = directory / f".{final.name}.partial"
    _remove(partial)
    _private_empty_file(partial)
    try:
        try:
            conn = db.connect(database, migrate=False)
        except db.DatabaseError as exc:
            raise BackupError("unreadable", f"không mở được / cannot open {exc}") from None
        try:
            conn.execute("VACUUM INTO ?", (str(partial),))
        except sqlite3.Error as exc:
            raise BackupError("failed", f"sao lưu thất bại / backup of {database} failed: "
                                        f"{exc}") from None
        finally:
            conn.close()
        schema = check_file(partial)
        fsync_path(partial)
        try:
            os.link(partial, final)  # never replaces a file
        except FileExistsError:
            raise BackupError("exists", f"bản sao lưu đã có / {final} already exists") from None
        fsync_path(directory)
    finally:
        _remove(partial)
    removed = prune(database, directory, keep)
    return BackupResult(final, final.stat().st_size, schema, removed)


def backups(database: Path, directory: Path) -> list[Path]:
    """The backups of ``database`` in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    pattern = _pattern(database)
    return sorted(p for p in directory.iterdir() if pattern.fullmatch(p.name) and p.is_file())


def prune(database: Path, directory: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` backups; return the removed paths."""
    found = backups(database, directory)
    removed = found[:-keep] if keep > 0 else found
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        fsync_path(directory)
    return removed


def database_in_use(database: Path) -> bool:
    """True if any *other* process has ``database`` open (its shared lock on the -shm file's
    DMS byte). Call it before opening the database in this process: closing a descriptor drops
    every POSIX lock this process holds on that file, SQLite's included."""
    shm = Path(str(database) + "-shm")
    try:
        fd = os.open(shm, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _DMS_BYTE, os.SEEK_SET)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, _DMS_BYTE, os.SEEK_SET)
        return False
    finally:
        os.close(fd)


def service_state(unit: str = SERVICE) -> str | None:
    """The unit's state if systemd runs it or is about to (``active``, ``activating`` — also
    while waiting to restart it —, ``reloading``, ``deactivating``); None otherwise or without
    systemd."""
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
        return None
    try:
        result = subprocess.run(["systemctl", "is-active", unit], capture_output=True,
                                text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    state = result.stdout.strip()
    return state if state in ("active", "activating", "reloading", "deactivating") else None


def refuse_if_running(database: Path, unit: str | None = SERVICE) -> None:
    """Raise :class:`BackupError` ``in_use`` if the gateway service runs or anything has the
    database open."""
    state = service_state(unit) if unit else None
    if state is not None:
        raise BackupError("in_use", f"cổng đang chạy / the gateway service is {state}: run "
                                    f"'sudo systemctl stop {unit}' first")
    if database_in_use(database):
        raise BackupError("in_use", f"cơ sở dữ liệu đang được dùng / {database} is open in "
                                    "another process (the gateway, the dashboard or a command): "
                                    "stop it first")


def restore(source: Path, database: Path, master_key_file: Path, *,
            unit: str | None = SERVICE, now: dt.datetime | None = None) -> RestoreResult:
    """Replace ``database`` with the backup ``source`` (see the module docstring)."""
    if not source.is_file():
        raise BackupError("no_file", f"không có tệp / no such file: {source}")
    refuse_if_running(database, unit)
    stamp = _stamp(now)
    database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staged = database.with_name(f".{database.name}.restore-{stamp}")
    _remove(staged)
    _private_empty_file(staged)
    try:
        with open(source, "rb") as src, open(staged, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        from_schema = check_file(staged)
        conn = db.connect(staged, migrate=False)
        try:
            try:
                applied = db.apply_migrations(conn)
            except (sqlite3.Error, db.DatabaseError) as exc:
                raise BackupError("migration", f"không nâng cấp được dữ liệu / migrating the "
                                               f"backup failed: {exc}") from None
            try:
                Registry.open(conn, master_key_file).key_ring()
            except (RegistryError, KeystoreError) as exc:
                raise BackupError(
                    "master_key", f"khoá chủ không khớp / the backup's reader keys do not open "
                                  f"with {master_key_file}: {exc}. Restore the master key that "
                                  "was in use when the backup was made, then try again"
                ) from None
            schema = db.schema_version(conn)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        _remove_side(staged)
        fsync_path(staged)
        owner = _owner_for(database)
        if owner is not None and os.geteuid() == 0:
            os.chown(staged, *owner)  # run as root: keep the service user's ownership
        refuse_if_running(database, unit)  # nobody opened it meanwhile
        replaced = _move_aside(database, stamp)
        os.rename(staged, database)
        fsync_path(database.parent)
    finally:
        _remove(staged)
    return RestoreResult(database, source, from_schema, schema, applied, replaced)


def _remove_side(path: Path) -> None:
    for suffix in _SIDE:
        Path(str(path) + suffix).unlink(missing_ok=True)


def _owner_for(database: Path) -> tuple[int, int] | None:
    for candidate in (database, database.parent):
        try:
            info = candidate.stat()
        except FileNotFoundError:
            continue
        return info.st_uid, info.st_gid
    return None


def _move_aside(database: Path, stamp: str) -> Path | None:
    """Rename the live database and its -wal/-shm to ``{name}.replaced-{stamp}`` (kept
    together: SQLite finds a WAL by the database's name)."""
    if not database.exists():
        return None
    try:  # fold the WAL into the file, so the copy kept aside is one file
        conn = sqlite3.connect(str(database))
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    except sqlite3.Error:
        pass  # a damaged database: kept aside as it is, WAL included
    aside = database.with_name(f"{database.name}.replaced-{stamp}")
    # The WAL first: a -wal must never be left beside a database it does not belong to.
    for suffix in _SIDE:
        side = Path(str(database) + suffix)
        if side.exists():
            os.rename(side, Path(str(aside) + suffix))
    os.rename(database, aside)
    return aside
