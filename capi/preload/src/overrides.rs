//! The C library's unprefixed names, so that sigalloc serves the whole process:
//! glibc's "Replacing malloc" list (`malloc`, `free`, `calloc`, `realloc`,
//! `aligned_alloc`, `malloc_usable_size`, `memalign`, `posix_memalign`, `pvalloc`,
//! `valloc`), `reallocarray`, C23's `free_sized`/`free_aligned_sized`, the obsolete
//! `cfree`, `malloc_trim` and `malloc_stats`.
//!
//! The `__libc_*` names glibc exports (`__libc_malloc`, `__libc_free`, `__libc_calloc`,
//! `__libc_realloc`, `__libc_memalign`, `__libc_valloc`, `__libc_pvalloc`) are defined
//! too, as ours, like mimalloc and tcmalloc do: then every pointer any allocation call
//! in the process returns is sigalloc's, so one that is not (a statically linked
//! allocator's, a `RTLD_DEEPBIND` library's) is a bug, which `free` ignores and the
//! error hook reports, rather than a second heap to forward to. Nothing in glibc 2.36
//! calls them across objects; `libc_malloc_debug.so` is their only importer.
//!
//! Each function is a shell over `posix`: none calls another exported name (which could
//! bind to another library's through the PLT), and none calls glibc's allocator.

use core::ffi::{c_int, c_void};

use crate::heap;
use crate::posix;

/// `size` bytes aligned to `align` for `memalign`, glibc's way: an alignment up to 16
/// is `malloc`'s, one that is not a power of two is rounded up, one above
/// `SIZE_MAX / 2 + 1` fails with `EINVAL`.
fn memalign_in(align: usize, size: usize) -> *mut c_void {
    let h = heap();
    if align <= posix::MALLOC_ALIGN {
        return posix::malloc(h, size);
    }
    let Some(align) = align.checked_next_power_of_two() else {
        return posix::einval_slow();
    };
    let p = posix::aligned(h, align, size);
    if p.is_null() {
        return posix::nomem_slow();
    }
    p.cast()
}

/// The page size (glibc answers from what it read at start-up: no allocation, no lock).
fn page_size() -> usize {
    // SAFETY: `sysconf` has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096).max(1)
}

/// `valloc`: page-aligned.
fn valloc_in(size: usize) -> *mut c_void {
    memalign_in(page_size(), size)
}

/// `pvalloc`: page-aligned, the size rounded up to whole pages (overflow: `ENOMEM`).
fn pvalloc_in(size: usize) -> *mut c_void {
    let page = page_size();
    match size.checked_next_multiple_of(page) {
        Some(rounded) => memalign_in(page, rounded),
        None => posix::nomem_slow(),
    }
}

/// `reallocarray`: `realloc` to `n * size` bytes; overflow fails with `ENOMEM` and
/// leaves the block as it was.
///
/// # Safety
/// - As for `posix::realloc`.
unsafe fn reallocarray_in(ptr: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: forwarded from our caller.
        Some(total) => unsafe { posix::realloc(heap(), ptr, total) },
        None => posix::nomem_slow(),
    }
}

/// `malloc(3)`.
#[no_mangle]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    posix::malloc(heap(), size)
}

/// `malloc(3)`.
#[no_mangle]
pub extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
    posix::malloc(heap(), size)
}

/// `calloc(3)`.
#[no_mangle]
pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    posix::calloc(heap(), n, size)
}

/// `calloc(3)`.
#[no_mangle]
pub extern "C" fn __libc_calloc(n: usize, size: usize) -> *mut c_void {
    posix::calloc(heap(), n, size)
}

/// `realloc(3)`: size 0 frees and returns null.
///
/// # Safety
/// - The C contract of `realloc`.
#[no_mangle]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: forwarded from our caller.
    unsafe { posix::realloc(heap(), ptr, size) }
}

/// `realloc(3)`: size 0 frees and returns null.
///
/// # Safety
/// - The C contract of `__libc_realloc`.
#[no_mangle]
pub unsafe extern "C" fn __libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: forwarded from our caller.
    unsafe { posix::realloc(heap(), ptr, size) }
}

