//! Size-class math and its compile-time checks.
//!
//! Memory is cut into chunks of [`CHUNK`] bytes, each aligned to its size. A small
//! request is served from a chunk cut into equal power-of-two blocks; since the chunk
//! is aligned, each block is naturally aligned to its own size, so an alignment request
//! is met by choosing a class at least that large (no padding, no header).
//!
//! Between the powers of two, *mid-size* classes (2.5, 3, 3.5 and 5 KiB) are served
//! from *slabs*: runs of [`Class::chunks`] whole chunks (5, 3, 7 and 5) cut into equal
//! blocks with no slot wasted, so that a request of 2049..3584 B no longer costs a
//! whole 4 KiB chunk and one of 4097..5120 B costs 5 KiB instead of 8 KiB. A slab
//! starts at a chunk boundary, so its blocks are aligned to the largest power of two
//! dividing the block size (512 B or 1 KiB): [`fit`] sends a request with a larger
//! alignment to the next class or a span. A request that a span of whole chunks serves
//! at least as cheaply (3585..4096 B) stays a span. Anything larger is a span of whole
//! chunks, aligned to [`CHUNK`].
//!
//! Depends on: nothing. Upholds I7 (every class carves at least two blocks per chunk,
//! or per slab, and wastes no slot), checked below with `static_assertions`.

use static_assertions::const_assert;

/// log2 of the chunk size.
pub(crate) const CHUNK_SHIFT: u32 = 12;
/// Bytes in a chunk; chunks are aligned to this.
pub(crate) const CHUNK: usize = 1 << CHUNK_SHIFT;
/// log2 of the smallest block.
pub(crate) const MIN_SHIFT: u32 = 4;
/// The smallest block: room for the link word and 16-byte alignment.
pub(crate) const MIN_BLOCK: usize = 1 << MIN_SHIFT;
/// Number of power-of-two classes: 16, 32, ..., 2048 bytes.
pub(crate) const NPOW2: usize = 8;
/// Number of mid-size (slab) classes: 2560, 3072, 3584 and 5120 bytes.
pub(crate) const NSLAB: usize = 4;
/// Number of small classes, the power-of-two ones first.
pub(crate) const NCLASSES: usize = NPOW2 + NSLAB;
/// The largest power-of-two block.
pub(crate) const MAX_POW2: usize = MIN_BLOCK << (NPOW2 - 1);
/// The largest small block (the largest mid-size class).
pub(crate) const MAX_SMALL: usize = mid_size(NCLASSES - 1);
/// The most chunks a slab spans.
pub(crate) const MAX_SLAB_CHUNKS: usize = max_slab_chunks();

/// Block size of mid-size class `id` (`NPOW2..NCLASSES`).
#[inline(always)]
const fn mid_size(id: usize) -> usize {
    match id.wrapping_sub(NPOW2) {
        0 => 2560,
        1 => 3072,
        2 => 3584,
        _ => 5120,
    }
}

/// Chunks in a slab of mid-size class `id` (checked below to be the fewest whole
/// chunks that a whole number of blocks fills exactly).
#[inline(always)]
const fn mid_chunks(id: usize) -> usize {
    match id.wrapping_sub(NPOW2) {
        0 => 5,
        1 => 3,
        2 => 7,
        _ => 5,
    }
}

/// Blocks in a slab of mid-size class `id`.
#[inline(always)]
const fn mid_capacity(id: usize) -> u32 {
    match id.wrapping_sub(NPOW2) {
        0 => 8,
        1 => 4,
        2 => 8,
        _ => 4,
    }
}

/// log2 of the largest power of two dividing mid-size class `id`'s block size.
#[inline(always)]
const fn mid_shift(id: usize) -> u32 {
    mid_size(id).trailing_zeros()
}

/// `2^RECIPROCAL_SHIFT / odd`, rounded up, where `odd` is mid-size class `id`'s block
/// size without its factors of two (5, 3, 7 or 5).
#[inline(always)]
const fn mid_reciprocal(id: usize) -> usize {
    (1usize << RECIPROCAL_SHIFT).div_ceil(mid_size(id) >> mid_shift(id))
}
const RECIPROCAL_SHIFT: u32 = 16;

/// Whether `index_of` is exact for every byte of every slab (then so is
/// `starts_block`, which multiplies back). Both it and the true quotient are monotone
/// in the offset, and block boundaries are multiples of `MIN_BLOCK`, so it suffices
/// to check the first and last byte of every `MIN_BLOCK` granule.
const fn slab_indices_hold() -> bool {
    let mut id = NPOW2;
    while id < NCLASSES {
        let class = Class(id as u8);
        let mut offset = 0;
        while offset < class.slab_bytes() {
            let last = offset + MIN_BLOCK - 1;
            if class.index_of(offset) as usize != offset / class.size()
                || class.index_of(last) as usize != last / class.size()
            {
                return false;
            }
            offset += MIN_BLOCK;
        }
        id += 1;
    }
    true
}

