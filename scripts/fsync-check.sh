#!/usr/bin/env bash
# Durability check (docs/api.md, storage guarantees): every acknowledged create (201) and delete
# (204) must be behind a real fsync/fdatasync of sled's database file.
#
# Runs `signet serve` under strace on 127.0.0.1 with a temporary data dir,
# creates 10 keys (two organisations, each within the default quota of 5) and
# deletes 2, stops the server, and reads the trace in the order strace saw the
# syscalls. For each 201/204 written to a client socket it needs an
# fsync/fdatasync of {data_dir}/db that
#   - started after the request was read from that socket,
#   - started after the last write to the data dir before the response
#     (so it covers the request's data), and
#   - returned before the response was written.
# It prints that sync for each response, then
#   fsync check: D/D deletes were preceded by a sync
#   fsync check: N/N creates were preceded by a sync
# and exits 1 if any response had no such sync (2 on a setup error).
# FSYNC_TRACE_KEEP=FILE keeps a copy of the raw trace.
#
# SIGNET_BACKEND=postgres checks the same on a private PostgreSQL
# (scripts/lib/postgres.sh): each 201/204 must be preceded, after its
# request was read, by a COMMIT sent to PostgreSQL and its "COMMIT"
# completion read back. Durability of the commit itself is then the
# server's (synchronous_commit, fsync).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/postgres.sh
source "$ROOT/scripts/lib/postgres.sh"
cd "$ROOT"
CREATES_PER_ORG=5
ORGS=(acme beta)

STRACE_PID=""
TMP="$(make_workdir fsync)"
# On exit: stop the server (a grandchild, under strace), then strace.
# shellcheck disable=SC2317 # called by the EXIT trap
on_exit() {
    stop_signet "$SERVER_PID" || true
    SERVER_PID=""
    stop_signet "$STRACE_PID" || true
    pg_stop
}
cleanup_on_exit "$TMP" keep-failed

if ! command -v strace >/dev/null; then
    echo "# installing strace"
    timeout 600 apt-get install -y -qq strace >/dev/null \
        || { timeout 600 apt-get update -qq && timeout 600 apt-get install -y -qq strace >/dev/null; } \
        || die "could not install strace (apt-get install -y strace)"
fi
echo "# $(strace -V | head -1)"

# SIGNET_BIN=PATH tests an already built binary instead of building one.
BIN="$(signet_bin debug)"

ADMIN="$(random_token)"
DATA="$TMP/data"
TRACE="$TMP/trace"
BACKEND="${SIGNET_BACKEND:-sled}"
SERVE=("$BIN" serve)
case "$BACKEND" in
    sled) ;;
    postgres)
        pg_start "$TMP/pg"
        random_token 32 >"$TMP/seal.key"
        printf '[storage]\nbackend = "postgres"\nurl = "%s"\nseal_key_file = "%s"\n' \
            "$(pg_database fsync)" "$TMP/seal.key" >"$TMP/postgres.toml"
        SERVE+=(--config "$TMP/postgres.toml")
        ;;
    *) die "SIGNET_BACKEND must be sled or postgres, not '$BACKEND'" ;;
esac
# Chosen after PostgreSQL took its port, so that the two cannot collide.
PORT="$(free_port)"
ADDR="127.0.0.1:$PORT"
BASE="http://$ADDR"

start_signet "$DATA" "$PORT" "$TMP/server.log" -- \
    strace -f -tt -T -yy -s 64 \
    -e trace=fsync,fdatasync,sync_file_range,write,writev,pwrite64,pwritev,pwritev2,sendto,sendmsg,read,recvfrom \
    -o "$TRACE" "${SERVE[@]}"
follow_strace "$TMP/server.log"
# Watched through strace, which lives exactly as long as its tracee; a
# first start on a fresh PostgreSQL under load can take many seconds.
ready=0
wait_http "$BASE/readyz" 60 "$STRACE_PID" || ready=$?
if [[ $ready -ne 0 ]]; then
    cat "$TMP/server.log" >&2
    die "signet serve did not become ready under strace (wait_http: $ready)"
fi
echo "# signet (pid $SERVER_PID) serving on $ADDR under strace (pid $STRACE_PID)"

CREATED=0
DELETED=0
IDS=()
for org in "${ORGS[@]}"; do
    for i in $(seq "$CREATES_PER_ORG"); do
        code="$(curl -sS --max-time 30 -o "$TMP/create.json" -w '%{http_code}' \
            -X POST "$BASE/v1/organisations/$org/keys" -H "Authorization: Bearer $ADMIN" \
            -H 'Content-Type: application/json' -d "{\"name\":\"fsync-$i\"}")"
        [[ "$code" == 201 ]] || { cat "$TMP/create.json" >&2; die "create $org/$i answered $code"; }
        id="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$TMP/create.json")"
        IDS+=("$org/$id")
        CREATED=$((CREATED + 1))
    done
