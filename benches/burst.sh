#!/usr/bin/env bash
# JWKS latency while keys are being created: the requirement "a burst of key
# creates must not stall the published JWK Set" (p99 ≤ 2× idle).
#
#   benches/burst.sh            # from anywhere; builds target/release/signet
#
# Starts target/release/signet on a free 127.0.0.1 port with a temporary data
# dir (ORGKEYS_MAX=100, the repo's config.toml otherwise: key pool of 8
# 2048-bit pairs), creates 5 keys, then measures GET /.well-known/jwks.json
# with `wrk -t1 -c8 -d10s --latency`:
#   idle  — nothing else running (after the key pool has refilled);
#   burst — while bursts of 20 concurrent 2048-bit creates
#           (POST /v1/organisations/burst{n}/keys, one `curl --parallel`
#           per burst) run back to back, the first started just after wrk,
#           until wrk ends;
#   cpu   — (only with CONTROL=1) while one busy loop per core runs and
#           signet does nothing else: what plain CPU contention costs the
#           client-side p99 on this machine, without signet's involvement.
# Idle and burst (and cpu) alternate ROUNDS times. Next to wrk's p99, the
# server-side p99 of the route comes from signet's own latency histogram
# (/metrics, bucket bound), which excludes time queued for a CPU before the
# handler runs. After each burst window the keys it
# created are deleted again, so every window starts from the same 5-key
# document. Prints one Markdown table. Everything it starts is stopped on exit.
#
# Environment knobs (optional): WRK_DURATION (10s), WRK_CONNECTIONS (8),
# ROUNDS (3), BURST (20 creates per burst), CONTROL (0; 1 adds cpu windows).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WRK_DURATION="${WRK_DURATION:-10s}"
WRK_CONNECTIONS="${WRK_CONNECTIONS:-8}"
ROUNDS="${ROUNDS:-3}"
BURST="${BURST:-20}"
CONTROL="${CONTROL:-0}"
ORG="burst-jwks"

# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/common.sh
source "$REPO/scripts/lib/common.sh"
LOG_TAG=burst
# (common.sh's die exits 2; this bench exits 1)
die() {
    log "error: $*"
    exit 1
}

# --- tools ---------------------------------------------------------------
install_missing wrk curl python3
log "building target/release/signet"
BIN="$(build_signet release)" # this bench always builds; it ignores SIGNET_BIN

# --- scratch space and cleanup -------------------------------------------
WORK="$(make_workdir burst)"
WRK_PID=""
BURSTER_PID=""
SPINNER_PIDS=()
stop_pid() { stop_signet "${1:-}" 5; } # TERM, up to 5 s, then KILL
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local rc=$?
    if [[ -n "$BURSTER_PID" ]]; then
        touch "$WORK/stop" 2>/dev/null || true
        # the burster's own curls, by parent id
        pkill -P "$BURSTER_PID" 2>/dev/null || true
        stop_pid "$BURSTER_PID"
    fi
    for pid in "${SPINNER_PIDS[@]}"; do
        stop_pid "$pid"
    done
    stop_pid "$WRK_PID"
    stop_pid "$SERVER_PID"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- signet ----------------------------------------------------------------
PORT="$(free_port)"
BASE="http://127.0.0.1:$PORT"
mkdir -p "$WORK/data"
chmod 700 "$WORK/data"
ADMIN="$(random_token 36)"
TOKEN="$ADMIN"
log "starting signet on 127.0.0.1:$PORT"
start_signet "$WORK/data" "$PORT" "$WORK/signet.log" ORGKEYS_MAX=100 -- \
    "$BIN" serve --config "$REPO/config.toml"
wait_ready "$BASE" 10 || {
    cat "$WORK/signet.log" >&2
    die "signet did not become ready"
}

