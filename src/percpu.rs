//! Per-CPU block caches ("magazines", feature `percpu`): a front end before the chunk
//! layer that needs no atomic read-modify-write on a hit (I8, I9).
//!
//! # What a magazine is
//! [`MAGS`] magazines, each `1 << MAG_SHIFT` bytes: one count per class, a gate word,
//! then per class an array of up to `caps[class]` block pointers (a stack). A thread
//! uses the magazine of the CPU it runs on (the rseq `mm_cid`, a compact id, where the
//! kernel gives one; else `cpu_id`), read *inside* each operation.
//!
//! # Why a hit needs no RMW (Linux restartable sequences)
//! A pop or push is one restartable sequence (`asm!` below): it arms the thread's rseq
//! area, reads the CPU id, checks it and the gate, reads the count, and ends in one
//! store that commits the new count. If the thread is preempted, migrated or signalled
//! before that store, the kernel aborts the sequence: it resumes at an abort stub that
//! retries from the start, and nothing was visible. So no thread, stopped anywhere, ever
//! holds a magazine, and a signal handler may use the magazine of the CPU it
//! interrupted (its own operations abort the interrupted one first).
//!
//! # Between CPUs: the transfer cache
//! A full magazine spills half a class as one linked batch into the transfer cache (a
//! few slots per class, one CAS); an empty one takes a whole batch (one swap). Blocks
//! freed on one CPU and allocated on another travel so, without touching their chunks;
//! when every slot is full, a spill goes back to the chunks.
//!
//! # Draining (I9)
//! Only the CPU's own sequences touch a magazine, except a drainer: before the heap
//! grows or answers null, in `trim` and in `disable`, a drainer raises every gate,
//! calls `membarrier(PRIVATE_EXPEDITED_RSEQ)` (every sequence in flight aborts; every
//! later one sees the gate and bypasses), takes the blocks out with a CAS per block on
//! the count (only drainers lower it now, so it is ABA-free), gives them back to their
//! chunks, and lowers the gates. A drainer stopped half-way leaves gates raised: those
//! magazines are bypassed (slower), nobody waits. The transfer cache is emptied first
//! (a swap per slot: no fence needed).
//!
//! # Where it is live
//! Linux, glibc 2.35 or later (its rseq area), x86_64, not under miri or loom. There,
//! and only there, `live` below holds the asm. Under miri and loom, `model` stands in:
//! the same layout, counts and gates, with each "sequence" a try-lock that bypasses
//! when taken, and the membarrier a wait for sequences in flight, so the drain protocol
//! is model-checked. Elsewhere, and without the feature, every call bypasses and the
//! whole module folds away.
//!
//! # Checked mode: parked blocks carry a key
//! To its chunk a parked block is handed out (its live bit stays set from the refill
//! to the spill or drain that gives it back), so a hit touches no chunk. The cache layer
//! tells a parked block by a *key* in its second word (the first is the batch link): a
//! free swaps the key in (finding it there already is a double free, and of two racing
//! frees exactly one finds it absent), every hand-out clears it, and a refill writes it
//! into the blocks it parks. The key is the block's address scrambled with a constant,
//! so a live block holds it only if the program put it there. (A program that writes to
//! a block after freeing it can erase the key; that write corrupts any heap.)
//!
//! Depends on: `sync`, `class`. Upholds I8, I9; I1 for blocks while they are parked
//! (the magazine owns them; checked mode marks them with their key).

use crate::class::{Class, NCLASSES};

/// What a pop from a magazine gave. (Only `Bypass` where the caches are not built.)
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Popped {
    /// A block, now the caller's.
    Block(*mut u8),
    /// The magazine is usable but empty: refill it.
    Empty,
    /// Take the shared path (no rseq on this thread, id out of range, gate raised, or
    /// caches off).
    Bypass,
    /// The caches were never set up: set them up, then take the shared path.
    Untried,
}

/// What a push into a magazine did. (Only `Bypass` where the caches are not built.)
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stored {
    /// The block is parked in the magazine.
    Cached,
    /// The magazine's array for the class is full: spill some, free the block.
    Full,
    /// Take the shared path (as for [`Popped::Bypass`]).
    Bypass,
    /// As for [`Popped::Untried`].
    Untried,
}

#[cfg(any(
    all(
        feature = "percpu",
        target_os = "linux",
        target_env = "gnu",
        target_arch = "x86_64",
        not(miri),
        not(loom)
    ),
    all(feature = "percpu", any(miri, loom))
))]
mod on {
    use super::{Class, Popped, Stored, NCLASSES};
    use crate::sync::{AtomicPtr, AtomicU32, AtomicUsize, Hint, Ordering};

    /// What the rest of the crate uses.
    pub(crate) mod api {
        pub(crate) use super::super::cpu::aborts;
        #[cfg(feature = "hooks")]
        pub(crate) use super::super::cpu::set_delay;
        #[cfg(feature = "checked")]
        pub(crate) use super::keys::{clear_key, park_key, set_key};
        pub(crate) use super::{Caches, MAGS};
        /// The caches are built: their hits are the fast path, everything else a slow
        /// one (kept out of line).
        pub(crate) const LIVE: bool = true;
    }

