//! What a `no_std` C library needs from Rust's runtime, and nothing else: a panic
//! handler that aborts (nothing in the allocator panics; an out-of-bounds index in the
//! shim would be a bug, and a C caller cannot catch an unwind), and a stand-in for
//! `rust_eh_personality`.
//!
//! Unoptimised builds (and builds with overflow checks) keep a reference to
//! `rust_eh_personality` even with `panic = "abort"`, and nothing defines it without
//! std: the `.so` would fail to load (rust-lang/rust#56152). We define it weak and
//! hidden: never called, never exported (so it cannot interpose another Rust library's
//! personality), and a strong definition from std wins when `libsigalloc.a` is linked
//! beside a Rust staticlib.

use core::panic::PanicInfo;

#[panic_handler]
fn on_panic(_: &PanicInfo) -> ! {
    const MSG: &[u8] = b"sigalloc: internal error (panic in the C shim), aborting\n";
    // SAFETY: `write` and `abort` are async-signal-safe system-call wrappers; `MSG` is
    // valid for its length.
    unsafe {
        libc::write(2, MSG.as_ptr().cast(), MSG.len());
        libc::abort()
    }
}

/// The instruction that traps: the stand-in's whole body.
#[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
macro_rules! trap {
    () => {
        "ud2"
    };
}
#[cfg(target_arch = "aarch64")]
macro_rules! trap {
    () => {
        "udf #0"
    };
}
#[cfg(any(target_arch = "riscv64", target_arch = "riscv32"))]
macro_rules! trap {
    () => {
        "unimp"
    };
}

core::arch::global_asm!(
    ".pushsection .text.rust_eh_personality,\"ax\",%progbits",
    ".weak rust_eh_personality",
    ".hidden rust_eh_personality",
    ".type rust_eh_personality,%function",
    "rust_eh_personality:",
    trap!(),
    ".size rust_eh_personality, . - rust_eh_personality",
    ".popsection",
);
