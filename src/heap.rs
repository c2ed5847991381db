//! The allocator: active slots, refills, spans, frees, reallocation.
//!
//! # Active slots
//! Each class has [`SLOTS`] slots, each holding one `ACTIVE` chunk or nothing. To
//! allocate, a thread *swaps* a slot to empty, which makes it the chunk's only owner;
//! it pops a block with plain loads and stores (see `chunk.rs`), then puts the chunk
//! back with a CAS from empty. The slot to try first is a hash of the stack address, so
//! threads (whose stacks lie megabytes apart) spread over the slots without any TLS.
//!
//! A thread stopped while it holds a chunk (preempted, or interrupted by a signal
//! handler) blocks nobody (I4): the handler finds that slot empty and tries the next,
//! then a partial chunk, then a free one. When the thread resumes and finds its slot
//! refilled, it tries the other slots, then releases its chunk to the partial map.
//!
//! # Where memory comes from
//! `slot -> partial maps -> free maps -> other slots -> (reclaim slots) -> grow -> null`,
//! each map step walking every region (`region::Space`), the static heap first. When a
//! class's free blocks are all back in a chunk that no one owns, the chunk returns to
//! its region's free map, so memory moves between classes (AO_malloc never does).
//! Requests above the largest class take a run of whole chunks from one region. `grow`
//! is the only way new memory appears; this file does not know where it comes from.
//!
//! Depends on: `sync`, `class`, `bitmap`, `chunk`, `region`. Upholds I1-I4, I6.

use crate::chunk::{Anchor, Pushed, ACTIVE, EMPTY, SPAN_CLASS, SPAN_TAIL_CLASS};
use crate::class::{fit, Class, Fit, CHUNK, CHUNK_SHIFT, NCLASSES};
use crate::region::{ChunkId, Region, Space, LISTS, MAX_REGION_CHUNKS};
use crate::sync::{AtomicU32, AtomicUsize, Ordering};

/// Active slots per class (one per partial list, so a slot hint names both).
pub(crate) const SLOTS: usize = LISTS;
const SLOT_BITS: u32 = SLOTS.trailing_zeros();
static_assertions::const_assert!(SLOTS.is_power_of_two());

/// One active slot: 0, or a [`ChunkId`] + 1. Padded so threads on different slots
/// never share a cache line.
#[repr(align(64))]
struct Slot(AtomicU32);

/// Why a free was refused (only ever reported; nothing is changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not a block this heap handed out.
    Invalid,
    /// A block that is already free.
    DoubleFree,
}

/// The allocator state that does not scale with the heap (the side tables live in
/// the region).
pub(crate) struct Heap {
    slots: [[Slot; SLOTS]; NCLASSES],
    /// Chunks in use (formatted for a class or part of a span).
    used_chunks: AtomicUsize,
    /// The most chunks ever in use at once.
    peak_chunks: AtomicUsize,
}

/// The slot to try first (and the partial list to use): from the stack address, so no
/// TLS and no initialisation (see `sync::stack_hash`).
#[inline(always)]
fn slot_hint() -> usize {
    crate::sync::stack_hash() >> (usize::BITS - SLOT_BITS)
}

