//! Cloud Hypervisor's `VmConfig` schema as it travels on the wire
//! (`vm.create` bodies and `vm.info`'s `config`), so that its clients' bodies
//! decode unchanged.
//!
//! Every field Cloud Hypervisor has is here. What lithe models is typed; the
//! devices it has no model for are kept as raw JSON, so that the VMM can
//! accept them when empty and name them when not. A key Cloud Hypervisor does
//! not have is still a decode error.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `VmConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<CpusConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryConfig>,
    pub payload: PayloadConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_groups: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generic_vhost_user: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmem: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<ConsoleConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_console: Option<ConsoleConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_devices: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vdpa: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommu: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtc: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvpanic: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_segments: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landlock_enable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landlock_rules: Option<Vec<Value>>,
}

/// `CpuTopology`: the VMM's own type, whose fields are Cloud Hypervisor's.
pub use vmm::config::CpuTopology;

/// `CpusConfig`, plus lithe's `eject_timeout_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpusConfig {
    pub boot_vcpus: u32,
    pub max_vcpus: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<CpuTopology>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm_hyperv: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_phys_bits: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_scheduling: Option<String>,
    /// lithe: how long the guest gets to eject a vCPU before the removal is rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eject_timeout_ms: Option<u64>,
}

/// `MemoryConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplug_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplugged_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mergeable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplug_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepages: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepage_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefault: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thp: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zones: Option<Vec<Value>>,
}

/// `PayloadConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub igvm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_data: Option<String>,
}

/// `ConsoleConfig` and `SerialConfig` (the same shape; `iommu`, `id` and the
/// PCI placement only exist on the console).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommu: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_segment: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_device_id: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iobase: Option<u64>,
}

impl ConsoleConfig {
    pub fn mode(mode: &str) -> ConsoleConfig {
        ConsoleConfig {
            mode: mode.into(),
            file: None,
            socket: None,
            iommu: None,
            id: None,
            pci_segment: None,
            pci_device_id: None,
            iobase: None,
        }
    }
}

/// `PlatformConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_pci_segments: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommu_segments: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommu_address_width_bits: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_serial_number: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_uuid: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oem_strings: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_manufacturer: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_product_name: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_version: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_family: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_sku_number: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis_asset_tag: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tdx: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sev_snp: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommufd: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfio_p2p_dma: Option<bool>,
}

/// The `vm.create` body Kata Containers' clh driver sends (clh.go, with the
/// generated Go client's defaults), for tests across the workspace.
pub const KATA_VM_CREATE: &str = include_str!("../fixtures/kata-vm-create.json");

/// The `vm.add-net` body Kata's clh driver sends with its TAP fds (the
/// generated Go client's `NewNetConfig` defaults, its MAC, no `tap`).
pub const KATA_ADD_NET: &str = include_str!("../fixtures/kata-add-net.json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_body_katas_driver_sends_and_rejects_unknown_keys() {
        // What kata-containers' clh.go builds with the generated Go client
        // (NewVmConfig, NewCpusConfig, NewMemoryConfig, ... fill their defaults).
        let body: serde_json::Value = serde_json::from_str(KATA_VM_CREATE).unwrap();
        let c: VmConfig = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(c.cpus.as_ref().unwrap().topology.unwrap().cores_per_die, 4);
        assert_eq!(serde_json::to_value(&c).unwrap(), body, "round trip keeps every field");

        let mut unknown = body.clone();
        unknown["cpus"]["turbo"] = true.into();
        assert!(serde_json::from_value::<VmConfig>(unknown).is_err());
        let mut unknown = body;
        unknown["gpu"] = 1.into();
        assert!(serde_json::from_value::<VmConfig>(unknown).is_err());
    }
}
