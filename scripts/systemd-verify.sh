#!/usr/bin/env bash
# deploy/signet.service passes `systemd-analyze verify` without a single
# warning (verify exits 0 on unknown keys and bad values, so any output
# fails here), and keeps the hardening the README promises.
#
#   scripts/systemd-verify.sh      # SIGNET_BIN=path to skip the debug build
#
# verify insists that ExecStart's binary exists, so the unit is checked as a
# copy whose ExecStart names the binary just built.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"
LOG_TAG=systemd-verify

command -v systemd-analyze >/dev/null 2>&1 || install_missing systemd
command -v systemd-analyze >/dev/null 2>&1 || die "systemd-analyze is not available"
BIN="$(signet_bin debug)"
UNIT="$ROOT/deploy/signet.service"

for line in 'ExecStart=/usr/local/bin/signet serve' 'DynamicUser=yes' 'StateDirectory=signet' \
    'ProtectSystem=strict' 'NoNewPrivileges=yes' 'CapabilityBoundingSet=' \
    'ExecReload=/bin/kill -HUP $MAINPID'; do
    grep -qxF -- "$line" <(sed 's/ --config.*//' "$UNIT") || die "the unit lost: $line"
done

WORK="$(make_workdir systemd)"
trap 'rm -rf "$WORK"' EXIT
sed "s|^ExecStart=/usr/local/bin/signet |ExecStart=$BIN |" "$UNIT" >"$WORK/signet.service"
if ! out="$(systemd-analyze verify "$WORK/signet.service" 2>&1)" || [[ -n "$out" ]]; then
    printf '%s\n' "$out" >&2
    die "systemd-analyze verify found problems in deploy/signet.service"
fi
log "deploy/signet.service verifies cleanly"
