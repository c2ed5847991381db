//! The signal storm of `tests/signals.rs`, while the heap grows through `mmap`: signal
//! handlers allocate from the same heap as the threads they interrupt, at any
//! instruction, including while those threads map new regions or huge blocks.
//!
//! The allocator has a 64 KiB inline heap and `enable_mmap()` (called before the storm,
//! when nothing is mapped yet). Two workers each keep a working set of up to 8192
//! blocks (16 B..2 KiB, one in eight a span of up to 32 KiB, one in 1024 a huge block
//! of 1..3 MiB), some 30 MiB live per worker at its peak, so the heap grows through
//! several mapped regions *during* the storm (nothing is mapped before it). Each worker
//! is interrupted by its own 50 µs timer (250 µs in debug builds; `timer_create` with
//! `SIGEV_THREAD_ID`) and by a killer thread's
//! `pthread_kill`; the kill signal and a third signal that handlers `raise` are
//! `SA_NODEFER`, so handlers nest, bounded by `MAX_NEST` exactly as in `signals.rs`
//! (the timer is never `SA_NODEFER`; the killer adds a handler only below `MAX_NEST`):
//! the storm is `common::storm`, shared with `signals.rs`; this file gives it its heap,
//! its sizes and its shadow.
//! Handlers allocate 1-4 blocks (`malloc`, `calloc`, `GlobalAlloc::alloc` at various
//! alignments; one in sixteen a span, one in 256 a huge block, which maps and unmaps
//! inside the handler), fill, verify, resize and free them. Any handler allocation may
//! find every region dry and take the growth path itself.
//!
//! # Overlap check for any address
//! `signals.rs` indexes its shadow map by offset in the inline heap; here blocks live in
//! mappings at addresses the kernel chooses. So the shadow is keyed by address: memory
//! is cut into 1 MiB superpages; a fixed open-addressed table maps a superpage number
//! to a shadow page (one `AtomicU32` owner tag per 16-byte granule, 256 KiB), taken
//! from a pool mapped once, before the storm, with `MAP_NORESERVE`. A table entry is
//! claimed by one CAS of its key from zero and gets its page by one CAS from zero
//! (a loser's pool page is simply wasted), so the table is lock-free and a handler
//! that interrupts a thread inside it never waits. Entries are never removed; a
//! mapping placed where an unmapped one was simply reuses its entry and its (by then
//! released) granules.
//!
//! Every live block has a unique nonzero tag. When a block is handed out, each of its
//! granules (its whole `usable_size`) is claimed with a CAS from 0 to the tag; before
//! it is freed (or resized) each is released with a CAS from the tag back to 0. Since
//! the smallest block is 16 bytes and blocks are 16-aligned, no granule belongs to two
//! blocks unless they overlap, so a failed CAS means two live blocks overlap (I1),
//! detected the moment the second is handed out, wherever it lies: inline heap, mapped
//! region or huge mapping. The allocator's hand-over (a Release by the freer, an
//! Acquire by the next owner) orders a release before the next claim, so a sound
//! allocator never makes a CAS fail. The fill pattern (tag, then a tag-derived byte)
//! catches writes into a block its owner did not make; a watchdog turns a deadlock or
//! livelock (I4) into a failure.
//!
//! Asserts: no overlap, no shadow exhaustion, no corrupted byte, no bad (misaligned,
//! short, foreign) block, no null (growth is on and unlimited), handlers ran, nested
//! within the bound and interrupted allocator calls; nothing was mapped before the storm and at least two regions at its end;
//! every block freed, `bytes_in_use == 0`, no huge mapping left, the shadow empty, and
//! `validate()` passes.
//!
//! The handler calls only the allocator, atomics, `memset`/`memcmp`-like slice
//! operations, `pthread_self`, `raise` and, on the first overlap only, one raw `write`
//! to stderr: nothing that locks, allocates elsewhere, formats or panics.
#![cfg(target_os = "linux")]
// A test binary, not the crate: the atomics here are the test's own bookkeeping, which
// `clippy.toml` (aimed at `src/`, where loom must see every atomic) does not concern.
#![allow(clippy::disallowed_types)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::storm::{self, bump, get, Block, Storm, C, WORKER};
use common::{mix, watchdog, Rng, MINUTE};
use sigalloc::{SigAlloc, HUGE_THRESHOLD, MAX_SMALL};

