//! The prefixed C API of `sigalloc.h`: every allocation call is async-signal-safe and
//! lock-free, and never clashes with the system `malloc`. Each exported function is a
//! thin shell over `posix` or the heap's methods: none calls another exported name.

use core::ffi::{c_char, c_int, c_void};
use core::mem::MaybeUninit;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use sigalloc_core::{ErrorKind, MAX_ALIGN};

use crate::heap;
use crate::posix;
use crate::report::{self, WriteCb};

/// The library's version, as in `sigalloc.h`.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The version as a NUL-terminated C string.
const VERSION_C: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// A decimal number from Cargo's version fields.
const fn decimal(s: &str) -> c_int {
    let b = s.as_bytes();
    let mut n = 0;
    let mut i = 0;
    while i < b.len() {
        n = n * 10 + (b[i] - b'0') as c_int;
        i += 1;
    }
    n
}

/// `SIGALLOC_VERSION_MAJOR * 10000 + MINOR * 100 + PATCH`.
const VERSION_NUMBER: c_int = decimal(env!("CARGO_PKG_VERSION_MAJOR")) * 10000
    + decimal(env!("CARGO_PKG_VERSION_MINOR")) * 100
    + decimal(env!("CARGO_PKG_VERSION_PATCH"));

/// `malloc`: see `sigalloc.h`.
#[no_mangle]
pub extern "C" fn sigalloc_malloc(size: usize) -> *mut c_void {
    posix::malloc(heap(), size)
}

/// `calloc`: see `sigalloc.h`.
#[no_mangle]
pub extern "C" fn sigalloc_calloc(n: usize, size: usize) -> *mut c_void {
    posix::calloc(heap(), n, size)
}

/// `realloc`: see `sigalloc.h`.
///
/// # Safety
/// - `ptr` is null or a live block from this library, not used after success.
#[no_mangle]
pub unsafe extern "C" fn sigalloc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: forwarded from our caller.
    unsafe { posix::realloc(heap(), ptr, size) }
}

/// `free`: see `sigalloc.h`.
///
/// # Safety
/// - `ptr` is null or a block from this library, not used after this call.
#[no_mangle]
pub unsafe extern "C" fn sigalloc_free(ptr: *mut c_void) {
    // SAFETY: forwarded from our caller.
    unsafe { posix::free(heap(), ptr) }
}

/// `aligned_alloc`: see `sigalloc.h`.
#[no_mangle]
pub extern "C" fn sigalloc_aligned_alloc(align: usize, size: usize) -> *mut c_void {
    posix::aligned_alloc(heap(), align, size)
}

/// `posix_memalign`: see `sigalloc.h`.
///
/// # Safety
/// - `memptr` is valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn sigalloc_posix_memalign(
    memptr: *mut *mut c_void,
    align: usize,
    size: usize,
) -> c_int {
    // SAFETY: forwarded from our caller.
    unsafe { posix::posix_memalign(heap(), memptr, align, size) }
}

/// `malloc_usable_size`: see `sigalloc.h`.
#[no_mangle]
pub extern "C" fn sigalloc_usable_size(ptr: *const c_void) -> usize {
    posix::usable_size(heap(), ptr)
}

/// The usable size a request would get: see `sigalloc.h`.
#[no_mangle]
pub extern "C" fn sigalloc_good_size(size: usize) -> usize {
    heap().good_size(size)
}

/// Whether the pointer is in memory sigalloc manages: see `sigalloc.h`.
#[no_mangle]
pub extern "C" fn sigalloc_owns(ptr: *const c_void) -> c_int {
    c_int::from(heap().owns(ptr.cast()))
}

/// The largest alignment served: see `sigalloc.h`.
#[no_mangle]
pub extern "C" fn sigalloc_max_align() -> usize {
    MAX_ALIGN
}

/// Turns on growth by `mmap` (idempotent): see `sigalloc.h`.
#[no_mangle]
pub extern "C" fn sigalloc_enable_mmap() {
    heap().enable_mmap();
}

/// Whether growth by `mmap` is on: see `sigalloc.h`.
#[no_mangle]
pub extern "C" fn sigalloc_mmap_enabled() -> c_int {
    c_int::from(heap().mmap_enabled())
}

