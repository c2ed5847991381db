//! The signal storm: signal handlers allocate from the same heap as the threads they
//! interrupt, at any instruction, including in the middle of the allocator itself.
//!
//! Two worker threads run an alloc / fill / verify / realloc / free loop on one
//! `SigAlloc`. Each is interrupted by its own 50 µs timer (`timer_create` with
//! `SIGEV_THREAD_ID`, Linux) and by a third thread that `pthread_kill`s it. The handler
//! allocates 1-4 blocks (`malloc`, `calloc`, `GlobalAlloc::alloc` at various
//! alignments), fills, verifies, resizes and frees them. One test masks both signals
//! inside the handler; in the other the kill signal is `SA_NODEFER` and neither signal
//! masks the other, so handlers interrupt handlers, several deep. There, a handler also
//! raises a third signal (`SA_NODEFER` too) at times while it holds blocks, so nesting
//! happens every run, not only when the timing happens to allow it.
//!
//! Nesting is bounded by construction, not by luck: a signal that arrives faster than
//! the kernel can build its frame would otherwise stack frames until the stack
//! overflows (seen on a 2-core VM). The timer signal is never `SA_NODEFER`, so at most
//! one timer handler is on the stack; the killer sends a thread its next kill only
//! once the previous one has entered its handler and fewer than `MAX_NEST` handlers
//! are running there; a handler raises the third signal only below `MAX_NEST` too.
//!
//! A shadow ownership map (one atomic owner tag per 16-byte granule of the heap,
//! claimed with a CAS from zero when a block is handed out and released before it is
//! freed) catches any two live blocks that overlap (I1) at the moment it happens; the
//! fill patterns catch any write into a block its owner did not make. A watchdog turns
//! a deadlock or livelock (I4) into a clear failure.
//!
//! The handler calls only the allocator, atomics, `memset`/`memcmp`-like slice
//! operations, `pthread_self` and `raise`: nothing that locks, allocates elsewhere,
//! prints or panics (no index it uses can be out of bounds).
#![cfg(unix)]
// A test binary, not the crate: the atomics here are the test's own bookkeeping, which
// `clippy.toml` (aimed at `src/`, where loom must see every atomic) does not concern.
#![allow(clippy::disallowed_types)]

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use sigalloc::SigAlloc;

const HEAP: usize = 4 << 20;
static A: SigAlloc<HEAP> = SigAlloc::new();

/// Both tests install handlers for the same signals and measure `A` as a whole.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const WORKERS: usize = 2;
/// The timer signal (per-thread timers) and the cross-thread signal.
const SIG_TIMER: libc::c_int = libc::SIGALRM;
const SIG_KILL: libc::c_int = libc::SIGUSR1;
/// Raised by a handler on its own thread (nested variant only).
const SIG_RAISE: libc::c_int = libc::SIGUSR2;
/// Each worker's timer period. A signal costs the kernel tens of microseconds on a
/// 2-core VM (measured): at 20 µs the workers starved and a run took 15-25 s; at 50 µs
/// they still take tens of thousands of signals, often inside the allocator.
const TIMER_INTERVAL_NS: libc::c_long = 50_000;
/// The killer's pause between rounds of `pthread_kill`.
const KILL_PAUSE: Duration = Duration::from_micros(20);
/// The killer adds no handler to a thread that already runs this many.
const MAX_NEST: usize = 4;
/// Blocks a worker keeps live at once.
const WORKER_LIVE: usize = 32;

fn ops_per_worker() -> usize {
    if cfg!(debug_assertions) {
        30_000
    } else {
        150_000
    }
}

/// Whether handlers raise `SIG_RAISE` (set only while the nested variant runs).
static RAISE: AtomicBool = AtomicBool::new(false);

// ---------------------------------------------------------------------------------
// Shadow ownership map and counters: atomics only, so the handler may use them.

const GRANULE: usize = 16;
/// Granules of `A` (its heap lies inside it).
const GRANULES: usize = std::mem::size_of::<SigAlloc<HEAP>>().div_ceil(GRANULE);
static SHADOW: [AtomicUsize; GRANULES] = [const { AtomicUsize::new(0) }; GRANULES];

