//! A pointer resolved once: where it lies and what lives there.
//!
//! Every call that takes a pointer (`free`, `realloc`, `usable_size`, `owns`, checked
//! mode's layout check) resolves it here exactly once into a [`Block`], and passes that
//! value down: the one place that decides "heap block or huge mapping?" is
//! [`Memory::resolve`]. The inline heap is tried first with its constants in
//! registers; other regions and the source's huge blocks are the cold path.
//!
//! A pointer into a chunk of a mid-size slab past its first (a *tail*, see `class.rs`)
//! resolves to the slab's first chunk, which holds its descriptor, and the offset from
//! there: the tail's anchor names the distance back, so this is one more load, O(1).
//!
//! The resolution reads the chunk's anchor once (Relaxed). For a live block that
//! snapshot cannot go stale while its caller holds the block: only a free of the block
//! (by its holder, the caller) can retire its chunk. For a pointer that is not a live
//! block the snapshot only classifies the mistake.
//!
//! Depends on: `sync`, `class`, `chunk`, `region`, `source` (and `mapped`, the source
//! it names as `Active` with the `mmap` feature). Upholds I6 (every pointer
//! gets a defined answer, foreign ones included).

use crate::chunk::{Anchor, Desc, ACTIVE, SPAN_CLASS};
use crate::class::{Class, CHUNK_SHIFT};
use crate::region::{Region, Regions};
use crate::source::Source;

/// The memory source of this build (see `source.rs`): mapped memory with the `mmap`
/// feature, the inline heap and claimed RAM alone without it.
#[cfg(feature = "mmap")]
pub(crate) use crate::mapped::Mapped as Active;
#[cfg(not(feature = "mmap"))]
pub(crate) use crate::source::Fixed as Active;
use crate::sync::Ordering;

/// What a pointer is resolved against: every region, and the memory source.
#[derive(Clone, Copy)]
pub(crate) struct Memory<'a> {
    pub(crate) regions: Regions<'a>,
    pub(crate) source: &'a Active,
}

/// A place in a region's allocatable chunks: chunk `chunk` of `region`, `offset`
/// bytes in. Offsets are re-derived from the region's base, so pointers rebuilt from a
/// place keep the region's provenance.
#[derive(Clone, Copy)]
pub(crate) struct Place {
    pub(crate) region: Region,
    pub(crate) chunk: usize,
    pub(crate) offset: usize,
}

impl Place {
    /// The chunk's descriptor.
    #[inline(always)]
    pub(crate) fn desc(&self) -> Option<&Desc> {
        self.region.desc(self.chunk)
    }

    /// The chunk's first byte.
    #[inline(always)]
    pub(crate) fn chunk_base(&self) -> *mut u8 {
        self.region.chunk_base(self.chunk)
    }
}

/// What a pointer names.
#[derive(Clone, Copy)]
pub(crate) enum Block {
    /// The start of a block of a small class (live, unless the caller is mistaken: a
    /// free that finds it already free reports a double free).
    Small { at: Place, class: Class },
    /// The head of a live span of `chunks` whole chunks.
    Span { at: Place, chunks: usize },
    /// A live huge block of `usable` bytes at `ptr`, in a mapping of its own.
    Huge { ptr: *mut u8, usable: usize },
    /// Inside a region's chunks, but no block starts here: a free chunk, a block
    /// already freed with its chunk, or a pointer into a block. `anchor` says which.
    Dead { at: Place, anchor: Anchor },
    /// Not this allocator's memory.
    Foreign,
}

