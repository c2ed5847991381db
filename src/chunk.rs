//! A chunk's descriptor: the anchor word, owned pops, shared pushes, state changes.
//!
//! # The protocol (after Michael, PLDI 2004, and LRMalloc, 2018)
//!
//! Each chunk serving a class has one atomic *anchor*: `{state, class, head, count}`.
//! `head` is the index of the first block of the chunk's shared free list; the list is
//! linked through each free block's first word (block indices, not pointers).
//!
//! | state     | who may take blocks                | `count` means                      |
//! |-----------|------------------------------------|------------------------------------|
//! | `ACTIVE`  | its one owner (a thread holding it, or the active slot it sits in) | blocks pushed since the owner's last take |
//! | `PARTIAL` | nobody: listed in its class's partial map | every free block (listed + uncarved) |
//! | `FULL`    | nobody: listed nowhere             | 0                                  |
//! | `EMPTY`   | the chunk is free or being retired  | —                                  |
//!
//! Blocks move like this:
//! - **free** (anyone): push the block: write its link, CAS the anchor to `head = block,
//!   count + 1`. `FULL` becomes `PARTIAL` (the freer then lists it); a `PARTIAL` push
//!   that makes `count == capacity` becomes `EMPTY`, and the freer, now its only owner,
//!   retires the chunk to the free-chunk map so any class can reuse it.
//! - **take** (owner only): CAS the whole shared list away (`count = 0`) into the
//!   owner's *private* list, then pop from that with plain loads and stores. Blocks past
//!   `carved` have never been handed out; the owner carves them one by one.
//! - **claim** (anyone who took a partial listing): CAS `PARTIAL -> ACTIVE`, taking
//!   every free block at once.
//! - **release** (the owner, when it cannot keep the chunk): splice the private list
//!   back and CAS to `FULL`, `PARTIAL` or `EMPTY` according to the total.
//!
//! Why no ABA (I3) with a one-word CAS and no tag: every CAS here is correct for the
//! value it compares against, whatever happened before. A push links the block to the
//! current head, and `(head, count)` fully describes the current list. Only the owner
//! ever lowers `count` or leaves `ACTIVE`, so the owner's take cannot be fooled by an
//! old value. A claim that compares against an old `PARTIAL` value that has come round
//! again takes exactly the list that value describes. No one ever reads a block's link
//! unless the block is on its own private list, so no read races a reuse.
//!
//! The owner-only fields (`private`, `carve`) are plain atomics accessed Relaxed; the
//! anchor's Release/Acquire CAS at each change of owner orders them.
//!
//! Depends on: `sync`, `class`. Upholds I1, I2, I3, I4.

use crate::class::{Class, CHUNK};
#[cfg(feature = "checked")]
use crate::sync::AtomicUsize;
use crate::sync::{read_link, write_link, AtomicU32, Ordering};

/// Anchor state: free, unformatted or being retired.
pub(crate) const EMPTY: u32 = 0;
/// Anchor state: owned; only the owner takes blocks.
pub(crate) const ACTIVE: u32 = 1;
/// Anchor state: unowned with free blocks, listed in the class's partial map.
pub(crate) const PARTIAL: u32 = 2;
/// Anchor state: unowned with no free block.
pub(crate) const FULL: u32 = 3;
/// The class field of a chunk that heads a span of whole chunks.
pub(crate) const SPAN_CLASS: u32 = 15;
/// The class field of a span's other chunks (state `EMPTY`): lets checked mode tell a
/// pointer into a span from a second free of a span head.
pub(crate) const SPAN_TAIL_CLASS: u32 = 14;
/// The class field of a slab's other chunks (see `class.rs`): their `count` field holds
/// the distance back to the slab's first chunk, which holds the slab's state. `ACTIVE`
/// while the slab serves its class, `EMPTY` once it was retired.
pub(crate) const SLAB_TAIL_CLASS: u32 = 13;
static_assertions::const_assert!(crate::class::NCLASSES <= SLAB_TAIL_CLASS as usize);