/// Counters of one run (reset by [`Counters::reset`] between runs).
struct Counters {
    /// Granules claimed while another live block held them, or released by a block
    /// that did not hold them: overlaps (I1 broken).
    overlaps: AtomicUsize,
    /// Bytes that did not hold their block's pattern when checked.
    corrupt_bytes: AtomicUsize,
    /// Blocks misaligned, shorter than asked, outside the heap, or not zeroed by calloc.
    bad_blocks: AtomicUsize,
    /// Allocations that returned null (the heap is far larger than the live set).
    out_of_memory: AtomicUsize,
    /// Handlers that did their allocation work.
    handler_runs: AtomicUsize,
    /// Handlers that found their thread inside an allocator call.
    interrupted_alloc: AtomicUsize,
    /// Handlers that ran inside another handler on the same thread.
    nested: AtomicUsize,
    /// The deepest nesting seen.
    max_depth: AtomicUsize,
    /// Blocks allocated, and blocks verified and freed, by handlers and workers.
    allocated: AtomicUsize,
    freed: AtomicUsize,
    /// Owner tags: unique per allocation, never 0.
    next_tag: AtomicUsize,
}

static C: Counters = Counters {
    overlaps: AtomicUsize::new(0),
    corrupt_bytes: AtomicUsize::new(0),
    bad_blocks: AtomicUsize::new(0),
    out_of_memory: AtomicUsize::new(0),
    handler_runs: AtomicUsize::new(0),
    interrupted_alloc: AtomicUsize::new(0),
    nested: AtomicUsize::new(0),
    max_depth: AtomicUsize::new(0),
    allocated: AtomicUsize::new(0),
    freed: AtomicUsize::new(0),
    next_tag: AtomicUsize::new(1),
};

