//! Claims racing allocations: regions claimed one by one while three threads allocate
//! and free.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

use sigalloc::SigAlloc;

use super::common::{pattern, Rng};
use super::{mixed_size, until_full, which, Setup, CHUNK, INLINE};

/// Sizes for the concurrent test, smaller under Miri.
#[cfg(not(miri))]
mod sizes {
    pub(crate) const REGIONS: usize = 8;
    /// Operations the workers run between two claims.
    pub(crate) const OPS_PER_CLAIM: usize = 5_000;
    /// Blocks a worker holds at most while churning.
    pub(crate) const HOLD: usize = 48;
}
#[cfg(miri)]
mod sizes {
    pub(crate) const REGIONS: usize = 2;
    pub(crate) const OPS_PER_CLAIM: usize = 40;
    pub(crate) const HOLD: usize = 12;
}

/// Every live block of every thread: start -> end. Catches two threads given
/// overlapping blocks the moment the second gets its block.
struct Live(Mutex<BTreeMap<usize, usize>>);

impl Live {
    fn add(&self, p: *mut u8, size: usize) {
        let (lo, hi) = (p.addr(), p.addr() + size.max(1));
        let mut m = self.0.lock().unwrap();
        if let Some((&a, &b)) = m.range(..hi).next_back() {
            assert!(
                b <= lo,
                "{p:p}+{size} overlaps the live block {a:#x}..{b:#x}"
            );
        }
        m.insert(lo, hi);
    }
    fn remove(&self, p: *mut u8) {
        assert!(self.0.lock().unwrap().remove(&p.addr()).is_some());
    }
}

/// A block a worker of test 4 holds: where, how long, and its pattern's seed.
struct Held {
    p: *mut u8,
    size: usize,
    seed: u64,
}

/// One allocating thread of test 4: churns while the claims go on, then allocates until
/// null, then frees everything. Every block is filled with a byte of this thread's own
/// and checked before it is freed. Returns how many blocks landed in each of `ranges`.
fn worker<const N: usize>(
    a: &SigAlloc<N>,
    t: usize,
    ranges: &[(usize, usize)],
    ops: &AtomicUsize,
    done: &AtomicBool,
    live: &Live,
) -> Vec<usize> {
    let mut held: Vec<Held> = Vec::new();
    let mut rng = Rng(0x7EA0 + t as u64);
    let mut hits = vec![0; ranges.len()];
    let mut seed = (t as u64) << 32;
    let mut take = |held: &mut Vec<Held>, p: *mut u8, size: usize| {
        assert_eq!(p.addr() % 16, 0, "{p:p} is not 16-aligned");
        assert!(a.usable_size(p) >= size);
        live.add(p, size);
        hits[which(ranges, p, size)] += 1;
        seed += 1;
        // A fresh block of at least `size` bytes, ours alone (the live map checked that
        // no other live block overlaps it).
        pattern::fill(p, size, seed);
        held.push(Held { p, size, seed });
    };
    let give = |h: Held| {
        pattern::verify(h.p, h.size, h.seed, "a worker's block");
        live.remove(h.p);
        // SAFETY: a live block of ours, forgotten by the live map first.
        unsafe { a.free(h.p) };
    };
    // ORDERING: Acquire pairs with the claimer's Release: its claims happened before.
    while !done.load(Ordering::Acquire) {
        // ORDERING: Relaxed: only paces the claimer.
        ops.fetch_add(1, Ordering::Relaxed);
        if held.len() < sizes::HOLD && rng.range(0, 2) != 0 {
            let size = mixed_size(&mut rng);
            let p = a.malloc(size);
            if !p.is_null() {
                take(&mut held, p, size);
            }
        } else if !held.is_empty() {
            let i = rng.range(0, held.len() - 1);
            give(held.swap_remove(i));
        }
    }
    // Every region is published: allocate until null, so every chunk is used.
    until_full(a, &mut rng, 8, |p, size| take(&mut held, p, size));
    held.into_iter().for_each(give);
    hits
}

/// Test 4: regions claimed one by one while three threads allocate and free: every claim
/// succeeds, no two live blocks overlap, contents are kept, and every region is used.
#[test]
fn claims_race_allocations() {
    const THREADS: usize = 3;
    let mut s = Setup::<INLINE>::new();
    let mut regions = Vec::new();
    let mut ranges = vec![s.inline()];
    for i in 0..sizes::REGIONS {
        // 5 whole chunks after aligning: 4 allocatable.
        let (slice, spot) = s.region(1 + 509 * i, 5 * CHUNK + 4095, None);
        assert_eq!(spot.chunks(), 5);
        ranges.push(spot.range(4 * CHUNK));
        regions.push(slice);
    }
    let a = s.a();
    let ops = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let live = Live(Mutex::new(BTreeMap::new()));
    let hits = thread::scope(|sc| {
        let (ranges, ops, done, live) = (&ranges, &ops, &done, &live);
        let workers: Vec<_> = (0..THREADS)
            .map(|t| sc.spawn(move || worker(a, t, ranges, ops, done, live)))
            .collect();
        sc.spawn(move || {
            for (i, region) in regions.into_iter().enumerate() {
                // ORDERING: Relaxed: pacing only.
                while ops.load(Ordering::Relaxed) < (i + 1) * sizes::OPS_PER_CLAIM {
                    thread::yield_now();
                }
                assert_eq!(a.claim(region), Ok(4 * CHUNK), "region {i}");
                assert!(a.stats().regions > i);
            }
            // ORDERING: Release: the workers' last round sees every region.
            done.store(true, Ordering::Release);
        });
        let mut sum = vec![0; ranges.len()];
        for w in workers {
            for (total, h) in sum.iter_mut().zip(w.join().unwrap()) {
                *total += h;
            }
        }
        sum
    });
    println!("blocks in the inline heap, regions: {hits:?}");
    assert!(
        hits.iter().all(|&h| h > 0),
        "a region served nothing: {hits:?}"
    );
    let st = a.stats();
    assert_eq!(st.regions, sizes::REGIONS);
    assert_eq!(st.claimed_bytes, sizes::REGIONS * 4 * CHUNK);
    assert_eq!(st.bytes_in_use, 0);
    a.validate().unwrap();
}
