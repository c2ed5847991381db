#!/usr/bin/env bash
# Miri gate: the unit tests and a reduced integration set under Miri, each over several
# scheduler/address seeds (-Zmiri-many-seeds runs one interpreter per seed, in parallel).
# Prints one line:  miri: N tests passed over S seeds, U UB reports
# and fails on any test failure or Undefined Behavior report, or if Miri cannot run.
#
# Provenance: strict (-Zmiri-strict-provenance) everywhere except the one test that
# round-trips pointers through usize across threads on purpose
# (tests/checked.rs racing_double_frees_free_exactly_once, with_exposed_provenance_mut),
# which runs with -Zmiri-permissive-provenance.
#
# tests/claim.rs (and its modules in tests/claim/) runs whole: claimed regions are caller
# memory with in-band side tables, the riskiest provenance in the crate.
#
# The 2 MiB-heap tests (heap_2m::*, phase_change_*) fill the whole default heap
# (~130k mallocs) and are left to the native test gate. tests/contract.rs runs with
# --features checked, so checked mode's bookkeeping is under Miri too.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${MIRI_SEEDS:-4}

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
installed=$(rustup +nightly component list --installed)
if ! grep -q '^miri' <<<"$installed" || ! grep -q '^rust-src' <<<"$installed"; then
    rustup component add miri rust-src --toolchain nightly
fi
cargo +nightly miri setup >/dev/null

log=$(mktemp)
trap 'rm -f "$log"' EXIT
SEEDFLAG="-Zmiri-many-seeds=0..$SEEDS"
STRICT="$SEEDFLAG -Zmiri-strict-provenance"
PERMISSIVE="$SEEDFLAG -Zmiri-permissive-provenance"

status=0
# run FLAGS CARGO-ARGS... -- TEST-ARGS...
run() {
    local flags=$1
    shift
    echo "::: MIRIFLAGS='$flags' cargo +nightly miri test $*"
    # stdin from /dev/null: cargo-miri must not read whatever the caller left there.
    if ! MIRIFLAGS="$flags" cargo +nightly miri test "$@" </dev/null 2>&1 | tee -a "$log"; then
        status=1
    fi
}

run "$STRICT" --lib
# The per-CPU caches' model (feature `percpu`: plain Rust under Miri) and its unit tests,
# with checked mode's marks on parked blocks.
run "$STRICT" --lib --features percpu,checked
run "$STRICT" --test contract --features checked -- heap_16k heap_64k bad_input realloc zeroed \
    every_alignment stats
run "$STRICT" --test checked --features checked -- bad_frees
run "$PERMISSIVE" --test checked --features checked -- racing
# The same with the caches' model live: parked blocks carry keys (`percpu`'s docs).
run "$PERMISSIVE" --test checked --features checked,percpu -- racing bad_frees
run "$STRICT" --test claim
# Per-heap collections. (`tests/lookup.rs` passes under Miri too, but takes two minutes
# a seed: run it by hand with `--test lookup`.)
run "$STRICT" --test allocator_api --features allocator-api2

# Each seed prints its own "test result" line; a test counts once over all seeds.
# `|| true`: under pipefail a grep that finds nothing (a clean run has no failures)
# would otherwise end the script before it prints its summary.
total=$( (grep -Eo '[0-9]+ passed' "$log" || true) | awk '{s += $1} END {print s + 0}')
ub=$(grep -c 'Undefined Behavior' "$log" || true)
failed=$( (grep -Eo '[1-9][0-9]* failed' "$log" || true) | awk '{s += $1} END {print s + 0}')
line="miri: $((total / SEEDS)) tests passed over $SEEDS seeds, $ub UB reports"
if [ "$failed" -gt 0 ]; then
    line="$line, $failed failed"
fi
echo "$line"
if [ -n "${GATE_DETAIL:-}" ]; then
    echo "$line" >"$GATE_DETAIL"
fi
if [ "$ub" -ne 0 ] || [ "$total" -eq 0 ]; then
    status=1
fi
exit "$status"
