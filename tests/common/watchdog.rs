//! The tests' hang detector: a lock-free allocator that hangs has a bug (I4), and a
//! stuck test would otherwise never report it.

use std::io::Write;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// The limit most tests use: far above any healthy run, on a loaded 2-core VM too.
pub const MINUTE: Duration = Duration::from_secs(60);

/// Aborts the process unless dropped within its limit. Not a timing assertion: the
/// limit only turns a hang into a failure with a message.
pub struct Watchdog {
    _done: mpsc::Sender<()>,
}

/// Starts a watchdog for `what`. If it fires, it writes
/// `watchdog: {what} did not finish within {limit:?}{report()}` straight to stderr (past
/// the test harness's capture) and aborts. Under Miri, where everything is slow, it
/// never fires.
pub fn watchdog(
    what: impl Into<String>,
    limit: Duration,
    report: impl FnOnce() -> String + Send + 'static,
) -> Watchdog {
    let (done, wait) = mpsc::channel::<()>();
    if !cfg!(miri) {
        let what = what.into();
        thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
                let _ = writeln!(
                    std::io::stderr(),
                    "watchdog: {what} did not finish within {limit:?}{}",
                    report()
                );
                std::process::abort();
            }
        });
    }
    Watchdog { _done: done }
}
