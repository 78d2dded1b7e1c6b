//! Answers a fake VMM gives in the API's in-process tests, built from the
//! VMM's own types (as lithe's VMM builds them).

#![allow(dead_code)]

use vmm::config::{CpusConfig, MemoryConfig, PayloadConfig, SerialConfig, VmConfig};
use vmm::resize::{Cause, ResizeReport, TargetStatus};
use vmm::rpc::{PingInfo, VmInfo, VmState, VmmData};

pub fn pong(version: &str, pid: i64) -> VmmData {
    VmmData::Pong(PingInfo { build_version: "b".into(), version: version.into(), pid, features: vec!["kvm".into()] })
}

/// A waited resize's report that says what was asked.
pub fn report(desired: u32) -> VmmData {
    VmmData::ResizeReport(Box::new(ResizeReport {
        desired_vcpus: desired,
        added: vec![],
        removing: vec![],
        waiting_for: vec![],
        complete: true,
        ended: None,
        target: TargetStatus { seq: 1, desired, vcpu_ids: None, cause: Cause::Resize },
        vcpus: vec![],
        memory: None,
    }))
}

/// `vm.info` of a running VM with `boot` of `max` vCPUs and 256 MiB.
pub fn info(boot: u32, max: u32) -> VmmData {
    let config = VmConfig {
        payload: PayloadConfig { kernel: "/k".into(), initramfs: None, cmdline: String::new() },
        cpus: CpusConfig::new(boot, max),
        memory: MemoryConfig::new(1 << 28),
        serial: SerialConfig::Off,
        platform: Default::default(),
        devices: Default::default(),
    };
    VmmData::VmInfo(Box::new(VmInfo { config, state: VmState::Running, memory_actual_size: 1 << 28, hotplug: None }))
}
