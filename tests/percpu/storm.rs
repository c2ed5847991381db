//! Signal storms on the per-CPU caches: [`WORKERS`] threads churn small blocks
//! (16..=2048 B, every class) on one `SigAlloc` while a killer thread `pthread_kill`s
//! them with `SIGUSR1` and `SIGUSR2` in turn and a per-thread timer adds `SIGALRM`;
//! every handler allocates and frees 1-3 marked blocks on the same heap, so it pops and
//! pushes the very magazine whose sequence it may have interrupted (I8: the kernel
//! aborts that sequence before the handler runs).
//!
//! Two storms: **masked** (no storm signal interrupts a handler) and **nested**
//! (`SIGUSR1`/`SIGUSR2` are `SA_NODEFER` and mask nothing, so handlers interrupt
//! handlers, and each nested delivery aborts the innermost sequence). Nesting is bounded
//! as in `common::storm`: the killer sends a thread its next signal only once the last
//! one has entered its handler and fewer than [`MAX_NEST`] handlers run there; the timer
//! is never `SA_NODEFER`.
//!
//! With the `hooks` feature a delay loop runs inside every sequence
//! (`set_percpu_delay`), so signals land inside sequences often and the test asserts
//! that aborts happened (else it would prove nothing). Under
//! `GLIBC_TUNABLES=glibc.pthread.rseq=0` the caches are off: the test then asserts
//! they stayed empty the whole time (sampled by the killer).
//!
//! Each storm prints `percpu storm: N signals, M handler allocations, K aborts (...)`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use super::mark::{bump, get, granules, small_size, Marked, Marks, Owners, Tally};
use crate::common::signal::{self, Timer};
use crate::common::{mix, serial, watchdog, Rng, MINUTE};
use sigalloc::SigAlloc;

const HEAP: usize = sigalloc::DEFAULT_HEAP;
static A: SigAlloc<HEAP> = SigAlloc::new();
const G: usize = granules::<HEAP>();
static OWN: Owners<G> = Owners::new();
static T: Tally = Tally::new();

fn marks() -> Marks<'static, HEAP, G> {
    Marks {
        heap: &A,
        owners: &OWN,
        tally: &T,
    }
}

const WORKERS: usize = 3;
/// Each worker's working set.
const SLOTS: usize = 48;
const OPS: usize = if cfg!(debug_assertions) {
    20_000
} else {
    150_000
};
/// The two cross-thread signals, sent in turn.
const KILLS: [libc::c_int; 2] = [libc::SIGUSR1, libc::SIGUSR2];
const SIG_TIMER: libc::c_int = libc::SIGALRM;
/// Each worker's timer period (a signal costs the kernel tens of microseconds on the
/// 2-core VM: shorter would starve the workers).
const TIMER_NS: libc::c_long = 50_000;
const KILL_PAUSE: Duration = Duration::from_micros(20);
/// The killer adds no handler to a thread that already runs this many.
const MAX_NEST: usize = 4;
/// Spins of the delay loop inside each sequence (`hooks`): long enough that a good
/// share of the signals land inside a sequence, short enough that the storm stays brief.
#[cfg(feature = "hooks")]
const DELAY_SPINS: u64 = 64;

struct Worker {
    thread: AtomicUsize,
    /// Kill signals that reached their handler.
    entered: AtomicUsize,
    /// Handlers running on the thread now.
    depth: AtomicUsize,
    ops: AtomicUsize,
}

static W: [Worker; WORKERS] = [const {
    Worker {
        thread: AtomicUsize::new(0),
        entered: AtomicUsize::new(0),
        depth: AtomicUsize::new(0),
        ops: AtomicUsize::new(0),
    }
}; WORKERS];

static HANDLER_RUNS: AtomicUsize = AtomicUsize::new(0);
static HANDLER_ALLOCS: AtomicUsize = AtomicUsize::new(0);
static NESTED: AtomicUsize = AtomicUsize::new(0);
static MAX_DEPTH: AtomicUsize = AtomicUsize::new(0);
/// The most cached bytes the killer saw while the storm ran.
static MAX_CACHED: AtomicUsize = AtomicUsize::new(0);
static READY: AtomicUsize = AtomicUsize::new(0);
static DONE: AtomicUsize = AtomicUsize::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

fn this_worker() -> Option<&'static Worker> {
    // SAFETY: `pthread_self` has no preconditions (it reads the thread pointer).
    let me = unsafe { libc::pthread_self() } as usize;
    W.iter().find(|w| w.thread.load(Ordering::Relaxed) == me)
}

