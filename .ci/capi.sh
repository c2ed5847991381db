#!/usr/bin/env bash
# sigalloc from C (capi/): builds libsigalloc.so/.a and libsigalloc-preload.so, then
# proves them: artifact checks, the header, pkg-config and static linking, the C
# conformance test (prefixed and preloaded), the AO_malloc drop-in, a SIGALRM storm,
# fork tests, and real programs under LD_PRELOAD (also run with Debian's jemalloc and
# mimalloc preloaded, to prove the harness). One summary line per check; exits
# non-zero if any check failed. A check that cannot run fails; nothing is skipped.
# Usage: bash .ci/capi.sh [--bench]   (--bench adds the C benchmark table)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
exec </dev/null

BENCH=0
[ "${1:-}" = "--bench" ] && BENCH=1

declare -a SUMMARY=()
FAILED=0
export CHECK_DETAIL
# (Under pipefail, `cmd | grep -q` can fail when grep exits early and cmd gets SIGPIPE:
# pipelines here use `grep ... >/dev/null` instead.)
# check NAME CMD...: runs CMD, records "capi NAME ok|FAILED (seconds) detail". CMD may
# write a one-line detail to $CHECK_DETAIL. Functions check each step themselves
# (`|| return 1`): bash suspends `set -e` inside a function called from `if`.
check() {
    local name=$1
    shift
    CHECK_DETAIL=$(mktemp)
    local start=$SECONDS status=ok
    echo "::: capi $name"
    if ! "$@"; then
        status=FAILED
        FAILED=1
    fi
    local line
    line=$(printf 'capi %-22s %-6s %4ss  %s' "$name" "$status" "$((SECONDS - start))" "$(head -c 400 "$CHECK_DETAIL" 2>/dev/null)")
    rm -f "$CHECK_DETAIL"
    SUMMARY+=("$line")
    echo "$line"
}
detail() { echo "$*" >"$CHECK_DETAIL"; }

# ---- tools ------------------------------------------------------------------------
MULTIARCH=x86_64-linux-gnu
# Debian's python3 (not whatever else PATH finds first, e.g. a pyenv shim).
PY=/usr/bin/python3
JEMALLOC=/usr/lib/$MULTIARCH/libjemalloc.so.2
MIMALLOC=/usr/lib/$MULTIARCH/libmimalloc.so.2
deps() {
    local want=(gcc g++ binutils bc pkg-config libatomic-ops-dev libjemalloc2 libmimalloc2.0
        sqlite3 python3 git perl coreutils xz-utils)
    local missing=()
    for p in "${want[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        apt-get update || return 1
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" || return 1
    fi
    [ -e "$JEMALLOC" ] && [ -e "$MIMALLOC" ] || return 1
    detail "installed: ${missing[*]:-nothing}"
}

# ---- build ------------------------------------------------------------------------
TGT=${CARGO_TARGET_DIR:-$ROOT/capi/target}
export CARGO_TARGET_DIR=$TGT
STAGE=$TGT/stage            # prefix: lib/, include/, lib/pkgconfig/
WORK=$TGT/capi-work         # test binaries and scratch
LIB=$STAGE/lib
PRELOAD=$LIB/libsigalloc-preload.so
PRELOAD_DEBUG=$TGT/debug/libsigalloc-preload.so
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' capi/Cargo.toml | head -n 1)

build() {
    rm -rf "$STAGE" "$WORK"
    mkdir -p "$LIB/pkgconfig" "$STAGE/include" "$WORK" || return 1
    (cd capi && cargo build --workspace --release && cargo build --workspace) || return 1
    cp "$TGT/release/libsigalloc.so" "$TGT/release/libsigalloc.a" "$LIB/" || return 1
    cp "$TGT/release/libsigalloc_preload.so" "$PRELOAD" || return 1
    cp "$TGT/debug/libsigalloc_preload.so" "$PRELOAD_DEBUG" || return 1
    cp capi/include/sigalloc.h "$STAGE/include/" || return 1
    sed -e "s|@PREFIX@|$STAGE|" -e "s|@VERSION@|$VERSION|" capi/include/sigalloc.pc.in >"$LIB/pkgconfig/sigalloc.pc" || return 1
    detail "$(cd "$LIB" && ls | tr '\n' ' ')"
}

