//! sigalloc's benchmark against glibc, AO_malloc, mimalloc, talc, linked_list_allocator
//! and buddy_system_allocator.
//!
//! ```text
//! cargo run --release -p sigalloc-bench                 # full: 5 repeats, median
//! cargo run --release -p sigalloc-bench -- --quick      # smoke run (CI)
//! cargo run --release -p sigalloc-bench -- --json out.json
//! cargo run --release -p sigalloc-bench -- --only 7-10  # only the whole-program tables
//! ```
//!
//! Tables 1-6 compare every allocator on small, fixed heaps. Tables 7-10 reproduce the
//! shapes of whole programs (issue #10) for glibc, sigalloc (2 MiB inline heap, mmap
//! growth on) and mimalloc: larson-like cross-thread frees, a database-like mid-size mix
//! (time and peak RSS), threads pinned to cores, and a churn beside 2 MiB..512 MiB of
//! live data. sigalloc appears twice in every table: `sigalloc` with its per-CPU caches
//! (feature `percpu`) and `sigalloc-nocache` with them switched off (`disable_percpu`);
//! a last section checks issue #11's targets on the numbers of the run.
//!
//! The parent only orchestrates: every measurement runs in a child process (this binary
//! with `--child ALLOCATOR JOB...`) under a watchdog, so each gets a fresh heap and a crash
//! or hang is reported in its table cell while the other tables still run.

mod allocators;
mod report;
mod runner;
mod scale;
mod storm;
mod workloads;

use std::process::ExitCode;
use std::time::Duration;

use allocators::{HeapSize, BIG, HAVE_AO, NAMES, SMALL};
use report::{ratio, si, table, Cell, Json};
use runner::{Fields, Outcome};
use scale::{Larson, MidSize, Pinned};
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
    /// Tables 7-10.
    larson: Larson,
    midsize: MidSize,
    /// Table 9: per-thread slots and steps; live data held beside the churn on the
    /// large heap.
    pinned_slots: usize,
    pinned_ops: u64,
    large_live: usize,
    /// Table 10: the live data of each column, and the churn's steps.
    sweep_mib: [usize; 3],
    sweep_ops: u64,
    /// Time limit of the timed part of one run of tables 7-10, and the watchdog over
    /// the whole child (filling up to 512 MiB of live data takes a while).
    scale_limit: Duration,
    scale_watchdog: Duration,
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
            larson: Larson {
                threads: 2,
                slots: if quick { 4_000 } else { 25_000 },
                ops: if quick { 400_000 } else { 2_000_000 },
                handover: if quick { 2_000 } else { 10_000 },
                min: 8,
                max: 1000,
            },
            midsize: MidSize {
                high: if quick { 6_000 } else { 40_000 },
                low: if quick { 600 } else { 4_000 },
                cycles: if quick { 2 } else { 3 },
            },
            pinned_slots: 250,
            pinned_ops: if quick { 500_000 } else { 2_000_000 },
            large_live: if quick { 16 << 20 } else { 64 << 20 },
            sweep_mib: if quick { [2, 16, 64] } else { [2, 64, 512] },
            sweep_ops: 5_000_000 / scale,
            scale_limit: Duration::from_secs(if quick { 5 } else { 20 }),
            scale_watchdog: Duration::from_secs(if quick { 40 } else { 90 }),
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
    Larson,
    MidSize,
    /// Threads, and whether the large heap (live data beside the churn, mmap on).
    Pinned(usize, bool),
    /// MiB of live data.
    Sweep(usize),
}

/// The allocators of tables 7-10: sigalloc with and without its per-CPU caches, and the
/// two baselines a whole program would use instead.
const SCALE_NAMES: [&str; 4] = ["glibc", "sigalloc", "sigalloc-nocache", "mimalloc"];

