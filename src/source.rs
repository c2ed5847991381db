//! Where memory comes from: the one seam between the chunk layer and the OS.
//!
//! The chunk layer (`heap.rs`) asks a [`Source`] for what regions alone cannot give,
//! and knows nothing else about it:
//! - `grow`: a new region, registered, when every region is dry;
//! - `retired`: word that a chunk went back to its region's free map, so a source that
//!   can give pages back knows when to look;
//! - huge blocks: requests too large to be worth a region's chunks, each in a mapping of
//!   its own, which `block.rs` resolves like any other pointer.
//!
//! Two sources exist, and a build has exactly one of them, named `block::Active`:
//! - [`Fixed`] (every build without the `mmap` feature, so every bare-metal one): the
//!   inline heap plus claimed RAM (`SigAlloc::claim`, which only registers a region in
//!   `region.rs`) and nothing more: no growth, no huge blocks, nothing given back.
//! - `Mapped` (`mapped.rs`, feature `mmap`): growth by mapped regions, huge mappings,
//!   and free pages given back, all through `os.rs`. Off until `enable_mmap`; until
//!   then it answers exactly as `Fixed` does.
//!
//! `Active` is a type alias (in `block.rs`, where memory is assembled from the regions
//! and the source), so the seam is a static call with no indirection. The region layer
//! below never calls up into a source; a source calls down into it, and this file names
//! no implementation but its own `Fixed`.
//!
//! Depends on: `region`, and for `Mapped`, `os`. Upholds I4 (no source waits: growth
//! is a CAS and a store in the registry), I5 (only `os.rs` talks to the OS).

use crate::region::{Region, Regions};

/// What a memory source offers the chunk layer (see the module docs).
pub(crate) trait Source {
    /// A new region of at least `chunks` allocatable chunks, registered in `regions`;
    /// `None` if this source cannot grow (now or ever).
    fn grow(&self, regions: &Regions, chunks: usize) -> Option<Region>;

    /// A chunk of `region` has just gone back to its free map.
    fn retired(&self, regions: &Regions, region: &Region);

    /// A block of `size` bytes in a mapping of its own, if this source maps huge blocks
    /// and `size` is one. `None` sends the request to the regions.
    fn alloc_huge(&self, size: usize, align: usize) -> Option<*mut u8>;

    /// The usable size of the live huge block at `ptr`, if it is one.
    fn huge_size(&self, ptr: *const u8) -> Option<usize>;

    /// Gives back the live huge block at `ptr`; `false` if it is not one.
    fn free_huge(&self, ptr: *mut u8) -> bool;

    /// The usable size a request of `size` bytes gets if this source can always serve
    /// it (growing or mapping as needed); `in_regions` is what a region would give it.
    /// `None`: only the regions there are now can serve it.
    fn good_size(&self, size: usize, in_regions: usize) -> Option<usize>;

    /// Gives every free chunk of the regions it can give back to the OS now; the bytes.
    fn trim(&self, regions: &Regions) -> usize;

    /// Its counters, for `Stats`.
    fn counts(&self) -> Counts;
}

/// A source's counters, for `Stats` (all zero for `Fixed`).
#[derive(Clone, Copy, Default)]
pub(crate) struct Counts {
    /// Bytes of the mappings that hold regions (side tables and idle maps included).
    pub(crate) mapped_bytes: usize,
    /// Bytes given back to the OS so far.
    pub(crate) released: usize,
    /// Live huge blocks, and their mappings' bytes.
    pub(crate) huge_live: usize,
    pub(crate) huge_bytes: usize,
}

/// Whether a huge block of `have` usable bytes serves a request of `size` in place: a
/// shrink by at most half keeps the mapping (in `realloc`, and in checked mode's layout
/// check).
pub(crate) fn huge_keeps(have: usize, size: usize) -> bool {
    size <= have && size > have / 2
}

/// The inline heap and claimed RAM, and nothing more.
#[cfg(not(feature = "mmap"))]
pub(crate) struct Fixed;

#[cfg(not(feature = "mmap"))]
impl Fixed {
    pub(crate) const fn new() -> Fixed {
        Fixed
    }
}

#[cfg(not(feature = "mmap"))]
impl Source for Fixed {
    fn grow(&self, _: &Regions, _: usize) -> Option<Region> {
        None
    }
    fn retired(&self, _: &Regions, _: &Region) {}
    fn alloc_huge(&self, _: usize, _: usize) -> Option<*mut u8> {
        None
    }
    fn huge_size(&self, _: *const u8) -> Option<usize> {
        None
    }
    fn free_huge(&self, _: *mut u8) -> bool {
        false
    }
    fn good_size(&self, _: usize, _: usize) -> Option<usize> {
        None
    }
    fn trim(&self, _: &Regions) -> usize {
        0
    }
    fn counts(&self) -> Counts {
        Counts::default()
    }
}
