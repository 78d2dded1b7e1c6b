//! The VMM's side of the API: requests that change the VM go to the main
//! loop and wait for its answer; `vm.info` and a resize's wait for the guest
//! read the vCPU table directly, lock-free, on the API worker thread.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::types::ResizeRequest;
use api::{ApiHandler, ApiRequest, ApiResponse};
use arc_swap::ArcSwapOption;
use log::warn;
use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use crate::cpu::lifecycle::{Phase, Reason};
use crate::cpu::manager::{Cause, ResizePlan, TargetStatus};
use crate::cpu::reconciler;
use crate::cpu::table::{OstReport, Reader};
use crate::cpu::vcpu::VcpuHandle;
use crate::vm::{Ended, VmView};

/// How long an API worker waits for the main loop to answer.
const MAIN_LOOP_TIMEOUT: Duration = Duration::from_secs(60);
const WAIT_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    pub view: ArcSwapOption<VmView>,
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

/// A request for the main loop and where to send its answer.
pub struct MainLoopRequest {
    pub request: ApiRequest,
    pub reply: SyncSender<MainLoopReply>,
}

pub enum MainLoopReply {
    Response(ApiResponse),
    /// A resize was accepted: what it set in motion, on which VM generation.
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
        ids.iter()
            .map(|&id| {
                let handle = guard.get(id);
                let s = view.table.state(id);
                VcpuInfo {
                    id,
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
struct InfoReply {
    state: VmState,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<crate::config::VmConfig>,
    /// The vCPU count lithe drives towards, and why it is what it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<TargetStatus>,
    vcpus: Vec<VcpuInfo>,
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
    reconciler::converged(st.desired, &view.table.states()).then_some(Ok(()))
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

    fn call(&self, request: ApiRequest) -> Result<MainLoopReply, ApiResponse> {
        let (reply, rx) = sync_channel(1);
        let sent = self.tx.lock().unwrap_or_else(|e| e.into_inner()).send(MainLoopRequest { request, reply });
        if sent.is_err() || self.wake.write(1).is_err() {
            return Err(ApiResponse::error(503, "the VMM is shutting down"));
        }
        rx.recv_timeout(MAIN_LOOP_TIMEOUT).map_err(|_| ApiResponse::error(503, "the VMM did not answer in time"))
    }

    fn info(&self) -> ApiResponse {
        let view = self.shared.view.load_full();
        let Some(v) = &view else {
            return ApiResponse::ok(InfoReply {
                state: self.shared.state(),
                config: None,
                target: None,
                vcpus: vec![],
            });
        };
        let vcpus = vcpu_info(v, &(0..v.config.cpus.max_vcpus).collect::<Vec<_>>());
        let target = v.target.status();
        // boot_vcpus follows every resize (Cloud Hypervisor's users read it as
        // the current count), and is what a reboot boots.
        let mut config = v.config.clone();
        config.cpus.boot_vcpus = target.desired;
        ApiResponse::ok(InfoReply {
            state: self.shared.state(),
            config: Some(config),
            target: Some((*target).clone()),
            vcpus,
        })
    }

    fn resize(&self, req: ResizeRequest) -> ApiResponse {
        let deadline = req.wait_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        let (plan, view) = match self.call(ApiRequest::VmResize(req.clone())) {
            Ok(MainLoopReply::Resized(plan, view)) => (plan, view),
            Ok(MainLoopReply::Response(r)) | Err(r) => return r,
        };
        // Without a wait: whether it is already complete; nothing to say if
        // it is merely under way.
        let outcome = loop {
            if let Some(o) = wait_outcome(&view, plan.seq) {
                break o;
            }
            match deadline {
                Some(d) if Instant::now() < d => std::thread::sleep(WAIT_POLL),
                Some(_) => {
                    let ms = req.wait_ms.unwrap_or(0);
                    break Err(Some(format!("the guest had not completed the change after {ms} ms")));
                }
                None => break Err(None),
            }
        };
        let mut ids: Vec<u32> = plan.added.iter().chain(&plan.removing).chain(&plan.waiting_for).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ApiResponse::ok(ResizeReply {
            desired_vcpus: req.desired_vcpus,
            vcpus: vcpu_info(&view, &ids),
            added: plan.added,
            removing: plan.removing,
            waiting_for: plan.waiting_for,
            complete: outcome.is_ok(),
            ended: outcome.err().flatten(),
            target: (*view.target.status()).clone(),
        })
    }
}

impl ApiHandler for ApiBridge {
    fn handle(&self, request: ApiRequest) -> ApiResponse {
        match request {
            ApiRequest::VmmPing => ApiResponse::ok(serde_json::json!({ "version": env!("CARGO_PKG_VERSION") })),
            ApiRequest::VmInfo => self.info(),
            ApiRequest::VmResize(req) => self.resize(req),
            other => match self.call(other) {
                Ok(MainLoopReply::Response(r)) | Err(r) => r,
                Ok(MainLoopReply::Resized(..)) => {
                    warn!("main loop answered a non-resize request with a resize plan");
                    ApiResponse::error(500, "internal error")
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
            memory: MemoryConfig { size: 64 << 20 },
            serial: SerialConfig::Off,
        };
        let table = Arc::new(VcpuTable::new(2));
        table.set_state(0, State::new(Phase::Running)).unwrap();
        let host = Arc::new(HotplugHost::new(table.clone(), EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        VmView::new(config, table, host, Arc::new(Target::new(1)))
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
