//! sigalloc, 256 KiB inline heap; claims the 16 MiB PSRAM half way through the storm.
#![no_std]
#![no_main]
sigalloc_fw_m4::sigalloc_image!(256 << 10, "storm", sabotage: false, claim: true);
