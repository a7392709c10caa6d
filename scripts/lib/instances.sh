# shellcheck shell=bash
# Several `signet serve` instances on one database, for the scripts that
# run them (scripts/cluster.sh, scripts/crash-loop.sh with SIGNET_INSTANCES,
# benches/cluster-delete.sh). Source it after common.sh (and postgres.sh):
#
#   instance_config "$WORK/a.toml" "$url" "$WORK/seal.key" [refuse|serve] [MAX_STALENESS_MS]
#   start_instance a "$WORK/a.toml" "$WORK/a.log" ORGKEYS_MAX=5   # port: INSTANCE_PORT[a]
#   ready_instance a 30                  # or die, with its log
#   kill_instance a; start_instance a …  # kill -9, then again on the same port
#   stop_instances 10                    # every one still running
#
# Reads BIN and ADMIN (as start_signet does). Sets INSTANCE_PID[NAME],
# INSTANCE_PORT[NAME], INSTANCE_LOG[NAME] and INSTANCE_URL[NAME].

declare -gA INSTANCE_PID=() INSTANCE_PORT=() INSTANCE_LOG=() INSTANCE_URL=()

# instance_config FILE URL SEAL_KEY_FILE [STALE=refuse] [MAX_STALENESS_MS=2000]:
# a config for signet on PostgreSQL at URL.
instance_config() {
    cat >"$1" <<EOF
[storage]
backend = "postgres"
url = "$2"
seal_key_file = "$3"

[cluster]
max_staleness_ms = ${5:-2000}
stale_verification = "${4:-refuse}"
EOF
}

# start_instance NAME CONFIG LOGFILE [NAME=VALUE…]: `signet serve --config
# CONFIG` in the background (start_signet); a restarted NAME keeps its port.
start_instance() {
    local name="$1" config="$2" log="$3"
    shift 3
    local port="${INSTANCE_PORT[$name]:-$(free_port)}"
    start_signet "${WORK:-/nonexistent}/data-$name" "$port" "$log" "$@" -- "$BIN" serve --config "$config"
    INSTANCE_PID[$name]=$SERVER_PID
    INSTANCE_PORT[$name]=$port
    INSTANCE_LOG[$name]=$log
    INSTANCE_URL[$name]="http://127.0.0.1:$port"
    SERVER_PID=""
}

# ready_instance NAME [SECONDS=30]: wait for its /readyz, or die with its log.
ready_instance() {
    local name="$1" rc=0
    wait_http "${INSTANCE_URL[$name]}/readyz" "${2:-30}" "${INSTANCE_PID[$name]}" || rc=$?
    [[ $rc -eq 0 ]] && return 0
    cat "${INSTANCE_LOG[$name]}" >&2
    if [[ $rc -eq 1 ]]; then die "instance $name exited at startup"; fi
    die "instance $name did not become ready on ${INSTANCE_URL[$name]#http://}"
}

# kill_instance NAME: kill -9 it, wait for it and forget its PID (quietly:
# bash reports a job killed by a signal on stderr).
kill_instance() {
    {
        kill -9 "${INSTANCE_PID[$1]}"
        wait "${INSTANCE_PID[$1]}" || true
    } 2>/dev/null
    INSTANCE_PID[$1]=""
}

# stop_instances [GRACE=10]: stop_signet every instance still running.
stop_instances() {
    local name
    for name in "${!INSTANCE_PID[@]}"; do
        stop_signet "${INSTANCE_PID[$name]}" "${1:-10}" || true
        INSTANCE_PID[$name]=""
    done
}

# instance_urls NAME…: their base URLs, comma-separated.
instance_urls() {
    local name urls=()
    for name in "$@"; do urls+=("${INSTANCE_URL[$name]}"); done
    (
        IFS=,
        echo "${urls[*]}"
    )
}
