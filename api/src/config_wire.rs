//! Cloud Hypervisor's `VmConfig` (as `vm.create` receives it and `vm.info`
//! reports it) to lithe's [`VmConfig`] and back.
//!
//! The rule, field by field: what lithe honours is honoured; what is absent,
//! null, false, empty or at Cloud Hypervisor's default is accepted; a
//! capacity that only matters when used (`memory.hotplug_size`) is stored;
//! anything that asks for what lithe cannot do is named, all of them in one
//! error.

use std::path::PathBuf;

use serde_json::Value;
use vmm::config::{
    CpusConfig, MemoryConfig, PayloadConfig, PlatformConfig, SerialConfig, VmConfig, DEFAULT_CMDLINE,
    DEFAULT_EJECT_TIMEOUT_MS,
};

use crate::vm_config as wire;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Each entry is `field: why`.
    #[error("{}", .0.join("; "))]
    Unsupported(Vec<String>),
    #[error("{0}")]
    Invalid(String),
}

/// Cloud Hypervisor's defaults for an absent `cpus` and `memory`.
const DEFAULT_VCPUS: u32 = 1;
const DEFAULT_MEMORY: u64 = 512 << 20;

/// Collects the fields lithe cannot honour.
#[derive(Default)]
struct Refusals(Vec<String>);

impl Refusals {
    fn refuse(&mut self, field: &str, why: &str) {
        self.0.push(format!("{field} ({why})"));
    }

    /// A device list: absent or empty is fine.
    fn list(&mut self, field: &str, v: &Option<Vec<Value>>, why: &str) {
        if v.as_ref().is_some_and(|l| !l.is_empty()) {
            self.refuse(field, why);
        }
    }

    /// A device or setting: absent or null is fine.
    fn value(&mut self, field: &str, v: &Option<Value>, why: &str) {
        if v.as_ref().is_some_and(|v| !v.is_null()) {
            self.refuse(field, why);
        }
    }

    /// A switch lithe only has in one position.
    fn flag(&mut self, field: &str, v: Option<bool>, supported: bool, why: &str) {
        if v.is_some_and(|b| b != supported) {
            self.refuse(field, why);
        }
    }

    fn number<T>(&mut self, field: &str, v: Option<T>, why: &str) {
        if v.is_some() {
            self.refuse(field, why);
        }
    }
}

fn serial_from(field: &str, c: Option<&wire::ConsoleConfig>, no: &mut Refusals) -> SerialConfig {
    let Some(c) = c else {
        // Cloud Hypervisor's default serial is "Null": a UART whose output goes nowhere.
        return SerialConfig::Off;
    };
    no.number(&format!("{field}.socket"), c.socket.as_ref(), "no socket backend");
    no.flag(&format!("{field}.iommu"), c.iommu, false, "no IOMMU");
    no.number(&format!("{field}.iobase"), c.iobase, "the UART is at 0x3f8");
    match c.mode.as_str() {
        "Off" | "Null" => SerialConfig::Off,
        "Tty" => SerialConfig::Tty,
        "File" => match &c.file {
            Some(f) if !f.is_empty() => SerialConfig::File { file: PathBuf::from(f) },
            _ => {
                no.refuse(&format!("{field}.file"), "mode File needs a file");
                SerialConfig::Off
            }
        },
        other => {
            no.refuse(&format!("{field}.mode"), &format!("{other:?}: lithe has Off, Null, Tty and File"));
            SerialConfig::Off
        }
    }
}

