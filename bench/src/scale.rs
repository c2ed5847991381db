//! Workloads 7-10, the shapes of whole programs (issue #10): a larson-like cross-thread
//! workload with a large live set, a database-like mid-size mix measured for time and peak
//! RSS, the threads configuration pinned to cores, and a churn beside a growing amount of
//! live data. Each runs inside a child process on one allocator, like workloads 1-6.
//!
//! Every request stream comes from a seeded [`Rng`] whose seed depends only on the
//! workload and the thread, so every allocator sees the same sizes in the same order.

use std::fs;
use std::mem;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::allocators::Alloc;
use crate::workloads::{touch, Budget, Churn, Rng, Throughput, ALIGN, CLOCK_EVERY};

/// The process's peak resident set (`VmHWM` of /proc/self/status), in KiB; 0 if unknown.
pub fn peak_rss_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The wall time of a multi-thread run: from the first worker's start to the last one's
/// end, each read by the worker itself. (A clock read by the main thread after the start
/// barrier can run late by a whole run when the workers fill every core, as pinned
/// threads do.)
#[derive(Default)]
struct Span {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Span {
    fn add(&mut self, start: Instant, end: Instant) {
        self.first = Some(self.first.map_or(start, |f| f.min(start)));
        self.last = Some(self.last.map_or(end, |l| l.max(end)));
    }

