//! embedded-alloc's TlsfHeap with NMI allocating too: its critical section masks PRIMASK,
//! which does not mask NMI. Expected to fail; the gate reports how.
#![no_std]
#![no_main]
sigalloc_fw_m4::embedded_alloc_image!(embedded_alloc::TlsfHeap, 256 << 10, "tlsf_nmi", nmi_allocates: true);
