//! The signal storm shared by `tests/signals.rs` and `tests/mmap_signals.rs`: signal
//! handlers allocate from the same heap as the threads they interrupt, at any
//! instruction, including in the middle of the allocator itself.
//!
//! [`run`] starts [`WORKERS`] worker threads that run an alloc / fill / verify /
//! realloc / free loop on one `SigAlloc`. Each is interrupted by its own interval timer
//! (`timer_create` with `SIGEV_THREAD_ID`, Linux only; elsewhere the storm comes from
//! `pthread_kill` alone) and by a killer thread that `pthread_kill`s it. The handler
//! allocates 1-4 blocks (`malloc`, `calloc`, `GlobalAlloc::alloc` at various
//! alignments), fills, verifies, resizes and frees them. Masked, every storm signal is
//! blocked inside every handler; nested, the kill signal and a third signal that a
//! handler `raise`s at times while it holds blocks are `SA_NODEFER` and no signal masks
//! another, so handlers interrupt handlers, several deep, every run.
//!
//! Nesting is bounded by construction, not by luck: a signal that arrives faster than
//! the kernel can build its frame would otherwise stack frames until the stack
//! overflows (seen on a 2-core VM). The timer signal is never `SA_NODEFER`, so at most
//! one timer handler is on the stack; the killer sends a thread its next kill only
//! once the previous one has entered its handler and fewer than [`MAX_NEST`] handlers
//! are running there; a handler raises the third signal only below `MAX_NEST` too.
//!
//! Every block ([`block`]) has a unique nonzero tag; its contents are the tests' fill
//! pattern seeded by the tag, so any write its owner did not make shows. Each storm ([`Storm`]) supplies its
//! heap, its size distributions and a shadow of owner tags, one per 16-byte granule:
//! a block's granules are claimed with a CAS from 0 to its tag when it is handed out
//! and released with a CAS back before it is freed, so a failed CAS means two live
//! blocks overlap (I1). The caller's watchdog (`common::watchdog`, with [`progress`]
//! as its report) turns a deadlock or livelock (I4) into a failure.
//!
//! What handlers reach (the handler, the block operations, the [`Storm`] hooks they
//! call) uses only the allocator, atomics, `memset`/`memcmp`-like slice operations,
//! `pthread_self` and `raise`: nothing that locks, allocates elsewhere, prints or
//! panics (no index it uses can be out of bounds).
// The atomics here are the tests' own bookkeeping, which `clippy.toml` (aimed at
// `src/`, where loom must see every atomic) does not concern.
#![allow(clippy::disallowed_types)]

use std::sync::atomic::{compiler_fence, AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use sigalloc::SigAlloc;

use super::signal::{self, Timer};
use super::{mix, Rng};

mod block;

use block::{alloc, free, pick_via, resize};
pub use block::{Block, Via};

pub const WORKERS: usize = 2;
/// The timer signal (per-thread timers) and the cross-thread signal.
pub const SIG_TIMER: libc::c_int = libc::SIGALRM;
pub const SIG_KILL: libc::c_int = libc::SIGUSR1;
/// Raised by a handler on its own thread (nested storms only).
pub const SIG_RAISE: libc::c_int = libc::SIGUSR2;
/// The killer adds no handler to a thread that already runs this many.
pub const MAX_NEST: usize = 4;

/// One storm's specifics: its heap, its sizes and its shadow. Every method but the
/// sizes is reached from handlers, so must be async-signal-safe.
pub trait Storm<const N: usize>: 'static {
    /// Each worker's timer period (see `signals.rs` for why not shorter).
    const TIMER_INTERVAL_NS: libc::c_long;
    /// The killer's pause between rounds of `pthread_kill`.
    const KILL_PAUSE: Duration;
    /// Operations per worker.
    const OPS_PER_WORKER: usize;
    /// Slots of a worker's working set.
    const WORKER_SLOTS: usize;
    /// Worker `i`'s generator starts from `mix(i + WORKER_SEED)`.
    const WORKER_SEED: u64;

    /// The allocator under test.
    fn heap() -> &'static SigAlloc<N>;
    /// Whether the test may write and shadow the `len` bytes at `p` (else the block is
    /// counted bad and left alone: a leak, and a failed test).
    fn tracks(p: *const u8, len: usize) -> bool;
    /// Calls `f` on the owner tag of every 16-byte granule of the `len` bytes at `p`,
    /// or counts why it cannot.
    fn each_granule(p: *const u8, len: usize, f: impl FnMut(&AtomicU32));
    /// Counts two live blocks that overlap.
    fn overlap() {
        bump(&C.overlaps);
    }
    /// Called for every block handed out, once it is filled (`in_handler`: by a
    /// handler rather than a worker).
    fn allocated(_in_handler: bool, _b: &Block) {}
    /// A worker's request (also its resize).
    fn worker_size(rng: &mut Rng) -> usize;
    /// A handler's request, and its resize of its first block.
    fn handler_size(rng: &mut Rng) -> usize;
    fn handler_resize(rng: &mut Rng) -> usize;
}

