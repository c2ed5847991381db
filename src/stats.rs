//! Statistics: a plain snapshot, for humans (`Display`) and machines (`json()`).
//!
//! The snapshot is computed by walking the side tables, so the allocation paths keep no
//! shared counters that every thread would fight over. It is exact when no thread is
//! inside the allocator, approximate while they are.
//!
//! Depends on: nothing in the crate (`lib.rs` fills it in). A leaf.

use core::fmt;

/// Number of small size classes reported in [`Stats::classes`]: the eight powers of two
/// 16..2048 B, then the mid-size classes 2560, 3072, 3584 and 5120 B.
pub const CLASS_COUNT: usize = 12;

/// One size class in a [`Stats`] snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Block size of the class in bytes.
    pub block_size: usize,
    /// Chunks currently serving this class (a mid-size class's slabs count each of
    /// their chunks).
    pub chunks: usize,
    /// Blocks handed out and not yet freed.
    pub blocks_in_use: usize,
    /// Free blocks inside this class's chunks.
    pub blocks_free: usize,
    /// Free blocks parked in the per-CPU caches (feature `percpu`; not counted in
    /// `blocks_in_use` nor in `blocks_free`).
    pub blocks_cached: usize,
}

/// A snapshot of the allocator's state, from [`SigAlloc::stats`](crate::SigAlloc::stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of chunks that can serve allocations (the heap less its side table).
    pub heap_bytes: usize,
    /// Bytes handed out and not yet freed, counted at block (or span) size.
    pub bytes_in_use: usize,
    /// The most bytes ever committed to classes and spans at once (chunk granularity).
    pub peak_bytes: usize,
    /// Chunks of the heap.
    pub chunks_total: usize,
    /// Chunks free for any class or span.
    pub chunks_free: usize,
    /// Chunks serving a class or part of a span.
    pub chunks_used: usize,
    /// Live spans (requests larger than the largest class).
    pub spans: usize,
    /// Chunks held by live spans.
    pub span_chunks: usize,
    /// Per class, smallest first.
    pub classes: [ClassStats; CLASS_COUNT],
    /// Regions besides the inline heap (claimed and mapped).
    pub regions: usize,
    /// Allocatable bytes of claimed regions (included in `heap_bytes`).
    pub claimed_bytes: usize,
    /// Regions mapped from the OS to grow the heap (feature `mmap`).
    pub mapped_regions: usize,
    /// Bytes of those regions, side tables included.
    pub mapped_bytes: usize,
    /// Live huge blocks, each in a mapping of its own (feature `mmap`).
    pub huge_mappings: usize,
    /// Bytes of those mappings (header pages included; counted in `bytes_in_use`).
    pub huge_bytes: usize,
    /// Bytes of free chunks given back to the OS so far (feature `mmap`).
    pub released_bytes: usize,
    /// Bytes of free blocks parked in the per-CPU caches (feature `percpu`; not counted
    /// in `bytes_in_use`). `SigAlloc::trim` gives them back to their chunks.
    pub cached_bytes: usize,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "heap {} KiB: {} KiB in use, peak {} KiB; chunks {} used / {} free / {} total; {} spans ({} chunks)",
            self.heap_bytes / 1024,
            self.bytes_in_use / 1024,
            self.peak_bytes / 1024,
            self.chunks_used,
            self.chunks_free,
            self.chunks_total,
            self.spans,
            self.span_chunks
        )?;
        if self.cached_bytes > 0 {
            writeln!(
                f,
                "  {} KiB parked in per-CPU caches",
                self.cached_bytes / 1024
            )?;
        }
        if self.regions > 0 || self.huge_mappings > 0 || self.released_bytes > 0 {
            writeln!(
                f,
                "  regions {} ({} mapped, {} KiB; {} KiB claimed); huge {} ({} KiB); released {} KiB",
                self.regions,
                self.mapped_regions,
                self.mapped_bytes / 1024,
                self.claimed_bytes / 1024,
                self.huge_mappings,
                self.huge_bytes / 1024,
                self.released_bytes / 1024
            )?;
        }
        for c in self.classes.iter().filter(|c| c.chunks > 0) {
            writeln!(
                f,
                "  {:>5} B: {:>4} chunks, {:>7} blocks in use, {:>7} free, {:>5} cached",
                c.block_size, c.chunks, c.blocks_in_use, c.blocks_free, c.blocks_cached
            )?;
        }
        Ok(())
    }
}

/// The JSON form of a [`Stats`], from [`Stats::json`].
pub struct Json<'a>(&'a Stats);

impl Stats {
    /// The snapshot as one JSON object (no allocation: it formats as it writes).
    pub fn json(&self) -> Json<'_> {
        Json(self)
    }
}

impl fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        write!(
            f,
            "{{\"heap_bytes\":{},\"bytes_in_use\":{},\"peak_bytes\":{},\"chunks_total\":{},\"chunks_free\":{},\"chunks_used\":{},\"spans\":{},\"span_chunks\":{},",
            s.heap_bytes, s.bytes_in_use, s.peak_bytes, s.chunks_total, s.chunks_free, s.chunks_used, s.spans, s.span_chunks
        )?;
        write!(
            f,
            "\"regions\":{},\"claimed_bytes\":{},\"mapped_regions\":{},\"mapped_bytes\":{},\"huge_mappings\":{},\"huge_bytes\":{},\"released_bytes\":{},\"cached_bytes\":{},\"classes\":[",
            s.regions, s.claimed_bytes, s.mapped_regions, s.mapped_bytes, s.huge_mappings, s.huge_bytes, s.released_bytes, s.cached_bytes
        )?;
        for (i, c) in s.classes.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(
                f,
                "{sep}{{\"block_size\":{},\"chunks\":{},\"blocks_in_use\":{},\"blocks_free\":{},\"blocks_cached\":{}}}",
                c.block_size, c.chunks, c.blocks_in_use, c.blocks_free, c.blocks_cached
            )?;
        }
        write!(f, "]}}")
    }
}
