//! sigalloc as the process's `#[global_allocator]`: everything in this binary, the test
//! harness included, allocates from it.
//!
//! What this proves: ordinary `std` code (`Vec`, `String`, `HashMap`, `BTreeMap`, `Box`,
//! `Arc`) runs correctly on it; large vectors that become spans grow and shrink through
//! `realloc`; freed memory is reused (far more is allocated over a test than the heap
//! holds); `alloc_zeroed` returns zeros even from memory that was dirtied and freed;
//! and, with sigalloc as the global allocator, a signal handler may simply use `Box`
//! and `Vec` while the thread it interrupted is allocating.

// Not under miri: std's thread start frees a `Box<Self>` argument, which Stacked and
// Tree Borrows both protect for the whole call, so a global allocator that writes its
// free-list link into the freed block is reported (a known false positive of custom
// global allocators under miri, e.g. yvt/rlsf#20). The allocator's own unit tests and
// `tests/threads.rs` cover it under miri without going through `std`'s `Box`.
#![cfg(not(miri))]
// A test binary, not the crate: the atomics here are the test's own bookkeeping, which
// `clippy.toml` (aimed at `src/`, where loom must see every atomic) does not concern.
#![allow(clippy::disallowed_types)]

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use sigalloc::SigAlloc;

const HEAP: usize = 64 << 20;

#[global_allocator]
static GLOBAL: SigAlloc<HEAP> = SigAlloc::new();

static ZERO: [u8; 4096] = [0; 4096];

/// `large`, or `small` under miri (kept so the file can run there once miri accepts
/// custom global allocators).
fn scale(large: usize, small: usize) -> usize {
    if cfg!(miri) {
        small
    } else {
        large
    }
}

#[test]
fn collections_work() {
    let n = scale(20_000, 200);

    let v: Vec<u64> = (0..n as u64).map(|i| i * i).collect();
    assert!(GLOBAL.owns(v.as_ptr().cast()), "the Vec came from sigalloc");
    assert_eq!(v.iter().sum::<u64>(), (0..n as u64).map(|i| i * i).sum());

    let words: Vec<String> = (0..n).map(|i| format!("w{}", i % 97)).collect();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for w in &words {
        *counts.entry(w.clone()).or_default() += 1;
    }
    assert_eq!(counts.len(), 97.min(n));
    assert_eq!(counts.values().sum::<usize>(), n);
    assert_eq!(counts["w0"], n.div_ceil(97));

    let mut tree: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for i in 0..n as u64 {
        tree.entry(i % 101).or_default().push(i);
    }
    assert_eq!(tree.len(), 101.min(n));
    assert_eq!(
        tree.range(10..20).map(|(_, v)| v.len()).sum::<usize>(),
        (0..n).filter(|i| (10..20).contains(&(i % 101))).count()
    );
    for (k, vs) in &tree {
        assert!(vs.iter().all(|x| x % 101 == *k));
    }
    tree.retain(|k, _| k % 2 == 0);
    assert!(tree.keys().all(|k| k % 2 == 0));

    let mut s = String::new();
    for i in 0..n {
        s.push_str(&i.to_string());
        s.push(',');
    }
    let parsed: Vec<usize> = s
        .trim_end_matches(',')
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(parsed, (0..n).collect::<Vec<_>>());
    assert_eq!(s.to_uppercase().len(), s.len());

    let boxes: Vec<Box<[u8; 100]>> = (0..n / 10).map(|i| Box::new([i as u8; 100])).collect();
    for (i, b) in boxes.iter().enumerate() {
        assert!(b.iter().all(|&x| x == i as u8));
        assert!(GLOBAL.owns(b.as_ptr()));
    }
    let closures: Vec<Box<dyn Fn(u64) -> u64>> = (0..10u64)
        .map(|k| Box::new(move |x| x * k) as Box<_>)
        .collect();
    assert_eq!(closures.iter().map(|f| f(3)).sum::<u64>(), 3 * 45);

    let mut q: VecDeque<Arc<String>> = VecDeque::new();
    for i in 0..n {
        q.push_back(Arc::new(i.to_string()));
        if q.len() > 50 {
            let front = q.pop_front().unwrap();
            assert_eq!(*front, (i - 50).to_string());
        }
    }
    assert_eq!(q.len(), 50.min(n));
}

