#![doc = include_str!("../README.md")]
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

#[cfg(any(test, loom))]
extern crate std;

mod addrmap;
mod allocator_api;
mod bitmap;
mod block;
mod chunk;
mod class;
mod heap;
mod inspect;
mod mapped; // feature `mmap`
mod os; // feature `mmap`
mod percpu; // feature `percpu`
mod region;
mod report;
mod source;
mod stats;
mod sync;

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ptr;

use block::{Block, Memory};
use heap::{Got, Heap, Unparked};
use region::{Region, Regions, Registry};
use source::Source;

#[cfg(feature = "mmap")]
pub use mapped::{HUGE_THRESHOLD, MIN_REGION};
pub use region::{ClaimError, MAX_REGIONS};
pub use report::ErrorKind;
pub use stats::{ClassStats, Json, Stats, CLASS_COUNT};
#[cfg(loom)]
#[doc(hidden)]
pub use sync::break_ownership;
#[cfg(feature = "hooks")]
#[doc(hidden)]
pub use sync::{set_step_hook, Step};

/// Per-CPU caches per allocator (feature `percpu`; 0 where they are not built).
/// Threads on CPUs (or `mm_cid`s) from this number up take the shared path.
pub const PERCPU_CACHES: usize = percpu::MAGS;

/// Tests: restartable sequences aborted so far, process-wide (0 without live caches).
#[doc(hidden)]
pub fn percpu_aborts() -> u64 {
    percpu::aborts()
}

/// Tests (`hooks`): a busy loop of `spins` iterations inside every per-CPU cache
/// sequence, so that preemptions and signals land inside them.
#[cfg(feature = "hooks")]
#[doc(hidden)]
pub fn set_percpu_delay(spins: u64) {
    percpu::set_delay(spins);
}

/// The default heap: 2 MiB, like AO_malloc's.
pub const DEFAULT_HEAP: usize = 2 << 20;
/// Memory is managed in chunks of this many bytes, aligned to their size.
pub const CHUNK_SIZE: usize = class::CHUNK;
/// The largest alignment honoured; a larger one gets null.
pub const MAX_ALIGN: usize = class::MAX_ALIGN;
/// The largest request served from a size class (5 KiB); larger ones take whole chunks,
/// and so do those that a whole chunk serves as cheaply as a class (3585..4096 B).
pub const MAX_SMALL: usize = class::MAX_SMALL;

static_assertions::const_assert_eq!(stats::CLASS_COUNT, class::NCLASSES);

/// The heap's bytes, aligned so that chunk `i` starts at `i * CHUNK_SIZE`.
#[repr(C, align(4096))]
struct Arena<const N: usize>(UnsafeCell<[u8; N]>);
static_assertions::const_assert_eq!(core::mem::align_of::<Arena<0>>(), class::CHUNK);

/// A lock-free, async-signal-safe allocator over a `HEAP`-byte heap held inline.
///
/// Built by a `const fn` and all zero, so a `static` needs no start-up call and sits in
/// `.bss`. Every method may be called from any thread and from a signal handler that
/// interrupted any other call (see the crate docs for the guarantees).
#[repr(C)]
pub struct SigAlloc<const HEAP: usize = DEFAULT_HEAP> {
    arena: Arena<HEAP>,
    heap: Heap,
    /// Claimed and mapped regions.
    registry: Registry,
    /// Where more memory comes from (`source.rs`).
    source: block::Active,
}

// SAFETY: all shared state is atomics (I2); the arena's bytes are handed out to one
// owner at a time (I1), and the side tables inside it are accessed only as atomics.
unsafe impl<const HEAP: usize> Sync for SigAlloc<HEAP> {}

