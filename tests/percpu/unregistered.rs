//! Calls the caches must not serve: a thread whose rseq area is unregistered (the
//! kernel then stops updating its ids and never aborts its sequences: `cpu_id` reads
//! -1 and `mm_cid` reads 0, a valid-looking index), a heap limited to no magazine
//! (`set_percpu_limit(0)`: every id out of range), and a thread whose id is at or above
//! the limit (`set_percpu_limit(1)`, two threads running at once on two CPUs, so one has
//! an `mm_cid` of at least 1). All must take the shared path: every call works, nothing
//! is parked. Re-registering (and restoring the limit) brings caching back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use super::mark::{granules, small_size, Marks, Owners, Tally};
use super::{allowed_cpus, glibc_rseq_size, pin, rseq_ids, rseq_syscall};
use crate::common::{serial, Rng};
use sigalloc::SigAlloc;

const HEAP: usize = 1 << 20;
static U: SigAlloc<HEAP> = SigAlloc::new();
const G: usize = granules::<HEAP>();
static OWN: Owners<G> = Owners::new();
static T: Tally = Tally::new();

fn marks() -> Marks<'static, HEAP, G> {
    Marks {
        heap: &U,
        owners: &OWN,
        tally: &T,
    }
}

/// Allocates 600 marked blocks of every class, checks and frees them; returns the
/// cached bytes before and after.
fn churn(rng: &mut Rng) -> (usize, usize) {
    let before = U.stats().cached_bytes;
    let mut live = Vec::with_capacity(600);
    for _ in 0..600 {
        live.extend(marks().take(small_size(rng)));
    }
    for m in live {
        marks().give(m);
    }
    (before, U.stats().cached_bytes)
}

#[test]
#[cfg_attr(miri, ignore)]
fn unregistered_thread_takes_the_shared_path_and_parks_nothing() {
    let _serial = serial();
    let active = super::mode(&U, "unregistered thread");
    T.reset();
    U.drain_percpu();
    let report = thread::spawn(move || {
        let mut rng = Rng(0x0E6);
        let registered = glibc_rseq_size() != 0;
        let ids_registered = rseq_ids();
        if registered {
            rseq_syscall(1).expect("rseq(RSEQ_FLAG_UNREGISTER) of glibc's area");
        }
        let ids_unregistered = rseq_ids();
        let unreg = churn(&mut rng);
        let unreg_again = churn(&mut rng);
        if registered {
            rseq_syscall(0).expect("rseq re-registration of glibc's area");
        }
        let rereg = churn(&mut rng);
        let ids_rereg = rseq_ids();
        (
            registered,
            ids_registered,
            ids_unregistered,
            unreg,
            unreg_again,
            rereg,
            ids_rereg,
        )
    })
    .join()
    .unwrap();
    let (registered, ids_reg, ids_unreg, unreg, unreg_again, rereg, ids_rereg) = report;
    println!(
        "percpu unregistered: (cpu_id, mm_cid) registered {ids_reg:?}, unregistered \
         {ids_unreg:?}, re-registered {ids_rereg:?}; cached bytes around the unregistered \
         churns {unreg:?} {unreg_again:?}, after re-registering {rereg:?} ({})",
        if active { "caches active" } else { "fallback" },
    );
    T.assert_sound(false, "blocks of the unregistered thread");
    assert!(OWN.empty());
    assert_eq!(
        unreg.0, unreg.1,
        "an unregistered thread parked blocks (or popped them): its sequences are not \
         protected, so the caches must not serve it"
    );
    assert_eq!(
        unreg_again.0, unreg_again.1,
        "an unregistered thread parked blocks"
    );
    if registered {
        assert_eq!(ids_unreg.0, -1, "cpu_id after unregistering");
    }
    if active {
        assert!(
            rereg.1 > rereg.0,
            "after re-registering, the thread's frees parked nothing: {rereg:?}"
        );
    } else {
        assert_eq!(rereg, (0, 0), "caches off, yet blocks were parked");
    }
    U.drain_percpu();
    let s = U.stats();
    assert_eq!(s.cached_bytes, 0, "{s}");
    assert_eq!(s.bytes_in_use, 0, "{s}");
    U.validate()
        .expect("heap invalid after the unregistered thread");
}

