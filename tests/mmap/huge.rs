//! Huge blocks: requests of `HUGE_THRESHOLD` bytes or more get a page-aligned mapping
//! each, and freeing them gives both the mappings and the resident memory back;
//! `realloc` of a huge block keeps its contents, and a shrink by less than half stays
//! in place.

use super::common::{pattern, serial, Fresh};
use super::{mappings, mib, newly_writable, rss, writable, KIB, MIB, PAGE};

const HUGE: usize = 8 * MIB;
const HUGE_COUNT: usize = 100;

/// Fills every page of a huge block: its fill byte, and the page's number in its first
/// eight bytes.
///
/// # Safety
/// - `p` is a live block of at least `len` bytes (a multiple of `PAGE`) that we own.
unsafe fn fill_pages(p: *mut u8, len: usize, fill: u8) {
    // SAFETY: the caller's contract.
    unsafe { p.write_bytes(fill, len) };
    for page in 0..len / PAGE {
        // SAFETY: inside the block; blocks are page-aligned, so the word is aligned.
        unsafe { p.add(page * PAGE).cast::<u64>().write(page as u64) };
    }
}

/// Checks the first `len` bytes of a block filled by [`fill_pages`].
///
/// # Safety
/// - `p` is a live block of at least `len` bytes (a multiple of `PAGE`).
unsafe fn check_pages(p: *const u8, len: usize, fill: u8) {
    for page in 0..len / PAGE {
        let at = p.wrapping_add(page * PAGE);
        // SAFETY: inside the block, aligned (as in `fill_pages`).
        let n = unsafe { at.cast::<u64>().read() };
        assert_eq!(n, page as u64, "{p:p}: page {page} lost its number");
        // SAFETY: the rest of that page, inside the block.
        let rest = unsafe { std::slice::from_raw_parts(at.wrapping_add(8), PAGE - 8) };
        assert!(pattern::all_bytes(rest, fill), "{p:p}: page {page} changed");
    }
}