impl<const HEAP: usize> SigAlloc<HEAP> {
    /// An allocator with an empty heap. `HEAP` must leave room for at least one chunk
    /// beside the side table (checked at compile time).
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        const {
            assert!(
                region::meta_chunks(HEAP / class::CHUNK) < HEAP / class::CHUNK,
                "HEAP is too small: it must hold its side table and at least one chunk"
            )
        };
        SigAlloc {
            arena: Arena(UnsafeCell::new([0; HEAP])),
            heap: Heap::new(),
            registry: Registry::new(),
            source: block::Active::new(),
        }
    }

    /// An allocator with an empty heap (loom: the side table is written explicitly).
    #[cfg(loom)]
    pub fn new() -> Self {
        let alloc = SigAlloc {
            arena: Arena(UnsafeCell::new([0; HEAP])),
            heap: Heap::new(),
            registry: Registry::new(),
            source: block::Active::new(),
        };
        // SAFETY: the arena is ours alone; loom atomics are plain handles that move with
        // the bytes holding them.
        unsafe { alloc.memory().regions.home().init() };
        alloc
    }

    /// Every region (the inline heap first) and the memory source.
    #[inline(always)]
    fn memory(&self) -> Memory<'_> {
        // SAFETY: the arena is CHUNK-aligned (`Arena`'s repr), valid for HEAP bytes while
        // `self` lives, and its side table was zeroed by `new`.
        let home = unsafe { Region::new(self.arena.0.get().cast(), HEAP) };
        Memory {
            regions: Regions::new(home, &self.registry),
            source: &self.source,
        }
    }

    #[inline(always)]
    fn alloc_at(&self, size: usize, align: usize, zeroed: bool) -> *mut u8 {
        if percpu::LIVE {
            // With caches, a hit is the fast path: it needs no view of the regions, so
            // none is built (the view lives on the stack, which would cost the hit a
            // frame).
            return match self.heap.unpark(size, align) {
                Unparked::Block(p) => self.handed_out(Some((p, false)), size, align, zeroed),
                missed => self.alloc_at_slow(size, align, zeroed, missed),
            };
        }
        let got = self.heap.alloc(&self.memory(), size, align);
        self.handed_out(got, size, align, zeroed)
    }

    /// The rest of an allocation after a per-CPU cache missed, out of line.
    #[cold]
    #[inline(never)]
    fn alloc_at_slow(&self, size: usize, align: usize, zeroed: bool, missed: Unparked) -> *mut u8 {
        let mem = self.memory();
        let got = match missed {
            Unparked::Missed(class, popped) => {
                self.heap.alloc_missed(&mem, size, align, class, popped)
            }
            _ => self.heap.alloc(&mem, size, align),
        };
        self.handed_out(got, size, align, zeroed)
    }

    /// The block an allocation got, zeroed if asked and not known to be zero; null
    /// (reported) if it got none.
    #[inline(always)]
    fn handed_out(&self, got: Option<Got>, size: usize, align: usize, zeroed: bool) -> *mut u8 {
        match got {
            Some((p, clean)) => {
                if zeroed && !clean {
                    // SAFETY: I1, the block is ours and at least `size` bytes long.
                    unsafe { ptr::write_bytes(p, 0, size) };
                }
                p
            }
            None => self.refused_slow(size, align),
        }
    }

    /// Null, reported in checked mode as out of memory or as a request no heap serves.
    #[cold]
    #[inline(never)]
    fn refused_slow(&self, size: usize, align: usize) -> *mut u8 {
        let kind = if class::good_size(size).is_some() && align <= MAX_ALIGN {
            ErrorKind::OutOfMemory
        } else {
            ErrorKind::Overflow
        };
        self.heap.hook().report(kind, ptr::null_mut());
        ptr::null_mut()
    }

    /// Hands `region` (caller RAM: a memory bank, a static buffer) to the allocator for
    /// good, at run time, while other threads may be allocating. Any alignment and size
    /// will do: the start is rounded up to [`CHUNK_SIZE`], the end down, and the first
    /// chunks hold the region's side table. Returns the bytes that now serve
    /// allocations, or why none do; the allocator then keeps no reference to the region
    /// (a region refused as too small is untouched; one refused because another claim
    /// filled the registry meanwhile may have had its side table written).
    ///
    /// Lock-free, like everything else: a thread stopped inside `claim` delays only
    /// its own region. At most [`MAX_REGIONS`] regions (claimed and mapped together).
    pub fn claim(&self, region: &'static mut [MaybeUninit<u8>]) -> Result<usize, ClaimError> {
        let len = region.len();
        // SAFETY: the `'static mut` borrow gives us the memory for good, to no one else.
        let claimed = unsafe { self.memory().regions.claim(region.as_mut_ptr().cast(), len) }?;
        Ok(heap::heap_bytes(&claimed))
    }

    /// Lets the heap grow by mapping memory from the OS when its regions run dry, and
    /// maps requests of [`HUGE_THRESHOLD`] bytes or more one per mapping (off until
    /// called, like `AO_malloc_enable_mmap`). See the crate docs for growth, huge
    /// blocks and when free memory goes back to the OS.
    #[cfg(feature = "mmap")]
    pub fn enable_mmap(&self) {
        self.source.enable();
    }

    /// Whether [`enable_mmap`](Self::enable_mmap) was called.
    #[cfg(feature = "mmap")]
    pub fn mmap_enabled(&self) -> bool {
        self.source.enabled()
    }

    /// Gives every free chunk of the mapped regions back to the OS now (the automatic
    /// release waits until a chunk has stayed free through two passes, and gives back
    /// only runs of at least 64 KiB of such chunks). Returns the
    /// bytes given back: always 0 without the `mmap` feature, since the inline heap and
    /// claimed RAM are not the OS's. Lock-free, like the rest, but it walks every
    /// mapped region.
    ///
    /// With the `percpu` feature it first gives the blocks parked in the per-CPU caches
    /// back to their chunks.
    pub fn trim(&self) -> usize {
        let mem = self.memory();
        self.heap.drain(&mem);
        self.source.trim(&mem.regions)
    }

    /// Whether the per-CPU caches are set up and in use (feature `percpu`): they set
    /// themselves up on the first allocation or free, where the C library registered
    /// an rseq area for the thread and `membarrier` offers its rseq fence (Linux 5.10+,
    /// glibc 2.35+, x86_64). Always `false` elsewhere and without the feature.
    pub fn percpu_active(&self) -> bool {
        self.heap.cache().active()
    }

    /// Turns the per-CPU caches off for good, at run time, and gives every block parked
    /// in them back: afterwards every call takes the shared path. The switch for a
    /// system where restartable sequences misbehave (see the README). Lock-free; may be
    /// called from any thread or handler.
    pub fn disable_percpu(&self) {
        self.heap.disable_cache(&self.memory());
    }

    /// Gives every block parked in the per-CPU caches back to its chunk now, and
    /// returns how many there were (`trim` does this too; so does any allocation that
    /// would otherwise grow the heap or fail).
    pub fn drain_percpu(&self) -> usize {
        self.heap.drain(&self.memory())
    }

    /// Tests: use only the first `n` per-CPU caches (threads whose CPU id is `n` or more
    /// take the shared path).
    #[doc(hidden)]
    pub fn set_percpu_limit(&self, n: usize) {
        self.heap.cache().set_limit(n);
    }

    /// Checked mode: installs `hook` to hear of every refused call (`None` removes it).
    /// The hook may run inside a signal handler if the refused call was made there.
    #[cfg(feature = "checked")]
    pub fn set_error_hook(&self, hook: Option<fn(ErrorKind, *mut u8)>) {
        self.heap.hook().set(hook);
    }

    /// Allocates `size` bytes aligned to 16 (a zero size gets a unique block). Null when
    /// the heap cannot hold it.
    pub fn malloc(&self, size: usize) -> *mut u8 {
        self.alloc_at(size, 16, false)
    }

    /// Allocates `n * size` zeroed bytes; null on overflow or when the heap is full.
    pub fn calloc(&self, n: usize, size: usize) -> *mut u8 {
        match n.checked_mul(size) {
            Some(total) => self.alloc_at(total, 16, true),
            None => self.refused_slow(usize::MAX, 16),
        }
    }

    /// Resizes the block at `ptr` to `size` bytes, in place when its class allows,
    /// keeping the first `min(old, size)` bytes. `ptr == null` allocates; `size == 0`
    /// frees and returns null. On failure returns null and leaves the block as it was;
    /// so does a pointer this allocator does not own (nothing is copied or freed).
    ///
    /// # Safety
    /// - `ptr` is null or a live block from this allocator's `malloc`/`calloc`/`realloc`.
    pub unsafe fn realloc(&self, ptr: *mut u8, size: usize) -> *mut u8 {
        if ptr.is_null() {
            return self.malloc(size);
        }
        let block = self.memory().resolve(ptr);
        if size == 0 {
            self.free_block(ptr, block);
            return ptr::null_mut();
        }
        // SAFETY: forwarded from our caller.
        unsafe { self.move_or_resize(ptr, block, block.usable_size(), size, 16) }
    }

    /// Resizes `block` (resolved from `ptr`, `old` bytes of it the caller's) in place,
    /// or moves it to a new block of `size` bytes at `align`.
    ///
    /// # Safety
    /// - `ptr` is a live block from this allocator, of at least `old` bytes.
    unsafe fn move_or_resize(
        &self,
        ptr: *mut u8,
        block: Block,
        old: usize,
        size: usize,
        align: usize,
    ) -> *mut u8 {
        if !block.owned() {
            return ptr::null_mut(); // not ours: we cannot know its size, so keep it
        }
        if self.heap.resize_in_place(&block, size, align) {
            return ptr;
        }
        let new = self.alloc_at(size, align, false);
        if !new.is_null() {
            // SAFETY: both blocks are live, ours, at least `min(old, size)` bytes long,
            // and distinct (I1), so they cannot overlap.
            unsafe { ptr::copy_nonoverlapping(ptr, new, old.min(size)) };
            self.free_block(ptr, block);
        }
        new
    }

    /// Frees the block at `ptr`, whatever its size; `free(null)` does nothing.
    ///
    /// # Safety
    /// - `ptr` is null or a live block from this allocator, not used after this call.
    ///   A pointer this heap does not contain is ignored; with the `checked` feature a
    ///   double or invalid free is reported and ignored instead of corrupting the heap.
    #[inline]
    pub unsafe fn free(&self, ptr: *mut u8) {
        if !ptr.is_null() {
            if let Err(why) = self.heap.free_ptr(&self.memory(), ptr) {
                self.heap.hook().report(why.kind(), ptr);
            }
        }
    }

    /// `GlobalAlloc::dealloc` of a block a per-CPU cache did not take.
    #[cold]
    #[inline(never)]
    fn free_slow(&self, ptr: *mut u8) {
        // SAFETY: `GlobalAlloc::dealloc`'s contract (our only caller): `ptr` is a live
        // block of ours.
        unsafe { self.free(ptr) }
    }

    /// Frees `block`, resolved from `ptr`; reports a refusal in checked mode.
    #[inline(always)]
    fn free_block(&self, ptr: *mut u8, block: Block) {
        if let Err(why) = self.heap.free(&self.memory(), block) {
            self.heap.hook().report(why.kind(), ptr);
        }
    }

    /// Bytes usable at `ptr` (at least what was asked for), or 0 if `ptr` is not a live
    /// block of this allocator.
    pub fn usable_size(&self, ptr: *const u8) -> usize {
        self.memory().resolve(ptr).usable_size()
    }

    /// The usable size a request of `size` bytes would get, or 0 if this heap could
    /// never serve it.
    pub fn good_size(&self, size: usize) -> usize {
        let Some(n) = class::good_size(size) else {
            return 0;
        };
        let memory = self.memory();
        if let Some(grown) = memory.source.good_size(size, n) {
            return grown;
        }
        if memory.regions.all().any(|r| n <= heap::heap_bytes(&r)) {
            n
        } else {
            0
        }
    }

    /// Whether `ptr` points into memory this allocator manages: the allocatable chunks
    /// of its heap or of a claimed or mapped region, or the start of a live huge block.
    pub fn owns(&self, ptr: *const u8) -> bool {
        self.memory().resolve(ptr).owned()
    }

    /// Walks the whole heap and checks its invariants (I1: each chunk in one state, in
    /// at most one slot, its free lists well formed). Only meaningful while no thread is
    /// inside the allocator; for tests.
    #[doc(hidden)]
    pub fn validate(&self) -> Result<(), &'static str> {
        inspect::validate(&self.heap, &self.memory())
    }

    /// A snapshot of the heap: exact when no thread is inside the allocator.
    pub fn stats(&self) -> Stats {
        inspect::stats(&self.heap, &self.memory())
    }
}

