//! lithe: a minimal virtual machine monitor with live vCPU hotplug.

pub mod acpi;
pub mod api_bridge;
pub mod arch;
pub mod cli;
pub mod config;
pub mod config_wire;
pub mod counters;
pub mod cpu;
pub mod events;
pub mod exit;
pub mod memory;
pub mod seccomp;
pub mod signals;
pub mod vm;
pub mod vmm;
