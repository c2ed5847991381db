//! The Cortex-M4F interrupt-storm harness, shared by every image in `src/bin/`.
//!
//! Five levels allocate through the global allocator, whichever it is (sigalloc or
//! embedded-alloc): thread mode, PendSV (lowest priority), CMSDK timer 0 (mid), SysTick
//! (high) and NMI (the watchdog, which nothing masks). Each level allocates blocks, writes
//! a pattern, verifies it, frees some and passes the others through [`ring`] to whichever
//! level comes next, which verifies and frees them. Each round changes the timer periods
//! and thread mode's phase pad, so across rounds the interrupts land at other instruction
//! offsets; every handler records the interrupted PC, and the gate counts how many of the
//! allocator's instructions were interrupted.
//!
//! The image prints its counters, then `firmware: N passed, M failed`, and exits through
//! semihosting with status 0 only if nothing failed.
#![no_std]

extern crate alloc;

pub mod hw;
pub mod ring;

use alloc::vec::Vec;
use core::alloc::Layout;
use core::hint::black_box;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};

pub use semihosting::{print, println};

/// Levels, lowest first.
pub const THREAD: usize = 0;
/// PendSV: pended by timer 0 and SysTick, runs when they return.
pub const PENDSV: usize = 1;
/// CMSDK timer 0.
pub const TIMER0: usize = 2;
/// SysTick.
pub const SYSTICK: usize = 3;
/// NMI from the watchdog.
pub const NMI: usize = 4;
const LEVELS: usize = 5;
const LEVEL_NAMES: [&str; LEVELS] = ["thread", "pendsv", "timer0", "systick", "nmi"];

/// Claims another RAM bank; returns its first and one-past-last address.
pub type ClaimFn = fn() -> Result<(usize, usize), &'static str>;

/// What an image runs.
pub struct Config {
    /// Printed in every line.
    pub name: &'static str,
    /// Does the NMI handler allocate? (Off for embedded-alloc's survivable runs.)
    pub nmi_allocates: bool,
    /// The negative control: NMI corrupts a block it hands on, which must fail the run.
    pub sabotage: bool,
    /// Storm rounds (each with other timer periods and phase pad).
    pub rounds: u32,
    /// Thread-mode iterations per round.
    pub iters: u32,
    /// Called once before anything allocates.
    pub init: fn(),
    /// Called between rounds, while interrupts keep allocating: claims more memory and
    /// returns the first and one-past-last address of the new bank.
    pub claim: Option<ClaimFn>,
    /// After the storm, with every block freed: the allocator's own verdict.
    pub end_check: fn() -> Result<(), &'static str>,
    /// Prints the allocator's statistics, if it has any.
    pub stats: Option<fn()>,
}

/// Per-level counters. Each is written by its own level only (one-writer counters: a
/// `Relaxed` load and store suffice, nothing is published through them).
struct Level {
    runs: AtomicU32,
    allocs: AtomicU32,
    frees: AtomicU32,
    cross_frees: AtomicU32,
    ooms: AtomicU32,
    corrupt: AtomicU32,
    preempted: AtomicU32,
    rng: AtomicU32,
}

impl Level {
    const fn new() -> Level {
        Level {
            runs: AtomicU32::new(0),
            allocs: AtomicU32::new(0),
            frees: AtomicU32::new(0),
            cross_frees: AtomicU32::new(0),
            ooms: AtomicU32::new(0),
            corrupt: AtomicU32::new(0),
            preempted: AtomicU32::new(0),
            rng: AtomicU32::new(0),
        }
    }
}

fn bump(c: &AtomicU32) {
    // ORDERING: Relaxed, a one-writer counter read after the storm stops.
    c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
}

