//! Refused claims: regions too small for their side table and one chunk (`TooSmall`)
//! and regions past [`MAX_REGIONS`] (`Full`) are refused, left untouched, and change
//! nothing.

use sigalloc::{ClaimError, MAX_REGIONS};

use super::{Ram, Setup, CHUNK, INLINE};

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