impl<const HEAP: usize> Default for SigAlloc<HEAP> {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: `alloc` returns null or a block of at least `layout.size()` bytes aligned to
// `layout.align()` that no one else holds (I1) until it is passed to `dealloc`.
unsafe impl<const HEAP: usize> GlobalAlloc for SigAlloc<HEAP> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.alloc_at(layout.size(), layout.align(), false)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.alloc_at(layout.size(), layout.align(), true)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !report::Hook::ON {
            // The layout names the block's class: a per-CPU cache takes it without
            // reading its chunk (a small block's class is its layout's: `realloc` keeps
            // a small block in place only within its class).
            if self.heap.park(ptr, layout.size(), layout.align()) {
                return;
            }
            if percpu::LIVE {
                // With caches, parking is the fast path: the rest stays out of its way.
                return self.free_slow(ptr);
            }
            // SAFETY: `GlobalAlloc::dealloc`'s contract: `ptr` is a live block of ours.
            return unsafe { self.free(ptr) };
        }
        // Checked mode: a layout the block could not have come from is refused.
        let block = self.memory().resolve(ptr);
        let live = block.usable_size() != 0;
        if live && !Heap::matches(&block, layout.size(), layout.align()) {
            self.heap.hook().report(ErrorKind::LayoutMismatch, ptr);
            return;
        }
        if !ptr.is_null() {
            self.free_block(ptr, block);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let block = self.memory().resolve(ptr);
        // SAFETY: `GlobalAlloc::realloc`'s contract: `ptr` is live with `layout`.
        unsafe { self.move_or_resize(ptr, block, layout.size(), new_size, layout.align()) }
    }
}
