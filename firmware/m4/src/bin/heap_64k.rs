//! sigalloc with a 64 KiB inline heap (the `.bss` proof's small size; runs the storm too).
#![no_std]
#![no_main]
sigalloc_fw_m4::sigalloc_image!(64 << 10, "heap_64k", sabotage: false, claim: false);
