//! The atomics every other module uses, and nothing else.
//!
//! This is the only file that names `core::sync::atomic` or `loom`. Under `cfg(loom)`
//! the wrappers hold loom's atomics, so model tests explore every interleaving of the
//! real protocol code. With the `hooks` feature (tests only), every operation first
//! calls a process-wide step hook: the reentrancy and stalled-thread tests use it to
//! run a whole allocation, or park the thread, between any two atomic steps — exactly
//! what a signal handler or a preempting scheduler can do.
//!
//! Block memory is reached through [`read_link`] and [`write_link`] only, so the link
//! word of a free block has one access path.
//!
//! Depends on: nothing in the crate. Upholds I2 (every shared change is one RMW on one
//! word: this module offers no multi-word operation).

// This is the one module allowed to name the raw atomic types.
#![allow(clippy::disallowed_types)]

pub(crate) use core::sync::atomic::Ordering;

// The atomics behind the wrappers: `core`'s; `portable-atomic`'s on targets without
// CAS (feature `portable-atomic`); loom's in models.
#[cfg(all(not(loom), not(feature = "portable-atomic")))]
use core::sync::atomic as imp;
#[cfg(loom)]
use loom::sync::atomic as imp;
#[cfg(all(not(loom), feature = "portable-atomic"))]
use portable_atomic as imp;

#[cfg(all(not(target_has_atomic = "32"), not(feature = "portable-atomic")))]
compile_error!(
    "this target has no compare-and-swap: enable sigalloc's `portable-atomic` feature \
     (and choose portable-atomic's `critical-section` feature or its single-core cfg)"
);

/// What kind of step the hook is told about.
#[cfg(feature = "hooks")]
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A load.
    Load,
    /// A store.
    Store,
    /// A read-modify-write (swap, CAS, fetch_*).
    Rmw,
}

#[cfg(feature = "hooks")]
mod hook {
    use super::Step;
    // The hook's own storage is deliberately not a wrapped atomic: reading it must not
    // recurse into itself. A pointer, not an integer, so the call keeps provenance.
    static HOOK: core::sync::atomic::AtomicPtr<()> =
        core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

    /// Installs `f` to run before every atomic step (`None` removes it).
    pub fn set(f: Option<fn(Step)>) {
        let raw = f.map_or(core::ptr::null_mut(), |f| f as *mut ());
        // ORDERING: Release pairs with the Acquire load in `call`, so a hook installed by
        // one thread is fully visible to the threads that call it.
        HOOK.store(raw, core::sync::atomic::Ordering::Release);
    }

    #[inline(always)]
    pub(super) fn call(kind: Step) {
        // ORDERING: pairs with the Release store in `set`.
        let raw = HOOK.load(core::sync::atomic::Ordering::Acquire);
        if !raw.is_null() {
            // SAFETY: the only non-null values stored are `fn(Step)` pointers (see `set`),
            // cast to a data pointer of the same size, with their provenance.
            let f = unsafe { core::mem::transmute::<*mut (), fn(Step)>(raw) };
            f(kind);
        }
    }
}

#[cfg(feature = "hooks")]
#[doc(hidden)]
pub use hook::set as set_step_hook;

/// Loom only: when set, taking a chunk from an active slot *peeks* instead of swapping,
/// so two threads can own one chunk. It breaks I1 on purpose, for the negative model
/// that proves the loom models can fail.
#[cfg(loom)]
#[allow(clippy::disallowed_types)]
static OWNERSHIP_BROKEN: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Loom only: turns the deliberate ownership bug on or off (see `OWNERSHIP_BROKEN`).
#[cfg(loom)]
#[doc(hidden)]
pub fn break_ownership(on: bool) {
    OWNERSHIP_BROKEN.store(on, core::sync::atomic::Ordering::SeqCst);
}

#[cfg(loom)]
pub(crate) fn ownership_broken() -> bool {
    OWNERSHIP_BROKEN.load(core::sync::atomic::Ordering::SeqCst)
}

