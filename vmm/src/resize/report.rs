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
    /// removed one parked.
    pub complete: bool,
    /// Why the wait ended before the change completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    pub target: TargetStatus,
    pub vcpus: Vec<VcpuInfo>,
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

/// Waits until the guest completed `plan`'s target, the target moved on,
/// the VM ended, or `deadline`; then reports. Sleeps on the target's
/// progress signal between checks.
pub fn wait(view: &VmView, plan: ResizePlan, desired: u32, deadline: Instant) -> ResizeReport {
    let progress = view.target.progress();
    let mut seen = progress.epoch();
    let result = loop {
        if let Some(o) = outcome(view, plan.seq) {
            break o;
        }
        if Instant::now() >= deadline {
            break Err("the guest had not completed the change in the time the resize asked to wait".into());
        }
        seen = progress.wait_past(seen, deadline);
    };
    let mut ids: Vec<u32> = plan.added.iter().chain(&plan.removing).chain(&plan.waiting_for).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    ResizeReport {
        desired_vcpus: desired,
        vcpus: vcpu_info(view, ids),
        added: plan.added,
        removing: plan.removing,
        waiting_for: plan.waiting_for,
        complete: result.is_ok(),
        ended: result.err(),
        target: (*view.target.status()).clone(),
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
        let report = wait(&v, plan, 2, Instant::now() + Duration::from_secs(3600));
        guest.join().unwrap();
        assert!(report.complete, "{report:?}");
        assert_eq!(report.vcpus.iter().map(|c| (c.id, c.state)).collect::<Vec<_>>(), [(1, Phase::Running)]);
    }
}
