# shellcheck shell=bash
# Shared helpers for the scripts that run a throw-away `signet serve` on
# 127.0.0.1 (scripts/*.sh, benches/load.sh). Source it; it sets no shell
# options and changes no directory:
#
#   ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
#   # shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/common.sh
#   source "$ROOT/scripts/lib/common.sh"
#
# Typical use:
#   BIN="$(signet_bin release)"              # $SIGNET_BIN, or cargo build
#   WORK="$(make_workdir soak)"              # ${TMPDIR:-/tmp}/signet-soak.XXXXXX
#   cleanup_on_exit "$WORK" keep-failed      # EXIT trap: stop server, rm dir
#   ADMIN="$(random_token)"
#   PORT="$(free_port)"
#   start_signet "$WORK/data" "$PORT" "$WORK/server.log" ORGKEYS_MAX=5
#   wait_ready "http://127.0.0.1:$PORT" 30 || …  # 1: exited, 2: timed out
#   # or: ready_or_die "http://127.0.0.1:$PORT" 30 "$WORK/server.log"
#
# Globals: reads BIN and ADMIN (start_signet) and LOG_TAG (log), sets SERVER_PID
# (start_signet, server_gone) and SERVER_STATUS (server_gone), and
# SIGNET_ROOT (the repository). A script may define `on_exit` (run first by
# the EXIT trap) and may redefine `die` after sourcing this file.

SIGNET_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SERVER_PID=""
# shellcheck disable=SC2034 # read by the scripts after server_gone
SERVER_STATUS=""

# log MESSAGE…: "[LOG_TAG] MESSAGE" on stderr; a script sets LOG_TAG
# before using it.
log() { printf '[%s] %s\n' "${LOG_TAG:-signet}" "$*" >&2; }

# die MESSAGE…: "error: MESSAGE" on stderr, exit 2 (a setup error).
die() {
    echo "error: $*" >&2
    exit 2
}

# alive PID: true if PID is non-empty and the process still exists.
alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# build_signet [release|debug]: `cargo build` (30 min bound) in the
# repository and print the path of the binary; dies if that fails.
build_signet() {
    local profile="${1:-release}" flags=(--quiet)
    case "$profile" in
        release) flags+=(--release) ;;
        debug) ;;
        *) die "build_signet: unknown profile '$profile'" ;;
    esac
    (cd "$SIGNET_ROOT" && timeout 1800 cargo build "${flags[@]}") || die "cargo build failed"
    local bin="${CARGO_TARGET_DIR:-$SIGNET_ROOT/target}/$profile/signet"
    [[ -x "$bin" ]] || die "$bin was not built"
    echo "$bin"
}

