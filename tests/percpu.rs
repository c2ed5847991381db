//! The per-CPU caches (feature `percpu`, issue #11): the proof that a magazine never
//! hands out a block twice, never loses one, and gives everything back when the heap
//! needs it, whatever interrupts the restartable sequences.
//!
//! What this proves (one file per topic, in `tests/percpu/`):
//! - **storm** (`storm.rs`): signal storms with and without `SA_NODEFER` while three
//!   threads churn the same caches and every handler allocates on them too; with
//!   `hooks`, a delay inside every sequence makes aborts certain and they are asserted;
//! - **canary** (`canary.rs`, `hooks`): three threads pinned to one CPU, a delay inside
//!   every sequence: preemption aborts sequences and the invariants hold. Its name says
//!   what a failure means: this kernel does not honour rseq;
//! - **ptrace** (`ptrace.rs`): a parent stops a churning child thousands of times
//!   (`PTRACE_INTERRUPT`/`PTRACE_CONT`); the child's every check holds;
//! - **fork** (`fork.rs`): a threaded parent forks while two threads churn; the child
//!   fills and empties the heap it inherited, frozen sequences and all;
//! - **drain** (`drain.rs`): filling a 2 MiB heap while other threads' magazines hold
//!   blocks gets as much as with caches off; the phase change (16 B, then 2 KiB) gets
//!   back at least 90 %; `disable_percpu` empties the caches for good;
//! - **unregistered** (`unregistered.rs`): a thread whose rseq area is unregistered, or
//!   a heap limited to no magazine, takes the shared path and parks nothing;
//! - **checked** (`checked.rs`, `checked`): a double free of a block that sits in a
//!   magazine is reported.
//!
//! Every block carries ownership marks (`mark.rs`). Tests that share process-wide state
//! (signal handlers, the sequence delay, the abort counter, pinning) take
//! `common::serial()`; every test runs both where the caches are live and under
//! `GLIBC_TUNABLES=glibc.pthread.rseq=0` (fallback: each checks the caches stayed
//! empty), and prints `percpu mode: active|fallback` so `.ci/percpu.sh` can tell which
//! ran.
#![cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
// A test binary, not the crate: the atomics here are the tests' own bookkeeping, which
// `clippy.toml` (aimed at `src/`, where loom must see every atomic) does not concern.
#![allow(clippy::disallowed_types)]

#[cfg(feature = "hooks")]
#[path = "percpu/canary.rs"]
mod canary;
#[cfg(feature = "checked")]
#[path = "percpu/checked.rs"]
mod checked;
mod common;
#[path = "percpu/drain.rs"]
mod drain;
#[path = "percpu/fork.rs"]
mod fork;
#[path = "percpu/mark.rs"]
mod mark;
#[path = "percpu/ptrace.rs"]
mod ptrace;
#[path = "percpu/storm.rs"]
mod storm;
#[path = "percpu/unregistered.rs"]
mod unregistered;

use std::sync::atomic::AtomicU64;

use sigalloc::SigAlloc;

extern "C" {
    /// glibc (>= 2.35): the offset of this thread's `struct rseq` from the thread pointer.
    static __rseq_offset: isize;
    /// glibc: the size of the registered area's feature set; 0 if glibc registered none
    /// (the tunable, valgrind, a kernel without rseq).
    static __rseq_size: u32;
}

/// The rseq ABI signature glibc registers on x86_64.
pub(crate) const RSEQ_SIG: u32 = 0x5305_3053;
/// The length glibc 2.35..2.39 registers (Debian's 2.36 does).
pub(crate) const RSEQ_LEN: u32 = 32;

/// `__rseq_size`: nonzero when glibc registered an rseq area for its threads.
pub(crate) fn glibc_rseq_size() -> u32 {
    // SAFETY: a `const` glibc variable, set before `main` and never written again.
    unsafe { __rseq_size }
}

/// The calling thread's `struct rseq`: thread pointer plus `__rseq_offset`.
pub(crate) fn rseq_area() -> *mut u8 {
    let tp: usize;
    // SAFETY: on x86_64 glibc, `fs:0` holds the TCB's self-pointer (the thread
    // pointer); reading it has no side effect.
    unsafe {
        core::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags))
    };
    // SAFETY: as in `glibc_rseq_size`.
    let off = unsafe { __rseq_offset };
    tp.wrapping_add_signed(off) as *mut u8
}

/// The kernel-written `cpu_id` (offset 4) and `mm_cid` (offset 24) of this thread's area.
pub(crate) fn rseq_ids() -> (i32, u32) {
    let rs = rseq_area();
    // SAFETY: the area lies in this thread's TCB (glibc's static TLS) and is at least
    // 32 bytes; the kernel writes these fields between our instructions, hence the
    // volatile reads.
    unsafe {
        (
            rs.add(4).cast::<i32>().read_volatile(),
            rs.add(24).cast::<u32>().read_volatile(),
        )
    }
}

