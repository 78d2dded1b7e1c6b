//! The memory hotplug controller: QEMU's ACPI memory hotplug register
//! interface (`docs/specs/acpi_mem_hotplug.rst`), the best-documented one and
//! the one Linux's `acpi_memhotplug` has met most, on MMIO instead of ports.
//! The guest's AML selects a slot, reads where its memory is and what is
//! pending, and reports back (`_OST`, `_EJ0`).
//!
//! | offset | read                         | write                                        |
//! |--------|------------------------------|----------------------------------------------|
//! | `0x00` | slot base, low 32 bits       | `SELECT`: the slot the other registers are about |
//! | `0x04` | slot base, high 32 bits      | `_OST` event (Arg0) for the selected slot    |
//! | `0x08` | slot length, low 32 bits     | `_OST` status (Arg1): delivers the report    |
//! | `0x0c` | slot length, high 32 bits    | ignored                                      |
//! | `0x10` | proximity domain (0)         | ignored                                      |
//! | `0x14` | status: bit 0 enabled, bit 1 insert pending, bit 2 remove pending | control: bit 1 clears the insert event, bit 2 the remove event, bit 3 ejects (`_EJ0`) |
//!
//! Registers are 32 bits wide except `0x14`, which is a byte (1- or 4-byte
//! accesses). A selector past the slots reads as an empty slot; writes about
//! it are logged and ignored, as are other widths and offsets.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::bus::BusDevice;
use crate::guest_warn;

/// Most slots the controller describes (one bit each in the event words).
pub const MAX_SLOTS: usize = 64;
/// The register block.
pub const MMIO_LEN: u64 = 0x18;

pub const REG_BASE_LO: u64 = 0x00;
pub const REG_SELECT: u64 = 0x00;
pub const REG_BASE_HI: u64 = 0x04;
pub const REG_OST_EVENT: u64 = 0x04;
pub const REG_LEN_LO: u64 = 0x08;
pub const REG_OST_STATUS: u64 = 0x08;
pub const REG_LEN_HI: u64 = 0x0c;
pub const REG_PXM: u64 = 0x10;
pub const REG_STATUS: u64 = 0x14;

/// Status bits (read at `0x14`).
pub const STATUS_ENABLED: u8 = 1 << 0;
pub const STATUS_INSERT: u8 = 1 << 1;
pub const STATUS_REMOVE: u8 = 1 << 2;
/// Control bits (written at `0x14`).
pub const CONTROL_CLEAR_INSERT: u8 = 1 << 1;
pub const CONTROL_CLEAR_REMOVE: u8 = 1 << 2;
pub const CONTROL_EJECT: u8 = 1 << 3;

/// One slot as the guest should see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotView {
    pub base: u64,
    pub len: u64,
    /// Present and usable (`_STA` 0xF).
    pub enabled: bool,
}

/// What the controller needs from the VMM. Called on vCPU threads in the
/// middle of an MMIO exit: must not block.
pub trait MemHotplugHost: Send + Sync {
    /// Slot `index` as the guest should see it (`None`: no such slot).
    fn slot(&self, index: usize) -> Option<SlotView>;
    /// The guest ejected slot `index` (`_EJ0`).
    fn eject(&self, index: usize);
    /// The guest reported `_OST(event, status)` for slot `index`.
    fn ost(&self, index: usize, event: u32, status: u32);
}

/// What the guest did with the controller, for `vm.counters`.
#[derive(Debug, Default)]
pub struct Counters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub ejects: AtomicU64,
    pub osts: AtomicU64,
    pub ignored: AtomicU64,
}

pub struct MemHotplugController {
    host: Arc<dyn MemHotplugHost>,
    slots: usize,
    selector: AtomicU32,
    ost_event: AtomicU32,
    /// Bit i: slot i was added (removed) and the guest has not been told.
    inserting: AtomicU64,
    removing: AtomicU64,
    pub counters: Counters,
}

