//! Eight threads share one heap: random sizes and alignments, C-style and `GlobalAlloc`
//! calls mixed, a third of the blocks freed by a thread other than the one that
//! allocated them, every block filled with its own pattern and checked before it goes.
//!
//! What this proves: I1 under contention (no block is handed out twice: an owner map
//! catches a second owner the moment it gets the bytes, and the patterns catch any
//! stray write), out of memory is a null the caller survives, alignment of every
//! pointer, `realloc`
//! keeps contents, cross-thread frees land in the right chunk, and when everything is
//! freed the heap is whole again: nothing in use, and every chunk reusable by any class.

// A test binary, not the crate: the atomics here are the test's own bookkeeping, which
// `clippy.toml` (aimed at `src/`, where loom must see every atomic) does not concern.
#![allow(clippy::disallowed_types)]

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;

use common::{mix, pattern, serial, watchdog, Rng, MINUTE};
use sigalloc::SigAlloc;

static A: SigAlloc<{ 16 << 20 }> = SigAlloc::new();

/// Owner of each 16-byte granule of `A` (its heap lies inside it): 0, or the tag + 1 of
/// the live block covering it. Two live blocks that overlap are caught the moment the
/// second is handed out, before either is written.
const GRANULE: usize = 16;
const GRANULES: usize = std::mem::size_of::<SigAlloc<{ 16 << 20 }>>().div_ceil(GRANULE);
static OWNER: [AtomicU64; GRANULES] = [const { AtomicU64::new(0) }; GRANULES];

const THREADS: usize = 8;
const MIN_SIZE: usize = 16;
const MAX_SIZE: usize = 8 << 10;
const MAX_ALIGN_SHIFT: u32 = 12;
/// Per-thread cap on live blocks: 8 x 1024 blocks (about 1.5 KiB each on average) come
/// close enough to the 16 MiB heap that release runs reach the out-of-memory path.
const MAX_LIVE: usize = 1024;

fn ops_per_thread() -> usize {
    if cfg!(miri) {
        40
    } else if cfg!(debug_assertions) {
        40_000
    } else {
        200_000
    }
}

/// A request size: three in four up to 512 bytes (many blocks share each chunk, the
/// contended case), the rest up to `MAX_SIZE` (large classes and spans).
fn random_size(rng: &mut Rng) -> usize {
    let max = if rng.below(4) == 0 { MAX_SIZE } else { 512 };
    MIN_SIZE + rng.below(max - MIN_SIZE + 1)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// `A.malloc` / `A.realloc` / `A.free`.
    Malloc,
    /// `GlobalAlloc::alloc` / `realloc` / `dealloc` with `align`.
    Global,
}

/// A live block and what it must contain.
#[derive(Debug)]
struct Block {
    ptr: *mut u8,
    size: usize,
    /// `usable_size` when handed out: the bytes it owns in [`OWNER`].
    usable: usize,
    align: usize,
    via: Via,
    /// `(thread << 32) | seq`: unique per allocation.
    tag: u64,
}

// SAFETY: a `Block` is the sole handle to its memory; moving it to another thread moves
// that ownership, and the allocator allows any thread to free any block.
unsafe impl Send for Block {}

impl Block {
    /// The block's granules in [`OWNER`].
    fn granules(&self) -> &'static [AtomicU64] {
        let off = self.ptr.addr() - std::ptr::addr_of!(A).addr();
        &OWNER[off / GRANULE..(off + self.usable).div_ceil(GRANULE)]
    }

    /// Records the block as the owner of its bytes; panics if another live block owns
    /// any of them (I1 broken).
    fn claim(&self) {
        if cfg!(miri) {
            // Interpreted, the map's thousands of atomic locations take many minutes;
            // the patterns still catch overlap, and miri checks every access itself.
            return;
        }
        for (i, g) in self.granules().iter().enumerate() {
            // ORDERING: Relaxed: the allocator's own hand-over orders the previous
            // owner's release before this claim; a stale tag is an allocator bug.
            if let Err(other) =
                g.compare_exchange(0, self.tag + 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                panic!(
                    "block {:p}+{} (tag {:#x}) handed out while live block {:#x} owns its byte {}",
                    self.ptr,
                    self.usable,
                    self.tag,
                    other - 1,
                    i * GRANULE
                );
            }
        }
    }

    /// Gives the block's bytes up, before the allocator gets them back.
    fn release(&self) {
        if cfg!(miri) {
            return;
        }
        for g in self.granules() {
            // ORDERING: Relaxed, as in `claim`.
            let was = g.swap(0, Ordering::Relaxed);
            assert_eq!(
                was,
                self.tag + 1,
                "block {:p} lost ownership of its bytes",
                self.ptr
            );
        }
    }

    /// Writes the block's pattern (seeded by its tag) over bytes `from..size`.
    fn fill_from(&self, from: usize) {
        pattern::fill_from(self.ptr, from, self.size, self.tag);
    }

    /// Whether the first `len` bytes hold the pattern.
    fn holds_pattern(&self, len: usize) -> bool {
        pattern::holds(self.ptr, len, self.tag)
    }
}

