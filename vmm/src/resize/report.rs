//! What a resize and `vm.info` report: each vCPU as the table has it, read
//! lock-free on the API thread, and the wait for the guest to complete a
//! change, woken by the target's [`Progress`](super::Progress), never polled.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::{Cause, TargetStatus};
use crate::cpu::lifecycle::{Phase, Reason};
use crate::cpu::manager::ResizePlan;
use crate::cpu::reconciler;
use crate::cpu::table::{OstReport, Reader};
use crate::cpu::vcpu::VcpuHandle;
use crate::memory_hotplug::{
    self,
    wait::{MemoryPlan, MemoryReport},
};
use crate::vm::{Ended, VmView};

/// One vCPU as `vm.info` and resize reports show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VcpuInfo {
    pub id: u32,
    /// Where the topology puts it (arch/topology.rs); also its KVM vCPU id.
    pub apic_id: u32,
    /// In the vCPU table: it has a thread.
    pub present: bool,
    pub state: Phase,
    /// For `removing`: the state a rollback returns to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Phase>,
    /// Why the vCPU is not where it was asked to be (its last rollback).
    pub reason: Reason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ost: Option<OstReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exits: Option<u64>,
}

thread_local! {
    /// This thread's registered reader of the current VM's table.
    static READER: RefCell<Option<Reader<VcpuHandle>>> = const { RefCell::new(None) };
}

/// Per-vCPU info for `ids` of `view`, read lock-free inside one section.
pub fn vcpu_info(view: &VmView, ids: impl IntoIterator<Item = u32>) -> Vec<VcpuInfo> {
    READER.with(|cell| {
        let mut cached = cell.borrow_mut();
        if !cached.as_ref().is_some_and(|r| Arc::ptr_eq(r.table(), &view.table)) {
            *cached = Some(Reader::new(&view.table, std::thread::current().name().unwrap_or("api")));
        }
        let reader = cached.as_mut().expect("just set");
        let guard = reader.read();
        let topology = view.config.cpus.layout();
        ids.into_iter()
            .map(|id| {
                let handle = guard.get(id);
                let s = view.table.state(id);
                VcpuInfo {
                    id,
                    apic_id: topology.apic_id(id),
                    present: handle.is_some(),
                    state: s.phase,
                    from: (s.phase == Phase::Removing).then_some(s.from),
                    reason: s.reason,
                    ost: view.table.ost(id),
                    exits: handle.map(|h| h.control.exits.load(Ordering::Relaxed)),
                }
            })
            .collect()
    })
}

/// A resize that waited: what it set in motion and where the guest is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResizeReport {
    /// What was asked (the target may have moved on since: `target`).
    pub desired_vcpus: u32,
    pub added: Vec<u32>,
    pub removing: Vec<u32>,
    /// vCPUs still being ejected that the count needs once they are free.
    pub waiting_for: Vec<u32>,
    /// The guest runs exactly the target: every added vCPU running, every
    /// removed one parked (and, with `memory`, every slot taken or given back).
    pub complete: bool,
    /// Why the wait ended before the change completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    pub target: TargetStatus,
    pub vcpus: Vec<VcpuInfo>,
    /// The memory change, when `desired_ram` was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryReport>,
}

/// Why a wait on target `seq` of `view` is over, if it is: `Ok` converged,
/// `Err(why)` ended early; `None` while it should go on.
pub fn outcome(view: &VmView, seq: u64) -> Option<Result<(), String>> {
    match view.ended() {
        Ended::Running => {}
        Ended::Rebooted => return Some(Err("the VM rebooted before the change completed".into())),
        Ended::ShutDown => return Some(Err("the VM shut down before the change completed".into())),
    }
    let st = view.target.status();
    if st.seq != seq {
        return Some(Err(match &st.cause {
            Cause::Resize | Cause::Boot => format!("superseded by a later resize to {}", st.desired),
            Cause::Rollback { vcpu, reason } => {
                format!("vCPU {vcpu}: {}; the target is now {}", reason_text(*reason), st.desired)
            }
            Cause::VmmError { vcpu, error } => format!("vCPU {vcpu}: {error}; the target is now {}", st.desired),
        }));
    }
    let states = view.table.states();
    match &st.vcpu_ids {
        Some(ids) => reconciler::converged_ids(ids, &states),
        None => reconciler::converged(st.desired, &states),
    }
    .then_some(Ok(()))
}