lint() {
    # Only this workspace's packages (`--all` would also reach the root crate).
    (cd capi && cargo fmt -p sigalloc-capi -p sigalloc-preload --check) || return 1
    (cd capi && cargo clippy --workspace --all-targets -- -D warnings) || return 1
    detail "rustfmt, clippy -D warnings"
}

# ---- artifact checks ----------------------------------------------------------------
# The documented export lists (capi/README.md).
API_NAMES="sigalloc_aligned_alloc sigalloc_calloc sigalloc_claim sigalloc_enable_mmap
sigalloc_free sigalloc_good_size sigalloc_malloc sigalloc_max_align sigalloc_mmap_enabled
sigalloc_owns sigalloc_posix_memalign sigalloc_realloc sigalloc_set_error_hook
sigalloc_percpu_active sigalloc_disable_percpu
sigalloc_stats_print sigalloc_trim sigalloc_usable_size sigalloc_version
sigalloc_version_string"
AO_NAMES="AO_free AO_malloc AO_malloc_enable_mmap"
LIBC_NAMES="malloc free calloc realloc reallocarray memalign aligned_alloc posix_memalign
valloc pvalloc malloc_usable_size cfree free_sized free_aligned_sized malloc_trim
malloc_stats __libc_malloc __libc_free __libc_calloc __libc_realloc __libc_memalign
__libc_valloc __libc_pvalloc"

sorted() { tr ' \n' '\n\n' | sed '/^$/d' | sort; }

# artifact FILE EXPECTED-NAMES: the exact export set, nothing undefined but libc's,
# no TLS, only libc.so.6 needed, bound at load time.
artifact() {
    local f=$1 want=$2
    local got
    got=$(nm -D --defined-only "$f" | awk '{print $3}' | sort) || return 1
    if [ "$got" != "$(echo "$want" | sorted)" ]; then
        echo "$f: exported set differs from the documented list:"
        diff <(echo "$want" | sorted) <(echo "$got") || true
        return 1
    fi
    if nm -D --undefined-only "$f" | grep rust_eh_personality >/dev/null; then
        echo "$f: undefined rust_eh_personality"
        return 1
    fi
    if [ "$(readelf -lW "$f" | grep -c ' TLS ')" -ne 0 ]; then
        echo "$f: has a TLS segment"
        return 1
    fi
    local needed
    needed=$(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
    if [ "$needed" != "libc.so.6 " ]; then
        echo "$f: NEEDED is '$needed', want only libc.so.6"
        return 1
    fi
    readelf -d "$f" | grep 'BIND_NOW' >/dev/null || { echo "$f: not BIND_NOW"; return 1; }
    # Nothing inside may call (or take the address of) an exported name through the
    # GOT/PLT: such a call could bind to another library's malloc.
    local self
    for self in $want; do
        if readelf -rW "$f" | awk '{print $5}' | grep -x "$self" >/dev/null; then
            echo "$f: relocation against its own export $self"
            return 1
        fi
    done
    # Undefined: only libc functions, none of them an allocator; and glibc's
    # `__rseq_offset` and `__rseq_size` (2.35+), which the core reads for its CPU slot
    # hint and its per-CPU caches, bound weakly so that an older glibc loads the
    # library too (`getauxval` is glibc's since 2.16).
    local sym
    for sym in __rseq_offset __rseq_size; do
        if nm -D --undefined-only "$f" | grep -w "$sym" | grep -qvE ' [vw] '; then
            echo "$f: $sym is not a weak reference"
            return 1
        fi
    done
    local und
    und=$(nm -D --undefined-only "$f" | awk '{print $2}' | sed 's/@.*//' |
        grep -vxE '_ITM_deregisterTMCloneTable|_ITM_registerTMCloneTable|__gmon_start__|__cxa_finalize|__errno_location|__rseq_offset|__rseq_size|abort|getauxval|madvise|memcmp|memcpy|memmove|memset|mmap|munmap|strlen|sysconf|write|bcmp' || true)
    if [ -n "$und" ]; then
        echo "$f: unexpected undefined symbols: $und"
        return 1
    fi
}

artifacts() {
    artifact "$LIB/libsigalloc.so" "$API_NAMES $AO_NAMES" || return 1
    artifact "$PRELOAD" "$API_NAMES $LIBC_NAMES" || return 1
    artifact "$PRELOAD_DEBUG" "$API_NAMES $LIBC_NAMES" || return 1
    artifact "$TGT/debug/libsigalloc.so" "$API_NAMES $AO_NAMES" || return 1
    # The stand-in personality is local and hidden where it exists.
    if readelf -sW "$PRELOAD_DEBUG" | grep rust_eh_personality | grep -v 'LOCAL.*HIDDEN' >/dev/null; then
        echo "rust_eh_personality is visible"
        return 1
    fi
    # The static library defines the same API and needs nothing but libc.
    local a_syms
    a_syms=$(nm --defined-only -g "$LIB/libsigalloc.a" 2>/dev/null | awk 'NF == 3 && $2 == "T" {print $3}' | grep -E '^(sigalloc_|AO_)' | sort)
    [ "$a_syms" = "$(echo "$API_NAMES $AO_NAMES" | sorted)" ] || { echo "libsigalloc.a exports differ"; return 1; }
    # Both builds load.
    LD_PRELOAD=$PRELOAD /bin/true || return 1
    LD_PRELOAD=$PRELOAD_DEBUG /bin/true || return 1
    # The exit report: SIGALLOC_STATS=json prints the statistics from .fini_array.
    local js
    # (one process that keeps stderr open to the end: coreutils close it at exit)
    js=$(SIGALLOC_STATS=json LD_PRELOAD=$PRELOAD $PY -c 'x = [str(i) for i in range(100000)]' 2>&1 >/dev/null) || return 1
    case $js in
        *'{"sigalloc":{"version":"'*'"bytes_in_use":'*) ;;
        *) echo "SIGALLOC_STATS=json printed: $js"; return 1 ;;
    esac
    echo "$js" | $PY -c 'import json, sys; s = json.load(sys.stdin)["sigalloc"]["stats"]; assert s["heap_bytes"] > 0' || {
        echo "SIGALLOC_STATS=json is not the expected JSON: $js"
        return 1
    }
    local n_api n_libc
    n_api=$(echo "$API_NAMES $AO_NAMES" | sorted | wc -l)
    n_libc=$(echo "$API_NAMES $LIBC_NAMES" | sorted | wc -l)
    detail "libsigalloc.so: $n_api exports; preload: $n_libc exports; no TLS, NEEDED libc.so.6, BIND_NOW, no self-relocations; debug loads; exit stats"
}

