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
//!
//! One file per part, in `tests/reentrancy/`: `ops.rs` (the nested operations and the
//! run's world) and `scenario.rs` (the interrupted operations); this one holds the
//! injecting step hook and the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "reentrancy/ops.rs"]
mod ops;
#[path = "reentrancy/scenario.rs"]
mod scenario;

use std::cell::{Cell, RefCell};
use std::io::Write;

use common::pattern::verify;
use ops::{nested_ops, run_op, Ctx, Op};
use scenario::{Scenario, SCENARIOS};
use sigalloc::{SigAlloc, Step};

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
    // The scenarios name paths of the shared layer, step by step: with the `percpu`
    // feature a per-CPU cache would take the allocations first (its sequences have no
    // atomic steps to inject into; tests/percpu.rs covers them). A no-op without it.
    a.disable_percpu();
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
        verify(p, l.size, l.seed, "drain");
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
    // Each plan replays a run step by step, so every run must take the same path. The
    // slot an operation starts from is the CPU the thread runs on (glibc's rseq area):
    // a migration between the recorded run and its replay changes the path, and a
    // nested operation planned at step j may then never get there ("C did not run").
    // Stay on one CPU.
    pin_to_current_cpu();
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

/// Pins the calling thread to the CPU it runs on (Linux); elsewhere a no-op.
fn pin_to_current_cpu() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain libc calls on this thread's own affinity, with a zeroed set that
    // `CPU_SET` fills in.
    unsafe {
        let cpu = libc::sched_getcpu();
        if cpu >= 0 {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}