/// The anchor word, unpacked. Layout: count bits 0..13, head 13..25, class 25..29,
/// state 29..31. It fits 32 bits so every target's single-word CAS serves (I2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Anchor(pub(crate) u32);

impl Anchor {
    const COUNT_BITS: u32 = 13;
    const HEAD_BITS: u32 = 12;
    const CLASS_BITS: u32 = 4;
    const HEAD_SHIFT: u32 = Self::COUNT_BITS;
    const CLASS_SHIFT: u32 = Self::HEAD_SHIFT + Self::HEAD_BITS;
    const STATE_SHIFT: u32 = Self::CLASS_SHIFT + Self::CLASS_BITS;

    #[inline(always)]
    pub(crate) const fn new(state: u32, class: u32, head: u32, count: u32) -> Anchor {
        Anchor(
            (state << Self::STATE_SHIFT)
                | ((class & ((1 << Self::CLASS_BITS) - 1)) << Self::CLASS_SHIFT)
                | ((head & ((1 << Self::HEAD_BITS) - 1)) << Self::HEAD_SHIFT)
                | (count & ((1 << Self::COUNT_BITS) - 1)),
        )
    }
    #[inline(always)]
    pub(crate) const fn count(self) -> u32 {
        self.0 & ((1 << Self::COUNT_BITS) - 1)
    }
    #[inline(always)]
    pub(crate) const fn head(self) -> u32 {
        (self.0 >> Self::HEAD_SHIFT) & ((1 << Self::HEAD_BITS) - 1)
    }
    #[inline(always)]
    pub(crate) const fn class(self) -> u32 {
        (self.0 >> Self::CLASS_SHIFT) & ((1 << Self::CLASS_BITS) - 1)
    }
    #[inline(always)]
    pub(crate) const fn state(self) -> u32 {
        (self.0 >> Self::STATE_SHIFT) & 3
    }
    /// The small class, if this anchor is a live small-block chunk's (or slab head's).
    #[inline(always)]
    pub(crate) const fn small_class(self) -> Option<Class> {
        if self.state() == EMPTY {
            None
        } else {
            Class::from_id(self.class())
        }
    }
    /// The anchor of chunk `distance` of a slab, past its first.
    #[inline(always)]
    pub(crate) const fn slab_tail(state: u32, distance: usize) -> Anchor {
        Anchor::new(state, SLAB_TAIL_CLASS, 0, distance as u32)
    }
    /// For a chunk of a live slab past its first: how many chunks back the slab starts.
    #[inline(always)]
    pub(crate) const fn live_tail(self) -> Option<usize> {
        if self.state() != EMPTY && self.class() == SLAB_TAIL_CLASS {
            Some(self.count() as usize)
        } else {
            None
        }
    }
}

/// The owner's private list, packed in one word: head index (low 16 bits) and length
/// (high 16 bits). Owner-only, so it needs no CAS; it is one word only to keep the
/// descriptor small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Private(u32);

impl Private {
    const EMPTY: Private = Private(0);
    #[inline(always)]
    const fn new(head: u32, len: u32) -> Private {
        Private((len << 16) | (head & 0xFFFF))
    }
    #[inline(always)]
    const fn head(self) -> u32 {
        self.0 & 0xFFFF
    }
    #[inline(always)]
    const fn len(self) -> u32 {
        self.0 >> 16
    }
}

/// How far the owner has carved the chunk, packed in one word: blocks carved (low 16
/// bits) and dirty bytes (high 16 bits: bytes at or past `dirty` have not been handed
/// out since the memory was last zero). Owner-only, like [`Private`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Carve(u32);

impl Carve {
    #[inline(always)]
    const fn new(carved: u32, dirty: u32) -> Carve {
        Carve((dirty << 16) | (carved & 0xFFFF))
    }
    #[inline(always)]
    const fn carved(self) -> u32 {
        self.0 & 0xFFFF
    }
    #[inline(always)]
    const fn dirty(self) -> u32 {
        self.0 >> 16
    }
}