    /// Checked mode: the keys of parked blocks (see the module docs).
    #[cfg(feature = "checked")]
    mod keys {
        /// Scrambles a block's address into its key. The rotation puts the address's
        /// varying bits high and its zero low bits high too, and no 16-byte-aligned
        /// address has the key 0 (the salt's low bits, rotated back, are not all zero).
        const SALT: usize = 0x5EED_A110_CA7E_D0FF_u64 as usize;
        static_assertions::const_assert!(SALT.rotate_right(29) % 16 != 0);

        fn key(block: *mut u8) -> usize {
            block.addr().rotate_left(29) ^ SALT
        }

        /// The block's second word (the first is a batch's link).
        fn word(block: *mut u8) -> *mut usize {
            block.wrapping_add(8).cast()
        }

        /// Marks `block` parked as it is freed into the cache layer: `false` if it
        /// already was (a double free), in which case nothing changed.
        ///
        /// # Safety
        /// - `block` is a small block of this heap (the caller resolved it).
        pub(crate) unsafe fn park_key(block: *mut u8) -> bool {
            let k = key(block);
            // ORDERING: Relaxed: the swap only arbitrates between frees of one block
            // (exactly one of two racing frees finds the key absent); the block's
            // memory is ordered by the magazine and batch hand-overs, as unchecked.
            // SAFETY: the caller's contract: a block of at least 16 bytes, aligned to
            // 16, that the allocator is being handed.
            unsafe { swap_block_word(word(block), k, Ordering::Relaxed) != k }
        }

        /// Marks a block the cache layer parks without a free (a refill's batch).
        ///
        /// # Safety
        /// - as for [`park_key`], and the block is the caller's (not handed out).
        pub(crate) unsafe fn set_key(block: *mut u8) {
            // ORDERING: Relaxed: as in `park_key`.
            // SAFETY: the caller's contract: the allocator holds the block.
            unsafe { store_block_word(word(block), key(block), Ordering::Relaxed) }
        }

        /// Clears the key of a block being handed out.
        ///
        /// # Safety
        /// - as for [`set_key`].
        pub(crate) unsafe fn clear_key(block: *mut u8) {
            // ORDERING: Relaxed: as in `park_key`.
            // SAFETY: the caller's contract: the allocator holds the block.
            unsafe { store_block_word(word(block), 0, Ordering::Relaxed) }
        }

        use crate::sync::{store_block_word, swap_block_word, Ordering};
    }

    /// Magazines, one per CPU id below it (ids at or above it bypass).
    #[cfg(not(loom))]
    pub(crate) const MAGS: usize = 16;
    #[cfg(loom)]
    pub(crate) const MAGS: usize = 2;

    /// log2 of a magazine's size in bytes.
    #[cfg(not(loom))]
    pub(super) const MAG_SHIFT: u32 = 12;

    /// Blocks per class a magazine holds for a heap of 2 MiB or more: 86 KiB per
    /// magazine at most for the power-of-two classes, most of it for 256 and 512 B,
    /// where programs allocate a lot (a class's count walks up and down with its frees
    /// and allocations; a small cap makes it hit 0 or the cap, a refill or a spill,
    /// every few dozen calls); two of each mid-size class on heaps large enough to
    /// park them too. Smaller heaps scale it down (`start_slow`).
    #[cfg(not(loom))]
    const CAP: [u32; NCLASSES] = [128, 120, 64, 64, 48, 48, 16, 8, 2, 2, 2, 2];
    #[cfg(loom)]
    const CAP: [u32; NCLASSES] = [2; NCLASSES];

    /// Words of a magazine before its arrays: counts, gate, padding.
    const HEADER_WORDS: usize = 8;
    const PAD: usize = HEADER_WORDS * 2 - NCLASSES - 1;
    /// What a drainer adds to a gate (bit 0 is the model's "a sequence is running").
    pub(super) const GATE_STEP: u32 = 2;
    /// Pointer words in a magazine.
    #[cfg(not(loom))]
    const SLOT_WORDS: usize = (1 << MAG_SHIFT) / 8 - HEADER_WORDS;
    #[cfg(loom)]
    const SLOT_WORDS: usize = 2 * NCLASSES;

    /// Where class `c`'s array starts, in pointer words from the magazine's start.
    // Evaluated at compile time only: an index out of range would fail the build.
    #[allow(clippy::indexing_slicing)]
    const fn array_at() -> [u32; NCLASSES] {
        let mut at = [0u32; NCLASSES];
        let mut next = HEADER_WORDS as u32;
        let mut c = 0;
        while c < NCLASSES {
            at[c] = next;
            next += CAP[c];
            c += 1;
        }
        at
    }
    const ARRAY_AT: [u32; NCLASSES] = array_at();
    static_assertions::const_assert!(
        ARRAY_AT[NCLASSES - 1] as usize + CAP[NCLASSES - 1] as usize <= HEADER_WORDS + SLOT_WORDS
    );
    static_assertions::const_assert!(MAGS.is_power_of_two() && MAGS <= 1 << 16);