const MIB: usize = 1 << 20;
/// A small inline heap: the storm's memory comes from mapped regions.
const HEAP: usize = 64 << 10;
static A: SigAlloc<HEAP> = SigAlloc::new();

// ---------------------------------------------------------------------------------
// The address-keyed shadow (see the module docs): atomics only, so handlers may use it.

const GRANULE_SHIFT: u32 = 4;
const SUPER_SHIFT: u32 = 20;
/// Granules per superpage: the length of one shadow page.
const PER_SUPER: usize = 1 << (SUPER_SHIFT - GRANULE_SHIFT);
/// Table entries (superpages ever touched stay far below: regions are never unmapped,
/// and huge mappings mostly reuse the addresses of earlier ones).
const TABLE: usize = 4096;
/// Shadow pages in the pool (256 MiB of address space, touched only where used).
const POOL_PAGES: usize = 1024;
const POOL_BYTES: usize = POOL_PAGES * PER_SUPER * std::mem::size_of::<AtomicU32>();

struct Super {
    /// Superpage number + 1; 0: free.
    key: AtomicUsize,
    /// Pool page index + 1; 0: none yet.
    page: AtomicUsize,
}

static SHADOW_TABLE: [Super; TABLE] = [const {
    Super {
        key: AtomicUsize::new(0),
        page: AtomicUsize::new(0),
    }
}; TABLE];
/// The pool's first page (set once, before the storm).
static POOL: AtomicPtr<AtomicU32> = AtomicPtr::new(std::ptr::null_mut());
/// Pool pages handed out so far.
static POOL_NEXT: AtomicUsize = AtomicUsize::new(0);

/// Maps the shadow pool (once).
fn map_pool() {
    if !POOL.load(Ordering::Acquire).is_null() {
        return;
    }
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing
    // touches no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            POOL_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "could not map the shadow pool");
    // ORDERING: Release pairs with the Acquire loads in `shadow_page`.
    POOL.store(p.cast(), Ordering::Release);
}

/// The shadow page of superpage `sp`, created if need be; `None` if the table or the
/// pool is full (counted; the test then fails).
fn shadow_page(sp: usize) -> Option<&'static [AtomicU32]> {
    let key = sp + 1;
    let mut h = (mix(sp as u64) as usize) % TABLE;
    let mut entry = None;
    for _ in 0..TABLE {
        let e = SHADOW_TABLE.get(h)?;
        // ORDERING: Relaxed: a key is only ever compared; the page is published by its
        // own CAS below.
        let k = e.key.load(Ordering::Relaxed);
        let mine = k == key
            || (k == 0
                && match e
                    .key
                    .compare_exchange(0, key, Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => true,
                    Err(now) => now == key,
                });
        if mine {
            entry = Some(e);
            break;
        }
        h = (h + 1) % TABLE;
    }
    let e = entry?;
    // ORDERING: Acquire/AcqRel: pool pages are zero from the mapping, so only the index
    // is published; the pairing keeps the reasoning simple.
    let mut page = e.page.load(Ordering::Acquire);
    if page == 0 {
        let idx = POOL_NEXT.fetch_add(1, Ordering::Relaxed);
        if idx >= POOL_PAGES {
            return None;
        }
        page = match e
            .page
            .compare_exchange(0, idx + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => idx + 1,
            Err(now) => now, // another thread's page won; ours stays unused (zero)
        };
    }
    let base = POOL.load(Ordering::Acquire);
    if base.is_null() {
        return None;
    }
    // SAFETY: `page - 1 < POOL_PAGES`, so the slice lies inside the pool mapping, which
    // is never unmapped; zeroed memory is a valid `AtomicU32`, shared only atomically.
    Some(unsafe { std::slice::from_raw_parts(base.add((page - 1) * PER_SUPER), PER_SUPER) })
}

