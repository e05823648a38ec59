"""hardware/gateway/install.sh in a staging root (``--root``): what lands where, with which mode
and owner-to-be, that a second run changes nothing, that secrets and the configuration are never
replaced, and the upgrade path with its rollback (a stand-in Python builds a stand-in
``attendance-gateway``, so no package is downloaded). The systemd units are checked with
``systemd-analyze verify`` where it exists.

The script runs from a copy of the checkout, as on a Pi, so the other work going on in this tree
does not change the release's hash between two runs.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GATEWAY_DIR = REPO / "hardware" / "gateway"
SKIP = {".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", ".mypy_cache",
        ".ruff_cache", "school_attendance.egg-info"}

# A stand-in for python3: `-m venv DIR` makes DIR/bin/python (itself); `-m pip install …` makes
# an attendance-gateway whose `backup` copies the database and whose `migrate` fails when
# FAKE_FAIL_MIGRATE is set (after damaging the database, as a half-applied migration would).
FAKE_PYTHON = r"""#!/usr/bin/env bash
set -euo pipefail
echo "python $*" >> "$FAKE_LOG"
if [ "$1 $2" = "-m venv" ]; then
	mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; exit 0
fi
if [ "$1 $2" = "-m pip" ]; then
	bin=$(dirname "$0")
	cat > "$bin/attendance-gateway" <<'EOS'
#!/usr/bin/env bash
set -euo pipefail
echo "attendance-gateway $*" >> "$FAKE_LOG"
config=""
for ((i = 1; i <= $#; i++)); do [ "${!i}" = --config ] && { j=$((i + 1)); config=${!j}; }; done
root=${config%/etc/attendance/gateway.toml}
db=$root/var/lib/attendance/gateway.db
case "$1" in
	backup)
		out=$root/var/lib/attendance/backups/gateway-$(date +%s%N).db
		cp "$db" "$out"; chmod 600 "$out"
		printf '{"path": "%s", "schema": 9}\n' "$out" ;;
	migrate)
		if [ -n "${FAKE_FAIL_MIGRATE:-}" ]; then echo half-migrated >> "$db"; exit 1; fi
		[ -e "$db" ] || echo "schema 9" > "$db"
		echo "migrated by $(dirname "$(dirname "$(dirname "$0")")")" >> "$FAKE_LOG" ;;
esac
EOS
	chmod +x "$bin/attendance-gateway"
	exit 0
fi
exit 3
"""


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout as a technician copies it to the Pi (one copy for the module)."""
    dest = tmp_path_factory.mktemp("pristine") / "src"
    archive = dest.with_suffix(".tar")

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if SKIP & set(Path(info.name).parts) else info
    with tarfile.open(archive, "w") as tar:
        tar.add(REPO, arcname="src", filter=keep)
    with tarfile.open(archive) as tar:
        tar.extractall(dest.parent, filter="tar")
    archive.unlink()
    return dest


