//! The fill pattern the tests write into every block they own and check before they
//! let it go: a block's contents are derived from a seed (its tag), so a write its
//! owner did not make, a block handed out twice, or a realloc that lost bytes shows.
//!
//! The pattern of seed `s`: the eight bytes of `s` (little endian), then
//! [`body_byte`]`(s)` in every other byte. Its prefix of any length is the pattern of
//! a shorter block, so a resized block is checked over what it kept ([`holds`]) and
//! extended with [`fill_from`].
//!
//! Everything but [`verify`] is async-signal-safe: slice copies and compares
//! (`memcpy`/`memset`/`memcmp`), no allocation, no lock, no panic, so handlers and code
//! running under `RLIMIT_AS` may use it.
//!
//! The functions take raw pointers, as the allocator hands them out: `p` must be a
//! live block of at least `len` bytes that the caller owns (test code; a wrong pointer
//! is a bug of the test).

use super::rng::mix;

/// The byte that fills a block of seed `seed` after its first eight.
pub fn body_byte(seed: u64) -> u8 {
    (mix(seed) >> 56) as u8
}

fn bytes<'a>(p: *const u8, len: usize) -> &'a [u8] {
    // SAFETY: the module's contract: `len` bytes at `p` are a live block of ours.
    unsafe { std::slice::from_raw_parts(p, len) }
}

fn bytes_mut<'a>(p: *mut u8, len: usize) -> &'a mut [u8] {
    // SAFETY: as in `bytes`; the caller holds no other reference to the block.
    unsafe { std::slice::from_raw_parts_mut(p, len) }
}

/// Whether every byte of `s` is `byte`. Two `memcmp`-speed compares (the first byte,
/// then the slice against itself shifted by one), quick in debug builds and under Miri.
pub fn all_bytes(s: &[u8], byte: u8) -> bool {
    match s.split_first() {
        None => true,
        Some((&first, rest)) => first == byte && rest == &s[..s.len() - 1],
    }
}

/// Whether the `len` bytes at `p` all read zero (a zeroed allocation).
pub fn zeroed(p: *const u8, len: usize) -> bool {
    all_bytes(bytes(p, len), 0)
}

/// Writes the pattern of `seed` over the `len` bytes at `p`.
pub fn fill(p: *mut u8, len: usize, seed: u64) {
    fill_from(p, 0, len, seed);
}

/// Writes the pattern of `seed` over bytes `from..len` of the block at `p` (a resized
/// block keeps `..from`).
pub fn fill_from(p: *mut u8, from: usize, len: usize, seed: u64) {
    let s = bytes_mut(p, len);
    let head = seed.to_le_bytes();
    let n = len.min(head.len());
    if let (Some(dst), Some(src)) = (s.get_mut(from..n), head.get(from..n)) {
        dst.copy_from_slice(src);
    }
    if let Some(body) = s.get_mut(from.max(head.len())..) {
        body.fill(body_byte(seed));
    }
}

/// Whether the first `len` bytes at `p` hold the pattern of `seed`.
pub fn holds(p: *const u8, len: usize, seed: u64) -> bool {
    let s = bytes(p, len);
    let head = seed.to_le_bytes();
    let (hd, body) = s.split_at(len.min(head.len()));
    head.starts_with(hd) && all_bytes(body, body_byte(seed))
}

/// The byte the pattern of `seed` puts at offset `i`.
fn expected(seed: u64, i: usize) -> u8 {
    seed.to_le_bytes()
        .get(i)
        .copied()
        .unwrap_or_else(|| body_byte(seed))
}

/// How many of the first `len` bytes at `p` differ from the pattern of `seed`.
pub fn wrong_bytes(p: *const u8, len: usize, seed: u64) -> usize {
    if holds(p, len, seed) {
        return 0;
    }
    let s = bytes(p, len);
    (0..len).filter(|&i| s[i] != expected(seed, i)).count()
}

/// Panics unless the first `len` bytes at `p` hold the pattern of `seed`, naming the
/// first wrong byte (`what`: the test's context for the message).
pub fn verify(p: *const u8, len: usize, seed: u64, what: &str) {
    if holds(p, len, seed) {
        return;
    }
    let s = bytes(p, len);
    if let Some(i) = (0..len).find(|&i| s[i] != expected(seed, i)) {
        panic!(
            "{what}: block {p:p}+{len} (seed {seed:#x}): byte {i} is {:#x}, expected {:#x}",
            s[i],
            expected(seed, i)
        );
    }
}
