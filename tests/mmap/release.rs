//! RSS release: freeing 64 MiB of small blocks in mapped regions gives at least half of
//! it back to the OS with no call to `trim`; `trim` gives back the rest, and released
//! memory comes back zeroed and reusable.

use sigalloc::CHUNK_SIZE;

use super::common::{pattern, serial, Fresh};
use super::{mib, rss, KIB, MIB};

const SMALL: usize = KIB;
const SMALL_COUNT: usize = 64 * MIB / SMALL;

#[test]
fn freed_mapped_chunks_are_released_without_trim() {
    let _turn = serial();
    // A 64 KiB inline heap: nearly everything lands in mapped regions.
    let fresh = Fresh::<{ 64 << 10 }>::new();
    let a = fresh.get();
    a.enable_mmap();
    let mut ptrs = Vec::with_capacity(SMALL_COUNT);
    // Touch the vector's pages now, so they stay out of the measurements.
    ptrs.resize(SMALL_COUNT, std::ptr::null_mut::<u8>());
    ptrs.clear();

    let rss0 = rss();
    for i in 0..SMALL_COUNT {
        let p = a.malloc(SMALL);
        assert!(!p.is_null(), "block {i}: null with mmap enabled");
        pattern::fill(p, SMALL, i as u64);
        ptrs.push(p);
    }
    let full = a.stats();
    let rss_full = rss();
    assert!(full.mapped_regions > 0);
    assert!(
        full.mapped_bytes >= 64 * MIB - 64 * KIB,
        "the blocks live in mapped regions"
    );
    assert!(
        rss_full - rss0 >= 60 * MIB,
        "64 MiB written, RSS grew {:.1} MiB",
        mib(rss_full - rss0)
    );

    for (i, &p) in ptrs.iter().enumerate() {
        assert!(pattern::holds(p, SMALL, i as u64), "block {i} changed");
        // SAFETY: a live block of ours, freed once.
        unsafe { a.free(p) };
    }
    ptrs.clear();
    let freed = a.stats();
    let rss_freed = rss();
    a.validate().expect("heap invalid after the frees");
    assert_eq!(freed.bytes_in_use, 0);
    assert!(
        rss_full.saturating_sub(rss_freed) >= 32 * MIB,
        "freeing 64 MiB gave back only {:.1} MiB of RSS (no trim)",
        mib(rss_full.saturating_sub(rss_freed))
    );
    assert!(
        freed.released_bytes > 32 * MIB,
        "released_bytes {:.1} MiB",
        mib(freed.released_bytes)
    );

    // trim gives back the rest at once, and then there is nothing left to give.
    let trimmed = a.trim();
    let rss_trim = rss();
    let after = a.stats();
    assert_eq!(after.released_bytes, freed.released_bytes + trimmed);
    assert_eq!(trimmed % CHUNK_SIZE, 0);
    assert_eq!(a.trim(), 0, "a second trim found dirty free chunks");
    assert!(rss_trim <= rss_freed + MIB, "RSS rose after trim");
    println!(
        "release: RSS {:.1} MiB before, {:.1} full, {:.1} after free (released {:.1} \
         MiB automatically), {:.1} after trim ({:.1} MiB more); {} regions, {:.1} MiB \
         mapped",
        mib(rss0),
        mib(rss_full),
        mib(rss_freed),
        mib(freed.released_bytes),
        mib(rss_trim),
        mib(trimmed),
        full.mapped_regions,
        mib(full.mapped_bytes),
    );

    // Released memory serves the same demand again: no new region, and `calloc` is zero
    // there (the allocator skips the memset on chunks it knows the OS zeroed).
    for i in 0..SMALL_COUNT {
        let p = a.calloc(1, SMALL);
        assert!(!p.is_null(), "block {i}: null on the second fill");
        assert!(pattern::zeroed(p, SMALL), "calloc block {i} is not zero");
        pattern::fill(p, SMALL, !(i as u64));
        ptrs.push(p);
    }
    let refill = a.stats();
    // One thread asking for the same blocks in the same order, with every chunk free:
    // the regions that held them once hold them again.
    assert_eq!(
        refill.mapped_regions, full.mapped_regions,
        "a region was added"
    );
    assert_eq!(refill.mapped_bytes, full.mapped_bytes);
    for (i, &p) in ptrs.iter().enumerate() {
        assert!(pattern::holds(p, SMALL, !(i as u64)), "block {i} changed");
        // SAFETY: a live block of ours, freed once.
        unsafe { a.free(p) };
    }
    a.trim();
    let rss_end = rss();
    println!(
        "release: RSS {:.1} MiB after a second fill, free and trim",
        mib(rss_end)
    );
    assert!(
        rss_end <= rss0 + 8 * MIB,
        "RSS stays {:.1} MiB above its start after trim",
        mib(rss_end.saturating_sub(rss0))
    );
    a.validate().expect("heap invalid at the end");
}
