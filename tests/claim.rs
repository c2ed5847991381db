//! `SigAlloc::claim`: caller RAM of any alignment and size handed to the allocator at
//! run time, also while other threads allocate.
//!
//! What is checked: the byte count `claim` reports (the region's start rounded up to a
//! chunk, its end down, one chunk of side table for regions this small); that every
//! claimed region and the inline heap serve allocations once the memory before them is
//! used, with no two live blocks overlapping and contents kept; that `owns` covers
//! exactly the allocatable chunks (not the skipped head, the side table or the cut
//! tail); the refusals (`TooSmall`, which leaves the region untouched, and `Full` at
//! [`MAX_REGIONS`]); claims racing allocating threads; and spans too big for the inline
//! heap served from a claimed region.
//!
//! The RAM comes from the system heap and is freed once the allocator it was claimed
//! into is gone ([`Setup`] drops them in that order), so the file runs under Miri
//! without leak reports: `cargo +nightly miri test --test claim`.

// A test binary: the atomics here are the test's own bookkeeping, which `clippy.toml`
// (aimed at `src/`, where loom must see every atomic) does not concern.
#![allow(clippy::disallowed_types)]

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

use common::{Fresh, Model, Rng};
use sigalloc::{ClaimError, SigAlloc, CHUNK_SIZE, MAX_REGIONS, MAX_SMALL};

const CHUNK: usize = CHUNK_SIZE;

/// The inline heap of most tests: 4 chunks, one of them its side table.
const INLINE: usize = 16 << 10;

/// Caller RAM on the system heap, handed out as `&'static mut` slices and freed on drop.
struct Ram {
    buf: *mut [MaybeUninit<u8>],
    /// Offset in `buf` of its first chunk-aligned byte.
    aligned: usize,
}

impl Ram {
    /// `len` bytes plus a chunk of slack, so that a slice of `len` bytes can start at
    /// any offset from a chunk boundary. `fill`: initialise every byte to it, else the
    /// bytes are left uninitialised (as RAM handed over by firmware would be).
    fn new(len: usize, fill: Option<u8>) -> Ram {
        // Not `vec![MaybeUninit::uninit(); n]`: that clones byte by byte, slow in Miri.
        let buf = Box::into_raw(Box::<[u8]>::new_uninit_slice(len + CHUNK));
        if let Some(b) = fill {
            // SAFETY: `buf` is valid for writes of its whole length, and ours alone.
            unsafe { buf.cast::<u8>().write_bytes(b, buf.len()) };
        }
        let aligned = buf.cast::<u8>().align_offset(CHUNK);
        assert!(aligned < CHUNK);
        Ram { buf, aligned }
    }

    /// A pointer to byte `at` of the buffer (for addresses and probes).
    fn ptr(&self, at: usize) -> *mut u8 {
        self.buf.cast::<u8>().wrapping_add(at)
    }

    /// `len` bytes at byte `at` of the buffer, as `claim` wants them.
    ///
    /// # Safety
    /// - no two slices handed out overlap, and the buffer is read only after the
    ///   allocator the slice went to is dropped or refused it;
    /// - the slice is not used after the `Ram` is dropped: whatever it is claimed into
    ///   is dropped first.
    unsafe fn slice(&self, at: usize, len: usize) -> &'static mut [MaybeUninit<u8>] {
        assert!(at + len <= self.buf.len(), "slice past the buffer");
        let p = self.buf.cast::<MaybeUninit<u8>>().wrapping_add(at);
        // SAFETY: inside the buffer (asserted), which lives until `self` is dropped;
        // exclusive and not outliving its users by our caller's contract.
        unsafe { &mut *std::ptr::slice_from_raw_parts_mut(p, len) }
    }

    /// Whether the `len` bytes at `at` all still read `fill`.
    fn holds(&self, at: usize, len: usize, fill: u8) -> bool {
        assert!(at + len <= self.buf.len());
        // SAFETY: inside the buffer, initialised to `fill` by `new` unless something
        // wrote there (still initialised bytes); no slice of it is in use any more.
        let s = unsafe { std::slice::from_raw_parts(self.ptr(at), len) };
        same(s, fill)
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: `buf` came from `Box::into_raw` in `new` and is freed once, here;
        // every slice of it is dead (the allocators holding them were dropped first).
        drop(unsafe { Box::from_raw(self.buf) });
    }
}

