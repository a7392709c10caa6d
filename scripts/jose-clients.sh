#!/usr/bin/env bash
# The conditions given to `check ... bash -c '...' _ ARGS` expand in that child
# shell on purpose.
# shellcheck disable=SC2016
# Interoperability check: real JOSE libraries (PyJWT and jwcrypto from PyPI,
# panva/jose from npm) verify signet-minted tokens of every key type (RS256,
# PS256, ES256, ES384, EdDSA) against a running signet's JWKS endpoints, stop
# verifying a deleted, a disabled and an expired key's token once their cache
# is fresh, and the JWKS responses carry the caching headers docs/api.md
# promises (max-age bounded by the earliest expiry listed).
#
# Installs its tools under target/jose/ (reused on later runs), builds the
# debug binary, starts a server on 127.0.0.1 with a temporary data dir, and
# prints one line per check, then "N passed, M failed". Exit 1 if any failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"
cd "$ROOT"
JOSE_DIR="$ROOT/target/jose"
VENV="$JOSE_DIR/venv"
NODE_DIR="$JOSE_DIR/node"
ORG=acme

PASSED=0
FAILED=0
TMP="$(make_workdir jose)"
cleanup_on_exit "$TMP" remove 5

log() { echo "# $*"; }
size() { if [[ -f "$1" ]]; then wc -c <"$1"; else echo 0; fi; }
pass() { PASSED=$((PASSED + 1)); echo "PASS $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $*"; }
check() { # check NAME CONDITION-COMMAND...
    local name=$1; shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
# Tally PASS/FAIL lines printed by a helper program.
tally() {
    local line
    while IFS= read -r line; do
        echo "$line"
        case "$line" in
            PASS*) PASSED=$((PASSED + 1)) ;;
            FAIL*) FAILED=$((FAILED + 1)) ;;
        esac
    done
}

# --- tools -----------------------------------------------------------------
mkdir -p "$JOSE_DIR"
if ! "$VENV/bin/python" -c 'import jwt, cryptography, jwcrypto' 2>/dev/null; then
    log "installing PyJWT[crypto] and jwcrypto into $VENV"
    [[ -x "$VENV/bin/pip" ]] || timeout 120 python3 -m venv "$VENV" \
        || die "could not create a Python venv in $VENV"
    timeout 600 "$VENV/bin/pip" install --quiet --disable-pip-version-check 'PyJWT[crypto]' jwcrypto \
        || die "pip could not install PyJWT[crypto] and jwcrypto"
fi
if [[ ! -f "$NODE_DIR/node_modules/jose/package.json" ]]; then
    log "installing jose into $NODE_DIR"
    mkdir -p "$NODE_DIR"
    [[ -f "$NODE_DIR/package.json" ]] \
        || echo '{"name":"signet-jose-check","private":true,"type":"module"}' >"$NODE_DIR/package.json"
    ( cd "$NODE_DIR" && {
        timeout 600 npm install --no-audit --no-fund --loglevel=error jose@6 \
            || timeout 600 npm install --no-audit --no-fund --loglevel=error jose@5; } ) \
        || die "npm could not install jose"
fi
PYJWT_VERSION="$("$VENV/bin/python" -c 'import jwt; print(jwt.__version__)')"
JWCRYPTO_VERSION="$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("jwcrypto"))')"
JOSE_VERSION="$(node -p "require('$NODE_DIR/node_modules/jose/package.json').version")"
log "PyJWT $PYJWT_VERSION, jwcrypto $JWCRYPTO_VERSION, jose $JOSE_VERSION, node $(node --version)"
# jose_check.mjs must sit next to node_modules for `import 'jose'` to resolve.
cp "$ROOT/scripts/jose/jose_check.mjs" "$NODE_DIR/jose_check.mjs"

# SIGNET_BIN=PATH tests an already built binary instead of building one.
BIN="$(signet_bin debug)"

# --- server ----------------------------------------------------------------
PORT="$(free_port)"
ADDR="127.0.0.1:$PORT"
BASE="http://$ADDR"
ADMIN="$(random_token)"
start_signet "$TMP/data" "$PORT" "$TMP/server.log"
ready_or_die "$BASE" 10 "$TMP/server.log"
log "signet serving on $ADDR (data dir $TMP/data)"