/// Totals over all threads of one run.
#[derive(Default)]
struct Totals {
    allocated: AtomicUsize,
    verified: AtomicUsize,
    corrupt: AtomicUsize,
    misaligned: AtomicUsize,
    cross_frees: AtomicUsize,
    reallocs: AtomicUsize,
    out_of_memory: AtomicUsize,
}

fn alloc_block(rng: &mut Rng, tag: u64, t: &Totals) -> Option<Block> {
    let size = random_size(rng);
    let (via, align) = if rng.below(2) == 0 {
        (Via::Malloc, 16)
    } else {
        (Via::Global, 1 << rng.below(MAX_ALIGN_SHIFT as usize + 1))
    };
    let ptr = match via {
        Via::Malloc => A.malloc(size),
        Via::Global => {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: `layout` has a non-zero size.
            unsafe { GlobalAlloc::alloc(&A, layout) }
        }
    };
    if ptr.is_null() {
        return None;
    }
    assert!(A.owns(ptr), "{ptr:p} is not in the heap");
    let usable = A.usable_size(ptr);
    if ptr.addr() % align != 0 || usable < size {
        t.misaligned.fetch_add(1, Ordering::Relaxed);
    }
    let b = Block {
        ptr,
        size,
        usable: usable.max(size),
        align,
        via,
        tag,
    };
    b.claim();
    b.fill_from(0);
    t.allocated.fetch_add(1, Ordering::Relaxed);
    Some(b)
}

/// Checks the block's pattern and frees it.
fn verify_and_free(b: Block, t: &Totals) {
    if b.holds_pattern(b.size) {
        t.verified.fetch_add(1, Ordering::Relaxed);
    } else {
        t.corrupt.fetch_add(1, Ordering::Relaxed);
    }
    b.release();
    match b.via {
        // SAFETY: a live block from `A.malloc`/`A.realloc`, freed once.
        Via::Malloc => unsafe { A.free(b.ptr) },
        Via::Global => {
            let layout = Layout::from_size_align(b.size, b.align).unwrap();
            // SAFETY: a live block from `A.alloc`/`A.realloc` with this layout.
            unsafe { GlobalAlloc::dealloc(&A, b.ptr, layout) }
        }
    }
}

/// Resizes a live block; on success checks the kept prefix and extends the pattern.
fn resize(b: &mut Block, rng: &mut Rng, t: &Totals) {
    let new_size = random_size(rng);
    // The block may move and its old bytes go to others: give them up first.
    b.release();
    let new = match b.via {
        // SAFETY: a live block from `A.malloc`/`A.realloc`.
        Via::Malloc => unsafe { A.realloc(b.ptr, new_size) },
        Via::Global => {
            let layout = Layout::from_size_align(b.size, b.align).unwrap();
            // SAFETY: a live block with this layout; `new_size` is non-zero and small.
            unsafe { GlobalAlloc::realloc(&A, b.ptr, layout, new_size) }
        }
    };
    if new.is_null() {
        // The old block is untouched and still ours.
        t.out_of_memory.fetch_add(1, Ordering::Relaxed);
        b.claim();
        return;
    }
    assert!(A.owns(new), "{new:p} is not in the heap");
    let usable = A.usable_size(new);
    if new.addr() % b.align != 0 || usable < new_size {
        t.misaligned.fetch_add(1, Ordering::Relaxed);
    }
    let kept = b.size.min(new_size);
    b.ptr = new;
    b.usable = usable.max(new_size);
    b.claim();
    if !b.holds_pattern(kept) {
        t.corrupt.fetch_add(1, Ordering::Relaxed);
    }
    b.size = new_size;
    b.fill_from(kept);
    t.reallocs.fetch_add(1, Ordering::Relaxed);
}

