//! The allocators under test, each reached through [`Alloc`] rather than installed as the
//! global allocator, so that one binary can drive them all on identical request streams
//! while its own bookkeeping (argument parsing, output) stays on glibc.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;
use std::sync::Once;

use sigalloc::SigAlloc;
use spinning_top::RawSpinlock;
use talc::source::Claim;
use talc::TalcLock;

/// The small surface every workload needs: C-style alloc/free with the size passed back.
pub trait Alloc: Sync {
    /// A block of `size` bytes aligned to `align`, or null (counted as a failure).
    fn alloc(&self, size: usize, align: usize) -> *mut u8;

    /// Frees a block.
    ///
    /// # Safety
    /// `ptr` came from `alloc(size, align)` on this allocator and is not used afterwards.
    unsafe fn dealloc(&self, ptr: *mut u8, size: usize, align: usize);
}

impl<A: GlobalAlloc + Sync> Alloc for A {
    #[inline]
    fn alloc(&self, size: usize, align: usize) -> *mut u8 {
        match Layout::from_size_align(size, align) {
            // SAFETY: the layout has a non-zero size, as `GlobalAlloc::alloc` requires.
            Ok(layout) if size > 0 => unsafe { GlobalAlloc::alloc(self, layout) },
            _ => ptr::null_mut(),
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, size: usize, align: usize) {
        // SAFETY: our caller passes a block from `alloc(size, align)`, whose layout was valid.
        unsafe { GlobalAlloc::dealloc(self, ptr, Layout::from_size_align_unchecked(size, align)) }
    }
}

/// Every allocator, in table order. glibc and AO_malloc come first: they are the baselines.
/// `sigalloc` runs with its per-CPU caches (feature `percpu`); `sigalloc-nocache` is the
/// same allocator with `disable_percpu()` called before the first request, so each table
/// shows what the caches buy.
pub const NAMES: [&str; 8] = [
    "glibc",
    "AO_malloc",
    "sigalloc",
    "sigalloc-nocache",
    "mimalloc",
    "talc",
    "linked_list",
    "buddy",
];

/// Whether `name` manages a fixed heap (so heap efficiency means something for it).
/// glibc and mimalloc grow without bound.
pub fn is_bounded(name: &str) -> bool {
    !matches!(name, "glibc" | "mimalloc")
}

/// Which arenas a run uses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HeapSize {
    /// 2 MiB arenas: sigalloc's default and the size of AO_malloc's static heap; used for
    /// single-thread throughput, heap efficiency and the signal storm.
    Small,
    /// 32 MiB arenas: room for 8 threads' working sets and for a producer running ahead
    /// of its consumer.
    Big,
}

/// Bytes in a [`HeapSize::Small`] heap.
pub const SMALL: usize = 2 << 20;
/// Bytes in a [`HeapSize::Big`] heap.
pub const BIG: usize = 32 << 20;

/// A page-aligned static byte array handed to an arena allocator.
#[repr(C, align(4096))]
struct Arena<const N: usize>(UnsafeCell<[u8; N]>);

// SAFETY: the bytes are only ever reached through the one allocator that owns the arena.
unsafe impl<const N: usize> Sync for Arena<N> {}

impl<const N: usize> Arena<N> {
    const fn new() -> Self {
        Arena(UnsafeCell::new([0; N]))
    }

    fn base(&self) -> *mut u8 {
        self.0.get().cast()
    }
}

/// One set of arena allocators, all with `$bytes` of heap, so every arena peer of a
/// comparison gets the same room as sigalloc.
macro_rules! arena_set {
    ($module:ident, $bytes:expr) => {
        mod $module {
            use super::*;

            const BYTES: usize = $bytes;

            static SIGALLOC: SigAlloc<BYTES> = SigAlloc::new();

            static TALC_ARENA: Arena<BYTES> = Arena::new();
            // talc behind the spin lock its docs recommend (spinning_top), claiming the
            // arena on first use.
            static TALC: TalcLock<RawSpinlock, Claim> =
                // SAFETY: the arena is static, used by nothing else, and valid for BYTES.
                TalcLock::new(unsafe { Claim::new(TALC_ARENA.0.get().cast(), BYTES) });

            static LLA_ARENA: Arena<BYTES> = Arena::new();
            static LLA: linked_list_allocator::LockedHeap =
                linked_list_allocator::LockedHeap::empty();
            static LLA_INIT: Once = Once::new();

            static BUDDY_ARENA: Arena<BYTES> = Arena::new();
            static BUDDY: buddy_system_allocator::LockedHeap<32> =
                buddy_system_allocator::LockedHeap::empty();
            static BUDDY_INIT: Once = Once::new();

            /// Lets this set's sigalloc grow by mapping memory (process-wide, for good).
            pub(super) fn enable_sigalloc_mmap() {
                SIGALLOC.enable_mmap();
            }

            /// Whether this set's sigalloc has its per-CPU caches set up and in use.
            pub(super) fn sigalloc_percpu_active() -> bool {
                SIGALLOC.percpu_active()
            }

            pub(super) fn get(name: &str) -> Option<&'static dyn Alloc> {
                Some(match name {
                    "sigalloc" => &SIGALLOC,
                    "sigalloc-nocache" => {
                        // The run-time kill switch, before any request: every call of
                        // this process takes the shared path.
                        SIGALLOC.disable_percpu();
                        &SIGALLOC
                    }
                    "talc" => &TALC,
                    "linked_list" => {
                        // SAFETY: the arena is static, page-aligned, used by nothing else, and
                        // `Once` makes this the heap's only initialisation.
                        LLA_INIT.call_once(|| unsafe { LLA.lock().init(LLA_ARENA.base(), BYTES) });
                        &LLA
                    }
                    "buddy" => {
                        // SAFETY: as above: a static arena given to this heap exactly once.
                        BUDDY_INIT.call_once(|| unsafe {
                            BUDDY.lock().init(BUDDY_ARENA.base() as usize, BYTES)
                        });
                        &BUDDY
                    }
                    _ => return None,
                })
            }
        }
    };
}