/// Calls `f` on the shadow granule of every 16-byte granule of `len` bytes at `p`.
/// Returns `false` if a shadow page was unavailable.
fn shadow_each(p: *const u8, len: usize, mut f: impl FnMut(&AtomicU32)) -> bool {
    let per_shift = SUPER_SHIFT - GRANULE_SHIFT;
    let mut g = p.addr() >> GRANULE_SHIFT;
    let end = (p.addr() + len.max(1)).div_ceil(1 << GRANULE_SHIFT);
    while g < end {
        let sp = g >> per_shift;
        let Some(page) = shadow_page(sp) else {
            return false;
        };
        let lo = g - (sp << per_shift);
        let hi = (end - (sp << per_shift)).min(PER_SUPER);
        for s in page.get(lo..hi).unwrap_or(&[]) {
            f(s);
        }
        g = (sp + 1) << per_shift;
    }
    true
}

/// Whether every granule of every shadow page handed out is free again.
fn shadow_empty() -> bool {
    let used = POOL_NEXT.load(Ordering::Relaxed).min(POOL_PAGES);
    let base = POOL.load(Ordering::Acquire);
    (0..used).all(|i| {
        // SAFETY: as in `shadow_page`: page `i` lies inside the pool mapping.
        let page = unsafe { std::slice::from_raw_parts(base.add(i * PER_SUPER), PER_SUPER) };
        page.iter().all(|g| g.load(Ordering::Relaxed) == 0)
    })
}

// ---------------------------------------------------------------------------------
// Counters of this storm's own (the shared ones are `storm::C`): atomics only.

struct Counters {
    /// Shadow table or pool exhausted (a test limit, not an allocator bug).
    shadow_full: AtomicUsize,
    /// Blocks allocated by handlers; of those, outside the inline heap, and huge.
    handler_allocs: AtomicUsize,
    handler_mapped: AtomicUsize,
    handler_huge: AtomicUsize,
    /// Huge blocks allocated by workers.
    worker_huge: AtomicUsize,
}

static M: Counters = Counters {
    shadow_full: AtomicUsize::new(0),
    handler_allocs: AtomicUsize::new(0),
    handler_mapped: AtomicUsize::new(0),
    handler_huge: AtomicUsize::new(0),
    worker_huge: AtomicUsize::new(0),
};

/// Whether `p` lies inside `A` itself (its inline heap).
fn in_inline_heap(p: *const u8) -> bool {
    p.addr().wrapping_sub(std::ptr::addr_of!(A).addr()) < std::mem::size_of::<SigAlloc<HEAP>>()
}

/// The storm while `A` grows through `mmap`.
struct Mapped;

impl Storm<HEAP> for Mapped {
    /// A handler costs several times more in a debug build (its shadow claims are a
    /// loop of CASes), so there the timer and the killer's pause are longer: otherwise
    /// the signals alone would fill the workers' time and they would make no progress.
    const TIMER_INTERVAL_NS: libc::c_long = if cfg!(debug_assertions) {
        250_000
    } else {
        50_000
    };
    const KILL_PAUSE: Duration =
        Duration::from_micros(if cfg!(debug_assertions) { 250 } else { 20 });
    const OPS_PER_WORKER: usize = if cfg!(debug_assertions) {
        25_000
    } else {
        60_000
    };
    const WORKER_SLOTS: usize = 8192;
    const WORKER_SEED: u64 = 0x3A;