/// Decodes a `vm.create` body.
pub fn from_wire(w: &wire::VmConfig) -> Result<VmConfig, WireError> {
    let mut no = Refusals::default();

    let p = &w.payload;
    no.number("payload.firmware", p.firmware.as_ref(), "lithe boots a kernel directly, without firmware");
    no.number("payload.igvm", p.igvm.as_ref(), "no IGVM");
    no.number("payload.host_data", p.host_data.as_ref(), "no confidential guests");
    let kernel = p.kernel.clone();

    let cpus = match &w.cpus {
        None => CpusConfig::new(DEFAULT_VCPUS, DEFAULT_VCPUS),
        Some(c) => {
            no.flag("cpus.kvm_hyperv", c.kvm_hyperv, false, "no Hyper-V enlightenments");
            no.number("cpus.max_phys_bits", c.max_phys_bits, "the guest sees the host's physical address width");
            no.list("cpus.affinity", &c.affinity, "no vCPU pinning");
            if let Some(f) = &c.features {
                if f.as_object().is_none_or(|o| o.values().any(|v| v != &Value::Bool(false) && !v.is_null())) {
                    no.refuse("cpus.features", "no optional CPU features (amx)");
                }
            }
            if c.core_scheduling.as_deref().is_some_and(|m| m != "Off") {
                no.refuse("cpus.core_scheduling", "no core scheduling; use \"Off\"");
            }
            CpusConfig {
                boot_vcpus: c.boot_vcpus,
                max_vcpus: c.max_vcpus,
                eject_timeout_ms: c.eject_timeout_ms.unwrap_or(DEFAULT_EJECT_TIMEOUT_MS),
                topology: c.topology,
                nested: c.nested.unwrap_or(true),
            }
        }
    };

    let memory = match &w.memory {
        None => MemoryConfig::new(DEFAULT_MEMORY),
        Some(m) => {
            if m.hotplugged_size.is_some_and(|s| s != 0) {
                no.refuse("memory.hotplugged_size", "no memory hotplug");
            }
            if let Some(method) = m.hotplug_method.as_deref() {
                if method != "Acpi" && method != "VirtioMem" {
                    return Err(WireError::Invalid(format!(
                        "memory.hotplug_method: {method:?} is neither \"Acpi\" nor \"VirtioMem\""
                    )));
                }
            }
            no.flag("memory.mergeable", m.mergeable, false, "no KSM merging");
            no.flag("memory.hugepages", m.hugepages, false, "no hugetlbfs backing; thp is honoured");
            no.number("memory.hugepage_size", m.hugepage_size, "no hugetlbfs backing");
            no.flag("memory.prefault", m.prefault, false, "no prefaulting");
            no.flag("memory.reserve", m.reserve, false, "no reservation");
            no.list("memory.zones", &m.zones, "no memory zones");
            MemoryConfig {
                size: m.size,
                hotplug_size: m.hotplug_size.filter(|&s| s != 0),
                thp: m.thp.unwrap_or(true),
                shared: m.shared.unwrap_or(false),
            }
        }
    };

    no.list("rate_limit_groups", &w.rate_limit_groups, "no rate limiters");
    let wire_devices = crate::config_wire_devices::WireDevices {
        disks: &w.disks,
        net: &w.net,
        rng: &w.rng,
        vsock: &w.vsock,
        fs: &w.fs,
    };
    let devices = crate::config_wire_devices::devices_from(wire_devices, &mut no.0)?;
    no.value("balloon", &w.balloon, "lithe has no balloon");
    no.list("generic_vhost_user", &w.generic_vhost_user, "lithe has no vhost-user devices");
    no.list("pmem", &w.pmem, "lithe has no pmem devices");
    no.list("devices", &w.devices, "lithe has no VFIO");
    no.list("user_devices", &w.user_devices, "lithe has no vfio-user");
    no.list("vdpa", &w.vdpa, "lithe has no vDPA");
    no.list("numa", &w.numa, "lithe has no NUMA nodes");
    no.flag("iommu", w.iommu, false, "lithe has no IOMMU");
    no.flag("watchdog", w.watchdog, false, "lithe has no watchdog");
    no.value("rtc", &w.rtc, "lithe has no RTC device");
    no.flag("pvpanic", w.pvpanic, false, "lithe has no pvpanic device");
    no.list("pci_segments", &w.pci_segments, "lithe has no PCI devices");
    no.value("tpm", &w.tpm, "lithe has no TPM");
    no.flag("landlock_enable", w.landlock_enable, false, "no Landlock; lithe confines threads with seccomp");
    no.list("landlock_rules", &w.landlock_rules, "no Landlock");

    let serial = serial_from("serial", w.serial.as_ref(), &mut no);
    if let Some(c) = &w.console {
        // The virtio console: lithe has none, so only "no console" is honest.
        if c.mode != "Off" && c.mode != "Null" {
            no.refuse("console.mode", &format!("{:?}: lithe has no virtio-console; use serial", c.mode));
        }
        no.flag("console.iommu", c.iommu, false, "no IOMMU");
    }
    if let Some(c) = &w.debug_console {
        if c.mode != "Off" {
            no.refuse("debug_console.mode", &format!("{:?}: lithe has no debug console", c.mode));
        }
    }

    let mut platform = PlatformConfig::default();
    if let Some(p) = &w.platform {
        if let Some(n) = p.num_pci_segments {
            if n == 0 || n > 96 {
                return Err(WireError::Invalid(format!("platform.num_pci_segments={n} must be between 1 and 96")));
            }
            platform.num_pci_segments = n;
        }
        no.list("platform.iommu_segments", &p.iommu_segments, "lithe has no IOMMU");
        no.number("platform.iommu_address_width_bits", p.iommu_address_width_bits, "lithe has no IOMMU");
        for (field, v) in [
            ("platform.system_serial_number", &p.system_serial_number),
            ("platform.serial_number", &p.serial_number),
            ("platform.system_uuid", &p.system_uuid),
            ("platform.uuid", &p.uuid),
            ("platform.system_manufacturer", &p.system_manufacturer),
            ("platform.system_product_name", &p.system_product_name),
            ("platform.system_version", &p.system_version),
            ("platform.system_family", &p.system_family),
            ("platform.system_sku_number", &p.system_sku_number),
            ("platform.chassis_asset_tag", &p.chassis_asset_tag),
        ] {
            no.value(field, v, "lithe has no SMBIOS tables");
        }
        no.list("platform.oem_strings", &p.oem_strings, "lithe has no SMBIOS tables");
        no.flag("platform.tdx", p.tdx, false, "no TDX");
        no.flag("platform.sev_snp", p.sev_snp, false, "no SEV-SNP");
        no.flag("platform.iommufd", p.iommufd, false, "no VFIO");
    }

    if !no.0.is_empty() {
        return Err(WireError::Unsupported(no.0));
    }
    let Some(kernel) = kernel else {
        return Err(WireError::Invalid("payload.kernel is required (lithe boots a kernel directly)".into()));
    };
    Ok(VmConfig {
        payload: PayloadConfig {
            kernel: PathBuf::from(kernel),
            initramfs: p.initramfs.as_ref().map(PathBuf::from),
            cmdline: p.cmdline.clone().unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
        },
        cpus,
        memory,
        serial,
        platform,
        devices,
    })
}

