//! lithe: a minimal virtual machine monitor with live vCPU hotplug.

pub mod acpi;
pub mod arch;
pub mod config;
pub mod cpu;
pub mod memory;