    fn secs(&self) -> f64 {
        match (self.first, self.last) {
            (Some(f), Some(l)) => l.saturating_duration_since(f).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// Allocates `size` bytes and writes the first byte; null is counted in `failures`.
#[inline]
fn alloc_touched(a: &dyn Alloc, size: usize, failures: &mut u64) -> *mut u8 {
    let p = a.alloc(size, ALIGN);
    if p.is_null() {
        *failures += 1;
    }
    touch(p, size as u8);
    p
}

/// Frees a block recorded as (address, size); 0 is an empty slot.
///
/// # Safety
/// A non-zero `addr` is a live block from `a.alloc(size, ALIGN)`, not used afterwards.
#[inline]
unsafe fn free_block(a: &dyn Alloc, (addr, size): (usize, usize)) {
    if addr != 0 {
        // SAFETY: our caller's contract.
        unsafe { a.dealloc(addr as *mut u8, size, ALIGN) };
    }
}

// ---------------------------------------------------------------------------------------
// 7. larson-like

/// The larson-like workload's shape.
#[derive(Clone, Copy, Debug)]
pub struct Larson {
    pub threads: usize,
    /// Live blocks per thread.
    pub slots: usize,
    /// Steps per thread.
    pub ops: u64,
    /// Steps a thread does on one array before the threads swap arrays.
    pub handover: u64,
    /// Request sizes, inclusive (larson's own are 8..1000 B).
    pub min: usize,
    pub max: usize,
}

/// Workload 7: `threads` threads, each holding an array of `slots` live blocks of random
/// sizes and replacing a random entry per step (free it, allocate a new size). Every
/// `handover` steps the threads meet and rotate their arrays, so from then on each frees
/// blocks another thread allocated (larson passes its arrays to new threads instead).
/// One op = one free plus one allocation. Filling and emptying the arrays is not timed.
pub fn larson(a: &dyn Alloc, w: Larson, limit: Duration) -> Throughput {
    let arrays: Vec<Mutex<Vec<(usize, usize)>>> = (0..w.threads)
        .map(|_| Mutex::new(vec![(0, 0); w.slots]))
        .collect();
    let ready = Barrier::new(w.threads + 1);
    let done = Barrier::new(w.threads + 1);
    let turn = Barrier::new(w.threads);
    let stop = AtomicBool::new(false);
    let rounds = w.ops.div_ceil(w.handover.max(1));
    let mut r = Throughput::default();
    thread::scope(|s| {
        let workers: Vec<_> = (0..w.threads)
            .map(|t| {
                let (arrays, ready, done, turn, stop) = (&arrays, &ready, &done, &turn, &stop);
                s.spawn(move || {
                    let mut rng = Rng::new(200 + t as u64);
                    let mut failures = 0;
                    for slot in arrays[t].lock().expect("array lock").iter_mut() {
                        let size = rng.range(w.min, w.max);
                        *slot = (alloc_touched(a, size, &mut failures) as usize, size);
                    }
                    ready.wait();
                    let start = Instant::now();
                    let deadline = start + limit;
                    let mut ops = 0;
                    for round in 0..rounds {
                        let n = w.handover.min(w.ops - round * w.handover);
                        let mut arr = arrays[(t + round as usize) % w.threads]
                            .lock()
                            .expect("array lock");
                        let last = arr.len() - 1;
                        let mut i = 0;
                        while i < n {
                            if i.is_multiple_of(CLOCK_EVERY) && Instant::now() >= deadline {
                                // ORDERING: read only after the `turn` barrier below,
                                // which orders it.
                                stop.store(true, Relaxed);
                                break;
                            }
                            let slot = rng.range(0, last);
                            let size = rng.range(w.min, w.max);
                            // SAFETY: the slot holds a live block of this allocator (or
                            // 0), and is overwritten right after.
                            unsafe { free_block(a, arr[slot]) };
                            arr[slot] = (alloc_touched(a, size, &mut failures) as usize, size);
                            i += 1;
                        }
                        ops += i;
                        drop(arr);
                        // Every thread has written `stop` for this round before any
                        // reads it, and reads it before any writes it for the next.
                        turn.wait();
                        // ORDERING: the barrier orders this against every store.
                        let halt = stop.load(Relaxed);
                        turn.wait();
                        if halt {
                            break;
                        }
                    }
                    let end = Instant::now();
                    done.wait();
                    (start, end, ops, failures)
                })
            })
            .collect();
        ready.wait();
        done.wait();
        let mut span = Span::default();
        for wk in workers {
            let (start, end, n, f) = wk.join().expect("larson worker panicked");
            span.add(start, end);
            r.ops += n;
            r.failures += f;
            r.truncated |= n < w.ops;
        }
        r.secs = span.secs();
    });
    for arr in arrays {
        for b in arr.into_inner().expect("array lock") {
            // SAFETY: every entry is a live block of `a` or 0; the arrays die here.
            unsafe { free_block(a, b) };
        }
    }
    r
}

// ---------------------------------------------------------------------------------------
// 8. mid-size

/// The mid-size workload's shape.
#[derive(Clone, Copy, Debug)]
pub struct MidSize {
    /// The live set grows to `high` blocks, shrinks to `low`, `cycles` times.
    pub high: usize,
    pub low: usize,
    pub cycles: usize,
}

/// What the mid-size run did besides its throughput.
pub struct MidReport {
    pub t: Throughput,
    /// The most bytes requested and live at once (the same for every allocator).
    pub peak_live: usize,
}

/// A request size from a database-like mix: half are 2049..4096 B (pages, overflow
/// pages), 10 % 4104 B and 5 % 4368 B (a page plus a header), 20 % 16..512 B (rows,
/// cells) and 15 % 513..2048 B.
fn mid_size(rng: &mut Rng) -> usize {
    match rng.range(0, 99) {
        0..=49 => rng.range(2049, 4096),
        50..=59 => 4104,
        60..=64 => 4368,
        65..=84 => rng.range(16, 512),
        _ => rng.range(513, 2048),
    }
}

/// Workload 8: one thread; the live set grows (3 of 4 steps allocate, 1 frees a random
/// live block) to `high` blocks, then shrinks (3 of 4 free) to `low`, `cycles` times, and
/// finally everything is freed. Every block is written in full, as a page would be.
/// One op = one allocation or one free; all of it is timed.
pub fn midsize(a: &dyn Alloc, w: MidSize, limit: Duration) -> MidReport {
    let mut rng = Rng::new(300);
    let mut live: Vec<(usize, usize)> = Vec::with_capacity(w.high + 1);
    let (mut bytes, mut peak_live) = (0usize, 0usize);
    let mut t = Throughput::default();
    let start = Instant::now();
    let deadline = start + limit;
    let mut ops: u64 = 0;
    'cycles: for _ in 0..w.cycles {
        for grow in [true, false] {
            while if grow {
                live.len() < w.high
            } else {
                live.len() > w.low
            } {
                if ops.is_multiple_of(CLOCK_EVERY) && Instant::now() >= deadline {
                    t.truncated = true;
                    break 'cycles;
                }
                // Give up rather than spin if the allocator keeps refusing.
                if t.failures > 10_000 {
                    break 'cycles;
                }
                let alloc = live.is_empty() || (rng.range(0, 3) != 0) == grow;
                if alloc {
                    let size = mid_size(&mut rng);
                    let p = a.alloc(size, ALIGN);
                    if p.is_null() {
                        t.failures += 1;
                    } else {
                        // SAFETY: a fresh block of `size` bytes that we own.
                        unsafe { ptr::write_bytes(p, ops as u8, size) };
                        live.push((p as usize, size));
                        bytes += size;
                        peak_live = peak_live.max(bytes);
                    }
                } else {
                    let b = live.swap_remove(rng.range(0, live.len() - 1));
                    bytes -= b.1;
                    // SAFETY: a live block of `a`, removed from the live set.
                    unsafe { free_block(a, b) };
                }
                ops += 1;
            }
        }
    }
    for b in mem::take(&mut live) {
        // SAFETY: a live block of `a`, freed once.
        unsafe { free_block(a, b) };
        ops += 1;
    }
    t.secs = start.elapsed().as_secs_f64();
    t.ops = ops;
    MidReport { t, peak_live }
}

// ---------------------------------------------------------------------------------------
// 9. threads pinned to cores, 10. heap-size sweep

/// The CPUs this process may run on (from `sched_getaffinity`), in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: pid 0 is this thread; `set` is valid for the size passed.
    let rc = unsafe { libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Pins the calling thread to `cpu`; false if the OS refused.
pub fn pin_to(cpu: usize) -> bool {
    // SAFETY: as in `allowed_cpus`.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: `cpu` comes from `allowed_cpus`, so it is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is valid for the size passed.
    unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &set) == 0 }
}

/// Allocates 16..512 B blocks (seed 9, every one touched) until `bytes` are requested,
/// and keeps them live for the rest of the process. Returns the allocations refused.
pub fn ballast(a: &dyn Alloc, bytes: usize) -> u64 {
    let mut rng = Rng::new(9);
    let (mut done, mut failures) = (0, 0);
    while done < bytes && failures < 10_000 {
        let size = rng.range(16, 512);
        // Never freed: the block stays live until the child exits.
        if !alloc_touched(a, size, &mut failures).is_null() {
            done += size;
        }
    }
    failures
}

/// The threads configuration of workload 9.
#[derive(Clone, Copy, Debug)]
pub struct Pinned {
    pub threads: usize,
    /// Slots per thread's working set.
    pub slots: usize,
    /// Steps per thread.
    pub ops: u64,
    /// Bytes held live by the main thread before the threads start (0: none).
    pub ballast: usize,
}

/// What a pinned run did: its throughput and whether every thread could be pinned.
pub struct PinnedReport {
    pub t: Throughput,
    pub pinned: bool,
}

/// Workload 9: `threads` threads, thread `t` pinned to the `t % n`-th allowed CPU, each
/// churning its own working set (the churn of table 2 with `slots` slots and the same
/// seeds as table 3), beside `ballast` bytes of live data. One op = one free plus one
/// allocation; only the churn is timed.
pub fn pinned(a: &dyn Alloc, w: Pinned, limit: Duration) -> PinnedReport {
    let mut failures = ballast(a, w.ballast);
    let cpus = allowed_cpus();
    let ready = Barrier::new(w.threads + 1);
    let done = Barrier::new(w.threads + 1);
    let all_pinned = AtomicBool::new(!cpus.is_empty());
    let mut t = Throughput::default();
    thread::scope(|s| {
        let workers: Vec<_> = (0..w.threads)
            .map(|i| {
                let (ready, done, cpus, all_pinned) = (&ready, &done, &cpus, &all_pinned);
                s.spawn(move || {
                    if cpus.is_empty() || !pin_to(cpus[i % cpus.len()]) {
                        // ORDERING: read after `join`, which orders it.
                        all_pinned.store(false, Relaxed);
                    }
                    let mut c = Churn::fill(a, 100 + i as u64, w.slots);
                    ready.wait();
                    let start = Instant::now();
                    let budget = Budget {
                        ops: w.ops,
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
        let mut span = Span::default();
        for wk in workers {
            let (start, end, n, f) = wk.join().expect("pinned worker panicked");
            span.add(start, end);
            t.ops += n;
            failures += f;
            t.truncated |= n < w.ops;
        }
        t.secs = span.secs();
    });
    t.failures = failures;
    PinnedReport {
        t,
        // ORDERING: every store happened before its thread was joined.
        pinned: all_pinned.load(Relaxed),
    }
}

/// Workload 10: the churn of table 2 (one thread, `slots` slots of 16..512 B, `ops`
/// steps) beside `live` bytes of live data in all (a ballast of 16..512 B blocks makes up
/// what the working set does not hold). Only the churn is timed.
pub fn sweep(a: &dyn Alloc, live: usize, slots: usize, ops: u64, limit: Duration) -> Throughput {
    // The working set holds about `slots` blocks of 264 B on average.
    let mut failures = ballast(a, live.saturating_sub(slots * 264));
    let mut c = Churn::fill(a, 100, slots);
    let start = Instant::now();
    let budget = Budget {
        ops,
        deadline: start + limit,
    };
    let n = c.steps(&budget);
    let secs = start.elapsed().as_secs_f64();
    failures += c.failures;
    Throughput {
        ops: n,
        secs,
        failures,
        truncated: n < ops,
    }
}
