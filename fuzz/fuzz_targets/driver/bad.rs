//! Checked mode's bad calls, one function each: double frees, interior, foreign and
//! stale frees, and deallocs with a wrong layout. Each must be reported once, with the
//! right kind and pointer, and change nothing. `Err` means the input ran out.

use std::alloc::{GlobalAlloc, Layout};

use libfuzzer_sys::arbitrary::Result;
use sigalloc::{ErrorKind, CHUNK_SIZE};

use super::decode::{pick_align, pick_size};
use super::model::{check_fill, expected_usable};
use super::reports;
use super::{Next, Run};

impl<const H: usize> Run<'_, H> {
    /// Frees a live block, then frees it again (by `free` or `dealloc`).
    pub(super) fn double_free(&mut self) -> Result<Next> {
        let a = self.a;
        let i = self.u.arbitrary::<u16>()?;
        let how = self.u.int_in_range(0u8..=1)?;
        let Some(b) = self.m.nth(usize::from(i)) else {
            return Ok(Next::Skip);
        };
        self.m.on_free(b.ptr);
        // SAFETY: the block is live and forgotten by the model.
        unsafe { a.free(b.ptr) };
        reports::expect(self.before, &[], "first free of a double free");
        // Nobody allocated since: this is a double free.
        if how == 0 {
            // SAFETY: checked mode refuses a double free and changes nothing.
            unsafe { a.free(b.ptr) };
        } else {
            // SAFETY: as above, through dealloc with the block's layout.
            unsafe { a.dealloc(b.ptr, b.layout()) };
        }
        self.expected.push(ErrorKind::DoubleFree);
        self.freed.push(b.ptr);
        let what = format!("double free of {:p}+{} (DoubleFree)", b.ptr, b.size);
        reports::expect(self.before, &self.expected, &what);
        assert_eq!(reports::last_ptr(), b.ptr.addr(), "{what}");
        Ok(Next::Check)
    }

    /// Frees a pointer inside a live block (by `free` or `dealloc`).
    pub(super) fn interior_free(&mut self) -> Result<Next> {
        let a = self.a;
        let i = self.u.arbitrary::<u16>()?;
        let off = self.u.arbitrary::<u32>()?;
        let how = self.u.int_in_range(0u8..=1)?;
        let Some(b) = self.m.nth(usize::from(i)) else {
            return Ok(Next::Skip);
        };
        let off = off as usize % (b.usable - 1) + 1;
        let p = b.ptr.wrapping_add(off);
        if how == 0 {
            // SAFETY: checked mode refuses a free of an interior pointer.
            unsafe { a.free(p) };
        } else {
            // SAFETY: as above, through dealloc; `usable_size(p)` is 0, so the layout
            // is not compared.
            unsafe { a.dealloc(p, b.layout()) };
        }
        self.expected.push(ErrorKind::InvalidFree);
        let what = format!("interior free {p:p} of {:p}+{}", b.ptr, b.usable);
        reports::expect(self.before, &self.expected, &what);
        assert_eq!(reports::last_ptr(), p.addr(), "{what}");
        check_fill(b.ptr, b.usable, b.fill, &what);
        Ok(Next::Check)
    }

    /// Frees a pointer the heap never handed out: the stack, the system heap, the side
    /// table, just before the first chunk, just past the arena.
    pub(super) fn foreign_free(&mut self) -> Result<Next> {
        let a = self.a;
        let which = self.u.int_in_range(0u8..=4)?;
        let mut local = [0u64; 4];
        let boxed = Box::new(0u64);
        let arena = std::ptr::from_ref(a).cast::<u8>().cast_mut();
        let p: *mut u8 = match which {
            0 => local.as_mut_ptr().cast(),
            1 => std::ptr::from_ref(&*boxed).cast::<u8>().cast_mut(),
            // The side table (chunk 0) and the last byte before chunk `first`.
            2 => arena,
            3 => arena.wrapping_add(self.m.first * CHUNK_SIZE - 1),
            // Just past the arena.
            _ => arena.wrapping_add(H),
        };
        // SAFETY: checked mode refuses a pointer the heap never handed out.
        unsafe { a.free(p) };
        self.expected.push(ErrorKind::InvalidFree);
        let what = format!("foreign free {p:p} ({which})");
        reports::expect(self.before, &self.expected, &what);
        assert_eq!(reports::last_ptr(), p.addr(), "{what}");
        assert_eq!(local, [0; 4]);
        drop(boxed);
        Ok(Next::Check)
    }

    /// Frees a pointer freed recently: a double free, an invalid free, or (handed out
    /// again since) skipped.
    pub(super) fn stale_free(&mut self) -> Result<Next> {
        let a = self.a;
        let i = self.u.arbitrary::<u16>()?;
        if self.freed.is_empty() {
            return Ok(Next::Skip);
        }
        let p = self.freed[usize::from(i) % self.freed.len()];
        match self.m.containing(p.addr()) {
            // Handed out again since: freeing it would be a real free.
            Some(b) if b.ptr == p => return Ok(Next::Skip),
            Some(b) => {
                // SAFETY: checked mode refuses an interior pointer.
                unsafe { a.free(p) };
                self.expected.push(ErrorKind::InvalidFree);
                let what = format!("stale {p:p} inside live {:p}+{}", b.ptr, b.usable);
                reports::expect(self.before, &self.expected, &what);
            }
            None => {
                // SAFETY: checked mode refuses a pointer that is not a live block:
                // either a free block (double free) or not a block start of what its
                // chunk holds now (invalid).
                unsafe { a.free(p) };
                let got = reports::snapshot();
                let double = got[1] - self.before[1];
                let invalid = got[0] - self.before[0];
                assert_eq!(
                    double + invalid,
                    1,
                    "stale free {p:p}: expected one DoubleFree or InvalidFree report"
                );
                self.expected.push(if double == 1 {
                    ErrorKind::DoubleFree
                } else {
                    ErrorKind::InvalidFree
                });
                reports::expect(self.before, &self.expected, "stale free");
            }
        }
        assert_eq!(reports::last_ptr(), p.addr());
        Ok(Next::Check)
    }

    /// Deallocs a live block with another layout: refused unless the allocator cannot
    /// tell it from the block's own.
    pub(super) fn wrong_layout(&mut self) -> Result<Next> {
        let a = self.a;
        let i = self.u.arbitrary::<u16>()?;
        let size = pick_size(&mut self.u, self.m.heap_bytes())?;
        let align = pick_align(&mut self.u)?;
        let Some(b) = self.m.nth(usize::from(i)) else {
            return Ok(Next::Skip);
        };
        let Ok(l) = Layout::from_size_align(size.max(1), align) else {
            return Ok(Next::Skip);
        };
        if expected_usable(l.size(), l.align()) == Some(b.usable) {
            // The same class or span length: the allocator cannot tell it from the
            // block's own layout, and frees it.
            self.m.on_free(b.ptr);
            self.freed.push(b.ptr);
        } else {
            self.expected.push(ErrorKind::LayoutMismatch);
        }
        // SAFETY: a live block; checked mode refuses a layout its class or span would
        // not have served and leaves the block live.
        unsafe { a.dealloc(b.ptr, l) };
        let what = format!(
            "dealloc {:p}+{} (align {}) with {l:?}",
            b.ptr, b.size, b.align
        );
        reports::expect(self.before, &self.expected, &what);
        if !self.expected.is_empty() {
            assert_eq!(reports::last_ptr(), b.ptr.addr(), "{what}");
            assert_eq!(a.usable_size(b.ptr), b.usable, "{what}");
            check_fill(b.ptr, b.usable, b.fill, &what);
        }
        Ok(Next::Check)
    }
}
