//! Loom models of sigalloc's lock-free protocols: every interleaving (up to a preemption
//! bound) of two or three threads running the real allocator code over loom's atomics.
//!
//! Run (release: loom is slow in debug):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test --release --test loom -- --test-threads=1 --nocapture
//! ```
//!
//! Each model prints `loom model <name>: <N> interleavings`, for CI to sum. Without
//! `--cfg loom` this file is empty. `LOOM_MAX_PREEMPTIONS` (default 2) is the base
//! preemption bound; models that stay cheap add up to 3 to it (see [`check`]). With the
//! base at 2 the whole file takes well under a minute in release on 2 cores.
//!
//! # What is checked
//! Ownership of every block is shadowed by loom `UnsafeCell`s, one per `granule` bytes
//! of the arena. Handing a block out writes the owner's tag into every cell the block
//! covers, after checking the cell is free; freeing checks the tag and clears it. A
//! block handed out twice (I1) is therefore caught either as a loom causality violation
//! (the two owners' writes are unordered), or by the tag check (they are ordered, but
//! the first owner has not freed it). A missing Release/Acquire between a free and the
//! next hand-out of the same memory is caught the same way. The tag is also written into
//! the block itself and checked before the free, so an allocator write into a live
//! block (a link word pushed onto it) fails the model too. After the threads are joined
//! every model checks that nothing is in use and that the whole heap can be claimed as
//! one span again: no chunk was lost or left listed wrongly.
//!
//! The negative model turns on `sigalloc::break_ownership`, which makes taking a chunk
//! from an active slot a peek instead of a swap: two threads then own one chunk, and the
//! model must fail. The switch is a process-wide flag, so every model here holds the
//! process-wide test lock (`common::serial`) for its whole run; `--test-threads=1` is
//! still recommended.
//!
//! One file per part, in `tests/loom/`: `world.rs` (the allocator and its ownership
//! shadow), `models.rs` (models 1-5 and the negative model) and `claim.rs` (model 6);
//! this one runs them.
#![cfg(loom)]
// A test binary: the std atomic below is the harness's own counter, not allocator state.
#![allow(clippy::disallowed_types)]

#[path = "loom/claim.rs"]
mod claim;
mod common;
#[path = "loom/models.rs"]
mod models;
#[path = "loom/world.rs"]
mod world;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::serial;
use loom::thread;

/// The base preemption bound when `LOOM_MAX_PREEMPTIONS` is not set.
const BASE_BOUND: usize = 2;

/// Stack for the thread that runs a model's body (it builds the arena on its stack).
const STACK: usize = 1 << 16;

/// Runs `f` under loom and prints how many interleavings were explored.
///
/// The preemption bound is the base (`LOOM_MAX_PREEMPTIONS`, else [`BASE_BOUND`]) plus
/// `extra`: models with few interleavings per preemption go deeper at little cost.
pub(crate) fn check<F>(name: &str, extra: usize, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    if let (_, Err(payload)) = explore(&format!("loom model {name}"), extra, f) {
        std::panic::resume_unwind(payload);
    }
}

/// [`check`], returning instead of panicking: how many interleavings were run (the last
/// one the failing one, if any) and how the model ended. Prints `<label>: <N>
/// interleavings ...`.
pub(crate) fn explore<F>(label: &str, extra: usize, f: F) -> (usize, std::thread::Result<()>)
where
    F: Fn() + Sync + Send + 'static,
{
    let _serial = serial();
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(b.preemption_bound.unwrap_or(BASE_BOUND) + extra);
    // A slow path that claims a region's chunk (the registry, the address map, the
    // region's maps) takes a few hundred atomic steps: the default bound of 1000
    // branches per execution was too tight for the claim model once the address map
    // joined it. Spin loops would still be caught, at ten times the cost.
    b.max_branches = 10_000;
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let start = std::time::Instant::now();
    let f = std::sync::Arc::new(f);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        b.check(move || {
            // ORDERING: Relaxed: a counter read after `check` returns, on this thread.
            counter.fetch_add(1, Ordering::Relaxed);
            // The model body runs on a thread with a larger stack: `SigAlloc::new()`
            // builds the whole arena on the stack, more than loom's default holds.
            let f = f.clone();
            thread::Builder::new()
                .stack_size(STACK)
                .spawn(move || f())
                .unwrap()
                .join()
                .unwrap();
        })
    }));
    // ORDERING: Relaxed: the model has ended; its executions ran on this thread.
    let n = runs.load(Ordering::Relaxed);
    println!(
        "\n{label}: {n} interleavings ({:.1}s, preemption bound {}){}",
        start.elapsed().as_secs_f64(),
        b.preemption_bound.unwrap_or(0),
        if outcome.is_err() { " FAILED" } else { "" }
    );
    (n, outcome)
}
