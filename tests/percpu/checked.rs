//! Checked mode with the caches on (`checked`): a block freed into a magazine carries
//! its key, so freeing it again is reported as a double free and ignored, whether the
//! first free parked it in this thread's magazine or in another's, and the block is
//! handed out once only afterwards. So is a free of a block a refill parked but never
//! handed out, and of two threads freeing one block at once exactly one succeeds.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use crate::common::serial;
use sigalloc::{ErrorKind, SigAlloc};

static C: SigAlloc<{ 256 << 10 }> = SigAlloc::new();
static DOUBLE_FREES: AtomicUsize = AtomicUsize::new(0);
static OTHER_ERRORS: AtomicUsize = AtomicUsize::new(0);

fn record(kind: ErrorKind, _p: *mut u8) {
    if matches!(kind, ErrorKind::DoubleFree) {
        DOUBLE_FREES.fetch_add(1, Ordering::Relaxed);
    } else {
        OTHER_ERRORS.fetch_add(1, Ordering::Relaxed);
    }
}

fn double_frees() -> usize {
    DOUBLE_FREES.load(Ordering::Relaxed)
}

/// Allocates `n` blocks of `size` and checks that no block comes twice (a double free
/// that reached a magazine would hand its block out twice); returns them.
fn distinct(size: usize, n: usize) -> Vec<*mut u8> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for _ in 0..n {
        let q = C.malloc(size);
        assert!(!q.is_null());
        assert!(seen.insert(q.addr()), "block {q:p} handed out twice");
        out.push(q);
    }
    out
}

/// Starts a test on `C`: the hook installed, the caches drained, the counters zeroed.
/// Returns whether the caches are active; the guard keeps the tests apart.
fn start(test: &str) -> (std::sync::MutexGuard<'static, ()>, bool) {
    let serial = serial();
    C.set_error_hook(Some(record));
    let active = super::mode(&C, test);
    C.drain_percpu();
    DOUBLE_FREES.store(0, Ordering::Relaxed);
    OTHER_ERRORS.store(0, Ordering::Relaxed);
    (serial, active)
}

fn free_all(v: Vec<*mut u8>) {
    for q in v {
        // SAFETY: each a live block of `C`, freed once.
        unsafe { C.free(q) };
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn double_free_of_a_block_parked_in_a_magazine_is_reported() {
    let (_serial, active) = start("checked double free");

    // Parked in this thread's magazine, then freed again.
    let p = C.malloc(40);
    assert!(!p.is_null());
    // SAFETY: a live block of `C`, freed once here (the second free is the test's).
    unsafe { C.free(p) };
    let parked = C.stats().cached_bytes;
    // SAFETY: a double free on purpose: checked mode must report and ignore it.
    unsafe { C.free(p) };
    assert_eq!(
        double_frees(),
        1,
        "the double free of a parked block was not reported"
    );
    let blocks = distinct(40, 200);

    // Parked by another thread (its magazine), freed again here.
    let q = C.malloc(100);
    assert!(!q.is_null());
    let qa = q.expose_provenance();
    thread::spawn(move || {
        // SAFETY: a live block of `C`, freed once by this thread.
        unsafe { C.free(std::ptr::with_exposed_provenance_mut(qa)) };
    })
    .join()
    .unwrap();
    // SAFETY: a double free on purpose.
    unsafe { C.free(q) };
    assert_eq!(
        double_frees(),
        2,
        "the double free of a block parked by another thread was not reported"
    );
    let more = distinct(100, 200);
    println!(
        "percpu checked: {} double frees reported ({parked} bytes parked after the first \
         free; {})",
        double_frees(),
        if active { "caches active" } else { "fallback" },
    );
    if active {
        assert!(
            parked > 0,
            "caches active, yet the freed block was not parked"
        );
    }
    assert_eq!(
        OTHER_ERRORS.load(Ordering::Relaxed),
        0,
        "errors other than double frees"
    );
    free_all(blocks);
    free_all(more);
    C.drain_percpu();
    let s = C.stats();
    assert_eq!(s.cached_bytes, 0, "{s}");
    assert_eq!(s.bytes_in_use, 0, "{s}");
    C.validate().expect("heap invalid after the double frees");
    C.set_error_hook(None);
}

#[test]
#[cfg_attr(miri, ignore)]
fn frees_of_parked_blocks_never_handed_out_and_racing_frees_are_caught() {
    let (_serial, active) = start("checked racing frees");

    // A refill parks the rest of its batch: the blocks after `p` in its chunk sit in
    // this CPU's magazine (with the caches off they are free in the chunk), never
    // handed out. Freeing one must be refused, not park it a second time.
    let p = C.malloc(64);
    assert!(!p.is_null());
    let neighbour = p.wrapping_add(64);
    assert!(C.owns(neighbour));
    // SAFETY: an invalid free on purpose: checked mode must report and ignore it.
    unsafe { C.free(neighbour) };
    assert_eq!(
        double_frees(),
        1,
        "the free of a block never handed out was not refused"
    );
    let blocks = distinct(64, 300);
    free_all(blocks);

    // Two threads free the same 32 blocks at once, 500 times: each block is freed once
    // and refused once, and none is handed out twice afterwards.
    let rounds = 500;
    for _ in 0..rounds {
        let batch: Vec<usize> = (0..32).map(|_| C.malloc(48).expose_provenance()).collect();
        assert!(batch.iter().all(|&b| b != 0));
        let go = std::sync::Barrier::new(2);
        thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    go.wait();
                    for &b in &batch {
                        // SAFETY: a live block of `C`; the racing second free is the
                        // test's, and checked mode must refuse exactly one of the two.
                        unsafe { C.free(std::ptr::with_exposed_provenance_mut(b)) };
                    }
                });
            }
        });
        free_all(distinct(48, 64));
    }
    assert_eq!(
        double_frees(),
        1 + rounds * 32,
        "racing frees: not exactly one refused"
    );
    assert_eq!(
        OTHER_ERRORS.load(Ordering::Relaxed),
        0,
        "errors other than double frees"
    );
    println!(
        "percpu checked: racing frees, {rounds} rounds of 32 blocks, {} refused ({})",
        double_frees() - 1,
        if active { "caches active" } else { "fallback" },
    );
    free_all(vec![p]);
    C.drain_percpu();
    let s = C.stats();
    assert_eq!(s.bytes_in_use, 0, "{s}");
    C.validate().expect("heap invalid after the racing frees");
    C.set_error_hook(None);
}
