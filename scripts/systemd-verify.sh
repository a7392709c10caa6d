#!/usr/bin/env bash
# deploy/signet.service passes `systemd-analyze verify` without a single
# warning (verify exits 0 on unknown keys and bad values, so any output
# fails here), keeps the hardening the README promises, and its
# SystemCallFilter allows every system call signet makes: the server runs
# under strace through start-up, a create, reads, a verify, a delete and a
# SIGTERM shut-down, and each call it made must be in the unit's allow-list
# and not in its deny-list. (A call the filter refuses fails with EPERM and
# would surface only on a real host.)
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
install_missing strace curl python3
BIN="$(signet_bin debug)"
UNIT="$ROOT/deploy/signet.service"

# shellcheck disable=SC2016 # $MAINPID is systemd's, not ours
for line in 'ExecStart=/usr/local/bin/signet serve' 'DynamicUser=yes' 'StateDirectory=signet' \
    'ProtectSystem=strict' 'NoNewPrivileges=yes' 'CapabilityBoundingSet=' \
    'ExecReload=/bin/kill -HUP $MAINPID'; do
    grep -qxF -- "$line" <(sed 's/ --config.*//' "$UNIT") || die "the unit lost: $line"
done

STRACE_PID=""
WORK="$(make_workdir systemd)"
# shellcheck disable=SC2317 # called by the EXIT trap
on_exit() {
    stop_signet "$SERVER_PID" || true
    SERVER_PID=""
    stop_signet "$STRACE_PID" || true
}
cleanup_on_exit "$WORK" keep-failed

sed "s|^ExecStart=/usr/local/bin/signet |ExecStart=$BIN |" "$UNIT" >"$WORK/signet.service"
if ! out="$(systemd-analyze verify "$WORK/signet.service" 2>&1)" || [[ -n "$out" ]]; then
    printf '%s\n' "$out" >&2
    die "systemd-analyze verify found problems in deploy/signet.service"
fi
log "deploy/signet.service verifies cleanly"

# expand NAME…: the system calls NAME… stand for, groups (@…) expanded.
expand() {
    local name
    for name in "$@"; do
        if [[ "$name" == @* ]]; then
            # The group's header line, then its members, up to a blank line.
            systemd-analyze syscall-filter "$name" | awk 'NR > 1 && NF == 0 { exit } NR > 1 { print $1 }' |
                grep -v '^#' | while read -r member; do expand "$member"; done
        else
            echo "$name"
        fi
    done
}
# The filter lines: without ~ they add to the allow-list, with ~ they deny.
mapfile -t allow < <(sed -n 's/^SystemCallFilter=\([^~].*\)/\1/p' "$UNIT" | tr ' ' '\n')
mapfile -t deny < <(sed -n 's/^SystemCallFilter=~\(.*\)/\1/p' "$UNIT" | tr ' ' '\n')
expand "${allow[@]}" | sort -u >"$WORK/allowed"
expand "${deny[@]}" | sort -u >"$WORK/denied"
[[ $(wc -l <"$WORK/allowed") -gt 100 ]] || die "could not expand the unit's SystemCallFilter"

PORT="$(free_port)"
BASE="http://127.0.0.1:$PORT"
ADMIN="$(random_token)"
start_signet "$WORK/data" "$PORT" "$WORK/server.log" -- strace -f -qq -o "$WORK/trace" "$BIN" serve
follow_strace "$WORK/server.log"
ready_or_die "$BASE" 30 "$WORK/server.log"

AUTH="Authorization: Bearer $ADMIN"
curl -fsS -X POST "$BASE/v1/organisations/acme/keys" -H "$AUTH" \
    -H 'Content-Type: application/json' -d '{"name": "filter check"}' -D "$WORK/headers" -o /dev/null
KID="$(sed -n 's|^[Ll]ocation: /v1/keys/\([0-9A-Z]*\).*|\1|p' "$WORK/headers")"
[[ -n "$KID" ]] || die "the create answered no Location"
for path in /.well-known/jwks.json "/v1/keys/$KID" /metrics /readyz; do
    curl -fsS -o /dev/null "$BASE$path"
done
curl -fsS -o /dev/null -X POST "$BASE/v1/verify" -H 'Content-Type: application/json' -d '{"token": "a.b.c"}'
curl -fsS -o /dev/null -X DELETE "$BASE/v1/organisations/acme/keys/$KID" -H "$AUTH"
stop_signet "$SERVER_PID" 15 || die "signet did not stop on SIGTERM"
SERVER_PID=""
stop_signet "$STRACE_PID" || true
STRACE_PID=""

grep -oE '^[0-9]+ +[a-z_0-9]+\(' "$WORK/trace" | awk '{ print $2 }' | tr -d '(' | sort -u >"$WORK/used"
[[ $(wc -l <"$WORK/used") -gt 20 ]] || die "the trace holds no system calls"
refused="$(comm -23 "$WORK/used" "$WORK/allowed"; comm -12 "$WORK/used" "$WORK/denied")"
if [[ -n "$refused" ]]; then
    printf '%s\n' "$refused" >&2
    die "deploy/signet.service's SystemCallFilter refuses these calls signet makes"
fi
log "the unit's SystemCallFilter allows all $(wc -l <"$WORK/used") system calls signet made"
