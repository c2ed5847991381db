//! Checked mode's reports: what went wrong, and the hook that hears of it.
//!
//! Every build carries a [`Hook`], so the code that finds a fault reports it without a
//! `cfg` of its own; without the `checked` feature the hook is empty and every report
//! compiles to nothing.
//!
//! Depends on: `sync`. A leaf.

/// What the `checked` feature reports through `SigAlloc::set_error_hook`. In every
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
    /// The allocator found its own state broken: a block it was about to hand out was
    /// already handed out (I1). The block is left where it is (a leak) and another one
    /// is handed out instead; the pointer reported is the block that was kept back.
    Corrupted,
}

/// Where reports go: the user's hook (checked mode), or nowhere.
pub(crate) struct Hook {
    /// A `fn(ErrorKind, *mut u8)`, or null for none.
    #[cfg(feature = "checked")]
    cell: crate::sync::FnCell,
}

impl Hook {
    /// Whether reports are made at all (the `checked` feature).
    pub(crate) const ON: bool = cfg!(feature = "checked");

    pub(crate) const fn new() -> Hook {
        Hook {
            #[cfg(feature = "checked")]
            cell: crate::sync::FnCell::new(),
        }
    }

    /// Installs `hook` (`None` removes it).
    #[cfg(feature = "checked")]
    pub(crate) fn set(&self, hook: Option<fn(ErrorKind, *mut u8)>) {
        self.cell
            .set(hook.map_or(core::ptr::null_mut(), |f| f as *mut ()));
    }

    /// Tells the hook, if there is one, of `kind` at `ptr`.
    #[inline(always)]
    pub(crate) fn report(&self, kind: ErrorKind, ptr: *mut u8) {
        #[cfg(feature = "checked")]
        self.report_slow(kind, ptr);
        #[cfg(not(feature = "checked"))]
        let _ = (kind, ptr);
    }

    #[cfg(feature = "checked")]
    #[cold]
    #[inline(never)]
    fn report_slow(&self, kind: ErrorKind, ptr: *mut u8) {
        let raw = self.cell.get();
        if !raw.is_null() {
            // SAFETY: only `fn(ErrorKind, *mut u8)` pointers are stored (see `set`),
            // cast to a same-sized data pointer with their provenance.
            let f = unsafe { core::mem::transmute::<*mut (), fn(ErrorKind, *mut u8)>(raw) };
            f(kind, ptr);
        }
    }
}
