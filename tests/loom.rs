//! Loom models of sigalloc's lock-free protocols: every interleaving (up to a preemption
//! bound) of two or three threads running the real allocator code over loom's atomics.
//!
//! Run (release: loom is slow in debug):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test --release --test loom -- --test-threads=1 --nocapture
//! ```
//!
//! Each model prints `loom model <name>: <N> interleavings`, for CI to sum. Without
//! `--cfg loom` this file is empty. `LOOM_MAX_PREEMPTIONS` (default 2) is the base
//! preemption bound; models that stay cheap add up to 3 to it (see [`check`]). With the
//! base at 2 the whole file takes well under a minute in release on 2 cores.
//!
//! # What is checked
//! Ownership of every block is shadowed by loom `UnsafeCell`s, one per `granule` bytes
//! of the arena. Handing a block out writes the owner's tag into every cell the block
//! covers, after checking the cell is free; freeing checks the tag and clears it. A
//! block handed out twice (I1) is therefore caught either as a loom causality violation
//! (the two owners' writes are unordered), or by the tag check (they are ordered, but
//! the first owner has not freed it). A missing Release/Acquire between a free and the
//! next hand-out of the same memory is caught the same way. The tag is also written into
//! the block itself and checked before the free, so an allocator write into a live
//! block (a link word pushed onto it) fails the model too. After the threads are joined
//! every model checks that nothing is in use and that the whole heap can be claimed as
//! one span again: no chunk was lost or left listed wrongly.
//!
//! The negative model turns on `sigalloc::break_ownership`, which makes taking a chunk
//! from an active slot a peek instead of a swap: two threads then own one chunk, and the
//! model must fail. The switch is a process-wide flag, so every model here holds one
//! lock for its whole run ([`serial`]); `--test-threads=1` is still recommended.
#![cfg(loom)]
// A test binary: the std atomic below is the harness's own counter, not allocator state.
#![allow(clippy::disallowed_types)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;
use sigalloc::{SigAlloc, CHUNK_SIZE, MAX_SMALL};

/// The base preemption bound when `LOOM_MAX_PREEMPTIONS` is not set.
const BASE_BOUND: usize = 2;

/// Stack for the thread that runs a model's body (it builds the arena on its stack).
const STACK: usize = 1 << 16;

/// Models run one at a time: the negative model flips a process-wide switch.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `f` under loom and prints how many interleavings were explored.
///
/// The preemption bound is the base (`LOOM_MAX_PREEMPTIONS`, else [`BASE_BOUND`]) plus
/// `extra`: models with few interleavings per preemption go deeper at little cost.
fn check<F>(name: &str, extra: usize, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    if let (_, Err(payload)) = explore(&format!("loom model {name}"), extra, f) {
        std::panic::resume_unwind(payload);
    }
}

/// [`check`], returning instead of panicking: how many interleavings were run (the last
/// one the failing one, if any) and how the model ended. Prints `<label>: <N>
/// interleavings ...`.
fn explore<F>(label: &str, extra: usize, f: F) -> (usize, std::thread::Result<()>)
where
    F: Fn() + Sync + Send + 'static,
{
    let _serial = serial();
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(b.preemption_bound.unwrap_or(BASE_BOUND) + extra);
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let start = std::time::Instant::now();
    let f = std::sync::Arc::new(f);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        b.check(move || {
            // ORDERING: Relaxed: a counter read after `check` returns, on this thread.
            counter.fetch_add(1, Ordering::Relaxed);
            // The model body runs on a thread with a larger stack: `SigAlloc::new()`
            // builds the whole arena on the stack, more than loom's default holds.
            let f = f.clone();
            thread::Builder::new()
                .stack_size(STACK)
                .spawn(move || f())
                .unwrap()
                .join()
                .unwrap();
        })
    }));
    // ORDERING: Relaxed: the model has ended; its executions ran on this thread.
    let n = runs.load(Ordering::Relaxed);
    println!(
        "\n{label}: {n} interleavings ({:.1}s, preemption bound {}){}",
        start.elapsed().as_secs_f64(),
        b.preemption_bound.unwrap_or(0),
        if outcome.is_err() { " FAILED" } else { "" }
    );
    (n, outcome)
}

