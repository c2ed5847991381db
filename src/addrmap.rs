//! Pointer -> region in constant time: which registered regions cover each 64 MiB
//! stretch ("granule") of the address space.
//!
//! A fixed open-addressed table, one word per granule in use: the granule number, and
//! up to [`LANES`] region ids in lanes of 6 bits. A region adds itself to every granule
//! it touches before it is published (`region::Regions::add`), so whoever holds a
//! pointer into a region (which it got after the region's publication) finds the
//! region's id in its granule. Entries and lanes are only ever added (regions are never
//! removed), each by one CAS (I2), so a lookup that stops at an empty entry cannot miss
//! a granule, and nobody waits (I4).
//!
//! When a granule has more regions than lanes (many small claimed regions side by
//! side), its entry is marked `OVERFLOW`; when the table has no room for a granule,
//! the whole map is. Lookups there fall back to walking the registry, which is always
//! right, only slower. Mapped regions are large and few (they double in size), so
//! neither happens in practice: 63 regions of at most 1 GiB touch at most 1071
//! granules, and the table on 64-bit targets has 2048 entries (16 KiB). A 32-bit
//! address space has only 64 granules, so there the table is 64 words.
//!
//! Depends on: `sync`. Upholds I2, I3 (entries only grow: no ABA), I4.

use crate::sync::{AtomicUsize, Ordering};

/// Bytes per granule, as a shift: 64 MiB.
const GRANULE_SHIFT: u32 = 26;
/// Region ids per entry.
pub(crate) const LANES: usize = 4;
const LANE_BITS: u32 = 6;
const LANE_MASK: usize = (1 << LANE_BITS) - 1;
/// Set in an entry whose granule has more regions than lanes.
const OVERFLOW: usize = 1 << (LANES as u32 * LANE_BITS);
/// The granule number sits above the lanes and the overflow bit.
const KEY_SHIFT: u32 = LANES as u32 * LANE_BITS + 1;
/// Entries in the table (loom models get a small one: each entry is a modelled atomic).
const ENTRIES: usize = if cfg!(loom) {
    16
} else if usize::BITS == 64 {
    2048
} else {
    64
};

/// The largest region id a lane holds (0 means an empty lane).
pub(crate) const MAX_ID: usize = LANE_MASK;

// A granule number fits above the lanes.
static_assertions::const_assert!(KEY_SHIFT + (usize::BITS - GRANULE_SHIFT) <= usize::BITS);
static_assertions::const_assert!(ENTRIES.is_power_of_two());

/// What a lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// The ids of the regions that touch the pointer's granule (0 = unused lane).
    Lanes([usize; LANES]),
    /// No region touches it.
    Nothing,
    /// Unknown: walk the registry.
    Walk,
}

/// The table (see the module docs).
pub(crate) struct AddrMap {
    entries: [AtomicUsize; ENTRIES],
    /// Nonzero once a granule found no room in the table.
    full: AtomicUsize,
}

