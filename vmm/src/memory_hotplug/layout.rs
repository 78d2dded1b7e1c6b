//! Where hot-plugged memory goes in guest physical space: one area above
//! 4 GiB and above the boot RAM, block-aligned, `hotplug_size` long (rounded
//! down to whole blocks: Kata declares the host's memory size, rarely a
//! multiple of a block). Each added slot takes the lowest gap that fits.

use crate::memory::{FOUR_GIB, MMIO_HOLE_START};

/// Linux's memory block size on x86-64 guests of this size: the unit a
/// guest onlines and offlines, so the unit of every resize.
pub const BLOCK: u64 = 128 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    pub start: u64,
    pub capacity: u64,
}

impl Area {
    /// The area for a VM booted with `boot_size` bytes of RAM.
    pub fn new(boot_size: u64, hotplug_size: u64) -> Area {
        let ram_end = if boot_size <= MMIO_HOLE_START { FOUR_GIB } else { FOUR_GIB + (boot_size - MMIO_HOLE_START) };
        Area { start: ram_end.next_multiple_of(BLOCK), capacity: hotplug_size / BLOCK * BLOCK }
    }

    /// The lowest base where `len` bytes fit between the `used` ranges
    /// (base, len), inside the area.
    pub fn place(&self, used: &[(u64, u64)], len: u64) -> Option<u64> {
        let mut used = used.to_vec();
        used.sort_unstable();
        let mut at = self.start;
        for (base, l) in used {
            if base >= at + len {
                break;
            }
            at = at.max(base + l);
        }
        (at + len <= self.start + self.capacity).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_area_starts_above_ram_and_the_hole_on_a_block() {
        assert_eq!(Area::new(256 << 20, 1 << 30), Area { start: FOUR_GIB, capacity: 1 << 30 });
        let big = Area::new(MMIO_HOLE_START + (100 << 20), (1 << 30) + 5);
        assert_eq!(big.start, FOUR_GIB + BLOCK, "past high RAM, rounded up to a block");
        assert_eq!(big.capacity, 1 << 30, "rounded down to whole blocks");
    }

    #[test]
    fn slots_take_the_lowest_gap_that_fits() {
        let a = Area::new(256 << 20, 8 * BLOCK);
        assert_eq!(a.place(&[], 2 * BLOCK), Some(a.start));
        let used = [(a.start, BLOCK), (a.start + 3 * BLOCK, BLOCK)];
        assert_eq!(a.place(&used, 2 * BLOCK), Some(a.start + BLOCK));
        assert_eq!(a.place(&used, 3 * BLOCK), Some(a.start + 4 * BLOCK));
        assert_eq!(a.place(&used, 5 * BLOCK), None, "past the area");
    }
}
