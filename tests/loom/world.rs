//! The models' world: an allocator, the ownership shadow of its arena (one loom
//! `UnsafeCell` per granule, holding the owner's tag) and the blocks handed out.

use std::sync::atomic::{AtomicUsize, Ordering};

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use sigalloc::{SigAlloc, CHUNK_SIZE, MAX_SMALL};

use super::common::pattern;

/// The bytes a request of `size` gets: a power-of-two class of at least 16 bytes, a
/// mid-size class (2.5, 3, 3.5 or 5 KiB), or whole chunks.
pub(crate) fn block_size(size: usize) -> usize {
    let chunks = size.div_ceil(CHUNK_SIZE) * CHUNK_SIZE;
    if size <= 2048 {
        size.max(16).next_power_of_two()
    } else if size <= MAX_SMALL {
        [2560, 3072, 3584, 5120]
            .into_iter()
            .find(|&c| c >= size)
            .map_or(chunks, |c| c.min(chunks))
    } else {
        chunks
    }
}

/// A block handed out to a model thread.
pub(crate) struct Block {
    pub(crate) ptr: *mut u8,
    pub(crate) size: usize,
    pub(crate) tag: usize,
}

// SAFETY: a block is memory the allocator handed to one owner; moving the handle to
// another thread moves that ownership (the spawn or join orders the accesses).
unsafe impl Send for Block {}

/// One allocator and the ownership shadow of its arena.
pub(crate) struct World<const N: usize> {
    pub(crate) a: SigAlloc<N>,
    /// One cell per `granule` bytes of the arena: 0 when free, else the owner's tag.
    pub(crate) cells: Vec<UnsafeCell<usize>>,
    pub(crate) granule: usize,
}

impl<const N: usize> World<N> {
    /// A fresh heap, shadowed at `granule` bytes (the smallest block the model uses).
    pub(crate) fn new(granule: usize) -> Arc<Self> {
        Arc::new(World {
            a: SigAlloc::new(),
            cells: (0..N / granule).map(|_| UnsafeCell::new(0)).collect(),
            granule,
        })
    }

    /// The arena's first byte: `SigAlloc` is `repr(C)` with its arena first.
    pub(crate) fn base(&self) -> usize {
        std::ptr::addr_of!(self.a) as usize
    }

    /// The cells of the arena that a block covers.
    pub(crate) fn cells(&self, b: &Block) -> &[UnsafeCell<usize>] {
        let off = b.ptr as usize - self.base();
        assert_eq!(off % self.granule, 0, "block not on a granule");
        &self.cells[off / self.granule..(off + b.size) / self.granule]
    }

    /// Allocates `size` bytes for `tag` (non-zero), recording the owner. Odd tags use
    /// `calloc`, whose block must read all zero: a block wrongly believed clean (the
    /// dirty mark lost between owners) fails here. `None` when the heap had no room.
    pub(crate) fn try_alloc(&self, size: usize, tag: usize) -> Option<Block> {
        self.try_alloc_in(size, tag, |b| self.cells(b))
    }

    /// [`World::try_alloc`], with the ownership cells a block covers found by `cells`
    /// (a model that shadows more than the arena passes its own).
    pub(crate) fn try_alloc_in<'s>(
        &'s self,
        size: usize,
        tag: usize,
        cells: impl Fn(&Block) -> &'s [UnsafeCell<usize>],
    ) -> Option<Block> {
        let zeroed = tag % 2 == 1;
        let ptr = if zeroed {
            self.a.calloc(1, size)
        } else {
            self.a.malloc(size)
        };
        if ptr.is_null() {
            return None;
        }
        let b = Block {
            ptr,
            size: block_size(size),
            tag,
        };
        assert!(self.a.owns(ptr), "{ptr:?} is outside the heap");
        // A block is aligned to the largest power of two dividing its size (a chunk at
        // most): its class's alignment.
        assert_eq!(
            ptr as usize % (b.size & b.size.wrapping_neg()).min(CHUNK_SIZE),
            0,
            "{ptr:?} is misaligned"
        );
        for c in cells(&b) {
            c.with_mut(|v| {
                // SAFETY: loom checks this access does not race another (it panics
                // otherwise); the pointer is the cell's own.
                let v = unsafe { &mut *v };
                assert_eq!(*v, 0, "block {ptr:?} handed out to {tag:#x} while owned");
                *v = tag;
            });
        }
        if zeroed {
            // SAFETY: the block is ours (I1, which the cells above check), `size` bytes
            // long; any initialised bytes may be read as `u8`.
            let bytes = unsafe { std::slice::from_raw_parts(ptr, size) };
            assert!(
                pattern::all_bytes(bytes, 0),
                "calloc({size}) gave {tag:#x} a dirty block {ptr:?}"
            );
        }
        // SAFETY: the block is ours (I1, which the cells above check), at least 16 bytes
        // and 16-aligned.
        unsafe { ptr.cast::<usize>().write(tag) };
        Some(b)
    }

    /// Allocates `size` bytes for `tag`, which must succeed.
    pub(crate) fn alloc(&self, size: usize, tag: usize) -> Block {
        self.try_alloc(size, tag)
            .unwrap_or_else(|| panic!("malloc({size}) failed for {tag:#x}"))
    }

    /// Checks the block is still ours, then frees it.
    pub(crate) fn free(&self, b: Block) {
        self.free_in(b, |b| self.cells(b));
    }

    /// [`World::free`], with the cells found by `cells` (see [`World::try_alloc_in`]).
    pub(crate) fn free_in<'s>(
        &'s self,
        b: Block,
        cells: impl Fn(&Block) -> &'s [UnsafeCell<usize>],
    ) {
        // SAFETY: we own the block (handed out by `try_alloc_in`, not yet freed).
        let seen = unsafe { b.ptr.cast::<usize>().read() };
        assert_eq!(seen, b.tag, "block {:?} overwritten while live", b.ptr);
        for c in cells(&b) {
            c.with_mut(|v| {
                // SAFETY: as in `try_alloc_in`.
                let v = unsafe { &mut *v };
                assert_eq!(*v, b.tag, "block {:?} freed by a non-owner", b.ptr);
                *v = 0;
            });
        }
        // SAFETY: a live block of this allocator, not used after this call.
        unsafe { self.a.free(b.ptr) };
    }

    /// After every thread is joined and every block freed: nothing is in use, and the
    /// whole heap comes back as one span (every chunk was returned).
    pub(crate) fn check_whole(&self) {
        let s = self.a.stats();
        assert_eq!(s.bytes_in_use, 0, "bytes still in use: {s:?}");
        let all = self.alloc(s.heap_bytes, 0xA11);
        self.free(all);
        assert_eq!(self.a.stats().bytes_in_use, 0);
    }
}

/// Where a block lies: its chunk's index in the arena.
pub(crate) fn chunk_of<const N: usize>(w: &World<N>, b: &Block) -> usize {
    (b.ptr as usize - w.base()) / CHUNK_SIZE
}

/// Counts interleavings in which a path of interest was taken, so a model can show it
/// reached the race it is about (the counter outlives the executions).
pub(crate) struct Seen(AtomicUsize);

impl Seen {
    pub(crate) const fn new() -> Self {
        Seen(AtomicUsize::new(0))
    }
    pub(crate) fn hit(&self) {
        // ORDERING: Relaxed: a counter read after `check` returns.
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> usize {
        // ORDERING: Relaxed, as above.
        self.0.load(Ordering::Relaxed)
    }
}