/// What a push did to the chunk, which tells the pusher what it must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Nothing more to do.
    Done,
    /// The chunk went `FULL -> PARTIAL`: the caller must list it.
    Listed,
    /// The chunk went `EMPTY`: the caller owns it and must retire it.
    Emptied,
    /// The anchor says the chunk holds no live block of a small class: a double or
    /// invalid free. Nothing was changed.
    Rejected,
}

/// One chunk's descriptor, kept in its region's side table (no per-block header).
pub(crate) struct Desc {
    /// The anchor (see the module docs).
    pub(crate) anchor: AtomicU32,
    /// Owner-only: the private list, a [`Private`].
    private: AtomicU32,
    /// Owner-only: a [`Carve`].
    carve: AtomicU32,
    /// For a span head: the number of chunks in the span. For a chunk serving a class:
    /// its *home*, the partial list it goes back to (see [`Desc::home`]).
    pub(crate) span: AtomicU32,
    /// Checked mode: one bit per block, set while the block is handed out. A free that
    /// finds its bit clear is a double (or invalid) free and is refused.
    #[cfg(feature = "checked")]
    live: [AtomicUsize; LIVE_WORDS],
}

#[cfg(feature = "checked")]
const LIVE_WORDS: usize = crate::class::MAX_BLOCKS.div_ceil(usize::BITS as usize);

/// Checked mode: the word and mask of block `idx`'s live bit.
#[cfg(feature = "checked")]
fn live_bit(idx: u32) -> (usize, usize) {
    let w = usize::BITS;
    ((idx / w) as usize, 1 << (idx % w))
}

/// Block `idx` of the chunk (or slab) at `base`.
#[inline(always)]
fn block(base: *mut u8, class: Class, idx: u32) -> *mut u8 {
    base.wrapping_add(class.offset_of(idx))
}

impl Desc {
    /// A fresh descriptor. Outside loom, zeroed memory already is one.
    #[cfg(loom)]
    pub(crate) fn new() -> Desc {
        Desc {
            anchor: AtomicU32::new(0),
            private: AtomicU32::new(0),
            carve: AtomicU32::new(0),
            span: AtomicU32::new(0),
            #[cfg(feature = "checked")]
            live: core::array::from_fn(|_| AtomicUsize::new(0)),
        }
    }

    /// A snapshot of the anchor.
    #[inline(always)]
    pub(crate) fn anchor(&self, o: Ordering) -> Anchor {
        Anchor(self.anchor.load(o))
    }

    // The owner-only words. ORDERING (all four): Relaxed: only the chunk's owner (or a
    // reader at quiescence, or statistics that accept a stale value) touches them, and
    // the anchor's Release/Acquire CAS at each change of owner orders them.
    #[inline(always)]
    fn private(&self) -> Private {
        Private(self.private.load(Ordering::Relaxed))
    }
    #[inline(always)]
    fn set_private(&self, p: Private) {
        self.private.store(p.0, Ordering::Relaxed);
    }
    #[inline(always)]
    fn carve(&self) -> Carve {
        Carve(self.carve.load(Ordering::Relaxed))
    }
    #[inline(always)]
    fn set_carve(&self, c: Carve) {
        self.carve.store(c.0, Ordering::Relaxed);
    }

    /// Formats a chunk the caller has just claimed from the free map for `class`.
    /// `home` is the partial list of the slot it is formatted for.
    pub(crate) fn format(&self, class: Class, home: usize) {
        // The caller owns the chunk exclusively (claimed with an Acquire RMW on the used
        // map). Nobody can take it from `ACTIVE`, and the owner's later Release CAS
        // publishes these writes to the next owner.
        self.set_private(Private::EMPTY);
        self.set_carve(Carve::new(0, self.carve().dirty()));
        self.set_home(home);
        // ORDERING: Relaxed, as above.
        self.anchor.store(
            Anchor::new(ACTIVE, class.id() as u32, 0, 0).0,
            Ordering::Relaxed,
        );
    }

