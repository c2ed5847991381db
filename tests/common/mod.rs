//! The tests' shared harness. Every integration test binary includes it (`mod common;`)
//! and uses what it needs:
//! - [`Model`], a reference model of the allocator contract: it records every live
//!   block (address, requested size, alignment, pattern seed) and checks what any
//!   correct allocator must satisfy: no two live blocks overlap, every pointer meets its
//!   alignment, contents survive until free and across realloc, zeroed memory reads
//!   zero;
//! - [`Rng`] ([`rng`]), the one pseudo-random generator;
//! - [`pattern`], the one fill pattern blocks carry, and its checks;
//! - [`watchdog`], the one hang detector, and [`serial`], the one process-wide test lock;
//! - [`Fresh`], a zeroed `SigAlloc` on the system heap;
//! - (Unix) [`signal`], handlers and timers, and [`storm`], the signal storm that
//!   `signals.rs` and `mmap_signals.rs` share.
#![allow(
    dead_code,
    unused_imports,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::undocumented_unsafe_blocks
)]

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

pub mod pattern;
pub mod rng;
#[cfg(unix)]
pub mod signal;
#[cfg(unix)]
pub mod storm;
pub mod watchdog;

pub use rng::{mix, Rng};
pub use watchdog::{watchdog, Watchdog, MINUTE};

/// Takes the process-wide test lock. Tests that install signal handlers or the step
/// hook, or that measure a shared heap or the whole process, hold it for their whole
/// run, so that they never overlap (the harness runs tests on several threads).
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One live block as the model sees it.
#[derive(Clone, Copy, Debug)]
pub struct Live {
    /// The pointer itself, kept so tests never turn an integer back into a pointer.
    pub ptr: *mut u8,
    pub size: usize,
    pub align: usize,
    /// The seed of its [`pattern`].
    pub seed: u64,
}

/// The live blocks, by address.
#[derive(Default)]
pub struct Model {
    live: BTreeMap<usize, Live>,
}

impl Model {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn bytes(&self) -> usize {
        self.live.values().map(|l| l.size.max(1)).sum()
    }

    /// Records a new block, checking alignment and overlap, then fills it with the
    /// pattern of `seed`. If `zeroed`, first checks that it reads zero.
    pub fn on_alloc(&mut self, p: *mut u8, size: usize, align: usize, zeroed: bool, seed: u64) {
        assert!(!p.is_null());
        let a = p as usize;
        assert_eq!(a % align, 0, "{a:#x} is not aligned to {align}");
        let end = a + size.max(1);
        if let Some((&b, l)) = self.live.range(..end).next_back() {
            assert!(
                b + l.size.max(1) <= a || b >= end,
                "block {a:#x}+{size} overlaps {b:#x}+{}",
                l.size
            );
        }
        if zeroed {
            let s = unsafe { std::slice::from_raw_parts(p, size) };
            assert!(
                pattern::all_bytes(s, 0),
                "zeroed block {a:#x}+{size} is not zero"
            );
        }
        pattern::fill(p, size, seed);
        self.live.insert(
            a,
            Live {
                ptr: p,
                size,
                align,
                seed,
            },
        );
    }

    /// Checks a block's contents and forgets it; returns what it was.
    pub fn on_free(&mut self, p: *mut u8) -> Live {
        let l = self
            .live
            .remove(&(p as usize))
            .expect("freeing a block the model does not know");
        pattern::verify(p, l.size, l.seed, "on free");
        l
    }

    /// Checks that the bytes a reallocated block kept hold their contents, then records
    /// it under its new address and size.
    pub fn on_realloc(&mut self, old: *mut u8, new: *mut u8, size: usize, align: usize, seed: u64) {
        let l = self
            .live
            .remove(&(old as usize))
            .expect("realloc of a block the model does not know");
        pattern::verify(new, l.size.min(size), l.seed, "on realloc");
        self.on_alloc(new, size, align, false, seed);
    }

    /// Any live block (for tests that free at random).
    pub fn nth(&self, i: usize) -> Option<(*mut u8, Live)> {
        if self.live.is_empty() {
            return None;
        }
        self.live
            .iter()
            .nth(i % self.live.len())
            .map(|(_, &l)| (l.ptr, l))
    }

    /// Checks every live block's pattern, frees it through `a.free` and forgets it. The
    /// blocks must be `a`'s (each recorded once, so each is freed once).
    pub fn free_all<const N: usize>(&mut self, a: &sigalloc::SigAlloc<N>) {
        for (p, l) in self.drain() {
            pattern::verify(p, l.size, l.seed, "free_all");
            // SAFETY: a live block of `a` (the caller's contract), forgotten by the model.
            unsafe { a.free(p) };
        }
    }

    /// Every live block, then forgets them.
    pub fn drain(&mut self) -> Vec<(*mut u8, Live)> {
        std::mem::take(&mut self.live)
            .into_values()
            .map(|l| (l.ptr, l))
            .collect()
    }
}

/// A fresh `SigAlloc<N>` on the system heap, for tests that need many, or big ones.
///
/// `SigAlloc::new()` is all zero (its heap, side table and slots start as zero bytes:
/// that is what lets a `static` live in `.bss`), so zeroed memory of its layout is
/// exactly `SigAlloc::new()`, built without a large temporary on the stack.
pub struct Fresh<const N: usize>(*mut sigalloc::SigAlloc<N>);

impl<const N: usize> Fresh<N> {
    pub fn new() -> Self {
        let layout = std::alloc::Layout::new::<sigalloc::SigAlloc<N>>();
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<sigalloc::SigAlloc<N>>();
        assert!(!p.is_null(), "the system allocator is out of memory");
        Fresh(p)
    }

    /// Makes the allocator new again. `&mut self`: no reference into it is alive.
    pub fn reset(&mut self) {
        // SAFETY: `self.0` is valid for one `SigAlloc<N>` (allocated in `new`) and
        // unborrowed; all-zero bytes are `SigAlloc::new()`.
        unsafe { std::ptr::write_bytes(self.0, 0, 1) };
    }

    pub fn get(&self) -> &sigalloc::SigAlloc<N> {
        // SAFETY: valid and initialised (zeroed is `new()`) for as long as `self` lives.
        unsafe { &*self.0 }
    }
}

impl<const N: usize> Drop for Fresh<N> {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::new::<sigalloc::SigAlloc<N>>();
        // SAFETY: allocated in `new` with this very layout, freed once.
        unsafe { std::alloc::dealloc(self.0.cast(), layout) };
    }
}