# create ORG -> "status time_total location org" (the private key never
# touches the disk: the body goes to /dev/null)
create() {
    local hdr
    hdr="$(mktemp "$WORK/hdr.XXXXXX")"
    local out
    out="$(curl -sS --max-time 60 -o /dev/null -D "$hdr" -w '%{http_code} %{time_total}' \
        -X POST "$BASE/v1/organisations/$1/keys" \
        -H "Authorization: Bearer $TOKEN" \
        -H 'Content-Type: application/json' \
        --data '{"name":"b"}' 2>/dev/null || echo "000 0")"
    local loc
    loc="$(sed -n 's/^[Ll]ocation:[[:space:]]*\([^[:space:]]*\).*$/\1/p' "$hdr" | tr -d '\r')"
    rm -f "$hdr"
    echo "$out ${loc:--} $1"
}

log "creating 5 keys in $ORG"
for _ in 1 2 3 4 5; do
    read -r status _ < <(create "$ORG")
    [[ "$status" == 201 ]] || die "create answered $status"
done
JWKS_BYTES="$(curl -fsS --max-time 5 "$BASE/.well-known/jwks.json" | wc -c)"
# The refill thread must not run during an idle window.
POOL_TARGET="$(pool_target "$REPO/config.toml")"


# --- measurements ----------------------------------------------------------
# wrk_parse < wrk output -> "rps p99_ms non2xx errors"
wrk_parse() {
    python3 -c '
import re, sys
text = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
errs = re.search(r"Socket errors:.*", text)
print(rps, p99, int(bad.group(1)) if bad else 0, "errors" if errs else "-")
'
}

# signet's own latency histogram of the JWKS route: "le count" lines
hist_snap() { # out file
    curl -fsS --max-time 5 "$BASE/metrics" |
        sed -n 's/^signet_http_request_duration_seconds_bucket{le="\([^"]*\)",route="\/\.well-known\/jwks\.json"} \([0-9]*\).*$/\1 \2/p' >"$1"
}

# server_p99 BEFORE AFTER -> "p99_upper_bound_ms requests" between two snapshots
server_p99() {
    python3 - "$1" "$2" <<'PY'
import sys
def load(path):
    return {le: int(n) for le, n in (l.split() for l in open(path) if l.strip())}
before, after = load(sys.argv[1]), load(sys.argv[2])
rows = sorted(((float(le), after[le] - before.get(le, 0)) for le in after), key=lambda r: r[0])
total = rows[-1][1] if rows else 0
bound = next((le for le, n in rows if total and n >= 0.99 * total), float("nan"))
print(bound * 1000, total)
PY
}

start_wrk() { # name: runs wrk in the background, output in $WORK/name.wrk
    hist_snap "$WORK/$1.h0"
    wrk -t1 -c"$WRK_CONNECTIONS" -d"$WRK_DURATION" --timeout 5s --latency \
        "$BASE/.well-known/jwks.json" >"$WORK/$1.wrk" 2>&1 &
    WRK_PID=$!
}

finish_wrk() { # name kind: waits for wrk, appends "rps p99 non2xx errs server_p99 n" to kind.txt
    wait "$WRK_PID"
    WRK_PID=""
    hist_snap "$WORK/$1.h1"
    echo "$(wrk_parse <"$WORK/$1.wrk") $(server_p99 "$WORK/$1.h0" "$WORK/$1.h1")" >>"$WORK/$2.txt"
}

BURST_SEQ=0
# burster ROUND: bursts of $BURST concurrent creates, back to back, until
# $WORK/stop exists; one "status time location org" line per create in
# $WORK/creates.ROUND, one line per finished burst in $WORK/bursts.ROUND.
# Each burst is ONE curl process running its $BURST requests in parallel on
# separate connections, so that the client's own process churn stays small.
burster() {
    local round="$1" n="$BURST_SEQ"
    while [[ ! -e "$WORK/stop" ]]; do
        n=$((n + 1))
        local targets=()
        for _ in $(seq "$BURST"); do
            targets+=(-o /dev/null "$BASE/v1/organisations/burst$n/keys")
        done
        curl -sS --parallel --parallel-immediate --parallel-max "$BURST" --max-time 60 \
            -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
            --data '{"name":"b"}' \
            -w '%{http_code} %{time_total} %header{location}\n' \
            "${targets[@]}" 2>/dev/null |
            awk -v org="burst$n" '{ print $1, $2, ($3 == "" ? "-" : $3), org }' \
                >>"$WORK/creates.$round" || true
        echo "$n" >>"$WORK/bursts.$round"
    done
}