static LEVEL: [Level; LEVELS] = [
    Level::new(),
    Level::new(),
    Level::new(),
    Level::new(),
    Level::new(),
];
/// Bit `l` set while level `l` is inside an allocator call.
static BUSY: AtomicU32 = AtomicU32::new(0);
/// Handlers work only while the storm runs.
static STORM: AtomicBool = AtomicBool::new(false);
static NMI_ALLOCATES: AtomicBool = AtomicBool::new(false);
static SABOTAGE: AtomicBool = AtomicBool::new(false);
static SABOTAGED: AtomicBool = AtomicBool::new(false);
/// Set by NMI (or a SysTick that overran), cleared by SysTick: a SysTick delayed by an
/// NMI or by itself is not a latency sample.
static NMI_SINCE_SYSTICK: AtomicBool = AtomicBool::new(false);
static SYSTICK_LATENCY_MAX: AtomicU32 = AtomicU32::new(0);
/// Set once a block from the claimed bank has been handed out.
static CLAIMED_LO: AtomicU32 = AtomicU32::new(0);
static CLAIMED_HI: AtomicU32 = AtomicU32::new(0);
static CLAIMED_USED: AtomicU32 = AtomicU32::new(0);

// ORDERING (all of the below): Relaxed. Everything runs on one core; the flags and
// counters publish no memory (blocks travel through `ring`, which orders them).

/// 8 KiB blocks that fill the inline heap from the claim to the end of the storm (a
/// static, not a 1 KiB local that would count in every image's stack high-water).
static HELD: [portable_atomic::AtomicPtr<u8>; 256] =
    [const { portable_atomic::AtomicPtr::new(core::ptr::null_mut()) }; 256];

/// The interrupted PC of every handler entry, one bit per halfword of `.text`.
const HIT_WORDS: usize = 2048;
static HITS: [AtomicU32; HIT_WORDS] = [const { AtomicU32::new(0) }; HIT_WORDS];

extern "C" {
    static __stext: u32;
    static __etext: u32;
    static _stack_start: u32;
    static _stack_end: u32;
}

fn note_pc(frame: *const u32) {
    // SAFETY: `frame` is the exception frame the core pushed on entry (MSP at the
    // handler's first instruction); word 6 is the interrupted PC.
    let pc = unsafe { frame.add(6).read_volatile() } as usize;
    let base = core::ptr::addr_of!(__stext) as usize;
    let half = pc.wrapping_sub(base) / 2;
    if let Some(w) = HITS.get(half / 32) {
        w.fetch_or(1 << (half % 32), Relaxed);
    }
}

// The exception entries: hand the frame (MSP on entry; thread mode runs on MSP too) to
// Rust. A tail branch keeps EXC_RETURN in lr, so the Rust function's return is the
// exception return.
core::arch::global_asm!(
    ".section .text.fw_entry,\"ax\",%progbits",
    ".global SysTick",
    ".type SysTick,%function",
    ".thumb_func",
    "SysTick:",
    "mrs r0, msp",
    "b {systick}",
    ".global PendSV",
    ".type PendSV,%function",
    ".thumb_func",
    "PendSV:",
    "mrs r0, msp",
    "b {pendsv}",
    ".global NonMaskableInt",
    ".type NonMaskableInt,%function",
    ".thumb_func",
    "NonMaskableInt:",
    "mrs r0, msp",
    "b {nmi}",
    ".global DefaultHandler",
    ".type DefaultHandler,%function",
    ".thumb_func",
    "DefaultHandler:",
    "mrs r0, msp",
    "mrs r1, ipsr",
    "b {irq}",
    systick = sym on_systick,
    pendsv = sym on_pendsv,
    nmi = sym on_nmi,
    irq = sym on_irq,
);

extern "C" fn on_systick(frame: *const u32) {
    let latency = hw::systick_elapsed();
    note_pc(frame);
    if !NMI_SINCE_SYSTICK.swap(false, Relaxed) && STORM.load(Relaxed) {
        SYSTICK_LATENCY_MAX.fetch_max(latency, Relaxed);
    }
    work(SYSTICK);
    if hw::systick_pending() {
        // This handler overran its period: the next entry's delay is ours, not a mask's.
        NMI_SINCE_SYSTICK.store(true, Relaxed);
    }
    if LEVEL[SYSTICK].runs.load(Relaxed) % 3 == 0 {
        hw::pend_pendsv();
    }
}

extern "C" fn on_pendsv(frame: *const u32) {
    note_pc(frame);
    work(PENDSV);
}

extern "C" fn on_nmi(frame: *const u32) {
    hw::watchdog_ack();
    note_pc(frame);
    NMI_SINCE_SYSTICK.store(true, Relaxed);
    work(NMI);
}

