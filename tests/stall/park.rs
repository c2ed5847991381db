//! Parking a thread inside the allocator: the step hook, the park conditions, the gate
//! parked threads wait at, and the parked threads' own operations (see the park points
//! in the file's docs).

use std::cell::{Cell, RefCell};
use std::sync::{Condvar, Mutex, MutexGuard};

use sigalloc::{Step, CHUNK_SIZE};

use super::{give, take, Heap, CLASS_64, SPAN_CHUNKS};

/// Where a thread parks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Point {
    Pop,
    Free,
    FreeRetire,
    Refill,
    SpanClaim,
}

impl Point {
    pub(crate) fn name(self) -> &'static str {
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

pub(crate) struct GateState {
    pub(crate) parked: usize,
    pub(crate) missed: usize,
    pub(crate) released: bool,
}

/// Where parked threads wait, and how the test learns that they have parked.
pub(crate) struct Gate {
    state: Mutex<GateState>,
    pub(crate) cv: Condvar,
}

pub(crate) static GATE: Gate = Gate {
    state: Mutex::new(GateState {
        parked: 0,
        missed: 0,
        released: false,
    }),
    cv: Condvar::new(),
};

pub(crate) fn gate() -> MutexGuard<'static, GateState> {
    GATE.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The step hook: for an armed thread, records the step and parks when the condition
/// holds. Other threads (the workers) return at once.
pub(crate) fn hook(kind: Step) {
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

/// What a parked thread reports.
pub(crate) struct Parked {
    pub(crate) point: Point,
    pub(crate) steps: Vec<Step>,
    pub(crate) claimed_at_park: usize,
    pub(crate) after: usize,
}

/// A thread that sets up, parks at `point` inside one operation, and when released
/// finishes it and frees everything it holds.
pub(crate) fn parked_thread(a: &Heap, point: Point, tag: u64) -> Parked {
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