impl Job {
    fn args(self) -> Vec<String> {
        match self {
            Job::Pairs => vec!["pairs".into()],
            Job::Churn => vec!["churn".into()],
            Job::Threads(t) => vec!["threads".into(), t.to_string()],
            Job::ProdCons => vec!["prodcons".into()],
            Job::Efficiency(f) => vec!["efficiency".into(), f.name().into()],
            Job::Storm => vec!["storm".into()],
            Job::Larson => vec!["larson".into()],
            Job::MidSize => vec!["midsize".into()],
            Job::Pinned(t, large) => vec![
                "pinned".into(),
                t.to_string(),
                if large { "large" } else { "small" }.into(),
            ],
            Job::Sweep(mib) => vec!["sweep".into(), mib.to_string()],
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
            "larson" => Job::Larson,
            "midsize" => Job::MidSize,
            "pinned" => Job::Pinned(
                arg(1)?.parse().ok()?,
                match arg(2)? {
                    "large" => true,
                    "small" => false,
                    _ => return None,
                },
            ),
            "sweep" => Job::Sweep(arg(1)?.parse().ok()?),
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

    /// Whether sigalloc runs this job with mmap growth on: every whole-program job but
    /// the pinned churn on the 2 MiB heap, which must fit the inline heap alone.
    fn sigalloc_mmap(self) -> bool {
        match self {
            Job::Larson | Job::MidSize | Job::Sweep(_) => true,
            Job::Pinned(_, large) => large,
            _ => false,
        }
    }

    /// How a table names `name` for this job.
    fn shown(self, name: &str) -> String {
        if allocators::is_sigalloc(name) && self.sigalloc_mmap() {
            format!("{name}+mmap")
        } else {
            name.into()
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
    let mut only = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--only" => match it.next().and_then(|r| parse_range(r)) {
                Some(r) => only = Some(r),
                None => return usage("--only needs a table or a range, like 8 or 7-10"),
            },
            "--json" => match it.next() {
                Some(p) => json_path = Some(p.clone()),
                None => return usage("--json needs a path"),
            },
            "-h" | "--help" => return usage(""),
            other => return usage(&format!("unknown argument {other}")),
        }
    }
    let mut bench = Bench::new(Config::new(quick));
    if let Some(r) = only {
        bench.only = r;
    }
    bench.run(json_path.as_deref())
}

/// "8" or "7-10" as an inclusive range of table numbers.
fn parse_range(s: &str) -> Option<(usize, usize)> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let (lo, hi) = (lo.parse().ok()?, hi.parse().ok()?);
    (lo <= hi).then_some((lo, hi))
}

fn usage(err: &str) -> ExitCode {
    if !err.is_empty() {
        eprintln!("error: {err}");
    }
    eprintln!("usage: sigalloc-bench [--quick] [--json PATH] [--only N|N-M]");
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
    if allocators::is_sigalloc(name) && job.sigalloc_mmap() {
        allocators::enable_sigalloc_mmap(job.heap());
    }
    // The fields of the RESULT line. Tables 7-10 also report the child's peak RSS, and
    // what else the workload says.
    let with_rss = |t: Throughput, extra: String| {
        format!(
            "ops={} secs={} failures={} truncated={} rss_kib={}{extra}",
            t.ops,
            t.secs,
            t.failures,
            u8::from(t.truncated),
            scale::peak_rss_kib()
        )
    };
    let plain = |t: Throughput| {
        format!(
            "ops={} secs={} failures={} truncated={}",
            t.ops,
            t.secs,
            t.failures,
            u8::from(t.truncated)
        )
    };
    let fields = match job {
        Job::Pairs => plain(workloads::pairs(a, cfg.pairs_ops, cfg.limit)),
        Job::Churn => plain(workloads::churn(a, 1, cfg.churn_ops, cfg.limit)),
        Job::Threads(t) => plain(workloads::churn(a, t, cfg.thread_ops, cfg.limit)),
        Job::ProdCons => plain(workloads::producer_consumer(a, cfg.prodcons_ops, cfg.limit)),
        Job::Efficiency(f) => format!("bytes={}", workloads::efficiency(a, f)),
        Job::Storm => {
            let r = storm::run(a, cfg.storm_signals, cfg.storm_interval_us);
            format!(
                "signals={} ops={} secs={} failures={} corrupt={}",
                r.signals, r.ops, r.secs, r.failures, r.corrupt
            )
        }
        Job::Larson => with_rss(scale::larson(a, cfg.larson, cfg.scale_limit), String::new()),
        Job::MidSize => {
            let r = scale::midsize(a, cfg.midsize, cfg.scale_limit);
            with_rss(r.t, format!(" peak_live={}", r.peak_live))
        }
        Job::Pinned(threads, large) => {
            let w = Pinned {
                threads,
                slots: cfg.pinned_slots,
                ops: cfg.pinned_ops,
                ballast: if large { cfg.large_live } else { 0 },
            };
            let r = scale::pinned(a, w, cfg.scale_limit);
            with_rss(r.t, format!(" pinned={}", u8::from(r.pinned)))
        }
        Job::Sweep(mib) => with_rss(
            scale::sweep(
                a,
                mib << 20,
                workloads::SLOTS,
                cfg.sweep_ops,
                cfg.scale_limit,
            ),
            String::new(),
        ),
    };
    // sigalloc's children say whether the per-CPU caches were in use at the end (set-up
    // happens on the first miss, so only now is the answer final) and how many
    // restartable sequences the kernel aborted.
    let caches = if allocators::is_sigalloc(name) {
        let (active, aborts) = allocators::sigalloc_caches(job.heap());
        format!(" percpu={} aborts={aborts}", u8::from(active))
    } else {
        String::new()
    };
    println!("{} {fields}{caches}", runner::RESULT);
    ExitCode::SUCCESS
}

