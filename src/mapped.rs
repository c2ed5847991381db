//! What the `mmap` feature adds: growth by mapped regions, huge blocks in mappings of
//! their own, and free chunks' memory given back to the OS.
//!
//! # Growth
//! Off until `SigAlloc::enable_mmap` (like `AO_malloc_enable_mmap`). When every region
//! is dry, the allocating thread maps a new region and registers it (`region::Space::
//! add`): one CAS and one store, so a thread stopped mid-growth blocks nobody (I4). Two
//! threads that find the heap dry at once may both map; the one that finds the other's
//! region published when its own mapping returns gives its mapping back (unseen) and
//! uses that region. If the other is not published yet, both are registered and used,
//! since waiting is not allowed. A mapping the registry has no room for is unmapped. A region is
//! at least [`MIN_REGION`] and about as large as everything mapped so far (the heap
//! doubles), capped at [`MAX_REGION`]; if the OS refuses that, just what the request
//! needs. So a few regions cover any heap and the pointer ->
//! region walk stays short. Regions are never unmapped: a stale reader could not fault
//! on one, since none exists (I3), but keeping them costs only address space.
//!
//! # Huge blocks
//! Requests of [`HUGE_THRESHOLD`] bytes or more (once growth is on) get their own
//! mapping: one header page holding the mapping's length, then the block, so the block
//! is page-aligned. The block's address goes into a fixed open-addressed table, which is
//! how `free` and `usable_size` know the pointer without reading memory that might not
//! be mapped. Entries go null -> pointer -> tombstone -> pointer ..., never back to
//! null, so a lookup that stops at null cannot miss a live entry; each change is one CAS.
//! The price: once every entry has been used, a lookup of a page-aligned address that
//! is not a huge block walks the whole table (a few µs; only `owns`, `usable_size` or
//! an invalid `free` of such an address do that).
//! Free unmaps the whole mapping at once.
//!
//! # Giving memory back
//! Chunks of mapped regions that stay free are given back with `madvise(MADV_DONTNEED)`
//! (their pages then read as zero, so `alloc_zeroed` skips the memset on them again).
//! A release pass runs each time [`RELEASE_EVERY`] chunks of mapped regions have been
//! retired, and gives back every free chunk that the previous pass also found free (the
//! idle map remembers what it saw). A chunk to give back is first claimed in the used
//! map, so no thread can take it while its pages go; then it is marked clean and freed
//! again. `SigAlloc::trim` runs a pass that gives back every free chunk at once.
//!
//! Depends on: `sync`, `class`, `region`, `os`. Upholds I1, I2, I4, I5.

use crate::class::{CHUNK, CHUNK_SHIFT};
use crate::os;
use crate::region::{meta_chunks, Region, Space, MAX_REGION_CHUNKS};
use crate::sync::{AtomicPtr, AtomicUsize, Ordering};

/// Requests of at least this many bytes get a mapping of their own (when growth is on).
pub const HUGE_THRESHOLD: usize = 1 << 20;
/// The smallest region growth maps.
pub const MIN_REGION: usize = 4 << 20;
/// The largest region growth maps (unless one span needs more).
pub const MAX_REGION: usize = 1 << 30;
/// Chunks of mapped regions retired between two release passes.
pub const RELEASE_EVERY: usize = 1024;
/// Live huge blocks the table can hold; past it, huge requests are served from regions.
pub const HUGE_SLOTS: usize = 1024;

/// Bytes before a huge block: the mapping's length, padded to a page.
const HEADER: usize = CHUNK;

/// A freed huge block's table entry.
fn tombstone() -> *mut u8 {
    core::ptr::without_provenance_mut(1)
}

/// The `mmap` feature's state, kept in the region registry.
pub(crate) struct State {
    /// Nonzero once `enable_mmap` was called.
    on: AtomicUsize,
    /// Bytes of mapped regions.
    mapped_bytes: AtomicUsize,
    /// Chunks of mapped regions retired so far (drives the release passes).
    retired: AtomicUsize,
    /// Bytes given back to the OS so far.
    released: AtomicUsize,
    /// Live huge blocks, and their mappings' bytes.
    huge_live: AtomicUsize,
    huge_bytes: AtomicUsize,
    huge: [AtomicPtr; HUGE_SLOTS],
}

/// Counters for `Stats`.
pub(crate) struct Counts {
    pub(crate) released: usize,
    pub(crate) huge_live: usize,
    pub(crate) huge_bytes: usize,
}

impl State {
    pub(crate) const fn new() -> State {
        #[allow(clippy::declare_interior_mutable_const)]
        const NULL: AtomicPtr = AtomicPtr::null();
        State {
            on: AtomicUsize::new(0),
            mapped_bytes: AtomicUsize::new(0),
            retired: AtomicUsize::new(0),
            released: AtomicUsize::new(0),
            huge_live: AtomicUsize::new(0),
            huge_bytes: AtomicUsize::new(0),
            huge: [NULL; HUGE_SLOTS],
        }
    }

    /// Turns growth (and huge mappings) on.
    pub(crate) fn enable(&self) {
        // ORDERING: Relaxed: a switch; nothing is published with it.
        self.on.store(1, Ordering::Relaxed);
    }

