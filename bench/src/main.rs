//! sigalloc's benchmark against glibc, AO_malloc, mimalloc, talc, linked_list_allocator
//! and buddy_system_allocator.
//!
//! ```text
//! cargo run --release -p sigalloc-bench                 # full: 5 repeats, median
//! cargo run --release -p sigalloc-bench -- --quick      # smoke run (CI)
//! cargo run --release -p sigalloc-bench -- --json out.json
//! ```
//!
//! The parent only orchestrates: every measurement runs in a child process (this binary
//! with `--child ALLOCATOR JOB...`) under a watchdog, so each gets a fresh heap and a crash
//! or hang is reported in its table cell while the other tables still run.

mod allocators;
mod report;
mod runner;
mod storm;
mod workloads;

use std::process::ExitCode;
use std::time::Duration;

use allocators::{HeapSize, BIG, HAVE_AO, NAMES, SMALL};
use report::{ratio, si, table, Cell, Json};
use runner::Outcome;
use workloads::{Fill, Throughput};

/// Thread counts for the threaded churn (2 cores: 4 and 8 oversubscribe on purpose).
const THREADS: [usize; 4] = [1, 2, 4, 8];

/// Sizes and limits of a run.
struct Config {
    quick: bool,
    /// Repeats per throughput cell; the median is reported.
    repeats: usize,
    pairs_ops: u64,
    churn_ops: u64,
    /// Per thread.
    thread_ops: u64,
    prodcons_ops: u64,
    /// Time limit of one throughput run: a slow allocator stops early and its rate is
    /// taken over the operations it did (marked `*`).
    limit: Duration,
    storm_signals: u64,
    storm_interval_us: i64,
    storm_watchdog: Duration,
}

impl Config {
    fn new(quick: bool) -> Config {
        // Full budgets make glibc's runs last about 0.1-0.5 s; quick ones are 1/20 of that.
        let scale = if quick { 20 } else { 1 };
        Config {
            quick,
            repeats: if quick { 1 } else { 5 },
            pairs_ops: 10_000_000 / scale,
            churn_ops: 5_000_000 / scale,
            // Long enough (~0.2 s and up per run) that thread start-up and first-touch page
            // faults of a fresh process do not decide the scaling column.
            thread_ops: 5_000_000 / scale,
            prodcons_ops: 3_000_000 / scale,
            limit: Duration::from_secs(if quick { 1 } else { 2 }),
            storm_signals: if quick { 10_000 } else { 50_000 },
            storm_interval_us: 20,
            storm_watchdog: Duration::from_secs(if quick { 4 } else { 10 }),
        }
    }

    /// A throughput child gets its limit plus slack for setup before it counts as hung.
    fn watchdog(&self) -> Duration {
        self.limit + Duration::from_secs(10)
    }
}

/// One measurement a child can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Job {
    Pairs,
    Churn,
    Threads(usize),
    ProdCons,
    Efficiency(Fill),
    Storm,
}

impl Job {
    fn args(self) -> Vec<String> {
        match self {
            Job::Pairs => vec!["pairs".into()],
            Job::Churn => vec!["churn".into()],
            Job::Threads(t) => vec!["threads".into(), t.to_string()],
            Job::ProdCons => vec!["prodcons".into()],
            Job::Efficiency(f) => vec!["efficiency".into(), f.name().into()],
            Job::Storm => vec!["storm".into()],
        }
    }

    fn parse(args: &[String]) -> Option<Job> {
        let arg = |i: usize| args.get(i).map(String::as_str);
        Some(match arg(0)? {
            "pairs" => Job::Pairs,
            "churn" => Job::Churn,
            "threads" => Job::Threads(arg(1)?.parse().ok()?),
            "prodcons" => Job::ProdCons,
            "efficiency" => Job::Efficiency(Fill::parse(arg(1)?)?),
            "storm" => Job::Storm,
            _ => return None,
        })
    }

    /// Throughput workloads (tables 1-4) let AO_malloc grow with mmap.
    fn throughput(self) -> bool {
        !matches!(self, Job::Efficiency(_) | Job::Storm)
    }

    /// Multi-thread workloads need the big heaps; the rest use the 2 MiB configuration.
    fn heap(self) -> HeapSize {
        match self {
            Job::Threads(_) | Job::ProdCons => HeapSize::Big,
            _ => HeapSize::Small,
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        return child(&args[1..]);
    }
    let mut quick = false;
    let mut json_path = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--json" => match it.next() {
                Some(p) => json_path = Some(p.clone()),
                None => return usage("--json needs a path"),
            },
            "-h" | "--help" => return usage(""),
            other => return usage(&format!("unknown argument {other}")),
        }
    }
    Bench::new(Config::new(quick)).run(json_path.as_deref())
}

