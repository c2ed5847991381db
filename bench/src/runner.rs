//! Runs one measurement in a fresh child process (this binary, re-executed) under a
//! watchdog. A fresh process gives every measurement an untouched heap (AO_malloc's is
//! global and never given back), and a crash or hang in one allocator costs one table
//! cell instead of the whole run.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The prefix of the one line a child prints on success.
pub const RESULT: &str = "RESULT";

/// How a child ended.
pub enum Outcome {
    /// Exited 0 and printed `RESULT key=value ...`.
    Ok(Fields),
    /// Still running when the watchdog fired; killed.
    Hung { after: Duration, stderr: String },
    /// Killed by a signal or exited non-zero.
    Crashed { how: String, stderr: String },
}

/// The `key=value` pairs of a child's result line.
pub struct Fields(Vec<(String, String)>);

impl Fields {
    fn parse(line: &str) -> Fields {
        Fields(
            line.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// Whether the result has `key`.
    pub fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// The number under `key` (0 if missing, which a well-formed child never does).
    pub fn num(&self, key: &str) -> f64 {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0.0)
    }
}

/// Runs `current_exe() --child args...`, killing it after `timeout`.
pub fn run(args: &[String], timeout: Duration) -> Outcome {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .arg("--child")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));

    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break Some(status);
        }
        if start.elapsed() >= timeout {
            // Our own child, by its handle: SIGKILL, then reap it.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(2));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = tail(&err.join().unwrap_or_default());
    match status {
        None => Outcome::Hung {
            after: timeout,
            stderr,
        },
        Some(s) if s.success() => match stdout.lines().find(|l| l.starts_with(RESULT)) {
            Some(line) => Outcome::Ok(Fields::parse(line)),
            None => Outcome::Crashed {
                how: "exited 0 without a result".into(),
                stderr,
            },
        },
        Some(s) => {
            let how = match (s.signal(), s.code()) {
                (Some(sig), _) => format!("killed by {}", signal_name(sig)),
                (None, Some(code)) => format!("exit code {code}"),
                (None, None) => "ended abnormally".into(),
            };
            Outcome::Crashed { how, stderr }
        }
    }
}

/// The last lines of a child's stderr: enough to see a panic message or an abort reason.
fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

pub fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGBUS => "SIGBUS".into(),
        libc::SIGILL => "SIGILL".into(),
        libc::SIGFPE => "SIGFPE".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGALRM => "SIGALRM".into(),
        libc::SIGTRAP => "SIGTRAP".into(),
        _ => format!("signal {sig}"),
    }
}
