//! The hot-pluggable memory slots as the guest and the VMM both see them:
//! per slot, its range and its state word in atomics, so the controller's
//! reads and the guest's `_OST`/`_EJ0` (on vCPU threads, inside MMIO exits)
//! never lock; the main loop, woken by an eventfd, does the slow part. A
//! slot moves only through the one table below, applied by the same atomic
//! machinery as the vCPUs' lifecycle ([`vcpu_table::machine`]); phase,
//! the phase a removal rolls back to, and the reason share one word.
//!
//! | from                 | event                       | to                          | why |
//! |----------------------|-----------------------------|-----------------------------|-----|
//! | free                 | `Add` (main loop)           | adding                      | mapped, in KVM, published; the guest is told |
//! | adding               | `_OST(1, 0)`                | plugged                     | the guest added the memory |
//! | removing(adding)     | `_OST(1, 0)`                | removing(plugged)           | it did, while asked to give it back |
//! | adding, removing(adding) | `_OST(1, failure)`      | failed, `add_failed`        | the guest did not take it; the main loop unplugs it |
//! | adding               | `AddWithdrawn` (main loop)  | failed, `add_cancelled`     | taken back before the guest looked |
//! | adding               | `AddTimedOut` (main loop)   | failed, `add_timeout`       | the guest never looked within the bound: taken back |
//! | adding, plugged      | `Remove` (main loop)        | removing(from)              | the guest is asked to eject it |
//! | removing             | `_EJ0`                      | ejected                     | the guest let the memory go; the main loop unplugs it |
//! | adding, plugged      | `_EJ0`                      | ejected, `ejected_by_guest` | it let go unasked |
//! | removing(from)       | `_OST(3, failure)`          | plugged, `eject_refused`    | the guest keeps it (unmovable pages); refusing shows it has it |
//! | removing(from)       | `EjectTimedOut` (main loop) | from, `eject_timeout`       | no `_EJ0` within the bound: nothing changed in the guest |
//! | failed, ejected      | `Unplugged` (main loop)     | free (reason kept)          | out of KVM and the memory map; unmapped with the last reader |
//!
//! A slot the guest never acknowledged stays "adding" after an unanswered
//! eject: lithe cannot know whether the guest uses it, so it is neither
//! counted in `memory.size` nor unmapped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use log::{info, warn};
use vcpu_table::machine::{self, Cells, Machine, StateCell, Transition};
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
    pub const ALL: [SlotPhase; 6] = [
        SlotPhase::Free,
        SlotPhase::Adding,
        SlotPhase::Plugged,
        SlotPhase::Failed,
        SlotPhase::Removing,
        SlotPhase::Ejected,
    ];

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
    AddTimedOut,
    Remove,
    EjectRefused,
    EjectTimedOut,
    Ejected,
    Unplugged,
}

impl SlotEvent {
    pub const ALL: [SlotEvent; 10] = [
        SlotEvent::Add,
        SlotEvent::AddAcked,
        SlotEvent::AddFailed,
        SlotEvent::AddWithdrawn,
        SlotEvent::AddTimedOut,
        SlotEvent::Remove,
        SlotEvent::EjectRefused,
        SlotEvent::EjectTimedOut,
        SlotEvent::Ejected,
        SlotEvent::Unplugged,
    ];
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
    /// The guest never looked at the offer within the bound (its GED
    /// handling is gone): taken back.
    AddTimeout = 6,
}

impl SlotReason {
    pub const ALL: [SlotReason; 7] = [
        SlotReason::None,
        SlotReason::AddFailed,
        SlotReason::AddCancelled,
        SlotReason::EjectRefused,
        SlotReason::EjectTimeout,
        SlotReason::EjectedByGuest,
        SlotReason::AddTimeout,
    ];

    fn from_u8(v: u8) -> SlotReason {
        match v {
            1 => SlotReason::AddFailed,
            2 => SlotReason::AddCancelled,
            3 => SlotReason::EjectRefused,
            4 => SlotReason::EjectTimeout,
            5 => SlotReason::EjectedByGuest,
            6 => SlotReason::AddTimeout,
            _ => SlotReason::None,
        }
    }
}

/// One slot's whole state: phase, the phase a removal rolls back to (only
/// while removing), and the reason of the last rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotState {
    pub phase: SlotPhase,
    pub from: SlotPhase,
    pub reason: SlotReason,
}

impl SlotState {
    pub const FREE: SlotState = SlotState::new(SlotPhase::Free, SlotReason::None);

    const fn new(phase: SlotPhase, reason: SlotReason) -> SlotState {
        SlotState { phase, from: SlotPhase::Free, reason }
    }

    /// The guest has the memory: it acknowledged it and has not given it back.
    pub fn guest_has(self) -> bool {
        self.phase == SlotPhase::Plugged || (self.phase == SlotPhase::Removing && self.from == SlotPhase::Plugged)
    }
}

/// The memory slots' lifecycle, for [`machine::apply`].
pub struct SlotMachine;

impl Machine for SlotMachine {
    type State = SlotState;
    type Event = SlotEvent;
    const NOUN: &'static str = "memory slot";

