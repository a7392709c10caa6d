#!/usr/bin/env bash
# HTTP load figures for signet, next to anchors measured in the same run:
# nginx serving the same JWKS bytes from a file, a bare hyper server
# returning those bytes (examples/bare_jwks.rs: the ceiling for signet's
# stack), a Node.js server doing what teams write themselves to check a
# token (benches/node/auth.mjs: jose's jwtVerify over the same JWK Set), and
# `openssl speed rsa2048` for the raw RSA verify rate of one core.
#
#   benches/load.sh            # from anywhere; builds target/release/signet
#                              # and the bare server, npm-installs jose into
#                              # target/node-anchor
#   SIGNET_BIN=path BARE_BIN=path benches/load.sh   # these builds instead
#
# Measures, all on 127.0.0.1 with bounded durations:
#   - GET /.well-known/jwks.json (5 keys), signet vs nginx vs the bare hyper
#     server, wrk -t2 -c64 -d10s, alternating three runs each: median
#     requests/s and p99;
#   - GET /v1/auth with one valid organisation token (RS256) repeated, signet
#     vs the Node.js server, alternating three runs each;
#   - the same, one token repeated, on a second signet whose store is a
#     private PostgreSQL cluster (scripts/lib/postgres.sh), alternating
#     with the sled one: auth on PostgreSQL / auth on sled;
#   - sequential key creates (POST /v1/organisations/{org}/keys) and
#     deletes: p50/p99 of curl's time_total;
#   - GET /v1/auth with a different token on every request, for an RS256,
#     an ES256 and an EdDSA key: signet restarted on the same data with the
#     verdict cache off (token_cache_entries = 0), wrk cycling through
#     FRESH_TOKENS tokens of each; signet's CPU time per request (utime +
#     stime from /proc/PID/stat around each run) next to `openssl speed`'s
#     CPU time per verify of the same algorithm on one core;
#   - full TLS handshakes per second, signet vs `openssl s_server` with the
#     same ECDSA P-256 certificate, one core each (scripts/tls-bench.sh).
# After each start of signet, nothing is measured until its RSA key pool is
# full: the pool's refill is start-up work, not any request's.
# Prints one Markdown table (and tls-bench's). Every process it starts is
# stopped on exit.
#
# Environment knobs (optional): WRK_DURATION (default 10s), WRK_CONNECTIONS
# (64), WRK_THREADS (2), ROUNDS (3), CREATES (40), FRESH_TOKENS (2000),
# NGINX_WORKERS (1), TLS_DURATION (5, seconds per handshake run);
# SIGNET_BACKEND=postgres runs the main signet on a private PostgreSQL
# (scripts/lib/postgres.sh) instead of sled, and drops the PostgreSQL row.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/common.sh
source "$REPO/scripts/lib/common.sh"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/postgres.sh
source "$REPO/scripts/lib/postgres.sh"
WRK_DURATION="${WRK_DURATION:-10s}"
WRK_CONNECTIONS="${WRK_CONNECTIONS:-64}"
WRK_THREADS="${WRK_THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
CREATES="${CREATES:-40}"
FRESH_TOKENS="${FRESH_TOKENS:-2000}"
NGINX_WORKERS="${NGINX_WORKERS:-1}"
TLS_DURATION="${TLS_DURATION:-5}"
ORG="load-bench"
CREATE_ORG="load-create"

LOG_TAG=load
# (common.sh's die exits 2; this bench exits 1)
die() {
    log "error: $*"
    exit 1
}

# --- tools ---------------------------------------------------------------
install_missing nginx wrk curl python3 openssl
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    die "the Node.js anchor needs node (20 or later) and npm on PATH"
fi

if [[ -n "${SIGNET_BIN:-}" && -n "${BARE_BIN:-}" ]]; then
    SIGNET="$(signet_bin release)"
    BARE="$BARE_BIN"
    [[ -x "$BARE" ]] || die "BARE_BIN=$BARE is not an executable"
else
    log "building target/release/signet"
    SIGNET="$(build_signet release)" # SIGNET_BIN alone is ignored: both come from one build
    log "building the bare hyper server (examples/bare_jwks.rs)"
    (cd "$REPO" && timeout 1800 cargo build --quiet --release --example bare_jwks) ||
        die "cargo build --example bare_jwks failed"
    BARE="$(dirname "$SIGNET")/examples/bare_jwks"