for r in $(seq "$ROUNDS"); do
    wait_pool_full "$BASE" "$REPO/config.toml"
    log "round $r/$ROUNDS: idle, wrk -t1 -c$WRK_CONNECTIONS -d$WRK_DURATION"
    start_wrk "idle.$r"
    finish_wrk "idle.$r" idle
    log "  idle: $(tail -n1 "$WORK/idle.txt")"

    wait_pool_full "$BASE" "$REPO/config.toml"
    log "round $r/$ROUNDS: under bursts of $BURST creates"
    rm -f "$WORK/stop"
    : >"$WORK/creates.$r"
    : >"$WORK/bursts.$r"
    start_wrk "burst.$r"
    burster "$r" &
    BURSTER_PID=$!
    finish_wrk "burst.$r" burst
    touch "$WORK/stop"
    keys_at_end="$(curl -fsS --max-time 10 "$BASE/.well-known/jwks.json" |
        python3 -c 'import json,sys; print(len(json.load(sys.stdin)["keys"]))')"
    # the burst in flight finishes (each curl is bounded by --max-time 60)
    for _ in $(seq 900); do
        kill -0 "$BURSTER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$BURSTER_PID" 2>/dev/null && die "a burst did not finish within 90 s"
    wait "$BURSTER_PID" || true
    BURSTER_PID=""
    BURST_SEQ=$((BURST_SEQ + $(wc -l <"$WORK/bursts.$r")))
    ok="$(awk '$1 == 201' "$WORK/creates.$r" | wc -l)"
    echo "$ok $(wc -l <"$WORK/creates.$r") $(wc -l <"$WORK/bursts.$r") $keys_at_end" >>"$WORK/counts.txt"
    log "  burst: $(tail -n1 "$WORK/burst.txt"); creates 201/all/bursts/keys at wrk end: $(tail -n1 "$WORK/counts.txt")"

    # back to the 5-key document for the next window
    awk '$1 == 201 {print $4, $3}' "$WORK/creates.$r" | while read -r org loc; do
        status="$(curl -sS --max-time 30 -o /dev/null -w '%{http_code}' -X DELETE \
            "$BASE/v1/organisations/$org/keys/${loc##*/}" -H "Authorization: Bearer $TOKEN")"
        [[ "$status" == 204 ]] || die "delete of $loc answered $status"
    done
    left="$(curl -fsS --max-time 10 "$BASE/.well-known/jwks.json" |
        python3 -c 'import json,sys; print(len(json.load(sys.stdin)["keys"]))')"
    [[ "$left" == 5 ]] || die "after the cleanup the JWKS holds $left keys, not 5"

    if [[ "$CONTROL" == 1 ]]; then
        wait_pool_full "$BASE" "$REPO/config.toml"
        log "round $r/$ROUNDS: control, $(nproc) busy loops and no creates"
        start_wrk "cpu.$r"
        for _ in $(seq "$(nproc)"); do
            (while :; do :; done) &
            SPINNER_PIDS+=($!)
        done
        finish_wrk "cpu.$r" cpu
        for pid in "${SPINNER_PIDS[@]}"; do
            stop_pid "$pid"
        done
        SPINNER_PIDS=()
        log "  cpu: $(tail -n1 "$WORK/cpu.txt")"
    fi
done

# --- report ------------------------------------------------------------------
CPU="$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
cat "$WORK"/creates.* >"$WORK/creates.all"
python3 - "$WORK" "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(nproc)" "${CPU:-unknown CPU}" \
    "$JWKS_BYTES" "$WRK_CONNECTIONS" "$WRK_DURATION" "$ROUNDS" "$BURST" "$POOL_TARGET" <<'EOF'
import math, statistics, sys
work, date, nproc, cpu, jwks_bytes, conns, dur, rounds, burst, pool = sys.argv[1:]

def rows(name):
    return [l.split() for l in open(f"{work}/{name}") if l.strip()]

def pct(xs, p):  # nearest rank
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]