    /// Whether growth is on.
    #[inline(always)]
    pub(crate) fn enabled(&self) -> bool {
        // ORDERING: Relaxed, as in `enable`.
        self.on.load(Ordering::Relaxed) != 0
    }

    pub(crate) fn counts(&self) -> Counts {
        // ORDERING: Relaxed: statistics.
        Counts {
            released: self.released.load(Ordering::Relaxed),
            huge_live: self.huge_live.load(Ordering::Relaxed),
            huge_bytes: self.huge_bytes.load(Ordering::Relaxed),
        }
    }

    /// The table slots to probe for `p`, in order.
    fn probe(&self, p: *const u8) -> impl Iterator<Item = &AtomicPtr> {
        const GOLDEN: usize = 0x9E37_79B9_7F4A_7C15_u64 as usize;
        let h = (p.addr() >> CHUNK_SHIFT).wrapping_mul(GOLDEN) % HUGE_SLOTS;
        (0..HUGE_SLOTS).filter_map(move |k| self.huge.get((h + k) % HUGE_SLOTS))
    }

    /// The table entry holding `p`, if `p` is a live huge block.
    fn find(&self, p: *const u8) -> Option<&AtomicPtr> {
        if p.addr() % CHUNK != 0 {
            return None; // huge blocks start on a page
        }
        for e in self.probe(p) {
            // ORDERING: Acquire pairs with the Release CAS in `insert`: the header is
            // visible once the entry is.
            let cur = e.load(Ordering::Acquire);
            if cur.is_null() {
                return None;
            }
            if cur.addr() == p.addr() {
                return Some(e);
            }
        }
        None
    }

    fn insert(&self, p: *mut u8) -> bool {
        for e in self.probe(p) {
            // ORDERING: Relaxed: the CAS below decides.
            let mut cur = e.load(Ordering::Relaxed);
            while cur.is_null() || cur == tombstone() {
                // ORDERING: Release pairs with the Acquire load in `find`.
                match e.compare_exchange(cur, p, Ordering::Release, Ordering::Relaxed) {
                    Ok(_) => return true,
                    Err(now) => cur = now,
                }
            }
        }
        false
    }
}

/// Maps a region of at least `chunks` allocatable chunks and registers it.
pub(crate) fn grow(sp: &Space, chunks: usize) -> Option<Region> {
    let st = &sp.registry().os;
    if !st.enabled() || chunks >= MAX_REGION_CHUNKS {
        return None;
    }
    // Enough chunks for the request beside the region's own metadata.
    let mut n = chunks + 1;
    while n - meta_chunks(n) < chunks {
        n += meta_chunks(n);
    }
    // Regions registered so far: if another thread registers one while we map, we use
    // theirs and give ours back (see below).
    let ids = sp.ids();
    // ORDERING: Relaxed: a size hint.
    let target = st
        .mapped_bytes
        .load(Ordering::Relaxed)
        .clamp(MIN_REGION, MAX_REGION);
    let need = n << CHUNK_SHIFT;
    let want = need.max(target).min(MAX_REGION_CHUNKS << CHUNK_SHIFT);
    // If the OS refuses the doubling size (an address-space limit), what the request
    // needs may still fit.
    let (base, len) = match os::map(want) {
        Some(base) => (base, want),
        None if need < want => (os::map(need)?, need),
        None => return None,
    };
    if base.addr() % CHUNK != 0 {
        // SAFETY: our own fresh mapping, unused.
        unsafe { os::unmap(base, len) };
        return None;
    }
    // Two threads that found the heap dry together would each map a region as large
    // as the whole heap. The later one gives its mapping back (nobody has seen it) and
    // uses the region the other published; if that one is not published yet (its
    // thread is stopped mid-registration), we do not wait for it: ours is registered.
    if let Some(theirs) = (ids..sp.ids()).rev().find_map(|id| sp.get(id)) {
        // SAFETY: our own fresh mapping, unpublished.
        unsafe { os::unmap(base, len) };
        return Some(theirs);
    }
    // SAFETY: a fresh anonymous mapping: CHUNK-aligned (checked), ours for the
    // allocator's life (regions are never unmapped), and zero-filled, which is valid
    // metadata.
    match unsafe { sp.add(base, len, true) } {
        Ok(r) => {
            // ORDERING: Relaxed: a statistic and a size hint.
            st.mapped_bytes.fetch_add(len, Ordering::Relaxed);
            Some(r)
        }
        Err(_) => {
            // The registry is full: nobody has seen the mapping, so it goes back.
            // SAFETY: our own fresh mapping, unpublished.
            unsafe { os::unmap(base, len) };
            None
        }
    }
}

/// Counts a retired chunk of a mapped region; every [`RELEASE_EVERY`]th runs a pass.
pub(crate) fn retired(sp: &Space) {
    let st = &sp.registry().os;
    // ORDERING: Relaxed: a counter; the pass claims what it touches.
    let k = st.retired.fetch_add(1, Ordering::Relaxed);
    if k % RELEASE_EVERY == RELEASE_EVERY - 1 {
        release_pass(sp, false);
    }
}