#[test]
fn large_vectors_grow_shrink_and_reuse_memory() {
    // Grow one element at a time: every doubling is a `realloc`, from small classes
    // through spans of a few MiB.
    let n = scale(1 << 20, 1 << 10);
    let mut v: Vec<u32> = Vec::new();
    for i in 0..n as u32 {
        v.push(i.wrapping_mul(2_654_435_761));
    }
    assert!(GLOBAL.owns(v.as_ptr().cast()));
    assert!(v
        .iter()
        .enumerate()
        .all(|(i, &x)| x == (i as u32).wrapping_mul(2_654_435_761)));
    v.truncate(n / 3);
    v.shrink_to_fit();
    assert!(v
        .iter()
        .enumerate()
        .all(|(i, &x)| x == (i as u32).wrapping_mul(2_654_435_761)));
    drop(v);

    let mut bytes: Vec<u8> = Vec::new();
    let block: Vec<u8> = (0..=255u8).collect();
    while bytes.len() < scale(4 << 20, 4 << 10) {
        bytes.extend_from_slice(&block);
    }
    assert!(bytes.chunks(256).all(|c| c == &block[..]));
    drop(bytes);

    // Allocate far more than the heap holds, one big zeroed vector at a time; each is
    // dirtied before it is freed, so a later `alloc_zeroed` that reused the memory
    // without zeroing it would be caught.
    let big = scale(8 << 20, 64 << 10);
    let rounds = scale(3 * HEAP / big, 4);
    for round in 0..rounds {
        let mut z = vec![0u8; big];
        assert!(
            z.chunks(4096).all(|c| c == &ZERO[..c.len()]),
            "round {round}: alloc_zeroed gave dirty memory"
        );
        z.fill(0xFF);
        z[round] = round as u8;
        assert_eq!(z[round], round as u8);
    }

    // The same for small blocks: many zeroed vectors, dirtied and freed, three times.
    for _ in 0..3 {
        let vs: Vec<Vec<u8>> = (0..scale(10_000, 100))
            .map(|i| vec![0u8; 16 + i % 2000])
            .collect();
        assert!(
            vs.iter().all(|v| v[..] == ZERO[..v.len()]),
            "alloc_zeroed gave dirty memory"
        );
        for mut v in vs {
            v.fill(0xAA);
        }
    }
}

/// A handler that uses `Box` and `Vec` like any other code, interrupting a thread that
/// allocates in a loop.
#[cfg(unix)]
mod in_a_signal_handler {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::thread;
    use std::time::Duration;

    use super::{scale, GLOBAL};
    use crate::common::signal::{self, Timer};
    use crate::common::{watchdog, MINUTE};

    const SIG_TIMER: libc::c_int = libc::SIGALRM;
    const SIG_KILL: libc::c_int = libc::SIGUSR1;

    static RUNS: AtomicUsize = AtomicUsize::new(0);
    static BAD: AtomicUsize = AtomicUsize::new(0);
    /// Kills that have reached the handler: the killer sends its next one only after.
    static KILLS_ENTERED: AtomicUsize = AtomicUsize::new(0);
    static STOP: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(
        sig: libc::c_int,
        _info: *mut libc::siginfo_t,
        _ctx: *mut libc::c_void,
    ) {
        if sig == SIG_KILL {
            // ORDERING: Release pairs with the killer's Acquire (a plain counter).
            KILLS_ENTERED.fetch_add(1, Ordering::Release);
        }
        // Allocation through the global allocator, inside a handler: safe because that
        // allocator is sigalloc. Nothing here locks, prints or panics.
        let tag = RUNS.load(Ordering::Relaxed) as u8;
        let b = Box::new([tag; 64]);
        let mut v: Vec<u32> = Vec::with_capacity(16 + tag as usize);
        for i in 0..200u32 {
            v.push(i ^ u32::from(tag));
        }
        let ok = GLOBAL.owns(b.as_ptr())
            && GLOBAL.owns(v.as_ptr().cast())
            && b.iter().all(|&x| x == tag)
            && v.iter()
                .enumerate()
                .all(|(i, &x)| x == i as u32 ^ u32::from(tag));
        drop(v);
        drop(b);
        if !ok {
            BAD.fetch_add(1, Ordering::Relaxed);
        }
        RUNS.fetch_add(1, Ordering::Relaxed);
    }

