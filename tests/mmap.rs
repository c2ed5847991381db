//! The `mmap` feature against the operating system's own books (`/proc/self/maps` and
//! `/proc/self/statm`), not only against the allocator's statistics.
//!
//! What this proves:
//! - **growth**: with `enable_mmap`, four threads hold 256 MiB at once in a heap whose
//!   inline part is 2 MiB; every block keeps its own pattern (so no two overlap), the
//!   heap validates once all is freed, and a second round of the same demand is served
//!   from the regions already mapped instead of mapping as much again;
//! - **huge blocks**: requests of `HUGE_THRESHOLD` bytes or more get a page-aligned
//!   mapping each, counted by `stats().huge_mappings`; freeing them gives both the
//!   mappings and the resident memory back to the OS; `realloc` of a huge block keeps
//!   its contents, and a shrink by less than half stays in place;
//! - **RSS release**: freeing 64 MiB of small blocks in mapped regions gives at least
//!   half of it back to the OS with no call to `trim` (the automatic release passes);
//!   `trim` gives back the rest, and released memory comes back zeroed and reusable;
//! - **off by default**: without `enable_mmap` the allocator fills its heap, then
//!   returns null, also for huge requests; it maps nothing (no new writable memory in
//!   `/proc/self/maps`, no new line there) and hands out no more than its heap.
//!
//! Resident memory and mappings are process-wide, so the tests take turns
//! (`common::serial`). Mapped regions are never unmapped (by design) and a `static`
//! allocator is never dropped, so every check compares before and after, never absolute
//! values, with margins for what the test harness itself may map meanwhile (another
//! test's thread).
//!
//! One file per topic, in `tests/mmap/`: `growth.rs`, `huge.rs`, `release.rs` and
//! `no_mmap.rs`; this one holds what they share, the OS's view of the process.

// A test binary, not the crate: `clippy.toml` bans std atomics for `src/` (where loom
// must see them); the barrier and mutex here are the test's own bookkeeping.
#![allow(clippy::disallowed_types)]

mod common;
#[path = "mmap/growth.rs"]
mod growth;
#[path = "mmap/huge.rs"]
mod huge;
#[path = "mmap/no_mmap.rs"]
mod no_mmap;
#[path = "mmap/release.rs"]
mod release;

use std::io::Read;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

/// Resident set size of this process in bytes (`/proc/self/statm`, second field).
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm has a resident field");
    // SAFETY: `sysconf` has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * usize::try_from(page).expect("a positive page size")
}

/// Lines of `/proc/self/maps`: the process's mappings. Read through a buffer on the
/// stack, so counting maps nothing itself.
fn mappings() -> usize {
    let mut f = std::fs::File::open("/proc/self/maps").expect("open /proc/self/maps");
    let mut buf = [0u8; 4096];
    let mut lines = 0;
    loop {
        let n = f.read(&mut buf).expect("read /proc/self/maps");
        if n == 0 {
            return lines;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
    }
}

/// The writable mappings of the process, as address ranges (numbers read from
/// `/proc/self/maps`, never turned into pointers).
fn writable() -> Vec<(u64, u64)> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?;
            (perms.as_bytes().get(1) == Some(&b'w')).then(|| {
                (
                    u64::from_str_radix(start, 16).expect("a hex start"),
                    u64::from_str_radix(end, 16).expect("a hex end"),
                )
            })
        })
        .collect()
}

/// Bytes writable in `after` that were not writable in `before`: new mappings, and
/// mappings grown (the kernel merges a new anonymous mapping into an adjacent one, so
/// counting lines alone can miss it).
fn newly_writable(before: &[(u64, u64)], after: &[(u64, u64)]) -> usize {
    let mut new = 0;
    for &(s, e) in after {
        let covered: u64 = before
            .iter()
            .map(|&(bs, be)| be.min(e).saturating_sub(bs.max(s)))
            .sum();
        new += (e - s) - covered;
    }
    usize::try_from(new).expect("fits in usize")
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / MIB as f64
}
