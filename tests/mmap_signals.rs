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
//! (the timer is never `SA_NODEFER`; the killer adds a handler only below `MAX_NEST`).
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
//! Asserts: no overlap, no corrupted byte, no bad (misaligned, short, foreign) block,
//! no null (growth is on and unlimited), handlers ran, nested and interrupted allocator
//! calls; nothing was mapped before the storm and at least two regions at its end;
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

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use sigalloc::{SigAlloc, HUGE_THRESHOLD, MAX_SMALL};

const MIB: usize = 1 << 20;
/// A small inline heap: the storm's memory comes from mapped regions.
const HEAP: usize = 64 << 10;
static A: SigAlloc<HEAP> = SigAlloc::new();

const WORKERS: usize = 2;
/// The timer signal (per-thread timers) and the cross-thread signal.
const SIG_TIMER: libc::c_int = libc::SIGALRM;
const SIG_KILL: libc::c_int = libc::SIGUSR1;
/// Raised by a handler on its own thread.
const SIG_RAISE: libc::c_int = libc::SIGUSR2;
/// Each worker's timer period (see `signals.rs` for why not shorter), and the killer's
/// pause between rounds of `pthread_kill`. A handler costs several times more in a debug
/// build (its shadow claims are a loop of CASes), so there both are longer: otherwise
/// the signals alone would fill the workers' time and they would make no progress.
const TIMER_INTERVAL_NS: libc::c_long = if cfg!(debug_assertions) {
    250_000
} else {
    50_000
};
const KILL_PAUSE: Duration = Duration::from_micros(if cfg!(debug_assertions) { 250 } else { 20 });
/// The killer adds no handler to a thread that already runs this many.
const MAX_NEST: usize = 4;
/// Slots of a worker's working set.
const WORKER_SLOTS: usize = 8192;

fn ops_per_worker() -> usize {
    if cfg!(debug_assertions) {
        25_000
    } else {
        60_000
    }
}

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

/// Counts an overlap; the first one is also reported on stderr at once (one `write`,
/// async-signal-safe, errno kept), so that a crash it leads to still shows its cause.
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

/// Claims the block's granules for its tag. A granule already owned means two live
/// blocks overlap.
fn shadow_claim(b: &Block) {
    let ok = shadow_each(b.ptr, b.usable, |g| {
        // ORDERING: Relaxed: the allocator's hand-over orders a block's release before
        // its reuse; seeing a stale tag is exactly the allocator bug we look for.
        if g.compare_exchange(0, b.tag, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            overlap();
        }
    });
    if !ok {
        bump(&C.shadow_full);
    }
}

