//! fork from a threaded parent while two threads churn on the cached heap: the child
//! inherits the magazines with whatever sequences the parent's threads had in flight,
//! frozen uncommitted (the kernel's rseq state is per thread; the child has only the
//! forking one). The child then fills the heap it inherited with marked blocks until
//! the first null (the drain before a null runs in the child, over magazines the
//! parent's threads filled), checks and frees them all, churns some more and drains
//! (no `validate`: the frozen threads' operations are in flight for good). Blocks the frozen threads held stay claimed in the shadow the child
//! inherited, so the child being handed one of them shows as an overlap.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

use super::mark::{get, granules, Marked, Marks, Owners, Tally, WorkingSet};
use super::{exit, say, wait_exit, ChildGuard, Shared};
use crate::common::{mix, serial, watchdog, Rng, MINUTE};
use sigalloc::SigAlloc;

const HEAP: usize = sigalloc::DEFAULT_HEAP;
static F: SigAlloc<HEAP> = SigAlloc::new();
const G: usize = granules::<HEAP>();
static OWN: Owners<G> = Owners::new();
/// The parent's threads' tally, and the child's own (the parent's is mid-update at the
/// fork).
static T: Tally = Tally::new();
static CT: Tally = Tally::new();

const THREADS: usize = 2;
const SLOTS: usize = 64;
/// Operations the parent's threads do before the fork, at least.
const WARM_UP: usize = 20_000;
/// The child's churn after its fill.
const CHILD_OPS: usize = 100_000;
/// Most blocks of the child's fill (more than a 2 MiB heap holds of 65..128 B).
const FILL_MAX: usize = 40_000;

const FILLED: usize = 0;
const CACHED_AT_NULL: usize = 1;
const DRAINED: usize = 2;
const ACTIVE: usize = 3;

static OPS: AtomicUsize = AtomicUsize::new(0);

/// The child's exit codes.
#[repr(i32)]
#[derive(Clone, Copy, Debug)]
enum Code {
    Ok = 0,
    Unsound = 1,
    NeverFull = 2,
    FillUnsound = 3,
    Cached = 4,
    CachedAtNull = 6,
}

/// The child: fills, frees, churns, drains; never returns.
fn child(shared: &Shared, fill: &mut [Option<Marked>]) -> ! {
    let guard = ChildGuard;
    CT.reset();
    let marks = Marks {
        heap: &F,
        owners: &OWN,
        tally: &CT,
    };
    // The fill: 65..128 B blocks (one class is enough to reach the null), kept in the
    // array the parent allocated before the fork: no allocation elsewhere.
    let mut rng = Rng(mix(0xF0CC));
    let mut filled = 0usize;
    let mut full = false;
    for slot in fill.iter_mut() {
        match marks.take(rng.range(65, 128)) {
            Some(m) => {
                *slot = Some(m);
                filled += 1;
            }
            None => {
                full = true;
                break;
            }
        }
    }
    shared.get(FILLED).store(filled as u64, Ordering::Relaxed);
    let cached_at_null = F.stats().cached_bytes;
    shared
        .get(CACHED_AT_NULL)
        .store(cached_at_null as u64, Ordering::Relaxed);
    // The null is expected: not a failure of the tally's.
    let nulls = get(&CT.nulls);
    CT.nulls.store(0, Ordering::Relaxed);
    for m in fill.iter_mut().filter_map(Option::take) {
        marks.give(m);
    }
    let fill_sound = CT.sound(false) && nulls == usize::from(full);

    let mut set = WorkingSet::<SLOTS>::new(rng.next());
    for _ in 0..CHILD_OPS {
        set.step(marks);
    }
    set.give_all(marks);
    shared
        .get(ACTIVE)
        .store(u64::from(F.percpu_active()), Ordering::Relaxed);
    shared
        .get(DRAINED)
        .store(F.drain_percpu() as u64, Ordering::Relaxed);
    let code = if !full {
        Code::NeverFull
    } else if !fill_sound {
        say(b"fork child: a mark failed during the fill\n");
        Code::FillUnsound
    } else if cached_at_null != 0 {
        Code::CachedAtNull
    } else if !CT.sound(false) {
        say(b"fork child: a mark failed during the churn\n");
        Code::Unsound
    } else if F.stats().cached_bytes != 0 {
        Code::Cached
    } else {
        // No `validate()` here: it needs a quiescent heap, and the parent's threads were
        // frozen by the fork anywhere in the shared layer (a chunk out of its slot, a
        // `PARTIAL` chunk not yet listed): states that are legal in flight and stay so
        // in the child. With the caches off (the tunable run) that is most of the time.
        // The marks above are what proves the child's heap: nothing handed out twice,
        // and the fill reached null only after the drain.
        Code::Ok
    };
    std::mem::forget(guard);
    exit(code as i32)
}

