//! The CPU hotplug controller: an MMIO register block through which the
//! guest's AML learns which vCPUs to add or eject, and reports back.
//!
//! Pending events are bitmaps read 32 vCPUs at a time, so a guest scan costs
//! about `max / 32` MMIO reads plus a few per changed vCPU — never one
//! select/read pair per *possible* vCPU. Every access is 32 bits wide.
//!
//! | offset          | name            | access | meaning                                                 |
//! |-----------------|-----------------|--------|---------------------------------------------------------|
//! | `0x000 + 4*w`   | `PRESENT[w]`    | R      | bit b: vCPU `32*w+b` is present (as the guest should see it) |
//! | `0x200 + 4*w`   | `INSERT[w]`     | R/W1C  | bit b: vCPU `32*w+b` was added; notify the guest (Notify 1) |
//! | `0x400 + 4*w`   | `REMOVE[w]`     | R/W1C  | bit b: the VMM asks the guest to eject vCPU `32*w+b` (Notify 3) |
//! | `0x600`         | `EJECT`         | W      | vCPU id: the guest ran `_EJ0` for it                   |
//! | `0x604`         | `OST_SELECT`    | W      | vCPU id the next `_OST` report is about                 |
//! | `0x608`         | `OST_EVENT`     | W      | `_OST` source event (Arg0)                              |
//! | `0x60c`         | `OST_STATUS`    | W      | `_OST` status (Arg1); writing it delivers the report    |
//!
//! `w` ranges over `0..max.div_ceil(32)`, at most `0..128` (4096 vCPUs, what
//! x86 KVM's largest `KVM_CAP_MAX_VCPUS` allows). The offsets are fixed
//! whatever `max` is, so the layout never depends on the VM; words past `max`
//! read as 0. Reads of write-only registers return 0; unknown offsets, other
//! access sizes and out-of-range ids are logged and ignored.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use log::debug;

use crate::guest_warn;

use crate::bus::BusDevice;

pub const MAX_WORDS: usize = 128;
/// Most vCPUs the controller can describe.
pub const MAX_CPUS: u32 = (MAX_WORDS * 32) as u32;
/// One page.
pub const MMIO_LEN: u64 = 0x1000;

pub const REG_PRESENT: u64 = 0x000;
pub const REG_INSERT: u64 = 0x200;
pub const REG_REMOVE: u64 = 0x400;
pub const REG_EJECT: u64 = 0x600;
pub const REG_OST_SELECT: u64 = 0x604;
pub const REG_OST_EVENT: u64 = 0x608;
pub const REG_OST_STATUS: u64 = 0x60c;

const _: () = {
    assert!(REG_INSERT - REG_PRESENT == 4 * MAX_WORDS as u64);
    assert!(REG_REMOVE - REG_INSERT == 4 * MAX_WORDS as u64);
    assert!(REG_EJECT - REG_REMOVE == 4 * MAX_WORDS as u64);
    assert!(REG_OST_STATUS + 4 <= MMIO_LEN);
};

/// What the controller needs from the VMM: the guest-visible presence of
/// vCPUs and somewhere to deliver the guest's `_EJ0` and `_OST` calls.
/// Called on vCPU threads in the middle of an MMIO exit: must not block.
pub trait CpuHotplugHost: Send + Sync {
    /// Bit b set: vCPU `32*word+b` is present for the guest's `_STA`.
    fn present_word(&self, word: usize) -> u32;
    /// The guest ejected vCPU `id` (`_EJ0`).
    fn eject(&self, id: u32);
    /// The guest reported `_OST(event, status)` for vCPU `id`.
    fn ost(&self, id: u32, event: u32, status: u32);
}

/// What the guest did with the controller, for `vm.counters`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Register reads and writes: each one is an MMIO exit.
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    /// Guest scans (`CSCN` starts each one by reading `INSERT[0]`).
    pub scans: AtomicU64,
    pub ejects: AtomicU64,
    pub osts: AtomicU64,
    /// Accesses logged and ignored (bad offsets, widths, ids).
    pub ignored: AtomicU64,
}

impl Counters {
    /// Name and value of each counter.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("reads", r(&self.reads)),
            ("writes", r(&self.writes)),
            ("scans", r(&self.scans)),
            ("ejects", r(&self.ejects)),
            ("osts", r(&self.osts)),
            ("ignored", r(&self.ignored)),
        ]
    }
}

