//! A reference model of the allocator contract, shared by the integration tests.
//!
//! It records every live block (address, requested size, alignment, fill byte) and
//! checks what any correct allocator must satisfy: no two live blocks overlap, every
//! pointer meets its alignment, contents survive until free and across realloc, zeroed
//! memory reads zero, and `usable_size` covers the request.
//!
//! [`storm`] (Unix) is the signal storm that `signals.rs` and `mmap_signals.rs` share.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::undocumented_unsafe_blocks
)]

use std::collections::BTreeMap;

#[cfg(unix)]
pub mod storm;

/// One live block as the model sees it.
#[derive(Clone, Copy, Debug)]
pub struct Live {
    /// The pointer itself, kept so tests never turn an integer back into a pointer.
    pub ptr: *mut u8,
    pub size: usize,
    pub align: usize,
    pub fill: u8,
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

    /// Records a new block, checking alignment and overlap, then fills it with `fill`.
    /// If `zeroed`, first checks that it reads zero.
    pub fn on_alloc(&mut self, p: *mut u8, size: usize, align: usize, zeroed: bool, fill: u8) {
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
                s.iter().all(|&x| x == 0),
                "zeroed block {a:#x}+{size} is not zero"
            );
        }
        unsafe { std::ptr::write_bytes(p, fill, size) };
        self.live.insert(
            a,
            Live {
                ptr: p,
                size,
                align,
                fill,
            },
        );
    }

    /// Checks a block's contents and forgets it; returns what it was.
    pub fn on_free(&mut self, p: *mut u8) -> Live {
        let l = self
            .live
            .remove(&(p as usize))
            .expect("freeing a block the model does not know");
        check_fill(p, l.size, l.fill);
        l
    }

    /// Checks that the first `keep` bytes of a reallocated block kept their contents,
    /// then records it under its new address and size.
    pub fn on_realloc(&mut self, old: *mut u8, new: *mut u8, size: usize, align: usize, fill: u8) {
        let l = self
            .live
            .remove(&(old as usize))
            .expect("realloc of a block the model does not know");
        check_fill(new, l.size.min(size), l.fill);
        self.on_alloc(new, size, align, false, fill);
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

    /// Every live block, then forgets them.
    pub fn drain(&mut self) -> Vec<(*mut u8, Live)> {
        std::mem::take(&mut self.live)
            .into_values()
            .map(|l| (l.ptr, l))
            .collect()
    }
}

/// Asserts that `size` bytes at `p` all equal `fill`.
pub fn check_fill(p: *mut u8, size: usize, fill: u8) {
    let s = unsafe { std::slice::from_raw_parts(p, size) };
    if let Some(i) = s.iter().position(|&x| x != fill) {
        panic!(
            "block {p:p}+{size}: byte {i} is {:#x}, expected {fill:#x}",
            s[i]
        );
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

/// Puts back the signal action `old`, first setting `SIG_IGN` so that a signal still
/// pending is discarded instead of reaching a handler that is going away.
#[cfg(unix)]
pub fn restore_signal(sig: libc::c_int, old: &libc::sigaction) {
    // SAFETY: all-zero is a valid `sigaction`.
    let mut ignore: libc::sigaction = unsafe { std::mem::zeroed() };
    ignore.sa_sigaction = libc::SIG_IGN;
    // SAFETY: valid pointers to initialised actions.
    unsafe {
        assert_eq!(libc::sigaction(sig, &ignore, std::ptr::null_mut()), 0);
        assert_eq!(libc::sigaction(sig, old, std::ptr::null_mut()), 0);
    }
}

/// A small deterministic PRNG (xorshift64*), so failures replay.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}
