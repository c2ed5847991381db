//! Pointer -> region through the address map: claimed regions side by side (more in
//! one 64 MiB granule than the map has lanes, so some lookups walk the registry), each
//! block found, sized and freed through its own region.
#![allow(clippy::unwrap_used, clippy::undocumented_unsafe_blocks)]

use std::mem::MaybeUninit;

use sigalloc::SigAlloc;

const BANKS: usize = 7;
const BANK: usize = 96 << 10;

#[test]
fn neighbouring_claimed_regions_are_told_apart() {
    static A: SigAlloc<{ 64 << 10 }> = SigAlloc::new();
    let mut blocks = Vec::new();
    let mut banks = Vec::new();
    for _ in 0..BANKS {
        let bank: &'static mut [MaybeUninit<u8>] =
            Box::leak(vec![MaybeUninit::uninit(); BANK].into_boxed_slice());
        let range = bank.as_ptr_range();
        banks.push((range.start as usize, range.end as usize));
        assert!(A.claim(bank).unwrap() > 0);
    }
    // Fill everything: the inline heap, then each bank.
    loop {
        let p = A.malloc(1000);
        if p.is_null() {
            break;
        }
        unsafe { p.write_bytes(blocks.len() as u8, 1000) };
        blocks.push(p);
    }
    let in_banks = blocks
        .iter()
        .filter(|&&p| {
            banks
                .iter()
                .any(|&(lo, hi)| (lo..hi).contains(&(p as usize)))
        })
        .count();
    assert!(in_banks > BANKS * 40, "{in_banks} blocks in the banks");
    for (i, &p) in blocks.iter().enumerate() {
        assert!(A.owns(p));
        assert_eq!(A.usable_size(p), 1024);
        assert_eq!(unsafe { p.read() }, i as u8);
    }
    for &p in &blocks {
        unsafe { A.free(p) };
    }
    let s = A.stats();
    assert_eq!(s.bytes_in_use, 0, "{s}");
    assert_eq!(s.regions, BANKS);
    A.validate().unwrap();
    // Memory between the banks is not the allocator's.
    let local = 0u8;
    assert!(!A.owns(&local));
}