    /// One CPU's cache. Written by that CPU's restartable sequences (plain stores), and
    /// by drainers (CAS on `count`) only while `gate` is raised and fenced.
    #[repr(C, align(64))]
    pub(super) struct Magazine {
        /// Blocks parked per class.
        pub(super) count: [AtomicU32; NCLASSES],
        /// Non-zero while a drainer works on this magazine (`GATE_STEP` per drainer;
        /// for good once the caches are disabled): sequences then bypass it. In the
        /// model, bit 0 also says a stand-in sequence is running.
        pub(super) gate: AtomicU32,
        _pad: [u32; PAD],
        /// The arrays, class after class (`ARRAY_AT`, as words from the magazine's start).
        pub(super) slots: [AtomicPtr; SLOT_WORDS],
    }
    #[cfg(not(loom))]
    static_assertions::const_assert_eq!(core::mem::size_of::<Magazine>(), 1 << MAG_SHIFT);
    #[cfg(not(loom))]
    static_assertions::const_assert_eq!(core::mem::offset_of!(Magazine, slots), HEADER_WORDS * 8);

    /// `Control::field` before set-up.
    const UNTRIED: u32 = 0;
    /// `Control::field` when the caches are off for good (no rseq, or disabled).
    const OFF: u32 = 1;

    /// What every sequence reads besides its magazine, on one line after them.
    #[repr(C, align(64))]
    pub(super) struct Control {
        /// `UNTRIED`, `OFF`, or the offset in `struct rseq` of the id that picks the
        /// magazine (4, `cpu_id`, or 24, `mm_cid`): the caches are on.
        pub(super) field: AtomicU32,
        /// Magazines not used, from the top: ids at or above `MAGS - excluded` bypass
        /// (0, all used, unless a test says otherwise). Inverted so that a new
        /// allocator is all zero bytes (`.bss`, and a zeroed `SigAlloc` is a new one).
        pub(super) excluded: AtomicU32,
        /// `__rseq_offset`: from the thread pointer to the thread's `struct rseq`.
        pub(super) offset: AtomicUsize,
        /// Blocks per class a magazine may hold, scaled to the heap at set-up (0 until
        /// then: no sequence runs before set-up).
        pub(super) caps: [AtomicU32; NCLASSES],
        /// `ARRAY_AT`, where the sequences can read it (written at set-up too).
        pub(super) arrays: [AtomicU32; NCLASSES],
        /// Transfer slots used per class (at most `BATCHES`; 0 until set-up).
        batches: AtomicU32,
    }

    /// The magazines, their control line, and the transfer cache.
    #[repr(C)]
    pub(crate) struct Caches {
        pub(super) mags: [Magazine; MAGS],
        pub(super) ctl: Control,
        transfer: Transfer,
    }

    /// Batches in the transfer cache per class, at most: set-up uses as many as keep
    /// the whole transfer cache within a quarter of the heap (8 on a 2 MiB heap, all
    /// from 8 MiB on). A producer handing a consumer blocks in bursts spills faster
    /// than the other side takes; with 8 slots on a large heap a quarter of the
    /// producer/consumer run went to giving overflowing batches back to their chunks.
    #[cfg(not(loom))]
    const BATCHES: usize = 32;
    #[cfg(loom)]
    const BATCHES: usize = 2;

    /// Whole batches of free blocks between the magazines of different CPUs: a full
    /// magazine spills half of a class into a batch (its blocks linked through their
    /// first word) and puts it in an empty slot with one CAS; an empty magazine takes a
    /// batch with one swap. So blocks freed on one CPU and allocated on another (a
    /// producer and a consumer) travel in batches and never go back to their chunks.
    /// A slot holds null or the first block of a batch; taking it is a swap to null,
    /// which makes the taker the batch's only owner (no ABA: nobody compares against a
    /// batch address). Drained with the magazines.
    #[repr(C, align(64))]
    struct Transfer {
        slots: [[AtomicPtr; BATCHES]; NCLASSES],
        /// Blocks in the batches per class (a statistic).
        parked: [Hint; NCLASSES],
    }

    impl Magazine {
        #[cfg(not(loom))]
        const fn new() -> Magazine {
            #[allow(clippy::declare_interior_mutable_const)]
            const ZERO32: AtomicU32 = AtomicU32::new(0);
            #[allow(clippy::declare_interior_mutable_const)]
            const NULL: AtomicPtr = AtomicPtr::null();
            Magazine {
                count: [ZERO32; NCLASSES],
                gate: AtomicU32::new(0),
                _pad: [0; PAD],
                slots: [NULL; SLOT_WORDS],
            }
        }
        #[cfg(loom)]
        fn new() -> Magazine {
            Magazine {
                count: core::array::from_fn(|_| AtomicU32::new(0)),
                gate: AtomicU32::new(0),
                _pad: [0; PAD],
                slots: core::array::from_fn(|_| AtomicPtr::null()),
            }
        }

        /// The word holding entry `n` of class `c`'s array.
        pub(super) fn slot(&self, c: usize, n: u32) -> Option<&AtomicPtr> {
            let at = *ARRAY_AT.get(c)? as usize + n as usize;
            self.slots.get(at.checked_sub(HEADER_WORDS)?)
        }
    }

