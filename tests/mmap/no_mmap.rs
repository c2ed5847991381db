//! Off by default: without `enable_mmap` the allocator fills its heap, then returns
//! null, also for huge requests; it maps nothing and hands out no more than its heap.

use sigalloc::{HUGE_THRESHOLD, MIN_REGION};

use super::common::{pattern, serial, Fresh, Rng};
use super::{mappings, mib, newly_writable, writable, KIB, MIB};

#[test]
fn without_enable_mmap_nothing_is_mapped() {
    let _turn = serial();
    const N: usize = 1 << 20;
    let fresh = Fresh::<N>::new();
    let a = fresh.get();
    assert!(!a.mmap_enabled());
    // Room for every block a 1 MiB heap can hold (256 chunks of up to 256 16 B blocks).
    let mut ptrs: Vec<(*mut u8, usize)> = Vec::with_capacity(N / 16);
    let heap = a.stats().heap_bytes;
    assert!(heap <= N);

    let maps0 = mappings();
    let writable0 = writable();
    assert!(
        a.malloc(8 * MIB).is_null(),
        "8 MiB from an empty 1 MiB heap"
    );
    // Random sizes up to 64 KiB until the first null, then large to small, each size
    // until null, so every chunk ends up used.
    let mut rng = Rng(0x0FF);
    let take = |size: usize, ptrs: &mut Vec<(*mut u8, usize)>| {
        let p = a.malloc(size);
        if !p.is_null() {
            pattern::fill(p, size, 0xC3);
            ptrs.push((p, size));
            assert!(ptrs.len() <= N / 16, "more blocks than the heap can hold");
        }
        !p.is_null()
    };
    while take(rng.range(16, 64 * KIB), &mut ptrs) {}
    let random = ptrs.len();
    for size in [256 * KIB, 64 * KIB, 4 * KIB, KIB, 256, 16] {
        while take(size, &mut ptrs) {}
    }
    let handed_out: usize = ptrs.iter().map(|&(p, _)| a.usable_size(p)).sum();
    let s = a.stats();
    assert!(a.malloc(8 * MIB).is_null(), "8 MiB without mmap");
    assert!(
        a.malloc(HUGE_THRESHOLD).is_null(),
        "a huge block without mmap"
    );
    assert!(a.calloc(1, 8 * MIB).is_null());
    // A failed realloc leaves the block as it was.
    let (p, size) = ptrs[0];
    // SAFETY: `p` is live and ours.
    assert!(unsafe { a.realloc(p, 8 * MIB) }.is_null());
    assert!(
        pattern::holds(p, size, 0xC3),
        "a failed realloc changed the block"
    );
    assert_eq!(a.trim(), 0, "no mapped region to trim");
    let maps_full = mappings();
    let grown = newly_writable(&writable0, &writable());
    println!(
        "no mmap: {} blocks ({random} of random sizes), {:.3} MiB handed out of a \
         {:.3} MiB heap; maps {maps0} -> {maps_full} lines, {:.3} MiB newly writable",
        ptrs.len(),
        mib(handed_out),
        mib(heap),
        mib(grown),
    );

    assert!(
        handed_out <= heap,
        "handed out {handed_out} bytes from a {heap}-byte heap"
    );
    // Filled down to 16 B blocks: only the chunks held in active slots can keep a few
    // free blocks of their class.
    assert!(
        handed_out >= heap / 100 * 95,
        "only {handed_out} of {heap} bytes"
    );
    assert_eq!(s.mapped_regions, 0);
    assert_eq!(s.mapped_bytes, 0);
    assert_eq!(s.huge_mappings, 0);
    assert_eq!(s.huge_bytes, 0);
    assert_eq!(s.released_bytes, 0);
    assert_eq!(s.regions, 0);
    assert_eq!(s.heap_bytes, heap, "the heap did not grow");
    // The process is shared with the test harness, which may start the next test's
    // thread meanwhile: a 2 MiB stack and its guard page (2 lines), maybe a glibc arena
    // (its first 132 KiB writable, 2 lines). The allocator maps at least `MIN_REGION`
    // (4 MiB) for a region, and a region shows as new bytes even where the kernel
    // merges it into a neighbouring mapping (so the line count stays). Huge blocks
    // (1 MiB and up) are excluded by `huge_mappings == 0` above and the nulls.
    assert!(
        grown < MIN_REGION,
        "{:.3} MiB became writable without enable_mmap",
        mib(grown)
    );
    assert!(
        maps_full <= maps0 + 4,
        "the process gained {} mappings",
        maps_full - maps0
    );

    for &(p, size) in &ptrs {
        assert!(pattern::holds(p, size, 0xC3), "block {p:p}+{size} changed");
        // SAFETY: live blocks of ours, each freed once.
        unsafe { a.free(p) };
    }
    a.validate().expect("heap invalid after the frees");
    assert_eq!(a.stats().bytes_in_use, 0);
    let big = a.malloc(512 * KIB);
    assert!(!big.is_null(), "the emptied heap serves a large span again");
    // SAFETY: live, ours, freed once.
    unsafe { a.free(big) };
    assert!(newly_writable(&writable0, &writable()) < MIN_REGION);
    assert!(mappings() <= maps0 + 4);
    assert_eq!(a.stats().mapped_regions, 0);
}
