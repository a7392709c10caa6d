#!/usr/bin/env bash
# What several instances cost: delete latency with one and with three
# healthy instances on one private PostgreSQL, and verification throughput
# of one instance on PostgreSQL against one on sled, in the same run.
#
#   benches/cluster-delete.sh     # from anywhere; builds target/release/signet
#                                 # unless SIGNET_BIN is given
#
# Measures, all on 127.0.0.1:
#   - DELETES (500) sequential deletes of ES256 keys, each timed from sending
#     to the whole answer on a keep-alive connection: first with instance A
#     alone, then with A, B and C running (deletes spread over the three,
#     each waiting until the two others have applied it); p50/p90/p99/max,
#     and the mean time a delete spent waiting for the others
#     (signet_cluster_revocation_wait_seconds);
#   - GET /v1/auth with one repeated RS256 token, wrk -t1 -c16 -d$WRK_DURATION,
#     alternating ROUNDS (3) runs against A (PostgreSQL, B and C idle beside
#     it) and a sled instance: median requests/s of each and their ratio.
# Prints one Markdown table with the date, nproc and the load average.
#
# Env: SIGNET_BIN, DELETES (500), WRK_DURATION (5s), ROUNDS (3), KEEP=1,
# NOTIFY (listen or poll: cluster.notify of the PostgreSQL instances),
# ROUNDS=0 to skip the throughput runs, PG_LOG=1 to have PostgreSQL log
# every statement with its duration and a millisecond timestamp (in the
# work dir's pg/log; with KEEP=1) to see where a delete spends its time.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/common.sh
source "$REPO/scripts/lib/common.sh"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/postgres.sh
source "$REPO/scripts/lib/postgres.sh"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/instances.sh
source "$REPO/scripts/lib/instances.sh"
LOG_TAG=cluster-delete
DELETES="${DELETES:-500}"
WRK_DURATION="${WRK_DURATION:-5s}"
ROUNDS="${ROUNDS:-3}"
CLUSTER_PY="$REPO/scripts/lib/cluster.py"

install_missing wrk curl python3
BIN="$(signet_bin release)"
WORK="$(make_workdir cluster-delete)"
ADMIN="$(random_token)"
# shellcheck disable=SC2317 # called by the EXIT trap
on_exit() {
    stop_instances 5
    pg_stop
}
cleanup_on_exit "$WORK" keep-failed 5

pg_start "$WORK/pg"
if [[ "${PG_LOG:-}" == 1 ]]; then
    "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qAt -v ON_ERROR_STOP=1 \
        -c "ALTER SYSTEM SET log_min_duration_statement = 0" \
        -c "ALTER SYSTEM SET log_line_prefix = '%m [%p] %a '" \
        -c "SELECT pg_reload_conf()" postgres >/dev/null
