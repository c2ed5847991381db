//! One function per operation of the public API: each decodes its arguments, calls the
//! allocator and checks the answer against the model. `Err` means the input ran out.

use std::alloc::{GlobalAlloc, Layout};

use libfuzzer_sys::arbitrary::Result;
use sigalloc::{SigAlloc, CHUNK_SIZE};

use super::decode::{pick_align, pick_size, Op};
use super::model::{check_fill, expected_usable};
#[cfg(feature = "checked")]
use super::reports::refusal;
use super::{Next, Run};

impl<const H: usize> Run<'_, H> {
    /// `GlobalAlloc::alloc` / `alloc_zeroed`, `malloc`, and `realloc` of null.
    pub(super) fn alloc(&mut self, op: Op) -> Result<Next> {
        let a = self.a;
        let size = pick_size(&mut self.u, self.m.heap_bytes())?;
        let (align, p) = match op {
            Op::Malloc => (16, a.malloc(size)),
            // SAFETY: a null pointer: realloc allocates like malloc.
            Op::ReallocNull => (16, unsafe { a.realloc(std::ptr::null_mut(), size) }),
            _ => {
                let align = pick_align(&mut self.u)?;
                // GlobalAlloc requires a non-zero size.
                let Ok(l) = Layout::from_size_align(size.max(1), align) else {
                    return Ok(Next::Skip);
                };
                let p = if matches!(op, Op::Alloc) {
                    // SAFETY: the layout has a non-zero size.
                    unsafe { a.alloc(l) }
                } else {
                    // SAFETY: as above.
                    unsafe { a.alloc_zeroed(l) }
                };
                (align, p)
            }
        };
        let size = if matches!(op, Op::Alloc | Op::AllocZeroed) {
            size.max(1)
        } else {
            size
        };
        self.answer(
            p,
            size,
            align,
            matches!(op, Op::AllocZeroed),
            &format!("{op:?}({size}, {align})"),
        );
        #[cfg(feature = "checked")]
        if p.is_null() {
            self.expected.push(refusal(size, align));
        }
        Ok(Next::Check)
    }

    /// `calloc`, also with products that overflow.
    pub(super) fn calloc(&mut self) -> Result<Next> {
        let (n, size) = match self.u.int_in_range(0u8..=5)? {
            0 => (usize::MAX, 2),
            1 => (1 << 33, 1 << 33),
            2 => (2, usize::MAX / 2 + 1),
            3 => (usize::MAX, 0),
            _ => {
                let n = self.u.int_in_range(0..=64usize)?;
                let s = pick_size(&mut self.u, self.m.heap_bytes())?;
                (n, s / n.max(1))
            }
        };
        let p = self.a.calloc(n, size);
        match n.checked_mul(size) {
            None => {
                assert!(p.is_null(), "calloc({n}, {size}) overflows but got {p:p}");
                #[cfg(feature = "checked")]
                self.expected.push(sigalloc::ErrorKind::Overflow);
            }
            Some(total) => {
                self.answer(p, total, 16, true, &format!("calloc({n}, {size})"));
                #[cfg(feature = "checked")]
                if p.is_null() {
                    self.expected.push(refusal(total, 16));
                }
            }
        }
        Ok(Next::Check)
    }

    /// `GlobalAlloc::realloc` or C `realloc` of a live block (C `realloc` to 0 frees).
    pub(super) fn realloc(&mut self, op: Op) -> Result<Next> {
        let a = self.a;
        let heap = self.m.heap_bytes();
        let i = self.u.arbitrary::<u16>()?;
        let new = pick_size(&mut self.u, heap)?;
        let Some(b) = self.m.nth(usize::from(i)) else {
            return Ok(Next::Skip);
        };
        let global = matches!(op, Op::ReallocGlobal);
        // GlobalAlloc::realloc: a non-zero size that does not overflow isize once
        // rounded up to the alignment.
        let new = if global { new.max(1) } else { new };
        if global && new > isize::MAX as usize - b.align {
            return Ok(Next::Skip);
        }
        let align = if global { b.align } else { 16 };
        if !global && new == 0 {
            // Frees: check the contents first.
            self.m.on_free(b.ptr);
        }
        let q = if global {
            // SAFETY: `b` is live with this layout; `new` is valid (above).
            unsafe { GlobalAlloc::realloc(a, b.ptr, b.layout(), new) }
        } else {
            // SAFETY: `b` is live and came from this allocator.
            unsafe { sigalloc_realloc(a, b.ptr, new) }
        };
        let what = format!("{op:?}({:p}+{}, {new})", b.ptr, b.size);
        if !global && new == 0 {
            assert!(q.is_null(), "{what}: realloc to 0 frees and returns null");
            #[cfg(feature = "checked")]
            self.freed.push(b.ptr);
            return Ok(Next::Check);
        }
        let want = expected_usable(new, align).filter(|&n| n <= heap);
        // Same class, or a span that does not grow: resized in place.
        let in_place = want.is_some_and(|w| {
            // (Spans are whole chunks; no class is a multiple of a chunk.)
            w == b.usable || (w % CHUNK_SIZE == 0 && b.usable % CHUNK_SIZE == 0 && w <= b.usable)
        });
        if q.is_null() {
            assert!(!in_place, "{what}: an in-place resize failed");
            // (Above a chunk, an alignment also needs a free run at an aligned
            // chunk, which the model does not track.)
            if let Some(w) = want.filter(|_| align <= CHUNK_SIZE) {
                assert!(
                    !self.m.must_hold(w),
                    "{what}: null though the heap holds it"
                );
            }
            // The block is untouched.
            assert_eq!(a.usable_size(b.ptr), b.usable, "{what}");
            check_fill(b.ptr, b.usable, b.fill, &what);
            #[cfg(feature = "checked")]
            self.expected.push(refusal(new, align));
        } else {
            assert!(want.is_some(), "{what}: impossible realloc got {q:p}");
            if in_place {
                assert_eq!(q, b.ptr, "{what}: should have resized in place");
            }
            let old = self.m.live.remove(&b.ptr.addr()).expect("live");
            // GlobalAlloc keeps the first min(layout size, new) bytes; C realloc keeps
            // min(usable, new).
            let kept = if global { old.size } else { old.usable }.min(new);
            check_fill(q, kept, old.fill, &what);
            #[cfg(feature = "checked")]
            if q != b.ptr {
                self.freed.push(b.ptr);
            }
            self.m.on_alloc(a, q, new, align, false);
        }
        Ok(Next::Check)
    }

    /// `free` or `GlobalAlloc::dealloc` of a live block.
    pub(super) fn free(&mut self, op: Op) -> Result<Next> {
        let i = self.u.arbitrary::<u16>()?;
        let Some(b) = self.m.nth(usize::from(i)) else {
            return Ok(Next::Skip);
        };
        self.m.on_free(b.ptr);
        if matches!(op, Op::Free) {
            // SAFETY: the block is live and forgotten by the model.
            unsafe { self.a.free(b.ptr) };
        } else {
            // SAFETY: as above, with its layout.
            unsafe { self.a.dealloc(b.ptr, b.layout()) };
        }
        #[cfg(feature = "checked")]
        self.freed.push(b.ptr);
        Ok(Next::Check)
    }

    /// `usable_size` and `owns` of a live block, one of its interior pointers, a stack
    /// address and the side table.
    pub(super) fn query(&mut self) -> Result<Next> {
        let a = self.a;
        let i = self.u.arbitrary::<u16>()?;
        if let Some(b) = self.m.nth(usize::from(i)) {
            assert_eq!(a.usable_size(b.ptr), b.usable);
            assert!(b.usable >= b.size);
            assert!(a.owns(b.ptr));
            check_fill(b.ptr, b.usable, b.fill, "query");
            // Not a block start: no usable size (a span's tail chunks are not blocks
            // either).
            let off = usize::from(i) % (b.usable - 1) + 1;
            let inner = b.ptr.wrapping_add(off);
            assert!(a.owns(inner));
            assert_eq!(a.usable_size(inner), 0, "interior {inner:p} of {:p}", b.ptr);
        }
        let local = 0u64;
        let lp = std::ptr::from_ref(&local).cast::<u8>();
        assert!(!a.owns(lp));
        assert_eq!(a.usable_size(lp), 0);
        let arena = std::ptr::from_ref(a).cast::<u8>();
        assert!(!a.owns(arena), "the side table is not the heap's");
        assert_eq!(a.usable_size(arena), 0);
        Ok(Next::Check)
    }

    /// `good_size` of any size.
    pub(super) fn good_size(&mut self) -> Result<Next> {
        let heap = self.m.heap_bytes();
        let size = pick_size(&mut self.u, heap)?;
        let want = expected_usable(size, 1).filter(|&n| n <= heap).unwrap_or(0);
        assert_eq!(self.a.good_size(size), want, "good_size({size})");
        Ok(Next::Check)
    }

    /// Checks the answer `p` to an allocation request of `size` bytes at `align`.
    fn answer(&mut self, p: *mut u8, size: usize, align: usize, zeroed: bool, what: &str) {
        let (a, m) = (self.a, &mut self.m);
        let want = expected_usable(size, align).filter(|&n| n <= m.heap_bytes());
        match (want, p.is_null()) {
            (None, true) => {}
            (None, false) => panic!("{what}: impossible request got {p:p}"),
            (Some(w), true) => assert!(
                align > CHUNK_SIZE || !m.must_hold(w),
                "{what}: null though the heap must hold it ({} live blocks, {} B)\n{}",
                m.len(),
                m.live_bytes(),
                a.stats()
            ),
            (Some(_), false) => m.on_alloc(a, p, size, align, zeroed),
        }
        if std::env::var_os("FUZZ_TRACE").is_some() {
            eprintln!("  {what} -> {p:p}");
        }
    }
}

/// C-style realloc (named apart from `GlobalAlloc::realloc`).
///
/// # Safety
/// - as for [`SigAlloc::realloc`].
unsafe fn sigalloc_realloc<const H: usize>(a: &SigAlloc<H>, p: *mut u8, size: usize) -> *mut u8 {
    // SAFETY: forwarded from our caller.
    unsafe { a.realloc(p, size) }
}
