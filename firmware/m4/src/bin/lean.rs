//! sigalloc in the same harness without the optional parts (`stats`, `validate`,
//! `claim`) and with NMI not allocating: the like-for-like image for the code-size and
//! stack comparison against `bump`, `llff` and `tlsf` (run for numbers, not a check).
#![no_std]
#![no_main]

#[global_allocator]
static HEAP: sigalloc::SigAlloc<{ 256 << 10 }> = sigalloc::SigAlloc::new();

#[cortex_m_rt::entry]
fn main() -> ! {
    sigalloc_fw_m4::run(&sigalloc_fw_m4::Config {
        name: "lean",
        nmi_allocates: false,
        sabotage: false,
        rounds: 41,
        iters: 150,
        init: || {},
        claim: None,
        end_check: || Ok(()),
        stats: None,
    })
}