/// The parent side: runs every table.
struct Bench {
    cfg: Config,
    json: Json,
    /// Details of every child that crashed or hung, printed at the end.
    notes: Vec<String>,
    /// The tables to run (inclusive range of their numbers).
    only: (usize, usize),
    /// sigalloc runs whose caches were not what their name says ("sigalloc" without them
    /// in use, "sigalloc-nocache" with them), as (allocator, job).
    cache_mismatches: Vec<(String, String)>,
    /// The numbers issue #11's targets are checked against, collected as tables run.
    targets: Targets,
}

impl Bench {
    fn new(cfg: Config) -> Bench {
        Bench {
            cfg,
            json: Json::default(),
            notes: Vec::new(),
            only: (1, 10),
            cache_mismatches: Vec::new(),
            targets: Targets::default(),
        }
    }

    fn run(mut self, json_path: Option<&str>) -> ExitCode {
        let machine = report::machine();
        self.header(&machine);

        let on = |n: usize| (self.only.0..=self.only.1).contains(&n);
        let (t1, t2, t3, t4, t5, t6) = (on(1), on(2), on(3), on(4), on(5), on(6));
        let (t7, t8, t9, t10) = (on(7), on(8), on(9), on(10));
        if t1 {
            self.rate_table(
                Job::Pairs,
                "1. pairs",
                "alloc + immediate free, 16..2048 B, one thread; ops = pairs",
            );
        }
        if t2 {
            self.rate_table(
                Job::Churn,
                "2. churn",
                "1,000-slot working set, each step frees a random slot and refills it with \
                 16..512 B; one thread; ops = steps",
            );
        }
        if t3 {
            self.threads_table();
        }
        if t4 {
            self.rate_table(
                Job::ProdCons,
                "4. producer/consumer",
                "one thread allocates 16..512 B, hands batches of 64 through a bounded channel, \
                 another frees them; ops = blocks",
            );
        }
        if t5 {
            self.efficiency_table();
        }
        if t6 {
            self.storm_table();
        }
        if t7 {
            self.larson_table();
        }
        if t8 {
            self.midsize_table();
        }
        if t9 {
            self.pinned_table();
        }
        if t10 {
            self.sweep_table();
        }
        self.targets_table();
        if !self.cache_mismatches.is_empty() {
            println!(
                "## Per-CPU caches not as named\n\nThese sigalloc runs did not measure what \
                 their row says (`percpu_active()` at the end of the child: false for \
                 `sigalloc`, e.g. without rseq or membarrier; true for `sigalloc-nocache`):\n"
            );
            for name in ["sigalloc", "sigalloc-nocache"] {
                let jobs: Vec<&str> = self
                    .cache_mismatches
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, j)| j.as_str())
                    .collect();
                if !jobs.is_empty() {
                    println!("- {name}: {} jobs ({})", jobs.len(), jobs.join(", "));
                }
            }
            println!();
        }

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
        println!(
            "- sigalloc is built with its per-CPU caches (feature `percpu`, issue #11): \
             `sigalloc` runs with them on, `sigalloc-nocache` is the same allocator with \
             `disable_percpu()` called before the first request"
        );
        println!(
            "- tables 7-10 (whole-program shapes, issue #10) run glibc, mimalloc and both \
             sigalloc rows with mmap growth on (`sigalloc+mmap`, except table 9's 2 MiB rows); \
             each run's timed part stops at {} s (marked *)",
            c.scale_limit.as_secs()
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
            Outcome::Ok(f) => {
                // A sigalloc child says whether its caches were in use.
                if f.has("percpu") && (f.num("percpu") != 0.0) != (name == "sigalloc") {
                    let m = (name.to_owned(), job.args().join(" "));
                    if !self.cache_mismatches.contains(&m) {
                        self.cache_mismatches.push(m);
                    }
                }
                return Ok(f);
            }
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
        let mi = cell_of(cells, "mimalloc");
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
                    ratio(c, mi),
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
                "vs mimalloc",
                "failed allocs",
            ],
            &rows,
        );
        match job {
            Job::Pairs => self.targets.pairs = cells.clone(),
            Job::Churn => self.targets.churn = cells.clone(),
            Job::ProdCons => self.targets.prodcons = cells.clone(),
            _ => {}
        }
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
                if let (Some(v), Cell::Fraction(x)) = (variant(name), &cell) {
                    match fill {
                        Fill::Mixed => self.targets.fill_mixed[v] = Some(*x),
                        Fill::PhaseChange => self.targets.fill_phase[v] = Some(*x),
                        Fill::Small => {}
                    }
                }
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
             `corrupted`: a block's contents changed under its owner. `sigalloc` runs with \
             its per-CPU caches on, so the handler allocates from the cache of the CPU it \
             interrupted; `rseq aborts`: restartable sequences the kernel aborted in that \
             child (preemption, migration, signal delivery).\n",
            c.storm_interval_us,
            c.storm_signals,
            c.storm_watchdog.as_secs()
        );
        let mut rows = Vec::new();
        let mut storm_rates = Vec::new();
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
                        let outcome = if corrupt > 0.0 { "corrupted" } else { "ok" };
                        storm_rates.push((name, outcome == "ok", f.num("signals") / secs));
                        let aborts = if f.has("aborts") {
                            format!(", {} rseq aborts", f.num("aborts"))
                        } else {
                            String::new()
                        };
                        (
                            outcome.to_string(),
                            si(f.num("signals") / secs),
                            si(f.num("ops") / secs),
                            format!(
                                "{} signals, {} failed allocs, {} corrupt blocks{aborts}",
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
            if !storm_rates.iter().any(|r| r.0 == name) {
                storm_rates.push((name, false, 0.0));
            }
            rows.push(vec![name.to_string(), outcome, sig_rate, ops_rate, detail]);
        }
        self.targets.storm = Some(storm_rates);
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

/// Tables 7-10: whole-program shapes.
impl Bench {
    /// Runs `job` `repeats` times for every one of `names`, repeats interleaved across
    /// allocators; per allocator, the summary of its runs or the text of its first failure.
    fn sample(&mut self, names: &[&str], job: Job) -> Vec<Result<Summary, String>> {
        let mut runs: Vec<Result<Vec<Fields>, String>> = names.iter().map(|_| Ok(vec![])).collect();
        for _ in 0..self.cfg.repeats {
            for (i, name) in names.iter().enumerate() {
                if let Ok(v) = &mut runs[i] {
                    match self.once(name, job, self.cfg.scale_watchdog) {
                        Ok(f) => v.push(f),
                        Err(e) => runs[i] = Err(e),
                    }
                }
            }
        }
        runs.into_iter()
            .map(|r| r.map(|v| Summary::of(&v)))
            .collect()
    }

    fn scale_header(&self, title: &str, what: &str) {
        println!(
            "## {title}\n\n{what} {} run{} per cell in fresh processes, median; `sigalloc+mmap` \
             is sigalloc's 2 MiB inline heap with `enable_mmap()` (`sigalloc-nocache+mmap`: \
             the same with its per-CPU caches off); same seeds for every allocator.\n",
            self.cfg.repeats,
            if self.cfg.repeats == 1 { "" } else { "s" }
        );
    }

    fn larson_table(&mut self) {
        let w = self.cfg.larson;
        self.scale_header(
            "7. larson-like",
            &format!(
                "{} threads, each holding {} live blocks of {}..{} B and replacing a random \
                 one per step ({} steps per thread); every {} steps the threads rotate their \
                 arrays, so from then on every free is of a block another thread allocated. \
                 ops = steps of all threads; filling and emptying the arrays is not timed. \
                 `time vs glibc`: glibc's rate over this one (issue #10's target for \
                 sigalloc: at most 1.2x).",
                w.threads, w.slots, w.min, w.max, w.ops, w.handover
            ),
        );
        let sums = self.sample(&SCALE_NAMES, Job::Larson);
        let glibc = scale_rate(&sums, "glibc");
        let mi = scale_rate(&sums, "mimalloc");
        let mut rows = Vec::new();
        for (name, sum) in SCALE_NAMES.iter().zip(&sums) {
            let shown = Job::Larson.shown(name);
            rows.push(match sum {
                Ok(s) => {
                    self.json
                        .push_fields("larson", &shown, w.threads, &s.json());
                    vec![
                        shown,
                        s.rate_text(),
                        times(glibc, s.rate),
                        times(mi, s.rate),
                        mib(s.rss_kib),
                        s.failures.to_string(),
                    ]
                }
                Err(e) => vec![
                    shown,
                    e.clone(),
                    "–".into(),
                    "–".into(),
                    "".into(),
                    "".into(),
                ],
            });
        }
        table(
            &[
                "allocator",
                "ops/s",
                "time vs glibc",
                "time vs mimalloc",
                "peak RSS",
                "failed allocs",
            ],
            &rows,
        );
    }

    fn midsize_table(&mut self) {
        let w = self.cfg.midsize;
        let sums = self.sample(&SCALE_NAMES, Job::MidSize);
        let peak_live = sums
            .iter()
            .flatten()
            .map(|s| s.peak_live)
            .next()
            .unwrap_or(0.0);
        self.scale_header(
            "8. mid-size",
            &format!(
                "One thread, a database-like mix: 50 % 2049..4096 B, 10 % 4104 B, 5 % 4368 B, \
                 20 % 16..512 B, 15 % 513..2048 B, every block written in full. The live set \
                 grows (3 of 4 steps allocate) to {} blocks and shrinks (3 of 4 steps free a \
                 random block) to {}, {} times, then everything is freed; at most {} of \
                 requests live at once. ops = allocations and frees, all timed. `peak RSS`: \
                 the child's VmHWM, which includes about 2-3 MiB of the bench process itself. \
                 Targets for sigalloc (issue #10): at most 1.1x glibc's time and 1.25x its \
                 peak RSS.",
                w.high,
                w.low,
                w.cycles,
                mib(peak_live / 1024.0)
            ),
        );
        let glibc = SCALE_NAMES
            .iter()
            .position(|n| *n == "glibc")
            .and_then(|i| sums[i].as_ref().ok())
            .map(|s| (s.rate, s.rss_kib));
        let mut rows = Vec::new();
        for (name, sum) in SCALE_NAMES.iter().zip(&sums) {
            let shown = Job::MidSize.shown(name);
            rows.push(match sum {
                Ok(s) => {
                    self.json.push_fields("midsize", &shown, 1, &s.json());
                    vec![
                        shown,
                        s.rate_text(),
                        times(glibc.map(|g| g.0), s.rate),
                        mib(s.rss_kib),
                        times(Some(s.rss_kib), glibc.map_or(0.0, |g| g.1)),
                        s.failures.to_string(),
                    ]
                }
                Err(e) => vec![
                    shown,
                    e.clone(),
                    "–".into(),
                    "".into(),
                    "–".into(),
                    "".into(),
                ],
            });
        }
        table(
            &[
                "allocator",
                "ops/s",
                "time vs glibc",
                "peak RSS",
                "RSS vs glibc",
                "failed allocs",
            ],
            &rows,
        );
    }

    fn pinned_table(&mut self) {
        let c = &self.cfg;
        let large_mib = c.large_live >> 20;
        self.scale_header(
            "9. threads pinned to cores",
            &format!(
                "T threads, thread t pinned to allowed CPU t % nproc (sched_setaffinity), \
                 each churning its own {}-slot working set of 16..512 B ({} steps per thread; \
                 seeds as in table 3); total ops/s over all threads, median (min–max over the \
                 runs). Heap `2 MiB`: nothing else live, and sigalloc on its 2 MiB inline heap \
                 with mmap off. Heap `{} MiB live`: the main thread first allocates {} MiB of \
                 16..512 B blocks and keeps them, and sigalloc has mmap on. `T=n vs T=1`: the \
                 median over the same allocator's own T=1 median (min–max of the runs over \
                 that median). Issue #10's target for sigalloc: T=2 and T=8 at least 1.8x.",
                c.pinned_slots, c.pinned_ops, large_mib, large_mib
            ),
        );
        let mut rows = Vec::new();
        let mut unpinned = 0;
        for large in [false, true] {
            let per_t: Vec<Vec<Result<Summary, String>>> = THREADS
                .iter()
                .map(|&t| self.sample(&SCALE_NAMES, Job::Pinned(t, large)))
                .collect();
            for (ni, name) in SCALE_NAMES.iter().enumerate() {
                let shown = Job::Pinned(1, large).shown(name);
                let heap = if large {
                    format!("{large_mib} MiB live")
                } else {
                    "2 MiB".into()
                };
                let mut row = vec![heap, shown.clone()];
                let base = per_t[0][ni].as_ref().ok().map(|s| s.rate);
                if let (false, Some(v), Some(b)) = (large, variant(name), base) {
                    for (k, want) in [2, 8].into_iter().enumerate() {
                        let at = THREADS.iter().position(|&t| t == want);
                        self.targets.scaling[v][k] = at
                            .and_then(|i| per_t[i][ni].as_ref().ok())
                            .map(|s| s.rate / b.max(1e-9));
                    }
                }
                let mut ratios = Vec::new();
                let mut failures = 0.0f64;
                for (ti, &t) in THREADS.iter().enumerate() {
                    match &per_t[ti][ni] {
                        Ok(s) => {
                            unpinned += s.unpinned;
                            failures = failures.max(s.failures);
                            let mut fields = s.json();
                            fields.push(("large_heap", f64::from(u8::from(large))));
                            self.json.push_fields("pinned", &shown, t, &fields);
                            row.push(s.range_text());
                            if t > 1 {
                                ratios.push(match base {
                                    Some(b) if b > 0.0 && s.min == s.max => {
                                        format!("{:.2}x", s.rate / b)
                                    }
                                    Some(b) if b > 0.0 => format!(
                                        "{:.2}x ({:.2}–{:.2})",
                                        s.rate / b,
                                        s.min / b,
                                        s.max / b
                                    ),
                                    _ => "–".into(),
                                });
                            }
                        }
                        Err(e) => {
                            row.push(e.clone());
                            if t > 1 {
                                ratios.push("–".into());
                            }
                        }
                    }
                }
                row.extend(ratios);
                row.push(failures.to_string());
                rows.push(row);
            }
        }
        let mut head = vec!["heap", "allocator"];
        let t_heads: Vec<String> = THREADS.iter().map(|t| format!("T={t}")).collect();
        let r_heads: Vec<String> = THREADS[1..]
            .iter()
            .map(|t| format!("T={t} vs T=1"))
            .collect();
        head.extend(t_heads.iter().map(String::as_str));
        head.extend(r_heads.iter().map(String::as_str));
        head.push("failed allocs");
        table(&head, &rows);
        if unpinned > 0 {
            println!("Pinning failed in {unpinned} runs: their threads ran unpinned.\n");
        }
    }

    fn sweep_table(&mut self) {
        let c = &self.cfg;
        let sizes = c.sweep_mib;
        let note = if c.quick {
            format!(
                " Quick mode: {}, {} and {} MiB (the full run's largest point is 512 MiB).",
                sizes[0], sizes[1], sizes[2]
            )
        } else {
            String::new()
        };
        self.scale_header(
            "10. heap-size sweep",
            &format!(
                "The churn of table 2 (one thread, {}-slot working set of 16..512 B, {} steps) \
                 beside live data: before the churn starts, 16..512 B blocks are allocated and \
                 kept until the working set and they hold the column's bytes. Only the churn \
                 is timed; ns per step (*: the time limit cut the churn short). Issue #10's \
                 target for sigalloc: the largest heap within 1.3x of the smallest's time per \
                 step.{note}",
                workloads::SLOTS,
                c.sweep_ops
            ),
        );
        let per_size: Vec<Vec<Result<Summary, String>>> = sizes
            .iter()
            .map(|&m| self.sample(&SCALE_NAMES, Job::Sweep(m)))
            .collect();
        let mut rows = Vec::new();
        for (ni, name) in SCALE_NAMES.iter().enumerate() {
            let shown = Job::Sweep(0).shown(name);
            let mut row = vec![shown.clone()];
            let mut failures = 0.0f64;
            for (si, &m) in sizes.iter().enumerate() {
                match &per_size[si][ni] {
                    Ok(s) => {
                        failures = failures.max(s.failures);
                        let mut fields = s.json();
                        fields.push(("live_mib", m as f64));
                        self.json.push_fields("sweep", &shown, 1, &fields);
                        row.push(format!(
                            "{:.1}{}",
                            1e9 / s.rate.max(1e-9),
                            if s.truncated { "*" } else { "" }
                        ));
                    }
                    Err(e) => row.push(e.clone()),
                }
            }
            let (first, last) = (&per_size[0][ni], &per_size[sizes.len() - 1][ni]);
            row.push(match (first, last) {
                (Ok(a), Ok(b)) => times(Some(a.rate), b.rate),
                _ => "–".into(),
            });
            row.push(last.as_ref().map_or(String::new(), |s| mib(s.rss_kib)));
            row.push(failures.to_string());
            rows.push(row);
        }
        let heads: Vec<String> = sizes.iter().map(|m| format!("{m} MiB: ns/step")).collect();
        let largest = format!("peak RSS at {} MiB", sizes[sizes.len() - 1]);
        let mut head = vec!["allocator"];
        head.extend(heads.iter().map(String::as_str));
        head.push("largest / smallest");
        head.push(&largest);
        head.push("failed allocs");
        table(&head, &rows);
    }
}

/// Issue #11's targets, checked on what the tables measured.
impl Bench {
    fn targets_table(&self) {
        let t = &self.targets;
        // One row: what, the goal, sigalloc's value with caches on and off, and how a
        // value is shown.
        struct Row {
            what: &'static str,
            goal: f64,
            on: Option<f64>,
            off: Option<f64>,
            percent: bool,
        }
        let rate_ratio = |cells: &[Cell], name: &str, base: &str| {
            let (x, b) = (cell_of(cells, name)?.rate()?, cell_of(cells, base)?.rate()?);
            (b > 0.0).then(|| x / b)
        };
        let pair = |cells: &[Cell], base: &str| {
            (
                rate_ratio(cells, "sigalloc", base),
                rate_ratio(cells, "sigalloc-nocache", base),
            )
        };
        let mut rows = Vec::new();
        let mut ratio_row = |what, goal, (on, off)| {
            rows.push(Row {
                what,
                goal,
                on,
                off,
                percent: false,
            })
        };
        if !t.pairs.is_empty() {
            ratio_row("1. pairs vs glibc", 1.5, pair(&t.pairs, "glibc"));
            ratio_row("1. pairs vs mimalloc", 1.0, pair(&t.pairs, "mimalloc"));
        }
        if !t.churn.is_empty() {
            ratio_row("2. churn vs glibc", 2.0, pair(&t.churn, "glibc"));
            ratio_row("2. churn vs mimalloc", 1.0, pair(&t.churn, "mimalloc"));
        }
        if t.scaling.iter().flatten().any(Option::is_some) {
            let [on, off] = t.scaling;
            ratio_row(
                "9. pinned, 2 MiB heap: T=2 vs own T=1",
                1.9,
                (on[0], off[0]),
            );
            ratio_row(
                "9. pinned, 2 MiB heap: T=8 vs own T=1",
                1.8,
                (on[1], off[1]),
            );
        }
        if !t.prodcons.is_empty() {
            ratio_row(
                "4. producer/consumer vs mimalloc",
                1.0,
                pair(&t.prodcons, "mimalloc"),
            );
        }
        if let Some(storm) = &t.storm {
            let ao = storm
                .iter()
                .find(|r| r.0 == "AO_malloc" && r.1)
                .map(|r| r.2)
                .filter(|&r| r > 0.0);
            let of = |name: &str| {
                let r = storm.iter().find(|r| r.0 == name && r.1)?;
                Some(r.2 / ao?)
            };
            ratio_row(
                "6. storm: signals/s vs AO_malloc (when ok)",
                1.0,
                (of("sigalloc"), of("sigalloc-nocache")),
            );
        }
        if t.fill_mixed
            .iter()
            .chain(&t.fill_phase)
            .any(Option::is_some)
        {
            for (what, goal, [on, off]) in [
                ("5. efficiency (a) 16..1024 B, 2 MiB", 0.72, t.fill_mixed),
                ("5. efficiency (c) phase change, 2 MiB", 0.90, t.fill_phase),
            ] {
                rows.push(Row {
                    what,
                    goal,
                    on,
                    off,
                    percent: true,
                });
            }
        }
        let storm_ok = t.storm.as_ref().map(|storm| {
            let ok = |name: &str| storm.iter().any(|r| r.0 == name && r.1);
            (ok("sigalloc"), ok("sigalloc-nocache"))
        });
        if rows.is_empty() && storm_ok.is_none() {
            return;
        }
        println!(
            "## Targets of issue #11 (per-CPU caches)\n\nsigalloc's ratios from this run: \
             `caches on` is the `sigalloc` row, `caches off` the `sigalloc-nocache` row of \
             the same tables; `met` judges caches on. Printed, never enforced: timings move \
             by ±20 % between runs on a shared machine{}.\n",
            if self.cfg.quick {
                ", and a quick run measures each cell once, briefly"
            } else {
                ""
            }
        );
        let show = |r: &Row, v: Option<f64>| match v {
            Some(x) if r.percent => format!("{:.1}%", x * 100.0),
            Some(x) => format!("{x:.2}x"),
            None => "–".into(),
        };
        let mut out: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let goal = if r.percent {
                    format!("≥ {:.0}%", r.goal * 100.0)
                } else {
                    format!("≥ {:.2}x", r.goal)
                };
                let met = match r.on {
                    Some(x) if x >= r.goal => "yes".to_string(),
                    Some(x) => match (1.0 - x / r.goal) * 100.0 {
                        short if short < 1.0 => "no (less than 1% short)".into(),
                        short => format!("no ({short:.0}% short)"),
                    },
                    None => "–".into(),
                };
                vec![r.what.to_string(), goal, show(r, r.on), show(r, r.off), met]
            })
            .collect();
        if let Some((on, off)) = storm_ok {
            let word = |ok: bool| if ok { "ok" } else { "not ok" }.to_string();
            out.push(vec![
                "6. storm outcome".into(),
                "ok".into(),
                word(on),
                word(off),
                if on { "yes" } else { "no" }.into(),
            ]);
        }
        table(&["target", "goal", "caches on", "caches off", "met"], &out);
    }
}

