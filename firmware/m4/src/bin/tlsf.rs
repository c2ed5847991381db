//! embedded-alloc's TlsfHeap, 256 KiB, in the same storm; NMI does not allocate (it would
//! find the heap's RefCell borrowed: see `tlsf_nmi`).
#![no_std]
#![no_main]
sigalloc_fw_m4::embedded_alloc_image!(embedded_alloc::TlsfHeap, 256 << 10, "tlsf", nmi_allocates: false);
