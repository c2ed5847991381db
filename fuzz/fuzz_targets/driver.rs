//! The op-stream interpreter and reference model shared by the `api` and `checked`
//! fuzz targets.
//!
//! An input is a sequence of operations decoded with `arbitrary::Unstructured`: every
//! public entry point (`GlobalAlloc` alloc / alloc_zeroed / realloc / dealloc, C-style
//! malloc / calloc / realloc / free, usable_size, good_size, owns, stats). Each result is
//! checked against a model of the live blocks:
//! - every block is aligned, lies inside the heap, and its `usable_size` bytes overlap
//!   no other live block's (so nothing is ever handed out twice);
//! - `usable_size` is exactly the class size or the span bytes of the request;
//! - contents survive until free and across realloc (first `min(old, new)` bytes);
//! - zeroed memory reads zero;
//! - impossible requests (too big for the heap, alignment above 4096, calloc overflow)
//!   get null, and a possible one gets null only when the model says the heap may be
//!   unable to hold it (see [`Model::must_hold`] for the bound);
//! - `stats().bytes_in_use` equals the model's live bytes after every operation, is 0
//!   once the input has freed everything, and at most the idle active-slot chunks stay
//!   in use then.
//!
//! With the `checked` feature the stream also makes deliberate bad calls (double frees,
//! foreign and interior frees, stale pointers, deallocs with a wrong layout) and checks
//! that each is reported once with the right kind (and the right pointer) and changes
//! nothing. Every op also checks the exact reports a refused allocation makes.
//!
//! Layout: `driver/model.rs` (the model), `driver/decode.rs` (operations, sizes and
//! alignments from the input), `driver/ops.rs` (one function per operation),
//! `driver/bad.rs` (the bad calls of checked mode) and `driver/reports.rs` (checked
//! mode's error hook); this file holds the loop that decodes an operation, runs it and
//! checks what every operation must leave behind.

#[cfg(feature = "checked")]
mod bad;
mod decode;
mod model;
mod ops;
#[cfg(feature = "checked")]
mod reports;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use sigalloc::SigAlloc;

use decode::{Op, GOOD_OPS};
use model::Model;

/// What the loop does once an operation has run.
enum Next {
    /// Check what every operation must leave behind (checked mode's reports, and every
    /// few operations the exact statistics).
    Check,
    /// The operation found nothing to do (no live block to pick, a layout that cannot
    /// be built): go straight to the next one.
    Skip,
}

/// One input's run: the allocator, the model of its live blocks and the undecoded rest
/// of the input. A decoding error (the input ran out) ends the run.
struct Run<'d, const H: usize> {
    a: &'static SigAlloc<H>,
    m: Model,
    u: Unstructured<'d>,
    /// Pointers freed recently (checked mode: stale frees).
    #[cfg(feature = "checked")]
    freed: Vec<*mut u8>,
    /// The error hook's counts before the running operation.
    #[cfg(feature = "checked")]
    before: [usize; 6],
    /// The reports the running operation must make.
    #[cfg(feature = "checked")]
    expected: Vec<sigalloc::ErrorKind>,
}

/// Runs one input against `a`, which must be empty of this input's blocks at the start
/// (it may hold idle chunks from earlier inputs) and is left so.
pub fn run<const H: usize>(a: &'static SigAlloc<H>, data: &[u8]) {
    #[cfg(feature = "checked")]
    a.set_error_hook(Some(reports::record));
    let mut r = Run {
        a,
        m: Model::new(a),
        u: Unstructured::new(data),
        #[cfg(feature = "checked")]
        freed: Vec::new(),
        #[cfg(feature = "checked")]
        before: [0; 6],
        #[cfg(feature = "checked")]
        expected: Vec::new(),
    };
    let mut steps = 0usize;
    // FUZZ_TRACE=1 prints each op (for reproducers).
    let trace = std::env::var_os("FUZZ_TRACE").is_some();
    while !r.u.is_empty() && steps < 4096 {
        steps += 1;
        let op = r.pick_op();
        if trace {
            eprintln!("op {steps}: {op:?} ({} live)", r.m.len());
        }
        #[cfg(feature = "checked")]
        {
            r.before = reports::snapshot();
            r.expected.clear();
        }
        match r.op(op) {
            Ok(Next::Check) => {}
            Ok(Next::Skip) => continue,
            Err(_) => break,
        }
        #[cfg(feature = "checked")]
        {
            reports::expect(r.before, &r.expected, &format!("{op:?}"));
            if r.freed.len() > 64 {
                r.freed.drain(..32);
            }
        }
        // Exact stats every few ops (a full scan of the side table; every op would
        // dominate the run time).
        if !steps.is_multiple_of(8) {
            continue;
        }
        let s = a.stats();
        assert_eq!(
            s.bytes_in_use,
            r.m.live_bytes(),
            "after {op:?}: stats disagree with {} live blocks\n{s}",
            r.m.len()
        );
    }
    r.m.drain(a);
    #[cfg(feature = "checked")]
    {
        let s = reports::snapshot();
        assert_eq!(s[5], 0, "the allocator reported corruption");
    }
}

impl<const H: usize> Run<'_, H> {
    /// The next operation: in checked mode a bad call one time in four.
    fn pick_op(&mut self) -> Op {
        #[cfg(feature = "checked")]
        if self.u.ratio(1u8, 4u8).unwrap_or(false) {
            return *self.u.choose(&decode::BAD_OPS).unwrap_or(&Op::Query);
        }
        *self.u.choose(&GOOD_OPS).unwrap_or(&Op::Query)
    }

    /// Decodes and runs one operation.
    fn op(&mut self, op: Op) -> Result<Next> {
        match op {
            Op::Alloc | Op::AllocZeroed | Op::Malloc | Op::ReallocNull => self.alloc(op),
            Op::Calloc => self.calloc(),
            Op::ReallocGlobal | Op::ReallocC => self.realloc(op),
            Op::Free | Op::Dealloc => self.free(op),
            Op::Query => self.query(),
            Op::GoodSize => self.good_size(),
            #[cfg(feature = "checked")]
            Op::DoubleFree => self.double_free(),
            #[cfg(feature = "checked")]
            Op::InteriorFree => self.interior_free(),
            #[cfg(feature = "checked")]
            Op::ForeignFree => self.foreign_free(),
            #[cfg(feature = "checked")]
            Op::StaleFree => self.stale_free(),
            #[cfg(feature = "checked")]
            Op::WrongLayout => self.wrong_layout(),
        }
    }
}
