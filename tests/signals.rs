//! The signal storm: signal handlers allocate from the same heap as the threads they
//! interrupt, at any instruction, including in the middle of the allocator itself.
//!
//! Two worker threads run an alloc / fill / verify / realloc / free loop on one
//! `SigAlloc` with a 4 MiB inline heap. Each is interrupted by its own 50 µs timer
//! (`timer_create` with `SIGEV_THREAD_ID`, Linux) and by a third thread that
//! `pthread_kill`s it. The handler allocates 1-4 blocks (`malloc`, `calloc`,
//! `GlobalAlloc::alloc` at various alignments), fills, verifies, resizes and frees
//! them. One test masks both signals inside the handler; in the other the kill signal
//! is `SA_NODEFER` and neither signal masks the other, so handlers interrupt handlers,
//! several deep. There, a handler also raises a third signal (`SA_NODEFER` too) at
//! times while it holds blocks, so nesting happens every run, not only when the timing
//! happens to allow it. Nesting is bounded by construction (`MAX_NEST`, see
//! `common::storm`, which runs the storm for this file and `tests/mmap_signals.rs`);
//! this file gives it its heap, its sizes and its shadow.
//!
//! A shadow ownership map (one atomic owner tag per 16-byte granule of the heap,
//! claimed with a CAS from zero when a block is handed out and released before it is
//! freed) catches any two live blocks that overlap (I1) at the moment it happens; the
//! fill patterns catch any write into a block its owner did not make. A watchdog turns
//! a deadlock or livelock (I4) into a clear failure.
//!
//! The handler calls only the allocator, atomics, `memset`/`memcmp`-like slice
//! operations (this file's part: the shadow map), `pthread_self` and `raise`: nothing
//! that locks, allocates elsewhere, prints or panics (no index it uses can be out of
//! bounds).
#![cfg(unix)]
// A test binary, not the crate: the atomics here are the test's own bookkeeping, which
// `clippy.toml` (aimed at `src/`, where loom must see every atomic) does not concern.
#![allow(clippy::disallowed_types)]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::storm::{self, bump, get, Storm, C};
use common::{serial, watchdog, Rng, MINUTE};
use sigalloc::SigAlloc;

const HEAP: usize = 4 << 20;
static A: SigAlloc<HEAP> = SigAlloc::new();

// ---------------------------------------------------------------------------------
// Shadow ownership map: atomics only, so the handler may use it.

const GRANULE: usize = 16;
/// Granules of `A` (its heap lies inside it).
const GRANULES: usize = std::mem::size_of::<SigAlloc<HEAP>>().div_ceil(GRANULE);
static SHADOW: [AtomicU32; GRANULES] = [const { AtomicU32::new(0) }; GRANULES];

/// The block's offset in `A`, if it lies wholly inside `A`'s heap.
fn heap_offset(p: *const u8, len: usize) -> Option<usize> {
    if !A.owns(p) {
        return None;
    }
    let off = p.addr().checked_sub(std::ptr::addr_of!(A).addr())?;
    (off.checked_add(len)? <= GRANULES * GRANULE).then_some(off)
}

/// The storm on `A`'s inline heap.
struct Inline;

impl Storm<HEAP> for Inline {
    /// A signal costs the kernel tens of microseconds on a 2-core VM (measured): at
    /// 20 µs the workers starved and a run took 15-25 s; at 50 µs they still take tens
    /// of thousands of signals, often inside the allocator.
    const TIMER_INTERVAL_NS: libc::c_long = 50_000;
    const KILL_PAUSE: Duration = Duration::from_micros(20);
    const OPS_PER_WORKER: usize = if cfg!(debug_assertions) {
        30_000
    } else {
        150_000
    };
    const WORKER_SLOTS: usize = 32;
    const WORKER_SEED: u64 = 7;

    fn heap() -> &'static SigAlloc<HEAP> {
        &A
    }

    fn tracks(p: *const u8, len: usize) -> bool {
        heap_offset(p, len).is_some()
    }

    fn each_granule(p: *const u8, len: usize, mut f: impl FnMut(&AtomicU32)) {
        let Some(off) = heap_offset(p, len) else {
            bump(&C.bad_blocks);
            return;
        };
        for g in SHADOW[off / GRANULE..(off + len).div_ceil(GRANULE)].iter() {
            f(g);
        }
    }

    fn worker_size(rng: &mut Rng) -> usize {
        16 + rng.below(4096 + 1024)
    }

    /// 16..1024 bytes.
    fn handler_size(rng: &mut Rng) -> usize {
        16 + rng.below(1024 - 16 + 1)
    }

    fn handler_resize(rng: &mut Rng) -> usize {
        16 + rng.below(1024 - 16 + 1)
    }
}

fn run(nested: bool) {
    // Both tests install handlers for the same signals and measure `A` as a whole.
    let _turn = serial();
    let _watchdog = watchdog(
        if nested {
            "`storm with nested handlers` (deadlock or livelock in a handler?)"
        } else {
            "`storm` (deadlock or livelock in a handler?)"
        },
        MINUTE,
        storm::progress,
    );
    let sent = storm::run::<HEAP, Inline>(nested);

    eprintln!(
        "{} handler runs ({} interrupted an allocator call, {} nested, {} deep at most), {} kills sent, \
         {} blocks, {} out of memory",
        get(&C.handler_runs),
        get(&C.interrupted_alloc),
        get(&C.nested),
        get(&C.max_depth),
        sent,
        get(&C.allocated),
        get(&C.out_of_memory),
    );
    storm::assert_sound(nested, "the live set is a fraction of the heap");
    assert!(
        SHADOW.iter().all(|g| g.load(Ordering::Relaxed) == 0),
        "shadow map not empty"
    );
    let s = A.stats();
    assert_eq!(
        s.bytes_in_use, 0,
        "all freed, yet the heap reports bytes in use: {s:?}"
    );
}

#[test]
#[cfg_attr(miri, ignore)]
fn storm_with_masked_handlers() {
    run(false);
}

#[test]
#[cfg_attr(miri, ignore)]
fn storm_with_nested_handlers() {
    run(true);
}
