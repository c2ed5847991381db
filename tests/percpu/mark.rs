//! Ownership marks: how every test of this binary proves that no block is handed out
//! twice while it sits in, or passes through, a per-CPU magazine.
//!
//! A marked block has a unique nonzero tag and carries two marks:
//! - **in the block**: the tests' fill pattern seeded by the tag (`common::pattern`:
//!   its first eight bytes are the tag itself, the rest a tag-derived byte), checked
//!   before the block is freed, its tag bytes then cleared, so a second owner's writes
//!   (or the allocator's link word in a block it believes free) show;
//! - **beside the heap**: [`Owners`], one atomic owner tag per 16-byte granule of the
//!   `SigAlloc` (its heap lies inside it), claimed by a CAS from 0 to the tag when the
//!   block is handed out and released by a CAS back before it is freed. A failed CAS
//!   means two live blocks share bytes (I1 broken, a magazine popped one block twice),
//!   caught the moment the second owner gets it, before either writes.
//!
//! Everything here is async-signal-safe and fork-safe: atomics, the allocator, slice
//! compares and fills; no allocation elsewhere, no lock, no panic (every failure is
//! counted in a [`Tally`] for the test to assert on). Signal handlers, a forked child of
//! a threaded parent and a ptrace'd child all use it.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::common::pattern;
use sigalloc::SigAlloc;

/// Bytes per shadow granule: the smallest block, and every block's alignment.
pub(crate) const GRANULE: usize = 16;

/// The number of granules of a `SigAlloc<N>` (the size of its [`Owners`]).
pub(crate) const fn granules<const N: usize>() -> usize {
    std::mem::size_of::<SigAlloc<N>>().div_ceil(GRANULE)
}

/// One heap's owner tags, one per 16-byte granule of the `SigAlloc` itself.
pub(crate) struct Owners<const G: usize> {
    tags: [AtomicU32; G],
}

impl<const G: usize> Owners<G> {
    pub(crate) const fn new() -> Self {
        Owners {
            tags: [const { AtomicU32::new(0) }; G],
        }
    }

    /// The granules of the `len` bytes at `p`, if they lie inside `a`.
    fn span<const N: usize>(
        &self,
        a: &SigAlloc<N>,
        p: *const u8,
        len: usize,
    ) -> Option<&[AtomicU32]> {
        let off = p.addr().checked_sub(std::ptr::from_ref(a).addr())?;
        self.tags
            .get(off / GRANULE..off.checked_add(len.max(1))?.div_ceil(GRANULE))
    }

    /// Claims the granules for `tag`; `false` if any was owned (or lies outside `a`).
    fn claim<const N: usize>(&self, a: &SigAlloc<N>, p: *const u8, len: usize, tag: u32) -> bool {
        let Some(gs) = self.span(a, p, len) else {
            return false;
        };
        let mut ok = true;
        for g in gs {
            // ORDERING: Relaxed: the allocator's hand-over (the freer's Release, the next
            // owner's Acquire, or the same CPU's program order through a magazine) orders
            // a release before the next claim; a stale tag is exactly the bug we look for.
            ok &= g
                .compare_exchange(0, tag, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        }
        ok
    }

    /// Releases the granules `tag` holds; `false` if one was not its.
    fn release<const N: usize>(&self, a: &SigAlloc<N>, p: *const u8, len: usize, tag: u32) -> bool {
        let Some(gs) = self.span(a, p, len) else {
            return false;
        };
        let mut ok = true;
        for g in gs {
            // ORDERING: Relaxed, as in `claim`.
            ok &= g
                .compare_exchange(tag, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        }
        ok
    }

    /// Whether no granule is owned (every marked block was given back).
    pub(crate) fn empty(&self) -> bool {
        self.tags.iter().all(|g| g.load(Ordering::Relaxed) == 0)
    }
}

/// What one test saw; every field a counter, reset by [`Tally::reset`].
pub(crate) struct Tally {
    /// Granules claimed while another live block held them, or released by a block
    /// that no longer held them: a block handed out twice.
    pub(crate) overlaps: AtomicUsize,
    /// Bytes that did not hold their block's marks when it was freed.
    pub(crate) corrupt: AtomicUsize,
    /// Allocations that returned null (or a block outside the heap, or too short).
    pub(crate) nulls: AtomicUsize,
    pub(crate) bad: AtomicUsize,
    /// Marked blocks handed out, and checked and freed.
    pub(crate) allocs: AtomicUsize,
    pub(crate) frees: AtomicUsize,
}

impl Tally {
    pub(crate) const fn new() -> Self {
        Tally {
            overlaps: AtomicUsize::new(0),
            corrupt: AtomicUsize::new(0),
            nulls: AtomicUsize::new(0),
            bad: AtomicUsize::new(0),
            allocs: AtomicUsize::new(0),
            frees: AtomicUsize::new(0),
        }
    }

    pub(crate) fn reset(&self) {
        for c in self.all() {
            c.store(0, Ordering::Relaxed);
        }
    }

    fn all(&self) -> [&AtomicUsize; 6] {
        [
            &self.overlaps,
            &self.corrupt,
            &self.nulls,
            &self.bad,
            &self.allocs,
            &self.frees,
        ]
    }

    /// Whether nothing went wrong (nulls allowed only if `nulls_ok`) and every block
    /// handed out was freed.
    pub(crate) fn sound(&self, nulls_ok: bool) -> bool {
        get(&self.overlaps) == 0
            && get(&self.corrupt) == 0
            && get(&self.bad) == 0
            && (nulls_ok || get(&self.nulls) == 0)
            && get(&self.allocs) == get(&self.frees)
    }

    /// The counters, for a message.
    pub(crate) fn describe(&self) -> String {
        format!(
            "overlaps {}, corrupt bytes {}, nulls {}, bad blocks {}, allocated {}, freed {}",
            get(&self.overlaps),
            get(&self.corrupt),
            get(&self.nulls),
            get(&self.bad),
            get(&self.allocs),
            get(&self.frees)
        )
    }

    /// Panics with the counters unless [`Tally::sound`].
    pub(crate) fn assert_sound(&self, nulls_ok: bool, what: &str) {
        assert!(self.sound(nulls_ok), "{what}: {}", self.describe());
    }
}

pub(crate) fn bump(c: &AtomicUsize) {
    // ORDERING: Relaxed: counters, read once every thread has been joined.
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn get(c: &AtomicUsize) -> usize {
    c.load(Ordering::Relaxed)
}

/// Owner tags: unique per allocation in a process, never 0.
static NEXT_TAG: AtomicUsize = AtomicUsize::new(1);

fn next_tag() -> u32 {
    let n = NEXT_TAG.fetch_add(1, Ordering::Relaxed);
    ((n - 1) % u32::MAX as usize) as u32 + 1
}

/// A live marked block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Marked {
    pub(crate) ptr: *mut u8,
    /// Bytes asked for (and carrying the pattern).
    pub(crate) size: usize,
    /// Bytes claimed in the shadow: its `usable_size`.
    pub(crate) usable: usize,
    pub(crate) tag: u32,
}

// SAFETY: a `Marked` is the sole handle to its block; moving it moves that ownership,
// and any thread may free any block.
unsafe impl Send for Marked {}

/// The heap, its shadow and its tally: what marked blocks are taken from and given to.
pub(crate) struct Marks<'a, const N: usize, const G: usize> {
    pub(crate) heap: &'a SigAlloc<N>,
    pub(crate) owners: &'a Owners<G>,
    pub(crate) tally: &'a Tally,
}

impl<const N: usize, const G: usize> Clone for Marks<'_, N, G> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<const N: usize, const G: usize> Copy for Marks<'_, N, G> {}

impl<const N: usize, const G: usize> Marks<'_, N, G> {
    /// Allocates `size` bytes, claims them and writes the marks; `None` (counted) on
    /// null or a block the test may not write.
    pub(crate) fn take(self, size: usize) -> Option<Marked> {
        let p = self.heap.malloc(size);
        if p.is_null() {
            bump(&self.tally.nulls);
            return None;
        }
        let usable = self.heap.usable_size(p);
        if usable < size || p.addr() % GRANULE != 0 {
            bump(&self.tally.bad);
        }
        let usable = usable.max(size);
        let tag = next_tag();
        if self.owners.span(self.heap, p, usable).is_none() {
            // Outside the heap: not ours to write (a leak, and a failed test).
            bump(&self.tally.bad);
            return None;
        }
        if !self.owners.claim(self.heap, p, usable, tag) {
            bump(&self.tally.overlaps);
        }
        pattern::fill(p, size, u64::from(tag));
        bump(&self.tally.allocs);
        Some(Marked {
            ptr: p,
            size,
            usable,
            tag,
        })
    }

