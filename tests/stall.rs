//! Stalled threads never block others (I2, I4).
//!
//! Threads are parked *inside* the allocator, between two of its atomic steps, by the
//! `hooks` feature's step hook: a thread arms a thread-local park condition, starts an
//! operation, and when the condition holds before some atomic step the hook blocks it
//! on a `Condvar` until the test releases it. That is what a preempted thread (or one
//! stopped in a debugger, or interrupted by a long signal handler) looks like to
//! everyone else. With 1, 2 and 4 threads parked, two worker threads then each complete
//! their operations (alloc 16..4096 B, fill, verify, free) on the same heap; a watchdog
//! aborts the process if they do not finish, since a lock-free allocator must never
//! make them wait. Then the parked threads are released, finish their operations, and
//! everything is freed: every block kept its contents, nothing is in use, the heap can
//! be filled to its capacity again, and one span of the whole heap fits.
//!
//! The park points ([`Point`]), each found by watching the heap between steps rather
//! than by a fixed step number, so they hold whatever path the operation takes:
//! - **mid-pop**: a 64 B `malloc` has taken a chunk out of an active slot and popped a
//!   block, but not yet put the chunk back (parked before the put-back CAS). Step 4 on
//!   the fast path: `[Rmw (slot swap), Load (private), Load (carve), Store (carve)]`.
//!   Four of them hold four chunks of one class (every slot of a class when the stack
//!   hashes spread them), the case that stops AO_malloc's pops.
//! - **mid-free**: a 64 B `free` has read the anchor but not made its push CAS (parked
//!   before the first RMW: `[Load, Load]`). Workers keep changing that anchor.
//! - **mid-free-retire**: the same, for the last used block of a `PARTIAL` 2 KiB chunk:
//!   the CAS it is about to make would empty and retire the chunk. Workers claim the
//!   chunk meanwhile, so the CAS must fail and the free redo its work.
//! - **mid-refill**: a 1 KiB `malloc` in a class with no chunk has claimed a free chunk
//!   in the used map (parked at the first step after the used-map count grew) but not
//!   formatted it.
//! - **mid-span-claim**: a 70-chunk `malloc` has claimed the first word of its run in
//!   the used map but not the second (parked at the first step after the used-map count
//!   grew; the test checks that fewer than 70 chunks were claimed then).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

mod common;

use sigalloc::{SigAlloc, Step, CHUNK_SIZE};

const HEAP: usize = 8 << 20;
type Heap = SigAlloc<HEAP>;

/// Operations each worker completes while threads are parked.
fn ops_per_worker() -> usize {
    if cfg!(debug_assertions) {
        50_000
    } else {
        100_000
    }
}
const WORKERS: usize = 2;
/// Blocks a worker keeps live at once.
const WINDOW: usize = 32;
const SPAN_CHUNKS: usize = 70;
/// Index of the 64 B class in `Stats::classes`.
const CLASS_64: usize = 2;
/// Hang detector, not a timing assertion: the workers' whole run must end by then.
const WATCHDOG: Duration = Duration::from_secs(120);

type Fresh = common::Fresh<HEAP>;

// SAFETY: `Fresh` is an owning pointer to a `SigAlloc`, which is `Sync`: sharing
// `&Fresh` across threads only shares `&SigAlloc`.
unsafe impl Sync for Fresh {}

/// Where a thread parks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Point {
    Pop,
    Free,
    FreeRetire,
    Refill,
    SpanClaim,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::Pop => "mid-pop",
            Point::Free => "mid-free",
            Point::FreeRetire => "mid-free-retire",
            Point::Refill => "mid-refill",
            Point::SpanClaim => "mid-span-claim",
        }
    }
}

/// The test that holds before each step of an armed thread; the thread parks at the
/// first step where it holds.
#[derive(Clone, Copy, Debug)]
enum Cond {
    /// The step is a read-modify-write.
    Rmw,
    /// The 64 B class has more blocks in use than this.
    BlocksInUse64(usize),
    /// The used map has more chunks than this.
    ChunksUsed(usize),
}

/// This thread's park state.
struct ParkState {
    cond: Cell<Option<Cond>>,
    heap: Cell<*const Heap>,
    in_hook: Cell<bool>,
    steps: RefCell<Vec<Step>>,
    /// Chunks in use when the thread parked.
    chunks_at_park: Cell<usize>,
    parked: Cell<bool>,
    /// Steps taken since the thread was released, while still inside the operation.
    after: Cell<Option<usize>>,
}