# ---- the header, pkg-config, static linking ---------------------------------------------
header() {
    local inc=$STAGE/include
    printf '#include <sigalloc.h>\nint main(void) { void *p = sigalloc_malloc(1); sigalloc_free(p); return sigalloc_version() != SIGALLOC_VERSION; }\n' >"$WORK/h.c"
    gcc -std=c11 -pedantic -Wall -Wextra -Werror -I"$inc" -c "$WORK/h.c" -o "$WORK/h.o" || return 1
    gcc -std=c99 -pedantic -Wall -Wextra -Werror -I"$inc" -c "$WORK/h.c" -o "$WORK/h99.o" || return 1
    cp "$WORK/h.c" "$WORK/h.cc"
    g++ -std=c++11 -pedantic -Wall -Wextra -Werror -I"$inc" -c "$WORK/h.cc" -o "$WORK/hpp.o" || return 1
    # Every function the header declares is exported, and every export is declared.
    local declared
    declared=$(grep -oE '\b(sigalloc_[a-z_]+)\(' "$inc/sigalloc.h" | tr -d '(' | sort -u)
    [ "$declared" = "$(echo "$API_NAMES" | sorted)" ] || {
        echo "header declarations differ from the exports:"
        diff <(echo "$API_NAMES" | sorted) <(echo "$declared")
        return 1
    }
    # Every allocation call states its signal safety.
    local n_safe
    n_safe=$(grep -c 'Async-signal-safe: yes' "$inc/sigalloc.h")
    [ "$n_safe" -ge "$(echo "$declared" | wc -l)" ] || { echo "only $n_safe functions state signal safety"; return 1; }
    # cc app.c $(pkg-config ...) -> runs; and the static library, no .so at all.
    PKG_CONFIG_PATH=$LIB/pkgconfig gcc "$WORK/h.c" $(PKG_CONFIG_PATH=$LIB/pkgconfig pkg-config --cflags --libs sigalloc) -Wl,-rpath,"$LIB" -o "$WORK/h-dyn" || return 1
    "$WORK/h-dyn" || return 1
    gcc -I"$inc" "$WORK/h.c" "$LIB/libsigalloc.a" -o "$WORK/h-static" || return 1
    ! readelf -d "$WORK/h-static" | grep sigalloc >/dev/null || { echo "static binary needs a sigalloc .so"; return 1; }
    "$WORK/h-static" || return 1
    detail "C11/C99/C++11 -Wall -Wextra -Werror -pedantic; $(echo "$declared" | wc -l) declared = exported; pkg-config and libsigalloc.a link and run"
}