#[inline(always)]
fn step(_kind: u8) {
    #[cfg(feature = "hooks")]
    hook::call(match _kind {
        0 => Step::Load,
        1 => Step::Store,
        _ => Step::Rmw,
    });
}

macro_rules! atomic_word {
    ($name:ident, $inner:ident, $prim:ty) => {
        /// A shared word; every access goes through the step hook in test builds.
        #[repr(transparent)]
        pub(crate) struct $name(imp::$inner);

        // The same API for every word type, as `core`'s: not every type uses every
        // method, whichever features are on.
        #[allow(dead_code)]
        impl $name {
            #[cfg(not(loom))]
            pub(crate) const fn new(v: $prim) -> Self {
                Self(imp::$inner::new(v))
            }
            #[cfg(loom)]
            pub(crate) fn new(v: $prim) -> Self {
                Self(imp::$inner::new(v))
            }
            #[inline(always)]
            pub(crate) fn load(&self, o: Ordering) -> $prim {
                step(0);
                self.0.load(o)
            }
            #[inline(always)]
            pub(crate) fn store(&self, v: $prim, o: Ordering) {
                step(1);
                self.0.store(v, o)
            }
            #[inline(always)]
            pub(crate) fn swap(&self, v: $prim, o: Ordering) -> $prim {
                step(2);
                self.0.swap(v, o)
            }
            #[inline(always)]
            pub(crate) fn compare_exchange(
                &self,
                current: $prim,
                new: $prim,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$prim, $prim> {
                step(2);
                self.0.compare_exchange(current, new, success, failure)
            }
            #[inline(always)]
            pub(crate) fn fetch_or(&self, v: $prim, o: Ordering) -> $prim {
                step(2);
                self.0.fetch_or(v, o)
            }
            #[inline(always)]
            pub(crate) fn fetch_and(&self, v: $prim, o: Ordering) -> $prim {
                step(2);
                self.0.fetch_and(v, o)
            }
            #[inline(always)]
            pub(crate) fn fetch_add(&self, v: $prim, o: Ordering) -> $prim {
                step(2);
                self.0.fetch_add(v, o)
            }
            #[inline(always)]
            pub(crate) fn fetch_sub(&self, v: $prim, o: Ordering) -> $prim {
                step(2);
                self.0.fetch_sub(v, o)
            }
            #[inline(always)]
            pub(crate) fn fetch_max(&self, v: $prim, o: Ordering) -> $prim {
                step(2);
                self.0.fetch_max(v, o)
            }
        }
    };
}

atomic_word!(AtomicU32, AtomicU32, u32);

impl AtomicU32 {
    /// Takes the word's value, leaving 0: how a thread becomes a slot's chunk's only
    /// owner. (Under loom, `break_ownership` turns this into a peek.)
    #[inline(always)]
    pub(crate) fn take(&self, o: Ordering) -> u32 {
        #[cfg(loom)]
        if ownership_broken() {
            return self.load(o);
        }
        self.swap(0, o)
    }
}
atomic_word!(AtomicUsize, AtomicUsize, usize);

/// A shared pointer word (a region's base, a huge block's address): kept as a pointer
/// so whoever loads it keeps the provenance of the memory it names.
#[repr(transparent)]
pub(crate) struct AtomicPtr(imp::AtomicPtr<u8>);

// Like the word types: `core`'s API, not every method used in every build.
#[allow(dead_code)]
impl AtomicPtr {
    #[cfg(not(loom))]
    pub(crate) const fn null() -> Self {
        AtomicPtr(imp::AtomicPtr::new(core::ptr::null_mut()))
    }
    #[cfg(loom)]
    pub(crate) fn null() -> Self {
        AtomicPtr(imp::AtomicPtr::new(core::ptr::null_mut()))
    }
    #[inline(always)]
    pub(crate) fn load(&self, o: Ordering) -> *mut u8 {
        step(0);
        self.0.load(o)
    }
    #[inline(always)]
    pub(crate) fn store(&self, v: *mut u8, o: Ordering) {
        step(1);
        self.0.store(v, o)
    }
    /// Takes the pointer, leaving null.
    #[inline(always)]
    pub(crate) fn swap_null(&self, o: Ordering) -> *mut u8 {
        step(2);
        self.0.swap(core::ptr::null_mut(), o)
    }
    #[inline(always)]
    pub(crate) fn compare_exchange(
        &self,
        current: *mut u8,
        new: *mut u8,
        success: Ordering,
        failure: Ordering,
    ) -> Result<*mut u8, *mut u8> {
        step(2);
        self.0.compare_exchange(current, new, success, failure)
    }
}

/// A word whose value is only a hint or a statistic: a search cursor, a "region full"
/// flag, a counter. Any value it holds is safe for every reader (each use says why),
/// so it takes part in no protocol: it is `core`'s atomic even under loom, whose models
/// then explore only the words the protocols rest on, and the step hook does not see
/// it. All accesses are Relaxed.
#[repr(transparent)]
pub(crate) struct Hint(HintWord);

/// What a [`Hint`] is made of: `core`'s word, or `portable-atomic`'s on targets without
/// CAS (never loom's).
#[cfg(not(feature = "portable-atomic"))]
type HintWord = core::sync::atomic::AtomicUsize;
#[cfg(feature = "portable-atomic")]
type HintWord = portable_atomic::AtomicUsize;

impl Hint {
    pub(crate) const fn new(v: usize) -> Self {
        Hint(HintWord::new(v))
    }
    #[inline(always)]
    pub(crate) fn get(&self) -> usize {
        // ORDERING: Relaxed: a hint (see the type's docs).
        self.0.load(Ordering::Relaxed)
    }
    #[inline(always)]
    pub(crate) fn set(&self, v: usize) {
        // ORDERING: Relaxed: a hint.
        self.0.store(v, Ordering::Relaxed)
    }
    #[inline(always)]
    pub(crate) fn add(&self, v: usize) {
        // ORDERING: Relaxed: a statistic.
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    #[inline(always)]
    pub(crate) fn sub(&self, v: usize) {
        // ORDERING: Relaxed: a statistic.
        self.0.fetch_sub(v, Ordering::Relaxed);
    }
    #[inline(always)]
    pub(crate) fn raise_to(&self, v: usize) {
        // ORDERING: Relaxed: a statistic.
        self.0.fetch_max(v, Ordering::Relaxed);
    }
}

/// A cell holding an optional function pointer (the error hook), kept as a pointer so
/// that calling it keeps provenance. It takes part in no protocol, so it is a plain
/// `core` atomic even under loom, and a `static` can hold it.
#[cfg(feature = "checked")]
pub(crate) struct FnCell(core::sync::atomic::AtomicPtr<()>);

#[cfg(feature = "checked")]
impl FnCell {
    pub(crate) const fn new() -> Self {
        FnCell(core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()))
    }
    /// Stores a function pointer cast to `*mut ()` (or null).
    pub(crate) fn set(&self, f: *mut ()) {
        // ORDERING: Release pairs with the Acquire in `get`: the hook's code and data
        // are visible to whoever calls it.
        self.0.store(f, Ordering::Release)
    }
    /// The stored pointer, or null.
    pub(crate) fn get(&self) -> *mut () {
        // ORDERING: pairs with the Release in `set`.
        self.0.load(Ordering::Acquire)
    }
}

/// A small number (below 256) that differs between threads running at once and stays
/// put while one runs, without TLS: which active slot and partial list to use first.
///
/// On Linux x86_64 with glibc 2.35 or later it is the CPU the thread runs on, read from
/// the thread's rseq area (two loads): two threads running at once are on two CPUs, so
/// they never share a slot, wherever their stacks lie. Elsewhere, and whenever rseq is
/// not registered, it is a hash of the stack address (threads' stacks lie megabytes
/// apart). Either way a signal handler gets the number of the code it interrupted,
/// finds that slot taken and moves on; a thread that migrates between reading it and
/// using it only meets a little more contention.
///
/// Under loom every thread gets 0: all threads then share one active slot and one
/// partial list, the most contended case, which is what the models should explore.
#[inline(always)]
pub(crate) fn thread_hint() -> usize {
    #[cfg(loom)]
    {
        0
    }
    #[cfg(not(loom))]
    {
        #[cfg(all(
            target_os = "linux",
            target_arch = "x86_64",
            target_env = "gnu",
            not(miri)
        ))]
        if let Some(cpu) = rseq_cpu() {
            return cpu % 256;
        }
        const GOLDEN: usize = 0x9E37_79B9_7F4A_7C15_u64 as usize;
        let probe = 0u8;
        let sp = core::ptr::addr_of!(probe).addr();
        // The top bits of the product mix every bit of the stack address above 64 KiB.
        (sp >> 16).wrapping_mul(GOLDEN) >> (usize::BITS - 8)
    }
}

