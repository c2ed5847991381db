//! The allocator contract, checked against the reference model in `common/`, over
//! several heap sizes: alignment, no overlap, contents kept across realloc, zeroed
//! memory zero (also after reuse), `usable_size` covering requests, defined answers
//! for bad input, memory reuse across classes, and recovery from exhaustion.
#![allow(clippy::unwrap_used, clippy::undocumented_unsafe_blocks)]

mod common;

use common::pattern::{self, verify};
use common::{Model, Rng};
use sigalloc::SigAlloc;
use std::alloc::{GlobalAlloc, Layout};

/// Random alloc / alloc_zeroed / realloc / free / malloc / calloc sequences against the
/// model, then frees everything and checks the heap is empty.
fn random_ops<const N: usize>(a: &SigAlloc<N>, seed: u64, steps: usize) {
    let mut m = Model::new();
    let mut rng = Rng(seed);
    let mut fills = 0u8;
    let max = (N / 8).max(64);
    for _ in 0..steps {
        fills = fills.wrapping_add(1);
        if fills == 0 {
            a.validate().unwrap();
        }
        let size = if rng.range(0, 9) == 0 {
            rng.range(0, max)
        } else {
            rng.range(0, 600)
        };
        let align = 1 << rng.range(0, 12);
        match rng.range(0, 9) {
            0..=2 => {
                let p = unsafe { a.alloc(Layout::from_size_align(size.max(1), align).unwrap()) };
                if !p.is_null() {
                    assert!(a.usable_size(p) >= size);
                    m.on_alloc(p, size, align, false, u64::from(fills));
                }
            }
            3 => {
                let p =
                    unsafe { a.alloc_zeroed(Layout::from_size_align(size.max(1), align).unwrap()) };
                if !p.is_null() {
                    m.on_alloc(p, size, align, true, u64::from(fills));
                }
            }
            4 => {
                let p = a.calloc(size, 1);
                if !p.is_null() {
                    m.on_alloc(p, size, 16, true, u64::from(fills));
                }
            }
            5 => {
                let p = a.malloc(size);
                if !p.is_null() {
                    assert!(a.usable_size(p) >= size);
                    m.on_alloc(p, size, 16, false, u64::from(fills));
                }
            }
            6 => {
                // C-style realloc; the model's blocks may have been allocated with a
                // larger alignment, which realloc keeps only up to 16.
                if let Some((p, _)) = m.nth(rng.next() as usize) {
                    let q = unsafe { a.realloc(p, size.max(1)) };
                    if !q.is_null() {
                        m.on_realloc(p, q, size.max(1), 16, u64::from(fills));
                    }
                }
            }
            _ => {
                if let Some((p, l)) = m.nth(rng.next() as usize) {
                    m.on_free(p);
                    if rng.range(0, 1) == 0 {
                        unsafe { a.free(p) };
                    } else {
                        unsafe {
                            a.dealloc(p, Layout::from_size_align(l.size.max(1), l.align).unwrap())
                        };
                    }
                }
            }
        }
    }
    m.free_all(a);
    assert_eq!(a.stats().bytes_in_use, 0, "{}", a.stats());
    a.validate().unwrap();
}

macro_rules! over_heap_sizes {
    ($($name:ident: $size:expr,)*) => {$(
        mod $name {
            use super::*;
            static A: SigAlloc<{ $size }> = SigAlloc::new();

            #[test]
            fn random_sequences_keep_the_contract() {
                let steps = if cfg!(miri) { 300 } else { 20_000 };
                for seed in 1..=3 {
                    random_ops(&A, seed * 0x9E37_79B9, steps);
                }
            }

            #[test]
            fn fill_until_null_then_free_half_and_allocate_again() {
                static B: SigAlloc<{ $size }> = SigAlloc::new();
                let mut rng = Rng(7);
                let mut live = Vec::new();
                loop {
                    let size = rng.range(16, 512);
                    let p = B.malloc(size);
                    if p.is_null() {
                        break;
                    }
                    live.push((p, size));
                }
                assert!(live.len() >= 2);
                // Free every other block; each freed size must then be served again.
                let freed: Vec<usize> = live.iter().step_by(2).map(|&(_, size)| size).collect();
                for &(p, _) in live.iter().step_by(2) {
                    unsafe { B.free(p) };
                }
                for (i, size) in freed.into_iter().enumerate() {
                    let p = B.malloc(size);
                    assert!(!p.is_null(), "re-allocation {i} of {size} B failed after freeing half");
                    live.push((p, size));
                }

            }
        }
    )*};
}

