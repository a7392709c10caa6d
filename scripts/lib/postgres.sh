# shellcheck shell=bash
# A private, throw-away PostgreSQL for the scripts' PostgreSQL modes
# (SIGNET_BACKEND=postgres). Source it after common.sh:
#
#   # shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/postgres.sh
#   source "$ROOT/scripts/lib/postgres.sh"
#   pg_start "$WORK/pg"            # initdb + pg_ctl start on a free port
#   url="$(pg_database NAME)"      # CREATE DATABASE NAME; prints its URL
#   pg_stop                        # pg_ctl stop -m immediate (idempotent)
#   pg_resume                      # start it again on the same port
#
# As root, initdb and postgres run as the `postgres` user (they refuse
# root), DIR chowned to it and its parent made traversable (o+x). Binaries: $SIGNET_PG_BIN, else the
# newest /usr/lib/postgresql/*/bin, else PATH; Debian's `postgresql`
# package is installed if none is found. Sets PG_BIN, PG_DIR and PG_PORT.

PG_BIN=""
PG_DIR=""
PG_PORT=""

# pg_as_server COMMAND…: COMMAND as the `postgres` user when we are root.
pg_as_server() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

_pg_find_bin() {
    if [[ -n "${SIGNET_PG_BIN:-}" ]]; then
        echo "$SIGNET_PG_BIN"
        return
    fi
    local newest
    newest="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -name initdb -path '*/bin/*' 2>/dev/null |
        sort -V | tail -1)"
    if [[ -n "$newest" ]]; then
        dirname "$newest"
    elif command -v initdb >/dev/null; then
        dirname "$(command -v initdb)"
    fi
}

# pg_start DIR: a new cluster in DIR (created), started on a free port,
# sockets in DIR; dies if that fails.
pg_start() {
    PG_DIR="$1"
    PG_BIN="$(_pg_find_bin)"
    if [[ -z "$PG_BIN" ]]; then
        log "installing postgresql"
        { timeout 600 apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            timeout 600 apt-get install -y -qq postgresql >/dev/null; } ||
            die "could not install postgresql (apt-get install -y postgresql)"
        PG_BIN="$(_pg_find_bin)"
        [[ -n "$PG_BIN" ]] || die "postgresql installed, but no initdb found"
    fi
    mkdir -p "$PG_DIR"
    if [[ "$(id -u)" == 0 ]]; then
        # the postgres user must reach DIR: its parent becomes traversable
        chmod o+x "$(dirname "$PG_DIR")"
        chown postgres: "$PG_DIR"
    fi
    PG_PORT="$(free_port)"
    pg_as_server "$PG_BIN/initdb" -D "$PG_DIR/data" --auth=trust -U postgres -E UTF8 \
        --no-sync >"$PG_DIR/initdb.log" 2>&1 || { cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
    pg_resume
}

# pg_resume: start the cluster pg_start made again, on the same port (after
# pg_stop); dies if that fails.
pg_resume() {
    pg_as_server "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w -t 60 \
        -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1" start >/dev/null ||
        { cat "$PG_DIR/log" >&2; die "PostgreSQL did not start"; }
}

# pg_database NAME: create database NAME in the running cluster; print its URL.
pg_database() {
    "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qAt -v ON_ERROR_STOP=1 \
        -c "CREATE DATABASE $1" postgres >/dev/null || die "CREATE DATABASE $1 failed"
    echo "postgres://postgres@127.0.0.1:$PG_PORT/$1"
}

# pg_stop: stop the cluster at once, if one runs.
pg_stop() {
    if [[ -n "$PG_DIR" && -f "$PG_DIR/data/postmaster.pid" ]]; then
        pg_as_server "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    fi
}