    /// The partial list this chunk goes back to when a free lists it: the list of the
    /// slot it was formatted for, so blocks freed by another thread (or a handler) come
    /// back to the thread that allocates from the chunk, instead of being left in the
    /// freer's list for someone else to take over. Only a hint: any list is correct.
    #[inline(always)]
    pub(crate) fn home(&self) -> usize {
        // ORDERING: Relaxed: written at `format`, before any block of the chunk was
        // handed out, so anyone freeing one of its blocks sees it; a stale value only
        // picks another list.
        self.span.load(Ordering::Relaxed) as usize
    }

    /// Makes `home` the chunk's home list (its owner took it over from another list).
    #[inline(always)]
    pub(crate) fn set_home(&self, home: usize) {
        // ORDERING: Relaxed: a hint (see `home`), written by the chunk's owner.
        self.span.store(home as u32, Ordering::Relaxed);
    }

    /// Takes one block. Returns its index and whether it is known to be zero. Returns
    /// `None` when the chunk had no free block left; it is then `FULL` and no longer the
    /// caller's.
    ///
    /// # Safety
    /// - the caller owns the chunk (`ACTIVE`, taken from a slot, claimed or formatted),
    ///   serving `class`, and `base` is the chunk's first byte.
    #[inline(always)]
    pub(crate) unsafe fn owner_pop(&self, base: *mut u8, class: Class) -> Option<(u32, bool)> {
        let private = self.private();
        if private.len() != 0 {
            let idx = private.head();
            // SAFETY: I1, the block heads our private list, so we own it.
            let next = unsafe { read_link(block(base, class, idx)) };
            self.set_private(Private::new(next, private.len() - 1));
            return Some((idx, false));
        }
        let carve = self.carve();
        let carved = carve.carved();
        if carved < class.capacity() {
            self.set_carve(Carve::new(carved + 1, carve.dirty()));
            let zero = class.offset_of(carved) >= carve.dirty() as usize;
            return Some((carved, zero));
        }
        // SAFETY: forwarded from our caller.
        unsafe { self.take_shared_slow(base, class) }
    }