over_heap_sizes! {
    heap_16k: 16 << 10,
    heap_64k: 64 << 10,
    heap_2m: 2 << 20,
}

#[test]
fn phase_change_reuses_memory_across_classes() {
    static A: SigAlloc = SigAlloc::new();
    let heap = sigalloc::DEFAULT_HEAP;
    let mut small = Vec::new();
    loop {
        let p = A.malloc(16);
        if p.is_null() {
            break;
        }
        small.push(p);
    }
    assert!(
        small.len() * 16 > heap * 9 / 10,
        "16 B fill reached only {} blocks",
        small.len()
    );
    for p in small {
        unsafe { A.free(p) };
    }
    let mut big = Vec::new();
    loop {
        let p = A.malloc(1024);
        if p.is_null() {
            break;
        }
        big.push(p);
    }
    let got = big.len() * 1024;
    assert!(
        got * 10 >= heap * 9,
        "only {got} of {heap} bytes came back as 1 KiB blocks"
    );
    for p in big {
        unsafe { A.free(p) };
    }
    // With the `percpu` feature some blocks stay parked in per-CPU caches: `trim`
    // gives them back (a no-op without it).
    A.trim();
    assert_eq!(A.stats().chunks_used, 0, "{}", A.stats());
    A.validate().unwrap();
}

#[test]
fn zeroed_memory_is_zero_after_reuse() {
    static A: SigAlloc<{ 64 << 10 }> = SigAlloc::new();
    for size in [16, 100, 2048, 5000, 12288] {
        let l = Layout::from_size_align(size, 8).unwrap();
        let mut ps = Vec::new();
        for _ in 0..4 {
            let p = unsafe { A.alloc(l) };
            assert!(!p.is_null());
            unsafe { p.write_bytes(0xAB, size) };
            ps.push(p);
        }
        for p in ps.drain(..) {
            unsafe { A.dealloc(p, l) };
        }
        for _ in 0..4 {
            let p = unsafe { A.alloc_zeroed(l) };
            assert!(!p.is_null());
            assert!(pattern::zeroed(p, size), "alloc_zeroed({size}) is not zero");
            unsafe { p.write_bytes(0xCD, size) };
            ps.push(p);
        }
        for p in ps {
            unsafe { A.dealloc(p, l) };
        }
        let p = A.calloc(size, 1);
        assert!(pattern::zeroed(p, size), "calloc({size}) is not zero");
        unsafe { A.free(p) };
    }
}

#[test]
fn bad_input_gets_null_and_changes_nothing() {
    static A: SigAlloc<{ 64 << 10 }> = SigAlloc::new();
    assert!(A.malloc(usize::MAX).is_null());
    assert!(A.malloc(usize::MAX / 2).is_null());
    assert!(A.malloc(1 << 20).is_null(), "larger than the heap");
    assert!(A.calloc(usize::MAX, 2).is_null());
    assert!(A.calloc(1 << 40, 1 << 40).is_null());
    let big_align = Layout::from_size_align(8, sigalloc::MAX_ALIGN * 2).unwrap();
    assert!(unsafe { A.alloc(big_align) }.is_null());
    unsafe { A.free(std::ptr::null_mut()) };
    // A pointer the heap does not contain is ignored.
    let mut local = 0u64;
    unsafe { A.free((&raw mut local).cast()) };
    assert!(!A.owns((&raw const local).cast()));
    assert_eq!(A.usable_size((&raw const local).cast()), 0);
    assert_eq!(A.good_size(usize::MAX), 0);
    assert_eq!(A.good_size(100), 128);
    let z = unsafe { A.realloc(std::ptr::null_mut(), 0) };
    assert!(!z.is_null(), "realloc(null, 0) allocates, like malloc(0)");
    unsafe { A.free(z) };
    let s = A.stats();
    assert_eq!(s.spans, 0);
    let p = A.malloc(0);
    assert!(!p.is_null() && A.owns(p));
    assert!(
        unsafe { A.realloc(p, usize::MAX) }.is_null(),
        "impossible realloc keeps the block"
    );
    assert!(A.usable_size(p) >= 16);
    unsafe { A.free(p) };
}