/// What [`Bench::targets_table`] checks, filled in by the tables that ran. Per sigalloc
/// variant, index 0 is caches on (`sigalloc`), 1 caches off (`sigalloc-nocache`).
#[derive(Default)]
struct Targets {
    /// The cells of tables 1, 2 and 4, in [`NAMES`] order (empty if not run).
    pairs: Vec<Cell>,
    churn: Vec<Cell>,
    prodcons: Vec<Cell>,
    /// Table 5's shares of the heap: (a) random 16..1024 B and (c) the phase change.
    fill_mixed: [Option<f64>; 2],
    fill_phase: [Option<f64>; 2],
    /// Table 6: per allocator, whether it ended ok and its signals per second.
    storm: Option<Vec<(&'static str, bool, f64)>>,
    /// Table 9, 2 MiB heap: T=2 and T=8 over the same variant's T=1.
    scaling: [[Option<f64>; 2]; 2],
}

/// Which sigalloc variant `name` is: 0 caches on, 1 caches off.
fn variant(name: &str) -> Option<usize> {
    match name {
        "sigalloc" => Some(0),
        "sigalloc-nocache" => Some(1),
        _ => None,
    }
}

/// The runs of one cell of tables 7-10.
struct Summary {
    /// Median, lowest and highest ops/s.
    rate: f64,
    min: f64,
    max: f64,
    /// Worst failure count; whether any run hit the time limit.
    failures: f64,
    truncated: bool,
    /// Median peak RSS (KiB) and peak requested live bytes.
    rss_kib: f64,
    peak_live: f64,
    /// Runs whose threads could not all be pinned.
    unpinned: usize,
}

impl Summary {
    fn of(runs: &[Fields]) -> Summary {
        let median = |key: &dyn Fn(&Fields) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(key).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let rate = |f: &Fields| f.num("ops") / f.num("secs").max(1e-9);
        let rates = || runs.iter().map(rate);
        Summary {
            rate: median(&rate),
            min: rates().fold(f64::INFINITY, f64::min),
            max: rates().fold(0.0, f64::max),
            failures: runs.iter().map(|f| f.num("failures")).fold(0.0, f64::max),
            truncated: runs.iter().any(|f| f.num("truncated") != 0.0),
            rss_kib: median(&|f| f.num("rss_kib")),
            peak_live: median(&|f| f.num("peak_live")),
            unpinned: runs
                .iter()
                .filter(|f| f.has("pinned") && f.num("pinned") == 0.0)
                .count(),
        }
    }

