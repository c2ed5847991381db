//! A deterministic smoke run of the per-CPU caches (feature `percpu`), for comparing a
//! native run (caches live where glibc registered rseq) with runs where they cannot be
//! (valgrind, `GLIBC_TUNABLES=glibc.pthread.rseq=0`): the fallback must give the same
//! results. `.ci/percpu.sh` runs it both ways and compares the `checksum` line.
//!
//! One thread, one seeded sequence of allocations (every small class, some spans),
//! reallocations and frees on a 2 MiB heap; every block carries a pattern derived from
//! its seed and is checked before it goes. The checksum covers what any correct run
//! must agree on whatever blocks it was given: sizes, `usable_size`s, contents, how
//! many 64 B blocks fill the heap once everything is freed (the caches drain before
//! the heap answers null), and what `stats()` and `validate()` say at the end. Where
//! the blocks lie (and so which came from a magazine) is left out on purpose.
//!
//! Run: `cargo run --release --features percpu --example percpu_smoke`

use sigalloc::SigAlloc;

static HEAP: SigAlloc = SigAlloc::new();

const SLOTS: usize = 512;
const OPS: usize = 200_000;

/// splitmix64 (as the tests' generator).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let z = self.0;
        let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// FNV-1a over 64-bit words: the running checksum.
struct Sum(u64);

impl Sum {
    fn add(&mut self, v: u64) {
        for b in v.to_le_bytes() {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
}

#[derive(Clone, Copy)]
struct Live {
    ptr: *mut u8,
    size: usize,
    seed: u8,
}

fn fill(p: *mut u8, len: usize, seed: u8) {
    // SAFETY: `p` is a live block of at least `len` bytes that we own.
    let s = unsafe { std::slice::from_raw_parts_mut(p, len) };
    for (i, b) in s.iter_mut().enumerate() {
        *b = seed.wrapping_add(i as u8);
    }
}

/// Folds the block's contents into `sum`; counts it bad if they are not its pattern.
fn check(p: *const u8, len: usize, seed: u8, sum: &mut Sum, bad: &mut u64) {
    // SAFETY: as in `fill`.
    let s = unsafe { std::slice::from_raw_parts(p, len) };
    let mut h = 0u64;
    for (i, &b) in s.iter().enumerate() {
        if b != seed.wrapping_add(i as u8) {
            *bad += 1;
        }
        h = h.wrapping_mul(31).wrapping_add(u64::from(b));
    }
    sum.add(h);
}

fn size(rng: &mut Rng) -> usize {
    if rng.below(64) == 0 {
        2049 + rng.below(14 << 10) as usize
    } else {
        let hi = 16usize << rng.below(8);
        hi / 2 + 1 + rng.below(hi as u64 / 2) as usize
    }
}

#[cfg(feature = "percpu")]
fn active() -> bool {
    HEAP.percpu_active()
}

#[cfg(not(feature = "percpu"))]
fn active() -> bool {
    false
}

#[cfg(feature = "percpu")]
fn drain() {
    HEAP.drain_percpu();
}

#[cfg(not(feature = "percpu"))]
fn drain() {}

fn main() {
    let mut rng = Rng(0x5EED_0011);
    let mut sum = Sum(0xCBF2_9CE4_8422_2325);
    let mut slots: Vec<Option<Live>> = vec![None; SLOTS];
    let (mut nulls, mut bad) = (0u64, 0u64);
    for op in 0..OPS {
        let i = rng.below(SLOTS as u64) as usize;
        let seed = op as u8;
        match slots[i].take() {
            None => {
                let n = size(&mut rng);
                let p = HEAP.malloc(n);
                if p.is_null() {
                    nulls += 1;
                    continue;
                }
                sum.add(n as u64);
                sum.add(HEAP.usable_size(p) as u64);
                fill(p, n, seed);
                slots[i] = Some(Live {
                    ptr: p,
                    size: n,
                    seed,
                });
            }
            Some(l) if rng.below(5) == 0 => {
                let n = size(&mut rng);
                // SAFETY: a live block of `HEAP`; on success the old pointer is gone.
                let p = unsafe { HEAP.realloc(l.ptr, n) };
                if p.is_null() {
                    nulls += 1;
                    slots[i] = Some(l);
                    continue;
                }
                check(p, l.size.min(n), l.seed, &mut sum, &mut bad);
                sum.add(HEAP.usable_size(p) as u64);
                fill(p, n, seed);
                slots[i] = Some(Live {
                    ptr: p,
                    size: n,
                    seed,
                });
            }
            Some(l) => {
                check(l.ptr, l.size, l.seed, &mut sum, &mut bad);
                // SAFETY: a live block of `HEAP`, freed once.
                unsafe { HEAP.free(l.ptr) };
            }
        }
    }
    for l in slots.iter_mut().filter_map(Option::take) {
        check(l.ptr, l.size, l.seed, &mut sum, &mut bad);
        // SAFETY: as above.
        unsafe { HEAP.free(l.ptr) };
    }
    // Everything is free (some of it parked): the whole heap must come back as 64 B
    // blocks, caches or not.
    let mut filled = Vec::new();
    loop {
        let p = HEAP.malloc(64);
        if p.is_null() {
            break;
        }
        filled.push(p);
    }
    let fill64 = filled.len();
    sum.add(fill64 as u64);
    for p in filled {
        // SAFETY: as above.
        unsafe { HEAP.free(p) };
    }
    drain();
    let s = HEAP.stats();
    let valid = HEAP.validate().is_ok();
    for v in [
        nulls,
        bad,
        s.bytes_in_use as u64,
        s.cached_bytes as u64,
        s.chunks_used as u64,
    ] {
        sum.add(v);
    }
    sum.add(u64::from(valid));
    println!(
        "percpu_smoke checksum: {:#018x} ({OPS} ops, {nulls} nulls, {bad} bad bytes, {fill64} \
         blocks of 64 B fill the heap, {} bytes in use, {} cached, {} chunks used, validate {})",
        sum.0,
        s.bytes_in_use,
        s.cached_bytes,
        s.chunks_used,
        if valid { "ok" } else { "FAILED" },
    );
    println!("percpu_smoke active: {}", active());
    if nulls != 0 || bad != 0 || s.bytes_in_use != 0 || s.cached_bytes != 0 || !valid {
        eprintln!("percpu_smoke: FAILED");
        std::process::exit(1);
    }
}
