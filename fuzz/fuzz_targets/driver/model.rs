//! The reference model: the live blocks, the heap's geometry, and what the allocator
//! must answer (`expected_usable`, `Model::must_hold`).

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;

use sigalloc::{SigAlloc, CHUNK_SIZE, MAX_ALIGN};

/// Active slots per class and small classes (see `src/heap.rs` / `src/class.rs`).
const SLOTS: usize = 4;
/// Chunks one slot of every class can hold at once: a chunk per power-of-two class,
/// a slab per mid-size class.
const SLOT_CHUNKS: usize = 8 + 5 + 3 + 7 + 5;
const MIN_BLOCK: usize = 16;
/// The largest power-of-two class.
const MAX_POW2: usize = 2048;
/// The mid-size classes: block size, alignment, chunks per slab (see `src/class.rs`).
const MID: [(usize, usize, usize); 4] = [
    (2560, 512, 5),
    (3072, 1024, 3),
    (3584, 512, 7),
    (5120, 1024, 5),
];

/// The mid-size class of a block of `usable` bytes: its alignment and slab chunks.
fn mid_class(usable: usize) -> Option<(usize, usize)> {
    MID.iter()
        .find(|c| c.0 == usable)
        .map(|&(_, align, chunks)| (align, chunks))
}

/// What the allocator must hand out for `size` bytes at `align`: the usable size of
/// the block (class size or whole chunks), or `None` if no heap of this design could
/// (alignment above the maximum, or the span's byte count overflows).
pub fn expected_usable(size: usize, align: usize) -> Option<usize> {
    if align > MAX_ALIGN {
        return None;
    }
    if align > CHUNK_SIZE {
        // A span at an aligned chunk, as long as the size needs.
        return size.max(1).div_ceil(CHUNK_SIZE).checked_mul(CHUNK_SIZE);
    }
    let need = size.max(align);
    let span = need.div_ceil(CHUNK_SIZE).saturating_mul(CHUNK_SIZE);
    let mid = MID
        .iter()
        .find(|&&(block, a, _)| need <= block && align <= a && block < span);
    if need <= MIN_BLOCK {
        Some(MIN_BLOCK)
    } else if need <= MAX_POW2 {
        Some(need.next_power_of_two())
    } else if let Some(&(block, _, _)) = mid {
        Some(block)
    } else {
        // (A zero-chunk span cannot be asked for: GlobalAlloc sizes are non-zero.)
        size.div_ceil(CHUNK_SIZE)
            .checked_mul(CHUNK_SIZE)
            .filter(|&n| n > 0)
    }
}

/// One live block as the model sees it.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    /// The pointer itself (never rebuilt from an integer).
    pub ptr: *mut u8,
    /// Requested size (the layout size for `GlobalAlloc` calls).
    pub size: usize,
    /// Requested alignment (16 for the C-style calls).
    pub align: usize,
    /// What `usable_size` must say.
    pub usable: usize,
    /// The byte its whole usable area is filled with.
    pub fill: u8,
}

impl Block {
    pub fn layout(&self) -> Layout {
        // The layout was valid when the block was requested.
        Layout::from_size_align(self.size.max(1), self.align).expect("valid layout")
    }
}

/// The live blocks and the heap's geometry.
pub struct Model {
    pub(super) live: BTreeMap<usize, Block>,
    /// Address of chunk 0 (the arena is the first field of `SigAlloc`, chunk-aligned).
    base: usize,
    /// First allocatable chunk (the side table takes `0..first`).
    pub(super) first: usize,
    /// One past the last chunk.
    end: usize,
    fills: u8,
}