CURL=(curl -sS --max-time 20)

# create_key NAME BODY -> writes $TMP/NAME.json and $TMP/NAME.pem, echoes the id
create_key() {
    local name=$1 body=$2 code
    code="$("${CURL[@]}" -o "$TMP/$name.json" -w '%{http_code}' -X POST "$BASE/v1/organisations/$ORG/keys" \
        -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' -d "$body")"
    [[ "$code" == 201 ]] || { cat "$TMP/$name.json" >&2; die "creating key $name answered $code"; }
    python3 - "$TMP/$name.json" "$TMP/$name.pem" <<'PY'
import json, sys
k = json.load(open(sys.argv[1]))
open(sys.argv[2], "w").write(k["privateKey"])
print(k["id"], k["algorithm"])
PY
}

out="$(create_key rs '{"name":"k"}')"; read -r RS_KID RS_ALG <<<"$out"
out="$(create_key ps '{"name":"p","algorithm":"PS256"}')"; read -r PS_KID PS_ALG <<<"$out"
log "keys: $RS_KID ($RS_ALG), $PS_KID ($PS_ALG)"
check "default create is RS256 (got $RS_ALG)" test "$RS_ALG" = RS256
check "PS256 create is PS256 (got $PS_ALG)" test "$PS_ALG" = PS256

RS_TOKEN="$(timeout 30 "$BIN" token --key "$TMP/rs.pem" --kid "$RS_KID" --org "$ORG" --aud signet --alg RS256)"
PS_TOKEN="$(timeout 30 "$BIN" token --key "$TMP/ps.pem" --kid "$PS_KID" --org "$ORG" --aud signet --alg PS256)"

# The EC and Ed25519 keys: created like the others, their tokens minted by
# `signet token` without --alg (the PKCS#8 key says which).
declare -A CURVE_KID CURVE_TOKEN
CURVE_ALGS=(ES256 ES384 EdDSA)
for alg in "${CURVE_ALGS[@]}"; do
    out="$(create_key "$alg" "{\"name\":\"$alg\",\"algorithm\":\"$alg\"}")"
    read -r kid got <<<"$out"
    check "$alg create is $alg (got $got)" test "$got" = "$alg"
    CURVE_KID[$alg]=$kid
    CURVE_TOKEN[$alg]="$(timeout 30 "$BIN" token --key "$TMP/$alg.pem" --kid "$kid" --org "$ORG" --aud signet)"
done
CURVE_WANT=()
for alg in "${CURVE_ALGS[@]}"; do CURVE_WANT+=("${CURVE_KID[$alg]}=$alg"); done
log "keys: ${CURVE_WANT[*]}"

GLOBAL_URL="$BASE/.well-known/jwks.json"
ORG_URL="$BASE/v1/organisations/$ORG/jwks.json"

# --- JWKS headers ------------------------------------------------------------
# header FILE NAME -> the value of header NAME (case-insensitive), CR stripped
header() { awk -v n="$(tr '[:upper:]' '[:lower:]' <<<"$2")" -F': ' \
    'tolower($1)==n { sub(/\r$/, ""); sub(/^[^:]*: */, ""); print; exit }' "$1"; }