impl Heap {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Heap {
        #[allow(clippy::declare_interior_mutable_const)]
        const SLOT: Slot = Slot(AtomicU32::new(0));
        #[allow(clippy::declare_interior_mutable_const)]
        const CLASS: [Slot; SLOTS] = [SLOT; SLOTS];
        Heap {
            slots: [CLASS; NCLASSES],
            used_chunks: AtomicUsize::new(0),
            peak_chunks: AtomicUsize::new(0),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Heap {
        Heap {
            slots: core::array::from_fn(|_| core::array::from_fn(|_| Slot(AtomicU32::new(0)))),
            used_chunks: AtomicUsize::new(0),
            peak_chunks: AtomicUsize::new(0),
        }
    }

    /// Allocates `size` bytes at `align`; the flag says the memory is known to be zero.
    #[inline(always)]
    pub(crate) fn alloc(&self, sp: &Space, size: usize, align: usize) -> Option<(*mut u8, bool)> {
        match fit(size, align)? {
            Fit::Small(c) => self.alloc_small(sp, c),
            Fit::Span(n) => self.alloc_span_slow(sp, n),
        }
    }

    #[inline(always)]
    fn slot(&self, c: Class, s: usize) -> Option<&Slot> {
        self.slots.get(c.id())?.get(s % SLOTS)
    }

    #[inline(always)]
    fn alloc_small(&self, sp: &Space, c: Class) -> Option<(*mut u8, bool)> {
        let hint = slot_hint();
        if let Some(got) = self.pop_from_slot(sp, c, hint) {
            return Some(got);
        }
        self.alloc_small_slow(sp, c, hint)
    }

    /// Takes slot `s`'s chunk, pops a block and puts the chunk back.
    #[inline(always)]
    fn pop_from_slot(&self, sp: &Space, c: Class, s: usize) -> Option<(*mut u8, bool)> {
        let slot = self.slot(c, s)?;
        // ORDERING: Acquire pairs with the Release CAS in `put_back`: the previous
        // holder's owner-only writes happen-before ours.
        let v = slot.0.take(Ordering::Acquire);
        let id = ChunkId(v.checked_sub(1)?);
        if id.region() == 0 {
            // The inline heap, spelled out so its constants stay in registers.
            return self.pop_and_keep(sp, sp.home(), c, id.chunk(), s);
        }
        self.pop_elsewhere(sp, c, id, s)
    }

    #[cold]
    #[inline(never)]
    fn pop_elsewhere(
        &self,
        sp: &Space,
        c: Class,
        id: ChunkId,
        s: usize,
    ) -> Option<(*mut u8, bool)> {
        // A slot only ever holds chunks of published regions, which stay published.
        let r = sp.get(id.region())?;
        self.pop_and_keep(sp, &r, c, id.chunk(), s)
    }

    /// Pops a block from chunk `ci`, which the caller owns, and keeps the chunk in a slot
    /// (or releases it). `None` if the chunk was exhausted (it is then `FULL`).
    #[inline(always)]
    fn pop_and_keep(
        &self,
        sp: &Space,
        r: &Region,
        c: Class,
        ci: usize,
        s: usize,
    ) -> Option<(*mut u8, bool)> {
        let d = r.desc(ci)?;
        let base = r.chunk_base(ci);
        // SAFETY: I1, we own chunk `ci`: it came out of a slot, a claim or the free map.
        let (idx, zero) = unsafe { d.owner_pop(base, c) }?;
        #[cfg(feature = "checked")]
        if !d.mark_live(idx) {
            // A block handed out twice would break I1: drop it (a leak, reported) and
            // keep the heap consistent.
            self.put_back(sp, r, c, ci, s);
            return None;
        }
        self.put_back(sp, r, c, ci, s);
        Some((base.wrapping_add((idx as usize) << c.shift()), zero))
    }

    #[cold]
    #[inline(never)]
    fn alloc_small_slow(&self, sp: &Space, c: Class, hint: usize) -> Option<(*mut u8, bool)> {
        // Our own partial list first (the chunks we freed into), then the others'.
        for r in sp.all() {
            for k in 0..LISTS {
                while let Some(ci) = r.partial(c, hint + k).take_any() {
                    let Some(d) = r.desc(ci) else { continue };
                    if d.claim(c) {
                        if let Some(got) = self.pop_and_keep(sp, &r, c, ci, hint) {
                            return Some(got);
                        }
                    }
                }
            }
        }
        for r in sp.all() {
            if let Some(ci) = self.claim_free_near(&r, hint) {
                r.desc(ci)?.format(c);
                return self.pop_and_keep(sp, &r, c, ci, hint);
            }
        }
        // Memory is short: use the chunks other threads keep in their slots. (Doing this
        // earlier would make threads steal each other's chunks back and forth.)
        for k in 1..SLOTS {
            if let Some(got) = self.pop_from_slot(sp, c, hint + k) {
                return Some(got);
            }
        }
        let (r, ci) = self.claim_chunks_slow(sp, 1)?;
        r.desc(ci)?.format(c);
        self.pop_and_keep(sp, &r, c, ci, hint)
    }

    /// Puts chunk `ci` (which the caller owns) back into slot `s` of class `c`; releases
    /// it if the slot was refilled meanwhile (by a handler that interrupted us, or another
    /// thread). Other slots are left to their own threads.
    #[inline(always)]
    fn put_back(&self, sp: &Space, r: &Region, c: Class, ci: usize, s: usize) {
        if let Some(slot) = self.slot(c, s) {
            let v = r.chunk_id(ci).0 + 1;
            // ORDERING: Release pairs with the Acquire swap in `pop_from_slot`.
            if slot
                .0
                .compare_exchange(0, v, Ordering::Release, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
        self.release_slow(sp, r, c, ci);
    }

    /// Gives up chunk `ci`, which the caller owns.
    #[cold]
    #[inline(never)]
    fn release_slow(&self, sp: &Space, r: &Region, c: Class, ci: usize) {
        let Some(d) = r.desc(ci) else { return };
        // SAFETY: I1, the caller owns chunk `ci`, which serves `c`.
        match unsafe { d.release(r.chunk_base(ci), c) } {
            Pushed::Listed => r.partial(c, slot_hint()).set(ci),
            Pushed::Emptied => self.retire(sp, r, ci, Some(c)),
            Pushed::Done | Pushed::Rejected => {}
        }
    }

    /// Returns chunk `ci`, `EMPTY` and owned by the caller, to the free map.
    fn retire(&self, sp: &Space, r: &Region, ci: usize, c: Option<Class>) {
        if let Some(d) = r.desc(ci) {
            d.reset(c);
        }
        if let Some(c) = c {
            // A listing left by a releaser that was overtaken; claimers would drop it
            // anyway, so this only saves them the work.
            for list in 0..LISTS {
                r.partial(c, list).clear(ci);
            }
        }
        // ORDERING: Relaxed: a statistic.
        self.used_chunks.fetch_sub(1, Ordering::Relaxed);
        r.used().clear(ci);
        sp.retired(r);
    }

    /// Claims one free chunk for the thread with slot hint `hint`. Each hint starts its
    /// search in its own zone of the heap, so one thread's chunks (and their descriptors,
    /// four to a cache line) sit together instead of interleaving with another's.
    fn claim_free_near(&self, r: &Region, hint: usize) -> Option<usize> {
        let span = r.end() - r.first();
        let zone = r.first() + span * (hint % SLOTS) / SLOTS;
        let used = r.used();
        let ci = used
            .claim_one(zone, r.end())
            .or_else(|| used.claim_one(r.first(), zone))?;
        self.count_claimed(1);
        Some(ci)
    }

    fn count_claimed(&self, n: usize) {
        // ORDERING: Relaxed: statistics.
        let now = self.used_chunks.fetch_add(n, Ordering::Relaxed) + n;
        self.peak_chunks.fetch_max(now, Ordering::Relaxed);
    }

    /// Claims `n` consecutive free chunks.
    fn claim_free(&self, r: &Region, n: usize) -> Option<usize> {
        let ci = r.used().claim_run(r.first(), r.end(), n)?;
        self.count_claimed(n);
        Some(ci)
    }

    /// Claims `n` consecutive free chunks in any region, reclaiming idle slot chunks if
    /// none are free, and growing the heap as the last resort.
    #[cold]
    #[inline(never)]
    fn claim_chunks_slow(&self, sp: &Space, n: usize) -> Option<(Region, usize)> {
        let any = |heap: &Self| {
            sp.all()
                .find_map(|r| heap.claim_free(&r, n).map(|ci| (r, ci)))
        };
        if let Some(got) = any(self) {
            return Some(got);
        }
        // Reclaiming only helps a run that some region could hold.
        let fits = sp.all().any(|r| r.end() - r.first() >= n);
        if fits && self.reclaim_slots(sp) {
            if let Some(got) = any(self) {
                return Some(got);
            }
        }
        // Others may take a new region's chunks before we do (we may be preempted, or
        // interrupted by a handler that allocates, right after mapping it): then look
        // everywhere again and grow again. Each round someone else made progress, and
        // growth ends when the OS refuses or the registry is full.
        loop {
            let r = sp.grow(n)?;
            if let Some(ci) = self.claim_free(&r, n) {
                return Some((r, ci));
            }
            if let Some(got) = any(self) {
                return Some(got);
            }
        }
    }

    /// Empties every slot, releasing its chunk, so chunks whose blocks are all free go
    /// back to the free map. Returns whether any chunk was retired.
    fn reclaim_slots(&self, sp: &Space) -> bool {
        // ORDERING: Relaxed: only compared before and after.
        let before = self.used_chunks.load(Ordering::Relaxed);
        for c in Class::all() {
            for s in 0..SLOTS {
                let Some(slot) = self.slot(c, s) else {
                    continue;
                };
                // ORDERING: Acquire, as in `pop_from_slot`: we become the owner.
                let v = slot.0.swap(0, Ordering::Acquire);
                if let Some(id) = v.checked_sub(1).map(ChunkId) {
                    if let Some(r) = sp.get(id.region()) {
                        self.release_slow(sp, &r, c, id.chunk());
                    }
                }
            }
        }
        // ORDERING: Relaxed, as above.
        self.used_chunks.load(Ordering::Relaxed) < before
    }

    #[cold]
    #[inline(never)]
    fn alloc_span_slow(&self, sp: &Space, n: usize) -> Option<(*mut u8, bool)> {
        if n >= MAX_REGION_CHUNKS {
            return None;
        }
        let (r, ci) = self.claim_chunks_slow(sp, n)?;
        let mut zero = true;
        for i in ci..ci + n {
            if let Some(d) = r.desc(i) {
                zero &= d.is_clean();
                d.mark_dirty();
                // ORDERING: Relaxed: we own the run; this only labels it for frees.
                d.anchor.store(
                    Anchor::new(EMPTY, SPAN_TAIL_CLASS, 0, 0).0,
                    Ordering::Relaxed,
                );
            }
        }
        let d = r.desc(ci)?;
        // ORDERING: Relaxed: we own the run exclusively; whoever frees the span learns
        // of it through the user's own synchronisation with us.
        d.span.store(n as u32, Ordering::Relaxed);
        d.anchor
            .store(Anchor::new(ACTIVE, SPAN_CLASS, 0, 0).0, Ordering::Relaxed);
        Some((r.chunk_base(ci), zero))
    }

    /// Frees the block at `ptr`.
    #[inline(always)]
    pub(crate) fn free(&self, sp: &Space, ptr: *mut u8) -> Result<(), Refused> {
        match sp.home().locate(ptr) {
            // The inline heap, spelled out so its constants stay in registers.
            Some((ci, off)) => self.free_at(sp, sp.home(), ci, off),
            None => self.free_elsewhere(sp, ptr),
        }
    }

    #[cold]
    #[inline(never)]
    fn free_elsewhere(&self, sp: &Space, ptr: *mut u8) -> Result<(), Refused> {
        let (r, ci, off) = sp.find_other(ptr).ok_or(Refused::Invalid)?;
        self.free_at(sp, &r, ci, off)
    }

    /// Frees the block at offset `off` of chunk `ci` of `r`.
    #[inline(always)]
    fn free_at(&self, sp: &Space, r: &Region, ci: usize, off: usize) -> Result<(), Refused> {
        let d = r.desc(ci).ok_or(Refused::Invalid)?;
        // ORDERING: Relaxed: the block is live, so its chunk's class cannot change; the
        // user's synchronisation with the allocating thread ordered the class write.
        let a = d.anchor(Ordering::Relaxed);
        let Some(c) = a.small_class() else {
            return self.free_span_slow(r, ci, off, a);
        };
        if off & (c.size() - 1) != 0 {
            return Err(Refused::Invalid);
        }
        let idx = (off >> c.shift()) as u32;
        #[cfg(feature = "checked")]
        if !d.mark_freed(idx) {
            return Err(Refused::DoubleFree);
        }
        // SAFETY: the caller frees a block it owns; `c` is its chunk's class (above).
        match unsafe { d.push(r.chunk_base(ci), c, idx) } {
            Pushed::Done => Ok(()),
            Pushed::Listed => {
                r.partial(c, slot_hint()).set(ci);
                Ok(())
            }
            Pushed::Emptied => {
                self.retire(sp, r, ci, Some(c));
                Ok(())
            }
            Pushed::Rejected => Err(Refused::DoubleFree),
        }
    }

    #[cold]
    #[inline(never)]
    fn free_span_slow(&self, r: &Region, ci: usize, off: usize, a: Anchor) -> Result<(), Refused> {
        if a.state() != ACTIVE || a.class() != SPAN_CLASS || off != 0 {
            // A second free of a span head, or of a block whose chunk was retired
            // (its class is kept, and the block lies below the dirtied part).
            let again = a.state() == EMPTY
                && match Class::from_id(a.class()) {
                    Some(c) => {
                        off & (c.size() - 1) == 0
                            && r.desc(ci).is_some_and(|d| off < d.dirty_bytes())
                    }
                    None => a.class() == SPAN_CLASS && off == 0,
                };
            return Err(if again {
                Refused::DoubleFree
            } else {
                Refused::Invalid
            });
        }
        let d = r.desc(ci).ok_or(Refused::Invalid)?;
        // ORDERING: Relaxed: the span is live and ours to free (see `alloc_span_slow`).
        let n = d.span.load(Ordering::Relaxed) as usize;
        let freed = Anchor::new(EMPTY, SPAN_CLASS, 0, 0);
        // ORDERING: Relaxed: this CAS only makes a second free of the span fail; the
        // used map's Release publishes the chunks to their next owner.
        if d.anchor
            .compare_exchange(a.0, freed.0, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return Err(Refused::DoubleFree);
        }
        // ORDERING: Relaxed: a statistic.
        self.used_chunks.fetch_sub(n, Ordering::Relaxed);
        r.used().release_run(ci, n);
        Ok(())
    }

    /// The usable size of the live block at `ptr`, or 0 if `ptr` is not one.
    pub(crate) fn usable_size(&self, sp: &Space, ptr: *const u8) -> usize {
        let Some((r, ci, off)) = sp.find(ptr) else {
            return 0;
        };
        let Some(d) = r.desc(ci) else { return 0 };
        let a = d.anchor(Ordering::Relaxed);
        match a.small_class() {
            Some(c) if off & (c.size() - 1) == 0 => c.size(),
            Some(_) => 0,
            None if a.state() == ACTIVE && a.class() == SPAN_CLASS && off == 0 => {
                // ORDERING: Relaxed: the span is live (caller's contract).
                (d.span.load(Ordering::Relaxed) as usize) << CHUNK_SHIFT
            }
            None => 0,
        }
    }

    /// Checked mode: whether a request of `size` at `align` would have been served by
    /// the live block at `ptr` (same class, or a span of the same length).
    #[cfg(feature = "checked")]
    pub(crate) fn matches(&self, sp: &Space, ptr: *const u8, size: usize, align: usize) -> bool {
        let have = self.usable_size(sp, ptr);
        match fit(size, align) {
            Some(Fit::Small(c)) => have == c.size(),
            Some(Fit::Span(n)) => {
                n.checked_mul(CHUNK) == Some(have) && have > crate::class::MAX_SMALL
            }
            None => false,
        }
    }

    /// Resizes in place if the block's class (or span length) allows; `false` if the
    /// caller must move it.
    pub(crate) fn resize_in_place(
        &self,
        sp: &Space,
        ptr: *mut u8,
        size: usize,
        align: usize,
    ) -> bool {
        let Some(want) = fit(size, align) else {
            return false;
        };
        let Some((r, ci, off)) = sp.find(ptr) else {
            return false;
        };
        let Some(d) = r.desc(ci) else { return false };
        let a = d.anchor(Ordering::Relaxed);
        match (a.small_class(), want) {
            (Some(c), Fit::Small(w)) => c == w,
            (None, Fit::Span(n)) if a.class() == SPAN_CLASS && a.state() == ACTIVE && off == 0 => {
                // ORDERING: Relaxed: the span is ours (the caller is resizing it).
                let have = d.span.load(Ordering::Relaxed) as usize;
                if n <= have {
                    // Shrink: the tail goes back to the free map.
                    d.span.store(n as u32, Ordering::Relaxed);
                    self.used_chunks.fetch_sub(have - n, Ordering::Relaxed);
                    r.used().release_run(ci + n, have - n);
                    true
                } else if ci + n <= r.end() && r.used().claim_range(ci + have, n - have) {
                    // Grow into the free chunks that follow.
                    for i in ci + have..ci + n {
                        if let Some(t) = r.desc(i) {
                            t.mark_dirty();
                            // ORDERING: Relaxed: we own these chunks now.
                            t.anchor.store(
                                Anchor::new(EMPTY, SPAN_TAIL_CLASS, 0, 0).0,
                                Ordering::Relaxed,
                            );
                        }
                    }
                    let now = self.used_chunks.fetch_add(n - have, Ordering::Relaxed) + n - have;
                    self.peak_chunks.fetch_max(now, Ordering::Relaxed);
                    d.span.store(n as u32, Ordering::Relaxed);
                    true
                } else {
                    false
                }
            }
            _ => false,
        }
    }

    /// Checks every chunk of every region at quiescence (see `SigAlloc::validate`).
    pub(crate) fn validate(&self, sp: &Space) -> Result<(), &'static str> {
        for r in sp.all() {
            self.validate_region(&r)?;
        }
        Ok(())
    }

    fn validate_region(&self, r: &Region) -> Result<(), &'static str> {
        let used = r.used();
        for ci in r.first()..r.end() {
            let d = r.desc(ci).ok_or("no descriptor")?;
            let a = d.anchor(Ordering::Relaxed);
            let mut slots = 0;
            for s in self.slots.iter().flatten() {
                // ORDERING: Relaxed: quiescent.
                slots += usize::from(s.0.load(Ordering::Relaxed) == r.chunk_id(ci).0 + 1);
            }
            if slots > 1 {
                return Err("a chunk sits in two slots");
            }
            match a.small_class() {
                Some(c) => {
                    if !used.get(ci) {
                        return Err("a chunk serving a class is marked free");
                    }
                    let listed = (0..LISTS).any(|list| r.partial(c, list).get(ci));
                    if a.state() == crate::chunk::PARTIAL && !listed {
                        return Err("a PARTIAL chunk is not listed");
                    }
                    d.validate(r.chunk_base(ci), c, slots == 1)?;
                }
                None if slots > 0 => return Err("a free or span chunk sits in a slot"),
                None => {
                    // A span tail is used or free with its span; anything else is used
                    // exactly when it heads a live span.
                    let live_span = a.state() == ACTIVE && a.class() == SPAN_CLASS;
                    if a.class() != SPAN_TAIL_CLASS && live_span != used.get(ci) {
                        return Err("a free chunk is marked used, or a span chunk free");
                    }
                }
            }
        }
        Ok(())
    }

    /// The most chunks ever in use at once.
    pub(crate) fn peak_chunks(&self) -> usize {
        // ORDERING: Relaxed: a statistic.
        self.peak_chunks.load(Ordering::Relaxed)
    }

    /// A block's size class, for statistics.
    pub(crate) fn chunk_class(r: &Region, ci: usize) -> Option<Class> {
        r.desc(ci)?.anchor(Ordering::Relaxed).small_class()
    }

    /// Total bytes in a region's allocatable chunks.
    pub(crate) fn heap_bytes(r: &Region) -> usize {
        (r.end() - r.first()) * CHUNK
    }
}