impl Counters {
    fn reset(&self) {
        for c in [
            &self.overlaps,
            &self.corrupt_bytes,
            &self.bad_blocks,
            &self.out_of_memory,
            &self.handler_runs,
            &self.interrupted_alloc,
            &self.nested,
            &self.max_depth,
            &self.allocated,
            &self.freed,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }

    fn get(c: &AtomicUsize) -> usize {
        c.load(Ordering::Relaxed)
    }
}

fn bump(c: &AtomicUsize) {
    // ORDERING: Relaxed: counters, read after every thread has been joined.
    c.fetch_add(1, Ordering::Relaxed);
}

/// Per worker: its `pthread_t`, whether it is inside an allocator call, how many
/// handlers are running on it and how many kill signals have reached their handler.
struct WorkerState {
    thread: AtomicUsize,
    kills_entered: AtomicUsize,
    /// Operations done (progress, for the watchdog's report).
    ops: AtomicUsize,
    in_alloc: AtomicBool,
    depth: AtomicUsize,
}

static WORKER: [WorkerState; WORKERS] = [const {
    WorkerState {
        thread: AtomicUsize::new(0),
        kills_entered: AtomicUsize::new(0),
        ops: AtomicUsize::new(0),
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
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Malloc,
    Calloc,
    Global,
}

/// A live block. Layout of its contents: the tag (8 bytes, little endian), then
/// `fill(tag)` in every other byte.
#[derive(Clone, Copy)]
struct Block {
    ptr: *mut u8,
    size: usize,
    /// The granules claimed in the shadow map: `usable_size` at allocation.
    usable: usize,
    align: usize,
    via: Via,
    tag: usize,
}

fn fill_byte(tag: usize) -> u8 {
    (mix(tag as u64) >> 56) as u8
}

/// The block's offset in `A`, if it lies wholly inside `A`'s heap.
fn heap_offset(p: *const u8, len: usize) -> Option<usize> {
    if !A.owns(p) {
        return None;
    }
    let off = p.addr().checked_sub(std::ptr::addr_of!(A).addr())?;
    (off.checked_add(len)? <= GRANULES * GRANULE).then_some(off)
}

/// Claims the block's granules for `tag`. A granule already owned means two live
/// blocks overlap.
fn shadow_claim(b: &Block) {
    let Some(off) = heap_offset(b.ptr, b.usable) else {
        bump(&C.bad_blocks);
        return;
    };
    for g in SHADOW[off / GRANULE..(off + b.usable).div_ceil(GRANULE)].iter() {
        // ORDERING: Relaxed: the allocator's hand-over orders a block's release before
        // its reuse; seeing a stale tag is exactly the allocator bug we look for.
        if g.compare_exchange(0, b.tag, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            bump(&C.overlaps);
        }
    }
}

/// Releases the block's granules: done before the block goes back to the allocator.
fn shadow_release(b: &Block) {
    let Some(off) = heap_offset(b.ptr, b.usable) else {
        return;
    };
    for g in SHADOW[off / GRANULE..(off + b.usable).div_ceil(GRANULE)].iter() {
        // ORDERING: Relaxed, as in `shadow_claim`.
        if g.compare_exchange(b.tag, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            bump(&C.overlaps);
        }
    }
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
    let tag = b.tag.to_le_bytes();
    if from < 8 {
        bytes[from..8].copy_from_slice(&tag[from..]);
    }
    bytes[from.max(8)..].fill(fill_byte(b.tag));
}

/// Counts the bytes among the first `len` that do not hold the block's pattern.
fn check(b: &Block, len: usize) {
    // SAFETY: as in `fill`; every caller passes `len <= size`.
    let bytes = unsafe { bytes_of(b, len) };
    let tag = b.tag.to_le_bytes();
    let head = len.min(8);
    let body = &bytes[head..];
    let x = fill_byte(b.tag);
    // Every body byte equals `x` iff the first does and the body equals itself shifted
    // by one: two `memcmp`-speed comparisons, fast even in debug builds.
    let ok = bytes[..head] == tag[..head]
        && (body.is_empty() || (body[0] == x && body[1..] == body[..body.len() - 1]));
    if !ok {
        let wrong = bytes[..head]
            .iter()
            .zip(&tag)
            .filter(|(a, b)| a != b)
            .count()
            + body.iter().filter(|&&y| y != x).count();
        C.corrupt_bytes.fetch_add(wrong.max(1), Ordering::Relaxed);
    }
}

/// Allocates a block of `size` bytes `via` the given call (`w`: the calling worker).
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
    if heap_offset(ptr, usable.max(size)).is_none() {
        // Not ours to write: leave it alone (a leak, and a failed test).
        bump(&C.bad_blocks);
        return None;
    }
    let tag = C.next_tag.fetch_add(1, Ordering::Relaxed);
    let b = Block {
        ptr,
        size,
        usable: usable.max(size),
        align,
        via,
        tag,
    };
    shadow_claim(&b);
    if via == Via::Calloc {
        // SAFETY: I1, the block was just handed to us; nothing else refers to it.
        let bytes = unsafe { bytes_of(&b, size) };
        if bytes[0] != 0 || bytes[1..] != bytes[..size - 1] {
            bump(&C.bad_blocks);
        }
    }
    fill(&b, 0);
    bump(&C.allocated);
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
/// Returns the block, or `None` if the allocator answered with memory outside its heap
/// (left alone: a leak, and a failed test).
fn resize(w: Option<&WorkerState>, mut b: Block, new_size: usize) -> Option<Block> {
    // The block may move: its old granules are free for others as soon as the
    // allocator frees it, so release them first (and reclaim them if nothing moved).
    shadow_release(&b);
    let layout = Layout::from_size_align(b.size, b.align).unwrap_or(Layout::new::<u8>());
    let new = in_alloc(w, || match b.via {
        // SAFETY: a live block from `A.malloc`/`A.calloc`/`A.realloc`.
        Via::Malloc | Via::Calloc => unsafe { A.realloc(b.ptr, new_size) },
        // SAFETY: a live block with this layout; `new_size` is non-zero and small.
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
    if heap_offset(new, usable.max(new_size)).is_none() {
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
    // Only atomics, the allocator and slice compares below: async-signal-safe. Nothing
    // here sets errno, so there is none to save.
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
    handler_work(depth < MAX_NEST && RAISE.load(Ordering::Relaxed));
    bump(&C.handler_runs);
    w.depth.fetch_sub(1, Ordering::Relaxed);
}

/// Allocates 1-4 blocks of 16..1024 bytes, fills them, resizes one, frees them all.
/// If `may_raise`, sometimes raises `SIG_RAISE` while holding the blocks: a nested
/// handler then runs at once, before this one checks and frees them.
fn handler_work(may_raise: bool) {
    let mut rng = Rng(C.next_tag.load(Ordering::Relaxed) as u64);
    let mut blocks: [Option<Block>; 4] = [None; 4];
    let n = 1 + rng.below(4);
    for slot in blocks.iter_mut().take(n) {
        let size = 16 + rng.below(1024 - 16 + 1);
        let (via, align) = match rng.below(3) {
            0 => (Via::Malloc, 16),
            1 => (Via::Calloc, 16),
            _ => (Via::Global, 1 << (3 + rng.below(6))),
        };
        *slot = alloc(None, size, align, via);
    }
    if rng.below(4) == 0 {
        let new_size = 16 + rng.below(1024 - 16 + 1);
        blocks[0] = blocks[0].take().and_then(|b| resize(None, b, new_size));
    }
    if may_raise && rng.below(8) == 0 {
        // SAFETY: `raise` is async-signal-safe; `SIG_RAISE`'s handler is `on_signal`.
        unsafe { libc::raise(SIG_RAISE) };
    }
    // Free in an order of the rng's choosing.
    let first = rng.below(n);
    for i in 0..n {
        if let Some(b) = blocks[(first + i) % n].take() {
            free(None, b);
        }
    }
}

// ---------------------------------------------------------------------------------
// Installing handlers, timers, the storm.

/// Installs `on_signal` for `sig`; returns the previous action.
fn install(sig: libc::c_int, nested: bool) -> libc::sigaction {
    // SAFETY: all-zero is a valid `sigaction` (empty mask, no flags), filled in below.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction =
        on_signal as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: `sa.sa_mask` is a valid, owned signal set.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    if nested {
        // Each signal interrupts the others' handlers; kills and raises interrupt their
        // own kind too (the killer and `MAX_NEST` bound them). The timer stays
        // deferred: nothing bounds its rate.
        if sig != SIG_TIMER {
            sa.sa_flags |= libc::SA_NODEFER;
        }
    } else {
        // No storm signal interrupts a running handler.
        for s in [SIG_TIMER, SIG_KILL, SIG_RAISE] {
            // SAFETY: as above; `s` is a valid signal number.
            unsafe { libc::sigaddset(&mut sa.sa_mask, s) };
        }
    }
    // SAFETY: all-zero is a valid `sigaction`, overwritten by the call.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; the handler is async-signal-safe (see `on_signal`).
    let rc = unsafe { libc::sigaction(sig, &sa, &mut old) };
    assert_eq!(rc, 0, "sigaction({sig})");
    old
}

/// A per-thread interval timer that signals the calling thread (Linux only; elsewhere
/// the storm comes from `pthread_kill` alone).
#[cfg(target_os = "linux")]
mod timer {
    pub(crate) struct Timer(libc::timer_t);

    impl Timer {
        pub(crate) fn start(sig: libc::c_int, interval_ns: libc::c_long) -> Timer {
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
}

#[cfg(not(target_os = "linux"))]
mod timer {
    pub(crate) struct Timer;

    impl Timer {
        pub(crate) fn start(_sig: libc::c_int, _interval_ns: libc::c_long) -> Timer {
            Timer
        }
    }
}

/// Aborts the process if the returned guard is not dropped within a minute: a handler
/// that deadlocks on the thread it interrupted would otherwise hang the test forever.
fn watchdog(what: &'static str) -> mpsc::Sender<()> {
    let (done, wait) = mpsc::channel::<()>();
    thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(Duration::from_secs(60)) {
            eprintln!(
                "watchdog: `{what}` did not finish within 60 s (deadlock or livelock in a handler?); \
                 worker ops done: {:?}, handler runs: {}",
                WORKER.iter().map(|w| w.ops.load(Ordering::Relaxed)).collect::<Vec<_>>(),
                Counters::get(&C.handler_runs),
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

fn worker(i: usize, ops: usize) {
    let w = &WORKER[i];
    // SAFETY: no preconditions.
    w.thread
        .store(unsafe { libc::pthread_self() } as usize, Ordering::Relaxed);
    // ORDERING: Release pairs with the killer's Acquire: it reads `w.thread` after.
    READY.fetch_add(1, Ordering::Release);
    let timer = timer::Timer::start(SIG_TIMER, TIMER_INTERVAL_NS);

    let mut rng = Rng(mix(i as u64 + 7));
    let mut live: [Option<Block>; WORKER_LIVE] = [None; WORKER_LIVE];
    for _ in 0..ops {
        w.ops.fetch_add(1, Ordering::Relaxed);
        let slot = &mut live[rng.below(WORKER_LIVE)];
        match slot.take() {
            None => {
                let size = 16 + rng.below(4096 + 1024);
                let (via, align) = match rng.below(3) {
                    0 => (Via::Malloc, 16),
                    1 => (Via::Calloc, 16),
                    _ => (Via::Global, 1 << rng.below(13)),
                };
                *slot = alloc(Some(w), size, align, via);
            }
            Some(b) if rng.below(4) == 0 => {
                let new_size = 16 + rng.below(4096 + 1024);
                *slot = resize(Some(w), b, new_size);
            }
            Some(b) => free(Some(w), b),
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
            // One kill in flight per thread, and only below `MAX_NEST` handlers deep:
            // the bound on nesting (see the module docs).
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

fn storm(nested: bool) {
    let _turn = serial();
    let _watchdog = watchdog(if nested {
        "storm with nested handlers"
    } else {
        "storm"
    });
    C.reset();
    READY.store(0, Ordering::Relaxed);
    DONE.store(0, Ordering::Relaxed);
    KILLER_STOPPED.store(false, Ordering::Relaxed);
    for w in &WORKER {
        w.thread.store(0, Ordering::Relaxed);
        w.kills_entered.store(0, Ordering::Relaxed);
        w.ops.store(0, Ordering::Relaxed);
        w.depth.store(0, Ordering::Relaxed);
    }

    let old_timer = install(SIG_TIMER, nested);
    let old_kill = install(SIG_KILL, nested);
    let old_raise = install(SIG_RAISE, nested);
    RAISE.store(nested, Ordering::Relaxed);
    let ops = ops_per_worker();
    let sent = thread::scope(|s| {
        for i in 0..WORKERS {
            s.spawn(move || worker(i, ops));
        }
        s.spawn(killer).join().unwrap()
    });
    // Every worker has exited: no signal is pending on any of them, and no handler runs.
    RAISE.store(false, Ordering::Relaxed);
    common::restore_signal(SIG_TIMER, &old_timer);
    common::restore_signal(SIG_KILL, &old_kill);
    common::restore_signal(SIG_RAISE, &old_raise);
    for w in &WORKER {
        w.thread.store(0, Ordering::Relaxed);
    }

    let g = Counters::get;
    eprintln!(
        "{} handler runs ({} interrupted an allocator call, {} nested, {} deep at most), {} kills sent, \
         {} blocks, {} out of memory",
        g(&C.handler_runs),
        g(&C.interrupted_alloc),
        g(&C.nested),
        g(&C.max_depth),
        sent,
        g(&C.allocated),
        g(&C.out_of_memory),
    );
    assert_eq!(
        g(&C.overlaps),
        0,
        "granules owned by two live blocks at once"
    );
    assert_eq!(
        g(&C.corrupt_bytes),
        0,
        "bytes that lost their block's pattern"
    );
    assert_eq!(
        g(&C.bad_blocks),
        0,
        "misaligned, short, foreign or unzeroed blocks"
    );
    assert_eq!(
        g(&C.out_of_memory),
        0,
        "the live set is a fraction of the heap"
    );
    assert!(
        g(&C.handler_runs) > 100,
        "the handler ran only {} times",
        g(&C.handler_runs)
    );
    assert!(
        g(&C.interrupted_alloc) > 0,
        "no handler interrupted an allocator call"
    );
    assert_eq!(
        g(&C.allocated),
        g(&C.freed),
        "every block verified and freed"
    );
    assert!(
        SHADOW.iter().all(|g| g.load(Ordering::Relaxed) == 0),
        "shadow map not empty"
    );
    let s = A.stats();
    assert_eq!(
        s.bytes_in_use, 0,
        "all freed, yet the heap reports bytes in use: {s:?}"
    );
    if nested {
        assert!(g(&C.nested) > 0, "handlers never nested");
        assert!(g(&C.max_depth) >= 2, "handlers never nested");
        // Raises and kills stop below `MAX_NEST`; a kill in flight, then a timer, can
        // each add one more.
        assert!(g(&C.max_depth) <= MAX_NEST + 2, "nesting beyond its bound");
    } else {
        assert_eq!(g(&C.nested), 0, "masked handlers nested");
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn storm_with_masked_handlers() {
    storm(false);
}

#[test]
#[cfg_attr(miri, ignore)]
fn storm_with_nested_handlers() {
    storm(true);
}
