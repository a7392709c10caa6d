#!/usr/bin/env bash
# Soak test: mixed load against one `signet serve` for SECONDS, then a
# Markdown report.
#
# usage: scripts/soak.sh [SECONDS=600]
#
# Several threads (scripts/lib/driver.py soak) send, for SECONDS: JWKS GETs
# (half of them conditional, answered 304), POST /v1/verify with valid
# tokens of live keys, and creates/deletes in a few organisations kept
# under the quota (a few racing creates meet quota_exceeded on purpose).
# Counted: requests, errors (any 5xx or a request without a complete
# response) and expected 4xx separately, p99 latency per minute per kind.
# The server's RSS (VmRSS from /proc/PID/status) is sampled at the start,
# every 10 s, and at the end; the baseline for growth is the sample after a
# 30 s warm-up (SOAK_WARMUP), since caches, the key pool and sled's page
# cache fill during the first seconds.
#
# Env: SIGNET_BIN (default: build and use target/release/signet),
# SOAK_THREADS (6), SOAK_WARMUP (30), SOAK_CHURN_PAUSE (0.25 s between one
# churn thread's creates/deletes; a large value makes a read-only control
# run), KEEP=1 keeps the work dir.
# Exit 0 if there were no errors, no wrong verification result and RSS grew
# at most 10 % over the baseline.
set -euo pipefail

DURATION="${1:-600}"
[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 1 && "$DURATION" -le 86400 ]] || {
    echo "usage: $0 [SECONDS (1-86400)]" >&2
    exit 2
}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRIVER="$ROOT/scripts/lib/driver.py"
THREADS="${SOAK_THREADS:-6}"
WARMUP="${SOAK_WARMUP:-30}"
CHURN_PAUSE="${SOAK_CHURN_PAUSE:-0.25}"
QUOTA=5

if [[ -z "${SIGNET_BIN:-}" ]]; then
    cargo build --release --quiet
    SIGNET_BIN="$ROOT/target/release/signet"
fi
BIN="$SIGNET_BIN"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/signet-soak.XXXXXX")"
SERVER_PID=""
ADMIN="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local rc=$?
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ "${KEEP:-0}" == 1 || $rc -ne 0 ]]; then
        echo "work dir kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
SIGNET_DATA_DIR="$WORK/data" SIGNET_LISTEN="127.0.0.1:$PORT" SIGNET_ADMIN_TOKEN="$ADMIN" \
    SIGNET_LOG=warn ORGKEYS_MAX="$QUOTA" "$BIN" serve >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
ready=0
for _ in $(seq 1 300); do # 30 s at most
    kill -0 "$SERVER_PID" 2>/dev/null || break
    if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/readyz" 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.1
done
if [[ $ready -ne 1 ]]; then
    echo "signet serve did not become ready:" >&2
    cat "$WORK/server.log" >&2
    exit 1
fi

START=$SECONDS
rc=0
# The driver stops by itself after DURATION (+2 min hard bound for
# requests in flight); `timeout` is the last resort.
timeout --kill-after=10 $((DURATION + 300)) \
    python3 "$DRIVER" soak --base "http://127.0.0.1:$PORT" --admin "$ADMIN" --signet "$BIN" \
    --pid "$SERVER_PID" --seconds "$DURATION" --warmup "$WARMUP" --threads "$THREADS" \
    --quota "$QUOTA" --churn-pause "$CHURN_PAUSE" || rc=$?

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    status=0
    wait "$SERVER_PID" 2>/dev/null || status=$?
    SERVER_PID=""
    if [[ $status -gt 128 ]]; then
        status="$status (signal $(kill -l $((status - 128))))"
    fi
    echo "the server exited with status $status during the soak; its log:" >&2
    cat "$WORK/server.log" >&2
    rc=1
fi
if [[ -s "$WORK/server.log" ]]; then
    echo
    echo "server log (warn and above), last 20 lines:"
    tail -n 20 "$WORK/server.log"
fi
echo "data dir size at the end: $(du -sh "$WORK/data" | cut -f1) (sled's page cache holds up to 64 MiB of it)"
echo "runtime: $((SECONDS - START)) s"
exit $rc
