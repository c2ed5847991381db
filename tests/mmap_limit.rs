//! The `mmap` feature when the OS says no: `RLIMIT_AS` makes `mmap` fail, and the
//! allocator must answer null (no panic, no abort), leave `errno` as it was, stay within
//! what it was given, and keep serving from the memory it already has.
//!
//! One test, because `setrlimit` is process-wide and this binary is one process. With
//! a 64 KiB inline heap and `enable_mmap`, the soft `RLIMIT_AS` is set to the current
//! virtual size plus [`HEADROOM`] (48 MiB). While it is set:
//! - **huge blocks**: 8 MiB requests (one mapping each) until null; the count fits the
//!   headroom; `realloc` to 16 MiB and a huge `calloc` then get null too, the block
//!   left intact; two freed mappings serve two new requests;
//! - **small blocks**: 128 B..2 KiB requests until null, each filled with its own
//!   byte; the regions mapped and the bytes obtained fit the headroom, growth mapped
//!   at least two regions first; freeing every other block lets the same requests
//!   succeed again (served from the freed blocks: the OS still says no);
//! - **fallback**: with every small block freed, 1 MiB requests until null: once the
//!   OS refuses a mapping, huge requests are served as spans from the mapped regions'
//!   free chunks;
//! - `errno` is set to a sentinel before every allocation and must still hold it after
//!   (the failing `mmap` sets `ENOMEM`; the allocator must restore it);
//! - every block keeps its fill pattern until freed; `validate()` passes at the end.
//!
//! While the limit is set nothing here allocates from the system allocator, prints,
//! formats or spawns a thread: vectors are reserved beforehand, and every finding is a
//! plain counter checked (and printed) only after the soft limit is restored. A guard
//! restores it on unwinding too; the hard limit is never touched.
#![cfg(target_os = "linux")]

mod common;

use common::{pattern, Rng};
use sigalloc::{SigAlloc, HUGE_THRESHOLD, MIN_REGION};

const MIB: usize = 1 << 20;
/// A small inline heap: nearly everything must come from mappings.
const HEAP: usize = 64 << 10;
static A: SigAlloc<HEAP> = SigAlloc::new();

/// Address space allowed above what the process had when the limit was set. Growth
/// maps 4, 4, 8, 16, 32 MiB...: 48 MiB holds the first four regions (32 MiB) with
/// room to spare, and refuses the fifth, so the limit is reached well away from its
/// exact edge.
const HEADROOM: usize = 48 * MIB;
/// The huge request of the first phase.
const HUGE: usize = 8 * MIB;
/// Small requests are uniform in this range.
const SMALL_MIN: usize = 128;
const SMALL_MAX: usize = 2048;
/// Room for every small block the headroom could possibly hold.
const SMALL_CAP: usize = (HEADROOM + HEAP) / SMALL_MIN + 1024;
/// Room for every huge (or 1 MiB fallback) block the headroom could possibly hold.
const BIG_CAP: usize = (HEADROOM + HEAP) / HUGE_THRESHOLD + 1024;
/// What `errno` holds around every allocation.
const SENTINEL: libc::c_int = 0x5EA1;

fn errno() -> *mut libc::c_int {
    // SAFETY: `__errno_location` has no preconditions; it returns this thread's errno.
    unsafe { libc::__errno_location() }
}

/// Virtual size of this process in bytes (`/proc/self/statm`, first field).
fn vsize() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .expect("statm has a size field");
    // SAFETY: `sysconf` has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * usize::try_from(page).expect("a positive page size")
}

fn get_limit() -> libc::rlimit {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an `rlimit`.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut r) };
    assert_eq!(rc, 0, "getrlimit(RLIMIT_AS)");
    r
}

/// Lowers the soft `RLIMIT_AS` while it lives; puts the old soft limit back on drop
/// (also when unwinding). The hard limit is passed through unchanged.
struct Limited {
    old: libc::rlimit,
}

impl Limited {
    fn set(soft: libc::rlim_t) -> Limited {
        let old = get_limit();
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        // SAFETY: a valid pointer to an `rlimit`; lowering the soft limit is always
        // allowed.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &new) };
        assert_eq!(rc, 0, "setrlimit(RLIMIT_AS)");
        Limited { old }
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        // SAFETY: a valid pointer; the hard limit is the one in force, so the old soft
        // limit (at most that) may be set again.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &self.old) };
        if rc != 0 && !std::thread::panicking() {
            panic!("could not restore RLIMIT_AS");
        }
    }
}