#[test]
fn realloc_stays_in_place_within_a_class_and_keeps_bytes_when_moving() {
    static A: SigAlloc<{ 256 << 10 }> = SigAlloc::new();
    let p = A.malloc(100);
    pattern::fill(p, 100, 7);
    let q = unsafe { A.realloc(p, 128) };
    assert_eq!(p, q, "same class: in place");
    let r = unsafe { A.realloc(q, 3700) };
    assert_ne!(q, r);
    verify(r, 100, 7, "moved to another class");
    // A span grows in place into free chunks behind it, and shrinks in place.
    pattern::fill(r, 3700, 9);
    let s = unsafe { A.realloc(r, 20_000) };
    assert_eq!(s, r, "span grows in place when the next chunks are free");
    verify(s, 3700, 9, "span grown in place");
    let t = unsafe { A.realloc(s, 6000) };
    assert_eq!(t, s, "span shrinks in place");
    assert_eq!(A.usable_size(t), 8192);
    let u = unsafe { A.realloc(t, 10) };
    verify(u, 10, 9, "span shrunk to a small block");
    unsafe { A.free(u) };
    assert_eq!(A.stats().bytes_in_use, 0);
}

#[test]
fn every_alignment_up_to_the_maximum_is_honoured() {
    static A: SigAlloc<{ 256 << 10 }> = SigAlloc::new();
    let mut m = Model::new();
    for shift in 0..=12 {
        let align = 1usize << shift;
        for size in [1, align / 2 + 1, align, 3 * align] {
            let p = unsafe { A.alloc(Layout::from_size_align(size, align).unwrap()) };
            m.on_alloc(p, size, align, false, shift);
        }
    }
    m.free_all(&A);
    assert_eq!(A.stats().bytes_in_use, 0);
}

#[test]
fn stats_count_what_is_live() {
    static A: SigAlloc<{ 64 << 10 }> = SigAlloc::new();
    let p = A.malloc(20);
    let q = A.malloc(6000);
    let s = A.stats();
    assert_eq!(s.bytes_in_use, 32 + 8192, "{s}");
    assert_eq!(s.spans, 1);
    assert_eq!(s.classes[1].blocks_in_use, 1);
    assert!(s.peak_bytes >= 3 * 4096);
    assert!(s.to_string().contains("32 B"));
    assert!(s.json().to_string().starts_with("{\"heap_bytes\":"));
    unsafe {
        A.free(p);
        A.free(q);
    }
    assert_eq!(A.stats().bytes_in_use, 0);
}

