//! Lock-free bitmaps: claim a bit, claim a run of bits, release.
//!
//! Two uses, both ABA-free by construction (I3): a bit is a token, and a token is taken
//! or given back by one RMW on the word that holds it, so there is no pointer to go
//! stale.
//! - The *used* map of a region: bit set = chunk in use. Zero means free, so a fresh
//!   heap's map is all zero and the heap stays in `.bss`. [`Bitmap::claim_one`] and
//!   [`Bitmap::claim_run`] hand out exclusive ownership of free chunks.
//! - The *partial* map of a class: bit set = chunk listed as having free blocks.
//!   [`Bitmap::take_any`] removes a listing; the chunk's anchor then decides whether the
//!   taker really gets the chunk (see `chunk.rs`).
//!
//! A run claim takes its words in ascending order, one CAS per word, and gives back what
//! it took if a later word turns out to be taken. A CAS fails only because another
//! thread changed the word, so someone always makes progress (I4); a thread stopped
//! halfway through a run claim only hides those chunks until it resumes.
//!
//! Depends on: `sync`. Upholds I2, I3, I4.

use crate::sync::{AtomicUsize, Ordering};

const W: usize = usize::BITS as usize;

/// A view of `len` bits stored in shared words.
#[derive(Clone, Copy)]
pub(crate) struct Bitmap<'a> {
    words: &'a [AtomicUsize],
    len: usize,
}

/// Mask of bits `lo..hi` within one word (`lo < hi <= W`).
#[inline(always)]
fn mask(lo: usize, hi: usize) -> usize {
    let upper = if hi >= W {
        usize::MAX
    } else {
        (1usize << hi) - 1
    };
    upper & !((1usize << lo) - 1)
}

impl<'a> Bitmap<'a> {
    /// Words needed for `len` bits.
    pub(crate) const fn words_for(len: usize) -> usize {
        len.div_ceil(W)
    }

    /// A view of `len` bits over `words` (which must hold at least `words_for(len)`).
    pub(crate) fn new(words: &'a [AtomicUsize], len: usize) -> Self {
        let len = len.min(words.len() * W);
        Bitmap { words, len }
    }

