//! lithe: a minimal virtual machine monitor with live vCPU hotplug.

pub mod acpi;
pub mod api_bridge;
pub mod arch;
pub mod config;
pub mod counters;
pub mod cpu;
pub mod device_manager;
pub mod events;
pub mod exit;
pub mod hotplug;
pub mod memory;
pub mod memory_hotplug;
pub mod resize;
pub mod rpc;
pub mod seccomp;
pub mod signals;
pub mod vm;
pub mod vmm;
