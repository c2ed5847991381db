//! Regions of chunks: the static heap's layout, and pointer -> chunk in O(1).
//!
//! A region is a run of memory aligned to [`CHUNK`]. Its first chunks hold its side
//! table, so no block carries a header and no table needs a size known to the type
//! system (stable Rust cannot size `[Desc; HEAP / CHUNK]`):
//!
//! ```text
//! base                                                     base + n * CHUNK
//! | used map | partial maps (LISTS per class) | descriptors | chunk | chunk | ... |
//! '-------------- metadata: chunks 0..first -------------'  '-- first..n ---'
//! ```
//!
//! All-zero metadata is the valid initial state (every chunk free, nothing listed), so
//! a `static` heap needs no initialisation and stays in `.bss`, and a fresh anonymous
//! mapping needs none either. Claimed RAM has its metadata zeroed once, before it is
//! published.
//!
//! # More than one region
//! Region 0 is the heap inside `SigAlloc`. Regions 1..=[`MAX_REGIONS`] are claimed RAM
//! (`SigAlloc::claim`) and regions a memory source added (`source.rs`). They sit in a
//! fixed [`Registry`] that only grows: an entry is reserved by one CAS on the count,
//! filled, then published by one Release store of its base. A thread stopped between
//! the two only hides its own region; nobody waits for it (I4). Entries are never
//! removed, so a region found once stays valid for the life of the allocator.
//!
//! A chunk is named across regions by a [`ChunkId`]: region id and chunk index in one
//! `u32`, so the active slots stay single words (I2).
//!
//! Pointer -> region: the static heap first (one compare, constant-folded), then the
//! address map (`addrmap.rs`), which names the few regions that touch the pointer's
//! 64 MiB granule: constant time, for claimed and mapped regions alike. Only where the
//! map cannot tell (a granule shared by more regions than it has lanes) is the registry
//! walked, newest first. Inside a region, pointer -> chunk is a shift.
//!
//! This layer knows regions, not where their memory came from: it never calls up into
//! a source (`source.rs` calls down into it).
//!
//! Depends on: `sync`, `bitmap`, `chunk`, `class`, `addrmap`. Upholds I1 (each chunk id names one
//! descriptor and one stretch of memory), I2, I4.

use core::mem::{align_of, size_of};

use crate::addrmap::{AddrMap, Found};
use crate::bitmap::Bitmap;
use crate::chunk::Desc;
use crate::class::{Class, CHUNK, CHUNK_SHIFT, NCLASSES};
use crate::sync::{AtomicPtr, AtomicUsize, Hint, Ordering};

/// Partial-chunk lists per class. Each active slot has its own, so a thread lists the
/// chunks it frees into under its own stack hash and takes them back from there first:
/// threads on different slots then share no bitmap word.
pub(crate) const LISTS: usize = 4;

/// Bitmaps in a region's metadata: the used map, then `LISTS` partial maps per class.
const MAPS: usize = 1 + NCLASSES * LISTS;

/// Regions the registry holds besides the static heap.
pub const MAX_REGIONS: usize = 63;

/// Bits of a [`ChunkId`] that hold the chunk index.
const INDEX_BITS: u32 = 24;

/// The most chunks one region can have (a longer claim or mapping is cut to this).
pub(crate) const MAX_REGION_CHUNKS: usize = 1 << INDEX_BITS;

// Region ids 0..=MAX_REGIONS and the +1 of a slot value fit in a u32 chunk id, and
// every id fits a lane of the address map.
static_assertions::const_assert!(MAX_REGIONS < (1 << (32 - INDEX_BITS)) - 1);
static_assertions::const_assert!(MAX_REGIONS <= crate::addrmap::MAX_ID);

/// A chunk anywhere in the allocator: region id in the top 8 bits, chunk index below.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct ChunkId(u32);

