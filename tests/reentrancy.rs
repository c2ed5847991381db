//! Reentrancy injection: what a signal handler can do, at every atomic step.
//!
//! With the `hooks` feature the allocator calls a process-wide step hook before every
//! atomic operation (load, store, read-modify-write). Here the hook runs a whole
//! allocator operation B on the *same* allocator, on the same thread, between two atomic
//! steps of an operation A — exactly what a signal handler that interrupts A does — and
//! inside B, at one of its steps, a third operation C (three levels, like nested
//! `SA_NODEFER` handlers).
//!
//! For each operation A (see [`Scenario`]: small allocs in the nested ops' class and in
//! another, refills from a fresh class and from an exhausted chunk, frees that leave a
//! chunk active, turn it `FULL -> PARTIAL`, or empty and retire it, reallocs in place and
//! moving, a span grown in place, span alloc and span free):
//! 1. A runs once from its starting state, uninjected, and its atomic steps are counted
//!    (`S`); the run also checks that A really takes the path the scenario names (how
//!    many chunks it claims or retires, how many RMWs it makes).
//! 2. For every step `i < S` and every nested operation B (see [`Op`]): the same starting
//!    state is rebuilt on a fresh allocator, B runs at step `i` of A, and its own steps
//!    are counted (`S_B`: B runs in the state A left at step `i`).
//! 3. For every step `j < S_B` and every nested operation C: again from scratch, B runs
//!    at step `i` of A and C at step `j` of B. (`SIGALLOC_QUICK=1` runs one C per
//!    `(i, j)`, rotating, instead: ~7x fewer runs.)
//!
//! Every run checks that each nested operation finished within [`BUDGET`] of its own
//! atomic steps (it must never wait for A, which is frozen: a wait would spin to the
//! budget and fail), that A finished too, that no two live blocks overlap and every
//! block kept its fill pattern (the reference model in `common`), and, once everything
//! is freed, that `bytes_in_use` is 0 and one span of the whole heap can be allocated
//! (no chunk lost, none left listed or owned).
//!
//! The injection is gated by thread-locals, so only the thread that armed it injects;
//! the hook body may use `std` freely (the test's global allocator is the system one,
//! which this same-thread injection never interrupts).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::cell::{Cell, RefCell};
use std::io::Write;

use common::{check_fill, Live, Model};
use sigalloc::{SigAlloc, Step, CHUNK_SIZE};

/// Each run gets a fresh heap of this size: 63 chunks beside the side table, enough for
/// any scenario plus two nested spans, small enough to zero in microseconds.
const HEAP: usize = 256 << 10;
type Heap = SigAlloc<HEAP>;

/// The most atomic steps one operation may take. A nested operation that waited for
/// the frozen one would spin here and fail instead of hanging.
const BUDGET: u64 = 10_000;

/// Operation levels: A, B (injected into A), C (injected into B).
const LEVELS: usize = 3;

type Fresh = common::Fresh<HEAP>;

/// One run's world: the allocator, the model of its live blocks, the blocks nested
/// operations may free or reallocate.
struct Ctx<'a> {
    a: &'a Heap,
    model: RefCell<Model>,
    /// Live blocks (also in the model) kept for nested frees and reallocs; the last one
    /// goes first.
    victims: RefCell<Vec<*mut u8>>,
    fill: Cell<u8>,
}

impl<'a> Ctx<'a> {
    fn new(a: &'a Heap) -> Self {
        Ctx {
            a,
            model: RefCell::new(Model::new()),
            victims: RefCell::new(Vec::new()),
            fill: Cell::new(0),
        }
    }

    fn next_fill(&self) -> u8 {
        let f = self.fill.get() % 251 + 1;
        self.fill.set(f);
        f
    }

    /// Allocates, checks and fills a block, recording it in the model.
    fn alloc(&self, size: usize) -> *mut u8 {
        let p = self.a.malloc(size);
        assert!(!p.is_null(), "malloc({size}) failed on a roomy heap");
        self.model
            .borrow_mut()
            .on_alloc(p, size, 16, false, self.next_fill());
        p
    }

