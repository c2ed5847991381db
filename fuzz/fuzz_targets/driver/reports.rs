//! Checked mode: the error hook counts its reports per kind and keeps the last pointer
//! reported.
// The fuzz crate is not the allocator: plain std atomics are what we want here.
#![allow(clippy::disallowed_types)]
use std::sync::atomic::{AtomicUsize, Ordering};

use sigalloc::{ErrorKind, CHUNK_SIZE, MAX_ALIGN, MAX_SMALL};

pub const KINDS: [ErrorKind; 6] = [
    ErrorKind::InvalidFree,
    ErrorKind::DoubleFree,
    ErrorKind::LayoutMismatch,
    ErrorKind::OutOfMemory,
    ErrorKind::Overflow,
    ErrorKind::Corrupted,
];

static COUNTS: [AtomicUsize; 6] = [const { AtomicUsize::new(0) }; 6];
static LAST_PTR: AtomicUsize = AtomicUsize::new(0);

fn index(k: ErrorKind) -> usize {
    KINDS.iter().position(|&x| x == k).unwrap_or(5)
}

pub fn record(kind: ErrorKind, p: *mut u8) {
    COUNTS[index(kind)].fetch_add(1, Ordering::Relaxed);
    LAST_PTR.store(p.addr(), Ordering::Relaxed);
}

pub fn snapshot() -> [usize; 6] {
    std::array::from_fn(|i| COUNTS[i].load(Ordering::Relaxed))
}

pub fn last_ptr() -> usize {
    LAST_PTR.load(Ordering::Relaxed)
}

/// Asserts that exactly `expected` was reported since `before`.
pub fn expect(before: [usize; 6], expected: &[ErrorKind], what: &str) {
    let now = snapshot();
    let mut want = [0usize; 6];
    for &k in expected {
        want[index(k)] += 1;
    }
    let got: [usize; 6] = std::array::from_fn(|i| now[i] - before[i]);
    if got != want {
        let show = |v: [usize; 6]| {
            KINDS
                .iter()
                .zip(v)
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| format!("{k:?} x{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        panic!(
            "{what}: expected reports [{}], got [{}]",
            show(want),
            show(got)
        );
    }
}

/// The kind a refused allocation of `size` at `align` reports.
pub fn refusal(size: usize, align: usize) -> ErrorKind {
    let overflow = align > MAX_ALIGN
        || (size > MAX_SMALL && size.div_ceil(CHUNK_SIZE).checked_mul(CHUNK_SIZE).is_none());
    if overflow {
        ErrorKind::Overflow
    } else {
        ErrorKind::OutOfMemory
    }
}