impl ChunkId {
    /// The id as one word (for an active slot).
    #[inline(always)]
    pub(crate) const fn bits(self) -> u32 {
        self.0
    }
    /// The id [`bits`](Self::bits) returned.
    #[inline(always)]
    pub(crate) const fn from_bits(bits: u32) -> ChunkId {
        ChunkId(bits)
    }
    #[inline(always)]
    pub(crate) fn new(region: usize, chunk: usize) -> ChunkId {
        ChunkId(((region << INDEX_BITS) | chunk) as u32)
    }
    #[inline(always)]
    pub(crate) fn region(self) -> usize {
        (self.0 >> INDEX_BITS) as usize
    }
    #[inline(always)]
    pub(crate) fn chunk(self) -> usize {
        (self.0 & ((1 << INDEX_BITS) - 1)) as usize
    }
}

/// Partial maps of at most this many words (regions up to 8 MiB) are searched directly:
/// a few loads, where keeping a summary costs every listing two more RMWs (measured: the
/// churn beside 2 MiB of live data in 4 MiB regions ran at 0.84 of its speed with a
/// summary). The default 2 MiB heap's maps are 8 words.
const DIRECT_WORDS: usize = 32;

/// Summary and top words of one partial map of a region of `chunks` chunks (none for a
/// map searched directly).
#[inline(always)]
const fn summary_words(chunks: usize) -> usize {
    if chunks <= DIRECT_WORDS * usize::BITS as usize {
        0
    } else {
        Bitmap::summary_words(chunks) + Bitmap::top_words(chunks)
    }
}

/// Bytes of metadata for a region of `chunks` chunks, and where the descriptors start.
#[inline(always)]
const fn layout(chunks: usize) -> (usize, usize) {
    let end = cursors_at(chunks) + CURSORS * CURSOR_LINE;
    let desc_at = end.next_multiple_of(align_of::<Desc>());
    (desc_at + chunks * size_of::<Desc>(), desc_at)
}

/// Search cursors per region: one per slot hint for single chunks, one for runs, and
/// the "no free chunk" flag (`Region::full_flag`).
pub(crate) const CURSORS: usize = LISTS + 2;

/// Bytes from one cursor to the next: a cache line each, so threads searching different
/// zones do not write one line.
const CURSOR_LINE: usize = 64;

/// The number of words of the maps and their summaries, which are protocol words.
#[inline(always)]
const fn map_words(chunks: usize) -> usize {
    Bitmap::words_for(chunks) * MAPS + summary_words(chunks) * (MAPS - 1)
}

/// The byte offset (in the metadata) of the cursors of a region of `chunks` chunks:
/// past the maps, on a line of their own (the region's base is chunk-aligned).
#[inline(always)]
const fn cursors_at(chunks: usize) -> usize {
    (map_words(chunks) * size_of::<AtomicUsize>()).next_multiple_of(CURSOR_LINE)
}

/// Chunks the metadata of a region of `chunks` chunks takes from its front.
#[inline(always)]
pub(crate) const fn meta_chunks(chunks: usize) -> usize {
    layout(chunks).0.div_ceil(CHUNK)
}

/// A region's registry id and whether a source mapped it (so its free chunks' pages
/// may be given back), packed in one word: the hot paths copy `Region`s around, and
/// mixed field sizes there cost store-forwarding stalls.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct RegionKey(usize);

impl RegionKey {
    /// The inline heap's.
    const HOME: RegionKey = RegionKey(0);
    #[inline(always)]
    const fn new(id: usize, mapped: bool) -> RegionKey {
        RegionKey(id << 1 | mapped as usize)
    }
    #[inline(always)]
    const fn id(self) -> usize {
        self.0 >> 1
    }
    #[inline(always)]
    const fn mapped(self) -> bool {
        self.0 & 1 != 0
    }
}

/// A region: `n` chunks at `base`, the first `first` of them metadata.
#[derive(Clone, Copy)]
pub(crate) struct Region {
    base: *mut u8,
    n: usize,
    first: usize,
    key: RegionKey,
}

