//! Checked mode with the caches on (`checked`): a block freed into a magazine is free
//! as far as checked mode is concerned, so freeing it again is reported as a double
//! free and ignored, whether the first free parked it in this thread's magazine or in
//! another's, and the block is handed out once only afterwards.

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

fn free_all(v: Vec<*mut u8>) {
    for q in v {
        // SAFETY: each a live block of `C`, freed once.
        unsafe { C.free(q) };
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn double_free_of_a_block_parked_in_a_magazine_is_reported() {
    let _serial = serial();
    C.set_error_hook(Some(record));
    let active = super::mode(&C, "checked double free");
    C.drain_percpu();
    DOUBLE_FREES.store(0, Ordering::Relaxed);
    OTHER_ERRORS.store(0, Ordering::Relaxed);

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
