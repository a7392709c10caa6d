#!/usr/bin/env bash
# Create latency per algorithm, end to end over HTTP: N sequential creates
# (POST /v1/organisations/{alg}/keys) of each of ES256, ES384, EdDSA and
# RS256, with p50, p90 and max of curl's time_total.
#
#   benches/create.sh          # N=50; SIGNET_BIN=path to reuse a binary
#
# Starts the release binary (built if needed) on a free 127.0.0.1 port with
# a temporary data dir and the repo's config.toml (ORGKEYS_MAX=1000). EC and
# Ed25519 keys are generated inside the request, never pooled; RS256 comes
# from the pool of 8 pre-generated 2048-bit pairs while it lasts, then waits
# for generation, so its figures mix both. Every create is durable
# (fdatasync) before it answers: the disk's sync latency is in every figure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR/.. source=scripts/lib/common.sh
source "$REPO/scripts/lib/common.sh"
LOG_TAG=create
N="${N:-50}"
BIN="$(signet_bin release)"
WORK="$(make_workdir create)"
cleanup_on_exit "$WORK" remove 5

PORT="$(free_port)"
BASE="http://127.0.0.1:$PORT"
ADMIN="$(random_token 36)"
start_signet "$WORK/data" "$PORT" "$WORK/signet.log" ORGKEYS_MAX=1000 -- \
    "$BIN" serve --config "$REPO/config.toml"
ready_or_die "$BASE" 10 "$WORK/signet.log"
log "signet on $BASE; $N creates per algorithm"

echo "algorithm  n   p50_ms  p90_ms  max_ms"
for alg in ES256 ES384 EdDSA RS256; do
    : >"$WORK/times"
    for ((i = 0; i < N; i++)); do
        # The private key goes to /dev/null, never to a file.
        read -r status secs < <(curl -sS --max-time 60 -o /dev/null \
            -w '%{http_code} %{time_total}\n' -X POST "$BASE/v1/organisations/$alg/keys" \
            -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
            --data "{\"name\":\"k$i\",\"algorithm\":\"$alg\"}")
        [[ "$status" == 201 ]] || die "create $alg answered $status"
        echo "$secs" >>"$WORK/times"
    done
    sort -g "$WORK/times" | awk -v alg="$alg" '
        { t[NR] = $1 * 1000 }
        END {
            p50 = t[int((NR + 1) * 0.5)]; p90 = t[int(NR * 0.9 + 0.5)]
            printf "%-9s %3d  %6.2f  %6.2f  %6.2f\n", alg, NR, p50, p90, t[NR]
        }'
done
