//! Model 6: the registry protocol, a claim racing two allocations that need the
//! claimed RAM.

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;
use sigalloc::{SigAlloc, CHUNK_SIZE};

use super::check;
use super::world::{Block, Seen, World};

/// Caller RAM for model 6, freed when dropped (after the allocator it was claimed into).
struct Ram(*mut [std::mem::MaybeUninit<u8>]);

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: from `Box::into_raw` in `claim_vs_alloc`, freed once, here; the
        // allocator that held it is dropped first (declared after the `Ram`).
        drop(unsafe { Box::from_raw(self.0) });
    }
}

/// Model 6's world: an allocator, and ownership cells over both its arena (the
/// `World`'s) and the RAM it claims (`base..`, every whole chunk of it).
struct Claiming<const N: usize> {
    w: World<N>,
    base: usize,
    cells: Vec<UnsafeCell<usize>>,
}

impl<const N: usize> Claiming<N> {
    /// The cells a block covers, in the arena or in the claimed RAM.
    fn cells(&self, b: &Block) -> &[UnsafeCell<usize>] {
        let a = b.ptr as usize;
        if a >= self.w.base() && a < self.w.base() + N {
            return self.w.cells(b);
        }
        let off = a - self.base;
        let g = self.w.granule;
        assert_eq!(off % g, 0, "block not on a granule");
        &self.cells[off / g..(off + b.size) / g]
    }

    /// Whether the block lies in the claimed RAM.
    fn in_region(&self, b: &Block) -> bool {
        b.ptr as usize >= self.base
            && (b.ptr as usize) < self.base + self.cells.len() * self.w.granule
    }

    /// [`World::try_alloc`] over both the arena and the claimed RAM. The model's tags
    /// are even: `malloc` only (claimed RAM is not zeroed).
    fn try_alloc(&self, size: usize, tag: usize) -> Option<Block> {
        self.w.try_alloc_in(size, tag, |b| self.cells(b))
    }

    /// Checks the block is still ours, then frees it.
    fn free(&self, b: Block) {
        self.w.free_in(b, |b| self.cells(b));
    }
}

/// Model 6: the registry protocol, a claim racing two allocations that need it.
///
/// The inline heap (8 KiB: one chunk beside its side table) is filled with two
/// 2048-byte blocks before the spawns. Then, at once:
/// - the main thread claims RAM of two whole chunks (side table and one chunk) starting
///   37 bytes before a chunk boundary: it writes the side table, reserves a registry
///   entry (CAS on the count) and publishes it (Release store of the base);
/// - thread B allocates 2048 bytes and thread C 1024 bytes. The inline heap is full, so
///   each gets the claimed chunk or null: its walk over the regions sees the entry or
///   not (Acquire load of the base). The first to get the chunk formats it and keeps it
///   in a slot under a chunk id of region 1; the other finds it in use, or (once the
///   first has freed its block) reclaims it from that slot and formats it for its own
///   class. Each frees what it got.
///
/// No block is handed out twice (the cells cover the arena and the claimed RAM), all
/// four outcomes (B or C with the chunk, B or C dry) happen, and after the join the
/// region serves exactly its two 2048-byte blocks, and the heap is whole again: one
/// chunk span in each region. (`validate` would take the execution past loom's default
/// 1000 branches.)
#[test]
fn claim_vs_alloc() {
    static FROM_REGION: Seen = Seen::new();
    static DRY: Seen = Seen::new();
    static C_GOT: Seen = Seen::new();
    static C_DRY: Seen = Seen::new();
    check("claim_vs_alloc", 0, || {
        // 37 bytes of unaligned head, two whole chunks, 5 bytes of cut tail.
        let len = 37 + 2 * CHUNK_SIZE + 5;
        let buf = Box::into_raw(
            vec![std::mem::MaybeUninit::uninit(); len + CHUNK_SIZE].into_boxed_slice(),
        );
        let ram = Ram(buf);
        let at = (buf.cast::<u8>().align_offset(CHUNK_SIZE) + CHUNK_SIZE - 37) % CHUNK_SIZE;
        let start = buf.cast::<u8>().wrapping_add(at);
        // SAFETY: `at + len` bytes lie inside the buffer (`len + CHUNK_SIZE` long), used
        // by nothing else; the allocator that takes them is dropped before `ram`.
        let region: &'static mut [std::mem::MaybeUninit<u8>] =
            unsafe { &mut *std::ptr::slice_from_raw_parts_mut(start.cast(), len) };
        let base = start as usize + 37;
        let w = Arc::new(Claiming::<{ 8 << 10 }> {
            w: World {
                a: SigAlloc::new(),
                cells: (0..(8 << 10) / 2048).map(|_| UnsafeCell::new(0)).collect(),
                granule: 2048,
            },
            base,
            cells: (0..2 * CHUNK_SIZE / 2048)
                .map(|_| UnsafeCell::new(0))
                .collect(),
        });
        let p1 = w.try_alloc(2048, 0x60).unwrap();
        let p2 = w.try_alloc(2048, 0x62).unwrap();
        assert!(!w.in_region(&p1) && !w.in_region(&p2));
        let ts: Vec<_> = [
            (2048, 0x64, &FROM_REGION, &DRY),
            (1024, 0x80, &C_GOT, &C_DRY),
        ]
        .into_iter()
        .map(|(size, tag, got_it, dry)| {
            let w2 = w.clone();
            thread::spawn(move || {
                if let Some(b) = w2.try_alloc(size, tag) {
                    // The inline heap is full: only the claimed RAM has room.
                    assert!(w2.in_region(&b), "{:?} is not in the claimed RAM", b.ptr);
                    got_it.hit();
                    w2.free(b);
                } else {
                    dry.hit();
                }
            })
        })
        .collect();
        assert_eq!(w.w.a.claim(region), Ok(CHUNK_SIZE));
        for t in ts {
            t.join().unwrap();
        }
        let s = w.w.a.stats();
        assert_eq!((s.regions, s.claimed_bytes), (1, CHUNK_SIZE));
        assert_eq!(s.heap_bytes, 2 * CHUNK_SIZE);
        // The inline heap is still full: the region serves, exactly its two blocks.
        let q1 = w.try_alloc(2048, 0x70).unwrap();
        let q2 = w.try_alloc(2048, 0x72).unwrap();
        assert!(w.in_region(&q1) && w.in_region(&q2));
        let s = w.w.a.stats();
        assert_eq!((s.chunks_free, s.bytes_in_use), (0, 4 * 2048));
        for b in [p1, p2, q1, q2] {
            w.free(b);
        }
        assert_eq!(w.w.a.stats().bytes_in_use, 0);
        // Whole again: a one-chunk span from each region.
        let r1 = w.try_alloc(CHUNK_SIZE, 0x76).unwrap();
        let r2 = w.try_alloc(CHUNK_SIZE, 0x78).unwrap();
        assert!(!w.in_region(&r1) && w.in_region(&r2));
        w.free(r1);
        w.free(r2);
        drop(w);
        drop(ram);
    });
    assert!(
        FROM_REGION.get() > 0,
        "thread B never got the claimed region"
    );
    assert!(DRY.get() > 0, "thread B always saw the claimed region");
    assert!(C_GOT.get() > 0, "thread C never got the claimed region");
    assert!(C_DRY.get() > 0, "thread C always got the claimed region");
}
