#!/usr/bin/env bash
# Per-CPU caches gate (feature `percpu`, issue #11). Five runs:
#  (a) tests/percpu.rs natively, with `hooks` (the delay inside every restartable
#      sequence, so aborts are certain) and `checked`: the caches must be live here
#      (every test prints `percpu mode: active`), the two signal storms and the kernel
#      canary must report aborted sequences;
#  (b) the same tests under GLIBC_TUNABLES=glibc.pthread.rseq=0: glibc registers no rseq
#      area, the caches stay off (`percpu mode: fallback` everywhere) and every test
#      still passes;
#  (d) the whole test suite (every feature) under the tunable: every path with the
#      caches compiled in but unavailable;
#  (e) the whole test suite with the caches live and `checked` off: the production
#      fast path, where `GlobalAlloc` parks and takes blocks by layout alone;
#  (c) examples/percpu_smoke.rs natively, under the tunable and under valgrind (which
#      has no rseq): the checksum line must be identical in all three, and the caches
#      active only in the native run.
# Prints one summary line:
#   percpu: storm <signals> signals <aborts> aborts (masked), ... (nested); canary <n> aborts; tunable ok valgrind ok
# and exits non-zero on any failure, or if anything cannot run (no rseq here, no
# valgrind after trying to install it).
set -euo pipefail
cd "$(dirname "$0")/.."
exec </dev/null

mkdir -p target
TARGET_DIR=${CARGO_TARGET_DIR:-target}
FEATURES=percpu,hooks,checked
TUNABLE=glibc.pthread.rseq=0

fail() {
    echo "percpu: FAILED: $*" >&2
    exit 1
}

# passed LOG: the number of tests passed in LOG.
passed() {
    grep -Eo '[0-9]+ passed' "$1" | awk '{s += $1} END {print s + 0}'
}

# --- (a) native -------------------------------------------------------------------
native=target/ci-percpu-native.log
echo "::: percpu (a): cargo test --release --features $FEATURES --test percpu"
set +e
cargo test --release --features "$FEATURES" --test percpu -- --nocapture 2>&1 | tee "$native"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" -eq 0 ] || fail "the percpu tests failed natively (exit $rc)"
grep -q 'test result: ok\.' "$native" || fail "no test result in the native run"
n_native=$(passed "$native")
[ "$n_native" -gt 0 ] || fail "no percpu test ran natively"
grep -q '^percpu mode: active' "$native" ||
    fail "the caches were never active natively: no rseq or membarrier on this machine? (the gate must exercise them)"
if grep -q '^percpu mode: fallback' "$native"; then
    fail "some tests ran without caches natively"
fi
storm_re='^percpu storm: [0-9]+ signals, [0-9]+ handler allocations, [0-9]+ aborts'
[ "$(grep -Ec "$storm_re" "$native")" -eq 2 ] || fail "expected two storm lines (masked, nested)"
storm=$(grep -E "$storm_re" "$native" |
    sed -E 's/^percpu storm: ([0-9]+) signals, ([0-9]+) handler allocations, ([0-9]+) aborts \(([a-z]+).*/\1 signals \3 aborts (\4)/' |
    paste -sd, - | sed 's/,/, /g')
canary=$(grep -Eo '^percpu canary: [0-9]+ aborts' "$native" | head -n 1 | sed 's/^percpu canary: //')
[ -n "$canary" ] || fail "no canary line (is the hooks feature on?)"
[ "${canary%% *}" -gt 0 ] || fail "the canary saw no abort"
if grep -E "$storm_re" "$native" | grep -Eq ' 0 aborts'; then
    fail "a storm saw no abort"
fi
grep -Eq '^percpu out-of-range: limit 1' "$native" ||
    fail "the out-of-range test did not run (it needs two CPUs)"