    /// Installs `on_signal` for `sig`, masking both signals while it runs; returns the
    /// previous action.
    fn install(sig: libc::c_int) -> libc::sigaction {
        // The handler only allocates through sigalloc.
        signal::install(sig, on_signal, 0, &[SIG_TIMER, SIG_KILL])
    }

    /// The storm on the calling thread: handlers, its timer, the killer thread. Dropping
    /// it (also when the test fails) stops the signals before the handlers go.
    struct Storm {
        old: [libc::sigaction; 2],
        timer: Option<Timer>,
        killer: Option<thread::JoinHandle<usize>>,
        sent: usize,
    }

    impl Storm {
        fn start() -> Storm {
            let old = [install(SIG_TIMER), install(SIG_KILL)];
            STOP.store(false, Ordering::Relaxed);
            // SAFETY: no preconditions.
            let me = unsafe { libc::pthread_self() };
            let killer = thread::spawn(move || {
                let mut sent = 0usize;
                while !STOP.load(Ordering::Acquire) {
                    // One kill in flight at a time (see `common::storm`).
                    // ORDERING: Acquire pairs with the handler's Release.
                    if KILLS_ENTERED.load(Ordering::Acquire) == sent {
                        // SAFETY: the storm's thread outlives the killer: `stop` joins
                        // it before that thread can exit.
                        if unsafe { libc::pthread_kill(me, SIG_KILL) } != 0 {
                            break;
                        }
                        sent += 1;
                    }
                    thread::sleep(Duration::from_micros(20));
                }
                sent
            });
            Storm {
                old,
                timer: Some(Timer::start(SIG_TIMER, 50_000)),
                killer: Some(killer),
                sent: 0,
            }
        }

        /// Stops the signals and restores the handlers; returns the kills sent.
        fn stop(&mut self) -> usize {
            drop(self.timer.take());
            STOP.store(true, Ordering::Release);
            if let Some(k) = self.killer.take() {
                self.sent = k.join().unwrap_or(0);
                signal::restore(SIG_TIMER, &self.old[0]);
                signal::restore(SIG_KILL, &self.old[1]);
            }
            self.sent
        }
    }

    impl Drop for Storm {
        fn drop(&mut self) {
            self.stop();
        }
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn handler_allocates_while_the_thread_allocates() {
        let _watchdog = watchdog("allocation in a signal handler (deadlock?)", MINUTE, || {
            format!("; {} handler runs", RUNS.load(Ordering::Relaxed))
        });
        let mut storm = Storm::start();

        let rounds = scale(if cfg!(debug_assertions) { 300 } else { 4000 }, 2);
        let mut checksum = 0u64;
        for r in 0..rounds as u64 {
            let strings: Vec<String> = (0..200).map(|i| format!("{r}:{i}")).collect();
            let mut tree: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            for (i, s) in strings.iter().enumerate() {
                tree.insert(i as u64, s.clone().into_bytes());
            }
            let big = vec![r as u8; 10_000 + (r as usize % 7) * 3000];
            assert!(big.iter().all(|&b| b == r as u8));
            for (i, s) in &tree {
                assert_eq!(s, format!("{r}:{i}").as_bytes());
            }
            checksum += tree.values().map(|v| v.len() as u64).sum::<u64>();
        }
        let expected: u64 = (0..rounds as u64)
            .map(|r| {
                (0..200u64)
                    .map(|i| format!("{r}:{i}").len() as u64)
                    .sum::<u64>()
            })
            .sum();

        let sent = storm.stop();

        let runs = RUNS.load(Ordering::Relaxed);
        eprintln!("{runs} handler runs, {sent} kills sent");
        assert_eq!(
            checksum, expected,
            "the interrupted thread's work is intact"
        );
        assert_eq!(
            BAD.load(Ordering::Relaxed),
            0,
            "a handler's Box or Vec was wrong"
        );
        assert!(runs > 100, "the handler ran only {runs} times");
    }
}
