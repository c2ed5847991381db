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
//! each map step walking every region (`region::Regions`), the static heap first. When a
//! class's free blocks are all back in a chunk that no one owns, the chunk returns to
//! its region's free map, so memory moves between classes (AO_malloc never does).
//! Requests above the largest class take a run of whole chunks from one region. The
//! memory source's `grow` is the only way new memory appears; this file does not know
//! where it comes from (`source.rs`). Pointers arrive resolved (`block.rs`).
//!
//! Depends on: `sync`, `class`, `bitmap`, `chunk`, `region`, `source`, `block`,
//! `report`. Upholds I1-I4, I6.

use crate::block::{self, Block, Memory, Place};
use crate::chunk::{Anchor, Pushed, ACTIVE, EMPTY, SLAB_TAIL_CLASS, SPAN_CLASS, SPAN_TAIL_CLASS};
use crate::class::{fit, Class, Fit, CHUNK, NCLASSES};
#[cfg(feature = "checked")]
use crate::percpu;
use crate::percpu::{Caches, Popped, Stored, LIVE};
use crate::region::{ChunkId, Region, LISTS, MAX_REGION_CHUNKS};
use crate::report::{ErrorKind, Hook};
use crate::source::{huge_keeps, Source};
use crate::sync::{AtomicU32, Hint, Ordering};

/// Active slots per class (one per partial list, so a slot hint names both).
pub(crate) const SLOTS: usize = LISTS;
static_assertions::const_assert!(SLOTS.is_power_of_two());

/// One active slot: 0 for empty, or a [`ChunkId`] + 1. Padded so threads on different
/// slots never share a cache line.
#[repr(align(64))]
struct Slot(AtomicU32);

impl Slot {
    #[inline(always)]
    fn word(id: ChunkId) -> u32 {
        id.bits() + 1
    }

    /// Empties the slot; the chunk it held, if any, is now the caller's. (Under loom,
    /// `break_ownership` turns this into a peek, for the negative model.)
    #[inline(always)]
    fn take(&self) -> Option<ChunkId> {
        // ORDERING: Acquire pairs with the Release CAS in `offer`: the previous
        // holder's owner-only writes happen-before ours.
        self.0
            .take(Ordering::Acquire)
            .checked_sub(1)
            .map(ChunkId::from_bits)
    }

    /// Empties the slot for good measure (reclaiming), never a peek.
    fn clear(&self) -> Option<ChunkId> {
        // ORDERING: Acquire, as in `take`: we become the owner.
        self.0
            .swap(0, Ordering::Acquire)
            .checked_sub(1)
            .map(ChunkId::from_bits)
    }

    /// Puts chunk `id`, which the caller owns, into the slot if it is empty; `false`
    /// if it was refilled meanwhile (the caller still owns the chunk).
    #[inline(always)]
    fn offer(&self, id: ChunkId) -> bool {
        // ORDERING: Release pairs with the Acquire swap in `take`.
        self.0
            .compare_exchange(0, Self::word(id), Ordering::Release, Ordering::Relaxed)
            .is_ok()
    }

    /// Whether the slot holds chunk `id` (a snapshot, for validation).
    fn holds(&self, id: ChunkId) -> bool {
        // ORDERING: Relaxed: a snapshot at quiescence.
        self.0.load(Ordering::Relaxed) == Self::word(id)
    }
}

/// One shard of a counter, alone on its cache line.
#[repr(align(64))]
struct Shard(Hint);

/// Why a free was refused (only ever reported; nothing is changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not a block this heap handed out.
    Invalid,
    /// A block that is already free.
    DoubleFree,
}

impl Refused {
    /// What checked mode reports for it.
    pub(crate) fn kind(self) -> ErrorKind {
        match self {
            Refused::Invalid => ErrorKind::InvalidFree,
            Refused::DoubleFree => ErrorKind::DoubleFree,
        }
    }
}

/// The allocator state that does not scale with the heap (the side tables live in
/// the regions).
pub(crate) struct Heap {
    slots: [[Slot; SLOTS]; NCLASSES],
    /// Chunks in use (formatted for a class or part of a span), counted in one shard
    /// per slot hint so that threads on different CPUs write different cache lines; a
    /// chunk claimed under one hint and retired under another leaves one shard above
    /// and one below the truth (wrapping), and the sum exact.
    used_chunks: [Shard; SLOTS],
    /// The most chunks ever in use at once (raised only when the sum passes it).
    peak_chunks: Hint,
    /// Where faults found on the way are reported (checked mode).
    hook: Hook,
    /// The per-CPU caches in front of the slots (feature `percpu`; else nothing).
    cache: Caches,
}

/// The most blocks a refill moves from a chunk to a magazine at once.
const MAX_BATCH: usize = 64;

/// The slot to try first (and the partial list to use): the CPU, or a hash of the
/// stack address, so no TLS and no initialisation (see `sync::thread_hint`).
#[inline(always)]
fn slot_hint() -> usize {
    crate::sync::thread_hint() % SLOTS
}

/// A block handed out: its address, and whether its memory is known to be zero.
pub(crate) type Got = (*mut u8, bool);

/// What [`Heap::unpark`] found.
#[derive(Clone, Copy)]
pub(crate) enum Unparked {
    /// A block from this CPU's magazine, now the caller's.
    Block(*mut u8),
    /// A small request the magazine could not serve: [`Heap::alloc_missed`] goes on
    /// from what the pop found.
    Missed(Class, Popped),
    /// Not a small request: [`Heap::alloc`] serves it.
    NotSmall,
}

