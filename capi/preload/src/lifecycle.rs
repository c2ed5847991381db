//! Optional reports, chosen by the environment when the library is initialised:
//! `SIGALLOC_VERBOSE=1` prints one line saying `malloc` is redirected, and
//! `SIGALLOC_STATS=1` (text) or `SIGALLOC_STATS=json` prints the statistics to stderr
//! at exit. Neither is needed for the allocator to work (the first `malloc` may come
//! before the initialiser): they read `envp` as glibc passes it to `.init_array`
//! entries (no `getenv`), and the exit report runs from `.fini_array` (not `atexit`,
//! which may allocate).

use core::ffi::{c_char, c_int, CStr};
use core::ptr;
use core::sync::atomic::{AtomicU8, Ordering};

use crate::heap;
use crate::report;

/// What to print at exit: 0 nothing, 1 text, 2 JSON.
static AT_EXIT: AtomicU8 = AtomicU8::new(0);

/// The value of `name=` in `envp`, if set.
///
/// # Safety
/// - `envp` is null or a null-terminated array of NUL-terminated strings.
unsafe fn env_value<'a>(envp: *const *const c_char, name: &[u8]) -> Option<&'a [u8]> {
    if envp.is_null() {
        return None;
    }
    let mut at = envp;
    loop {
        // SAFETY: `at` is within the array: we stop at its null terminator.
        let entry = unsafe { at.read() };
        if entry.is_null() {
            return None;
        }
        // SAFETY: each entry is a NUL-terminated string (our caller's promise).
        let bytes = unsafe { CStr::from_ptr(entry) }.to_bytes();
        if let Some(rest) = bytes.strip_prefix(name) {
            if let Some(value) = rest.strip_prefix(b"=") {
                return Some(value);
            }
        }
        at = at.wrapping_add(1);
    }
}

/// The `.init_array` entry: glibc calls it with `argc`, `argv` and `envp`.
extern "C" fn on_load(_argc: c_int, _argv: *const *const c_char, envp: *const *const c_char) {
    // SAFETY: glibc passes the process's environment array.
    let verbose = unsafe { env_value(envp, b"SIGALLOC_VERBOSE") };
    if verbose.is_some_and(|v| v != b"0" && !v.is_empty()) {
        report::write_stderr(
            concat!(
                "sigalloc: malloc redirected to libsigalloc-preload.so ",
                env!("CARGO_PKG_VERSION"),
                "\n"
            )
            .as_bytes(),
        );
    }
    // SAFETY: as above.
    let mode = match unsafe { env_value(envp, b"SIGALLOC_STATS") } {
        Some(b"json") | Some(b"JSON") => 2,
        Some(v) if !v.is_empty() && v != b"0" => 1,
        _ => 0,
    };
    // ORDERING: Relaxed: read at exit by the thread that runs the finalisers, after
    // `exit`'s own synchronisation with this initialiser (same thread, or joined).
    AT_EXIT.store(mode, Ordering::Relaxed);
}

/// The `.fini_array` entry: the exit report.
extern "C" fn on_unload() {
    // ORDERING: Relaxed: see `on_load`.
    let opts: &[u8] = match AT_EXIT.load(Ordering::Relaxed) {
        0 => return,
        1 => b"\0",
        _ => b"J\0",
    };
    // SAFETY: no callback (stderr); `opts` is NUL-terminated.
    unsafe { report::print(heap(), None, ptr::null_mut(), opts.as_ptr().cast()) };
}

#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn(c_int, *const *const c_char, *const *const c_char) = on_load;

#[used]
#[link_section = ".fini_array"]
static ON_UNLOAD: extern "C" fn() = on_unload;