jwks_headers() {
    local label=$1 url=$2 h="$TMP/h" b="$TMP/b" code etag cc ct code2 code3
    code="$("${CURL[@]}" -D "$h" -o "$b" -w '%{http_code}' "$url")"
    check "$label: GET answers 200 (got $code)" test "$code" = 200
    etag="$(header "$h" etag)"
    check "$label: ETag present and strong (got '$etag')" \
        bash -c '[[ "$1" == \"*\" && "$1" != W/* ]]' _ "$etag"
    cc="$(header "$h" cache-control)"
    check "$label: Cache-Control is 'public, max-age=60' (got '$cc')" test "$cc" = "public, max-age=60"
    ct="$(header "$h" content-type)"
    check "$label: Content-Type is application/json (got '$ct')" \
        bash -c '[[ "${1%%;*}" == application/json ]]' _ "$ct"
    rm -f "$TMP/b2" "$TMP/b3"
    code2="$("${CURL[@]}" -D "$TMP/h2" -o "$TMP/b2" -w '%{http_code}' -H "If-None-Match: $etag" "$url")"
    check "$label: If-None-Match: $etag answers 304 with no body (got $code2, $(size "$TMP/b2") body bytes)" \
        bash -c '[[ "$1" == 304 && ! -s "$2" ]]' _ "$code2" "$TMP/b2"
    check "$label: the 304 repeats the ETag and Cache-Control" \
        bash -c '[[ "$1" == "$2" && "$3" == "$4" ]]' _ "$(header "$TMP/h2" etag)" "$etag" \
        "$(header "$TMP/h2" cache-control)" "$cc"
    code3="$("${CURL[@]}" -D "$TMP/h3" -o "$TMP/b3" -w '%{http_code}' "$url?kid=whatever")"
    check "$label: ?kid=whatever answers 200 with the same body and ETag (got $code3)" \
        bash -c '[[ "$1" == 200 && "$2" == "$3" ]] && cmp -s "$4" "$5"' _ "$code3" \
        "$(header "$TMP/h3" etag)" "$etag" "$b" "$TMP/b3"
    cp "$b" "$TMP/$label.body"
    echo "$etag" >"$TMP/$label.etag"
}

jwks_contents() { # LABEL FILE WANT_KIDS... : JWKS holds exactly those kids, well formed, public only
    local label=$1 file=$2; shift 2
    local out
    if out="$(python3 - "$file" "$@" <<'PY'
import base64, json, re, sys
doc = json.load(open(sys.argv[1]))
want = dict(a.split("=") for a in sys.argv[2:])
keys = doc["keys"]
got = {k["kid"]: k for k in keys}
problems = []
if set(got) != set(want):
    problems.append(f"kids {sorted(got)} != {sorted(want)}")
# alg -> (kty, crv, {member: decoded length, or 0 for any})
shapes = {
    "ES256": ("EC", "P-256", {"x": 32, "y": 32}),
    "ES384": ("EC", "P-384", {"x": 48, "y": 48}),
    "EdDSA": ("OKP", "Ed25519", {"x": 32}),
}
def b64len(v):
    if not re.fullmatch(r"[A-Za-z0-9_-]+", v or ""):
        return None
    return len(base64.urlsafe_b64decode(v + "=" * (-len(v) % 4)))
for kid, k in got.items():
    kty, crv, members = shapes.get(k.get("alg"), ("RSA", None, {"n": 0, "e": 0}))
    if k.get("kty") != kty or k.get("crv") != crv or k.get("use") != "sig":
        problems.append(f"{kid}: kty/crv/use {k.get('kty')}/{k.get('crv')}/{k.get('use')}")
    if kid in want and k.get("alg") != want[kid]:
        problems.append(f"{kid}: alg {k.get('alg')} != {want[kid]}")
    for m, length in members.items():
        got_len = b64len(k.get(m))
        if got_len is None or (length and got_len != length):
            problems.append(f"{kid}: {m} is not unpadded base64url of {length or 'any'} bytes")
    extra = set(k) - {"kty", "crv", "use", "alg", "kid"} - set(members)
    if extra:
        problems.append(f"{kid}: unexpected members {sorted(extra)}")
    private = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"} & set(k)
    if private:
        problems.append(f"{kid}: private members {sorted(private)}")
print("; ".join(problems) or f"{len(keys)} key(s): " + ", ".join(f"{k}={v['alg']}" for k, v in got.items()))
sys.exit(1 if problems else 0)
PY
    )"; then pass "$label: $out"; else fail "$label: $out"; fi
}

jwks_headers "global JWKS" "$GLOBAL_URL"
jwks_headers "org JWKS" "$ORG_URL"
jwks_contents "global JWKS holds every key, public members only" "$TMP/global JWKS.body" "$RS_KID=RS256" "$PS_KID=PS256" "${CURVE_WANT[@]}"
jwks_contents "org JWKS holds every key, public members only" "$TMP/org JWKS.body" "$RS_KID=RS256" "$PS_KID=PS256" "${CURVE_WANT[@]}"