/// The bytes a request of `size` gets: a power-of-two class of at least 16 bytes, or
/// whole chunks.
fn block_size(size: usize) -> usize {
    if size <= MAX_SMALL {
        size.max(16).next_power_of_two()
    } else {
        size.div_ceil(CHUNK_SIZE) * CHUNK_SIZE
    }
}

/// A block handed out to a model thread.
struct Block {
    ptr: *mut u8,
    size: usize,
    tag: usize,
}

// SAFETY: a block is memory the allocator handed to one owner; moving the handle to
// another thread moves that ownership (the spawn or join orders the accesses).
unsafe impl Send for Block {}

/// One allocator and the ownership shadow of its arena.
struct World<const N: usize> {
    a: SigAlloc<N>,
    /// One cell per `granule` bytes of the arena: 0 when free, else the owner's tag.
    cells: Vec<UnsafeCell<usize>>,
    granule: usize,
}

impl<const N: usize> World<N> {
    /// A fresh heap, shadowed at `granule` bytes (the smallest block the model uses).
    fn new(granule: usize) -> Arc<Self> {
        Arc::new(World {
            a: SigAlloc::new(),
            cells: (0..N / granule).map(|_| UnsafeCell::new(0)).collect(),
            granule,
        })
    }

    /// The arena's first byte: `SigAlloc` is `repr(C)` with its arena first.
    fn base(&self) -> usize {
        std::ptr::addr_of!(self.a) as usize
    }

    fn cells(&self, b: &Block) -> &[UnsafeCell<usize>] {
        let off = b.ptr as usize - self.base();
        assert_eq!(off % self.granule, 0, "block not on a granule");
        &self.cells[off / self.granule..(off + b.size) / self.granule]
    }