# signet_bin [release|debug]: print the binary to test: $SIGNET_BIN made
# absolute (a bare name is looked up on PATH; dies unless executable), or
# else the one build_signet PROFILE builds (default release).
signet_bin() {
    local bin
    if [[ -z "${SIGNET_BIN:-}" ]]; then
        build_signet "${1:-release}"
        return
    fi
    if [[ "$SIGNET_BIN" == */* ]]; then # relative to the current directory
        bin="$(cd "$(dirname "$SIGNET_BIN")" 2>/dev/null && pwd)/$(basename "$SIGNET_BIN")"
    else
        bin="$(command -v "$SIGNET_BIN")" || bin=""
    fi
    [[ -x "$bin" && ! -d "$bin" ]] || die "SIGNET_BIN=$SIGNET_BIN is not an executable"
    echo "$bin"
}

# install_missing PACKAGE…: apt-get install those of PACKAGE… (Debian names,
# which are also the command names here) that are not on PATH.
install_missing() {
    local missing=() pkg
    for pkg in "$@"; do
        command -v "$pkg" >/dev/null 2>&1 || [[ -x "/usr/sbin/$pkg" ]] || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    echo "installing ${missing[*]}" >&2
    local sudo=""
    [[ $EUID -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# rounds_arg VALUE: prints VALUE, a script's ROUNDS argument, if it is a
# whole number from 1 to 100000; else prints the usage and exits 2.
rounds_arg() {
    [[ "$1" =~ ^[0-9]+$ && "$1" -ge 1 && "$1" -le 100000 ]] || {
        echo "usage: $0 [ROUNDS (1-100000)]" >&2
        exit 2
    }
    echo "$1"
}

# make_workdir NAME: create and print a fresh ${TMPDIR:-/tmp}/signet-NAME.XXXXXX.
make_workdir() { mktemp -d "${TMPDIR:-/tmp}/signet-$1.XXXXXX"; }

# random_token [BYTES=24]: BYTES random bytes as lower-case hex (an admin token).
# shellcheck disable=SC2120 # BYTES is optional
random_token() { head -c "${1:-24}" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# free_port: print a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start_signet DATA_DIR PORT LOGFILE [NAME=VALUE…] [-- COMMAND…]
#   Start COMMAND (default: "$BIN" serve) in the background with
#   SIGNET_DATA_DIR=DATA_DIR SIGNET_LISTEN=127.0.0.1:PORT
#   SIGNET_ADMIN_TOKEN=$ADMIN SIGNET_LOG=warn and then the given NAME=VALUE
#   pairs (which may override those), stdout and stderr to LOGFILE. Sets
#   SERVER_PID (the server's own PID: `env` execs it). COMMAND lets a caller
#   pass serve flags or a wrapper such as strace.
start_signet() {
    local data="$1" port="$2" log="$3"
    shift 3
    local vars=()
    while [[ $# -gt 0 && "$1" != -- ]]; do
        vars+=("$1")
        shift
    done
    if [[ $# -gt 0 ]]; then shift; fi # the --
    if [[ $# -eq 0 ]]; then set -- "$BIN" serve; fi
    env SIGNET_DATA_DIR="$data" SIGNET_LISTEN="127.0.0.1:$port" SIGNET_ADMIN_TOKEN="$ADMIN" \
        SIGNET_LOG=warn "${vars[@]}" "$@" >"$log" 2>&1 &
    SERVER_PID=$!
}

# follow_strace LOGFILE: after start_signet ran `strace … signet serve`,
# sets STRACE_PID to strace and SERVER_PID to the server, its child; dies
# with LOGFILE on stderr if strace never started it.
follow_strace() {
    STRACE_PID=$SERVER_PID
    SERVER_PID=""
    for _ in $(seq 100); do
        # no child yet makes ps fail: not an error here (pipefail, set -e)
        SERVER_PID="$(ps -o pid= --ppid "$STRACE_PID" | tr -d ' ' | head -1)" || true
        [[ -n "$SERVER_PID" ]] && break
        alive "$STRACE_PID" || break
        sleep 0.1
    done
    [[ -n "$SERVER_PID" ]] || { cat "$1" >&2; die "strace did not start signet serve"; }
}

# wait_http URL [SECONDS=30] [PID]: poll URL every 0.1 s (1 s per try)
# until it answers 2xx: 0 once it does, 1 as soon as PID (if given) has
# exited, 2 after about SECONDS. Prints nothing.
wait_http() {
    local url="$1" tries=$((${2:-30} * 10)) pid="${3:-}" i
    for ((i = 0; i < tries; i++)); do
        if [[ -n "$pid" ]] && ! alive "$pid"; then
            return 1
        fi
        if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 2
}

# wait_ready BASE_URL [SECONDS=30]: wait_http BASE_URL/readyz, watching
# $SERVER_PID (0 ready, 1 the server exited, 2 not ready in time).
wait_ready() { wait_http "$1/readyz" "${2:-30}" "$SERVER_PID"; }

# pool_target CONFIG: CONFIG's keys.pool_2048; dies if it has none.
pool_target() {
    local target
    target="$(sed -n 's/^pool_2048[[:space:]]*=[[:space:]]*\([0-9]*\).*$/\1/p' "$1")"
    [[ -n "$target" ]] || die "no keys.pool_2048 in $1"
    echo "$target"
}

# wait_pool_full BASE_URL CONFIG: wait (at most 60 s) until the RSA-2048
# key pool of the signet at BASE_URL holds CONFIG's pool_2048 keys, so that
# its refill thread (started at start-up and by every RSA create) is idle
# during what is measured next; dies otherwise.
wait_pool_full() {
    local target depth
    target="$(pool_target "$2")"
    for _ in $(seq 600); do
        depth="$(curl -fsS --max-time 5 "$1/metrics" |
            sed -n 's/^signet_keypool_depth{bits="2048"} \([0-9]*\).*$/\1/p')"
        [[ "$depth" == "$target" ]] && return 0
        sleep 0.1
    done
    die "the key pool of $1 did not refill within 60 s"
}

# ready_or_die BASE_URL SECONDS LOGFILE: wait_ready, or else LOGFILE on
# stderr and die "signet serve exited at startup" / "signet did not become
# ready on HOST:PORT".
ready_or_die() {
    local rc=0
    wait_ready "$1" "$2" || rc=$?
    [[ $rc -eq 0 ]] && return 0
    cat "$3" >&2
    if [[ $rc -eq 1 ]]; then die "signet serve exited at startup"; fi
    die "signet did not become ready on ${1#http://}"
}

# stop_signet PID [GRACE=10]: SIGTERM, up to GRACE seconds to exit, then
# SIGKILL; GRACE 0 sends SIGKILL at once. Reaps PID if it is our child.
# Returns 1 only if the process outlived a non-zero GRACE; 0 otherwise
# (also for an empty or already gone PID). Works for any process.
stop_signet() {
    local pid="${1:-}" grace="${2:-10}" i
    alive "$pid" || return 0
    if [[ "$grace" -gt 0 ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
    fi
    local outlived=0
    if alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
        if [[ "$grace" -gt 0 ]]; then outlived=1; fi
    fi
    wait "$pid" 2>/dev/null || true
    return "$outlived"
}

# server_gone: true if $SERVER_PID has exited; then reaps it, clears
# SERVER_PID and sets SERVER_STATUS to "N" or "N (signal NAME)".
server_gone() {
    if alive "$SERVER_PID"; then return 1; fi
    local status=0
    wait "$SERVER_PID" 2>/dev/null || status=$?
    SERVER_PID=""
    if [[ $status -gt 128 ]]; then
        status="$status (signal $(kill -l $((status - 128))))"
    fi
    # shellcheck disable=SC2034 # read by the scripts
    SERVER_STATUS="$status"
}

# cleanup_on_exit DIR [POLICY=remove] [GRACE=10]
#   Install the EXIT trap (INT and TERM exit 130, which runs it too). On
#   exit it calls `on_exit` if the script defines one, stops $SERVER_PID
#   (stop_signet … GRACE), then deals with DIR by POLICY:
#     remove       always delete it
#     keep         keep it if KEEP=1
#     keep-failed  keep it if KEEP=1 or the exit status is not 0
#   ("work dir kept: DIR" on stderr when kept), and exits with the status
#   the script was exiting with.
cleanup_on_exit() {
    _CLEANUP_DIR="$1"
    _CLEANUP_POLICY="${2:-remove}"
    _CLEANUP_GRACE="${3:-10}"
    case "$_CLEANUP_POLICY" in
        remove | keep | keep-failed) ;;
        *) die "cleanup_on_exit: unknown policy '$_CLEANUP_POLICY'" ;;
    esac
    trap _cleanup EXIT
    trap 'exit 130' INT TERM
}

# shellcheck disable=SC2317 # called by the EXIT trap
_cleanup() {
    local rc=$?
    if declare -F on_exit >/dev/null; then on_exit || true; fi
    stop_signet "$SERVER_PID" "$_CLEANUP_GRACE" || true
    if [[ "$_CLEANUP_POLICY" != remove && "${KEEP:-0}" == 1 ]] ||
        [[ "$_CLEANUP_POLICY" == keep-failed && $rc -ne 0 ]]; then
        echo "work dir kept: $_CLEANUP_DIR" >&2
    else
        rm -rf "$_CLEANUP_DIR"
    fi
    exit "$rc"
}
