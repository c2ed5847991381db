//! Per-heap collections through `allocator_api2` (feature `allocator-api2`): two heaps,
//! each with its own vectors and boxes, grown and shrunk in place where they can be.
#![allow(clippy::unwrap_used)]

use allocator_api2::alloc::{Allocator, Layout};
use allocator_api2::boxed::Box;
use allocator_api2::vec::Vec;

use sigalloc::SigAlloc;

static FAST: SigAlloc<{ 256 << 10 }> = SigAlloc::new();
static BANK: SigAlloc<{ 256 << 10 }> = SigAlloc::new();

#[test]
fn collections_live_in_the_heap_they_were_given() {
    let mut a: Vec<u64, _> = Vec::new_in(&FAST);
    let mut b: Vec<u32, _> = Vec::with_capacity_in(10, &BANK);
    for i in 0..5000u64 {
        a.push(i * 3);
        b.push(i as u32);
    }
    assert!(FAST.owns(a.as_ptr().cast()));
    assert!(BANK.owns(b.as_ptr().cast()));
    assert!(!FAST.owns(b.as_ptr().cast()));
    assert!(a.iter().enumerate().all(|(i, &v)| v == i as u64 * 3));
    a.truncate(10);
    a.shrink_to_fit();
    assert_eq!(a.len(), 10);
    let boxed = Box::new_in([7u8; 3000], &BANK);
    assert!(BANK.owns(boxed.as_ptr()));
    assert_eq!(boxed.iter().map(|&x| usize::from(x)).sum::<usize>(), 21_000);
    drop((a, b, boxed));
    assert_eq!(FAST.stats().bytes_in_use, 0);
    assert_eq!(BANK.stats().bytes_in_use, 0);
    FAST.validate().unwrap();
    BANK.validate().unwrap();
}

#[test]
fn allocate_reports_the_usable_size_and_failure() {
    static SMALL: SigAlloc<{ 64 << 10 }> = SigAlloc::new();
    let layout = Layout::from_size_align(100, 8).unwrap();
    let block = SMALL.allocate(layout).unwrap();
    assert_eq!(
        block.len(),
        128,
        "a 100-byte request gets its class's 128 bytes"
    );
    let zeroed = SMALL.allocate_zeroed(layout).unwrap();
    // SAFETY: `allocate_zeroed` handed us `zeroed.len()` zero bytes.
    assert!(unsafe { zeroed.as_ref() }.iter().all(|&x| x == 0));
    // Growing within the class stays in place.
    // SAFETY: `block` is live with `layout`.
    let grown = unsafe {
        SMALL.grow(
            block.cast(),
            layout,
            Layout::from_size_align(120, 8).unwrap(),
        )
    }
    .unwrap();
    assert_eq!(grown.cast::<u8>(), block.cast::<u8>());
    assert!(SMALL
        .allocate(Layout::from_size_align(1 << 20, 8).unwrap())
        .is_err());
    // SAFETY: both blocks are live with these layouts.
    unsafe {
        SMALL.deallocate(grown.cast(), Layout::from_size_align(120, 8).unwrap());
        SMALL.deallocate(zeroed.cast(), layout);
    }
    assert_eq!(SMALL.stats().bytes_in_use, 0);
}
