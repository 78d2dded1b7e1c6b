//! The hot-pluggable memory slots as the guest and the VMM both see them:
//! per slot, its range and its phase in atomics, so the controller's reads
//! and the guest's `_OST`/`_EJ0` (on vCPU threads, inside MMIO exits) never
//! lock; the main loop, woken by an eventfd, does the slow part.
//!
//! | from     | event                        | to       | why |
//! |----------|------------------------------|----------|-----|
//! | free     | `Add` (main loop)            | adding   | mapped, in KVM, published; the guest is told |
//! | adding   | `_OST(1, 0)`                 | plugged  | the guest added the memory |
//! | adding   | `_OST(1, failure)`           | failed   | the guest did not take it; the main loop unplugs it |
//! | adding   | `AddWithdrawn` (main loop)   | failed   | taken back before the guest looked; unplugged at once |
//! | adding, plugged, removing | `_EJ0`      | ejected  | the guest let the memory go; the main loop unplugs it |
//! | removing | `_OST(3, failure)`           | plugged  | the guest keeps it (unmovable pages) |
//! | removing | `EjectTimedOut` (main loop)  | plugged  | no `_EJ0` within the bound: the guest still has it |
//! | adding, plugged | `Remove` (main loop)  | removing | the guest is asked to eject it |
//! | failed, ejected | `Unplugged` (main loop) | free  | out of KVM and the memory map; unmapped with the last reader |

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use log::{info, warn};
use vmm_sys_util::eventfd::EventFd;

use devices::guest_warn;
use devices::mem_hotplug::{MemHotplugHost, SlotView};

use crate::cpu::hotplug_host::{OST_EVENT_BUS_CHECK, OST_EVENT_DEVICE_CHECK, OST_EVENT_EJECT_REQUEST, OST_SUCCESS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum SlotPhase {
    Free = 0,
    Adding = 1,
    Plugged = 2,
    Failed = 3,
    Removing = 4,
    Ejected = 5,
}

impl SlotPhase {
    fn from_u8(v: u8) -> SlotPhase {
        match v {
            1 => SlotPhase::Adding,
            2 => SlotPhase::Plugged,
            3 => SlotPhase::Failed,
            4 => SlotPhase::Removing,
            5 => SlotPhase::Ejected,
            _ => SlotPhase::Free,
        }
    }

    /// Whether the guest should see the slot's memory (`_STA` enabled).
    pub fn present(self) -> bool {
        matches!(self, SlotPhase::Adding | SlotPhase::Plugged | SlotPhase::Removing)
    }
}

/// What moves a slot; see the module's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotEvent {
    Add,
    AddAcked,
    AddFailed,
    AddWithdrawn,
    Remove,
    EjectRefused,
    EjectTimedOut,
    Ejected,
    Unplugged,
}

/// The one table of transitions.
pub fn step(from: SlotPhase, event: SlotEvent) -> Option<SlotPhase> {
    use SlotEvent as E;
    use SlotPhase as P;
    Some(match (from, event) {
        (P::Free, E::Add) => P::Adding,
        (P::Adding, E::AddAcked) => P::Plugged,
        (P::Adding, E::AddFailed | E::AddWithdrawn) => P::Failed,
        (P::Adding | P::Plugged | P::Removing, E::Ejected) => P::Ejected,
        (P::Removing, E::EjectRefused | E::EjectTimedOut) => P::Plugged,
        (P::Adding | P::Plugged, E::Remove) => P::Removing,
        (P::Failed | P::Ejected, E::Unplugged) => P::Free,
        _ => return None,
    })
}

/// Why a slot's last change did not go as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum SlotReason {
    None = 0,
    /// The guest's `_OST` refused the memory.
    AddFailed = 1,
    /// Taken back before the guest looked (a shrink right after a grow).
    AddCancelled = 2,
    /// The guest's `_OST` refused the eject (pages it could not move).
    EjectRefused = 3,
    /// No `_EJ0` within the bound: the guest still has the memory.
    EjectTimeout = 4,
    /// The guest ejected it without being asked.
    EjectedByGuest = 5,
}