/// Panics unless the `n` bytes at `p` all read `fill`.
pub fn check_fill(p: *const u8, n: usize, fill: u8, what: &str) {
    // SAFETY: callers pass a live block (or its prefix) of at least `n` bytes.
    let s = unsafe { std::slice::from_raw_parts(p, n) };
    // Compared a page at a time against a pattern (one memcmp each, instead of a
    // coverage-traced compare per byte); the byte-wise scan runs only on a mismatch.
    let pattern = [fill; 4096];
    if s.chunks(pattern.len()).all(|c| c == &pattern[..c.len()]) {
        return;
    }
    if let Some(i) = s.iter().position(|&b| b != fill) {
        panic!(
            "{what}: block {p:p}+{n}: byte {i} is {:#x}, expected {fill:#x}",
            s[i]
        );
    }
}

impl Model {
    pub fn new<const H: usize>(a: &SigAlloc<H>) -> Model {
        let base = std::ptr::from_ref(a).addr();
        assert_eq!(base % CHUNK_SIZE, 0, "the arena is chunk-aligned");
        let end = H / CHUNK_SIZE;
        let total = a.stats().chunks_total;
        assert!(total >= 1 && total <= end);
        Model {
            live: BTreeMap::new(),
            base,
            first: end - total,
            end,
            fills: 0,
        }
    }

