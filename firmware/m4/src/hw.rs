//! The few registers of QEMU's `mps2-an386` the harness touches, without a PAC.
//!
//! Addresses from QEMU's `hw/arm/mps2.c` and the ARMv7-M architecture manual. The CMSDK
//! timers and the watchdog count at SYSCLK (25 MHz); under `-icount shift=0` one guest
//! instruction is 1 ns, so one tick is 40 instructions.

use core::ptr::{read_volatile, write_volatile};

/// Guest instructions per 25 MHz tick under `-icount shift=0`.
pub const INSNS_PER_TICK: u32 = 40;

/// CMSDK APB timer 0: the mid-priority interrupt (IRQ 8).
pub const TIMER0: usize = 0x4000_0000;
/// CMSDK APB timer 1: free-running, never interrupts; the harness's clock.
pub const TIMER1: usize = 0x4000_1000;
/// CMSDK APB watchdog: its interrupt is wired to NMI on the MPS2 boards.
pub const WATCHDOG: usize = 0x4000_8000;
/// The IRQ number of timer 0.
pub const TIMER0_IRQ: u32 = 8;

const NVIC_ISER0: usize = 0xE000_E100;
const NVIC_IPR: usize = 0xE000_E400;
const SCB_ICSR: usize = 0xE000_ED04;
const SCB_SHPR3: usize = 0xE000_ED20;
const SYST_CSR: usize = 0xE000_E010;
const SYST_RVR: usize = 0xE000_E014;
const SYST_CVR: usize = 0xE000_E018;

/// Priorities (upper bits count on the M4's 3-bit NVIC): lower value preempts higher.
pub const PRIO_PENDSV: u8 = 0xE0;
/// Timer 0.
pub const PRIO_TIMER0: u8 = 0x80;
/// SysTick, above timer 0.
pub const PRIO_SYSTICK: u8 = 0x40;

fn rd(addr: usize) -> u32 {
    // SAFETY: every caller passes one of the device registers above, which QEMU maps for
    // the whole run; a volatile word read has no other effect than the device's.
    unsafe { read_volatile(addr as *const u32) }
}

fn wr(addr: usize, v: u32) {
    // SAFETY: as in `rd`: a mapped device register, written as a volatile word.
    unsafe { write_volatile(addr as *mut u32, v) }
}

/// Sets the exception priorities and enables timer 0's IRQ line in the NVIC.
pub fn setup_priorities() {
    let shpr3 = rd(SCB_SHPR3) & 0x0000_FFFF;
    wr(
        SCB_SHPR3,
        shpr3 | (u32::from(PRIO_SYSTICK) << 24) | (u32::from(PRIO_PENDSV) << 16),
    );
    let ipr = NVIC_IPR + TIMER0_IRQ as usize;
    // SAFETY: the NVIC priority registers are byte-addressable; this is timer 0's byte.
    unsafe { write_volatile(ipr as *mut u8, PRIO_TIMER0) };
    wr(NVIC_ISER0, 1 << TIMER0_IRQ);
}

/// Starts the free-running clock (timer 1, counting down from `u32::MAX`, no IRQ).
pub fn clock_start() {
    wr(TIMER1, 0);
    wr(TIMER1 + 8, u32::MAX);
    wr(TIMER1, 1);
}

/// Ticks since `clock_start` (wraps after 171 s of guest time).
#[inline(always)]
pub fn clock() -> u32 {
    u32::MAX - rd(TIMER1 + 4)
}

/// Timer 0 fires every `reload + 1` ticks (`None`: stopped).
pub fn timer0(reload: Option<u32>) {
    match reload {
        Some(r) => {
            wr(TIMER0, 0);
            wr(TIMER0 + 0xC, 1);
            wr(TIMER0 + 8, r);
            wr(TIMER0, 1 | 8);
        }
        None => wr(TIMER0, 0),
    }
}

/// Acknowledges timer 0's interrupt.
pub fn timer0_ack() {
    wr(TIMER0 + 0xC, 1);
}

/// SysTick fires every `reload + 1` core-clock ticks (`None`: stopped).
pub fn systick(reload: Option<u32>) {
    match reload {
        Some(r) => {
            wr(SYST_CSR, 0);
            wr(SYST_RVR, r);
            wr(SYST_CVR, 0);
            wr(SYST_CSR, 0b111);
        }
        None => wr(SYST_CSR, 0),
    }
}

/// Core-clock ticks since SysTick's counter reached 0 (when it raised its interrupt):
/// the interrupt latency when read first thing in the handler. The counter reads 0 for
/// the tick it fires on, then `reload`, `reload - 1`, ...
#[inline(always)]
pub fn systick_elapsed() -> u32 {
    let reload = rd(SYST_RVR);
    (reload + 1 - rd(SYST_CVR)) % (reload + 1)
}

/// The watchdog raises NMI every `load` ticks (`None`: stopped).
pub fn watchdog(load: Option<u32>) {
    wr(WATCHDOG + 0xC00, 0x1ACC_E551);
    match load {
        Some(l) => {
            wr(WATCHDOG + 8, 0);
            wr(WATCHDOG, l);
            wr(WATCHDOG + 0xC, 1);
            wr(WATCHDOG + 8, 1);
        }
        None => {
            wr(WATCHDOG + 8, 0);
            wr(WATCHDOG + 0xC, 1);
        }
    }
}

/// Acknowledges the watchdog's interrupt (which also reloads its counter).
pub fn watchdog_ack() {
    wr(WATCHDOG + 0xC00, 0x1ACC_E551);
    wr(WATCHDOG + 0xC, 1);
}

/// Is SysTick pending again (its handler overran its period)?
pub fn systick_pending() -> bool {
    rd(SCB_ICSR) & (1 << 26) != 0
}

/// Pends PendSV: it runs once nothing of higher priority is active.
pub fn pend_pendsv() {
    wr(SCB_ICSR, 1 << 28);
}
