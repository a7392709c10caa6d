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
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"
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

BIN="$(signet_bin release)"

WORK="$(make_workdir st)"
ADMIN="$(random_token)"
cleanup_on_exit "$WORK" keep

PORT="$(free_port)"
ADDR="127.0.0.1:$PORT"
# A high quota, so that generated creates reach the 201 path instead of
# mostly meeting quota_exceeded (ST_ORGKEYS_MAX=5 tests the default).
start_signet "$WORK/data" "$PORT" "$WORK/server.log" \
    ORGKEYS_MAX="${ST_ORGKEYS_MAX:-1000}" SIGNET_LOG="${ST_SERVER_LOG:-warn}"
if ! wait_ready "http://$ADDR" 30; then
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

if server_gone; then
    echo "the server exited with status $SERVER_STATUS during the run; its log:" >&2
    cat "$WORK/server.log" >&2
    rc=1
fi
if [[ -s "$WORK/server.log" ]]; then
    echo "server log (warn and above), last 20 lines:"
    tail -n 20 "$WORK/server.log"
fi
echo "runtime: $((SECONDS - START)) s; seed $SEED; reports in $REPORT"
exit $rc
