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

mod bitmap;
mod chunk;
mod class;
mod heap;
#[cfg(feature = "mmap")]
mod mapped;
#[cfg(feature = "mmap")]
mod os;
mod region;
mod stats;
mod sync;

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ptr;

use heap::Heap;
use region::{Region, Registry, Space};

#[cfg(feature = "mmap")]
pub use mapped::{HUGE_SLOTS, HUGE_THRESHOLD, MAX_REGION, MIN_REGION, RELEASE_EVERY};
pub use region::{ClaimError, MAX_REGIONS};
pub use stats::{ClassStats, Json, Stats, CLASS_COUNT};
#[cfg(loom)]
#[doc(hidden)]
pub use sync::break_ownership;
#[cfg(feature = "hooks")]
#[doc(hidden)]
pub use sync::{set_step_hook, Step};

/// The default heap: 2 MiB, like AO_malloc's.
pub const DEFAULT_HEAP: usize = 2 << 20;
/// Memory is managed in chunks of this many bytes, aligned to their size.
pub const CHUNK_SIZE: usize = class::CHUNK;
/// The largest alignment honoured; a larger one gets null.
pub const MAX_ALIGN: usize = class::MAX_ALIGN;
/// The largest request served from a size class; larger ones take whole chunks.
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
    regs: Registry,
    /// Checked mode: the error hook, a `fn(ErrorKind, *mut u8)` (null: none).
    #[cfg(feature = "checked")]
    hook: sync::FnCell,
}