/// The fewest whole chunks that a whole number of `size`-byte blocks fills exactly.
const fn fewest_chunks(size: usize) -> usize {
    let (mut a, mut b) = (size, CHUNK);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    size / a
}

const fn max_slab_chunks() -> usize {
    let (mut id, mut most) = (NPOW2, 0);
    while id < NCLASSES {
        if mid_chunks(id) > most {
            most = mid_chunks(id);
        }
        id += 1;
    }
    most
}

/// I7 for the mid-size classes: each carves at least two blocks per slab and wastes no
/// slot (the block size divides the slab), each slab is more than one chunk (else it
/// would be a power-of-two class), the classes grow, every block is aligned to at least
/// `MIN_BLOCK` (sizes are multiples of it; slabs start on a chunk), and each class is
/// cheaper than the span that would serve its largest request otherwise; the tables
/// agree (a slab is the fewest chunks that fit, its capacity what it holds).
const fn mid_classes_hold() -> bool {
    let mut id = NPOW2;
    let mut below = MAX_POW2;
    while id < NCLASSES {
        let (size, chunks) = (mid_size(id), mid_chunks(id));
        let slab = chunks * CHUNK;
        if slab / size < 2 || slab % size != 0 || chunks < 2 || size <= below {
            return false;
        }
        if chunks != fewest_chunks(size) || mid_capacity(id) as usize != slab / size {
            return false;
        }
        if size % MIN_BLOCK != 0 || size >= size.div_ceil(CHUNK) * CHUNK {
            return false;
        }
        below = size;
        id += 1;
    }
    true
}

/// The largest alignment honoured. Up to `CHUNK` every block is aligned by its class or
/// by being a span; above it, a span (or huge mapping) starts at an aligned chunk.
pub(crate) const MAX_ALIGN: usize = 1 << 21;
/// The most blocks a chunk can hold (of the smallest class).
pub(crate) const MAX_BLOCKS: usize = CHUNK / MIN_BLOCK;

// I7: every power-of-two class carves at least two blocks per chunk ...
const_assert!(CHUNK / MAX_POW2 >= 2);
// ... and carving wastes no slot: each class size divides the chunk.
const_assert!(CHUNK % MAX_POW2 == 0 && CHUNK % MIN_BLOCK == 0);
const_assert!(MAX_POW2.is_power_of_two() && MIN_BLOCK.is_power_of_two());
// ... and so do the mid-size classes, in their slabs.
const_assert!(mid_classes_hold());
const_assert!(slab_indices_hold());
// A slab's bytes fit the 16-bit dirty field of `chunk::Carve`, and the distance from a
// tail chunk to its head fits the anchor's count field.
const_assert!(MAX_SLAB_CHUNKS * CHUNK < 1 << 16 && MAX_SLAB_CHUNKS < 1 << 12);
// A free block holds a 4-byte link word.
const_assert!(MIN_BLOCK >= 4);
// Block indices and counts fit the anchor's fields (see `chunk::Anchor`).
const_assert!(MAX_BLOCKS <= 1 << 12);
// Class ids (plus the slab-tail and two span markers) fit the anchor's 4-bit class
// field.
const_assert!(NCLASSES < 14);

/// Marks the path that calls it as unlikely (the mid-size arms of `Class`'s methods),
/// so the power-of-two paths of `alloc` and `free` keep their short code. (What
/// `core::hint::cold_path` does, which is newer than the crate's MSRV.)
#[cold]
#[inline(always)]
const fn cold() {}

/// A small size class: blocks of `16 << id` bytes for `id < NPOW2`, else a mid-size
/// class served from slabs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Class(u8);

impl Class {
    /// The class with id `id`, if there is one.
    pub(crate) const fn from_id(id: u32) -> Option<Class> {
        if (id as usize) < NCLASSES {
            Some(Class(id as u8))
        } else {
            None
        }
    }

    /// The class id, `0..NCLASSES`.
    #[inline(always)]
    pub(crate) const fn id(self) -> usize {
        self.0 as usize
    }

    /// Whether the class is a mid-size one, served from multi-chunk slabs.
    #[inline(always)]
    pub(crate) const fn is_slab(self) -> bool {
        self.0 as usize >= NPOW2
    }

