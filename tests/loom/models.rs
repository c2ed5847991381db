//! Models 1-5 and the negative model: chunks, slots and spans under two or three
//! threads.

use loom::thread;
use sigalloc::CHUNK_SIZE;

use super::world::{chunk_of, Seen, World};
use super::{check, explore};

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
/// A 16 KiB heap has three chunks. One thread takes a two-chunk span (`malloc(6000)`)
/// while the other takes a one-chunk span (`malloc(3700)`): both must succeed, without
/// overlap (the cells, at chunk granularity), and once both are freed the whole heap
/// must come back as one three-chunk span.
#[test]
fn span_claims() {
    check("span_claims", 2, || {
        let w = World::<{ 16 << 10 }>::new(CHUNK_SIZE);
        let w1 = w.clone();
        let t = thread::spawn(move || {
            let p = w1.alloc(6000, 0x31);
            w1.free(p);
            let p = w1.alloc(3700, 0x32);
            w1.free(p);
        });
        let q = w.alloc(3700, 0x33);
        w.free(q);
        let r = w.alloc(3700, 0x34);
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

/// Model 5b: a mid-size slab's retire racing a claim of its listing and a claim of its
/// chunks.
///
/// A 20 KiB heap has four chunks; 3 KiB blocks come four to a slab of three chunks
/// (`class.rs`). Slab A is carved out, then given up as `FULL` (a fifth 3 KiB request
/// finds no run of three chunks for a second slab: null); three of its blocks are freed
/// (`FULL -> PARTIAL`, listed). Then, at once:
/// - thread 1 frees A's last block: `PARTIAL -> EMPTY`, and retires the slab: its tail
///   chunks are marked retired and its run of three chunks goes back to the free map;
/// - the main thread allocates 3 KiB: it takes A's listing and claims A
///   (`PARTIAL -> ACTIVE`) against that push, or finds A retired and claims its run
///   afresh as a new slab, or finds nothing (thread 2 took the run);
/// - thread 2 allocates a three-chunk span, which only A's retired run can hold.
///
/// The model checks that no block is handed out twice (the cells), that the heap is
/// whole afterwards (every chunk of the slab came back), and that both the claim and
/// the span over the retired slab happened in some interleaving.
#[test]
fn slab_retire_vs_claim() {
    static CLAIMED: Seen = Seen::new();
    static RECYCLED: Seen = Seen::new();
    check("slab_retire_vs_claim", 0, || {
        let w = World::<{ 20 << 10 }>::new(1024);
        let p: Vec<_> = (0..4).map(|k| w.alloc(3000, 0x61 + k)).collect();
        let a = chunk_of(&w, &p[0]);
        assert!(p.iter().all(|b| chunk_of(&w, b) < a + 3), "one slab");
        // A is exhausted: this gives it up as FULL; no second slab fits.
        assert!(w.try_alloc(3000, 0x65).is_none());
        let mut p = p.into_iter();
        for b in p.by_ref().take(3) {
            w.free(b);
        }
        let last = p.next().unwrap();
        let w1 = w.clone();
        let t1 = thread::spawn(move || w1.free(last));
        let w2 = w.clone();
        let t2 = thread::spawn(move || {
            if let Some(r) = w2.try_alloc(3 * CHUNK_SIZE, 0x66) {
                assert_eq!(chunk_of(&w2, &r), a, "only A's run is free");
                RECYCLED.hit();
                w2.free(r);
            }
        });
        if let Some(q) = w.try_alloc(3000, 0x67) {
            let at = chunk_of(&w, &q);
            assert!(a <= at && at < a + 3, "only A has room");
            CLAIMED.hit();
            w.free(q);
        }
        t1.join().unwrap();
        t2.join().unwrap();
        w.check_whole();
    });
    assert!(CLAIMED.get() > 0, "the main thread never got slab A");
    assert!(RECYCLED.get() > 0, "thread 2 never got A's retired run");
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

/// Model 7 (feature `percpu`): the per-CPU caches' refill, spill and drain under the
/// whole allocator. Under loom every thread maps to one magazine, so the two threads
/// contend for it (the model's stand-in sequence bypasses when it is taken). Thread 1
/// frees three blocks (the third finds its class's array full: a spill), while the main
/// thread allocates (a refill or a pop of a parked block) and then drains (`trim`).
/// Every block has one owner throughout (the ownership shadow), and the heap is whole
/// at the end (`check_whole` needs the last parked blocks back: its whole-heap request
/// drains them on the way to null).
#[cfg(feature = "percpu")]
#[test]
fn percpu_refill_spill_drain() {
    static PARKED: Seen = Seen::new();
    check("percpu_refill_spill_drain", 2, || {
        let w = World::<{ 16 << 10 }>::new(1024);
        let blocks: Vec<_> = (0..3).map(|i| w.alloc(1024, 0x70 + i)).collect();
        let w1 = w.clone();
        let t = thread::spawn(move || {
            for b in blocks {
                w1.free(b);
            }
        });
        let mine = w.alloc(1024, 0x7a);
        w.free(mine);
        w.a.trim();
        t.join().unwrap();
        if w.a.stats().cached_bytes > 0 {
            PARKED.hit();
        }
        w.check_whole();
    });
    assert!(PARKED.get() > 0, "no block was ever parked in a cache");
}
