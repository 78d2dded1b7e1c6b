//! The VMM side of the CPU hotplug controller: what happens when the guest
//! ejects a vCPU or reports `_OST`. Runs on vCPU threads inside MMIO exits,
//! so everything here is lock-free and non-blocking; the slow part of an
//! eject (grace period, join) is handed to the main loop.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use log::{info, warn};
use vmm_sys_util::eventfd::EventFd;

use devices::cpu_hotplug::CpuHotplugHost;

use super::table::{OstReport, VcpuState, VcpuTable};
use super::vcpu::VcpuHandle;

/// `_OST` source events and status codes (ACPI 6.5, 6.3.5). For eject
/// requests 0x80..=0x83 are refusals (not supported, in use, busy, dependency
/// busy) and 0x84 means "in progress"; 1 is a generic failure.
pub const OST_EVENT_DEVICE_CHECK: u32 = 0x1;
pub const OST_EVENT_EJECT_REQUEST: u32 = 0x3;
pub const OST_EVENT_EJECT_PROCESSING: u32 = 0x103;
pub const OST_SUCCESS: u32 = 0x0;
pub const OST_EJECT_IN_PROGRESS: u32 = 0x84;

/// Why the last removal of a vCPU was rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Rollback {
    None = 0,
    /// The guest answered the eject request with a failure `_OST`.
    GuestRefused = 1,
    /// The guest did not eject within the bound.
    Timeout = 2,
}

pub struct HotplugHost {
    table: Arc<VcpuTable<VcpuHandle>>,
    /// Bit per vCPU: the guest ejected it and the main loop has yet to retire it.
    ejected: Box<[AtomicU64]>,
    rollback: Box<[AtomicU8]>,
    wake: EventFd,
}

impl HotplugHost {
    /// `wake` is written whenever the guest ejects a vCPU.
    pub fn new(table: Arc<VcpuTable<VcpuHandle>>, wake: EventFd) -> Self {
        let n = table.capacity() as usize;
        HotplugHost {
            ejected: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            rollback: (0..n).map(|_| AtomicU8::new(0)).collect(),
            table,
            wake,
        }
    }

    /// The vCPUs the guest ejected since the last call (the caller drains `wake`).
    pub fn take_ejected(&self) -> Vec<u32> {
        let mut ids = Vec::new();
        for (w, word) in self.ejected.iter().enumerate() {
            let mut bits = word.swap(0, Ordering::AcqRel);
            while bits != 0 {
                ids.push((w * 64) as u32 + bits.trailing_zeros());
                bits &= bits - 1;
            }
        }
        ids
    }

    pub fn rollback(&self, id: u32) -> Rollback {
        match self.rollback.get(id as usize).map(|r| r.load(Ordering::Acquire)) {
            Some(1) => Rollback::GuestRefused,
            Some(2) => Rollback::Timeout,
            _ => Rollback::None,
        }
    }

    pub fn set_rollback(&self, id: u32, why: Rollback) {
        if let Some(r) = self.rollback.get(id as usize) {
            r.store(why as u8, Ordering::Release);
        }
    }
}

impl CpuHotplugHost for HotplugHost {
    fn present_word(&self, word: usize) -> u32 {
        (0..32u32)
            .filter(|b| {
                let state = self.table.state(word as u32 * 32 + b);
                matches!(state, VcpuState::Inserting | VcpuState::Online | VcpuState::Removing)
            })
            .fold(0, |acc, b| acc | 1 << b)
    }

    fn eject(&self, id: u32) {
        // Keyed on our own pending-removal state: an _EJ0 we did not ask for
        // changes nothing. One exception: after a removal timed out, a slow
        // guest that finally ejects has really removed the CPU, so it counts.
        let late =
            self.rollback(id) == Rollback::Timeout && self.table.transition(id, VcpuState::Online, VcpuState::Ejected);
        if late || self.table.transition(id, VcpuState::Removing, VcpuState::Ejected) {
            if late {
                self.set_rollback(id, Rollback::None);
            }
            info!(
                "vCPU {id}: guest ejected it{}; retiring",
                if late { " after the removal had timed out" } else { "" }
            );
            self.ejected[(id / 64) as usize].fetch_or(1 << (id % 64), Ordering::AcqRel);
            if let Err(e) = self.wake.write(1) {
                warn!("vCPU {id}: cannot wake the main loop to retire it: {e}");
            }
        } else {
            warn!(
                "vCPU {id}: guest called _EJ0 while the vCPU is {:?}, not being removed; ignored",
                self.table.state(id)
            );
        }
    }