    /// Allocates a block that nested operations may free or reallocate.
    fn victim(&self, size: usize) -> *mut u8 {
        let p = self.alloc(size);
        self.victims.borrow_mut().push(p);
        p
    }

    /// Checks a block's fill, forgets it and frees it.
    fn free(&self, p: *mut u8) {
        self.model.borrow_mut().on_free(p);
        // SAFETY: `p` is a live block of `self.a` (the model knew it), freed once.
        unsafe { self.a.free(p) };
    }

    /// Forgets a block that is about to be reallocated, after checking it.
    fn take(&self, p: *mut u8) -> Live {
        self.model.borrow_mut().on_free(p)
    }

    /// Records the result of reallocating `old` to `size` bytes.
    fn reallocated(&self, old: Live, new: *mut u8, size: usize) {
        assert!(!new.is_null(), "realloc to {size} failed on a roomy heap");
        check_fill(new, old.size.min(size), old.fill);
        self.model
            .borrow_mut()
            .on_alloc(new, size, 16, false, self.next_fill());
    }
}

/// A nested operation (B or C): what a signal handler does.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// `malloc`, fill, verify, `free`.
    AllocFree(usize),
    /// `malloc` and fill; the block stays live until the end of the run.
    Alloc(usize),
    /// Frees the most recent victim (a block allocated before A began).
    FreeVictim,
    /// Reallocates the most recent victim to this size; it stays a victim.
    Realloc(usize),
}

fn run_op(cx: &Ctx<'_>, op: Op) {
    match op {
        Op::AllocFree(n) => {
            let p = cx.alloc(n);
            cx.free(p);
        }
        Op::Alloc(n) => {
            cx.alloc(n);
        }
        Op::FreeVictim => {
            let p = cx.victims.borrow_mut().pop().expect("no victim left");
            cx.free(p);
        }
        Op::Realloc(n) => {
            let p = cx.victims.borrow_mut().pop().expect("no victim left");
            let old = cx.take(p);
            // SAFETY: `p` is a live block of `cx.a`; the model no longer uses it.
            let q = unsafe { cx.a.realloc(p, n) };
            cx.reallocated(old, q, n);
            cx.victims.borrow_mut().push(q);
        }
    }
}

/// The nested operations tried at every step: both small classes (A's own and
/// another), alloc-only, a free and a realloc of blocks that predate A, and a span.
fn nested_ops(class: usize) -> [Op; 7] {
    [
        Op::AllocFree(16),
        Op::AllocFree(class),
        Op::Alloc(class),
        Op::Alloc(100),
        Op::FreeVictim,
        Op::Realloc(300),
        Op::AllocFree(2 * CHUNK_SIZE + 100),
    ]
}

/// What operation A does to its target.
#[derive(Clone, Copy, Debug)]
enum Action {
    Alloc(usize),
    Free,
    Realloc(usize),
}

/// The interrupted operation A, with the starting state it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// 64 B from the active chunk in its slot (the nested ops' own class).
    AllocSame,
    /// 256 B from its active chunk, while the nested ops use other classes.
    AllocOther,
    /// 256 B when the active chunk's private list and uncarved blocks are used up but
    /// frees have been pushed on its shared list: A takes the whole list with one CAS
    /// (nested frees push onto that same list).
    AllocTakeShared,
    /// 512 B when the active chunk is carved out and another chunk is `PARTIAL`: A
    /// marks the active one `FULL`, takes the partial listing and claims the chunk
    /// (`PARTIAL -> ACTIVE`) while nested frees push onto it.
    AllocClaimPartial,
    /// The class has never been used: slots and partial map empty, A claims and
    /// formats a fresh chunk.
    RefillFresh,
    /// The class's only chunk is carved out: A finds it exhausted, marks it `FULL` and
    /// claims a fresh chunk.
    RefillExhausted,
    /// Frees a block of the chunk sitting in an active slot.
    FreeActive,
    /// Frees a block of a `FULL` chunk: it becomes `PARTIAL` and A lists it.
    FreeFullToPartial,
    /// Frees the last used block of a `PARTIAL` chunk: it becomes `EMPTY` and A
    /// retires it to the free map.
    FreeRetire,
    /// 100 B -> 120 B: same class, in place.
    ReallocInPlace,
    /// 100 B -> 1000 B: a new block in a fresh class, copy, free.
    ReallocMove,
    /// A 2-chunk span grown to 3 chunks in place (the next chunk is free).
    ReallocSpanGrow,
    /// A 3-chunk span.
    SpanAlloc,
    /// Frees a 3-chunk span.
    SpanFree,
}