thread_local! {
    static PARK: ParkState = const {
        ParkState {
            cond: Cell::new(None),
            heap: Cell::new(std::ptr::null()),
            in_hook: Cell::new(false),
            steps: RefCell::new(Vec::new()),
            chunks_at_park: Cell::new(0),
            parked: Cell::new(false),
            after: Cell::new(None),
        }
    };
}

struct GateState {
    parked: usize,
    missed: usize,
    released: bool,
}

/// Where parked threads wait, and how the test learns that they have parked.
struct Gate {
    state: Mutex<GateState>,
    cv: Condvar,
}

static GATE: Gate = Gate {
    state: Mutex::new(GateState {
        parked: 0,
        missed: 0,
        released: false,
    }),
    cv: Condvar::new(),
};

fn gate() -> MutexGuard<'static, GateState> {
    GATE.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The step hook: for an armed thread, records the step and parks when the condition
/// holds. Other threads (the workers) return at once.
fn hook(kind: Step) {
    PARK.with(|p| {
        let Some(cond) = p.cond.get() else {
            if let Some(n) = p.after.get() {
                p.after.set(Some(n + 1));
            }
            return;
        };
        if p.in_hook.get() {
            // Our own `stats()` call below.
            return;
        }
        p.in_hook.set(true);
        // SAFETY: `heap` is set to a live allocator whenever `cond` is armed (see
        // `arm`), and that allocator outlives the thread.
        let heap = unsafe { &*p.heap.get() };
        let hit = match cond {
            Cond::Rmw => kind == Step::Rmw,
            Cond::BlocksInUse64(n) => heap.stats().classes[CLASS_64].blocks_in_use > n,
            Cond::ChunksUsed(n) => heap.stats().chunks_used > n,
        };
        if hit {
            p.cond.set(None);
            p.parked.set(true);
            p.chunks_at_park.set(heap.stats().chunks_used);
            p.after.set(Some(0));
            let mut g = gate();
            g.parked += 1;
            GATE.cv.notify_all();
            while !g.released {
                g = GATE.cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
        } else {
            p.steps.borrow_mut().push(kind);
        }
        p.in_hook.set(false);
    });
}

/// Arms this thread to park at the first step where `cond` holds.
fn arm(heap: &Heap, cond: Cond) {
    PARK.with(|p| {
        p.heap.set(heap);
        p.steps.borrow_mut().clear();
        p.parked.set(false);
        p.cond.set(Some(cond));
    });
}

/// What an armed thread saw.
struct Disarmed {
    parked: bool,
    /// The steps before it parked.
    steps: Vec<Step>,
    /// Chunks in use when it parked.
    chunks_at_park: usize,
    /// Steps it took after it was released to finish the operation.
    after: usize,
}

/// Disarms this thread; returns what it saw.
fn disarm() -> Disarmed {
    PARK.with(|p| {
        p.cond.set(None);
        Disarmed {
            parked: p.parked.get(),
            steps: p.steps.take(),
            chunks_at_park: p.chunks_at_park.get(),
            after: p.after.take().unwrap_or(0),
        }
    })
}

/// Fills `n` bytes at `p` with `f`.
fn fill(p: *mut u8, n: usize, f: u8) {
    // SAFETY: `p` is a live block of at least `n` bytes that the caller owns.
    unsafe { std::ptr::write_bytes(p, f, n) };
}

/// Panics unless `n` bytes at `p` all equal `f`.
fn verify(p: *mut u8, n: usize, f: u8, what: &str) {
    // SAFETY: `p` is a live block of at least `n` bytes that the caller owns.
    let s = unsafe { std::slice::from_raw_parts(p, n) };
    if let Some(i) = s.iter().position(|&x| x != f) {
        panic!(
            "{what}: block {p:p}+{n}: byte {i} is {:#x}, expected {f:#x} (overlap?)",
            s[i]
        );
    }
}

/// A block the test owns: pointer, size, fill byte.
#[derive(Clone, Copy)]
struct Block(*mut u8, usize, u8);

// SAFETY: a block is exclusively owned memory; handing it to another thread moves
// that ownership.
unsafe impl Send for Block {}

fn take(a: &Heap, size: usize, f: u8) -> Block {
    let p = a.malloc(size);
    assert!(!p.is_null(), "malloc({size}) failed");
    fill(p, size, f);
    Block(p, size, f)
}

fn give(a: &Heap, b: Block, what: &str) {
    verify(b.0, b.1, b.2, what);
    // SAFETY: a live block of `a`, freed once.
    unsafe { a.free(b.0) };
}

/// What a parked thread reports.
struct Parked {
    point: Point,
    steps: Vec<Step>,
    claimed_at_park: usize,
    after: usize,
}

/// A thread that sets up, parks at `point` inside one operation, and when released
/// finishes it and frees everything it holds.
fn parked_thread(a: &Heap, point: Point, tag: u8) -> Parked {
    let mut held = Vec::new();
    let what = point.name();
    // Set up (unarmed), then arm and start the operation.
    let (seen, chunks_before) = match point {
        Point::Pop => {
            // A first block leaves a chunk in this thread's slot.
            held.push(take(a, 64, tag));
            let before = a.stats();
            arm(
                a,
                Cond::BlocksInUse64(before.classes[CLASS_64].blocks_in_use),
            );
            let b = take(a, 64, tag);
            held.push(b);
            (disarm(), before.chunks_used)
        }
        Point::Free => {
            let b = take(a, 64, tag);
            held.push(take(a, 64, tag));
            let before = a.stats().chunks_used;
            arm(a, Cond::Rmw);
            give(a, b, what);
            (disarm(), before)
        }
        Point::FreeRetire => {
            // 2 KiB blocks, two per chunk: the third allocation finds the first chunk
            // carved out and marks it FULL; freeing its second block makes it PARTIAL
            // with one block in use, which the armed free would empty.
            let x0 = take(a, 2048, tag);
            let x1 = take(a, 2048, tag);
            held.push(take(a, 2048, tag));
            give(a, x1, what);
            let before = a.stats().chunks_used;
            arm(a, Cond::Rmw);
            give(a, x0, what);
            (disarm(), before)
        }
        Point::Refill => {
            let before = a.stats().chunks_used;
            arm(a, Cond::ChunksUsed(before));
            held.push(take(a, 1024, tag));
            (disarm(), before)
        }
        Point::SpanClaim => {
            let before = a.stats().chunks_used;
            arm(a, Cond::ChunksUsed(before));
            held.push(take(a, SPAN_CHUNKS * CHUNK_SIZE, tag));
            (disarm(), before)
        }
    };
    let Disarmed {
        parked,
        steps,
        chunks_at_park,
        after,
    } = seen;
    assert!(parked, "{what}: the park condition never held ({steps:?})");
    let claimed_at_park = chunks_at_park - chunks_before;
    if point == Point::SpanClaim {
        assert!(
            (1..SPAN_CHUNKS).contains(&claimed_at_park),
            "mid-span-claim parked with {claimed_at_park} of {SPAN_CHUNKS} chunks claimed"
        );
    }
    for b in held {
        give(a, b, what);
    }
    Parked {
        point,
        steps,
        claimed_at_park,
        after,
    }
}

/// One worker: `ops` rounds of free-a-random-block, alloc 16..4096 B, fill. Every
/// block is verified before it is freed.
fn worker(a: &Heap, me: usize, ops: usize) -> usize {
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64 ^ (me as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F);
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut live: [Option<Block>; WINDOW] = [None; WINDOW];
    for n in 0..ops {
        let r = next();
        let k = (r % WINDOW as u64) as usize;
        if let Some(b) = live[k].take() {
            give(a, b, "worker");
        }
        // Log-uniform sizes: each class from 16 B to 2 KiB, and one-chunk spans.
        let shift = 4 + (r >> 8) % 9;
        let size = ((1u64 << shift) + (r >> 16) % (1u64 << shift)).min(4096) as usize;
        let f = (n % 127) as u8 * 2 + 1 + me as u8;
        live[k] = Some(take(a, size, f));
    }
    for b in live.into_iter().flatten() {
        give(a, b, "worker");
    }
    ops
}

/// Aborts the process unless the returned sender is dropped within [`WATCHDOG`].
fn watchdog(what: String) -> mpsc::Sender<()> {
    let (done, wait) = mpsc::channel::<()>();
    thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(WATCHDOG) {
            // Straight to stderr: the harness's capture would swallow `eprintln!`
            // (spawned threads inherit it), and we are about to abort.
            let _ = writeln!(
                std::io::stderr(),
                "watchdog: the threads did not finish within {WATCHDOG:?} while {what} \
                 (a stalled thread blocks the others: I4 broken)"
            );
            std::process::abort();
        }
    });
    done
}