/// Releases the block's granules: done before the block goes back to the allocator.
fn shadow_release(b: &Block) {
    let ok = shadow_each(b.ptr, b.usable, |g| {
        // ORDERING: Relaxed, as in `shadow_claim`.
        if g.compare_exchange(b.tag, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            overlap();
        }
    });
    if !ok {
        bump(&C.shadow_full);
    }
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
// Counters and per-worker state: atomics only.

struct Counters {
    /// Granules claimed while another live block held them, or released by a block
    /// that did not hold them: overlaps (I1 broken).
    overlaps: AtomicUsize,
    /// Shadow table or pool exhausted (a test limit, not an allocator bug).
    shadow_full: AtomicUsize,
    /// Bytes that did not hold their block's pattern when checked.
    corrupt_bytes: AtomicUsize,
    /// Blocks misaligned, shorter than asked, not owned by `A`, or not zeroed by calloc.
    bad_blocks: AtomicUsize,
    /// Allocations that returned null (growth is on and unlimited: none may).
    out_of_memory: AtomicUsize,
    /// Handlers that did their allocation work.
    handler_runs: AtomicUsize,
    /// Handlers that found their thread inside an allocator call.
    interrupted_alloc: AtomicUsize,
    /// Handlers that ran inside another handler on the same thread.
    nested: AtomicUsize,
    max_depth: AtomicUsize,
    /// Blocks allocated by handlers; of those, outside the inline heap, and huge.
    handler_allocs: AtomicUsize,
    handler_mapped: AtomicUsize,
    handler_huge: AtomicUsize,
    /// Blocks allocated (and verified and freed) by anyone; huge ones by workers.
    allocated: AtomicUsize,
    freed: AtomicUsize,
    worker_huge: AtomicUsize,
    /// Owner tags: unique per allocation, never 0.
    next_tag: AtomicUsize,
}

static C: Counters = Counters {
    overlaps: AtomicUsize::new(0),
    shadow_full: AtomicUsize::new(0),
    corrupt_bytes: AtomicUsize::new(0),
    bad_blocks: AtomicUsize::new(0),
    out_of_memory: AtomicUsize::new(0),
    handler_runs: AtomicUsize::new(0),
    interrupted_alloc: AtomicUsize::new(0),
    nested: AtomicUsize::new(0),
    max_depth: AtomicUsize::new(0),
    handler_allocs: AtomicUsize::new(0),
    handler_mapped: AtomicUsize::new(0),
    handler_huge: AtomicUsize::new(0),
    allocated: AtomicUsize::new(0),
    freed: AtomicUsize::new(0),
    worker_huge: AtomicUsize::new(0),
    next_tag: AtomicUsize::new(1),
};

fn bump(c: &AtomicUsize) {
    // ORDERING: Relaxed: counters, read after every thread has been joined.
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicUsize) -> usize {
    c.load(Ordering::Relaxed)
}

/// Per worker: its `pthread_t`, progress, whether it is inside an allocator call, how
/// many handlers run on it and how many kill signals have reached their handler.
struct WorkerState {
    thread: AtomicUsize,
    kills_entered: AtomicUsize,
    ops: AtomicUsize,
    /// The most bytes it held live at once.
    peak_live: AtomicUsize,
    in_alloc: AtomicBool,
    depth: AtomicUsize,
}

static WORKER: [WorkerState; WORKERS] = [const {
    WorkerState {
        thread: AtomicUsize::new(0),
        kills_entered: AtomicUsize::new(0),
        ops: AtomicUsize::new(0),
        peak_live: AtomicUsize::new(0),
        in_alloc: AtomicBool::new(false),
        depth: AtomicUsize::new(0),
    }
}; WORKERS];

/// The calling thread's worker slot, if it is a worker.
fn this_worker() -> Option<&'static WorkerState> {
    // SAFETY: `pthread_self` has no preconditions (and only reads the thread pointer).
    let me = unsafe { libc::pthread_self() } as usize;
    WORKER
        .iter()
        .find(|w| w.thread.load(Ordering::Relaxed) == me)
}

/// Runs the allocator call `f` with the worker's "inside the allocator" flag raised, for
/// a handler interrupting it to see (`None` in handlers).
fn in_alloc<T>(w: Option<&WorkerState>, f: impl FnOnce() -> T) -> T {
    let Some(w) = w else { return f() };
    w.in_alloc.store(true, Ordering::Relaxed);
    // Keep the flag's stores on either side of the call (a handler on this thread sees
    // program order; only the compiler could move them).
    compiler_fence(Ordering::SeqCst);
    let r = f();
    compiler_fence(Ordering::SeqCst);
    w.in_alloc.store(false, Ordering::Relaxed);
    r
}

// ---------------------------------------------------------------------------------
// Blocks: pattern, shadow, verification. Used by handlers and workers alike.

/// splitmix64.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = mix(self.0);
        (self.0 % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Malloc,
    Calloc,
    Global,
}

/// A live block. Its contents: the tag (4 bytes, little endian, twice), then
/// `fill_byte(tag)` in every other byte.
#[derive(Clone, Copy)]
struct Block {
    ptr: *mut u8,
    size: usize,
    /// The bytes claimed in the shadow: `usable_size` at allocation.
    usable: usize,
    align: usize,
    via: Via,
    tag: u32,
}

