//! Growth across four threads: 256 MiB held at once in a heap whose inline part is
//! 2 MiB, every block keeping its own pattern, then the same demand again served from
//! the regions already mapped.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread;

use sigalloc::{SigAlloc, HUGE_THRESHOLD, MAX_SMALL};

use super::common::{pattern, serial, Rng};
use super::{mib, KIB, MIB};

/// One live test block and the pattern it holds (the tests' fill pattern of its tag).
struct Block {
    ptr: *mut u8,
    size: usize,
    tag: u64,
}

impl Block {
    /// Writes the pattern of `tag` over the `size` bytes at `ptr`, a live block of ours.
    fn fill(ptr: *mut u8, size: usize, tag: u64) -> Block {
        pattern::fill(ptr, size, tag);
        Block { ptr, size, tag }
    }

    /// Panics unless the block still holds its pattern.
    fn check(&self) {
        pattern::verify(self.ptr, self.size, self.tag, "a growth block");
    }
}

/// The default 2 MiB inline heap: the threads hold 128 times as much.
static GROW: SigAlloc = SigAlloc::new();

const THREADS: usize = 4;
const PER_THREAD: usize = 64 * MIB;

/// A request size for step `i`: mostly small classes, one in 256 a span of 2 KiB to
/// 512 KiB (spans and small blocks then hold about half the bytes each), and every
/// 8192nd a huge block of 1 to 3 MiB (about four per thread).
fn grow_size(rng: &mut Rng, i: usize) -> usize {
    if i % 8192 == 4096 {
        rng.range(HUGE_THRESHOLD, 3 * MIB)
    } else if rng.range(0, 255) == 0 {
        rng.range(MAX_SMALL + 1, 512 * KIB)
    } else {
        rng.range(16, MAX_SMALL)
    }
}

/// What one thread did in one round.
#[derive(Default, Clone, Copy)]
struct Held {
    blocks: usize,
    bytes: usize,
    huge: usize,
}

/// A barrier that a panicking thread breaks, so the others fail too instead of
/// waiting for it for ever (`std::sync::Barrier` would hang the test).
struct Gate {
    /// Threads arrived in this generation, the generation, whether broken.
    state: Mutex<(usize, usize, bool)>,
    cv: Condvar,
    parties: usize,
}

impl Gate {
    fn new(parties: usize) -> Gate {
        Gate {
            state: Mutex::new((0, 0, false)),
            cv: Condvar::new(),
            parties,
        }
    }

    fn lock(&self) -> MutexGuard<'_, (usize, usize, bool)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until every party has arrived; panics if one of them panicked.
    fn wait(&self) {
        let mut s = self.lock();
        let generation = s.1;
        s.0 += 1;
        if s.0 == self.parties {
            *s = (0, generation + 1, s.2);
            self.cv.notify_all();
        }
        while s.1 == generation && !s.2 {
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        assert!(!s.2, "another thread of this test failed");
    }

    /// Breaks the gate if the current thread is unwinding (call from a guard's drop).
    fn break_if_panicking(&self) {
        if thread::panicking() {
            self.lock().2 = true;
            self.cv.notify_all();
        }
    }
}

/// Breaks its gate when the thread holding it panics.
struct BreakOnPanic<'a>(&'a Gate);

impl Drop for BreakOnPanic<'_> {
    fn drop(&mut self) {
        self.0.break_if_panicking();
    }
}

/// One thread's round: allocates until it holds `PER_THREAD` bytes (every 16th block
/// by `calloc`, checked to be zero), fills each block with its own pattern, waits for
/// the others, checks every block, then frees them all (the odd ones first, so chunks
/// pass through the partial lists). Meets the other threads and the main thread at
/// `gate` four times: start, all full, all checked (the main thread reads the
/// statistics at peak), go free.
fn grow_thread(t: usize, round: u64, gate: &Gate) -> Held {
    let _guard = BreakOnPanic(gate);
    let a = &GROW;
    let mut rng = Rng(0x5EED_0000 + t as u64); // the same demand in every round
    let mut blocks = Vec::with_capacity(48 << 10);
    let mut held = Held::default();
    gate.wait();
    let mut i = 0;
    while held.bytes < PER_THREAD {
        let size = grow_size(&mut rng, i);
        let zeroed = i % 16 == 7;
        let p = if zeroed {
            a.calloc(1, size)
        } else {
            a.malloc(size)
        };
        if p.is_null() {
            panic!(
                "thread {t}, round {round}, block {i}: null for {size} B with mmap \
                 enabled; {:?}",
                a.stats()
            );
        }
        assert_eq!(p.addr() % 16, 0, "thread {t}: {p:p} is not 16-aligned");
        if zeroed {
            let zero = pattern::zeroed(p, size);
            assert!(zero, "thread {t}: calloc({size}) at {p:p} is not zero");
        }
        if size >= HUGE_THRESHOLD {
            held.huge += 1;
        }
        let tag = (t as u64) << 56 | round << 48 | i as u64;
        blocks.push(Block::fill(p, size, tag));
        held.bytes += size;
        i += 1;
    }
    held.blocks = blocks.len();
    // Every thread has written every block before any checks: an overlap between two
    // threads' blocks shows as a changed pattern.
    gate.wait();
    for b in &blocks {
        b.check();
        assert!(
            a.usable_size(b.ptr) >= b.size,
            "usable_size below the request"
        );
        assert!(a.owns(b.ptr));
    }
    gate.wait();
    gate.wait();
    for b in blocks.iter().skip(1).step_by(2) {
        // SAFETY: a live block of ours, freed once.
        unsafe { a.free(b.ptr) };
    }
    for b in blocks.iter().step_by(2) {
        // The frees of its neighbours left it alone.
        b.check();
        // SAFETY: as above.
        unsafe { a.free(b.ptr) };
    }
    held
}