/// Whether every byte of `s` is `fill` (a slice compare: one memcmp, fast in Miri).
fn same(s: &[u8], fill: u8) -> bool {
    s == vec![fill; s.len()].as_slice()
}

/// Asserts that the `size` bytes at `p`, a live block of ours, all read `fill`.
fn assert_filled(p: *mut u8, size: usize, fill: u8) {
    // SAFETY: a live block of at least `size` bytes that we own and filled.
    let s = unsafe { std::slice::from_raw_parts(p, size) };
    assert!(same(s, fill), "block {p:p}+{size} lost its fill {fill:#x}");
}

/// Where a region handed to `claim` lies (addresses).
#[derive(Clone, Copy, Debug)]
struct Spot {
    /// The caller's bytes: `start..start + len`.
    start: usize,
    len: usize,
    /// `start` rounded up to a chunk.
    base: usize,
    /// `base..end` are the whole chunks inside the caller's bytes.
    end: usize,
}

impl Spot {
    /// Whole chunks after alignment.
    fn chunks(&self) -> usize {
        (self.end - self.base) / CHUNK
    }

    /// The allocatable bytes, if `claim` reported `bytes`: the region's last chunks.
    fn range(&self, bytes: usize) -> (usize, usize) {
        (self.end - bytes, self.end)
    }
}

/// An allocator and the RAM claimed into it; drops the allocator first.
struct Setup<const N: usize> {
    fresh: Fresh<N>,
    ram: Vec<Ram>,
}

impl<const N: usize> Setup<N> {
    fn new() -> Self {
        Setup {
            fresh: Fresh::new(),
            ram: Vec::new(),
        }
    }

    fn a(&self) -> &SigAlloc<N> {
        self.fresh.get()
    }

    /// The inline heap's bytes (the arena is `SigAlloc`'s first field).
    fn inline(&self) -> (usize, usize) {
        let lo = std::ptr::from_ref(self.a()).addr();
        (lo, lo + N)
    }

    /// A fresh region of `len` bytes starting `off` bytes past a chunk boundary, not yet
    /// claimed, and where it lies.
    fn region(
        &mut self,
        off: usize,
        len: usize,
        fill: Option<u8>,
    ) -> (&'static mut [MaybeUninit<u8>], Spot) {
        assert!(off < CHUNK);
        let ram = Ram::new(len + off, fill);
        let at = ram.aligned + off;
        let start = ram.ptr(at).addr();
        let base = start.next_multiple_of(CHUNK);
        let end = if base - start < len {
            base + (len - (base - start)) / CHUNK * CHUNK
        } else {
            base
        };
        // SAFETY: a buffer of its own, given out once; `Setup` drops the allocator
        // before the buffer.
        let slice = unsafe { ram.slice(at, len) };
        self.ram.push(ram);
        (
            slice,
            Spot {
                start,
                len,
                base,
                end,
            },
        )
    }

    /// Claims a fresh region (see [`Setup::region`]).
    fn claim_at(&mut self, off: usize, len: usize) -> (Result<usize, ClaimError>, Spot) {
        let (slice, spot) = self.region(off, len, None);
        (self.a().claim(slice), spot)
    }

    /// A pointer with the address `addr` inside RAM buffer `i` (for `owns` probes).
    fn probe(&self, i: usize, addr: usize) -> *const u8 {
        let p = self.ram[i].ptr(0);
        p.wrapping_add(addr.wrapping_sub(p.addr()))
    }
}

/// Which of `ranges` holds the `size` bytes at `p`; fails if none holds all of them.
fn which(ranges: &[(usize, usize)], p: *mut u8, size: usize) -> usize {
    let (lo, hi) = (p.addr(), p.addr() + size.max(1));
    ranges
        .iter()
        .position(|&(a, b)| a <= lo && hi <= b)
        .unwrap_or_else(|| panic!("{p:p}+{size} lies in none of {ranges:#x?}"))
}

/// A request size: mostly small classes, some of the largest, a few spans of 2-3 chunks.
fn mixed_size(rng: &mut Rng) -> usize {
    match rng.range(0, 15) {
        0 => rng.range(MAX_SMALL + 1, 3 * CHUNK),
        1..=4 => rng.range(257, MAX_SMALL),
        _ => rng.range(1, 256),
    }
}

