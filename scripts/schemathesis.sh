#!/usr/bin/env bash
# Property-based API testing of a running signet against its own OpenAPI
# document (GET /openapi.yaml), with schemathesis from PyPI.
#
# usage: scripts/schemathesis.sh [extra `schemathesis run` options…]
#
# Installs schemathesis (and openapi-spec-validator) into
# target/schemathesis/venv if missing, starts `signet serve` on a free
# 127.0.0.1 port with a temporary data dir, checks that the served document
# is a valid OpenAPI 3.1 document, then runs
#   schemathesis run http://ADDR/openapi.yaml --url http://ADDR
#     -H "Authorization: Bearer $ADMIN"
#     --checks not_a_server_error,response_schema_conformance
#     --max-examples 50 --max-time 300
# (--url because the document's `servers` names the default 8081).
# Reports (JUnit, NDJSON) go to target/schemathesis/report/.
#
# Env: SIGNET_BIN (default: build and use target/release/signet),
# ST_MAX_EXAMPLES (50), ST_MAX_TIME (300 s), ST_SEED (random),
# ST_CHECKS (not_a_server_error,response_schema_conformance), ST_SERVER_LOG
# (the server's SIGNET_LOG, warn), ST_ORGKEYS_MAX (1000), KEEP=1.
# Exit status is schemathesis's (0: no failures).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ST_DIR="$ROOT/target/schemathesis"
VENV="$ST_DIR/venv"
REPORT="$ST_DIR/report"
MAX_EXAMPLES="${ST_MAX_EXAMPLES:-50}"
MAX_TIME="${ST_MAX_TIME:-300}"
CHECKS="${ST_CHECKS:-not_a_server_error,response_schema_conformance}"
SEED="${ST_SEED:-$((RANDOM * 32768 + RANDOM))}"

if ! "$VENV/bin/schemathesis" --version >/dev/null 2>&1 ||
    ! "$VENV/bin/python" -c 'import openapi_spec_validator' 2>/dev/null; then
    echo "installing schemathesis into $VENV"
    mkdir -p "$ST_DIR"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check schemathesis openapi-spec-validator
fi
"$VENV/bin/schemathesis" --version

if [[ -z "${SIGNET_BIN:-}" ]]; then
    cargo build --release --quiet
    SIGNET_BIN="$ROOT/target/release/signet"
fi
BIN="$SIGNET_BIN"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/signet-st.XXXXXX")"
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
    if [[ "${KEEP:-0}" == 1 ]]; then
        echo "work dir kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
ADDR="127.0.0.1:$PORT"
# A high quota, so that generated creates reach the 201 path instead of
# mostly meeting quota_exceeded (ST_ORGKEYS_MAX=5 tests the default).
SIGNET_DATA_DIR="$WORK/data" SIGNET_LISTEN="$ADDR" SIGNET_ADMIN_TOKEN="$ADMIN" \
    ORGKEYS_MAX="${ST_ORGKEYS_MAX:-1000}" SIGNET_LOG="${ST_SERVER_LOG:-warn}" "$BIN" serve >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
ready=0
for _ in $(seq 1 300); do # 30 s at most
    kill -0 "$SERVER_PID" 2>/dev/null || break
    if curl -fsS -o /dev/null --max-time 1 "http://$ADDR/readyz" 2>/dev/null; then
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

# The document the server serves must be there and valid.
curl -fsS --max-time 5 "http://$ADDR/openapi.yaml" -o "$WORK/openapi.yaml"
if [[ ! -s "$WORK/openapi.yaml" ]]; then
    echo "GET /openapi.yaml answered an empty document" >&2
    exit 1
fi
"$VENV/bin/python" - "$WORK/openapi.yaml" <<'EOF'
import sys, yaml
from openapi_spec_validator import validate
doc = yaml.safe_load(open(sys.argv[1]))
validate(doc)
print(f"served document: valid OpenAPI {doc['openapi']}, {len(doc['paths'])} paths, "
      f"{sum(1 for p in doc['paths'].values() for m in p if m in ('get','put','post','delete','patch','head','options'))} operations")
EOF

rm -rf "$REPORT"
mkdir -p "$REPORT"
START=$SECONDS
rc=0
echo "schemathesis run http://$ADDR/openapi.yaml --checks $CHECKS --max-examples $MAX_EXAMPLES --max-time $MAX_TIME --seed $SEED"
timeout --kill-after=15 $((MAX_TIME + 120)) \
    "$VENV/bin/schemathesis" run "http://$ADDR/openapi.yaml" \
    --url "http://$ADDR" \
    -H "Authorization: Bearer $ADMIN" \
    --checks "$CHECKS" \
    --max-examples "$MAX_EXAMPLES" \
    --max-time "$MAX_TIME" \
    --request-timeout 10 \
    --seed "$SEED" \
    --no-color \
    --generation-database "$ST_DIR/examples.db" \
    --output-sanitize true \
    --report junit,ndjson --report-dir "$REPORT" \
    "$@" || rc=$?

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    status=0
    wait "$SERVER_PID" 2>/dev/null || status=$?
    SERVER_PID=""
    if [[ $status -gt 128 ]]; then
        status="$status (signal $(kill -l $((status - 128))))"
    fi
    echo "the server exited with status $status during the run; its log:" >&2
    cat "$WORK/server.log" >&2
    rc=1
fi
if [[ -s "$WORK/server.log" ]]; then
    echo "server log (warn and above), last 20 lines:"
    tail -n 20 "$WORK/server.log"
fi
echo "runtime: $((SECONDS - START)) s; seed $SEED; reports in $REPORT"
exit $rc