# --- library verification ------------------------------------------------------
# cases PHASE RS_EXPECT -> JSON list of cases for both URLs and every token
cases() {
    python3 - "$1" "$2" "$GLOBAL_URL" "$ORG_URL" "$RS_TOKEN" "$PS_TOKEN" \
        "${CURVE_TOKEN[ES256]}" "${CURVE_TOKEN[ES384]}" "${CURVE_TOKEN[EdDSA]}" <<'PY'
import json, sys
phase, rs_expect, gurl, ourl, rs, ps, es256, es384, eddsa = sys.argv[1:]
out = []
for label, url in (("global JWKS", gurl), ("org JWKS", ourl)):
    word = "fails" if rs_expect == "no_key" else "verifies"
    out.append(dict(name=f"{phase}: {label} {word} RS256 token", url=url, token=rs, alg="RS256", expect=rs_expect))
    for alg, token in (("PS256", ps), ("ES256", es256), ("ES384", es384), ("EdDSA", eddsa)):
        out.append(dict(name=f"{phase}: {label} verifies {alg} token", url=url, token=token, alg=alg, expect="ok"))
print(json.dumps(out))
PY
}

run_libs() { # CASES_FILE
    # process substitution, not a pipe: tally must run in this shell to count
    tally < <(timeout 120 "$VENV/bin/python" "$ROOT/scripts/jose/pyjwt_check.py" "$1" 2>&1 || true)
    tally < <(timeout 120 "$VENV/bin/python" "$ROOT/scripts/jose/jwcrypto_check.py" "$1" 2>&1 || true)
    tally < <(cd "$NODE_DIR" && { timeout 120 node jose_check.mjs "$1" 2>&1 || true; })
}
# A helper that dies without printing its lines must still count as a failure.
run_libs_checked() { # CASES_FILE EXPECTED_LINES
    local before=$((PASSED + FAILED))
    run_libs "$1"
    local got=$((PASSED + FAILED - before))
    check "the three libraries reported all $2 cases (got $got)" test "$got" -eq "$2"
}

cases "before delete" ok >"$TMP/cases-before.json"
run_libs_checked "$TMP/cases-before.json" 30

# --- delete the RS256 key ------------------------------------------------------
code="$("${CURL[@]}" -o "$TMP/del" -w '%{http_code}' -X DELETE "$BASE/v1/organisations/$ORG/keys/$RS_KID" \
    -H "Authorization: Bearer $ADMIN")"
check "DELETE RS256 key $RS_KID answers 204 (got $code)" test "$code" = 204

for label in "global JWKS" "org JWKS"; do
    url="$GLOBAL_URL"; [[ "$label" == "org JWKS" ]] && url="$ORG_URL"
    old="$(cat "$TMP/$label.etag")"
    code="$("${CURL[@]}" -D "$TMP/h4" -o "$TMP/b4" -w '%{http_code}' -H "If-None-Match: $old" "$url")"
    new="$(header "$TMP/h4" etag)"
    check "after delete: $label with the old ETag answers 200 and a new ETag (got $code, $new)" \
        bash -c '[[ "$1" == 200 && -n "$2" && "$2" != "$3" ]]' _ "$code" "$new" "$old"
    jwks_contents "after delete: $label holds every key but the RS256 one" "$TMP/b4" "$PS_KID=PS256" "${CURVE_WANT[@]}"
done

cases "after delete, fresh client" no_key >"$TMP/cases-after.json"
run_libs_checked "$TMP/cases-after.json" 30