# ---- C tests ------------------------------------------------------------------------
CFLAGS_T=(-O2 -g -Wall -Wextra -Wno-use-after-free -fno-builtin -I"$ROOT/capi/tests" -I"$STAGE/include" -pthread)
LINK_SIGALLOC=(-L"$LIB" -lsigalloc -Wl,-rpath,"$LIB")

conformance() {
    gcc "${CFLAGS_T[@]}" -DPREFIXED capi/tests/conformance.c "${LINK_SIGALLOC[@]}" -o "$WORK/conf-prefixed" || return 1
    gcc "${CFLAGS_T[@]}" capi/tests/conformance.c -o "$WORK/conf-preload" || return 1
    local rc=0 a b c
    timeout 120 "$WORK/conf-prefixed" >"$WORK/conf-prefixed.log" 2>&1 || rc=1
    LD_PRELOAD=$PRELOAD timeout 120 "$WORK/conf-preload" >"$WORK/conf-preload.log" 2>&1 || rc=1
    LD_PRELOAD=$PRELOAD_DEBUG timeout 300 "$WORK/conf-preload" >"$WORK/conf-debug.log" 2>&1 || rc=1
    for f in conf-prefixed conf-preload conf-debug; do
        grep FAIL "$WORK/$f.log" | sort | uniq -c | sort -rn | head -n 40
    done
    # name the failing groups, so the summary says what is missing
    summary() {
        local log=$1 last al fr other
        last=$(tail -n 1 "$log" | sed 's/^conformance //')
        al=$(grep -c '^FAIL.*align' "$log" || true)
        fr=$(grep -c '^FAIL.*foreign' "$log" || true)
        other=$(($(grep -c '^FAIL' "$log" || true) - al - fr))
        if [ "$((al + fr + other))" -eq 0 ]; then
            echo "$last"
        else
            echo "$last ($al alignment, $fr foreign-pointer, $other other)"
        fi
    }
    a=$(summary "$WORK/conf-prefixed.log")
    b=$(summary "$WORK/conf-preload.log")
    c=$(summary "$WORK/conf-debug.log" | sed 's/^(preload)/debug build/')
    detail "$a; $b; $c"
    return $rc
}

ao_dropin() {
    # The unchanged AO program: against sigalloc (shared and static), and against
    # libatomic_ops itself (the reference).
    gcc "${CFLAGS_T[@]}" capi/tests/ao_users.c "${LINK_SIGALLOC[@]}" -o "$WORK/ao" || return 1
    gcc "${CFLAGS_T[@]}" capi/tests/ao_users.c "$LIB/libsigalloc.a" -o "$WORK/ao-static" || return 1
    gcc "${CFLAGS_T[@]}" capi/tests/ao_users.c -latomic_ops_gpl -latomic_ops -o "$WORK/ao-libatomic" || return 1
    nm -D --undefined-only "$WORK/ao" | grep ' AO_malloc$' >/dev/null || return 1
    ldd "$WORK/ao" | grep libsigalloc.so >/dev/null || return 1
    local out
    out=$(timeout 120 "$WORK/ao") || return 1
    timeout 120 "$WORK/ao-static" >/dev/null || return 1
    timeout 120 "$WORK/ao-libatomic" >/dev/null || { echo "the AO test fails against libatomic_ops itself"; return 1; }
    detail "${out#ao_users: } (shared, static, and libatomic_ops as reference)"
}

