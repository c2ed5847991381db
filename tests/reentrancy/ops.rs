//! What a signal handler does, as the nested operations B and C: the run's world
//! ([`Ctx`]: the allocator, the model of its live blocks, the victims nested operations
//! may free or reallocate) and the operations themselves ([`Op`]).

use std::cell::{Cell, RefCell};

use sigalloc::CHUNK_SIZE;

use super::common::pattern::verify;
use super::common::{Live, Model};
use super::Heap;

/// One run's world: the allocator, the model of its live blocks, the blocks nested
/// operations may free or reallocate.
pub(crate) struct Ctx<'a> {
    pub(crate) a: &'a Heap,
    pub(crate) model: RefCell<Model>,
    /// Live blocks (also in the model) kept for nested frees and reallocs; the last one
    /// goes first.
    pub(crate) victims: RefCell<Vec<*mut u8>>,
    /// The last pattern seed handed out.
    pub(crate) fill: Cell<u64>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(a: &'a Heap) -> Self {
        Ctx {
            a,
            model: RefCell::new(Model::new()),
            victims: RefCell::new(Vec::new()),
            fill: Cell::new(0),
        }
    }

    pub(crate) fn next_fill(&self) -> u64 {
        let f = self.fill.get() % 251 + 1;
        self.fill.set(f);
        f
    }

    /// Allocates, checks and fills a block, recording it in the model.
    pub(crate) fn alloc(&self, size: usize) -> *mut u8 {
        let p = self.a.malloc(size);
        assert!(!p.is_null(), "malloc({size}) failed on a roomy heap");
        self.model
            .borrow_mut()
            .on_alloc(p, size, 16, false, self.next_fill());
        p
    }

    /// Allocates a block that nested operations may free or reallocate.
    pub(crate) fn victim(&self, size: usize) -> *mut u8 {
        let p = self.alloc(size);
        self.victims.borrow_mut().push(p);
        p
    }

    /// Checks a block's fill, forgets it and frees it.
    pub(crate) fn free(&self, p: *mut u8) {
        self.model.borrow_mut().on_free(p);
        // SAFETY: `p` is a live block of `self.a` (the model knew it), freed once.
        unsafe { self.a.free(p) };
    }

    /// Forgets a block that is about to be reallocated, after checking it.
    pub(crate) fn take(&self, p: *mut u8) -> Live {
        self.model.borrow_mut().on_free(p)
    }

    /// Records the result of reallocating `old` to `size` bytes.
    pub(crate) fn reallocated(&self, old: Live, new: *mut u8, size: usize) {
        assert!(!new.is_null(), "realloc to {size} failed on a roomy heap");
        verify(new, old.size.min(size), old.seed, "reallocated");
        self.model
            .borrow_mut()
            .on_alloc(new, size, 16, false, self.next_fill());
    }
}

/// A nested operation (B or C): what a signal handler does.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    /// `malloc`, fill, verify, `free`.
    AllocFree(usize),
    /// `malloc` and fill; the block stays live until the end of the run.
    Alloc(usize),
    /// Frees the most recent victim (a block allocated before A began).
    FreeVictim,
    /// Reallocates the most recent victim to this size; it stays a victim.
    Realloc(usize),
}

pub(crate) fn run_op(cx: &Ctx<'_>, op: Op) {
    match op {
        Op::AllocFree(n) => {
            let p = cx.alloc(n);
            cx.free(p);
        }
        Op::Alloc(n) => {
            cx.alloc(n);
        }
        Op::FreeVictim => {
            let p = cx.victims.borrow_mut().pop().expect("no victim left");
            cx.free(p);
        }
        Op::Realloc(n) => {
            let p = cx.victims.borrow_mut().pop().expect("no victim left");
            let old = cx.take(p);
            // SAFETY: `p` is a live block of `cx.a`; the model no longer uses it.
            let q = unsafe { cx.a.realloc(p, n) };
            cx.reallocated(old, q, n);
            cx.victims.borrow_mut().push(q);
        }
    }
}

/// The nested operations tried at every step: both small classes (A's own and
/// another), alloc-only, a free and a realloc of blocks that predate A, and a span.
pub(crate) fn nested_ops(class: usize) -> [Op; 7] {
    [
        Op::AllocFree(16),
        Op::AllocFree(class),
        Op::Alloc(class),
        Op::Alloc(100),
        Op::FreeVictim,
        Op::Realloc(300),
        Op::AllocFree(2 * CHUNK_SIZE + 100),
    ]
}
