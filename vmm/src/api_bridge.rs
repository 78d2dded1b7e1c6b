//! The VMM's side of the API: requests that change the VM go to the main
//! loop and wait for its answer; `vm.info` and a resize's wait for the guest
//! read the vCPU table directly, lock-free, on the API worker thread.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::action::{VmInfoResponse, VmmPingResponse};
use api::types::ResizeRequest;
use api::{ActionError, ApiHandler, VmmAction, VmmData};
use arc_swap::ArcSwapOption;
use log::warn;
use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use crate::config::VmConfig;
use crate::config_wire;
use crate::cpu::lifecycle::{Phase, Reason};
use crate::cpu::manager::{Cause, ResizePlan, TargetStatus};
use crate::cpu::reconciler;
use crate::cpu::table::{OstReport, Reader};
use crate::cpu::vcpu::VcpuHandle;
use crate::vm::{Ended, VmView};

/// How long an API worker waits for the main loop to answer.
const MAIN_LOOP_TIMEOUT: Duration = Duration::from_secs(60);
const WAIT_POLL: Duration = Duration::from_millis(20);

/// Where the VM is in its life, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    NotCreated = 0,
    Created = 1,
    Running = 2,
    Paused = 3,
}

impl VmState {
    fn from_u8(v: u8) -> VmState {
        match v {
            1 => VmState::Created,
            2 => VmState::Running,
            3 => VmState::Paused,
            _ => VmState::NotCreated,
        }
    }
}

/// What the main loop publishes for API threads.
#[derive(Default)]
pub struct VmmShared {
    /// The running VM, if one is.
    pub view: ArcSwapOption<VmView>,
    /// The configured VM (booted or not), as a reboot would boot it.
    pub config: ArcSwapOption<VmConfig>,
    state: AtomicU8,
}

impl VmmShared {
    pub fn state(&self) -> VmState {
        VmState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, s: VmState) {
        self.state.store(s as u8, Ordering::Release);
    }
}

/// An action for the main loop, when it arrived, and where to answer.
pub struct MainLoopRequest {
    pub action: VmmAction,
    pub received: Instant,
    pub reply: SyncSender<MainLoopReply>,
}

pub enum MainLoopReply {
    Done(Result<VmmData, ActionError>),
    /// A resize of the running VM was accepted: what it set in motion, on
    /// which VM generation.
    Resized(ResizePlan, Arc<VmView>),
}

pub struct ApiBridge {
    tx: Mutex<Sender<MainLoopRequest>>,
    wake: EventFd,
    shared: Arc<VmmShared>,
}

/// One vCPU as `vm.info` and resize replies report it.
#[derive(Debug, Serialize)]
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
    /// This worker's registered reader of the current VM's table.
    static READER: RefCell<Option<Reader<VcpuHandle>>> = const { RefCell::new(None) };
}

