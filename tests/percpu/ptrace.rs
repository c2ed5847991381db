//! A traced child: the parent forks a child that churns marked blocks on the cached
//! heap, `PTRACE_SEIZE`s it and stops it [`STOPS`] times (`PTRACE_INTERRUPT`, `waitpid`,
//! `PTRACE_CONT`). Each stop takes the child off its CPU wherever it is, inside a
//! restartable sequence too (with `hooks`, a delay inside every sequence makes that the
//! common case, and the child's aborts are asserted): nothing may be lost or handed
//! out twice. The child checks everything itself (marks, shadow, drain, `validate`) and
//! reports through a shared page and its exit status.
//!
//! The test binary is threaded, so the child uses only what is fork-safe: the sigalloc
//! heap, atomics, the mark helpers, raw libc calls (`clock_gettime`, `write`, `_exit`).

use std::sync::atomic::Ordering;

use super::mark::{granules, Marks, Owners, Tally, WorkingSet};
use super::{exit, say, ChildGuard, Shared};
use crate::common::{serial, watchdog, MINUTE};
use sigalloc::SigAlloc;

const HEAP: usize = sigalloc::DEFAULT_HEAP;
static P: SigAlloc<HEAP> = SigAlloc::new();
const G: usize = granules::<HEAP>();
static OWN: Owners<G> = Owners::new();
static T: Tally = Tally::new();

/// Stops the parent makes.
const STOPS: u64 = 3_000;
const SLOTS: usize = 64;
/// The child gives up (exit code [`Code::Abandoned`]) after this much CPU time.
const CHILD_CPU_LIMIT_NS: u64 = 20_000_000_000;
#[cfg(feature = "hooks")]
const DELAY_SPINS: u64 = 100;

const STOP: usize = 0;
const OPS: usize = 1;
const ABORTS: usize = 2;
const ACTIVE: usize = 3;
const DRAINED: usize = 4;

/// The child's exit codes.
#[repr(i32)]
#[derive(Clone, Copy, Debug)]
enum Code {
    Ok = 0,
    Unsound = 1,
    Owned = 2,
    InUse = 3,
    Cached = 4,
    Invalid = 5,
    Abandoned = 6,
}

fn cpu_time_ns() -> u64 {
    // SAFETY: all-zero is a valid `timespec`, overwritten by the call.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The child: churns until the parent says stop, checks everything, exits.
fn child(shared: &Shared) -> ! {
    let guard = ChildGuard;
    let marks = Marks {
        heap: &P,
        owners: &OWN,
        tally: &T,
    };
    let before = sigalloc::percpu_aborts();
    let start = cpu_time_ns();
    let mut set = WorkingSet::<SLOTS>::new(0x97AC);
    let mut ops = 0u64;
    let mut code = Code::Ok;
    while shared.get(STOP).load(Ordering::Relaxed) == 0 {
        ops += 1;
        set.step(marks);
        // Progress, for the parent: it stops us again only once we moved on.
        shared.get(OPS).store(ops, Ordering::Relaxed);
        if ops % 1024 == 0 && cpu_time_ns() - start > CHILD_CPU_LIMIT_NS {
            say(b"ptrace child: the parent never said stop\n");
            code = Code::Abandoned;
            break;
        }
    }
    set.give_all(marks);
    shared
        .get(ABORTS)
        .store(sigalloc::percpu_aborts() - before, Ordering::Relaxed);
    shared
        .get(ACTIVE)
        .store(u64::from(P.percpu_active()), Ordering::Relaxed);
    shared
        .get(DRAINED)
        .store(P.drain_percpu() as u64, Ordering::Relaxed);
    if matches!(code, Code::Ok) {
        code = verdict();
    }
    std::mem::forget(guard);
    exit(code as i32)
}

/// Tells the child to stop churning when dropped (also when the parent panics).
struct StopChild<'a>(&'a Shared);

impl Drop for StopChild<'_> {
    fn drop(&mut self) {
        self.0.get(STOP).store(1, Ordering::Relaxed);
    }
}

/// The child's checks once every block is freed and the caches drained.
fn verdict() -> Code {
    let s = P.stats();
    if !T.sound(false) {
        say(b"ptrace child: a mark failed (overlap, corruption or null)\n");
        Code::Unsound
    } else if !OWN.empty() {
        Code::Owned
    } else if s.bytes_in_use != 0 {
        Code::InUse
    } else if s.cached_bytes != 0 {
        Code::Cached
    } else if P.validate().is_err() {
        Code::Invalid
    } else {
        Code::Ok
    }
}