// ---------------------------------------------------------------------------------
// Counters and per-worker state: atomics only, so the handler may use them.

/// Counters of one run (reset by [`run`]).
pub struct Counters {
    /// Granules claimed while another live block held them, or released by a block
    /// that did not hold them: overlaps (I1 broken).
    pub overlaps: AtomicUsize,
    /// Bytes that did not hold their block's pattern when checked.
    pub corrupt_bytes: AtomicUsize,
    /// Blocks misaligned, shorter than asked, outside the heap, or not zeroed by calloc.
    pub bad_blocks: AtomicUsize,
    /// Allocations that returned null.
    pub out_of_memory: AtomicUsize,
    /// Handlers that did their allocation work.
    pub handler_runs: AtomicUsize,
    /// Handlers that found their thread inside an allocator call.
    pub interrupted_alloc: AtomicUsize,
    /// Handlers that ran inside another handler on the same thread.
    pub nested: AtomicUsize,
    /// The deepest nesting seen.
    pub max_depth: AtomicUsize,
    /// Blocks allocated, and blocks verified and freed, by handlers and workers.
    pub allocated: AtomicUsize,
    pub freed: AtomicUsize,
    /// Owner tags: unique per allocation, never 0 (never reset).
    pub next_tag: AtomicUsize,
}