#[test]
fn huge_blocks_get_own_mappings_and_give_them_back() {
    let _turn = serial();
    let fresh = Fresh::<{ 64 << 10 }>::new();
    let a = fresh.get();
    a.enable_mmap();
    let mut ptrs = Vec::with_capacity(HUGE_COUNT);
    assert_eq!(a.good_size(HUGE), HUGE);

    let maps0 = mappings();
    let writable0 = writable();
    let rss0 = rss();
    for i in 0..HUGE_COUNT {
        let p = a.malloc(HUGE);
        assert!(!p.is_null(), "huge block {i}: null");
        assert_eq!(p.addr() % PAGE, 0, "huge block {p:p} is not page-aligned");
        let usable = a.usable_size(p);
        // One header page before the block; the block itself is the request rounded up
        // to a page.
        assert!(
            (HUGE..HUGE + PAGE).contains(&usable),
            "usable_size {usable}"
        );
        assert!(a.owns(p));
        // SAFETY: a live block of `HUGE` bytes, ours.
        unsafe { fill_pages(p, HUGE, i as u8) };
        ptrs.push(p);
    }
    let s = a.stats();
    let maps_full = mappings();
    let grown_full = newly_writable(&writable0, &writable());
    let rss_full = rss();
    assert_eq!(s.huge_mappings, HUGE_COUNT);
    assert_eq!(
        s.huge_bytes,
        HUGE_COUNT * (HUGE + PAGE),
        "header page + block each"
    );
    assert_eq!(
        s.mapped_regions, 0,
        "huge blocks are not served from regions"
    );
    assert!(s.bytes_in_use >= HUGE_COUNT * HUGE);
    // Each block is a mapping of its own: new bytes, even where the kernel merged
    // neighbouring mappings into one line of /proc/self/maps.
    assert!(
        grown_full >= HUGE_COUNT * (HUGE + PAGE),
        "only {:.1} MiB newly mapped",
        mib(grown_full)
    );
    // Every page was written, so every page is resident (there is no swap to lose it to
    // that would matter: the check allows 1 %).
    assert!(
        rss_full.saturating_sub(rss0) >= HUGE_COUNT * HUGE / 100 * 99,
        "RSS grew only {:.1} MiB",
        mib(rss_full.saturating_sub(rss0))
    );
    for (i, &p) in ptrs.iter().enumerate() {
        // SAFETY: live, `HUGE` bytes.
        unsafe { check_pages(p, HUGE, i as u8) };
    }

    for &p in &ptrs {
        // SAFETY: a live block of ours, freed once.
        unsafe { a.free(p) };
    }
    let s = a.stats();
    let maps_freed = mappings();
    let grown_freed = newly_writable(&writable0, &writable());
    let rss_freed = rss();
    println!(
        "huge: maps {maps0} -> {maps_full} -> {maps_freed} lines; newly writable {:.1} -> \
         {:.1} MiB; RSS {:.1} -> {:.1} -> {:.1} MiB",
        mib(grown_full),
        mib(grown_freed),
        mib(rss0),
        mib(rss_full),
        mib(rss_freed)
    );
    assert_eq!(s.huge_mappings, 0);
    assert_eq!(s.huge_bytes, 0);
    assert_eq!(s.bytes_in_use, 0);
    for &p in &ptrs {
        // The table answers for a freed block without touching its (unmapped) memory.
        assert_eq!(a.usable_size(p), 0);
        assert!(!a.owns(p));
    }
    // Margins for the test harness, which may start another test's thread meanwhile (a
    // 2 MiB stack; see `without_enable_mmap_nothing_is_mapped`).
    assert!(
        grown_freed < HUGE,
        "{:.1} MiB stay mapped after freeing every huge block",
        mib(grown_freed)
    );
    assert!(
        maps_freed <= maps0 + 8,
        "{} mappings left after freeing every huge block",
        maps_freed - maps0
    );
    assert!(
        rss_freed <= rss0 + 8 * MIB,
        "RSS stays {:.1} MiB above its start",
        mib(rss_freed - rss0)
    );

    // realloc: growing moves to a larger mapping and keeps the contents.
    let p = a.malloc(HUGE);
    assert!(!p.is_null());
    // SAFETY: live, `HUGE` bytes, ours.
    unsafe { fill_pages(p, HUGE, 0xA5) };
    // SAFETY: `p` is live and ours.
    let q = unsafe { a.realloc(p, 2 * HUGE) };
    assert!(!q.is_null());
    assert!(a.usable_size(q) >= 2 * HUGE);
    // SAFETY: `q` is live with at least `2 * HUGE` bytes; the first `HUGE` were kept.
    unsafe { check_pages(q, HUGE, 0xA5) };
    assert_eq!(a.stats().huge_mappings, 1, "the old mapping went");
    // SAFETY: the new half is ours too.
    unsafe { fill_pages(q.add(HUGE), HUGE, 0x5A) };

    // Shrinking by less than half keeps the mapping (and the pointer).
    // SAFETY: `q` is live and ours.
    let r = unsafe { a.realloc(q, 3 * HUGE / 2) };
    assert_eq!(r, q, "a shrink by a quarter moved the block");
    assert!(a.usable_size(r) >= 3 * HUGE / 2);
    // SAFETY: live, at least `3 * HUGE / 2` bytes.
    unsafe {
        check_pages(r, HUGE, 0xA5);
        check_pages(r.add(HUGE), HUGE / 2, 0x5A);
    }

    // Shrinking to a quarter, then below the huge threshold, keeps the contents too.
    // SAFETY: `r` is live and ours.
    let r = unsafe { a.realloc(r, HUGE / 4) };
    assert!(!r.is_null());
    assert!(a.usable_size(r) >= HUGE / 4);
    assert_eq!(a.stats().huge_mappings, 1);
    // SAFETY: live, at least `HUGE / 4` bytes.
    unsafe { check_pages(r, HUGE / 4, 0xA5) };
    // SAFETY: `r` is live and ours.
    let r = unsafe { a.realloc(r, 64 * KIB) };
    assert!(!r.is_null());
    assert!(a.owns(r));
    // SAFETY: live, at least 64 KiB.
    unsafe { check_pages(r, 64 * KIB, 0xA5) };
    assert_eq!(a.stats().huge_mappings, 0, "64 KiB lives in the heap");
    // SAFETY: live, ours, freed once.
    unsafe { a.free(r) };

    // A huge calloc is zero.
    let z = a.calloc(HUGE / 8, 8);
    assert!(!z.is_null());
    assert!(pattern::zeroed(z, HUGE), "a huge calloc is not zero");
    // SAFETY: live, ours, freed once.
    unsafe { a.free(z) };
    let s = a.stats();
    assert_eq!((s.huge_mappings, s.huge_bytes, s.bytes_in_use), (0, 0, 0));
    a.validate().expect("heap invalid after the huge blocks");
    assert!(mappings() <= maps0 + 8);
    assert!(newly_writable(&writable0, &writable()) < HUGE);
}