/// Allocates mixed sizes until 16 requests fail, then blocks of the largest class until
/// null: afterwards no chunk is free (a chunk-sized class takes any free chunk, after
/// reclaiming idle ones). Records every block in `m` (which checks alignment,
/// overlap and fills) and counts the blocks that landed in each of `ranges`.
fn fill_up<const N: usize>(
    a: &SigAlloc<N>,
    ranges: &[(usize, usize)],
    seed: u64,
    m: &mut Model,
) -> Vec<usize> {
    let mut rng = Rng(seed);
    let mut hits = vec![0; ranges.len()];
    let mut fill = 0u8;
    let mut misses = 0;
    loop {
        let size = if misses < 16 {
            mixed_size(&mut rng)
        } else {
            MAX_SMALL
        };
        let p = a.malloc(size);
        if p.is_null() {
            if misses >= 16 {
                break;
            }
            misses += 1;
            continue;
        }
        assert!(a.owns(p), "{p:p} not owned");
        assert!(
            a.owns(p.wrapping_add(size - 1)),
            "end of {p:p}+{size} not owned"
        );
        assert!(a.usable_size(p) >= size);
        hits[which(ranges, p, size)] += 1;
        fill = fill.wrapping_add(1).max(1);
        m.on_alloc(p, size, 16, false, fill);
    }
    let s = a.stats();
    assert_eq!(
        s.chunks_free, 0,
        "malloc({MAX_SMALL}) failed with chunks free: {s:?}"
    );
    hits
}

/// Checks and frees every block of `m`.
fn free_all<const N: usize>(a: &SigAlloc<N>, m: &mut Model) {
    for (p, l) in m.drain() {
        assert_filled(p, l.size, l.fill);
        // SAFETY: a live block of `a`, recorded once, freed once.
        unsafe { a.free(p) };
    }
}

/// Test 1: three regions of odd alignments and sizes, claimed beside a small inline
/// heap, all serve allocations; `owns` covers exactly their allocatable chunks.
#[test]
fn odd_regions_all_serve() {
    let mut s = Setup::<INLINE>::new();
    let s0 = s.a().stats();
    assert_eq!((s0.regions, s0.claimed_bytes), (0, 0));
    assert_eq!(s0.heap_bytes, INLINE - CHUNK);

    // (offset past a chunk boundary, length, whole chunks left after aligning).
    let shapes = [
        (1, 3 * CHUNK + 123, 2),
        (37, 17 * CHUNK + 1, 16),
        (4095, (40 << 10) + 7, 10),
    ];
    let mut spots = Vec::new();
    let mut total = 0;
    for (off, len, chunks) in shapes {
        let (got, spot) = s.claim_at(off, len);
        let bytes = got.unwrap_or_else(|e| panic!("claim({off}, {len}): {e:?}"));
        assert_eq!(spot.chunks(), chunks);
        assert_eq!(bytes % CHUNK, 0);
        assert!(bytes > 0 && bytes <= len && bytes < spot.end - spot.base);
        // Regions this small (under ~70 chunks, in every feature set) need one chunk of
        // side table.
        assert_eq!(bytes, (chunks - 1) * CHUNK, "claim({off}, {len})");
        total += bytes;
        spots.push((spot, bytes));
    }
    let s1 = s.a().stats();
    assert_eq!(s1.regions, 3);
    assert_eq!(s1.claimed_bytes, total);
    assert_eq!(s1.heap_bytes, s0.heap_bytes + total);
    assert_eq!(s1.chunks_total * CHUNK, s1.heap_bytes);
    assert_eq!(s1.chunks_free, s1.chunks_total);
    s.a().validate().unwrap();

    // `owns`: the allocatable chunks only.
    for (i, &(spot, bytes)) in spots.iter().enumerate() {
        let (lo, hi) = spot.range(bytes);
        let owned = |addr: usize| s.a().owns(s.probe(i, addr));
        assert!(owned(lo) && owned(hi - 1) && owned(lo + bytes / 2));
        assert!(
            !owned(spot.start),
            "the unaligned head of region {i} is owned"
        );
        assert!(
            !owned(spot.base - 1),
            "the unaligned head of region {i} is owned"
        );
        assert!(!owned(spot.base), "the side table of region {i} is owned");
        assert!(!owned(lo - 1), "the side table of region {i} is owned");
        assert!(!owned(hi), "the cut tail of region {i} is owned");
        assert!(
            !owned(spot.start + spot.len - 1),
            "the cut tail of region {i} is owned"
        );
    }
    let local = 0u8;
    assert!(!s.a().owns(&local));
    let boxed = Box::new(0u64);
    assert!(!s.a().owns(std::ptr::from_ref(&*boxed).cast()));

    let mut ranges = vec![s.inline()];
    ranges.extend(spots.iter().map(|&(spot, bytes)| spot.range(bytes)));
    for round in 0..if cfg!(miri) { 1 } else { 2 } {
        let mut m = Model::new();
        let hits = fill_up(s.a(), &ranges, 0xC1A1 + round, &mut m);
        println!(
            "round {round}: {} blocks; inline heap, regions: {hits:?}",
            m.len()
        );
        assert!(
            hits.iter().all(|&h| h > 0),
            "round {round}: a region served nothing: {hits:?}"
        );
        let full = s.a().stats();
        assert_eq!(full.heap_bytes, s1.heap_bytes);
        assert!(full.bytes_in_use >= m.bytes());
        free_all(s.a(), &mut m);
        assert_eq!(s.a().stats().bytes_in_use, 0);
        s.a().validate().unwrap();
    }
    // Still usable after two rounds: a span that only a region can hold.
    let p = s.a().malloc(8 * CHUNK);
    assert!(!p.is_null());
    assert_eq!(which(&ranges, p, 8 * CHUNK), 2);
    // SAFETY: live, ours, freed once.
    unsafe { s.a().free(p) };
    s.a().validate().unwrap();
}

