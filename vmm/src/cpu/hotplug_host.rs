//! The VMM side of the CPU hotplug controller: the guest's `_STA`, `_EJ0` and
//! `_OST`, and a vCPU's first run, turned into lifecycle events. Runs on vCPU
//! threads inside MMIO exits, so everything here is lock-free and
//! non-blocking: it applies the event to the vCPU's state word, marks the id
//! changed and wakes the main loop, which does the slow part (retiring,
//! re-planning).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};

use devices::guest_warn;
use vmm_sys_util::eventfd::EventFd;

use devices::cpu_hotplug::CpuHotplugHost;

use super::lifecycle::{Event, Phase, Transition};
use super::table::{OstReport, VcpuTable};
use super::vcpu::VcpuHandle;

/// `_OST` source events and status codes (ACPI 6.5, 6.3.5). For eject
/// requests 0x80..=0x83 are refusals (not supported, in use, busy, dependency
/// busy) and 0x84 means "in progress"; 1 is a generic failure.
pub const OST_EVENT_BUS_CHECK: u32 = 0x0;
pub const OST_EVENT_DEVICE_CHECK: u32 = 0x1;
pub const OST_EVENT_EJECT_REQUEST: u32 = 0x3;
pub const OST_EVENT_EJECT_PROCESSING: u32 = 0x103;
pub const OST_SUCCESS: u32 = 0x0;
pub const OST_EJECT_IN_PROGRESS: u32 = 0x84;

/// The `_OST` report as a lifecycle event, if it is one.
pub fn ost_event(event: u32, status: u32) -> Option<Event> {
    match (event, status) {
        (OST_EVENT_BUS_CHECK | OST_EVENT_DEVICE_CHECK, OST_SUCCESS) => Some(Event::AddAcked),
        (OST_EVENT_BUS_CHECK | OST_EVENT_DEVICE_CHECK, _) => Some(Event::AddFailed),
        (OST_EVENT_EJECT_REQUEST | OST_EVENT_EJECT_PROCESSING, OST_SUCCESS | OST_EJECT_IN_PROGRESS) => None,
        (OST_EVENT_EJECT_REQUEST | OST_EVENT_EJECT_PROCESSING, _) => Some(Event::EjectRefused),
        _ => None,
    }
}

pub struct HotplugHost {
    table: Arc<VcpuTable<VcpuHandle>>,
    /// Bit per vCPU: the guest changed its state since the main loop last looked.
    changed: Box<[AtomicU64]>,
    wake: EventFd,
    /// Per vCPU: when the guest last ejected it, in ns after `epoch` plus
    /// one (0: not ejected), for the `_EJ0` → joined latency.
    ejected_at: Box<[AtomicU64]>,
    epoch: Instant,
}

impl HotplugHost {
    /// `wake` is written whenever the guest changes a vCPU's state.
    pub fn new(table: Arc<VcpuTable<VcpuHandle>>, wake: EventFd) -> Self {
        let n = table.capacity() as usize;
        HotplugHost {
            changed: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            ejected_at: (0..n).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            table,
            wake,
        }
    }

    /// How long ago the guest ejected `id`, once per eject.
    pub fn take_eject_age(&self, id: u32) -> Option<Duration> {
        let at = self.ejected_at.get(id as usize)?.swap(0, Ordering::AcqRel).checked_sub(1)?;
        Some(self.epoch.elapsed().saturating_sub(Duration::from_nanos(at)))
    }

    /// The vCPUs the guest moved since the last call (the caller drains `wake`).
    pub fn take_changed(&self) -> Vec<u32> {
        let mut ids = Vec::new();
        for (w, word) in self.changed.iter().enumerate() {
            let mut bits = word.swap(0, Ordering::AcqRel);
            while bits != 0 {
                ids.push((w * 64) as u32 + bits.trailing_zeros());
                bits &= bits - 1;
            }
        }
        ids
    }

    /// Applies a guest-caused event and tells the main loop.
    fn guest_event(&self, id: u32, event: Event) -> Option<Transition> {
        let t = super::apply(&*self.table, id, event)?;
        info!("vCPU {id}: {event:?}: {:?} -> {:?}", t.from, t.to);
        self.changed[(id / 64) as usize].fetch_or(1 << (id % 64), Ordering::AcqRel);
        if let Err(e) = self.wake.write(1) {
            warn!("vCPU {id}: cannot wake the main loop: {e}");
        }
        Some(t)
    }

    /// The vCPU left wait-for-SIPI: the guest runs on it.
    pub fn vcpu_started(&self, id: u32) {
        self.guest_event(id, Event::Started);
    }
}

impl CpuHotplugHost for HotplugHost {
    fn present_word(&self, word: usize) -> u32 {
        (0..32u32).filter(|b| self.table.state(word as u32 * 32 + b).guest_present()).fold(0, |acc, b| acc | 1 << b)
    }

