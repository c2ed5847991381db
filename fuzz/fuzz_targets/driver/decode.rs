//! Decoding an input: which operation, what size, what alignment.

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use sigalloc::{CHUNK_SIZE, MAX_SMALL};

pub fn pick_size(u: &mut Unstructured<'_>, heap: usize) -> Result<usize> {
    const HUGE: [usize; 10] = [
        usize::MAX,
        usize::MAX - 1,
        usize::MAX - 4095,
        usize::MAX - 4096,
        usize::MAX - 8192,
        isize::MAX as usize,
        isize::MAX as usize + 1,
        1 << 40,
        1 << 32,
        (u32::MAX as usize) * CHUNK_SIZE,
    ];
    Ok(match u.int_in_range(0u8..=9)? {
        0 => u.int_in_range(0..=16)?,
        1 | 2 => u.int_in_range(0..=MAX_SMALL)?,
        3 => {
            let edges = [
                0,
                1,
                15,
                16,
                17,
                31,
                32,
                33,
                255,
                256,
                257,
                1023,
                1024,
                1025,
                2047,
                2048,
                2049,
                2560,
                2561,
                3072,
                3073,
                3584,
                3585,
                4095,
                4096,
                4097,
                5120,
                5121,
                8191,
                8192,
                8193,
                heap - CHUNK_SIZE,
                heap - 1,
                heap,
                heap + 1,
                heap + CHUNK_SIZE,
            ];
            *u.choose(&edges)?
        }
        // Above the power-of-two classes: mid-size classes and spans.
        4 => u.int_in_range(2049..=heap / 4)?,
        5 => u.int_in_range(0..=heap + 4 * CHUNK_SIZE)?,
        6 => *u.choose(&HUGE)?,
        _ => u.int_in_range(0..=256)?,
    })
}

pub fn pick_align(u: &mut Unstructured<'_>) -> Result<usize> {
    // Mostly small alignments, sometimes up to a chunk and past it, up to one above
    // the maximum (2 MiB).
    Ok(match u.int_in_range(0u8..=5)? {
        0 => 1 << u.int_in_range(0u32..=13)?,
        1 => 1 << u.int_in_range(13u32..=sigalloc::MAX_ALIGN.trailing_zeros() + 1)?,
        _ => 1 << u.int_in_range(0u32..=4)?,
    })
}

/// The operations. Bad ones are only decoded in checked mode.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Alloc,
    AllocZeroed,
    Malloc,
    Calloc,
    ReallocGlobal,
    ReallocC,
    ReallocNull,
    Free,
    Dealloc,
    Query,
    GoodSize,
    #[cfg(feature = "checked")]
    DoubleFree,
    #[cfg(feature = "checked")]
    InteriorFree,
    #[cfg(feature = "checked")]
    ForeignFree,
    #[cfg(feature = "checked")]
    StaleFree,
    #[cfg(feature = "checked")]
    WrongLayout,
}

pub const GOOD_OPS: [Op; 11] = [
    Op::Alloc,
    Op::AllocZeroed,
    Op::Malloc,
    Op::Calloc,
    Op::ReallocGlobal,
    Op::ReallocC,
    Op::ReallocNull,
    Op::Free,
    Op::Dealloc,
    Op::Query,
    Op::GoodSize,
];
#[cfg(feature = "checked")]
pub const BAD_OPS: [Op; 5] = [
    Op::DoubleFree,
    Op::InteriorFree,
    Op::ForeignFree,
    Op::StaleFree,
    Op::WrongLayout,
];