/// What the `checked` feature reports through [`SigAlloc::set_error_hook`]. In every
/// case the offending call was ignored and the heap is intact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A free of a pointer this allocator never handed out (outside the heap, inside its
    /// side table, not at a block's start, or inside a span).
    InvalidFree,
    /// A free of a block that is already free.
    DoubleFree,
    /// A `dealloc` whose layout would not have been served by the block's class or span.
    LayoutMismatch,
    /// An allocation the heap cannot hold right now (null was returned).
    OutOfMemory,
    /// A size or alignment no heap of this kind could serve, or `calloc` overflow.
    Overflow,
    /// The allocator found its own state broken (a block about to be handed out twice).
    Corrupted,
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
            regs: Registry::new(),
            #[cfg(feature = "checked")]
            hook: sync::FnCell::new(),
        }
    }

    /// An allocator with an empty heap (loom: the side table is written explicitly).
    #[cfg(loom)]
    pub fn new() -> Self {
        let a = SigAlloc {
            arena: Arena(UnsafeCell::new([0; HEAP])),
            heap: Heap::new(),
            regs: Registry::new(),
        };
        // SAFETY: the arena is ours alone; loom atomics are plain handles that move with
        // the bytes holding them.
        unsafe { a.region().init() };
        a
    }

    #[inline(always)]
    fn region(&self) -> Region {
        // SAFETY: the arena is CHUNK-aligned (`Arena`'s repr), valid for HEAP bytes while
        // `self` lives, and its side table was zeroed by `new`.
        unsafe { Region::new(self.arena.0.get().cast(), HEAP) }
    }

    /// Every region: the inline heap, then claimed and mapped ones.
    #[inline(always)]
    fn space(&self) -> Space<'_> {
        Space::new(self.region(), &self.regs)
    }

    #[inline(always)]
    fn alloc_at(&self, size: usize, align: usize, zeroed: bool) -> *mut u8 {
        #[cfg(feature = "mmap")]
        if size >= HUGE_THRESHOLD && align <= MAX_ALIGN {
            if let Some(p) = self.alloc_huge(size) {
                return p; // a fresh mapping: already zero
            }
        }
        match self.heap.alloc(&self.space(), size, align) {
            Some((p, clean)) => {
                if zeroed && !clean {
                    // SAFETY: I1, the block is ours and at least `size` bytes long.
                    unsafe { ptr::write_bytes(p, 0, size) };
                }
                p
            }
            None => {
                #[cfg(feature = "checked")]
                self.report(
                    if class::good_size(size).is_some() && align <= MAX_ALIGN {
                        ErrorKind::OutOfMemory
                    } else {
                        ErrorKind::Overflow
                    },
                    ptr::null_mut(),
                );
                ptr::null_mut()
            }
        }
    }

    /// `None` if `ptr` lies in a region; otherwise it can only be a huge block, and
    /// this is its usable size (0 if it is not a live huge block either).
    #[cfg(feature = "mmap")]
    #[cold]
    #[inline(never)]
    fn huge_size(&self, sp: &Space, ptr: *const u8) -> Option<usize> {
        match sp.find(ptr) {
            Some(_) => None,
            None => Some(mapped::huge_size(sp, ptr)),
        }
    }

    #[cfg(feature = "mmap")]
    #[cold]
    #[inline(never)]
    fn alloc_huge(&self, size: usize) -> Option<*mut u8> {
        if !self.regs.os.enabled() {
            return None;
        }
        mapped::huge_alloc(&self.space(), size)
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
        let r = unsafe { self.space().claim(region.as_mut_ptr().cast(), len) }?;
        Ok(Heap::heap_bytes(&r))
    }

    /// Lets the heap grow by mapping memory from the OS when its regions run dry, and
    /// maps requests of [`HUGE_THRESHOLD`] bytes or more one per mapping (off until
    /// called, like `AO_malloc_enable_mmap`). See the crate docs for growth, huge
    /// blocks and when free memory goes back to the OS.
    #[cfg(feature = "mmap")]
    pub fn enable_mmap(&self) {
        self.regs.os.enable();
    }

    /// Whether [`enable_mmap`](Self::enable_mmap) was called.
    #[cfg(feature = "mmap")]
    pub fn mmap_enabled(&self) -> bool {
        self.regs.os.enabled()
    }

    /// Gives every free chunk of the mapped regions back to the OS now (the automatic
    /// release waits until a chunk has stayed free through two passes). Returns the
    /// bytes given back. Lock-free, like the rest, but it walks every mapped region.
    #[cfg(feature = "mmap")]
    pub fn trim(&self) -> usize {
        mapped::release_pass(&self.space(), true)
    }

    /// Checked mode: whether the live block at `ptr` could have come from `layout`.
    #[cfg(feature = "checked")]
    fn layout_matches(&self, ptr: *mut u8, layout: Layout) -> bool {
        let sp = self.space();
        #[cfg(feature = "mmap")]
        if let Some(have) = self.huge_size(&sp, ptr) {
            return mapped::huge_keeps(have, layout.size());
        }
        self.heap.matches(&sp, ptr, layout.size(), layout.align())
    }

    /// Checked mode: installs `hook` to hear of every refused call (`None` removes it).
    /// The hook may run inside a signal handler if the refused call was made there.
    #[cfg(feature = "checked")]
    pub fn set_error_hook(&self, hook: Option<fn(ErrorKind, *mut u8)>) {
        self.hook
            .set(hook.map_or(ptr::null_mut(), |f| f as *mut ()));
    }

    #[cfg(feature = "checked")]
    #[cold]
    fn report(&self, kind: ErrorKind, p: *mut u8) {
        let raw = self.hook.get();
        if !raw.is_null() {
            // SAFETY: only `fn(ErrorKind, *mut u8)` pointers are stored (see
            // `set_error_hook`), cast to a same-sized data pointer with provenance.
            let f = unsafe { core::mem::transmute::<*mut (), fn(ErrorKind, *mut u8)>(raw) };
            f(kind, p);
        }
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
            None => {
                #[cfg(feature = "checked")]
                self.report(ErrorKind::Overflow, ptr::null_mut());
                ptr::null_mut()
            }
        }
    }

    /// Resizes the block at `ptr` to `size` bytes, in place when its class allows,
    /// keeping the first `min(old, size)` bytes. `ptr == null` allocates; `size == 0`
    /// frees and returns null. On failure returns null and leaves the block as it was.
    ///
    /// # Safety
    /// - `ptr` is null or a live block from this allocator's `malloc`/`calloc`/`realloc`.
    pub unsafe fn realloc(&self, ptr: *mut u8, size: usize) -> *mut u8 {
        if ptr.is_null() {
            return self.malloc(size);
        }
        if size == 0 {
            // SAFETY: forwarded from our caller.
            unsafe { self.free(ptr) };
            return ptr::null_mut();
        }
        let old = self.usable_size(ptr);
        // SAFETY: forwarded from our caller.
        unsafe { self.move_or_resize(ptr, old, size, 16) }
    }

    /// # Safety
    /// - `ptr` is a live block of at least `old` bytes from this allocator.
    unsafe fn move_or_resize(
        &self,
        ptr: *mut u8,
        old: usize,
        size: usize,
        align: usize,
    ) -> *mut u8 {
        let sp = self.space();
        if self.heap.resize_in_place(&sp, ptr, size, align) {
            return ptr;
        }
        #[cfg(feature = "mmap")]
        if let Some(have) = self.huge_size(&sp, ptr) {
            if mapped::huge_keeps(have, size) && align <= MAX_ALIGN {
                return ptr;
            }
        }
        let new = self.alloc_at(size, align, false);
        if !new.is_null() {
            // SAFETY: both blocks are live, ours, at least `min(old, size)` bytes long,
            // and distinct (I1), so they cannot overlap.
            unsafe { ptr::copy_nonoverlapping(ptr, new, old.min(size)) };
            // SAFETY: forwarded from our caller.
            unsafe { self.free(ptr) };
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
            let sp = self.space();
            let refused = self.heap.free(&sp, ptr);
            #[cfg(feature = "mmap")]
            let refused = match refused {
                Err(heap::Refused::Invalid) if mapped::huge_free(&sp, ptr) => Ok(()),
                other => other,
            };
            #[cfg(feature = "checked")]
            if let Err(why) = refused {
                self.report(
                    match why {
                        heap::Refused::Invalid => ErrorKind::InvalidFree,
                        heap::Refused::DoubleFree => ErrorKind::DoubleFree,
                    },
                    ptr,
                );
            }
            #[cfg(not(feature = "checked"))]
            let _ = refused;
        }
    }

    /// Bytes usable at `ptr` (at least what was asked for), or 0 if `ptr` is not a live
    /// block of this allocator.
    pub fn usable_size(&self, ptr: *const u8) -> usize {
        let sp = self.space();
        let n = self.heap.usable_size(&sp, ptr);
        #[cfg(feature = "mmap")]
        if n == 0 {
            return self.huge_size(&sp, ptr).unwrap_or(0);
        }
        n
    }

    /// The usable size a request of `size` bytes would get, or 0 if this heap could
    /// never serve it.
    pub fn good_size(&self, size: usize) -> usize {
        let Some(n) = class::good_size(size) else {
            return 0;
        };
        #[cfg(feature = "mmap")]
        if self.regs.os.enabled() {
            return if size >= HUGE_THRESHOLD {
                size.next_multiple_of(CHUNK_SIZE)
            } else {
                n
            };
        }
        let sp = self.space();
        if sp.all().any(|r| n <= Heap::heap_bytes(&r)) {
            n
        } else {
            0
        }
    }

    /// Whether `ptr` points into memory this allocator manages: the allocatable chunks
    /// of its heap or of a claimed or mapped region, or the start of a live huge block.
    pub fn owns(&self, ptr: *const u8) -> bool {
        let sp = self.space();
        if sp.find(ptr).is_some() {
            return true;
        }
        #[cfg(feature = "mmap")]
        return mapped::huge_size(&sp, ptr) > 0;
        #[cfg(not(feature = "mmap"))]
        false
    }

    /// Walks the whole heap and checks its invariants (I1: each chunk in one state, in
    /// at most one slot, its free lists well formed). Only meaningful while no thread is
    /// inside the allocator; for tests.
    #[doc(hidden)]
    pub fn validate(&self) -> Result<(), &'static str> {
        self.heap.validate(&self.space())
    }

    /// A snapshot of the heap: exact when no thread is inside the allocator.
    pub fn stats(&self) -> Stats {
        let sp = self.space();
        let mut s = Stats {
            peak_bytes: self.heap.peak_chunks() * CHUNK_SIZE,
            ..Stats::default()
        };
        for (c, out) in class::Class::all().zip(s.classes.iter_mut()) {
            out.block_size = c.size();
        }
        for r in sp.all() {
            let bytes = Heap::heap_bytes(&r);
            s.heap_bytes += bytes;
            s.chunks_total += r.end() - r.first();
            s.chunks_used += r.used().count(r.first(), r.end());
            if r.id() != 0 {
                s.regions += 1;
                if r.mapped() {
                    s.mapped_regions += 1;
                    s.mapped_bytes += r.end() * CHUNK_SIZE;
                } else {
                    s.claimed_bytes += bytes;
                }
            }
            for ci in r.first()..r.end() {
                let Some(d) = r.desc(ci) else { continue };
                if let Some(c) = Heap::chunk_class(&r, ci) {
                    let free = d.free_blocks(c) as usize;
                    let in_use = c.capacity() as usize - free;
                    if let Some(out) = s.classes.get_mut(c.id()) {
                        out.chunks += 1;
                        out.blocks_free += free;
                        out.blocks_in_use += in_use;
                    }
                    s.bytes_in_use += in_use * c.size();
                } else {
                    let n = self.heap.usable_size(&sp, r.chunk_base(ci));
                    if n > 0 {
                        s.spans += 1;
                        s.span_chunks += n / CHUNK_SIZE;
                        s.bytes_in_use += n;
                    }
                }
            }
        }
        s.chunks_free = s.chunks_total - s.chunks_used.min(s.chunks_total);
        #[cfg(feature = "mmap")]
        {
            let k = self.regs.os.counts();
            s.huge_mappings = k.huge_live;
            s.huge_bytes = k.huge_bytes;
            s.released_bytes = k.released;
            s.bytes_in_use += k.huge_bytes;
        }
        s
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
        #[cfg(feature = "checked")]
        if !ptr.is_null() && self.usable_size(ptr) != 0 && !self.layout_matches(ptr, layout) {
            self.report(ErrorKind::LayoutMismatch, ptr);
            return;
        }
        #[cfg(not(feature = "checked"))]
        let _ = layout;
        // SAFETY: `GlobalAlloc::dealloc`'s contract: `ptr` is a live block of ours.
        unsafe { self.free(ptr) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `GlobalAlloc::realloc`'s contract: `ptr` is live with `layout`.
        unsafe { self.move_or_resize(ptr, layout.size(), new_size, layout.align()) }
    }
}