# --- (b) rseq unavailable ---------------------------------------------------------
fallback=target/ci-percpu-tunable.log
echo "::: percpu (b): the same under GLIBC_TUNABLES=$TUNABLE"
set +e
GLIBC_TUNABLES=$TUNABLE cargo test --release --features "$FEATURES" --test percpu -- --nocapture 2>&1 | tee "$fallback"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" -eq 0 ] || fail "the percpu tests failed with rseq unavailable (exit $rc)"
n_fallback=$(passed "$fallback")
[ "$n_fallback" -eq "$n_native" ] || fail "$n_fallback tests passed under the tunable, $n_native natively"
grep -q '^percpu mode: fallback' "$fallback" || fail "no test reported the fallback under the tunable"
if grep -q '^percpu mode: active' "$fallback"; then
    fail "caches active although glibc registered no rseq area"
fi

# --- (d) the whole suite, rseq unavailable ---------------------------------------
whole=target/ci-percpu-whole-tunable.log
echo "::: percpu (d): every test, every feature, under GLIBC_TUNABLES=$TUNABLE"
set +e
GLIBC_TUNABLES=$TUNABLE cargo test --release --all-features --tests 2>&1 | tee "$whole"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" -eq 0 ] || fail "the test suite failed with rseq unavailable (exit $rc)"
n_whole=$(passed "$whole")
[ "$n_whole" -gt "$n_native" ] || fail "only $n_whole tests passed in the whole suite under the tunable"

# --- (e) the whole suite with the caches live and checked mode off ---------------
# The production fast path: unchecked `GlobalAlloc` parks a freed block and takes an
# allocation from the cache by its layout alone (`Heap::park`/`unpark`), which the
# checked runs above never take.
fast=target/ci-percpu-whole-unchecked.log
echo "::: percpu (e): every test with percpu,mmap,hooks,allocator-api2 (checked off)"
set +e
cargo test --release --features percpu,mmap,hooks,allocator-api2 --tests 2>&1 | tee "$fast"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" -eq 0 ] || fail "the test suite failed with the caches live and checked off (exit $rc)"
n_fast=$(passed "$fast")
[ "$n_fast" -gt "$n_native" ] || fail "only $n_fast tests passed with checked off"

# --- (c) the smoke example: native, tunable, valgrind -----------------------------
echo "::: percpu (c): examples/percpu_smoke.rs natively, under the tunable and under valgrind"
if ! command -v valgrind >/dev/null 2>&1; then
    apt-get update || fail "apt-get update (to install valgrind)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y valgrind || fail "cannot install valgrind"
fi
command -v valgrind >/dev/null 2>&1 || fail "valgrind is not available"
cargo build --release --features percpu --example percpu_smoke || fail "cannot build the smoke example"
smoke=$TARGET_DIR/release/examples/percpu_smoke
[ -x "$smoke" ] || fail "no smoke binary at $smoke"
"$smoke" | tee target/ci-percpu-smoke-native.log || fail "the smoke example failed natively"
GLIBC_TUNABLES=$TUNABLE "$smoke" | tee target/ci-percpu-smoke-tunable.log ||
    fail "the smoke example failed under the tunable"
valgrind -q --error-exitcode=3 "$smoke" | tee target/ci-percpu-smoke-valgrind.log ||
    fail "the smoke example failed under valgrind (or valgrind reported errors)"
sum() { grep -E '^percpu_smoke checksum: ' "$1"; }
native_sum=$(sum target/ci-percpu-smoke-native.log) || fail "no checksum line natively"
[ "$(sum target/ci-percpu-smoke-tunable.log)" = "$native_sum" ] ||
    fail "the checksum under the tunable differs from the native one"
[ "$(sum target/ci-percpu-smoke-valgrind.log)" = "$native_sum" ] ||
    fail "the checksum under valgrind differs from the native one"
grep -qx 'percpu_smoke active: true' target/ci-percpu-smoke-native.log ||
    fail "the smoke example's caches were not active natively"
grep -qx 'percpu_smoke active: false' target/ci-percpu-smoke-tunable.log ||
    fail "the smoke example's caches were active under the tunable"
grep -qx 'percpu_smoke active: false' target/ci-percpu-smoke-valgrind.log ||
    fail "the smoke example's caches were active under valgrind"

checksum=$(awk '{print $3}' <<<"$native_sum")
echo "percpu: storm $storm; canary $canary; $n_native tests natively, tunable ok ($n_fallback tests; whole suite $n_whole), unchecked suite $n_fast, valgrind ok (checksum $checksum)"
