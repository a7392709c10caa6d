#!/usr/bin/env bash
# Fuzzes signet's network-facing parsers with cargo-fuzz (libFuzzer).
#
#   scripts/fuzz.sh                  # every target, FUZZ_SECONDS (60) each
#   FUZZ_SECONDS=120 scripts/fuzz.sh token jwk
#
# Only a stable toolchain is needed: RUSTC_BOOTSTRAP=1 lets it take the
# nightly flags cargo-fuzz passes. Each target runs as one libFuzzer process
# (one core). Hand-made seeds in fuzz/seeds/TARGET/ are copied into
# fuzz/corpus/TARGET/ (which keeps what libFuzzer finds between runs).
# Logs go to fuzz/artifacts/TARGET.log, crashing inputs to
# fuzz/artifacts/TARGET/. Exits 1 if any target crashed, 2 on a setup error.
#
# Extra libFuzzer flags: FUZZ_ARGS="-rss_limit_mb=1024".
# Reproduce a crash: RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-…
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
export RUSTC_BOOTSTRAP=1

ALL_TARGETS=(token claims request jwk pem config upload)
seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${ALL_TARGETS[@]}")

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked || {
        echo "fuzz: cannot install cargo-fuzz; install it with 'cargo install cargo-fuzz --locked'" >&2
        exit 2
    }
fi

# Build every target once up front, so the time budget is spent fuzzing.
if ! cargo fuzz build >fuzz/build.log 2>&1; then
    tail -n 40 fuzz/build.log >&2
    echo "fuzz: building the fuzz targets failed (full log: fuzz/build.log)" >&2
    exit 2
fi

# Per-target libFuzzer options.
target_args() {
    case "$1" in
        # Tokens over 16 KiB are refused before decoding: let inputs reach that.
        token) echo "-max_len=17000" ;;
        *) echo "" ;;
    esac
}

mkdir -p fuzz/artifacts
crashed=0
summary=()
for t in "${targets[@]}"; do
    if [ ! -f "fuzz/fuzz_targets/$t.rs" ]; then
        echo "fuzz: no target '$t' (have: ${ALL_TARGETS[*]})" >&2
        exit 2
    fi
    corpus="fuzz/corpus/$t"
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    [ -d "fuzz/seeds/$t" ] && cp -n "fuzz/seeds/$t"/* "$corpus"/ 2>/dev/null
    log="fuzz/artifacts/$t.log"
    echo "fuzz: $t for ${seconds}s (log: $log)"
    start=$(date +%s)
    # shellcheck disable=SC2046,SC2086
    cargo fuzz run "$t" "$corpus" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 \
        $(target_args "$t") ${FUZZ_ARGS:-} >"$log" 2>&1
    rc=$?
    elapsed=$(( $(date +%s) - start ))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -n1 | grep -o '[0-9]*$')
    [ -z "$execs" ] && execs=$(grep -o '^Done [0-9]* runs' "$log" | tail -n1 | grep -o '[0-9]\+')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | grep -o '[0-9]*')
    # libFuzzer's own clock, without any rebuild cargo did first.
    secs=$(grep -o '^Done [0-9]* runs in [0-9]* second' "$log" | tail -n1 | grep -o 'in [0-9]*' | grep -o '[0-9]*')
    [ -n "$secs" ] && elapsed=$secs
    if [ "$rc" -eq 0 ]; then
        result="ok"
    else
        result="CRASH (exit $rc)"
        crashed=1
        grep -m1 -E "^==[0-9]+==ERROR" "$log"
        sed -n '/panicked at/,+1p' "$log" | head -n 2
        for a in $(grep -o "fuzz/artifacts/$t/[a-z]*-[0-9a-f]*" "$log" | sort -u); do
            echo "  input: $a"
            echo "  reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run $t $a"
        done
    fi
    line=$(printf '%-8s %12s execs  %4ss  cov %-6s %s' "$t" "${execs:-?}" "$elapsed" "${cov:-?}" "$result")
    echo "fuzz: $line"
    summary+=("$line")
done

echo
echo "fuzz summary (${seconds}s per target):"
printf '  %s\n' "${summary[@]}"
exit "$crashed"
