"""Backups, restore and migrations: gateway/backup.py and the commands `backup`, `restore`,
`migrate`.

Real SQLite files in WAL mode; "the gateway" holding the database is another process with an open
connection, which is what the restore's check sees of the real one.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import backup, db
from gateway.cli import main
from gateway.registry import Registry

OLD_SCHEMA = 2  # an earlier migration set: scans and readers, before the registry columns


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nschool = "thcs-test"\ndatabase = "data/gateway.db"\n'
                    'master_key_file = "keys/master.key"\n', encoding="utf-8")
    return path


def _database(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    return tmp_path / "data" / "gateway.db"


def _old_database(path: Path, upto: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database made by the gateway when its newest migration was ``upto``."""
    every = db._migrations()
    with monkeypatch.context() as m:
        m.setattr(db, "_migrations", lambda: [x for x in every if x[0] <= upto])
        conn = db.connect(path)
    try:
        assert db.schema_version(conn) == upto
        _add_classes(conn, 0, 3)
    finally:
        conn.close()


def _add_classes(conn: sqlite3.Connection, first: int, count: int) -> None:
    with db.atomic(conn):
        for n in range(first, first + count):
            conn.execute("INSERT INTO classes VALUES (?, ?, '7', 'test')",
                         (f"c{n}", f"Lớp {n}"))
            conn.execute("INSERT INTO students (student_id, full_name, class_id, source, "
                         "updated_ms) VALUES (?, ?, ?, 'test', 0)",
                         (f"{n:010d}", f"Học sinh {n}", f"c{n}"))


def _count(path: Path, table: str = "classes") -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Path]:
    """A current gateway database with some rows, closed."""
    path = _database(tmp_path)
    conn = db.connect(path)
    _add_classes(conn, 0, 50)
    conn.close()
    yield path


class Holder:
    """Another process keeping the database open, like the running gateway."""

    def __init__(self, path: Path) -> None:
        code = ("import sys; from gateway import db; c = db.connect(sys.argv[1], migrate=False); "
                "c.execute('SELECT COUNT(*) FROM sqlite_master').fetchone(); print('open', "
                "flush=True); sys.stdin.read()")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=Path(__file__).resolve().parents[2])
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "open"

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


# -- backup -----------------------------------------------------------------------------------

def test_backup_while_another_connection_writes_then_restore(tmp_path: Path, live: Path) -> None:
    """The gateway keeps committing (pairs of rows, WAL) while the backup runs: the backup is
    one commit's state (an even count, between the counts before and after), private, intact;
    restored, its rows are there."""
    writer = db.connect(live, migrate=False)
    with db.atomic(writer):  # enough pages that the copy takes a while
        writer.executemany("INSERT INTO readers (reader_id, name, gate, status, created_ms) "
                           "VALUES (?, ?, 'main', 'active', 0)",
                           [(n, f"reader {n} " + "x" * 200) for n in range(1, 20001)])
    writer.execute("DELETE FROM students")
    writer.execute("DELETE FROM classes")
    stop, counts = threading.Event(), {"n": 0}

    def write() -> None:
        n = 0
        while not stop.is_set():
            with db.atomic(writer):
                writer.execute("INSERT INTO classes VALUES (?, 'a', '7', 'w')", (f"w{n}",))
                writer.execute("INSERT INTO classes VALUES (?, 'b', '7', 'w')", (f"w{n}b",))
            n += 1
            counts["n"] = n

    thread = threading.Thread(target=write)
    thread.start()
    try:
        while counts["n"] < 20:
            stop.wait(0.005)
        before = counts["n"]
        result = backup.backup(live, tmp_path / "backups", keep=3)
        after = counts["n"]
    finally:
        stop.set()
        thread.join()
        writer.close()
    final = counts["n"]
    assert after > before, "the writer went on during the backup"
    rows = _count(result.path)
    assert rows % 2 == 0 and 2 * before <= rows <= 2 * after
    assert stat.S_IMODE(result.path.stat().st_mode) == 0o600
    assert result.schema == db.latest_version()
    assert not list((tmp_path / "backups").glob(".*"))  # no partial file left

    outcome = backup.restore(result.path, live, tmp_path / "keys" / "master.key", unit=None)
    assert outcome.replaced is not None and outcome.replaced.exists()
    assert _count(live) == rows
    assert _count(live, "readers") == 20000
    conn = sqlite3.connect(live)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert stat.S_IMODE(live.stat().st_mode) == 0o600
    # The copy kept aside is the whole previous database (its WAL folded in).
    assert _count(outcome.replaced) == 2 * final


