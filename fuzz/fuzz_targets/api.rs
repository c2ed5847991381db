//! Random allocation sequences against a small model: every block handed out is
//! aligned, distinct from every live block, and keeps its contents until freed.
//! (The full API target with realloc/zeroed and the checked-mode target come next.)
#![no_main]

use std::alloc::{GlobalAlloc, Layout};

use libfuzzer_sys::fuzz_target;
use sigalloc::SigAlloc;

static A: SigAlloc<{ 256 << 10 }> = SigAlloc::new();

fuzz_target!(|ops: &[u8]| {
    let mut live: Vec<(*mut u8, usize, u8)> = Vec::new();
    for (i, w) in ops.chunks_exact(3).enumerate() {
        let size = (usize::from(w[1]) << 8 | usize::from(w[2])) % 20_000;
        if w[0] & 1 == 0 || live.is_empty() {
            let align = 1usize << (w[0] >> 1) % 13;
            let Ok(l) = Layout::from_size_align(size.max(1), align) else { continue };
            // SAFETY: the layout has a non-zero size.
            let p = unsafe { A.alloc(l) };
            if p.is_null() {
                continue;
            }
            assert_eq!(p as usize % align, 0);
            for &(q, n, _) in &live {
                assert!(p as usize + size <= q as usize || q as usize + n <= p as usize);
            }
            // SAFETY: the block is ours and `size` bytes long.
            unsafe { p.write_bytes(i as u8, size) };
            live.push((p, size, i as u8));
        } else {
            let (p, n, fill) = live.swap_remove(usize::from(w[1]) % live.len());
            // SAFETY: `p` is live and `n` bytes long.
            assert!(unsafe { std::slice::from_raw_parts(p, n) }.iter().all(|&b| b == fill));
            // SAFETY: `p` is live and forgotten here.
            unsafe { A.free(p) };
        }
    }
    for (p, _, _) in live {
        // SAFETY: every remaining block is live.
        unsafe { A.free(p) };
    }
});