/// Test 2: regions that cannot hold their side table and one chunk are refused as
/// `TooSmall`, and left untouched; the allocator does not change.
#[test]
fn too_small_is_refused_untouched() {
    const FILL: u8 = 0x5A;
    let mut s = Setup::<INLINE>::new();
    let before = s.a().stats();
    // (offset past a chunk boundary, length): at most one whole chunk after aligning.
    let shapes = [
        (0, 0),
        (37, 0),
        (1, 100),
        (1, 4095),
        (0, CHUNK),
        (0, 2 * CHUNK - 1),
        (1, 4095 + 2 * CHUNK - 1),
        (4095, 1 + 2 * CHUNK - 1),
        (2048, 3 * CHUNK - 2049),
    ];
    for (off, len) in shapes {
        let (slice, spot) = s.region(off, len, Some(FILL));
        assert!(spot.chunks() <= 1);
        assert_eq!(
            s.a().claim(slice),
            Err(ClaimError::TooSmall),
            "claim({off}, {len})"
        );
        let ram = s.ram.last().unwrap();
        assert!(
            ram.holds(0, ram.buf.len(), FILL),
            "a refused region ({off}, {len}) was written"
        );
        assert_eq!(
            s.a().stats(),
            before,
            "a refused claim ({off}, {len}) changed stats"
        );
    }
    s.a().validate().unwrap();
    // One byte more than the last refusals: two chunks, one of them allocatable.
    for (off, len) in [(1, 4095 + 2 * CHUNK), (0, 2 * CHUNK), (4095, 1 + 2 * CHUNK)] {
        let (got, spot) = s.claim_at(off, len);
        assert_eq!(spot.chunks(), 2);
        assert_eq!(got, Ok(CHUNK), "claim({off}, {len})");
    }
    let after = s.a().stats();
    assert_eq!(after.regions, 3);
    assert_eq!(after.claimed_bytes, 3 * CHUNK);
    assert_eq!(after.heap_bytes, before.heap_bytes + 3 * CHUNK);
    s.a().validate().unwrap();
}

