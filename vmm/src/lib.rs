//! lithe: a minimal virtual machine monitor with live vCPU hotplug.
//!
//! Under `--cfg loom` only the vCPU table and its RCU domain are built: the
//! loom models need nothing else, and loom's `Arc` would not fit the rest.

#[cfg(not(loom))]
pub mod acpi;
#[cfg(not(loom))]
pub mod api_bridge;
#[cfg(not(loom))]
pub mod arch;
#[cfg(not(loom))]
pub mod cli;
#[cfg(not(loom))]
pub mod config;
#[cfg(not(loom))]
pub mod config_wire;
#[cfg(not(loom))]
pub mod counters;
pub mod cpu;
#[cfg(not(loom))]
pub mod events;
#[cfg(not(loom))]
pub mod exit;
#[cfg(not(loom))]
pub mod memory;
#[cfg(not(loom))]
pub mod seccomp;
#[cfg(not(loom))]
pub mod signals;
#[cfg(not(loom))]
pub mod vm;
#[cfg(not(loom))]
pub mod vmm;