fn reason_text(r: Reason) -> &'static str {
    match r {
        Reason::None => "no reason",
        Reason::EjectRefused => "the guest refused to eject it",
        Reason::EjectTimeout => "the guest did not eject it in time",
        Reason::AddFailed => "the guest failed to add it",
        Reason::AddTimeout => "the guest did not take or answer the hot-add in time",
        Reason::AddCancelled => "the hot-add was taken back before the guest saw it",
        Reason::EjectedByGuest => "the guest ejected it on its own",
    }
}

/// The memory part of a wait: the VM's end, then the slots.
fn memory_outcome(view: &VmView, plan: &MemoryPlan) -> Option<Result<(), String>> {
    match view.ended() {
        Ended::Running => {}
        Ended::Rebooted => return Some(Err("the VM rebooted before the change completed".into())),
        Ended::ShutDown => return Some(Err("the VM shut down before the change completed".into())),
    }
    match &view.memory {
        Some(slots) => memory_hotplug::wait::outcome(slots, plan),
        None => Some(Err("the VM has no memory hotplug".into())),
    }
}

/// Waits until the guest completed `plan`'s target (and `memory`'s slots),
/// either moved on, the VM ended, or `deadline`; then reports. Sleeps on
/// the target's progress signal between checks. `desired`: the vCPUs asked
/// for (`None`: a memory-only resize; the report shows the current target).
pub fn wait(
    view: &VmView,
    plan: Option<ResizePlan>,
    memory: Option<MemoryPlan>,
    desired: Option<u32>,
    deadline: Instant,
) -> ResizeReport {
    let progress = view.target.progress();
    let mut seen = progress.epoch();
    let done = || Some(Ok(()));
    let result = loop {
        let cpus = plan.as_ref().map_or_else(done, |p| outcome(view, p.seq));
        let mem = memory.as_ref().map_or_else(done, |m| memory_outcome(view, m));
        match (cpus, mem) {
            (Some(Err(e)), _) | (_, Some(Err(e))) => break Err(e),
            (Some(Ok(())), Some(Ok(()))) => break Ok(()),
            _ => {}
        }
        if Instant::now() >= deadline {
            break Err("the guest had not completed the change in the time the resize asked to wait".into());
        }
        seen = progress.wait_past(seen, deadline);
    };
    let plan = plan.unwrap_or_default();
    let mut ids: Vec<u32> = plan.added.iter().chain(&plan.removing).chain(&plan.waiting_for).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    let target = (*view.target.status()).clone();
    let memory = memory.map(|m| {
        let r = memory_outcome(view, &m).unwrap_or_else(|| result.clone());
        match view.memory.as_deref() {
            Some(slots) => memory_hotplug::wait::report(slots, &m, &r),
            None => MemoryReport {
                desired_ram: m.desired,
                adding: m.adds,
                removing: m.removes,
                complete: false,
                ended: r.err(),
                slots: Vec::new(),
            },
        }
    });
    ResizeReport {
        desired_vcpus: desired.unwrap_or(target.desired),
        vcpus: vcpu_info(view, ids),
        added: plan.added,
        removing: plan.removing,
        waiting_for: plan.waiting_for,
        complete: result.is_ok(),
        ended: result.err(),
        target,
        memory,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::config::{CpusConfig, MemoryConfig, PayloadConfig, SerialConfig, VmConfig};
    use crate::cpu::hotplug_host::HotplugHost;
    use crate::cpu::lifecycle::State;
    use crate::cpu::VcpuTable;
    use crate::resize::Target;

    fn view() -> VmView {
        let config = VmConfig {
            payload: PayloadConfig { kernel: "/k".into(), initramfs: None, cmdline: String::new() },
            cpus: CpusConfig::new(1, 2),
            memory: MemoryConfig::new(64 << 20),
            serial: SerialConfig::Off,
            platform: Default::default(),
            devices: Default::default(),
        };
        let table = Arc::new(VcpuTable::new(2));
        table.set_state(0, State::new(Phase::Running)).unwrap();
        let host = Arc::new(HotplugHost::new(table.clone(), EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        VmView::new(config, table, host, Arc::new(Target::new(1)), None)
    }

    #[test]
    fn a_wait_completes_when_converged_and_ends_early_saying_why() {
        let v = view();
        assert_eq!(outcome(&v, 0), Some(Ok(())), "one running vCPU, target one");
        let seq = v.target.set(2, Cause::Resize);
        v.table.set_state(1, State::new(Phase::Acknowledged)).unwrap();
        assert_eq!(outcome(&v, seq), None, "acknowledged is not running: keep waiting");
        v.table.set_state(1, State::new(Phase::Running)).unwrap();
        assert_eq!(outcome(&v, seq), Some(Ok(())));

        // a later resize, a rollback: the wait ends and says why
        let later = v.target.set(1, Cause::Resize);
        assert!(matches!(outcome(&v, seq), Some(Err(m)) if m.contains("superseded")));
        v.target.set(2, Cause::Rollback { vcpu: 1, reason: Reason::EjectRefused });
        assert!(matches!(outcome(&v, later), Some(Err(m)) if m.contains("refused")));

        // the VM rebooting or shutting down ends it at once
        let now = v.target.status().seq;
        v.set_ended(Ended::Rebooted);
        assert!(matches!(outcome(&v, now), Some(Err(m)) if m.contains("rebooted")));
        v.set_ended(Ended::ShutDown);
        assert!(matches!(outcome(&v, now), Some(Err(m)) if m.contains("shut down")));
    }

    #[test]
    fn a_wait_wakes_on_progress_not_on_a_timer() {
        let v = Arc::new(view());
        let seq = v.target.set(2, Cause::Resize);
        v.table.set_state(1, State::new(Phase::Adding)).unwrap();
        let plan = ResizePlan { seq, added: vec![1], ..Default::default() };
        let guest = {
            let v = v.clone();
            std::thread::spawn(move || {
                // Until the waiter sleeps on this epoch, a bump could come too
                // early to be the one that wakes it; the epoch moving proves nothing
                // either way, so the state change and the bump are what matter.
                v.table.set_state(1, State::new(Phase::Running)).unwrap();
                v.target.progress().bump();
            })
        };
        // An hour's deadline: only the bump can end this wait in a test run.
        let report = wait(&v, Some(plan), None, Some(2), Instant::now() + Duration::from_secs(3600));
        guest.join().unwrap();
        assert!(report.complete, "{report:?}");
        assert_eq!(report.vcpus.iter().map(|c| (c.id, c.state)).collect::<Vec<_>>(), [(1, Phase::Running)]);
    }

    /// A memory-only resize that waits: woken by the progress signal when the
    /// guest acknowledges the slot; the report carries the slot, and the
    /// vCPU part shows the current target.
    #[test]
    fn a_memory_wait_completes_when_the_guest_takes_the_slot() {
        use crate::cpu::hotplug_host::{OST_EVENT_DEVICE_CHECK, OST_SUCCESS};
        use crate::memory_hotplug::slots::{SlotEvent, SlotPhase, Slots};
        use devices::mem_hotplug::MemHotplugHost;
        let mut v = view();
        let slots = Arc::new(Slots::new(1, EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        slots.set_range(0, 1 << 32, 128 << 20);
        slots.apply(0, SlotEvent::Add).unwrap();
        v.memory = Some(slots.clone());
        let v = Arc::new(v);
        let plan = MemoryPlan::new(&slots, 192 << 20, vec![0], vec![]);
        let guest = {
            let v = v.clone();
            std::thread::spawn(move || {
                slots.ost(0, OST_EVENT_DEVICE_CHECK, OST_SUCCESS);
                v.target.progress().bump();
            })
        };
        let report = wait(&v, None, Some(plan), None, Instant::now() + Duration::from_secs(3600));
        guest.join().unwrap();
        assert!(report.complete, "{report:?}");
        assert_eq!(report.desired_vcpus, 1, "no vCPU change: the current target");
        let m = report.memory.expect("a memory report");
        assert!(m.complete && m.slots[0].state == SlotPhase::Plugged, "{m:?}");
        // A VM that ends meanwhile ends the wait, saying so.
        let plan = MemoryPlan::new(v.memory.as_ref().unwrap(), 64 << 20, vec![], vec![0]);
        v.set_ended(Ended::ShutDown);
        let report = wait(&v, None, Some(plan), None, Instant::now() + Duration::from_secs(3600));
        assert_eq!(report.ended.as_deref(), Some("the VM shut down before the change completed"));
    }
}