    /// log2 of the block size of a power-of-two class (meaningless for a slab class).
    #[inline(always)]
    const fn shift(self) -> u32 {
        MIN_SHIFT + self.0 as u32
    }

    /// Block size in bytes.
    #[inline(always)]
    pub(crate) const fn size(self) -> usize {
        if self.is_slab() {
            cold();
            mid_size(self.0 as usize)
        } else {
            1 << self.shift()
        }
    }

    /// Chunks in one chunk (or slab) of this class: 1 for a power-of-two class.
    #[inline(always)]
    pub(crate) const fn chunks(self) -> usize {
        if self.is_slab() {
            cold();
            mid_chunks(self.0 as usize)
        } else {
            1
        }
    }

    /// Bytes of one chunk (or slab) of this class.
    #[inline(always)]
    pub(crate) const fn slab_bytes(self) -> usize {
        self.chunks() * CHUNK
    }

    /// The alignment every block of the class has: its size for a power of two, the
    /// largest power of two dividing it for a mid-size class (slabs start on a chunk).
    #[inline(always)]
    pub(crate) const fn align(self) -> usize {
        let size = self.size();
        size & size.wrapping_neg()
    }

    /// Blocks per chunk (or slab).
    #[inline(always)]
    pub(crate) const fn capacity(self) -> u32 {
        if self.is_slab() {
            cold();
            mid_capacity(self.0 as usize)
        } else {
            (CHUNK >> self.shift()) as u32
        }
    }

    /// Byte offset of block `idx` from the chunk's (or slab's) start.
    #[inline(always)]
    pub(crate) const fn offset_of(self, idx: u32) -> usize {
        if self.is_slab() {
            cold();
            idx as usize * self.size()
        } else {
            (idx as usize) << self.shift()
        }
    }

    /// Index of the block that holds byte `offset` of the chunk (or slab), for an
    /// offset inside it.
    #[inline(always)]
    pub(crate) const fn index_of(self, offset: usize) -> u32 {
        if self.is_slab() {
            cold();
            // No division on the free path: a slab block is `odd << shift` bytes, so
            // the index is `(offset >> shift) / odd`, a multiply by a reciprocal that
            // is exact for every offset in a slab (checked at compile time below).
            let id = self.0 as usize;
            (((offset >> mid_shift(id)) * mid_reciprocal(id)) >> RECIPROCAL_SHIFT) as u32
        } else {
            (offset >> self.shift()) as u32
        }
    }

    /// Whether a block starts at byte `offset` of the chunk (or slab).
    #[inline(always)]
    pub(crate) const fn starts_block(self, offset: usize) -> bool {
        if self.is_slab() {
            cold();
            offset < self.slab_bytes() && self.offset_of(self.index_of(offset)) == offset
        } else {
            offset & (self.size() - 1) == 0
        }
    }

    /// Every class, smallest first.
    pub(crate) fn all() -> impl Iterator<Item = Class> {
        (0..NCLASSES as u8).map(Class)
    }
}

/// How a request is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fit {
    /// A block of this class.
    Small(Class),
    /// A span of this many whole chunks.
    Span(usize),
}

/// Chooses how to serve `size` bytes at alignment `align` (a power of two).
///
/// Returns `None` for an alignment above [`MAX_ALIGN`]. A zero size is served like one
/// byte, so every successful call returns a distinct block.
#[inline(always)]
pub(crate) const fn fit(size: usize, align: usize) -> Option<Fit> {
    if align > MAX_ALIGN {
        return None;
    }
    if align > CHUNK {
        // Only whole chunks at an aligned address serve it (the caller finds one); the
        // span is as long as the size needs, not the alignment.
        let need = if size == 0 { 1 } else { size };
        return Some(Fit::Span(need.div_ceil(CHUNK)));
    }
    let need = if size > align { size } else { align };
    if need <= MIN_BLOCK {
        return Some(Fit::Small(Class(0)));
    }
    if need <= MAX_POW2 {
        // need > 16, so need - 1 >= 16 and the subtraction cannot underflow.
        let shift = usize::BITS - (need - 1).leading_zeros();
        return Some(Fit::Small(Class((shift - MIN_SHIFT) as u8)));
    }
    // A mid-size class, if one fits the size and the alignment and costs less than
    // the span that would serve it otherwise.
    let span = need.div_ceil(CHUNK);
    let mut id = NPOW2;
    while id < NCLASSES {
        let class = Class(id as u8);
        if need <= class.size() && align <= class.align() && class.size() < span * CHUNK {
            return Some(Fit::Small(class));
        }
        id += 1;
    }
    // Spans are chunk-aligned, which covers every align <= CHUNK.
    Some(Fit::Span(span))
}

