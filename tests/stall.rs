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

use std::io::Write;
use std::thread;
use std::time::Duration;

mod common;
#[path = "stall/park.rs"]
mod park;

use common::pattern::{self, verify};
use common::{watchdog, Rng};
use park::{gate, hook, parked_thread, GateState, Parked, Point, GATE};
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

/// A block the test owns: pointer, size, pattern seed.
#[derive(Clone, Copy)]
struct Block(*mut u8, usize, u64);

// SAFETY: a block is exclusively owned memory; handing it to another thread moves
// that ownership.
unsafe impl Send for Block {}

fn take(a: &Heap, size: usize, seed: u64) -> Block {
    let p = a.malloc(size);
    assert!(!p.is_null(), "malloc({size}) failed");
    pattern::fill(p, size, seed);
    Block(p, size, seed)
}

fn give(a: &Heap, b: Block, what: &str) {
    verify(b.0, b.1, b.2, what);
    // SAFETY: a live block of `a`, freed once.
    unsafe { a.free(b.0) };
}

/// One worker: `ops` rounds of free-a-random-block, alloc 16..4096 B, fill. Every
/// block is verified before it is freed.
fn worker(a: &Heap, me: usize, ops: usize) -> usize {
    let mut rng = Rng(me as u64 + 1);
    let mut live: [Option<Block>; WINDOW] = [None; WINDOW];
    for n in 0..ops {
        let r = rng.next();
        let k = (r % WINDOW as u64) as usize;
        if let Some(b) = live[k].take() {
            give(a, b, "worker");
        }
        // Log-uniform sizes: each class from 16 B to 2 KiB, and one-chunk spans.
        let shift = 4 + (r >> 8) % 9;
        let size = ((1u64 << shift) + (r >> 16) % (1u64 << shift)).min(4096) as usize;
        let seed = (n * WORKERS + me) as u64;
        live[k] = Some(take(a, size, seed));
    }
    for b in live.into_iter().flatten() {
        give(a, b, "worker");
    }
    ops
}

/// Parks one thread at each of `points` (in order), runs the workers, releases the
/// parked threads, then checks the heap. Returns the workers' operations.
fn stall(points: &[Point]) -> usize {
    let heap = Fresh::new();
    let a = heap.get();
    // The parking points name atomic steps of the shared layer: with the `percpu`
    // feature a per-CPU cache would take a free first, with no atomic step to park at
    // (a thread stopped inside a restartable sequence is tests/percpu.rs's ptrace
    // test). A no-op without it.
    a.disable_percpu();
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
    let guard = watchdog(
        format!(
            "the threads, while others were parked at {names:?} (a stalled thread blocks \
             the others: I4 broken)"
        ),
        WATCHDOG,
        String::new,
    );
    let (ops, reports) = thread::scope(|s| {
        let mut parked = Vec::new();
        for (k, &point) in points.iter().enumerate() {
            parked.push(s.spawn(move || {
                let run = || parked_thread(a, point, u64::MAX - k as u64);
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
        pattern::fill(p, 8, 0x5A);
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