impl Region {
    /// The region over `len` bytes at `base`.
    ///
    /// # Safety
    /// - `base` is aligned to [`CHUNK`] and valid for reads and writes of `len` bytes for
    ///   as long as the returned value (and any pointer it hands out) is used;
    /// - the metadata is initialised: zeroed (see [`Region::init`] under loom) and from
    ///   then on changed only through `Region`s over the same memory.
    #[inline(always)]
    pub(crate) const unsafe fn new(base: *mut u8, len: usize) -> Region {
        let mut n = len >> CHUNK_SHIFT;
        if n > MAX_REGION_CHUNKS {
            n = MAX_REGION_CHUNKS;
        }
        let first = meta_chunks(n);
        if first >= n {
            // Too small to hold even one chunk beside its metadata: an empty region
            // that touches no memory.
            return Region {
                base,
                n: 0,
                first: 0,
                key: RegionKey::HOME,
            };
        }
        Region {
            base,
            n,
            first,
            key: RegionKey::HOME,
        }
    }

    /// Writes fresh metadata. Zeroed memory is enough everywhere but under loom, whose
    /// atomics are not plain integers.
    ///
    /// # Safety
    /// - as for [`Region::new`], and no other thread uses the region yet.
    pub(crate) unsafe fn init(&self) {
        let (meta, desc_at) = layout(self.n);
        // SAFETY: the metadata area is `meta` bytes at `base`, inside the region, which
        // no other thread uses yet; all-zero is its valid initial state.
        unsafe { self.base.write_bytes(0, meta) };
        #[cfg(loom)]
        // SAFETY: forwarded.
        unsafe {
            self.init_loom(desc_at)
        };
        #[cfg(not(loom))]
        let _ = desc_at;
    }

    /// # Safety
    /// - as for [`Region::init`].
    #[cfg(loom)]
    unsafe fn init_loom(&self, desc_at: usize) {
        // The maps and summaries; the cursors are `Hint`s, valid when zeroed (above).
        for i in 0..map_words(self.n) {
            let p = self
                .base
                .wrapping_add(i * size_of::<AtomicUsize>())
                .cast::<AtomicUsize>();
            // SAFETY: inside the metadata area, aligned (base is CHUNK-aligned), and no
            // one else uses the region yet.
            unsafe { p.write(AtomicUsize::new(0)) };
        }
        for i in 0..self.n {
            let p = self
                .base
                .wrapping_add(desc_at + i * size_of::<Desc>())
                .cast::<Desc>();
            // SAFETY: as above; `desc_at` is aligned for `Desc`.
            unsafe { p.write(Desc::new()) };
        }
    }

    /// Its registry id (0: the static heap).
    #[inline(always)]
    pub(crate) fn id(&self) -> usize {
        self.key.id()
    }

    /// Whether a source mapped it (its free chunks' pages may be given back).
    #[inline(always)]
    pub(crate) fn mapped(&self) -> bool {
        self.key.mapped()
    }

    /// The id of its chunk `index`.
    #[inline(always)]
    pub(crate) fn chunk_id(&self, index: usize) -> ChunkId {
        ChunkId::new(self.key.id(), index)
    }

    /// First chunk index that serves allocations.
    #[inline(always)]
    pub(crate) fn first(&self) -> usize {
        self.first
    }

    /// One past the last chunk index.
    #[inline(always)]
    pub(crate) fn end(&self) -> usize {
        self.n
    }

    fn words(&self, which: usize) -> &[AtomicUsize] {
        let per = Bitmap::words_for(self.n);
        let p = self
            .base
            .wrapping_add(which * per * size_of::<AtomicUsize>());
        // SAFETY: `Region::new`'s contract: the metadata area holds MAPS * per
        // initialised words at `base`, aligned, shared only through atomics.
        unsafe { core::slice::from_raw_parts(p.cast::<AtomicUsize>(), per) }
    }

