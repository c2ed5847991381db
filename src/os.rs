//! The only file that talks to the OS (feature `mmap`): map, unmap, give pages back.
//!
//! Through `libc`'s thin wrappers, which on Linux are one system call each. Those
//! wrappers set `errno` on failure, and a signal handler that allocates may interrupt
//! code that is about to read `errno`, so every call here saves `errno` first and
//! restores it after (I5). `mmap`, `munmap` and `madvise` are not on POSIX's list of
//! async-signal-safe functions; on Linux they are plain system calls with no user-space
//! lock, which is what makes calling them from a handler safe in practice.
//!
//! Depends on: `libc`. Upholds I5.
#![cfg(feature = "mmap")]

#[cfg(not(unix))]
compile_error!("the `mmap` feature needs a unix target (Linux first)");

use core::ffi::c_int;
use core::ptr;

/// Where this thread's `errno` lives.
fn errno_location() -> *mut c_int {
    // SAFETY: each of these returns the calling thread's `errno` address; no
    // precondition.
    unsafe {
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "emscripten"))]
        return libc::__errno_location();
        #[cfg(any(
            target_os = "macos",
            target_os = "ios",
            target_os = "freebsd",
            target_os = "dragonfly"
        ))]
        return libc::__error();
        #[cfg(any(target_os = "netbsd", target_os = "openbsd"))]
        return libc::__errno();
    }
}

/// Runs `f` with `errno` saved before and restored after.
fn keeping_errno<T>(f: impl FnOnce() -> T) -> T {
    let at = errno_location();
    // SAFETY: `at` is this thread's errno, valid for the thread's life; a handler that
    // interrupts us restores it before returning, so the read and write are ours.
    let saved = unsafe { at.read() };
    let out = f();
    // SAFETY: as above.
    unsafe { at.write(saved) };
    out
}

/// Maps `len` bytes of fresh, zeroed, private memory; `None` if the OS refuses.
pub(crate) fn map(len: usize) -> Option<*mut u8> {
    keeping_errno(|| {
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing
        // touches no existing memory.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        (p != libc::MAP_FAILED && !p.is_null()).then_some(p.cast::<u8>())
    })
}

/// Unmaps `len` bytes at `base`.
///
/// # Safety
/// - `base..base + len` is a mapping from [`map`], or a page-aligned part of one, and
///   nothing uses it any more.
pub(crate) unsafe fn unmap(base: *mut u8, len: usize) {
    keeping_errno(|| {
        // SAFETY: the caller's contract.
        unsafe { libc::munmap(base.cast(), len) };
    })
}

/// Whether memory given back by [`release`] reads as zero afterwards (Linux's
/// `MADV_DONTNEED` on private anonymous memory guarantees it; other systems do not).
pub(crate) const RELEASE_ZEROES: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Gives the physical pages of `len` bytes at `base` back to the OS; the range stays
/// mapped. Returns whether the OS accepted.
///
/// # Safety
/// - `base..base + len` is page-aligned, inside a mapping from [`map`], and its
///   contents are owned by the caller and no longer needed.
pub(crate) unsafe fn release(base: *mut u8, len: usize) -> bool {
    keeping_errno(|| {
        // SAFETY: the caller's contract: the range is ours and its contents are dead.
        unsafe { libc::madvise(base.cast(), len, libc::MADV_DONTNEED) == 0 }
    })
}
