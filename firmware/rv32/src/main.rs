//! sigalloc on two RISC-V harts (QEMU `virt`, `-smp 2 -accel tcg,thread=multi`: the harts
//! run on two host threads, truly in parallel).
//!
//! Both harts allocate, write a pattern, verify, free some blocks and hand the others to
//! the other hart through the lock-free ring, which verifies and frees them (sigalloc's
//! remote-free path). Hart 0's machine-timer interrupt allocates and frees too, landing
//! wherever hart 0 happens to be, including inside the allocator. Prints
//! `firmware: N passed, M failed` and exits through semihosting (non-zero on failure).
#![no_std]
#![no_main]

extern crate alloc;

#[path = "../../m4/src/ring.rs"]
mod ring;

use core::alloc::Layout;
use core::sync::atomic::{
    AtomicU32,
    Ordering::{Acquire, Relaxed, Release},
};
use semihosting::println;
use sigalloc::SigAlloc;

#[global_allocator]
static HEAP: SigAlloc<{ 1 << 20 }> = SigAlloc::new();

/// Contexts: hart 0, hart 1, hart 0's timer interrupt.
const CONTEXTS: usize = 3;
const TIMER: usize = 2;
const NAMES: [&str; CONTEXTS] = ["hart0", "hart1", "timer"];
/// Iterations per hart.
const ITERS: u32 = 100_000;
/// Timer period in mtime ticks (10 MHz).
const PERIOD: u64 = 100;

/// Each hart's half of the ring.
const HALF: usize = ring::SLOTS / 2;

const MSIP: usize = 0x0200_0000;
const MTIMECMP0: usize = 0x0200_4000;
const MTIME: usize = 0x0200_BFF8;

/// Per-context counters; each written by its own context only (Relaxed: read after the
/// harts have finished, which `FINISHED`'s Release/Acquire orders).
struct Ctx {
    runs: AtomicU32,
    allocs: AtomicU32,
    frees: AtomicU32,
    cross: AtomicU32,
    ooms: AtomicU32,
    corrupt: AtomicU32,
    preempted: AtomicU32,
    rng: AtomicU32,
}

