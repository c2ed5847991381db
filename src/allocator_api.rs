//! `allocator_api2::alloc::Allocator` for `SigAlloc` (feature `allocator-api2`): per-heap
//! collections on stable Rust, e.g. `allocator_api2::vec::Vec::new_in(&HEAP)`, each
//! heap its own `SigAlloc` (a second RAM bank, memory for one interrupt level).
//!
//! Depends on: the public face only (`GlobalAlloc`, `usable_size`).
#![cfg(feature = "allocator-api2")]

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator};

use crate::SigAlloc;

// SAFETY: a block handed out stays valid, and is handed to no one else (I1), until it
// is deallocated; `usable_size` bytes of it are the caller's (the slice we return);
// every reference to one `SigAlloc` serves one heap, so a block may be freed through
// any of them; moving or copying the reference keeps its blocks valid.
unsafe impl<const HEAP: usize> Allocator for SigAlloc<HEAP> {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: `GlobalAlloc::alloc` accepts any layout (a zero size gets a unique
        // block) and returns null on failure.
        let block = NonNull::new(unsafe { GlobalAlloc::alloc(self, layout) }).ok_or(AllocError)?;
        let len = self.usable_size(block.as_ptr());
        Ok(NonNull::slice_from_raw_parts(block, len))
    }

    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: as in `allocate`.
        let block =
            NonNull::new(unsafe { GlobalAlloc::alloc_zeroed(self, layout) }).ok_or(AllocError)?;
        // Only `layout.size()` bytes are known to be zero: that is what we hand out.
        Ok(NonNull::slice_from_raw_parts(block, layout.size()))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: `Allocator::deallocate`'s contract: `ptr` is a block of ours that
        // `layout` fits, which is `GlobalAlloc::dealloc`'s.
        unsafe { GlobalAlloc::dealloc(self, ptr.as_ptr(), layout) }
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: `Allocator::grow`'s contract (`ptr` ours, fitting `old`).
        unsafe { self.resize(ptr, old, new) }
    }

    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: `Allocator::shrink`'s contract (`ptr` ours, fitting `old`).
        unsafe { self.resize(ptr, old, new) }
    }
}

impl<const HEAP: usize> SigAlloc<HEAP> {
    /// `grow` and `shrink`: in place when the block allows (`realloc`), else moved.
    ///
    /// # Safety
    /// - `ptr` is a live block of ours that `old` fits.
    unsafe fn resize(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if new.align() != old.align() {
            let moved = self.allocate(new)?;
            // SAFETY: both blocks are live and distinct (I1); the copy is as long as the
            // smaller of the two layouts.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    ptr.as_ptr(),
                    moved.cast::<u8>().as_ptr(),
                    old.size().min(new.size()),
                )
            };
            // SAFETY: forwarded: `ptr` is ours and fits `old`.
            unsafe { self.deallocate(ptr, old) };
            return Ok(moved);
        }
        // SAFETY: `GlobalAlloc::realloc`'s contract: `ptr` is ours with `old`, and the
        // new size rounded to the alignment does not overflow (a `Layout` exists).
        let block = unsafe { GlobalAlloc::realloc(self, ptr.as_ptr(), old, new.size()) };
        let block = NonNull::new(block).ok_or(AllocError)?;
        let len = self.usable_size(block.as_ptr());
        Ok(NonNull::slice_from_raw_parts(block, len))
    }
}