    /// The used-chunk map (bit set = chunk in use).
    #[inline(always)]
    pub(crate) fn used(&self) -> Bitmap<'_> {
        Bitmap::new(self.words(0), self.n)
    }

    /// Partial-chunk map `list` (taken modulo [`LISTS`]) of `class`.
    #[inline(always)]
    pub(crate) fn partial(&self, class: Class, list: usize) -> Bitmap<'_> {
        let which = class.id() * LISTS + list % LISTS;
        let per = summary_words(self.n);
        if per == 0 {
            return Bitmap::new(self.words(1 + which), self.n);
        }
        let after_maps = MAPS * Bitmap::words_for(self.n);
        let p = self
            .base
            .wrapping_add((after_maps + which * per) * size_of::<AtomicUsize>());
        // SAFETY: `Region::new`'s contract: the metadata area holds each partial map's
        // summary and top words past the maps (`layout`), initialised, aligned, shared
        // only through atomics.
        let levels = unsafe { core::slice::from_raw_parts(p.cast::<AtomicUsize>(), per) };
        let (summary, top) = levels.split_at(Bitmap::summary_words(self.n));
        Bitmap::with_summary(self.words(1 + which), summary, top, self.n)
    }

    /// Search cursor `which` (`< CURSORS`): where a search for free chunks last
    /// succeeded, plus one (0: none yet). Only a hint: any value is safe.
    #[inline(always)]
    pub(crate) fn cursor(&self, which: usize) -> Option<&Hint> {
        if which >= CURSORS || self.n == 0 {
            return None;
        }
        let p = self
            .base
            .wrapping_add(cursors_at(self.n) + which * CURSOR_LINE)
            .cast::<Hint>();
        // SAFETY: `Region::new`'s contract: the cursors are initialised (zeroed) words
        // of the metadata area (`layout`), aligned (a line each), shared only through
        // atomics.
        Some(unsafe { &*p })
    }

    /// Nonzero when a search found no free chunk in the region and none has been freed
    /// since: searches pass the region by (see `heap.rs`). Only a hint: any value is
    /// safe, since a search that would otherwise fail looks at every region anyway.
    #[inline(always)]
    pub(crate) fn full_flag(&self) -> Option<&Hint> {
        self.cursor(LISTS + 1)
    }

    /// The descriptor of chunk `chunk` (`chunk < end()`).
    #[inline(always)]
    pub(crate) fn desc(&self, chunk: usize) -> Option<&Desc> {
        if chunk >= self.n {
            return None;
        }
        let (_, desc_at) = layout(self.n);
        let p = self
            .base
            .wrapping_add(desc_at + chunk * size_of::<Desc>())
            .cast::<Desc>();
        // SAFETY: `Region::new`'s contract: descriptor `chunk < n` is initialised at
        // this aligned offset inside the metadata area and is shared only through
        // atomics.
        Some(unsafe { &*p })
    }

    /// The first byte of chunk `chunk`.
    #[inline(always)]
    pub(crate) fn chunk_base(&self, chunk: usize) -> *mut u8 {
        self.base.wrapping_add(chunk << CHUNK_SHIFT)
    }

    /// The chunk holding `ptr` and `ptr`'s offset in it, if `ptr` is in this region's
    /// allocatable chunks. The returned offset is re-derived from `base`, so pointers
    /// rebuilt from it keep the region's provenance.
    #[inline(always)]
    pub(crate) fn locate(&self, ptr: *const u8) -> Option<(usize, usize)> {
        let off = ptr.addr().wrapping_sub(self.base.addr());
        let i = off >> CHUNK_SHIFT;
        if i < self.first || i >= self.n {
            return None;
        }
        Some((i, off & (CHUNK - 1)))
    }
}

/// Why [`SigAlloc::claim`](crate::SigAlloc::claim) refused a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimError {
    /// After aligning its start to [`crate::CHUNK_SIZE`], the region cannot hold its
    /// side table and one chunk.
    TooSmall,
    /// The registry already holds [`MAX_REGIONS`] regions.
    Full,
}