impl Ctx {
    const fn new() -> Ctx {
        Ctx {
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

static CTX: [Ctx; CONTEXTS] = [Ctx::new(), Ctx::new(), Ctx::new()];
/// Set while hart 0's main loop is inside an allocator call.
static HART0_BUSY: AtomicU32 = AtomicU32::new(0);
/// The other hart's iteration count when each hart started and finished its loop.
static OVERLAP: [AtomicU32; 4] = [const { AtomicU32::new(0) }; 4];
/// Harts done with their loop.
static FINISHED: AtomicU32 = AtomicU32::new(0);
/// The timer handler works only while this is 1.
static STORM: AtomicU32 = AtomicU32::new(0);

fn bump(c: &AtomicU32) {
    // ORDERING: Relaxed, a one-writer counter read after the run.
    c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
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

fn pick_layout(ctx: usize, rng: &mut Rng) -> Layout {
    let roll = rng.below(100);
    let size = if roll < 70 || (ctx == TIMER && roll < 90) {
        8 + rng.below(249)
    } else if roll < 96 || ctx == TIMER {
        256 + rng.below(1793)
    } else {
        2049 + rng.below(10_000)
    };
    let align = if rng.below(16) == 0 { 64 } else { 4 };
    Layout::from_size_align(size as usize, align).unwrap_or(Layout::new::<u64>())
}

fn enter(ctx: usize) {
    if ctx == 0 {
        // ORDERING: Relaxed, read by hart 0's own interrupt handler only.
        HART0_BUSY.store(1, Relaxed);
    }
}

fn leave(ctx: usize) {
    if ctx == 0 {
        // ORDERING: Relaxed, as in `enter`.
        HART0_BUSY.store(0, Relaxed);
    }
}

fn alloc_block(ctx: usize, rng: &mut Rng) -> *mut u32 {
    let layout = pick_layout(ctx, rng);
    enter(ctx);
    // SAFETY: non-zero size.
    let p = unsafe { alloc::alloc::alloc(layout) }.cast::<u32>();
    leave(ctx);
    let c = &CTX[ctx];
    if p.is_null() {
        bump(&c.ooms);
        return p;
    }
    bump(&c.allocs);
    if p as usize % layout.align() != 0 {
        bump(&c.corrupt);
    }
    // ORDERING: Relaxed, our own counter.
    let seed = ((ctx as u32) << 28) | (c.allocs.load(Relaxed) & 0x0FFF_FFFF);
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

fn free_block(ctx: usize, p: *mut u32) {
    // SAFETY: a live block with our header, ours alone now.
    let (head, seed) = unsafe { (p.read(), p.add(1).read()) };
    let size = (head & 0xFF_FFFF) as usize;
    let layout = Layout::from_size_align(size, 1 << (head >> 24).min(12))
        .ok()
        .filter(|l| (8..=12_100).contains(&l.size()));
    let c = &CTX[ctx];
    let Some(layout) = layout else {
        bump(&c.corrupt);
        return;
    };
    // SAFETY: within the block's `size` bytes.
    if (2..size / 4).any(|i| unsafe { p.add(i).read() } != pattern(seed, i)) {
        bump(&c.corrupt);
    }
    if (seed >> 28) as usize != ctx {
        bump(&c.cross);
    }
    enter(ctx);
    // SAFETY: allocated with this layout; freed once, by whoever holds it.
    unsafe { alloc::alloc::dealloc(p.cast(), layout) };
    leave(ctx);
    bump(&c.frees);
}

fn work(ctx: usize) {
    let c = &CTX[ctx];
    bump(&c.runs);
    // ORDERING: Relaxed, see `rng`'s one writer.
    let mut rng = Rng(c.rng.load(Relaxed));
    // Each hart pushes into its half of the ring and pops from the other's (the timer
    // hands on to hart 1 and takes from it), so blocks cross harts.
    let (mine, theirs) = match ctx {
        0 => (0, HALF),
        1 => (HALF, 0),
        _ => (0, HALF),
    };
    for _ in 0..1 + rng.below(2) {
        let p = ring::pop(theirs, HALF, rng.next());
        if p.is_null() {
            break;
        }
        free_block(ctx, p.cast());
    }
    for _ in 0..1 + rng.below(2) {
        let p = alloc_block(ctx, &mut rng);
        if p.is_null() {
            continue;
        }
        if !ring::push(p.cast(), mine, HALF, rng.next()) {
            free_block(ctx, p);
        }
    }
    // ORDERING: Relaxed, one writer.
    c.rng.store(rng.0, Relaxed);
}

fn mtime() -> u64 {
    // SAFETY: the CLINT's mtime register, mapped for the whole run; read hi, lo, hi.
    unsafe {
        loop {
            let hi = ((MTIME + 4) as *const u32).read_volatile();
            let lo = (MTIME as *const u32).read_volatile();
            if ((MTIME + 4) as *const u32).read_volatile() == hi {
                return (u64::from(hi) << 32) | u64::from(lo);
            }
        }
    }
}

fn set_mtimecmp0(t: u64) {
    // SAFETY: hart 0's mtimecmp; hi to max first so no spurious interrupt in between.
    unsafe {
        ((MTIMECMP0 + 4) as *mut u32).write_volatile(u32::MAX);
        (MTIMECMP0 as *mut u32).write_volatile(t as u32);
        ((MTIMECMP0 + 4) as *mut u32).write_volatile((t >> 32) as u32);
    }
}

#[riscv_rt::core_interrupt(riscv::interrupt::Interrupt::MachineTimer)]
fn machine_timer() {
    set_mtimecmp0(mtime() + PERIOD);
    // ORDERING: Relaxed, a flag written by this hart's main loop.
    if STORM.load(Relaxed) == 0 {
        return;
    }
    // ORDERING: Relaxed, written by this hart only.
    if HART0_BUSY.load(Relaxed) != 0 {
        bump(&CTX[TIMER].preempted);
    }
    work(TIMER);
}

// Hart 1 waits for hart 0's software interrupt, then runs `main` (without initialising
// RAM). Assembly, as riscv-rt requires: no stack use, s0-s2 untouched.
core::arch::global_asm!(
    r#".section .init.mp_hook, "ax"
    .global _mp_hook
_mp_hook:
    beqz a0, 2f
    csrsi mie, 8
1:  wfi
    csrr t0, mip
    andi t0, t0, 8
    beqz t0, 1b
    csrci mie, 8
    li t0, 0x02000000
    slli t1, a0, 2
    add t0, t0, t1
    sw zero, 0(t0)
    li a0, 0
    ret
2:  li a0, 1
    ret
"#
);

#[riscv_rt::entry]
fn main(hartid: usize) -> ! {
    let ctx = hartid.min(1);
    // ORDERING: Relaxed, one writer.
    CTX[ctx].rng.store(
        0x9E37_79B9 ^ (hartid as u32 + 1).wrapping_mul(0x0101_0101),
        Relaxed,
    );
    if hartid == 0 {
        // ORDERING: Relaxed, one writer.
        CTX[TIMER].rng.store(0x1234_5679, Relaxed);
        // ORDERING: Relaxed, read by this hart's own interrupt handler.
        STORM.store(1, Relaxed);
        set_mtimecmp0(mtime() + PERIOD);
        // SAFETY: enables this hart's timer interrupt (mie.MTIE) and interrupts (mstatus.MIE).
        unsafe { core::arch::asm!("csrs mie, {0}", "csrsi mstatus, 8", in(reg) 1usize << 7) };
        // SAFETY: hart 1's MSIP: wakes it from `_mp_hook`.
        unsafe { ((MSIP + 4) as *mut u32).write_volatile(1) };
    }
    // ORDERING: Relaxed, a progress snapshot for the report.
    OVERLAP[ctx * 2].store(CTX[1 - ctx].runs.load(Relaxed), Relaxed);
    for _ in 0..ITERS {
        work(ctx);
    }
    // ORDERING: Relaxed, as above.
    OVERLAP[ctx * 2 + 1].store(CTX[1 - ctx].runs.load(Relaxed), Relaxed);
    // ORDERING: Release publishes this hart's counters; pairs with the Acquire below.
    FINISHED.fetch_add(1, Release);
    if hartid != 0 {
        loop {
            riscv::asm::wfi();
        }
    }
    // ORDERING: Acquire pairs with each hart's Release increment.
    while FINISHED.load(Acquire) < 2 {
        core::hint::spin_loop();
    }
    // SAFETY: disables hart 0's interrupts (mstatus.MIE) for the report.
    unsafe { core::arch::asm!("csrci mstatus, 8") };
    // ORDERING: Relaxed, interrupts are off now.
    STORM.store(0, Relaxed);
    loop {
        let p = ring::pop(0, ring::SLOTS, 0);
        if p.is_null() {
            break;
        }
        free_block(0, p.cast());
    }
    report()
}

fn report() -> ! {
    let (mut passed, mut failed) = (0u32, 0u32);
    let mut check = |ok: bool, what: &str| {
        if ok {
            passed += 1;
        } else {
            failed += 1;
            println!("firmware[rv32]: FAILED {}", what);
        }
    };
    for (i, c) in CTX.iter().enumerate() {
        // ORDERING: Relaxed, ordered after the writers by FINISHED (and interrupts off).
        let g = |a: &AtomicU32| a.load(Relaxed);
        println!(
            "firmware[rv32]: {:<5} runs {:>6} allocs {:>6} frees {:>6} cross-context frees {:>6} ooms {:>3} corrupt {}",
            NAMES[i],
            g(&c.runs),
            g(&c.allocs),
            g(&c.frees),
            g(&c.cross),
            g(&c.ooms),
            g(&c.corrupt)
        );
        check(g(&c.corrupt) == 0, "corrupt or misaligned blocks");
        check(g(&c.allocs) > 0, "a context never allocated");
        check(g(&c.cross) > 0, "a context never freed another's block");
    }
    // ORDERING: Relaxed, see above.
    println!(
        "firmware[rv32]: timer interrupts that preempted hart 0 inside the allocator: {}",
        CTX[TIMER].preempted.load(Relaxed)
    );
    let o = |i: usize| OVERLAP[i].load(Relaxed);
    println!(
        "firmware[rv32]: overlap: hart 1 was at iteration {} / {} when hart 0 started / finished; hart 0 at {} / {} for hart 1",
        o(0),
        o(1),
        o(2),
        o(3)
    );
    let s = HEAP.stats();
    semihosting::print!("firmware[rv32]: stats: {}", s);
    check(
        s.bytes_in_use == 0,
        "bytes in use after every block was freed",
    );
    check(HEAP.validate().is_ok(), "validate");
    println!("firmware: {} passed, {} failed", passed, failed);
    semihosting::process::exit(if failed == 0 { 0 } else { 1 })
}

#[export_name = "ExceptionHandler"]
fn exception(tf: &riscv_rt::TrapFrame) -> ! {
    let _ = tf;
    let (cause, epc): (usize, usize);
    // SAFETY: reads two CSRs.
    unsafe { core::arch::asm!("csrr {0}, mcause", "csrr {1}, mepc", out(reg) cause, out(reg) epc) };
    println!(
        "firmware[rv32]: EXCEPTION mcause {:#x} mepc {:#x}",
        cause, epc
    );
    println!("firmware: 0 passed, 1 failed");
    semihosting::process::exit(3)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("firmware[rv32]: PANIC {}", info);
    println!("firmware: 0 passed, 1 failed");
    semihosting::process::exit(101)
}
