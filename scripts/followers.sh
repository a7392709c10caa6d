#!/usr/bin/env bash
# Followers (docs/followers.md) as real processes: a revoking answer is in
# force on every instance and every live follower before it is sent.
#
# usage: scripts/followers.sh [ROUNDS=200]
#
# Starts a private PostgreSQL in a work dir (scripts/lib/postgres.sh), two
# `signet serve` instances A and B sharing it and accepting followers, and
# three followers (`signet serve --upstream`): F1 and F3 of A, F2 of B
# (cluster.max_staleness_ms 2000, the default). Then, with
# scripts/lib/cluster.py:
#   revoke    four concurrent runs of ROUNDS rounds, one per verifier under
#             test (F1, F2, F3, B): create on A, DELETE on B, verify on A
#             and on the one under test as soon as the DELETE answered, while
#             verifier threads hammer it: no request sent after the answer
#             is accepted
#   disable   the same with PATCH {"state":"disabled"} on B, against F2
#   stopped   SIGSTOP F2, DELETE on A: answers within max_staleness plus a
#             margin; after SIGCONT F2 never accepts the deleted key's token
#
# Env: SIGNET_BIN (default: build and use target/release/signet), KEEP=1
# keeps the work dir, FOLLOWERS_VERIFIERS (2 verifier threads per run),
# FOLLOWERS_DISABLE_ROUNDS (20).
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
LOG_TAG=followers
VERIFIERS="${FOLLOWERS_VERIFIERS:-2}"
DISABLE_ROUNDS="${FOLLOWERS_DISABLE_ROUNDS:-20}"
MAX_STALENESS_MS=2000

BIN="$(signet_bin release)"
WORK="$(make_workdir followers)"
ADMIN="$(random_token)"
FOLLOWER_TOKEN="$(random_token)"
# shellcheck disable=SC2317 # called by the EXIT trap
on_exit() {
    stop_instances 0
    pg_stop
}
cleanup_on_exit "$WORK" keep-failed 0

pg_start "$WORK/pg"
URL="$(pg_database followers)"
random_token 32 >"$WORK/seal.key"
chmod 600 "$WORK/seal.key"
instance_config "$WORK/refuse.toml" "$URL" "$WORK/seal.key" refuse "$MAX_STALENESS_MS"
printf '[cluster]\nmax_staleness_ms = %s\n' "$MAX_STALENESS_MS" >"$WORK/follower.toml"
for name in a b; do
    start_instance "$name" "$WORK/refuse.toml" "$WORK/$name.log" ORGKEYS_MAX=50 \
        SIGNET_FOLLOWER_TOKEN="$FOLLOWER_TOKEN"
    ready_instance "$name" 60
done
follower() { # NAME UPSTREAM
    local port="${INSTANCE_PORT[$1]:-$(free_port)}"
    start_signet "$WORK/data-$1" "$port" "$WORK/$1.log" SIGNET_UPSTREAM_TOKEN="$FOLLOWER_TOKEN" \
        -- "$BIN" serve --config "$WORK/follower.toml" --upstream "${INSTANCE_URL[$2]}"
    INSTANCE_PID[$1]=$SERVER_PID
    INSTANCE_PORT[$1]=$port
    INSTANCE_LOG[$1]="$WORK/$1.log"
    INSTANCE_URL[$1]="http://127.0.0.1:$port"
    SERVER_PID=""
    ready_instance "$1" 60
}
follower f1 a
follower f2 b
follower f3 a
log "PostgreSQL on port $PG_PORT; A, B on ports ${INSTANCE_PORT[a]}, ${INSTANCE_PORT[b]}; followers F1 (of A) ${INSTANCE_PORT[f1]}, F2 (of B) ${INSTANCE_PORT[f2]}, F3 (of A) ${INSTANCE_PORT[f3]}; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

FAILED=()
run() { # NAME SUBCOMMAND ARGS…: one check of scripts/lib/cluster.py, bounded in time
    local name="$1" rc=0
    shift
    timeout --kill-after=5 1800 python3 "$ROOT/scripts/lib/cluster.py" "$@" \
        --admin "$ADMIN" --signet "$BIN" --max-staleness "$((MAX_STALENESS_MS / 1000))" \
        >"$WORK/check-$name.out" 2>&1 || rc=$?
    echo "$rc" >"$WORK/check-$name.rc"
}
finish() { # NAME…: print each check's output; record failures
    local name
    for name in "$@"; do
        log "$name"
        cat "$WORK/check-$name.out"
        [[ "$(cat "$WORK/check-$name.rc")" == 0 ]] || FAILED+=("$name")
    done
}

log "revoke: $ROUNDS rounds against each of F1, F2, F3 and B at once"
pids=()
for under in f1 f2 f3 b; do
    run "revoke-$under" revoke --bases "$(instance_urls a b "$under")" --org "revoke-$under" \
        --rounds "$ROUNDS" --verifiers "$VERIFIERS" &
    pids+=($!)
done
wait "${pids[@]}" || true
finish revoke-f1 revoke-f2 revoke-f3 revoke-b

run disable revoke --action disable --bases "$(instance_urls a b f2)" --org disable \
    --rounds "$DISABLE_ROUNDS" --verifiers "$VERIFIERS"
finish disable
run stopped stopped --bases "$(instance_urls a f2)" --pid "${INSTANCE_PID[f2]}" --org stopped
finish stopped

for name in a b f1 f2 f3; do
    alive "${INSTANCE_PID[$name]}" || FAILED+=("$name exited on its own")
done
log "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if ((${#FAILED[@]})); then
    echo "followers: FAILED: ${FAILED[*]}"
    exit 1
fi
echo "followers: every check held"