/// Per-vCPU info for `ids` of `view`, read lock-free inside one section.
fn vcpu_info(view: &VmView, ids: &[u32]) -> Vec<VcpuInfo> {
    READER.with(|cell| {
        let mut cached = cell.borrow_mut();
        if !cached.as_ref().is_some_and(|r| Arc::ptr_eq(r.table(), &view.table)) {
            *cached = Some(Reader::new(&view.table, std::thread::current().name().unwrap_or("api")));
        }
        let reader = cached.as_mut().expect("just set");
        let guard = reader.read();
        let topology = crate::arch::topology::Topology::from_config(&view.config.cpus);
        ids.iter()
            .map(|&id| {
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

#[derive(Serialize)]
struct ResizeReply {
    desired_vcpus: u32,
    added: Vec<u32>,
    removing: Vec<u32>,
    /// vCPUs still being ejected that the count needs once they are free.
    waiting_for: Vec<u32>,
    /// The guest runs exactly the target: every added vCPU running, every
    /// removed one parked.
    complete: bool,
    /// Why a wait ended before the change completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    ended: Option<String>,
    target: TargetStatus,
    vcpus: Vec<VcpuInfo>,
}

/// Why a wait on target `seq` of `view` is over, if it is; `None` while it
/// should go on.
fn wait_outcome(view: &VmView, seq: u64) -> Option<Result<(), Option<String>>> {
    match view.ended() {
        Ended::Running => {}
        Ended::Rebooted => return Some(Err(Some("the VM rebooted before the change completed".into()))),
        Ended::ShutDown => return Some(Err(Some("the VM shut down before the change completed".into()))),
    }
    let st = view.target.status();
    if st.seq != seq {
        return Some(Err(Some(match &st.cause {
            Cause::Resize | Cause::Boot => format!("superseded by a later resize to {}", st.desired),
            Cause::Rollback { vcpu, reason } => {
                format!("vCPU {vcpu}: {}; the target is now {}", reason_text(*reason), st.desired)
            }
            Cause::VmmError { vcpu, error } => format!("vCPU {vcpu}: {error}; the target is now {}", st.desired),
        })));
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

impl ApiBridge {
    pub fn new(shared: Arc<VmmShared>) -> std::io::Result<(ApiBridge, Receiver<MainLoopRequest>)> {
        let (tx, rx) = std::sync::mpsc::channel();
        let bridge = ApiBridge { tx: Mutex::new(tx), wake: EventFd::new(libc::EFD_NONBLOCK)?, shared };
        Ok((bridge, rx))
    }

    pub fn wake_fd(&self) -> std::io::Result<EventFd> {
        self.wake.try_clone()
    }

    fn call(&self, action: VmmAction, received: Instant) -> Result<MainLoopReply, ActionError> {
        let (reply, rx) = sync_channel(1);
        let request = MainLoopRequest { action, received, reply };
        let sent = self.tx.lock().unwrap_or_else(|e| e.into_inner()).send(request);
        if sent.is_err() || self.wake.write(1).is_err() {
            return Err(ActionError::Unavailable("the VMM is shutting down".into()));
        }
        rx.recv_timeout(MAIN_LOOP_TIMEOUT)
            .map_err(|_| ActionError::Unavailable("the VMM did not answer in time".into()))
    }

    fn ping() -> VmmData {
        VmmData::Pong(VmmPingResponse {
            build_version: format!("lithe v{}", env!("CARGO_PKG_VERSION")),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: i64::from(std::process::id()),
            features: vec!["kvm".into(), "acpi".into(), "cpu_hotplug".into(), "event_monitor".into()],
        })
    }

    fn info(&self) -> Result<VmmData, ActionError> {
        let state = match self.shared.state() {
            VmState::NotCreated => return Err(ActionError::NotCreated),
            VmState::Created => api::action::VmState::Created,
            VmState::Running => api::action::VmState::Running,
            VmState::Paused => api::action::VmState::Paused,
        };
        let mut lithe = serde_json::Map::new();
        let view = self.shared.view.load_full();
        let config = match &view {
            Some(v) => {
                let target = v.target.status();
                let vcpus = vcpu_info(v, &(0..v.config.cpus.max_vcpus).collect::<Vec<_>>());
                lithe.insert("target".into(), serde_json::to_value(&*target).unwrap_or_default());
                lithe.insert("vcpus".into(), serde_json::to_value(vcpus).unwrap_or_default());
                // boot_vcpus follows every resize (Cloud Hypervisor's users,
                // Kata among them, read it as the current count), and is what
                // a reboot boots.
                let mut c = v.config.clone();
                c.cpus.boot_vcpus = target.desired;
                c
            }
            None => match self.shared.config.load_full() {
                Some(c) => (*c).clone(),
                None => return Err(ActionError::NotCreated),
            },
        };
        Ok(VmmData::VmInfo(Box::new(VmInfoResponse {
            memory_actual_size: config.memory.size,
            config: config_wire::to_wire(&config),
            state,
            lithe,
        })))
    }

    fn counters(&self) -> Result<VmmData, ActionError> {
        match self.shared.view.load_full() {
            Some(v) => {
                let mut counters = v.counters.as_ref().map(|c| c.collect()).unwrap_or_default();
                // Exits to userspace per vCPU thread, for the vCPUs that have one.
                let ids: Vec<u32> = (0..v.config.cpus.max_vcpus).collect();
                let exits = vcpu_info(&v, &ids)
                    .into_iter()
                    .filter_map(|i| i.exits.map(|n| (format!("vcpu{}_exits", i.id), n)))
                    .collect();
                counters.insert("vcpus".into(), exits);
                Ok(VmmData::Counters(counters))
            }
            None if self.shared.config.load().is_some() => Err(ActionError::NotBooted),
            None => Err(ActionError::NotCreated),
        }
    }

    fn resize(&self, req: ResizeRequest, received: Instant) -> Result<VmmData, ActionError> {
        let mut refused = Vec::new();
        if req.desired_ram.is_some() {
            refused.push("desired_ram (lithe has no memory hotplug; memory.hotplug_size is only a capacity)".into());
        }
        if req.desired_balloon.is_some() {
            refused.push("desired_balloon (lithe has no balloon)".into());
        }
        if !refused.is_empty() {
            return Err(ActionError::Unsupported(refused));
        }
        if req.desired_vcpus.is_none() && req.desired_vcpu_ids.is_none() {
            // Nothing asked: done, as Cloud Hypervisor answers it.
            return if self.shared.state() == VmState::NotCreated {
                Err(ActionError::NotCreated)
            } else {
                Ok(VmmData::Empty)
            };
        }
        let deadline = req.wait_ms.map(|ms| received + Duration::from_millis(ms));
        let (plan, view) = match self.call(VmmAction::Resize(req.clone()), received)? {
            MainLoopReply::Resized(plan, view) => (plan, view),
            MainLoopReply::Done(r) => return r,
        };
        let Some(deadline) = deadline else {
            // Cloud Hypervisor's answer: accepted, under way.
            return Ok(VmmData::Empty);
        };
        let outcome = loop {
            if let Some(o) = wait_outcome(&view, plan.seq) {
                break o;
            }
            if Instant::now() >= deadline {
                let ms = req.wait_ms.unwrap_or(0);
                break Err(Some(format!("the guest had not completed the change after {ms} ms")));
            }
            std::thread::sleep(WAIT_POLL);
        };
        let mut ids: Vec<u32> = plan.added.iter().chain(&plan.removing).chain(&plan.waiting_for).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        let report = ResizeReply {
            // What was asked (the target may have moved on since: `target`).
            desired_vcpus: req.desired_count().unwrap_or_default(),
            vcpus: vcpu_info(&view, &ids),
            added: plan.added,
            removing: plan.removing,
            waiting_for: plan.waiting_for,
            complete: outcome.is_ok(),
            ended: outcome.err().flatten(),
            target: (*view.target.status()).clone(),
        };
        Ok(VmmData::ResizeReport(serde_json::to_value(report).unwrap_or_default()))
    }
}

impl ApiHandler for ApiBridge {
    fn handle(&self, action: VmmAction) -> Result<VmmData, ActionError> {
        let received = Instant::now();
        match action {
            VmmAction::Ping => Ok(Self::ping()),
            VmmAction::VmInfo => self.info(),
            VmmAction::Counters => self.counters(),
            VmmAction::Resize(req) => self.resize(req, received),
            other => match self.call(other, received)? {
                MainLoopReply::Done(r) => r,
                MainLoopReply::Resized(..) => {
                    warn!("main loop answered a non-resize action with a resize plan");
                    Err(ActionError::Internal("the main loop gave a resize plan to another action".into()))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CpusConfig, MemoryConfig, PayloadConfig, SerialConfig, VmConfig};
    use crate::cpu::hotplug_host::HotplugHost;
    use crate::cpu::lifecycle::State;
    use crate::cpu::manager::Target;
    use crate::cpu::VcpuTable;

    fn view() -> VmView {
        let config = VmConfig {
            payload: PayloadConfig { kernel: "/k".into(), initramfs: None, cmdline: String::new() },
            cpus: CpusConfig::new(1, 2),
            memory: MemoryConfig::new(64 << 20),
            serial: SerialConfig::Off,
            platform: Default::default(),
        };
        let table = Arc::new(VcpuTable::new(2));
        table.set_state(0, State::new(Phase::Running)).unwrap();
        let host = Arc::new(HotplugHost::new(table.clone(), EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        VmView::new(config, table, host, Arc::new(Target::new(1)), None)
    }

    #[test]
    fn a_wait_completes_when_converged_and_ends_early_saying_why() {
        let v = view();
        assert_eq!(wait_outcome(&v, 0), Some(Ok(())), "one running vCPU, target one");
        let seq = v.target.set(2, Cause::Resize);
        v.table.set_state(1, State::new(Phase::Acknowledged)).unwrap();
        assert_eq!(wait_outcome(&v, seq), None, "acknowledged is not running: keep waiting");
        v.table.set_state(1, State::new(Phase::Running)).unwrap();
        assert_eq!(wait_outcome(&v, seq), Some(Ok(())));

        // a later resize, a rollback: the wait ends and says why
        let later = v.target.set(1, Cause::Resize);
        assert!(matches!(wait_outcome(&v, seq), Some(Err(Some(m))) if m.contains("superseded")));
        v.target.set(2, Cause::Rollback { vcpu: 1, reason: Reason::EjectRefused });
        assert!(matches!(wait_outcome(&v, later), Some(Err(Some(m))) if m.contains("refused")));

        // the VM rebooting or shutting down ends it at once
        let now = v.target.status().seq;
        v.set_ended(Ended::Rebooted);
        assert!(matches!(wait_outcome(&v, now), Some(Err(Some(m))) if m.contains("rebooted")));
        v.set_ended(Ended::ShutDown);
        assert!(matches!(wait_outcome(&v, now), Some(Err(Some(m))) if m.contains("shut down")));
    }
}
