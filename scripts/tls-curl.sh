#!/usr/bin/env bash
# curl against a throw-away `signet serve` with native TLS: makes a
# self-signed pair with the openssl command line (the one-liner in
# docs/tls.md), serves it, and checks what an operator would:
#   - `curl --cacert cert.pem` over HTTP/1.1 and HTTP/2 gets 200;
#   - curl without --cacert refuses the certificate (exit 60);
#   - plain http:// to the TLS port gets no HTTP answer.
#
#   scripts/tls-curl.sh            # builds target/release/signet
#   SIGNET_BIN=target/debug/signet scripts/tls-curl.sh
#
# Exit 0 when every check holds, 1 when one does not, 2 on a setup error.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"
LOG_TAG="tls-curl"

install_missing curl openssl
BIN="$(signet_bin release)"
WORK="$(make_workdir tls-curl)"
cleanup_on_exit "$WORK" keep-failed
ADMIN="$(random_token)"
PORT="$(free_port)"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null ||
    die "openssl could not make a self-signed pair"

start_signet "$WORK/data" "$PORT" "$WORK/server.log" \
    SIGNET_TLS_CERT="$WORK/cert.pem" SIGNET_TLS_KEY="$WORK/key.pem"
BASE="https://127.0.0.1:$PORT"
for ((i = 0; i < 300; i++)); do
    curl -fsS -o /dev/null --max-time 1 --cacert "$WORK/cert.pem" "$BASE/readyz" 2>/dev/null && break
    alive "$SERVER_PID" || {
        cat "$WORK/server.log" >&2
        die "signet serve exited at startup"
    }
    sleep 0.1
done

failed=0
check() { # NAME EXPECTED GOT
    if [[ "$2" == "$3" ]]; then
        log "ok: $1 ($3)"
    else
        log "FAILED: $1: expected $2, got $3"
        failed=1
    fi
}
h1="$(curl -sS --http1.1 --cacert "$WORK/cert.pem" -o /dev/null \
    -w '%{http_code} HTTP/%{http_version}' "$BASE/.well-known/jwks.json")"
check "curl --cacert --http1.1" "200 HTTP/1.1" "$h1"
h2="$(curl -sS --http2 --cacert "$WORK/cert.pem" -o /dev/null \
    -w '%{http_code} HTTP/%{http_version}' "$BASE/.well-known/jwks.json")"
check "curl --cacert --http2" "200 HTTP/2" "$h2"
rc=0
curl -sS -o /dev/null "$BASE/healthz" 2>/dev/null || rc=$?
check "curl without --cacert refuses the certificate" 60 "$rc"
plain="$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/healthz" 2>/dev/null || true)"
check "plain http:// to the TLS port gets no HTTP status" 000 "$plain"
exit "$failed"