fn fill_byte(tag: u32) -> u8 {
    (mix(u64::from(tag)) >> 56) as u8
}

fn head(tag: u32) -> [u8; 8] {
    (u64::from(tag) * 0x1_0000_0001).to_le_bytes()
}

fn new_tag() -> u32 {
    let n = C.next_tag.fetch_add(1, Ordering::Relaxed);
    // Nonzero; unique for the first 2^32 - 1 allocations (the test makes millions).
    ((n - 1) % u32::MAX as usize) as u32 + 1
}

/// Whether `p` lies inside `A` itself (its inline heap).
fn in_inline_heap(p: *const u8) -> bool {
    p.addr().wrapping_sub(std::ptr::addr_of!(A).addr()) < std::mem::size_of::<SigAlloc<HEAP>>()
}

/// The first `len` bytes of a block.
///
/// # Safety
/// - the block is live and the caller's, `len <= b.size`, and no other reference to its
///   bytes exists while the slice is used.
unsafe fn bytes_of<'a>(b: &Block, len: usize) -> &'a mut [u8] {
    // SAFETY: forwarded from our caller; the allocator handed out at least `size` bytes.
    unsafe { std::slice::from_raw_parts_mut(b.ptr, len) }
}

/// Writes the block's pattern over bytes `from..size`.
fn fill(b: &Block, from: usize) {
    // SAFETY: I1, the block is ours (every caller holds it live), and this is the only
    // reference to its bytes.
    let bytes = unsafe { bytes_of(b, b.size) };
    let tag = head(b.tag);
    let n = b.size.min(8);
    if from < n {
        if let (Some(dst), Some(src)) = (bytes.get_mut(from..n), tag.get(from..n)) {
            dst.copy_from_slice(src);
        }
    }
    if let Some(body) = bytes.get_mut(from.max(8)..) {
        body.fill(fill_byte(b.tag));
    }
}

/// Counts the bytes among the first `len` that do not hold the block's pattern.
fn check(b: &Block, len: usize) {
    // SAFETY: as in `fill`; every caller passes `len <= size`.
    let bytes = unsafe { bytes_of(b, len) };
    let tag = head(b.tag);
    let (hd, body) = bytes.split_at(len.min(8));
    let x = fill_byte(b.tag);
    // Every body byte equals `x` iff the first does and the body equals itself shifted
    // by one: two `memcmp`-speed comparisons, fast even in debug builds.
    let ok = tag.starts_with(hd)
        && match body.split_first() {
            None => true,
            Some((&first, rest)) => first == x && rest == &body[..body.len() - 1],
        };
    if !ok {
        let wrong = hd.iter().zip(&tag).filter(|(a, b)| a != b).count()
            + body.iter().filter(|&&y| y != x).count();
        C.corrupt_bytes.fetch_add(wrong.max(1), Ordering::Relaxed);
    }
}

/// Allocates a block of `size` bytes `via` the given call (`w`: the calling worker;
/// `None` in a handler).
fn alloc(w: Option<&WorkerState>, size: usize, align: usize, via: Via) -> Option<Block> {
    let layout = Layout::from_size_align(size, align).ok()?;
    let ptr = in_alloc(w, || match via {
        Via::Malloc => A.malloc(size),
        Via::Calloc => A.calloc(1, size),
        // SAFETY: `layout` has a non-zero size.
        Via::Global => unsafe { GlobalAlloc::alloc(&A, layout) },
    });
    if ptr.is_null() {
        bump(&C.out_of_memory);
        return None;
    }
    let usable = A.usable_size(ptr);
    if ptr.addr() % align != 0 || usable < size {
        bump(&C.bad_blocks);
    }
    if !A.owns(ptr) {
        // Not ours to write: leave it alone (a leak, and a failed test).
        bump(&C.bad_blocks);
        return None;
    }
    let b = Block {
        ptr,
        size,
        usable: usable.max(size),
        align,
        via,
        tag: new_tag(),
    };
    shadow_claim(&b);
    if via == Via::Calloc {
        // SAFETY: I1, the block was just handed to us; nothing else refers to it.
        let bytes = unsafe { bytes_of(&b, size) };
        if bytes.first() != Some(&0) || bytes[1..] != bytes[..size - 1] {
            bump(&C.bad_blocks);
        }
    }
    fill(&b, 0);
    bump(&C.allocated);
    if w.is_none() {
        bump(&C.handler_allocs);
        if !in_inline_heap(ptr) {
            bump(&C.handler_mapped);
        }
        if size >= HUGE_THRESHOLD {
            bump(&C.handler_huge);
        }
    } else if size >= HUGE_THRESHOLD {
        bump(&C.worker_huge);
    }
    Some(b)
}