/// The handler: allocates 1-3 marked blocks on `A`, then checks and frees them. Only
/// atomics, the allocator and slice operations: async-signal-safe.
extern "C" fn on_signal(sig: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let Some(w) = this_worker() else { return };
    let depth = w.depth.fetch_add(1, Ordering::Relaxed) + 1;
    if sig != SIG_TIMER {
        // ORDERING: Release pairs with the killer's Acquire: it sees our depth too.
        w.entered.fetch_add(1, Ordering::Release);
    }
    MAX_DEPTH.fetch_max(depth, Ordering::Relaxed);
    if depth > 1 {
        bump(&NESTED);
    }
    let mut rng = Rng(mix((get(&HANDLER_RUNS) as u64) << 8
        | (depth as u64) << 4
        | sig as u64));
    let mut held: [Option<Marked>; 3] = [None; 3];
    let n = 1 + rng.below(3);
    for slot in held.iter_mut().take(n) {
        *slot = marks().take(small_size(&mut rng));
        if slot.is_some() {
            bump(&HANDLER_ALLOCS);
        }
    }
    // Free in an order of the generator's choosing.
    let first = rng.below(n);
    for i in 0..n {
        if let Some(m) = held.get_mut((first + i) % n).and_then(Option::take) {
            marks().give(m);
        }
    }
    bump(&HANDLER_RUNS);
    w.depth.fetch_sub(1, Ordering::Relaxed);
}

fn install(sig: libc::c_int, nested: bool) -> libc::sigaction {
    if nested {
        let flags = if sig == SIG_TIMER {
            0
        } else {
            libc::SA_NODEFER
        };
        signal::install(sig, on_signal, flags, &[])
    } else {
        signal::install(sig, on_signal, 0, &[SIG_TIMER, KILLS[0], KILLS[1]])
    }
}

fn worker(i: usize) {
    let w = &W[i];
    // SAFETY: no preconditions.
    w.thread
        .store(unsafe { libc::pthread_self() } as usize, Ordering::Relaxed);
    // ORDERING: Release pairs with the killer's Acquire: it reads `w.thread` after.
    READY.fetch_add(1, Ordering::Release);
    let timer = Timer::start(SIG_TIMER, TIMER_NS);
    let mut live: [Option<Marked>; SLOTS] = [None; SLOTS];
    let mut rng = Rng(mix(i as u64 + 0x5EED));
    for _ in 0..OPS {
        w.ops.fetch_add(1, Ordering::Relaxed);
        let slot = &mut live[rng.below(SLOTS)];
        match slot.take() {
            None => *slot = marks().take(small_size(&mut rng)),
            Some(m) if rng.below(4) == 0 => {
                marks().check(&m);
                *slot = Some(m);
            }
            Some(m) => marks().give(m),
        }
    }
    for m in live.iter_mut().filter_map(Option::take) {
        marks().give(m);
    }
    // Stay alive (and interruptible) until the killer stops signalling us by
    // `pthread_t`, which must not outlive the thread.
    // ORDERING: Release/Acquire pair with the killer's.
    DONE.fetch_add(1, Ordering::Release);
    while !STOP.load(Ordering::Acquire) {
        thread::yield_now();
    }
    drop(timer);
}

/// Sends kills until every worker is done; samples the cached bytes. Returns the kills.
fn killer() -> usize {
    // ORDERING: Acquire pairs with the workers' Release: their `pthread_t`s are stored.
    while READY.load(Ordering::Acquire) < WORKERS {
        thread::yield_now();
    }
    let targets: Vec<libc::pthread_t> = W
        .iter()
        .map(|w| w.thread.load(Ordering::Relaxed) as libc::pthread_t)
        .collect();
    let mut sent = [0usize; WORKERS];
    let mut failed = 0;
    let mut round = 0usize;
    while DONE.load(Ordering::Acquire) < WORKERS {
        for ((&t, w), sent) in targets.iter().zip(&W).zip(&mut sent) {
            // ORDERING: Acquire pairs with the handler's Release.
            if w.entered.load(Ordering::Acquire) != *sent
                || w.depth.load(Ordering::Relaxed) >= MAX_NEST
            {
                continue;
            }
            // SAFETY: `t` is a live worker: workers wait for `STOP` to exit.
            if unsafe { libc::pthread_kill(t, KILLS[*sent % 2]) } == 0 {
                *sent += 1;
            } else {
                failed += 1;
            }
        }
        round += 1;
        if round % 64 == 0 {
            MAX_CACHED.fetch_max(A.stats().cached_bytes, Ordering::Relaxed);
        }
        thread::sleep(KILL_PAUSE);
    }
    // Set before any assertion: the workers wait for it.
    STOP.store(true, Ordering::Release);
    assert_eq!(failed, 0, "pthread_kill failed");
    sent.iter().sum()
}

