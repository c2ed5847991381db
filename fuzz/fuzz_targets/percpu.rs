//! `api`'s random op streams with the per-CPU caches on (feature `percpu`): every hit,
//! refill, spill, transfer batch and drain (the heap fills up often: a null must come
//! only after the caches were drained) is checked against the same model.
#![no_main]

mod driver;

use libfuzzer_sys::fuzz_target;
use sigalloc::SigAlloc;

/// Kept across inputs on purpose, as in `api`: parked blocks carry over too.
static A: SigAlloc<{ 256 << 10 }> = SigAlloc::new();

fuzz_target!(|data: &[u8]| {
    driver::run(&A, data);
});