done
rm -f "$TMP/create.json"
for org in "${ORGS[@]}"; do
    for entry in "${IDS[@]}"; do
        [[ "${entry%%/*}" == "$org" ]] || continue
        code="$(curl -sS --max-time 30 -o /dev/null -w '%{http_code}' -X DELETE \
            "$BASE/v1/organisations/${entry%%/*}/keys/${entry#*/}" -H "Authorization: Bearer $ADMIN")"
        [[ "$code" == 204 ]] || die "DELETE ${entry#*/} answered $code"
        DELETED=$((DELETED + 1))
        break
    done
done
echo "# made $CREATED creates (201) and $DELETED deletes (204); stopping the server"

stop_signet "$SERVER_PID" || true
for _ in $(seq 100); do alive "$STRACE_PID" || break; sleep 0.1; done
stop_signet "$STRACE_PID" || true
STRACE_PID=""
SERVER_PID=""
[[ -s "$TRACE" ]] || die "strace wrote no trace"
[[ -n "${FSYNC_TRACE_KEEP:-}" ]] && cp "$TRACE" "$FSYNC_TRACE_KEEP"
echo "# trace: $(wc -l <"$TRACE") lines"

python3 - "$TRACE" "$DATA" "$CREATED" "$DELETED" "$BACKEND" "${PG_PORT:-0}" <<'PY'
import re
import sys

trace, data_dir, want_creates, want_deletes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
backend, pg_port = sys.argv[5], sys.argv[6]
db_path = data_dir.rstrip("/") + "/db"

LINE = re.compile(r"^(\d+)\s+(\d\d:\d\d:\d\d\.\d+)\s+(.*)$")
RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
FDPATH = r"(TCP(?:v6)?:\[[^\]]*\]|[^>]*)"  # a socket's "->" holds a '>'
FD = re.compile(r"^\w+\((\d+)<" + FDPATH + ">")
FIRST_STR = re.compile(r"^\w+\(\d+<" + FDPATH + r'>,\s*(?:\[\{iov_base=)?"((?:[^"\\]|\\.)*)"')
RET = re.compile(r"\)\s+=\s+(-?\d+|\?)[^=]*$")
METHODS = ("GET ", "POST ", "PUT ", "DELETE ", "PATCH ", "HEAD ", "OPTIONS ")


def unescape(s):
    return re.sub(r'\\(["\\])', r"\1", s).replace("\\r", "\r").replace("\\n", "\n")


# Each event: pid, name, text (whole call), entry/exit positions in the order
# strace observed them. A complete line was entered right after the previous
# printed line and returned at its own line; a split one at its two lines.
events = []
pending = {}
with open(trace, errors="replace") as f:
    for pos, raw in enumerate(f):
        m = LINE.match(raw.rstrip("\n"))
        if not m:
            continue
        pid, ts, rest = int(m.group(1)), m.group(2), m.group(3)
        if rest.startswith(("+++", "---")):
            continue
        if rest.endswith("<unfinished ...>"):
            pending[pid] = (pos, ts, rest[: -len("<unfinished ...>")].rstrip())
            continue
        r = RESUMED.match(rest)
        if r:
            if pid not in pending:
                continue
            p0, ts0, head = pending.pop(pid)
            events.append(dict(pid=pid, name=r.group(1), text=head + r.group(2), entry=p0, exit=pos, ts=ts0))
            continue
        name = rest.split("(", 1)[0]
        events.append(dict(pid=pid, name=name, text=rest, entry=pos - 0.5, exit=pos, ts=ts))

for e in events:
    fm = FD.match(e["text"])
    e["fd"], e["path"] = (int(fm.group(1)), fm.group(2)) if fm else (None, "")
    sm = FIRST_STR.match(e["text"])
    e["buf"] = unescape(sm.group(2)) if sm else ""
    rm = RET.search(e["text"])
    e["ret"] = rm.group(1) if rm else "?"
    e["sock"] = e["path"].startswith(("TCP:", "TCPv6:"))

syncs = [e for e in events if e["name"] in ("fsync", "fdatasync") and e["path"] == db_path and e["ret"] == "0"]
db_writes = [e for e in events if e["name"].startswith(("write", "pwrite")) and e["path"].startswith(data_dir)]
reads = [e for e in events if e["sock"] and e["name"] in ("read", "recvfrom", "recvmsg")]
responses = [e for e in events if e["sock"] and e["name"] in ("write", "writev", "sendto", "sendmsg")
             and e["buf"].startswith("HTTP/1.1 ")]

