#!/usr/bin/env bash
# signet's CPU time per request (user + system, from /proc/PID/stat around
# each wrk run): on a machine shared with other work this moves far less
# than wrk's requests/s, which depend on how much of the cores wrk and the
# neighbours took.
#
#   benches/cpu.sh                       # target/release/signet (built)
#   benches/cpu.sh OTHER_BINARY...       # also other builds, side by side
#                                        # (each named by its file name)
#
# Serves the same five keys from each binary at once (one data directory,
# copied), plus the bare hyper server (examples/bare_jwks.rs) with the same
# JWK Set bytes, and runs wrk -t2 -c64 round-robin over
#   jwks   GET /.well-known/jwks.json
#   auth   GET /v1/auth, one RS256 token repeated (token-cache hits)
#   bare   the bare hyper server (once per round)
# ROUNDS times. Prints each run (requests/s, µs of server CPU per request,
# load average) and the median and range per server and route.
#
# Environment knobs (optional): ROUNDS (default 6), DURATION (2s).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/common.sh
source "$REPO/scripts/lib/common.sh"
ROUNDS="${ROUNDS:-6}"
DURATION="${DURATION:-2s}"
LOG_TAG=cpu

install_missing wrk curl python3
NEW="$(signet_bin release)"
OTHERS=("$@")
log "building the bare hyper server (examples/bare_jwks.rs)"
(cd "$REPO" && timeout 1800 cargo build --quiet --release --example bare_jwks) ||
    die "cargo build --example bare_jwks failed"
BARE="$REPO/target/release/examples/bare_jwks"
WORK="$(make_workdir cpu)"
PIDS=()
# shellcheck disable=SC2317 # called by the EXIT trap
on_exit() {
    local pid
    for pid in "${PIDS[@]}"; do stop_signet "$pid" 5 || true; done
}
cleanup_on_exit "$WORK" remove 10
ADMIN="$(random_token 36)"
mkdir -p "$WORK/data"
chmod 700 "$WORK/data"

log "creating 5 keys and a token"
PORT="$(free_port)"
start_signet "$WORK/data" "$PORT" "$WORK/setup.log" -- "$NEW" serve --config "$REPO/config.toml"
ready_or_die "http://127.0.0.1:$PORT" 30 "$WORK/setup.log"
for i in 1 2 3 4 5; do
    curl -fsS --max-time 60 -o "$WORK/key$i.json" -X POST \
        "http://127.0.0.1:$PORT/v1/organisations/bench/keys" \
        -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
        --data "{\"name\": \"key $i\"}"
done
curl -fsS --max-time 5 -o "$WORK/jwks.json" "http://127.0.0.1:$PORT/.well-known/jwks.json"
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }
(
    umask 077
    field "$WORK/key1.json" privateKey >"$WORK/private.pem"
)
TOKEN="$("$NEW" token --key "$WORK/private.pem" --kid "$(field "$WORK/key1.json" id)" \
    --org bench --ttl 1h)"
rm -f "$WORK/private.pem" "$WORK"/key?.json
stop_signet "$SERVER_PID" 10 || die "signet did not stop"
SERVER_PID=""

# serve NAME BINARY: start BINARY on a copy of the data; sets PID_NAME, PORT_NAME
serve() {
    local name="$1" bin="$2" port
    cp -a "$WORK/data" "$WORK/data-$name"
    port="$(free_port)"
    start_signet "$WORK/data-$name" "$port" "$WORK/$name.log" -- "$bin" serve --config "$REPO/config.toml"
    PIDS+=("$SERVER_PID")
    ready_or_die "http://127.0.0.1:$port" 30 "$WORK/$name.log"
    [[ "$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
        "http://127.0.0.1:$port/v1/auth")" == 200 ]] || die "$name refuses the token"
    printf -v "PID_$name" '%s' "$SERVER_PID"
    printf -v "PORT_$name" '%s' "$port"
    SERVER_PID=""
}
SERVERS=(new)
serve new "$NEW"
for bin in "${OTHERS[@]}"; do
    name="$(basename "$bin" | tr -c 'A-Za-z0-9_\n' _)"
    SERVERS+=("$name")
    serve "$name" "$bin"
done
BARE_PORT="$(free_port)"
"$BARE" "$WORK/jwks.json" "127.0.0.1:$BARE_PORT" 2>"$WORK/bare.log" &
BARE_PID=$!
PIDS+=("$BARE_PID")
wait_http "http://127.0.0.1:$BARE_PORT/.well-known/jwks.json" 10 "$BARE_PID" ||
    die "the bare hyper server did not come up"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# run LABEL PID URL [wrk args…]: one wrk run; appends "LABEL rps µs load" to runs.txt
run() {
    local label="$1" pid="$2" url="$3"
    shift 3
    local before after out
    before="$(cpu_ticks "$pid")"
    out="$(wrk -t2 -c64 -d"$DURATION" "$@" "$url")"
    after="$(cpu_ticks "$pid")"
    echo "$out" | python3 -c '
import re, sys
label, ticks, hz, load = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
text = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
n = int(re.search(r"(\d+) requests in", text).group(1))
print(label, rps, round(ticks / hz * 1e6 / n, 2), load)
' "$label" "$((after - before))" "$(getconf CLK_TCK)" "$(cut -d' ' -f1 /proc/loadavg)" |
        tee -a "$WORK/runs.txt"
}

log "$ROUNDS rounds of $DURATION per server and route"
for _ in $(seq "$ROUNDS"); do
    for name in "${SERVERS[@]}"; do
        pid_var="PID_$name" port_var="PORT_$name"
        base="http://127.0.0.1:${!port_var}"
        run "$name/jwks" "${!pid_var}" "$base/.well-known/jwks.json"
        run "$name/auth" "${!pid_var}" "$base/v1/auth" -H "Authorization: Bearer $TOKEN"
    done
    run bare/jwks "$BARE_PID" "http://127.0.0.1:$BARE_PORT/.well-known/jwks.json"
done

python3 - "$WORK/runs.txt" <<'EOF'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    label, rps, us, load = line.split()
    runs.setdefault(label, []).append((float(rps), float(us), float(load)))
print("| server/route | CPU per request, median (range) | requests/s, median (range) | load average |")
print("| --- | ---: | ---: | --- |")
med = {}
for label, rows in runs.items():
    rps, us, load = zip(*rows)
    med[label] = statistics.median(us)
    print(f"| {label} | {med[label]:.2f} µs ({min(us):.2f}–{max(us):.2f}) | "
          f"{statistics.median(rps):,.0f} ({min(rps):,.0f}–{max(rps):,.0f}) | "
          f"{min(load)}–{max(load)} |")
for name in dict.fromkeys(label.split("/")[0] for label in runs):
    if f"{name}/auth" in med:
        print(f"\n{name}: JWKS/auth by CPU per request {med[name + '/jwks'] / med[name + '/auth']:.2f}, "
              f"bare/JWKS {med['bare/jwks'] / med[name + '/jwks']:.2f}")
EOF
