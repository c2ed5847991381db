//! `libsigalloc`: sigalloc from C. The prefixed calls of `include/sigalloc.h` and
//! libatomic_ops' AO_malloc calls, over one heap: 2 MiB inline (in `.bss`), growing by
//! `mmap` once `sigalloc_enable_mmap` (or `AO_malloc_enable_mmap`) is called.
//!
//! `#![no_std]`, no TLS, no locks, no constructor: every call works from the first,
//! from any thread and from signal handlers. Built as `libsigalloc.so` and
//! `libsigalloc.a`; tested from C by `.ci/capi.sh`.

#![no_std]
#![allow(non_snake_case)]

mod ao;
mod api;
mod posix;
mod report;
mod runtime;

/// The one heap behind every call.
static HEAP: posix::Heap = posix::Heap::new();

#[inline(always)]
fn heap() -> &'static posix::Heap {
    &HEAP
}