idle, burst_runs, counts = rows("idle.txt"), rows("burst.txt"), rows("counts.txt")
cpu_runs = rows("cpu.txt") if __import__("os").path.exists(f"{work}/cpu.txt") else []
i_p99 = [float(r[1]) for r in idle]
b_p99 = [float(r[1]) for r in burst_runs]
i_rps = [float(r[0]) for r in idle]
b_rps = [float(r[0]) for r in burst_runs]
notes = []
for name, rs in (("idle", idle), ("burst", burst_runs), ("cpu", cpu_runs)):
    bad = sum(int(r[2]) for r in rs)
    if bad:
        notes.append(f"{bad} non-2xx under {name}")
    if any(r[3] != "-" for r in rs):
        notes.append(f"socket errors under {name}")
creates = [l.split() for l in open(f"{work}/creates.all") if l.strip()]
ok_times = [float(c[1]) * 1000 for c in creates if c[0] == "201"]
failed = [c[0] for c in creates if c[0] != "201"]
ok = sum(int(c[0]) for c in counts)
ratio = statistics.median(b_p99) / statistics.median(i_p99)
fmt = lambda xs, f: ", ".join(f.format(x) for x in xs)

print(f"signet burst test, {date}; {nproc} × {cpu}; GET /.well-known/jwks.json "
      f"(5 keys, {jwks_bytes} B at rest), wrk -t1 -c{conns} -d{dur} --latency; "
      f"{rounds} alternating idle/burst windows; bursts of {burst} concurrent 2048-bit "
      f"creates back to back; key pool of {pool} (full at the start of each window); "
      f"client, server and key generation share the same cores")
print()
print("| measurement | value | runs / notes |")
print("| --- | ---: | --- |")
print(f"| JWKS p99, idle (median) | {statistics.median(i_p99):.2f} ms | {fmt(i_p99, '{:.2f}')} ms |")
print(f"| JWKS p99, under burst (median) | {statistics.median(b_p99):.2f} ms | {fmt(b_p99, '{:.2f}')} ms |")
print(f"| burst / idle p99 | {ratio:.2f}× | target ≤ 2×: {'met' if ratio <= 2 else '**missed**'} |")
print(f"| JWKS req/s, idle → under burst (medians) | {statistics.median(i_rps):,.0f} → {statistics.median(b_rps):,.0f} | "
      f"idle {fmt(i_rps, '{:,.0f}')}; burst {fmt(b_rps, '{:,.0f}')} |")
print(f"| creates completed (201) | {ok} | per window: {fmt([int(c[0]) for c in counts], '{}')} "
      f"in {fmt([int(c[2]) for c in counts], '{}')} bursts; keys in the JWKS when wrk ended: "
      f"{fmt([int(c[3]) for c in counts], '{}')}"
      + (f"; {len(failed)} failed ({', '.join(sorted(set(failed)))})" if failed else "") + " |")
s_i = [float(r[4]) for r in idle]
s_b = [float(r[4]) for r in burst_runs]
print(f"| server-side p99 (signet's histogram, bucket bound), idle → burst | "
      f"≤ {statistics.median(s_i):.3g} ms → ≤ {statistics.median(s_b):.3g} ms | "
      f"idle {fmt(s_i, '≤ {:.3g}')}; burst {fmt(s_b, '≤ {:.3g}')} ms; excludes time queued for a CPU |")
if cpu_runs:
    c_p99 = [float(r[1]) for r in cpu_runs]
    c_rps = [float(r[0]) for r in cpu_runs]
    s_c = [float(r[4]) for r in cpu_runs]
    print(f"| control: JWKS p99 with {nproc} busy loops, no creates (median) | "
          f"{statistics.median(c_p99):.2f} ms | {fmt(c_p99, '{:.2f}')} ms; "
          f"{statistics.median(c_p99) / statistics.median(i_p99):.2f}× idle; "
          f"{statistics.median(c_rps):,.0f} req/s; server-side ≤ {statistics.median(s_c):.3g} ms |")
if ok_times:
    print(f"| create latency under burst (curl time_total) | p50 {pct(ok_times, 50):.0f} ms | "
          f"p90 {pct(ok_times, 90):.0f}, p99 {pct(ok_times, 99):.0f}, max {max(ok_times):.0f} ms |")
if notes:
    print(f"| notes | | {'; '.join(notes)} |")
EOF