fi
random_token 32 >"$WORK/seal.key"
chmod 600 "$WORK/seal.key"
instance_config "$WORK/pg.toml" "$(pg_database bench)" "$WORK/seal.key"
NOTIFY="${NOTIFY:-listen}"
echo "notify = \"$NOTIFY\"" >>"$WORK/pg.toml" # the last table is [cluster]
printf '[storage]\ndata_dir = "%s"\n' "$WORK/sled" >"$WORK/sled.toml"
start() { # NAME CONFIG
    start_instance "$1" "$WORK/$2.toml" "$WORK/$1.log" ORGKEYS_MAX=1000
    ready_instance "$1" 60
}
measure() { # ORG NAME…: the latency run through those instances, as JSON
    local org="$1"
    shift
    python3 "$CLUSTER_PY" latency --bases "$(instance_urls "$@")" --admin "$ADMIN" \
        --signet "$BIN" --org "$org" --n "$DELETES"
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

start a pg
log "$DELETES deletes with one instance (load average $(loadavg))"
LOAD_1="$(loadavg)"
ONE="$(measure one a)"
start b pg
start c pg
log "$DELETES deletes with three instances (load average $(loadavg))"
LOAD_3="$(loadavg)"
THREE="$(measure three a b c)"

# --- verification throughput: PostgreSQL (A) against sled ----------------
if [[ "$ROUNDS" == 0 ]]; then
    python3 - "$ONE" "$THREE" "$NOTIFY" "$(nproc)" "$(loadavg)" <<'EOF'
import json, sys
one, three = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"cluster.notify = {sys.argv[3]}; {sys.argv[4]} cores; load average {sys.argv[5]}")
print("| measurement | p50 | p90 | p99 | max | mean waiting for the others |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for label, r in (("1 instance", one), ("3 instances", three)):
    w = f"{r['wait_mean']:.2f} ms" if r["wait_mean"] is not None else "–"
    print(f"| {label} | {r['p50']:.2f} ms | {r['p90']:.2f} ms | {r['p99']:.2f} ms | {r['max']:.1f} ms | {w} |")
EOF
    exit 0
fi
start sled sled
token_of() { # NAME: a token of a new RS256 key created through that instance
    local url="${INSTANCE_URL[$1]}"
    (
        umask 077
        curl -fsS --max-time 60 -X POST "$url/v1/organisations/tput/keys" \
            -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
            --data '{"name": "throughput"}' >"$WORK/key.json"
    )
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); open(sys.argv[2],"w").write(d["privateKey"]); print(d["id"])' \
        "$WORK/key.json" "$WORK/key.pem" >"$WORK/kid"
    "$BIN" token --key "$WORK/key.pem" --kid "$(cat "$WORK/kid")" --org tput --ttl 1h
    rm -f "$WORK/key.json" "$WORK/key.pem"
}
PG_TOKEN="$(token_of a)"
SLED_TOKEN="$(token_of sled)"
: >"$WORK/rps.txt"
LOAD_W="$(loadavg)"
for round in $(seq "$ROUNDS"); do
    for name in a sled; do
        token="$PG_TOKEN"
        [[ "$name" == sled ]] && token="$SLED_TOKEN"
        out="$(wrk -t1 -c16 -d"$WRK_DURATION" --timeout 5s \
            -H "Authorization: Bearer $token" "${INSTANCE_URL[$name]}/v1/auth")"
        grep -q "Non-2xx" <<<"$out" && die "wrk against $name saw non-2xx answers: $out"
        rps="$(sed -n 's/^Requests\/sec:[[:space:]]*//p' <<<"$out")"
        log "round $round, $name: $rps requests/s"
        echo "$name $rps" >>"$WORK/rps.txt"
    done
done

python3 - "$ONE" "$THREE" "$WORK/rps.txt" "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(nproc)" \
    "$LOAD_1" "$LOAD_3" "$LOAD_W" "$(loadavg)" "$DELETES" "$WRK_DURATION" <<'EOF'
import json, statistics, sys
one, three = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rps = {}
for line in open(sys.argv[3]):
    name, r = line.split()
    rps.setdefault(name, []).append(float(r))
date, nproc, l1, l3, lw, lend, n, dur = sys.argv[4:]
print(f"signet several instances, {date}; {nproc} cores; load average (1, 5, 15 min) "
      f"{l1} before the 1-instance run, {l3} before the 3-instance run, {lw} before wrk, {lend} at the end")
print()
print("| measurement | p50 | p90 | p99 | max | mean waiting for the others |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for label, r in ((f"{n} deletes, 1 instance", one), (f"{n} deletes, 3 instances (spread over them)", three)):
    w = f"{r['wait_mean']:.2f} ms" if r["wait_mean"] is not None else "–"
    print(f"| {label} | {r['p50']:.2f} ms | {r['p90']:.2f} ms | {r['p99']:.2f} ms | {r['max']:.1f} ms | {w} |")
pg, sled = statistics.median(rps["a"]), statistics.median(rps["sled"])
fmt = lambda xs: ", ".join(f"{x:,.0f}" for x in xs)
print()
print(f"| `GET /v1/auth`, one RS256 token, wrk -t1 -c16 -d{dur} | median req/s | runs |")
print("| --- | ---: | --- |")
print(f"| PostgreSQL, instance A of 3 | {pg:,.0f} | {fmt(rps['a'])} |")
print(f"| sled | {sled:,.0f} | {fmt(rps['sled'])} |")
print(f"| PostgreSQL / sled | {pg / sled:.2f} × | ratio of medians |")
EOF
