//! The live magazines' CPU side on Linux x86_64 with glibc: the two restartable
//! sequences, the set-up and the fence (see `percpu.rs` for the design).
//!
//! Each sequence is one `asm!`: a descriptor in `__rseq_cs` (version and flags 0, start,
//! length, abort address), an abort stub in `__rseq_failure` preceded by glibc's
//! signature, then in line: arm (store the descriptor's address in the thread's
//! `rseq_cs`, the last instruction before the start), the body, one committing store as
//! the last instruction of the range, and a disarm store after it (so no pointer into
//! this code outlives the call: unloading a library holding it cannot leave the kernel
//! a stale descriptor). The body reads every id inside the range: `cpu_id` (negative
//! when this thread is not registered: the tunable, valgrind, a raw clone) and the
//! magazine's id, bounds-checked against `MAGS` (less the test-only `excluded`), then
//! the gate. It makes no call and
//! no syscall, and writes no field the kernel owns.
//!
//! Depends on: `sync` (through `percpu`), `class`.

use super::on::{Caches, Control, Magazine, MAGS, MAG_SHIFT};
use super::{Popped, Stored};
use core::arch::asm;
use core::mem::offset_of;
use core::sync::atomic::{AtomicU64, Ordering};

/// glibc's signature for x86 (`RSEQ_SIG`): the 4 bytes before every abort address.
const SIG: u32 = 0x5305_3053;
/// `struct rseq` field offsets: `cpu_id`, `rseq_cs`, `mm_cid`.
const CPU_ID: usize = 4;
const MM_CID: usize = 24;
/// `getauxval` key: the kernel's rseq feature size (Linux 6.3+; 28 or more means
/// `node_id` and `mm_cid` exist).
const AT_RSEQ_FEATURE_SIZE: core::ffi::c_ulong = 27;
/// `membarrier` commands and the x86_64 syscall number.
const MEMBARRIER: usize = 324;
const FENCE_RSEQ: usize = 1 << 7;
const REGISTER_RSEQ: usize = 1 << 8;

/// Where the sequences find the control line and a magazine's fields.
const EXCLUDED_AT: usize = offset_of!(Caches, ctl) + offset_of!(Control, excluded);
const CAPS_AT: usize = offset_of!(Caches, ctl) + offset_of!(Control, caps);
const ARRAYS_AT: usize = offset_of!(Caches, ctl) + offset_of!(Control, arrays);
const GATE_AT: usize = offset_of!(Magazine, gate);
static_assertions::const_assert_eq!(offset_of!(Magazine, count), 0);
static_assertions::const_assert_eq!(offset_of!(Caches, mags), 0);

/// Sequences the kernel aborted (preemption, migration, signal), process-wide: counted
/// by the abort stubs, which run outside every sequence. Not a `sync` word: asm
/// increments it.
#[allow(clippy::disallowed_types)]
static ABORTS: AtomicU64 = AtomicU64::new(0);

/// Test builds (`hooks`): iterations of a busy loop inside every sequence, before its
/// commit, so preemptions and signals land inside sequences.
#[cfg(feature = "hooks")]
#[allow(clippy::disallowed_types)]
static DELAY: AtomicU64 = AtomicU64::new(0);

/// Sequences aborted so far (see `ABORTS`).
pub(crate) fn aborts() -> u64 {
    // ORDERING: Relaxed: a statistic.
    ABORTS.load(Ordering::Relaxed)
}

/// Test builds: sets the busy loop inside every sequence.
#[cfg(feature = "hooks")]
pub(crate) fn set_delay(spins: u64) {
    // ORDERING: Relaxed: a test knob, read inside the sequences.
    DELAY.store(spins, Ordering::Relaxed);
}

/// The thread's `__rseq_offset` (glibc 2.35+), read through a weak reference (null on
/// an older glibc), and whether registration worked (`__rseq_size` non-zero).
fn rseq_area() -> Option<usize> {
    let (offset, size): (usize, u32);
    // SAFETY: reads only glibc's two constants through their GOT slots, after checking
    // that each slot is non-null (the weak symbol is missing otherwise).
    unsafe {
        asm!(
            // Bind both symbols weakly: an older glibc has neither.
            ".weak __rseq_offset",
            ".weak __rseq_size",
            // offset = 0, size = 0: "no rseq" unless both are found
            "xor {offset:e}, {offset:e}",
            "xor {size:e}, {size:e}",
            // p = &__rseq_size (0 if missing)
            "mov {p}, qword ptr [rip + __rseq_size@GOTPCREL]",
            // if p == null: no rseq
            "test {p}, {p}",
            "jz 2f",
            // size = __rseq_size
            "mov {size:e}, dword ptr [{p}]",
            // p = &__rseq_offset
            "mov {p}, qword ptr [rip + __rseq_offset@GOTPCREL]",
            // if p == null: no rseq (size is ignored then)
            "test {p}, {p}",
            "jz 2f",
            // offset = __rseq_offset
            "mov {offset}, qword ptr [{p}]",
            "2:",
            p = out(reg) _,
            offset = out(reg) offset,
            size = out(reg) size,
            options(nostack, readonly),
        );
    }
    (size != 0 && offset != 0).then_some(offset)
}

