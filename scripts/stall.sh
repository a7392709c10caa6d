#!/usr/bin/env bash
# Hostile clients against a throw-away `signet serve`: for each kind of
# stalled client, hold HOLD of them open and time a fresh GET /healthz.
#
#   scripts/stall.sh            # builds target/release/signet
#   SIGNET_BIN=… scripts/stall.sh
#
# Kinds: silent (connects, says nothing), byte (one "P", the start of the
# HTTP/2 preface), slowloris (half the headers), h2 (preface and SETTINGS),
# body (a POST with Content-Length: 4096 that stops after '{"token":'),
# noread (pipelines requests for /openapi.yaml and never reads).
#
# Per kind, two rounds:
#   spare  HOLD = MAX_CONNECTIONS - 1: a slot is free, the fresh client
#          should be served at once;
#   full   HOLD = MAX_CONNECTIONS: every slot is held, the fresh client waits
#          in the kernel's accept queue until a deadline frees one.
# Prints one Markdown table of curl's time_total. The server runs with
# DEADLINE-second deadlines so that the whole run stays under a minute.
#
# Knobs: MAX_CONNECTIONS (default 1000), DEADLINE (3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"
LOG_TAG=stall
MAX_CONNECTIONS="${MAX_CONNECTIONS:-1000}"
DEADLINE="${DEADLINE:-3}"

install_missing curl python3
BIN="$(signet_bin release)"
WORK="$(make_workdir stall)"
cleanup_on_exit "$WORK" keep-failed
ADMIN="$(random_token)"
PORT="$(free_port)"
ulimit -n "$((MAX_CONNECTIONS * 2 + 1024))" 2>/dev/null || true

cat >"$WORK/config.toml" <<EOF
[server]
listen = "127.0.0.1:$PORT"
max_connections = $MAX_CONNECTIONS
header_read_timeout_secs = $DEADLINE
idle_timeout_secs = $DEADLINE
body_read_timeout_secs = $DEADLINE
body_progress_timeout_secs = $DEADLINE
write_timeout_secs = $DEADLINE
http2_keepalive_interval_secs = $DEADLINE
http2_keepalive_timeout_secs = $DEADLINE
EOF
start_signet "$WORK/data" "$PORT" "$WORK/server.log" -- "$BIN" serve --config "$WORK/config.toml"
BASE="http://127.0.0.1:$PORT"
ready_or_die "$BASE" 30 "$WORK/server.log"

# hold KIND COUNT: open COUNT stalled clients of KIND, print "ready", then
# keep them until stdin closes.
cat >"$WORK/hold.py" <<'EOF'
import socket, sys
kind, count, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
post = (b"POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 4096\r\n\r\n{\"token\":")
first = {
    "silent": b"",
    "byte": b"P",
    "slowloris": b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n",
    "h2": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]),
    "body": post,
    "noread": b"",
}[kind]
held = []
for _ in range(count):
    s = socket.socket()
    if kind == "noread":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    if kind == "noread":
        s.setblocking(False)
        req = b"GET /openapi.yaml HTTP/1.1\r\nHost: x\r\n\r\n" * 64
        try:
            for _ in range(256):
                s.send(req)
        except BlockingIOError:
            pass
    elif first:
        s.sendall(first)
    held.append(s)
print("ready", flush=True)
sys.stdin.read()
EOF

fresh() { curl -s -o /dev/null -w '%{http_code} %{time_total}' --max-time 60 "$BASE/healthz"; }

log "signet with max_connections=$MAX_CONNECTIONS and ${DEADLINE}s deadlines"
echo "| kind | spare slot: fresh GET /healthz | all slots held: fresh GET /healthz |"
echo "| --- | --- | --- |"
for kind in silent byte slowloris h2 body noread; do
    row="| $kind"
    for hold in $((MAX_CONNECTIONS - 1)) "$MAX_CONNECTIONS"; do
        sleep 1 # the previous round's sockets closed: their slots are free
        coproc HOLD { python3 "$WORK/hold.py" "$kind" "$hold" "$PORT"; }
        read -r _ <&"${HOLD[0]}"
        read -r code secs <<<"$(fresh)"
        [[ "$code" == 200 ]] || log "$kind/$hold: fresh client got HTTP $code"
        row+=" | $(python3 -c "print(f'{$secs * 1000:.0f} ms')")"
        eval "exec ${HOLD[1]}>&-"
        wait "$HOLD_PID" 2>/dev/null || true
    done
    echo "$row |"
done
curl -s "$BASE/metrics" | grep '^signet_connections_closed_total' >&2 || true