/// The CPU this thread runs on, from the `cpu_id` field of its rseq area, or `None` if
/// this glibc has no rseq area (before 2.35: the symbol is weak and reads as null) or
/// registration is off (`cpu_id` is -1 or -2: `glibc.pthread.rseq=0`, valgrind).
#[cfg(all(
    target_os = "linux",
    target_arch = "x86_64",
    target_env = "gnu",
    not(loom),
    not(miri)
))]
#[inline(always)]
fn rseq_cpu() -> Option<usize> {
    let cpu: i32;
    // The asm only reads: the GOT slot of `__rseq_offset` (null when the weak symbol is
    // missing, then nothing else is read), the variable itself (glibc's, fixed after
    // start-up), and the `cpu_id` field of this thread's rseq area, at that offset from
    // the thread pointer (`fs`) in every thread's TCB.
    // SAFETY: reads of memory glibc keeps valid for the thread's life (above).
    unsafe {
        core::arch::asm!(
            // `__rseq_offset` may be missing (an older glibc): bind it weakly.
            ".weak __rseq_offset",
            // off = &__rseq_offset, from the GOT (0 if the symbol is missing)
            "mov {off}, qword ptr [rip + __rseq_offset@GOTPCREL]",
            // if off == null: no rseq area in this libc
            "test {off}, {off}",
            "jz 2f",
            // off = __rseq_offset (bytes from the thread pointer to struct rseq)
            "mov {off}, qword ptr [{off}]",
            // cpu = ((struct rseq *)(tp + off))->cpu_id (offset 4; -1/-2 if unset)
            "mov {cpu:e}, dword ptr fs:[{off} + 4]",
            "jmp 3f",
            "2:",
            // cpu = -1: no rseq
            "mov {cpu:e}, -1",
            "3:",
            off = out(reg) _,
            cpu = out(reg) cpu,
            options(nostack, readonly),
        );
    }
    usize::try_from(cpu).ok()
}