/// Mid-size classes: 2049..3584 B take a 2.5, 3 or 3.5 KiB block and 4097..5120 B a
/// 5 KiB one, from slabs of several chunks; blocks are distinct, aligned, keep their
/// bytes, resize in place within their class, and every slab goes back to the free
/// map when its blocks are freed.
#[test]
fn mid_size_requests_take_blocks_between_the_powers_of_two() {
    static A: SigAlloc<{ 512 << 10 }> = SigAlloc::new();
    const MID: [(usize, usize); 4] = [(2560, 5), (3072, 3), (3584, 7), (5120, 5)];
    let class_of = |size: usize| MID.iter().find(|c| c.0 >= size).unwrap().0;
    assert_eq!(A.good_size(2049), 2560);
    assert_eq!(A.good_size(3000), 3072);
    assert_eq!(A.good_size(3585), 4096);
    assert_eq!(A.good_size(4104), 5120);
    assert_eq!(A.good_size(5121), 8192);
    let free_before = A.stats().chunks_free;
    let mut m = Model::new();
    let mut blocks = Vec::new();
    let sizes = [2049, 2560, 2561, 3072, 3073, 3584, 4097, 4368, 5120, 2500];
    for (i, size) in sizes.into_iter().cycle().take(80).enumerate() {
        let p = A.malloc(size);
        assert!(!p.is_null());
        assert_eq!(p.addr() % 512, 0, "a mid-size block is 512 B aligned");
        assert_eq!(A.usable_size(p), class_of(size));
        m.on_alloc(p, size, 16, false, i as u64);
        blocks.push((p, size));
        A.validate().unwrap();
    }
    let s = A.stats();
    assert_eq!(s.spans, 0, "no mid-size request took a span");
    for (class, (size, _)) in s.classes[8..].iter().zip(MID) {
        assert_eq!(class.block_size, size);
        let live = blocks.iter().filter(|b| class_of(b.1) == size).count();
        assert_eq!(class.blocks_in_use, live, "{s}");
    }
    // Same class: in place, bytes kept; another class: moved, bytes kept.
    let (p, _) = blocks.swap_remove(0);
    let q = unsafe { A.realloc(p, 2500) };
    assert_eq!(q, p, "2049 -> 2500 stays in its 2.5 KiB block");
    m.on_realloc(p, q, 2500, 16, 98);
    let r = unsafe { A.realloc(q, 4500) };
    assert_ne!(r, q, "2500 -> 4500 moves to the 5 KiB class");
    m.on_realloc(q, r, 4500, 16, 99);
    blocks.push((r, 4500));
    for (p, _) in blocks.drain(..) {
        m.on_free(p);
        unsafe { A.free(p) };
        A.validate().unwrap();
    }
    let s = A.stats();
    assert_eq!(s.bytes_in_use, 0);
    // Every slab went back to the free map, but those its class's active slots keep.
    let mut kept = 0;
    for (class, (_, chunks)) in s.classes[8..].iter().zip(MID) {
        assert_eq!(class.chunks % chunks, 0, "whole slabs: {s}");
        assert!(class.chunks <= 4 * chunks, "at most a slab per slot: {s}");
        kept += class.chunks;
    }
    assert_eq!(s.chunks_free + kept, free_before, "{s}");
}

/// Zeroed memory across slabs and spans: chunks dirtied as spans must read zero when a
/// slab serves `calloc` from them, and chunks dirtied as slabs must read zero when a
/// span does (each chunk of a retired slab keeps its share of the slab's dirty bytes).
#[test]
fn zeroed_blocks_are_zero_across_slabs_and_spans() {
    static A: SigAlloc<{ 64 << 10 }> = SigAlloc::new();
    for (dirty_size, zeroed_size) in [
        (4000, 3000),
        (4000, 5000),
        (3000, 4000),
        (5000, 8000),
        (5000, 3000),
    ] {
        let mut held = Vec::new();
        loop {
            let p = A.malloc(dirty_size);
            if p.is_null() {
                break;
            }
            unsafe { p.write_bytes(0xA5, A.usable_size(p)) };
            held.push(p);
        }
        assert!(held.len() >= 4);
        for p in held.drain(..) {
            unsafe { A.free(p) };
        }
        loop {
            let p = A.calloc(1, zeroed_size);
            if p.is_null() {
                break;
            }
            assert!(
                pattern::zeroed(p, zeroed_size),
                "calloc({zeroed_size}) after {dirty_size}"
            );
            unsafe { p.write_bytes(0x5A, zeroed_size) };
            held.push(p);
        }
        assert!(held.len() >= 4);
        for p in held {
            unsafe { A.free(p) };
        }
        A.validate().unwrap();
        assert_eq!(A.stats().bytes_in_use, 0);
    }
}