impl AddrMap {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> AddrMap {
        #[allow(clippy::declare_interior_mutable_const)]
        const EMPTY: AtomicUsize = AtomicUsize::new(0);
        AddrMap {
            entries: [EMPTY; ENTRIES],
            full: AtomicUsize::new(0),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> AddrMap {
        AddrMap {
            entries: core::array::from_fn(|_| AtomicUsize::new(0)),
            full: AtomicUsize::new(0),
        }
    }

    /// The entries to probe for `granule`, in order.
    #[inline(always)]
    fn probe(&self, granule: usize) -> impl Iterator<Item = &AtomicUsize> {
        const GOLDEN: usize = 0x9E37_79B9_7F4A_7C15_u64 as usize;
        let start = granule.wrapping_mul(GOLDEN) >> (usize::BITS - ENTRIES.trailing_zeros());
        (0..ENTRIES).filter_map(move |k| self.entries.get((start + k) % ENTRIES))
    }

    /// Records that region `id` covers `start..end` (a non-empty range).
    pub(crate) fn insert(&self, start: usize, end: usize, id: usize) {
        let last = (end - 1) >> GRANULE_SHIFT;
        for granule in (start >> GRANULE_SHIFT)..=last {
            if !self.insert_one(granule, id) {
                // ORDERING: Release pairs with the Acquire in `find`: a lookup that
                // sees the map full walks, and so finds the region.
                self.full.store(1, Ordering::Release);
            }
        }
    }

    /// Adds `id` to `granule`'s entry; `false` if the table has no room for it.
    fn insert_one(&self, granule: usize, id: usize) -> bool {
        let key = granule << KEY_SHIFT;
        for entry in self.probe(granule) {
            // ORDERING: Relaxed: the CAS below decides.
            let mut cur = entry.load(Ordering::Relaxed);
            loop {
                let new = if cur == 0 {
                    key | id
                } else if cur >> KEY_SHIFT != granule {
                    break; // another granule's entry: probe on
                } else if lanes(cur).contains(&id) || cur & OVERFLOW != 0 {
                    return true;
                } else if let Some(lane) = lanes(cur).iter().position(|&l| l == 0) {
                    cur | id << (lane as u32 * LANE_BITS)
                } else {
                    cur | OVERFLOW
                };
                // ORDERING: Release pairs with the Acquire load in `find`; the region
                // itself is published later, by the registry's own Release store.
                match entry.compare_exchange(cur, new, Ordering::Release, Ordering::Relaxed) {
                    Ok(_) => return true,
                    Err(now) => cur = now,
                }
            }
        }
        false
    }

    /// Which regions may hold address `addr`.
    #[inline(always)]
    pub(crate) fn find(&self, addr: usize) -> Found {
        let granule = addr >> GRANULE_SHIFT;
        for entry in self.probe(granule) {
            // ORDERING: Acquire pairs with the Release CAS in `insert_one`.
            let cur = entry.load(Ordering::Acquire);
            if cur == 0 {
                break;
            }
            if cur >> KEY_SHIFT == granule {
                return if cur & OVERFLOW != 0 {
                    Found::Walk
                } else {
                    Found::Lanes(lanes(cur))
                };
            }
        }
        // ORDERING: Acquire pairs with the Release store in `insert`.
        if self.full.load(Ordering::Acquire) != 0 {
            Found::Walk
        } else {
            Found::Nothing
        }
    }
}

/// The region ids in an entry's lanes.
#[inline(always)]
fn lanes(entry: usize) -> [usize; LANES] {
    core::array::from_fn(|lane| (entry >> (lane as u32 * LANE_BITS)) & LANE_MASK)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const G: usize = 1 << GRANULE_SHIFT;

    #[test]
    fn regions_are_found_in_every_granule_they_touch() {
        let map = AddrMap::new();
        assert_eq!(map.find(5 * G), Found::Nothing);
        map.insert(5 * G + 100, 7 * G + 1, 3);
        for addr in [5 * G, 6 * G + 5, 7 * G] {
            assert_eq!(map.find(addr), Found::Lanes([3, 0, 0, 0]));
        }
        assert_eq!(map.find(8 * G), Found::Nothing);
        // Neighbours share a granule; past the lanes, it is walked.
        for id in 4..7 {
            map.insert(7 * G + id, 7 * G + id + 1, id);
        }
        assert_eq!(map.find(7 * G), Found::Lanes([3, 4, 5, 6]));
        map.insert(7 * G + 50, 7 * G + 51, 9);
        assert_eq!(map.find(7 * G), Found::Walk);
        assert_eq!(map.find(6 * G), Found::Lanes([3, 0, 0, 0]));
        // The same region again changes nothing.
        map.insert(5 * G, 5 * G + 1, 3);
        assert_eq!(map.find(5 * G), Found::Lanes([3, 0, 0, 0]));
    }

    #[test]
    #[cfg_attr(miri, ignore)] // fills 2048 entries by linear probing: minutes under miri
    fn a_full_table_walks() {
        let map = AddrMap::new();
        for granule in 0..ENTRIES {
            map.insert(granule * G, granule * G + 1, 1);
        }
        assert_eq!(map.find(G), Found::Lanes([1, 0, 0, 0]));
        assert_eq!(map.find(ENTRIES * G), Found::Nothing);
        map.insert(ENTRIES * G, ENTRIES * G + 1, 2);
        assert_eq!(map.find((ENTRIES + 1) * G), Found::Walk);
    }
}
