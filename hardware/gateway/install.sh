#!/usr/bin/env bash
# Install (or upgrade) the school attendance gateway on Raspberry Pi OS / Debian 12.
# Cài đặt (hoặc nâng cấp) cổng điểm danh trên Raspberry Pi OS / Debian 12.
#
#   sudo hardware/gateway/install.sh                  install, or repair: safe to run again
#   sudo hardware/gateway/install.sh --upgrade        new code: backup, stop, switch, migrate, start;
#                                                     on failure the previous code and database return
#   hardware/gateway/install.sh --root DIR --no-venv  stage into DIR (tests): no apt, useradd,
#                                                     chown or systemctl, only "would run: …" lines
#
# Options: --ntp-allow CIDR (repeatable; default: the private ranges) the readers' network for NTP,
#          --wheelhouse DIR (install Python packages from wheels in DIR, offline),
#          --no-venv (copy the code but do not build the virtualenv).
# Env: PYTHON (default python3) builds the virtualenv.
#
# What goes where, and why: docs/install.md and hardware/gateway/README.md. Never overwritten:
# /etc/attendance/gateway.toml, master.key, mqtt.password, the database.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$SRC/hardware/gateway"
ROOT=""
UPGRADE=0
VENV=1
WHEELHOUSE=""
NTP_ALLOW=()
PYTHON=${PYTHON:-python3}

SERVICE_USER=attendance
PREFIX=/opt/attendance                 # a symlink to the current release
RELEASES=/opt/attendance-releases      # one directory per installed code version
CONF=/etc/attendance
STATE=/var/lib/attendance
KEEP_OTHER_RELEASES=1                 # besides the current and the previous one

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
	case "$1" in
		--root) ROOT=$(realpath -m "$2"); shift 2 ;;
		--upgrade) UPGRADE=1; shift ;;
		--no-venv) VENV=0; shift ;;
		--wheelhouse) WHEELHOUSE=$(realpath "$2"); shift 2 ;;
		--ntp-allow) NTP_ALLOW+=("$2"); shift 2 ;;
		-h|--help) usage; exit 0 ;;
		*) echo "install: unknown option / tuỳ chọn lạ: $1" >&2; usage >&2; exit 2 ;;
	esac
