//! Parked memory comes back (I9): a fixed 2 MiB heap (no `mmap`) whose magazines hold
//! blocks must still fill as far as with caches off, because the heap drains every
//! magazine before it answers null; the phase change keeps its 90 %; and
//! `disable_percpu` empties the caches for good.

use std::sync::Barrier;
use std::thread;

use super::mark::{granules, small_size, Marks, Owners, Tally};
use crate::common::{serial, watchdog, Fresh, Rng, MINUTE};
use sigalloc::{SigAlloc, CHUNK_SIZE, DEFAULT_HEAP};

/// The class the main thread fills with (the parked blocks are of the seven others).
const FILL_SIZE: usize = 2048;
/// Threads whose magazines hold blocks while the main thread fills the heap.
const PARKERS: usize = 3;
/// Each parker allocates this many chunks' worth of each class 16..=1024 B.
const CHUNKS_PER_CLASS: usize = 12;

/// Allocates `size` bytes until the first null; returns the blocks (each written).
fn fill<const N: usize>(a: &SigAlloc<N>, size: usize) -> Vec<*mut u8> {
    let mut blocks = Vec::new();
    loop {
        let p = a.malloc(size);
        if p.is_null() {
            return blocks;
        }
        // SAFETY: a fresh block of `size` bytes.
        unsafe { p.write_bytes(0x5A, size) };
        blocks.push(p);
    }
}

fn free_all<const N: usize>(a: &SigAlloc<N>, blocks: Vec<*mut u8>) {
    for p in blocks {
        // SAFETY: each a live block of `a`, freed once.
        unsafe { a.free(p) };
    }
}

