//! The VMM's answers in Cloud Hypervisor's wire shapes: `vmm.ping`'s
//! `VmmPingResponse`, `vm.info`'s `VmInfo` (plus lithe's hotplug keys, which
//! a Cloud Hypervisor client ignores), `vm.counters`, and lithe's resize
//! report.

use serde::{Deserialize, Serialize};
use vmm::resize::{TargetStatus, VcpuInfo};
use vmm::rpc::{PingInfo, VmInfo, VmmData};

use crate::types::ApiResponse;
use crate::vm_config::VmConfig;

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
/// (`target`, `vcpus`) for a VM that runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmInfoResponse {
    pub config: VmConfig,
    pub state: VmState,
    pub memory_actual_size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<Vec<VcpuInfo>>,
    /// lithe's: each hot-pluggable memory slot in use, its state and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_slots: Option<Vec<vmm::memory_hotplug::slots::SlotInfo>>,
}

impl From<PingInfo> for VmmPingResponse {
    fn from(p: PingInfo) -> Self {
        VmmPingResponse { build_version: p.build_version, version: p.version, pid: p.pid, features: p.features }
    }
}

impl From<VmInfo> for VmInfoResponse {
    fn from(i: VmInfo) -> Self {
        let (target, vcpus, memory_slots) = match i.hotplug {
            Some(h) => (Some(h.target), Some(h.vcpus), (!h.memory_slots.is_empty()).then_some(h.memory_slots)),
            None => (None, None, None),
        };
        VmInfoResponse {
            config: crate::config_wire::to_wire(&i.config),
            state: match i.state {
                vmm::rpc::VmState::Created => VmState::Created,
                vmm::rpc::VmState::Running => VmState::Running,
                vmm::rpc::VmState::Paused => VmState::Paused,
            },
            memory_actual_size: i.memory_actual_size,
            target,
            vcpus,
            memory_slots,
        }
    }
}

/// The reply to a successful action: 204, or 200 with the JSON body.
pub fn reply(data: VmmData) -> ApiResponse {
    match data {
        VmmData::Empty => ApiResponse::no_content(),
        VmmData::Pong(p) => ApiResponse::ok(VmmPingResponse::from(p)),
        VmmData::VmInfo(i) => ApiResponse::ok(VmInfoResponse::from(*i)),
        VmmData::Counters(c) => ApiResponse::ok(c),
        VmmData::ResizeReport(r) => ApiResponse::ok(r),
    }
}
