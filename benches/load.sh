#!/usr/bin/env bash
# HTTP load figures for signet, next to nginx serving the same JWKS bytes
# from a file: the ceiling for "a prepared document per request".
#
#   benches/load.sh            # from anywhere; builds target/release/signet
#
# Measures, all on 127.0.0.1 with bounded durations:
#   - GET /.well-known/jwks.json (5 keys), signet vs nginx, wrk -t2 -c64
#     -d10s, alternating three runs each: median requests/s and p99;
#   - GET /v1/auth with a valid organisation token (RS256), three runs;
#   - sequential key creates (POST /v1/organisations/{org}/keys) and
#     deletes: p50/p99 of curl's time_total.
# Prints one Markdown table. Every process it starts is stopped on exit.
#
# Environment knobs (optional): WRK_DURATION (default 10s), WRK_CONNECTIONS
# (64), WRK_THREADS (2), ROUNDS (3), CREATES (40); SIGNET_BACKEND=postgres
# runs signet on a private PostgreSQL (scripts/lib/postgres.sh) instead of
# sled.
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
ORG="load-bench"
CREATE_ORG="load-create"

LOG_TAG=load
# (common.sh's die exits 2; this bench exits 1)
die() {
    log "error: $*"
    exit 1
}

# --- tools ---------------------------------------------------------------
install_missing nginx wrk curl python3
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

log "building target/release/signet"
SIGNET="$(build_signet release)" # this bench always builds; it ignores SIGNET_BIN

# --- scratch space and cleanup -------------------------------------------
WORK="$(make_workdir load)"
# nginx workers may run as another user: let them traverse to www/ only.
chmod 711 "$WORK"
NGINX_PID=""
# On exit: stop nginx, then (cleanup_on_exit) signet, 5 s grace each.
# shellcheck disable=SC2317 # called by the EXIT trap
on_exit() {
    stop_signet "$NGINX_PID" 5 || true
    stop_signet "$SERVER_PID" 5 || true
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
start_signet "$WORK/data" "$SIGNET_PORT" "$WORK/signet.log" ORGKEYS_MAX=100 -- \
    "$SIGNET" serve --config "$CONFIG"
wait_ready "$BASE" 10 || {
    cat "$WORK/signet.log" >&2
    die "signet did not become ready"
}

# create ORG NAME -> prints the JSON body; fails on a non-201 answer
create_key() {
    local status
    status="$(curl -sS --max-time 30 -o "$WORK/create.json" -w '%{http_code}' \
        -X POST "$BASE/v1/organisations/$1/keys" \
        -H "Authorization: Bearer $ADMIN" \
        -H 'Content-Type: application/json' \
        --data "{\"name\": \"$2\"}")"
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

TOKEN="$("$SIGNET" token --key "$WORK/private.pem" --kid "$KID" --org "$ORG" --ttl 1h)"
rm -f "$WORK/private.pem"
auth_status="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 \
    -H "Authorization: Bearer $TOKEN" "$BASE/v1/auth")"
[[ "$auth_status" == 200 ]] || die "/v1/auth answered $auth_status to a fresh token"

# --- nginx -----------------------------------------------------------------
NGINX_PORT="$(free_port)"
mkdir -p "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 2;
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

log "JWKS: signet vs nginx, $ROUNDS rounds of $WRK_DURATION each"
for _ in $(seq "$ROUNDS"); do
    run_wrk signet_jwks "$BASE/.well-known/jwks.json"
    run_wrk nginx_jwks "http://127.0.0.1:$NGINX_PORT/.well-known/jwks.json"
done
log "/v1/auth with a valid token, $ROUNDS rounds"
for _ in $(seq "$ROUNDS"); do
    run_wrk signet_auth "$BASE/v1/auth" -H "Authorization: Bearer $TOKEN"
done

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

# --- report ------------------------------------------------------------------
CPU="$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
python3 - "$WORK" "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(nproc)" "${CPU:-unknown CPU}" \
    "$JWKS_BYTES" "$WRK_THREADS" "$WRK_CONNECTIONS" "$WRK_DURATION" "$ROUNDS" "$CREATES" \
    "$BACKEND" <<'EOF'
import math, statistics, sys
work, date, nproc, cpu, jwks_bytes, threads, conns, dur, rounds, creates, backend = sys.argv[1:]

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
print(f"| nginx, same bytes from a file (2 workers, access_log off) | "
      f"{statistics.median(n_rps):,.0f} req/s | {statistics.median(n_p99):.2f} ms | "
      f"{fmt_runs(n_rps)}{note(n_bad, n_err)} |")
print(f"| signet / nginx | {statistics.median(s_rps) / statistics.median(n_rps):.2f} × | "
      f"{statistics.median(s_p99) / statistics.median(n_p99):.2f} × | ratio of medians |")
print(f"| signet `GET /v1/auth`, valid RS256 token | "
      f"{statistics.median(a_rps):,.0f} req/s | {statistics.median(a_p99):.2f} ms | "
      f"{fmt_runs(a_rps)}{note(a_bad, a_err)} |")
print(f"| key create, RSA-2048, sequential (curl time_total) | "
      f"p50 {pct(c, 50):.1f} ms | {pct(c, 99):.1f} ms | "
      f"n={len(c)}, min {min(c):.1f}, p90 {pct(c, 90):.1f}, max {max(c):.1f}, "
      f"mean {statistics.mean(c):.1f} ms; the first creates are served by the key pool |")
print(f"| key delete, sequential (curl time_total) | "
      f"p50 {pct(d, 50):.1f} ms | {pct(d, 99):.1f} ms | "
      f"n={len(d)}, min {min(d):.1f}, p90 {pct(d, 90):.1f}, max {max(d):.1f}, "
      f"mean {statistics.mean(d):.1f} ms |")
EOF