extern "C" fn on_irq(frame: *const u32, ipsr: u32) {
    if ipsr == 16 + hw::TIMER0_IRQ {
        hw::timer0_ack();
        note_pc(frame);
        work(TIMER0);
        hw::pend_pendsv();
    } else {
        println!("firmware: unexpected exception {}", ipsr);
        semihosting::process::exit(4);
    }
}

/// xorshift32: each level has its own stream.
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u32) -> u32 {
        self.next() % n
    }
}

/// A request: mostly small classes, some larger, thread mode and PendSV also spans.
fn pick_layout(level: usize, rng: &mut Rng) -> Layout {
    let roll = rng.below(100);
    let size = if level > PENDSV {
        // Handlers stay short: their periods are a few thousand instructions.
        if roll < 85 {
            8 + rng.below(249)
        } else {
            256 + rng.below(769)
        }
    } else if roll < 70 {
        8 + rng.below(249)
    } else if roll < 95 {
        256 + rng.below(1793)
    } else {
        2049 + rng.below(10_000)
    };
    let align = match rng.below(16) {
        0 => 64,
        1 => 16,
        _ => 4,
    };
    // Sizes are at most 12 KiB and alignments powers of two: never an error.
    Layout::from_size_align(size as usize, align).unwrap_or(Layout::new::<u64>())
}

fn pattern(seed: u32, i: usize) -> u32 {
    seed.wrapping_mul(0x9E37_79B9) ^ (i as u32).wrapping_mul(0x85EB_CA6B)
}

/// Header: word 0 = size | log2(align) << 24, word 1 = seed (level << 28 | counter);
/// then the pattern. Returns null on OOM.
fn alloc_block(level: usize, rng: &mut Rng) -> *mut u32 {
    let layout = pick_layout(level, rng);
    BUSY.fetch_or(1 << level, Relaxed);
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { alloc::alloc::alloc(layout) }.cast::<u32>();
    BUSY.fetch_and(!(1 << level), Relaxed);
    let lv = &LEVEL[level];
    if p.is_null() {
        bump(&lv.ooms);
        return p;
    }
    bump(&lv.allocs);
    if p as usize % layout.align() != 0 {
        bump(&lv.corrupt);
    }
    note_claimed(p as usize);
    let seed = ((level as u32) << 28) | (lv.allocs.load(Relaxed) & 0x0FFF_FFFF);
    let words = layout.size() / 4;
    // SAFETY: the block is ours and `layout.size()` bytes long, 4-aligned at least.
    unsafe {
        p.write((layout.size() as u32) | (layout.align().trailing_zeros() << 24));
        p.add(1).write(seed);
        for i in 2..words {
            p.add(i).write(pattern(seed, i));
        }
    }
    p
}

/// Checks a block's header and pattern; returns its layout if the header is sane.
fn check_block(level: usize, p: *mut u32) -> Option<Layout> {
    // SAFETY: `p` is a live block this harness wrote a header into (ours alone now).
    let (head, seed) = unsafe { (p.read(), p.add(1).read()) };
    let size = (head & 0xFF_FFFF) as usize;
    let align = 1usize << (head >> 24).min(12);
    let layout = Layout::from_size_align(size, align)
        .ok()
        .filter(|l| (8..=12_100).contains(&l.size()));
    let Some(layout) = layout else {
        bump(&LEVEL[level].corrupt);
        return None;
    };
    let mut bad = false;
    for i in 2..size / 4 {
        // SAFETY: within the block's `size` bytes.
        bad |= unsafe { p.add(i).read() } != pattern(seed, i);
    }
    if bad {
        bump(&LEVEL[level].corrupt);
    }
    Some(layout)
}

fn free_block(level: usize, p: *mut u32) {
    let Some(layout) = check_block(level, p) else {
        return;
    };
    let lv = &LEVEL[level];
    // SAFETY: the header was written by `alloc_block` for this block.
    if (unsafe { p.add(1).read() } >> 28) as usize != level {
        bump(&lv.cross_frees);
    }
    BUSY.fetch_or(1 << level, Relaxed);
    // SAFETY: `p` came from `alloc` with this layout and is freed once: whoever holds it
    // (its allocator, or the one level that popped it from the ring) frees it.
    unsafe { alloc::alloc::dealloc(p.cast(), layout) };
    BUSY.fetch_and(!(1 << level), Relaxed);
    bump(&lv.frees);
}