/// Test 3: the registry holds [`MAX_REGIONS`]; one more is refused as `Full`, untouched,
/// and all the regions it did take serve allocations.
#[test]
fn full_registry_is_refused() {
    const FILL: u8 = 0xC3;
    assert_eq!(MAX_REGIONS, 63);
    let mut s = Setup::<INLINE>::new();
    // One buffer cut into MAX_REGIONS + 1 aligned two-chunk regions.
    let ram = Ram::new((MAX_REGIONS + 1) * 2 * CHUNK, Some(FILL));
    for i in 0..MAX_REGIONS {
        // SAFETY: disjoint two-chunk slices of a buffer that `Setup` frees after the
        // allocator.
        let slice = unsafe { ram.slice(ram.aligned + i * 2 * CHUNK, 2 * CHUNK) };
        assert_eq!(s.a().claim(slice), Ok(CHUNK), "region {i}");
    }
    let full = s.a().stats();
    assert_eq!(full.regions, MAX_REGIONS);
    assert_eq!(full.claimed_bytes, MAX_REGIONS * CHUNK);
    let last_at = ram.aligned + MAX_REGIONS * 2 * CHUNK;
    // SAFETY: the last two chunks, not given out before.
    let slice = unsafe { ram.slice(last_at, 2 * CHUNK) };
    assert_eq!(s.a().claim(slice), Err(ClaimError::Full));
    assert!(
        ram.holds(last_at, 2 * CHUNK, FILL),
        "the refused region was written"
    );
    assert_eq!(s.a().stats(), full);
    // Too small is still too small when full.
    // SAFETY: an empty slice.
    let empty = unsafe { ram.slice(last_at, 0) };
    assert_eq!(s.a().claim(empty), Err(ClaimError::TooSmall));
    s.a().validate().unwrap();
    let region_base = ram.ptr(ram.aligned).addr();
    s.ram.push(ram);

    // Every region serves: one-chunk spans, the inline heap's three first.
    let mut got = Vec::new();
    loop {
        let p = s.a().malloc(CHUNK);
        if p.is_null() {
            break;
        }
        got.push(p);
    }
    assert_eq!(got.len(), 3 + MAX_REGIONS);
    let mut regions: Vec<usize> = got[3..]
        .iter()
        .map(|p| {
            let off = p.addr() - region_base;
            assert_eq!(off % (2 * CHUNK), CHUNK, "{p:p} is not a region's chunk");
            off / (2 * CHUNK)
        })
        .collect();
    regions.sort_unstable();
    assert_eq!(regions, (0..MAX_REGIONS).collect::<Vec<_>>());
    for p in got {
        // SAFETY: live, ours, freed once.
        unsafe { s.a().free(p) };
    }
    assert_eq!(s.a().stats().bytes_in_use, 0);
    s.a().validate().unwrap();
}

/// Sizes for the concurrent test, smaller under Miri.
#[cfg(not(miri))]
mod sizes {
    pub(crate) const REGIONS: usize = 8;
    /// Operations the workers run between two claims.
    pub(crate) const OPS_PER_CLAIM: usize = 5_000;
    /// Blocks a worker holds at most while churning.
    pub(crate) const HOLD: usize = 48;
}
#[cfg(miri)]
mod sizes {
    pub(crate) const REGIONS: usize = 2;
    pub(crate) const OPS_PER_CLAIM: usize = 40;
    pub(crate) const HOLD: usize = 12;
}

/// Every live block of every thread: start -> end. Catches two threads given
/// overlapping blocks the moment the second gets its block.
struct Live(Mutex<BTreeMap<usize, usize>>);

impl Live {
    fn add(&self, p: *mut u8, size: usize) {
        let (lo, hi) = (p.addr(), p.addr() + size.max(1));
        let mut m = self.0.lock().unwrap();
        if let Some((&a, &b)) = m.range(..hi).next_back() {
            assert!(
                b <= lo,
                "{p:p}+{size} overlaps the live block {a:#x}..{b:#x}"
            );
        }
        m.insert(lo, hi);
    }
    fn remove(&self, p: *mut u8) {
        assert!(self.0.lock().unwrap().remove(&p.addr()).is_some());
    }
}

/// A block a worker of test 4 holds: where, how long, and the byte it is filled with.
struct Held {
    p: *mut u8,
    size: usize,
    fill: u8,
}

