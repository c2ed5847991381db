//! Regions of chunks: the static heap's layout, and pointer -> chunk in O(1).
//!
//! A region is a run of memory aligned to [`CHUNK`]. Its first chunks hold its side
//! table, so no block carries a header and no table needs a size known to the type
//! system (stable Rust cannot size `[Desc; HEAP / CHUNK]`):
//!
//! ```text
//! base                                                     base + n * CHUNK
//! | used map | partial maps (one per class) | descriptors | chunk | chunk | ... |
//! '-------------- metadata: chunks 0..first -------------'  '-- first..n ---'
//! ```
//!
//! All-zero metadata is the valid initial state (every chunk free, nothing listed), so
//! a `static` heap needs no initialisation and stays in `.bss`.
//!
//! Depends on: `sync`, `bitmap`, `chunk`, `class`. Upholds I1 (each chunk index names
//! one descriptor and one stretch of memory).

use core::mem::{align_of, size_of};

use crate::bitmap::Bitmap;
use crate::chunk::Desc;
use crate::class::{Class, CHUNK, CHUNK_SHIFT, NCLASSES};
use crate::sync::AtomicUsize;

/// Partial-chunk lists per class. Each active slot has its own, so a thread lists the
/// chunks it frees into under its own stack hash and takes them back from there first:
/// threads on different slots then share no bitmap word.
pub(crate) const LISTS: usize = 4;

/// Bitmaps in a region's metadata: the used map, then `LISTS` partial maps per class.
const MAPS: usize = 1 + NCLASSES * LISTS;

/// Bytes of metadata for a region of `n` chunks, and where the descriptors start.
const fn layout(n: usize) -> (usize, usize) {
    let words = Bitmap::words_for(n) * MAPS;
    let desc_at = (words * size_of::<AtomicUsize>()).next_multiple_of(align_of::<Desc>());
    (desc_at + n * size_of::<Desc>(), desc_at)
}

/// Chunks the metadata of a region of `n` chunks takes from its front.
pub(crate) const fn meta_chunks(n: usize) -> usize {
    layout(n).0.div_ceil(CHUNK)
}

/// A region: `n` chunks at `base`, the first `first` of them metadata.
#[derive(Clone, Copy)]
pub(crate) struct Region {
    base: *mut u8,
    n: usize,
    first: usize,
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
        let n = len >> CHUNK_SHIFT;
        let first = meta_chunks(n);
        if first >= n {
            // Too small to hold even one chunk beside its metadata: an empty region
            // that touches no memory.
            return Region {
                base,
                n: 0,
                first: 0,
            };
        }
        Region { base, n, first }
    }

    /// Writes fresh metadata: under loom, whose atomics are not plain integers, zeroed
    /// memory is not enough.
    ///
    /// # Safety
    /// - as for [`Region::new`], and no other thread uses the region yet.
    #[cfg(loom)]
    pub(crate) unsafe fn init(&self) {
        let (_, desc_at) = layout(self.n);
        let words = Bitmap::words_for(self.n) * MAPS;
        for i in 0..words {
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
        Bitmap::new(self.words(1 + class.id() * LISTS + list % LISTS), self.n)
    }

    /// The descriptor of chunk `i` (`i < end()`).
    #[inline(always)]
    pub(crate) fn desc(&self, i: usize) -> Option<&Desc> {
        if i >= self.n {
            return None;
        }
        let (_, desc_at) = layout(self.n);
        let p = self
            .base
            .wrapping_add(desc_at + i * size_of::<Desc>())
            .cast::<Desc>();
        // SAFETY: `Region::new`'s contract: descriptor `i < n` is initialised at this
        // aligned offset inside the metadata area and is shared only through atomics.
        Some(unsafe { &*p })
    }

    /// The first byte of chunk `i`.
    #[inline(always)]
    pub(crate) fn chunk_base(&self, i: usize) -> *mut u8 {
        self.base.wrapping_add(i << CHUNK_SHIFT)
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

    /// Whether `ptr` is anywhere in this region's allocatable chunks.
    pub(crate) fn contains(&self, ptr: *const u8) -> bool {
        self.locate(ptr).is_some()
    }
}
