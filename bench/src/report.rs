//! Output: the machine header, Markdown tables, the notes on failed children, and the
//! optional JSON file.

use std::fmt::Write as _;
use std::fs;

/// One allocator's result in one table cell.
#[derive(Clone, Debug)]
pub enum Cell {
    /// A median rate, with the worst failure count and whether any repeat hit the limit.
    Rate {
        per_sec: f64,
        failures: u64,
        truncated: bool,
    },
    /// A fraction of the heap (efficiency).
    Fraction(f64),
    /// No number: "not installed", "n/a", "crashed (SIGSEGV)", ...
    Text(String),
}

impl Cell {
    pub fn rate(&self) -> Option<f64> {
        match self {
            Cell::Rate { per_sec, .. } => Some(*per_sec),
            _ => None,
        }
    }

    /// The value column: "12.3 M", "12.3 M*" (cut off by the time limit), "87.5%", text.
    pub fn show(&self) -> String {
        match self {
            Cell::Rate {
                per_sec, truncated, ..
            } => {
                format!("{}{}", si(*per_sec), if *truncated { "*" } else { "" })
            }
            Cell::Fraction(f) => format!("{:.1}%", f * 100.0),
            Cell::Text(t) => t.clone(),
        }
    }

    pub fn failures(&self) -> String {
        match self {
            Cell::Rate { failures, .. } => failures.to_string(),
            _ => String::new(),
        }
    }
}

/// `x / base` as "1.23x", or "–" when either side has no rate.
pub fn ratio(x: &Cell, base: Option<&Cell>) -> String {
    match (x.rate(), base.and_then(Cell::rate)) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "–".into(),
    }
}

/// 12_345_678.0 -> "12.35 M".
pub fn si(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2} G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// Prints a Markdown table.
pub fn table(head: &[&str], rows: &[Vec<String>]) {
    let mut s = String::new();
    let _ = writeln!(s, "| {} |", head.join(" | "));
    let _ = writeln!(s, "|{}", head.iter().map(|_| "---|").collect::<String>());
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    println!("{s}");
}

/// The machine the numbers come from.
pub fn machine() -> Vec<(&'static str, String)> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
        .map_or_else(|| "unknown".into(), |(_, m)| m.trim().to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // Other work on the machine skews every number: say how busy it was.
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    // SAFETY: returns a pointer to a static NUL-terminated string.
    let glibc = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
    vec![
        ("nproc", cores.to_string()),
        ("cpu", model),
        ("load average at start (1, 5, 15 min)", load.join(" ")),
        ("kernel", kernel.trim().to_owned()),
        ("glibc", glibc.to_string_lossy().into_owned()),
        ("rustc", env!("BENCH_RUSTC_VERSION").to_owned()),
        (
            "build",
            if cfg!(debug_assertions) {
                "debug (numbers meaningless)"
            } else {
                "release"
            }
            .into(),
        ),
    ]
}

/// Collects every result for `--json`.
#[derive(Default)]
pub struct Json {
    records: Vec<String>,
}

impl Json {
    /// Records one cell: `threads` is 0 where the workload has no thread count.
    pub fn push(&mut self, workload: &str, allocator: &str, threads: usize, cell: &Cell) {
        let value = match cell {
            Cell::Rate {
                per_sec,
                failures,
                truncated,
            } => format!(
                r#""ops_per_sec":{per_sec:.1},"failed_allocs":{failures},"hit_time_limit":{truncated}"#
            ),
            Cell::Fraction(f) => format!(r#""fraction_of_heap":{f:.4}"#),
            Cell::Text(t) => format!(r#""status":{}"#, quote(t)),
        };
        self.records.push(format!(
            r#"{{"workload":{},"allocator":{},"threads":{threads},{value}}}"#,
            quote(workload),
            quote(allocator)
        ));
    }

    /// Records one measurement given as named numbers (tables 7-10).
    pub fn push_fields(
        &mut self,
        workload: &str,
        allocator: &str,
        threads: usize,
        fields: &[(&str, f64)],
    ) {
        let values: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}:{v}", quote(k)))
            .collect();
        self.records.push(format!(
            r#"{{"workload":{},"allocator":{},"threads":{threads},{}}}"#,
            quote(workload),
            quote(allocator),
            values.join(",")
        ));
    }

    pub fn write(&self, path: &str, machine: &[(&str, String)]) -> std::io::Result<()> {
        let m: Vec<String> = machine
            .iter()
            .map(|(k, v)| format!("{}:{}", quote(k), quote(v)))
            .collect();
        let body = format!(
            "{{\"machine\":{{{}}},\n\"results\":[\n{}\n]}}\n",
            m.join(","),
            self.records.join(",\n")
        );
        fs::write(path, body)
    }
}

/// A JSON string literal.
fn quote(s: &str) -> String {
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(q, "\\u{:04x}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}