/// One allocating thread of test 4: churns while the claims go on, then allocates until
/// null, then frees everything. Every block is filled with a byte of this thread's own
/// and checked before it is freed. Returns how many blocks landed in each of `ranges`.
fn worker<const N: usize>(
    a: &SigAlloc<N>,
    t: usize,
    ranges: &[(usize, usize)],
    ops: &AtomicUsize,
    done: &AtomicBool,
    live: &Live,
) -> Vec<usize> {
    let mut held: Vec<Held> = Vec::new();
    let mut rng = Rng(0x7EA0 + t as u64);
    let mut hits = vec![0; ranges.len()];
    let mut fill = (t as u8) << 6;
    let mut take = |held: &mut Vec<Held>, p: *mut u8, size: usize| {
        assert_eq!(p.addr() % 16, 0, "{p:p} is not 16-aligned");
        assert!(a.usable_size(p) >= size);
        live.add(p, size);
        hits[which(ranges, p, size)] += 1;
        fill = fill.wrapping_add(1).max(1);
        // SAFETY: a fresh block of at least `size` bytes, ours alone (the live map
        // checked that no other live block overlaps it).
        unsafe { p.write_bytes(fill, size) };
        held.push(Held { p, size, fill });
    };
    let give = |h: Held| {
        assert_filled(h.p, h.size, h.fill);
        live.remove(h.p);
        // SAFETY: a live block of ours, forgotten by the live map first.
        unsafe { a.free(h.p) };
    };
    // ORDERING: Acquire pairs with the claimer's Release: its claims happened before.
    while !done.load(Ordering::Acquire) {
        // ORDERING: Relaxed: only paces the claimer.
        ops.fetch_add(1, Ordering::Relaxed);
        if held.len() < sizes::HOLD && rng.range(0, 2) != 0 {
            let size = mixed_size(&mut rng);
            let p = a.malloc(size);
            if !p.is_null() {
                take(&mut held, p, size);
            }
        } else if !held.is_empty() {
            let i = rng.range(0, held.len() - 1);
            give(held.swap_remove(i));
        }
    }
    // Every region is published: allocate until null, so every chunk is used.
    let mut misses = 0;
    loop {
        let size = if misses < 8 {
            mixed_size(&mut rng)
        } else {
            MAX_SMALL
        };
        let p = a.malloc(size);
        if p.is_null() {
            if misses >= 8 {
                break;
            }
            misses += 1;
            continue;
        }
        take(&mut held, p, size);
    }
    held.into_iter().for_each(give);
    hits
}

/// Test 4: regions claimed one by one while three threads allocate and free: every claim
/// succeeds, no two live blocks overlap, contents are kept, and every region is used.
#[test]
fn claims_race_allocations() {
    const THREADS: usize = 3;
    let mut s = Setup::<INLINE>::new();
    let mut regions = Vec::new();
    let mut ranges = vec![s.inline()];
    for i in 0..sizes::REGIONS {
        // 5 whole chunks after aligning: 4 allocatable.
        let (slice, spot) = s.region(1 + 509 * i, 5 * CHUNK + 4095, None);
        assert_eq!(spot.chunks(), 5);
        ranges.push(spot.range(4 * CHUNK));
        regions.push(slice);
    }
    let a = s.a();
    let ops = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let live = Live(Mutex::new(BTreeMap::new()));
    let hits = thread::scope(|sc| {
        let (ranges, ops, done, live) = (&ranges, &ops, &done, &live);
        let workers: Vec<_> = (0..THREADS)
            .map(|t| sc.spawn(move || worker(a, t, ranges, ops, done, live)))
            .collect();
        sc.spawn(move || {
            for (i, region) in regions.into_iter().enumerate() {
                // ORDERING: Relaxed: pacing only.
                while ops.load(Ordering::Relaxed) < (i + 1) * sizes::OPS_PER_CLAIM {
                    thread::yield_now();
                }
                assert_eq!(a.claim(region), Ok(4 * CHUNK), "region {i}");
                assert!(a.stats().regions > i);
            }
            // ORDERING: Release: the workers' last round sees every region.
            done.store(true, Ordering::Release);
        });
        let mut sum = vec![0; ranges.len()];
        for w in workers {
            for (total, h) in sum.iter_mut().zip(w.join().unwrap()) {
                *total += h;
            }
        }
        sum
    });
    println!("blocks in the inline heap, regions: {hits:?}");
    assert!(
        hits.iter().all(|&h| h > 0),
        "a region served nothing: {hits:?}"
    );
    let st = a.stats();
    assert_eq!(st.regions, sizes::REGIONS);
    assert_eq!(st.claimed_bytes, sizes::REGIONS * 4 * CHUNK);
    assert_eq!(st.bytes_in_use, 0);
    a.validate().unwrap();
}

