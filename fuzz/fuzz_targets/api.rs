//! Random op streams over sigalloc's whole API (default features) against a model:
//! alignment, no overlap, contents kept across realloc, zeroed memory zero, exact
//! `usable_size`/`good_size`, null exactly for impossible requests and only when the
//! heap may be full, and an empty heap once the input has freed everything. See
//! `driver.rs` for the model and the bound on when an allocation must succeed.
#![no_main]

mod driver;

use libfuzzer_sys::fuzz_target;
use sigalloc::SigAlloc;

/// Kept across inputs on purpose: each input frees all it allocated, so long-lived
/// state (idle slot chunks, dirty memory, partial lists) carries over.
static A: SigAlloc<{ 256 << 10 }> = SigAlloc::new();

fuzz_target!(|data: &[u8]| {
    driver::run(&A, data);
});