@pytest.fixture
def src(pristine: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "src"
    shutil.copytree(pristine, dest, symlinks=True)
    return dest


@pytest.fixture
def fake_python(tmp_path: Path) -> Iterator[dict[str, str]]:
    path = tmp_path / "fake-python"
    path.write_text(FAKE_PYTHON, encoding="utf-8")
    path.chmod(0o755)
    log = tmp_path / "fake.log"
    log.touch()
    yield {"PYTHON": str(path), "FAKE_LOG": str(log)}


def install(src: Path, root: Path, *args: str, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", str(src / "hardware" / "gateway" / "install.sh"), "--root", str(root), *args],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})}, check=False)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def snapshot(root: Path) -> dict[str, tuple[int, int, float, str]]:
    """Every path under ``root``: mode, size, mtime, symlink target."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        target = os.readlink(path) if path.is_symlink() else ""
        found[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime, target)
    return found


def owners(root: Path) -> dict[str, tuple[str, str]]:
    rows = (line.split() for line in (root / ".owners").read_text().splitlines() if line)
    return {path: (owner, mode) for path, owner, mode in rows}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------------------------------------

def test_fresh_install_lands_files_with_modes_and_owners(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    out = install(src, root, "--no-venv").stdout
    expected = {  # path: (owner-to-be, mode)
        "/etc/attendance": ("attendance:attendance", "700"),
        "/etc/attendance/gateway.toml": ("attendance:attendance", "600"),
        "/etc/attendance/master.key": ("attendance:attendance", "600"),
        "/etc/attendance/mqtt.password": ("attendance:attendance", "600"),
        "/var/lib/attendance": ("attendance:attendance", "700"),
        "/var/lib/attendance/backups": ("attendance:attendance", "700"),
        "/etc/mosquitto/attendance": ("mosquitto:mosquitto", "700"),
        "/etc/mosquitto/conf.d/attendance.conf": ("root:root", "644"),
        "/etc/chrony/conf.d/attendance.conf": ("root:root", "644"),
        "/etc/systemd/journald.conf.d/attendance.conf": ("root:root", "644"),
        "/etc/logrotate.d/mosquitto": ("root:root", "644"),
        "/etc/systemd/system/attendance-gateway.service": ("root:root", "644"),
        "/etc/systemd/system/attendance-backup.service": ("root:root", "644"),
        "/etc/systemd/system/attendance-backup.timer": ("root:root", "644"),
    }
    recorded = owners(root)
    for path, (owner, file_mode) in expected.items():
        assert recorded[path] == (owner, file_mode), path
        assert f"{mode(root / path.lstrip('/')):o}" == file_mode, path
    assert (root / "etc/attendance/master.key").stat().st_size == 32
    assert len((root / "etc/attendance/mqtt.password").read_text().strip()) == 32
    for name in ("gateway.toml", "mosquitto.conf", "attendance-gateway.service"):
        installed = {"gateway.toml": "etc/attendance/gateway.toml",
                     "mosquitto.conf": "etc/mosquitto/conf.d/attendance.conf",
                     "attendance-gateway.service":
                         "etc/systemd/system/attendance-gateway.service"}[name]
        assert (root / installed).read_bytes() == (GATEWAY_DIR / name).read_bytes()
    # The code: /opt/attendance -> a release holding the checkout (not its .git or .venv).
    link = root / "opt/attendance"
    assert link.is_symlink() and os.readlink(link).startswith("attendance-releases/0.1.0-")
    assert (link / "gateway" / "cli.py").is_file() and (link / "constraints.txt").is_file()
    assert not (link / ".venv").exists() and not (link / "node_modules").exists()
    assert mode(link / "gateway" / "cli.py") == 0o644
    assert mode(link / "hardware" / "gateway" / "install.sh") == 0o755
    # NTP for the readers: chrony serves the private ranges, without a fake local clock.
    chrony = (root / "etc/chrony/conf.d/attendance.conf").read_text()
    assert "allow 192.168.0.0/16" in chrony and "allow 10.0.0.0/8" in chrony
    assert not any(line.startswith("local") for line in chrony.splitlines())
    # System actions are printed, not done.
    for action in ("apt-get install", "useradd --system", "systemctl enable --now "
                   "attendance-backup.timer", "chown attendance:attendance /etc/attendance",
                   "chown mosquitto:mosquitto /etc/mosquitto/attendance", "-m pip install -c",
                   "attendance-gateway migrate", "readers broker-config"):
        assert any(line.startswith("would run: ") and action in line
                   for line in out.splitlines()), action


def test_second_run_changes_nothing(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(src, root, "--no-venv")
    before = snapshot(root)
    out = install(src, root, "--no-venv").stdout
    assert snapshot(root) == before
    assert "nothing to change / không có gì thay đổi" in out


def test_existing_configuration_and_secrets_are_untouched(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    conf = root / "etc" / "attendance"
    conf.mkdir(parents=True)
    toml = conf / "gateway.toml"
    toml.write_text('[gateway]\nschool = "thcs-kon-tum"\n', encoding="utf-8")
    key = conf / "master.key"
    key.write_bytes(b"k" * 32)
    for path in (toml, key):
        path.chmod(0o600)
        os.utime(path, (1_700_000_000, 1_700_000_000))
    kept = {p: (p.read_bytes(), p.stat().st_mtime) for p in (toml, key)}
    out = install(src, root, "--no-venv").stdout
    assert {p: (p.read_bytes(), p.stat().st_mtime) for p in (toml, key)} == kept
    assert "kept your /etc/attendance/gateway.toml" in out
    assert (conf / "mqtt.password").exists()  # the missing one is made


def test_no_new_master_key_beside_an_existing_database(src: Path, tmp_path: Path) -> None:
    """A database without its master key needs the key from its backup: a new one would
    make every sealed reader key unreadable."""
    root = tmp_path / "root"
    state = root / "var" / "lib" / "attendance"
    state.mkdir(parents=True)
    (state / "gateway.db").write_bytes(b"a database")
    out = install(src, root, "--no-venv").stdout
    assert not (root / "etc/attendance/master.key").exists()
    assert "restore master.key from its backup" in out


def test_ntp_allow_narrows_the_served_network(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(src, root, "--no-venv", "--ntp-allow", "192.168.10.0/24")
    lines = (root / "etc/chrony/conf.d/attendance.conf").read_text().splitlines()
    assert [line for line in lines if line.startswith("allow")] == ["allow 192.168.10.0/24"]
    bad = install(src, tmp_path / "other", "--no-venv", "--ntp-allow", "lan; rm -rf /",
                  check=False)
    assert bad.returncode == 2 and "--ntp-allow" in bad.stderr


def test_venv_is_built_once_with_the_pinned_constraints(
        src: Path, tmp_path: Path, fake_python: dict[str, str]) -> None:
    root = tmp_path / "root"
    install(src, root, env=fake_python)
    log = Path(fake_python["FAKE_LOG"]).read_text().splitlines()
    release = os.readlink(root / "opt/attendance")
    assert any(line.startswith("python -m venv ") and line.endswith(f"/{release}/.venv")
               for line in log)
    pip = [line for line in log if " -m pip " in line]
    assert len(pip) == 1 and "install -c " in pip[0] and "/constraints.txt" in pip[0]
    assert any(line.startswith("attendance-gateway migrate --config ") for line in log)
    before = snapshot(root)
    install(src, root, env=fake_python)
    assert snapshot(root) == before
    assert sum(" -m pip " in line for line in Path(fake_python["FAKE_LOG"]).read_text()
               .splitlines()) == 1


def test_upgrade_backs_up_migrates_and_on_failure_rolls_back(
        src: Path, tmp_path: Path, fake_python: dict[str, str]) -> None:
    root = tmp_path / "root"
    install(src, root, env=fake_python)
    first = os.readlink(root / "opt/attendance")
    db = root / "var/lib/attendance/gateway.db"
    db.write_text("schema 9\nattendance of the term\n")

    # New code, a good migration: backup, stop, switch, migrate, start.
    (src / "gateway" / "new_feature.py").write_text('"""New."""\n')
    out = install(src, root, "--upgrade", env=fake_python).stdout
    second = os.readlink(root / "opt/attendance")
    assert second != first
    log = Path(fake_python["FAKE_LOG"]).read_text()
    assert "attendance-gateway backup --config" in log
    order = [out.index(s) for s in ("would run: systemctl stop attendance-gateway.service",
                                    "backup / bản sao lưu:",
                                    "would run: systemctl start attendance-gateway.service")]
    assert order == sorted(order)
    assert f"migrated by {root}/opt/{second}" in log  # by the new release's command
    assert len(list((root / "var/lib/attendance/backups").iterdir())) == 1

    # Newer code again, its migration fails: the previous release and the backup come back.
    (src / "gateway" / "newer_feature.py").write_text('"""Newer."""\n')
    failed = install(src, root, env={**fake_python, "FAKE_FAIL_MIGRATE": "1"}, check=False)
    assert failed.returncode == 1
    assert "ROLLBACK / QUAY LẠI: migrate failed" in failed.stdout
    assert os.readlink(root / "opt/attendance") == second
    assert db.read_text() == "schema 9\nattendance of the term\n"
    aside = list(db.parent.glob("gateway.db.failed-upgrade-*"))
    assert len(aside) == 1 and "half-migrated" in aside[0].read_text()
    assert mode(db) == 0o600
    assert "would run: systemctl start attendance-gateway.service" in failed.stdout


def test_upgrade_without_an_install_is_refused(src: Path, tmp_path: Path) -> None:
    result = install(src, tmp_path / "root", "--upgrade", "--no-venv", check=False)
    assert result.returncode == 1 and "nothing installed yet" in result.stderr


def test_upgrade_sh_is_install_upgrade(src: Path, tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(src / "hardware/gateway/upgrade.sh"), "--root",
                             str(tmp_path / "root"), "--no-venv"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and "nothing installed yet" in result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (package systemd): the units "
                           "are not verified here")
def test_systemd_units_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on the units, their ExecStart pointed at an existing program
    (the real one exists only once installed)."""
    names = ["attendance-gateway.service", "attendance-backup.service",
             "attendance-backup.timer"]
    for name in names:
        text = (GATEWAY_DIR / name).read_text(encoding="utf-8")
        (tmp_path / name).write_text(
            text.replace("/opt/attendance/.venv/bin/attendance-gateway", "/bin/true"),
            encoding="utf-8")
    result = subprocess.run(["systemd-analyze", "verify", *(f"./{n}" for n in names)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stderr and "ignoring" not in result.stderr, result.stderr
    unit = (GATEWAY_DIR / "attendance-gateway.service").read_text(encoding="utf-8")
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30s", "Restart=always"):
        assert f"\n{line}\n" in unit
