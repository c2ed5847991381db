//! The mapped memory source (feature `mmap`, see `source.rs`): growth by mapped
//! regions, huge blocks in mappings of their own, and free chunks' memory given back to
//! the OS.
//!
//! # Growth
//! Off until `SigAlloc::enable_mmap` (like `AO_malloc_enable_mmap`). When every region
//! is dry, the allocating thread maps a new region and registers it (`region::Regions::
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
//! retired, and gives back the free chunks that the previous pass also found free (the
//! idle map remembers what it saw) and that lie in a run of at least
//! [`MIN_RELEASE_RUN`] such chunks: a lone free chunk between live ones is kept, as
//! glibc keeps free memory below the top of its heap. The idle map is this source's own: one bit per
//! chunk, kept in the last chunks of each mapping, past the end of the region it
//! registers, so the region layer knows nothing of it. A chunk to give back is first claimed in the used
//! map, so no thread can take it while its pages go; then it is marked clean and freed
//! again. `SigAlloc::trim` runs a pass that gives back every free chunk at once.
//!
//! Depends on: `sync`, `class`, `bitmap`, `region`, `source`, `os`. Upholds I1, I2,
//! I4, I5.
#![cfg(feature = "mmap")]

use crate::bitmap::Bitmap;
use core::mem::size_of;

use crate::class::{CHUNK, CHUNK_SHIFT};
use crate::os;
use crate::region::{meta_chunks, Region, Regions, MAX_REGION_CHUNKS};
use crate::source::{Counts, Source};
use crate::sync::{AtomicPtr, AtomicUsize, Ordering};

/// Requests of at least this many bytes get a mapping of their own, once
/// `enable_mmap` was called. Public so callers know which blocks cost a mapping each.
pub const HUGE_THRESHOLD: usize = 1 << 20;
/// The smallest region growth maps: the address space the first growth step takes.
/// Public so callers can size an address-space limit (`RLIMIT_AS`) around it.
pub const MIN_REGION: usize = 4 << 20;
/// The largest region growth maps (unless one span needs more).
const MAX_REGION: usize = 1 << 30;
/// Chunks of mapped regions retired between two release passes.
const RELEASE_EVERY: usize = 1024;
/// The fewest consecutive idle chunks (64 KiB) a release pass gives back, `trim` aside.
/// A free chunk between live ones is likely taken again soon, and giving it back costs
/// a system call now and a page fault per page then: on the mid-size workload (table 8)
/// runs of at least 1, 4, 8, 16 and 32 chunks took 1.37x, 1.2x, 1.14x, 1.0x and 0.97x
/// glibc's time, with the same peak RSS.
const MIN_RELEASE_RUN: usize = 16;
/// Live huge blocks the table can hold; past it, huge requests are served from regions.
const HUGE_SLOTS: usize = 1024;

/// Bytes before a huge block: the mapping's length, padded to a page.
const HEADER: usize = CHUNK;

/// A freed huge block's table entry.
fn tombstone() -> *mut u8 {
    core::ptr::without_provenance_mut(1)
}

