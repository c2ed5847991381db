//! The interrupted operations A: each scenario's starting state, its action, and how
//! it shows that A took the path it names.

use sigalloc::CHUNK_SIZE;

use super::armed_injection;
use super::ops::Ctx;

/// What operation A does to its target.
#[derive(Clone, Copy, Debug)]
enum Action {
    Alloc(usize),
    Free,
    Realloc(usize),
}

/// The interrupted operation A, with the starting state it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// 64 B from the active chunk in its slot (the nested ops' own class).
    AllocSame,
    /// 256 B from its active chunk, while the nested ops use other classes.
    AllocOther,
    /// 256 B when the active chunk's private list and uncarved blocks are used up but
    /// frees have been pushed on its shared list: A takes the whole list with one CAS
    /// (nested frees push onto that same list).
    AllocTakeShared,
    /// 512 B when the active chunk is carved out and another chunk is `PARTIAL`: A
    /// marks the active one `FULL`, takes the partial listing and claims the chunk
    /// (`PARTIAL -> ACTIVE`) while nested frees push onto it.
    AllocClaimPartial,
    /// The class has never been used: slots and partial map empty, A claims and
    /// formats a fresh chunk.
    RefillFresh,
    /// The class's only chunk is carved out: A finds it exhausted, marks it `FULL` and
    /// claims a fresh chunk.
    RefillExhausted,
    /// Frees a block of the chunk sitting in an active slot.
    FreeActive,
    /// Frees a block of a `FULL` chunk: it becomes `PARTIAL` and A lists it.
    FreeFullToPartial,
    /// Frees the last used block of a `PARTIAL` chunk: it becomes `EMPTY` and A
    /// retires it to the free map.
    FreeRetire,
    /// 100 B -> 120 B: same class, in place.
    ReallocInPlace,
    /// 100 B -> 1000 B: a new block in a fresh class, copy, free.
    ReallocMove,
    /// A 2-chunk span grown to 3 chunks in place (the next chunk is free).
    ReallocSpanGrow,
    /// A 3-chunk span.
    SpanAlloc,
    /// Frees a 3-chunk span.
    SpanFree,
}

pub(crate) const SCENARIOS: [Scenario; 14] = [
    Scenario::AllocSame,
    Scenario::AllocOther,
    Scenario::AllocTakeShared,
    Scenario::AllocClaimPartial,
    Scenario::RefillFresh,
    Scenario::RefillExhausted,
    Scenario::FreeActive,
    Scenario::FreeFullToPartial,
    Scenario::FreeRetire,
    Scenario::ReallocInPlace,
    Scenario::ReallocMove,
    Scenario::ReallocSpanGrow,
    Scenario::SpanAlloc,
    Scenario::SpanFree,
];

const SPAN3: usize = 3 * CHUNK_SIZE - 100;

impl Scenario {
    /// The block size of A's class: the "same class" nested operations use it.
    pub(crate) fn class(self) -> usize {
        use Scenario::*;
        match self {
            AllocSame | FreeActive => 64,
            AllocOther | AllocTakeShared => 256,
            AllocClaimPartial => 512,
            RefillFresh | RefillExhausted => 1024,
            FreeFullToPartial | FreeRetire => 512,
            ReallocInPlace | ReallocMove => 128,
            ReallocSpanGrow | SpanAlloc | SpanFree => 2048,
        }
    }

    fn action(self) -> Action {
        use Scenario::*;
        match self {
            AllocSame => Action::Alloc(64),
            AllocOther | AllocTakeShared => Action::Alloc(256),
            AllocClaimPartial => Action::Alloc(512),
            RefillFresh | RefillExhausted => Action::Alloc(1024),
            FreeActive | FreeFullToPartial | FreeRetire | SpanFree => Action::Free,
            ReallocInPlace => Action::Realloc(120),
            ReallocMove => Action::Realloc(1000),
            ReallocSpanGrow => Action::Realloc(SPAN3),
            SpanAlloc => Action::Alloc(SPAN3),
        }
    }

    /// How A alone changes the number of chunks in use: shows it took the named path.
    pub(crate) fn chunk_delta(self) -> isize {
        use Scenario::*;
        match self {
            RefillFresh | RefillExhausted | ReallocMove | ReallocSpanGrow => 1,
            FreeRetire => -1,
            SpanAlloc => 3,
            SpanFree => -3,
            AllocSame | AllocOther | AllocTakeShared | AllocClaimPartial | FreeActive
            | FreeFullToPartial | ReallocInPlace => 0,
        }
    }

