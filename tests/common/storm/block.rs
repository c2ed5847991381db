//! The storm's blocks: how workers and handlers allocate, check, resize and free them.
//!
//! A block carries the tests' fill [`pattern`] seeded by its tag, and owns the shadow
//! granules of its `usable_size` bytes from hand-out to free (see the storm's module
//! docs). Everything here is reached from handlers: atomics, the allocator and slice
//! operations only.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::Ordering;

use super::{bump, in_alloc, Storm, WorkerState, C};
use crate::common::{pattern, Rng};

/// Which API a block came from (and goes back through).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Malloc,
    Calloc,
    Global,
}

/// `malloc` or `calloc` (16-aligned), or `GlobalAlloc::alloc` aligned to
/// `1 << (shift + rng.below(shifts))`, one in three each.
pub(super) fn pick_via(rng: &mut Rng, shift: usize, shifts: usize) -> (Via, usize) {
    match rng.below(3) {
        0 => (Via::Malloc, 16),
        1 => (Via::Calloc, 16),
        _ => (Via::Global, 1 << (shift + rng.below(shifts))),
    }
}

/// A live block. Its contents: the [`pattern`] of its tag.
#[derive(Clone, Copy)]
pub struct Block {
    pub ptr: *mut u8,
    pub size: usize,
    /// The bytes claimed in the shadow: `usable_size` at allocation.
    pub usable: usize,
    pub align: usize,
    pub via: Via,
    pub tag: u32,
}

fn new_tag() -> u32 {
    let n = C.next_tag.fetch_add(1, Ordering::Relaxed);
    // Nonzero; unique for the first 2^32 - 1 allocations (a test makes millions).
    ((n - 1) % u32::MAX as usize) as u32 + 1
}

/// Claims the block's granules for its tag. A granule already owned means two live
/// blocks overlap.
fn shadow_claim<const N: usize, S: Storm<N>>(b: &Block) {
    S::each_granule(b.ptr, b.usable, |g| {
        // ORDERING: Relaxed: the allocator's hand-over orders a block's release before
        // its reuse; seeing a stale tag is exactly the allocator bug we look for.
        if g.compare_exchange(0, b.tag, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            S::overlap();
        }
    });
}

/// Releases the block's granules: done before the block goes back to the allocator.
fn shadow_release<const N: usize, S: Storm<N>>(b: &Block) {
    S::each_granule(b.ptr, b.usable, |g| {
        // ORDERING: Relaxed, as in `shadow_claim`.
        if g.compare_exchange(b.tag, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            S::overlap();
        }
    });
}

/// Counts the bytes among the first `len` that do not hold the block's pattern.
fn check(b: &Block, len: usize) {
    let wrong = pattern::wrong_bytes(b.ptr, len, u64::from(b.tag));
    if wrong > 0 {
        C.corrupt_bytes.fetch_add(wrong, Ordering::Relaxed);
    }
}

/// Allocates a block of `size` bytes `via` the given call (`w`: the calling worker;
/// `None` in a handler).
pub(super) fn alloc<const N: usize, S: Storm<N>>(
    w: Option<&WorkerState>,
    size: usize,
    align: usize,
    via: Via,
) -> Option<Block> {
    let a = S::heap();
    let layout = Layout::from_size_align(size, align).ok()?;
    let ptr = in_alloc(w, || match via {
        Via::Malloc => a.malloc(size),
        Via::Calloc => a.calloc(1, size),
        // SAFETY: `layout` has a non-zero size.
        Via::Global => unsafe { GlobalAlloc::alloc(a, layout) },
    });
    if ptr.is_null() {
        bump(&C.out_of_memory);
        return None;
    }
    let usable = a.usable_size(ptr);
    if ptr.addr() % align != 0 || usable < size {
        bump(&C.bad_blocks);
    }
    if !S::tracks(ptr, usable.max(size)) {
        // Not ours to write: leave it alone (a leak, and a failed test).
        bump(&C.bad_blocks);
        return None;
    }
    let b = Block {
        ptr,
        size,
        usable: usable.max(size),
        align,
        via,
        tag: new_tag(),
    };
    shadow_claim::<N, S>(&b);
    if via == Via::Calloc {
        // SAFETY: I1, the block was just handed to us; nothing else refers to it.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, size) };
        if !pattern::all_bytes(bytes, 0) {
            bump(&C.bad_blocks);
        }
    }
    pattern::fill(ptr, size, u64::from(b.tag));
    bump(&C.allocated);
    S::allocated(w.is_none(), &b);
    Some(b)
}

/// Checks and frees a block (`w`: the calling worker).
pub(super) fn free<const N: usize, S: Storm<N>>(w: Option<&WorkerState>, b: Block) {
    let a = S::heap();
    check(&b, b.size);
    shadow_release::<N, S>(&b);
    let layout = Layout::from_size_align(b.size, b.align).unwrap_or(Layout::new::<u8>());
    in_alloc(w, || match b.via {
        // SAFETY: a live block from `a.malloc`/`a.calloc`/`a.realloc`, freed once.
        Via::Malloc | Via::Calloc => unsafe { a.free(b.ptr) },
        // SAFETY: a live block from `GlobalAlloc::alloc`/`realloc` with this layout.
        Via::Global => unsafe { GlobalAlloc::dealloc(a, b.ptr, layout) },
    });
    bump(&C.freed);
}

/// Resizes a block; checks that the kept prefix survived and extends the pattern.
/// Returns the block, or `None` if the allocator answered with memory the storm does
/// not track (left alone: a leak, and a failed test).
pub(super) fn resize<const N: usize, S: Storm<N>>(
    w: Option<&WorkerState>,
    mut b: Block,
    new_size: usize,
) -> Option<Block> {
    let a = S::heap();
    // The block may move: its old granules are free for others as soon as the
    // allocator frees it, so release them first (and reclaim them if nothing moved).
    shadow_release::<N, S>(&b);
    let layout = Layout::from_size_align(b.size, b.align).unwrap_or(Layout::new::<u8>());
    let new = in_alloc(w, || match b.via {
        // SAFETY: a live block from `a.malloc`/`a.calloc`/`a.realloc`.
        Via::Malloc | Via::Calloc => unsafe { a.realloc(b.ptr, new_size) },
        // SAFETY: a live block with this layout; `new_size` is non-zero.
        Via::Global => unsafe { GlobalAlloc::realloc(a, b.ptr, layout, new_size) },
    });
    if new.is_null() {
        bump(&C.out_of_memory);
        shadow_claim::<N, S>(&b);
        return Some(b);
    }
    let usable = a.usable_size(new);
    if new.addr() % b.align != 0 || usable < new_size {
        bump(&C.bad_blocks);
    }
    if !S::tracks(new, usable.max(new_size)) {
        bump(&C.bad_blocks);
        return None;
    }
    let kept = b.size.min(new_size);
    b.ptr = new;
    b.usable = usable.max(new_size);
    shadow_claim::<N, S>(&b);
    check(&b, kept);
    b.size = new_size;
    pattern::fill_from(b.ptr, kept, new_size, u64::from(b.tag));
    Some(b)
}
