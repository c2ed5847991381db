//! `SigAlloc::claim`: caller RAM of any alignment and size handed to the allocator at
//! run time, also while other threads allocate.
//!
//! What is checked: the byte count `claim` reports (the region's start rounded up to a
//! chunk, its end down, one chunk of side table for regions this small); that every
//! claimed region and the inline heap serve allocations once the memory before them is
//! used, with no two live blocks overlapping and contents kept; that `owns` covers
//! exactly the allocatable chunks (not the skipped head, the side table or the cut
//! tail); the refusals (`TooSmall`, which leaves the region untouched, and `Full` at
//! [`MAX_REGIONS`]); claims racing allocating threads; and spans too big for the inline
//! heap served from a claimed region.
//!
//! One file per topic, in `tests/claim/`: `serving.rs` (regions serve allocations),
//! `refusals.rs` (`TooSmall`, `Full`) and `race.rs` (claims racing allocations); this
//! one holds the caller RAM and the setup they share.
//!
//! The RAM comes from the system heap and is freed once the allocator it was claimed
//! into is gone ([`Setup`] drops them in that order), so the file runs under Miri
//! without leak reports: `cargo +nightly miri test --test claim`.

// A test binary: the atomics here are the test's own bookkeeping, which `clippy.toml`
// (aimed at `src/`, where loom must see every atomic) does not concern.
#![allow(clippy::disallowed_types)]

mod common;
#[path = "claim/race.rs"]
mod race;
#[path = "claim/refusals.rs"]
mod refusals;
#[path = "claim/serving.rs"]
mod serving;

use std::mem::MaybeUninit;

use common::{pattern, Fresh, Model, Rng};
use sigalloc::{ClaimError, SigAlloc, CHUNK_SIZE, MAX_SMALL};

pub(crate) const CHUNK: usize = CHUNK_SIZE;

/// The inline heap of most tests: 4 chunks, one of them its side table.
pub(crate) const INLINE: usize = 16 << 10;

/// Caller RAM on the system heap, handed out as `&'static mut` slices and freed on drop.
pub(crate) struct Ram {
    pub(crate) buf: *mut [MaybeUninit<u8>],
    /// Offset in `buf` of its first chunk-aligned byte.
    pub(crate) aligned: usize,
}

impl Ram {
    /// `len` bytes plus a chunk of slack, so that a slice of `len` bytes can start at
    /// any offset from a chunk boundary. `fill`: initialise every byte to it, else the
    /// bytes are left uninitialised (as RAM handed over by firmware would be).
    pub(crate) fn new(len: usize, fill: Option<u8>) -> Ram {
        // Not `vec![MaybeUninit::uninit(); n]`: that clones byte by byte, slow in Miri.
        let buf = Box::into_raw(Box::<[u8]>::new_uninit_slice(len + CHUNK));
        if let Some(b) = fill {
            // SAFETY: `buf` is valid for writes of its whole length, and ours alone.
            unsafe { buf.cast::<u8>().write_bytes(b, buf.len()) };
        }
        let aligned = buf.cast::<u8>().align_offset(CHUNK);
        assert!(aligned < CHUNK);
        Ram { buf, aligned }
    }

    /// A pointer to byte `at` of the buffer (for addresses and probes).
    pub(crate) fn ptr(&self, at: usize) -> *mut u8 {
        self.buf.cast::<u8>().wrapping_add(at)
    }

    /// `len` bytes at byte `at` of the buffer, as `claim` wants them.
    ///
    /// # Safety
    /// - no two slices handed out overlap, and the buffer is read only after the
    ///   allocator the slice went to is dropped or refused it;
    /// - the slice is not used after the `Ram` is dropped: whatever it is claimed into
    ///   is dropped first.
    pub(crate) unsafe fn slice(&self, at: usize, len: usize) -> &'static mut [MaybeUninit<u8>] {
        assert!(at + len <= self.buf.len(), "slice past the buffer");
        let p = self.buf.cast::<MaybeUninit<u8>>().wrapping_add(at);
        // SAFETY: inside the buffer (asserted), which lives until `self` is dropped;
        // exclusive and not outliving its users by our caller's contract.
        unsafe { &mut *std::ptr::slice_from_raw_parts_mut(p, len) }
    }

    /// Whether the `len` bytes at `at` all still read `fill`.
    pub(crate) fn holds(&self, at: usize, len: usize, fill: u8) -> bool {
        assert!(at + len <= self.buf.len());
        // SAFETY: inside the buffer, initialised to `fill` by `new` unless something
        // wrote there (still initialised bytes); no slice of it is in use any more.
        let s = unsafe { std::slice::from_raw_parts(self.ptr(at), len) };
        pattern::all_bytes(s, fill)
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: `buf` came from `Box::into_raw` in `new` and is freed once, here;
        // every slice of it is dead (the allocators holding them were dropped first).
        drop(unsafe { Box::from_raw(self.buf) });
    }
}

/// Where a region handed to `claim` lies (addresses).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spot {
    /// The caller's bytes: `start..start + len`.
    pub(crate) start: usize,
    pub(crate) len: usize,
    /// `start` rounded up to a chunk.
    pub(crate) base: usize,
    /// `base..end` are the whole chunks inside the caller's bytes.
    pub(crate) end: usize,
}