    /// "12.34 M" ("*": a run hit the time limit).
    fn rate_text(&self) -> String {
        format!("{}{}", si(self.rate), if self.truncated { "*" } else { "" })
    }

    /// "12.34 M (11.9 M–12.6 M)" when the runs differ.
    fn range_text(&self) -> String {
        if self.min == self.max {
            self.rate_text()
        } else {
            format!("{} ({}–{})", self.rate_text(), si(self.min), si(self.max))
        }
    }

    fn json(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("ops_per_sec", self.rate),
            ("ops_per_sec_min", self.min),
            ("ops_per_sec_max", self.max),
            ("failed_allocs", self.failures),
            ("hit_time_limit", f64::from(u8::from(self.truncated))),
            ("peak_rss_kib", self.rss_kib),
        ]
    }
}

/// How many times longer `x`'s run took than `base`'s, from rates (or any "bigger is
/// more" pair): "1.23x", or "–" without both.
fn times(base: Option<f64>, x: f64) -> String {
    match base {
        Some(b) if b > 0.0 && x > 0.0 => format!("{:.2}x", b / x),
        _ => "–".into(),
    }
}

/// The median rate of `name` in a row of tables 7-10, if it ran.
fn scale_rate(sums: &[Result<Summary, String>], name: &str) -> Option<f64> {
    SCALE_NAMES
        .iter()
        .position(|n| *n == name)
        .and_then(|i| sums.get(i)?.as_ref().ok())
        .map(|s| s.rate)
}

/// KiB as "12.3 MiB".
fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
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