impl Memory<'_> {
    /// What `ptr` names.
    #[inline(always)]
    pub(crate) fn resolve(&self, ptr: *const u8) -> Block {
        let home = self.regions.home();
        match home.locate(ptr) {
            // The inline heap, spelled out so its constants stay in registers.
            Some((chunk, offset)) => Block::at(Place {
                region: *home,
                chunk,
                offset,
            }),
            None => self.resolve_elsewhere_slow(ptr),
        }
    }

    #[cold]
    #[inline(never)]
    fn resolve_elsewhere_slow(&self, ptr: *const u8) -> Block {
        self.resolve_found(ptr, self.regions.find_other(ptr))
    }

    /// What `ptr` names, given where in the regions other than the inline heap it was
    /// found (`Regions::find_other`'s answer).
    #[inline(always)]
    pub(crate) fn resolve_found(
        &self,
        ptr: *const u8,
        found: Option<(Region, usize, usize)>,
    ) -> Block {
        if let Some((region, chunk, offset)) = found {
            return Block::at(Place {
                region,
                chunk,
                offset,
            });
        }
        match self.source.huge_size(ptr) {
            Some(usable) => Block::Huge {
                ptr: ptr.cast_mut(),
                usable,
            },
            None => Block::Foreign,
        }
    }
}

/// The class of the small block that starts at `offset` of `chunk` of `region`, if
/// one does and `chunk` holds its descriptor: the hot half of [`Block::at`], for
/// `free`'s fast path. (A block starting in a slab's tail chunk is `None` here: the
/// caller resolves it through [`Block::at`], which finds the slab's first chunk.)
#[inline(always)]
pub(crate) fn small_at(region: &Region, chunk: usize, offset: usize) -> Option<Class> {
    // ORDERING: Relaxed: a live block's chunk keeps its class until the block is freed,
    // and the user's synchronisation with the allocating thread ordered the class write
    // (see the module docs).
    let class = region
        .desc(chunk)?
        .anchor(Ordering::Relaxed)
        .small_class()?;
    class.starts_block(offset).then_some(class)
}

/// For a chunk of a live slab past its first: the slab's first chunk, and `offset`
/// counted from there.
#[inline(always)]
fn slab_head(chunk: usize, offset: usize, anchor: Anchor) -> Option<(usize, usize)> {
    let back = anchor.live_tail()?;
    Some((chunk.checked_sub(back)?, offset + (back << CHUNK_SHIFT)))
}

impl Block {
    /// What lies at `at`, from its chunk's anchor (its slab's first chunk's, for a
    /// slab's tail).
    #[inline(always)]
    pub(crate) fn at(mut at: Place) -> Block {
        let Some(d) = at.desc() else {
            return Block::Foreign;
        };
        // ORDERING: Relaxed, as in `small_at`.
        let mut anchor = d.anchor(Ordering::Relaxed);
        if let Some((head, offset)) = slab_head(at.chunk, at.offset, anchor) {
            let first = Place {
                chunk: head,
                offset,
                ..at
            };
            // ORDERING: Relaxed, as in `small_at`.
            let ha = first.desc().map(|hd| hd.anchor(Ordering::Relaxed));
            if let Some(ha) = ha.filter(|ha| {
                ha.small_class()
                    .is_some_and(|c| c.chunks() > at.chunk - head)
            }) {
                (at, anchor) = (first, ha);
            }
        }
        let Some(d) = at.desc() else {
            return Block::Foreign;
        };
        match anchor.small_class() {
            Some(class) if class.starts_block(at.offset) => Block::Small { at, class },
            None if anchor.state() == ACTIVE && anchor.class() == SPAN_CLASS && at.offset == 0 => {
                // ORDERING: Relaxed: the span is live (the caller holds it).
                let chunks = d.span.load(Ordering::Relaxed) as usize;
                Block::Span { at, chunks }
            }
            _ => Block::Dead { at, anchor },
        }
    }

    /// Bytes usable at the block (0 if no live block starts there).
    pub(crate) fn usable_size(&self) -> usize {
        match *self {
            Block::Small { class, .. } => class.size(),
            Block::Span { chunks, .. } => chunks << CHUNK_SHIFT,
            Block::Huge { usable, .. } => usable,
            Block::Dead { .. } | Block::Foreign => 0,
        }
    }

    /// Whether the pointer lies in memory this allocator manages.
    pub(crate) fn owned(&self) -> bool {
        !matches!(self, Block::Foreign)
    }
}