impl Spot {
    /// Whole chunks after alignment.
    pub(crate) fn chunks(&self) -> usize {
        (self.end - self.base) / CHUNK
    }

    /// The allocatable bytes, if `claim` reported `bytes`: the region's last chunks.
    pub(crate) fn range(&self, bytes: usize) -> (usize, usize) {
        (self.end - bytes, self.end)
    }
}

/// An allocator and the RAM claimed into it; drops the allocator first.
pub(crate) struct Setup<const N: usize> {
    pub(crate) fresh: Fresh<N>,
    pub(crate) ram: Vec<Ram>,
}

impl<const N: usize> Setup<N> {
    pub(crate) fn new() -> Self {
        Setup {
            fresh: Fresh::new(),
            ram: Vec::new(),
        }
    }

    pub(crate) fn a(&self) -> &SigAlloc<N> {
        self.fresh.get()
    }

    /// The inline heap's bytes (the arena is `SigAlloc`'s first field).
    pub(crate) fn inline(&self) -> (usize, usize) {
        let lo = std::ptr::from_ref(self.a()).addr();
        (lo, lo + N)
    }

    /// A fresh region of `len` bytes starting `off` bytes past a chunk boundary, not yet
    /// claimed, and where it lies.
    pub(crate) fn region(
        &mut self,
        off: usize,
        len: usize,
        fill: Option<u8>,
    ) -> (&'static mut [MaybeUninit<u8>], Spot) {
        assert!(off < CHUNK);
        let ram = Ram::new(len + off, fill);
        let at = ram.aligned + off;
        let start = ram.ptr(at).addr();
        let base = start.next_multiple_of(CHUNK);
        let end = if base - start < len {
            base + (len - (base - start)) / CHUNK * CHUNK
        } else {
            base
        };
        // SAFETY: a buffer of its own, given out once; `Setup` drops the allocator
        // before the buffer.
        let slice = unsafe { ram.slice(at, len) };
        self.ram.push(ram);
        (
            slice,
            Spot {
                start,
                len,
                base,
                end,
            },
        )
    }

    /// Claims a fresh region (see [`Setup::region`]).
    pub(crate) fn claim_at(&mut self, off: usize, len: usize) -> (Result<usize, ClaimError>, Spot) {
        let (slice, spot) = self.region(off, len, None);
        (self.a().claim(slice), spot)
    }

    /// A pointer with the address `addr` inside RAM buffer `i` (for `owns` probes).
    pub(crate) fn probe(&self, i: usize, addr: usize) -> *const u8 {
        let p = self.ram[i].ptr(0);
        p.wrapping_add(addr.wrapping_sub(p.addr()))
    }
}

/// Which of `ranges` holds the `size` bytes at `p`; fails if none holds all of them.
pub(crate) fn which(ranges: &[(usize, usize)], p: *mut u8, size: usize) -> usize {
    let (lo, hi) = (p.addr(), p.addr() + size.max(1));
    ranges
        .iter()
        .position(|&(a, b)| a <= lo && hi <= b)
        .unwrap_or_else(|| panic!("{p:p}+{size} lies in none of {ranges:#x?}"))
}

/// A request size: mostly small classes, some of the largest, a few spans of 2-3 chunks.
pub(crate) fn mixed_size(rng: &mut Rng) -> usize {
    match rng.range(0, 15) {
        0 => rng.range(MAX_SMALL + 1, 3 * CHUNK),
        1..=4 => rng.range(257, MAX_SMALL),
        _ => rng.range(1, 256),
    }
}

/// Allocates mixed sizes until `misses` requests fail, then blocks of the largest class
/// until null: afterwards no chunk is free (a chunk-sized class takes any free chunk,
/// after reclaiming idle ones). Hands every block and its size to `take`.
pub(crate) fn until_full<const N: usize>(
    a: &SigAlloc<N>,
    rng: &mut Rng,
    misses: usize,
    mut take: impl FnMut(*mut u8, usize),
) {
    let mut missed = 0;
    loop {
        let size = if missed < misses {
            mixed_size(rng)
        } else {
            MAX_SMALL
        };
        let p = a.malloc(size);
        if p.is_null() {
            if missed >= misses {
                return;
            }
            missed += 1;
            continue;
        }
        take(p, size);
    }
}

/// [`until_full`] after 16 misses, recording every block in `m` (which checks
/// alignment, overlap and fills); counts the blocks that landed in each of `ranges`.
pub(crate) fn fill_up<const N: usize>(
    a: &SigAlloc<N>,
    ranges: &[(usize, usize)],
    seed: u64,
    m: &mut Model,
) -> Vec<usize> {
    let mut hits = vec![0; ranges.len()];
    let mut blocks = 0u64;
    until_full(a, &mut Rng(seed), 16, |p, size| {
        assert!(a.owns(p), "{p:p} not owned");
        assert!(
            a.owns(p.wrapping_add(size - 1)),
            "end of {p:p}+{size} not owned"
        );
        assert!(a.usable_size(p) >= size);
        hits[which(ranges, p, size)] += 1;
        blocks += 1;
        m.on_alloc(p, size, 16, false, blocks);
    });
    let s = a.stats();
    assert_eq!(
        s.chunks_free, 0,
        "malloc({MAX_SMALL}) failed with chunks free: {s:?}"
    );
    hits
}
