#!/usr/bin/env bash
# Several instances on one PostgreSQL, as real processes (docs/postgres.md,
# "Several instances"): a delete is in force on every instance before it
# answers, however the others are doing.
#
# usage: scripts/cluster.sh [ROUNDS=200]
#
# Starts a private PostgreSQL in a work dir (scripts/lib/postgres.sh) and
# three `signet serve` processes A, B and C on free ports sharing it
# (cluster.max_staleness_ms 2000, the default), then checks, in order:
#   revoke    ROUNDS rounds: create on A, mint a token, DELETE on B, verify
#             on A and C as soon as the DELETE answered, while verifier
#             threads hammer C with the same token: no request sent after
#             the answer is accepted
#   quota     20 concurrent creates spread over A, B and C in one
#             organisation with quota 5: exactly 5 exist
#   disable   rounds like revoke with PATCH {"state":"disabled"} on B: A and
#             C refuse (key_disabled) at once
#   stopped   SIGSTOP C, DELETE on A: answers within max_staleness plus a
#             margin; after SIGCONT C never accepts the deleted key's token
#   killed    kill -9 C: A and B keep serving, deletes complete (the first
#             within max_staleness plus a margin, the later ones at once,
#             when C's heartbeat has lapsed); C is started again
#   pg-down   PostgreSQL stopped: JWK Sets answer, writes 503, after
#             max_staleness verification 503 on A, B, C and 200 on a fourth
#             instance D with cluster.stale_verification = "serve";
#             PostgreSQL started again: every instance recovers, no restart
# (scripts/lib/cluster.py does the HTTP side of each.)
#
# A known shortfall of the current build is reported as KNOWN-FAIL and does
# not fail the run unless CLUSTER_STRICT=1: GET /v1/keys/{id} reads the
# database, so it answers 503 while PostgreSQL is away.
#
# Env: SIGNET_BIN (default: build and use target/release/signet), KEEP=1
# keeps the work dir, CLUSTER_VERIFIERS (3 verifier threads),
# CLUSTER_DISABLE_ROUNDS (20), CLUSTER_STRICT (0).
# Exit 0 only if every check held (1 otherwise, 2 on a setup error).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"
ROUNDS="$(rounds_arg "${1:-200}")"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/postgres.sh
source "$ROOT/scripts/lib/postgres.sh"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/instances.sh
source "$ROOT/scripts/lib/instances.sh"
LOG_TAG=cluster
VERIFIERS="${CLUSTER_VERIFIERS:-3}"
DISABLE_ROUNDS="${CLUSTER_DISABLE_ROUNDS:-20}"
STRICT="${CLUSTER_STRICT:-0}"
MAX_STALENESS_MS=2000

BIN="$(signet_bin release)"
WORK="$(make_workdir cluster)"
ADMIN="$(random_token)"
# shellcheck disable=SC2317 # called by the EXIT trap
on_exit() {
    stop_instances 0
    pg_stop
}
cleanup_on_exit "$WORK" keep-failed 0

pg_start "$WORK/pg"
URL="$(pg_database cluster)"
random_token 32 >"$WORK/seal.key"
chmod 600 "$WORK/seal.key"
instance_config "$WORK/refuse.toml" "$URL" "$WORK/seal.key" refuse "$MAX_STALENESS_MS"
instance_config "$WORK/serve.toml" "$URL" "$WORK/seal.key" serve "$MAX_STALENESS_MS"
start() { # NAME [CONFIG=refuse]
    start_instance "$1" "$WORK/${2:-refuse}.toml" "$WORK/$1.log" ORGKEYS_MAX=5
    ready_instance "$1" 60
}
for name in a b c; do start "$name"; done
log "PostgreSQL on port $PG_PORT; A, B, C on ports ${INSTANCE_PORT[a]}, ${INSTANCE_PORT[b]}, ${INSTANCE_PORT[c]}; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

FAILED=()
KNOWN_FAIL=()
# check NAME SUBCOMMAND ARGS…: one check of scripts/lib/cluster.py, bounded
# in time; a failure (exit 1) or known shortfall (exit 3) is recorded, the
# run goes on.
check() {
    local name="$1" rc=0
    shift
    log "$name"
    timeout --kill-after=5 900 python3 "$ROOT/scripts/lib/cluster.py" "$@" \
        --admin "$ADMIN" --signet "$BIN" --max-staleness "$((MAX_STALENESS_MS / 1000))" || rc=$?
    case $rc in
        0) ;;
        3) known "$name" ;;
        *) FAILED+=("$name") ;;
    esac
}
known() { # NAME: a known shortfall; a failure under CLUSTER_STRICT=1
    if [[ "$STRICT" == 1 ]]; then FAILED+=("$1"); else KNOWN_FAIL+=("$1"); fi
}
ABC="$(instance_urls a b c)"

check revoke revoke --bases "$ABC" --org revoke --rounds "$ROUNDS" --verifiers "$VERIFIERS"
check quota quota --bases "$ABC" --org quota --n 20 --quota 5
check disable revoke --action disable --bases "$ABC" --org disable \
    --rounds "$DISABLE_ROUNDS" --verifiers "$VERIFIERS"
check stopped stopped --bases "$(instance_urls a c)" --pid "${INSTANCE_PID[c]}" --org stopped
check killed-prepare killed-prepare --bases "$ABC" --org killed --state "$WORK/killed.json"
kill_instance c
check killed killed --bases "$(instance_urls a b)" --org killed --state "$WORK/killed.json"
start c
log "C started again on port ${INSTANCE_PORT[c]}"

start d serve
check pg-prepare pg-prepare --bases "$(instance_urls a b c d)" --org outage --state "$WORK/outage.json"
pg_stop
check pg-down pg-down --bases "$ABC" --serve "${INSTANCE_URL[d]}" --org outage --state "$WORK/outage.json"
pg_resume
check pg-back pg-back --bases "$(instance_urls a b c d)" --org outage --state "$WORK/outage.json"
for name in a b c d; do
    alive "${INSTANCE_PID[$name]}" || FAILED+=("instance $name exited on its own")
done

log "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if ((${#KNOWN_FAIL[@]})); then echo "known shortfalls (KNOWN-FAIL): ${KNOWN_FAIL[*]}"; fi
if ((${#FAILED[@]})); then
    echo "cluster: FAILED: ${FAILED[*]}"
    exit 1
fi
echo "cluster: every check held"