    #[inline(always)]
    fn word(&self, i: usize) -> Option<&'a AtomicUsize> {
        self.words.get(i / W)
    }

    /// Sets bit `i`. Release: publishes what the setter wrote before it (a retired
    /// chunk's reset descriptor, or a chunk's partial state) to the Acquire claimer.
    pub(crate) fn set(&self, i: usize) {
        if let Some(w) = self.word(i) {
            // ORDERING: Release pairs with the Acquire in `take_any`/`claim_*`.
            w.fetch_or(1 << (i % W), Ordering::Release);
        }
    }

    /// Clears bit `i`. Release, like [`set`](Self::set): clearing a used bit frees a
    /// chunk whose reset descriptor the next claimer must see.
    pub(crate) fn clear(&self, i: usize) {
        if let Some(w) = self.word(i) {
            // ORDERING: Release pairs with the Acquire CAS in `claim_one`/`claim_run`.
            w.fetch_and(!(1 << (i % W)), Ordering::Release);
        }
    }

    /// Whether bit `i` is set (a snapshot; for statistics and validation).
    pub(crate) fn get(&self, i: usize) -> bool {
        self.word(i)
            // ORDERING: Relaxed: a snapshot that orders nothing.
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (i % W)) != 0)
    }

    /// Number of set bits in `lo..hi` (a snapshot).
    pub(crate) fn count(&self, lo: usize, hi: usize) -> usize {
        let hi = hi.min(self.len);
        if lo >= hi {
            return 0;
        }
        (lo / W..hi.div_ceil(W))
            .map(|w| {
                let inside = mask(lo.max(w * W) - w * W, hi.min((w + 1) * W) - w * W);
                (self.load_word(w) & inside).count_ones() as usize
            })
            .sum()
    }

    /// Takes any set bit, clearing it; returns its index.
    pub(crate) fn take_any(&self) -> Option<usize> {
        for (wi, w) in self.words.iter().enumerate() {
            // ORDERING: Relaxed scan; the Acquire RMW below is what synchronizes.
            let mut cur = w.load(Ordering::Relaxed);
            while cur != 0 {
                let bit = cur.trailing_zeros() as usize;
                let m = 1usize << bit;
                // ORDERING: Acquire pairs with the Release in `set`: the setter's
                // anchor change happens-before our read of the anchor.
                let old = w.fetch_and(!m, Ordering::Acquire);
                let idx = wi * W + bit;
                if old & m != 0 && idx < self.len {
                    return Some(idx);
                }
                cur = old & !m;
            }
        }
        None
    }

    /// Claims one clear bit in `lo..hi`, setting it; returns its index.
    pub(crate) fn claim_one(&self, lo: usize, hi: usize) -> Option<usize> {
        let hi = hi.min(self.len);
        let mut i = lo;
        while i < hi {
            let wi = i / W;
            let Some(w) = self.words.get(wi) else { break };
            let span = mask(i % W, (hi - wi * W).min(W));
            // ORDERING: Relaxed read; the CAS below carries the Acquire.
            let mut cur = w.load(Ordering::Relaxed);
            loop {
                let free = !cur & span;
                if free == 0 {
                    break;
                }
                let m = free & free.wrapping_neg();
                // ORDERING: Acquire pairs with the Release in `clear`/`release_run`:
                // the previous owner's writes to the chunk happen-before ours.
                match w.compare_exchange(cur, cur | m, Ordering::Acquire, Ordering::Relaxed) {
                    Ok(_) => return Some(wi * W + m.trailing_zeros() as usize),
                    Err(now) => cur = now,
                }
            }
            i = (wi + 1) * W;
        }
        None
    }

    /// Claims `n` consecutive clear bits within `lo..hi`, lowest first; returns the first.
    pub(crate) fn claim_run(&self, lo: usize, hi: usize, n: usize) -> Option<usize> {
        if n == 0 {
            return None;
        }
        if n == 1 {
            return self.claim_one(lo, hi);
        }
        let hi = hi.min(self.len);
        'scan: loop {
            let mut start = lo;
            let mut i = lo;
            let mut cur = 0usize;
            while i < hi {
                if i == lo || i % W == 0 {
                    // ORDERING: Relaxed scan; `claim_range` synchronizes.
                    cur = self
                        .word(i)
                        .map_or(usize::MAX, |w| w.load(Ordering::Relaxed));
                }
                if cur & (1 << (i % W)) != 0 {
                    start = i + 1;
                } else if i + 1 - start == n {
                    if self.claim_range(start, n) {
                        return Some(start);
                    }
                    continue 'scan;
                }
                i += 1;
            }
            return None;
        }
    }

    /// Claims `n` consecutive clear bits within `lo..hi` whose first index is `phase`
    /// modulo `step` (an aligned address, for `step` chunks of alignment); returns the
    /// first. Rare (alignments above a chunk), so it simply tries each aligned start.
    pub(crate) fn claim_run_aligned(
        &self,
        lo: usize,
        hi: usize,
        n: usize,
        step: usize,
        phase: usize,
    ) -> Option<usize> {
        if step <= 1 {
            return self.claim_run(lo, hi, n);
        }
        let hi = hi.min(self.len);
        let mut start = lo + (phase % step + step - lo % step) % step;
        while start.checked_add(n)? <= hi {
            if self.is_clear(start, n) && self.claim_range(start, n) {
                return Some(start);
            }
            start += step;
        }
        None
    }

    /// Whether bits `start..start + n` are all clear (a snapshot).
    fn is_clear(&self, start: usize, n: usize) -> bool {
        let end = start.saturating_add(n).min(self.len);
        let mut i = start;
        while i < end {
            let wi = i / W;
            let hi = (end - wi * W).min(W);
            if self.load_word(wi) & mask(i % W, hi) != 0 {
                return false;
            }
            i = wi * W + hi;
        }
        true
    }

    /// Claims exactly bits `start..start + n`, all or nothing.
    pub(crate) fn claim_range(&self, start: usize, n: usize) -> bool {
        let Some(end) = start.checked_add(n) else {
            return false;
        };
        if end > self.len {
            return false;
        }
        let mut i = start;
        while i < end {
            let wi = i / W;
            let hi = (end - wi * W).min(W);
            let m = mask(i % W, hi);
            let Some(w) = self.words.get(wi) else {
                return false;
            };
            // ORDERING: Relaxed read; the CAS below carries the Acquire.
            let mut cur = w.load(Ordering::Relaxed);
            loop {
                if cur & m != 0 {
                    self.release_run(start, i - start);
                    return false;
                }
                // ORDERING: Acquire pairs with the Release in `release_run`.
                match w.compare_exchange(cur, cur | m, Ordering::Acquire, Ordering::Relaxed) {
                    Ok(_) => break,
                    Err(now) => cur = now,
                }
            }
            i = wi * W + hi;
        }
        true
    }

    /// Word `w` of the map (bits `w * usize::BITS..`), bits past the end masked off.
    pub(crate) fn load_word(&self, w: usize) -> usize {
        // ORDERING: Relaxed: a snapshot for a scan; whoever acts on a bit claims it.
        self.words
            .get(w)
            .map_or(0, |x| x.load(Ordering::Relaxed) & self.valid(w))
    }

    /// The bits of word `w` that lie inside the map.
    fn valid(&self, w: usize) -> usize {
        let lo = w.saturating_mul(W);
        if lo >= self.len {
            0
        } else {
            mask(0, (self.len - lo).min(W))
        }
    }

    /// Clears bits `start..start + n`.
    pub(crate) fn release_run(&self, start: usize, n: usize) {
        let end = start.saturating_add(n).min(self.len);
        let mut i = start;
        while i < end {
            let wi = i / W;
            let hi = (end - wi * W).min(W);
            if let Some(w) = self.words.get(wi) {
                // ORDERING: Release pairs with the Acquire CAS in `claim_*`: our writes
                // to these chunks happen-before the next owner's.
                w.fetch_and(!mask(i % W, hi), Ordering::Release);
            }
            i = wi * W + hi;
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn words(n: usize) -> std::vec::Vec<AtomicUsize> {
        (0..n).map(|_| AtomicUsize::new(0)).collect()
    }

    #[test]
    fn claim_one_fills_in_order_and_stops_at_len() {
        let w = words(2);
        let b = Bitmap::new(&w, 70);
        for want in 3..70 {
            assert_eq!(b.claim_one(3, 70), Some(want));
        }
        assert_eq!(b.claim_one(3, 70), None);
        b.clear(40);
        assert_eq!(b.claim_one(3, 70), Some(40));
    }

    #[test]
    fn runs_cross_words_and_roll_back() {
        let w = words(3);
        let b = Bitmap::new(&w, 150);
        assert_eq!(b.claim_run(0, 150, 70), Some(0));
        assert_eq!(b.claim_run(0, 150, 70), Some(70));
        assert_eq!(b.claim_run(0, 150, 11), None);
        assert_eq!(b.claim_run(0, 150, 10), Some(140));
        b.release_run(60, 20);
        assert_eq!(b.count(0, 150), 130);
        assert_eq!(b.claim_run(0, 150, 20), Some(60));
        // A range that hits a taken bit leaves nothing behind.
        b.release_run(0, 5);
        assert!(!b.claim_range(0, 6));
        assert_eq!(b.count(0, 5), 0);
    }

    #[test]
    fn take_any_takes_each_bit_once() {
        let w = words(2);
        let b = Bitmap::new(&w, 128);
        b.set(5);
        b.set(100);
        let mut got = [b.take_any(), b.take_any(), b.take_any()];
        got.sort();
        assert_eq!(got, [None, Some(5), Some(100)]);
    }
}