done
if [ ${#NTP_ALLOW[@]} -eq 0 ]; then
	NTP_ALLOW=(10.0.0.0/8 172.16.0.0/12 192.168.0.0/16)
fi
for cidr in "${NTP_ALLOW[@]}"; do
	if ! [[ "$cidr" =~ ^[0-9a-fA-F.:]+(/[0-9]{1,3})?$ ]]; then
		echo "install: --ntp-allow needs an address or network like 192.168.1.0/24: $cidr" >&2
		exit 2
	fi
done

# -- helpers ----------------------------------------------------------------------------------

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: LỖI / ERROR: %s\n' "$*" >&2; exit 1; }
staged() { [ -n "$ROOT" ]; }
# System actions: done for real, or only printed in a staging root.
sys() {
	if staged; then printf 'would run: %s\n' "$*"; else "$@"; fi
}
CHANGED=()   # what this run changed, for the summary and for restarts
changed() { CHANGED+=("$1"); say "$2"; }
was_changed() { local c; for c in "${CHANGED[@]+"${CHANGED[@]}"}"; do [ "$c" = "$1" ] && return 0; done; return 1; }

# Owner of a path: chown for real; in a staging root recorded in $ROOT/.owners (path owner mode).
OWNERS_FILE=""
declare -A OWNER_OF=()
own() {  # own USER:GROUP PATH
	if staged; then
		OWNER_OF["${2#"$ROOT"}"]="$1"
	elif [ "$(stat -c %U:%G "$2")" != "$1" ]; then
		chown "$1" "$2"
	fi
}
# A directory with its mode and owner.
dir() {  # dir MODE OWNER PATH
	local mode=$1 owner=$2 path=$ROOT$3
	if [ ! -d "$path" ]; then
		mkdir -p "$path"
		changed "dir:$3" "created $3"
	fi
	if [ "$(stat -c %a "$path")" != "${mode#0}" ]; then chmod "$mode" "$path"; fi
	own "$owner" "$path"
}
# A file from the project, replaced when its content differs. Returns 0 if it changed.
file() {  # file MODE OWNER SOURCE DEST TAG
	local mode=$1 owner=$2 src=$3 dest=$ROOT$4 tag=$5
	if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
		[ "$(stat -c %a "$dest")" = "${mode#0}" ] || chmod "$mode" "$dest"
		own "$owner" "$dest"
		return 0
	fi
	mkdir -p "$(dirname "$dest")"
	install -m "$mode" "$src" "$dest.install-new"
	mv -f "$dest.install-new" "$dest"
	own "$owner" "$dest"
	changed "$tag" "installed $4"
}
# A secret created once and never replaced (written to a temporary file, then hard-linked:
# link fails if the file appeared meanwhile).
secret() {  # secret PATH GENERATOR...
	local name=$1 dest=$ROOT$1; shift
	if [ -e "$dest" ]; then
		[ "$(stat -c %a "$dest")" = 600 ] || chmod 600 "$dest"
		own "$SERVICE_USER:$SERVICE_USER" "$dest"
		return 0
	fi
	local tmp
	tmp=$(umask 077; mktemp "$(dirname "$dest")/.install-XXXXXX")
	"$@" > "$tmp"
	sync "$tmp" 2>/dev/null || sync
	if ln "$tmp" "$dest" 2>/dev/null; then
		changed "secret:$name" "created $name (mode 600)"
	fi
	rm -f "$tmp"
	own "$SERVICE_USER:$SERVICE_USER" "$dest"
}
random_key() { head -c 32 /dev/urandom; }
random_password() { head -c 24 /dev/urandom | base64 | tr '+/' '-_'; }

# The gateway's command, as its user (staging root: the release's own, run directly).
gateway_cli() {  # gateway_cli RELEASE_DIR ARGS...
	local release=$1; shift
	local cli=$release/.venv/bin/attendance-gateway
	if [ ! -x "$cli" ]; then
		printf 'would run: %s\n' "attendance-gateway $*"
		return 0
	fi
	# From /: the checkout's folder (e.g. in /home/pi) is not the service user's to read.
	if staged; then "$cli" "$@"; else (cd / && runuser -u "$SERVICE_USER" -- "$cli" "$@"); fi
}

# -- preflight --------------------------------------------------------------------------------

if ! staged; then
	[ "$(id -u)" = 0 ] || die "chạy bằng sudo / run as root: sudo $0 $*"
	[ -f /etc/debian_version ] || die "cần Raspberry Pi OS hoặc Debian / needs Raspberry Pi OS or Debian"
fi
[ -f "$SRC/pyproject.toml" ] && [ -f "$SRC/constraints.txt" ] \
	|| die "không thấy mã nguồn / no project checkout at $SRC"
say "project / dự án: $SRC${ROOT:+ -> staging root $ROOT}"

# -- 1. system packages and the service user --------------------------------------------------

# chrony, not systemd-timesyncd: timesyncd is only a client, and the readers need an NTP server
# on the school network (this Pi). Installing chrony replaces timesyncd on Debian.
PACKAGES=(mosquitto chrony python3-venv logrotate sqlite3)
missing=()
for pkg in "${PACKAGES[@]}"; do
	if staged || ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
		missing+=("$pkg")
	fi
done
if [ ${#missing[@]} -gt 0 ]; then
	sys env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	sys env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		-o Dpkg::Options::=--force-confold "${missing[@]}"
fi
if staged || ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
	sys useradd --system --user-group --home-dir "$STATE" --no-create-home \
		--shell /usr/sbin/nologin "$SERVICE_USER"
fi

# -- 2. the code: one release directory per version, /opt/attendance points at the current one --

# The release's name is a hash of the checkout (not a date), so running again is a no-op.
EXCLUDES=(.git .venv node_modules __pycache__ '*.pyc' .pytest_cache .mypy_cache .ruff_cache
	'*.egg-info' build '*.mpy')
find_args=()
for e in "${EXCLUDES[@]}"; do find_args+=(-name "$e" -prune -o); done
tree_hash=$(cd "$SRC" && find . "${find_args[@]}" -type f -print0 | LC_ALL=C sort -z \
	| xargs -0 sha256sum | sha256sum | cut -c1-12)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$SRC/pyproject.toml" | head -n1)
release_name="${version:-0}-$tree_hash"
release=$RELEASES/$release_name

current_target=""
if [ -L "$ROOT$PREFIX" ]; then
	current_target=$(readlink "$ROOT$PREFIX")
	current_target=${current_target##*/}
elif [ -d "$ROOT$PREFIX" ]; then  # an install made by hand before this script: keep it
	legacy=manual-$(date -u +%Y%m%dT%H%M%SZ)
	mkdir -p "$ROOT$RELEASES"
	mv "$ROOT$PREFIX" "$ROOT$RELEASES/$legacy"
	ln -s "attendance-releases/$legacy" "$ROOT$PREFIX"
	current_target=$legacy
	changed "code" "kept the earlier manual install as $RELEASES/$legacy"
fi
if [ "$UPGRADE" = 1 ] && [ -z "$current_target" ]; then
	die "chưa cài đặt, hãy chạy không có --upgrade / nothing installed yet: run without --upgrade"
fi
# Other code than the installed release: always the upgrade path (backup, stop, migrate, start,
# rollback on failure), with or without --upgrade.
if [ -n "$current_target" ] && [ "$current_target" != "$release_name" ]; then
	UPGRADE=1
fi

dir 0755 root:root "$RELEASES"
if [ ! -f "$ROOT$release/.copied" ]; then
	rm -rf "$ROOT$release"
	mkdir -p "$ROOT$release"
	tar_excludes=()
	for e in "${EXCLUDES[@]}"; do tar_excludes+=("--exclude=$e"); done
	(umask 022; tar -C "$SRC" "${tar_excludes[@]}" -cf - . | tar -C "$ROOT$release" --no-same-owner -xf -)
	chmod -R u+rwX,go+rX,go-w "$ROOT$release"
	touch "$ROOT$release/.copied"
	changed "code" "copied the code to $release"
fi
own root:root "$ROOT$release"
if [ "$VENV" = 1 ] && [ ! -f "$ROOT$release/.installed" ]; then
	say "building the virtualenv (pinned by constraints.txt) / tạo môi trường Python"
	rm -rf "$ROOT$release/.venv"
	"$PYTHON" -m venv "$ROOT$release/.venv"
	pip_args=(--disable-pip-version-check -q install -c "$ROOT$release/constraints.txt")
	if [ -n "$WHEELHOUSE" ]; then pip_args+=(--no-index --find-links "$WHEELHOUSE"); fi
	"$ROOT$release/.venv/bin/python" -m pip "${pip_args[@]}" "$ROOT$release"
	touch "$ROOT$release/.installed"
	changed "code" "installed the Python packages into $release/.venv"
elif [ "$VENV" = 0 ] && [ ! -f "$ROOT$release/.installed" ]; then
	printf 'would run: %s\n' "$PYTHON -m venv $release/.venv && $release/.venv/bin/python -m pip install -c $release/constraints.txt $release"
fi

# -- 3. directories, configuration and secrets -------------------------------------------------

dir 0700 "$SERVICE_USER:$SERVICE_USER" "$CONF"
dir 0700 "$SERVICE_USER:$SERVICE_USER" "$STATE"
dir 0700 "$SERVICE_USER:$SERVICE_USER" "$STATE/backups"
if [ -e "$ROOT$CONF/gateway.toml" ]; then
	cmp -s "$HERE/gateway.toml" "$ROOT$CONF/gateway.toml" \
		|| say "kept your $CONF/gateway.toml (the shipped example: $PREFIX/hardware/gateway/gateway.toml)"
fi
if [ ! -e "$ROOT$CONF/gateway.toml" ]; then
	file 0600 "$SERVICE_USER:$SERVICE_USER" "$HERE/gateway.toml" "$CONF/gateway.toml" config
	say "EDIT $CONF/gateway.toml: school, sessions, holidays / SỬA tên trường, buổi học, ngày nghỉ"
else
	[ "$(stat -c %a "$ROOT$CONF/gateway.toml")" = 600 ] || chmod 600 "$ROOT$CONF/gateway.toml"
	own "$SERVICE_USER:$SERVICE_USER" "$ROOT$CONF/gateway.toml"
fi
# The master key seals every reader key. Created only for a new gateway: a database without its
# master key needs the key restored from its backup, never a new one.
if [ ! -e "$ROOT$CONF/master.key" ] && [ -e "$ROOT$STATE/gateway.db" ]; then
	say "CẢNH BÁO / WARNING: $STATE/gateway.db exists but $CONF/master.key does not:"
	say "  restore master.key from its backup (docs/install.md); no new key was made"
else
	secret "$CONF/master.key" random_key
fi
secret "$CONF/mqtt.password" random_password

# -- 4. Mosquitto, NTP, logs, systemd units ---------------------------------------------------

dir 0755 root:root /etc/mosquitto/conf.d
file 0644 root:root "$HERE/mosquitto.conf" /etc/mosquitto/conf.d/attendance.conf mosquitto
dir 0700 mosquitto:mosquitto /etc/mosquitto/attendance

chrony_conf=$(mktemp)
trap 'rm -f "$chrony_conf"' EXIT
{
	cat "$HERE/chrony-attendance.conf"
	for cidr in "${NTP_ALLOW[@]}"; do printf 'allow %s\n' "$cidr"; done
} > "$chrony_conf"
dir 0755 root:root /etc/chrony/conf.d
file 0644 root:root "$chrony_conf" /etc/chrony/conf.d/attendance.conf chrony

dir 0755 root:root /etc/systemd/journald.conf.d
file 0644 root:root "$HERE/journald-attendance.conf" /etc/systemd/journald.conf.d/attendance.conf journald
dir 0755 root:root /etc/logrotate.d
file 0644 root:root "$HERE/logrotate-mosquitto" /etc/logrotate.d/mosquitto logrotate

dir 0755 root:root /etc/systemd/system
for unit in attendance-gateway.service attendance-backup.service attendance-backup.timer; do
	file 0644 root:root "$HERE/$unit" "/etc/systemd/system/$unit" units
done

# Record the owners a staging root's files would get.
if staged; then
	OWNERS_FILE=$ROOT/.owners
	new_owners=$(for p in "${!OWNER_OF[@]}"; do
		printf '%s %s %s\n' "$p" "${OWNER_OF[$p]}" "$(stat -c %a "$ROOT$p")"
	done | LC_ALL=C sort)
	if [ ! -f "$OWNERS_FILE" ] || [ "$(cat "$OWNERS_FILE")" != "$new_owners" ]; then
		printf '%s\n' "$new_owners" > "$OWNERS_FILE"
	fi
	for p in $(printf '%s\n' "${!OWNER_OF[@]}" | LC_ALL=C sort); do
		printf 'would run: chown %s %s\n' "${OWNER_OF[$p]}" "$p"
	done
fi

# -- 5. switch to the release, migrate, (re)start ---------------------------------------------

switch_to() {  # switch_to RELEASE_NAME: atomically repoint /opt/attendance
	ln -sfn "attendance-releases/$1" "$ROOT$PREFIX.install-new"
	mv -T "$ROOT$PREFIX.install-new" "$ROOT$PREFIX"
}

if [ "$UPGRADE" = 1 ] && [ "$current_target" != "$release_name" ]; then
	previous=$current_target
	say "upgrade / nâng cấp: $previous -> $release_name"
	sys systemctl stop attendance-gateway.service
	# A backup first, with the new code's command (the old may predate it); it reads any older
	# schema and does not change the database.
	backup_json=$(gateway_cli "$ROOT$release" backup --config "$ROOT$CONF/gateway.toml" --json) \
		|| { sys systemctl start attendance-gateway.service; die "backup failed: nothing was changed / sao lưu thất bại, không thay đổi gì"; }
	backup_file=$(printf '%s' "$backup_json" | sed -n 's/.*"path": "\([^"]*\)".*/\1/p' | head -n1)
	say "backup / bản sao lưu: ${backup_file:-(none: staging)}"
	rollback() {
		say "ROLLBACK / QUAY LẠI: $1"
		sys systemctl stop attendance-gateway.service
		switch_to "$previous"
		# The previous release's own units (an older gateway may not speak sd_notify).
		for unit in attendance-gateway.service attendance-backup.service attendance-backup.timer; do
			old_unit=$ROOT$RELEASES/$previous/hardware/gateway/$unit
			if [ -f "$old_unit" ]; then
				install -m 644 "$old_unit" "$ROOT/etc/systemd/system/$unit"
			elif [ "$unit" != attendance-gateway.service ]; then
				sys systemctl disable --now "$unit" || true
				rm -f "$ROOT/etc/systemd/system/$unit"
			fi
		done
		if [ -n "$backup_file" ] && [ -f "$backup_file" ]; then
			db=$ROOT$STATE/gateway.db
			stamp=$(date -u +%Y%m%dT%H%M%SZ)
			for side in -wal -shm; do
				[ -e "$db$side" ] && mv -f "$db$side" "$db.failed-upgrade-$stamp$side"
			done
			[ -e "$db" ] && mv -f "$db" "$db.failed-upgrade-$stamp"
			install -m 600 "$backup_file" "$db.install-new"
			own "$SERVICE_USER:$SERVICE_USER" "$db.install-new"
			mv -f "$db.install-new" "$db"
			say "database restored from / đã khôi phục dữ liệu từ $backup_file"
		fi
		sys systemctl daemon-reload
		sys systemctl start attendance-gateway.service || true
		die "upgrade failed, previous version running again / nâng cấp thất bại, đã quay lại bản cũ: $1"
	}
	switch_to "$release_name"
	gateway_cli "$ROOT$release" migrate --config "$ROOT$CONF/gateway.toml" || rollback "migrate failed"
	sys systemctl daemon-reload || rollback "daemon-reload failed"
	# Type=notify: start returns once the gateway said READY=1, or fails.
	sys systemctl start attendance-gateway.service || rollback "the new gateway did not start"
	if ! staged; then
		sleep 10
		systemctl is-active --quiet attendance-gateway.service || rollback "the new gateway stopped after starting"
	fi
	changed "code" "upgraded to $release_name"
else
	if [ "$current_target" != "$release_name" ]; then
		switch_to "$release_name"
		changed "code" "$PREFIX -> $RELEASES/$release_name"
	fi
	# Creates the database as the service's user, or brings it to this code's schema.
	gateway_cli "$ROOT$release" migrate --config "$ROOT$CONF/gateway.toml"
fi

# The broker's password file and ACL from the registry (as root: handed to mosquitto).
if [ -x "$ROOT$release/.venv/bin/attendance-gateway" ] && ! staged; then
	"$release/.venv/bin/attendance-gateway" readers broker-config --config "$CONF/gateway.toml" --owner mosquitto
else
	printf 'would run: %s\n' "attendance-gateway readers broker-config --config $CONF/gateway.toml --owner mosquitto"
fi

if was_changed units; then sys systemctl daemon-reload; fi
if was_changed journald; then sys systemctl restart systemd-journald.service; fi
if was_changed chrony; then sys systemctl restart chrony.service; fi
if was_changed mosquitto; then sys systemctl restart mosquitto.service
else sys systemctl reload-or-restart mosquitto.service; fi
sys systemctl enable --now attendance-backup.timer
sys systemctl enable attendance-gateway.service
if was_changed code || was_changed units || was_changed config; then
	sys systemctl restart attendance-gateway.service
else
	sys systemctl start attendance-gateway.service
fi

# Old releases: keep the current one, the one before it (rollback), and the newest other one.
if [ -d "$ROOT$RELEASES" ]; then
	keep_now=$(readlink "$ROOT$PREFIX"); keep_now=${keep_now##*/}
	mapfile -t old < <(cd "$ROOT$RELEASES" && ls -1t | grep -vx -e "$keep_now" -e "${current_target:-/}" \
		| tail -n +"$((KEEP_OTHER_RELEASES + 1))")
	for r in "${old[@]+"${old[@]}"}"; do
		rm -rf "${ROOT:?}$RELEASES/${r:?}"
		changed "prune" "removed the old release $r"
	done
fi

if [ ${#CHANGED[@]} -eq 0 ]; then
	say "nothing to change / không có gì thay đổi"
else
	say "done / xong (${#CHANGED[@]} changes)"
fi
if ! staged; then
	say "status / trạng thái: systemctl status attendance-gateway; journalctl -u attendance-gateway -f"
fi
say "BACK UP $CONF/master.key OFFLINE NOW (not in the database backups) / SAO LƯU khoá chủ ra USB ngay"