fn usage(err: &str) -> ExitCode {
    if !err.is_empty() {
        eprintln!("error: {err}");
    }
    eprintln!("usage: sigalloc-bench [--quick] [--json PATH]");
    if err.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

/// The child side: `--child ALLOCATOR JOB [PARAM] [--quick]`. Prints one RESULT line.
fn child(args: &[String]) -> ExitCode {
    let quick = args.iter().any(|a| a == "--quick");
    let cfg = Config::new(quick);
    let (Some(name), Some(job)) = (args.first(), args.get(1..).and_then(Job::parse)) else {
        eprintln!("bad child arguments: {args:?}");
        return ExitCode::from(2);
    };
    if job.throughput() {
        allocators::enable_ao_mmap();
    }
    let Some(a) = allocators::get(name, job.heap()) else {
        eprintln!("allocator {name} is not available");
        return ExitCode::from(2);
    };
    let print = |t: Throughput| {
        println!(
            "{} ops={} secs={} failures={} truncated={}",
            runner::RESULT,
            t.ops,
            t.secs,
            t.failures,
            u8::from(t.truncated)
        );
    };
    match job {
        Job::Pairs => print(workloads::pairs(a, cfg.pairs_ops, cfg.limit)),
        Job::Churn => print(workloads::churn(a, 1, cfg.churn_ops, cfg.limit)),
        Job::Threads(t) => print(workloads::churn(a, t, cfg.thread_ops, cfg.limit)),
        Job::ProdCons => print(workloads::producer_consumer(a, cfg.prodcons_ops, cfg.limit)),
        Job::Efficiency(f) => println!("{} bytes={}", runner::RESULT, workloads::efficiency(a, f)),
        Job::Storm => {
            let r = storm::run(a, cfg.storm_signals, cfg.storm_interval_us);
            println!(
                "{} signals={} ops={} secs={} failures={} corrupt={}",
                runner::RESULT,
                r.signals,
                r.ops,
                r.secs,
                r.failures,
                r.corrupt
            );
        }
    }
    ExitCode::SUCCESS
}

/// The parent side: runs every table.
struct Bench {
    cfg: Config,
    json: Json,
    /// Details of every child that crashed or hung, printed at the end.
    notes: Vec<String>,
}

impl Bench {
    fn new(cfg: Config) -> Bench {
        Bench {
            cfg,
            json: Json::default(),
            notes: Vec::new(),
        }
    }

    fn run(mut self, json_path: Option<&str>) -> ExitCode {
        let machine = report::machine();
        self.header(&machine);

        self.rate_table(
            Job::Pairs,
            "1. pairs",
            "alloc + immediate free, 16..2048 B, one thread; ops = pairs",
        );
        self.rate_table(
            Job::Churn,
            "2. churn",
            "1,000-slot working set, each step frees a random slot and refills it with 16..512 B; \
             one thread; ops = steps",
        );
        self.threads_table();
        self.rate_table(
            Job::ProdCons,
            "4. producer/consumer",
            "one thread allocates 16..512 B, hands batches of 64 through a bounded channel, \
             another frees them; ops = blocks",
        );
        self.efficiency_table();
        self.storm_table();

        if !self.notes.is_empty() {
            println!("## Failed children\n");
            for n in &self.notes {
                println!("{n}\n");
            }
        }
        if let Some(path) = json_path {
            if let Err(e) = self.json.write(path, &machine) {
                eprintln!("error: writing {path}: {e}");
                return ExitCode::FAILURE;
            }
            println!("JSON written to {path}");
        }
        ExitCode::SUCCESS
    }

    fn header(&self, machine: &[(&str, String)]) {
        let c = &self.cfg;
        println!("# sigalloc benchmark\n");
        for (k, v) in machine {
            println!("- {k}: {v}");
        }
        println!(
            "- mode: {} ({} repeat{} per cell, median; each run in a fresh process)",
            if c.quick { "quick" } else { "full" },
            c.repeats,
            if c.repeats == 1 { "" } else { "s" }
        );
        println!(
            "- every allocator is called directly (not as the global allocator) on the same \
             seeded request stream; requests are 16-byte aligned and every block is touched"
        );
        println!(
            "- heaps: tables 1, 2, 5 and 6 give every arena allocator {} MiB (sigalloc's \
             default), tables 3 and 4 give each {} MiB; AO_malloc runs tables 1-4 with \
             AO_malloc_enable_mmap() and tables 5-6 on its static 2 MiB heap alone",
            SMALL >> 20,
            BIG >> 20
        );
        println!(
            "- talc and linked_list sit behind spinning_top's spin lock, buddy behind spin's; \
             a throughput run stops at {} s and its rate counts the ops it did (marked *)",
            c.limit.as_secs()
        );
        if !HAVE_AO {
            println!("- AO_malloc: not installed (apt-get install libatomic-ops-dev)");
        }
        println!();
    }

    /// Runs `job` on one allocator once; `Err` is the table cell's text for a failure.
    fn once(&mut self, name: &str, job: Job, timeout: Duration) -> Result<runner::Fields, String> {
        let mut args = vec![name.to_owned()];
        args.extend(job.args());
        if self.cfg.quick {
            args.push("--quick".into());
        }
        let (cell, how, stderr) = match runner::run(&args, timeout) {
            Outcome::Ok(f) => return Ok(f),
            Outcome::Hung { after, stderr } => (
                format!("hung (killed after {} s)", after.as_secs()),
                "hung".into(),
                stderr,
            ),
            Outcome::Crashed { how, stderr } => (format!("crashed ({how})"), how, stderr),
        };
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut note = format!(
            "- {name}, {}: {how}\n  reproduce: `{exe} --child {}`",
            job.args().join(" "),
            args.join(" ")
        );
        if !stderr.trim().is_empty() {
            note += &format!("\n  stderr (tail):\n```\n{stderr}\n```");
        }
        self.notes.push(note);
        Err(cell)
    }

    /// Median throughput of `job` for every allocator, repeats interleaved across
    /// allocators so slow drift on the machine does not favour one of them. One failed
    /// repeat fails the cell.
    fn rates(&mut self, job: Job) -> Vec<Cell> {
        let mut samples: Vec<Vec<runner::Fields>> = NAMES.iter().map(|_| Vec::new()).collect();
        let mut errors: Vec<Option<String>> = NAMES
            .iter()
            .map(|n| (!available(n)).then(|| "not installed".to_string()))
            .collect();
        for _ in 0..self.cfg.repeats {
            for (i, name) in NAMES.iter().enumerate() {
                if errors[i].is_none() {
                    match self.once(name, job, self.cfg.watchdog()) {
                        Ok(f) => samples[i].push(f),
                        Err(e) => errors[i] = Some(e),
                    }
                }
            }
        }
        samples
            .into_iter()
            .zip(errors)
            .map(|(runs, err)| match err {
                Some(e) => Cell::Text(e),
                None => {
                    let mut rates: Vec<f64> = runs
                        .iter()
                        .map(|f| f.num("ops") / f.num("secs").max(1e-9))
                        .collect();
                    rates.sort_by(f64::total_cmp);
                    Cell::Rate {
                        per_sec: rates[rates.len() / 2],
                        failures: runs
                            .iter()
                            .map(|f| f.num("failures") as u64)
                            .max()
                            .unwrap_or(0),
                        truncated: runs.iter().any(|f| f.num("truncated") != 0.0),
                    }
                }
            })
            .collect()
    }

    fn rate_table(&mut self, job: Job, title: &str, what: &str) {
        println!("## {title}\n\n{what}.\n");
        let cells = &self.rates(job);
        let key = &job.args()[0];
        let glibc = cell_of(cells, "glibc");
        let ao = cell_of(cells, "AO_malloc");
        let rows: Vec<Vec<String>> = NAMES
            .iter()
            .zip(cells)
            .map(|(n, c)| {
                self.json.push(key, n, 0, c);
                vec![
                    n.to_string(),
                    c.show(),
                    ratio(c, glibc),
                    ratio(c, ao),
                    c.failures(),
                ]
            })
            .collect();
        table(
            &[
                "allocator",
                "ops/s",
                "vs glibc",
                "vs AO_malloc",
                "failed allocs",
            ],
            &rows,
        );
    }

    fn threads_table(&mut self) {
        println!(
            "## 3. churn on threads\n\nThe churn of table 2, each thread on its own working set \
             ({} steps per thread); total ops/s over all threads; `vs T=1` is the same \
             allocator's scaling.\n",
            self.cfg.thread_ops
        );
        let per_t: Vec<Vec<Cell>> = THREADS
            .iter()
            .map(|&t| self.rates(Job::Threads(t)))
            .collect();
        let mut rows = Vec::new();
        for (ti, &t) in THREADS.iter().enumerate() {
            let cells = &per_t[ti];
            let (glibc, ao) = (cell_of(cells, "glibc"), cell_of(cells, "AO_malloc"));
            for (ni, n) in NAMES.iter().enumerate() {
                let c = &cells[ni];
                self.json.push("threads", n, t, c);
                rows.push(vec![
                    t.to_string(),
                    n.to_string(),
                    c.show(),
                    ratio(c, Some(&per_t[0][ni])),
                    ratio(c, glibc),
                    ratio(c, ao),
                    c.failures(),
                ]);
            }
        }
        table(
            &[
                "threads",
                "allocator",
                "ops/s",
                "vs T=1",
                "vs glibc",
                "vs AO_malloc",
                "failed allocs",
            ],
            &rows,
        );
    }

    fn efficiency_table(&mut self) {
        println!(
            "## 5. heap efficiency\n\nBytes requested before the first failure, as a share of a \
             {} MiB heap (AO_malloc without mmap). (a) random 16..1024 B; (b) random 16..64 B; \
             (c) 16 B until full, free all, then 1 KiB until full (counts the 1 KiB bytes). \
             Deterministic: one run each.\n",
            SMALL >> 20
        );
        let mut rows = Vec::new();
        for name in NAMES {
            let mut row = vec![name.to_string()];
            for fill in Fill::ALL {
                let cell = if !available(name) {
                    Cell::Text("not installed".into())
                } else if !allocators::is_bounded(name) {
                    Cell::Text("n/a (unbounded)".into())
                } else {
                    match self.once(name, Job::Efficiency(fill), self.cfg.watchdog()) {
                        Ok(f) => Cell::Fraction(f.num("bytes") / SMALL as f64),
                        Err(e) => Cell::Text(e),
                    }
                };
                self.json
                    .push(&format!("efficiency-{}", fill.name()), name, 0, &cell);
                row.push(cell.show());
            }
            rows.push(row);
        }
        table(
            &[
                "allocator",
                "(a) 16..1024 B",
                "(b) 16..64 B",
                "(c) 16 B, then 1 KiB",
            ],
            &rows,
        );
    }

    fn storm_table(&mut self) {
        let c = &self.cfg;
        println!(
            "## 6. signal storm\n\nSIGALRM every {} µs (setitimer); the handler allocates \
             16..256 B, fills, checks and frees, while the main loop churns a 64-slot set; \
             the child stops after {} signals. `deadlocked`: the {} s watchdog fired. \
             `corrupted`: a block's contents changed under its owner.\n",
            c.storm_interval_us,
            c.storm_signals,
            c.storm_watchdog.as_secs()
        );
        let mut rows = Vec::new();
        for name in NAMES {
            let (outcome, sig_rate, ops_rate, detail) = if !available(name) {
                (
                    "not installed".to_string(),
                    String::new(),
                    String::new(),
                    String::new(),
                )
            } else {
                match self.once(name, Job::Storm, self.cfg.storm_watchdog) {
                    Ok(f) => {
                        let secs = f.num("secs").max(1e-9);
                        let corrupt = f.num("corrupt");
                        (
                            if corrupt > 0.0 { "corrupted" } else { "ok" }.to_string(),
                            si(f.num("signals") / secs),
                            si(f.num("ops") / secs),
                            format!(
                                "{} signals, {} failed allocs, {} corrupt blocks",
                                f.num("signals"),
                                f.num("failures"),
                                corrupt
                            ),
                        )
                    }
                    Err(e) if e.starts_with("hung") => {
                        ("deadlocked".into(), String::new(), String::new(), e)
                    }
                    Err(e) => ("crashed".into(), String::new(), String::new(), e),
                }
            };
            self.json
                .push("storm", name, 0, &Cell::Text(outcome.clone()));
            rows.push(vec![name.to_string(), outcome, sig_rate, ops_rate, detail]);
        }
        table(
            &[
                "allocator",
                "outcome",
                "signals/s",
                "main-loop ops/s",
                "detail",
            ],
            &rows,
        );
    }
}

/// Whether `name` can run here (AO_malloc needs libatomic_ops_gpl at build time).
fn available(name: &str) -> bool {
    name != "AO_malloc" || HAVE_AO
}

fn cell_of<'a>(cells: &'a [Cell], name: &str) -> Option<&'a Cell> {
    NAMES
        .iter()
        .position(|n| *n == name)
        .and_then(|i| cells.get(i))
}