pub struct CpuHotplugController {
    max_vcpus: u32,
    pub counters: Counters,
    /// `max.div_ceil(32)` words each: a VM's own size, not [`MAX_WORDS`].
    insert: Box<[AtomicU32]>,
    remove: Box<[AtomicU32]>,
    ost_select: AtomicU32,
    ost_event: AtomicU32,
    host: Arc<dyn CpuHotplugHost>,
}

fn split(id: u32) -> (usize, u32) {
    ((id / 32) as usize, 1 << (id % 32))
}

impl CpuHotplugController {
    /// `max_vcpus` must not exceed [`MAX_CPUS`]; larger values are clamped.
    pub fn new(max_vcpus: u32, host: Arc<dyn CpuHotplugHost>) -> Self {
        let max_vcpus = max_vcpus.min(MAX_CPUS);
        let words = || (0..max_vcpus.div_ceil(32)).map(|_| AtomicU32::new(0)).collect();
        CpuHotplugController {
            max_vcpus,
            insert: words(),
            remove: words(),
            ost_select: AtomicU32::new(u32::MAX),
            ost_event: AtomicU32::new(0),
            host,
            counters: Counters::default(),
        }
    }

    /// Number of bitmap words the guest needs to scan.
    pub fn words(&self) -> usize {
        self.max_vcpus.div_ceil(32) as usize
    }

    /// Asks the guest to add vCPU `id` at its next scan. Cancels a pending removal.
    pub fn request_insert(&self, id: u32) {
        if id >= self.max_vcpus {
            return;
        }
        let (w, bit) = split(id);
        self.remove[w].fetch_and(!bit, Ordering::AcqRel);
        self.insert[w].fetch_or(bit, Ordering::AcqRel);
    }

    /// Asks the guest to eject vCPU `id` at its next scan. Cancels a pending insert.
    pub fn request_remove(&self, id: u32) {
        if id >= self.max_vcpus {
            return;
        }
        let (w, bit) = split(id);
        self.insert[w].fetch_and(!bit, Ordering::AcqRel);
        self.remove[w].fetch_or(bit, Ordering::AcqRel);
    }

    /// Takes back the insert request for `id` if the guest has not picked it
    /// up (acknowledged its bit) yet; returns whether it was still pending.
    /// Atomic against the guest's acknowledge: exactly one side wins.
    pub fn withdraw_insert(&self, id: u32) -> bool {
        self.withdraw(&self.insert, id)
    }

    /// As [`withdraw_insert`](Self::withdraw_insert), for an eject request.
    pub fn withdraw_remove(&self, id: u32) -> bool {
        self.withdraw(&self.remove, id)
    }

    fn withdraw(&self, bitmap: &[AtomicU32], id: u32) -> bool {
        if id >= self.max_vcpus {
            return false;
        }
        let (w, bit) = split(id);
        bitmap[w].fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }

    /// Whether the guest has yet to pick up a request for `id`.
    pub fn is_pending(&self, id: u32) -> bool {
        if id >= self.max_vcpus {
            return false;
        }
        let (w, bit) = split(id);
        (self.insert[w].load(Ordering::Acquire) | self.remove[w].load(Ordering::Acquire)) & bit != 0
    }

    fn valid_id(&self, what: &str, value: u32) -> Option<u32> {
        if value < self.max_vcpus {
            Some(value)
        } else {
            self.counters.ignored.fetch_add(1, Ordering::Relaxed);
            guest_warn!(
                "cpu-hotplug: guest wrote out-of-range vCPU id {value} to {what} (max {}), ignored",
                self.max_vcpus
            );
            None
        }
    }

    fn word_index(&self, offset: u64, base: u64) -> Option<usize> {
        let w = ((offset - base) / 4) as usize;
        (w < self.words()).then_some(w)
    }
}

