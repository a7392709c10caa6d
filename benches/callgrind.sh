#!/usr/bin/env bash
# Instructions per request of signet's hot routes, counted by valgrind's
# callgrind: repeatable on a busy machine where wrk's rates move by ±15 %.
#
#   benches/callgrind.sh            # builds target/release/signet
#   SIGNET_BIN=path benches/callgrind.sh
#
# Starts signet once natively to create a key and mint a token, then again
# under `valgrind --tool=callgrind` with collection off. For each route it
# sends WARMUP requests, then zeroes the counters, sends REQUESTS keep-alive
# requests one at a time on one connection, and dumps the counters:
#   auth  GET /v1/auth, one RS256 token repeated (token-cache hits)
#   jwks  GET /.well-known/jwks.json (5 keys)
#   idle  no request for as long as the jwks batch took (timers, sled)
# With FRESH=1, then again in a second server with the verdict cache off
# (token_cache_entries = 0), so that every request checks the signature:
#   fresh-rs256, fresh-es256, fresh-eddsa  GET /v1/auth, one token each
# Prints instructions per request (user space only: callgrind does not
# see the kernel) and the top functions by inclusive cost of each batch;
# the dumps stay in OUT (default target/callgrind) for callgrind_annotate.
#
# Environment knobs (optional): REQUESTS (default 5000), WARMUP (200),
# OUT (target/callgrind), TOP (25 functions per route), FRESH (0).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/common.sh
source "$REPO/scripts/lib/common.sh"
REQUESTS="${REQUESTS:-5000}"
WARMUP="${WARMUP:-200}"
OUT="${OUT:-$REPO/target/callgrind}"
TOP="${TOP:-25}"
FRESH="${FRESH:-0}"
ORG="callgrind"
LOG_TAG=callgrind

install_missing valgrind curl python3
BIN="$(signet_bin release)"
WORK="$(make_workdir callgrind)"
cleanup_on_exit "$WORK" remove 30
mkdir -p "$OUT" "$WORK/data"
chmod 700 "$WORK/data"
rm -f "$OUT"/callgrind.out.*
ADMIN="$(random_token 36)"
PORT="$(free_port)"
BASE="http://127.0.0.1:$PORT"
# No key pool under valgrind: generating RSA keys there takes minutes and
# would run during the batches.
sed 's/^pool_2048 = [0-9]*/pool_2048 = 0/' "$REPO/config.toml" >"$WORK/config.toml"

log "creating a key and minting a token (native run)"
start_signet "$WORK/data" "$PORT" "$WORK/native.log" -- "$BIN" serve --config "$WORK/config.toml"
ready_or_die "$BASE" 30 "$WORK/native.log"
curl -fsS --max-time 60 -o "$WORK/key.json" -X POST "$BASE/v1/organisations/$ORG/keys" \
    -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    --data '{"name": "callgrind"}'
for i in 2 3 4 5; do
    curl -fsS --max-time 60 -o /dev/null -X POST "$BASE/v1/organisations/$ORG/keys" \
        -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
        --data "{\"name\": \"callgrind $i\"}"
done
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }
(
    umask 077
    field "$WORK/key.json" privateKey >"$WORK/private.pem"
)
TOKEN="$("$BIN" token --key "$WORK/private.pem" --kid "$(field "$WORK/key.json" id)" \
    --org "$ORG" --ttl 1h)"
rm -f "$WORK/private.pem" "$WORK/key.json"
stop_signet "$SERVER_PID" 10 || die "signet did not stop"

log "starting signet under callgrind"
start_signet "$WORK/data" "$PORT" "$WORK/valgrind.log" -- \
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out.%p" \
    "$BIN" serve --config "$WORK/config.toml"
ready_or_die "$BASE" 120 "$WORK/valgrind.log"

# client PATH COUNT [TOKEN]: COUNT keep-alive GETs, one at a time, each 200
client() {
    python3 - "$PORT" "$@" <<'EOF'
import socket, sys
port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
if len(sys.argv) > 4:
    head += f"Authorization: Bearer {sys.argv[4]}\r\n"
req = (head + "\r\n").encode()
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf = b""
for i in range(n):
    s.sendall(req)
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("the server closed the connection")
        buf += chunk
    top, _, buf = buf.partition(b"\r\n\r\n")
    lines = top.split(b"\r\n")
    if lines[0].split()[1] != b"200":
        sys.exit(f"request {i} to {path}: {lines[0].decode()}")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(buf) < length:
        buf += s.recv(65536)
    buf = buf[length:]
EOF
}

