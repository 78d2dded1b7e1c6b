//! x86_64 specifics: descriptor tables, vCPU register setup, CPUID and the
//! Linux 64-bit boot protocol.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod irq_routing;
pub mod regs;
pub mod topology;
pub mod x2apic;
