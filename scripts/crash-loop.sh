#!/usr/bin/env bash
# Crash-consistency loop (docs/api.md, storage guarantees: a `kill -9` at any moment loses no
# acknowledged write and leaves no half-written key).
#
# usage: scripts/crash-loop.sh [CYCLES=50]
#
# Each cycle starts `signet serve` on the same data dir (a fresh free port on
# 127.0.0.1), waits for /readyz, checks that every acknowledged create is
# present (GET 200, listed), every acknowledged delete absent (GET 404, not
# listed) and its token refused (valid false, unknown_key), then runs mixed
# concurrent load (creates in a few orgs, deletes of our own keys, verifies)
# and kills the server with SIGKILL after a random 0.2–2 s. A create counts as
# acknowledged when its 201 arrived in full, a delete when its 204 did;
# requests cut off by the kill are "in doubt" and either outcome is allowed
# (a committed unacknowledged create is found by listing and deleted).
# Between cycles `signet audit verify` checks the hash chains offline.
# After the last cycle: one clean start and check, a graceful stop, then
# `signet keys list` and `signet audit verify` offline, cross-checked with
# what was acknowledged.
#
# Env: SIGNET_BIN (default: build and use target/release/signet),
# CRASH_THREADS (6), CRASH_ORGKEYS_MAX (20), KEEP=1 keeps the work dir,
# SIGNET_BACKEND=postgres runs signet on a private PostgreSQL started in the
# work dir (scripts/lib/postgres.sh) instead of sled; with it,
# SIGNET_INSTANCES=N (1-9, default 1) runs N instances on that database:
# the load is spread over them, each cycle `kill -9`s one at random (the
# others keep taking load for 2.5 s more, so deletes wait out the dead
# one's heartbeat) and starts it again on its port, and every check asks
# every instance (GET 404 and the token refused on each).
# Exit 0 only if nothing was lost, resurrected or otherwise wrong.
set -euo pipefail

CYCLES="${1:-50}"
[[ "$CYCLES" =~ ^[0-9]+$ && "$CYCLES" -ge 1 && "$CYCLES" -le 10000 ]] || {
    echo "usage: $0 [CYCLES (1-10000)]" >&2
    exit 2
}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/postgres.sh
source "$ROOT/scripts/lib/postgres.sh"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/instances.sh
source "$ROOT/scripts/lib/instances.sh"
cd "$ROOT"
DRIVER="$ROOT/scripts/lib/driver.py"
THREADS="${CRASH_THREADS:-6}"
QUOTA="${CRASH_ORGKEYS_MAX:-20}"
ORGS="crash-a,crash-b,crash-c"
INSTANCES="${SIGNET_INSTANCES:-1}"
[[ "$INSTANCES" =~ ^[1-9]$ ]] || die "SIGNET_INSTANCES must be 1-9, not '$INSTANCES'"
if [[ "$INSTANCES" -gt 1 && "${SIGNET_BACKEND:-sled}" != postgres ]]; then
    die "SIGNET_INSTANCES=$INSTANCES needs SIGNET_BACKEND=postgres (sled serves one process)"
fi

BIN="$(signet_bin release)"

WORK="$(make_workdir crash)"
DATA="$WORK/data"
STATE="$WORK/state.json"
DRIVER_PID=""
ADMIN="$(random_token)"
START=$SECONDS

# On exit: SIGKILL the driver, then (grace 0) the server, stop PostgreSQL;
# keep the work dir on failure.
# shellcheck disable=SC2317 # called by the EXIT trap
on_exit() {
    stop_signet "$DRIVER_PID" 0
    stop_signet "$SERVER_PID" 0
    stop_instances 0
    pg_stop
}
cleanup_on_exit "$WORK" keep-failed 0

# Where signet keeps its data: the flags for serve and the offline commands.
BACKEND="${SIGNET_BACKEND:-sled}"
case "$BACKEND" in
    sled) STORAGE=(--data-dir "$DATA") ;;
    postgres)
        pg_start "$WORK/pg"
        random_token 32 >"$WORK/seal.key"
        chmod 600 "$WORK/seal.key"
        # with the [cluster] defaults, which a single instance ignores
        instance_config "$WORK/postgres.toml" "$(pg_database crash)" "$WORK/seal.key"
        STORAGE=(--config "$WORK/postgres.toml")
        ;;
    *) die "SIGNET_BACKEND must be sled or postgres, not '$BACKEND'" ;;
esac
SERVE=("$BIN" serve)
if [[ "$BACKEND" == postgres ]]; then SERVE+=("${STORAGE[@]}"); fi

PORT=""
start_server() {
    local log="$1" rc=0
    PORT="$(free_port)"
    start_signet "$DATA" "$PORT" "$log" ORGKEYS_MAX="$QUOTA" -- "${SERVE[@]}"
    wait_ready "http://127.0.0.1:$PORT" 30 || rc=$?
    case $rc in
        0) return 0 ;;
        1)
            echo "signet serve exited during startup (log $log):" >&2
            cat "$log" >&2
            ;;
        *) echo "signet serve was not ready within 30 s (log $log)" >&2 ;;
    esac
    return 1
}

