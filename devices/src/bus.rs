//! Address-range dispatch for port I/O and MMIO exits.
//!
//! The bus is assembled before the VM runs and never changes afterwards (vCPU
//! hotplug adds no devices), so lookups are plain reads of an immutable map.

use std::collections::BTreeMap;
use std::sync::Arc;

/// A device mapped on a bus. Accesses come from vCPU threads concurrently, so
/// implementations synchronise their own state.
pub trait BusDevice: Send + Sync {
    /// Guest read of `data.len()` bytes at `offset` from the device's base.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset` from the device's base.
    fn write(&self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    #[error("bus range at {base:#x} has zero length or wraps around")]
    InvalidRange { base: u64 },
}

struct Range {
    len: u64,
    device: Arc<dyn BusDevice>,
}

/// A set of non-overlapping address ranges, each owned by one device.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Range>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: Arc<dyn BusDevice>) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0).ok_or(BusError::InvalidRange { base })?;
        if let Some((&b, r)) = self.ranges.range(..end).next_back() {
            if b + r.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.ranges.insert(base, Range { len, device });
        Ok(())
    }

    fn resolve(&self, addr: u64) -> Option<(u64, &Arc<dyn BusDevice>)> {
        let (&base, range) = self.ranges.range(..=addr).next_back()?;
        (addr - base < range.len).then_some((addr - base, &range.device))
    }

    /// Dispatches a read; returns false when no device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, dev)) => {
                dev.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, dev)) => {
                dev.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, Vec<u8>)>>);
    impl BusDevice for Recorder {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let mut bus = Bus::new();
        let a = Arc::new(Recorder::default());
        bus.insert(0x100, 0x10, a.clone()).unwrap();
        let mut buf = [0u8; 2];
        assert!(bus.read(0x105, &mut buf));
        assert_eq!(buf, [5, 5]);
        assert!(bus.write(0x10f, &[1]));
        assert!(!bus.write(0x110, &[1]));
        assert!(!bus.read(0xff, &mut buf));
        assert_eq!(a.0.lock().unwrap().as_slice(), &[(0xf, vec![1])]);
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        let d = Arc::new(Recorder::default());
        bus.insert(0x100, 0x10, d.clone()).unwrap();
        assert_eq!(bus.insert(0x10f, 1, d.clone()), Err(BusError::Overlap { base: 0x10f, len: 1 }));
        assert_eq!(bus.insert(0xf8, 0x9, d.clone()), Err(BusError::Overlap { base: 0xf8, len: 9 }));
        assert_eq!(bus.insert(0x200, 0, d.clone()), Err(BusError::InvalidRange { base: 0x200 }));
        assert_eq!(bus.insert(u64::MAX, 2, d.clone()), Err(BusError::InvalidRange { base: u64::MAX }));
        bus.insert(0x110, 0x10, d.clone()).unwrap();
        bus.insert(0xf0, 0x10, d).unwrap();
    }
}