storm() {
    gcc "${CFLAGS_T[@]}" capi/tests/signal_storm.c -o "$WORK/storm" || return 1
    gcc "${CFLAGS_T[@]}" -DPREFIXED capi/tests/signal_storm.c "${LINK_SIGALLOC[@]}" -o "$WORK/storm-prefixed" || return 1
    local a b g rc=0
    a=$(LD_PRELOAD=$PRELOAD timeout 60 "$WORK/storm" 4) || rc=1
    b=$(timeout 60 "$WORK/storm-prefixed" 2) || rc=1
    echo "$a"
    echo "$b"
    # For the README: the same program on glibc's malloc (not judged).
    local grc=0
    g=$(timeout 60 "$WORK/storm" 2 5 2>&1) || grc=$?
    case $grc in
        0) g="glibc: finished" ;;
        3) g="glibc: hung (deadlock, ended by the watchdog)" ;;
        *) g="glibc: exit $grc" ;;
    esac
    detail "preload: ${a#*: }; prefixed: ${b#*: }; $g"
    return $rc
}

forks() {
    gcc "${CFLAGS_T[@]}" capi/tests/fork.c -o "$WORK/fork" || return 1
    gcc "${CFLAGS_T[@]}" -DPREFIXED capi/tests/fork.c "${LINK_SIGALLOC[@]}" -o "$WORK/fork-prefixed" || return 1
    local a b
    a=$(LD_PRELOAD=$PRELOAD timeout 150 "$WORK/fork" 100) || { echo "$a"; return 1; }
    b=$(timeout 150 "$WORK/fork-prefixed" 60) || { echo "$b"; return 1; }
    echo "$a"
    echo "$b"
    detail "preload: ${a#*: }; prefixed: ${b#*: }"
}

# ---- real programs under LD_PRELOAD ---------------------------------------------------
PROGS=$ROOT/capi/tests/programs
# Each program is a function run in a fresh directory; it prints what must match.
prog_python() {
    PYTHONMALLOC=malloc PYTHONHASHSEED=0 $PY "$PROGS/workload.py"
}
prog_sqlite() {
    sqlite3 db.sqlite <"$PROGS/workload.sql"
}
prog_git() {
    export HOME=$PWD GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME=ci GIT_AUTHOR_EMAIL=ci@example.com \
        GIT_COMMITTER_NAME=ci GIT_COMMITTER_EMAIL=ci@example.com \
        GIT_AUTHOR_DATE='2026-01-01T00:00:00Z' GIT_COMMITTER_DATE='2026-01-01T00:00:00Z'
    git init -q -b main repo && cd repo || return 1
    local round i
    for round in 1 2 3 4; do
        for i in $(seq 1 150); do
            seq "$((i * round))" "$((i * round + 400))" >"f$((i % 97))-$i.txt"
        done
        git add -A && git commit -q -m "round $round" || return 1
    done
    git -c pack.threads=2 gc -q --aggressive || return 1
    git repack -adf -q --threads=2 || return 1
    git log --stat --format='%H %s' | sha256sum
    git fsck --full --no-progress | sha256sum
    git count-objects -v | grep -E '^(count|in-pack|packs)'
}
prog_gcc() {
    $PY "$PROGS/gen_c.py" 500 >gen.c || return 1
    gcc -O2 -c gen.c -o gen.o || return 1
    gcc gen.o -o gen || return 1
    sha256sum gen.o
    ./gen
    echo "exit $?"
}
prog_coreutils() {
    # sort --parallel (threads, big buffers), cat/cp/dd (aligned_alloc), xz -6 -T2
    # (about 94 MiB of encoder buffers per thread: huge blocks).
    seq 1 300000 | awk '{print ($1 * 7919) % 1000003, $1}' >data.txt || return 1
    sort --parallel=2 -S 64M -n data.txt | sha256sum
    cat data.txt data.txt >twice.txt && cp twice.txt copy.txt && dd if=copy.txt of=dd.txt bs=1M status=none || return 1
    sha256sum twice.txt copy.txt dd.txt | awk '{print $1}'
    head -c 4000000 /dev/zero | tr '\0' 'a' | cat - data.txt | head -c 6000000 >big.txt
    xz -6 -T2 --block-size=3MiB -k -c big.txt >big.xz && xz -d -T2 -c big.xz | sha256sum
}
prog_cxx() {
    # g++ itself runs under the preload too (cc1plus, as, ld).
    g++ -O2 -pthread "$PROGS/cxx.cc" -o cxx || return 1
    ./cxx
}
prog_perl() {
    PERL_HASH_SEED=0 PERL_PERTURB_KEYS=0 perl "$PROGS/workload.pl"
}