    fn ost(&self, id: u32, event: u32, status: u32) {
        let _ = self.table.set_ost(id, OstReport { event, status });
        match event {
            OST_EVENT_DEVICE_CHECK
                if status == OST_SUCCESS && self.table.transition(id, VcpuState::Inserting, VcpuState::Online) =>
            {
                info!("vCPU {id}: guest acknowledged the hot-add");
            }
            OST_EVENT_DEVICE_CHECK if status != OST_SUCCESS => {
                warn!("vCPU {id}: guest reported hot-add failure (_OST status {status:#x})")
            }
            OST_EVENT_EJECT_REQUEST | OST_EVENT_EJECT_PROCESSING
                if status != OST_SUCCESS
                    && status != OST_EJECT_IN_PROGRESS
                    && self.table.transition(id, VcpuState::Removing, VcpuState::Online) =>
            {
                self.set_rollback(id, Rollback::GuestRefused);
                warn!("vCPU {id}: guest refused the eject (_OST status {status:#x}); removal rolled back");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> (Arc<VcpuTable<VcpuHandle>>, HotplugHost) {
        let t = Arc::new(VcpuTable::new(70));
        (t.clone(), HotplugHost::new(t, EventFd::new(libc::EFD_NONBLOCK).unwrap()))
    }

    #[test]
    fn eject_only_counts_for_vcpus_being_removed() {
        let (t, h) = host();
        h.eject(3); // absent: ignored
        t.set_state(5, VcpuState::Online).unwrap();
        h.eject(5); // online: ignored
        assert!(h.take_ejected().is_empty());
        t.set_state(5, VcpuState::Removing).unwrap();
        t.set_state(65, VcpuState::Removing).unwrap();
        h.eject(5);
        h.eject(65);
        h.eject(5); // twice: once is enough
        assert_eq!(h.take_ejected(), vec![5, 65]);
        assert_eq!(t.state(5), VcpuState::Ejected);
        assert!(h.take_ejected().is_empty());
    }

    #[test]
    fn ost_acknowledges_inserts_and_rolls_back_refused_ejects() {
        let (t, h) = host();
        t.set_state(1, VcpuState::Inserting).unwrap();
        h.ost(1, OST_EVENT_DEVICE_CHECK, OST_SUCCESS);
        assert_eq!(t.state(1), VcpuState::Online);
        assert_eq!(t.ost(1), Some(OstReport { event: 1, status: 0 }));
        t.set_state(2, VcpuState::Removing).unwrap();
        h.ost(2, OST_EVENT_EJECT_REQUEST, OST_EJECT_IN_PROGRESS);
        assert_eq!(t.state(2), VcpuState::Removing);
        h.ost(2, OST_EVENT_EJECT_REQUEST, 0x80); // eject not supported
        assert_eq!(t.state(2), VcpuState::Online);
        assert_eq!(h.rollback(2), Rollback::GuestRefused);
        // a late _EJ0 after the rollback is ignored
        h.eject(2);
        assert!(h.take_ejected().is_empty());
    }

    #[test]
    fn a_late_eject_after_a_timeout_still_retires() {
        let (t, h) = host();
        t.set_state(1, VcpuState::Online).unwrap();
        h.set_rollback(1, Rollback::Timeout);
        h.eject(1);
        assert_eq!(h.take_ejected(), vec![1]);
        assert_eq!(t.state(1), VcpuState::Ejected);
        assert_eq!(h.rollback(1), Rollback::None);
        // but not after the guest refused
        t.set_state(2, VcpuState::Online).unwrap();
        h.set_rollback(2, Rollback::GuestRefused);
        h.eject(2);
        assert!(h.take_ejected().is_empty());
    }

    #[test]
    fn present_word_is_what_the_guest_should_see() {
        let (t, h) = host();
        t.set_state(0, VcpuState::Online).unwrap();
        t.set_state(1, VcpuState::Removing).unwrap();
        t.set_state(2, VcpuState::Ejected).unwrap();
        t.set_state(3, VcpuState::Parked).unwrap();
        t.set_state(33, VcpuState::Inserting).unwrap();
        assert_eq!(h.present_word(0), 0b11);
        assert_eq!(h.present_word(1), 0b10);
        assert_eq!(h.present_word(7), 0);
    }
}