    impl Caches {
        #[cfg(not(loom))]
        pub(crate) const fn new() -> Caches {
            #[allow(clippy::declare_interior_mutable_const)]
            const MAG: Magazine = Magazine::new();
            #[allow(clippy::declare_interior_mutable_const)]
            const ZERO: AtomicU32 = AtomicU32::new(0);
            #[allow(clippy::declare_interior_mutable_const)]
            const NULL: AtomicPtr = AtomicPtr::null();
            #[allow(clippy::declare_interior_mutable_const)]
            const NONE: Hint = Hint::new(0);
            #[allow(clippy::declare_interior_mutable_const)]
            const EMPTY: [AtomicPtr; BATCHES] = [NULL; BATCHES];
            // All zero: a `static` allocator stays in `.bss` (see `Control`).
            Caches {
                mags: [MAG; MAGS],
                ctl: Control {
                    field: AtomicU32::new(UNTRIED),
                    excluded: AtomicU32::new(0),
                    offset: AtomicUsize::new(0),
                    caps: [ZERO; NCLASSES],
                    arrays: [ZERO; NCLASSES],
                    batches: AtomicU32::new(0),
                },
                transfer: Transfer {
                    slots: [EMPTY; NCLASSES],
                    parked: [NONE; NCLASSES],
                },
            }
        }

        #[cfg(loom)]
        pub(crate) fn new() -> Caches {
            Caches {
                mags: core::array::from_fn(|_| Magazine::new()),
                ctl: Control {
                    field: AtomicU32::new(UNTRIED),
                    excluded: AtomicU32::new(0),
                    offset: AtomicUsize::new(0),
                    caps: core::array::from_fn(|_| AtomicU32::new(0)),
                    arrays: core::array::from_fn(|_| AtomicU32::new(0)),
                    batches: AtomicU32::new(0),
                },
                transfer: Transfer {
                    slots: core::array::from_fn(|_| core::array::from_fn(|_| AtomicPtr::null())),
                    parked: core::array::from_fn(|_| Hint::new(0)),
                },
            }
        }

        /// The id field when the caches are on (4 or 24), else `UNTRIED` or `OFF`.
        #[inline(always)]
        fn field(&self) -> u32 {
            // ORDERING: Acquire pairs with the Release CAS in `start_slow`: the offset,
            // caps and arrays written before it are visible to the sequence.
            self.ctl.field.load(Ordering::Acquire)
        }

        /// Pops a block of `class` from this CPU's magazine.
        #[inline(always)]
        pub(crate) fn pop(&self, class: Class) -> Popped {
            match self.field() {
                UNTRIED => Popped::Untried,
                OFF => Popped::Bypass,
                field => super::cpu::pop(self, class.id(), field),
            }
        }

        /// Parks `block` of `class` in this CPU's magazine.
        #[inline(always)]
        pub(crate) fn push(&self, class: Class, block: *mut u8) -> Stored {
            match self.field() {
                UNTRIED => Stored::Untried,
                OFF => Stored::Bypass,
                field => super::cpu::push(self, class.id(), field, block),
            }
        }

        /// How many blocks of `class` a refill fetches, and a spill gives back: half a
        /// magazine's array, at least one.
        pub(crate) fn batch(&self, class: Class) -> usize {
            let cap = self
                .ctl
                .caps
                .get(class.id())
                // ORDERING: Relaxed: written once at set-up, before `field` (Release).
                .map_or(0, |cap| cap.load(Ordering::Relaxed));
            (cap as usize / 2).max(1)
        }