/// One registry entry: published when `base` turns non-null. The region's shape is
/// kept whole, so reading a region back is a few loads, with no arithmetic.
struct Entry {
    base: AtomicPtr,
    /// Chunks, and the first that serves allocations (the others hold metadata).
    chunks: AtomicUsize,
    first: AtomicUsize,
    /// Nonzero for a region a source mapped.
    mapped: AtomicUsize,
}

/// The regions besides the static heap (see the module docs).
pub(crate) struct Registry {
    /// Entries reserved so far (some may not be published yet).
    reserved: AtomicUsize,
    entries: [Entry; MAX_REGIONS],
    /// Which regions touch each granule of the address space.
    addrs: AddrMap,
}

impl Registry {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Registry {
        #[allow(clippy::declare_interior_mutable_const)]
        const ENTRY: Entry = Entry {
            base: AtomicPtr::null(),
            chunks: AtomicUsize::new(0),
            first: AtomicUsize::new(0),
            mapped: AtomicUsize::new(0),
        };
        Registry {
            reserved: AtomicUsize::new(0),
            entries: [ENTRY; MAX_REGIONS],
            addrs: AddrMap::new(),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Registry {
        Registry {
            reserved: AtomicUsize::new(0),
            entries: core::array::from_fn(|_| Entry {
                base: AtomicPtr::null(),
                chunks: AtomicUsize::new(0),
                first: AtomicUsize::new(0),
                mapped: AtomicUsize::new(0),
            }),
            addrs: AddrMap::new(),
        }
    }
}

/// Every region of one allocator: its static heap and its registry.
#[derive(Clone, Copy)]
pub(crate) struct Regions<'a> {
    home: Region,
    registry: &'a Registry,
}

impl<'a> Regions<'a> {
    #[inline(always)]
    pub(crate) fn new(home: Region, registry: &'a Registry) -> Regions<'a> {
        Regions { home, registry }
    }

    /// Region 0, the inline heap.
    #[inline(always)]
    pub(crate) fn home(&self) -> &Region {
        &self.home
    }

    /// One past the highest region id that may be in use.
    #[inline(always)]
    pub(crate) fn ids(&self) -> usize {
        // ORDERING: Relaxed: an entry is only used once its base is seen (Acquire).
        1 + self
            .registry
            .reserved
            .load(Ordering::Relaxed)
            .min(MAX_REGIONS)
    }

    /// Region `id`, if it is published.
    #[inline(always)]
    pub(crate) fn get(&self, id: usize) -> Option<Region> {
        if id == 0 {
            return Some(self.home);
        }
        let e = self.registry.entries.get(id - 1)?;
        // ORDERING: Acquire pairs with the Release store in `add`: the entry's length
        // and the region's metadata are visible once the base is.
        let base = e.base.load(Ordering::Acquire);
        if base.is_null() {
            return None;
        }
        // ORDERING: Relaxed (all three): ordered by the Acquire above.
        // `add` stored the shape of a region `Region::new` built over memory that its
        // contract keeps valid for the allocator's life, its metadata initialised.
        Some(Region {
            base,
            n: e.chunks.load(Ordering::Relaxed),
            first: e.first.load(Ordering::Relaxed),
            key: RegionKey::new(id, e.mapped.load(Ordering::Relaxed) != 0),
        })
    }

    /// Every published region, the static heap first.
    pub(crate) fn all(&self) -> impl Iterator<Item = Region> + 'a {
        let regions = *self;
        (0..self.ids()).filter_map(move |id| regions.get(id))
    }

    /// The region other than the inline heap whose allocatable chunks hold `ptr`, with
    /// the chunk and the offset (the inline heap is `home().locate`'s).
    #[cold]
    #[inline(never)]
    pub(crate) fn find_other(&self, ptr: *const u8) -> Option<(Region, usize, usize)> {
        match self.registry.addrs.find(ptr.addr()) {
            Found::Lanes(ids) => ids.into_iter().filter(|&id| id != 0).find_map(|id| {
                let region = self.get(id)?;
                let (chunk, offset) = region.locate(ptr)?;
                Some((region, chunk, offset))
            }),
            Found::Nothing => None,
            Found::Walk => self.walk(ptr),
        }
    }

