#!/usr/bin/env bash
# Upgrade the installed gateway to this checkout / Nâng cấp cổng lên bản mã nguồn này.
#
#   sudo hardware/gateway/upgrade.sh [install.sh options]
#
# The same as `install.sh --upgrade`: build the new release beside the running one, stop the
# gateway, back up the database (attendance-gateway backup), switch /opt/attendance to the new
# release, run `attendance-gateway migrate`, start it (Type=notify: start waits for READY=1) and
# check that it stays up. If any step fails, the previous release, its systemd units and the
# database backup are put back and the previous gateway is started again. docs/install.md.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/install.sh" --upgrade "$@"