/// What the limited phases found: plain numbers, so recording them allocates nothing.
#[derive(Default, Debug)]
struct Findings {
    /// Allocations after which `errno` no longer held the sentinel.
    errno_changed: usize,
    /// Blocks misaligned, shorter than asked or not owned by `A`.
    bad_blocks: usize,
    /// Blocks whose fill pattern changed before they were freed.
    corrupt_blocks: usize,
    /// An "until null" loop filled its reserved vector without seeing null.
    never_null: usize,

    /// Huge phase: 8 MiB blocks before the first null, huge mappings then, and how many
    /// of two new requests succeeded after two blocks were freed.
    huge_count: usize,
    huge_mappings: usize,
    huge_again: usize,
    huge_left: usize,
    /// A realloc to 16 MiB or a huge calloc that succeeded with no room left.
    refused_but_served: usize,

    /// Small phase: blocks and usable bytes before the first null, the allocator's
    /// view at that point, then bytes freed (every other block) and how much of the
    /// same requests succeeded again.
    small_count: usize,
    small_bytes: usize,
    mapped_regions: usize,
    mapped_bytes: usize,
    heap_bytes: usize,
    freed_count: usize,
    freed_bytes: usize,
    again_count: usize,
    again_bytes: usize,
    /// Regions mapped after the refill (the OS still refuses, so no more).
    mapped_regions_after: usize,

    /// Fallback phase: 1 MiB blocks before the first null, how many were mappings of
    /// their own, and how many spans served from the regions.
    big_count: usize,
    big_mappings: usize,
    big_spans: usize,

    /// At the end, still limited: what `validate` said, and what is in use.
    valid: Option<&'static str>,
    in_use_end: usize,
    huge_end: usize,
}

/// Runs `op` with the sentinel in `errno`; counts a changed `errno`.
fn keeping_errno(f: &mut Findings, op: impl FnOnce() -> *mut u8) -> *mut u8 {
    let e = errno();
    // SAFETY: this thread's errno, valid for the thread's life.
    unsafe { e.write(SENTINEL) };
    let p = op();
    // SAFETY: as above.
    if unsafe { e.read() } != SENTINEL {
        f.errno_changed += 1;
    }
    p
}

/// `A.malloc(size)` with the sentinel in `errno` around it; checks the block.
fn malloc(f: &mut Findings, size: usize) -> *mut u8 {
    let p = keeping_errno(f, || A.malloc(size));
    if !p.is_null() && (p.addr() % 16 != 0 || A.usable_size(p) < size || !A.owns(p)) {
        f.bad_blocks += 1;
    }
    p
}

/// Checks the pattern of a block (counted, not asserted: nothing may allocate or
/// format while the limit is set), then frees it.
///
/// # Safety
/// - `p` is a live block of ours of at least `size` bytes, filled with the pattern of
///   `seed`, not used after this call.
unsafe fn check_and_free(f: &mut Findings, p: *mut u8, size: usize, seed: u64) {
    if !pattern::holds(p, size, seed) {
        f.corrupt_blocks += 1;
    }
    // SAFETY: the caller's contract: live, ours, freed once.
    unsafe { A.free(p) };
}

/// Allocates `size`-byte blocks into `big` until null, each filled with its index's
/// pattern; counts a loop that fills `big`'s reserved capacity without seeing null.
fn alloc_until_null(f: &mut Findings, big: &mut Vec<*mut u8>, size: usize) {
    loop {
        if big.len() == big.capacity() {
            f.never_null += 1;
            return;
        }
        let p = malloc(f, size);
        if p.is_null() {
            return;
        }
        pattern::fill(p, size, big.len() as u64);
        big.push(p);
    }
}

/// Checks and frees every block of `big`: each `size` bytes, filled with its index's
/// pattern.
fn free_all(f: &mut Findings, big: &mut Vec<*mut u8>, size: usize) {
    for (i, p) in big.drain(..).enumerate() {
        // SAFETY: live blocks of ours, each filled with its index's pattern.
        unsafe { check_and_free(f, p, size, i as u64) };
    }
}