impl SlotReason {
    fn from_u8(v: u8) -> SlotReason {
        match v {
            1 => SlotReason::AddFailed,
            2 => SlotReason::AddCancelled,
            3 => SlotReason::EjectRefused,
            4 => SlotReason::EjectTimeout,
            5 => SlotReason::EjectedByGuest,
            _ => SlotReason::None,
        }
    }
}

/// One slot in use, for `vm.info`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotInfo {
    pub slot: usize,
    pub base: u64,
    pub size: u64,
    pub state: SlotPhase,
    pub reason: SlotReason,
}

struct Slot {
    base: AtomicU64,
    len: AtomicU64,
    phase: AtomicU8,
    reason: AtomicU8,
}

pub struct Slots {
    slots: Box<[Slot]>,
    wake: EventFd,
}

impl Slots {
    /// `count` slots; `wake` is written whenever the guest moves one.
    pub fn new(count: usize, wake: EventFd) -> Slots {
        let slots = (0..count)
            .map(|_| Slot {
                base: AtomicU64::new(0),
                len: AtomicU64::new(0),
                phase: AtomicU8::new(0),
                reason: AtomicU8::new(0),
            })
            .collect();
        Slots { slots, wake }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn phase(&self, i: usize) -> SlotPhase {
        self.slots.get(i).map_or(SlotPhase::Free, |s| SlotPhase::from_u8(s.phase.load(Ordering::Acquire)))
    }

    /// (base, len) of slot `i`.
    pub fn range(&self, i: usize) -> (u64, u64) {
        self.slots.get(i).map_or((0, 0), |s| (s.base.load(Ordering::Acquire), s.len.load(Ordering::Acquire)))
    }

    /// Sets a free slot's range (before it is added).
    pub fn set_range(&self, i: usize, base: u64, len: u64) {
        if let Some(s) = self.slots.get(i) {
            s.base.store(base, Ordering::Release);
            s.len.store(len, Ordering::Release);
        }
    }

    pub fn set_reason(&self, i: usize, r: SlotReason) {
        if let Some(s) = self.slots.get(i) {
            s.reason.store(r as u8, Ordering::Release);
        }
    }

    pub fn reason(&self, i: usize) -> SlotReason {
        self.slots.get(i).map_or(SlotReason::None, |s| SlotReason::from_u8(s.reason.load(Ordering::Acquire)))
    }

    /// Bytes the guest has in slots: plugged, or plugged and asked back.
    pub fn plugged_bytes(&self) -> u64 {
        (0..self.slots.len())
            .filter(|&i| matches!(self.phase(i), SlotPhase::Plugged | SlotPhase::Removing))
            .map(|i| self.range(i).1)
            .sum()
    }

    /// Each slot in use, or with something to say about its last change.
    pub fn info(&self) -> Vec<SlotInfo> {
        (0..self.slots.len())
            .filter(|&i| self.phase(i) != SlotPhase::Free || self.reason(i) != SlotReason::None)
            .map(|i| {
                let (base, size) = self.range(i);
                SlotInfo { slot: i, base, size, state: self.phase(i), reason: self.reason(i) }
            })
            .collect()
    }

    /// Applies `event` to slot `i` atomically; the transition, if the table has one.
    pub fn apply(&self, i: usize, event: SlotEvent) -> Option<(SlotPhase, SlotPhase)> {
        let s = self.slots.get(i)?;
        let mut cur = s.phase.load(Ordering::Acquire);
        loop {
            let from = SlotPhase::from_u8(cur);
            let to = step(from, event)?;
            match s.phase.compare_exchange(cur, to as u8, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some((from, to)),
                Err(now) => cur = now,
            }
        }
    }

    /// A guest-caused event: applied, logged, the main loop woken.
    fn guest_event(&self, i: usize, event: SlotEvent) -> bool {
        match self.apply(i, event) {
            Some((from, to)) => {
                info!("memory slot {i}: {event:?}: {from:?} -> {to:?}");
                if let Err(e) = self.wake.write(1) {
                    warn!("memory slot {i}: cannot wake the main loop: {e}");
                }
                true
            }
            None => false,
        }
    }
}

impl MemHotplugHost for Slots {
    fn slot(&self, index: usize) -> Option<SlotView> {
        (index < self.slots.len()).then(|| {
            let (base, len) = self.range(index);
            SlotView { base, len, enabled: self.phase(index).present() }
        })
    }

