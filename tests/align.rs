//! Alignments above a chunk, up to `MAX_ALIGN` (2 MiB): spans that start at an aligned
//! chunk of a region, huge mappings placed at an aligned address, and a clean null
//! above the limit. (The C library's `posix_memalign` and `aligned_alloc` rest on it.)
#![allow(clippy::unwrap_used, clippy::undocumented_unsafe_blocks)]

use std::alloc::{GlobalAlloc, Layout};

use sigalloc::{SigAlloc, CHUNK_SIZE, MAX_ALIGN};

/// A heap large enough to hold five blocks at every alignment up to 2 MiB past its side
/// table, wherever the linker places it.
static BIG: SigAlloc<{ 16 << 20 }> = SigAlloc::new();

fn fill(p: *mut u8, n: usize, seed: u8) {
    for i in 0..n {
        unsafe { p.add(i).write(seed.wrapping_add(i as u8)) };
    }
}

fn check(p: *mut u8, n: usize, seed: u8) {
    for i in 0..n {
        assert_eq!(unsafe { p.add(i).read() }, seed.wrapping_add(i as u8));
    }
}

#[test]
fn every_power_of_two_alignment_up_to_the_limit() {
    assert_eq!(MAX_ALIGN, 2 << 20);
    for shift in 0..=MAX_ALIGN.trailing_zeros() {
        let align = 1usize << shift;
        let mut held = Vec::new();
        for (k, size) in [0usize, 1, 100, 3000, 5 * CHUNK_SIZE + 7]
            .into_iter()
            .enumerate()
        {
            let layout = Layout::from_size_align(size, align).unwrap();
            let p = unsafe { BIG.alloc(layout) };
            assert!(!p.is_null(), "size {size} at align {align}");
            assert_eq!(p as usize % align, 0, "size {size} at align {align}");
            assert!(BIG.usable_size(p) >= size.max(1));
            fill(p, size, k as u8);
            held.push((p, layout, k as u8));
        }
        for (p, layout, seed) in held {
            check(p, layout.size(), seed);
            unsafe { BIG.dealloc(p, layout) };
        }
        BIG.validate().unwrap();
    }
    // The span for a small request at a large alignment is as long as the request.
    let p = unsafe { BIG.alloc(Layout::from_size_align(64, MAX_ALIGN).unwrap()) };
    assert_eq!(BIG.usable_size(p), CHUNK_SIZE);
    unsafe { BIG.dealloc(p, Layout::from_size_align(64, MAX_ALIGN).unwrap()) };
}

#[test]
fn above_the_limit_is_null() {
    static SMALL: SigAlloc = SigAlloc::new();
    for align in [MAX_ALIGN * 2, 1 << 30] {
        let layout = Layout::from_size_align(8, align).unwrap();
        assert!(unsafe { SMALL.alloc(layout) }.is_null());
    }
}

#[test]
fn realloc_keeps_a_large_alignment() {
    static HEAP: SigAlloc<{ 8 << 20 }> = SigAlloc::new();
    let align = 64 << 10;
    let layout = Layout::from_size_align(10_000, align).unwrap();
    let p = unsafe { HEAP.alloc(layout) };
    assert_eq!(p as usize % align, 0);
    fill(p, 10_000, 3);
    for size in [200_000, 5_000, 300_000] {
        let q = unsafe { GlobalAlloc::realloc(&HEAP, p, layout, size) };
        assert!(!q.is_null());
        assert_eq!(q as usize % align, 0, "realloc to {size}");
        check(q, 5_000.min(size), 3);
        unsafe { HEAP.dealloc(q, Layout::from_size_align(size, align).unwrap()) };
        let again = unsafe { HEAP.alloc(layout) };
        assert_eq!(again, p, "the aligned chunk is free again");
        fill(again, 10_000, 3);
    }
    unsafe { HEAP.dealloc(p, layout) };
    HEAP.validate().unwrap();
}

#[cfg(feature = "mmap")]
#[test]
fn huge_mappings_at_large_alignments() {
    static GROW: SigAlloc = SigAlloc::new();
    GROW.enable_mmap();
    for shift in 12..=MAX_ALIGN.trailing_zeros() {
        let align = 1usize << shift;
        for size in [sigalloc::HUGE_THRESHOLD, 3 << 20] {
            let layout = Layout::from_size_align(size, align).unwrap();
            let p = unsafe { GROW.alloc(layout) };
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0, "size {size} at align {align}");
            assert!(GROW.usable_size(p) >= size);
            fill(p, size, shift as u8);
            check(p, size, shift as u8);
            unsafe { GROW.dealloc(p, layout) };
        }
    }
    let s = GROW.stats();
    assert_eq!(s.huge_mappings, 0);
    // Small requests at large alignments grow the heap by a region that holds them.
    let layout = Layout::from_size_align(100, MAX_ALIGN).unwrap();
    let ps: Vec<_> = (0..6).map(|_| unsafe { GROW.alloc(layout) }).collect();
    for &p in &ps {
        assert!(!p.is_null());
        assert_eq!(p as usize % MAX_ALIGN, 0);
    }
    for p in ps {
        unsafe { GROW.dealloc(p, layout) };
    }
    GROW.validate().unwrap();
}