# run_prog NAME LIB: runs prog_NAME (LIB preloaded unless "none") in a fresh dir;
# stdout to $WORK/prog/NAME.LABEL.out, exit status appended.
run_prog() {
    local name=$1 lib=$2 label=$3
    local dir=$WORK/prog/$name.$label
    rm -rf "$dir" && mkdir -p "$dir" || return 1
    local rc=0
    if [ "$lib" = none ]; then
        (cd "$dir" && timeout 300 bash -c "$(declare -f "prog_$name"); PROGS='$PROGS' PY='$PY'; prog_$name") >"$dir.out" 2>"$dir.err" || rc=$?
    else
        (cd "$dir" && LD_PRELOAD=$lib SIGALLOC_VERBOSE=1 timeout 300 bash -c "$(declare -f "prog_$name"); PROGS='$PROGS' PY='$PY'; prog_$name") >"$dir.out" 2>"$dir.err" || rc=$?
    fi
    echo "exit status $rc" >>"$dir.out"
    rm -rf "$dir"
}

# program NAME: the program's output and status, alone and under each preload.
program() {
    local name=$1
    local l t0 times=""
    for l in glibc sigalloc jemalloc mimalloc; do
        t0=$(date +%s.%N)
        case $l in
            glibc) run_prog "$name" none glibc ;;
            sigalloc) run_prog "$name" "$PRELOAD" sigalloc ;;
            jemalloc) run_prog "$name" "$JEMALLOC" jemalloc ;;
            mimalloc) run_prog "$name" "$MIMALLOC" mimalloc ;;
        esac || return 1
        times="$times $l $(echo "$(date +%s.%N) - $t0" | bc -l | xargs printf '%.1f')s"
    done
    local base=$WORK/prog/$name.glibc.out bad=0
    grep -q '^exit status 0$' "$base" || { echo "$name fails without any preload:"; tail "$base" "${base%.out}.err"; return 1; }
    for l in sigalloc jemalloc mimalloc; do
        if ! cmp -s "$base" "$WORK/prog/$name.$l.out"; then
            echo "$name under $l differs from glibc:"
            diff "$base" "$WORK/prog/$name.$l.out" | head -n 20
            tail -n 5 "$WORK/prog/$name.$l.err"
            bad=1
        fi
    done
    # The preload really served it: every process announced itself.
    grep -q 'sigalloc: malloc redirected' "$WORK/prog/$name.sigalloc.err" || { echo "$name: sigalloc not loaded"; bad=1; }
    echo "$name wall times:$times" >>"$WORK/prog/times.txt"
    detail "output and status as without preload under sigalloc, jemalloc, mimalloc; wall:$times"
    return $bad
}

# ---- benchmark (--bench) --------------------------------------------------------------
bench() {
    gcc -O2 -pthread capi/tests/bench_larson.c -o "$WORK/larson" || return 1
    gcc -O2 -pthread capi/tests/bench_xmalloc.c -o "$WORK/xmalloc" || return 1
    local table=$WORK/bench.md
    {
        echo "| program | threads | glibc | sigalloc | jemalloc | mimalloc |"
        echo "|---|---|---|---|---|---|"
        local prog th lib v row
        for prog in larson xmalloc; do
            for th in 1 2; do
                row="| $prog | $th |"
                for lib in none "$PRELOAD" "$JEMALLOC" "$MIMALLOC"; do
                    if [ "$lib" = none ]; then
                        v=$(timeout 60 "$WORK/$prog" "$th" | awk '{print $NF}')
                    else
                        v=$(LD_PRELOAD=$lib timeout 60 "$WORK/$prog" "$th" | awk '{print $NF}')
                    fi
                    [ -n "$v" ] || return 1
                    row="$row $v |"
                done
                echo "$row"
            done
        done
    } | tee "$table" || return 1
    echo "(million operations per second, higher is better; $(nproc) cores)"
    detail "table in $table"
}

check deps deps
check build build
check lint lint
check artifacts artifacts
check header header
check conformance conformance
check ao-dropin ao_dropin
check signal-storm storm
check fork forks
for p in python sqlite git gcc cxx perl coreutils; do
    check "prog-$p" program "$p"
done
[ "$BENCH" -eq 1 ] && check bench bench

echo
echo "==== sigalloc C API summary ===="
printf '%s\n' "${SUMMARY[@]}"
if [ "$FAILED" -ne 0 ]; then
    echo "capi: FAILED"
    exit 1
fi
echo "capi: all checks passed"