/// The size actually handed out for a request of `size` bytes at minimal alignment;
/// `None` if no allocator of this design could serve it.
pub(crate) const fn good_size(size: usize) -> Option<usize> {
    match fit(size, 1) {
        Some(Fit::Small(c)) => Some(c.size()),
        Some(Fit::Span(n)) => n.checked_mul(CHUNK),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_classes_round_up_to_powers_of_two() {
        assert_eq!(fit(0, 1), Some(Fit::Small(Class(0))));
        assert_eq!(fit(1, 1), Some(Fit::Small(Class(0))));
        assert_eq!(fit(16, 1), Some(Fit::Small(Class(0))));
        assert_eq!(fit(17, 1), Some(Fit::Small(Class(1))));
        assert_eq!(fit(1024, 8), Some(Fit::Small(Class(6))));
        assert_eq!(fit(2048, 8), Some(Fit::Small(Class(7))));
        assert_eq!(fit(2049, 8), Some(Fit::Small(Class(8))));
        assert_eq!(fit(2560, 8), Some(Fit::Small(Class(8))));
        assert_eq!(fit(2561, 8), Some(Fit::Small(Class(9))));
        assert_eq!(fit(3072, 8), Some(Fit::Small(Class(9))));
        assert_eq!(fit(3073, 8), Some(Fit::Small(Class(10))));
        assert_eq!(fit(3584, 8), Some(Fit::Small(Class(10))));
        assert_eq!(fit(3585, 8), Some(Fit::Span(1)));
        assert_eq!(fit(4096, 8), Some(Fit::Span(1)));
        assert_eq!(fit(4097, 8), Some(Fit::Small(Class(11))));
        assert_eq!(fit(5120, 8), Some(Fit::Small(Class(11))));
        assert_eq!(fit(5121, 8), Some(Fit::Span(2)));
    }

    #[test]
    fn alignment_picks_a_large_enough_class() {
        assert_eq!(fit(8, 64), Some(Fit::Small(Class(2))));
        assert_eq!(fit(8, 4096), Some(Fit::Span(1)));
        assert_eq!(fit(0, 4096), Some(Fit::Span(1)));
        // Above a chunk, the span is as long as the size needs; the heap aligns it.
        assert_eq!(fit(8, 8192), Some(Fit::Span(1)));
        assert_eq!(fit(3 * CHUNK, MAX_ALIGN), Some(Fit::Span(3)));
        assert_eq!(fit(8, MAX_ALIGN * 2), None);
        // Mid-size classes honour 512 B (2560, 3584) or 1 KiB (3072, 5120), not more.
        assert_eq!(fit(2500, 512), Some(Fit::Small(Class(8))));
        assert_eq!(fit(2500, 1024), Some(Fit::Small(Class(9))));
        assert_eq!(fit(2500, 2048), Some(Fit::Span(1)));
        assert_eq!(fit(3500, 1024), Some(Fit::Span(1)));
        assert_eq!(fit(4500, 1024), Some(Fit::Small(Class(11))));
        assert_eq!(fit(4500, 2048), Some(Fit::Span(2)));
        for c in Class::all() {
            assert_eq!(fit(c.size(), c.align()), Some(Fit::Small(c)));
            assert!(c.capacity() >= 2);
            assert_eq!(c.offset_of(c.capacity()), c.slab_bytes());
            for idx in 0..c.capacity() {
                let at = c.offset_of(idx);
                assert!(c.starts_block(at) && at % c.align() == 0 && at % MIN_BLOCK == 0);
                assert_eq!(c.index_of(at), idx);
                assert_eq!(c.index_of(at + c.size() - 1), idx);
                assert!(c.size() == MIN_BLOCK || !c.starts_block(at + MIN_BLOCK));
            }
        }
        let chunks: std::vec::Vec<_> = Class::all().map(|c| (c.size(), c.chunks())).collect();
        assert_eq!(
            chunks.get(NPOW2..),
            Some(&[(2560, 5), (3072, 3), (3584, 7), (5120, 5)][..])
        );
    }

    #[test]
    fn huge_sizes_do_not_overflow() {
        assert_eq!(fit(usize::MAX, 1), Some(Fit::Span(usize::MAX / CHUNK + 1)));
        assert_eq!(good_size(usize::MAX), None);
        assert_eq!(good_size(100), Some(128));
        assert_eq!(good_size(2100), Some(2560));
        assert_eq!(good_size(3000), Some(3072));
        assert_eq!(good_size(3100), Some(3584));
        assert_eq!(good_size(3600), Some(4096));
        assert_eq!(good_size(4104), Some(5120));
        assert_eq!(good_size(5200), Some(8192));
    }
}
