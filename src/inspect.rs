//! Looking at the whole heap: the statistics walk and the invariant checker.
//!
//! Both walk every chunk of every region through the side tables, so the allocation
//! paths keep no shared counters for them. Both are exact only while no thread is
//! inside the allocator; `stats` is approximate while they are, `validate` meaningless.
//!
//! Depends on: `sync`, `class`, `chunk`, `region`, `block`, `heap`, `source`, `stats`.

use crate::block::{Block, Memory, Place};
use crate::chunk::{ACTIVE, PARTIAL, SPAN_CLASS, SPAN_TAIL_CLASS};
use crate::class::{Class, CHUNK};
use crate::heap::{heap_bytes, Heap};
use crate::region::{Region, LISTS};
use crate::source::Source;
use crate::stats::Stats;
use crate::sync::Ordering;

/// A snapshot of the heap (see `SigAlloc::stats`).
pub(crate) fn stats(heap: &Heap, mem: &Memory) -> Stats {
    let mut s = Stats {
        peak_bytes: heap.peak_chunks() * CHUNK,
        ..Stats::default()
    };
    for (class, out) in Class::all().zip(s.classes.iter_mut()) {
        out.block_size = class.size();
    }
    for region in mem.regions.all() {
        let bytes = heap_bytes(&region);
        s.heap_bytes += bytes;
        s.chunks_total += region.end() - region.first();
        s.chunks_used += region.used().count(region.first(), region.end());
        if region.id() != 0 {
            s.regions += 1;
            if region.mapped() {
                s.mapped_regions += 1;
            } else {
                s.claimed_bytes += bytes;
            }
        }
        for chunk in region.first()..region.end() {
            let Some(d) = region.desc(chunk) else {
                continue;
            };
            let at = Place {
                region,
                chunk,
                offset: 0,
            };
            match Block::at(at) {
                Block::Small { class, .. } => {
                    let free = d.free_blocks(class) as usize;
                    let in_use = class.capacity() as usize - free;
                    if let Some(out) = s.classes.get_mut(class.id()) {
                        out.chunks += class.chunks();
                        out.blocks_free += free;
                        out.blocks_in_use += in_use;
                    }
                    s.bytes_in_use += in_use * class.size();
                }
                Block::Span { chunks, .. } => {
                    s.spans += 1;
                    s.span_chunks += chunks;
                    s.bytes_in_use += chunks * CHUNK;
                }
                _ => {}
            }
        }
    }
    // Blocks parked in the per-CPU caches are live to their chunks, free to the user.
    for ((class, out), cached) in Class::all()
        .zip(s.classes.iter_mut())
        .zip(heap.cache().cached())
    {
        let cached = cached.min(out.blocks_in_use);
        out.blocks_in_use -= cached;
        out.blocks_cached = cached;
        s.bytes_in_use -= cached * class.size();
        s.cached_bytes += cached * class.size();
    }
    s.chunks_free = s.chunks_total - s.chunks_used.min(s.chunks_total);
    let counts = mem.source.counts();
    s.mapped_bytes = counts.mapped_bytes;
    s.huge_mappings = counts.huge_live;
    s.huge_bytes = counts.huge_bytes;
    s.released_bytes = counts.released;
    s.bytes_in_use += counts.huge_bytes;
    s
}

/// Checks every chunk of every region at quiescence (see `SigAlloc::validate`): each
/// chunk in one state, in at most one slot, its free lists well formed (I1).
pub(crate) fn validate(heap: &Heap, mem: &Memory) -> Result<(), &'static str> {
    for region in mem.regions.all() {
        validate_region(heap, &region)?;
    }
    Ok(())
}

fn validate_region(heap: &Heap, region: &Region) -> Result<(), &'static str> {
    let used = region.used();
    for chunk in region.first()..region.end() {
        let d = region.desc(chunk).ok_or("no descriptor")?;
        let a = d.anchor(Ordering::Relaxed);
        let slots = heap.slots_holding(region.chunk_id(chunk));
        if slots > 1 {
            return Err("a chunk sits in two slots");
        }
        match a.small_class() {
            Some(class) => {
                if !used.get(chunk) {
                    return Err("a chunk serving a class is marked free");
                }
                let listed = (0..LISTS).any(|list| region.partial(class, list).get(chunk));
                if a.state() == PARTIAL && !listed {
                    return Err("a PARTIAL chunk is not listed");
                }
                d.validate(region.chunk_base(chunk), class, slots == 1)?;
            }
            None if slots > 0 => return Err("a free or span chunk sits in a slot"),
            None => {
                // A span tail is used or free with its span; anything else is used
                // exactly when it heads a live span or is a live slab's tail.
                let live_span = a.state() == ACTIVE && a.class() == SPAN_CLASS;
                let live_tail = a.live_tail();
                if a.class() != SPAN_TAIL_CLASS
                    && (live_span || live_tail.is_some()) != used.get(chunk)
                {
                    return Err("a free chunk is marked used, or a span or slab chunk free");
                }
                if let Some(back) = live_tail {
                    // A live tail's slab is live, of a class that long.
                    let head = chunk.checked_sub(back).and_then(|h| region.desc(h));
                    let class = head.and_then(|h| h.anchor(Ordering::Relaxed).small_class());
                    if !class.is_some_and(|c| c.chunks() > back && back > 0) {
                        return Err("a slab tail whose slab is not live");
                    }
                }
            }
        }
    }
    Ok(())
}
