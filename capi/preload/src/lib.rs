//! `libsigalloc-preload.so`: sigalloc as the process's `malloc`, for `LD_PRELOAD` (or
//! linking first). Exports the C library's allocation names (`overrides`) and the
//! prefixed calls of `sigalloc.h` over the same heap.
//!
//! Growth by `mmap` is on from the first call, whichever comes first (the first
//! `malloc` may run before any constructor): each call checks the flag with one relaxed
//! load and sets it on its slow path. `#![no_std]`, no TLS, no locks, no `dlsym`, and
//! `panic = "abort"` (the workspace's profiles). The sources shared with `libsigalloc`
//! live in `../src`.

#![no_std]

#[path = "../../src/api.rs"]
mod api;
mod lifecycle;
mod overrides;
#[path = "../../src/posix.rs"]
mod posix;
#[path = "../../src/report.rs"]
mod report;
#[path = "../../src/runtime.rs"]
mod runtime;

/// The one heap behind every call.
static HEAP: posix::Heap = posix::Heap::new();

/// The heap, with growth by `mmap` on.
#[inline(always)]
fn heap() -> &'static posix::Heap {
    if !HEAP.mmap_enabled() {
        enable_mmap_slow();
    }
    &HEAP
}

/// The first call (of each thread that raced it) turns growth on: an idempotent store.
#[cold]
#[inline(never)]
fn enable_mmap_slow() {
    HEAP.enable_mmap();
}
