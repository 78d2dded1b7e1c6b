//! What a memory resize set in motion, and whether the guest has done it:
//! for a client that asked to wait (`?wait=true` / `wait_ms`). Read on the
//! API thread from the slots' atomics; the main loop bumps the target's
//! progress signal whenever the guest moves a slot, so nothing is polled.

use serde::Serialize;

use super::slots::{SlotInfo, SlotPhase, SlotReason, Slots};

/// The slots one memory resize offers and asks back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The resize's generation ([`Slots::next_generation`]).
    pub seq: u64,
    pub desired: u64,
    pub adds: Vec<usize>,
    pub removes: Vec<usize>,
}

impl MemoryPlan {
    /// A plan for a new resize (a later one supersedes it).
    pub fn new(slots: &Slots, desired: u64, adds: Vec<usize>, removes: Vec<usize>) -> MemoryPlan {
        MemoryPlan { seq: slots.next_generation(), desired, adds, removes }
    }
}

/// A memory resize that waited: what it asked and where each slot is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryReport {
    pub desired_ram: u64,
    pub adding: Vec<usize>,
    pub removing: Vec<usize>,
    /// The guest took every slot offered and gave back every one asked back.
    pub complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// The slots of this plan as they are now.
    pub slots: Vec<SlotInfo>,
}

fn why(i: usize, r: SlotReason) -> String {
    let what = match r {
        SlotReason::None => "changed",
        SlotReason::AddFailed => "the guest failed to add it",
        SlotReason::AddCancelled => "the offer was taken back before the guest saw it",
        SlotReason::EjectRefused => "the guest refused to eject it",
        SlotReason::EjectTimeout => "the guest did not eject it in time",
        SlotReason::EjectedByGuest => "the guest ejected it on its own",
        SlotReason::AddTimeout => "the guest did not look at the offer in time",
    };
    format!("memory slot {i}: {what}")
}

/// `Ok` done, `Err(why)` ended early, `None` while the guest is at it.
pub fn outcome(slots: &Slots, plan: &MemoryPlan) -> Option<Result<(), String>> {
    if slots.generation() != plan.seq {
        return Some(Err("superseded by a later memory resize".into()));
    }
    let mut done = true;
    for &i in &plan.adds {
        let s = slots.state(i);
        match (s.phase, s.reason) {
            (SlotPhase::Plugged, SlotReason::None) => {}
            (SlotPhase::Adding | SlotPhase::Failed, SlotReason::None) => done = false,
            (_, r) => return Some(Err(why(i, r))),
        }
    }
    for &i in &plan.removes {
        let s = slots.state(i);
        match (s.phase, s.reason) {
            (SlotPhase::Free, SlotReason::None | SlotReason::AddCancelled) => {}
            (SlotPhase::Removing | SlotPhase::Ejected | SlotPhase::Failed, _) => done = false,
            (_, r) => return Some(Err(why(i, r))),
        }
    }
    done.then_some(Ok(()))
}

/// The report of `plan` once its wait is over with `result`.
pub fn report(slots: &Slots, plan: &MemoryPlan, result: &Result<(), String>) -> MemoryReport {
    MemoryReport {
        desired_ram: plan.desired,
        adding: plan.adds.clone(),
        removing: plan.removes.clone(),
        complete: result.is_ok(),
        ended: result.clone().err(),
        slots: plan.adds.iter().chain(&plan.removes).map(|&i| slots.slot_info(i)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::cpu::hotplug_host::{OST_EVENT_DEVICE_CHECK, OST_EVENT_EJECT_REQUEST, OST_SUCCESS};
    use crate::memory_hotplug::slots::SlotEvent;
    use devices::mem_hotplug::MemHotplugHost;

    fn slots() -> Slots {
        let s = Slots::new(2, EventFd::new(libc::EFD_NONBLOCK).unwrap());
        s.set_range(0, 1 << 32, 128 << 20);
        s
    }

    #[test]
    fn a_grow_completes_when_the_guest_acknowledges_and_ends_when_it_refuses() {
        let s = slots();
        s.apply(0, SlotEvent::Add).unwrap();
        let plan = MemoryPlan::new(&s, 1 << 30, vec![0], vec![]);
        assert_eq!(outcome(&s, &plan), None, "offered, not yet taken");
        s.ost(0, OST_EVENT_DEVICE_CHECK, OST_SUCCESS);
        assert_eq!(outcome(&s, &plan), Some(Ok(())));
        let r = report(&s, &plan, &Ok(()));
        assert!(r.complete && r.slots.len() == 1 && r.slots[0].state == SlotPhase::Plugged);

        let s = slots();
        s.apply(0, SlotEvent::Add).unwrap();
        let plan = MemoryPlan::new(&s, 1 << 30, vec![0], vec![]);
        s.ost(0, OST_EVENT_DEVICE_CHECK, 1);
        let refused = Some(Err("memory slot 0: the guest failed to add it".into()));
        assert_eq!(outcome(&s, &plan), refused, "the guest's answer decides it");
        s.apply(0, SlotEvent::Unplugged).unwrap();
        assert_eq!(outcome(&s, &plan), refused, "and the unplug keeps the reason");
    }

    #[test]
    fn a_shrink_completes_when_unplugged_and_ends_when_refused_or_superseded() {
        let s = slots();
        s.apply(0, SlotEvent::Add).unwrap();
        s.ost(0, OST_EVENT_DEVICE_CHECK, OST_SUCCESS);
        s.apply(0, SlotEvent::Remove).unwrap();
        let plan = MemoryPlan::new(&s, 256 << 20, vec![], vec![0]);
        assert_eq!(outcome(&s, &plan), None);
        s.ost(0, OST_EVENT_EJECT_REQUEST, 0x80);
        assert_eq!(outcome(&s, &plan), Some(Err("memory slot 0: the guest refused to eject it".into())));
        s.apply(0, SlotEvent::Remove).unwrap();
        let plan = MemoryPlan::new(&s, 256 << 20, vec![], vec![0]);
        s.eject(0);
        assert_eq!(outcome(&s, &plan), None, "ejected: the main loop has not unplugged it yet");
        s.apply(0, SlotEvent::Unplugged).unwrap();
        assert_eq!(outcome(&s, &plan), Some(Ok(())));
        let later = MemoryPlan::new(&s, 1 << 30, vec![], vec![]);
        assert_eq!(outcome(&s, &plan), Some(Err("superseded by a later memory resize".into())));
        assert_eq!(outcome(&s, &later), Some(Ok(())), "an empty plan is done");
    }
}
