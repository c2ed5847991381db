//! Size-class math and its compile-time checks.
//!
//! Memory is cut into chunks of [`CHUNK`] bytes, each aligned to its size. A small
//! request is served from a chunk cut into equal power-of-two blocks; since the chunk
//! is aligned, each block is naturally aligned to its own size, so an alignment request
//! is met by choosing a class at least that large (no padding, no header). Anything
//! larger than [`MAX_SMALL`] is a span of whole chunks, aligned to [`CHUNK`].
//!
//! Depends on: nothing. Upholds I7 (every class carves at least two blocks per chunk and
//! wastes no slot), checked below with `static_assertions`.

use static_assertions::const_assert;

/// log2 of the chunk size.
pub(crate) const CHUNK_SHIFT: u32 = 12;
/// Bytes in a chunk; chunks are aligned to this.
pub(crate) const CHUNK: usize = 1 << CHUNK_SHIFT;
/// log2 of the smallest block.
pub(crate) const MIN_SHIFT: u32 = 4;
/// The smallest block: room for the link word and 16-byte alignment.
pub(crate) const MIN_BLOCK: usize = 1 << MIN_SHIFT;
/// Number of small classes: 16, 32, ..., 2048 bytes.
pub(crate) const NCLASSES: usize = 8;
/// The largest small block.
pub(crate) const MAX_SMALL: usize = MIN_BLOCK << (NCLASSES - 1);
/// The largest alignment honoured. Up to `CHUNK` every block is aligned by its class or
/// by being a span; above it, a span (or huge mapping) starts at an aligned chunk.
pub(crate) const MAX_ALIGN: usize = 1 << 21;
/// The most blocks a chunk can hold (of the smallest class).
pub(crate) const MAX_BLOCKS: usize = CHUNK / MIN_BLOCK;

// I7: every small class carves at least two blocks per chunk ...
const_assert!(CHUNK / MAX_SMALL >= 2);
// ... and carving wastes no slot: each class size divides the chunk.
const_assert!(CHUNK % MAX_SMALL == 0 && CHUNK % MIN_BLOCK == 0);
const_assert!(MAX_SMALL.is_power_of_two() && MIN_BLOCK.is_power_of_two());
// A free block holds a 4-byte link word.
const_assert!(MIN_BLOCK >= 4);
// Block indices and counts fit the anchor's fields (see `chunk::Anchor`).
const_assert!(MAX_BLOCKS <= 1 << 12);
// Class ids (plus the two span markers) fit the anchor's 4-bit class field.
const_assert!(NCLASSES < 14);

/// A small size class: blocks of `16 << id` bytes.
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

    /// log2 of the block size.
    #[inline(always)]
    pub(crate) const fn shift(self) -> u32 {
        MIN_SHIFT + self.0 as u32
    }

    /// Block size in bytes.
    #[inline(always)]
    pub(crate) const fn size(self) -> usize {
        1 << self.shift()
    }

    /// Blocks per chunk.
    #[inline(always)]
    pub(crate) const fn capacity(self) -> u32 {
        (CHUNK >> self.shift()) as u32
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
    if need <= MAX_SMALL {
        // need > 16, so need - 1 >= 16 and the subtraction cannot underflow.
        let shift = usize::BITS - (need - 1).leading_zeros();
        return Some(Fit::Small(Class((shift - MIN_SHIFT) as u8)));
    }
    // Spans are chunk-aligned, which covers every align <= CHUNK.
    Some(Fit::Span(need.div_ceil(CHUNK)))
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
        assert_eq!(fit(2049, 8), Some(Fit::Span(1)));
        assert_eq!(fit(4097, 8), Some(Fit::Span(2)));
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
        for c in Class::all() {
            assert_eq!(fit(c.size(), c.size()), Some(Fit::Small(c)));
            assert!(c.capacity() >= 2);
        }
    }

    #[test]
    fn huge_sizes_do_not_overflow() {
        assert_eq!(fit(usize::MAX, 1), Some(Fit::Span(usize::MAX / CHUNK + 1)));
        assert_eq!(good_size(usize::MAX), None);
        assert_eq!(good_size(100), Some(128));
    }
}
