//! The magazines' CPU side under miri and loom: plain Rust standing in for the
//! restartable sequences, so the drain protocol of `percpu.rs` is model-checked and its
//! callers run under miri.
//!
//! A "sequence" enters its magazine by a CAS of the gate word from 0 to 1 (bit 0: "a
//! sequence runs on this CPU"). It fails if a drainer raised the gate, or if another
//! thread or an interrupted caller of ours is inside (the real sequence would have been
//! aborted): either way this one bypasses. It then commits as the asm does and clears
//! bit 0. The fence waits until bit 0 is clear everywhere: what
//! `membarrier(PRIVATE_EXPEDITED_RSEQ)` achieves by aborting sequences. This wait exists
//! only in the model; a sequence never waits.
//!
//! Every thread's id is `sync::thread_hint()`: 0 under loom (all threads on one
//! magazine, the most contended case), a stack hash under miri.
//!
//! Depends on: `sync` (through `percpu`), `class`.

use super::on::{Caches, Magazine, GATE_STEP, MAGS};
use super::{Popped, Stored};
use crate::sync::Ordering;

/// No sequence is ever aborted here.
pub(crate) fn aborts() -> u64 {
    0
}

/// Test builds: no delay loop in the model.
#[cfg(feature = "hooks")]
pub(crate) fn set_delay(_spins: u64) {}

/// Set-up always works: index by "cpu" (`thread_hint`), no rseq area.
pub(super) fn register() -> Option<(u32, usize)> {
    Some((4, 0))
}

/// Waits until no sequence is inside a magazine (see the module docs).
pub(super) fn fence(caches: &Caches) -> bool {
    for m in &caches.mags {
        // ORDERING: Acquire pairs with the Release in `leave`: the last sequence's
        // writes are ours. Any sequence entering after our raise (one word: the
        // modification order decides) fails its CAS.
        while m.gate.load(Ordering::Acquire) & 1 != 0 {
            crate::sync::yield_now();
        }
    }
    true
}

/// The magazine this thread's sequences use, if its id is in range, entered (bit 0 of
/// its gate set; no drainer's raise on it).
fn enter(caches: &Caches) -> Option<&Magazine> {
    let id = crate::sync::thread_hint() % MAGS;
    // ORDERING: Relaxed: a bound (see `set_limit`).
    if id + caches.ctl.excluded.load(Ordering::Relaxed) as usize >= MAGS {
        return None;
    }
    let m = caches.mags.get(id)?;
    // ORDERING: Acquire pairs with the Release of the last drainer's gate drop and of
    // the last sequence's `leave`: their counts and entries are ours.
    m.gate
        .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .ok()?;
    Some(m)
}

/// Leaves an entered magazine. A drainer may have raised the gate meanwhile (by
/// `GATE_STEP`, which keeps bit 0 ours): it waits in `fence` for this.
fn leave(m: &Magazine) {
    const { assert!(GATE_STEP % 2 == 0) };
    // ORDERING: Release pairs with the fence's Acquire load: our writes are the drainer's.
    m.gate.fetch_sub(1, Ordering::Release);
}

/// As the asm pop.
pub(super) fn pop(caches: &Caches, class: usize, _field: u32) -> Popped {
    let Some(m) = enter(caches) else {
        return Popped::Bypass;
    };
    let ret = (|| {
        let count = m.count.get(class)?;
        // ORDERING: Relaxed: the magazine is ours while we are entered.
        let n = count.load(Ordering::Relaxed).checked_sub(1)?;
        // ORDERING: Relaxed, as above.
        let block = m.slot(class, n)?.load(Ordering::Relaxed);
        // ORDERING: Relaxed, as above (the commit).
        count.store(n, Ordering::Relaxed);
        Some(Popped::Block(block))
    })()
    .unwrap_or(Popped::Empty);
    leave(m);
    ret
}

/// As the asm push.
pub(super) fn push(caches: &Caches, class: usize, _field: u32, block: *mut u8) -> Stored {
    let Some(m) = enter(caches) else {
        return Stored::Bypass;
    };
    let ret = (|| {
        let count = m.count.get(class)?;
        // ORDERING: Relaxed: the magazine is ours while we are entered.
        let n = count.load(Ordering::Relaxed);
        // ORDERING: Relaxed: written at set-up, before `field` (Release).
        if n >= caches.ctl.caps.get(class)?.load(Ordering::Relaxed) {
            return None;
        }
        // ORDERING: Relaxed, as above: invisible until the count is.
        m.slot(class, n)?.store(block, Ordering::Relaxed);
        // ORDERING: Relaxed, as above (the commit).
        count.store(n + 1, Ordering::Relaxed);
        Some(Stored::Cached)
    })()
    .unwrap_or(Stored::Full);
    leave(m);
    ret
}