fi
NODE_DIR="$REPO/target/node-anchor"
log "installing the Node.js anchor's jose into $NODE_DIR"
mkdir -p "$NODE_DIR"
cp "$REPO/benches/node/package.json" "$REPO/benches/node/auth.mjs" "$NODE_DIR/"
(cd "$NODE_DIR" && npm install --no-audit --no-fund --silent) || die "npm install failed"

# --- scratch space and cleanup -------------------------------------------
WORK="$(make_workdir load)"
# nginx workers may run as another user: let them traverse to www/ only.
chmod 711 "$WORK"
NGINX_PID=""
BARE_PID=""
NODE_PID=""
PG_SIGNET_PID=""
# On exit: stop nginx, then (cleanup_on_exit) signet, 5 s grace each.
# shellcheck disable=SC2317 # called by the EXIT trap
on_exit() {
    local pid
    for pid in "$NGINX_PID" "$BARE_PID" "$NODE_PID" "$PG_SIGNET_PID"; do
        stop_signet "$pid" 5 || true
    done
    pg_stop
}
cleanup_on_exit "$WORK" remove 5

# --- signet ----------------------------------------------------------------
SIGNET_PORT="$(free_port)"
BASE="http://127.0.0.1:$SIGNET_PORT"
mkdir -p "$WORK/data"
chmod 700 "$WORK/data"
ADMIN="$(random_token 36)"
CONFIG="$REPO/config.toml"
BACKEND="${SIGNET_BACKEND:-sled}"
case "$BACKEND" in
    sled) ;;
    postgres)
        pg_start "$WORK/pg"
        random_token 32 >"$WORK/seal.key"
        CONFIG="$WORK/config.toml"
        sed "s|^backend = \"sled\".*|backend = \"postgres\"\nurl = \"$(pg_database load)\"\nseal_key_file = \"$WORK/seal.key\"|" \
            "$REPO/config.toml" >"$CONFIG"
        ;;
    *) die "SIGNET_BACKEND must be sled or postgres, not '$BACKEND'" ;;
esac
log "starting signet ($BACKEND) on 127.0.0.1:$SIGNET_PORT"
# The token cache holds fewer tokens than the fresh-token run cycles
# through, so that run measures misses; one repeated token always hits.
# (wrk's threads start half the list apart, so a token comes round again
# only after far more than the cache holds.)
CACHE_ENTRIES=$((FRESH_TOKENS / 8))
sed "s/^token_cache_entries = [0-9]*/token_cache_entries = $CACHE_ENTRIES/" "$CONFIG" >"$WORK/config.cached.toml"
grep -qE "^token_cache_entries = $CACHE_ENTRIES( |\$)" "$WORK/config.cached.toml" || die "config.toml has no token_cache_entries"
start_signet "$WORK/data" "$SIGNET_PORT" "$WORK/signet.log" ORGKEYS_MAX=100 -- \
    "$SIGNET" serve --config "$WORK/config.cached.toml"
wait_ready "$BASE" 10 || {
    cat "$WORK/signet.log" >&2
    die "signet did not become ready"
}

# create ORG NAME [ALGORITHM [BASE]] -> prints the JSON body; fails on a
# non-201 answer
create_key() {
    local status
    status="$(curl -sS --max-time 30 -o "$WORK/create.json" -w '%{http_code}' \
        -X POST "${4:-$BASE}/v1/organisations/$1/keys" \
        -H "Authorization: Bearer $ADMIN" \
        -H 'Content-Type: application/json' \
        --data "{\"name\": \"$2\", \"algorithm\": \"${3:-RS256}\"}")"
    [[ "$status" == 201 ]] || die "create answered $status: $(cat "$WORK/create.json")"
    cat "$WORK/create.json"
}