impl BusDevice for CpuHotplugController {
    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        if offset == REG_INSERT {
            self.counters.scans.fetch_add(1, Ordering::Relaxed);
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.counters.ignored.fetch_add(1, Ordering::Relaxed);
            guest_warn!("cpu-hotplug: ignoring {}-byte read at offset {offset:#x}", data.len());
            return;
        }
        let value = match offset {
            REG_PRESENT..REG_INSERT => self.word_index(offset, REG_PRESENT).map(|w| self.host.present_word(w)),
            REG_INSERT..REG_REMOVE => {
                self.word_index(offset, REG_INSERT).map(|w| self.insert[w].load(Ordering::Acquire))
            }
            REG_REMOVE..REG_EJECT => {
                self.word_index(offset, REG_REMOVE).map(|w| self.remove[w].load(Ordering::Acquire))
            }
            _ => None,
        };
        data.copy_from_slice(&value.unwrap_or(0).to_le_bytes());
    }

    fn write(&self, offset: u64, data: &[u8]) {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.counters.ignored.fetch_add(1, Ordering::Relaxed);
            guest_warn!("cpu-hotplug: ignoring {}-byte write at offset {offset:#x}", data.len());
            return;
        };
        if !offset.is_multiple_of(4) {
            self.counters.ignored.fetch_add(1, Ordering::Relaxed);
            guest_warn!("cpu-hotplug: ignoring unaligned write at offset {offset:#x}");
            return;
        }
        let value = u32::from_le_bytes(bytes);
        match offset {
            REG_INSERT..REG_REMOVE => {
                if let Some(w) = self.word_index(offset, REG_INSERT) {
                    self.insert[w].fetch_and(!value, Ordering::AcqRel);
                }
            }
            REG_REMOVE..REG_EJECT => {
                if let Some(w) = self.word_index(offset, REG_REMOVE) {
                    self.remove[w].fetch_and(!value, Ordering::AcqRel);
                }
            }
            REG_EJECT => {
                if let Some(id) = self.valid_id("EJECT", value) {
                    debug!("cpu-hotplug: guest ejected vCPU {id}");
                    self.counters.ejects.fetch_add(1, Ordering::Relaxed);
                    self.host.eject(id);
                }
            }
            REG_OST_SELECT => {
                if let Some(id) = self.valid_id("OST_SELECT", value) {
                    self.ost_select.store(id, Ordering::Release);
                }
            }
            REG_OST_EVENT => self.ost_event.store(value, Ordering::Release),
            REG_OST_STATUS => {
                let id = self.ost_select.swap(u32::MAX, Ordering::AcqRel);
                if id == u32::MAX {
                    guest_warn!("cpu-hotplug: guest wrote OST_STATUS {value:#x} without selecting a vCPU, ignored");
                    return;
                }
                let event = self.ost_event.load(Ordering::Acquire);
                debug!("cpu-hotplug: vCPU {id} _OST event {event:#x} status {value:#x}");
                self.counters.osts.fetch_add(1, Ordering::Relaxed);
                self.host.ost(id, event, value);
            }
            _ => {
                self.counters.ignored.fetch_add(1, Ordering::Relaxed);
                guest_warn!("cpu-hotplug: ignoring write of {value:#x} to read-only or unknown offset {offset:#x}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Host {
        present: Vec<u32>,
        calls: Mutex<Vec<String>>,
    }
    impl CpuHotplugHost for Host {
        fn present_word(&self, word: usize) -> u32 {
            self.present.get(word).copied().unwrap_or(0)
        }
        fn eject(&self, id: u32) {
            self.calls.lock().unwrap().push(format!("eject {id}"));
        }
        fn ost(&self, id: u32, event: u32, status: u32) {
            self.calls.lock().unwrap().push(format!("ost {id} {event:#x} {status:#x}"));
        }
    }

    fn rd(c: &CpuHotplugController, off: u64) -> u32 {
        let mut b = [0u8; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }
    fn wr(c: &CpuHotplugController, off: u64, v: u32) {
        c.write(off, &v.to_le_bytes());
    }

    fn controller(max: u32) -> (Arc<Host>, CpuHotplugController) {
        let mut host = Host { present: vec![0; MAX_WORDS], ..Default::default() };
        host.present[0] = 0b1011;
        host.present[1] = 1;
        let host = Arc::new(host);
        (host.clone(), CpuHotplugController::new(max, host))
    }

    #[test]
    fn present_words_come_from_the_host() {
        let (_, c) = controller(64);
        assert_eq!(c.words(), 2);
        assert_eq!(rd(&c, REG_PRESENT), 0b1011);
        assert_eq!(rd(&c, REG_PRESENT + 4), 1);
        // word beyond max reads as zero
        assert_eq!(rd(&c, REG_PRESENT + 8), 0);
    }

    #[test]
    fn insert_and_remove_bitmaps_are_write_one_to_clear() {
        let (_, c) = controller(64);
        c.request_insert(1);
        c.request_insert(33);
        c.request_remove(2);
        assert_eq!(rd(&c, REG_INSERT), 1 << 1);
        assert_eq!(rd(&c, REG_INSERT + 4), 1 << 1);
        assert_eq!(rd(&c, REG_REMOVE), 1 << 2);
        assert!(c.is_pending(33));
        wr(&c, REG_INSERT + 4, 1 << 1);
        assert_eq!(rd(&c, REG_INSERT + 4), 0);
        assert!(!c.is_pending(33));
        wr(&c, REG_REMOVE, 0);
        assert_eq!(rd(&c, REG_REMOVE), 1 << 2, "writing zero clears nothing");
        // a removal request replaces a pending insert and vice versa
        c.request_remove(1);
        assert_eq!(rd(&c, REG_INSERT), 0);
        assert_eq!(rd(&c, REG_REMOVE), (1 << 2) | (1 << 1));
        assert!(c.withdraw_remove(2));
        assert!(!c.withdraw_remove(2), "already withdrawn");
        assert_eq!(rd(&c, REG_REMOVE), 1 << 1);
        // once the guest has acknowledged a request, it can no longer be withdrawn
        c.request_insert(5);
        wr(&c, REG_INSERT, 1 << 5);
        assert!(!c.withdraw_insert(5));
        assert!(!c.withdraw_insert(1000));
    }

    #[test]
    fn eject_and_ost_reach_the_host() {
        let (host, c) = controller(4);
        wr(&c, REG_EJECT, 3);
        wr(&c, REG_OST_SELECT, 2);
        wr(&c, REG_OST_EVENT, 3);
        wr(&c, REG_OST_STATUS, 0x80);
        assert_eq!(host.calls.lock().unwrap().as_slice(), &["eject 3", "ost 2 0x3 0x80"]);
    }

    #[test]
    fn guest_garbage_is_ignored() {
        let (host, c) = controller(4);
        wr(&c, REG_EJECT, 4); // out of range
        wr(&c, REG_EJECT, u32::MAX);
        wr(&c, REG_OST_SELECT, 99);
        wr(&c, REG_OST_STATUS, 0); // nothing selected
        c.write(REG_EJECT, &[1]); // wrong size
        c.write(REG_EJECT, &[1, 0, 0, 0, 0, 0, 0, 0]);
        c.write(REG_EJECT + 1, &[1, 0, 0, 0]); // unaligned
        wr(&c, REG_PRESENT, u32::MAX); // read-only
        wr(&c, 0xffc, 1); // unknown
        wr(&c, 0x1000, 1); // past the block
        let mut odd = [0xaau8; 2];
        c.read(REG_PRESENT, &mut odd);
        assert_eq!(odd, [0, 0]);
        assert_eq!(rd(&c, REG_EJECT), 0);
        c.request_insert(4); // beyond max
        c.request_remove(1000);
        assert_eq!(rd(&c, REG_INSERT), 0);
        assert!(host.calls.lock().unwrap().is_empty());
        // a selection is consumed by one status write
        wr(&c, REG_OST_SELECT, 1);
        wr(&c, REG_OST_STATUS, 0);
        wr(&c, REG_OST_STATUS, 1);
        assert_eq!(host.calls.lock().unwrap().as_slice(), &["ost 1 0x0 0x0"]);
    }

    #[test]
    fn max_is_clamped_to_what_the_registers_hold() {
        let (_, c) = controller(10_000);
        assert_eq!(c.words(), MAX_WORDS);
    }

    #[test]
    fn the_last_word_of_a_big_controller_works() {
        let (host, c) = controller(1024);
        assert_eq!(c.words(), 32);
        c.request_insert(1023);
        c.request_remove(992);
        assert_eq!(rd(&c, REG_INSERT + 31 * 4), 1 << 31);
        assert_eq!(rd(&c, REG_REMOVE + 31 * 4), 1);
        assert_eq!(rd(&c, REG_INSERT + 32 * 4), 0, "past max");
        wr(&c, REG_INSERT + 31 * 4, 1 << 31);
        assert!(!c.is_pending(1023));
        wr(&c, REG_EJECT, 1023);
        wr(&c, REG_EJECT, 1024);
        assert_eq!(host.calls.lock().unwrap().as_slice(), &["eject 1023"]);
    }
}