fn note_claimed(addr: usize) {
    let (lo, hi) = (
        CLAIMED_LO.load(Relaxed) as usize,
        CLAIMED_HI.load(Relaxed) as usize,
    );
    if lo <= addr && addr < hi {
        CLAIMED_USED.fetch_add(1, Relaxed);
    }
}

/// One visit of a level: take up to two blocks from the ring and free them; then
/// allocate one or two blocks, check them, free one and hand the other on.
fn work(level: usize) {
    if !STORM.load(Relaxed) {
        return;
    }
    let lv = &LEVEL[level];
    bump(&lv.runs);
    if BUSY.load(Relaxed) & ((1 << level) - 1) != 0 {
        bump(&lv.preempted);
    }
    if level == NMI && !NMI_ALLOCATES.load(Relaxed) {
        return;
    }
    let mut rng = Rng(lv.rng.load(Relaxed));
    // First take what other levels handed on (before handing on our own).
    for _ in 0..1 + rng.below(2) {
        let p = ring::pop(0, ring::SLOTS, rng.next());
        if p.is_null() {
            break;
        }
        free_block(level, p.cast());
    }
    let n = 1 + rng.below(2) as usize;
    for i in 0..n {
        let p = alloc_block(level, &mut rng);
        if p.is_null() {
            continue;
        }
        if i == 0 {
            free_block(level, p);
            continue;
        }
        if check_block(level, p).is_none() {
            continue;
        }
        if level == NMI
            && SABOTAGE.load(Relaxed)
            && lv.allocs.load(Relaxed) > 20
            && !SABOTAGED.swap(true, Relaxed)
        {
            // The negative control: a block handed on with a broken pattern.
            // SAFETY: the block is ours and at least 8 bytes long (its seed word).
            unsafe { p.add(1).write(p.add(1).read() ^ 0x0100_0000) };
        }
        if !ring::push(p.cast(), 0, ring::SLOTS, rng.next()) {
            free_block(level, p);
        }
    }
    lv.rng.store(rng.0, Relaxed);
}

/// Thread mode: the common visit, plus a growing `Vec` (realloc) now and then, plus a
/// phase pad so that the interrupts fall elsewhere in the next iteration.
fn thread_iteration(it: u32, pad: u32) {
    work(THREAD);
    if it % 8 == 0 {
        let lv = &LEVEL[THREAD];
        let mut rng = Rng(lv.rng.load(Relaxed));
        let target = 1 + rng.below(700);
        let seed = rng.next();
        lv.rng.store(rng.0, Relaxed);
        BUSY.fetch_or(1, Relaxed);
        let mut v: Vec<u32> = Vec::new();
        for i in 0..target {
            if v.try_reserve(1).is_err() {
                bump(&lv.ooms);
                break;
            }
            v.push(seed ^ i);
        }
        BUSY.fetch_and(!1, Relaxed);
        if v.iter().enumerate().any(|(i, &x)| x != seed ^ i as u32) {
            bump(&lv.corrupt);
        }
        BUSY.fetch_or(1, Relaxed);
        drop(v);
        BUSY.fetch_and(!1, Relaxed);
    }
    for _ in 0..(it + pad) % 41 {
        cortex_m::asm::nop();
    }
}