# PostgreSQL: the connections to the private server, the COMMITs sent on
# them and the COMMIT completions read back.
pg = [e for e in events if e["sock"] and e["path"].endswith(f":{pg_port}]")] if backend == "postgres" else []
commits_sent = [e for e in pg if e["name"] in ("write", "writev", "sendto", "sendmsg") and "COMMIT" in e["buf"]]
commits_done = [e for e in pg if e["name"] in ("read", "recvfrom", "recvmsg") and "COMMIT" in e["buf"]]
if backend == "postgres":
    print(f"# PostgreSQL on port {pg_port}: {len(commits_sent)} COMMITs sent, "
          f"{len(commits_done)} completions read")
    reads = [r for r in reads if r not in pg]
    responses = [r for r in responses if r not in pg]

counts = {"201": [0, 0], "204": [0, 0]}  # status -> [responses, covered]
used = set()
windows = []
print(f"# {len(events)} syscalls; {len(syncs)} successful fsync/fdatasync of {db_path}; "
      f"{len(responses)} HTTP responses")
for resp in responses:
    status = resp["buf"][9:12]
    if status not in counts:
        continue
    counts[status][0] += 1
    sock = resp["path"]
    before = [r for r in reads if r["path"] == sock and r["exit"] < resp["entry"]]
    starts = [r for r in before if r["buf"].startswith(METHODS)]
    if not starts:
        print(f"FAIL {status}: no request read on {sock} before the response")
        continue
    req = starts[-1]
    req_text = "".join(r["buf"] for r in before if r["entry"] >= req["entry"])
    req_line = req_text.split("\r\n", 1)[0].replace(" HTTP/1.1", "")
    m = re.search(r'"id":"([0-9A-Z]{26})"', resp["text"].replace('\\"', '"'))
    what = f"{status} {req_line}" + (f" -> {m.group(1)}" if m else "")
    if backend == "postgres":
        done = [c for c in commits_done if c["entry"] > req["exit"] and c["exit"] < resp["entry"]]
        sent = [c for c in commits_sent if done and req["exit"] < c["exit"] < done[-1]["entry"]]
        if not (done and sent):
            print(f"FAIL {what}: no COMMIT sent and completed between request and response "
                  f"(request at {req['ts']}, response at {resp['ts']})")
            continue
        counts[status][1] += 1
        print(f"PASS {what}: request read {req['ts']}, COMMIT sent at {sent[0]['ts']}, "
              f"completion read at {done[-1]['ts']} by thread {done[-1]['pid']}, "
              f"before the {status} was written at {resp['ts']}")
        continue
    writes = [w for w in db_writes if req["exit"] < w["exit"] < resp["entry"]]
    last_write = max((w["exit"] for w in writes), default=req["exit"])
    ok = [s for s in syncs if s["entry"] > last_write and s["exit"] < resp["entry"]]
    if not ok:
        in_window = [s for s in syncs if s["entry"] > req["exit"] and s["exit"] < resp["entry"]]
        why = (f"{len(in_window)} sync(s) in the window but none after the last data write"
               if in_window else "no fsync/fdatasync of the db file between request and response")
        print(f"FAIL {what}: {why} (request at {req['ts']}, response at {resp['ts']}, "
              f"{len(writes)} data-dir write(s) in between)")
        continue
    if not writes:
        print(f"FAIL {what}: no write to the data dir between request and response")
        continue
    s = ok[0]  # the first sync after the request's last write
    shared = " (SAME sync as an earlier response)" if id(s) in used else ""
    used.add(id(s))
    windows.append((req["exit"], resp["entry"]))
    counts[status][1] += 1
    also = "".join(f"; also {o['name']}({o['fd']}<db>) by thread {o['pid']} at {o['ts']}" for o in ok[1:])
    print(f"PASS {what}: request read {req['ts']}, {len(writes)} db write(s), then "
          f"{s['name']}({s['fd']}<db>) by thread {s['pid']} at {s['ts']} "
          f"returned before the {status} was written at {resp['ts']}{shared}{also}")

# Which threads sync, and how many of their syncs fall outside every request:
# sled's own flusher fsyncs on a timer; the store's request-path sync does not.
for pid in sorted({s["pid"] for s in syncs}):
    mine = [s for s in syncs if s["pid"] == pid]
    outside = sum(1 for s in mine if not any(a < s["entry"] and s["exit"] < b for a, b in windows))
    kinds = ", ".join(sorted({f"{s['name']}({s['fd']})" for s in mine}))
    print(f"# thread {pid}: {len(mine)} x {kinds}, {outside} outside any acknowledged request")

bad = False
n, k = counts["201"]
n2, k2 = counts["204"]
if n != want_creates:
    print(f"FAIL the trace shows {n} 201 responses, the script made {want_creates} creates")
    bad = True
if n2 != want_deletes:
    print(f"FAIL the trace shows {n2} 204 responses, the script made {want_deletes} deletes")
    bad = True
done_by = "a committed transaction" if backend == "postgres" else "a sync"
print(f"fsync check: {k2}/{n2} deletes were preceded by {done_by}")
print(f"fsync check: {k}/{n} creates were preceded by {done_by}")
sys.exit(1 if bad or k != n or k2 != n2 or n == 0 else 0)
PY
