#!/usr/bin/env bash
# What TLS costs signet, in one short run (about 20 s):
#   - GET /.well-known/jwks.json (5 keys) with keep-alive, plain HTTP and
#     TLS side by side: wrk -t1 -c32 for DURATION each, requests/s and the
#     ratio;
#   - full TLS handshakes per second with an ECDSA P-256 certificate:
#     `openssl s_time -new` (a new connection each time, no session reuse)
#     for DURATION against signet and against `openssl s_server` with the
#     same certificate and key, alternating, ROUNDS times each; the ratio
#     of the medians.
# Every server is pinned to CPU 0 (`taskset -c 0`: one core), the clients
# to CPU 1. Prints one Markdown table.
#
#   scripts/tls-bench.sh           # builds target/release/signet
#   SIGNET_BIN=path scripts/tls-bench.sh
#
# Knobs: DURATION (seconds, default 5), CONNECTIONS (32), ROUNDS (3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"
LOG_TAG="tls-bench"
DURATION="${DURATION:-5}"
CONNECTIONS="${CONNECTIONS:-32}"
ROUNDS="${ROUNDS:-3}"

install_missing wrk curl openssl taskset
BIN="$(signet_bin release)"
WORK="$(make_workdir tls-bench)"
PLAIN_PID=""
OSSL_PID=""
# shellcheck disable=SC2317 # called by the EXIT trap
on_exit() {
    stop_signet "$PLAIN_PID" 5 || true
    stop_signet "$OSSL_PID" 5 || true
}
cleanup_on_exit "$WORK" remove 5
ADMIN="$(random_token)"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null ||
    die "openssl could not make a self-signed pair"

PLAIN_PORT="$(free_port)"
start_signet "$WORK/plain" "$PLAIN_PORT" "$WORK/plain.log" -- taskset -c 0 "$BIN" serve
PLAIN_PID="$SERVER_PID"
ready_or_die "http://127.0.0.1:$PLAIN_PORT" 30 "$WORK/plain.log"
TLS_PORT="$(free_port)"
start_signet "$WORK/tls" "$TLS_PORT" "$WORK/tls.log" \
    SIGNET_TLS_CERT="$WORK/cert.pem" SIGNET_TLS_KEY="$WORK/key.pem" -- taskset -c 0 "$BIN" serve
CURL_TLS=(--cacert "$WORK/cert.pem")
for ((i = 0; i < 300; i++)); do
    curl -fsS -o /dev/null --max-time 1 "${CURL_TLS[@]}" "https://127.0.0.1:$TLS_PORT/readyz" 2>/dev/null && break
    alive "$SERVER_PID" || die "the TLS server exited at startup: $(cat "$WORK/tls.log")"
    sleep 0.1
done

for base in "http://127.0.0.1:$PLAIN_PORT" "https://127.0.0.1:$TLS_PORT"; do
    for i in 1 2 3 4 5; do
        curl -fsS -o /dev/null "${CURL_TLS[@]}" -X POST "$base/v1/organisations/bench/keys" \
            -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
            --data "{\"name\": \"bench $i\"}" || die "creating a key on $base failed"
    done
done

# rps URL: wrk's requests/s, the client on CPU 1.
rps() {
    taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "$1" |
        awk '/^Requests\/sec:/ { printf "%.0f", $2 }'
}
log "JWKS, plain HTTP keep-alive"
plain="$(rps "http://127.0.0.1:$PLAIN_PORT/.well-known/jwks.json")"
log "JWKS, TLS keep-alive"
tls="$(rps "https://127.0.0.1:$TLS_PORT/.well-known/jwks.json")"

# The anchor: OpenSSL's own server, one process on one core, the same pair.
OSSL_PORT="$(free_port)"
taskset -c 0 openssl s_server -quiet -accept "127.0.0.1:$OSSL_PORT" \
    -cert "$WORK/cert.pem" -key "$WORK/key.pem" </dev/null >"$WORK/s_server.log" 2>&1 &
OSSL_PID=$!
for ((i = 0; i < 100; i++)); do
    openssl s_client -connect "127.0.0.1:$OSSL_PORT" </dev/null >/dev/null 2>&1 && break
    alive "$OSSL_PID" || die "openssl s_server exited: $(cat "$WORK/s_server.log")"
    sleep 0.1
done

# handshakes PORT: full handshakes per second (openssl s_time -new, CPU 1)
handshakes() {
    taskset -c 1 openssl s_time -connect "127.0.0.1:$1" -new -time "$DURATION" 2>/dev/null </dev/null |
        awk '/connections in .* real seconds/ { printf "%.0f", $1 / $4; exit }'
}
SIGNET_HS=()
OSSL_HS=()
for ((round = 1; round <= ROUNDS; round++)); do
    log "full handshakes (openssl s_time -new), round $round of $ROUNDS: signet, then openssl s_server"
    SIGNET_HS+=("$(handshakes "$TLS_PORT")")
    OSSL_HS+=("$(handshakes "$OSSL_PORT")")
done
read -r handshakes ossl_handshakes hs_ratio < <(python3 -c '
import statistics, sys
s, o = (list(map(float, a.split())) for a in sys.argv[1:])
print(f"{statistics.median(s):.0f} {statistics.median(o):.0f} {statistics.median(s) / statistics.median(o):.2f}")
' "${SIGNET_HS[*]}" "${OSSL_HS[*]}")

echo "| measure (server on one core) | result |"
echo "| --- | --- |"
echo "| GET /.well-known/jwks.json, plain, keep-alive | $plain req/s |"
echo "| GET /.well-known/jwks.json, TLS 1.3, keep-alive | $tls req/s |"
echo "| TLS / plain | $(python3 -c "print(f'{$tls / $plain:.2f}')") |"
echo "| full TLS handshakes, ECDSA P-256 certificate (new connection each, no resumption), median of ${SIGNET_HS[*]} | $handshakes /s |"
echo "| \`openssl s_server\`, same certificate, median of ${OSSL_HS[*]} | $ossl_handshakes /s |"
echo "| handshakes, signet / openssl s_server | $hs_ratio |"