/// Instructions per malloc/free pair and the longest single call, interrupts off.
fn bench(cfg: &Config) {
    const N: u32 = 2000;
    let cost = |layout: Layout| -> u32 {
        let t0 = hw::clock();
        for _ in 0..N {
            // SAFETY: non-zero size; freed at once with the same layout.
            let p = unsafe { alloc::alloc::alloc(black_box(layout)) };
            if !p.is_null() {
                // SAFETY: just allocated with `layout`.
                unsafe { alloc::alloc::dealloc(black_box(p), layout) };
            }
        }
        (hw::clock() - t0) * hw::INSNS_PER_TICK / N
    };
    let t0 = hw::clock();
    for i in 0..N {
        black_box(i);
    }
    let overhead = (hw::clock() - t0) * hw::INSNS_PER_TICK / N;
    for size in [16usize, 128, 1024, 4000] {
        let layout = Layout::from_size_align(size, 4).unwrap_or(Layout::new::<u64>());
        println!(
            "firmware[{}]: bench pair {} B: {} insns per malloc+free",
            cfg.name,
            size,
            cost(layout).saturating_sub(overhead)
        );
    }
    // Mixed: 64 live blocks, random sizes, random order; the longest single call.
    let mut slots: [(*mut u8, Layout); 64] = [(core::ptr::null_mut(), Layout::new::<u8>()); 64];
    let mut rng = Rng(0x1234_5678);
    let (mut ops, mut ticks, mut longest) = (0u32, 0u32, 0u32);
    for _ in 0..4096 {
        let i = rng.below(64) as usize;
        let (p, l) = slots[i];
        if !p.is_null() {
            let t = hw::clock();
            // SAFETY: allocated below with `l`, freed once.
            unsafe { alloc::alloc::dealloc(p, l) };
            let d = hw::clock() - t;
            ticks += d;
            longest = longest.max(d);
        }
        let l = pick_layout(THREAD, &mut rng);
        let t = hw::clock();
        // SAFETY: non-zero size.
        let p = unsafe { alloc::alloc::alloc(l) };
        let d = hw::clock() - t;
        ticks += d;
        longest = longest.max(d);
        ops += 1;
        slots[i] = (p, l);
    }
    for (p, l) in slots {
        if !p.is_null() {
            // SAFETY: allocated above with `l`, freed once.
            unsafe { alloc::alloc::dealloc(p, l) };
        }
    }
    println!(
        "firmware[{}]: bench mixed: {} insns per malloc+free (64 live, 8 B..12 KiB), longest single call <= {} insns",
        cfg.name,
        ticks * hw::INSNS_PER_TICK / ops,
        (longest + 1) * hw::INSNS_PER_TICK
    );
}

fn stack_high_water() -> usize {
    const PAINT: u32 = 0xCCCC_CCCC;
    let top = core::ptr::addr_of!(_stack_start) as usize;
    let mut p = core::ptr::addr_of!(_stack_end) as usize;
    while p < top {
        // SAFETY: between `_stack_end` and `_stack_start` lies the stack, painted by
        // cortex-m-rt; reading a word of it is reading our own RAM.
        if unsafe { (p as *const u32).read_volatile() } != PAINT {
            break;
        }
        p += 4;
    }
    top - p
}

struct Tally {
    name: &'static str,
    passed: u32,
    failed: u32,
}

impl Tally {
    fn check(&mut self, ok: bool, what: core::fmt::Arguments<'_>) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
            println!("firmware[{}]: FAILED {}", self.name, what);
        }
    }
}

/// Base periods of the interrupt sources, in 25 MHz ticks: long enough that no handler
/// (a few thousand instructions at most) livelocks its level.
const TIMER0_TICKS: u32 = 199;
const SYSTICK_TICKS: u32 = 293;
const WATCHDOG_TICKS: u32 = 499;