# --- disable one key, let another expire ------------------------------------------
# cases_for PHASE TOKEN=ALG=EXPECT... -> JSON cases for both URLs
cases_for() {
    python3 - "$1" "$GLOBAL_URL" "$ORG_URL" "${@:2}" <<'PY'
import json, sys
phase, gurl, ourl = sys.argv[1:4]
out = []
for label, url in (("global JWKS", gurl), ("org JWKS", ourl)):
    for spec in sys.argv[4:]:
        token, alg, expect = spec.rsplit("=", 2)
        word = "fails" if expect == "no_key" else "verifies"
        out.append(dict(name=f"{phase}: {label} {word} {alg} token", url=url, token=token, alg=alg, expect=expect))
print(json.dumps(out))
PY
}
# verdict TOKEN -> signet's own /v1/verify code ("valid" or the error code)
verdict() {
    "${CURL[@]}" -X POST "$BASE/v1/verify" -H 'Content-Type: application/json' \
        -d "{\"token\":\"$1\"}" | python3 -c 'import json,sys; v=json.load(sys.stdin); print("valid" if v["valid"] else v["error"]["code"])'
}

HORIZON=10
EXPIRES_AT="$(python3 -c "import datetime, time; print(datetime.datetime.fromtimestamp(int(time.time()) + $HORIZON, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'))")"
out="$(create_key exp "{\"name\":\"short-lived\",\"algorithm\":\"ES256\",\"expiresAt\":\"$EXPIRES_AT\"}")"
read -r EXP_KID _ <<<"$out"
EXP_TOKEN="$(timeout 30 "$BIN" token --key "$TMP/exp.pem" --kid "$EXP_KID" --org "$ORG" --aud signet)"
log "key $EXP_KID (ES256) expires at $EXPIRES_AT"
for url in "$GLOBAL_URL" "$ORG_URL"; do
    "${CURL[@]}" -D "$TMP/h5" -o /dev/null "$url"
    cc="$(header "$TMP/h5" cache-control)"
    check "$url: max-age is at most the $HORIZON s left before $EXP_KID expires (got '$cc')" \
        bash -c '[[ "$1" =~ ^public,\ max-age=([0-9]+)$ ]] && (( BASH_REMATCH[1] <= $2 ))' _ "$cc" "$HORIZON"
done
cases_for "before disable and expiry" "$PS_TOKEN=PS256=ok" "$EXP_TOKEN=ES256=ok" >"$TMP/cases-live.json"
run_libs_checked "$TMP/cases-live.json" 12

code="$("${CURL[@]}" -o "$TMP/patch" -w '%{http_code}' -X PATCH "$BASE/v1/organisations/$ORG/keys/$PS_KID" \
    -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/merge-patch+json' -d '{"state":"disabled"}')"
check "PATCH state=disabled of PS256 key $PS_KID answers 200 (got $code)" test "$code" = 200
got="$(verdict "$PS_TOKEN")"
check "signet refuses the disabled key's token as key_disabled (got $got)" test "$got" = key_disabled
python3 -c "import datetime, time
at = datetime.datetime.strptime('$EXPIRES_AT', '%Y-%m-%dT%H:%M:%SZ').replace(tzinfo=datetime.timezone.utc).timestamp()
time.sleep(max(0.0, at - time.time()) + 0.2)"
got="$(verdict "$EXP_TOKEN")"
check "signet refuses the expired key's token as key_expired (got $got)" test "$got" = key_expired
for label in "global JWKS" "org JWKS"; do
    url="$GLOBAL_URL"; [[ "$label" == "org JWKS" ]] && url="$ORG_URL"
    "${CURL[@]}" -o "$TMP/b6" "$url"
    jwks_contents "after disable and expiry: $label holds neither key" "$TMP/b6" "${CURVE_WANT[@]}"
done
cases_for "after disable and expiry, fresh client" "$PS_TOKEN=PS256=no_key" "$EXP_TOKEN=ES256=no_key" >"$TMP/cases-gone.json"
run_libs_checked "$TMP/cases-gone.json" 12

if ! alive "$SERVER_PID"; then
    fail "signet server still running at the end"
    cat "$TMP/server.log" >&2
fi
if grep -qiE 'panic|error' "$TMP/server.log"; then
    echo "# server log:"; sed 's/^/#   /' "$TMP/server.log"
fi

echo "$PASSED passed, $FAILED failed"
[[ "$FAILED" -eq 0 ]]