        /// Sets the caches up, once, on the first call that finds them untried: finds
        /// this glibc's rseq area and registers for `membarrier`'s rseq fence (both
        /// signal-safe). Racing callers each do it; the first to finish turns them on.
        /// `heap_bytes` (the inline heap) scales the magazines down for small heaps,
        /// so at most 1/16 of the heap is parked per magazine.
        #[cold]
        #[inline(never)]
        pub(crate) fn start_slow(&self, heap_bytes: usize) {
            if self.field() != UNTRIED {
                return;
            }
            let Some((field, offset)) = super::cpu::register() else {
                // ORDERING: Relaxed: `OFF` publishes nothing; a racing `disable` wins.
                let _ = self.ctl.field.compare_exchange(
                    UNTRIED,
                    OFF,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                return;
            };
            let mut scale = 0;
            // (Loom's heaps are a few chunks; its models keep the tiny caps as they are.)
            while cfg!(not(loom)) && scale < 8 && (PARKED_POW2 >> scale) > heap_bytes / 16 {
                scale += 1;
            }
            // The mid-size classes are parked only where the budget holds them at full
            // caps beside the rest (so a 2 MiB heap keeps its power-of-two caps whole).
            let mid = cfg!(loom) || PARKED <= heap_bytes / 16;
            // Racing set-ups write the same values.
            for ((cap, full), class) in self.ctl.caps.iter().zip(CAP).zip(Class::all()) {
                let cap_now = match (class.is_slab(), mid) {
                    (false, _) => full >> scale,
                    (true, true) => full,
                    (true, false) => 0,
                };
                // ORDERING: Relaxed: published by the Release CAS below.
                cap.store(cap_now, Ordering::Relaxed);
            }
            for (array, at) in self.ctl.arrays.iter().zip(ARRAY_AT) {
                // ORDERING: Relaxed: published by the Release CAS below.
                array.store(at, Ordering::Relaxed);
            }
            // The transfer cache holds up to half a magazine per batch and class: as
            // many batches as keep it within a quarter of the heap.
            let magazine = (PARKED_POW2 >> scale) + if mid { PARKED - PARKED_POW2 } else { 0 };
            let batches = (heap_bytes / 2 / magazine.max(1)).clamp(1, BATCHES);
            // ORDERING: Relaxed: published by the Release CAS below.
            self.ctl.batches.store(batches as u32, Ordering::Relaxed);
            // ORDERING: Relaxed: published by the Release CAS below.
            self.ctl.offset.store(offset, Ordering::Relaxed);
            // ORDERING: Release pairs with the Acquire in `field`. A `disable` that got
            // here first (`OFF`) wins: the CAS fails and the caches stay off.
            let _ = self.ctl.field.compare_exchange(
                UNTRIED,
                field,
                Ordering::Release,
                Ordering::Relaxed,
            );
        }

        /// Whether the caches are set up and on.
        pub(crate) fn active(&self) -> bool {
            self.field() > OFF
        }

        /// Uses only magazines `0..n` (tests: ids at or above `n` bypass).
        pub(crate) fn set_limit(&self, n: usize) {
            // ORDERING: Relaxed: a bound read inside every sequence; a stale one only
            // uses a magazine that exists (it never exceeds `MAGS`).
            self.ctl
                .excluded
                .store((MAGS - n.min(MAGS)) as u32, Ordering::Relaxed);
        }

        /// Blocks parked per class (a snapshot).
        pub(crate) fn cached(&self) -> [usize; NCLASSES] {
            let mut out = [0; NCLASSES];
            for (sum, parked) in out.iter_mut().zip(&self.transfer.parked) {
                *sum += parked.get();
            }
            for m in &self.mags {
                for (sum, count) in out.iter_mut().zip(&m.count) {
                    // ORDERING: Relaxed: a statistic.
                    *sum += count.load(Ordering::Relaxed) as usize;
                }
            }
            out
        }

        /// Puts a batch of `n` blocks of `class`, linked through their first word from
        /// `head` (see `Transfer`), in an empty transfer slot, trying first the slots
        /// after `hint`. `false` if every slot is taken: the caller keeps the batch.
        pub(crate) fn offer(&self, class: Class, head: *mut u8, n: usize, hint: usize) -> bool {
            let Some(slots) = self.transfer.slots.get(class.id()) else {
                return false;
            };
            let used = self.batches();
            for k in 0..used {
                let Some(slot) = slots.get((hint + k) % used) else {
                    continue;
                };
                // ORDERING: Release pairs with the Acquire swap in `take`: our link
                // writes are the taker's. (A load first saves the CAS on full slots.)
                if slot.load(Ordering::Relaxed).is_null()
                    && slot
                        .compare_exchange(
                            core::ptr::null_mut(),
                            head,
                            Ordering::Release,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                {
                    if let Some(parked) = self.transfer.parked.get(class.id()) {
                        parked.add(n);
                    }
                    return true;
                }
            }
            false
        }

        /// Takes a batch of `class` from the transfer cache (the slots after `hint`
        /// first): its first block, the others linked from it; now the caller's.
        pub(crate) fn take(&self, class: Class, hint: usize) -> Option<*mut u8> {
            self.take_among(class, hint, self.batches())
        }

        /// Transfer slots in use per class (see `Control::batches`).
        fn batches(&self) -> usize {
            // ORDERING: Relaxed: written once at set-up, before `field` (Release), which
            // every caller has read (Acquire) to get here.
            (self.ctl.batches.load(Ordering::Relaxed) as usize).min(BATCHES)
        }

        /// [`take`](Self::take) among the first `used` slots.
        fn take_among(&self, class: Class, hint: usize, used: usize) -> Option<*mut u8> {
            let slots = self.transfer.slots.get(class.id())?;
            for k in 0..used {
                let Some(slot) = slots.get((hint + k) % used) else {
                    continue;
                };
                // ORDERING: Acquire pairs with the Release CAS in `offer`. (A load
                // first saves the swap on empty slots.)
                if slot.load(Ordering::Relaxed).is_null() {
                    continue;
                }
                let head = slot.swap_null(Ordering::Acquire);
                if !head.is_null() {
                    return Some(head);
                }
            }
            None
        }

        /// Counts `n` blocks of `class` out of the transfer cache (a statistic, kept by
        /// whoever took their batch).
        pub(crate) fn taken(&self, class: Class, n: usize) {
            if let Some(parked) = self.transfer.parked.get(class.id()) {
                parked.sub(n);
            }
        }

        /// Empties the transfer cache into `give_back`. Returns the blocks.
        fn take_batches(&self, give_back: &mut impl FnMut(*mut u8, Class)) -> usize {
            let mut taken = 0;
            for class in Class::all() {
                let mut n = 0;
                // Every slot, whatever set-up chose (it may not have run yet).
                while let Some(head) = self.take_among(class, 0, BATCHES) {
                    // SAFETY: the batch is ours (taken by a swap).
                    unsafe {
                        crate::sync::for_each_linked(head, |block| {
                            give_back(block, class);
                            n += 1;
                        });
                    }
                }
                self.taken(class, n);
                taken += n;
            }
            taken
        }

        /// Gives every parked block to `give_back`, then reopens the magazines. Returns
        /// the blocks given back. Lock-free: nobody waits for a raised gate.
        pub(crate) fn drain(&self, mut give_back: impl FnMut(*mut u8, Class)) -> usize {
            if self.field() == UNTRIED || self.cached().iter().all(|&n| n == 0) {
                // Nothing was ever parked, or nothing is now: a block parked after
                // this look is as if parked after the drain.
                return 0;
            }
            let batches = self.take_batches(&mut give_back);
            for m in &self.mags {
                // ORDERING: Relaxed: the fence below (membarrier) orders the raise
                // before every later sequence on every CPU. (In the model, sequences
                // enter with a CAS on this same word, so its modification order decides.)
                m.gate.fetch_add(GATE_STEP, Ordering::Relaxed);
            }
            let taken = if super::cpu::fence(self) {
                self.take_all(give_back)
            } else {
                0
            };
            for m in &self.mags {
                // ORDERING: Release pairs with the gate load of the next sequence (the
                // asm's plain load on x86's TSO; Acquire in the model): it sees the
                // counts our CASes lowered.
                m.gate.fetch_sub(GATE_STEP, Ordering::Release);
            }
            batches + taken
        }

        /// Turns the caches off for good and gives every parked block back.
        pub(crate) fn disable(&self, mut give_back: impl FnMut(*mut u8, Class)) -> usize {
            // ORDERING: AcqRel: Release stops new `start_slow`s (their CAS fails);
            // Acquire makes a finished set-up's registration ours.
            let was = self.ctl.field.swap(OFF, Ordering::AcqRel);
            for m in &self.mags {
                // ORDERING: Relaxed, as in `drain`; never lowered again.
                m.gate.fetch_add(GATE_STEP, Ordering::Relaxed);
            }
            // Never on: nothing was parked (and membarrier may not be registered).
            if was <= OFF {
                return 0;
            }
            // (A spill racing this may still offer a batch: the next drain takes it.)
            let batches = self.take_batches(&mut give_back);
            if !super::cpu::fence(self) {
                return batches;
            }
            batches + self.take_all(give_back)
        }

        /// Takes every parked block out of gated, fenced magazines.
        fn take_all(&self, mut give_back: impl FnMut(*mut u8, Class)) -> usize {
            let mut taken = 0;
            for m in &self.mags {
                for class in Class::all() {
                    let Some(count) = m.count.get(class.id()) else {
                        continue;
                    };
                    loop {
                        // ORDERING: Relaxed: the fence made every committed sequence's
                        // stores visible, and only drainers change the count now.
                        let n = count.load(Ordering::Relaxed);
                        let Some(slot) = n.checked_sub(1).and_then(|top| m.slot(class.id(), top))
                        else {
                            break;
                        };
                        // ORDERING: Relaxed: as above; the entry below the count is
                        // stable while only drainers lower the count.
                        let block = slot.load(Ordering::Relaxed);
                        // ORDERING: Relaxed: this CAS only decides which drainer takes
                        // entry `n - 1` (counts only fall while gated: no ABA).
                        if count
                            .compare_exchange(n, n - 1, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                        {
                            give_back(block, class);
                            taken += 1;
                        }
                    }
                }
            }
            taken
        }
    }

    const PARKED: usize = parked_bytes(NCLASSES);
    const PARKED_POW2: usize = parked_bytes(crate::class::NPOW2);

    /// The most bytes one magazine parks at full caps in classes `0..classes`.
    // Evaluated at compile time only (`PARKED`).
    #[allow(clippy::indexing_slicing)]
    const fn parked_bytes(classes: usize) -> usize {
        let mut sum = 0;
        let mut c = 0;
        while c < classes {
            let size = match Class::from_id(c as u32) {
                Some(class) => class.size(),
                None => 0,
            };
            sum += CAP[c] as usize * size;
            c += 1;
        }
        sum
    }
}

#[cfg(all(
    feature = "percpu",
    target_os = "linux",
    target_env = "gnu",
    target_arch = "x86_64",
    not(miri),
    not(loom)
))]
#[path = "percpu_rseq.rs"]
mod cpu;