/// Runs the image: bench, storm, checks, exit.
pub fn run(cfg: &Config) -> ! {
    (cfg.init)();
    hw::clock_start();
    hw::setup_priorities();
    bench(cfg);
    NMI_ALLOCATES.store(cfg.nmi_allocates, Relaxed);
    SABOTAGE.store(cfg.sabotage, Relaxed);
    for (l, lv) in LEVEL.iter().enumerate() {
        lv.rng.store(
            0x9E37_79B9 ^ (l as u32 + 1).wrapping_mul(0x0101_0101),
            Relaxed,
        );
    }
    let mut tally = Tally {
        name: cfg.name,
        passed: 0,
        failed: 0,
    };
    let mut claimed = None;

    let t0 = hw::clock();
    for round in 0..cfg.rounds {
        if round == cfg.rounds / 2 {
            if let Some(claim) = cfg.claim {
                claimed = Some(claim_under_storm(cfg, claim, &mut tally));
            }
        }
        STORM.store(true, Relaxed);
        // Periods in ticks (40 instructions each), coprime-ish and shifted every round.
        hw::watchdog(Some(WATCHDOG_TICKS + (round * 11) % 53));
        hw::timer0(Some(TIMER0_TICKS + (round * 7) % 41));
        hw::systick(Some(SYSTICK_TICKS + (round * 13) % 37));
        for it in 0..cfg.iters {
            thread_iteration(it, round);
        }
        hw::systick(None);
        hw::timer0(None);
        hw::watchdog(None);
        STORM.store(false, Relaxed);
    }
    let storm_ticks = hw::clock() - t0;
    let big = Layout::from_size_align(8192, 4).unwrap_or(Layout::new::<u64>());
    for slot in HELD.iter() {
        // ORDERING: Relaxed, thread mode's own slots.
        let p = slot.swap(core::ptr::null_mut(), Relaxed);
        if !p.is_null() {
            // SAFETY: allocated by `claim_under_storm` with `big`, freed once.
            unsafe { alloc::alloc::dealloc(p, big) };
        }
    }
    // Drain: every block still in the ring goes back.
    loop {
        let p = ring::pop(0, ring::SLOTS, 0);
        if p.is_null() {
            break;
        }
        free_block(THREAD, p.cast());
    }
    println!(
        "firmware[{}]: storm {} rounds x {} iterations, {} guest instructions",
        cfg.name,
        cfg.rounds,
        cfg.iters,
        u64::from(storm_ticks) * u64::from(hw::INSNS_PER_TICK)
    );
    let mut total_cross = 0;
    for (l, lv) in LEVEL.iter().enumerate() {
        let g = |c: &AtomicU32| c.load(Relaxed);
        println!(
            "firmware[{}]: level {:<7} runs {:>6} allocs {:>6} frees {:>6} cross-level frees {:>6} ooms {:>4} preempted-an-allocation {:>5} corrupt {}",
            cfg.name,
            LEVEL_NAMES[l],
            g(&lv.runs),
            g(&lv.allocs),
            g(&lv.frees),
            g(&lv.cross_frees),
            g(&lv.ooms),
            g(&lv.preempted),
            g(&lv.corrupt)
        );
        total_cross += g(&lv.cross_frees);
        tally.check(
            g(&lv.corrupt) == 0,
            format_args!(
                "level {}: {} corrupt or misaligned blocks",
                LEVEL_NAMES[l],
                g(&lv.corrupt)
            ),
        );
        let allocating = l != NMI || cfg.nmi_allocates;
        tally.check(
            g(&lv.runs) > 0 && (!allocating || g(&lv.allocs) > 0),
            format_args!("level {}: never ran or never allocated", LEVEL_NAMES[l]),
        );
        if l != THREAD {
            tally.check(
                g(&lv.preempted) > 0,
                format_args!("level {}: never preempted an allocation", LEVEL_NAMES[l]),
            );
        }
    }
    tally.check(
        total_cross > 0,
        format_args!("no block was freed by another level"),
    );
    println!(
        "firmware[{}]: systick latency max {} ticks (<= {} insns; samples delayed by NMI or SysTick itself excluded)",
        cfg.name,
        SYSTICK_LATENCY_MAX.load(Relaxed),
        (SYSTICK_LATENCY_MAX.load(Relaxed) + 1) * hw::INSNS_PER_TICK
    );
    println!(
        "firmware[{}]: stack high-water {} bytes",
        cfg.name,
        stack_high_water()
    );
    if let Some(stats) = cfg.stats {
        stats();
    }
    let end = (cfg.end_check)();
    tally.check(end.is_ok(), format_args!("end check: {:?}", end));
    if cfg.claim.is_some() {
        let used = CLAIMED_USED.load(Relaxed);
        println!(
            "firmware[{}]: blocks served from the claimed bank: {}",
            cfg.name, used
        );
        tally.check(
            claimed == Some(true) && used > 0,
            format_args!("claim: bank not claimed or never used"),
        );
    }
    // The interrupted PCs, for the gate's coverage count (one line per non-empty word).
    let base = core::ptr::addr_of!(__stext) as usize;
    for (i, w) in HITS.iter().enumerate() {
        let bits = w.load(Relaxed);
        if bits != 0 {
            println!("pchits {:08x} {:08x}", base + i * 64, bits);
        }
    }
    println!("firmware: {} passed, {} failed", tally.passed, tally.failed);
    semihosting::process::exit(if tally.failed == 0 { 0 } else { 1 })
}