def test_backups_are_pruned_to_the_newest_n(tmp_path: Path, live: Path) -> None:
    import datetime as dt
    folder = tmp_path / "backups"
    folder.mkdir()
    (folder / "notes.txt").write_text("kept", encoding="utf-8")
    (folder / "other-20200101T000000Z.db").write_bytes(b"kept")
    made = [backup.backup(live, folder, keep=3, now=dt.datetime(2026, 9, d, 2, 30,
                                                                 tzinfo=dt.UTC)).path
            for d in range(1, 6)]
    assert [p.name for p in backup.backups(live, folder)] == [p.name for p in made[-3:]]
    assert (folder / "notes.txt").exists() and (folder / "other-20200101T000000Z.db").exists()
    assert made[0].name == "gateway-20260901T023000Z.db"
    with pytest.raises(backup.BackupError) as exc:
        backup.backup(live, folder, keep=3, now=dt.datetime(2026, 9, 5, 2, 30, tzinfo=dt.UTC))
    assert exc.value.code == "exists"


def test_backup_of_a_missing_database_is_refused(tmp_path: Path) -> None:
    with pytest.raises(backup.BackupError) as exc:
        backup.backup(tmp_path / "none.db", tmp_path / "b")
    assert exc.value.code == "no_database"


# -- restore ----------------------------------------------------------------------------------

