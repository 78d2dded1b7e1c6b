//! ACPI Generic Event Device (ACPI0013).
//!
//! One 32-bit MMIO register holds pending event bits. The VMM sets bits and
//! raises the GED interrupt; the guest's `_EVT` reads the register, which
//! returns and clears every pending bit, and dispatches on them.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use log::debug;

use crate::guest_warn;

use crate::bus::BusDevice;
use crate::interrupt::InterruptTrigger;

/// Size of the MMIO block.
pub const GED_MMIO_LEN: u64 = 4;

/// Event bit: the CPU hotplug controller has pending insert/remove requests.
pub const GED_EVENT_CPU_HOTPLUG: u32 = 1 << 0;
/// Event bit: the ACPI power button was pressed (`Notify(PWRB, 0x80)`).
pub const GED_EVENT_POWER_BUTTON: u32 = 1 << 1;
/// Event bit: the memory hotplug controller has pending insert/remove requests.
pub const GED_EVENT_MEM_HOTPLUG: u32 = 1 << 2;

pub struct Ged<T: InterruptTrigger> {
    pending: AtomicU32,
    irq: T,
    /// Interrupts raised and guest reads of the event register.
    interrupts: AtomicU64,
    reads: AtomicU64,
}

impl<T: InterruptTrigger> Ged<T> {
    pub fn new(irq: T) -> Self {
        Ged { pending: AtomicU32::new(0), irq, interrupts: AtomicU64::new(0), reads: AtomicU64::new(0) }
    }

    /// Marks `events` pending and interrupts the guest.
    pub fn notify(&self, events: u32) -> std::io::Result<()> {
        self.pending.fetch_or(events, Ordering::AcqRel);
        self.interrupts.fetch_add(1, Ordering::Relaxed);
        self.irq.trigger()
    }

    /// Name and value of each counter, for `vm.counters`.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("interrupts", self.interrupts.load(Ordering::Relaxed)), ("reads", self.reads.load(Ordering::Relaxed))]
    }
}

impl<T: InterruptTrigger> BusDevice for Ged<T> {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if offset != 0 || data.len() != 4 {
            guest_warn!("ged: ignoring {}-byte read at offset {offset:#x}", data.len());
            data.fill(0);
            return;
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        let events = self.pending.swap(0, Ordering::AcqRel);
        debug!("ged: guest read events {events:#x}");
        data.copy_from_slice(&events.to_le_bytes());
    }

    fn write(&self, offset: u64, data: &[u8]) {
        guest_warn!("ged: ignoring {}-byte guest write at offset {offset:#x} (register is read-only)", data.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl InterruptTrigger for Count {
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn read_returns_and_clears_pending_events() {
        let ged = Ged::new(Count::default());
        ged.notify(GED_EVENT_CPU_HOTPLUG).unwrap();
        ged.notify(GED_EVENT_CPU_HOTPLUG).unwrap();
        assert_eq!(ged.irq.0.load(Ordering::SeqCst), 2);
        let mut buf = [0u8; 4];
        ged.read(0, &mut buf);
        assert_eq!(u32::from_le_bytes(buf), GED_EVENT_CPU_HOTPLUG);
        ged.read(0, &mut buf);
        assert_eq!(u32::from_le_bytes(buf), 0);
    }

    #[test]
    fn garbage_accesses_are_ignored() {
        let ged = Ged::new(Count::default());
        ged.notify(1).unwrap();
        let mut b2 = [0xaa; 2];
        ged.read(0, &mut b2);
        assert_eq!(b2, [0, 0]);
        let mut b4 = [0xaa; 4];
        ged.read(4, &mut b4);
        ged.write(0, &[1, 2, 3, 4]);
        ged.read(0, &mut b4);
        assert_eq!(u32::from_le_bytes(b4), 1, "bad accesses must not consume events");
    }
}
