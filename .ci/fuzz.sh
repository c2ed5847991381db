#!/usr/bin/env bash
# Fuzz gate: builds the cargo-fuzz targets in fuzz/ and runs each for FUZZ_SECONDS
# (default 60) from a copy of its seed corpus, all targets at once (sharing the cores).
# Prints one line per target:
#   fuzz <t>: <seconds> s, <executions> execs, <corpus> corpus, <crashes> crashes
# and fails if anything cannot be installed, built or run, or if any target crashes
# (the crashing input is kept under fuzz/artifacts/<t>/, which git ignores).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${FUZZ_SECONDS:-60}

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked || cargo install cargo-fuzz
fi
cargo fuzz --version >/dev/null

# target name -> extra cargo flags (the checked target needs sigalloc's checked mode).
declare -A FEATURES=([api]="" [checked]="--features checked" [percpu]="--features percpu"
    [checked_percpu]="--features checked,percpu")
TARGETS=(api checked percpu checked_percpu)

cd fuzz
for t in "${TARGETS[@]}"; do
    # shellcheck disable=SC2086
    cargo +nightly fuzz build ${FEATURES[$t]} "$t"
done
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
bindir=$ROOT/fuzz/target/$host/release

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
declare -A PIDS=()
for t in "${TARGETS[@]}"; do
    [ -x "$bindir/$t" ] || { echo "fuzz $t: binary $bindir/$t missing" >&2; exit 1; }
    mkdir -p "$work/$t" "$ROOT/fuzz/artifacts/$t"
    seeds=("$ROOT"/fuzz/corpus/"$t"/seed-*)
    [ -e "${seeds[0]}" ] || { echo "fuzz $t: no seed corpus in fuzz/corpus/$t" >&2; exit 1; }
    cp "${seeds[@]}" "$work/$t/"
    "$bindir/$t" "$work/$t" -max_total_time="$SECS" -print_final_stats=1 -timeout=30 \
        -rss_limit_mb=2048 -artifact_prefix="$ROOT/fuzz/artifacts/$t/" \
        >"$work/$t.log" 2>&1 &
    PIDS[$t]=$!
done

status=0
for t in "${TARGETS[@]}"; do
    rc=0
    wait "${PIDS[$t]}" || rc=$?
    log=$work/$t.log
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1 || true)
    secs=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | awk '{print $5}' | tail -n 1 || true)
    corpus=$(find "$work/$t" -type f | wc -l)
    crashes=$(grep -c 'ERROR: libFuzzer' "$log" || true)
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes=1
    fi
    line="fuzz $t: ${secs:-?} s, ${execs:-0} execs, $corpus corpus, $crashes crashes"
    echo "$line"
    if [ -n "${GATE_DETAIL:-}" ]; then
        echo "$line" >>"$GATE_DETAIL"
    fi
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ] || [ -z "$execs" ] || [ "$execs" -eq 0 ]; then
        status=1
        echo "---- fuzz $t failed (exit $rc); end of its log: ----" >&2
        grep -E "panicked|expected|Test unit written|SUMMARY" "$log" >&2 || tail -n 30 "$log" >&2
    fi
done
exit "$status"