/// Checks and frees a block (`w`: the calling worker).
fn free(w: Option<&WorkerState>, b: Block) {
    check(&b, b.size);
    shadow_release(&b);
    let layout = Layout::from_size_align(b.size, b.align).unwrap_or(Layout::new::<u8>());
    in_alloc(w, || match b.via {
        // SAFETY: a live block from `A.malloc`/`A.calloc`/`A.realloc`, freed once.
        Via::Malloc | Via::Calloc => unsafe { A.free(b.ptr) },
        // SAFETY: a live block from `GlobalAlloc::alloc`/`realloc` with this layout.
        Via::Global => unsafe { GlobalAlloc::dealloc(&A, b.ptr, layout) },
    });
    bump(&C.freed);
}

/// Resizes a block; checks that the kept prefix survived and extends the pattern.
/// Returns the block, or `None` if the allocator answered with memory it does not own
/// (left alone: a leak, and a failed test).
fn resize(w: Option<&WorkerState>, mut b: Block, new_size: usize) -> Option<Block> {
    // The block may move: its old granules are free for others as soon as the
    // allocator frees it, so release them first (and reclaim them if nothing moved).
    shadow_release(&b);
    let layout = Layout::from_size_align(b.size, b.align).unwrap_or(Layout::new::<u8>());
    let new = in_alloc(w, || match b.via {
        // SAFETY: a live block from `A.malloc`/`A.calloc`/`A.realloc`.
        Via::Malloc | Via::Calloc => unsafe { A.realloc(b.ptr, new_size) },
        // SAFETY: a live block with this layout; `new_size` is non-zero.
        Via::Global => unsafe { GlobalAlloc::realloc(&A, b.ptr, layout, new_size) },
    });
    if new.is_null() {
        bump(&C.out_of_memory);
        shadow_claim(&b);
        return Some(b);
    }
    let usable = A.usable_size(new);
    if new.addr() % b.align != 0 || usable < new_size {
        bump(&C.bad_blocks);
    }
    if !A.owns(new) {
        bump(&C.bad_blocks);
        return None;
    }
    let kept = b.size.min(new_size);
    b.ptr = new;
    b.usable = usable.max(new_size);
    shadow_claim(&b);
    check(&b, kept);
    b.size = new_size;
    fill(&b, kept);
    Some(b)
}

// ---------------------------------------------------------------------------------
// The handler.

extern "C" fn on_signal(sig: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // Only atomics, the allocator and slice operations below: async-signal-safe. The
    // allocator keeps errno itself; nothing else here sets it.
    let Some(w) = this_worker() else { return };
    let depth = w.depth.fetch_add(1, Ordering::Relaxed) + 1;
    if sig == SIG_KILL {
        // ORDERING: Release pairs with the killer's Acquire: it sees our depth too.
        w.kills_entered.fetch_add(1, Ordering::Release);
    }
    C.max_depth.fetch_max(depth, Ordering::Relaxed);
    if depth > 1 {
        bump(&C.nested);
    }
    if w.in_alloc.load(Ordering::Relaxed) {
        bump(&C.interrupted_alloc);
    }
    handler_work(depth < MAX_NEST);
    bump(&C.handler_runs);
    w.depth.fetch_sub(1, Ordering::Relaxed);
}

