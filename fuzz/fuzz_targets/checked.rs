//! Checked mode: the `api` op stream plus deliberate double frees, foreign, interior
//! and stale frees, and deallocs with a wrong layout. Each bad call must be reported
//! once through the error hook with the right kind and pointer and change nothing;
//! the model checks of `api` hold throughout. Needs `--features checked`.
#![no_main]

mod driver;

use libfuzzer_sys::fuzz_target;
use sigalloc::SigAlloc;

/// Kept across inputs on purpose (see `api.rs`).
static A: SigAlloc<{ 256 << 10 }> = SigAlloc::new();

fuzz_target!(|data: &[u8]| {
    driver::run(&A, data);
});