#[cfg(all(feature = "percpu", any(miri, loom)))]
#[path = "percpu_model.rs"]
mod cpu;

#[cfg(any(
    all(
        feature = "percpu",
        target_os = "linux",
        target_env = "gnu",
        target_arch = "x86_64",
        not(miri),
        not(loom)
    ),
    all(feature = "percpu", any(miri, loom))
))]
pub(crate) use on::api::*;

/// Without live caches: every call bypasses, and the compiler folds it all away.
#[cfg(not(any(
    all(
        feature = "percpu",
        target_os = "linux",
        target_env = "gnu",
        target_arch = "x86_64",
        not(miri),
        not(loom)
    ),
    all(feature = "percpu", any(miri, loom))
)))]
mod off {
    use super::{Class, Popped, Stored, NCLASSES};

    /// What the rest of the crate uses.
    pub(crate) mod api {
        #[cfg(feature = "checked")]
        pub(crate) use super::keys::{clear_key, park_key, set_key};
        #[cfg(feature = "hooks")]
        pub(crate) use super::set_delay;
        pub(crate) use super::{aborts, Caches, MAGS};
        /// No caches: the shared path is the fast path.
        pub(crate) const LIVE: bool = false;
    }

    /// Checked mode without caches: no block is ever parked, so there are no keys
    /// (callers test `LIVE` first; these are never reached).
    #[cfg(feature = "checked")]
    mod keys {
        pub(crate) unsafe fn park_key(_block: *mut u8) -> bool {
            true
        }
        pub(crate) unsafe fn set_key(_block: *mut u8) {}
        pub(crate) unsafe fn clear_key(_block: *mut u8) {}
    }

