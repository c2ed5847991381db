//! The magazines' CPU side under miri and loom: plain Rust standing in for the
//! restartable sequences, so the drain protocol of `percpu.rs` is model-checked and its
//! callers run under miri.
//!
//! A "sequence" takes its magazine's `busy` word (a try-lock: if it is taken, another
//! thread or an interrupted caller of ours is "on that CPU", and the real sequence would
//! have been aborted, so this one bypasses), checks the gate, and commits as the asm
//! does. The fence waits until no sequence is inside any magazine: what
//! `membarrier(PRIVATE_EXPEDITED_RSEQ)` achieves by aborting them. This wait exists
//! only in the model; a sequence never waits.
//!
//! Every thread's id is `sync::thread_hint()`: 0 under loom (all threads on one
//! magazine, the most contended case), a stack hash under miri.
//!
//! Depends on: `sync` (through `percpu`), `class`.

use super::on::{Caches, MAGS};
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
        // ORDERING: SeqCst, with the sequences' SeqCst `busy` swap and gate load: the
        // drainer's gate raise and this load, and a sequence's `busy` and gate load,
        // cannot both miss each other. Reading 0 (Acquire) also makes the last
        // sequence's writes ours.
        while m.busy.load(Ordering::SeqCst) != 0 {
            crate::sync::yield_now();
        }
    }
    true
}

/// The magazine this thread's sequences use, if its id is in range, with its `busy`
/// word taken and its gate down.
fn enter(caches: &Caches) -> Option<&super::on::Magazine> {
    let id = crate::sync::thread_hint() % MAGS;
    // ORDERING: Relaxed: a bound (see `set_limit`).
    if id as u32 >= caches.ctl.limit.load(Ordering::Relaxed) {
        return None;
    }
    let m = caches.mags.get(id)?;
    // ORDERING: SeqCst (see `fence`).
    if m.busy.swap(1, Ordering::SeqCst) != 0 {
        return None;
    }
    // ORDERING: SeqCst (see `fence`); it also acquires the last drainer's counts.
    if m.gate.load(Ordering::SeqCst) != 0 {
        leave(m);
        return None;
    }
    Some(m)
}

fn leave(m: &super::on::Magazine) {
    // ORDERING: Release pairs with the fence's load: our writes are the drainer's.
    m.busy.store(0, Ordering::Release);
}

/// As the asm pop.
pub(super) fn pop(caches: &Caches, class: usize, _field: u32) -> Popped {
    let Some(m) = enter(caches) else {
        return Popped::Bypass;
    };
    let ret = (|| {
        let count = m.count.get(class)?;
        // ORDERING: Relaxed: the magazine is ours while `busy` is.
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
        // ORDERING: Relaxed: the magazine is ours while `busy` is.
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
