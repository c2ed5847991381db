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
//! A partial map has a *summary*: one bit per word of the map, set when the word may
//! hold a set bit, and above it a *top* level, one bit per summary word, so a search
//! for a listing reads one top word, then only the summary and map words whose bits
//! are set: an empty map costs one load however large the region (a top word covers
//! 2^18 chunks on 64-bit targets, a 1 GiB region). The rule that keeps each level
//! exact: a level's bit is set after every bit set in the word below it (Release), and
//! is cleared only by whoever empties that word, who then looks at the word again and
//! sets the bit back if it is no longer empty. Every change of a summary word is an
//! RMW, so the clearer's AcqRel RMW either comes first (and the setter's later set
//! stands) or reads from the setter's Release RMW, after which the clearer's second look
//! sees the setter's bit. Either way no set bit is left without its summary bit once
//! its setter has returned (the loom model `summary_keeps_every_listing` checks it).
//! A setter stopped between its two RMWs hides only its own bit until it resumes.
//!
//! A run claim takes its words in ascending order, one CAS per word, and gives back what
//! it took if a later word turns out to be taken. A CAS fails only because another
//! thread changed the word, so someone always makes progress (I4); a thread stopped
//! halfway through a run claim only hides those chunks until it resumes.
//!
//! Depends on: `sync`. Upholds I2, I3, I4.

use crate::sync::{AtomicUsize, Ordering};

const W: usize = usize::BITS as usize;

