//! sigalloc on a Cortex-M0 (`thumbv6m-none-eabi`, no CAS: atomics through portable-atomic
//! in single-core mode), QEMU `lm3s6965evb -cpu cortex-m0`, 32 KiB heap in `.bss`.
//!
//! Four levels allocate, write a pattern, verify, free one block and hand another on
//! through the lock-free ring: thread mode, PendSV (lowest), the watchdog interrupt
//! (IRQ 18, the board's CMSDK-style watchdog used as a periodic timer) and SysTick
//! (highest). NMI does not allocate: emulated CAS masks PRIMASK, which NMI ignores.
//! Prints `firmware: N passed, M failed` and exits through semihosting.
#![no_std]
#![no_main]

extern crate alloc;

#[path = "../../m4/src/ring.rs"]
mod ring;

use core::alloc::Layout;
use core::hint::black_box;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::Ordering::Relaxed;
use portable_atomic::{AtomicBool, AtomicU32};
use semihosting::println;

#[global_allocator]
static HEAP: sigalloc::SigAlloc<{ 32 << 10 }> = sigalloc::SigAlloc::new();

const THREAD: usize = 0;
const PENDSV: usize = 1;
const WDOG: usize = 2;
const SYSTICK: usize = 3;
const LEVELS: usize = 4;
const NAMES: [&str; LEVELS] = ["thread", "pendsv", "wdog", "systick"];
const ROUNDS: u32 = 23;
const ITERS: u32 = 1000;

const WATCHDOG: usize = 0x4000_0000;
const WDOG_IRQ: u32 = 18;
const NVIC_ISER0: usize = 0xE000_E100;
const NVIC_ICER0: usize = 0xE000_E180;
const NVIC_IPR4: usize = 0xE000_E410;
const SCB_ICSR: usize = 0xE000_ED04;
const SCB_SHPR3: usize = 0xE000_ED20;
const SYST_CSR: usize = 0xE000_E010;
const SYST_RVR: usize = 0xE000_E014;
const SYST_CVR: usize = 0xE000_E018;

fn rd(addr: usize) -> u32 {
    // SAFETY: one of the core or watchdog registers above, mapped for the whole run.
    unsafe { read_volatile(addr as *const u32) }
}

fn wr(addr: usize, v: u32) {
    // SAFETY: as in `rd`.
    unsafe { write_volatile(addr as *mut u32, v) }
}

/// Per-level counters, each written by its own level only (`Relaxed`: read after the
/// storm, on the same core).
struct Level {
    runs: AtomicU32,
    allocs: AtomicU32,
    frees: AtomicU32,
    cross: AtomicU32,
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
            cross: AtomicU32::new(0),
            ooms: AtomicU32::new(0),
            corrupt: AtomicU32::new(0),
            preempted: AtomicU32::new(0),
            rng: AtomicU32::new(0),
        }
    }
}

static LEVEL: [Level; LEVELS] = [Level::new(), Level::new(), Level::new(), Level::new()];
/// Bit `l` set while level `l` is inside an allocator call.
static BUSY: AtomicU32 = AtomicU32::new(0);
static STORM: AtomicBool = AtomicBool::new(false);

fn bump(c: &AtomicU32) {
    // ORDERING: Relaxed, a one-writer counter.
    c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
}

// ORDERING (BUSY, STORM below): Relaxed; one core, and the flags publish no memory.

fn busy(level: usize, on: bool) {
    if on {
        BUSY.fetch_or(1 << level, Relaxed);
    } else {
        BUSY.fetch_and(!(1 << level), Relaxed);
    }
}

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

fn pattern(seed: u32, i: usize) -> u32 {
    seed.wrapping_mul(0x9E37_79B9) ^ (i as u32).wrapping_mul(0x85EB_CA6B)
}

fn pick_layout(level: usize, rng: &mut Rng) -> Layout {
    let size = if level > PENDSV || rng.below(100) < 75 {
        8 + rng.below(249)
    } else {
        256 + rng.below(1793)
    };
    let align = if rng.below(16) == 0 { 64 } else { 4 };
    Layout::from_size_align(size as usize, align).unwrap_or(Layout::new::<u64>())
}

fn alloc_block(level: usize, rng: &mut Rng) -> *mut u32 {
    let layout = pick_layout(level, rng);
    busy(level, true);
    // SAFETY: non-zero size.
    let p = unsafe { alloc::alloc::alloc(layout) }.cast::<u32>();
    busy(level, false);
    let lv = &LEVEL[level];
    if p.is_null() {
        bump(&lv.ooms);
        return p;
    }
    bump(&lv.allocs);
    if p as usize % layout.align() != 0 {
        bump(&lv.corrupt);
    }
    // ORDERING: Relaxed, our own counter.
    let seed = ((level as u32) << 28) | (lv.allocs.load(Relaxed) & 0x0FFF_FFFF);
    // SAFETY: the block is ours, `layout.size()` bytes, 4-aligned at least.
    unsafe {
        p.write((layout.size() as u32) | (layout.align().trailing_zeros() << 24));
        p.add(1).write(seed);
        for i in 2..layout.size() / 4 {
            p.add(i).write(pattern(seed, i));
        }
    }
    p
}