/// The per-CPU caches' model (miri, loom): lets other threads run while a drainer
/// waits for the model's stand-in sequences to leave (see `percpu_model.rs`).
#[cfg(all(feature = "percpu", any(miri, loom)))]
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

/// Runs the loom model `f` over every interleaving and prints `loom model <name>: <N>
/// interleavings` (the CI gate sums those lines). For the models kept beside their code.
#[cfg(all(test, loom))]
pub(crate) fn check_model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    // The harness's own counter, not allocator state.
    #[allow(clippy::disallowed_types)]
    let runs = std::sync::Arc::new(core::sync::atomic::AtomicUsize::new(0));
    let counter = runs.clone();
    loom::model(move || {
        // ORDERING: Relaxed: a counter read after `model` returns, on this thread.
        counter.fetch_add(1, Ordering::Relaxed);
        f();
    });
    // ORDERING: Relaxed: as above.
    let n = runs.load(Ordering::Relaxed);
    std::println!("\nloom model {name}: {n} interleavings");
}

/// Reads the link word of a free block: the index of the next free block.
///
/// # Safety
/// - `block` points to a block of at least 4 bytes, aligned to 4, that the caller owns:
///   it is on the caller's private list, or the caller is freeing it (I3: never read a
///   block another thread may own).
#[inline(always)]
pub(crate) unsafe fn read_link(block: *mut u8) -> u32 {
    // SAFETY: the caller owns the block (see above), so no other access races this read.
    unsafe { block.cast::<u32>().read() }
}