/// Allocates 1-4 blocks (16 B..1 KiB; one in sixteen a span up to 64 KiB, one in 256 a
/// huge block), fills them, resizes one, frees them all. If `may_raise`, sometimes
/// raises `SIG_RAISE` while holding them: a nested handler then runs at once.
fn handler_work(may_raise: bool) {
    let mut rng = Rng(C.next_tag.load(Ordering::Relaxed) as u64);
    let mut blocks: [Option<Block>; 4] = [None; 4];
    let n = 1 + rng.below(4);
    for slot in blocks.iter_mut().take(n) {
        let size = match rng.below(256) {
            0 => rng.range(HUGE_THRESHOLD, HUGE_THRESHOLD + (64 << 10)),
            1..=16 => rng.range(MAX_SMALL + 1, 64 << 10),
            _ => rng.range(16, 1024),
        };
        let (via, align) = match rng.below(3) {
            0 => (Via::Malloc, 16),
            1 => (Via::Calloc, 16),
            _ => (Via::Global, 1 << (3 + rng.below(6))),
        };
        *slot = alloc(None, size, align, via);
    }
    if rng.below(4) == 0 {
        let new_size = rng.range(16, 4096);
        blocks[0] = blocks[0].take().and_then(|b| resize(None, b, new_size));
    }
    if may_raise && rng.below(8) == 0 {
        // SAFETY: `raise` is async-signal-safe; `SIG_RAISE`'s handler is `on_signal`.
        unsafe { libc::raise(SIG_RAISE) };
    }
    let first = rng.below(n);
    for i in 0..n {
        if let Some(b) = blocks[(first + i) % n].take() {
            free(None, b);
        }
    }
}

// ---------------------------------------------------------------------------------
// Handlers, timers, the storm.

/// Installs `on_signal` for `sig` (kills and raises `SA_NODEFER`, the timer deferred);
/// returns the previous action.
fn install(sig: libc::c_int) -> libc::sigaction {
    // SAFETY: all-zero is a valid `sigaction` (empty mask, no flags), filled in below.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction =
        on_signal as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    if sig != SIG_TIMER {
        // Nothing bounds the timer's rate, so its handler never nests in itself; kills
        // and raises are bounded by the killer and `MAX_NEST`.
        sa.sa_flags |= libc::SA_NODEFER;
    }
    // SAFETY: `sa.sa_mask` is a valid, owned signal set.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: all-zero is a valid `sigaction`, overwritten by the call.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; the handler is async-signal-safe (see `on_signal`).
    let rc = unsafe { libc::sigaction(sig, &sa, &mut old) };
    assert_eq!(rc, 0, "sigaction({sig})");
    old
}

/// A per-thread interval timer that signals the calling thread.
struct Timer(libc::timer_t);

impl Timer {
    fn start(sig: libc::c_int, interval_ns: libc::c_long) -> Timer {
        // SAFETY: all-zero is a valid `sigevent`, filled in below.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = sig;
        // SAFETY: `gettid` has no preconditions.
        sev.sigev_notify_thread_id = unsafe { libc::syscall(libc::SYS_gettid) } as libc::c_int;
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid pointers; the timer targets this (live) thread.
        let rc = unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) };
        assert_eq!(rc, 0, "timer_create");
        let every = libc::timespec {
            tv_sec: 0,
            tv_nsec: interval_ns,
        };
        let its = libc::itimerspec {
            it_interval: every,
            it_value: every,
        };
        // SAFETY: `id` is the timer just created.
        let rc = unsafe { libc::timer_settime(id, 0, &its, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "timer_settime");
        Timer(id)
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        // SAFETY: the timer was created by `start` and is deleted once.
        unsafe { libc::timer_delete(self.0) };
    }
}