impl MemHotplugController {
    /// A controller for `slots` slots (at most [`MAX_SLOTS`]).
    pub fn new(host: Arc<dyn MemHotplugHost>, slots: usize) -> Self {
        MemHotplugController {
            host,
            slots: slots.min(MAX_SLOTS),
            selector: AtomicU32::new(0),
            ost_event: AtomicU32::new(0),
            inserting: AtomicU64::new(0),
            removing: AtomicU64::new(0),
            counters: Counters::default(),
        }
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Marks slot `index` added: the guest's next scan notifies it (Notify 1).
    pub fn request_insert(&self, index: usize) {
        if index < self.slots {
            self.removing.fetch_and(!(1 << index), Ordering::AcqRel);
            self.inserting.fetch_or(1 << index, Ordering::AcqRel);
        }
    }

    /// Asks the guest to eject slot `index` at its next scan (Notify 3).
    pub fn request_remove(&self, index: usize) {
        if index < self.slots {
            self.inserting.fetch_and(!(1 << index), Ordering::AcqRel);
            self.removing.fetch_or(1 << index, Ordering::AcqRel);
        }
    }

    /// Takes back an insert the guest has not scanned yet, atomically against
    /// the guest's scan clearing it: true if it was still pending (the guest
    /// never saw it), false if the guest got there first.
    pub fn withdraw_insert(&self, index: usize) -> bool {
        index < self.slots && self.inserting.fetch_and(!(1 << index), Ordering::AcqRel) & (1 << index) != 0
    }

    /// Forgets pending events for slot `index` (a rollback).
    pub fn cancel(&self, index: usize) {
        if index < self.slots {
            self.inserting.fetch_and(!(1 << index), Ordering::AcqRel);
            self.removing.fetch_and(!(1 << index), Ordering::AcqRel);
        }
    }

    /// Pending (insert, remove) bits.
    pub fn pending(&self) -> (u64, u64) {
        (self.inserting.load(Ordering::Acquire), self.removing.load(Ordering::Acquire))
    }

    /// Name and value of each counter, for `vm.counters`.
    pub fn counter_values(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        vec![
            ("reads", c.reads.load(Ordering::Relaxed)),
            ("writes", c.writes.load(Ordering::Relaxed)),
            ("ejects", c.ejects.load(Ordering::Relaxed)),
            ("osts", c.osts.load(Ordering::Relaxed)),
            ("ignored", c.ignored.load(Ordering::Relaxed)),
        ]
    }

    fn selected(&self) -> Option<usize> {
        let s = self.selector.load(Ordering::Acquire) as usize;
        (s < self.slots).then_some(s)
    }

    fn ignore(&self, why: std::fmt::Arguments) {
        self.counters.ignored.fetch_add(1, Ordering::Relaxed);
        guest_warn!("mem-hotplug: {why}; ignored");
    }

    fn status(&self, index: usize) -> u8 {
        let view = self.host.slot(index).unwrap_or_default();
        let bit = 1u64 << index;
        let mut s = 0;
        if view.enabled {
            s |= STATUS_ENABLED;
        }
        if self.inserting.load(Ordering::Acquire) & bit != 0 {
            s |= STATUS_INSERT;
        }
        if self.removing.load(Ordering::Acquire) & bit != 0 {
            s |= STATUS_REMOVE;
        }
        s
    }

    fn control(&self, index: usize, v: u8) {
        let bit = 1u64 << index;
        if v & CONTROL_CLEAR_INSERT != 0 {
            self.inserting.fetch_and(!bit, Ordering::AcqRel);
        }
        if v & CONTROL_CLEAR_REMOVE != 0 {
            self.removing.fetch_and(!bit, Ordering::AcqRel);
        }
        if v & CONTROL_EJECT != 0 {
            self.counters.ejects.fetch_add(1, Ordering::Relaxed);
            self.host.eject(index);
        }
    }
}

impl BusDevice for MemHotplugController {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        data.fill(0);
        let view = self.selected().and_then(|i| self.host.slot(i)).unwrap_or_default();
        let v: u32 = match (offset, data.len()) {
            (REG_STATUS, 1 | 4) => self.selected().map_or(0, |i| u32::from(self.status(i))),
            (REG_BASE_LO, 4) => view.base as u32,
            (REG_BASE_HI, 4) => (view.base >> 32) as u32,
            (REG_LEN_LO, 4) => view.len as u32,
            (REG_LEN_HI, 4) => (view.len >> 32) as u32,
            (REG_PXM, 4) => 0,
            _ => return self.ignore(format_args!("{}-byte read at {offset:#x}", data.len())),
        };
        let n = data.len();
        data.copy_from_slice(&v.to_le_bytes()[..n]);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        let v = match data.len() {
            1 => u32::from(data[0]),
            4 => u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
            n => return self.ignore(format_args!("{n}-byte write at {offset:#x}")),
        };
        match (offset, data.len()) {
            (REG_SELECT, 4) => self.selector.store(v, Ordering::Release),
            (REG_OST_EVENT, 4) => self.ost_event.store(v, Ordering::Release),
            (REG_OST_STATUS, 4) => match self.selected() {
                Some(i) => {
                    self.counters.osts.fetch_add(1, Ordering::Relaxed);
                    self.host.ost(i, self.ost_event.load(Ordering::Acquire), v);
                }
                None => self.ignore(format_args!("_OST for slot {}, which does not exist", v)),
            },
            (REG_STATUS, _) => match self.selected() {
                Some(i) => self.control(i, v as u8),
                None => {
                    let sel = self.selector.load(Ordering::Relaxed);
                    self.ignore(format_args!("control {v:#x} for slot {sel}, which does not exist"))
                }
            },
            (REG_LEN_HI | REG_PXM, 4) => {}
            _ => self.ignore(format_args!("{}-byte write at {offset:#x}", data.len())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Host {
        slots: Mutex<Vec<SlotView>>,
        ejected: Mutex<Vec<usize>>,
        osts: Mutex<Vec<(usize, u32, u32)>>,
    }

    impl MemHotplugHost for Host {
        fn slot(&self, index: usize) -> Option<SlotView> {
            self.slots.lock().unwrap().get(index).copied()
        }
        fn eject(&self, index: usize) {
            self.ejected.lock().unwrap().push(index);
        }
        fn ost(&self, index: usize, event: u32, status: u32) {
            self.osts.lock().unwrap().push((index, event, status));
        }
    }

    fn r32(c: &MemHotplugController, off: u64) -> u32 {
        let mut b = [0u8; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w32(c: &MemHotplugController, off: u64, v: u32) {
        c.write(off, &v.to_le_bytes());
    }

    fn setup() -> (Arc<Host>, MemHotplugController) {
        let host = Arc::new(Host::default());
        *host.slots.lock().unwrap() = vec![
            SlotView { base: 0x1_0000_0000, len: 128 << 20, enabled: true },
            SlotView { base: 0x1_2000_0000, len: 0x1_0000_0000, enabled: false },
        ];
        let c = MemHotplugController::new(host.clone(), 2);
        (host, c)
    }

    #[test]
    fn a_selected_slot_reads_its_range_and_events() {
        let (_, c) = setup();
        c.request_insert(1);
        w32(&c, REG_SELECT, 1);
        assert_eq!((r32(&c, REG_BASE_LO), r32(&c, REG_BASE_HI)), (0x2000_0000, 1));
        assert_eq!((r32(&c, REG_LEN_LO), r32(&c, REG_LEN_HI)), (0, 1));
        let mut b = [0u8; 1];
        c.read(REG_STATUS, &mut b);
        assert_eq!(b[0], STATUS_INSERT, "inserting, not yet enabled");
        c.write(REG_STATUS, &[CONTROL_CLEAR_INSERT]);
        c.read(REG_STATUS, &mut b);
        assert_eq!(b[0], 0);
        w32(&c, REG_SELECT, 0);
        c.read(REG_STATUS, &mut b);
        assert_eq!(b[0], STATUS_ENABLED);
    }

    #[test]
    fn ost_and_eject_reach_the_host_for_the_selected_slot() {
        let (host, c) = setup();
        c.request_remove(0);
        assert_eq!(c.pending(), (0, 1));
        w32(&c, REG_SELECT, 0);
        w32(&c, REG_OST_EVENT, 3);
        w32(&c, REG_OST_STATUS, 0x80);
        c.write(REG_STATUS, &[CONTROL_CLEAR_REMOVE]);
        c.write(REG_STATUS, &[CONTROL_EJECT]);
        assert_eq!(*host.osts.lock().unwrap(), [(0, 3, 0x80)]);
        assert_eq!(*host.ejected.lock().unwrap(), [0]);
        assert_eq!(c.pending(), (0, 0));
    }

    #[test]
    fn an_insert_and_a_remove_of_one_slot_replace_each_other() {
        let (_, c) = setup();
        c.request_insert(1);
        c.request_remove(1);
        assert_eq!(c.pending(), (0, 2));
        c.request_insert(1);
        assert_eq!(c.pending(), (2, 0));
        c.cancel(1);
        assert_eq!(c.pending(), (0, 0));
        c.request_insert(64);
        c.request_insert(5);
        assert_eq!(c.pending(), (0, 0), "slots past the controller's are ignored");
    }

    #[test]
    fn an_insert_is_withdrawn_only_while_the_guest_has_not_scanned_it() {
        let (_, c) = setup();
        c.request_insert(1);
        assert!(c.withdraw_insert(1), "still pending: taken back");
        assert_eq!(c.pending(), (0, 0));
        assert!(!c.withdraw_insert(1), "nothing pending: the guest got there first");
        assert!(!c.withdraw_insert(70), "no such slot");
    }

    #[test]
    fn garbage_is_ignored_and_counted() {
        let (host, c) = setup();
        w32(&c, REG_SELECT, 7);
        assert_eq!(r32(&c, REG_BASE_LO), 0, "a slot past the last reads as empty");
        c.write(REG_STATUS, &[CONTROL_EJECT]);
        w32(&c, REG_OST_STATUS, 1);
        c.write(REG_BASE_LO, &[1, 2]);
        let mut b = [0u8; 2];
        c.read(REG_BASE_LO, &mut b);
        c.read(0x40, &mut [0u8; 4]);
        assert!(host.ejected.lock().unwrap().is_empty() && host.osts.lock().unwrap().is_empty());
        assert_eq!(c.counters.ignored.load(Ordering::Relaxed), 5);
    }
}
