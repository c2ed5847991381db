//! embedded-alloc's LlffHeap, 256 KiB, in the same storm; NMI does not allocate (it would
//! find the heap's RefCell borrowed: see `llff_nmi`).
#![no_std]
#![no_main]
sigalloc_fw_m4::embedded_alloc_image!(embedded_alloc::LlffHeap, 256 << 10, "llff", nmi_allocates: false);
