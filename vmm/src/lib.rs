//! lithe: a minimal virtual machine monitor with live vCPU hotplug.

pub mod cpu;
