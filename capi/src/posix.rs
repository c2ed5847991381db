//! The malloc family's C contract over a [`SigAlloc`], shared by the prefixed calls
//! (`sigalloc_malloc`, ...) and the preload's `malloc`, ...: `errno`, `PTRDIFF_MAX`,
//! zero sizes, alignments. Where C leaves a choice, glibc's answer (2.36, and 2.38 for
//! `aligned_alloc`'s argument check), because that is what programs were tested with.
//!
//! Nothing here calls an exported C name: each function is plain Rust over the heap's
//! methods, so no call can bind to another library's `malloc` through the PLT. `errno`
//! is written only on failure; `free` never writes it (the core saves it around its
//! system calls).

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::{c_int, c_void};
use core::ptr;

use sigalloc_core::SigAlloc;

/// The heap behind every call.
pub(crate) type Heap = SigAlloc;

/// The largest size any call accepts: glibc refuses larger ones, so that pointer
/// differences inside a block never overflow.
const PTRDIFF_MAX: usize = isize::MAX as usize;
/// What `malloc` guarantees (glibc on 64-bit targets, and the core).
pub(crate) const MALLOC_ALIGN: usize = 16;

/// Sets this thread's `errno`.
#[inline]
pub(crate) fn set_errno(e: c_int) {
    // SAFETY: `__errno_location` returns this thread's `errno`, valid for the thread's
    // life; async-signal-safe (a handler restores what it changes).
    unsafe { libc::__errno_location().write(e) }
}

/// This thread's `errno`.
#[inline]
pub(crate) fn errno() -> c_int {
    // SAFETY: as in `set_errno`.
    unsafe { libc::__errno_location().read() }
}

#[cold]
#[inline(never)]
pub(crate) fn nomem_slow() -> *mut c_void {
    set_errno(libc::ENOMEM);
    ptr::null_mut()
}

#[cold]
#[inline(never)]
pub(crate) fn einval_slow() -> *mut c_void {
    set_errno(libc::EINVAL);
    ptr::null_mut()
}

/// `malloc`: `size` bytes aligned to 16; `malloc(0)` is a unique block.
#[inline]
pub(crate) fn malloc(h: &Heap, size: usize) -> *mut c_void {
    if size <= PTRDIFF_MAX {
        let p = h.malloc(size);
        if !p.is_null() {
            return p.cast();
        }
    }
    nomem_slow()
}

/// `calloc`: `n * size` zeroed bytes; overflow fails with `ENOMEM`.
#[inline]
pub(crate) fn calloc(h: &Heap, n: usize, size: usize) -> *mut c_void {
    if let Some(total) = n.checked_mul(size) {
        if total <= PTRDIFF_MAX {
            let p = h.calloc(n, size);
            if !p.is_null() {
                return p.cast();
            }
        }
    }
    nomem_slow()
}

/// `realloc`: null allocates, size 0 frees and returns null (glibc's
/// `REALLOC_ZERO_BYTES_FREES`), failure returns null with `ENOMEM` and leaves the block
/// as it was. The copy keeps the whole usable size (up to `size`).
///
/// # Safety
/// - `ptr` is null or a live block of `h`, not used after a successful call.
#[inline]
pub(crate) unsafe fn realloc(h: &Heap, ptr: *mut c_void, size: usize) -> *mut c_void {
    if ptr.is_null() {
        return malloc(h, size);
    }
    if size == 0 {
        // SAFETY: forwarded from our caller.
        unsafe { h.free(ptr.cast()) };
        return ptr::null_mut();
    }
    if size <= PTRDIFF_MAX {
        // SAFETY: forwarded from our caller.
        let p = unsafe { h.realloc(ptr.cast(), size) };
        if !p.is_null() {
            return p.cast();
        }
    }
    nomem_slow()
}

/// `free`: null does nothing; a pointer `h` does not own is ignored (reported to the
/// error hook).
///
/// # Safety
/// - `ptr` is null or a block of `h`, not used after this call.
#[inline]
pub(crate) unsafe fn free(h: &Heap, ptr: *mut c_void) {
    // SAFETY: forwarded from our caller; the core ignores null.
    unsafe { h.free(ptr.cast()) }
}

/// `malloc_usable_size`: 0 for null and for pointers `h` does not own.
#[inline]
pub(crate) fn usable_size(h: &Heap, ptr: *const c_void) -> usize {
    if ptr.is_null() {
        return 0;
    }
    h.usable_size(ptr.cast())
}

/// `size` bytes aligned to `align` (a power of two), or null; `errno` untouched.
pub(crate) fn aligned(h: &Heap, align: usize, size: usize) -> *mut u8 {
    if align <= MALLOC_ALIGN {
        return if size <= PTRDIFF_MAX {
            h.malloc(size)
        } else {
            ptr::null_mut()
        };
    }
    // A zero size still gets a unique block; `GlobalAlloc` asks for a non-zero size.
    match Layout::from_size_align(size.max(1), align) {
        // SAFETY: the layout's size is non-zero.
        Ok(layout) => unsafe { h.alloc(layout) },
        Err(_) => ptr::null_mut(),
    }
}

/// `posix_memalign`: `EINVAL` unless `align` is a power of two and a multiple of
/// `sizeof(void *)`, `ENOMEM` when it cannot be served; `*memptr` is written only on
/// success, and `errno` is left alone.
///
/// # Safety
/// - `memptr` is valid for writing a pointer.
pub(crate) unsafe fn posix_memalign(
    h: &Heap,
    memptr: *mut *mut c_void,
    align: usize,
    size: usize,
) -> c_int {
    if !align.is_power_of_two() || align % core::mem::size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    let p = aligned(h, align, size);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: our caller's promise.
    unsafe { memptr.write(p.cast()) };
    0
}

/// `aligned_alloc` with glibc 2.38's check: `EINVAL` for an alignment that is zero or
/// not a power of two; any size (not only multiples of the alignment).
pub(crate) fn aligned_alloc(h: &Heap, align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        return einval_slow();
    }
    let p = aligned(h, align, size);
    if p.is_null() {
        return nomem_slow();
    }
    p.cast()
}
