//! The negative control: as `sigalloc`, but NMI corrupts one block it hands on. This
//! image must fail (the gate checks that it does).
#![no_std]
#![no_main]
sigalloc_fw_m4::sigalloc_image!(256 << 10, "control", sabotage: true, claim: false);