/// Everything done while the limit is in force. Allocates nothing from the system
/// allocator: `small` and `big` come with their capacity reserved.
fn limited_phases(f: &mut Findings, small: &mut Vec<(*mut u8, usize)>, big: &mut Vec<*mut u8>) {
    // 1. Huge blocks until the OS refuses. The fallback (a span in a region) needs a
    //    region at least as large, which the OS refuses too.
    alloc_until_null(f, big, HUGE);
    f.huge_count = big.len();
    f.huge_mappings = A.stats().huge_mappings;
    // Growing a block needs a new mapping too: null, and the block stays as it was
    // (its fill is checked when it is freed). A huge calloc fails the same way.
    if let Some(first) = big.first_mut() {
        let p = *first;
        // SAFETY: `p` is a live block of ours.
        let q = keeping_errno(f, || unsafe { A.realloc(p, 2 * HUGE) });
        if !q.is_null() {
            f.refused_but_served += 1;
            *first = q; // moved, contents kept (checked at free)
        }
        let z = keeping_errno(f, || A.calloc(HUGE / 8, 8));
        if !z.is_null() {
            f.refused_but_served += 1;
            // SAFETY: a live block of ours, freed once.
            unsafe { A.free(z) };
        }
    }
    // Two mappings back, two new requests: the address space they free is enough.
    for _ in 0..2.min(big.len()) {
        let i = big.len() - 1;
        let p = big.pop().unwrap_or(std::ptr::null_mut());
        // SAFETY: a live block of ours, filled with its index's pattern.
        unsafe { check_and_free(f, p, HUGE, i as u64) };
    }
    for _ in 0..2.min(f.huge_count) {
        let p = malloc(f, HUGE);
        if !p.is_null() {
            f.huge_again += 1;
            pattern::fill(p, HUGE, big.len() as u64);
            big.push(p);
        }
    }
    free_all(f, big, HUGE);
    f.huge_left = A.stats().huge_mappings;

    // 2. Small blocks until null: the heap grows region by region until the OS refuses.
    let mut rng = Rng(0x11_A5);
    loop {
        if small.len() == small.capacity() {
            f.never_null += 1;
            break;
        }
        let size = rng.range(SMALL_MIN, SMALL_MAX);
        let p = malloc(f, size);
        if p.is_null() {
            break;
        }
        pattern::fill(p, size, small.len() as u64);
        f.small_bytes += A.usable_size(p);
        small.push((p, size));
    }
    f.small_count = small.len();
    let s = A.stats();
    f.mapped_regions = s.mapped_regions;
    f.mapped_bytes = s.mapped_bytes;
    f.heap_bytes = s.heap_bytes;

    // Free every other block, then ask for the same sizes again, in the same order.
    for (i, slot) in small.iter_mut().enumerate().step_by(2) {
        let (p, size) = *slot;
        // SAFETY: a live block of ours, filled with its index's pattern.
        unsafe { check_and_free(f, p, size, i as u64) };
        *slot = (std::ptr::null_mut(), size);
        f.freed_count += 1;
        f.freed_bytes += size;
    }
    for (i, slot) in small.iter_mut().enumerate().step_by(2) {
        let size = slot.1;
        let p = malloc(f, size);
        if !p.is_null() {
            pattern::fill(p, size, i as u64);
            *slot = (p, size);
            f.again_count += 1;
            f.again_bytes += size;
        }
    }
    f.mapped_regions_after = A.stats().mapped_regions;
    for (i, &(p, size)) in small.iter().enumerate() {
        if !p.is_null() {
            // SAFETY: a live block of ours, filled with its index's pattern.
            unsafe { check_and_free(f, p, size, i as u64) };
        }
    }
    small.clear();

    // 3. Every region is free now. 1 MiB requests until null: mappings of their own
    //    while the OS allows, then spans from the regions.
    alloc_until_null(f, big, HUGE_THRESHOLD);
    f.big_count = big.len();
    let s = A.stats();
    f.big_mappings = s.huge_mappings;
    f.big_spans = s.spans;
    free_all(f, big, HUGE_THRESHOLD);

    f.valid = A.validate().err();
    let s = A.stats();
    f.in_use_end = s.bytes_in_use;
    f.huge_end = s.huge_mappings;
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / MIB as f64
}