/// Writes the link word of a block the caller owns.
///
/// # Safety
/// - as for [`read_link`].
#[inline(always)]
pub(crate) unsafe fn write_link(block: *mut u8, next: u32) {
    // SAFETY: the caller owns the block, so no other access races this write.
    unsafe { block.cast::<u32>().write(next) }
}

/// Reads the batch link of a free block parked in a per-CPU transfer batch: the next
/// block's address (null at the end). A pointer, not an index: a batch's blocks may lie
/// in different chunks and regions.
///
/// # Safety
/// - `block` is a free block of at least 8 bytes, aligned to 8, in a batch the caller
///   owns (it built it, or took it out of a transfer slot).
#[inline(always)]
pub(crate) unsafe fn read_next(block: *mut u8) -> *mut u8 {
    // SAFETY: the caller owns the batch, so no other access races this read.
    unsafe { block.cast::<*mut u8>().read() }
}

/// Writes the batch link of a block the caller owns (see [`read_next`]).
///
/// # Safety
/// - as for [`read_next`].
#[inline(always)]
pub(crate) unsafe fn write_next(block: *mut u8, next: *mut u8) {
    // SAFETY: the caller owns the block, so no other access races this write.
    unsafe { block.cast::<*mut u8>().write(next) }
}

/// The atomic type of a word inside a block (checked mode's keys, `percpu`): the
/// platform's, or loom's stand-in's `core` one, since a loom atomic cannot live at an
/// address the model did not create (no loom model runs checked mode).
#[cfg(all(feature = "checked", feature = "percpu", not(loom)))]
type BlockWord = imp::AtomicUsize;
#[cfg(all(feature = "checked", feature = "percpu", loom))]
type BlockWord = core::sync::atomic::AtomicUsize;

/// The word at `word` as an atomic.
///
/// # Safety
/// - `word` is aligned and lies in a block the allocator holds or is being handed; no
///   plain access races an atomic one (the program touches the word only while it owns
///   the block, ordered by the hand-out and the free).
#[cfg(all(feature = "checked", feature = "percpu"))]
#[allow(dead_code)] // where the caches are not built
#[inline(always)]
unsafe fn block_word<'a>(word: *mut usize) -> &'a BlockWord {
    // SAFETY: the caller's contract; the reference lives only for the caller's call.
    unsafe { BlockWord::from_ptr(word) }
}

/// Swaps `v` into the word at `word` of a block (see [`block_word`]).
///
/// # Safety
/// - as for [`block_word`].
#[cfg(all(feature = "checked", feature = "percpu"))]
#[allow(dead_code)] // where the caches are not built
#[inline(always)]
pub(crate) unsafe fn swap_block_word(word: *mut usize, v: usize, o: Ordering) -> usize {
    step(2);
    // SAFETY: the caller's contract.
    unsafe { block_word(word) }.swap(v, o)
}

/// Stores `v` into the word at `word` of a block (see [`block_word`]).
///
/// # Safety
/// - as for [`block_word`].
#[cfg(all(feature = "checked", feature = "percpu"))]
#[allow(dead_code)] // where the caches are not built
#[inline(always)]
pub(crate) unsafe fn store_block_word(word: *mut usize, v: usize, o: Ordering) {
    step(1);
    // SAFETY: the caller's contract.
    unsafe { block_word(word) }.store(v, o)
}

/// Calls `f` on every block of a batch linked by [`write_next`] from `head` (to null),
/// reading each block's link before `f` gets it (`f` may hand the block out).
///
/// # Safety
/// - the caller owns the whole batch (as for [`read_next`]).
#[inline(always)]
pub(crate) unsafe fn for_each_linked(mut head: *mut u8, mut f: impl FnMut(*mut u8)) {
    while !head.is_null() {
        // SAFETY: the caller owns the batch, and `head` is still in it: its link is
        // read before `f` gets it.
        let next = unsafe { read_next(head) };
        f(head);
        head = next;
    }
}