/// Allocates `CHUNKS_PER_CLASS` chunks' worth of blocks of every class 16..=1024 B,
/// then frees them chunk-interleaved (block `j` of every chunk, then block `j + 1`), so
/// the last frees, which stay in the magazine, come from as many chunks as possible
/// and each keeps its chunk from being emptied.
fn park<const N: usize>(a: &SigAlloc<N>) {
    for shift in 4..=10 {
        let size = 1usize << shift;
        let per_chunk = CHUNK_SIZE / size;
        let mut blocks = Vec::new();
        for _ in 0..CHUNKS_PER_CLASS * per_chunk {
            let p = a.malloc(size);
            assert!(!p.is_null(), "a parker's allocation of {size} B failed");
            blocks.push(p);
        }
        for j in 0..per_chunk {
            for &p in blocks.iter().skip(j).step_by(per_chunk) {
                // SAFETY: each a live block of `a`, freed once.
                unsafe { a.free(p) };
            }
        }
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn drain_under_pressure_fills_the_heap_past_parked_blocks() {
    let _serial = serial();
    let _watchdog = watchdog("the drain test", MINUTE, String::new);
    // The baseline: a fresh heap with its caches switched off before its first call.
    let off = Fresh::<DEFAULT_HEAP>::new();
    off.get().disable_percpu();
    let blocks = fill(off.get(), FILL_SIZE);
    let baseline = blocks.len() * FILL_SIZE;
    free_all(off.get(), blocks);
    assert!(
        !off.get().percpu_active(),
        "disable_percpu before the first call"
    );
    assert_eq!(off.get().stats().cached_bytes, 0);

    let on = Fresh::<DEFAULT_HEAP>::new();
    let a = on.get();
    let active = super::mode(a, "drain under pressure");
    let parked = Barrier::new(PARKERS + 1);
    let release = Barrier::new(PARKERS + 1);
    let (got, cached_before, chunks_before, cached_at_null) = thread::scope(|s| {
        for _ in 0..PARKERS {
            s.spawn(|| {
                park(a);
                parked.wait();
                // Stay alive, holding nothing but what the magazines park.
                release.wait();
            });
        }
        parked.wait();
        super::assert_cached_accounting(a, true);
        let st = a.stats();
        let blocks = fill(a, FILL_SIZE);
        let got = blocks.len() * FILL_SIZE;
        let at_null = a.stats().cached_bytes;
        free_all(a, blocks);
        release.wait();
        (got, st.cached_bytes, st.chunks_used, at_null)
    });
    let drained = a.drain_percpu();
    let s = a.stats();
    println!(
        "percpu drain: filled {got} B of {FILL_SIZE} B blocks against {baseline} B with \
         caches off ({:.1} %); before the fill {PARKERS} parked threads held \
         {cached_before} cached bytes in {chunks_before} used chunks; {cached_at_null} \
         cached bytes at the null; {drained} drained after ({})",
        got as f64 * 100.0 / baseline as f64,
        if active { "caches active" } else { "fallback" },
    );
    assert!(
        got * 100 >= baseline * 95,
        "with blocks parked in magazines the heap gave only {got} of the {baseline} bytes \
         it gives with caches off: it did not drain before answering null"
    );
    if active {
        assert!(
            cached_before > 0,
            "the parkers parked nothing: the test proves nothing"
        );
        assert_eq!(
            cached_at_null, 0,
            "the heap answered null with blocks still parked in magazines"
        );
    } else {
        assert_eq!(cached_before, 0, "caches off, yet blocks were parked");
    }
    assert_eq!(s.cached_bytes, 0, "{s}");
    assert_eq!(s.bytes_in_use, 0, "{s}");
    a.validate().expect("heap invalid after the drain test");
}

/// The phase change of `tests/contract.rs` (and the benchmark's `phase` fill) with the
/// caches on: 16 B blocks until null, all freed (the last of them parked in a
/// magazine), then 2048 B blocks until null: at least 90 % of the first fill's bytes.
#[test]
#[cfg_attr(miri, ignore)]
fn phase_change_with_caches_on_reuses_memory_across_classes() {
    let _serial = serial();
    static PH: SigAlloc = SigAlloc::new();
    let a = &PH;
    let active = super::mode(a, "phase change");
    let small = fill(a, 16);
    let first = small.len() * 16;
    free_all(a, small);
    super::assert_cached_accounting(a, true);
    let parked = a.stats().cached_bytes;
    let big = fill(a, FILL_SIZE);
    let second = big.len() * FILL_SIZE;
    free_all(a, big);
    let drained = a.drain_percpu();
    let s = a.stats();
    println!(
        "percpu phase: {first} B as 16 B blocks, then {second} B as {FILL_SIZE} B blocks \
         ({:.1} %); {parked} bytes parked between the phases, {drained} blocks drained after \
         ({})",
        second as f64 * 100.0 / first as f64,
        if active { "caches active" } else { "fallback" },
    );
    assert!(
        first * 10 > DEFAULT_HEAP * 9,
        "the 16 B fill reached only {first} bytes"
    );
    assert!(
        second * 10 >= first * 9,
        "only {second} of {first} bytes came back as {FILL_SIZE} B blocks"
    );
    if active {
        assert!(
            parked > 0,
            "caches active, yet the freed 16 B blocks parked nothing"
        );
    }
    assert_eq!(s.cached_bytes, 0, "{s}");
    assert_eq!(s.chunks_used, 0, "{s}");
    a.validate().expect("heap invalid after the phase change");
}

static OWN_D: Owners<{ granules::<DEFAULT_HEAP>() }> = Owners::new();
static T_D: Tally = Tally::new();

/// `disable_percpu`: the caches empty at once and stay off; every call still works.
#[test]
#[cfg_attr(miri, ignore)]
fn disable_percpu_empties_the_caches_for_good() {
    let _serial = serial();
    static D: SigAlloc = SigAlloc::new();
    let active = super::mode(&D, "disable_percpu");
    T_D.reset();
    let marks = Marks {
        heap: &D,
        owners: &OWN_D,
        tally: &T_D,
    };
    let mut rng = Rng(0xD15A);
    let churn = |rng: &mut Rng| {
        let mut live = Vec::new();
        for _ in 0..2_000 {
            live.extend(marks.take(small_size(rng)));
        }
        for m in live {
            marks.give(m);
        }
    };
    churn(&mut rng);
    let before = D.stats().cached_bytes;
    D.disable_percpu();
    let after = D.stats();
    let still = D.percpu_active();
    churn(&mut rng);
    let later = D.stats();
    println!(
        "percpu disable: {before} cached bytes before, {} after; {} after more churn ({})",
        after.cached_bytes,
        later.cached_bytes,
        if active {
            "caches were active"
        } else {
            "fallback"
        },
    );
    if active {
        assert!(before > 0, "caches active, yet the churn parked nothing");
    }
    assert!(!still, "percpu_active() after disable_percpu");
    assert!(
        !D.percpu_active(),
        "percpu_active() came back after disable_percpu"
    );
    assert_eq!(
        after.cached_bytes, 0,
        "disable_percpu left parked blocks: {after}"
    );
    assert_eq!(
        later.cached_bytes, 0,
        "blocks parked after disable_percpu: {later}"
    );
    T_D.assert_sound(false, "blocks around disable_percpu");
    assert!(OWN_D.empty());
    assert_eq!(D.drain_percpu(), 0, "nothing to drain after disable_percpu");
    assert_eq!(later.bytes_in_use, 0, "{later}");
    D.validate().expect("heap invalid after disable_percpu");
}

/// Blocks parked per class after 300 blocks of each class are allocated and freed.
fn parked_per_class<const N: usize>(a: &SigAlloc<N>) -> Vec<usize> {
    (4..=11)
        .map(|shift| {
            let before = a.stats().cached_bytes;
            let blocks: Vec<*mut u8> = (0..300).map(|_| a.malloc(1 << shift)).collect();
            assert!(blocks.iter().all(|p| !p.is_null()));
            free_all(a, blocks);
            (a.stats().cached_bytes - before) >> shift
        })
        .collect()
}

/// `SigAlloc::new()` is all zero bytes (so a `static` sits in `.bss`, and zeroed
/// memory, as `common::Fresh` makes, is a new allocator): a heap made that way must
/// cache exactly as a `static` does.
#[test]
#[cfg_attr(miri, ignore)]
fn a_zeroed_heap_caches_like_a_static_one() {
    let _serial = serial();
    static S: SigAlloc = SigAlloc::new();
    let fresh = Fresh::<DEFAULT_HEAP>::new();
    let z = fresh.get();
    let active = super::mode(&S, "zeroed heap");
    let on_static = parked_per_class(&S);
    let on_zeroed = parked_per_class(z);
    println!(
        "percpu zeroed: blocks parked per class on a static heap {on_static:?}, on a zeroed \
         one {on_zeroed:?} (active: static {}, zeroed {})",
        active,
        z.percpu_active()
    );
    // The first calls on each heap differ by a block or two (set-up happens on the
    // first miss), so compare up to that.
    let close = on_zeroed
        .iter()
        .zip(&on_static)
        .all(|(z, s)| z.abs_diff(*s) <= 2 && (*z > 0) == (*s > 0));
    assert!(
        close,
        "a heap built from zeroed memory caches differently from a static one \
         ({on_zeroed:?} against {on_static:?}): `SigAlloc::new()` is not all zero"
    );
    assert_eq!(z.percpu_active(), active);
    S.drain_percpu();
    z.drain_percpu();
    assert_eq!(S.stats().bytes_in_use, 0);
    assert_eq!(z.stats().bytes_in_use, 0);
}