/// Parks one thread at each of `points` (in order), runs the workers, releases the
/// parked threads, then checks the heap. Returns the workers' operations.
fn stall(points: &[Point]) -> usize {
    let heap = Fresh::new();
    let a = heap.get();
    {
        let mut g = gate();
        *g = GateState {
            parked: 0,
            missed: 0,
            released: false,
        };
    }
    let names: Vec<_> = points.iter().map(|p| p.name()).collect();
    // Covers parking too: a thread that hangs before it parks is a bug as well.
    let guard = watchdog(format!("parked at {names:?}"));
    let (ops, reports) = thread::scope(|s| {
        let mut parked = Vec::new();
        for (k, &point) in points.iter().enumerate() {
            parked.push(s.spawn(move || {
                let run = || parked_thread(a, point, 0xA0 + k as u8);
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                    Ok(r) => r,
                    Err(e) => {
                        // Do not leave the test waiting for a park that never comes.
                        gate().missed += 1;
                        GATE.cv.notify_all();
                        std::panic::resume_unwind(e)
                    }
                }
            }));
            // Wait for it to park (or fail to) before the next one starts, so each
            // sets up and parks against a known heap.
            let mut g = gate();
            while g.parked + g.missed <= k {
                g = GATE.cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            if g.missed > 0 {
                g.released = true;
                GATE.cv.notify_all();
                break;
            }
        }
        let workers: Vec<_> = (0..WORKERS)
            .map(|me| s.spawn(move || worker(a, me, ops_per_worker())))
            .collect();
        let ops: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        {
            let mut g = gate();
            g.released = true;
            GATE.cv.notify_all();
        }
        let reports: Vec<Parked> = parked.into_iter().map(|t| t.join().unwrap()).collect();
        (ops, reports)
    });
    drop(guard);

    let st = a.stats();
    assert_eq!(
        st.bytes_in_use, 0,
        "parked at {names:?}: bytes in use after everything was freed\n{st}"
    );
    // The heap still serves a fill to capacity: 2 KiB blocks until null.
    let mut fill_blocks = Vec::new();
    loop {
        let p = a.malloc(2048);
        if p.is_null() {
            break;
        }
        fill(p, 8, 0x5A);
        fill_blocks.push(p);
    }
    let filled = fill_blocks.len() * 2048;
    assert!(
        filled + 16 * CHUNK_SIZE >= st.heap_bytes,
        "parked at {names:?}: the heap served only {filled} of {} bytes after the stall",
        st.heap_bytes
    );
    for p in fill_blocks {
        verify(p, 8, 0x5A, "fill");
        // SAFETY: a live block of `a`, freed once.
        unsafe { a.free(p) };
    }
    // Every chunk is back: one span of the whole heap fits.
    let all = a.malloc(st.heap_bytes);
    assert!(!all.is_null(), "parked at {names:?}: chunks were lost");
    // SAFETY: the block just allocated.
    unsafe { a.free(all) };
    assert_eq!(a.stats().bytes_in_use, 0);

    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "stall: {} parked threads, {ops} operations by others (heap refilled to {} of {} KiB)",
        points.len(),
        filled / 1024,
        st.heap_bytes / 1024
    );
    for r in reports {
        let _ = writeln!(
            err,
            "stall:   {} parked before step {} (after [{}]), {} more steps after release{}",
            r.point.name(),
            r.steps.len(),
            runs(&r.steps),
            r.after,
            if r.point == Point::SpanClaim {
                format!(" ({} of {SPAN_CHUNKS} chunks claimed)", r.claimed_at_park)
            } else {
                String::new()
            }
        );
    }
    ops
}

/// Step kinds, run-length encoded: `4 Rmw, 33 Load, Rmw`.
fn runs(steps: &[Step]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < steps.len() {
        let n = steps[i..].iter().take_while(|&&k| k == steps[i]).count();
        out.push(if n == 1 {
            format!("{:?}", steps[i])
        } else {
            format!("{n} {:?}", steps[i])
        });
        i += n;
    }
    out.join(", ")
}

/// All scenarios share the hook and the gate, so they run one at a time.
#[test]
fn stalled_threads_never_block_others() {
    sigalloc::set_step_hook(Some(hook));
    use Point::*;
    let single = [Pop, Free, FreeRetire, Refill, SpanClaim];
    for p in single {
        stall(&[p]);
    }
    stall(&[Pop, Free]);
    stall(&[Refill, SpanClaim]);
    stall(&[FreeRetire, Pop]);
    stall(&[Pop, Pop, Pop, Pop]);
    stall(&[Pop, FreeRetire, Refill, SpanClaim]);
}