/// `reallocarray(3)`.
///
/// # Safety
/// - The C contract of `reallocarray`.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(ptr: *mut c_void, n: usize, size: usize) -> *mut c_void {
    // SAFETY: forwarded from our caller.
    unsafe { reallocarray_in(ptr, n, size) }
}

/// `free(3)`: a pointer sigalloc does not own is ignored.
///
/// # Safety
/// - The C contract of `free`.
#[no_mangle]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    // SAFETY: forwarded from our caller.
    unsafe { posix::free(heap(), ptr) }
}

/// `free(3)`: a pointer sigalloc does not own is ignored.
///
/// # Safety
/// - The C contract of `cfree`.
#[no_mangle]
pub unsafe extern "C" fn cfree(ptr: *mut c_void) {
    // SAFETY: forwarded from our caller.
    unsafe { posix::free(heap(), ptr) }
}

/// `free(3)`: a pointer sigalloc does not own is ignored.
///
/// # Safety
/// - The C contract of `__libc_free`.
#[no_mangle]
pub unsafe extern "C" fn __libc_free(ptr: *mut c_void) {
    // SAFETY: forwarded from our caller.
    unsafe { posix::free(heap(), ptr) }
}

/// C23 `free_sized`: `free` (glibc 2.43 does the same).
///
/// # Safety
/// - The C contract of `free_sized`.
#[no_mangle]
pub unsafe extern "C" fn free_sized(ptr: *mut c_void, _size: usize) {
    // SAFETY: forwarded from our caller.
    unsafe { posix::free(heap(), ptr) }
}

/// C23 `free_aligned_sized`: `free`.
///
/// # Safety
/// - The C contract of `free_aligned_sized`.
#[no_mangle]
pub unsafe extern "C" fn free_aligned_sized(ptr: *mut c_void, _align: usize, _size: usize) {
    // SAFETY: forwarded from our caller.
    unsafe { posix::free(heap(), ptr) }
}

/// `aligned_alloc(3)`, with glibc 2.38's `EINVAL` check.
#[no_mangle]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    posix::aligned_alloc(heap(), align, size)
}

/// `memalign(3)`.
#[no_mangle]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    memalign_in(align, size)
}

/// `memalign(3)`.
#[no_mangle]
pub extern "C" fn __libc_memalign(align: usize, size: usize) -> *mut c_void {
    memalign_in(align, size)
}

/// `posix_memalign(3)`: `*memptr` is written only on success.
///
/// # Safety
/// - The C contract of `posix_memalign`.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(
    memptr: *mut *mut c_void,
    align: usize,
    size: usize,
) -> c_int {
    // SAFETY: forwarded from our caller.
    unsafe { posix::posix_memalign(heap(), memptr, align, size) }
}

/// `valloc(3)`.
#[no_mangle]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    valloc_in(size)
}

/// `valloc(3)`.
#[no_mangle]
pub extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
    valloc_in(size)
}

/// `pvalloc(3)`.
#[no_mangle]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    pvalloc_in(size)
}

/// `pvalloc(3)`.
#[no_mangle]
pub extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
    pvalloc_in(size)
}

/// `malloc_usable_size(3)`: 0 for null and foreign pointers.
#[no_mangle]
pub extern "C" fn malloc_usable_size(ptr: *mut c_void) -> usize {
    posix::usable_size(heap(), ptr)
}

/// `malloc_trim(3)`: gives free mapped memory back; 1 if any was.
#[no_mangle]
pub extern "C" fn malloc_trim(_pad: usize) -> c_int {
    c_int::from(heap().trim() > 0)
}

/// `malloc_stats(3)`: sigalloc's statistics, as text, to stderr.
#[no_mangle]
pub extern "C" fn malloc_stats() {
    // SAFETY: no callback (stderr), no options.
    unsafe { crate::report::print(heap(), None, core::ptr::null_mut(), core::ptr::null()) }
}
