//! What the VMM can be asked, and what it answers, as Firecracker's
//! `rpc_interface` cuts it: the VMM owns these types; the HTTP server, its
//! routes and the wire schema (Cloud Hypervisor's) sit on top and depend on
//! them. No HTTP and no JSON shaping here.
//!
//! Actions come in two kinds, each with one dispatcher: a [`Query`] is
//! answered on the API thread from lock-free state (`api_bridge`); a
//! [`Command`] changes the VM and runs on the main loop (`vmm`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use crate::config::{ConfigError, NetConfig, VmConfig};
use crate::resize::{ResizeError, ResizeReport, ResizeRequest, TargetStatus, VcpuInfo};
use crate::vm::VmError;

#[derive(Debug, Clone, PartialEq)]
pub enum VmmAction {
    Query(Query),
    Command(Command),
}

/// Answered from lock-free state, without the main loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    Ping,
    VmInfo,
    Counters,
}

/// Carried out by the main loop, which owns the VM.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// The configuration, or why the request's body cannot become one
    /// (answered after the VM's state: an existing VM is a 409 first).
    CreateVm(Box<Result<VmConfig, Refused>>),
    DeleteVm,
    BootVm,
    Resize(ResizeRequest),
    /// A network device for the VM not booted yet (`vm.add-net`): its
    /// configuration, and the TAP fds that came with the request.
    AddNet(Box<Result<NetConfig, Refused>>, TapFds),
    ShutdownVm,
    RebootVm,
    PauseVm,
    ResumeVm,
    PowerButton,
    ShutdownVmm,
}

/// Open TAP fds handed over with a request (`SCM_RIGHTS`). Shared so the
/// action stays `Clone`; closed when the last holder lets go.
#[derive(Debug, Clone, Default)]
pub struct TapFds(pub Arc<Vec<OwnedFd>>);

impl PartialEq for TapFds {
    fn eq(&self, other: &Self) -> bool {
        let raw = |t: &TapFds| t.0.iter().map(|f| f.as_raw_fd()).collect::<Vec<_>>();
        raw(self) == raw(other)
    }
}

/// Why a `vm.create` body is no configuration lithe can run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Fields lithe has no model for, each as `field (why)`.
    #[error("lithe does not support {}", .0.join("; "))]
    Unsupported(Vec<String>),
    /// A field with a value that is wrong in itself.
    #[error("{0}")]
    Invalid(String),
}

/// What the VMM is and can do (`vmm.ping`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingInfo {
    pub build_version: String,
    pub version: String,
    pub pid: i64,
    pub features: Vec<String>,
}

/// Where the VM is in its life (a VM that does not exist has no info).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    Created,
    Running,
    Paused,
}

/// `vm.info`.
#[derive(Debug, Clone, PartialEq)]
pub struct VmInfo {
    /// As a reboot would boot it: `boot_vcpus` follows every resize.
    pub config: VmConfig,
    pub state: VmState,
    pub memory_actual_size: u64,
    /// For a VM that runs: the target and every vCPU.
    pub hotplug: Option<HotplugInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotplugInfo {
    pub target: TargetStatus,
    pub vcpus: Vec<VcpuInfo>,
    /// Hot-pluggable memory slots in use (empty without `hotplug_size`).
    pub memory_slots: Vec<crate::memory_hotplug::slots::SlotInfo>,
}

pub use crate::counters::VmCounters;

/// What an action returns.
#[derive(Debug, Clone, PartialEq)]
pub enum VmmData {
    /// Done; nothing to report.
    Empty,
    Pong(PingInfo),
    VmInfo(Box<VmInfo>),
    Counters(VmCounters),
    /// A resize that asked to wait for the guest.
    ResizeReport(Box<ResizeReport>),
}

/// Why an action failed, typed to its source. The API gives each kind one
/// status.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("The VM is not created")]
    NotCreated,
    #[error("The VM is not booted")]
    NotBooted,
    #[error("The VM is already created")]
    AlreadyCreated,
    #[error("The VM is already booted")]
    AlreadyBooted,
    #[error("The VM is already paused")]
    AlreadyPaused,
    #[error("The VM is not paused")]
    NotPaused,
    /// A configuration that is wrong in itself (names the field).
    #[error("{}: {source}", .source.field())]
    Config {
        #[from]
        source: ConfigError,
    },
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Resize(#[from] ResizeError),
    #[error("boot failed: {0}")]
    Boot(#[source] VmError),
    #[error("reboot failed: {0}")]
    Reboot(#[source] VmError),
    #[error("pause failed: {0}")]
    Pause(#[source] crate::cpu::manager::ManagerError),
    #[error("raising the GED interrupt: {0}")]
    PowerButton(#[source] std::io::Error),
    /// The VMM is going away or did not answer.
    #[error("{0}")]
    Unavailable(&'static str),
}