arena_set!(small, SMALL);
arena_set!(big, BIG);

/// AO_malloc from libatomic_ops_gpl (linked by `build.rs` when installed).
#[cfg(have_ao)]
mod ao {
    use std::ffi::c_void;

    extern "C" {
        fn AO_malloc(size: usize) -> *mut c_void;
        fn AO_free(ptr: *mut c_void);
        fn AO_malloc_enable_mmap();
    }

    /// AO_malloc returns 16-byte-aligned blocks (it keeps a one-word header before them).
    const ALIGN: usize = 16;

    pub(super) struct AoMalloc;

    // SAFETY: AO_malloc returns null or a fresh block of at least `size` bytes aligned to
    // ALIGN, and we refuse stricter alignments.
    unsafe impl std::alloc::GlobalAlloc for AoMalloc {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            if layout.align() > ALIGN {
                return std::ptr::null_mut();
            }
            // SAFETY: AO_malloc may be called with any size from any thread.
            unsafe { AO_malloc(layout.size()).cast() }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
            // SAFETY: `ptr` came from AO_malloc (GlobalAlloc's contract).
            unsafe { AO_free(ptr.cast()) }
        }
    }

    /// Lets AO_malloc grow its heap with mmap (process-wide, and it cannot be undone).
    pub(super) fn enable_mmap() {
        // SAFETY: only sets a flag inside libatomic_ops.
        unsafe { AO_malloc_enable_mmap() }
    }
}

/// Whether AO_malloc was found at build time.
pub const HAVE_AO: bool = cfg!(have_ao);

/// Lets AO_malloc grow its heap with mmap (process-wide, and it cannot be undone): done
/// for the throughput workloads, not for heap efficiency or the storm.
pub fn enable_ao_mmap() {
    #[cfg(have_ao)]
    ao::enable_mmap();
}

/// Lets the sigalloc of the `heap`-sized arena set grow by mapping memory from the OS
/// (its `enable_mmap`; process-wide, and it cannot be undone): done by the whole-program
/// workloads (tables 7-10), whose live data outgrows any fixed heap.
pub fn enable_sigalloc_mmap(heap: HeapSize) {
    match heap {
        HeapSize::Small => small::enable_sigalloc_mmap(),
        HeapSize::Big => big::enable_sigalloc_mmap(),
    }
}

/// Whether `name` is one of sigalloc's variants (caches on or off).
pub fn is_sigalloc(name: &str) -> bool {
    matches!(name, "sigalloc" | "sigalloc-nocache")
}

/// What the child of a sigalloc variant reports about the per-CPU caches: whether the
/// `heap`-sized set's caches are in use, and the process-wide count of restartable
/// sequences the kernel aborted.
pub fn sigalloc_caches(heap: HeapSize) -> (bool, u64) {
    let active = match heap {
        HeapSize::Small => small::sigalloc_percpu_active(),
        HeapSize::Big => big::sigalloc_percpu_active(),
    };
    (active, sigalloc::percpu_aborts())
}

/// The allocator called `name` with `heap`-sized arenas, or `None` if it is unknown or
/// (AO_malloc) not installed. Call once per process: arena heaps are initialised here.
pub fn get(name: &str, heap: HeapSize) -> Option<&'static dyn Alloc> {
    match name {
        "glibc" => Some(&System),
        "mimalloc" => Some(&mimalloc::MiMalloc),
        #[cfg(have_ao)]
        "AO_malloc" => Some(&ao::AoMalloc),
        _ => match heap {
            HeapSize::Small => small::get(name),
            HeapSize::Big => big::get(name),
        },
    }
}
