//! Signal plumbing for the tests that interrupt the allocator with real signals
//! (`common::storm`, `tests/global.rs`): installing and restoring handlers, and
//! per-thread interval timers.

/// A `SA_SIGINFO` handler.
pub type Handler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// Installs `handler` for `sig` with `SA_SIGINFO | SA_RESTART | flags`, blocking the
/// signals of `mask` while it runs; returns the previous action (for [`restore`]).
pub fn install(
    sig: libc::c_int,
    handler: Handler,
    flags: libc::c_int,
    mask: &[libc::c_int],
) -> libc::sigaction {
    // SAFETY: all-zero is a valid `sigaction` (empty mask, no flags), filled in below.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | flags;
    // SAFETY: `sa.sa_mask` is a valid, owned signal set.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    for &s in mask {
        // SAFETY: as above; `s` is a valid signal number.
        unsafe { libc::sigaddset(&mut sa.sa_mask, s) };
    }
    // SAFETY: all-zero is a valid `sigaction`, overwritten by the call.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; the caller's handler is async-signal-safe.
    let rc = unsafe { libc::sigaction(sig, &sa, &mut old) };
    assert_eq!(rc, 0, "sigaction({sig})");
    old
}

/// Puts back the signal action `old`, first setting `SIG_IGN` so that a signal still
/// pending is discarded instead of reaching a handler that is going away.
pub fn restore(sig: libc::c_int, old: &libc::sigaction) {
    // SAFETY: all-zero is a valid `sigaction`.
    let mut ignore: libc::sigaction = unsafe { std::mem::zeroed() };
    ignore.sa_sigaction = libc::SIG_IGN;
    // SAFETY: valid pointers to initialised actions.
    unsafe {
        assert_eq!(libc::sigaction(sig, &ignore, std::ptr::null_mut()), 0);
        assert_eq!(libc::sigaction(sig, old, std::ptr::null_mut()), 0);
    }
}

/// A per-thread interval timer that sends `sig` to the calling thread every
/// `interval_ns` (Linux only; elsewhere a no-op: storms then come from `pthread_kill`
/// alone). Deleted on drop.
#[cfg(target_os = "linux")]
pub struct Timer(libc::timer_t);

#[cfg(target_os = "linux")]
impl Timer {
    pub fn start(sig: libc::c_int, interval_ns: libc::c_long) -> Timer {
        // SAFETY: all-zero is a valid `sigevent`, filled in below.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = sig;
        // SAFETY: `gettid` has no preconditions.
        sev.sigev_notify_thread_id = unsafe { libc::syscall(libc::SYS_gettid) } as libc::c_int;
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid pointers; the timer targets this (live) thread.
        let rc = unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) };
        assert_eq!(rc, 0, "timer_create");
        let every = libc::timespec {
            tv_sec: 0,
            tv_nsec: interval_ns,
        };
        let its = libc::itimerspec {
            it_interval: every,
            it_value: every,
        };
        // SAFETY: `id` is the timer just created.
        let rc = unsafe { libc::timer_settime(id, 0, &its, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "timer_settime");
        Timer(id)
    }
}

#[cfg(target_os = "linux")]
impl Drop for Timer {
    fn drop(&mut self) {
        // SAFETY: the timer was created by `start` and is deleted once.
        unsafe { libc::timer_delete(self.0) };
    }
}

#[cfg(not(target_os = "linux"))]
pub struct Timer;

#[cfg(not(target_os = "linux"))]
impl Timer {
    pub fn start(_sig: libc::c_int, _interval_ns: libc::c_long) -> Timer {
        Timer
    }
}