/// Gives free mapped memory back to the OS: see `sigalloc.h`.
#[no_mangle]
pub extern "C" fn sigalloc_trim() -> usize {
    heap().trim()
}

/// Hands caller memory to the heap for good: see `sigalloc.h`.
///
/// # Safety
/// - `mem` is valid for reads and writes of `len` bytes for the rest of the process,
///   and nothing else uses it after this call.
#[no_mangle]
pub unsafe extern "C" fn sigalloc_claim(mem: *mut c_void, len: usize) -> usize {
    if mem.is_null() || len == 0 {
        return 0;
    }
    // SAFETY: our caller gives us the memory for good.
    let region = unsafe { core::slice::from_raw_parts_mut(mem.cast::<MaybeUninit<u8>>(), len) };
    heap().claim(region).unwrap_or(0)
}

/// The jemalloc-style stats printer: see `sigalloc.h`.
///
/// # Safety
/// - `write_cb`, if not null, may be called with `cbopaque` and a C string.
/// - `opts` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn sigalloc_stats_print(
    write_cb: WriteCb,
    cbopaque: *mut c_void,
    opts: *const c_char,
) {
    // SAFETY: forwarded from our caller.
    unsafe { report::print(heap(), write_cb, cbopaque, opts) }
}

/// `void (*hook)(int kind, void *ptr)`.
type ErrorHook = Option<unsafe extern "C" fn(c_int, *mut c_void)>;

/// The C error hook (null: none).
static ERROR_HOOK: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());

/// The `enum sigalloc_error` value of a kind.
fn error_code(kind: ErrorKind) -> c_int {
    match kind {
        ErrorKind::InvalidFree => 1,
        ErrorKind::DoubleFree => 2,
        ErrorKind::LayoutMismatch => 3,
        ErrorKind::OutOfMemory => 4,
        ErrorKind::Overflow => 5,
        ErrorKind::Corrupted => 6,
    }
}

/// The core's hook: forwards to the C hook, keeping `errno` (a `free` must not change
/// it, whatever the hook does).
fn forward_error(kind: ErrorKind, p: *mut u8) {
    // ORDERING: Acquire pairs with the Release store in `sigalloc_set_error_hook`, so
    // whatever the installer prepared for its hook is visible when it runs.
    let raw = ERROR_HOOK.load(Ordering::Acquire);
    if raw.is_null() {
        return;
    }
    // SAFETY: only `unsafe extern "C" fn(c_int, *mut c_void)` pointers are stored.
    let hook = unsafe {
        core::mem::transmute::<*mut c_void, unsafe extern "C" fn(c_int, *mut c_void)>(raw)
    };
    let saved = posix::errno();
    // SAFETY: the installer vouched for its hook.
    unsafe { hook(error_code(kind), p.cast()) };
    posix::set_errno(saved);
}

/// Whether the per-CPU caches are in use: see `sigalloc.h`.
#[no_mangle]
pub extern "C" fn sigalloc_percpu_active() -> c_int {
    c_int::from(heap().percpu_active())
}

/// Turns the per-CPU caches off for good: see `sigalloc.h`.
#[no_mangle]
pub extern "C" fn sigalloc_disable_percpu() {
    heap().disable_percpu();
}

/// Installs the error hook (null removes it): see `sigalloc.h`.
#[no_mangle]
pub extern "C" fn sigalloc_set_error_hook(hook: ErrorHook) {
    let raw = hook.map_or(ptr::null_mut(), |f| f as *mut c_void);
    // ORDERING: Release pairs with the Acquire load in `forward_error`.
    ERROR_HOOK.store(raw, Ordering::Release);
    heap().set_error_hook(hook.map(|_| forward_error as fn(ErrorKind, *mut u8)));
}

/// The version number: see `sigalloc.h`.
#[no_mangle]
pub extern "C" fn sigalloc_version() -> c_int {
    VERSION_NUMBER
}

/// The version string: see `sigalloc.h`.
#[no_mangle]
pub extern "C" fn sigalloc_version_string() -> *const c_char {
    VERSION_C.as_ptr().cast()
}