const SCENARIOS: [Scenario; 14] = [
    Scenario::AllocSame,
    Scenario::AllocOther,
    Scenario::AllocTakeShared,
    Scenario::AllocClaimPartial,
    Scenario::RefillFresh,
    Scenario::RefillExhausted,
    Scenario::FreeActive,
    Scenario::FreeFullToPartial,
    Scenario::FreeRetire,
    Scenario::ReallocInPlace,
    Scenario::ReallocMove,
    Scenario::ReallocSpanGrow,
    Scenario::SpanAlloc,
    Scenario::SpanFree,
];

const SPAN3: usize = 3 * CHUNK_SIZE - 100;

impl Scenario {
    /// The block size of A's class: the "same class" nested operations use it.
    fn class(self) -> usize {
        use Scenario::*;
        match self {
            AllocSame | FreeActive => 64,
            AllocOther | AllocTakeShared => 256,
            AllocClaimPartial => 512,
            RefillFresh | RefillExhausted => 1024,
            FreeFullToPartial | FreeRetire => 512,
            ReallocInPlace | ReallocMove => 128,
            ReallocSpanGrow | SpanAlloc | SpanFree => 2048,
        }
    }

    fn action(self) -> Action {
        use Scenario::*;
        match self {
            AllocSame => Action::Alloc(64),
            AllocOther | AllocTakeShared => Action::Alloc(256),
            AllocClaimPartial => Action::Alloc(512),
            RefillFresh | RefillExhausted => Action::Alloc(1024),
            FreeActive | FreeFullToPartial | FreeRetire | SpanFree => Action::Free,
            ReallocInPlace => Action::Realloc(120),
            ReallocMove => Action::Realloc(1000),
            ReallocSpanGrow => Action::Realloc(SPAN3),
            SpanAlloc => Action::Alloc(SPAN3),
        }
    }

    /// How A alone changes the number of chunks in use: shows it took the named path.
    fn chunk_delta(self) -> isize {
        use Scenario::*;
        match self {
            RefillFresh | RefillExhausted | ReallocMove | ReallocSpanGrow => 1,
            FreeRetire => -1,
            SpanAlloc => 3,
            SpanFree => -3,
            AllocSame | AllocOther | AllocTakeShared | AllocClaimPartial | FreeActive
            | FreeFullToPartial | ReallocInPlace => 0,
        }
    }

    /// How many RMWs A alone makes, where that shows it took the path it names. Checked
    /// mode adds one: the block's live bit, set on hand-out or cleared on free.
    fn rmws(self) -> Option<usize> {
        use Scenario::*;
        let live_bit = usize::from(cfg!(feature = "checked"));
        match self {
            // The slot swap, the CAS taking the shared list, the put-back CAS.
            AllocTakeShared => Some(3 + live_bit),
            // The slot swap, the CAS to FULL, taking our own partial listing, the claim
            // CAS, the put-back CAS. (Other threads' slots are tried only when no chunk is
            // free. This heap's partial maps are small enough to have no summary.)
            AllocClaimPartial => Some(5 + live_bit),
            // The push CAS only.
            FreeActive => Some(1 + live_bit),
            // The push CAS, then the partial-map listing.
            FreeFullToPartial => Some(2 + live_bit),
            _ => None,
        }
    }