/// `ptrace(req, pid, 0, data)`.
fn trace(req: libc::c_uint, pid: libc::pid_t, data: usize) -> Result<(), std::io::Error> {
    // SAFETY: requests on our own child with no pointer arguments.
    let rc = unsafe { libc::ptrace(req, pid, 0usize, data) };
    if rc == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn ptrace_stops_of_a_churning_child_lose_nothing() {
    let _serial = serial();
    let shared = Shared::map();
    let _watchdog = watchdog("the ptrace test (deadlock or livelock?)", MINUTE, || {
        String::new()
    });
    let active = super::mode(&P, "ptrace");
    T.reset();
    #[cfg(feature = "hooks")]
    let delay = super::Delay::set(DELAY_SPINS);
    // SAFETY: the child runs only fork-safe code (`child`) and never returns.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        child(&shared);
    }
    #[cfg(feature = "hooks")]
    drop(delay);

    // Whatever happens below (a failed assertion too), the child is told to stop.
    let _stop = StopChild(&shared);
    if let Err(e) = trace(libc::PTRACE_SEIZE, pid, 0) {
        shared.get(STOP).store(1, Ordering::Relaxed);
        let code = super::wait_exit(pid);
        panic!("PTRACE_SEIZE of our child failed: {e} (the child exited {code})");
    }
    let mut stops = 0u64;
    let mut other_stops = 0u64;
    let mut code = None;
    while code.is_none() {
        if stops == STOPS && shared.get(STOP).load(Ordering::Relaxed) == 0 {
            shared.get(STOP).store(1, Ordering::Relaxed);
        }
        // Let the child run on a little (a few of its operations, a varying number) so
        // the next stop lands anywhere in its loop, not at the same instruction.
        let seen = shared.get(OPS).load(Ordering::Relaxed);
        let wait_for = seen + 1 + stops % 2;
        while stops < STOPS && shared.get(OPS).load(Ordering::Relaxed) < wait_for {
            std::thread::yield_now();
        }
        // A child that already exited answers ESRCH; `waitpid` then reaps it.
        let interrupted = stops < STOPS && trace(libc::PTRACE_INTERRUPT, pid, 0).is_ok();
        let mut status = 0;
        // SAFETY: `pid` is our traced child; `status` a valid out-pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
        if libc::WIFEXITED(status) {
            code = Some(libc::WEXITSTATUS(status));
        } else if libc::WIFSIGNALED(status) {
            panic!(
                "the traced child was killed by signal {} after {stops} stops",
                libc::WTERMSIG(status)
            );
        } else if libc::WIFSTOPPED(status) {
            let event = status >> 16;
            let sig = if event == libc::PTRACE_EVENT_STOP {
                if interrupted {
                    stops += 1;
                } else {
                    other_stops += 1;
                }
                0
            } else {
                // A signal-delivery stop: pass the signal on.
                other_stops += 1;
                libc::WSTOPSIG(status) as usize
            };
            trace(libc::PTRACE_CONT, pid, sig).expect("PTRACE_CONT");
        }
    }
    let code = code.unwrap_or(-1);
    let get = |i| shared.get(i).load(Ordering::Relaxed);
    println!(
        "percpu ptrace: {stops} stops, {} aborts in the child ({}, {} child ops, {} other \
         stops, {} blocks drained, exit {code})",
        get(ABORTS),
        if get(ACTIVE) != 0 {
            "caches active"
        } else {
            "fallback"
        },
        get(OPS),
        other_stops,
        get(DRAINED),
    );
    assert_eq!(
        code,
        Code::Ok as i32,
        "the traced child failed: 1 a mark failed, 2 shadow not empty, 3 bytes in use, \
         4 cached bytes after drain, 5 validate failed, 6 abandoned, 99 panicked"
    );
    assert_eq!(
        stops, STOPS,
        "the child exited before the parent's stops were done"
    );
    assert_eq!(
        get(ACTIVE) != 0,
        active,
        "the child's caches are not the parent's"
    );
    #[cfg(feature = "hooks")]
    if active {
        assert!(
            get(ABORTS) > 0,
            "{stops} stops of a child spending most of its time inside sequences, yet no abort"
        );
    }
}
