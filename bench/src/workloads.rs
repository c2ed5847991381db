//! The measured workloads. Each runs inside a child process on one allocator and returns
//! plain numbers; the parent turns them into tables.
//!
//! Every request stream comes from a seeded [`Rng`], so all allocators see the same sizes
//! in the same order. Every block is touched (its first byte written) as a real caller
//! would, so an allocator cannot win by handing out memory that faults on first use.

use std::ptr;
use std::sync::mpsc;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use crate::allocators::Alloc;

/// Alignment of every request: what C's malloc guarantees on x86_64.
pub const ALIGN: usize = 16;

/// How often (in operations) a loop looks at the clock.
pub(crate) const CLOCK_EVERY: u64 = 256;

/// xorshift64*: tiny, fast, and identical on every run for a given seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Zero is xorshift's one fixed point; mixing in a constant avoids it.
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi` (the modulo bias is irrelevant here).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

/// What a throughput run did.
#[derive(Default, Debug)]
pub struct Throughput {
    /// Operations completed (what an operation is depends on the workload).
    pub ops: u64,
    /// Wall time of the measured part.
    pub secs: f64,
    /// Allocations that returned null.
    pub failures: u64,
    /// The time limit stopped the run before its op budget.
    pub truncated: bool,
}

/// Stops a loop at its op budget or at its time limit, whichever comes first.
pub(crate) struct Budget {
    pub(crate) ops: u64,
    pub(crate) deadline: Instant,
}

impl Budget {
    /// Whether operation `i` should still run; false past the deadline (checked every
    /// CLOCK_EVERY ops so the clock does not dominate cheap allocators).
    pub(crate) fn go(&self, i: u64) -> bool {
        i < self.ops && (!i.is_multiple_of(CLOCK_EVERY) || Instant::now() < self.deadline)
    }
}

/// Writes the first byte, as a caller would.
#[inline]
pub(crate) fn touch(p: *mut u8, v: u8) {
    if !p.is_null() {
        // SAFETY: a non-null block of at least one byte that we own.
        unsafe { p.write_volatile(v) };
    }
}

/// Workload 1: allocate and immediately free, sizes 16..2048 B. One op = one pair.
pub fn pairs(a: &dyn Alloc, ops: u64, limit: Duration) -> Throughput {
    let mut rng = Rng::new(1);
    let mut r = Throughput::default();
    let start = Instant::now();
    let budget = Budget {
        ops,
        deadline: start + limit,
    };
    let mut i = 0;
    while budget.go(i) {
        let size = rng.range(16, 2048);
        let p = a.alloc(size, ALIGN);
        if p.is_null() {
            r.failures += 1;
        } else {
            touch(p, i as u8);
            // SAFETY: `p` is a live block from `alloc(size, ALIGN)`.
            unsafe { a.dealloc(p, size, ALIGN) };
        }
        i += 1;
    }
    r.secs = start.elapsed().as_secs_f64();
    r.ops = i;
    r.truncated = i < ops;
    r
}

/// Slots in a churn working set.
pub const SLOTS: usize = 1000;

/// One thread's churn: a working set of `slots` slots (SLOTS in tables 2-3), each step
/// freeing a random slot and refilling it with 16..512 B. Only `steps` is timed, not
/// filling (`fill`) or emptying (`drop`) the set.
pub(crate) struct Churn<'a> {
    a: &'a dyn Alloc,
    rng: Rng,
    slots: Vec<(*mut u8, usize)>,
    pub(crate) failures: u64,
}

impl<'a> Churn<'a> {
    pub(crate) fn fill(a: &'a dyn Alloc, seed: u64, slots: usize) -> Self {
        let mut c = Churn {
            a,
            rng: Rng::new(seed),
            slots: vec![(ptr::null_mut(), 0); slots],
            failures: 0,
        };
        for i in 0..slots {
            c.refill(i);
        }
        c
    }

    #[inline]
    fn refill(&mut self, i: usize) {
        let size = self.rng.range(16, 512);
        let p = self.a.alloc(size, ALIGN);
        if p.is_null() {
            self.failures += 1;
        }
        touch(p, size as u8);
        self.slots[i] = (p, size);
    }

    #[inline]
    fn free(&mut self, i: usize) {
        let (p, size) = std::mem::replace(&mut self.slots[i], (ptr::null_mut(), 0));
        if !p.is_null() {
            // SAFETY: a live block from `alloc(size, ALIGN)`; the slot no longer holds it.
            unsafe { self.a.dealloc(p, size, ALIGN) };
        }
    }

    pub(crate) fn steps(&mut self, budget: &Budget) -> u64 {
        let last = self.slots.len() - 1;
        let mut i = 0;
        while budget.go(i) {
            let slot = self.rng.range(0, last);
            self.free(slot);
            self.refill(slot);
            i += 1;
        }
        i
    }
}

impl Drop for Churn<'_> {
    fn drop(&mut self) {
        for i in 0..self.slots.len() {
            self.free(i);
        }
    }
}

/// Workloads 2 and 3: `threads` threads, each churning its own working set for `ops`
/// steps. One op = one free plus one allocation.
pub fn churn(a: &dyn Alloc, threads: usize, ops: u64, limit: Duration) -> Throughput {
    // Threads fill their sets, meet, run, meet again: only the part between is timed,
    // from the first worker's start to the last one's end, each read by the worker
    // itself. (A clock read by the main thread after the start barrier can run late by
    // a whole run on a busy machine: a 3 ms quick run once measured as 1 µs.)
    let ready = Barrier::new(threads + 1);
    let done = Barrier::new(threads + 1);
    let mut r = Throughput::default();
    thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (ready, done) = (&ready, &done);
                s.spawn(move || {
                    let mut c = Churn::fill(a, 100 + t as u64, SLOTS);
                    ready.wait();
                    let start = Instant::now();
                    let budget = Budget {
                        ops,
                        deadline: start + limit,
                    };
                    let n = c.steps(&budget);
                    let end = Instant::now();
                    done.wait();
                    (start, end, n, c.failures)
                })
            })
            .collect();
        ready.wait();
        done.wait();
        let mut span: Option<(Instant, Instant)> = None;
        for w in workers {
            let (start, end, n, f) = w.join().expect("churn worker panicked");
            span = Some(span.map_or((start, end), |(s, e)| (s.min(start), e.max(end))));
            r.ops += n;
            r.failures += f;
            r.truncated |= n < ops;
        }
        r.secs = span.map_or(0.0, |(s, e)| e.saturating_duration_since(s).as_secs_f64());
    });
    r
}

/// Blocks per message between producer and consumer.
const BATCH: usize = 64;
/// Batches in flight: the bound on how far the producer runs ahead.
const IN_FLIGHT: usize = 16;

/// Workload 4: one thread allocates 16..512 B blocks, another frees every one of them.
/// One op = one block allocated by the producer and freed by the consumer.
pub fn producer_consumer(a: &dyn Alloc, ops: u64, limit: Duration) -> Throughput {
    // Blocks travel as (address, size); batches' vectors come back to be reused so the
    // channel's own allocations (on glibc, the process allocator) stay out of the loop.
    let (full_tx, full_rx) = mpsc::sync_channel::<Vec<(usize, usize)>>(IN_FLIGHT);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<(usize, usize)>>();
    for _ in 0..IN_FLIGHT + 2 {
        empty_tx
            .send(Vec::with_capacity(BATCH))
            .expect("receiver alive");
    }
    let start = Instant::now();
    let budget = Budget {
        ops,
        deadline: start + limit,
    };
    let (produced, failures) = thread::scope(|s| {
        s.spawn(move || {
            for mut batch in full_rx {
                for (p, size) in batch.drain(..) {
                    // SAFETY: the producer allocated it with (size, ALIGN) and gave it up.
                    unsafe { a.dealloc(p as *mut u8, size, ALIGN) };
                }
                // The producer may have finished and dropped its receiver: fine.
                let _ = empty_tx.send(batch);
            }
        });
        let producer = s.spawn(move || {
            let mut rng = Rng::new(7);
            let (mut i, mut failures) = (0, 0);
            let mut batch = empty_rx.recv().expect("a free batch");
            while budget.go(i) {
                let size = rng.range(16, 512);
                let p = a.alloc(size, ALIGN);
                if p.is_null() {
                    failures += 1;
                } else {
                    touch(p, size as u8);
                    batch.push((p as usize, size));
                }
                if batch.len() == BATCH {
                    full_tx.send(batch).expect("consumer alive");
                    batch = empty_rx.recv().expect("a free batch");
                }
                i += 1;
            }
            full_tx.send(batch).expect("consumer alive");
            (i, failures)
        });
        producer.join().expect("producer panicked")
    });
    Throughput {
        ops: produced,
        secs: start.elapsed().as_secs_f64(),
        failures,
        truncated: produced < ops,
    }
}

/// The heap-efficiency cases (workload 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// Random 16..1024 B until the first failure.
    Mixed,
    /// Random 16..64 B until the first failure.
    Small,
    /// 16 B until failure, free all, then 1 KiB until failure (counts the 1 KiB bytes).
    PhaseChange,
}

impl Fill {
    pub const ALL: [Fill; 3] = [Fill::Mixed, Fill::Small, Fill::PhaseChange];

    pub fn name(self) -> &'static str {
        match self {
            Fill::Mixed => "mixed",
            Fill::Small => "small",
            Fill::PhaseChange => "phase",
        }
    }

    pub fn parse(s: &str) -> Option<Fill> {
        Fill::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// Allocates sizes from `size` until the first null; returns the blocks.
fn fill_until_full(a: &dyn Alloc, mut size: impl FnMut() -> usize) -> Vec<(*mut u8, usize)> {
    let mut blocks = Vec::new();
    loop {
        let n = size();
        let p = a.alloc(n, ALIGN);
        if p.is_null() {
            return blocks;
        }
        touch(p, 1);
        blocks.push((p, n));
    }
}

/// Workload 5: bytes successfully requested before the first failure.
pub fn efficiency(a: &dyn Alloc, fill: Fill) -> usize {
    let mut rng = Rng::new(5);
    let requested = |blocks: &[(*mut u8, usize)]| blocks.iter().map(|b| b.1).sum();
    match fill {
        Fill::Mixed => requested(&fill_until_full(a, || rng.range(16, 1024))),
        Fill::Small => requested(&fill_until_full(a, || rng.range(16, 64))),
        Fill::PhaseChange => {
            for (p, n) in fill_until_full(a, || 16) {
                // SAFETY: a live block from `alloc(n, ALIGN)`, freed once.
                unsafe { a.dealloc(p, n, ALIGN) };
            }
            requested(&fill_until_full(a, || 1024))
        }
    }
}