    /// Builds A's starting state; returns A's target block (null for an alloc).
    fn setup(self, cx: &Ctx<'_>) -> *mut u8 {
        use Scenario::*;
        // Victims first, so the scenario's own blocks decide the state A sees: a block
        // of the nested ops' default class, a 2 KiB block and a 2-chunk span.
        cx.victim(64);
        cx.victim(2048);
        cx.victim(CHUNK_SIZE + 100);
        let cap512 = CHUNK_SIZE / 512;
        match self {
            AllocSame => {
                for _ in 0..3 {
                    cx.alloc(64);
                }
                std::ptr::null_mut()
            }
            AllocOther => {
                for _ in 0..3 {
                    cx.alloc(256);
                }
                std::ptr::null_mut()
            }
            AllocTakeShared => {
                // Carve the whole chunk, then free three of its blocks: they go on the
                // shared list of the chunk, which stays in its slot.
                let b: Vec<_> = (0..CHUNK_SIZE / 256).map(|_| cx.alloc(256)).collect();
                b[..3].iter().for_each(|&p| cx.free(p));
                cx.victims.borrow_mut().extend([b[4], b[5]]);
                std::ptr::null_mut()
            }
            AllocClaimPartial => {
                // As for `FreeRetire`, but the first chunk keeps two blocks in use (both
                // victims) and A allocates.
                let b: Vec<_> = (0..2 * cap512).map(|_| cx.alloc(512)).collect();
                b[..cap512 - 2].iter().for_each(|&p| cx.free(p));
                cx.victims
                    .borrow_mut()
                    .extend([b[cap512 - 2], b[cap512 - 1]]);
                std::ptr::null_mut()
            }
            RefillFresh | SpanAlloc => std::ptr::null_mut(),
            RefillExhausted => {
                // Carves every block of the first 1 KiB chunk; it stays in its slot.
                for _ in 0..CHUNK_SIZE / 1024 {
                    cx.alloc(1024);
                }
                std::ptr::null_mut()
            }
            FreeActive => {
                let t = cx.alloc(64);
                cx.alloc(64);
                cx.victim(64);
                t
            }
            FreeFullToPartial | FreeRetire => {
                // Two chunks of 512 B carved out: the first `FULL` (the allocation that
                // found it exhausted marked it), the second in its slot with nothing
                // left to carve, so a nested 512 B alloc must look further.
                let b: Vec<_> = (0..2 * cap512).map(|_| cx.alloc(512)).collect();
                if self == FreeRetire {
                    // The first chunk becomes PARTIAL with one block still in use.
                    b[1..cap512].iter().for_each(|&p| cx.free(p));
                } else {
                    cx.victims.borrow_mut().push(b[cap512 - 1]);
                }
                cx.victims.borrow_mut().push(b[2 * cap512 - 1]);
                b[0]
            }
            ReallocInPlace | ReallocMove => {
                let t = cx.alloc(100);
                cx.victim(128);
                t
            }
            ReallocSpanGrow => cx.alloc(2 * CHUNK_SIZE - 100),
            SpanFree => cx.alloc(SPAN3),
        }
    }

    /// Runs A on `target`, with the model's bookkeeping around it.
    fn run(self, cx: &Ctx<'_>, target: *mut u8) {
        match self.action() {
            Action::Alloc(n) => {
                let p = cx.a.malloc(n);
                assert!(!p.is_null(), "{self:?}: A's malloc({n}) failed");
                cx.model
                    .borrow_mut()
                    .on_alloc(p, n, 16, false, cx.next_fill());
            }
            Action::Free => cx.free(target),
            Action::Realloc(n) => {
                let old = cx.take(target);
                // SAFETY: `target` is a live block of `cx.a` (set up for this).
                let q = unsafe { cx.a.realloc(target, n) };
                cx.reallocated(old, q, n);
                let in_place = !matches!(self, Scenario::ReallocMove);
                if !armed_injection() {
                    assert_eq!(q == target, in_place, "{self:?} took the wrong path");
                }
            }
        }
    }
}

/// The injection state of this thread.
struct Inj {
    armed: Cell<bool>,
    /// The level now running: 0 is A.
    level: Cell<usize>,
    /// Steps taken so far by the operation running at each level.
    steps: [Cell<u64>; LEVELS],
    /// At level `l`, run `plan[l]` one level down before step `fire_at[l]`.
    fire_at: [Cell<u64>; LEVELS - 1],
    plan: [Cell<Option<Op>>; LEVELS - 1],
    fired: [Cell<bool>; LEVELS - 1],
    /// Steps the last nested operation at each level took (index 1: B, 2: C).
    took: [Cell<u64>; LEVELS],
    /// A's step kinds, when recording.
    trace: RefCell<Option<Vec<Step>>>,
    ctx: Cell<*const Ctx<'static>>,
    /// The run in progress, for failure messages.
    case: Cell<Option<(Scenario, Plan)>>,
    nested_ops: Cell<u64>,
    max_nested_steps: Cell<u64>,
}

