//! The kernel-contract canary (`hooks`): [`THREADS`] threads pinned to ONE CPU churn
//! marked blocks on one heap while a delay loop runs inside every restartable
//! sequence. They share the CPU by preemption, so preemptions land inside sequences; a
//! kernel that honours rseq aborts each of them before its commit, so the magazines
//! stay consistent: no block handed out twice (the ownership marks), none lost (all
//! freed and drained, nothing in use), and aborts were counted.
//!
//! A failure here means this kernel does not honour the rseq contract (as arm64 on
//! Linux 6.19 did not on same-core preemption): do not enable `percpu` on it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::mark::{get, granules, Marks, Owners, Tally, WorkingSet};
use crate::common::{serial, watchdog, MINUTE};
use sigalloc::SigAlloc;

const HEAP: usize = sigalloc::DEFAULT_HEAP;
static A: SigAlloc<HEAP> = SigAlloc::new();
const G: usize = granules::<HEAP>();
static OWN: Owners<G> = Owners::new();
static T: Tally = Tally::new();

const THREADS: usize = 3;
const SLOTS: usize = 32;
/// How long the threads churn (not a timing assertion: the length of the run).
const RUN: Duration = Duration::from_millis(1500);
/// Spins inside each sequence: most of a churning thread's time is spent inside one,
/// so most preemptions land inside.
const DELAY_SPINS: u64 = 2_000;

static OPS: AtomicUsize = AtomicUsize::new(0);

#[test]
#[cfg_attr(miri, ignore)]
fn kernel_honours_rseq_canary_do_not_enable_percpu_if_this_fails() {
    let _serial = serial();
    let _watchdog = watchdog("the percpu canary (deadlock or livelock?)", MINUTE, || {
        format!("; ops: {}", OPS.load(Ordering::Relaxed))
    });
    let active = super::mode(&A, "canary");
    T.reset();
    OPS.store(0, Ordering::Relaxed);
    let cpu = *super::allowed_cpus().first().expect("no CPU allowed");
    let marks = Marks {
        heap: &A,
        owners: &OWN,
        tally: &T,
    };
    let delay = super::Delay::set(DELAY_SPINS);
    let before = sigalloc::percpu_aborts();
    let stop = AtomicBool::new(false);
    let seen_ids = thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|i| {
                let stop = &stop;
                s.spawn(move || {
                    super::pin(&[cpu]);
                    let mut set = WorkingSet::<SLOTS>::new(0xCA7A + i as u64);
                    while !stop.load(Ordering::Relaxed) {
                        OPS.fetch_add(1, Ordering::Relaxed);
                        set.step(marks);
                    }
                    set.give_all(marks);
                    super::rseq_ids()
                })
            })
            .collect();
        let start = Instant::now();
        while start.elapsed() < RUN {
            thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    });
    let aborts = sigalloc::percpu_aborts() - before;
    drop(delay);
    let drained = A.drain_percpu();
    let s = A.stats();
    println!(
        "percpu canary: {aborts} aborts ({} on CPU {cpu}, {THREADS} threads, {} ops, {} \
         blocks, {drained} drained; (cpu_id, mm_cid) at the end: {seen_ids:?})",
        if active { "caches active" } else { "fallback" },
        OPS.load(Ordering::Relaxed),
        get(&T.allocs),
    );
    T.assert_sound(
        false,
        "the canary's blocks (this kernel does not honour rseq?)",
    );
    assert!(
        OWN.empty(),
        "granules still owned after every block was freed"
    );
    if active {
        assert!(
            aborts > 0,
            "no sequence was aborted although {THREADS} threads shared CPU {cpu} with a \
             delay inside every sequence: preemption does not abort rseq here"
        );
        for &(cpu_id, _) in &seen_ids {
            assert_eq!(cpu_id, cpu as i32, "a pinned thread ran on another CPU");
        }
    } else {
        assert_eq!(drained, 0, "caches off, yet drain_percpu found blocks");
    }
    assert_eq!(s.cached_bytes, 0, "cached bytes after drain_percpu: {s}");
    assert_eq!(s.bytes_in_use, 0, "all freed, yet bytes in use: {s}");
    A.validate().expect("heap invalid after the canary");
}