/// Test 5: a span larger than the whole inline heap is served from a claimed region,
/// grows in place there, and `good_size` knows the region.
#[test]
fn span_beyond_inline_heap() {
    let mut s = Setup::<INLINE>::new();
    let want = 5 * CHUNK; // more than the inline heap's 3 allocatable chunks
    assert!(s.a().malloc(want).is_null());
    assert_eq!(s.a().good_size(want), 0);
    let (got, spot) = s.claim_at(37, 9 * CHUNK + 4059 + 100);
    assert_eq!(spot.chunks(), 9);
    assert_eq!(got, Ok(8 * CHUNK));
    let (lo, hi) = spot.range(8 * CHUNK);
    assert_eq!(s.a().good_size(want), want);
    assert_eq!(s.a().good_size(8 * CHUNK), 8 * CHUNK);
    assert_eq!(s.a().good_size(8 * CHUNK + 1), 0);

    let p = s.a().malloc(want);
    assert!(!p.is_null());
    assert!(
        lo <= p.addr() && p.addr() + want <= hi,
        "{p:p} not in the region"
    );
    assert_eq!(p.addr() % CHUNK, 0);
    assert!(s.a().owns(p));
    assert_eq!(s.a().usable_size(p), want);
    // SAFETY: a live block of `want` bytes, ours.
    unsafe { p.write_bytes(0x77, want) };
    // Only 3 chunks are left in the region, and the inline heap has 3.
    assert!(s.a().malloc(4 * CHUNK).is_null());
    // SAFETY: `p` is live and ours.
    let q = unsafe { s.a().realloc(p, 8 * CHUNK) };
    assert_eq!(
        q, p,
        "the span did not grow in place into the free chunks after it"
    );
    assert_filled(q, want, 0x77);
    assert_eq!(s.a().usable_size(q), 8 * CHUNK);
    // SAFETY: `q` is live, ours, `8 * CHUNK` bytes long now.
    unsafe { q.write_bytes(0x78, 8 * CHUNK) };
    // Small requests still come from the inline heap.
    let small = s.a().malloc(100);
    assert!(!small.is_null());
    let (ilo, ihi) = s.inline();
    assert!(ilo <= small.addr() && small.addr() < ihi);
    assert_filled(q, 8 * CHUNK, 0x78);
    // SAFETY: both live, ours, freed once.
    unsafe {
        s.a().free(small);
        s.a().free(q);
    }
    s.a().validate().unwrap();

    // `GlobalAlloc` with a chunk alignment: from the region too.
    let layout = Layout::from_size_align(want, CHUNK).unwrap();
    // SAFETY: a non-zero-sized layout.
    let r = unsafe { s.a().alloc(layout) };
    assert!(!r.is_null() && lo <= r.addr() && r.addr() + want <= hi);
    // SAFETY: live, allocated with `layout`.
    unsafe { s.a().dealloc(r, layout) };
    assert_eq!(s.a().stats().bytes_in_use, 0);
    s.a().validate().unwrap();
}

/// A zeroed span served from claimed RAM whose bytes are not zero must read zero:
/// claimed RAM may hold anything, and `claim` zeroes only its side table.
#[test]
fn zeroed_span_from_dirty_claimed_ram() {
    const FILL: u8 = 0xAA;
    let mut s = Setup::<INLINE>::new();
    let (slice, spot) = s.region(0, 5 * CHUNK, Some(FILL));
    assert_eq!(s.a().claim(slice), Ok(4 * CHUNK));
    let (lo, hi) = spot.range(4 * CHUNK);
    // Four chunks: only the region can hold them.
    let p = s.a().calloc(1, 4 * CHUNK);
    assert!(!p.is_null() && lo <= p.addr() && p.addr() < hi);
    assert_filled(p, 4 * CHUNK, 0);
    // SAFETY: live, ours, freed once.
    unsafe { s.a().free(p) };
    s.a().validate().unwrap();
}

/// A zeroed small block served from claimed RAM whose bytes are not zero must read
/// zero (as above, for a chunk formatted for a size class).
#[test]
fn zeroed_block_from_dirty_claimed_ram() {
    const FILL: u8 = 0xAA;
    let mut s = Setup::<INLINE>::new();
    let (slice, spot) = s.region(0, 5 * CHUNK, Some(FILL));
    assert_eq!(s.a().claim(slice), Ok(4 * CHUNK));
    let (lo, hi) = spot.range(4 * CHUNK);
    // Fill the inline heap (and one region chunk) with the largest class first.
    let mut held = Vec::new();
    loop {
        let q = s.a().malloc(MAX_SMALL);
        assert!(!q.is_null());
        held.push(q);
        if lo <= q.addr() && q.addr() < hi {
            break;
        }
    }
    let z = s.a().calloc(1, 64);
    assert!(!z.is_null() && lo <= z.addr() && z.addr() < hi);
    assert_filled(z, 64, 0);
    held.push(z);
    for q in held {
        // SAFETY: live, ours, freed once.
        unsafe { s.a().free(q) };
    }
    s.a().validate().unwrap();
}