/// `rseq(2)` on this thread's glibc area: `flags` 0 registers, 1 unregisters.
pub(crate) fn rseq_syscall(flags: libc::c_int) -> Result<(), std::io::Error> {
    // SAFETY: the area is glibc's own for this thread, valid for its whole life; the
    // kernel checks length and signature.
    let rc = unsafe { libc::syscall(libc::SYS_rseq, rseq_area(), RSEQ_LEN, flags, RSEQ_SIG) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes the heap set its caches up (one allocation and free), prints which path this
/// run exercises (`percpu mode: active|fallback`) and returns whether the caches are
/// live. Without a glibc rseq area they must not be.
pub(crate) fn mode<const N: usize>(a: &SigAlloc<N>, test: &str) -> bool {
    let p = a.malloc(16);
    assert!(!p.is_null(), "{test}: the first allocation failed");
    // SAFETY: just allocated from `a`, freed once.
    unsafe { a.free(p) };
    let active = a.percpu_active();
    println!(
        "percpu mode: {} ({test}; glibc __rseq_size {}, {} caches)",
        if active { "active" } else { "fallback" },
        glibc_rseq_size(),
        sigalloc::PERCPU_CACHES,
    );
    if glibc_rseq_size() == 0 {
        assert!(
            !active,
            "{test}: caches active, yet glibc registered no rseq area"
        );
    }
    active
}

/// What the API promises `stats()` says about parked blocks, checked on a quiet heap
/// (no thread inside the allocator): `cached_bytes` is the sum over classes of
/// `blocks_cached * block_size`, and parked blocks are not in use (`bytes_in_use` and
/// `blocks_in_use` leave them out, so with every block freed both are 0).
pub(crate) fn assert_cached_accounting<const N: usize>(a: &SigAlloc<N>, all_freed: bool) {
    let s = a.stats();
    let by_class: usize = s
        .classes
        .iter()
        .map(|c| c.blocks_cached * c.block_size)
        .sum();
    assert_eq!(
        s.cached_bytes, by_class,
        "cached_bytes is not the sum of the classes' blocks_cached: {s}"
    );
    if all_freed {
        assert_eq!(s.bytes_in_use, 0, "parked blocks counted in use: {s}");
        for c in &s.classes {
            assert_eq!(c.blocks_in_use, 0, "parked blocks counted in use: {s}");
        }
    }
}

/// The CPUs this thread may run on.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: all-zero is an empty CPU set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid for `size_of::<cpu_set_t>()` bytes.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(
        rc,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `set` is initialised; `c` is below CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Pins the calling thread to `cpus`.
pub(crate) fn pin(cpus: &[usize]) {
    // SAFETY: all-zero is an empty CPU set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: `c` is below CPU_SETSIZE (it came from `allowed_cpus`).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a valid CPU set of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity({cpus:?}): {}",
        std::io::Error::last_os_error()
    );
}

/// The delay loop inside every restartable sequence (`hooks`), process-wide, set for
/// the guard's life and back to 0 when it drops (also when a test panics).
#[cfg(feature = "hooks")]
pub(crate) struct Delay;

#[cfg(feature = "hooks")]
impl Delay {
    pub(crate) fn set(spins: u64) -> Delay {
        sigalloc::set_percpu_delay(spins);
        Delay
    }
}

#[cfg(feature = "hooks")]
impl Drop for Delay {
    fn drop(&mut self) {
        sigalloc::set_percpu_delay(0);
    }
}

/// Ends a forked child without ever returning into the test harness: `_exit(code)`
/// when dropped (by a panic's unwinding too). The child's normal end calls [`exit`].
pub(crate) struct ChildGuard;

impl Drop for ChildGuard {
    fn drop(&mut self) {
        say(b"forked child: unwinding (a panic): exiting 99\n");
        // SAFETY: `_exit` ends the process at once, async-signal-safe.
        unsafe { libc::_exit(99) };
    }
}

/// Ends a forked child with `code` (no atexit handlers, no flush: fork-safe).
pub(crate) fn exit(code: i32) -> ! {
    // SAFETY: as in `ChildGuard::drop`.
    unsafe { libc::_exit(code) }
}

/// Writes `msg` to stderr with one `write` (fork- and async-signal-safe).
pub(crate) fn say(msg: &[u8]) {
    // SAFETY: `msg` is valid for `msg.len()` bytes; fd 2 is stderr.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

/// Waits for child `pid` to exit; returns its exit code (panics if a signal killed it).
pub(crate) fn wait_exit(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a valid out-pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status),
        "the child did not exit normally: status {status:#x} (signal {})",
        libc::WTERMSIG(status)
    );
    libc::WEXITSTATUS(status)
}

/// A page a parent and its forked child share (`MAP_SHARED`): eight atomic words for
/// flags and results, unmapped on drop.
pub(crate) struct Shared(*const [AtomicU64; 8]);

impl Shared {
    pub(crate) fn map() -> Shared {
        // SAFETY: a fresh anonymous shared mapping at an address of the kernel's choosing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap of the shared page");
        Shared(p.cast())
    }

    pub(crate) fn get(&self, i: usize) -> &AtomicU64 {
        // SAFETY: the page is mapped (zeroed: valid atomics) until `drop`, and shared
        // only through atomics.
        unsafe { &(*self.0)[i] }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: mapped in `map`, unmapped once; no reference outlives `self`.
        unsafe { libc::munmap(self.0 as *mut libc::c_void, 4096) };
    }
}