#[test]
fn address_space_limit_gives_null_keeps_errno_and_recovers() {
    A.enable_mmap();
    // Everything the limited phases need, reserved (and touched) now.
    let mut small: Vec<(*mut u8, usize)> = Vec::with_capacity(SMALL_CAP);
    small.resize(SMALL_CAP, (std::ptr::null_mut(), 0));
    small.clear();
    let mut big: Vec<*mut u8> = Vec::with_capacity(BIG_CAP);
    let mut f = Findings::default();

    let old = get_limit();
    let base = vsize();
    let want = base + HEADROOM;
    if old.rlim_max != libc::RLIM_INFINITY && old.rlim_max < want as libc::rlim_t {
        eprintln!(
            "skipped: the hard RLIMIT_AS ({} bytes) leaves no room for {} MiB of headroom",
            old.rlim_max,
            HEADROOM / MIB
        );
        return;
    }
    {
        let _limit = Limited::set(want as libc::rlim_t);
        limited_phases(&mut f, &mut small, &mut big);
    }
    let now = get_limit();
    assert_eq!(
        (now.rlim_cur, now.rlim_max),
        (old.rlim_cur, old.rlim_max),
        "RLIMIT_AS was not restored"
    );

    println!(
        "RLIMIT_AS: {:.1} MiB virtual + {} MiB headroom; huge: {} x {} MiB before null \
         ({} mappings), {} of 2 again after freeing 2; small: {} blocks, {:.1} MiB before \
         null, {} regions mapped ({:.1} MiB), heap {:.1} MiB; freed {} blocks ({:.1} MiB), \
         {} ({:.1} MiB) served again; fallback: {} x 1 MiB ({} mappings, {} spans from \
         regions)",
        mib(base),
        HEADROOM / MIB,
        f.huge_count,
        HUGE / MIB,
        f.huge_mappings,
        f.huge_again,
        f.small_count,
        mib(f.small_bytes),
        f.mapped_regions,
        mib(f.mapped_bytes),
        mib(f.heap_bytes),
        f.freed_count,
        mib(f.freed_bytes),
        f.again_count,
        mib(f.again_bytes),
        f.big_count,
        f.big_mappings,
        f.big_spans,
    );

    // Never a changed errno, a bad block, a lost fill, or a loop that found no end.
    assert_eq!(
        f.errno_changed, 0,
        "errno changed across an allocation: {f:?}"
    );
    assert_eq!(
        f.bad_blocks, 0,
        "misaligned, short or foreign blocks: {f:?}"
    );
    assert_eq!(f.corrupt_blocks, 0, "blocks lost their fill: {f:?}");
    assert_eq!(f.never_null, 0, "an allocation loop never got null: {f:?}");

    // Huge blocks: bounded by the headroom, and freeing mappings lets new ones in.
    assert!(
        f.huge_count >= 1,
        "not one 8 MiB mapping fit in 48 MiB: {f:?}"
    );
    assert!(
        f.huge_count <= HEADROOM / HUGE,
        "more 8 MiB blocks than the limit allows"
    );
    assert_eq!(
        f.huge_mappings, f.huge_count,
        "each huge block is one mapping"
    );
    assert_eq!(
        f.huge_again,
        2.min(f.huge_count),
        "freed mappings were not reusable"
    );
    assert_eq!(f.huge_left, 0, "huge mappings left after freeing them all");
    assert_eq!(
        f.refused_but_served, 0,
        "realloc/calloc beyond the limit: {f:?}"
    );

    // Small blocks: growth worked until the limit, and stayed inside it.
    assert!(f.mapped_regions >= 2, "growth stopped early: {f:?}");
    assert!(
        f.mapped_bytes >= 2 * MIN_REGION,
        "growth stopped early: {f:?}"
    );
    assert!(f.mapped_bytes <= HEADROOM, "mapped beyond the limit: {f:?}");
    assert!(
        f.small_bytes <= f.heap_bytes,
        "more handed out than the heap holds"
    );
    assert!(
        f.heap_bytes <= HEAP + HEADROOM,
        "a heap larger than the limit allows"
    );
    assert!(
        f.small_bytes >= 8 * MIB,
        "only {:.1} MiB before null",
        mib(f.small_bytes)
    );
    // The same requests again, served from the blocks just freed (nothing new mapped).
    assert_eq!(
        f.mapped_regions_after, f.mapped_regions,
        "mapped past the limit"
    );
    assert!(
        f.again_bytes >= f.freed_bytes / 10 * 9,
        "only {:.1} of {:.1} MiB freed came back: {f:?}",
        mib(f.again_bytes),
        mib(f.freed_bytes)
    );

    // Fallback: huge requests the OS refused were served from the regions' free chunks.
    assert!(
        f.big_spans >= 1,
        "no 1 MiB request was served from a region: {f:?}"
    );
    assert_eq!(f.big_count, f.big_mappings + f.big_spans);
    assert!(
        f.big_count * HUGE_THRESHOLD <= HEADROOM + HEAP,
        "beyond the limit: {f:?}"
    );

    // All freed, all consistent, while still limited.
    assert_eq!(f.valid, None, "validate() failed under the limit");
    assert_eq!(f.in_use_end, 0, "bytes in use after freeing everything");
    assert_eq!(f.huge_end, 0, "huge mappings after freeing everything");

    // With the limit gone, growth works again.
    let p = A.malloc(HUGE);
    assert!(!p.is_null(), "no 8 MiB block after the limit was lifted");
    // SAFETY: a live block of ours, freed once.
    unsafe { A.free(p) };
    A.validate().expect("heap invalid at the end");
    assert_eq!(A.stats().bytes_in_use, 0);
}