/// Claims the second bank from thread mode while the interrupts keep allocating, then
/// holds 8 KiB blocks until the new bank serves some: the inline heap is then full, and
/// the blocks held from it stay in `HELD` until the storm ends, so the remaining rounds
/// allocate and free in the claimed region.
fn claim_under_storm(cfg: &Config, claim: ClaimFn, tally: &mut Tally) -> bool {
    if let Some(stats) = cfg.stats {
        stats();
    }
    STORM.store(true, Relaxed);
    hw::watchdog(Some(WATCHDOG_TICKS));
    hw::timer0(Some(TIMER0_TICKS));
    hw::systick(Some(SYSTICK_TICKS));
    let r = claim();
    if let Ok((lo, hi)) = r {
        CLAIMED_LO.store(lo as u32, Relaxed);
        CLAIMED_HI.store(hi as u32, Relaxed);
    }
    // Hold 8 KiB blocks until the claimed bank has served a few (or memory runs out).
    let layout = Layout::from_size_align(8192, 4).unwrap_or(Layout::new::<u64>());
    let mut from_bank = 0;
    for slot in HELD.iter() {
        BUSY.fetch_or(1, Relaxed);
        // SAFETY: non-zero size.
        let p = unsafe { alloc::alloc::alloc(layout) };
        BUSY.fetch_and(!1, Relaxed);
        // ORDERING: Relaxed, thread mode's own slots.
        slot.store(p, Relaxed);
        let a = p as usize;
        if !p.is_null()
            && CLAIMED_LO.load(Relaxed) as usize <= a
            && a < CLAIMED_HI.load(Relaxed) as usize
        {
            from_bank += 1;
            if from_bank == 16 {
                break;
            }
        }
    }
    for slot in HELD.iter() {
        // ORDERING: Relaxed, thread mode's own slots.
        let p = slot.load(Relaxed);
        let a = p as usize;
        if CLAIMED_LO.load(Relaxed) as usize <= a && a < CLAIMED_HI.load(Relaxed) as usize {
            BUSY.fetch_or(1, Relaxed);
            // SAFETY: allocated above with `layout`, freed once (and forgotten here).
            unsafe { alloc::alloc::dealloc(p, layout) };
            BUSY.fetch_and(!1, Relaxed);
            // ORDERING: Relaxed, as above.
            slot.store(core::ptr::null_mut(), Relaxed);
        }
    }
    hw::systick(None);
    hw::timer0(None);
    hw::watchdog(None);
    STORM.store(false, Relaxed);
    CLAIMED_USED.fetch_add(from_bank, Relaxed);
    match r {
        Ok((lo, hi)) => println!(
            "firmware[{}]: claimed {:#010x}..{:#010x} while interrupts allocated; {} of the held 8 KiB blocks came from it (the inline heap's stay held)",
            cfg.name, lo, hi, from_bank
        ),
        Err(e) => println!("firmware[{}]: claim refused: {}", cfg.name, e),
    }
    tally.check(r.is_ok(), format_args!("claim refused: {:?}", r));
    if let Some(stats) = cfg.stats {
        stats();
    }
    r.is_ok()
}

/// Checked mode: errors the allocator reported (running out of memory aside).
static CHECKED_ERRORS: AtomicU32 = AtomicU32::new(0);

/// The error hook of `--features checked` images: counts every refused call but OOM.
#[cfg(feature = "checked")]
pub fn note_checked_error(kind: sigalloc::ErrorKind, _ptr: *mut u8) {
    if kind != sigalloc::ErrorKind::OutOfMemory {
        // ORDERING: Relaxed, a counter read after the storm.
        CHECKED_ERRORS.fetch_add(1, Relaxed);
    }
}

/// How many errors the checked-mode hook heard of.
pub fn checked_errors() -> u32 {
    CHECKED_ERRORS.load(Relaxed)
}

/// Panics print and exit with status 101 (so an embedded-alloc `RefCell` panic in NMI
/// shows up as what it is).
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("firmware: PANIC {}", info);
    println!("firmware: 0 passed, 1 failed");
    semihosting::process::exit(101)
}

#[cortex_m_rt::exception]
unsafe fn HardFault(ef: &cortex_m_rt::ExceptionFrame) -> ! {
    println!("firmware: HARDFAULT at pc {:#010x}", ef.pc());
    println!("firmware: 0 passed, 1 failed");
    semihosting::process::exit(3)
}

