//! The VMM's side of the API: requests that change the VM go to the main
//! loop and wait for its answer; `vm.info` and a resize's wait for the guest
//! read the vCPU table directly, lock-free, on the API worker thread.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::types::ResizeRequest;
use api::{ApiHandler, ApiRequest, ApiResponse};
use arc_swap::ArcSwapOption;
use log::warn;
use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use crate::cpu::hotplug_host::Rollback;
use crate::cpu::manager::ResizePlan;
use crate::cpu::table::{OstReport, Reader, VcpuState};
use crate::cpu::vcpu::VcpuHandle;
use crate::vm::VmView;

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
    Resized(ResizePlan),
    /// The resize conflicts with removals still in progress: retryable.
    RemovalPending(ApiResponse),
}

pub struct ApiBridge {
    tx: Mutex<Sender<MainLoopRequest>>,
    wake: EventFd,
    shared: Arc<VmmShared>,
    resize_in_flight: AtomicBool,
}

/// One vCPU as `vm.info` and resize replies report it.
#[derive(Debug, Serialize)]
pub struct VcpuInfo {
    pub id: u32,
    pub present: bool,
    pub state: VcpuState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ost: Option<OstReport>,
    pub rollback: Rollback,
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
                VcpuInfo {
                    id,
                    present: handle.is_some(),
                    state: view.table.state(id),
                    ost: view.table.ost(id),
                    rollback: view.host.rollback(id),
                    exits: handle.map(|h| h.control.exits.load(Ordering::Relaxed)),
                }
            })
            .collect()
    })
}

#[derive(Serialize)]
struct InfoReply<'a> {
    state: VmState,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<&'a crate::config::VmConfig>,
    vcpus: Vec<VcpuInfo>,
}

#[derive(Serialize)]
struct ResizeReply {
    desired_vcpus: u32,
    added: Vec<u32>,
    removing: Vec<u32>,
    /// Every change confirmed by the guest (or rolled back).
    complete: bool,
    vcpus: Vec<VcpuInfo>,
}

impl ApiBridge {
    pub fn new(shared: Arc<VmmShared>) -> std::io::Result<(ApiBridge, Receiver<MainLoopRequest>)> {
        let (tx, rx) = std::sync::mpsc::channel();
        let bridge = ApiBridge {
            tx: Mutex::new(tx),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            shared,
            resize_in_flight: AtomicBool::new(false),
        };
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
        let vcpus = match &view {
            Some(v) => vcpu_info(v, &(0..v.config.cpus.max_vcpus).collect::<Vec<_>>()),
            None => Vec::new(),
        };
        ApiResponse::ok(InfoReply { state: self.shared.state(), config: view.as_deref().map(|v| &v.config), vcpus })
    }

    /// Whether the guest has finished with every vCPU of `plan`.
    fn settled(view: &VmView, plan: &ResizePlan) -> bool {
        let added_done = plan.added.iter().all(|&id| view.table.state(id) != VcpuState::Inserting);
        let removed_done = plan.removing.iter().all(|&id| match view.table.state(id) {
            VcpuState::Parked => true,
            VcpuState::Online | VcpuState::Inserting => view.host.rollback(id) != Rollback::None,
            _ => false,
        });
        added_done && removed_done
    }

    fn resize(&self, req: ResizeRequest) -> ApiResponse {
        let deadline = req.wait_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        // A waiting resize queues behind removals still in progress; one that
        // does not wait is refused at once.
        let plan = loop {
            match self.call(ApiRequest::VmResize(req.clone())) {
                Ok(MainLoopReply::Resized(plan)) => break plan,
                Ok(MainLoopReply::RemovalPending(r)) => {
                    if deadline.is_none_or(|d| Instant::now() >= d) {
                        return r;
                    }
                    std::thread::sleep(WAIT_POLL);
                }
                Ok(MainLoopReply::Response(r)) | Err(r) => return r,
            }
        };
        let Some(view) = self.shared.view.load_full() else {
            return ApiResponse::error(409, "the VM went away during the resize");
        };
        let complete = match deadline {
            Some(deadline) => loop {
                if Self::settled(&view, &plan) {
                    break true;
                }
                if Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(WAIT_POLL);
            },
            None => Self::settled(&view, &plan),
        };
        let ids: Vec<u32> = plan.added.iter().chain(&plan.removing).copied().collect();
        ApiResponse::ok(ResizeReply {
            desired_vcpus: req.desired_vcpus,
            vcpus: vcpu_info(&view, &ids),
            added: plan.added,
            removing: plan.removing,
            complete,
        })
    }
}

impl ApiHandler for ApiBridge {
    fn handle(&self, request: ApiRequest) -> ApiResponse {
        match request {
            ApiRequest::VmmPing => ApiResponse::ok(serde_json::json!({ "version": env!("CARGO_PKG_VERSION") })),
            ApiRequest::VmInfo => self.info(),
            ApiRequest::VmResize(req) => {
                if self.resize_in_flight.swap(true, Ordering::AcqRel) {
                    return ApiResponse::error(409, "another resize is in progress");
                }
                let r = self.resize(req);
                self.resize_in_flight.store(false, Ordering::Release);
                r
            }
            other => match self.call(other) {
                Ok(MainLoopReply::Response(r) | MainLoopReply::RemovalPending(r)) | Err(r) => r,
                Ok(MainLoopReply::Resized(_)) => {
                    warn!("main loop answered a non-resize request with a resize plan");
                    ApiResponse::error(500, "internal error")
                }
            },
        }
    }
}