    /// Whether the block still holds its marks (counting the bytes that do not).
    pub(crate) fn check(self, m: &Marked) -> bool {
        let wrong = pattern::wrong_bytes(m.ptr, m.size, u64::from(m.tag));
        if wrong > 0 {
            self.tally.corrupt.fetch_add(wrong, Ordering::Relaxed);
        }
        wrong == 0
    }

    /// Checks the marks, clears the tag bytes, releases the granules and frees.
    pub(crate) fn give(self, m: Marked) {
        self.check(&m);
        // SAFETY: `m` is a live block of ours of at least `m.size` bytes; only the
        // first `min(size, 8)` (its tag) are cleared.
        unsafe { m.ptr.write_bytes(0, m.size.min(8)) };
        if !self.owners.release(self.heap, m.ptr, m.usable, m.tag) {
            bump(&self.tally.overlaps);
        }
        // SAFETY: a live block of `self.heap` from `malloc`, freed once.
        unsafe { self.heap.free(m.ptr) };
        bump(&self.tally.frees);
    }
}

/// A size of 16..=2048 bytes, log-uniform over the eight small classes (so each class's
/// magazine sees traffic), from the generator's next values.
pub(crate) fn small_size(rng: &mut crate::common::Rng) -> usize {
    let class = rng.below(8);
    let hi = 16usize << class;
    let lo = (hi / 2 + 1).max(1);
    rng.range(lo, hi)
}

/// A thread's working set of `S` marked blocks: each step gives back the block of a
/// random slot, or fills the slot if it is empty.
pub(crate) struct WorkingSet<const S: usize> {
    live: [Option<Marked>; S],
    rng: crate::common::Rng,
}

impl<const S: usize> WorkingSet<S> {
    /// An empty set whose choices follow `mix(seed)`.
    pub(crate) fn new(seed: u64) -> Self {
        WorkingSet {
            live: [None; S],
            rng: crate::common::Rng(crate::common::mix(seed)),
        }
    }

    /// One step: a random slot's block is given back, or the empty slot takes a new
    /// block of a random small class.
    pub(crate) fn step<const N: usize, const G: usize>(&mut self, marks: Marks<'_, N, G>) {
        let i = self.rng.below(S);
        if let Some(slot) = self.live.get_mut(i) {
            match slot.take() {
                None => *slot = marks.take(small_size(&mut self.rng)),
                Some(m) => marks.give(m),
            }
        }
    }

    /// Gives every block back.
    pub(crate) fn give_all<const N: usize, const G: usize>(&mut self, marks: Marks<'_, N, G>) {
        for m in self.live.iter_mut().filter_map(Option::take) {
            marks.give(m);
        }
    }
}
