//! sigalloc with a 1 MiB inline heap (the `.bss` proof's large size; runs the storm too).
#![no_std]
#![no_main]
sigalloc_fw_m4::sigalloc_image!(1 << 20, "heap_1m", sabotage: false, claim: false);
