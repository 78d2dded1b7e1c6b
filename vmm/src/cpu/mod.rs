//! vCPUs: the lock-free table that says which exist, the lifecycle each one
//! goes through, and (in `manager`) the code that creates, runs, hot-adds and
//! retires them.
//!
//! The resize path, top to bottom: `reconciler` (how many, which ids) →
//! `manager` (carries it out) → `lifecycle` (the one table of transitions) →
//! the CPU hotplug controller and GED (`devices`) → the guest, whose answers
//! come back through `hotplug_host`.

#[cfg(not(loom))]
pub mod clock;
#[cfg(not(loom))]
pub mod hotplug_host;
pub mod lifecycle;
#[cfg(not(loom))]
pub mod manager;
pub mod rcu;
#[cfg(not(loom))]
pub mod reconciler;
mod sync;
pub mod table;
#[cfg(not(loom))]
pub mod vcpu;

pub use lifecycle::{Phase, Reason, State};
pub use rcu::FenceMode;
pub use table::{OstReport, ReadGuard, Reader, TableError, VcpuTable};
