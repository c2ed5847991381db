//! Workload 6, the signal storm, as run inside its child process: a SIGALRM every
//! `interval_us` whose handler allocates, writes, checks and frees a block, while the main
//! loop does the same on a small working set. An allocator that is not async-signal-safe
//! deadlocks (the handler waits for a lock its own thread holds) or corrupts its heap.
//!
//! The parent holds the watchdog: this side only has to finish its budget and report.

use std::ffi::c_int;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Instant;

use crate::allocators::Alloc;
use crate::workloads::{Rng, ALIGN};

/// The allocator under test, for the handler (a `OnceLock` read is one atomic load).
static ALLOC: OnceLock<&'static dyn Alloc> = OnceLock::new();
/// Handler state. The handler runs with SIGALRM blocked, so it never races itself.
static HANDLED: AtomicU64 = AtomicU64::new(0);
static HANDLER_FAILURES: AtomicU64 = AtomicU64::new(0);
static CORRUPT: AtomicU64 = AtomicU64::new(0);
static SEED: AtomicU64 = AtomicU64::new(0x5EED);

/// Slots in the main loop's working set.
const SLOTS: usize = 64;

/// What the child reports.
pub struct StormReport {
    pub signals: u64,
    pub ops: u64,
    pub secs: f64,
    pub failures: u64,
    pub corrupt: u64,
}

/// Fills `len` bytes at `p` with `v`.
///
/// # Safety
/// `p` is a live block of at least `len` bytes that we own.
unsafe fn paint(p: *mut u8, len: usize, v: u8) {
    // SAFETY: forwarded from our caller.
    unsafe { ptr::write_bytes(p, v, len) };
}

/// Whether all `len` bytes at `p` still hold `v`: if not, someone else was handed our
/// memory.
///
/// # Safety
/// `p` is a live block of at least `len` bytes that we own.
unsafe fn intact(p: *const u8, len: usize, v: u8) -> bool {
    // SAFETY: forwarded from our caller; volatile so the check reads memory.
    (0..len).all(|i| unsafe { p.add(i).read_volatile() } == v)
}

extern "C" fn on_alarm(_: c_int) {
    // The allocator may set errno (glibc's does); the interrupted code must not notice.
    // SAFETY: __errno_location returns this thread's errno, always valid.
    let errno = unsafe { *libc::__errno_location() };
    if let Some(a) = ALLOC.get() {
        let mut rng = Rng::new(SEED.load(Relaxed));
        SEED.store(rng.next(), Relaxed);
        let size = rng.range(16, 256);
        let p = a.alloc(size, ALIGN);
        if p.is_null() {
            HANDLER_FAILURES.fetch_add(1, Relaxed);
        } else {
            // The main loop paints 0x00..0x3f; the handler's byte is never one of those.
            // SAFETY: a live block of `size` bytes that the handler owns until `dealloc`.
            unsafe {
                paint(p, size, 0xA5);
                if !intact(p, size, 0xA5) {
                    CORRUPT.fetch_add(1, Relaxed);
                }
                a.dealloc(p, size, ALIGN);
            }
        }
    }
    HANDLED.fetch_add(1, Relaxed);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Sets the interval timer to `us` microseconds (0 stops it).
fn set_timer(us: i64) {
    let t = libc::timeval {
        tv_sec: 0,
        tv_usec: us as libc::suseconds_t,
    };
    let it = libc::itimerval {
        it_interval: t,
        it_value: t,
    };
    // SAFETY: a valid itimerval; the old value is not wanted.
    let rc = unsafe { libc::setitimer(libc::ITIMER_REAL, &it, ptr::null_mut()) };
    assert_eq!(rc, 0, "setitimer failed");
}

/// Runs the storm until the handler has run `signals` times.
pub fn run(a: &'static dyn Alloc, signals: u64, interval_us: i64) -> StormReport {
    assert!(ALLOC.set(a).is_ok(), "one storm per process");
    // SAFETY: a zeroed sigaction is a valid starting point; we fill in what matters.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_alarm as extern "C" fn(c_int) as libc::sighandler_t;
    // No SA_NODEFER: the handler is not reentrant with itself, as AO_malloc requires.
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: `sa` is initialised and `on_alarm` only does async-signal-safe work (given
    // an async-signal-safe allocator, which is the question being asked).
    let rc = unsafe {
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGALRM, &sa, ptr::null_mut())
    };
    assert_eq!(rc, 0, "sigaction failed");

    let mut rng = Rng::new(6);
    let mut slots = [(ptr::null_mut::<u8>(), 0usize, 0u8); SLOTS];
    let (mut ops, mut failures, mut corrupt) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    set_timer(interval_us);
    while HANDLED.load(Relaxed) < signals {
        let i = rng.range(0, SLOTS - 1);
        let (p, size, v) = slots[i];
        if !p.is_null() {
            // SAFETY: a live block of `size` bytes painted with `v`, freed once.
            unsafe {
                if !intact(p, size, v) {
                    corrupt += 1;
                }
                a.dealloc(p, size, ALIGN);
            }
        }
        let size = rng.range(16, 256);
        let v = (ops % 64) as u8;
        let p = a.alloc(size, ALIGN);
        if p.is_null() {
            failures += 1;
        } else {
            // SAFETY: a fresh block of `size` bytes.
            unsafe { paint(p, size, v) };
        }
        slots[i] = (p, size, v);
        ops += 1;
    }
    set_timer(0);
    let secs = start.elapsed().as_secs_f64();
    for (p, size, _) in slots {
        if !p.is_null() {
            // SAFETY: live blocks, each freed once.
            unsafe { a.dealloc(p, size, ALIGN) };
        }
    }
    StormReport {
        signals: HANDLED.load(Relaxed),
        ops,
        secs,
        failures: failures + HANDLER_FAILURES.load(Relaxed),
        corrupt: corrupt + CORRUPT.load(Relaxed),
    }
}