def test_restore_of_a_corrupt_file_is_refused_and_the_live_database_untouched(
        tmp_path: Path, live: Path) -> None:
    good = backup.backup(live, tmp_path / "backups").path
    damaged = tmp_path / "damaged.db"
    data = bytearray(good.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[2 * page:4 * page] = os.urandom(2 * page)  # b-tree pages overwritten
    damaged.write_bytes(bytes(data))
    text = tmp_path / "notes.db"
    text.write_text("not a database at all " * 200, encoding="utf-8")
    before = _digest(live)
    for bad, codes in ((damaged, {"corrupt"}), (text, {"corrupt"})):
        with pytest.raises(backup.BackupError) as exc:
            backup.restore(bad, live, tmp_path / "master.key", unit=None)
        assert exc.value.code in codes, exc.value
    assert _digest(live) == before
    assert sorted(p.name for p in live.parent.iterdir()) == ["gateway.db"]  # nothing staged left


def test_restore_of_an_older_schema_migrates_it(tmp_path: Path, live: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "old" / "gateway.db"
    old.parent.mkdir()
    _old_database(old, OLD_SCHEMA, monkeypatch)
    with monkeypatch.context() as m:  # a backup made by the older gateway
        every = db._migrations()
        m.setattr(db, "_migrations", lambda: [x for x in every if x[0] <= OLD_SCHEMA])
        made = backup.backup(old, tmp_path / "old-backups")
    assert made.schema == OLD_SCHEMA
    result = backup.restore(made.path, live, tmp_path / "master.key", unit=None)
    assert (result.from_schema, result.schema) == (OLD_SCHEMA, db.latest_version())
    assert len(result.applied) == db.latest_version() - OLD_SCHEMA
    assert _count(live) == 3 and _count(live, "students") == 3
    conn = db.connect(live)  # what the gateway does at start: nothing left to migrate
    assert db.apply_migrations(conn) == []
    conn.close()


def test_restore_is_refused_while_another_process_has_the_database_open(
        tmp_path: Path, live: Path) -> None:
    good = backup.backup(live, tmp_path / "backups").path
    holder = Holder(live)
    try:
        assert backup.database_in_use(live)
        before = _digest(live)
        with pytest.raises(backup.BackupError) as exc:
            backup.restore(good, live, tmp_path / "master.key", unit=None)
        assert exc.value.code == "in_use"
        assert _digest(live) == before
    finally:
        holder.close()
    assert not backup.database_in_use(live)
    backup.restore(good, live, tmp_path / "master.key", unit=None)


def test_restore_of_a_newer_schema_or_a_foreign_database_is_refused(
        tmp_path: Path, live: Path) -> None:
    newer = tmp_path / "newer.db"
    conn = db.connect(newer)
    conn.execute("INSERT INTO schema_migrations VALUES (9999, '9999_future.sql', 0)")
    conn.close()
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    for path, code in ((newer, "too_new"), (foreign, "not_gateway")):
        with pytest.raises(backup.BackupError) as exc:
            backup.restore(path, live, tmp_path / "master.key", unit=None)
        assert exc.value.code == code
    assert _count(live) == 50


def test_restore_with_another_master_key_is_refused(tmp_path: Path, live: Path) -> None:
    """Sealed reader keys that do not open with this gateway's master key: the master key is
    not in the backup and must be restored first."""
    conn = db.connect(live)
    Registry.open(conn, tmp_path / "keys" / "master.key").register(17, "Cổng 1", "main")
    conn.close()
    made = backup.backup(live, tmp_path / "backups").path
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    with pytest.raises(backup.BackupError) as exc:
        backup.restore(made, live, other, unit=None)
    assert exc.value.code == "master_key"
    with pytest.raises(backup.BackupError) as exc:
        backup.restore(made, live, tmp_path / "lost.key", unit=None)
    assert exc.value.code == "master_key"
    backup.restore(made, live, tmp_path / "keys" / "master.key", unit=None)


# -- the commands -----------------------------------------------------------------------------

def test_backup_and_restore_commands(tmp_path: Path, live: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    assert main(["backup", "--config", str(config), "--keep", "2"]) == 0
    out = capsys.readouterr().out
    assert "Đã sao lưu / Backed up:" in out and "integrity ok" in out
    assert "the master key is not in the backup" in out
    made = backup.backups(live, live.parent / "backups")
    assert len(made) == 1

    assert main(["restore", str(made[0]), "--config", str(config)]) == 1  # stdin: not a tty
    assert "--yes" in capsys.readouterr().err
    assert main(["restore", str(made[0]), "--config", str(config), "--yes",
                 "--service", ""]) == 0
    out = capsys.readouterr().out
    assert "Đã khôi phục / Restored" in out and "was kept as" in out

    assert main(["restore", str(tmp_path / "nothing.db"), "--config", str(config),
                 "--yes"]) == 1
    assert "Lỗi / Error:" in capsys.readouterr().err


def test_migrate_command_upgrades_an_older_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The upgrade path's migration step: a database of an earlier migration set is brought to
    this software's schema and its rows survive; a second run has nothing to do."""
    config = _config(tmp_path)
    path = _database(tmp_path)
    _old_database(path, OLD_SCHEMA, monkeypatch)
    assert main(["migrate", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"schema {OLD_SCHEMA} → {db.latest_version()}" in out
    assert _count(path) == 3 and _count(path, "students") == 3
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")] \
        == list(range(1, db.latest_version() + 1))
    conn.close()
    assert main(["migrate", "--config", str(config), "--json"]) == 0
    assert '"applied": []' in capsys.readouterr().out


def test_migrate_refuses_while_the_old_gateway_still_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    path = _database(tmp_path)
    _old_database(path, OLD_SCHEMA, monkeypatch)
    holder = Holder(path)
    try:
        assert main(["migrate", "--config", str(config)]) == 1
        assert "stop the gateway first" in capsys.readouterr().err
    finally:
        holder.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] == OLD_SCHEMA
    conn.close()


def test_migrate_refuses_a_database_newer_than_the_software(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    path = _database(tmp_path)
    conn = db.connect(path)
    conn.execute("INSERT INTO schema_migrations VALUES (9999, '9999_future.sql', 0)")
    conn.close()
    assert main(["migrate", "--config", str(config)]) == 2
    assert "upgrade the gateway software" in capsys.readouterr().err