pub static C: Counters = Counters {
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

pub fn bump(c: &AtomicUsize) {
    // ORDERING: Relaxed: counters, read after every thread has been joined.
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn get(c: &AtomicUsize) -> usize {
    c.load(Ordering::Relaxed)
}

/// Per worker: its `pthread_t`, progress, whether it is inside an allocator call, how
/// many handlers run on it and how many kill signals have reached their handler.
pub struct WorkerState {
    pub thread: AtomicUsize,
    pub kills_entered: AtomicUsize,
    /// Operations done (progress, for the watchdog's report).
    pub ops: AtomicUsize,
    /// The most bytes it held live at once.
    pub peak_live: AtomicUsize,
    pub in_alloc: AtomicBool,
    pub depth: AtomicUsize,
}

pub static WORKER: [WorkerState; WORKERS] = [const {
    WorkerState {
        thread: AtomicUsize::new(0),
        kills_entered: AtomicUsize::new(0),
        ops: AtomicUsize::new(0),
        peak_live: AtomicUsize::new(0),
        in_alloc: AtomicBool::new(false),
        depth: AtomicUsize::new(0),
    }
}; WORKERS];

/// Whether handlers raise `SIG_RAISE` (set only while a nested storm runs).
static RAISE: AtomicBool = AtomicBool::new(false);
/// Workers ready (their `pthread_t` published), workers done, and the killer stopped.
static READY: AtomicUsize = AtomicUsize::new(0);
static DONE: AtomicUsize = AtomicUsize::new(0);
static KILLER_STOPPED: AtomicBool = AtomicBool::new(false);

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
// The handler.

extern "C" fn on_signal<const N: usize, S: Storm<N>>(
    sig: libc::c_int,
    _info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    // Only atomics, the allocator and slice operations below: async-signal-safe. The
    // allocator keeps errno itself; nothing else here sets it (a `Storm::overlap` that
    // writes saves and restores it).
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
    handler_work::<N, S>(depth < MAX_NEST && RAISE.load(Ordering::Relaxed));
    bump(&C.handler_runs);
    w.depth.fetch_sub(1, Ordering::Relaxed);
}

/// Allocates 1-4 blocks of the storm's handler sizes, fills them, resizes one, frees
/// them all. If `may_raise`, sometimes raises `SIG_RAISE` while holding the blocks: a
/// nested handler then runs at once, before this one checks and frees them.
fn handler_work<const N: usize, S: Storm<N>>(may_raise: bool) {
    let mut rng = Rng(C.next_tag.load(Ordering::Relaxed) as u64);
    let mut blocks: [Option<Block>; 4] = [None; 4];
    let n = 1 + rng.below(4);
    for slot in blocks.iter_mut().take(n) {
        let size = S::handler_size(&mut rng);
        let (via, align) = pick_via(&mut rng, 3, 6);
        *slot = alloc::<N, S>(None, size, align, via);
    }
    if rng.below(4) == 0 {
        let new_size = S::handler_resize(&mut rng);
        blocks[0] = blocks[0]
            .take()
            .and_then(|b| resize::<N, S>(None, b, new_size));
    }
    if may_raise && rng.below(8) == 0 {
        // SAFETY: `raise` is async-signal-safe; `SIG_RAISE`'s handler is `on_signal`.
        unsafe { libc::raise(SIG_RAISE) };
    }
    // Free in an order of the rng's choosing.
    let first = rng.below(n);
    for i in 0..n {
        if let Some(b) = blocks[(first + i) % n].take() {
            free::<N, S>(None, b);
        }
    }
}

// ---------------------------------------------------------------------------------
// Installing handlers, timers, the storm.

/// Installs `on_signal` for `sig`; returns the previous action.
/// Installs `on_signal` for `sig`; returns the previous action.
fn install<const N: usize, S: Storm<N>>(sig: libc::c_int, nested: bool) -> libc::sigaction {
    if nested {
        // Each signal interrupts the others' handlers; kills and raises interrupt their
        // own kind too (the killer and `MAX_NEST` bound them). The timer stays
        // deferred: nothing bounds its rate.
        let flags = if sig == SIG_TIMER {
            0
        } else {
            libc::SA_NODEFER
        };
        signal::install(sig, on_signal::<N, S>, flags, &[])
    } else {
        // No storm signal interrupts a running handler.
        signal::install(sig, on_signal::<N, S>, 0, &[SIG_TIMER, SIG_KILL, SIG_RAISE])
    }
}

/// What the storm has done so far, for a watchdog's report: `"; worker ops done: [..],
/// handler runs: N"`.
pub fn progress() -> String {
    format!(
        "; worker ops done: {:?}, handler runs: {}",
        WORKER
            .iter()
            .map(|w| w.ops.load(Ordering::Relaxed))
            .collect::<Vec<_>>(),
        get(&C.handler_runs),
    )
}

fn worker<const N: usize, S: Storm<N>>(i: usize) {
    let w = &WORKER[i];
    // Its working set, from the system allocator before the storm reaches it.
    let mut live: Vec<Option<Block>> = vec![None; S::WORKER_SLOTS];
    // SAFETY: no preconditions.
    w.thread
        .store(unsafe { libc::pthread_self() } as usize, Ordering::Relaxed);
    // ORDERING: Release pairs with the killer's Acquire: it reads `w.thread` after.
    READY.fetch_add(1, Ordering::Release);
    let timer = Timer::start(SIG_TIMER, S::TIMER_INTERVAL_NS);

    let mut rng = Rng(mix(i as u64 + S::WORKER_SEED));
    let mut held = 0usize;
    for _ in 0..S::OPS_PER_WORKER {
        w.ops.fetch_add(1, Ordering::Relaxed);
        let slot = &mut live[rng.below(S::WORKER_SLOTS)];
        match slot.take() {
            None => {
                let size = S::worker_size(&mut rng);
                let (via, align) = pick_via(&mut rng, 0, 13);
                *slot = alloc::<N, S>(Some(w), size, align, via);
                held += slot.map_or(0, |b| b.size);
                w.peak_live.fetch_max(held, Ordering::Relaxed);
            }
            Some(b) if rng.below(4) == 0 => {
                held -= b.size;
                *slot = resize::<N, S>(Some(w), b, S::worker_size(&mut rng));
                held += slot.map_or(0, |b| b.size);
            }
            Some(b) => {
                held -= b.size;
                free::<N, S>(Some(w), b);
            }
        }
    }
    for b in live.iter_mut().filter_map(Option::take) {
        free::<N, S>(Some(w), b);
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

fn killer(pause: Duration) -> usize {
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
        thread::sleep(pause);
    }
    // Set before any assertion: the workers wait for it.
    KILLER_STOPPED.store(true, Ordering::Release);
    assert_eq!(failed, 0, "pthread_kill failed");
    sent.iter().sum()
}

/// Runs one storm, with nested handlers or masked ones; returns the kills sent. The
/// caller holds the watchdog and checks the counters.
pub fn run<const N: usize, S: Storm<N>>(nested: bool) -> usize {
    for c in [
        &C.overlaps,
        &C.corrupt_bytes,
        &C.bad_blocks,
        &C.out_of_memory,
        &C.handler_runs,
        &C.interrupted_alloc,
        &C.nested,
        &C.max_depth,
        &C.allocated,
        &C.freed,
    ] {
        c.store(0, Ordering::Relaxed);
    }
    READY.store(0, Ordering::Relaxed);
    DONE.store(0, Ordering::Relaxed);
    KILLER_STOPPED.store(false, Ordering::Relaxed);
    for w in &WORKER {
        for c in [&w.thread, &w.kills_entered, &w.ops, &w.peak_live, &w.depth] {
            c.store(0, Ordering::Relaxed);
        }
    }

    let old = [SIG_TIMER, SIG_KILL, SIG_RAISE].map(|sig| (sig, install::<N, S>(sig, nested)));
    RAISE.store(nested, Ordering::Relaxed);
    let sent = thread::scope(|s| {
        for i in 0..WORKERS {
            s.spawn(move || worker::<N, S>(i));
        }
        s.spawn(|| killer(S::KILL_PAUSE)).join().unwrap()
    });
    // Every worker has exited: no signal is pending on any of them, and no handler runs.
    RAISE.store(false, Ordering::Relaxed);
    for (sig, old) in &old {
        signal::restore(*sig, old);
    }
    for w in &WORKER {
        w.thread.store(0, Ordering::Relaxed);
    }
    sent
}

/// The assertions every storm makes once [`run`] has returned: no overlap, corruption,
/// bad block or null (`oom`: why none may be); handlers ran and interrupted allocator
/// calls; every block verified and freed; handlers nested within their bound, or
/// (masked) not at all.
pub fn assert_sound(nested: bool, oom: &str) {
    assert_eq!(
        get(&C.overlaps),
        0,
        "granules owned by two live blocks at once"
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
    assert_eq!(get(&C.out_of_memory), 0, "{oom}");
    assert!(
        get(&C.handler_runs) > 100,
        "the handler ran only {} times",
        get(&C.handler_runs)
    );
    assert!(
        get(&C.interrupted_alloc) > 0,
        "no handler interrupted an allocator call"
    );
    assert_eq!(
        get(&C.allocated),
        get(&C.freed),
        "every block verified and freed"
    );
    if nested {
        assert!(get(&C.nested) > 0, "handlers never nested");
        assert!(get(&C.max_depth) >= 2, "handlers never nested");
        // Raises and kills stop below `MAX_NEST`; a kill in flight, then a timer, can
        // each add one more.
        assert!(
            get(&C.max_depth) <= MAX_NEST + 2,
            "nesting beyond its bound"
        );
    } else {
        assert_eq!(get(&C.nested), 0, "masked handlers nested");
    }
}
