//! A lock-free ring of slots through which blocks cross interrupt levels.
//!
//! Each slot is one atomic pointer: `push` claims an empty slot with a CAS (null to the
//! block), `pop` takes a full one with a swap (block to null). A slot changes hands in one
//! atomic step, so a handler that preempts a push or pop half way (between two slots)
//! sees each slot either empty or holding a whole, published block; no block is popped
//! twice, none is lost. Nothing here masks interrupts (on targets with CAS), so NMI may
//! use it too.

use core::ptr::null_mut;
use core::sync::atomic::Ordering::{AcqRel, Relaxed, Release};
// portable-atomic: the same atomics on targets with CAS, emulated ones on thumbv6m (the
// M0 image picks the emulation's mode), so one ring serves every image.
use portable_atomic::AtomicPtr;

/// Slots in the ring.
pub const SLOTS: usize = 64;

static RING: [AtomicPtr<u8>; SLOTS] = [const { AtomicPtr::new(null_mut()) }; SLOTS];

/// The slots `base..base + span` (at most the whole ring), scanned from `base + rot % span`
/// round to it.
fn slots(base: usize, span: usize, rot: u32) -> impl Iterator<Item = &'static AtomicPtr<u8>> {
    let span = span.clamp(1, SLOTS);
    (0..span).map(move |k| &RING[(base + (rot as usize + k) % span) % SLOTS])
}

/// Hands `block` on in one of the slots `base..base + span` (scanned from a rotation
/// `rot`); false if those are all full.
pub fn push(block: *mut u8, base: usize, span: usize, rot: u32) -> bool {
    for slot in slots(base, span, rot) {
        // ORDERING: Release publishes the block's pattern, written before; pairs with
        // the Acquire swap in `pop`. A failed CAS only tells us the slot is taken (Relaxed).
        if slot
            .compare_exchange(null_mut(), block, Release, Relaxed)
            .is_ok()
        {
            return true;
        }
    }
    false
}

/// Takes a block from one of the slots `base..base + span` (scanned from a rotation
/// `rot`); null if there is none.
pub fn pop(base: usize, span: usize, rot: u32) -> *mut u8 {
    for slot in slots(base, span, rot) {
        // ORDERING: Relaxed peek to skip empty slots without a write.
        if slot.load(Relaxed).is_null() {
            continue;
        }
        // ORDERING: Acquire pairs with the Release CAS in `push` (the pattern is visible);
        // Release is not needed for the null we leave, but AcqRel keeps swaps uniform.
        let p = slot.swap(null_mut(), AcqRel);
        if !p.is_null() {
            return p;
        }
    }
    null_mut()
}