/// The mapped source: its switch, counters and huge-block table.
pub(crate) struct Mapped {
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

impl Mapped {
    pub(crate) const fn new() -> Mapped {
        #[allow(clippy::declare_interior_mutable_const)]
        const NULL: AtomicPtr = AtomicPtr::null();
        Mapped {
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

    /// The table slots to probe for `ptr`, in order.
    fn probe(&self, ptr: *const u8) -> impl Iterator<Item = &AtomicPtr> {
        const GOLDEN: usize = 0x9E37_79B9_7F4A_7C15_u64 as usize;
        let h = (ptr.addr() >> CHUNK_SHIFT).wrapping_mul(GOLDEN) % HUGE_SLOTS;
        (0..HUGE_SLOTS).filter_map(move |k| self.huge.get((h + k) % HUGE_SLOTS))
    }

    /// The table entry holding `ptr`, if `ptr` is a live huge block.
    fn find(&self, ptr: *const u8) -> Option<&AtomicPtr> {
        if ptr.addr() % CHUNK != 0 {
            return None; // huge blocks start on a page
        }
        for e in self.probe(ptr) {
            // ORDERING: Acquire pairs with the Release CAS in `insert`: the header is
            // visible once the entry is.
            let cur = e.load(Ordering::Acquire);
            if cur.is_null() {
                return None;
            }
            if cur.addr() == ptr.addr() {
                return Some(e);
            }
        }
        None
    }

    fn insert(&self, ptr: *mut u8) -> bool {
        for e in self.probe(ptr) {
            // ORDERING: Relaxed: the CAS below decides.
            let mut cur = e.load(Ordering::Relaxed);
            while cur.is_null() || cur == tombstone() {
                // ORDERING: Release pairs with the Acquire load in `find`.
                match e.compare_exchange(cur, ptr, Ordering::Release, Ordering::Relaxed) {
                    Ok(_) => return true,
                    Err(now) => cur = now,
                }
            }
        }
        false
    }
}

/// Maps `len` bytes whose end of the header page, `HEADER` bytes in, is aligned to
/// `align` (above a page): maps `len + align` and gives back what lies before and after.
fn map_aligned(len: usize, align: usize) -> Option<*mut u8> {
    let total = len.checked_add(align)?;
    let wide = os::map(total)?;
    let lead = (align - (wide.addr() + HEADER) % align) % align;
    let start = wide.wrapping_add(lead);
    let trail = total - lead - len;
    if lead > 0 {
        // SAFETY: the first `lead` bytes of our own fresh mapping, page-aligned (both
        // ends are multiples of the page), unused.
        unsafe { os::unmap(wide, lead) };
    }
    if trail > 0 {
        // SAFETY: as above, the last `trail` bytes.
        unsafe { os::unmap(start.wrapping_add(len), trail) };
    }
    Some(start)
}

/// Chunks at the end of a mapping of `total` chunks that hold the idle map of the
/// region in front of them (one bit per chunk of the whole mapping, which covers it).
const fn idle_chunks(total: usize) -> usize {
    (Bitmap::words_for(total) * size_of::<AtomicUsize>()).div_ceil(CHUNK)
}

/// The idle map of `region`, a mapped region: the words past its last chunk.
fn idle_words(region: &Region) -> &[AtomicUsize] {
    let words = Bitmap::words_for(region.end());
    // SAFETY: `grow` registered the region `idle_chunks` short of its mapping, so these
    // words lie in the same mapping, zero-filled (a valid initial map), aligned (chunk
    // aligned), live for the allocator's life, and shared only through atomics.
    unsafe {
        core::slice::from_raw_parts(region.chunk_base(region.end()).cast::<AtomicUsize>(), words)
    }
}

/// Gives back free chunks of mapped regions: those the previous pass also saw free and
/// that lie in a run of at least [`MIN_RELEASE_RUN`] such chunks, or (`all`) every
/// free one. Returns the bytes given back.
fn release_pass(mapped: &Mapped, regions: &Regions, all: bool) -> usize {
    let shortest = if all { 1 } else { MIN_RELEASE_RUN };
    let mut total = 0;
    for region in regions.all().filter(Region::mapped) {
        let used = region.used();
        let idle = idle_words(&region);
        let mut run = Run::default();
        for (w, seen_word) in idle.iter().enumerate() {
            let free = !used.load_word(w) & used_bits(&region, w);
            // The idle map becomes this pass's view; what it held is the last one's.
            // ORDERING: Relaxed: the idle map is a hint; whoever acts on a chunk claims
            // it in the used map.
            let seen = seen_word.swap(free, Ordering::Relaxed);
            let mut cand = if all { free } else { free & seen };
            // Each run of set bits extends the current run or ends it.
            while cand != 0 {
                let lo = cand.trailing_zeros() as usize;
                let len = (!(cand >> lo)).trailing_zeros() as usize;
                cand &= !ones(lo, len);
                let start = w * usize::BITS as usize + lo;
                if start != run.start + run.len {
                    total += run.give_back(&region, shortest);
                    run.start = start;
                }
                run.len += len;
            }
        }
        total += run.give_back(&region, shortest);
    }
    // ORDERING: Relaxed: a statistic.
    mapped.released.fetch_add(total, Ordering::Relaxed);
    total
}

/// `len` set bits from bit `lo` on (`lo + len <= usize::BITS`).
fn ones(lo: usize, len: usize) -> usize {
    let low = if len >= usize::BITS as usize {
        usize::MAX
    } else {
        (1 << len) - 1
    };
    low << lo
}

/// The bits of word `w` of `region`'s maps that name a chunk.
fn used_bits(region: &Region, w: usize) -> usize {
    let bits = usize::BITS as usize;
    match region.end().saturating_sub(w * bits) {
        0 => 0,
        n if n >= bits => usize::MAX,
        n => (1 << n) - 1,
    }
}

/// Consecutive chunks that a release pass found idle (`Run::give_back`), or that it
/// claimed and has not yet given back (`Run::flush`).
#[derive(Default)]
struct Run {
    start: usize,
    len: usize,
}

impl Run {
    /// Gives back the dirty chunks of this run of idle chunks if it is at least
    /// `shortest` long: each is claimed in the used map first (one that was taken
    /// meanwhile is skipped), and consecutive claimed chunks go back in one call.
    fn give_back(&mut self, region: &Region, shortest: usize) -> usize {
        let idle = core::mem::take(self);
        if idle.len < shortest {
            return 0;
        }
        let mut total = 0;
        let mut claimed = Run::default();
        for ci in idle.start..idle.start + idle.len {
            let dirty = ci >= region.first() && region.desc(ci).is_some_and(|d| !d.is_clean());
            if !dirty || !region.used().claim_range(ci, 1) {
                total += claimed.flush(region);
                continue;
            }
            if claimed.len == 0 {
                claimed.start = ci;
            }
            claimed.len += 1;
        }
        total + claimed.flush(region)
    }

    /// Gives the run's pages back, marks its chunks clean and frees them again.
    fn flush(&mut self, region: &Region) -> usize {
        let Run { start, len } = core::mem::take(self);
        if len == 0 {
            return 0;
        }
        let bytes = len << CHUNK_SHIFT;
        // SAFETY: we claimed these chunks in the used map, so no thread owns them, and
        // a free chunk's bytes are dead (I1); they lie in a mapping of ours.
        let done = unsafe { os::release(region.chunk_base(start), bytes) };
        if done && os::RELEASE_ZEROES {
            for ci in start..start + len {
                if let Some(d) = region.desc(ci) {
                    d.set_clean(true);
                }
            }
        }
        region.used().release_run(start, len);
        if done {
            bytes
        } else {
            0
        }
    }
}

impl Mapped {
    /// Maps a huge block of `size` bytes aligned to `align`; `None` if the OS or the
    /// table refuses.
    fn map_huge(&self, size: usize, align: usize) -> Option<*mut u8> {
        let len = size.checked_add(HEADER)?.checked_next_multiple_of(CHUNK)?;
        let base = if align <= CHUNK {
            os::map(len)?
        } else {
            map_aligned(len, align)?
        };
        // SAFETY: a fresh mapping of `len >= HEADER` bytes, ours, aligned for `usize`.
        unsafe { base.cast::<usize>().write(len) };
        let p = base.wrapping_add(HEADER);
        if !self.insert(p) {
            // SAFETY: our own fresh mapping, unpublished.
            unsafe { os::unmap(base, len) };
            return None;
        }
        // ORDERING: Relaxed: statistics.
        self.huge_live.fetch_add(1, Ordering::Relaxed);
        self.huge_bytes.fetch_add(len, Ordering::Relaxed);
        Some(p)
    }

    /// The mapping length of the live huge block `ptr`, if it is one.
    fn huge_len(&self, ptr: *const u8) -> Option<usize> {
        self.find(ptr)?;
        // SAFETY: `ptr` is a live huge block (found in the table), so its header page, the
        // page before it, is mapped and holds the length written by `map_huge`.
        Some(unsafe { ptr.wrapping_sub(HEADER).cast::<usize>().read() })
    }

    /// Maps a region of at least `chunks` allocatable chunks and registers it.
    fn map_region(&self, regions: &Regions, chunks: usize) -> Option<Region> {
        // Enough chunks for the request beside the region's own metadata.
        let mut n = chunks + 1;
        while n - meta_chunks(n) < chunks {
            n += meta_chunks(n);
        }
        // Regions registered so far: if another thread registers one while we map, we
        // use theirs and give ours back (see below).
        let ids = regions.ids();
        // ORDERING: Relaxed: a size hint.
        let target = self
            .mapped_bytes
            .load(Ordering::Relaxed)
            .clamp(MIN_REGION, MAX_REGION);
        let need = (n + idle_chunks(n)) << CHUNK_SHIFT;
        let most = MAX_REGION_CHUNKS + idle_chunks(MAX_REGION_CHUNKS);
        let want = need.max(target).min(most << CHUNK_SHIFT);
        // If the OS refuses the doubling size (an address-space limit), what the
        // request needs may still fit.
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
        // Two threads that found the heap dry together would each map a region as
        // large as the whole heap. The later one gives its mapping back (nobody has
        // seen it) and uses the region the other published; if that one is not
        // published yet (its thread is stopped mid-registration), we do not wait for
        // it: ours is registered.
        if let Some(theirs) = (ids..regions.ids()).rev().find_map(|id| regions.get(id)) {
            // SAFETY: our own fresh mapping, unpublished.
            unsafe { os::unmap(base, len) };
            return Some(theirs);
        }
        // The region leaves room at the end of the mapping for its idle map.
        let total = len >> CHUNK_SHIFT;
        let region_len = (total - idle_chunks(total)).min(MAX_REGION_CHUNKS) << CHUNK_SHIFT;
        // SAFETY: a fresh anonymous mapping: CHUNK-aligned (checked), ours for the
        // allocator's life (regions are never unmapped), and zero-filled, which is
        // valid metadata; the idle map past `region_len` stays ours.
        match unsafe { regions.add(base, region_len, true) } {
            Ok(r) => {
                // ORDERING: Relaxed: a statistic and a size hint.
                self.mapped_bytes.fetch_add(len, Ordering::Relaxed);
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
}

impl Source for Mapped {
    fn grow(&self, regions: &Regions, chunks: usize) -> Option<Region> {
        if !self.enabled() || chunks >= MAX_REGION_CHUNKS {
            return None;
        }
        self.map_region(regions, chunks)
    }

    /// Counts a retired chunk of a mapped region; every [`RELEASE_EVERY`]th runs a pass.
    fn retired(&self, regions: &Regions, region: &Region) {
        if !region.mapped() {
            return;
        }
        // ORDERING: Relaxed: a counter; the pass claims what it touches.
        let k = self.retired.fetch_add(1, Ordering::Relaxed);
        if k % RELEASE_EVERY == RELEASE_EVERY - 1 {
            release_pass(self, regions, false);
        }
    }

    fn alloc_huge(&self, size: usize, align: usize) -> Option<*mut u8> {
        if size < HUGE_THRESHOLD || !self.enabled() {
            return None;
        }
        self.map_huge(size, align)
    }

    fn huge_size(&self, ptr: *const u8) -> Option<usize> {
        self.huge_len(ptr).map(|len| len - HEADER)
    }

    fn free_huge(&self, ptr: *mut u8) -> bool {
        let Some(e) = self.find(ptr) else {
            return false;
        };
        // SAFETY: as in `huge_len`; read before the entry goes, while the block is live.
        let len = unsafe { ptr.wrapping_sub(HEADER).cast::<usize>().read() };
        // ORDERING: Relaxed: only one of two racing frees may win; the winner unmaps.
        if e.compare_exchange(ptr, tombstone(), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // ORDERING: Relaxed: statistics.
        self.huge_live.fetch_sub(1, Ordering::Relaxed);
        self.huge_bytes.fetch_sub(len, Ordering::Relaxed);
        // SAFETY: the mapping came from `map_huge` with this length; we removed its
        // entry, so no one else will free it, and its owner is done with it.
        unsafe { os::unmap(ptr.wrapping_sub(HEADER), len) };
        true
    }

    fn good_size(&self, size: usize, in_regions: usize) -> Option<usize> {
        if !self.enabled() {
            None
        } else if size >= HUGE_THRESHOLD {
            size.checked_next_multiple_of(CHUNK)
        } else {
            Some(in_regions)
        }
    }

    fn trim(&self, regions: &Regions) -> usize {
        release_pass(self, regions, true)
    }

    fn counts(&self) -> Counts {
        // ORDERING: Relaxed: statistics.
        Counts {
            mapped_bytes: self.mapped_bytes.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
            huge_live: self.huge_live.load(Ordering::Relaxed),
            huge_bytes: self.huge_bytes.load(Ordering::Relaxed),
        }
    }
}
