//! Growth under interruption: a thread maps a region, and before it claims a chunk
//! there a signal handler (played by the step hook, run at the next atomic step) takes
//! every chunk of it. The interrupted allocation must still succeed by growing again,
//! not return null while the OS has memory. (Found by `tests/mmap.rs` as a rare null
//! with 4 threads on 2 cores; this makes the interleaving certain.)
#![allow(missing_docs)]

use std::cell::Cell;

use sigalloc::{SigAlloc, Step};

static A: SigAlloc<{ 64 << 10 }> = SigAlloc::new();

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static INSIDE: Cell<bool> = const { Cell::new(false) };
    static NESTED: Cell<usize> = const { Cell::new(0) };
}

fn handler(_: Step) {
    if !ARMED.get() || INSIDE.get() {
        return;
    }
    INSIDE.set(true);
    if A.stats().mapped_regions == 1 {
        // The region is published; the interrupted malloc has not claimed from it yet.
        ARMED.set(false);
        while A.stats().chunks_free > 0 {
            assert!(
                !A.malloc(2048).is_null(),
                "the handler's own allocation failed"
            );
            NESTED.set(NESTED.get() + 1);
        }
    }
    INSIDE.set(false);
}

#[test]
fn allocation_survives_losing_its_new_region() {
    // Fill the inline heap with growth off, then turn growth on.
    while !A.malloc(2048).is_null() {}
    A.enable_mmap();
    sigalloc::set_step_hook(Some(handler));
    ARMED.set(true);
    let p = A.malloc(2048);
    sigalloc::set_step_hook(None);
    let s = A.stats();
    assert!(NESTED.get() > 0, "the handler never ran inside the growth");
    assert!(!p.is_null(), "malloc returned null with mmap enabled");
    assert!(
        s.mapped_regions >= 2,
        "the allocation should have grown again"
    );
    println!(
        "mmap race: handler took {} blocks of the new region; {} regions mapped",
        NESTED.get(),
        s.mapped_regions
    );
}
