#!/usr/bin/env bash
# Soak test: mixed load against one `signet serve` for a warm-up and then
# SECONDS of measured run, then a Markdown report.
#
# usage: scripts/soak.sh [SECONDS=600]
#
# Several threads (scripts/lib/driver.py soak) send JWKS GETs (half of them
# conditional, answered 304), POST /v1/verify with valid tokens of live
# keys, and creates/deletes in a few organisations kept under the quota (a
# few racing creates meet quota_exceeded on purpose). Counted: requests,
# errors (any 5xx or a request without a complete response) and expected
# 4xx separately, p99 latency per minute per kind.
# The server's RSS (VmRSS from /proc/PID/status) is sampled at the start,
# every 10 s, and at the end. The baseline for growth is the sample after
# the warm-up (SOAK_WARMUP, 600 s): sled's page cache fills with written
# records for the first 15 minutes or so of churn (see docs/performance.md, "Memory"),
# so a short warm-up measures that fill, not a leak. The report also gives the
# growth over the second half of the measured window: a leak keeps its
# pace there, a filling cache slows down.
#
# Env: SIGNET_BIN (default: build and use target/release/signet),
# SOAK_THREADS (6), SOAK_WARMUP (600), SOAK_CHURN_PAUSE (0.25 s between one
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
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"
cd "$ROOT"
DRIVER="$ROOT/scripts/lib/driver.py"
THREADS="${SOAK_THREADS:-6}"
WARMUP="${SOAK_WARMUP:-600}"
CHURN_PAUSE="${SOAK_CHURN_PAUSE:-0.25}"
QUOTA=5
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "SOAK_WARMUP must be a number of seconds"

BIN="$(signet_bin release)"

WORK="$(make_workdir soak)"
ADMIN="$(random_token)"
cleanup_on_exit "$WORK" keep-failed

PORT="$(free_port)"
start_signet "$WORK/data" "$PORT" "$WORK/server.log" ORGKEYS_MAX="$QUOTA"
if ! wait_ready "http://127.0.0.1:$PORT" 30; then
    echo "signet serve did not become ready:" >&2
    cat "$WORK/server.log" >&2
    exit 1
fi

START=$SECONDS
rc=0
# The driver stops by itself after WARMUP + DURATION (+2 min hard bound
# for requests in flight); `timeout` is the last resort.
timeout --kill-after=10 $((WARMUP + DURATION + 300)) \
    python3 "$DRIVER" soak --base "http://127.0.0.1:$PORT" --admin "$ADMIN" --signet "$BIN" \
    --pid "$SERVER_PID" --seconds "$DURATION" --warmup "$WARMUP" --threads "$THREADS" \
    --quota "$QUOTA" --churn-pause "$CHURN_PAUSE" || rc=$?

if server_gone; then
    echo "the server exited with status $SERVER_STATUS during the soak; its log:" >&2
    cat "$WORK/server.log" >&2
    rc=1
fi
if [[ -s "$WORK/server.log" ]]; then
    echo
    echo "server log (warn and above), last 20 lines:"
    tail -n 20 "$WORK/server.log"
fi
echo "data dir size at the end: $(du -sh "$WORK/data" | cut -f1)"
echo "runtime: $((SECONDS - START)) s"
exit $rc
