//! sigalloc as the global allocator: four threads allocate while a timer signal
//! interrupts them every 50 µs, and the handler allocates too (a `Vec` and a `Box`).
//! With glibc's malloc this program can deadlock; with sigalloc it cannot.
//!
//! Run: `cargo run --release --example demo`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sigalloc::SigAlloc;

#[global_allocator]
static GLOBAL: SigAlloc<{ 64 << 20 }> = SigAlloc::new();

static HANDLED: AtomicU64 = AtomicU64::new(0);
static BAD: AtomicU64 = AtomicU64::new(0);

/// The signal handler allocates through the global allocator: legal only because that
/// allocator is async-signal-safe.
extern "C" fn on_alarm(_sig: libc::c_int) {
    let n = HANDLED.fetch_add(1, Ordering::Relaxed);
    let v: Vec<u64> = (0..(n % 64 + 1)).collect();
    let b = Box::new([n as u8; 200]);
    if v.iter().sum::<u64>() != (n % 64) * (n % 64 + 1) / 2 || b.iter().any(|&x| x != n as u8) {
        BAD.fetch_add(1, Ordering::Relaxed);
    }
}

fn set_timer(us: libc::suseconds_t) {
    let t = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: us,
        },
        it_value: libc::timeval {
            tv_sec: 0,
            tv_usec: us,
        },
    };
    // SAFETY: plain syscall wrapper with a valid, initialised argument.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &t, std::ptr::null_mut()) };
}

fn main() {
    let secs = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    // SAFETY: installs a handler that only touches atomics and the (signal-safe) global
    // allocator; SA_RESTART keeps the worker threads' syscalls going.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_alarm as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut());
    }
    let stop = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let start = Instant::now();
    set_timer(50);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (stop, ops) = (&stop, &ops);
            s.spawn(move || {
                let mut keep: Vec<Vec<u8>> = (0..256).map(|_| Vec::new()).collect();
                let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let slot = (x % 256) as usize;
                    let len = 16 + (x >> 20) as usize % 2000;
                    keep[slot] = vec![slot as u8; len];
                    if keep[(slot + 1) % 256]
                        .iter()
                        .any(|&b| b != ((slot + 1) % 256) as u8)
                    {
                        BAD.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
                ops.fetch_add(n, Ordering::Relaxed);
            });
        }
        // A deadline, not one long sleep: every signal interrupts and restarts a sleep.
        let deadline = start + Duration::from_secs_f64(secs);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
    });
    set_timer(0);
    let took = start.elapsed().as_secs_f64();
    let ops = ops.load(Ordering::Relaxed);
    println!("sigalloc demo: 4 threads + a SIGALRM handler every 50 us, {took:.1} s");
    println!(
        "  thread allocations: {ops} ({:.1} M/s)",
        ops as f64 / took / 1e6
    );
    println!(
        "  signals handled (each allocating twice): {}",
        HANDLED.load(Ordering::Relaxed)
    );
    println!("  corrupted results: {}", BAD.load(Ordering::Relaxed));
    print!("{}", GLOBAL.stats());
    if BAD.load(Ordering::Relaxed) != 0 {
        std::process::exit(1);
    }
}