#[test]
#[cfg_attr(miri, ignore)]
fn percpu_limit_zero_bypasses_every_cache() {
    let _serial = serial();
    let active = super::mode(&U, "set_percpu_limit(0)");
    T.reset();
    U.drain_percpu();
    let mut rng = Rng(0x11A1);
    U.set_percpu_limit(0);
    let limited = churn(&mut rng);
    let limited_again = churn(&mut rng);
    U.set_percpu_limit(sigalloc::PERCPU_CACHES);
    let restored = churn(&mut rng);
    println!(
        "percpu limit: cached bytes with limit 0 {limited:?} {limited_again:?}, with limit {} \
         {restored:?} ({})",
        sigalloc::PERCPU_CACHES,
        if active { "caches active" } else { "fallback" },
    );
    T.assert_sound(false, "blocks with limit 0");
    assert!(OWN.empty());
    assert_eq!(
        limited,
        (0, 0),
        "set_percpu_limit(0), yet blocks were parked"
    );
    assert_eq!(
        limited_again,
        (0, 0),
        "set_percpu_limit(0), yet blocks were parked"
    );
    if active {
        assert!(
            restored.1 > restored.0,
            "limit restored, yet nothing parked: {restored:?}"
        );
    } else {
        assert_eq!(restored, (0, 0), "caches off, yet blocks were parked");
    }
    U.drain_percpu();
    let s = U.stats();
    assert_eq!(s.cached_bytes, 0, "{s}");
    assert_eq!(s.bytes_in_use, 0, "{s}");
    U.validate().expect("heap invalid after set_percpu_limit");
}

/// What one thread's probes under `set_percpu_limit(1)` saw.
#[derive(Clone, Copy, Debug, Default)]
struct Probes {
    /// Probes whose `mm_cid` was the same before and after, and at least 1 ...
    out_of_range: usize,
    /// ... of which parked a block (must be none).
    parked_out_of_range: usize,
    /// Probes with a stable `mm_cid` of 0, and of those, how many parked.
    in_range: usize,
    parked_in_range: usize,
}

/// Drains, then allocates and frees one 64 B block, noting this thread's `mm_cid`
/// around it and whether the magazines now hold anything.
fn probe(p: &mut Probes) {
    U.drain_percpu();
    let (_, before) = rseq_ids();
    let b = U.malloc(64);
    assert!(!b.is_null());
    // SAFETY: just allocated from `U`, freed once.
    unsafe { U.free(b) };
    let (_, after) = rseq_ids();
    let parked = U.stats().cached_bytes > 0;
    if before != after {
        return;
    }
    if before >= 1 {
        p.out_of_range += 1;
        p.parked_out_of_range += usize::from(parked);
    } else {
        p.in_range += 1;
        p.parked_in_range += usize::from(parked);
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn ids_at_or_above_the_limit_bypass_the_caches() {
    let _serial = serial();
    let cpus = allowed_cpus();
    let active = super::mode(&U, "ids out of range");
    if cpus.len() < 2 {
        println!("percpu out-of-range: SKIPPED: one CPU only ({cpus:?})");
        return;
    }
    U.drain_percpu();
    U.set_percpu_limit(1);
    // Whose turn it is to probe (0 or 1; 2: done). The other thread spins meanwhile,
    // so both run at once and hold distinct ids.
    let turn = AtomicUsize::new(0);
    let seen: Vec<Probes> = thread::scope(|s| {
        let threads: Vec<_> = (0..2)
            .map(|k| {
                let (turn, cpu) = (&turn, cpus[k]);
                s.spawn(move || {
                    pin(&[cpu]);
                    let mut p = Probes::default();
                    let mut rounds = 0;
                    loop {
                        // ORDERING: Acquire/Release: the turn hands the heap over.
                        match turn.load(Ordering::Acquire) {
                            2 => return p,
                            t if t == k => {
                                for _ in 0..50 {
                                    probe(&mut p);
                                }
                                rounds += 1;
                                let next = if rounds == 4 && k == 1 { 2 } else { 1 - k };
                                turn.store(next, Ordering::Release);
                            }
                            _ => std::hint::spin_loop(),
                        }
                    }
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    U.set_percpu_limit(sigalloc::PERCPU_CACHES);
    let total = seen.iter().fold(Probes::default(), |a, p| Probes {
        out_of_range: a.out_of_range + p.out_of_range,
        parked_out_of_range: a.parked_out_of_range + p.parked_out_of_range,
        in_range: a.in_range + p.in_range,
        parked_in_range: a.parked_in_range + p.parked_in_range,
    });
    println!(
        "percpu out-of-range: limit 1, threads on CPUs {:?}: {} probes with mm_cid >= 1 \
         parked {} times, {} with mm_cid 0 parked {} times ({}; per thread {seen:?})",
        &cpus[..2],
        total.out_of_range,
        total.parked_out_of_range,
        total.in_range,
        total.parked_in_range,
        if active { "caches active" } else { "fallback" },
    );
    assert_eq!(
        total.parked_out_of_range, 0,
        "a thread whose id is at or above the limit parked blocks"
    );
    if active {
        assert!(
            total.out_of_range > 0,
            "no probe ran with an id at or above 1: the test proves nothing"
        );
        assert_eq!(
            total.parked_in_range, total.in_range,
            "a thread with id 0 (below the limit) did not park"
        );
    } else {
        assert_eq!(
            total.parked_in_range, 0,
            "caches off, yet blocks were parked"
        );
    }
    U.drain_percpu();
    let s = U.stats();
    assert_eq!(s.bytes_in_use, 0, "{s}");
    U.validate()
        .expect("heap invalid after the out-of-range probes");
}