thread_local! {
    static INJ: Inj = const {
        Inj {
            armed: Cell::new(false),
            level: Cell::new(0),
            steps: [const { Cell::new(0) }; LEVELS],
            fire_at: [const { Cell::new(u64::MAX) }; LEVELS - 1],
            plan: [const { Cell::new(None) }; LEVELS - 1],
            fired: [const { Cell::new(false) }; LEVELS - 1],
            took: [const { Cell::new(0) }; LEVELS],
            trace: RefCell::new(None),
            ctx: Cell::new(std::ptr::null()),
            case: Cell::new(None),
            nested_ops: Cell::new(0),
            max_nested_steps: Cell::new(0),
        }
    };
}

fn armed_injection() -> bool {
    INJ.with(|t| t.plan[0].get().is_some())
}

/// The step hook: counts this thread's steps and, at the planned step, runs the next
/// level's operation right here, inside the interrupted one.
fn hook(kind: Step) {
    INJ.with(|t| {
        if !t.armed.get() {
            return;
        }
        let l = t.level.get();
        let n = t.steps[l].get();
        t.steps[l].set(n + 1);
        assert!(
            n < BUDGET,
            "an operation at level {l} took {BUDGET} atomic steps: it is waiting for the \
             operation it interrupted (I4); run {:?}",
            t.case.get()
        );
        if l == 0 {
            if let Some(tr) = t.trace.borrow_mut().as_mut() {
                tr.push(kind);
            }
        }
        if l + 1 >= LEVELS || n != t.fire_at[l].get() {
            return;
        }
        let Some(op) = t.plan[l].get() else { return };
        t.fired[l].set(true);
        t.level.set(l + 1);
        t.steps[l + 1].set(0);
        // SAFETY: `ctx` is set to a live `Ctx` for exactly as long as the hook is armed
        // (see `run_case`), and only this thread reads it.
        let cx = unsafe { &*t.ctx.get() };
        run_op(cx, op);
        let took = t.steps[l + 1].get();
        assert!(
            took < BUDGET,
            "nested {op:?} took {took} steps; run {:?}",
            t.case.get()
        );
        t.took[l + 1].set(took);
        t.max_nested_steps.set(t.max_nested_steps.get().max(took));
        t.nested_ops.set(t.nested_ops.get() + 1);
        t.level.set(l);
    });
}

/// What one run injects: B at step `i` of A, and C at step `j` of B.
#[derive(Clone, Copy, Debug, Default)]
struct Plan {
    b: Option<(u64, Op)>,
    c: Option<(u64, Op)>,
}

/// What one run observed.
struct Outcome {
    a_steps: u64,
    b_steps: u64,
    trace: Vec<Step>,
    chunks_delta: isize,
}

