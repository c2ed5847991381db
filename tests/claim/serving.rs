//! Claimed regions serve allocations: regions of odd alignments and sizes beside the
//! inline heap, spans too big for the inline heap, and zeroed blocks from dirty RAM.

use std::alloc::{GlobalAlloc, Layout};

/// The largest class served from single chunks (above it, mid-size classes use slabs).
const LARGEST_POW2: usize = 2048;

use super::common::{pattern, Model};
use super::{fill_up, which, Setup, CHUNK, INLINE};

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
        m.free_all(s.a());
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
    pattern::fill(p, want, 0x77);
    // Only 3 chunks are left in the region, and the inline heap has 3.
    assert!(s.a().malloc(4 * CHUNK).is_null());
    // SAFETY: `p` is live and ours.
    let q = unsafe { s.a().realloc(p, 8 * CHUNK) };
    assert_eq!(
        q, p,
        "the span did not grow in place into the free chunks after it"
    );
    pattern::verify(q, want, 0x77, "a span grown in place");
    assert_eq!(s.a().usable_size(q), 8 * CHUNK);
    pattern::fill(q, 8 * CHUNK, 0x78);
    // Small requests still come from the inline heap.
    let small = s.a().malloc(100);
    assert!(!small.is_null());
    let (ilo, ihi) = s.inline();
    assert!(ilo <= small.addr() && small.addr() < ihi);
    pattern::verify(q, 8 * CHUNK, 0x78, "a span beside a small block");
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
    assert!(pattern::zeroed(p, 4 * CHUNK), "a zeroed span is not zero");
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
    // Fill the inline heap (and one region chunk) with the largest class served from
    // single chunks first (a mid-size class's slab would not fit the region).
    let mut held = Vec::new();
    loop {
        let q = s.a().malloc(LARGEST_POW2);
        assert!(!q.is_null());
        held.push(q);
        if lo <= q.addr() && q.addr() < hi {
            break;
        }
    }
    let z = s.a().calloc(1, 64);
    assert!(!z.is_null() && lo <= z.addr() && z.addr() < hi);
    assert!(pattern::zeroed(z, 64), "a zeroed block is not zero");
    held.push(z);
    for q in held {
        // SAFETY: live, ours, freed once.
        unsafe { s.a().free(q) };
    }
    s.a().validate().unwrap();
}