/// One thread's share: allocate, resize, free, hand blocks to others.
fn worker(
    me: usize,
    ops: usize,
    inbox: mpsc::Receiver<Block>,
    peers: Vec<mpsc::Sender<Block>>,
    t: &Totals,
) {
    let mut rng = Rng(mix(me as u64 + 1));
    let mut live: Vec<Block> = Vec::with_capacity(MAX_LIVE);
    let give_away = |b: Block, rng: &mut Rng| {
        let to = (me + 1 + rng.below(THREADS - 1)) % THREADS;
        t.cross_frees.fetch_add(1, Ordering::Relaxed);
        peers[to].send(b).unwrap();
    };
    let free_one = |live: &mut Vec<Block>, rng: &mut Rng| {
        if live.is_empty() {
            return;
        }
        let b = live.swap_remove(rng.below(live.len()));
        if rng.below(3) == 0 {
            give_away(b, rng);
        } else {
            verify_and_free(b, t);
        }
    };
    for seq in 0..ops {
        while let Ok(b) = inbox.try_recv() {
            verify_and_free(b, t);
        }
        let r = rng.below(100);
        if live.is_empty() || (live.len() < MAX_LIVE && r < 50) {
            let tag = ((me as u64) << 32) | seq as u64;
            let mut retries = 0usize;
            loop {
                if let Some(b) = alloc_block(&mut rng, tag, t) {
                    live.push(b);
                    break;
                }
                // Out of memory: give some back (ours and whatever was handed to us),
                // let the others run, try again.
                t.out_of_memory.fetch_add(1, Ordering::Relaxed);
                for _ in 0..live.len().div_ceil(2) {
                    free_one(&mut live, &mut rng);
                }
                while let Ok(b) = inbox.try_recv() {
                    verify_and_free(b, t);
                }
                thread::yield_now();
                retries += 1;
                assert!(
                    retries < 1_000_000,
                    "thread {me}: out of memory with nothing left to free"
                );
            }
        } else if r < 58 {
            let i = rng.below(live.len());
            resize(&mut live[i], &mut rng, t);
        } else {
            free_one(&mut live, &mut rng);
        }
    }
    while !live.is_empty() {
        free_one(&mut live, &mut rng);
    }
    // Once every thread has dropped its senders, our inbox disconnects: whatever was
    // handed to us has arrived.
    drop(peers);
    while let Ok(b) = inbox.recv() {
        verify_and_free(b, t);
    }
}

/// Runs `THREADS` workers of `ops` operations each on `A`; returns their totals.
fn storm(ops: usize) -> Totals {
    let t = Totals::default();
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..THREADS).map(|_| mpsc::channel()).unzip();
    thread::scope(|s| {
        for (me, inbox) in receivers.into_iter().enumerate() {
            let peers = senders.clone();
            let t = &t;
            s.spawn(move || worker(me, ops, inbox, peers, t));
        }
        drop(senders);
    });
    t
}

fn assert_clean(t: &Totals) {
    let allocated = t.allocated.load(Ordering::Relaxed);
    eprintln!(
        "{allocated} blocks, {} cross-thread frees, {} reallocs, {} out-of-memory retries",
        t.cross_frees.load(Ordering::Relaxed),
        t.reallocs.load(Ordering::Relaxed),
        t.out_of_memory.load(Ordering::Relaxed),
    );
    assert!(allocated > 0);
    assert_eq!(
        t.corrupt.load(Ordering::Relaxed),
        0,
        "blocks whose pattern was overwritten"
    );
    assert_eq!(
        t.misaligned.load(Ordering::Relaxed),
        0,
        "misaligned, foreign or short blocks"
    );
    assert_eq!(
        t.verified.load(Ordering::Relaxed),
        allocated,
        "every block verified and freed"
    );
    assert!(t.cross_frees.load(Ordering::Relaxed) > 0);
    let s = A.stats();
    assert_eq!(
        s.bytes_in_use, 0,
        "all freed, yet the heap reports bytes in use: {s:?}"
    );
}