    fn eject(&self, index: usize) {
        if !self.guest_event(index, SlotEvent::Ejected) {
            guest_warn!("memory slot {index}: guest called _EJ0 while it is {:?}; ignored", self.phase(index));
        }
    }

    fn ost(&self, index: usize, event: u32, status: u32) {
        let e = match (event, status) {
            (OST_EVENT_BUS_CHECK | OST_EVENT_DEVICE_CHECK, OST_SUCCESS) => SlotEvent::AddAcked,
            (OST_EVENT_BUS_CHECK | OST_EVENT_DEVICE_CHECK, _) => SlotEvent::AddFailed,
            (OST_EVENT_EJECT_REQUEST, s) if s != OST_SUCCESS && s != 0x84 => SlotEvent::EjectRefused,
            _ => return,
        };
        if !self.guest_event(index, e) {
            log::debug!("memory slot {index}: _OST({event:#x}, {status:#x}) in {:?}; nothing to do", self.phase(index));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_allows_only_what_it_lists() {
        use SlotEvent as E;
        use SlotPhase as P;
        let phases = [P::Free, P::Adding, P::Plugged, P::Failed, P::Removing, P::Ejected];
        let events = [
            E::Add,
            E::AddAcked,
            E::AddFailed,
            E::AddWithdrawn,
            E::Remove,
            E::EjectRefused,
            E::EjectTimedOut,
            E::Ejected,
            E::Unplugged,
        ];
        let allowed: usize = phases.iter().map(|&p| events.iter().filter(|&&e| step(p, e).is_some()).count()).sum();
        assert_eq!(allowed, 13, "each (phase, event) the table lists, once");
        assert_eq!(step(P::Free, E::AddAcked), None, "a late _OST for a free slot moves nothing");
        assert_eq!(step(P::Plugged, E::Add), None);
    }

    #[test]
    fn the_guest_moves_slots_through_ost_and_ej0() {
        let s = Slots::new(2, EventFd::new(libc::EFD_NONBLOCK).unwrap());
        s.set_range(0, 1 << 32, 128 << 20);
        assert!(!s.slot(0).unwrap().enabled);
        s.apply(0, SlotEvent::Add).unwrap();
        assert_eq!(s.slot(0).unwrap(), SlotView { base: 1 << 32, len: 128 << 20, enabled: true });
        s.ost(0, OST_EVENT_DEVICE_CHECK, OST_SUCCESS);
        assert_eq!(s.phase(0), SlotPhase::Plugged);
        s.ost(0, OST_EVENT_DEVICE_CHECK, 1);
        assert_eq!(s.phase(0), SlotPhase::Plugged, "a late failure does not unplug");
        s.apply(0, SlotEvent::Remove).unwrap();
        s.ost(0, OST_EVENT_EJECT_REQUEST, 0x81);
        assert_eq!(s.phase(0), SlotPhase::Plugged, "refused: the guest keeps it");
        s.eject(1);
        assert_eq!(s.phase(1), SlotPhase::Free, "an eject of a free slot is ignored");
        assert_eq!(s.wake.read().unwrap(), 2, "two guest moves woke the main loop");
        assert!(s.slot(2).is_none());
    }
}