    /// [`find_other`](Self::find_other) by walking the registry, newest first.
    #[cold]
    #[inline(never)]
    fn walk(&self, ptr: *const u8) -> Option<(Region, usize, usize)> {
        // Newest first: mapped regions grow geometrically, so the newest holds most.
        (1..self.ids()).rev().find_map(|id| {
            let r = self.get(id)?;
            let (ci, off) = r.locate(ptr)?;
            Some((r, ci, off))
        })
    }

    /// Registers `len` bytes at `base` as a new region.
    ///
    /// # Safety
    /// - `base` is CHUNK-aligned and valid for reads and writes of `len` bytes for the
    ///   allocator's life, used by nothing else, and its metadata is initialised
    ///   ([`Region::init`], or zero-filled memory outside loom).
    pub(crate) unsafe fn add(
        &self,
        base: *mut u8,
        len: usize,
        mapped: bool,
    ) -> Result<Region, ClaimError> {
        // SAFETY: forwarded from our caller.
        let r = unsafe { Region::new(base, len) };
        if r.end() == 0 {
            return Err(ClaimError::TooSmall);
        }
        let len = r.end() << CHUNK_SHIFT;
        // Reserve an entry: a CAS on the count, so a full registry stays at its size.
        // ORDERING: Relaxed: the reservation publishes nothing (the base store does).
        let mut i = self.registry.reserved.load(Ordering::Relaxed);
        loop {
            if i >= MAX_REGIONS {
                return Err(ClaimError::Full);
            }
            match self.registry.reserved.compare_exchange(
                i,
                i + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => i = now,
            }
        }
        let e = self.registry.entries.get(i).ok_or(ClaimError::Full)?;
        // ORDERING: Relaxed (all three): published by the Release store of the base.
        e.chunks.store(r.n, Ordering::Relaxed);
        e.first.store(r.first, Ordering::Relaxed);
        e.mapped.store(usize::from(mapped), Ordering::Relaxed);
        // Into the address map before publication: a pointer into the region can only
        // exist after it, so every lookup for one finds the region's id.
        self.registry
            .addrs
            .insert(base.addr(), base.addr() + len, i + 1);
        // ORDERING: Release pairs with the Acquire load in `get`: the metadata and the
        // shape are visible to whoever sees the base.
        e.base.store(base, Ordering::Release);
        let mut r = r;
        r.key = RegionKey::new(i + 1, mapped);
        Ok(r)
    }

    /// Takes `len` bytes of caller memory at `start` (any alignment) as a new region:
    /// aligns it, writes its metadata and registers it.
    ///
    /// # Safety
    /// - `start` is valid for reads and writes of `len` bytes for the allocator's life
    ///   and used by nothing else.
    pub(crate) unsafe fn claim(&self, start: *mut u8, len: usize) -> Result<Region, ClaimError> {
        let skip = start.align_offset(CHUNK);
        if skip >= len {
            return Err(ClaimError::TooSmall);
        }
        let base = start.wrapping_add(skip);
        let len = ((len - skip) >> CHUNK_SHIFT).min(MAX_REGION_CHUNKS) << CHUNK_SHIFT;
        // SAFETY: `base..base + len` lies inside the caller's memory and is CHUNK-aligned.
        let r = unsafe { Region::new(base, len) };
        if r.end() == 0 {
            return Err(ClaimError::TooSmall);
        }
        if self.ids() > MAX_REGIONS {
            return Err(ClaimError::Full);
        }
        // SAFETY: the memory is ours alone until `add` publishes it.
        unsafe { r.init() };
        // Caller RAM holds whatever it held: no chunk may count as zero (`calloc`).
        for ci in r.first()..r.end() {
            if let Some(d) = r.desc(ci) {
                d.set_clean(false);
            }
        }
        // SAFETY: as above, with its metadata initialised.
        unsafe { self.add(base, len, false) }
    }
}
