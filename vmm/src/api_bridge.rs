//! The VMM's side of the API, one dispatcher per kind of action: a
//! [`Query`] is answered here, on the API worker thread, from lock-free
//! state (the vCPU table, the target); a [`Command`] goes to the main loop,
//! which owns the VM, and this thread waits for its answer (and, for a
//! resize that asked to, for the guest: [`resize::report::wait`]).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use vmm_sys_util::eventfd::EventFd;

use crate::config::VmConfig;
use crate::cpu::manager::ResizePlan;
use crate::resize::{self, report::vcpu_info};
use crate::rpc::{ActionError, Command, HotplugInfo, PingInfo, Query, VmInfo, VmmAction, VmmData};
use crate::vm::VmView;

/// How long an API worker waits for the main loop to answer.
const MAIN_LOOP_TIMEOUT: Duration = Duration::from_secs(60);

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

/// A command for the main loop, when it arrived, and where to answer.
pub struct MainLoopRequest {
    pub command: Command,
    pub received: Instant,
    pub reply: SyncSender<Result<Reply, ActionError>>,
}

/// What the main loop did with a command.
pub enum Reply {
    Done,
    /// A resize of the running VM is under way: what it set in motion (for
    /// the vCPUs, for the memory), on which VM generation.
    Resizing(Option<ResizePlan>, Option<crate::memory_hotplug::wait::MemoryPlan>, Arc<VmView>),
}

pub struct ApiBridge {
    tx: Mutex<Sender<MainLoopRequest>>,
    wake: EventFd,
    shared: Arc<VmmShared>,
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

    /// Carries out `action`: a query here, a command on the main loop.
    pub fn handle(&self, action: VmmAction) -> Result<VmmData, ActionError> {
        let received = Instant::now();
        match action {
            VmmAction::Query(q) => self.query(q),
            VmmAction::Command(c) => self.command(c, received),
        }
    }

    fn query(&self, q: Query) -> Result<VmmData, ActionError> {
        match q {
            Query::Ping => Ok(Self::ping()),
            Query::VmInfo => self.info(),
            Query::Counters => self.counters(),
        }
    }

    fn command(&self, command: Command, received: Instant) -> Result<VmmData, ActionError> {
        // A resize that waits for the guest: until when, and what it asked.
        let wait = match &command {
            Command::Resize(r) => r.wait.map(|w| (received + w, r.want.as_ref().map(|w| w.count()))),
            _ => None,
        };
        let (reply, rx) = sync_channel(1);
        let request = MainLoopRequest { command, received, reply };
        let sent = self.tx.lock().unwrap_or_else(|e| e.into_inner()).send(request);
        if sent.is_err() || self.wake.write(1).is_err() {
            return Err(ActionError::Unavailable("the VMM is shutting down"));
        }
        let reply = rx
            .recv_timeout(MAIN_LOOP_TIMEOUT)
            .map_err(|_| ActionError::Unavailable("the VMM did not answer in time"))??;
        match (reply, wait) {
            (Reply::Resizing(plan, memory, view), Some((deadline, desired))) => {
                Ok(VmmData::ResizeReport(Box::new(resize::report::wait(&view, plan, memory, desired, deadline))))
            }
            // Cloud Hypervisor's answer: accepted (under way, for a resize).
            (Reply::Done | Reply::Resizing(..), _) => Ok(VmmData::Empty),
        }
    }

    fn ping() -> VmmData {
        VmmData::Pong(PingInfo {
            build_version: format!("lithe v{}", env!("CARGO_PKG_VERSION")),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: i64::from(std::process::id()),
            features: vec!["kvm".into(), "acpi".into(), "cpu_hotplug".into(), "event_monitor".into()],
        })
    }

    fn info(&self) -> Result<VmmData, ActionError> {
        let state = match self.shared.state() {
            VmState::NotCreated => return Err(ActionError::NotCreated),
            VmState::Created => crate::rpc::VmState::Created,
            VmState::Running => crate::rpc::VmState::Running,
            VmState::Paused => crate::rpc::VmState::Paused,
        };
        let view = self.shared.view.load_full();
        let (config, hotplug) = match &view {
            Some(v) => {
                let target = v.target.status();
                let vcpus = vcpu_info(v, 0..v.config.cpus.max_vcpus);
                // boot_vcpus follows every resize (Cloud Hypervisor's users,
                // Kata among them, read it as the current count), and is what
                // a reboot boots.
                let mut c = v.config.clone();
                c.cpus.boot_vcpus = target.desired;
                // memory.size too: what the guest has taken (Kata reads it as
                // the current size), the room left shrinking as much.
                let memory_slots = match &v.memory {
                    Some(slots) => {
                        let plugged = slots.plugged_bytes();
                        c.memory.size += plugged;
                        c.memory.hotplug_size =
                            c.memory.hotplug_size.map(|h| h.saturating_sub(plugged)).filter(|&h| h > 0);
                        slots.info()
                    }
                    None => Vec::new(),
                };
                (c, Some(HotplugInfo { target: (*target).clone(), vcpus, memory_slots }))
            }
            None => match self.shared.config.load_full() {
                Some(c) => ((*c).clone(), None),
                None => return Err(ActionError::NotCreated),
            },
        };
        Ok(VmmData::VmInfo(Box::new(VmInfo { memory_actual_size: config.memory.size, config, state, hotplug })))
    }

    fn counters(&self) -> Result<VmmData, ActionError> {
        match self.shared.view.load_full() {
            Some(v) => {
                let mut counters = v.counters.as_ref().map(|c| c.collect()).unwrap_or_default();
                // Exits to userspace per vCPU thread, for the vCPUs that have one.
                let exits = vcpu_info(&v, 0..v.config.cpus.max_vcpus)
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
}
