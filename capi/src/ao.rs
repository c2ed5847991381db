//! libatomic_ops' `atomic_ops_malloc.h`, so a program written for AO_malloc links
//! against sigalloc unchanged: the same three calls, the same start (a 2 MiB heap,
//! growth by `mmap` only after `AO_malloc_enable_mmap`). Unlike AO_malloc, every call is
//! lock-free from any number of threads and handlers, and without `mmap` a request is
//! served up to the heap's size rather than just under 64 KiB. As in AO_malloc, `errno`
//! is not part of the contract and is left alone.

use core::ffi::c_void;

use crate::heap;

/// `void *AO_malloc(size_t)`: null when the heap cannot serve the request.
#[no_mangle]
pub extern "C" fn AO_malloc(size: usize) -> *mut c_void {
    heap().malloc(size).cast()
}

/// `void AO_free(void *)`: null does nothing.
///
/// # Safety
/// - `ptr` is null or a block from `AO_malloc` (or the `sigalloc_` calls), not used
///   after this call.
#[no_mangle]
pub unsafe extern "C" fn AO_free(ptr: *mut c_void) {
    // SAFETY: forwarded from our caller.
    unsafe { heap().free(ptr.cast()) }
}

/// `void AO_malloc_enable_mmap(void)`: lets the heap grow by `mmap` and maps huge
/// requests one per mapping.
#[no_mangle]
pub extern "C" fn AO_malloc_enable_mmap() {
    heap().enable_mmap();
}