fn free_block(level: usize, p: *mut u32) {
    // SAFETY: a live block with our header, ours alone now.
    let (head, seed) = unsafe { (p.read(), p.add(1).read()) };
    let size = (head & 0xFF_FFFF) as usize;
    let layout = Layout::from_size_align(size, 1 << (head >> 24).min(12))
        .ok()
        .filter(|l| (8..=2048).contains(&l.size()));
    let lv = &LEVEL[level];
    let Some(layout) = layout else {
        bump(&lv.corrupt);
        return;
    };
    // SAFETY: within the block's `size` bytes.
    if (2..size / 4).any(|i| unsafe { p.add(i).read() } != pattern(seed, i)) {
        bump(&lv.corrupt);
    }
    if (seed >> 28) as usize != level {
        bump(&lv.cross);
    }
    busy(level, true);
    // SAFETY: allocated with this layout; freed once, by whoever holds it.
    unsafe { alloc::alloc::dealloc(p.cast(), layout) };
    busy(level, false);
    bump(&lv.frees);
}

fn work(level: usize) {
    // ORDERING: Relaxed, see above.
    if !STORM.load(Relaxed) {
        return;
    }
    let lv = &LEVEL[level];
    bump(&lv.runs);
    // ORDERING: Relaxed, see above.
    if BUSY.load(Relaxed) & ((1 << level) - 1) != 0 {
        bump(&lv.preempted);
    }
    // ORDERING: Relaxed, one writer.
    let mut rng = Rng(lv.rng.load(Relaxed));
    for _ in 0..1 + rng.below(2) {
        let p = ring::pop(0, ring::SLOTS, rng.next());
        if p.is_null() {
            break;
        }
        free_block(level, p.cast());
    }
    for i in 0..1 + rng.below(2) {
        let p = alloc_block(level, &mut rng);
        if p.is_null() {
            continue;
        }
        if i == 0 || !ring::push(p.cast(), 0, ring::SLOTS, rng.next()) {
            free_block(level, p);
        }
    }
    // ORDERING: Relaxed, one writer.
    lv.rng.store(rng.0, Relaxed);
}

#[cortex_m_rt::exception]
fn SysTick() {
    work(SYSTICK);
    if LEVEL[SYSTICK].runs.load(Relaxed) % 3 == 0 {
        wr(SCB_ICSR, 1 << 28);
    }
}

#[cortex_m_rt::exception]
fn PendSV() {
    work(PENDSV);
}

#[cortex_m_rt::exception]
unsafe fn DefaultHandler(irqn: i16) {
    if irqn == WDOG_IRQ as i16 {
        wr(WATCHDOG + 0xC, 1);
        work(WDOG);
        wr(SCB_ICSR, 1 << 28);
    } else {
        println!("firmware[m0]: unexpected exception {}", irqn);
        semihosting::process::exit(4);
    }
}

#[cortex_m_rt::exception]
unsafe fn HardFault(ef: &cortex_m_rt::ExceptionFrame) -> ! {
    println!("firmware[m0]: HARDFAULT at pc {:#010x}", ef.pc());
    println!("firmware: 0 passed, 1 failed");
    semihosting::process::exit(3)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("firmware[m0]: PANIC {}", info);
    println!("firmware: 0 passed, 1 failed");
    semihosting::process::exit(101)
}

/// SysTick as a free-running 24-bit down-counter on the core clock (no interrupt).
fn clock_start() {
    wr(SYST_CSR, 0);
    wr(SYST_RVR, 0x00FF_FFFF);
    wr(SYST_CVR, 0);
    wr(SYST_CSR, 0b101);
}

fn clock() -> u32 {
    rd(SYST_CVR)
}

fn ticks_since(t0: u32) -> u32 {
    t0.wrapping_sub(clock()) & 0x00FF_FFFF
}

/// Guest instructions per SysTick tick, x16: a loop of exactly two instructions.
fn insns_per_tick_x16() -> u32 {
    let n: u32 = 100_000;
    let t0 = clock();
    // SAFETY: a register-only countdown loop (subs + bne: two instructions a turn).
    unsafe {
        core::arch::asm!("1:", "subs {0}, #1", "bne 1b", inout(reg) n => _, options(nomem, nostack))
    };
    let t = ticks_since(t0).max(1);
    2 * n * 16 / t
}

fn bench(x16: u32) {
    const N: u32 = 2000;
    let insns = |ticks: u32, n: u32| (u64::from(ticks) * u64::from(x16) / 16 / u64::from(n)) as u32;
    let t0 = clock();
    for i in 0..N {
        black_box(i);
    }
    let overhead = insns(ticks_since(t0), N);
    for size in [16usize, 128, 1024] {
        let layout = Layout::from_size_align(size, 4).unwrap_or(Layout::new::<u64>());
        let t0 = clock();
        for _ in 0..N {
            // SAFETY: non-zero size; freed at once with the same layout.
            let p = unsafe { alloc::alloc::alloc(black_box(layout)) };
            if !p.is_null() {
                // SAFETY: just allocated with `layout`.
                unsafe { alloc::alloc::dealloc(black_box(p), layout) };
            }
        }
        println!(
            "firmware[m0]: bench pair {} B: {} insns per malloc+free",
            size,
            insns(ticks_since(t0), N).saturating_sub(overhead)
        );
    }
}