#[test]
#[cfg_attr(miri, ignore)]
fn fork_while_threads_churn_child_fills_and_frees_the_inherited_heap() {
    let _serial = serial();
    let _watchdog = watchdog("the fork test (deadlock or livelock?)", MINUTE, || {
        format!("; parent ops: {}", OPS.load(Ordering::Relaxed))
    });
    let active = super::mode(&F, "fork");
    T.reset();
    OPS.store(0, Ordering::Relaxed);
    let shared = Shared::map();
    let marks = Marks {
        heap: &F,
        owners: &OWN,
        tally: &T,
    };
    let mut fill: Vec<Option<Marked>> = vec![None; FILL_MAX];
    let stop = AtomicBool::new(false);
    let code = thread::scope(|s| {
        for i in 0..THREADS {
            let stop = &stop;
            s.spawn(move || {
                let mut set = WorkingSet::<SLOTS>::new(0xF02C + i as u64);
                while !stop.load(Ordering::Relaxed) {
                    OPS.fetch_add(1, Ordering::Relaxed);
                    set.step(marks);
                }
                set.give_all(marks);
            });
        }
        while OPS.load(Ordering::Relaxed) < WARM_UP {
            thread::yield_now();
        }
        // SAFETY: the child runs only fork-safe code (`child`) and never returns.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            child(&shared, &mut fill);
        }
        let code = if pid > 0 { Some(wait_exit(pid)) } else { None };
        stop.store(true, Ordering::Relaxed);
        code
    });
    let code = code.expect("fork failed");
    let g = |i| shared.get(i).load(Ordering::Relaxed);
    let drained = F.drain_percpu();
    let s = F.stats();
    println!(
        "percpu fork: child exit {code}; child filled {} blocks of 65..128 B with {} cached \
         bytes at the null, drained {} blocks ({}); parent: {} ops, {} blocks, {drained} \
         drained",
        g(FILLED),
        g(CACHED_AT_NULL),
        g(DRAINED),
        if g(ACTIVE) != 0 {
            "caches active"
        } else {
            "fallback"
        },
        OPS.load(Ordering::Relaxed),
        get(&T.allocs),
    );
    assert_eq!(
        code,
        Code::Ok as i32,
        "the forked child failed: 1 a mark failed in its churn, 2 its fill never reached \
         null, 3 a mark failed in its fill, 4 cached bytes after drain, \
         6 cached bytes left at the null (no drain before answering null), 99 panicked"
    );
    assert_eq!(
        g(ACTIVE) != 0,
        active,
        "the child's caches are not the parent's"
    );
    T.assert_sound(false, "the parent's blocks");
    assert!(
        OWN.empty(),
        "granules still owned after every block was freed"
    );
    assert_eq!(s.cached_bytes, 0, "cached bytes after drain_percpu: {s}");
    assert_eq!(s.bytes_in_use, 0, "all freed, yet bytes in use: {s}");
    F.validate()
        .expect("the parent's heap invalid after the fork");
}
