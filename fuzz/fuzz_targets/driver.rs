//! The op-stream interpreter and reference model shared by the `api` and `checked`
//! fuzz targets.
//!
//! An input is a sequence of operations decoded with `arbitrary::Unstructured`: every
//! public entry point (`GlobalAlloc` alloc / alloc_zeroed / realloc / dealloc, C-style
//! malloc / calloc / realloc / free, usable_size, good_size, owns, stats). Each result is
//! checked against a model of the live blocks:
//! - every block is aligned, lies inside the heap, and its `usable_size` bytes overlap
//!   no other live block's (so nothing is ever handed out twice);
//! - `usable_size` is exactly the class size or the span bytes of the request;
//! - contents survive until free and across realloc (first `min(old, new)` bytes);
//! - zeroed memory reads zero;
//! - impossible requests (too big for the heap, alignment above 4096, calloc overflow)
//!   get null, and a possible one gets null only when the model says the heap may be
//!   unable to hold it (see [`Model::must_hold`] for the bound);
//! - `stats().bytes_in_use` equals the model's live bytes after every operation, is 0
//!   once the input has freed everything, and at most the idle active-slot chunks stay
//!   in use then.
//!
//! With the `checked` feature the stream also makes deliberate bad calls (double frees,
//! foreign and interior frees, stale pointers, deallocs with a wrong layout) and checks
//! that each is reported once with the right kind (and the right pointer) and changes
//! nothing. Every op also checks the exact reports a refused allocation makes.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use sigalloc::{SigAlloc, CHUNK_SIZE, MAX_ALIGN, MAX_SMALL};

/// Active slots per class and small classes (see `src/heap.rs` / `src/class.rs`).
const SLOTS: usize = 4;
const NCLASSES: usize = 8;
const MIN_BLOCK: usize = 16;