fn stack_high_water() -> usize {
    extern "C" {
        static _stack_start: u32;
        static _stack_end: u32;
    }
    let top = core::ptr::addr_of!(_stack_start) as usize;
    let mut p = core::ptr::addr_of!(_stack_end) as usize;
    // SAFETY: the painted stack between `_stack_end` and `_stack_start` is our own RAM.
    while p < top && unsafe { (p as *const u32).read_volatile() } == 0xCCCC_CCCC {
        p += 4;
    }
    top - p
}

#[cortex_m_rt::entry]
fn main() -> ! {
    clock_start();
    let x16 = insns_per_tick_x16();
    println!(
        "firmware[m0]: {}.{:02} instructions per SysTick tick",
        x16 / 16,
        x16 % 16 * 100 / 16
    );
    bench(x16);
    // Priorities (v6-M: word access only): SysTick 0x40 > watchdog 0x80 > PendSV 0xC0.
    wr(
        SCB_SHPR3,
        (rd(SCB_SHPR3) & 0x0000_FFFF) | (0x40 << 24) | (0xC0 << 16),
    );
    let shift = (WDOG_IRQ % 4) * 8;
    wr(
        NVIC_IPR4,
        (rd(NVIC_IPR4) & !(0xFF << shift)) | (0x80 << shift),
    );
    for (l, lv) in LEVEL.iter().enumerate() {
        // ORDERING: Relaxed, before any handler runs.
        lv.rng.store(
            0x9E37_79B9 ^ (l as u32 + 1).wrapping_mul(0x0101_0101),
            Relaxed,
        );
    }
    // Periods in instructions, converted to ticks; shifted every round.
    let ticks = |insns: u32| (insns * 16 / x16).max(1);
    wr(WATCHDOG + 0xC00, 0x1ACC_E551);
    for round in 0..ROUNDS {
        // ORDERING: Relaxed, see above.
        STORM.store(true, Relaxed);
        wr(WATCHDOG, ticks(9_000 + round * 157));
        wr(WATCHDOG + 0xC, 1);
        wr(WATCHDOG + 8, 1);
        wr(NVIC_ISER0, 1 << WDOG_IRQ);
        wr(SYST_CSR, 0);
        wr(SYST_RVR, ticks(12_000 + round * 211));
        wr(SYST_CVR, 0);
        wr(SYST_CSR, 0b111);
        for it in 0..ITERS {
            work(THREAD);
            for _ in 0..(it + round) % 23 {
                core::hint::spin_loop();
            }
        }
        wr(NVIC_ICER0, 1 << WDOG_IRQ);
        wr(SYST_CSR, 0);
        // ORDERING: Relaxed, see above.
        STORM.store(false, Relaxed);
    }
    loop {
        let p = ring::pop(0, ring::SLOTS, 0);
        if p.is_null() {
            break;
        }
        free_block(THREAD, p.cast());
    }
    let (mut passed, mut failed) = (0u32, 0u32);
    let mut check = |ok: bool, what: &str| {
        if ok {
            passed += 1;
        } else {
            failed += 1;
            println!("firmware[m0]: FAILED {}", what);
        }
    };
    let mut cross = 0;
    for (l, lv) in LEVEL.iter().enumerate() {
        // ORDERING: Relaxed, the storm is over.
        let g = |c: &AtomicU32| c.load(Relaxed);
        println!(
            "firmware[m0]: level {:<7} runs {:>6} allocs {:>6} frees {:>6} cross-level frees {:>6} ooms {:>4} preempted-an-allocation {:>5} corrupt {}",
            NAMES[l],
            g(&lv.runs),
            g(&lv.allocs),
            g(&lv.frees),
            g(&lv.cross),
            g(&lv.ooms),
            g(&lv.preempted),
            g(&lv.corrupt)
        );
        cross += g(&lv.cross);
        check(g(&lv.corrupt) == 0, "corrupt or misaligned blocks");
        check(g(&lv.allocs) > 0, "a level never allocated");
        if l != THREAD {
            check(
                g(&lv.preempted) > 0,
                "an interrupt level never preempted an allocation",
            );
        }
    }
    check(cross > 0, "no block crossed levels");
    println!(
        "firmware[m0]: stack high-water {} bytes",
        stack_high_water()
    );
    let s = HEAP.stats();
    semihosting::print!("firmware[m0]: stats: {}", s);
    check(
        s.bytes_in_use == 0,
        "bytes in use after every block was freed",
    );
    check(HEAP.validate().is_ok(), "validate");
    println!("firmware: {} passed, {} failed", passed, failed);
    semihosting::process::exit(if failed == 0 { 0 } else { 1 })
}