# batch NAME PATH [TOKEN]: warm up, then count REQUESTS requests
batch() {
    local name="$1"
    shift
    client "$1" "$WARMUP" "${@:2}"
    callgrind_control -i on "$SERVER_PID" >/dev/null
    callgrind_control -z "$SERVER_PID" >/dev/null
    local t0=$SECONDS
    client "$1" "$REQUESTS" "${@:2}"
    BATCH_SECONDS=$((SECONDS - t0))
    callgrind_control -d "$name" "$SERVER_PID" >/dev/null
    callgrind_control -i off "$SERVER_PID" >/dev/null
    log "$name: $REQUESTS requests in ${BATCH_SECONDS}s"
}

batch auth /v1/auth "$TOKEN"
batch jwks /.well-known/jwks.json
callgrind_control -i on "$SERVER_PID" >/dev/null
callgrind_control -z "$SERVER_PID" >/dev/null
sleep "$BATCH_SECONDS"
callgrind_control -d idle "$SERVER_PID" >/dev/null
callgrind_control -i off "$SERVER_PID" >/dev/null
stop_signet "$SERVER_PID" 60 || true

if [[ "$FRESH" != 0 ]]; then
    # Created after the jwks batch, so that it counts the same 5 keys.
    log "creating an ES256 and an EdDSA key and minting their tokens (native run)"
    start_signet "$WORK/data" "$PORT" "$WORK/native-fresh.log" -- "$BIN" serve --config "$WORK/config.toml"
    ready_or_die "$BASE" 30 "$WORK/native-fresh.log"
    declare -A FRESH_TOKEN=([rs256]="$TOKEN")
    for alg in ES256 EdDSA; do
        curl -fsS --max-time 60 -o "$WORK/key.json" -X POST "$BASE/v1/organisations/$ORG-fresh/keys" \
            -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
            --data "{\"name\": \"callgrind $alg\", \"algorithm\": \"$alg\"}"
        (
            umask 077
            field "$WORK/key.json" privateKey >"$WORK/private.pem"
        )
        FRESH_TOKEN[${alg,,}]="$("$BIN" token --key "$WORK/private.pem" --alg "$alg" \
            --kid "$(field "$WORK/key.json" id)" --org "$ORG-fresh" --ttl 1h)"
        rm -f "$WORK/private.pem" "$WORK/key.json"
    done
    stop_signet "$SERVER_PID" 10 || die "signet did not stop"
    log "starting signet under callgrind with the verdict cache off"
    sed -i 's/^token_cache_entries = [0-9]*/token_cache_entries = 0/' "$WORK/config.toml"
    grep -q '^token_cache_entries = 0' "$WORK/config.toml" || die "could not turn the verdict cache off"
    start_signet "$WORK/data" "$PORT" "$WORK/valgrind-fresh.log" -- \
        valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out.%p" \
        "$BIN" serve --config "$WORK/config.toml"
    ready_or_die "$BASE" 120 "$WORK/valgrind-fresh.log"
    for alg in rs256 es256 eddsa; do
        batch "fresh-$alg" /v1/auth "${FRESH_TOKEN[$alg]}"
    done
    stop_signet "$SERVER_PID" 60 || true
fi

# --- report ------------------------------------------------------------------
for dump in "$OUT"/callgrind.out.*.[0-9]*; do
    name="$(sed -n 's/^desc: Trigger: dump //p' "$dump")"
    [[ -n "$name" ]] || continue
    total="$(sed -n 's/^summary: //p;s/^totals: //p' "$dump" | head -n1)"
    per=$((total / REQUESTS))
    echo "== $name: $total instructions, $per per request (of $REQUESTS)"
    callgrind_annotate --inclusive=yes "$dump" 2>/dev/null |
        sed -n '/^Ir/,$p' | sed -n "3,$((TOP + 2))p"
done