    /// No magazines.
    pub(crate) const MAGS: usize = 0;

    /// No sequence ever runs.
    pub(crate) fn aborts() -> u64 {
        0
    }

    /// Test builds: nothing to delay.
    #[cfg(feature = "hooks")]
    pub(crate) fn set_delay(_spins: u64) {}

    /// No caches.
    pub(crate) struct Caches;

    impl Caches {
        pub(crate) const fn new() -> Caches {
            Caches
        }
        #[inline(always)]
        pub(crate) fn pop(&self, _class: Class) -> Popped {
            Popped::Bypass
        }
        #[inline(always)]
        pub(crate) fn push(&self, _class: Class, _block: *mut u8) -> Stored {
            Stored::Bypass
        }
        pub(crate) fn batch(&self, _class: Class) -> usize {
            1
        }
        pub(crate) fn start_slow(&self, _heap_bytes: usize) {}
        pub(crate) fn active(&self) -> bool {
            false
        }
        pub(crate) fn set_limit(&self, _n: usize) {}
        pub(crate) fn cached(&self) -> [usize; NCLASSES] {
            [0; NCLASSES]
        }
        pub(crate) fn offer(&self, _: Class, _: *mut u8, _: usize, _: usize) -> bool {
            false
        }
        pub(crate) fn take(&self, _class: Class, _hint: usize) -> Option<*mut u8> {
            None
        }
        pub(crate) fn taken(&self, _class: Class, _n: usize) {}
        pub(crate) fn drain(&self, _give_back: impl FnMut(*mut u8, Class)) -> usize {
            0
        }
        pub(crate) fn disable(&self, _give_back: impl FnMut(*mut u8, Class)) -> usize {
            0
        }
    }
}

#[cfg(not(any(
    all(
        feature = "percpu",
        target_os = "linux",
        target_env = "gnu",
        target_arch = "x86_64",
        not(miri),
        not(loom)
    ),
    all(feature = "percpu", any(miri, loom))
)))]
pub(crate) use off::api::*;

#[cfg(all(test, loom, feature = "percpu"))]
mod loom_models {
    use super::*;
    use std::sync::Arc;
    use std::vec::Vec;

    /// Blocks are only addresses here: never dereferenced.
    fn block(i: usize) -> *mut u8 {
        core::ptr::without_provenance_mut(i * 16)
    }

    /// A thread pushes and pops on its magazine while another drains it (gate, model
    /// fence, CAS per block): every block comes out exactly once, by a pop, a drain or
    /// the final drain, and a raised gate makes the pusher bypass, never wait.
    #[test]
    fn drain_takes_each_block_once() {
        let class = Class::from_id(0).unwrap();
        crate::sync::check_model("percpu_drain", move || {
            let caches = Arc::new(Caches::new());
            caches.start_slow(1 << 30);
            assert!(caches.active());
            assert_eq!(caches.push(class, block(1)), Stored::Cached);
            let user = {
                let caches = caches.clone();
                loom::thread::spawn(move || {
                    let mut out = Vec::new();
                    // Parked, or refused while a drain runs: then the user keeps it.
                    if caches.push(class, block(2)) != Stored::Cached {
                        out.push(2);
                    }
                    if let Popped::Block(p) = caches.pop(class) {
                        out.push(p.addr() / 16);
                    }
                    out
                })
            };
            let mut got = Vec::new();
            caches.drain(|p, _| got.push(p.addr() / 16));
            got.extend(user.join().unwrap());
            caches.drain(|p, _| got.push(p.addr() / 16));
            got.sort_unstable();
            assert_eq!(got, [1, 2], "a block lost or taken twice");
            assert!(caches.cached().iter().all(|&n| n == 0));
        });
    }

    /// A spilled batch offered to the transfer cache races a taker and a drainer:
    /// every block comes out once, through the taker or the drain.
    #[test]
    fn transfer_batches_move_whole() {
        let class = Class::from_id(1).unwrap();
        crate::sync::check_model("percpu_transfer", move || {
            let caches = Arc::new(Caches::new());
            caches.start_slow(1 << 30);
            // Three real 16-byte blocks (the links are written into them).
            let blocks: Vec<usize> = (0..3)
                .map(|_| std::boxed::Box::into_raw(std::boxed::Box::new([0u64; 2])) as usize)
                .collect();
            let spiller = {
                let (caches, blocks) = (caches.clone(), blocks.clone());
                loom::thread::spawn(move || {
                    let mut head = core::ptr::null_mut();
                    for &b in &blocks[..2] {
                        // SAFETY: our block, built into a batch before it is offered.
                        unsafe { crate::sync::write_next(b as *mut u8, head) };
                        head = b as *mut u8;
                    }
                    caches.offer(class, head, 2, 0)
                })
            };
            let taker = {
                let caches = caches.clone();
                loom::thread::spawn(move || {
                    let mut got = Vec::new();
                    if let Some(head) = caches.take(class, 1) {
                        // SAFETY: the batch is ours (taken).
                        unsafe { crate::sync::for_each_linked(head, |b| got.push(b.addr())) };
                    }
                    got
                })
            };
            let mut got = Vec::new();
            caches.drain(|p, _| got.push(p.addr()));
            let offered = spiller.join().unwrap();
            got.extend(taker.join().unwrap());
            caches.drain(|p, _| got.push(p.addr()));
            got.sort_unstable();
            let mut want = std::vec![blocks[0], blocks[1]];
            want.sort_unstable();
            assert!(offered, "an empty transfer cache refused a batch");
            assert_eq!(got, want, "a block lost or taken twice");
            for b in blocks {
                // SAFETY: made by `Box::into_raw` above, freed once.
                drop(unsafe { std::boxed::Box::from_raw(b as *mut [u64; 2]) });
            }
        });
    }