impl Heap {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Heap {
        #[allow(clippy::declare_interior_mutable_const)]
        const SLOT: Slot = Slot(AtomicU32::new(0));
        #[allow(clippy::declare_interior_mutable_const)]
        const CLASS: [Slot; SLOTS] = [SLOT; SLOTS];
        #[allow(clippy::declare_interior_mutable_const)]
        const SHARD: Shard = Shard(Hint::new(0));
        Heap {
            slots: [CLASS; NCLASSES],
            used_chunks: [SHARD; SLOTS],
            peak_chunks: Hint::new(0),
            hook: Hook::new(),
            cache: Caches::new(),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Heap {
        Heap {
            slots: core::array::from_fn(|_| core::array::from_fn(|_| Slot(AtomicU32::new(0)))),
            used_chunks: core::array::from_fn(|_| Shard(Hint::new(0))),
            peak_chunks: Hint::new(0),
            hook: Hook::new(),
            cache: Caches::new(),
        }
    }

    /// Where faults are reported.
    pub(crate) fn hook(&self) -> &Hook {
        &self.hook
    }

    /// The per-CPU caches.
    pub(crate) fn cache(&self) -> &Caches {
        &self.cache
    }

    /// Allocates `size` bytes at `align`, from the source's huge mappings or the
    /// regions' chunks.
    #[inline(always)]
    pub(crate) fn alloc(&self, mem: &Memory, size: usize, align: usize) -> Option<Got> {
        let fit = fit(size, align)?;
        let got = match fit {
            Fit::Small(class) => self.alloc_small(mem, class, self.cache.pop(class)),
            Fit::Span(chunks) => self.alloc_large_slow(mem, size, align, chunks),
        };
        match got {
            Some(got) => Some(got),
            None => self.alloc_after_drain_slow(mem, size, align, fit),
        }
    }

    /// Allocates `size` bytes at `align`, of `class`, after [`unpark`](Self::unpark)
    /// found no block in this CPU's magazine (`popped` says what it found instead).
    #[inline(always)]
    pub(crate) fn alloc_missed(
        &self,
        mem: &Memory,
        size: usize,
        align: usize,
        class: Class,
        popped: Popped,
    ) -> Option<Got> {
        match self.alloc_small(mem, class, popped) {
            Some(got) => Some(got),
            None => self.alloc_after_drain_slow(mem, size, align, Fit::Small(class)),
        }
    }

    /// The heap answered null: if the per-CPU caches held blocks, they are back in their
    /// chunks now (I9), so try once more.
    #[cold]
    #[inline(never)]
    fn alloc_after_drain_slow(
        &self,
        mem: &Memory,
        size: usize,
        align: usize,
        fit: Fit,
    ) -> Option<Got> {
        if self.drain(mem) == 0 {
            return None;
        }
        match fit {
            Fit::Small(class) => self.alloc_small(mem, class, self.cache.pop(class)),
            Fit::Span(chunks) => self.alloc_large_slow(mem, size, align, chunks),
        }
    }

    /// Gives every block parked in the per-CPU caches back to its chunk. Returns how
    /// many.
    pub(crate) fn drain(&self, mem: &Memory) -> usize {
        self.cache.drain(|block, _| self.give_back(mem, block))
    }

    /// Turns the per-CPU caches off for good, giving their blocks back.
    pub(crate) fn disable_cache(&self, mem: &Memory) -> usize {
        self.cache.disable(|block, _| self.give_back(mem, block))
    }

    #[inline(always)]
    fn slot(&self, class: Class, slot: usize) -> Option<&Slot> {
        self.slots.get(class.id())?.get(slot % SLOTS)
    }

    #[inline(always)]
    fn alloc_small(&self, mem: &Memory, class: Class, popped: Popped) -> Option<Got> {
        match popped {
            Popped::Block(block) => return Some((Self::unparked(block), false)),
            Popped::Empty => return self.refill_slow(mem, class),
            Popped::Untried => self.start_cache_slow(mem),
            Popped::Bypass => {}
        }
        if LIVE {
            // With caches, a hit is the fast path: keep the rest out of its way.
            return self.alloc_shared_slow(mem, class);
        }
        self.alloc_shared(mem, class)
    }

    /// [`alloc_shared`](Self::alloc_shared), out of line (a per-CPU cache missed).
    #[cold]
    #[inline(never)]
    fn alloc_shared_slow(&self, mem: &Memory, class: Class) -> Option<Got> {
        self.alloc_shared(mem, class)
    }

    /// The shared path: this thread's slot, then everything else.
    #[inline(always)]
    fn alloc_shared(&self, mem: &Memory, class: Class) -> Option<Got> {
        let hint = slot_hint();
        if let Some(got) = self.pop_from_slot(mem, class, hint) {
            return Some(got);
        }
        self.alloc_small_slow(mem, class, hint)
    }

    /// A block popped from a magazine, being handed out: checked mode clears its key
    /// (to its chunk it stayed live).
    #[inline(always)]
    fn unparked(block: *mut u8) -> *mut u8 {
        #[cfg(feature = "checked")]
        // SAFETY: a small block of this heap, ours (popped from a magazine or a batch).
        unsafe {
            percpu::clear_key(block)
        };
        block
    }

    /// Sets the per-CPU caches up (once, on the first call that finds them untried).
    #[cold]
    #[inline(never)]
    fn start_cache_slow(&self, mem: &Memory) {
        self.cache.start_slow(heap_bytes(mem.regions.home()));
    }

    /// This CPU's magazine is empty: take a batch of blocks from one chunk (two RMWs
    /// for the batch: the slot swap and the CAS back), hand out the first and park the
    /// rest.
    #[cold]
    #[inline(never)]
    fn refill_slow(&self, mem: &Memory, class: Class) -> Option<Got> {
        // A batch another CPU spilled: no chunk touched at all.
        if let Some(first) = self.cache.take(class, slot_hint()) {
            let mut n = 0;
            // SAFETY: the batch is ours (`take` swapped it out of its slot); `first`
            // is kept, the rest parked (a handler on this CPU may then hand them out,
            // which `for_each_linked` allows).
            unsafe {
                crate::sync::for_each_linked(first, |block| {
                    n += 1;
                    if block != first && self.cache.push(class, block) != Stored::Cached {
                        self.give_back(mem, block);
                    }
                });
            }
            self.cache.taken(class, n);
            return Some((Self::unparked(first), false));
        }
        let mut batch = [core::ptr::null_mut(); MAX_BATCH];
        let want = self.cache.batch(class).clamp(1, MAX_BATCH);
        let (n, zero) = self.take_batch(mem, class, batch.get_mut(..want)?);
        let (&first, rest) = batch.get(..n)?.split_first()?;
        for &block in rest {
            // Migrated to a CPU whose magazine is full, or a drain began: give it back.
            if self.cache.push(class, block) != Stored::Cached {
                self.give_back(mem, block);
            }
        }
        Some((first, zero))
    }

    /// Fills `out` with blocks of `class`, as many as one chunk gives: from this
    /// thread's slot's chunk, else one block from the shared path. Returns how many, and
    /// whether the first is known to be zero. Checked mode marks them all live, and
    /// keys the parked ones (all but the first).
    fn take_batch(&self, mem: &Memory, class: Class, out: &mut [*mut u8]) -> (usize, bool) {
        let hint = slot_hint();
        if let Some(id) = self.slot(class, hint).and_then(Slot::take) {
            if let Some(region) = mem.regions.get(id.region()) {
                let got = self.pop_many(mem, &region, class, id.chunk(), hint, out);
                if got.0 > 0 {
                    return got;
                }
            }
        }
        match (self.alloc_shared(mem, class), out.first_mut()) {
            (Some((block, zero)), Some(first)) => {
                *first = block;
                (1, zero)
            }
            _ => (0, false),
        }
    }

    /// Pops up to `out.len()` blocks from chunk `chunk`, which the caller owns, and
    /// keeps the chunk in slot `slot` (unless it ran out: it is then `FULL`, no longer
    /// ours).
    fn pop_many(
        &self,
        mem: &Memory,
        region: &Region,
        class: Class,
        chunk: usize,
        slot: usize,
        out: &mut [*mut u8],
    ) -> (usize, bool) {
        let Some(d) = region.desc(chunk) else {
            return (0, false);
        };
        let base = region.chunk_base(chunk);
        let mut zero = false;
        for (n, out) in out.iter_mut().enumerate() {
            // SAFETY: I1, we own `chunk`: it came out of a slot.
            let Some((idx, z)) = (unsafe { d.owner_pop(base, class) }) else {
                return (n, zero);
            };
            *out = base.wrapping_add(class.offset_of(idx));
            if n == 0 {
                zero = z;
            }
            // Checked: every block leaving the chunk is live to it, the handed-out
            // first one and the parked rest alike (see `percpu`'s docs on keys).
            #[cfg(feature = "checked")]
            if !d.mark_live(idx) {
                // A block handed out twice would break I1: keep it back (reported).
                self.hook.report(ErrorKind::Corrupted, *out);
                self.put_back(mem, region, class, chunk, slot);
                return (n, zero);
            }
            #[cfg(feature = "checked")]
            if LIVE {
                // SAFETY: popped from a chunk we own: the block is ours, small, of
                // this heap; the first is handed out, the rest parked.
                unsafe {
                    if n == 0 {
                        percpu::clear_key(*out)
                    } else {
                        percpu::set_key(*out)
                    }
                }
            }
        }
        self.put_back(mem, region, class, chunk, slot);
        (out.len(), zero)
    }

    /// Gives a block that sat in a magazine (live to its chunk, keyed in checked mode)
    /// back to its chunk.
    fn give_back(&self, mem: &Memory, block: *mut u8) {
        let home = mem.regions.home();
        if let Some((chunk, offset)) = home.locate(block) {
            self.give_back_in(mem, home, chunk, offset);
        } else if let Some((region, chunk, offset)) = mem.regions.find_other(block) {
            self.give_back_in(mem, &region, chunk, offset);
        }
    }

    fn give_back_in(&self, mem: &Memory, region: &Region, chunk: usize, offset: usize) {
        let at = Place {
            region: *region,
            chunk,
            offset,
        };
        // (Resolved whole: a block may start in a slab's tail chunk.)
        if let Block::Small { at, class } = Block::at(at) {
            let idx = class.index_of(at.offset);
            // A parked block is live to its chunk: this push cannot be refused.
            if self
                .unpark_to_chunk(mem, &at.region, at.chunk, class, idx)
                .is_err()
            {
                let block = at.region.chunk_base(at.chunk).wrapping_add(at.offset);
                self.hook.report(ErrorKind::Corrupted, block);
            }
        }
    }

    /// Returns block `idx` of `chunk` (of `class`), parked or being freed, to its chunk.
    /// Checked mode with caches marks it free to the chunk first (it was live there
    /// while parked); without caches the free did.
    #[inline(always)]
    fn unpark_to_chunk(
        &self,
        mem: &Memory,
        region: &Region,
        chunk: usize,
        class: Class,
        idx: u32,
    ) -> Result<(), Refused> {
        #[cfg(feature = "checked")]
        if LIVE && !region.desc(chunk).ok_or(Refused::Invalid)?.mark_freed(idx) {
            // Only frees that found it live and won its key, and parked blocks, get
            // here: its bit was cleared meanwhile, which nothing correct does. Keep it
            // out of the chunk.
            return Err(Refused::DoubleFree);
        }
        self.push_to_chunk(mem, region, chunk, class, idx)
    }

    /// Takes slot `slot`'s chunk, pops a block and puts the chunk back.
    #[inline(always)]
    fn pop_from_slot(&self, mem: &Memory, class: Class, slot: usize) -> Option<Got> {
        let id = self.slot(class, slot)?.take()?;
        if id.region() == 0 {
            // The inline heap, spelled out so its constants stay in registers.
            return self.pop_and_keep(mem, mem.regions.home(), class, id.chunk(), slot);
        }
        self.pop_elsewhere(mem, class, id, slot)
    }

    #[cold]
    #[inline(never)]
    fn pop_elsewhere(&self, mem: &Memory, class: Class, id: ChunkId, slot: usize) -> Option<Got> {
        // A slot only ever holds chunks of published regions, which stay published.
        let region = mem.regions.get(id.region())?;
        self.pop_and_keep(mem, &region, class, id.chunk(), slot)
    }

    /// Pops a block from chunk `chunk`, which the caller owns, and keeps the chunk in
    /// slot `slot` (or releases it). `None` if the chunk was exhausted (it is then
    /// `FULL`).
    #[inline(always)]
    fn pop_and_keep(
        &self,
        mem: &Memory,
        region: &Region,
        class: Class,
        chunk: usize,
        slot: usize,
    ) -> Option<Got> {
        let d = region.desc(chunk)?;
        let base = region.chunk_base(chunk);
        // SAFETY: I1, we own `chunk`: it came out of a slot, a claim or the free map.
        let (idx, zero) = unsafe { d.owner_pop(base, class) }?;
        let block = base.wrapping_add(class.offset_of(idx));
        #[cfg(feature = "checked")]
        if !d.mark_live(idx) {
            // A block handed out twice would break I1: keep it back (a leak, reported)
            // and keep the heap consistent.
            self.hook.report(ErrorKind::Corrupted, block);
            self.put_back(mem, region, class, chunk, slot);
            return None;
        }
        #[cfg(feature = "checked")]
        if LIVE {
            // SAFETY: popped from a chunk we own: ours, small, of this heap.
            unsafe { percpu::clear_key(block) };
        }
        self.put_back(mem, region, class, chunk, slot);
        Some((block, zero))
    }

    #[cold]
    #[inline(never)]
    fn alloc_small_slow(&self, mem: &Memory, class: Class, hint: usize) -> Option<Got> {
        // Our own partial list first (our chunks, wherever their blocks were freed),
        // then a free chunk, and only then the other slots' lists: taking another
        // thread's partial chunk while free ones exist would move its chunks (and their
        // cache lines) back and forth between the threads.
        if let Some(got) = self.take_listed(mem, class, hint, 0..1) {
            return Some(got);
        }
        for region in mem.regions.all().filter(|region| !is_full(region)) {
            let claimed = if class.is_slab() {
                self.claim_free(&region, class.chunks(), CHUNK)
            } else {
                self.claim_free_near(&region, hint)
            };
            if let Some(chunk) = claimed {
                format(&region, chunk, class, hint % LISTS)?;
                return self.pop_and_keep(mem, &region, class, chunk, hint);
            }
        }
        if let Some(got) = self.take_listed(mem, class, hint, 1..LISTS) {
            return Some(got);
        }
        // Memory is short: use the chunks other threads keep in their slots. (Doing this
        // earlier would make threads steal each other's chunks back and forth.)
        for k in 1..SLOTS {
            if let Some(got) = self.pop_from_slot(mem, class, hint + k) {
                return Some(got);
            }
        }
        let (region, chunk) = self.claim_chunks_slow(mem, class.chunks(), CHUNK)?;
        format(&region, chunk, class, hint % LISTS)?;
        self.pop_and_keep(mem, &region, class, chunk, hint)
    }

    /// Takes a partial chunk of `class` from lists `hint + k` for `k` in `lists`, in
    /// every region, and pops a block from it.
    fn take_listed(
        &self,
        mem: &Memory,
        class: Class,
        hint: usize,
        lists: core::ops::Range<usize>,
    ) -> Option<Got> {
        // The inline heap on its own, so its geometry folds to constants (this runs for
        // most chunk refills), then every other region.
        if let Some(got) = self.take_listed_in(mem, mem.regions.home(), class, hint, &lists) {
            return Some(got);
        }
        mem.regions
            .all()
            .skip(1)
            .find_map(|region| self.take_listed_in(mem, &region, class, hint, &lists))
    }

    /// [`take_listed`](Self::take_listed) in one region.
    #[inline(always)]
    fn take_listed_in(
        &self,
        mem: &Memory,
        region: &Region,
        class: Class,
        hint: usize,
        lists: &core::ops::Range<usize>,
    ) -> Option<Got> {
        for k in lists.clone() {
            while let Some(chunk) = region.partial(class, hint + k).take_any() {
                let Some(d) = region.desc(chunk) else {
                    continue;
                };
                if d.claim(class) {
                    if k != 0 {
                        d.set_home(hint % LISTS);
                    }
                    if let Some(got) = self.pop_and_keep(mem, region, class, chunk, hint) {
                        return Some(got);
                    }
                }
            }
        }
        None
    }

    /// Puts `chunk` (which the caller owns) back into slot `slot` of `class`; releases
    /// it if the slot was refilled meanwhile (by a handler that interrupted us, or
    /// another thread). Other slots are left to their own threads.
    #[inline(always)]
    fn put_back(&self, mem: &Memory, region: &Region, class: Class, chunk: usize, slot: usize) {
        if let Some(cell) = self.slot(class, slot) {
            if cell.offer(region.chunk_id(chunk)) {
                return;
            }
        }
        self.release_slow(mem, region, class, chunk);
    }

    /// Gives up `chunk`, which the caller owns.
    #[cold]
    #[inline(never)]
    fn release_slow(&self, mem: &Memory, region: &Region, class: Class, chunk: usize) {
        let Some(d) = region.desc(chunk) else { return };
        // SAFETY: I1, the caller owns `chunk`, which serves `class`.
        match unsafe { d.release(region.chunk_base(chunk), class) } {
            Pushed::Listed => region.partial(class, d.home()).set(chunk),
            Pushed::Emptied => self.retire(mem, region, chunk, Some(class)),
            Pushed::Done | Pushed::Rejected => {}
        }
    }

    /// Returns `chunk` (a slab's first chunk, for a mid-size class), `EMPTY` and owned
    /// by the caller, to the free map, with the rest of its slab.
    fn retire(&self, mem: &Memory, region: &Region, chunk: usize, class: Option<Class>) {
        let chunks = class.map_or(1, Class::chunks);
        if let Some(d) = region.desc(chunk) {
            d.reset(class);
            if chunks > 1 {
                // Each chunk of the slab gets its share of the slab's dirty bytes, and
                // its tails say the slab is gone (so a second free of one of its blocks
                // is told from a pointer into nothing). Owner-only words: the used
                // map's Release below publishes them to the chunks' next owners.
                let dirty = d.dirty_bytes();
                for k in 1..chunks {
                    if let Some(tail) = region.desc(chunk + k) {
                        tail.set_dirty_bytes(dirty.saturating_sub(k * CHUNK).min(CHUNK));
                        // ORDERING: Relaxed: as above.
                        tail.anchor
                            .store(Anchor::slab_tail(EMPTY, k).0, Ordering::Relaxed);
                    }
                }
                d.set_dirty_bytes(dirty.min(CHUNK));
            }
        }
        if let Some(class) = class {
            // A listing left by a releaser that was overtaken; claimers would drop it
            // anyway, so this only saves them the work.
            for list in 0..LISTS {
                region.partial(class, list).clear(chunk);
            }
        }
        self.count_released(chunks);
        if chunks == 1 {
            region.used().clear(chunk);
            lower_cursor(region, zone_of(region, chunk), chunk);
        } else {
            region.used().release_run(chunk, chunks);
            lower_cursor(region, SLOTS, chunk);
        }
        set_full(region, false);
        mem.source.retired(&mem.regions, region);
    }

    /// Claims one free chunk for the thread with slot hint `hint`. Each hint starts its
    /// search in its own zone of the heap, so one thread's chunks (and their descriptors,
    /// four to a cache line) sit together instead of interleaving with another's. It
    /// starts at the zone's cursor, which stays at or below the lowest chunk retired in
    /// the zone since the last search passed it (see `retire`), so a heap that is full
    /// below that point is not read again; then it goes round to the start, so every
    /// chunk is still looked at before the search fails. The cursors are hints, read
    /// and written Relaxed: a lost update only costs a longer search.
    fn claim_free_near(&self, region: &Region, hint: usize) -> Option<usize> {
        let (first, end) = (region.first(), region.end());
        let cursor = region.cursor(hint % SLOTS)?;
        // A hint (`Hint`): the used map's CAS decides.
        let start = match cursor.get() {
            0 => zone_start(region, hint % SLOTS),
            at => (at - 1).clamp(first, end - 1),
        };
        let used = region.used();
        let Some(chunk) = used
            .claim_one(start, end)
            .or_else(|| used.claim_one(first, start))
        else {
            set_full(region, true);
            return None;
        };
        if start != chunk {
            cursor.set(chunk + 1);
        }
        self.count_claimed(1);
        Some(chunk)
    }

    /// This thread's shard of `used_chunks`.
    #[inline(always)]
    fn shard(&self) -> Option<&Hint> {
        self.used_chunks.get(slot_hint()).map(|shard| &shard.0)
    }

    /// Chunks in use, summed over the shards (a snapshot).
    fn used_chunks(&self) -> usize {
        self.used_chunks
            .iter()
            .fold(0usize, |sum, shard| sum.wrapping_add(shard.0.get()))
    }

    fn count_claimed(&self, chunks: usize) {
        if let Some(shard) = self.shard() {
            shard.add(chunks);
        }
        let now = self.used_chunks();
        // Written only when passed, so a steady heap leaves the line shared.
        if now > self.peak_chunks.get() {
            self.peak_chunks.raise_to(now);
        }
    }

    fn count_released(&self, chunks: usize) {
        if let Some(shard) = self.shard() {
            // Shards wrap (see `used_chunks`).
            shard.sub(chunks);
        }
    }

    /// Claims `chunks` consecutive free chunks of `region`, the first at an address
    /// aligned to `align`.
    fn claim_free(&self, region: &Region, chunks: usize, align: usize) -> Option<usize> {
        let used = region.used();
        let first = if align <= CHUNK {
            // From the run cursor to the end, then from the start to just past it.
            let (lo, end) = (region.first(), region.end());
            let cursor = region.cursor(SLOTS)?;
            // A hint: the used map's CAS decides. (Frees of spans move it down, as
            // `retire` does the single-chunk cursors.)
            let start = cursor.get().saturating_sub(1).clamp(lo, end);
            let Some(first) = used
                .claim_run(start, end, chunks)
                .or_else(|| used.claim_run(lo, start.saturating_add(chunks).min(end), chunks))
            else {
                if chunks == 1 {
                    set_full(region, true);
                }
                return None;
            };
            cursor.set(first + chunks + 1);
            first
        } else {
            // Chunk `i` is aligned when `i` is `phase` modulo `step`.
            let step = align / CHUNK;
            let base = region.chunk_base(0).addr();
            let phase = (align - base % align) % align / CHUNK;
            used.claim_run_aligned(region.first(), region.end(), chunks, step, phase)?
        };
        self.count_claimed(chunks);
        Some(first)
    }

    /// Claims `chunks` consecutive free chunks in any region, the first aligned to
    /// `align`, reclaiming idle slot chunks if none are free, and growing the heap as
    /// the last resort.
    #[cold]
    #[inline(never)]
    fn claim_chunks_slow(
        &self,
        mem: &Memory,
        chunks: usize,
        align: usize,
    ) -> Option<(Region, usize)> {
        // First fit over the regions, oldest first, so the memory in use stays
        // packed (resident pages are reused before fresh ones are touched); regions
        // known to hold no free chunk are passed by, so a grown heap's full older
        // regions cost a load each, not a search.
        let any = |heap: &Self, all: bool| {
            mem.regions
                .all()
                .filter(|region| all || !is_full(region))
                .find_map(|region| {
                    heap.claim_free(&region, chunks, align)
                        .map(|at| (region, at))
                })
        };
        if let Some(got) = any(self, false) {
            return Some(got);
        }
        // The flags are hints that a racing free may have left stale: before memory is
        // reclaimed from the slots or the heap grows, every region is searched.
        if let Some(got) = any(self, true) {
            return Some(got);
        }
        // Reclaiming only helps a run that some region could hold.
        let fits = mem
            .regions
            .all()
            .any(|region| region.end() - region.first() >= chunks);
        if fits && self.reclaim_slots(mem) {
            if let Some(got) = any(self, true) {
                return Some(got);
            }
        }
        // Before the heap grows, blocks parked in the per-CPU caches go back (I9).
        if self.drain(mem) > 0 {
            if let Some(got) = any(self, true) {
                return Some(got);
            }
        }
        // Others may take a new region's chunks before we do (we may be preempted, or
        // interrupted by a handler that allocates, right after mapping it): then look
        // everywhere again and grow again. Each round someone else made progress, and
        // growth ends when the source refuses.
        // A new region with room for an aligned run holds `align / CHUNK - 1` more.
        let room = chunks.checked_add((align / CHUNK).saturating_sub(1))?;
        loop {
            let region = mem.source.grow(&mem.regions, room)?;
            if let Some(at) = self.claim_free(&region, chunks, align) {
                return Some((region, at));
            }
            if let Some(got) = any(self, true) {
                return Some(got);
            }
        }
    }

    /// Empties every slot, releasing its chunk, so chunks whose blocks are all free go
    /// back to the free map. Returns whether any chunk was retired.
    fn reclaim_slots(&self, mem: &Memory) -> bool {
        let before = self.used_chunks();
        for class in Class::all() {
            for slot in 0..SLOTS {
                let Some(id) = self.slot(class, slot).and_then(Slot::clear) else {
                    continue;
                };
                if let Some(region) = mem.regions.get(id.region()) {
                    self.release_slow(mem, &region, class, id.chunk());
                }
            }
        }
        self.used_chunks() < before
    }

    /// A request above the largest class: a huge mapping if the source makes one, else
    /// a span of `chunks` whole chunks.
    #[cold]
    #[inline(never)]
    fn alloc_large_slow(
        &self,
        mem: &Memory,
        size: usize,
        align: usize,
        chunks: usize,
    ) -> Option<Got> {
        if let Some(block) = mem.source.alloc_huge(size, align) {
            return Some((block, true)); // a fresh mapping: already zero
        }
        if chunks >= MAX_REGION_CHUNKS {
            return None;
        }
        let (region, first) = self.claim_chunks_slow(mem, chunks, align)?;
        let mut zero = true;
        for chunk in first..first + chunks {
            if let Some(d) = region.desc(chunk) {
                zero &= d.is_clean();
                d.set_clean(false);
                // ORDERING: Relaxed: we own the run; this only labels it for frees.
                d.anchor.store(
                    Anchor::new(EMPTY, SPAN_TAIL_CLASS, 0, 0).0,
                    Ordering::Relaxed,
                );
            }
        }
        let d = region.desc(first)?;
        // ORDERING: Relaxed: we own the run exclusively; whoever frees the span learns
        // of it through the user's own synchronisation with us.
        d.span.store(chunks as u32, Ordering::Relaxed);
        d.anchor.store(LIVE_SPAN.0, Ordering::Relaxed);
        Some((region.chunk_base(first), zero))
    }

    /// Parks `ptr`, a live small block of this heap allocated for `size` bytes at
    /// `align`, in this CPU's cache, if there is room: `false` if the caller must free
    /// it the usual way. (Unchecked mode only: it trusts the size.)
    #[inline(always)]
    pub(crate) fn park(&self, ptr: *mut u8, size: usize, align: usize) -> bool {
        match fit(size, align) {
            Some(Fit::Small(class)) => self.cache.push(class, ptr) == Stored::Cached,
            _ => false,
        }
    }

    /// Takes a block for `size` bytes at `align` from this CPU's cache, if it holds one
    /// (it is not known to be zeroed). No chunk is touched, in checked mode either.
    #[inline(always)]
    pub(crate) fn unpark(&self, size: usize, align: usize) -> Unparked {
        match fit(size, align) {
            Some(Fit::Small(class)) => match self.cache.pop(class) {
                Popped::Block(block) => Unparked::Block(Self::unparked(block)),
                popped => Unparked::Missed(class, popped),
            },
            _ => Unparked::NotSmall,
        }
    }

    /// Frees `block`, resolved from the pointer the caller frees.
    #[inline(always)]
    pub(crate) fn free(&self, mem: &Memory, block: Block) -> Result<(), Refused> {
        match block {
            Block::Small { at, class } => {
                self.free_small(mem, &at.region, at.chunk, at.offset, class)
            }
            Block::Span { at, chunks } => self.free_span_slow(at, chunks),
            Block::Huge { ptr, .. } => free_huge_slow(mem, ptr),
            Block::Dead { at, anchor } => Err(dead_free_slow(at, anchor)),
            Block::Foreign => Err(Refused::Invalid),
        }
    }

    /// Frees the block at `ptr`, resolving it once: a small block of the inline heap
    /// is told apart right here, in registers (the `Block` value, a multi-word enum,
    /// would go through the stack and stall store forwarding on every free); anything
    /// else is resolved into a `Block` (`block.rs`) and freed as such.
    #[inline(always)]
    pub(crate) fn free_ptr(&self, mem: &Memory, ptr: *mut u8) -> Result<(), Refused> {
        let home = mem.regions.home();
        if let Some((chunk, offset)) = home.locate(ptr) {
            if let Some(class) = block::small_at(home, chunk, offset) {
                return self.free_small(mem, home, chunk, offset, class);
            }
            return self.free_resolved_slow(mem, ptr);
        }
        self.free_elsewhere_slow(mem, ptr)
    }

    #[cold]
    #[inline(never)]
    fn free_resolved_slow(&self, mem: &Memory, ptr: *mut u8) -> Result<(), Refused> {
        self.free(mem, mem.resolve(ptr))
    }

    /// A free of a pointer outside the inline heap: a small block of another region is
    /// freed from registers, as on the inline heap; anything else through its `Block`.
    #[cold]
    #[inline(never)]
    fn free_elsewhere_slow(&self, mem: &Memory, ptr: *mut u8) -> Result<(), Refused> {
        let found = mem.regions.find_other(ptr);
        if let Some((region, chunk, offset)) = found {
            if let Some(class) = block::small_at(&region, chunk, offset) {
                return self.free_small(mem, &region, chunk, offset, class);
            }
        }
        self.free(mem, mem.resolve_found(ptr, found))
    }

    /// Frees the small block at `offset` of `chunk` of `region` (of a slab's first
    /// chunk, for a mid-size class), of `class`.
    #[inline(always)]
    fn free_small(
        &self,
        mem: &Memory,
        region: &Region,
        chunk: usize,
        offset: usize,
        class: Class,
    ) -> Result<(), Refused> {
        let idx = class.index_of(offset);
        let block = region.chunk_base(chunk).wrapping_add(offset);
        #[cfg(feature = "checked")]
        {
            let d = region.desc(chunk).ok_or(Refused::Invalid)?;
            // With caches a block stays live to its chunk until it goes back there
            // (`unpark_to_chunk`); its key tells whether it is parked already. The
            // live bit is read first so that no key lands in a block that was never
            // handed out (it may lie in a chunk known to be zero).
            let freed = if LIVE {
                // SAFETY: the block was resolved to a small block of this heap, live.
                d.is_live(idx) && unsafe { percpu::park_key(block) }
            } else {
                d.mark_freed(idx)
            };
            if !freed {
                return Err(Refused::DoubleFree);
            }
        }
        match self.cache.push(class, block) {
            Stored::Cached => return Ok(()),
            Stored::Full => return self.spill_slow(mem, region, chunk, class, idx),
            Stored::Untried => self.start_cache_slow(mem),
            Stored::Bypass => {}
        }
        self.unpark_to_chunk(mem, region, chunk, class, idx)
    }

    /// This CPU's magazine is full for `class`: give half of it back to the chunks, then
    /// park the block being freed (block `idx` of `chunk`).
    #[cold]
    #[inline(never)]
    fn spill_slow(
        &self,
        mem: &Memory,
        region: &Region,
        chunk: usize,
        class: Class,
        idx: u32,
    ) -> Result<(), Refused> {
        // Half the class's blocks leave the magazine as one batch, for the transfer
        // cache (another CPU's refill), else for their chunks.
        let mut head = core::ptr::null_mut();
        let mut n = 0;
        for _ in 0..self.cache.batch(class) {
            let Popped::Block(block) = self.cache.pop(class) else {
                break;
            };
            // SAFETY: popped from the magazine: the block is ours, and free.
            unsafe { crate::sync::write_next(block, head) };
            head = block;
            n += 1;
        }
        if n > 0 && !self.cache.offer(class, head, n, slot_hint()) {
            // SAFETY: the batch is still ours (the offer failed).
            unsafe { crate::sync::for_each_linked(head, |block| self.give_back(mem, block)) };
        }
        let block = region.chunk_base(chunk).wrapping_add(class.offset_of(idx));
        if self.cache.push(class, block) == Stored::Cached {
            return Ok(());
        }
        self.unpark_to_chunk(mem, region, chunk, class, idx)
    }

    /// Returns block `idx` of `chunk` (of `class`), which the caller owns, to the chunk.
    #[inline(always)]
    fn push_to_chunk(
        &self,
        mem: &Memory,
        region: &Region,
        chunk: usize,
        class: Class,
        idx: u32,
    ) -> Result<(), Refused> {
        let d = region.desc(chunk).ok_or(Refused::Invalid)?;
        // SAFETY: the caller frees a block it owns; `class` is its chunk's class
        // (resolved from the anchor, which cannot change while the block is live).
        match unsafe { d.push(region.chunk_base(chunk), class, idx) } {
            Pushed::Done => Ok(()),
            Pushed::Listed => {
                region.partial(class, d.home()).set(chunk);
                Ok(())
            }
            Pushed::Emptied => {
                self.retire(mem, region, chunk, Some(class));
                Ok(())
            }
            Pushed::Rejected => Err(Refused::DoubleFree),
        }
    }

    #[cold]
    #[inline(never)]
    fn free_span_slow(&self, at: Place, chunks: usize) -> Result<(), Refused> {
        let d = at.desc().ok_or(Refused::Invalid)?;
        // ORDERING: Relaxed: this CAS only makes a second free of the span fail; the
        // used map's Release publishes the chunks to their next owner.
        if d.anchor
            .compare_exchange(
                LIVE_SPAN.0,
                FREED_SPAN.0,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return Err(Refused::DoubleFree);
        }
        self.count_released(chunks);
        at.region.used().release_run(at.chunk, chunks);
        lower_cursor(&at.region, SLOTS, at.chunk);
        set_full(&at.region, false);
        Ok(())
    }

    /// Checked mode: whether a request of `size` at `align` would have been served by
    /// `block` (same class, a span of the same length, or a huge block kept in place).
    pub(crate) fn matches(block: &Block, size: usize, align: usize) -> bool {
        let have = block.usable_size();
        match (block, fit(size, align)) {
            (Block::Huge { usable, .. }, _) => huge_keeps(*usable, size),
            (_, Some(Fit::Small(class))) => have == class.size(),
            (_, Some(Fit::Span(chunks))) => {
                matches!(block, Block::Span { .. }) && chunks.checked_mul(CHUNK) == Some(have)
            }
            (_, None) => false,
        }
    }

    /// Resizes `block` in place to `size` bytes at `align` if its class, span length or
    /// huge mapping allows; `false` if the caller must move it.
    pub(crate) fn resize_in_place(&self, block: &Block, size: usize, align: usize) -> bool {
        let Some(want) = fit(size, align) else {
            return false;
        };
        match (*block, want) {
            (Block::Small { class, .. }, Fit::Small(wanted)) => class == wanted,
            (Block::Span { at, chunks }, Fit::Span(wanted)) => {
                at.chunk_base().addr() % align == 0 && self.resize_span_slow(at, chunks, wanted)
            }
            (Block::Huge { ptr, usable }, _) => huge_keeps(usable, size) && ptr.addr() % align == 0,
            _ => false,
        }
    }

    /// Shrinks or grows the live span at `at` from `have` to `want` chunks in place.
    #[cold]
    #[inline(never)]
    fn resize_span_slow(&self, at: Place, have: usize, want: usize) -> bool {
        let Some(d) = at.desc() else { return false };
        let (region, first) = (at.region, at.chunk);
        if want <= have {
            // Shrink: the tail goes back to the free map.
            // ORDERING: Relaxed (all below): the span is ours (the caller is resizing
            // it), and the used map's RMWs order the chunks themselves.
            d.span.store(want as u32, Ordering::Relaxed);
            self.count_released(have - want);
            region.used().release_run(first + want, have - want);
            lower_cursor(&region, SLOTS, first + want);
            set_full(&region, false);
            true
        } else if first + want <= region.end()
            && region.used().claim_range(first + have, want - have)
        {
            // Grow into the free chunks that follow.
            for chunk in first + have..first + want {
                if let Some(tail) = region.desc(chunk) {
                    tail.set_clean(false);
                    // ORDERING: Relaxed: we own these chunks now.
                    tail.anchor.store(
                        Anchor::new(EMPTY, SPAN_TAIL_CLASS, 0, 0).0,
                        Ordering::Relaxed,
                    );
                }
            }
            self.count_claimed(want - have);
            d.span.store(want as u32, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// How many slots hold chunk `id` (a snapshot, for validation).
    pub(crate) fn slots_holding(&self, id: ChunkId) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|slot| slot.holds(id))
            .count()
    }

    /// The most chunks ever in use at once.
    pub(crate) fn peak_chunks(&self) -> usize {
        self.peak_chunks.get()
    }
}

/// The anchor of a live span's head chunk, and of one freed.
const LIVE_SPAN: Anchor = Anchor::new(ACTIVE, SPAN_CLASS, 0, 0);
const FREED_SPAN: Anchor = Anchor::new(EMPTY, SPAN_CLASS, 0, 0);

/// Why a free of a pointer at which no block starts is refused: a second free of a
/// span head, or of a block whose chunk was retired (its class is kept, and the block
/// lies below the dirtied part), is a double free; anything else is invalid.
#[cold]
#[inline(never)]
fn dead_free_slow(at: Place, anchor: Anchor) -> Refused {
    if anchor.state() != EMPTY {
        return Refused::Invalid; // a live chunk, but not at a block's start
    }
    let again = match Class::from_id(anchor.class()) {
        Some(class) => {
            class.starts_block(at.offset) && at.desc().is_some_and(|d| at.offset < d.dirty_bytes())
        }
        None if anchor.class() == SLAB_TAIL_CLASS => retired_tail_block(at, anchor),
        None => anchor.class() == SPAN_CLASS && at.offset == 0,
    };
    if again {
        Refused::DoubleFree
    } else {
        Refused::Invalid
    }
}

/// Whether a block of a retired slab started at `at`, in one of the slab's tail chunks
/// (`anchor`, `EMPTY`, names the distance back to its first), below the dirtied part.
fn retired_tail_block(at: Place, anchor: Anchor) -> bool {
    let back = anchor.count() as usize;
    let Some(head) = at.chunk.checked_sub(back).and_then(|h| at.region.desc(h)) else {
        return false;
    };
    // ORDERING: Relaxed: only classifies a refused free.
    let head = head.anchor(Ordering::Relaxed);
    head.state() == EMPTY
        && Class::from_id(head.class()).is_some_and(|class| {
            class.chunks() > back
                && class.starts_block(at.offset + back * CHUNK)
                && at.desc().is_some_and(|d| at.offset < d.dirty_bytes())
        })
}

/// Formats chunk `first` of `region`, just claimed for `class` (with the rest of its
/// slab, for a mid-size class), for home list `home`.
fn format(region: &Region, first: usize, class: Class, home: usize) -> Option<()> {
    let d = region.desc(first)?;
    if class.is_slab() {
        // Owner-only words of chunks we hold the used bits of (the used map's Acquire
        // claim ordered them); the chunk's owner's Release CAS publishes them. The
        // slab's dirty bytes are counted from its start: the last dirty chunk's end.
        let mut dirty = 0;
        for k in (1..class.chunks()).rev() {
            let tail = region.desc(first + k)?;
            if dirty == 0 && !tail.is_clean() {
                dirty = k * CHUNK + tail.dirty_bytes();
            }
            // ORDERING: Relaxed: we own the slab; a free of one of its blocks reads
            // this through the user's synchronisation with the allocating thread.
            tail.anchor
                .store(Anchor::slab_tail(ACTIVE, k).0, Ordering::Relaxed);
        }
        if dirty == 0 {
            dirty = d.dirty_bytes();
        }
        d.set_dirty_bytes(dirty);
    }
    d.format(class, home);
    Some(())
}

/// The first chunk of `region`'s zone `zone` (`< SLOTS`).
fn zone_start(region: &Region, zone: usize) -> usize {
    region.first() + (region.end() - region.first()) * zone / SLOTS
}

/// The zone holding `chunk`.
fn zone_of(region: &Region, chunk: usize) -> usize {
    let span = region.end() - region.first();
    ((chunk - region.first()) * SLOTS / span.max(1)).min(SLOTS - 1)
}

/// Whether `region` is flagged as holding no free chunk.
#[inline(always)]
fn is_full(region: &Region) -> bool {
    // A hint (see `Region::full_flag`).
    region.full_flag().is_some_and(|flag| flag.get() != 0)
}

/// Flags `region` as holding no free chunk, or not; written only when it changes, so
/// frees into a region with room leave the line shared.
#[inline(always)]
fn set_full(region: &Region, full: bool) {
    if let Some(flag) = region.full_flag() {
        if (flag.get() != 0) != full {
            flag.set(usize::from(full));
        }
    }
}

/// Moves cursor `which` of `region` down to `chunk` (just freed), if it is above it.
fn lower_cursor(region: &Region, which: usize, chunk: usize) {
    if let Some(cursor) = region.cursor(which) {
        // A hint (see `claim_free_near`).
        if cursor.get() > chunk + 1 {
            cursor.set(chunk + 1);
        }
    }
}

/// Gives the huge block at `ptr` back to the source.
#[cold]
#[inline(never)]
fn free_huge_slow(mem: &Memory, ptr: *mut u8) -> Result<(), Refused> {
    if mem.source.free_huge(ptr) {
        Ok(())
    } else {
        // Another free of the same block won the race (the entry is a tombstone now).
        Err(Refused::Invalid)
    }
}

/// Total bytes in a region's allocatable chunks.
pub(crate) fn heap_bytes(region: &Region) -> usize {
    (region.end() - region.first()) * CHUNK
}

#[cfg(all(test, feature = "checked", not(loom)))]
mod tests {
    use crate::sync::{AtomicUsize, Ordering};
    use crate::{ErrorKind, SigAlloc};

    static HEAP: SigAlloc<{ 64 << 10 }> = SigAlloc::new();
    static CORRUPTED_AT: AtomicUsize = AtomicUsize::new(0);

    fn hook(kind: ErrorKind, ptr: *mut u8) {
        if kind == ErrorKind::Corrupted {
            CORRUPTED_AT.store(ptr.addr(), Ordering::Relaxed);
        }
    }

    /// Checked mode's last line of defence (I1): a block that reaches a free list while
    /// still marked live (a corruption no API call can cause, so the test causes it by
    /// hand) is kept back and reported as `Corrupted`, never handed out again.
    #[test]
    fn a_block_found_handed_out_twice_is_reported_as_corrupted() {
        // The chunk layer's check, on its own: with the `percpu` feature the corrupted
        // block could sit in a per-CPU cache (a no-op without it).
        HEAP.disable_percpu();
        HEAP.set_error_hook(Some(hook));
        let p = HEAP.malloc(64);
        let mem = HEAP.memory();
        let home = mem.regions.home();
        let (chunk, offset) = home.locate(p).unwrap();
        let d = home.desc(chunk).unwrap();
        let class = crate::block::small_at(home, chunk, offset).unwrap();
        // SAFETY: `p` is live and ours; pushing it without clearing its live bit is the
        // corruption under test (nothing else uses this heap).
        unsafe { d.push(home.chunk_base(chunk), class, class.index_of(offset)) };
        // Until the heap is full: the chunk holding `p` may sit in another slot than
        // the one the next calls start from (the slot hint is the CPU, or under Miri a
        // hash of the stack address, which can change between calls), and is reached
        // only once the others are used up.
        let mut held = std::vec::Vec::new();
        loop {
            let q = HEAP.malloc(64);
            if q.is_null() {
                break;
            }
            assert_ne!(q, p, "a live block was handed out again");
            held.push(q);
        }
        assert_eq!(CORRUPTED_AT.load(Ordering::Relaxed), p.addr());
        HEAP.set_error_hook(None);
    }
}
