//! Size baseline only (built, never run by the gate): the same harness over a trivial
//! bump allocator that never frees, so `.text` of another image minus this one's is the
//! code its allocator brings.
#![no_std]
#![no_main]

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Bump(AtomicUsize);

const ARENA: usize = 256 << 10;
static mut MEM: [u8; ARENA] = [0; ARENA];

// SAFETY: hands out disjoint ranges of MEM, each aligned as asked, never twice.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let base = core::ptr::addr_of_mut!(MEM).cast::<u8>();
        // ORDERING: Relaxed, the counter publishes nothing; every context on one core.
        let r = self.0.fetch_update(Relaxed, Relaxed, |off| {
            let start = (base as usize + off).next_multiple_of(l.align()) - base as usize;
            (start + l.size() <= ARENA).then_some(start + l.size())
        });
        match r {
            Ok(off) => {
                let start = (base as usize + off).next_multiple_of(l.align()) - base as usize;
                base.wrapping_add(start)
            }
            Err(_) => core::ptr::null_mut(),
        }
    }
    unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
}

#[global_allocator]
static HEAP: Bump = Bump(AtomicUsize::new(0));

#[cortex_m_rt::entry]
fn main() -> ! {
    sigalloc_fw_m4::run(&sigalloc_fw_m4::Config {
        name: "bump",
        nmi_allocates: true,
        sabotage: false,
        rounds: 1,
        iters: 1,
        init: || {},
        claim: None,
        end_check: || Ok(()),
        stats: None,
    })
}