/// A sigalloc image: `$heap` bytes inline, in `.bss`.
#[macro_export]
macro_rules! sigalloc_image {
    ($heap:expr, $name:expr, sabotage: $sab:expr, claim: $claim:expr) => {
        #[global_allocator]
        static HEAP: sigalloc::SigAlloc<{ $heap }> = sigalloc::SigAlloc::new();

        fn end_check() -> Result<(), &'static str> {
            #[cfg(feature = "checked")]
            {
                let n = $crate::checked_errors();
                $crate::println!(
                    "firmware[{}]: checked mode: {} errors reported by the hook",
                    $name,
                    n
                );
                if n != 0 {
                    return Err("checked mode reported errors");
                }
            }
            HEAP.validate()?;
            let s = HEAP.stats();
            if s.bytes_in_use != 0 {
                $crate::println!(
                    "firmware[{}]: bytes_in_use {} after the drain",
                    $name,
                    s.bytes_in_use
                );
                return Err("bytes in use after every block was freed");
            }
            Ok(())
        }

        fn stats() {
            let s = HEAP.stats();
            $crate::print!("firmware[{}]: stats: {}", $name, s);
        }

        /// The MPS2 PSRAM bank: 16 MiB at 0x2100_0000, not in the linker's RAM.
        fn claim_psram() -> Result<(usize, usize), &'static str> {
            const BASE: usize = 0x2100_0000;
            const LEN: usize = 16 << 20;
            // SAFETY: the PSRAM bank is RAM nothing else in this image uses; it is handed
            // to the allocator once, for good.
            let bank: &'static mut [core::mem::MaybeUninit<u8>] = unsafe {
                core::slice::from_raw_parts_mut(BASE as *mut core::mem::MaybeUninit<u8>, LEN)
            };
            match HEAP.claim(bank) {
                Ok(_) => Ok((BASE, BASE + LEN)),
                Err(sigalloc::ClaimError::TooSmall) => Err("TooSmall"),
                Err(sigalloc::ClaimError::Full) => Err("Full"),
            }
        }

        #[cortex_m_rt::entry]
        fn main() -> ! {
            let _ = claim_psram;
            #[cfg(feature = "checked")]
            HEAP.set_error_hook(Some($crate::note_checked_error));
            $crate::run(&$crate::Config {
                name: $name,
                nmi_allocates: true,
                sabotage: $sab,
                rounds: 41,
                iters: 150,
                init: || {},
                claim: if $claim { Some(claim_psram) } else { None },
                end_check,
                stats: Some(stats),
            })
        }
    };
}

/// An embedded-alloc image (`$heap_ty` is `LlffHeap` or `TlsfHeap`), `$size` bytes.
#[macro_export]
macro_rules! embedded_alloc_image {
    ($heap_ty:ty, $size:expr, $name:expr, nmi_allocates: $nmi:expr) => {
        #[global_allocator]
        static HEAP: $heap_ty = <$heap_ty>::empty();

        /// `HEAP.free()` right after `init`. (`TlsfHeap::used()` of embedded-alloc 0.7.0
        /// panics: it borrows its `RefCell` twice in one expression; `free()` works.)
        static FREE_AT_START: core::sync::atomic::AtomicUsize =
            core::sync::atomic::AtomicUsize::new(0);

        fn init() {
            static mut MEM: [core::mem::MaybeUninit<u8>; $size] =
                [core::mem::MaybeUninit::uninit(); $size];
            // SAFETY: called once, before anything allocates; MEM is used by nothing else.
            unsafe { HEAP.init(core::ptr::addr_of_mut!(MEM) as usize, $size) }
            // ORDERING: Relaxed, read later by the same thread.
            FREE_AT_START.store(HEAP.free(), core::sync::atomic::Ordering::Relaxed);
        }

        fn end_check() -> Result<(), &'static str> {
            // ORDERING: Relaxed, written earlier by the same thread.
            let start = FREE_AT_START.load(core::sync::atomic::Ordering::Relaxed);
            if HEAP.free() != start {
                $crate::println!(
                    "firmware[{}]: free {} of {} after the drain",
                    $name,
                    HEAP.free(),
                    start
                );
                return Err("bytes in use after every block was freed");
            }
            Ok(())
        }

        #[cortex_m_rt::entry]
        fn main() -> ! {
            $crate::run(&$crate::Config {
                name: $name,
                nmi_allocates: $nmi,
                sabotage: false,
                rounds: 41,
                iters: 150,
                init,
                claim: None,
                end_check,
                stats: None,
            })
        }
    };
}