    fn encode(s: SlotState) -> u32 {
        u32::from(s.phase as u8) | u32::from(s.from as u8) << 8 | u32::from(s.reason as u8) << 16
    }

    fn decode(w: u32) -> SlotState {
        SlotState {
            phase: SlotPhase::from_u8(w as u8),
            from: SlotPhase::from_u8((w >> 8) as u8),
            reason: SlotReason::from_u8((w >> 16) as u8),
        }
    }

    /// The one table of transitions (the module's).
    fn step(s: SlotState, event: SlotEvent) -> Option<SlotState> {
        use SlotEvent as E;
        use SlotPhase as P;
        use SlotReason as R;
        let removing = |from| SlotState { phase: P::Removing, from, reason: R::None };
        Some(match (s.phase, event) {
            (P::Free, E::Add) => SlotState::new(P::Adding, R::None),
            (P::Adding, E::AddAcked) => SlotState::new(P::Plugged, R::None),
            (P::Removing, E::AddAcked) if s.from == P::Adding => removing(P::Plugged),
            (P::Adding, E::AddFailed) => SlotState::new(P::Failed, R::AddFailed),
            (P::Removing, E::AddFailed) if s.from == P::Adding => SlotState::new(P::Failed, R::AddFailed),
            (P::Adding, E::AddWithdrawn) => SlotState::new(P::Failed, R::AddCancelled),
            (P::Adding, E::AddTimedOut) => SlotState::new(P::Failed, R::AddTimeout),
            (P::Adding | P::Plugged, E::Remove) => removing(s.phase),
            (P::Removing, E::Ejected) => SlotState::new(P::Ejected, R::None),
            (P::Adding | P::Plugged, E::Ejected) => SlotState::new(P::Ejected, R::EjectedByGuest),
            (P::Removing, E::EjectRefused) => SlotState::new(P::Plugged, R::EjectRefused),
            (P::Removing, E::EjectTimedOut) => SlotState::new(s.from, R::EjectTimeout),
            (P::Failed | P::Ejected, E::Unplugged) => SlotState::new(P::Free, s.reason),
            _ => return None,
        })
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

struct Range {
    base: AtomicU64,
    len: AtomicU64,
}

pub struct Slots {
    states: Cells,
    ranges: Box<[Range]>,
    /// Per slot: when the guest last ejected it (ns since `epoch`, 0: none),
    /// for the `_EJ0` → unplugged latency.
    ejected_at: Box<[AtomicU64]>,
    epoch: Instant,
    /// Bumped by every memory resize: a wait on an older one is superseded.
    generation: AtomicU64,
    wake: EventFd,
}

impl Slots {
    /// `count` slots; `wake` is written whenever the guest moves one.
    pub fn new(count: usize, wake: EventFd) -> Slots {
        let ranges = (0..count).map(|_| Range { base: AtomicU64::new(0), len: AtomicU64::new(0) }).collect();
        let ejected_at = (0..count).map(|_| AtomicU64::new(0)).collect();
        Slots {
            states: Cells::new(count),
            ranges,
            ejected_at,
            epoch: Instant::now(),
            generation: AtomicU64::new(0),
            wake,
        }
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn state(&self, i: usize) -> SlotState {
        self.states.load(i as u32).map_or(SlotState::FREE, SlotMachine::decode)
    }

    pub fn phase(&self, i: usize) -> SlotPhase {
        self.state(i).phase
    }

    /// (base, len) of slot `i`.
    pub fn range(&self, i: usize) -> (u64, u64) {
        self.ranges.get(i).map_or((0, 0), |s| (s.base.load(Ordering::Acquire), s.len.load(Ordering::Acquire)))
    }

    /// Sets a free slot's range (before it is added).
    pub fn set_range(&self, i: usize, base: u64, len: u64) {
        if let Some(s) = self.ranges.get(i) {
            s.base.store(base, Ordering::Release);
            s.len.store(len, Ordering::Release);
        }
    }

    /// A new memory resize: its generation.
    pub fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn reason(&self, i: usize) -> SlotReason {
        self.state(i).reason
    }

    /// When the guest last ejected slot `i`, if it did.
    pub fn ejected_at(&self, i: usize) -> Option<Instant> {
        let ns = self.ejected_at.get(i)?.load(Ordering::Acquire);
        (ns != 0).then(|| self.epoch + std::time::Duration::from_nanos(ns))
    }

    /// Bytes the guest has in slots: plugged, or plugged and asked back.
    pub fn plugged_bytes(&self) -> u64 {
        (0..self.len()).filter(|&i| self.state(i).guest_has()).map(|i| self.range(i).1).sum()
    }

    /// Each slot in use, or with something to say about its last change.
    pub fn info(&self) -> Vec<SlotInfo> {
        (0..self.len())
            .filter(|&i| self.phase(i) != SlotPhase::Free || self.reason(i) != SlotReason::None)
            .map(|i| self.slot_info(i))
            .collect()
    }

    /// Slot `i` as `vm.info` shows it.
    pub fn slot_info(&self, i: usize) -> SlotInfo {
        let (base, size) = self.range(i);
        let s = self.state(i);
        SlotInfo { slot: i, base, size, state: s.phase, reason: s.reason }
    }

    /// Applies `event` to slot `i` atomically; the transition, if the table has one.
    pub fn apply(&self, i: usize, event: SlotEvent) -> Option<Transition<SlotState>> {
        machine::apply::<SlotMachine>(&self.states, u32::try_from(i).ok()?, event)
    }

    /// A guest-caused event: applied, logged, the main loop woken.
    fn guest_event(&self, i: usize, event: SlotEvent) -> bool {
        match self.apply(i, event) {
            Some(Transition { from, to }) => {
                if event == SlotEvent::Ejected {
                    let ns = self.epoch.elapsed().as_nanos().max(1) as u64;
                    self.ejected_at[i].store(ns, Ordering::Release);
                }
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
        (index < self.len()).then(|| {
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

    fn step(s: SlotState, e: SlotEvent) -> Option<SlotState> {
        SlotMachine::step(s, e)
    }

    fn st(phase: SlotPhase) -> SlotState {
        SlotState::new(phase, SlotReason::None)
    }

    /// Well-formed states: only removing carries a "from", adding or plugged.
    fn reachable() -> impl Iterator<Item = SlotState> {
        SlotPhase::ALL
            .into_iter()
            .flat_map(|phase| {
                SlotPhase::ALL.into_iter().flat_map(move |from| {
                    SlotReason::ALL.into_iter().map(move |reason| SlotState { phase, from, reason })
                })
            })
            .filter(|s| {
                if s.phase == SlotPhase::Removing {
                    matches!(s.from, SlotPhase::Adding | SlotPhase::Plugged)
                } else {
                    s.from == SlotPhase::Free
                }
            })
    }

    #[test]
    fn encoding_round_trips() {
        for s in reachable() {
            assert_eq!(SlotMachine::decode(SlotMachine::encode(s)), s);
        }
        assert_eq!(SlotMachine::decode(0), SlotState::FREE);
    }

    #[test]
    fn invariants_hold_for_every_state_and_event() {
        for s in reachable() {
            for e in SlotEvent::ALL {
                let Some(t) = step(s, e) else { continue };
                assert!(reachable().any(|r| r == t), "{s:?} --{e:?}--> {t:?} is not well-formed");
                // the guest's memory leaves it only through an eject
                if s.guest_has() && !t.guest_has() {
                    assert!(
                        t.phase == SlotPhase::Ejected
                            || (t.phase == SlotPhase::Removing && t.from == SlotPhase::Plugged),
                        "{s:?} --{e:?}--> {t:?}"
                    );
                }
                // memory the guest never acknowledged never counts, unless it says it has it
                if !s.guest_has() && t.guest_has() {
                    assert!(matches!(e, SlotEvent::AddAcked | SlotEvent::EjectRefused), "{s:?} --{e:?}--> {t:?}");
                }
                // only unplugged slots are free again; only free slots are added
                if t.phase == SlotPhase::Free {
                    assert!(matches!(s.phase, SlotPhase::Failed | SlotPhase::Ejected), "{s:?} {e:?}");
                }
                if e == SlotEvent::Add {
                    assert_eq!(s.phase, SlotPhase::Free);
                }
            }
        }
    }

    #[test]
    fn rollbacks_return_to_the_phase_before_the_removal() {
        for from in [SlotPhase::Adding, SlotPhase::Plugged] {
            let r = step(st(from), SlotEvent::Remove).unwrap();
            assert_eq!(step(r, SlotEvent::EjectTimedOut).unwrap(), SlotState::new(from, SlotReason::EjectTimeout));
            assert_eq!(
                step(r, SlotEvent::EjectRefused).unwrap(),
                SlotState::new(SlotPhase::Plugged, SlotReason::EjectRefused),
                "a refusal shows the guest has it"
            );
        }
        let r = step(st(SlotPhase::Adding), SlotEvent::Remove).unwrap();
        let acked = step(r, SlotEvent::AddAcked).unwrap();
        assert!(acked.guest_has(), "a late acknowledgement while asked back: counted until ejected");
        assert_eq!(step(acked, SlotEvent::EjectTimedOut).unwrap().phase, SlotPhase::Plugged);
        assert_eq!(step(st(SlotPhase::Free), SlotEvent::AddAcked), None, "a late _OST for a free slot moves nothing");
        assert_eq!(step(st(SlotPhase::Plugged), SlotEvent::Add), None);
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
        assert_eq!(s.state(0), SlotState::new(SlotPhase::Plugged, SlotReason::EjectRefused), "refused: kept");
        s.eject(1);
        assert_eq!(s.phase(1), SlotPhase::Free, "an eject of a free slot is ignored");
        assert!(s.ejected_at(0).is_none());
        s.eject(0);
        assert_eq!(s.state(0), SlotState::new(SlotPhase::Ejected, SlotReason::EjectedByGuest));
        assert!(s.ejected_at(0).is_some());
        assert_eq!(s.wake.read().unwrap(), 3, "three guest moves woke the main loop");
        assert!(s.slot(2).is_none());
        assert!(s.apply(7, SlotEvent::Add).is_none(), "no such slot");
    }
}