    pub fn heap_bytes(&self) -> usize {
        (self.end - self.first) * CHUNK_SIZE
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn live_bytes(&self) -> usize {
        self.live.values().map(|b| b.usable).sum()
    }

    fn next_fill(&mut self) -> u8 {
        self.fills = self.fills.wrapping_add(1);
        if self.fills == 0 {
            self.fills = 1;
        }
        self.fills
    }

    /// The block at `i % len`.
    pub fn nth(&self, i: usize) -> Option<Block> {
        if self.live.is_empty() {
            return None;
        }
        self.live.values().nth(i % self.live.len()).copied()
    }

    /// The live block containing address `a` (start or interior), if any.
    #[cfg(feature = "checked")]
    pub fn containing(&self, a: usize) -> Option<Block> {
        let (&start, b) = self.live.range(..=a).next_back()?;
        (a < start + b.usable).then_some(*b)
    }

    /// Records a new block after checking it: inside the heap's allocatable chunks,
    /// aligned, the expected usable size, overlapping nothing live, zero if asked.
    /// Then fills its whole usable area.
    pub fn on_alloc<const H: usize>(
        &mut self,
        a: &SigAlloc<H>,
        p: *mut u8,
        size: usize,
        align: usize,
        zeroed: bool,
    ) {
        assert!(!p.is_null());
        let addr = p.addr();
        assert_eq!(addr % align, 0, "{p:p} is not aligned to {align}");
        let usable = expected_usable(size, align).expect("a served request");
        assert_eq!(
            a.usable_size(p),
            usable,
            "usable_size of {p:p} for {size} B at {align}"
        );
        assert!(a.owns(p));
        let lo = self.base + self.first * CHUNK_SIZE;
        let hi = self.base + self.end * CHUNK_SIZE;
        assert!(
            addr >= lo && addr + usable <= hi,
            "{p:p}+{usable} outside the heap"
        );
        if let Some((&b, l)) = self.live.range(..addr + usable).next_back() {
            assert!(
                b + l.usable <= addr,
                "block {p:p}+{usable} overlaps live {:p}+{}",
                l.ptr,
                l.usable
            );
        }
        if zeroed {
            check_fill(p, size, 0, "zeroed");
        }
        let fill = self.next_fill();
        // SAFETY: the block is ours and `usable_size` bytes long.
        unsafe { p.write_bytes(fill, usable) };
        self.live.insert(
            addr,
            Block {
                ptr: p,
                size,
                align,
                usable,
                fill,
            },
        );
    }

    /// Checks a block's contents and forgets it.
    pub fn on_free(&mut self, p: *mut u8) -> Block {
        let b = self
            .live
            .remove(&p.addr())
            .expect("freeing a block the model does not know");
        check_fill(p, b.usable, b.fill, "on free");
        b
    }

    /// Which chunks hold a live block (span chunks included), or belong to a slab
    /// that does: a mid-size block's place in its slab follows from its offset in its
    /// chunk (block `k` of a slab starts at `k * size`, and no two blocks of a slab
    /// share an offset modulo a chunk), so its slab's first chunk is known.
    fn occupied(&self) -> Vec<bool> {
        let mut occ = vec![false; self.end];
        for (&addr, b) in &self.live {
            let (start, bytes) = match mid_class(b.usable) {
                Some((_, chunks)) => {
                    let k = (0..chunks * CHUNK_SIZE / b.usable)
                        .find(|k| (k * b.usable) % CHUNK_SIZE == (addr - self.base) % CHUNK_SIZE)
                        .expect("a mid-size block at a block's offset");
                    (addr - k * b.usable, chunks * CHUNK_SIZE)
                }
                None => (addr, b.usable),
            };
            let c0 = (start - self.base) / CHUNK_SIZE;
            let c1 = (start - self.base + bytes - 1) / CHUNK_SIZE;
            for o in &mut occ[c0..=c1] {
                *o = true;
            }
        }
        occ
    }

    /// Whether a request that would be served with `usable` bytes MUST succeed now.
    ///
    /// The bound, from `src/heap.rs` (single-threaded, so no operation is in flight):
    /// - a chunk is free, formatted for one class, or part of a span;
    /// - a class chunk whose blocks are all free is retired to the free map at once,
    ///   unless it sits in one of the class's `SLOTS` active slots (a push to an
    ///   `ACTIVE` chunk never retires it; a `PARTIAL` push that frees its last block
    ///   does; a released chunk with every block free is retired);
    /// - when no chunk run is free, `claim_chunks_slow` empties every slot of every
    ///   class (`reclaim_slots`), which retires the idle slot chunks, and tries again.
    ///
    /// So after the reclaim, every chunk that holds no live block is free. A small
    /// request either finds a free block in its class or claims one chunk, so it must
    /// succeed if some allocatable chunk holds no live block. A span of `n` chunks must
    /// succeed if `n` consecutive allocatable chunks hold no live block (the run claim
    /// scans the whole map; if the run contains an idle slot chunk, the reclaim retires
    /// it and the second scan finds the run). The model knows every live block's
    /// address and usable size, so it knows exactly which chunks hold one. Free blocks
    /// in partially used chunks are ignored: the bound is conservative, never wrong.
    pub fn must_hold(&self, usable: usize) -> bool {
        let occ = self.occupied();
        let need = match mid_class(usable) {
            Some((_, chunks)) => chunks,
            None if usable <= MAX_POW2 => 1,
            None => usable / CHUNK_SIZE,
        };
        let mut run = 0;
        for &o in &occ[self.first..self.end] {
            run = if o { 0 } else { run + 1 };
            if run >= need {
                return true;
            }
        }
        false
    }

    /// Frees everything left (checking contents) and checks the heap is empty.
    pub fn drain<const H: usize>(&mut self, a: &SigAlloc<H>) {
        let blocks: Vec<Block> = std::mem::take(&mut self.live).into_values().collect();
        for (i, b) in blocks.into_iter().enumerate() {
            check_fill(b.ptr, b.usable, b.fill, "drain");
            if i % 2 == 0 {
                // SAFETY: the block is live and forgotten by the model.
                unsafe { a.free(b.ptr) };
            } else {
                // SAFETY: as above, with the layout it was allocated with.
                unsafe { a.dealloc(b.ptr, b.layout()) };
            }
        }
        let s = a.stats();
        assert_eq!(s.bytes_in_use, 0, "heap not empty after freeing all:\n{s}");
        assert_eq!(s.spans, 0, "{s}");
        // Blocks parked in per-CPU caches (feature `percpu`) keep their chunks in use:
        // give them back first (nothing to do without the feature).
        let cached = s.cached_bytes;
        a.drain_percpu();
        let s = a.stats();
        assert_eq!(s.cached_bytes, 0, "{cached} bytes cached before the drain:\n{s}");
        // Only idle chunks parked in active slots may stay in use.
        assert!(
            s.chunks_used <= SLOTS * SLOT_CHUNKS,
            "{} chunks still in use with nothing live:\n{s}",
            s.chunks_used
        );
    }
}