/// Aborts the process if the returned guard is not dropped within a minute: a handler
/// that deadlocks on the thread it interrupted would otherwise hang the test forever.
fn watchdog() -> mpsc::Sender<()> {
    let (done, wait) = mpsc::channel::<()>();
    thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(Duration::from_secs(60)) {
            eprintln!(
                "watchdog: the mmap storm did not finish within 60 s (deadlock or livelock?); \
                 worker ops done: {:?}, handler runs: {}",
                WORKER
                    .iter()
                    .map(|w| w.ops.load(Ordering::Relaxed))
                    .collect::<Vec<_>>(),
                get(&C.handler_runs),
            );
            std::process::abort();
        }
    });
    done
}

/// Workers ready (their `pthread_t` published), workers done, and the killer stopped.
static READY: AtomicUsize = AtomicUsize::new(0);
static DONE: AtomicUsize = AtomicUsize::new(0);
static KILLER_STOPPED: AtomicBool = AtomicBool::new(false);

/// A worker's request: mostly small, one in eight a span, one in 1024 huge.
fn worker_size(rng: &mut Rng) -> usize {
    match rng.below(1024) {
        0 => rng.range(HUGE_THRESHOLD, 3 * MIB),
        1..=128 => rng.range(MAX_SMALL + 1, 32 << 10),
        _ => rng.range(16, MAX_SMALL),
    }
}

fn worker(i: usize, ops: usize) {
    let w = &WORKER[i];
    // Its working set, from the system allocator before the storm reaches it.
    let mut live: Vec<Option<Block>> = vec![None; WORKER_SLOTS];
    // SAFETY: no preconditions.
    w.thread
        .store(unsafe { libc::pthread_self() } as usize, Ordering::Relaxed);
    // ORDERING: Release pairs with the killer's Acquire: it reads `w.thread` after.
    READY.fetch_add(1, Ordering::Release);
    let timer = Timer::start(SIG_TIMER, TIMER_INTERVAL_NS);

    let mut rng = Rng(mix(i as u64 + 0x3A));
    let mut held = 0usize;
    for _ in 0..ops {
        w.ops.fetch_add(1, Ordering::Relaxed);
        let slot = &mut live[rng.below(WORKER_SLOTS)];
        match slot.take() {
            None => {
                let size = worker_size(&mut rng);
                let (via, align) = match rng.below(3) {
                    0 => (Via::Malloc, 16),
                    1 => (Via::Calloc, 16),
                    _ => (Via::Global, 1 << rng.below(13)),
                };
                *slot = alloc(Some(w), size, align, via);
                held += slot.map_or(0, |b| b.size);
                w.peak_live.fetch_max(held, Ordering::Relaxed);
            }
            Some(b) if rng.below(4) == 0 => {
                held -= b.size;
                *slot = resize(Some(w), b, worker_size(&mut rng));
                held += slot.map_or(0, |b| b.size);
            }
            Some(b) => {
                held -= b.size;
                free(Some(w), b);
            }
        }
    }
    for b in live.iter_mut().filter_map(Option::take) {
        free(Some(w), b);
    }

    // Stay alive (and interruptible) until the killer stops signalling us by
    // `pthread_t`, which must not outlive the thread.
    // ORDERING: Release/Acquire pair with the killer's.
    DONE.fetch_add(1, Ordering::Release);
    while !KILLER_STOPPED.load(Ordering::Acquire) {
        thread::yield_now();
    }
    drop(timer);
}

