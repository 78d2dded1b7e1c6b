//! lithe: a minimal virtual machine monitor with live vCPU hotplug.

pub mod acpi;
pub mod api_bridge;
pub mod arch;
pub mod cli;
pub mod config;
pub mod cpu;
pub mod exit;
pub mod memory;
pub mod vm;
pub mod vmm;