/// A view of `len` bits stored in shared words, with an optional summary.
#[derive(Clone, Copy)]
pub(crate) struct Bitmap<'a> {
    words: &'a [AtomicUsize],
    /// One bit per word of `words` (see the module docs); empty for no summary.
    summary: &'a [AtomicUsize],
    /// One bit per word of `summary`.
    top: &'a [AtomicUsize],
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
    #[inline(always)]
    pub(crate) const fn words_for(len: usize) -> usize {
        len.div_ceil(W)
    }

    /// A view of `len` bits over `words` (which must hold at least `words_for(len)`).
    pub(crate) fn new(words: &'a [AtomicUsize], len: usize) -> Self {
        let len = len.min(words.len() * W);
        Bitmap {
            words,
            summary: &[],
            top: &[],
            len,
        }
    }

    /// A view as [`new`](Self::new) gives, kept with a summary of `summary_words(len)`
    /// words and a top level of `top_words(len)`.
    pub(crate) fn with_summary(
        words: &'a [AtomicUsize],
        summary: &'a [AtomicUsize],
        top: &'a [AtomicUsize],
        len: usize,
    ) -> Self {
        let len = len
            .min(words.len() * W)
            .min(summary.len() * W * W)
            .min(top.len() * W * W * W);
        Bitmap {
            words,
            summary,
            top,
            len,
        }
    }

    /// Words of summary a map of `len` bits needs.
    #[inline(always)]
    pub(crate) const fn summary_words(len: usize) -> usize {
        Self::words_for(Self::words_for(len))
    }

    /// Words of top level a map of `len` bits needs.
    #[inline(always)]
    pub(crate) const fn top_words(len: usize) -> usize {
        Self::words_for(Self::summary_words(len))
    }

    /// Sets word `wi`'s summary bit and its summary word's top bit, after a bit of
    /// word `wi` was set.
    #[inline(always)]
    fn summarize(&self, wi: usize) {
        if self.summary.is_empty() {
            return; // a map searched directly
        }
        if let Some(s) = self.summary.get(wi / W) {
            // ORDERING: Release pairs with the AcqRel clear in `unsummarize`: whoever
            // clears this summary bit after us sees our bit in the word.
            s.fetch_or(1 << (wi % W), Ordering::Release);
        }
        let si = wi / W;
        if let Some(t) = self.top.get(si / W) {
            // ORDERING: Release pairs with the AcqRel clear in `untop`, likewise.
            t.fetch_or(1 << (si % W), Ordering::Release);
        }
    }

    /// Clears word `wi`'s summary bit after the caller emptied the word, unless the
    /// word has meanwhile been set again (see the module docs); and the top bit above,
    /// if that emptied its summary word.
    #[cold]
    #[inline(never)]
    fn unsummarize(&self, wi: usize) {
        let Some(s) = self.summary.get(wi / W) else {
            return;
        };
        let m = 1 << (wi % W);
        // ORDERING: AcqRel: Acquire pairs with the Release set in `summarize`, so the
        // look below sees the bit of any setter whose summary set we are clearing.
        let old = s.fetch_and(!m, Ordering::AcqRel);
        if old & !m == 0 {
            self.untop(wi / W);
        }
        if self.load_word(wi) != 0 {
            self.summarize(wi);
        }
    }

    /// Clears summary word `si`'s top bit after the caller emptied that summary word,
    /// unless it has meanwhile been set again.
    fn untop(&self, si: usize) {
        let (Some(t), Some(s)) = (self.top.get(si / W), self.summary.get(si)) else {
            return;
        };
        // ORDERING: AcqRel, as in `unsummarize`, one level up.
        t.fetch_and(!(1 << (si % W)), Ordering::AcqRel);
        // ORDERING: Relaxed: ordered after the Acquire above.
        if s.load(Ordering::Relaxed) != 0 {
            // ORDERING: Release, as in `summarize`.
            t.fetch_or(1 << (si % W), Ordering::Release);
        }
    }

    #[inline(always)]
    fn word(&self, i: usize) -> Option<&'a AtomicUsize> {
        self.words.get(i / W)
    }

    /// Sets bit `i`. Release: publishes what the setter wrote before it (a retired
    /// chunk's reset descriptor, or a chunk's partial state) to the Acquire claimer.
    #[inline(always)]
    pub(crate) fn set(&self, i: usize) {
        if let Some(w) = self.word(i) {
            // ORDERING: Release pairs with the Acquire in `take_any`/`claim_*`.
            w.fetch_or(1 << (i % W), Ordering::Release);
            self.summarize(i / W);
        }
    }

    /// Clears bit `i`. Release, like [`set`](Self::set): clearing a used bit frees a
    /// chunk whose reset descriptor the next claimer must see.
    pub(crate) fn clear(&self, i: usize) {
        if let Some(w) = self.word(i) {
            let m = 1 << (i % W);
            // ORDERING: Release pairs with the Acquire CAS in `claim_one`/`claim_run`.
            let old = w.fetch_and(!m, Ordering::Release);
            if old & m != 0 && old & !m == 0 && !self.summary.is_empty() {
                self.unsummarize(i / W);
            }
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

    /// Takes any set bit, clearing it; returns its index. With a summary, only words
    /// whose summary bit is set are read.
    #[inline(always)]
    pub(crate) fn take_any(&self) -> Option<usize> {
        if self.summary.is_empty() {
            for (wi, w) in self.words.iter().enumerate() {
                if let Some(idx) = self.take_word(wi, w) {
                    return Some(idx);
                }
            }
            return None;
        }
        for (ti, t) in self.top.iter().enumerate() {
            // ORDERING: Relaxed scan (all three levels); the map word's Acquire RMW
            // synchronizes.
            let mut tops = t.load(Ordering::Relaxed);
            while tops != 0 {
                let si = ti * W + tops.trailing_zeros() as usize;
                tops &= tops - 1;
                let Some(s) = self.summary.get(si) else {
                    break;
                };
                let mut sum = s.load(Ordering::Relaxed);
                while sum != 0 {
                    let wi = si * W + sum.trailing_zeros() as usize;
                    sum &= sum - 1;
                    if let Some(idx) = self.take_in(wi) {
                        return Some(idx);
                    }
                }
            }
        }
        None
    }

    /// Takes any set bit of word `wi`.
    #[inline(always)]
    fn take_in(&self, wi: usize) -> Option<usize> {
        self.take_word(wi, self.words.get(wi)?)
    }

    /// Takes any set bit of word `w`, the map's word `wi`.
    #[inline(always)]
    fn take_word(&self, wi: usize, w: &AtomicUsize) -> Option<usize> {
        // ORDERING: Relaxed scan; the Acquire RMW below is what synchronizes.
        let mut cur = w.load(Ordering::Relaxed);
        while cur != 0 {
            let bit = cur.trailing_zeros() as usize;
            let m = 1usize << bit;
            // ORDERING: Acquire pairs with the Release in `set`: the setter's anchor
            // change happens-before our read of the anchor.
            let old = w.fetch_and(!m, Ordering::Acquire);
            let idx = wi * W + bit;
            if old & m != 0 {
                if old & !m == 0 && !self.summary.is_empty() {
                    self.unsummarize(wi);
                }
                if idx < self.len {
                    return Some(idx);
                }
            }
            cur = old & !m;
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
    ///
    /// A word at a time: a word with no clear bit is passed in one step, and within a
    /// word the next set bit and the set bits after it are found with one count each.
    /// If another thread takes part of the run first, the scan goes on from there.
    pub(crate) fn claim_run(&self, lo: usize, hi: usize, n: usize) -> Option<usize> {
        if n == 0 {
            return None;
        }
        if n == 1 {
            return self.claim_one(lo, hi);
        }
        let hi = hi.min(self.len);
        let mut start = lo; // where the clear run being measured begins
        let mut i = lo; // the next bit to look at
        while i < hi {
            let (wi, b) = (i / W, i % W);
            let width = (W - b).min(hi - i);
            // The used bits of `i..i + width`, shifted down to bit 0.
            let used = (self.load_word(wi) >> b) & mask(0, width);
            let clear = used.trailing_zeros() as usize; // clear bits before the next used
            if i + clear.min(width) - start >= n {
                if self.claim_range(start, n) {
                    return Some(start);
                }
                // Someone took part of it: measure again from the same start.
                i = start;
                continue;
            }
            if used == 0 {
                i += width;
            } else {
                let taken = (used >> clear).trailing_ones() as usize;
                i += clear + taken;
                start = i;
            }
        }
        None
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
    fn runs_are_found_between_scattered_used_bits() {
        let w = words(4);
        let b = Bitmap::new(&w, 250);
        // Used: every 7th bit, except a gap of 30 clear bits at 131..161.
        for i in (0..250).step_by(7) {
            if !(131..161).contains(&i) {
                assert!(b.claim_range(i, 1));
            }
        }
        assert_eq!(b.claim_run(0, 250, 6), Some(1));
        assert_eq!(b.claim_run(0, 250, 25), Some(127));
        assert_eq!(b.claim_run(0, 250, 10), None);
        assert_eq!(b.claim_run(0, 250, 9), Some(152));
        assert_eq!(b.claim_run(0, 250, 7), None);
        // The tail of the map counts, up to `hi` and no further.
        let w = words(1);
        let b = Bitmap::new(&w, 64);
        assert!(b.claim_range(0, 60));
        assert_eq!(b.claim_run(0, 64, 4), Some(60));
        assert_eq!(b.claim_run(0, 64, 2), None);
        let w = words(2);
        let b = Bitmap::new(&w, 100);
        assert_eq!(b.claim_run(10, 90, 80), Some(10));
        assert_eq!(b.claim_run(0, 100, 11), None);
        assert_eq!(b.claim_run(0, 100, 10), Some(0));
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

/// Loom models of the summary protocol (run by the loom gate with `--lib`).
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use std::sync::Arc;
    use std::vec::Vec;

    /// Two map words (128 bits), their summary word and its top word.
    struct Maps {
        words: Vec<AtomicUsize>,
        summary: Vec<AtomicUsize>,
        top: Vec<AtomicUsize>,
    }

    impl Maps {
        fn new() -> Arc<Maps> {
            Arc::new(Maps {
                words: (0..2).map(|_| AtomicUsize::new(0)).collect(),
                summary: (0..1).map(|_| AtomicUsize::new(0)).collect(),
                top: (0..1).map(|_| AtomicUsize::new(0)).collect(),
            })
        }
        fn map(&self) -> Bitmap<'_> {
            Bitmap::with_summary(&self.words, &self.summary, &self.top, 128)
        }
    }

    /// A taker that empties a word races a setter (and a clearer) of the same word:
    /// after both, every bit still set is found through the summary, and every bit is
    /// taken exactly once.
    #[test]
    fn summary_keeps_every_listing() {
        crate::sync::check_model("summary_keeps_every_listing", move || {
            let maps = Maps::new();
            maps.map().set(5);
            maps.map().set(70);
            let taker = {
                let maps = maps.clone();
                loom::thread::spawn(move || maps.map().take_any())
            };
            let setter = {
                let maps = maps.clone();
                loom::thread::spawn(move || {
                    maps.map().set(7);
                    maps.map().clear(70);
                })
            };
            let mut got: Vec<usize> = taker.join().unwrap().into_iter().collect();
            setter.join().unwrap();
            while let Some(i) = maps.map().take_any() {
                got.push(i);
            }
            got.sort_unstable();
            // 70 may be taken before the clearer gets to it; 5 and 7 must both come out.
            got.retain(|&i| i != 70);
            assert_eq!(got, [5, 7]);
            for w in maps.summary.iter().chain(&maps.top) {
                assert_eq!(w.load(Ordering::Relaxed), 0, "a stale summary bit");
            }
        });
    }
}