fn progress() -> String {
    format!(
        "; worker ops: {:?}, handler runs: {}",
        W.iter()
            .map(|w| w.ops.load(Ordering::Relaxed))
            .collect::<Vec<_>>(),
        get(&HANDLER_RUNS)
    )
}

/// Runs one storm and makes every assertion.
fn storm(nested: bool) {
    let _serial = serial();
    let _watchdog = watchdog(
        "the percpu storm (deadlock or livelock?)",
        2 * MINUTE,
        progress,
    );
    let active = super::mode(
        &A,
        if nested {
            "storm (nested)"
        } else {
            "storm (masked)"
        },
    );
    T.reset();
    for c in [
        &HANDLER_RUNS,
        &HANDLER_ALLOCS,
        &NESTED,
        &MAX_DEPTH,
        &MAX_CACHED,
        &READY,
        &DONE,
    ] {
        c.store(0, Ordering::Relaxed);
    }
    STOP.store(false, Ordering::Relaxed);
    for w in &W {
        for c in [&w.thread, &w.entered, &w.depth, &w.ops] {
            c.store(0, Ordering::Relaxed);
        }
    }
    #[cfg(feature = "hooks")]
    let delay = super::Delay::set(DELAY_SPINS);
    let aborts_before = sigalloc::percpu_aborts();

    let old = [SIG_TIMER, KILLS[0], KILLS[1]].map(|sig| (sig, install(sig, nested)));
    let sent = thread::scope(|s| {
        for i in 0..WORKERS {
            s.spawn(move || worker(i));
        }
        s.spawn(killer).join().unwrap()
    });
    // Every worker has exited: no signal is pending on any of them.
    for (sig, old) in &old {
        signal::restore(*sig, old);
    }
    for w in &W {
        w.thread.store(0, Ordering::Relaxed);
    }
    let aborts = sigalloc::percpu_aborts() - aborts_before;
    #[cfg(feature = "hooks")]
    drop(delay);

    super::assert_cached_accounting(&A, T.sound(false));
    let cached = A.stats().cached_bytes;
    let drained = A.drain_percpu();
    let s = A.stats();
    println!(
        "percpu storm: {} signals, {} handler allocations, {} aborts ({}, {}; {} kills sent, \
         {} nested handlers, {} deep at most, {} blocks; {} cached bytes at most during \
         the storm, {} at its end, {} blocks drained)",
        get(&HANDLER_RUNS),
        get(&HANDLER_ALLOCS),
        aborts,
        if nested { "nested" } else { "masked" },
        if active { "caches active" } else { "fallback" },
        sent,
        get(&NESTED),
        get(&MAX_DEPTH),
        get(&T.allocs),
        get(&MAX_CACHED),
        cached,
        drained,
    );

    T.assert_sound(false, "the storm's blocks");
    assert!(
        OWN.empty(),
        "granules still owned after every block was freed"
    );
    assert!(
        get(&HANDLER_RUNS) > 100,
        "the handler ran only {} times",
        get(&HANDLER_RUNS)
    );
    assert!(get(&HANDLER_ALLOCS) > 0, "no handler allocated");
    if nested {
        assert!(get(&NESTED) > 0, "handlers never nested");
        assert!(get(&MAX_DEPTH) <= MAX_NEST + 2, "nesting beyond its bound");
    } else {
        assert_eq!(
            get(&NESTED),
            0,
            "a masked handler was interrupted by another"
        );
    }
    if active {
        assert!(
            cached > 0,
            "caches on, yet nothing parked after the storm: {s}"
        );
        assert!(drained > 0, "caches on, yet drain_percpu gave nothing back");
        #[cfg(feature = "hooks")]
        assert!(
            aborts > 0,
            "no restartable sequence was aborted: the storm proved nothing"
        );
    } else {
        assert_eq!(get(&MAX_CACHED), 0, "caches off, yet blocks were parked");
        assert_eq!(cached, 0, "caches off, yet blocks were parked");
        assert_eq!(drained, 0, "caches off, yet drain_percpu found blocks");
    }
    assert_eq!(s.cached_bytes, 0, "cached bytes after drain_percpu: {s}");
    assert_eq!(s.bytes_in_use, 0, "all freed, yet bytes in use: {s}");
    A.validate().expect("heap invalid after the storm");
}

#[test]
#[cfg_attr(miri, ignore)]
fn storm_masked_handlers_on_percpu_caches() {
    storm(false);
}

#[test]
#[cfg_attr(miri, ignore)]
fn storm_nested_sa_nodefer_handlers_on_percpu_caches() {
    storm(true);
}