json_field() { # field; JSON on stdin
    python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

log "creating 5 keys in $ORG"
(
    umask 077
    create_key "$ORG" "load key 1" >"$WORK/first.json"
)
KID="$(json_field id <"$WORK/first.json")"
(
    umask 077
    json_field privateKey <"$WORK/first.json" >"$WORK/private.pem"
)
rm -f "$WORK/first.json" "$WORK/create.json"
for i in 2 3 4 5; do
    create_key "$ORG" "load key $i" >/dev/null
done
rm -f "$WORK/create.json"

mkdir -p "$WORK/www/.well-known"
curl -fsS --max-time 5 "$BASE/.well-known/jwks.json" -o "$WORK/www/.well-known/jwks.json"
chmod -R a+rX "$WORK/www"
JWKS_BYTES="$(wc -c <"$WORK/www/.well-known/jwks.json")"
[[ "$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["keys"]))' \
    "$WORK/www/.well-known/jwks.json")" == 5 ]] || die "the JWKS does not hold 5 keys"

TOKEN="$("$SIGNET" token --key "$WORK/private.pem" --kid "$KID" --org "$ORG" --ttl 2h)"
# mint_tokens PEM KID ORG FILE: FRESH_TOKENS distinct tokens of one key
mint_tokens() {
    local i
    for i in $(seq "$FRESH_TOKENS"); do
        "$SIGNET" token --key "$1" --kid "$2" --org "$3" --ttl 2h --claim "jti=$i"
    done >"$4"
}
log "minting $FRESH_TOKENS distinct RS256 tokens"
mint_tokens "$WORK/private.pem" "$KID" "$ORG" "$WORK/tokens-RS256.txt"
rm -f "$WORK/private.pem"
auth_status="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 \
    -H "Authorization: Bearer $TOKEN" "$BASE/v1/auth")"
[[ "$auth_status" == 200 ]] || die "/v1/auth answered $auth_status to a fresh token"

# --- the same on PostgreSQL --------------------------------------------------
PG_BASE=""
if [[ "$BACKEND" == sled ]]; then
    pg_start "$WORK/pg"
    random_token 32 >"$WORK/seal.key"
    sed "s|^backend = \"sled\".*|backend = \"postgres\"\nurl = \"$(pg_database load)\"\nseal_key_file = \"$WORK/seal.key\"|" \
        "$WORK/config.cached.toml" >"$WORK/config.pg.toml"
    PG_HTTP_PORT="$(free_port)"
    PG_BASE="http://127.0.0.1:$PG_HTTP_PORT"
    mkdir -p "$WORK/data-pg"
    chmod 700 "$WORK/data-pg"
    log "starting a second signet, on PostgreSQL, on 127.0.0.1:$PG_HTTP_PORT"
    MAIN_PID="$SERVER_PID"
    start_signet "$WORK/data-pg" "$PG_HTTP_PORT" "$WORK/signet-pg.log" ORGKEYS_MAX=100 -- \
        "$SIGNET" serve --config "$WORK/config.pg.toml"
    PG_SIGNET_PID="$SERVER_PID"
    SERVER_PID="$MAIN_PID"
    wait_http "$PG_BASE/readyz" 30 "$PG_SIGNET_PID" || {
        cat "$WORK/signet-pg.log" >&2
        die "signet on PostgreSQL did not become ready"
    }
    (
        umask 077
        create_key "$ORG" "pg key" RS256 "$PG_BASE" >"$WORK/pg.json"
        json_field privateKey <"$WORK/pg.json" >"$WORK/pg.pem"
    )
    PG_TOKEN="$("$SIGNET" token --key "$WORK/pg.pem" --kid "$(json_field id <"$WORK/pg.json")" \
        --org "$ORG" --ttl 2h)"
    rm -f "$WORK/pg.pem" "$WORK/pg.json" "$WORK/create.json"
    [[ "$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 \
        -H "Authorization: Bearer $PG_TOKEN" "$PG_BASE/v1/auth")" == 200 ]] ||
        die "signet on PostgreSQL refuses its token"
fi

# --- nginx -----------------------------------------------------------------
NGINX_PORT="$(free_port)"
mkdir -p "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    open_file_cache max=16 inactive=60s;
    open_file_cache_valid 60s;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    types { }
    default_type application/json;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WORK/www;
    }
}
EOF
log "starting nginx on 127.0.0.1:$NGINX_PORT"
"$NGINX" -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" &
NGINX_PID=$!
wait_http "http://127.0.0.1:$NGINX_PORT/.well-known/jwks.json" 10 "$NGINX_PID" || {
    cat "$WORK/nginx/error.log" >&2
    die "nginx did not come up"
}
ctype="$(curl -sS -o /dev/null -w '%{content_type}' "http://127.0.0.1:$NGINX_PORT/.well-known/jwks.json")"
[[ "$ctype" == application/json* ]] || die "nginx serves Content-Type $ctype"