/// Runs one round on `THREADS` threads; returns the statistics at peak and the total
/// of what the threads held.
fn grow_round(round: u64) -> (sigalloc::Stats, Held) {
    let gate = Gate::new(THREADS + 1);
    thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let gate = &gate;
                s.spawn(move || grow_thread(t, round, gate))
            })
            .collect();
        let peak = {
            let _guard = BreakOnPanic(&gate);
            gate.wait(); // start
            gate.wait(); // every thread holds all its blocks
            gate.wait(); // and has checked them
            let peak = GROW.stats();
            gate.wait();
            peak
        };
        let mut total = Held::default();
        for w in workers {
            let h = w.join().expect("a worker thread panicked");
            total.blocks += h.blocks;
            total.bytes += h.bytes;
            total.huge += h.huge;
        }
        (peak, total)
    })
}

#[test]
fn growth_across_four_threads_maps_regions_and_reuses_them() {
    let _turn = serial();
    GROW.enable_mmap();
    assert!(GROW.mmap_enabled());

    let (peak1, held1) = grow_round(1);
    let after1 = GROW.stats();
    println!(
        "growth round 1: {} blocks, {:.1} MiB held ({} huge); peak: {} mapped regions, \
         {:.1} MiB mapped, {:.1} MiB in use, {} huge mappings; after free: {:.1} MiB \
         released",
        held1.blocks,
        mib(held1.bytes),
        held1.huge,
        peak1.mapped_regions,
        mib(peak1.mapped_bytes),
        mib(peak1.bytes_in_use),
        peak1.huge_mappings,
        mib(after1.released_bytes),
    );
    assert!(held1.bytes >= THREADS * PER_THREAD);
    assert!(held1.huge >= THREADS, "the sizes include a few huge blocks");
    assert!(
        peak1.mapped_regions > 0,
        "256 MiB cannot fit in 2 MiB without mapping"
    );
    assert_eq!(peak1.huge_mappings, held1.huge);
    assert!(
        peak1.bytes_in_use >= held1.bytes,
        "in use {} < held {}",
        peak1.bytes_in_use,
        held1.bytes
    );
    // Everything not in a huge mapping sat in the inline heap or in mapped regions.
    assert!(peak1.heap_bytes + peak1.huge_bytes >= held1.bytes);

    GROW.validate().expect("heap invalid after round 1");
    assert_eq!(after1.bytes_in_use, 0, "every block was freed");
    assert_eq!(after1.spans, 0);
    assert_eq!(after1.huge_mappings, 0);
    assert_eq!(after1.huge_bytes, 0);
    assert_eq!(
        after1.mapped_bytes, peak1.mapped_bytes,
        "regions stay mapped"
    );

    // The same demand again (the same seeds), with every chunk free (bar the few left in
    // active slots, which serve their class first). Growth maps about as much as is
    // already mapped, and threads that find the heap dry together may each map, so
    // round 1 ends with slack (observed: 288 to 512 MiB mapped for about 265 MiB held in
    // regions) and round 2 fits in its regions unless fragmentation differs a lot. A
    // new region would be at least as large as `mapped_bytes` (or `MAX_REGION`), i.e. a
    // doubling; the bound allows a quarter more than round 1, which no new region fits
    // under, without demanding the exact equality seen in every run so far.
    let (peak2, held2) = grow_round(2);
    let after2 = GROW.stats();
    println!(
        "growth round 2: {} blocks, {:.1} MiB held; peak: {} mapped regions, {:.1} MiB \
         mapped; after free: {:.1} MiB released",
        held2.blocks,
        mib(held2.bytes),
        peak2.mapped_regions,
        mib(peak2.mapped_bytes),
        mib(after2.released_bytes),
    );
    assert_eq!(held2.bytes, held1.bytes, "the same demand");
    assert_eq!(peak2.huge_mappings, held2.huge);
    assert!(
        peak2.mapped_bytes <= peak1.mapped_bytes + peak1.mapped_bytes / 4,
        "round 2 mapped {:.1} MiB more instead of reusing round 1's {:.1} MiB",
        mib(peak2.mapped_bytes - peak1.mapped_bytes),
        mib(peak1.mapped_bytes)
    );
    GROW.validate().expect("heap invalid after round 2");
    assert_eq!(after2.bytes_in_use, 0);
    assert_eq!(after2.huge_mappings, 0);
}