    fn eject(&self, id: u32) {
        if id == 0 {
            guest_warn!("vCPU 0: guest wrote an eject for the boot vCPU, which is never removable; ignored");
            return;
        }
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        if let Some(slot) = self.ejected_at.get(id as usize) {
            slot.store(now + 1, Ordering::Release);
        }
        if self.guest_event(id, Event::Ejected).is_none() {
            guest_warn!("vCPU {id}: guest called _EJ0 while the vCPU is {:?}; ignored", self.table.state(id));
        }
    }

    fn ost(&self, id: u32, event: u32, status: u32) {
        let _ = self.table.set_ost(id, OstReport { event, status });
        crate::events::ost(id, event, status);
        let Some(e) = ost_event(event, status) else { return };
        if self.guest_event(id, e).is_none() && self.table.state(id).phase != Phase::Running {
            guest_warn!(
                "vCPU {id}: guest _OST({event:#x}, {status:#x}) does not apply in state {:?}; ignored",
                self.table.state(id)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::lifecycle::{Reason, State};

    fn host() -> (Arc<VcpuTable<VcpuHandle>>, HotplugHost) {
        let t = Arc::new(VcpuTable::new(70));
        (t.clone(), HotplugHost::new(t, EventFd::new(libc::EFD_NONBLOCK).unwrap()))
    }

    fn removing(t: &VcpuTable<VcpuHandle>, id: u32, from: Phase) {
        t.set_state(id, State::new(from)).unwrap();
        crate::cpu::apply(t, id, Event::Remove).unwrap();
    }

    #[test]
    fn requested_and_guest_initiated_ejects_both_count() {
        let (t, h) = host();
        h.eject(3); // absent: ignored
        h.eject(0); // the boot vCPU: ignored
        t.set_state(0, State::new(Phase::Running)).unwrap();
        h.eject(0);
        assert_eq!(t.state(0).phase, Phase::Running);
        assert!(h.take_changed().is_empty());
        removing(&t, 5, Phase::Running);
        removing(&t, 65, Phase::Running);
        h.eject(5);
        h.eject(65);
        h.eject(5); // twice: the second does not apply
        assert_eq!(h.take_changed(), vec![5, 65]);
        assert_eq!(t.state(5), State::new(Phase::Ejected));
        // an eject the VMM did not ask for: the guest removed the CPU itself
        t.set_state(7, State::new(Phase::Running)).unwrap();
        h.eject(7);
        assert_eq!(t.state(7).phase, Phase::Ejected);
        assert_eq!(t.state(7).reason, Reason::EjectedByGuest);
        assert_eq!(h.take_changed(), vec![7]);
    }

    #[test]
    fn ost_acknowledges_adds_and_rolls_back_refused_ejects_to_where_they_were() {
        let (t, h) = host();
        t.set_state(1, State::new(Phase::Adding)).unwrap();
        h.ost(1, OST_EVENT_DEVICE_CHECK, OST_SUCCESS);
        assert_eq!(t.state(1).phase, Phase::Acknowledged);
        assert_eq!(t.ost(1), Some(OstReport { event: 1, status: 0 }));
        removing(&t, 2, Phase::Running);
        h.ost(2, OST_EVENT_EJECT_REQUEST, OST_EJECT_IN_PROGRESS);
        assert_eq!(t.state(2).phase, Phase::Removing);
        h.ost(2, OST_EVENT_EJECT_REQUEST, 0x80); // eject not supported
        assert_eq!(t.state(2), State { phase: Phase::Running, from: Phase::Absent, reason: Reason::EjectRefused });
        // a refused removal of a vCPU the guest never acknowledged: the guest
        // evidently has it
        removing(&t, 3, Phase::Adding);
        h.ost(3, OST_EVENT_EJECT_PROCESSING, 1);
        assert_eq!(t.state(3), State { phase: Phase::Acknowledged, from: Phase::Absent, reason: Reason::EjectRefused });
        // a failed hot-add: the guest does not have the CPU
        t.set_state(4, State::new(Phase::Adding)).unwrap();
        h.ost(4, OST_EVENT_DEVICE_CHECK, 1);
        assert_eq!(t.state(4), State { phase: Phase::Ejected, from: Phase::Absent, reason: Reason::AddFailed });
    }

    #[test]
    fn started_vcpus_are_running() {
        let (t, h) = host();
        t.set_state(1, State::new(Phase::Acknowledged)).unwrap();
        h.vcpu_started(1);
        assert_eq!(t.state(1).phase, Phase::Running);
        removing(&t, 2, Phase::Adding);
        h.vcpu_started(2);
        assert_eq!(t.state(2).from, Phase::Running);
    }

    #[test]
    fn present_word_is_what_the_guest_should_see() {
        let (t, h) = host();
        t.set_state(0, State::new(Phase::Running)).unwrap();
        removing(&t, 1, Phase::Running);
        t.set_state(2, State::new(Phase::Ejected)).unwrap();
        t.set_state(3, State::new(Phase::Parked)).unwrap();
        t.set_state(33, State::new(Phase::Adding)).unwrap();
        t.set_state(34, State::new(Phase::Stuck)).unwrap();
        assert_eq!(h.present_word(0), 0b11);
        assert_eq!(h.present_word(1), 0b10);
        assert_eq!(h.present_word(7), 0);
    }
}