#[test]
fn eight_threads_share_one_heap() {
    // Every test here measures `A` as a whole, so they take turns.
    let _turn = serial();
    let _watchdog = watchdog(
        "`eight_threads_share_one_heap` (deadlock or livelock?)",
        MINUTE,
        String::new,
    );
    let t = storm(ops_per_thread());
    assert_clean(&t);
    assert!(t.reallocs.load(Ordering::Relaxed) > 0);
    // About a third of the frees are cross-thread.
    let cross = t.cross_frees.load(Ordering::Relaxed);
    assert!(
        cross * 6 > t.allocated.load(Ordering::Relaxed),
        "too few cross-thread frees: {cross}"
    );
}

/// Fills the heap with blocks of one request size until it says no (each one claimed in
/// [`OWNER`], so a block handed out twice is caught); frees them all. Returns how many
/// fit.
fn fill_and_free(size: usize, align: usize) -> usize {
    let layout = Layout::from_size_align(size, align).unwrap();
    let mut blocks = Vec::new();
    loop {
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { GlobalAlloc::alloc(&A, layout) };
        if ptr.is_null() {
            break;
        }
        assert_eq!(ptr.addr() % align, 0);
        assert!(A.owns(ptr), "{ptr:p} is not in the heap");
        let b = Block {
            ptr,
            size,
            usable: A.usable_size(ptr).max(size),
            align,
            via: Via::Global,
            tag: u64::MAX / 2 + blocks.len() as u64,
        };
        b.claim();
        blocks.push(b);
    }
    let n = blocks.len();
    for b in blocks {
        b.release();
        // SAFETY: each block is live, from `GlobalAlloc::alloc` with `layout`, freed once.
        unsafe { GlobalAlloc::dealloc(&A, b.ptr, layout) };
    }
    let s = A.stats();
    assert_eq!(s.bytes_in_use, 0, "{s:?}");
    n
}

#[test]
fn heap_is_whole_again_after_a_storm() {
    let _turn = serial();
    let _watchdog = watchdog(
        "`heap_is_whole_again_after_a_storm` (deadlock or livelock?)",
        MINUTE,
        String::new,
    );
    assert_clean(&storm(ops_per_thread() / 4));

    // The storm left chunks formatted for every class, some parked in active slots.
    // All of them must come back: whole chunks first, then each block size fills every
    // chunk exactly (carving wastes nothing, I7).
    let chunks = A.stats().chunks_total;
    assert!(chunks > 0);
    if cfg!(miri) {
        // A full sweep is thousands of chunks: too slow under miri. One of each.
        for size in [16, 2048, 4096, 64 << 10] {
            let p = A.malloc(size);
            assert!(!p.is_null());
            // SAFETY: a live block from `A.malloc`.
            unsafe { A.free(p) };
        }
    } else {
        let per_chunk = |block: usize| chunks * (sigalloc::CHUNK_SIZE / block);
        for (size, align, block) in [
            (sigalloc::CHUNK_SIZE, 1, sigalloc::CHUNK_SIZE),
            (2048, 2048, 2048),
            (100, 8, 128),
            (16, 16, 16),
            (1, 4096, sigalloc::CHUNK_SIZE),
        ] {
            let fit = fill_and_free(size, align);
            assert_eq!(
                fit,
                per_chunk(block),
                "{size}-byte blocks at align {align}: {fit} fit, not {} (chunks lost?)",
                per_chunk(block)
            );
        }
        // And one span as large as the whole heap.
        let whole = chunks * sigalloc::CHUNK_SIZE;
        let p = A.malloc(whole);
        assert!(!p.is_null(), "a heap-sized span after the storm");
        assert_eq!(A.usable_size(p), whole);
        // SAFETY: a live block from `A.malloc`, freed once.
        unsafe { A.free(p) };
    }
    let s = A.stats();
    assert_eq!(s.bytes_in_use, 0, "{s:?}");

    // Still usable by many threads at once.
    assert_clean(&storm(ops_per_thread() / 4));
}