/// The kernel's rseq feature size, from the auxiliary vector (0 before Linux 6.3).
fn feature_size() -> core::ffi::c_ulong {
    extern "C" {
        // glibc: async-signal-safe, reads the auxiliary vector saved at start-up.
        fn getauxval(kind: core::ffi::c_ulong) -> core::ffi::c_ulong;
    }
    // SAFETY: `getauxval` takes any key and returns 0 for unknown ones.
    unsafe { getauxval(AT_RSEQ_FEATURE_SIZE) }
}

/// `membarrier(cmd, 0, 0)`; whether it succeeded. A raw syscall, so `errno` is
/// untouched (signal handlers rely on that).
fn membarrier(cmd: usize) -> bool {
    let ret: isize;
    // SAFETY: `membarrier` reads no user memory; `syscall` clobbers rcx and r11.
    unsafe {
        asm!(
            // ret = membarrier(cmd, flags = 0, cpu_id = 0)
            "syscall",
            inlateout("rax") MEMBARRIER as isize => ret,
            in("rdi") cmd,
            in("rsi") 0usize,
            in("rdx") 0usize,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

/// Set-up: the id field to index by (`mm_cid` where the kernel has it) and the rseq
/// offset, if this glibc registered an rseq area and `membarrier`'s rseq fence could be
/// registered (without it, parked blocks could not be drained).
pub(super) fn register() -> Option<(u32, usize)> {
    let offset = rseq_area()?;
    if !membarrier(REGISTER_RSEQ) {
        return None;
    }
    let field = if feature_size() >= 28 { MM_CID } else { CPU_ID };
    Some((field as u32, offset))
}

/// Aborts every sequence in flight in this process and orders every committed one
/// before our next load: `membarrier(PRIVATE_EXPEDITED_RSEQ)` (an IPI to each CPU
/// running one of our threads; a thread not running was aborted when it stopped).
pub(super) fn fence(_caches: &Caches) -> bool {
    let ok = membarrier(FENCE_RSEQ);
    // The kernel fenced every CPU; this tells the compiler (Rust's model sees asm
    // stores on other threads only through the syscall).
    core::sync::atomic::fence(Ordering::SeqCst);
    ok
}

/// One restartable sequence on this CPU's magazine for class `$class`, the shape both
/// operations share: the descriptor and abort stub, the arming store, the checks
/// (registration, id in range, gate down), then `$body` with `id` = the magazine, `n`
/// = the class's count and `ret` = 0, then the `$inject` lines (test builds), then the
/// one committing store of `n`, then the disarm. If a check fails, `ret` is `$bypass`;
/// `$body` may leave early (to `4:`) with `ret` set and `n` uncommitted. `$ops` are the
/// body's own operands, `$inject_ops` the injected lines'.
macro_rules! sequence_asm {
    (
        [$($inject:literal),*], [$($inject_ops:tt)*],
        $caches:expr, $class:expr, $field:expr, $bypass:literal,
        [$($body:literal),*], $($ops:tt)*
    ) => {{
        let ret: usize;
        let offset = $caches.ctl.offset.load(crate::sync::Ordering::Relaxed);
        // The kernel aborts the sequence on preemption, migration and signals, so the
        // committing store is its only visible write. The id is bounds-checked inside,
        // against `MAGS` less `excluded`; an entry is written only below the class's
        // cap, which fits its array (`ARRAY_AT`).
        // SAFETY: I8: writes only this CPU's magazine (count, entry) and the thread's
        // `rseq_cs` (ours to write, per the rseq ABI), within the bounds the sequence checks.
        unsafe {
            asm!(
                // The descriptor: version 0, flags 0, start, length, abort address.
                ".pushsection __rseq_cs, \"aw\"",
                ".balign 32",
                "3:",
                ".long 0, 0",
                ".quad 8f, (4f - 8f), 7f",
                ".popsection",
                // The abort stub: the signature (as `ud1`'s displacement), then count
                // the abort and re-arm.
                ".pushsection __rseq_failure, \"ax\"",
                ".byte 0x0f, 0xb9, 0x3d",
                ".long {sig}",
                "7:",
                // ABORTS += 1
                "lock inc qword ptr [rip + {aborts}]",
                // retry from the arming store (the kernel cleared rseq_cs)
                "jmp 2f",
                ".popsection",
                // desc = &descriptor
                "lea {desc}, [rip + 3b]",
                "2:",
                // rseq->rseq_cs = desc: armed (the last instruction before the start)
                "mov qword ptr fs:[{offset} + 8], {desc}",
                "8:",
                // ret = bypass, unless we get further
                "mov {ret:e}, {bypass}",
                // id = rseq->cpu_id; negative: not registered
                "mov {id:e}, dword ptr fs:[{offset} + {cpu_id}]",
                "test {id:e}, {id:e}",
                "js 4f",
                // id = the indexing id (cpu_id or mm_cid)
                "mov {id:e}, dword ptr fs:[{offset} + {field}]",
                // if id + excluded >= MAGS: bypass (64-bit sum of two 32-bit values: no wrap)
                "mov {n:e}, dword ptr [{base} + {excluded}]",
                "add {n}, {id}",
                "cmp {n}, {mags}",
                "jae 4f",
                // id = &mags[id]
                "shl {id:e}, {shift}",
                "add {id}, {base}",
                // if mag.gate != 0: bypass (a drain is on)
                "cmp dword ptr [{id} + {gate}], 0",
                "jne 4f",
                // ret = 0
                "xor {ret:e}, {ret:e}",
                // n = mag.count[class]
                "mov {n:e}, dword ptr [{id} + {class}*4]",
                $($body,)*
                $($inject,)*
                // mag.count[class] = n: COMMIT
                "mov dword ptr [{id} + {class}*4], {n:e}",
                "4:",
                // rseq->rseq_cs = 0: disarmed (outside the range)
                "mov qword ptr fs:[{offset} + 8], 0",
                offset = in(reg) offset,
                base = in(reg) $caches as *const Caches,
                class = in(reg) $class,
                field = in(reg) $field as usize,
                desc = out(reg) _,
                id = out(reg) _,
                n = out(reg) _,
                ret = out(reg) ret,
                bypass = const $bypass,
                sig = const SIG,
                cpu_id = const CPU_ID,
                excluded = const EXCLUDED_AT,
                mags = const MAGS,
                shift = const MAG_SHIFT,
                gate = const GATE_AT,
                arrays = const ARRAYS_AT,
                aborts = sym ABORTS,
                $($ops)*
                $($inject_ops)*
                options(nostack),
            );
        }
        ret
    }};
}

/// `sequence_asm` with nothing injected.
#[cfg(not(feature = "hooks"))]
macro_rules! sequence {
    ($($args:tt)*) => {
        sequence_asm!([], [], $($args)*)
    };
}

/// Test builds: `sequence_asm` with `DELAY` spins before the commit.
#[cfg(feature = "hooks")]
macro_rules! sequence {
    ($($args:tt)*) => {
        sequence_asm!(
            [
                // d = DELAY
                "mov {d}, qword ptr [rip + {delay}]",
                "5:",
                // while d != 0 { d -= 1; pause }
                "test {d}, {d}",
                "jz 6f",
                "dec {d}",
                "pause",
                "jmp 5b",
                "6:"
            ],
            [d = out(reg) _, delay = sym DELAY,],
            $($args)*
        )
    };
}

/// Pops a block of class `class` from this CPU's magazine.
#[inline(always)]
pub(super) fn pop(caches: &Caches, class: usize, field: u32) -> Popped {
    // ret: the block, 0 (empty) or 1 (bypass).
    let ret = sequence!(
        caches,
        class,
        field,
        1,
        [
            // if n == 0: empty (ret = 0)
            "test {n:e}, {n:e}",
            "jz 4f",
            // n -= 1
            "dec {n:e}",
            // ret = arrays[class] + n: the word index of the top entry
            "mov {ret:e}, dword ptr [{base} + {class}*4 + {arrays}]",
            "add {ret}, {n}",
            // ret = mag[ret]: the block
            "mov {ret}, qword ptr [{id} + {ret}*8]"
        ],
    );
    match ret {
        0 => Popped::Empty,
        1 => Popped::Bypass,
        block => Popped::Block(block as *mut u8),
    }
}

/// Parks `block` of class `class` in this CPU's magazine.
#[inline(always)]
pub(super) fn push(caches: &Caches, class: usize, field: u32, block: *mut u8) -> Stored {
    // ret: 1 (stored), 0 (full) or 2 (bypass).
    let ret = sequence!(
        caches,
        class,
        field,
        2,
        [
            // if n >= caps[class]: full (ret = 0)
            "cmp {n:e}, dword ptr [{base} + {class}*4 + {caps}]",
            "jae 4f",
            // ret = arrays[class] + n: the word index of the free entry
            "mov {ret:e}, dword ptr [{base} + {class}*4 + {arrays}]",
            "add {ret}, {n}",
            // mag[ret] = block (unpublished until the commit)
            "mov qword ptr [{id} + {ret}*8], {block}",
            // n += 1; ret = 1: stored
            "inc {n:e}",
            "mov {ret:e}, 1"
        ],
        block = in(reg) block,
        caps = const CAPS_AT,
    );
    match ret {
        1 => Stored::Cached,
        0 => Stored::Full,
        _ => Stored::Bypass,
    }
}