fn killer() -> usize {
    // ORDERING: Acquire pairs with the workers' Release: their `pthread_t`s are stored.
    while READY.load(Ordering::Acquire) < WORKERS {
        thread::yield_now();
    }
    let targets: Vec<libc::pthread_t> = WORKER
        .iter()
        .map(|w| w.thread.load(Ordering::Relaxed) as libc::pthread_t)
        .collect();
    let mut sent = [0usize; WORKERS];
    let mut failed = 0;
    while DONE.load(Ordering::Acquire) < WORKERS {
        for ((&t, w), sent) in targets.iter().zip(&WORKER).zip(&mut sent) {
            // One kill in flight per thread, and only below `MAX_NEST` handlers deep.
            // ORDERING: Acquire pairs with the handler's Release; its depth is counted.
            if w.kills_entered.load(Ordering::Acquire) != *sent
                || w.depth.load(Ordering::Relaxed) >= MAX_NEST
            {
                continue;
            }
            // SAFETY: `t` is a live worker: workers wait for `KILLER_STOPPED` to exit.
            if unsafe { libc::pthread_kill(t, SIG_KILL) } == 0 {
                *sent += 1;
            } else {
                failed += 1;
            }
        }
        thread::sleep(KILL_PAUSE);
    }
    // Set before any assertion: the workers wait for it.
    KILLER_STOPPED.store(true, Ordering::Release);
    assert_eq!(failed, 0, "pthread_kill failed");
    sent.iter().sum()
}

#[test]
#[cfg_attr(miri, ignore)]
fn storm_while_the_heap_grows_through_mmap() {
    let _watchdog = watchdog();
    let start = Instant::now();
    map_pool();
    assert_eq!(
        A.stats().mapped_regions,
        0,
        "nothing is mapped before the storm"
    );
    A.enable_mmap();

    let old_timer = install(SIG_TIMER);
    let old_kill = install(SIG_KILL);
    let old_raise = install(SIG_RAISE);
    let ops = ops_per_worker();
    let sent = thread::scope(|s| {
        for i in 0..WORKERS {
            s.spawn(move || worker(i, ops));
        }
        s.spawn(killer).join().unwrap()
    });
    // Every worker has exited: no signal is pending on any of them, and no handler runs.
    common::restore_signal(SIG_TIMER, &old_timer);
    common::restore_signal(SIG_KILL, &old_kill);
    common::restore_signal(SIG_RAISE, &old_raise);
    for w in &WORKER {
        w.thread.store(0, Ordering::Relaxed);
    }

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
        get(&C.handler_allocs),
        s.mapped_regions,
        s.mapped_bytes as f64 / MIB as f64,
        sent,
        get(&C.interrupted_alloc),
        get(&C.nested),
        get(&C.max_depth),
        get(&C.handler_mapped),
        get(&C.handler_huge),
        get(&C.worker_huge),
        get(&C.allocated),
        peak as f64 / MIB as f64,
        POOL_NEXT.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
    );
    assert_eq!(
        get(&C.overlaps),
        0,
        "granules owned by two live blocks at once"
    );
    assert_eq!(
        get(&C.shadow_full),
        0,
        "the shadow table or pool ran out (test limit)"
    );
    assert_eq!(
        get(&C.corrupt_bytes),
        0,
        "bytes that lost their block's pattern"
    );
    assert_eq!(
        get(&C.bad_blocks),
        0,
        "misaligned, short, foreign or unzeroed blocks"
    );
    assert_eq!(get(&C.out_of_memory), 0, "null with growth on and no limit");
    assert!(
        get(&C.handler_runs) > 100,
        "the handler ran only {} times",
        get(&C.handler_runs)
    );
    assert!(
        get(&C.interrupted_alloc) > 0,
        "no handler interrupted an allocator call"
    );
    assert!(get(&C.nested) > 0, "handlers never nested");
    assert!(
        get(&C.max_depth) <= MAX_NEST + 2,
        "nesting beyond its bound"
    );
    assert!(
        get(&C.handler_mapped) > 0,
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
    assert_eq!(
        get(&C.allocated),
        get(&C.freed),
        "every block verified and freed"
    );
    assert!(
        shadow_empty(),
        "shadow not empty after every block was freed"
    );
    assert_eq!(s.bytes_in_use, 0, "all freed, yet bytes in use: {s:?}");
    assert_eq!(s.huge_mappings, 0, "huge mappings left: {s:?}");
    A.validate().expect("heap invalid after the storm");
}