    /// How many RMWs A alone makes, where that shows it took the path it names. Checked
    /// mode adds one: the block's live bit, set on hand-out or cleared on free.
    pub(crate) fn rmws(self) -> Option<usize> {
        use Scenario::*;
        let live_bit = usize::from(cfg!(feature = "checked"));
        // Checked mode with the caches built (even off, as here) also swaps a freed
        // block's key in before the live bit (see `percpu`'s docs on keys).
        let key = usize::from(cfg!(feature = "checked") && sigalloc::PERCPU_CACHES > 0);
        match self {
            // The slot swap, the CAS taking the shared list, the put-back CAS.
            AllocTakeShared => Some(3 + live_bit),
            // The slot swap, the CAS to FULL, taking our own partial listing, the claim
            // CAS, the put-back CAS. (Other threads' slots are tried only when no chunk is
            // free.)
            AllocClaimPartial => Some(5 + live_bit),
            // The push CAS only.
            FreeActive => Some(1 + live_bit + key),
            // The push CAS, then the partial-map listing.
            FreeFullToPartial => Some(2 + live_bit + key),
            _ => None,
        }
    }

    /// Builds A's starting state; returns A's target block (null for an alloc).
    pub(crate) fn setup(self, cx: &Ctx<'_>) -> *mut u8 {
        use Scenario::*;
        // Victims first, so the scenario's own blocks decide the state A sees: a block
        // of the nested ops' default class, a 2 KiB block and a 2-chunk span.
        cx.victim(64);
        cx.victim(2048);
        cx.victim(CHUNK_SIZE + 100);
        let cap512 = CHUNK_SIZE / 512;
        match self {
            AllocSame => {
                for _ in 0..3 {
                    cx.alloc(64);
                }
                std::ptr::null_mut()
            }
            AllocOther => {
                for _ in 0..3 {
                    cx.alloc(256);
                }
                std::ptr::null_mut()
            }
            AllocTakeShared => {
                // Carve the whole chunk, then free three of its blocks: they go on the
                // shared list of the chunk, which stays in its slot.
                let b: Vec<_> = (0..CHUNK_SIZE / 256).map(|_| cx.alloc(256)).collect();
                b[..3].iter().for_each(|&p| cx.free(p));
                cx.victims.borrow_mut().extend([b[4], b[5]]);
                std::ptr::null_mut()
            }
            AllocClaimPartial => {
                // As for `FreeRetire`, but the first chunk keeps two blocks in use (both
                // victims) and A allocates.
                let b: Vec<_> = (0..2 * cap512).map(|_| cx.alloc(512)).collect();
                b[..cap512 - 2].iter().for_each(|&p| cx.free(p));
                cx.victims
                    .borrow_mut()
                    .extend([b[cap512 - 2], b[cap512 - 1]]);
                std::ptr::null_mut()
            }
            RefillFresh | SpanAlloc => std::ptr::null_mut(),
            RefillExhausted => {
                // Carves every block of the first 1 KiB chunk; it stays in its slot.
                for _ in 0..CHUNK_SIZE / 1024 {
                    cx.alloc(1024);
                }
                std::ptr::null_mut()
            }
            FreeActive => {
                let t = cx.alloc(64);
                cx.alloc(64);
                cx.victim(64);
                t
            }
            FreeFullToPartial | FreeRetire => {
                // Two chunks of 512 B carved out: the first `FULL` (the allocation that
                // found it exhausted marked it), the second in its slot with nothing
                // left to carve, so a nested 512 B alloc must look further.
                let b: Vec<_> = (0..2 * cap512).map(|_| cx.alloc(512)).collect();
                if self == FreeRetire {
                    // The first chunk becomes PARTIAL with one block still in use.
                    b[1..cap512].iter().for_each(|&p| cx.free(p));
                } else {
                    cx.victims.borrow_mut().push(b[cap512 - 1]);
                }
                cx.victims.borrow_mut().push(b[2 * cap512 - 1]);
                b[0]
            }
            ReallocInPlace | ReallocMove => {
                let t = cx.alloc(100);
                cx.victim(128);
                t
            }
            ReallocSpanGrow => cx.alloc(2 * CHUNK_SIZE - 100),
            SpanFree => cx.alloc(SPAN3),
        }
    }

    /// Runs A on `target`, with the model's bookkeeping around it.
    pub(crate) fn run(self, cx: &Ctx<'_>, target: *mut u8) {
        match self.action() {
            Action::Alloc(n) => {
                let p = cx.a.malloc(n);
                assert!(!p.is_null(), "{self:?}: A's malloc({n}) failed");
                cx.model
                    .borrow_mut()
                    .on_alloc(p, n, 16, false, cx.next_fill());
            }
            Action::Free => cx.free(target),
            Action::Realloc(n) => {
                let old = cx.take(target);
                // SAFETY: `target` is a live block of `cx.a` (set up for this).
                let q = unsafe { cx.a.realloc(target, n) };
                cx.reallocated(old, q, n);
                let in_place = !matches!(self, Scenario::ReallocMove);
                if !armed_injection() {
                    assert_eq!(q == target, in_place, "{self:?} took the wrong path");
                }
            }
        }
    }
}