/// Gives back free chunks of mapped regions: those the previous pass also saw free, or
/// (`all`) every one. Returns the bytes given back.
pub(crate) fn release_pass(sp: &Space, all: bool) -> usize {
    let mut total = 0;
    for r in sp.all().filter(Region::mapped) {
        let used = r.used();
        let idle = r.idle();
        let mut run = Run::default();
        for w in 0..used.word_count() {
            let free = !used.load_word(w);
            // The idle map becomes this pass's view; what it held is the last one's.
            let seen = idle.swap_word(w, free);
            let mut cand = if all { free } else { free & seen };
            while cand != 0 {
                let ci = w * usize::BITS as usize + cand.trailing_zeros() as usize;
                cand &= cand - 1;
                if ci < r.first() || r.desc(ci).is_none_or(|d| d.is_clean()) {
                    continue;
                }
                if !used.claim_range(ci, 1) {
                    continue; // someone took it meanwhile
                }
                if ci != run.start + run.len {
                    total += run.flush(&r);
                    run.start = ci;
                }
                run.len += 1;
            }
        }
        total += run.flush(&r);
    }
    // ORDERING: Relaxed: a statistic.
    sp.registry()
        .os
        .released
        .fetch_add(total, Ordering::Relaxed);
    total
}

/// Consecutive chunks a release pass has claimed and not yet given back.
#[derive(Default)]
struct Run {
    start: usize,
    len: usize,
}

impl Run {
    /// Gives the run's pages back, marks its chunks clean and frees them again.
    fn flush(&mut self, r: &Region) -> usize {
        if self.len == 0 {
            return 0;
        }
        let bytes = self.len << CHUNK_SHIFT;
        // SAFETY: we claimed these chunks in the used map, so no thread owns them, and
        // a free chunk's bytes are dead (I1); they lie in a mapping of ours.
        let done = unsafe { os::release(r.chunk_base(self.start), bytes) };
        if done && os::RELEASE_ZEROES {
            for ci in self.start..self.start + self.len {
                if let Some(d) = r.desc(ci) {
                    d.mark_clean();
                }
            }
        }
        r.used().release_run(self.start, self.len);
        *self = Run::default();
        if done {
            bytes
        } else {
            0
        }
    }
}

/// Maps a huge block of `size` bytes; `None` if the OS or the table refuses.
pub(crate) fn huge_alloc(sp: &Space, size: usize) -> Option<*mut u8> {
    let st = &sp.registry().os;
    let len = size.checked_add(HEADER)?.checked_next_multiple_of(CHUNK)?;
    let base = os::map(len)?;
    // SAFETY: a fresh mapping of `len >= HEADER` bytes, ours, aligned for `usize`.
    unsafe { base.cast::<usize>().write(len) };
    let p = base.wrapping_add(HEADER);
    if !st.insert(p) {
        // SAFETY: our own fresh mapping, unpublished.
        unsafe { os::unmap(base, len) };
        return None;
    }
    // ORDERING: Relaxed: statistics.
    st.huge_live.fetch_add(1, Ordering::Relaxed);
    st.huge_bytes.fetch_add(len, Ordering::Relaxed);
    Some(p)
}

/// The mapping length of the live huge block `p`, if it is one.
fn huge_len(sp: &Space, p: *const u8) -> Option<usize> {
    sp.registry().os.find(p)?;
    // SAFETY: `p` is a live huge block (found in the table), so its header page, the
    // page before it, is mapped and holds the length written by `huge_alloc`.
    Some(unsafe { p.wrapping_sub(HEADER).cast::<usize>().read() })
}

/// Usable bytes of the huge block `p`, or 0 if it is not one.
pub(crate) fn huge_size(sp: &Space, p: *const u8) -> usize {
    huge_len(sp, p).map_or(0, |len| len - HEADER)
}

/// Whether a huge block of `have` usable bytes serves a request of `size` in place:
/// a shrink by at most half keeps the mapping (in `realloc`, and in checked mode's
/// layout check).
pub(crate) fn huge_keeps(have: usize, size: usize) -> bool {
    size <= have && size > have / 2
}

/// Unmaps the huge block `p`; `false` if `p` is not a live huge block.
pub(crate) fn huge_free(sp: &Space, p: *mut u8) -> bool {
    let st = &sp.registry().os;
    let Some(e) = st.find(p) else {
        return false;
    };
    // SAFETY: as in `huge_len`; read before the entry goes, while the block is live.
    let len = unsafe { p.wrapping_sub(HEADER).cast::<usize>().read() };
    // ORDERING: Relaxed: only one of two racing frees may win; the winner unmaps.
    if e.compare_exchange(p, tombstone(), Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return false;
    }
    // ORDERING: Relaxed: statistics.
    st.huge_live.fetch_sub(1, Ordering::Relaxed);
    st.huge_bytes.fetch_sub(len, Ordering::Relaxed);
    // SAFETY: the mapping came from `huge_alloc` with this length; we removed its
    // entry, so no one else will free it, and its owner is done with it.
    unsafe { os::unmap(p.wrapping_sub(HEADER), len) };
    true
}