/// Runs scenario `s` once from a fresh heap with `plan`, then checks and frees
/// everything.
fn run_case(heap: &mut Fresh, s: Scenario, plan: Plan, record: bool) -> Outcome {
    heap.reset();
    let a = heap.get();
    let cx = Ctx::new(a);
    let target = s.setup(&cx);
    let chunks_before = a.stats().chunks_used;

    INJ.with(|t| {
        t.level.set(0);
        t.steps.iter().for_each(|c| c.set(0));
        t.took.iter().for_each(|c| c.set(0));
        t.fired.iter().for_each(|c| c.set(false));
        t.fire_at[0].set(plan.b.map_or(u64::MAX, |(i, _)| i));
        t.plan[0].set(plan.b.map(|(_, op)| op));
        t.fire_at[1].set(plan.c.map_or(u64::MAX, |(j, _)| j));
        t.plan[1].set(plan.c.map(|(_, op)| op));
        *t.trace.borrow_mut() = record.then(Vec::new);
        // The pointer is only dereferenced by `hook` while armed, which ends below,
        // before `cx` goes out of scope.
        t.ctx.set(std::ptr::from_ref(&cx).cast());
        t.case.set(Some((s, plan)));
        t.armed.set(true);
    });
    s.run(&cx, target);
    let (a_steps, b_steps, fired, trace) = INJ.with(|t| {
        t.armed.set(false);
        t.ctx.set(std::ptr::null());
        t.plan.iter().for_each(|p| p.set(None));
        (
            t.steps[0].get(),
            t.took[1].get(),
            [t.fired[0].get(), t.fired[1].get()],
            t.trace.borrow_mut().take().unwrap_or_default(),
        )
    });
    assert_eq!(fired[0], plan.b.is_some(), "{s:?} {plan:?}: B did not run");
    assert_eq!(fired[1], plan.c.is_some(), "{s:?} {plan:?}: C did not run");
    let chunks_delta = a.stats().chunks_used as isize - chunks_before as isize;

    // Free everything: every block's fill is checked on the way out.
    let blocks = cx.model.borrow_mut().drain();
    for (p, l) in blocks {
        check_fill(p, l.size, l.fill);
        // SAFETY: a live block of `a`, freed once (the model forgot it).
        unsafe { a.free(p) };
    }
    let st = a.stats();
    assert_eq!(
        st.bytes_in_use, 0,
        "{s:?} {plan:?}: bytes still in use after freeing everything\n{st}"
    );
    // No chunk lost: one span of the whole heap (reclaiming the slots' chunks).
    let all = a.malloc(st.heap_bytes);
    assert!(
        !all.is_null(),
        "{s:?} {plan:?}: the emptied heap cannot serve one span of all of it\n{st}"
    );
    // SAFETY: the block just allocated.
    unsafe { a.free(all) };
    assert_eq!(a.stats().bytes_in_use, 0);
    Outcome {
        a_steps,
        b_steps,
        trace,
        chunks_delta,
    }
}

#[test]
fn every_step_of_every_operation_survives_nested_operations() {
    sigalloc::set_step_hook(Some(hook));
    // Every C at every (i, j) takes ~30 s in a debug build: set SIGALLOC_QUICK to
    // run one C per (i, j) instead.
    let all_c = std::env::var_os("SIGALLOC_QUICK").is_none();
    let mut heap = Fresh::new();
    let (mut points, mut runs) = (0u64, 0u64);
    for s in SCENARIOS {
        let base = run_case(&mut heap, s, Plan::default(), true);
        runs += 1;
        let rmws = base.trace.iter().filter(|&&k| k == Step::Rmw).count();
        assert_eq!(
            base.chunks_delta,
            s.chunk_delta(),
            "{s:?} did not take the path it names (trace {:?})",
            base.trace
        );
        if let Some(want) = s.rmws() {
            assert_eq!(rmws, want, "{s:?} took another path: {:?}", base.trace);
        }
        let ops = nested_ops(s.class());
        for i in 0..base.a_steps {
            points += 1;
            for (bi, &b) in ops.iter().enumerate() {
                let plan = Plan {
                    b: Some((i, b)),
                    c: None,
                };
                let sb = run_case(&mut heap, s, plan, false).b_steps;
                runs += 1;
                for j in 0..sb {
                    points += 1;
                    let cs: Vec<Op> = if all_c {
                        ops.to_vec()
                    } else {
                        let k = (i as usize + bi + j as usize) % ops.len();
                        vec![ops[k]]
                    };
                    for c in cs {
                        let plan = Plan {
                            b: Some((i, b)),
                            c: Some((j, c)),
                        };
                        run_case(&mut heap, s, plan, false);
                        runs += 1;
                    }
                }
            }
        }
    }
    let (nested, max) = INJ.with(|t| (t.nested_ops.get(), t.max_nested_steps.get()));
    // Straight to stderr, past the test harness's capture, so CI logs show it.
    let _ = writeln!(
        std::io::stderr(),
        "reentrancy: {points} injection points, {nested} nested operations \
         ({runs} runs, longest nested operation {max} steps)"
    );
}