    fn heap() -> &'static SigAlloc<HEAP> {
        &A
    }

    fn tracks(p: *const u8, _len: usize) -> bool {
        A.owns(p)
    }

    fn each_granule(p: *const u8, len: usize, f: impl FnMut(&AtomicU32)) {
        if !shadow_each(p, len, f) {
            bump(&M.shadow_full);
        }
    }

    /// Counts an overlap; the first one is also reported on stderr at once (one
    /// `write`, async-signal-safe, errno kept), so that a crash it leads to still shows
    /// its cause.
    fn overlap() {
        static SAID: AtomicBool = AtomicBool::new(false);
        bump(&C.overlaps);
        if !SAID.swap(true, Ordering::Relaxed) {
            let msg = b"mmap_signals: two live blocks overlap (a shadow CAS failed)\n";
            // SAFETY: this thread's errno, valid for its life.
            let saved = unsafe { libc::__errno_location().read() };
            // SAFETY: `msg` is valid for `msg.len()` bytes; fd 2 is stderr.
            unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
            // SAFETY: as above.
            unsafe { libc::__errno_location().write(saved) };
        }
    }

    fn allocated(in_handler: bool, b: &Block) {
        if in_handler {
            bump(&M.handler_allocs);
            if !in_inline_heap(b.ptr) {
                bump(&M.handler_mapped);
            }
            if b.size >= HUGE_THRESHOLD {
                bump(&M.handler_huge);
            }
        } else if b.size >= HUGE_THRESHOLD {
            bump(&M.worker_huge);
        }
    }

    /// Mostly small, one in eight a span, one in 1024 huge.
    fn worker_size(rng: &mut Rng) -> usize {
        match rng.below(1024) {
            0 => rng.range(HUGE_THRESHOLD, 3 * MIB),
            1..=128 => rng.range(MAX_SMALL + 1, 32 << 10),
            _ => rng.range(16, MAX_SMALL),
        }
    }

    /// 16 B..1 KiB; one in sixteen a span up to 64 KiB, one in 256 a huge block.
    fn handler_size(rng: &mut Rng) -> usize {
        match rng.below(256) {
            0 => rng.range(HUGE_THRESHOLD, HUGE_THRESHOLD + (64 << 10)),
            1..=16 => rng.range(MAX_SMALL + 1, 64 << 10),
            _ => rng.range(16, 1024),
        }
    }

    fn handler_resize(rng: &mut Rng) -> usize {
        rng.range(16, 4096)
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn storm_while_the_heap_grows_through_mmap() {
    // The storm runs a fixed number of worker operations under a signal rate that does
    // not depend on them, so its length follows the machine (45 to 75 s on the 2-core
    // CI machine): the watchdog waits three minutes before calling it a hang.
    let _watchdog = watchdog(
        "the mmap storm (deadlock or livelock?)",
        3 * MINUTE,
        storm::progress,
    );
    let start = Instant::now();
    map_pool();
    assert_eq!(
        A.stats().mapped_regions,
        0,
        "nothing is mapped before the storm"
    );
    A.enable_mmap();
    let sent = storm::run::<HEAP, Mapped>(true);

    let s = A.stats();
    let peak: usize = WORKER
        .iter()
        .map(|w| w.peak_live.load(Ordering::Relaxed))
        .sum();
    println!(
        "mmap storm: {} signals, {} handler allocations, {} regions mapped ({:.0} MiB); \
         {} kills sent, {} handler runs interrupted an allocator call, {} nested ({} deep \
         at most), {} handler blocks in mapped memory, {} huge in handlers and {} in \
         workers; {} blocks in all; working sets peaked at {:.1} MiB; {} shadow pages; \
         {:.1} s",
        get(&C.handler_runs),
        get(&M.handler_allocs),
        s.mapped_regions,
        s.mapped_bytes as f64 / MIB as f64,
        sent,
        get(&C.interrupted_alloc),
        get(&C.nested),
        get(&C.max_depth),
        get(&M.handler_mapped),
        get(&M.handler_huge),
        get(&M.worker_huge),
        get(&C.allocated),
        peak as f64 / MIB as f64,
        POOL_NEXT.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
    );
    assert_eq!(
        get(&M.shadow_full),
        0,
        "the shadow table or pool ran out (test limit)"
    );
    storm::assert_sound(true, "null with growth on and no limit");
    assert!(
        get(&M.handler_mapped) > 0,
        "no handler block came from mapped memory"
    );
    assert!(
        peak >= 8 * MIB,
        "the working sets stayed small: {peak} bytes"
    );
    assert!(
        s.mapped_regions >= 2,
        "the heap did not grow through several regions during the storm: {s:?}"
    );
    assert!(
        shadow_empty(),
        "shadow not empty after every block was freed"
    );
    assert_eq!(s.bytes_in_use, 0, "all freed, yet bytes in use: {s:?}");
    assert_eq!(s.huge_mappings, 0, "huge mappings left: {s:?}");
    A.validate().expect("heap invalid after the storm");
}
