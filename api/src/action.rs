//! The boundary between the API and the VMM, as Firecracker cuts it: the
//! VMM takes a typed [`VmmAction`] and returns [`VmmData`] or an
//! [`ActionError`]. Only this crate knows HTTP; [`crate::routes`] maps
//! requests to actions and results to status codes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::ResizeRequest;
use crate::vm_config::VmConfig;

/// Everything a client can ask of the VMM.
#[derive(Debug, Clone, PartialEq)]
pub enum VmmAction {
    Ping,
    ShutdownVmm,
    CreateVm(Box<VmConfig>),
    DeleteVm,
    BootVm,
    VmInfo,
    Counters,
    Resize(ResizeRequest),
    ShutdownVm,
    RebootVm,
    PauseVm,
    ResumeVm,
    PowerButton,
}

impl VmmAction {
    /// What failed, as the first line of an error reply (Cloud Hypervisor's wording).
    pub fn failure(&self) -> &'static str {
        match self {
            VmmAction::Ping => "The VMM could not be pinged",
            VmmAction::ShutdownVmm => "The VMM could not shutdown",
            VmmAction::CreateVm(_) => "The VM could not be created",
            VmmAction::DeleteVm => "The VM could not be deleted",
            VmmAction::BootVm => "The VM could not boot",
            VmmAction::VmInfo => "The VM info is not available",
            VmmAction::Counters => "The VM counters are not available",
            VmmAction::Resize(_) => "The VM could not be resized",
            VmmAction::ShutdownVm => "The VM could not shutdown",
            VmmAction::RebootVm => "The VM could not reboot",
            VmmAction::PauseVm => "The VM could not be paused",
            VmmAction::ResumeVm => "The VM could not resume",
            VmmAction::PowerButton => "The VM could not trigger the power button",
        }
    }
}

/// `vmm.ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmPingResponse {
    pub build_version: String,
    pub version: String,
    pub pid: i64,
    pub features: Vec<String>,
}

/// Cloud Hypervisor's `VmState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Created,
    Running,
    Shutdown,
    Paused,
}

/// `vm.info`: Cloud Hypervisor's `VmInfo`, plus lithe's hotplug report
/// (`target`, `vcpus`) as extra keys a Cloud Hypervisor client ignores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmInfoResponse {
    pub config: VmConfig,
    pub state: VmState,
    pub memory_actual_size: u64,
    #[serde(flatten)]
    pub lithe: serde_json::Map<String, serde_json::Value>,
}

/// `vm.counters`: counter name to value, per device.
pub type VmCounters = BTreeMap<String, BTreeMap<String, u64>>;

/// What an action returns.
#[derive(Debug, Clone, PartialEq)]
pub enum VmmData {
    /// Done; nothing to report (HTTP 204).
    Empty,
    Pong(VmmPingResponse),
    VmInfo(Box<VmInfoResponse>),
    Counters(VmCounters),
    /// lithe's resize report, for a resize that asked to wait.
    ResizeReport(serde_json::Value),
}

/// Why an action failed. Each kind has one HTTP status (`routes::status_of`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    #[error("The VM is paused: resume it first")]
    Paused,
    /// A request or configuration that is wrong in itself.
    #[error("{0}")]
    Invalid(String),
    /// Fields lithe has no model for, each with why.
    #[error("lithe does not support {}", .0.join("; "))]
    Unsupported(Vec<String>),
    /// Retry later.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Internal(String),
    /// The VMM is going away or did not answer.
    #[error("{0}")]
    Unavailable(String),
}