    /// Allocates `size` bytes for `tag` (non-zero), recording the owner. Odd tags use
    /// `calloc`, whose block must read all zero: a block wrongly believed clean (the
    /// dirty mark lost between owners) fails here. `None` when the heap had no room.
    fn try_alloc(&self, size: usize, tag: usize) -> Option<Block> {
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
        assert_eq!(
            ptr as usize % b.size.min(CHUNK_SIZE),
            0,
            "{ptr:?} is misaligned"
        );
        for c in self.cells(&b) {
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
                bytes.iter().all(|&x| x == 0),
                "calloc({size}) gave {tag:#x} a dirty block {ptr:?}"
            );
        }
        // SAFETY: the block is ours (I1, which the cells above check), at least 16 bytes
        // and 16-aligned.
        unsafe { ptr.cast::<usize>().write(tag) };
        Some(b)
    }

    /// Allocates `size` bytes for `tag`, which must succeed.
    fn alloc(&self, size: usize, tag: usize) -> Block {
        self.try_alloc(size, tag)
            .unwrap_or_else(|| panic!("malloc({size}) failed for {tag:#x}"))
    }

    /// Checks the block is still ours, then frees it.
    fn free(&self, b: Block) {
        // SAFETY: we own the block (handed out by `try_alloc`, not yet freed).
        let seen = unsafe { b.ptr.cast::<usize>().read() };
        assert_eq!(seen, b.tag, "block {:?} overwritten while live", b.ptr);
        for c in self.cells(&b) {
            c.with_mut(|v| {
                // SAFETY: as in `try_alloc`.
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
    fn check_whole(&self) {
        let s = self.a.stats();
        assert_eq!(s.bytes_in_use, 0, "bytes still in use: {s:?}");
        let all = self.alloc(s.heap_bytes, 0xA11);
        self.free(all);
        assert_eq!(self.a.stats().bytes_in_use, 0);
    }
}

/// Where a block lies: its chunk's index in the arena.
fn chunk_of<const N: usize>(w: &World<N>, b: &Block) -> usize {
    (b.ptr as usize - w.base()) / CHUNK_SIZE
}

/// Counts interleavings in which a path of interest was taken, so a model can show it
/// reached the race it is about (the counter outlives the executions).
struct Seen(AtomicUsize);

impl Seen {
    const fn new() -> Self {
        Seen(AtomicUsize::new(0))
    }
    fn hit(&self) {
        // ORDERING: Relaxed: a counter read after `check` returns.
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn get(&self) -> usize {
        // ORDERING: Relaxed, as above.
        self.0.load(Ordering::Relaxed)
    }
}

/// Model 1: the owner pops from a chunk while another thread frees into it.
///
/// Two 2048-byte blocks fill a chunk. They are allocated before the spawn; the second
/// thread frees both while the main thread allocates three more of the class: its pops
/// race the pushes (take the shared list, or find it empty and give the chunk up as
/// `FULL`, after which the pushes make it `PARTIAL` and then `EMPTY`).
#[test]
fn owner_pop_vs_frees() {
    static REUSED: Seen = Seen::new();
    check("owner_pop_vs_frees", 3, || {
        let w = World::<{ 16 << 10 }>::new(2048);
        let p1 = w.alloc(2048, 0x11);
        let p2 = w.alloc(2048, 0x12);
        let a = chunk_of(&w, &p1);
        let w2 = w.clone();
        let t = thread::spawn(move || {
            w2.free(p1);
            w2.free(p2);
        });
        let q1 = w.alloc(2048, 0x13);
        let q2 = w.alloc(2048, 0x14);
        // Three chunks: this one succeeds even if neither pushed block was seen.
        let q3 = w.alloc(2048, 0x15);
        if [&q1, &q2, &q3].iter().any(|q| chunk_of(&w, q) == a) {
            // The owner took a block the other thread had just pushed.
            REUSED.hit();
        }
        t.join().unwrap();
        w.free(q1);
        w.free(q2);
        w.free(q3);
        w.check_whole();
    });
    assert!(REUSED.get() > 0, "the owner never took a pushed block");
}

/// Model 2: a chunk's whole life while two threads use it.
///
/// A 12 KiB heap has two chunks; 2048-byte blocks fill one in two allocations. Chunk A
/// is carved out before the spawn. Then, at once:
/// - the main thread allocates again from A's slot: it takes what has been pushed, or
///   gives A up as `FULL` (owned -> full) and formats chunk B;
/// - thread 1 frees both of A's original blocks: `FULL -> PARTIAL` (listing it) then
///   `PARTIAL -> EMPTY`, retiring A to the free map (or pushes onto the owned A);
/// - thread 2 allocates 1024 bytes, a class with no chunk yet: it needs a free chunk,
///   which may only exist once A is recycled (or B, if the main thread stayed in A).
///
/// Either allocation may see an empty heap (A still in use, B taken); the model checks
/// that the heap is whole afterwards, and that thread 2 did get the recycled A in some
/// interleaving.
#[test]
fn chunk_lifecycle() {
    static RECYCLED: Seen = Seen::new();
    check("chunk_lifecycle", 1, || {
        let w = World::<{ 12 << 10 }>::new(1024);
        let p1 = w.alloc(2048, 0x21);
        let p2 = w.alloc(2048, 0x22);
        let a = chunk_of(&w, &p1);
        let w1 = w.clone();
        let t1 = thread::spawn(move || {
            w1.free(p1);
            w1.free(p2);
        });
        let w2 = w.clone();
        let t2 = thread::spawn(move || {
            if let Some(r) = w2.try_alloc(1024, 0x23) {
                if chunk_of(&w2, &r) == a {
                    RECYCLED.hit();
                }
                w2.free(r);
            }
        });
        // Null only while thread 2 holds B and A is still full.
        let q = w.try_alloc(2048, 0x24);
        t1.join().unwrap();
        t2.join().unwrap();
        if let Some(q) = q {
            w.free(q);
        }
        w.check_whole();
    });
    assert!(RECYCLED.get() > 0, "thread 2 never got the recycled chunk");
}

/// Model 3: run claims and releases in the used-chunk bitmap.
///
/// A 16 KiB heap has three chunks. One thread takes a two-chunk span (`malloc(5000)`)
/// while the other takes a one-chunk span (`malloc(3000)`): both must succeed, without
/// overlap (the cells, at chunk granularity), and once both are freed the whole heap
/// must come back as one three-chunk span.
#[test]
fn span_claims() {
    check("span_claims", 2, || {
        let w = World::<{ 16 << 10 }>::new(CHUNK_SIZE);
        let w1 = w.clone();
        let t = thread::spawn(move || {
            let p = w1.alloc(5000, 0x31);
            w1.free(p);
            let p = w1.alloc(3000, 0x32);
            w1.free(p);
        });
        let q = w.alloc(3000, 0x33);
        w.free(q);
        let r = w.alloc(3000, 0x34);
        w.free(r);
        t.join().unwrap();
        w.check_whole();
    });
}

/// One thread's part in model 4: allocations and frees of 1024-byte blocks, tagged
/// `tag..`. Returns the chunks that served it.
fn churn<const N: usize>(w: &World<N>, tag: usize, full: bool) -> Vec<usize> {
    let a = w.alloc(1024, tag);
    let mut chunks = vec![chunk_of(w, &a)];
    if !full {
        w.free(a);
        return chunks;
    }
    let b = w.alloc(1024, tag + 1);
    chunks.push(chunk_of(w, &b));
    w.free(a);
    let c = w.alloc(1024, tag + 2);
    chunks.push(chunk_of(w, &c));
    w.free(b);
    w.free(c);
    chunks
}

/// How [`slots_body`] runs.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Model 4: three allocations per thread, the threads at once, and the heap must be
    /// whole at the end.
    Model,
    /// The negative model: one allocation per thread, and no end check (with the
    /// ownership rule broken, a chunk can sit in two slots and be retired twice).
    /// `overlap`: the threads run at once; else one after the other (the control).
    Broken { overlap: bool },
}

/// Two threads allocate and free one class, each its own blocks: slot takes and puts,
/// refills and releases race. `shared` counts the interleavings in which both threads
/// were served by one chunk.
fn slots_body(shared: &Seen, mode: Mode) {
    let full = mode == Mode::Model;
    let w = World::<{ 16 << 10 }>::new(1024);
    // A chunk sits in an active slot before the threads start.
    let p = w.alloc(1024, 0x40);
    let w1 = w.clone();
    let mut t = Some(thread::spawn(move || churn(&w1, 0x41, full)));
    let mut theirs = None;
    if mode == (Mode::Broken { overlap: false }) {
        theirs = t.take().map(|t| t.join().unwrap());
    }
    let ours = churn(&w, 0x44, full);
    let theirs = theirs.or_else(|| t.map(|t| t.join().unwrap())).unwrap();
    if ours.iter().any(|x| theirs.contains(x)) {
        shared.hit();
    }
    w.free(p);
    if full {
        w.check_whole();
    }
}

/// Model 4: active-slot take and put from two threads on one class.
#[test]
fn slot_take_put() {
    static SHARED: Seen = Seen::new();
    check("slot_take_put", 2, || slots_body(&SHARED, Mode::Model));
    assert!(SHARED.get() > 0, "the threads never shared a chunk");
}

/// Model 5: a free that empties an unowned chunk races an allocation that wants it.
///
/// In a 12 KiB heap (two chunks) of 2048-byte blocks: chunk A is `PARTIAL` with one
/// live block, chunk B is carved out and sits in a slot. Then, at once:
/// - thread 1 frees A's last live block: `PARTIAL -> EMPTY`, and retires A;
/// - the main thread allocates 2048 bytes: B is exhausted, so it takes A's partial
///   listing and claims A (`PARTIAL -> ACTIVE`) against that push, or finds A retired
///   and formats it afresh;
/// - thread 2 allocates 1024 bytes, which needs a free chunk: only a retired A.
///
/// Either allocation may find nothing while A is in flight; the model checks that no
/// block is handed out twice, that the heap is whole afterwards, and that both the
/// claim and the recycling happened in some interleaving.
#[test]
fn empty_vs_claim() {
    static CLAIMED: Seen = Seen::new();
    static RECYCLED: Seen = Seen::new();
    check("empty_vs_claim", 0, || {
        let w = World::<{ 12 << 10 }>::new(1024);
        let p1 = w.alloc(2048, 0x51);
        let p2 = w.alloc(2048, 0x52);
        let a = chunk_of(&w, &p1);
        // A is exhausted: this gives it up as FULL and carves B.
        let p3 = w.alloc(2048, 0x53);
        let p4 = w.alloc(2048, 0x54);
        assert_ne!(chunk_of(&w, &p3), a);
        // FULL -> PARTIAL, listed.
        w.free(p1);
        let w1 = w.clone();
        let t1 = thread::spawn(move || w1.free(p2));
        let w2 = w.clone();
        let t2 = thread::spawn(move || {
            if let Some(r) = w2.try_alloc(1024, 0x55) {
                assert_eq!(chunk_of(&w2, &r), a, "only A can be free");
                RECYCLED.hit();
                w2.free(r);
            }
        });
        if let Some(q) = w.try_alloc(2048, 0x56) {
            assert_eq!(chunk_of(&w, &q), a, "only A has room");
            CLAIMED.hit();
            w.free(q);
        }
        t1.join().unwrap();
        t2.join().unwrap();
        w.free(p3);
        w.free(p4);
        w.check_whole();
    });
    assert!(CLAIMED.get() > 0, "the main thread never got chunk A");
    assert!(
        RECYCLED.get() > 0,
        "thread 2 never got the recycled chunk A"
    );
}

/// Resets the ownership switch however the model ends.
struct Unbreak;

impl Drop for Unbreak {
    fn drop(&mut self) {
        sigalloc::break_ownership(false);
    }
}

/// The negative model: model 4 with the ownership rule broken (taking a chunk from a
/// slot only peeks), cut to one allocation per thread. Run one after the other, the
/// threads pass even so (the control, checked first); only an interleaving in which
/// both pop from the one chunk at once hands a block out twice. Loom must find it, and
/// the model must report it: a causality violation on the ownership cells, or a failed
/// ownership check.
#[test]
#[should_panic(expected = "ownership violation caught")]
fn broken_ownership_is_caught() {
    static IGNORED: Seen = Seen::new();
    let _unbreak = Unbreak;
    let (_, control) = explore("loom control broken_ownership (sequential)", 0, || {
        sigalloc::break_ownership(true);
        let _unbreak = Unbreak;
        slots_body(&IGNORED, Mode::Broken { overlap: false });
    });
    assert!(
        control.is_ok(),
        "with the threads run one after the other the broken model must pass"
    );
    let (runs, outcome) = explore("loom model broken_ownership_is_caught", 0, || {
        sigalloc::break_ownership(true);
        let _unbreak = Unbreak;
        slots_body(&IGNORED, Mode::Broken { overlap: true });
    });
    sigalloc::break_ownership(false);
    let Err(payload) = outcome else {
        panic!("the model passed with the ownership rule broken");
    };
    let msg = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("<non-string panic>");
    println!("broken_ownership_is_caught: interleaving {runs} failed, as it must: {msg}");
    if msg.contains("Causality violation") || msg.contains("handed out") {
        panic!("ownership violation caught: {msg}");
    }
    panic!("the model failed for another reason: {msg}");
}

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

    /// `malloc(size)` for `tag` (even: no `calloc`, claimed RAM is not zeroed), with
    /// the ownership checks of [`World::try_alloc`].
    fn try_alloc(&self, size: usize, tag: usize) -> Option<Block> {
        let ptr = self.w.a.malloc(size);
        if ptr.is_null() {
            return None;
        }
        let b = Block {
            ptr,
            size: block_size(size),
            tag,
        };
        assert!(self.w.a.owns(ptr), "{ptr:?} is outside the heap");
        for c in self.cells(&b) {
            c.with_mut(|v| {
                // SAFETY: loom checks this access does not race another (it panics
                // otherwise); the pointer is the cell's own.
                let v = unsafe { &mut *v };
                assert_eq!(*v, 0, "block {ptr:?} handed out to {tag:#x} while owned");
                *v = tag;
            });
        }
        // SAFETY: the block is ours (I1, which the cells above check), at least 16 bytes
        // and 16-aligned.
        unsafe { ptr.cast::<usize>().write(tag) };
        Some(b)
    }

    /// Checks the block is still ours, then frees it.
    fn free(&self, b: Block) {
        // SAFETY: we own the block (handed out by `try_alloc`, not yet freed).
        let seen = unsafe { b.ptr.cast::<usize>().read() };
        assert_eq!(seen, b.tag, "block {:?} overwritten while live", b.ptr);
        for c in self.cells(&b) {
            c.with_mut(|v| {
                // SAFETY: as in `try_alloc`.
                let v = unsafe { &mut *v };
                assert_eq!(*v, b.tag, "block {:?} freed by a non-owner", b.ptr);
                *v = 0;
            });
        }
        // SAFETY: a live block of this allocator, not used after this call.
        unsafe { self.w.a.free(b.ptr) };
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