    /// `disable` races a push: afterwards nothing is parked, whatever the order, and
    /// the caches stay off.
    #[test]
    fn disable_leaves_nothing_parked() {
        let class = Class::from_id(3).unwrap();
        crate::sync::check_model("percpu_disable", move || {
            let caches = Arc::new(Caches::new());
            caches.start_slow(1 << 30);
            let user = {
                let caches = caches.clone();
                loom::thread::spawn(move || caches.push(class, block(7)) == Stored::Cached)
            };
            let mut got = Vec::new();
            caches.disable(|p, _| got.push(p.addr() / 16));
            let parked = user.join().unwrap();
            assert_eq!(parked, got == [7], "a parked block was not given back");
            assert!(!caches.active());
            assert_eq!(caches.push(class, block(8)), Stored::Bypass);
            assert!(caches.cached().iter().all(|&n| n == 0));
        });
    }
}

/// The caches' interface on its own (natively on the live magazines where rseq runs,
/// under miri on the model): conservation, capacity, drain and disable. A thread may
/// migrate between two calls natively, so only what holds across CPUs is asserted.
#[cfg(all(test, not(loom), feature = "percpu"))]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::vec::Vec;

    /// Blocks are only addresses here: never dereferenced.
    fn block(i: usize) -> *mut u8 {
        core::ptr::without_provenance_mut(i * 16)
    }

    fn caches() -> Box<Caches> {
        let caches = Box::new(Caches::new());
        caches.start_slow(2 << 20);
        caches
    }

    #[test]
    fn pushed_blocks_come_back_once_by_pop_or_drain() {
        let caches = caches();
        let class = Class::from_id(2).unwrap();
        let mut parked = Vec::new();
        let mut kept = Vec::new();
        for i in 1..=100 {
            match caches.push(class, block(i)) {
                Stored::Cached => parked.push(i),
                Stored::Full | Stored::Bypass => kept.push(i),
                Stored::Untried => panic!("set up, yet untried"),
            }
        }
        let mut out = Vec::new();
        for _ in 0..10 {
            if let Popped::Block(p) = caches.pop(class) {
                out.push(p.addr() / 16);
            }
        }
        caches.drain(|p, c| {
            assert_eq!(c, class);
            out.push(p.addr() / 16);
        });
        out.sort_unstable();
        assert_eq!(out, parked, "a parked block lost or returned twice");
        assert!(caches.cached().iter().all(|&n| n == 0));
        if caches.active() && !parked.is_empty() {
            // A class's array holds its cap (64 blocks of 64 B on a 2 MiB heap).
            assert!(parked.len() <= 64 * MAGS, "{} parked", parked.len());
        }
    }

    #[test]
    fn an_empty_cache_pops_nothing_and_a_full_one_refuses() {
        let caches = caches();
        let class = Class::from_id(7).unwrap();
        assert!(matches!(caches.pop(class), Popped::Empty | Popped::Bypass));
        // Two 2 KiB blocks fit a magazine at this heap size; pushing more finds it full
        // (or, natively, another CPU's magazine after a migration).
        let stored = (1..=40)
            .filter(|&i| caches.push(class, block(i)) == Stored::Cached)
            .count();
        assert!(stored <= 2 * MAGS, "{stored} stored");
        assert_eq!(caches.drain(|_, _| {}), stored);
    }

    #[test]
    fn disabled_caches_bypass_and_give_everything_back() {
        let caches = caches();
        let class = Class::from_id(0).unwrap();
        let stored = (1..=10)
            .filter(|&i| caches.push(class, block(i)) == Stored::Cached)
            .count();
        assert_eq!(caches.disable(|_, _| {}), stored);
        assert!(!caches.active());
        assert_eq!(caches.push(class, block(11)), Stored::Bypass);
        assert_eq!(caches.pop(class), Popped::Bypass);
        assert_eq!(caches.drain(|_, _| {}), 0);
    }

    #[test]
    fn untried_caches_say_so_and_small_heaps_park_less() {
        let caches = Box::new(Caches::new());
        let class = Class::from_id(0).unwrap();
        assert_eq!(caches.pop(class), Popped::Untried);
        assert_eq!(caches.push(class, block(1)), Stored::Untried);
        caches.start_slow(64 << 10);
        // 64 KiB heap: at most 1 KiB parked per magazine, so the 2 KiB class parks none.
        if caches.active() {
            assert_eq!(caches.batch(Class::from_id(7).unwrap()), 1);
            assert_ne!(
                caches.push(Class::from_id(7).unwrap(), block(2)),
                Stored::Cached
            );
        }
    }
}