drive() { # SECONDS SUBCOMMAND ARGS…: the driver, bounded in time
    local limit="$1"
    shift
    timeout --kill-after=5 "$limit" \
        python3 "$DRIVER" "$@" --base "http://127.0.0.1:$PORT" --admin "$ADMIN" --signet "$BIN"
}

# Several instances: i1…iN on the one database.
NAMES=()
for n in $(seq "$INSTANCES"); do NAMES+=("i$n"); done
start_instances() { # start every instance that is not running; PORT: the first's
    local name
    for name in "${NAMES[@]}"; do
        alive "${INSTANCE_PID[$name]:-}" && continue
        start_instance "$name" "$WORK/postgres.toml" "$WORK/$name-$1.log" ORGKEYS_MAX="$QUOTA"
    done
    for name in "${NAMES[@]}"; do ready_instance "$name" 60; done
    PORT="${INSTANCE_PORT[i1]}"
    BASES="$(instance_urls "${NAMES[@]}")"
}

audit_offline() {
    local out
    if ! out="$("$BIN" audit verify "${STORAGE[@]}" 2>&1)"; then
        echo "AUDIT: signet audit verify failed after cycle $1: $out" >&2
        return 1
    fi
}

echo "crash loop: $CYCLES cycles, $BACKEND (${STORAGE[*]}), $INSTANCES instance(s), $THREADS load threads, ORGKEYS_MAX=$QUOTA"
AUDIT_FAILURES=0
# start_all TAG: the server, or every instance that is not running (logs
# named by TAG); sets PORT (the first instance's) and BASES.
start_all() {
    if [[ "$INSTANCES" -eq 1 ]]; then start_server "$WORK/server-$1.log"; else start_instances "$1"; fi
}
# kill_one: kill -9 the server, or one instance picked at random.
kill_one() {
    if [[ "$INSTANCES" -eq 1 ]]; then
        kill -9 "$SERVER_PID"
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
        return
    fi
    local victim="${NAMES[RANDOM % INSTANCES]}"
    echo "  kill -9 instance $victim"
    kill_instance "$victim"
}
# stop_all: SIGTERM and 15 s to stop for each; one that died on its own or
# outlived that fails the run.
stop_all() {
    local pid
    for pid in "$SERVER_PID" "${INSTANCE_PID[@]}"; do
        [[ -n "$pid" ]] || continue
        kill -0 "$pid" # set -e: a server that died on its own is a failure
        if ! stop_signet "$pid" 15; then
            echo "signet serve did not stop within 15 s of SIGTERM" >&2
            exit 1
        fi
    done
    SERVER_PID=""
    stop_instances 0
}
BASES=""
for cycle in $(seq 1 "$CYCLES"); do
    start_all "$cycle"
    drive 300 crash-check --state "$STATE" --orgs "$ORGS" --bases "$BASES"
    drive 90 crash-load --state "$STATE" --orgs "$ORGS" --threads "$THREADS" --max-seconds 20 \
        --bases "$BASES" &
    DRIVER_PID=$!
    # a random moment 0.2–2.0 s into the load
    sleep "$(python3 -c 'import random; print(f"{random.uniform(0.2, 2.0):.3f}")')"
    kill_one
    wait "$DRIVER_PID"
    DRIVER_PID=""
    audit_offline "$cycle" || AUDIT_FAILURES=$((AUDIT_FAILURES + 1))
done

# A last clean start: resolve what was in flight at the final kill, then stop
# gracefully so the offline tools can open the database.
start_all final
drive 300 crash-check --state "$STATE" --orgs "$ORGS" --bases "$BASES"
drive 120 crash-audit --orgs "$ORGS" --out "$WORK/audit.json"
stop_all

"$BIN" keys list "${STORAGE[@]}" >"$WORK/keys.json"
if "$BIN" audit verify "${STORAGE[@]}" >"$WORK/audit-verify.txt" 2>&1; then
    echo "offline: $(cat "$WORK/audit-verify.txt")"
else
    echo "AUDIT: signet audit verify failed at the end: $(cat "$WORK/audit-verify.txt")" >&2
    AUDIT_FAILURES=$((AUDIT_FAILURES + 1))
fi
python3 "$DRIVER" crash-offline --state "$STATE" --list-json "$WORK/keys.json" --audit-json "$WORK/audit.json"

echo "runtime: $((SECONDS - START)) s; audit chain failures: $AUDIT_FAILURES"
rc=0
python3 "$DRIVER" crash-summary --state "$STATE" || rc=1
[[ $AUDIT_FAILURES -eq 0 ]] || rc=1
exit $rc