/// The config as `vm.info` reports it: Cloud Hypervisor's shape, with its
/// defaults for what lithe does not have.
pub fn to_wire(c: &VmConfig) -> wire::VmConfig {
    let (disks, rng, vsock) = crate::config_wire_devices::devices_to(&c.devices);
    let net = crate::config_wire_devices::net_to(&c.devices);
    let fs = crate::config_wire_devices::fs_to(&c.devices);
    let serial = match &c.serial {
        SerialConfig::Tty => wire::ConsoleConfig::mode("Tty"),
        SerialConfig::Off => wire::ConsoleConfig::mode("Null"),
        SerialConfig::File { file } => {
            wire::ConsoleConfig { file: Some(file.display().to_string()), ..wire::ConsoleConfig::mode("File") }
        }
    };
    wire::VmConfig {
        cpus: Some(wire::CpusConfig {
            boot_vcpus: c.cpus.boot_vcpus,
            max_vcpus: c.cpus.max_vcpus,
            topology: c.cpus.topology,
            kvm_hyperv: Some(false),
            max_phys_bits: None,
            nested: Some(c.cpus.nested),
            affinity: None,
            features: None,
            core_scheduling: Some("Off".into()),
            eject_timeout_ms: Some(c.cpus.eject_timeout_ms),
        }),
        memory: Some(wire::MemoryConfig {
            size: c.memory.size,
            hotplug_size: c.memory.hotplug_size,
            hotplugged_size: None,
            mergeable: Some(false),
            hotplug_method: Some("Acpi".into()),
            shared: Some(c.memory.shared),
            hugepages: Some(false),
            hugepage_size: None,
            prefault: Some(false),
            reserve: Some(false),
            thp: Some(c.memory.thp),
            zones: None,
        }),
        payload: wire::PayloadConfig {
            kernel: Some(c.payload.kernel.display().to_string()),
            cmdline: Some(c.payload.cmdline.clone()),
            initramfs: c.payload.initramfs.as_ref().map(|p| p.display().to_string()),
            ..Default::default()
        },
        serial: Some(serial),
        console: Some(wire::ConsoleConfig::mode("Off")),
        iommu: Some(false),
        watchdog: Some(false),
        pvpanic: Some(false),
        landlock_enable: Some(false),
        disks,
        net,
        rng,
        vsock,
        fs,
        platform: Some(wire::PlatformConfig {
            num_pci_segments: Some(c.platform.num_pci_segments),
            tdx: Some(false),
            sev_snp: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(v: Value) -> Result<VmConfig, WireError> {
        from_wire(&serde_json::from_value(v).expect("Cloud Hypervisor's schema"))
    }

    fn kata_body() -> Value {
        serde_json::from_str(crate::vm_config::KATA_VM_CREATE).unwrap()
    }

    #[test]
    fn katas_whole_body_is_taken() {
        let c = decode(kata_body()).unwrap();
        assert_eq!(c.devices.fs.len(), 1);
        assert_eq!(c.devices.fs[0].tag, "kataShared");
        assert!(c.memory.shared, "Kata shares guest memory when it uses virtio-fs");
        assert!(c.devices.rng.is_some() && c.devices.vsock.is_some());
        assert_eq!((c.cpus.boot_vcpus, c.cpus.max_vcpus, c.memory.size), (1, 4, 256 << 20));
        assert_eq!(c.memory.hotplug_size, Some(4 << 30), "a capacity is stored");
        assert_eq!(c.platform.num_pci_segments, 2);
        assert_eq!(c.cpus.topology.map(vmm::config::topology_text).as_deref(), Some("1:4:1:1"));
        assert_eq!(c.serial, SerialConfig::Tty);
    }

    #[test]
    fn defaults_are_accepted_and_requests_for_more_are_named() {
        let c = decode(json!({"payload": {"kernel": "/k"}})).unwrap();
        assert_eq!((c.cpus.boot_vcpus, c.memory.size, &c.serial), (1, 512 << 20, &SerialConfig::Off));
        assert_eq!(c.payload.cmdline, DEFAULT_CMDLINE);
        let ok = json!({"payload": {"kernel": "/k"}, "disks": [], "net": [], "rng": null, "iommu": false,
                        "watchdog": false, "pvpanic": false, "landlock_enable": false, "console": {"mode": "Null"},
                        "serial": {"mode": "File", "file": "/tmp/s"}, "platform": {"iommufd": false, "vfio_p2p_dma": true},
                        "memory": {"size": 67108864, "thp": false, "hotplugged_size": 0},
                        "cpus": {"boot_vcpus": 1, "max_vcpus": 2, "nested": false, "features": {"amx": false}}});
        let c = decode(ok).unwrap();
        assert!(!c.cpus.nested && !c.memory.thp);

        let Err(WireError::Unsupported(f)) = decode(json!({
            "payload": {"kernel": "/k", "firmware": "/fw"},
            "disks": [{"path": "/d", "vhost_user": true}], "iommu": true, "memory": {"size": 1, "shared": true, "hugepages": true},
            "cpus": {"boot_vcpus": 1, "max_vcpus": 1, "kvm_hyperv": true, "affinity": [{"vcpu": 0, "host_cpus": [1]}]},
            "console": {"mode": "Tty"}, "serial": {"mode": "Pty"}, "platform": {"uuid": "x"}
        })) else {
            panic!()
        };
        let text = f.join("|");
        for field in [
            "payload.firmware",
            "disks[0].vhost_user",
            "iommu",
            "memory.hugepages",
            "cpus.kvm_hyperv",
            "cpus.affinity",
            "console.mode",
            "serial.mode",
            "platform.uuid",
        ] {
            assert!(text.contains(field), "{field} not named in {text}");
        }
        assert!(matches!(decode(json!({"payload": {}})), Err(WireError::Invalid(m)) if m.contains("payload.kernel")));
        assert!(matches!(
            decode(json!({"payload": {"kernel": "/k"}, "memory": {"size": 1, "hotplug_method": "Magic"}})),
            Err(WireError::Invalid(_))
        ));
    }

    #[test]
    fn what_vm_info_reports_decodes_to_the_same_config() {
        let c = decode(kata_body()).unwrap();
        let reported = serde_json::to_value(to_wire(&c)).unwrap();
        assert_eq!(decode(reported.clone()).unwrap(), c, "{reported}");
        assert_eq!(reported["state"], Value::Null);
        assert_eq!(reported["cpus"]["boot_vcpus"], 1);
        assert_eq!(reported["memory"]["hotplug_size"], 4u64 << 30);
    }
}