# --- the bare hyper server and the Node.js server ----------------------------
BARE_PORT="$(free_port)"
"$BARE" "$WORK/www/.well-known/jwks.json" "127.0.0.1:$BARE_PORT" 2>"$WORK/bare.log" &
BARE_PID=$!
NODE_PORT="$(free_port)"
node "$NODE_DIR/auth.mjs" "$WORK/www/.well-known/jwks.json" "$NODE_PORT" signet 2>"$WORK/node.log" &
NODE_PID=$!
wait_http "http://127.0.0.1:$BARE_PORT/.well-known/jwks.json" 10 "$BARE_PID" || {
    cat "$WORK/bare.log" >&2
    die "the bare hyper server did not come up"
}
cmp -s <(curl -fsS "http://127.0.0.1:$BARE_PORT/.well-known/jwks.json") "$WORK/www/.well-known/jwks.json" ||
    die "the bare hyper server serves other bytes"
node_status=000
for _ in $(seq 50); do
    node_status="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 1 \
        -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$NODE_PORT/" 2>/dev/null || true)"
    [[ "$node_status" == 200 ]] && break
    alive "$NODE_PID" || break
    sleep 0.2
done
[[ "$node_status" == 200 ]] || {
    cat "$WORK/node.log" >&2
    die "the Node.js server answered $node_status to the token"
}
[[ "$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${TOKEN}x" \
    "http://127.0.0.1:$NODE_PORT/")" == 401 ]] || die "the Node.js server accepts a bad signature"

# --- wrk -------------------------------------------------------------------
# run_wrk NAME URL [wrk args...] -> appends "rps p99_ms non2xx" to $WORK/NAME.txt
run_wrk() {
    local name="$1" url="$2"
    shift 2
    local out
    out="$(wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"$WRK_DURATION" --timeout 5s --latency "$@" "$url")"
    echo "$out" >>"$WORK/$name.wrk"
    echo "$out" | python3 -c '
import re, sys
text = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
errs = re.search(r"Socket errors:.*", text)
print(rps, p99, int(bad.group(1)) if bad else 0, "errors" if errs else "-")
' >>"$WORK/$name.txt"
    log "$name: $(tail -n1 "$WORK/$name.txt")"
}

# token_cache_counts -> "hits misses" from signet's /metrics
token_cache_counts() {
    curl -fsS --max-time 5 "$BASE/metrics" | awk '
        $1 == "signet_verify_token_cache_hits_total" { h = $2 }
        $1 == "signet_verify_token_cache_misses_total" { m = $2 }
        END { print h + 0, m + 0 }'
}

# A start and every RSA create set the key pool's refill thread going: its
# work is no request's, so nothing is measured until it is done.
wait_pool_full "$BASE" "$WORK/config.cached.toml"
[[ -z "$PG_BASE" ]] || wait_pool_full "$PG_BASE" "$WORK/config.pg.toml"
log "JWKS: signet vs nginx vs bare hyper, $ROUNDS rounds of $WRK_DURATION each"
for _ in $(seq "$ROUNDS"); do
    run_wrk signet_jwks "$BASE/.well-known/jwks.json"
    run_wrk nginx_jwks "http://127.0.0.1:$NGINX_PORT/.well-known/jwks.json"
    run_wrk bare_jwks "http://127.0.0.1:$BARE_PORT/.well-known/jwks.json"
done
log "/v1/auth with one token repeated: signet vs Node.js (vs signet on PostgreSQL), $ROUNDS rounds"
for _ in $(seq "$ROUNDS"); do
    run_wrk signet_auth "$BASE/v1/auth" -H "Authorization: Bearer $TOKEN"
    run_wrk node_auth "http://127.0.0.1:$NODE_PORT/" -H "Authorization: Bearer $TOKEN"
    if [[ -n "$PG_BASE" ]]; then
        run_wrk pg_auth "$PG_BASE/v1/auth" -H "Authorization: Bearer $PG_TOKEN"
    fi
done
if [[ -n "$PG_BASE" ]]; then
    stop_signet "$PG_SIGNET_PID" 10 || true
    PG_SIGNET_PID=""
    pg_stop
fi
# --- sequential creates and deletes ------------------------------------------
log "$CREATES sequential creates, then as many deletes"
: >"$WORK/create_times.txt"
: >"$WORK/create_ids.txt"
for i in $(seq "$CREATES"); do
    read -r status t < <(curl -sS --max-time 30 -o "$WORK/create.json" \
        -w '%{http_code} %{time_total}\n' \
        -X POST "$BASE/v1/organisations/$CREATE_ORG/keys" \
        -H "Authorization: Bearer $ADMIN" \
        -H 'Content-Type: application/json' \
        --data "{\"name\": \"create $i\"}")
    [[ "$status" == 201 ]] || die "create $i answered $status: $(cat "$WORK/create.json")"
    echo "$t" >>"$WORK/create_times.txt"
    json_field id <"$WORK/create.json" >>"$WORK/create_ids.txt"
    rm -f "$WORK/create.json"
done
: >"$WORK/delete_times.txt"
while read -r id; do
    read -r status t < <(curl -sS --max-time 30 -o /dev/null -w '%{http_code} %{time_total}\n' \
        -X DELETE "$BASE/v1/organisations/$CREATE_ORG/keys/$id" \
        -H "Authorization: Bearer $ADMIN")
    [[ "$status" == 204 ]] || die "delete of $id answered $status"
    echo "$t" >>"$WORK/delete_times.txt"
done <"$WORK/create_ids.txt"

# --- fresh tokens, verdict cache off ------------------------------------------
for alg in ES256 EdDSA; do
    (
        umask 077
        create_key "$ORG-fresh" "fresh $alg" "$alg" >"$WORK/fresh-$alg.json"
        json_field privateKey <"$WORK/fresh-$alg.json" >"$WORK/fresh-$alg.pem"
    )
    log "minting $FRESH_TOKENS distinct $alg tokens"
    mint_tokens "$WORK/fresh-$alg.pem" "$(json_field id <"$WORK/fresh-$alg.json")" "$ORG-fresh" \
        "$WORK/tokens-$alg.txt"
    rm -f "$WORK/fresh-$alg.pem" "$WORK/fresh-$alg.json" "$WORK/create.json"
done
log "restarting signet on the same data with the verdict cache off"
stop_signet "$SERVER_PID" 10 || die "signet did not stop"
sed "s/^token_cache_entries = [0-9]*/token_cache_entries = 0/" "$WORK/config.cached.toml" >"$WORK/config.nocache.toml"
start_signet "$WORK/data" "$SIGNET_PORT" "$WORK/signet-nocache.log" ORGKEYS_MAX=100 -- \
    "$SIGNET" serve --config "$WORK/config.nocache.toml"
wait_ready "$BASE" 10 || {
    cat "$WORK/signet-nocache.log" >&2
    die "signet (verdict cache off) did not become ready"
}
for alg in RS256 ES256 EdDSA; do
    [[ "$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 \
        -H "Authorization: Bearer $(head -n1 "$WORK/tokens-$alg.txt")" "$BASE/v1/auth")" == 200 ]] ||
        die "/v1/auth refuses a fresh $alg token"
    cat >"$WORK/fresh-$alg.lua" <<LUA
local counter = 0
function setup(thread)
    thread:set("id", counter)
    counter = counter + 1
end
function init(args)
    tokens = {}
    for line in io.lines("$WORK/tokens-$alg.txt") do tokens[#tokens + 1] = line end
    i = math.floor(id * #tokens / $WRK_THREADS)
end
function request()
    i = i % #tokens + 1
    return wrk.format("GET", "/v1/auth", { ["Authorization"] = "Bearer " .. tokens[i] })
end
LUA
done
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
wait_pool_full "$BASE" "$WORK/config.nocache.toml"
log "/v1/auth with a fresh token per request (RS256, ES256, EdDSA), $ROUNDS rounds"
for _ in $(seq "$ROUNDS"); do
    for alg in RS256 ES256 EdDSA; do
        before="$(cpu_ticks "$SERVER_PID")"
        run_wrk "fresh_$alg" "$BASE/v1/auth" -s "$WORK/fresh-$alg.lua"
        after="$(cpu_ticks "$SERVER_PID")"
        n="$(awk '/ requests in / { print $1 }' "$WORK/fresh_$alg.wrk" | tail -n1)"
        python3 -c 'import sys; t, hz, n = map(float, sys.argv[1:]); print(t / hz * 1e6 / n)' \
            "$((after - before))" "$(getconf CLK_TCK)" "$n" >>"$WORK/fresh_cpu_$alg.txt"
    done
done
log "openssl speed rsa2048 ecdsap256 ed25519 (one core, CPU time, 3 s per operation)"
openssl speed -seconds 3 rsa2048 ecdsap256 ed25519 2>/dev/null >"$WORK/openssl.txt"

# --- full TLS handshakes -----------------------------------------------------
log "full TLS handshakes: signet vs openssl s_server (scripts/tls-bench.sh)"
SIGNET_BIN="$SIGNET" DURATION="$TLS_DURATION" ROUNDS="$ROUNDS" "$REPO/scripts/tls-bench.sh" \
    >"$WORK/tls.md" 2>"$WORK/tls.log" || {
    cat "$WORK/tls.log" >&2
    die "scripts/tls-bench.sh failed"
}


# --- report ------------------------------------------------------------------
CPU="$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
python3 - "$WORK" "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(nproc)" "${CPU:-unknown CPU}" \
    "$JWKS_BYTES" "$WRK_THREADS" "$WRK_CONNECTIONS" "$WRK_DURATION" "$ROUNDS" "$CREATES" \
    "$NGINX_WORKERS" "$FRESH_TOKENS" "$BACKEND" <<'EOF'
import math, os, re, statistics, sys
(work, date, nproc, cpu, jwks_bytes, threads, conns, dur, rounds, creates,
 nginx_workers, fresh_tokens, backend) = sys.argv[1:]

def runs(name):
    rows = [l.split() for l in open(f"{work}/{name}.txt") if l.strip()]
    return ([float(r[0]) for r in rows], [float(r[1]) for r in rows],
            sum(int(r[2]) for r in rows), any(r[3] != "-" for r in rows))

def pct(xs, p):  # nearest rank
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]

def times(name):
    return [float(l) * 1000 for l in open(f"{work}/{name}.txt") if l.strip()]

s_rps, s_p99, s_bad, s_err = runs("signet_jwks")
n_rps, n_p99, n_bad, n_err = runs("nginx_jwks")
a_rps, a_p99, a_bad, a_err = runs("signet_auth")
b_rps, b_p99, b_bad, b_err = runs("bare_jwks")
j_rps, j_p99, j_bad, j_err = runs("node_auth")
# `openssl speed` verifies per CPU second, from the lines
# "rsa 2048 bits 0.000600s 0.000017s 1666.0 58000.0" (sign/s, verify/s),
# " 256 bits ecdsa (nistp256)   0.0000s   0.0001s  40000.0  13000.0" and
# " 253 bits EdDSA (Ed25519)   0.0000s   0.0001s  26000.0  9000.0".
speed = open(f"{work}/openssl.txt").read()
ossl_pattern = {"RS256": r"^rsa\s+2048 bits", "ES256": r"ecdsa \(nistp256\)",
                "EdDSA": r"EdDSA \(Ed25519\)"}
ossl_verify = {alg: float(re.search(p + r".*\s([\d.]+)\s*$", speed, re.M).group(1))
               for alg, p in ossl_pattern.items()}
fresh = {alg: (runs(f"fresh_{alg}"),
               [float(l) for l in open(f"{work}/fresh_cpu_{alg}.txt") if l.strip()])
         for alg in ossl_pattern}
pg = runs("pg_auth") if os.path.exists(f"{work}/pg_auth.txt") else None
med = statistics.median
fmt_runs = lambda xs: ", ".join(f"{x:,.0f}" for x in xs)
note = lambda bad, err: (f"; {bad} non-2xx" if bad else "") + ("; socket errors" if err else "")
c, d = times("create_times"), times("delete_times")

print(f"signet load test ({backend}), {date}; {nproc} × {cpu}; "
      f"wrk -t{threads} -c{conns} -d{dur} --latency, {rounds} alternating runs each "
      f"(client and servers share the same cores)")
print()
print("| measurement | median | p99 | runs / notes |")
print("| --- | ---: | ---: | --- |")
print(f"| signet `GET /.well-known/jwks.json` (5 keys, {jwks_bytes} B) | "
      f"{statistics.median(s_rps):,.0f} req/s | {statistics.median(s_p99):.2f} ms | "
      f"{fmt_runs(s_rps)}{note(s_bad, s_err)} |")
print(f"| nginx, same bytes from a file ({nginx_workers} worker(s), access_log off) | "
      f"{statistics.median(n_rps):,.0f} req/s | {statistics.median(n_p99):.2f} ms | "
      f"{fmt_runs(n_rps)}{note(n_bad, n_err)} |")
print(f"| signet / nginx | {statistics.median(s_rps) / statistics.median(n_rps):.2f} × | "
      f"{statistics.median(s_p99) / statistics.median(n_p99):.2f} × | ratio of medians |")
print(f"| bare hyper server, same bytes (examples/bare_jwks.rs) | "
      f"{med(b_rps):,.0f} req/s | {med(b_p99):.2f} ms | {fmt_runs(b_rps)}{note(b_bad, b_err)} |")
print(f"| signet / bare hyper | {med(s_rps) / med(b_rps):.2f} × | "
      f"{med(s_p99) / med(b_p99):.2f} × | ratio of medians |")
print(f"| signet `GET /v1/auth`, one RS256 token repeated | "
      f"{statistics.median(a_rps):,.0f} req/s | {statistics.median(a_p99):.2f} ms | "
      f"{fmt_runs(a_rps)}{note(a_bad, a_err)} |")
print(f"| signet auth (one token) / signet JWKS | {med(a_rps) / med(s_rps):.2f} × | | ratio of medians |")
print(f"| Node.js, jose `jwtVerify` + `createLocalJWKSet`, one token repeated | "
      f"{med(j_rps):,.0f} req/s | {med(j_p99):.2f} ms | {fmt_runs(j_rps)}{note(j_bad, j_err)} |")
print(f"| signet auth (one token) / Node.js | {med(a_rps) / med(j_rps):.2f} × | "
      f"{med(a_p99) / med(j_p99):.2f} × | ratio of medians |")
if pg:
    p_rps, p_p99, p_bad, p_err = pg
    print(f"| signet on PostgreSQL `GET /v1/auth`, one RS256 token repeated | "
          f"{med(p_rps):,.0f} req/s | {med(p_p99):.2f} ms | {fmt_runs(p_rps)}{note(p_bad, p_err)} |")
    print(f"| auth on PostgreSQL / auth on sled | {med(p_rps) / med(a_rps):.2f} × | "
          f"{med(p_p99) / med(a_p99):.2f} × | ratio of medians |")
for alg, ((f_rps, f_p99, f_bad, f_err), cpu) in fresh.items():
    ossl_us = 1e6 / ossl_verify[alg]
    print(f"| signet `GET /v1/auth`, a fresh {alg} token per request ({fresh_tokens} cycled, "
          f"verdict cache off) | {med(f_rps):,.0f} req/s | {med(f_p99):.2f} ms | "
          f"{fmt_runs(f_rps)}{note(f_bad, f_err)} |")
    print(f"| … signet CPU time per fresh {alg} request vs `openssl speed` CPU time per verify | "
          f"{med(cpu):.1f} µs vs {ossl_us:.1f} µs | | "
          f"**{ossl_us / med(cpu):.2f} ×**; runs {', '.join(f'{ossl_us / x:.2f}' for x in cpu)} |")
print(f"| key create, RSA-2048, sequential (curl time_total) | "
      f"p50 {pct(c, 50):.1f} ms | {pct(c, 99):.1f} ms | "
      f"n={len(c)}, min {min(c):.1f}, p90 {pct(c, 90):.1f}, max {max(c):.1f}, "
      f"mean {statistics.mean(c):.1f} ms; the first creates are served by the key pool |")
print(f"| key delete, sequential (curl time_total) | "
      f"p50 {pct(d, 50):.1f} ms | {pct(d, 99):.1f} ms | "
      f"n={len(d)}, min {min(d):.1f}, p90 {pct(d, 90):.1f}, max {max(d):.1f}, "
      f"mean {statistics.mean(d):.1f} ms |")
print(f"| load average at the end | {open('/proc/loadavg').read().split()[0]} | | |")
EOF
echo
echo "TLS, one core each (scripts/tls-bench.sh, $TLS_DURATION s per run):"
echo
cat "$WORK/tls.md"