    /// The owner's private list and uncarved blocks are exhausted: take the shared list,
    /// or give the chunk up as `FULL`.
    ///
    /// # Safety
    /// - as for [`owner_pop`](Self::owner_pop).
    #[cold]
    #[inline(never)]
    unsafe fn take_shared_slow(&self, base: *mut u8, class: Class) -> Option<(u32, bool)> {
        // ORDERING: Relaxed; the successful CAS below carries the ordering.
        let mut a = self.anchor(Ordering::Relaxed);
        loop {
            if a.count() == 0 {
                let full = Anchor::new(FULL, class.id() as u32, 0, 0);
                // ORDERING: Release pairs with the Acquire CAS of whoever next owns the
                // chunk (a claim after the first free lists it): our owner-only writes
                // happen-before theirs.
                match self.anchor.compare_exchange(
                    a.0,
                    full.0,
                    Ordering::Release,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return None,
                    Err(now) => a = Anchor(now),
                }
            } else {
                let taken = Anchor::new(ACTIVE, class.id() as u32, 0, 0);
                // ORDERING: Acquire pairs with the Release CAS of every push in the
                // list (a release sequence of RMWs): their link writes are visible.
                match self.anchor.compare_exchange(
                    a.0,
                    taken.0,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        let idx = a.head();
                        // SAFETY: I1, we just took the whole list, so we own its blocks.
                        let next = unsafe { read_link(block(base, class, idx)) };
                        self.set_private(Private::new(next, a.count() - 1));
                        return Some((idx, false));
                    }
                    Err(now) => a = Anchor(now),
                }
            }
        }
    }

    /// Takes ownership of a chunk whose partial listing the caller removed. Returns
    /// `false` if the chunk is not `PARTIAL` for `class` (the listing was stale; whoever
    /// makes it `PARTIAL` again lists it again).
    pub(crate) fn claim(&self, class: Class) -> bool {
        // ORDERING: Acquire pairs with the Release of the CAS that made the chunk PARTIAL
        // (the value we read is in its release sequence).
        let mut a = self.anchor(Ordering::Acquire);
        loop {
            if a.state() != PARTIAL || a.class() != class.id() as u32 {
                return false;
            }
            let taken = Anchor::new(ACTIVE, class.id() as u32, 0, 0);
            // ORDERING: Acquire: the previous owner's owner-only writes and every
            // pusher's link writes happen-before our reads of them.
            match self
                .anchor
                .compare_exchange(a.0, taken.0, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => a = Anchor(now),
            }
        }
        // Owner-only words from here on, ordered by the CAS above.
        let uncarved = class.capacity().saturating_sub(self.carve().carved());
        let listed = a.count().saturating_sub(uncarved);
        self.set_private(Private::new(a.head(), listed));
        true
    }

    /// Gives up ownership. Returns what the caller must do next: list the chunk
    /// ([`Pushed::Listed`]), retire it ([`Pushed::Emptied`]) or nothing.
    ///
    /// # Safety
    /// - as for [`owner_pop`](Self::owner_pop); afterwards the caller no longer owns it.
    pub(crate) unsafe fn release(&self, base: *mut u8, class: Class) -> Pushed {
        let private = self.private();
        let (phead, plen) = (private.head(), private.len());
        let carved = self.carve().carved();
        let extra = plen + class.capacity().saturating_sub(carved);
        // Find the private list's tail, to splice the list in front of the shared one.
        let mut tail = phead;
        for _ in 1..plen {
            // SAFETY: I1, every block on the private list is ours.
            tail = unsafe { read_link(block(base, class, tail)) };
        }
        self.set_private(Private::EMPTY);
        // ORDERING: Relaxed; the CAS carries the ordering.
        let mut a = self.anchor(Ordering::Relaxed);
        loop {
            let head = if plen > 0 {
                // SAFETY: I1, the tail is still on our private list until the CAS.
                unsafe { write_link(block(base, class, tail), a.head()) };
                phead
            } else {
                a.head()
            };
            let count = a.count() + extra;
            let (state, next) = if count == 0 {
                (FULL, Pushed::Done)
            } else if count >= class.capacity() {
                (EMPTY, Pushed::Emptied)
            } else {
                (PARTIAL, Pushed::Listed)
            };
            let new = Anchor::new(state, class.id() as u32, head, count);
            // ORDERING: Release publishes our owner-only writes and the spliced links to
            // the next owner; AcqRel when we keep the chunk (EMPTY) to see every pusher's
            // writes before we reuse its memory.
            let ord = if state == EMPTY {
                Ordering::AcqRel
            } else {
                Ordering::Release
            };
            match self
                .anchor
                .compare_exchange(a.0, new.0, ord, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(now) => a = Anchor(now),
            }
        }
    }

    /// Pushes block `idx` (of a chunk at `base` serving `class`) onto the shared list.
    ///
    /// # Safety
    /// - the block is handed out and the caller owns it (it is freeing it);
    /// - `class` is the class the chunk served when the block was handed out.
    #[inline(always)]
    pub(crate) unsafe fn push(&self, base: *mut u8, class: Class, idx: u32) -> Pushed {
        let b = block(base, class, idx);
        // ORDERING: Relaxed; the CAS carries the ordering.
        let mut a = self.anchor(Ordering::Relaxed);
        loop {
            if a.small_class() != Some(class) {
                return Pushed::Rejected;
            }
            let count = a.count() + 1;
            let (state, next) = match a.state() {
                FULL => (PARTIAL, Pushed::Listed),
                PARTIAL if count >= class.capacity() => (EMPTY, Pushed::Emptied),
                PARTIAL => (PARTIAL, Pushed::Done),
                _ => (ACTIVE, Pushed::Done),
            };
            if a.state() == ACTIVE && count > class.capacity() {
                return Pushed::Rejected;
            }
            // SAFETY: I1, we are freeing the block, so we own it until the CAS succeeds.
            unsafe { write_link(b, a.head()) };
            let new = Anchor::new(state, class.id() as u32, idx, count);
            // ORDERING: Release pairs with the owner's Acquire take/claim: our link write
            // (and the user's last writes to the block) happen-before its reuse. AcqRel
            // when we become the owner (EMPTY), to see the previous owner's writes.
            let ord = if state == EMPTY {
                Ordering::AcqRel
            } else {
                Ordering::Release
            };
            match self
                .anchor
                .compare_exchange(a.0, new.0, ord, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(now) => a = Anchor(now),
            }
        }
    }

    /// Resets an `EMPTY` chunk (or slab head) the caller owns before it goes back to
    /// the free map. Remembers how far its memory has been dirtied, for
    /// `alloc_zeroed`; for a slab, that is counted from the slab's start, and the
    /// caller hands each chunk its share (`set_dirty_bytes`).
    pub(crate) fn reset(&self, class: Option<Class>) {
        // Owner-only words; the free map's Release publishes them.
        let carve = self.carve();
        let (used, bytes) = match class {
            Some(c) => (c.offset_of(carve.carved()), c.slab_bytes()),
            None => (CHUNK, CHUNK),
        };
        let dirty = (carve.dirty() as usize).max(used).min(bytes) as u32;
        self.set_carve(Carve::new(0, dirty));
        self.set_private(Private::EMPTY);
    }

    /// Records that the first `bytes` of the chunk (or of the slab it is about to
    /// head) may have been handed out since they were zero. Owner-only (the caller
    /// holds the chunk's used bit, or owns its `EMPTY` slab).
    pub(crate) fn set_dirty_bytes(&self, bytes: usize) {
        let dirty = bytes.min(u16::MAX as usize) as u32;
        self.set_carve(Carve::new(0, dirty));
    }

    /// Whether the chunk's memory is still all zero. Only meaningful to its owner.
    pub(crate) fn is_clean(&self) -> bool {
        self.carve().dirty() == 0
    }

    /// Bytes from the chunk's start that may have been handed out since it was zero.
    pub(crate) fn dirty_bytes(&self) -> usize {
        // Read racily by a bad free, only to classify it.
        self.carve().dirty() as usize
    }

    /// Records whether the whole chunk's memory reads as zero: `true` when its pages
    /// were given back to the OS, `false` when it is handed out whole (part of a span)
    /// or holds whatever caller RAM held. Owner-only (the caller holds its used bit).
    pub(crate) fn set_clean(&self, clean: bool) {
        let dirty = if clean { 0 } else { CHUNK as u32 };
        self.set_carve(Carve::new(0, dirty));
    }

    /// Checked mode: marks block `idx` handed out. Returns `false` if it already was
    /// (the heap is corrupted: nothing should hand out a live block).
    #[cfg(feature = "checked")]
    pub(crate) fn mark_live(&self, idx: u32) -> bool {
        let (w, m) = live_bit(idx);
        // ORDERING: Relaxed: the bit only arbitrates between frees of one block; the
        // anchor's CAS orders the block's memory.
        self.live
            .get(w)
            .is_some_and(|w| w.fetch_or(m, Ordering::Relaxed) & m == 0)
    }

    /// Checked mode: whether block `idx` is handed out (or parked in a per-CPU cache).
    #[cfg(feature = "checked")]
    pub(crate) fn is_live(&self, idx: u32) -> bool {
        let (w, m) = live_bit(idx);
        // ORDERING: Relaxed, as in `mark_live`: only operations on this block change
        // its bit, and the caller is freeing it.
        self.live
            .get(w)
            .is_some_and(|w| w.load(Ordering::Relaxed) & m != 0)
    }

    /// Checked mode: marks block `idx` free. Returns `false` if it was not handed out,
    /// in which case the caller must refuse the free. Of two racing frees of one block,
    /// exactly one gets `true`.
    #[cfg(feature = "checked")]
    pub(crate) fn mark_freed(&self, idx: u32) -> bool {
        let (w, m) = live_bit(idx);
        // ORDERING: Relaxed, as in `mark_live`.
        self.live
            .get(w)
            .is_some_and(|w| w.fetch_and(!m, Ordering::Relaxed) & m != 0)
    }

    /// Checks the chunk's free lists at quiescence (no thread inside the allocator):
    /// every listed block is a carved block index, none is listed twice, and the lists
    /// are as long as the counts say. `in_slot` says whether an active slot holds it.
    pub(crate) fn validate(
        &self,
        base: *mut u8,
        class: Class,
        in_slot: bool,
    ) -> Result<(), &'static str> {
        let a = self.anchor(Ordering::Relaxed);
        // Quiescent: the owner-only words hold still.
        let private = self.private();
        let carved = self.carve().carved();
        let cap = class.capacity();
        if carved > cap {
            return Err("carved past capacity");
        }
        let (shared, own) = match a.state() {
            ACTIVE if !in_slot => return Err("an ACTIVE chunk is in no slot"),
            ACTIVE => (a.count(), private.len()),
            PARTIAL | FULL if in_slot => return Err("an unowned chunk sits in a slot"),
            PARTIAL => (
                a.count()
                    .checked_sub(cap - carved)
                    .ok_or("count below uncarved")?,
                0,
            ),
            FULL if a.count() != 0 || carved != cap => return Err("FULL with free blocks"),
            _ => (0, 0),
        };
        let mut seen = [0u64; crate::class::MAX_BLOCKS / 64];
        for (head, len) in [(a.head(), shared), (private.head(), own)] {
            let mut idx = head;
            for k in 0..len {
                if idx >= carved {
                    return Err("a listed block was never carved");
                }
                let (w, m) = ((idx / 64) as usize, 1u64 << (idx % 64));
                let word = seen.get_mut(w).ok_or("index out of range")?;
                if *word & m != 0 {
                    return Err("a block is listed twice");
                }
                *word |= m;
                if k + 1 < len {
                    // SAFETY: quiescent: the block is free and listed, so no one writes it.
                    idx = unsafe { read_link(block(base, class, idx)) };
                }
            }
        }
        Ok(())
    }

    /// Free blocks, approximately (owner-only fields are read racily): for statistics.
    pub(crate) fn free_blocks(&self, class: Class) -> u32 {
        let a = self.anchor(Ordering::Relaxed);
        match a.state() {
            ACTIVE => {
                // A racy snapshot of the owner's words, for statistics only.
                let private = self.private().len();
                let carved = self.carve().carved();
                (a.count() + private + class.capacity().saturating_sub(carved))
                    .min(class.capacity())
            }
            _ => a.count().min(class.capacity()),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::class::{fit, Fit};

    // The tests below are each chunk's only user: they own it whenever they pop or
    // release, and free only blocks they were handed. These wrappers carry that once.
    fn pop(d: &Desc, base: *mut u8, c: Class) -> Option<(u32, bool)> {
        // SAFETY: the test owns the chunk (see above) and `base` is its first byte.
        unsafe { d.owner_pop(base, c) }
    }
    fn push(d: &Desc, base: *mut u8, c: Class, idx: u32) -> Pushed {
        // SAFETY: the test frees a block it was handed, of the chunk's class.
        unsafe { d.push(base, c, idx) }
    }
    fn release(d: &Desc, base: *mut u8, c: Class) -> Pushed {
        // SAFETY: the test owns the chunk (see above).
        unsafe { d.release(base, c) }
    }

    #[repr(align(4096))]
    struct Mem([u8; CHUNK]);

    fn desc() -> Desc {
        // SAFETY: a descriptor is four atomics (plus checked-mode atomics): all-zero is
        // a valid value, and it is the `EMPTY` state a fresh heap starts in.
        unsafe { core::mem::zeroed() }
    }

    fn class(size: usize) -> Class {
        match fit(size, 1) {
            Some(Fit::Small(c)) => c,
            _ => unreachable!(),
        }
    }

    #[test]
    fn anchor_fields_round_trip() {
        let a = Anchor::new(PARTIAL, 7, 4095, 4096);
        assert_eq!(
            (a.state(), a.class(), a.head(), a.count()),
            (PARTIAL, 7, 4095, 4096)
        );
        assert_eq!(Anchor(0).state(), EMPTY);
        assert_eq!(Anchor::new(ACTIVE, 3, 0, 0).small_class(), Some(class(128)));
        assert_eq!(Anchor::new(EMPTY, 3, 0, 0).small_class(), None);
        assert_eq!(Anchor::new(ACTIVE, SPAN_CLASS, 0, 0).small_class(), None);
    }

    #[test]
    fn a_chunk_goes_active_full_partial_active_empty() {
        let mut mem = Mem([0; CHUNK]);
        let base = mem.0.as_mut_ptr();
        let d = desc();
        let c = class(1024);
        d.format(c, 0);
        let got: std::vec::Vec<_> = (0..4).map(|_| pop(&d, base, c)).collect();
        assert_eq!(
            got,
            [
                Some((0, true)),
                Some((1, true)),
                Some((2, true)),
                Some((3, true))
            ]
        );
        assert_eq!(pop(&d, base, c), None, "exhausted: now FULL");
        assert_eq!(d.anchor(Ordering::Relaxed).state(), FULL);
        assert_eq!(push(&d, base, c, 2), Pushed::Listed);
        assert_eq!(push(&d, base, c, 0), Pushed::Done);
        assert!(d.claim(c));
        assert!(!d.claim(c), "a chunk is claimed once");
        assert_eq!(pop(&d, base, c), Some((0, false)));
        assert_eq!(pop(&d, base, c), Some((2, false)));
        assert_eq!(
            push(&d, base, c, 1),
            Pushed::Done,
            "pushes onto an owned chunk"
        );
        assert_eq!(release(&d, base, c), Pushed::Listed);
        for idx in [0, 2, 3] {
            let want = if idx == 3 {
                Pushed::Emptied
            } else {
                Pushed::Done
            };
            assert_eq!(push(&d, base, c, idx), want);
        }
        assert_eq!(
            push(&d, base, c, 3),
            Pushed::Rejected,
            "EMPTY takes no push"
        );
        d.reset(Some(c));
        assert!(
            !d.is_clean(),
            "the chunk was handed out: no longer known zero"
        );
    }

    #[test]
    fn release_splices_the_private_list_and_a_claim_gets_it_back() {
        let mut mem = Mem([0; CHUNK]);
        let base = mem.0.as_mut_ptr();
        let d = desc();
        let c = class(512);
        d.format(c, 0);
        for _ in 0..8 {
            assert!(pop(&d, base, c).is_some());
        }
        for idx in [5, 6, 7] {
            assert_eq!(push(&d, base, c, idx), Pushed::Done);
        }
        // Take the shared list (5, 6, 7 -> private), hand one out, keep two private.
        assert_eq!(pop(&d, base, c), Some((7, false)));
        assert_eq!(push(&d, base, c, 1), Pushed::Done);
        assert_eq!(release(&d, base, c), Pushed::Listed);
        assert_eq!(d.free_blocks(c), 3);
        assert!(d.claim(c));
        let mut back: std::vec::Vec<u32> = (0..3)
            .filter_map(|_| pop(&d, base, c))
            .map(|(i, _)| i)
            .collect();
        back.sort();
        assert_eq!(back, [1, 5, 6]);
        assert_eq!(pop(&d, base, c), None);
    }
}