/// What the allocator must hand out for `size` bytes at `align`: the usable size of
/// the block (class size or whole chunks), or `None` if no heap of this design could
/// (alignment above the maximum, or the span's byte count overflows).
pub fn expected_usable(size: usize, align: usize) -> Option<usize> {
    if align > MAX_ALIGN {
        return None;
    }
    let need = size.max(align);
    if need <= MIN_BLOCK {
        Some(MIN_BLOCK)
    } else if need <= MAX_SMALL {
        Some(need.next_power_of_two())
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
    fn layout(&self) -> Layout {
        // The layout was valid when the block was requested.
        Layout::from_size_align(self.size.max(1), self.align).expect("valid layout")
    }
}

/// The live blocks and the heap's geometry.
pub struct Model {
    live: BTreeMap<usize, Block>,
    /// Address of chunk 0 (the arena is the first field of `SigAlloc`, chunk-aligned).
    base: usize,
    /// First allocatable chunk (the side table takes `0..first`).
    first: usize,
    /// One past the last chunk.
    end: usize,
    fills: u8,
}

fn check_fill(p: *const u8, n: usize, fill: u8, what: &str) {
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

    /// Which chunks hold a live block (span chunks included).
    fn occupied(&self) -> Vec<bool> {
        let mut occ = vec![false; self.end];
        for (&addr, b) in &self.live {
            let c0 = (addr - self.base) / CHUNK_SIZE;
            let c1 = (addr - self.base + b.usable - 1) / CHUNK_SIZE;
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
        let need = if usable <= MAX_SMALL {
            1
        } else {
            usable / CHUNK_SIZE
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
        // Only idle chunks parked in active slots may stay in use.
        assert!(
            s.chunks_used <= SLOTS * NCLASSES,
            "{} chunks still in use with nothing live:\n{s}",
            s.chunks_used
        );
    }
}

// ---------------------------------------------------------------------------------
// Checked mode: counting the error hook's reports.

#[cfg(feature = "checked")]
pub mod reports {
    //! The error hook: counts per kind and the last pointer reported.
    // The fuzz crate is not the allocator: plain std atomics are what we want here.
    #![allow(clippy::disallowed_types)]
    use sigalloc::ErrorKind;
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub const KINDS: [ErrorKind; 6] = [
        ErrorKind::InvalidFree,
        ErrorKind::DoubleFree,
        ErrorKind::LayoutMismatch,
        ErrorKind::OutOfMemory,
        ErrorKind::Overflow,
        ErrorKind::Corrupted,
    ];

    static COUNTS: [AtomicUsize; 6] = [const { AtomicUsize::new(0) }; 6];
    static LAST_PTR: AtomicUsize = AtomicUsize::new(0);

    fn index(k: ErrorKind) -> usize {
        KINDS.iter().position(|&x| x == k).unwrap_or(5)
    }

    pub fn record(kind: ErrorKind, p: *mut u8) {
        COUNTS[index(kind)].fetch_add(1, Ordering::Relaxed);
        LAST_PTR.store(p.addr(), Ordering::Relaxed);
    }

    pub fn snapshot() -> [usize; 6] {
        std::array::from_fn(|i| COUNTS[i].load(Ordering::Relaxed))
    }

    pub fn last_ptr() -> usize {
        LAST_PTR.load(Ordering::Relaxed)
    }

    /// Asserts that exactly `expected` was reported since `before`.
    pub fn expect(before: [usize; 6], expected: &[ErrorKind], what: &str) {
        let now = snapshot();
        let mut want = [0usize; 6];
        for &k in expected {
            want[index(k)] += 1;
        }
        let got: [usize; 6] = std::array::from_fn(|i| now[i] - before[i]);
        if got != want {
            let show = |v: [usize; 6]| {
                KINDS
                    .iter()
                    .zip(v)
                    .filter(|(_, n)| *n > 0)
                    .map(|(k, n)| format!("{k:?} x{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            panic!(
                "{what}: expected reports [{}], got [{}]",
                show(want),
                show(got)
            );
        }
    }
}

/// The kind a refused allocation of `size` at `align` reports.
#[cfg(feature = "checked")]
fn refusal(size: usize, align: usize) -> sigalloc::ErrorKind {
    let overflow = align > MAX_ALIGN
        || (size > MAX_SMALL && size.div_ceil(CHUNK_SIZE).checked_mul(CHUNK_SIZE).is_none());
    if overflow {
        sigalloc::ErrorKind::Overflow
    } else {
        sigalloc::ErrorKind::OutOfMemory
    }
}

// ---------------------------------------------------------------------------------
// Decoding.

fn pick_size(u: &mut Unstructured<'_>, heap: usize) -> Result<usize> {
    const HUGE: [usize; 10] = [
        usize::MAX,
        usize::MAX - 1,
        usize::MAX - 4095,
        usize::MAX - 4096,
        usize::MAX - 8192,
        isize::MAX as usize,
        isize::MAX as usize + 1,
        1 << 40,
        1 << 32,
        (u32::MAX as usize) * CHUNK_SIZE,
    ];
    Ok(match u.int_in_range(0u8..=9)? {
        0 => u.int_in_range(0..=16)?,
        1 | 2 => u.int_in_range(0..=MAX_SMALL)?,
        3 => {
            let edges = [
                0,
                1,
                15,
                16,
                17,
                31,
                32,
                33,
                255,
                256,
                257,
                1023,
                1024,
                1025,
                2047,
                2048,
                2049,
                4095,
                4096,
                4097,
                8191,
                8192,
                8193,
                heap - CHUNK_SIZE,
                heap - 1,
                heap,
                heap + 1,
                heap + CHUNK_SIZE,
            ];
            *u.choose(&edges)?
        }
        4 => u.int_in_range(MAX_SMALL + 1..=heap / 4)?,
        5 => u.int_in_range(0..=heap + 4 * CHUNK_SIZE)?,
        6 => *u.choose(&HUGE)?,
        _ => u.int_in_range(0..=256)?,
    })
}

fn pick_align(u: &mut Unstructured<'_>) -> Result<usize> {
    // Mostly small alignments, sometimes up to 8192 (one above the maximum).
    Ok(match u.int_in_range(0u8..=3)? {
        0 => 1 << u.int_in_range(0u32..=13)?,
        _ => 1 << u.int_in_range(0u32..=4)?,
    })
}

/// The operations. Bad ones are only decoded in checked mode.
#[derive(Clone, Copy, Debug)]
enum Op {
    Alloc,
    AllocZeroed,
    Malloc,
    Calloc,
    ReallocGlobal,
    ReallocC,
    ReallocNull,
    Free,
    Dealloc,
    Query,
    GoodSize,
    #[cfg(feature = "checked")]
    DoubleFree,
    #[cfg(feature = "checked")]
    InteriorFree,
    #[cfg(feature = "checked")]
    ForeignFree,
    #[cfg(feature = "checked")]
    StaleFree,
    #[cfg(feature = "checked")]
    WrongLayout,
}

const GOOD_OPS: [Op; 11] = [
    Op::Alloc,
    Op::AllocZeroed,
    Op::Malloc,
    Op::Calloc,
    Op::ReallocGlobal,
    Op::ReallocC,
    Op::ReallocNull,
    Op::Free,
    Op::Dealloc,
    Op::Query,
    Op::GoodSize,
];
#[cfg(feature = "checked")]
const BAD_OPS: [Op; 5] = [
    Op::DoubleFree,
    Op::InteriorFree,
    Op::ForeignFree,
    Op::StaleFree,
    Op::WrongLayout,
];

/// Runs one input against `a`, which must be empty of this input's blocks at the start
/// (it may hold idle chunks from earlier inputs) and is left so.
pub fn run<const H: usize>(a: &'static SigAlloc<H>, data: &[u8]) {
    #[cfg(feature = "checked")]
    a.set_error_hook(Some(reports::record));
    let mut m = Model::new(a);
    let mut u = Unstructured::new(data);
    // Pointers freed recently (checked mode: stale frees).
    #[cfg(feature = "checked")]
    let mut freed: Vec<*mut u8> = Vec::new();
    let mut steps = 0usize;
    // FUZZ_TRACE=1 prints each op (for reproducers).
    let trace = std::env::var_os("FUZZ_TRACE").is_some();
    while !u.is_empty() && steps < 4096 {
        steps += 1;
        #[cfg(feature = "checked")]
        let op = if u.ratio(1u8, 4u8).unwrap_or(false) {
            *u.choose(&BAD_OPS).unwrap_or(&Op::Query)
        } else {
            *u.choose(&GOOD_OPS).unwrap_or(&Op::Query)
        };
        #[cfg(not(feature = "checked"))]
        let op = *u.choose(&GOOD_OPS).unwrap_or(&Op::Query);
        if trace {
            eprintln!("op {steps}: {op:?} ({} live)", m.len());
        }
        #[cfg(feature = "checked")]
        let before = reports::snapshot();
        #[cfg(feature = "checked")]
        let mut expected: Vec<sigalloc::ErrorKind> = Vec::new();
        let heap = m.heap_bytes();
        match op {
            Op::Alloc | Op::AllocZeroed | Op::Malloc | Op::ReallocNull => {
                let Ok(size) = pick_size(&mut u, heap) else {
                    break;
                };
                let (align, p) = match op {
                    Op::Malloc => (16, a.malloc(size)),
                    // SAFETY: a null pointer: realloc allocates like malloc.
                    Op::ReallocNull => (16, unsafe { a.realloc(std::ptr::null_mut(), size) }),
                    _ => {
                        let Ok(align) = pick_align(&mut u) else {
                            break;
                        };
                        // GlobalAlloc requires a non-zero size.
                        let Ok(l) = Layout::from_size_align(size.max(1), align) else {
                            continue;
                        };
                        let p = if matches!(op, Op::Alloc) {
                            // SAFETY: the layout has a non-zero size.
                            unsafe { a.alloc(l) }
                        } else {
                            // SAFETY: as above.
                            unsafe { a.alloc_zeroed(l) }
                        };
                        (align, p)
                    }
                };
                let size = if matches!(op, Op::Alloc | Op::AllocZeroed) {
                    size.max(1)
                } else {
                    size
                };
                handle_alloc(
                    a,
                    &mut m,
                    p,
                    size,
                    align,
                    matches!(op, Op::AllocZeroed),
                    &format!("{op:?}({size}, {align})"),
                );
                #[cfg(feature = "checked")]
                if p.is_null() {
                    expected.push(refusal(size, align));
                }
            }
            Op::Calloc => {
                let (n, size) = match u.int_in_range(0u8..=5) {
                    Ok(0) => (usize::MAX, 2),
                    Ok(1) => (1 << 33, 1 << 33),
                    Ok(2) => (2, usize::MAX / 2 + 1),
                    Ok(3) => (usize::MAX, 0),
                    Ok(_) => {
                        let (Ok(n), Ok(s)) = (u.int_in_range(0..=64usize), pick_size(&mut u, heap))
                        else {
                            break;
                        };
                        (n, s / n.max(1))
                    }
                    Err(_) => break,
                };
                let p = a.calloc(n, size);
                match n.checked_mul(size) {
                    None => {
                        assert!(p.is_null(), "calloc({n}, {size}) overflows but got {p:p}");
                        #[cfg(feature = "checked")]
                        expected.push(sigalloc::ErrorKind::Overflow);
                    }
                    Some(total) => {
                        handle_alloc(
                            a,
                            &mut m,
                            p,
                            total,
                            16,
                            true,
                            &format!("calloc({n}, {size})"),
                        );
                        #[cfg(feature = "checked")]
                        if p.is_null() {
                            expected.push(refusal(total, 16));
                        }
                    }
                }
            }
            Op::ReallocGlobal | Op::ReallocC => {
                let (Ok(i), Ok(new)) = (u.arbitrary::<u16>(), pick_size(&mut u, heap)) else {
                    break;
                };
                let Some(b) = m.nth(usize::from(i)) else {
                    continue;
                };
                let global = matches!(op, Op::ReallocGlobal);
                // GlobalAlloc::realloc: a non-zero size that does not overflow isize
                // once rounded up to the alignment.
                let new = if global { new.max(1) } else { new };
                if global && new > isize::MAX as usize - b.align {
                    continue;
                }
                let align = if global { b.align } else { 16 };
                if !global && new == 0 {
                    // Frees: check the contents first.
                    m.on_free(b.ptr);
                }
                let q = if global {
                    // SAFETY: `b` is live with this layout; `new` is valid (above).
                    unsafe { GlobalAlloc::realloc(a, b.ptr, b.layout(), new) }
                } else {
                    // SAFETY: `b` is live and came from this allocator.
                    unsafe { sigalloc_realloc(a, b.ptr, new) }
                };
                let what = format!("{op:?}({:p}+{}, {new})", b.ptr, b.size);
                if !global && new == 0 {
                    assert!(q.is_null(), "{what}: realloc to 0 frees and returns null");
                    #[cfg(feature = "checked")]
                    freed.push(b.ptr);
                } else {
                    let want = expected_usable(new, align).filter(|&n| n <= heap);
                    // Same class, or a span that does not grow: resized in place.
                    let in_place = want.is_some_and(|w| {
                        w == b.usable || (w > MAX_SMALL && b.usable > MAX_SMALL && w <= b.usable)
                    });
                    if q.is_null() {
                        assert!(!in_place, "{what}: an in-place resize failed");
                        if let Some(w) = want {
                            assert!(!m.must_hold(w), "{what}: null though the heap holds it");
                        }
                        // The block is untouched.
                        assert_eq!(a.usable_size(b.ptr), b.usable, "{what}");
                        check_fill(b.ptr, b.usable, b.fill, &what);
                        #[cfg(feature = "checked")]
                        expected.push(refusal(new, align));
                    } else {
                        assert!(want.is_some(), "{what}: impossible realloc got {q:p}");
                        if in_place {
                            assert_eq!(q, b.ptr, "{what}: should have resized in place");
                        }
                        let old = m.live.remove(&b.ptr.addr()).expect("live");
                        // GlobalAlloc keeps the first min(layout size, new) bytes; C
                        // realloc keeps min(usable, new).
                        let kept = if global { old.size } else { old.usable }.min(new);
                        check_fill(q, kept, old.fill, &what);
                        #[cfg(feature = "checked")]
                        if q != b.ptr {
                            freed.push(b.ptr);
                        }
                        m.on_alloc(a, q, new, align, false);
                    }
                }
            }
            Op::Free | Op::Dealloc => {
                let Ok(i) = u.arbitrary::<u16>() else { break };
                let Some(b) = m.nth(usize::from(i)) else {
                    continue;
                };
                m.on_free(b.ptr);
                if matches!(op, Op::Free) {
                    // SAFETY: the block is live and forgotten by the model.
                    unsafe { a.free(b.ptr) };
                } else {
                    // SAFETY: as above, with its layout.
                    unsafe { a.dealloc(b.ptr, b.layout()) };
                }
                #[cfg(feature = "checked")]
                freed.push(b.ptr);
            }
            Op::Query => {
                let Ok(i) = u.arbitrary::<u16>() else { break };
                if let Some(b) = m.nth(usize::from(i)) {
                    assert_eq!(a.usable_size(b.ptr), b.usable);
                    assert!(b.usable >= b.size);
                    assert!(a.owns(b.ptr));
                    check_fill(b.ptr, b.usable, b.fill, "query");
                    // Not a block start: no usable size (a span's tail chunks are not
                    // blocks either).
                    let off = usize::from(i) % (b.usable - 1) + 1;
                    let inner = b.ptr.wrapping_add(off);
                    assert!(a.owns(inner));
                    assert_eq!(a.usable_size(inner), 0, "interior {inner:p} of {:p}", b.ptr);
                }
                let local = 0u64;
                let lp = std::ptr::from_ref(&local).cast::<u8>();
                assert!(!a.owns(lp));
                assert_eq!(a.usable_size(lp), 0);
                let arena = std::ptr::from_ref(a).cast::<u8>();
                assert!(!a.owns(arena), "the side table is not the heap's");
                assert_eq!(a.usable_size(arena), 0);
            }
            Op::GoodSize => {
                let Ok(size) = pick_size(&mut u, heap) else {
                    break;
                };
                let want = expected_usable(size, 1).filter(|&n| n <= heap).unwrap_or(0);
                assert_eq!(a.good_size(size), want, "good_size({size})");
            }
            #[cfg(feature = "checked")]
            Op::DoubleFree => {
                let (Ok(i), Ok(how)) = (u.arbitrary::<u16>(), u.int_in_range(0u8..=1)) else {
                    break;
                };
                let Some(b) = m.nth(usize::from(i)) else {
                    continue;
                };
                m.on_free(b.ptr);
                // SAFETY: the block is live and forgotten by the model.
                unsafe { a.free(b.ptr) };
                reports::expect(before, &[], "first free of a double free");
                // Nobody allocated since: this is a double free.
                if how == 0 {
                    // SAFETY: checked mode refuses a double free and changes nothing.
                    unsafe { a.free(b.ptr) };
                } else {
                    // SAFETY: as above, through dealloc with the block's layout.
                    unsafe { a.dealloc(b.ptr, b.layout()) };
                }
                expected.push(sigalloc::ErrorKind::DoubleFree);
                freed.push(b.ptr);
                let what = format!("double free of {:p}+{} ({:?})", b.ptr, b.size, op);
                reports::expect(before, &expected, &what);
                assert_eq!(reports::last_ptr(), b.ptr.addr(), "{what}");
            }
            #[cfg(feature = "checked")]
            Op::InteriorFree => {
                let (Ok(i), Ok(off), Ok(how)) = (
                    u.arbitrary::<u16>(),
                    u.arbitrary::<u32>(),
                    u.int_in_range(0u8..=1),
                ) else {
                    break;
                };
                let Some(b) = m.nth(usize::from(i)) else {
                    continue;
                };
                let off = off as usize % (b.usable - 1) + 1;
                let p = b.ptr.wrapping_add(off);
                if how == 0 {
                    // SAFETY: checked mode refuses a free of an interior pointer.
                    unsafe { a.free(p) };
                } else {
                    // SAFETY: as above, through dealloc; `usable_size(p)` is 0, so the
                    // layout is not compared.
                    unsafe { a.dealloc(p, b.layout()) };
                }
                expected.push(sigalloc::ErrorKind::InvalidFree);
                let what = format!("interior free {p:p} of {:p}+{}", b.ptr, b.usable);
                reports::expect(before, &expected, &what);
                assert_eq!(reports::last_ptr(), p.addr(), "{what}");
                check_fill(b.ptr, b.usable, b.fill, &what);
            }
            #[cfg(feature = "checked")]
            Op::ForeignFree => {
                let Ok(which) = u.int_in_range(0u8..=4) else {
                    break;
                };
                let mut local = [0u64; 4];
                let boxed = Box::new(0u64);
                let arena = std::ptr::from_ref(a).cast::<u8>().cast_mut();
                let p: *mut u8 = match which {
                    0 => local.as_mut_ptr().cast(),
                    1 => std::ptr::from_ref(&*boxed).cast::<u8>().cast_mut(),
                    // The side table (chunk 0) and the last byte before chunk `first`.
                    2 => arena,
                    3 => arena.wrapping_add(m.first * CHUNK_SIZE - 1),
                    // Just past the arena.
                    _ => arena.wrapping_add(H),
                };
                // SAFETY: checked mode refuses a pointer the heap never handed out.
                unsafe { a.free(p) };
                expected.push(sigalloc::ErrorKind::InvalidFree);
                let what = format!("foreign free {p:p} ({which})");
                reports::expect(before, &expected, &what);
                assert_eq!(reports::last_ptr(), p.addr(), "{what}");
                assert_eq!(local, [0; 4]);
                drop(boxed);
            }
            #[cfg(feature = "checked")]
            Op::StaleFree => {
                let Ok(i) = u.arbitrary::<u16>() else { break };
                if freed.is_empty() {
                    continue;
                }
                let p = freed[usize::from(i) % freed.len()];
                match m.containing(p.addr()) {
                    // Handed out again since: freeing it would be a real free.
                    Some(b) if b.ptr == p => continue,
                    Some(b) => {
                        // SAFETY: checked mode refuses an interior pointer.
                        unsafe { a.free(p) };
                        expected.push(sigalloc::ErrorKind::InvalidFree);
                        let what = format!("stale {p:p} inside live {:p}+{}", b.ptr, b.usable);
                        reports::expect(before, &expected, &what);
                    }
                    None => {
                        // SAFETY: checked mode refuses a pointer that is not a live
                        // block: either a free block (double free) or not a block start
                        // of what its chunk holds now (invalid).
                        unsafe { a.free(p) };
                        let got = reports::snapshot();
                        let double = got[1] - before[1];
                        let invalid = got[0] - before[0];
                        assert_eq!(
                            double + invalid,
                            1,
                            "stale free {p:p}: expected one DoubleFree or InvalidFree report"
                        );
                        expected.push(if double == 1 {
                            sigalloc::ErrorKind::DoubleFree
                        } else {
                            sigalloc::ErrorKind::InvalidFree
                        });
                        reports::expect(before, &expected, "stale free");
                    }
                }
                assert_eq!(reports::last_ptr(), p.addr());
            }
            #[cfg(feature = "checked")]
            Op::WrongLayout => {
                let (Ok(i), Ok(size), Ok(align)) = (
                    u.arbitrary::<u16>(),
                    pick_size(&mut u, heap),
                    pick_align(&mut u),
                ) else {
                    break;
                };
                let Some(b) = m.nth(usize::from(i)) else {
                    continue;
                };
                let Ok(l) = Layout::from_size_align(size.max(1), align) else {
                    continue;
                };
                if expected_usable(l.size(), l.align()) == Some(b.usable) {
                    // The same class or span length: the allocator cannot tell it from
                    // the block's own layout, and frees it.
                    m.on_free(b.ptr);
                    freed.push(b.ptr);
                } else {
                    expected.push(sigalloc::ErrorKind::LayoutMismatch);
                }
                // SAFETY: a live block; checked mode refuses a layout its class or
                // span would not have served and leaves the block live.
                unsafe { a.dealloc(b.ptr, l) };
                let what = format!(
                    "dealloc {:p}+{} (align {}) with {l:?}",
                    b.ptr, b.size, b.align
                );
                reports::expect(before, &expected, &what);
                if !expected.is_empty() {
                    assert_eq!(reports::last_ptr(), b.ptr.addr(), "{what}");
                    assert_eq!(a.usable_size(b.ptr), b.usable, "{what}");
                    check_fill(b.ptr, b.usable, b.fill, &what);
                }
            }
        }
        #[cfg(feature = "checked")]
        {
            reports::expect(before, &expected, &format!("{op:?}"));
            if freed.len() > 64 {
                freed.drain(..32);
            }
        }
        // Exact stats every few ops (a full scan of the side table; every op would
        // dominate the run time).
        if !steps.is_multiple_of(8) {
            continue;
        }
        let s = a.stats();
        assert_eq!(
            s.bytes_in_use,
            m.live_bytes(),
            "after {op:?}: stats disagree with {} live blocks\n{s}",
            m.len()
        );
    }
    m.drain(a);
    #[cfg(feature = "checked")]
    {
        let s = reports::snapshot();
        assert_eq!(s[5], 0, "the allocator reported corruption");
    }
}

/// C-style realloc (named apart from `GlobalAlloc::realloc`).
///
/// # Safety
/// - as for [`SigAlloc::realloc`].
unsafe fn sigalloc_realloc<const H: usize>(a: &SigAlloc<H>, p: *mut u8, size: usize) -> *mut u8 {
    // SAFETY: forwarded from our caller.
    unsafe { a.realloc(p, size) }
}

/// Checks the answer to an allocation request of `size` bytes at `align`.
fn handle_alloc<const H: usize>(
    a: &SigAlloc<H>,
    m: &mut Model,
    p: *mut u8,
    size: usize,
    align: usize,
    zeroed: bool,
    what: &str,
) {
    let want = expected_usable(size, align).filter(|&n| n <= m.heap_bytes());
    match (want, p.is_null()) {
        (None, true) => {}
        (None, false) => panic!("{what}: impossible request got {p:p}"),
        (Some(w), true) => assert!(
            !m.must_hold(w),
            "{what}: null though the heap must hold it ({} live blocks, {} B)\n{}",
            m.len(),
            m.live_bytes(),
            a.stats()
        ),
        (Some(_), false) => m.on_alloc(a, p, size, align, zeroed),
    }
    if std::env::var_os("FUZZ_TRACE").is_some() {
        eprintln!("  {what} -> {p:p}");
    }
}
